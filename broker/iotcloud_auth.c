/*
 * iotcloud_auth: a Mosquitto 2.0 plugin (API v5) that asks the platform's database who a
 * device is.
 *
 * At CONNECT a device presents user name = device id, password = provision token and
 * client id = device id. The plugin looks the device up in the `broker_credentials` view
 * (migration 011), compares the SHA-256 of the token, and from then on lets the client
 * touch only its own topic trees. On a listener with `require_certificate true` a device
 * presents a client certificate instead: the SHA-256 of its DER is looked up in the
 * `broker_certificates` view (migration 016), which names the device; the user name the
 * client sent is ignored (AWS SDKs send `?SDK=...&Version=...`) and replaced with the
 * device id, and the client id must still be the device id. The services log in with their own user name, whose
 * password hash and client-id prefix are in the broker's configuration; no device can
 * take a service's client id, because a device's client id must equal its device id, which
 * can never start with the services' prefix.
 *
 * Nothing per device lives in a broker file. A bounded cache keeps recent credentials;
 * `LISTEN iot_broker_credentials` evicts a rotated or deleted one and cuts its session.
 * Presence (connect, disconnect) is written back in batches through `broker_presence()`.
 *
 * Mosquitto runs plugins on its one event loop, so the database is never allowed to hold
 * it for long: connections are opened without blocking, the LISTEN/presence connection is
 * used only asynchronously, and a credential lookup waits at most `query_timeout_ms`.
 *
 * Options (plugin_opt_*):
 *   database                  libpq connection string (required)
 *   service_user              the services' user name (required)
 *   service_password_sha256   hex SHA-256 of the services' password (required)
 *   service_clientid_prefix   client ids the services use (default "$iotcloud-")
 *   broker_name               this broker's name in presence records (default "broker")
 *   cache_size                idle credentials kept at most (default 100000)
 *   query_timeout_ms          longest wait for one credential lookup (default 1000)
 */
#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define MAX_DEVICE_ID 128
#define MAX_TENANT_ID 63
#define MAX_PASSWORD 512
#define SHA256_HEX 64
#define MAX_PRESENCE_QUEUE 1000000
#define PRESENCE_BATCH 5000
#define RECONNECT_INTERVAL_NS 1000000000L
#define RECHECK_BATCH 1000

struct entry {
	struct entry *next;
	char *username;
	char tenant[MAX_TENANT_ID + 1];
	char password_hash[SHA256_HEX + 1]; /* of the token, or the certificate's fingerprint */
	bool by_certificate;
	const struct mosquitto *client; /* the live connection authorised as this device */
};

struct presence_event {
	char device_id[MAX_DEVICE_ID + 1];
	bool connected;
	long long at_ms;
};

struct pg {
	const char *application_name;
	PGconn *conn;
	bool connecting;
	bool prepared; /* the lookup statements, on the auth connection */
	long next_attempt_ns;
};

static struct {
	mosquitto_plugin_id_t *id;
	char *conninfo;
	char *service_user;
	char service_hash[SHA256_HEX + 1];
	char *service_prefix;
	char broker[256];
	size_t cache_size;
	int query_timeout_ms;

	struct entry **buckets;
	size_t bucket_count;
	size_t entries;
	size_t idle_entries;

	struct pg auth; /* credential lookups, one at a time, awaited */
	struct pg async; /* LISTEN, presence writes; never awaited */
	bool listening;
	bool started_recorded;
	enum { IDLE, SENT_LISTEN, SENT_STARTED, SENT_PRESENCE, SENT_RECHECK } async_query;
	size_t in_flight; /* presence events sent in the running query */
	bool listened_before;
	/* After LISTEN is back, connected devices are checked again, a batch at a time: a
	 * revocation may have been missed while the connection was away. */
	bool rechecking;
	size_t recheck_bucket;
	char *recheck_names[RECHECK_BATCH];
	size_t recheck_count;

	struct presence_event *queue;
	size_t queue_len;
	size_t queue_cap;
	bool queue_overflowed;
} S;

/* ---------------------------------------------------------------- helpers */

static long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static long long wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void to_hex(const unsigned char *digest, unsigned int len, char out[SHA256_HEX + 1])
{
	static const char hex[] = "0123456789abcdef";
	for(unsigned int i = 0; i < len; i++){
		out[2 * i] = hex[digest[i] >> 4];
		out[2 * i + 1] = hex[digest[i] & 0x0f];
	}
	out[SHA256_HEX] = '\0';
}

static bool sha256_hex(const char *text, char out[SHA256_HEX + 1])
{
	unsigned char digest[EVP_MAX_MD_SIZE];
	unsigned int len = 0;
	if(!EVP_Digest(text, strlen(text), digest, &len, EVP_sha256(), NULL) || len != 32){
		return false;
	}
	to_hex(digest, len, out);
	return true;
}

/* The certificate's fingerprint: lower-case hex SHA-256 of its DER. */
static bool certificate_fingerprint(X509 *cert, char out[SHA256_HEX + 1])
{
	unsigned char digest[EVP_MAX_MD_SIZE];
	unsigned int len = 0;
	if(!X509_digest(cert, EVP_sha256(), digest, &len) || len != 32) return false;
	to_hex(digest, len, out);
	return true;
}

static bool same_hash(const char *a, const char *b)
{
	return strlen(a) == SHA256_HEX && strlen(b) == SHA256_HEX
		&& CRYPTO_memcmp(a, b, SHA256_HEX) == 0;
}

/* SPEC §3: [A-Za-z0-9][A-Za-z0-9._:-]{0,127}; no '/', '+', '#' or NUL can reach a topic. */
static bool valid_device_id(const char *id)
{
	size_t len = strlen(id);
	if(len == 0 || len > MAX_DEVICE_ID || !isalnum((unsigned char)id[0])){
		return false;
	}
	for(size_t i = 1; i < len; i++){
		unsigned char c = (unsigned char)id[i];
		if(!(isalnum(c) || c == '.' || c == '_' || c == ':' || c == '-')){
			return false;
		}
	}
	return true;
}

static bool starts_with(const char *text, const char *prefix)
{
	return strncmp(text, prefix, strlen(prefix)) == 0;
}

/* ------------------------------------------------------------ the entries */

static size_t hash_name(const char *name)
{
	size_t h = 1469598103934665603ULL;
	for(; *name; name++){
		h = (h ^ (unsigned char)*name) * 1099511628211ULL;
	}
	return h;
}

static struct entry *find(const char *username)
{
	struct entry *e = S.buckets[hash_name(username) & (S.bucket_count - 1)];
	for(; e; e = e->next){
		if(strcmp(e->username, username) == 0) return e;
	}
	return NULL;
}

static void grow(void)
{
	size_t count = S.bucket_count * 2;
	struct entry **buckets = calloc(count, sizeof(*buckets));
	if(buckets == NULL) return; /* keep the longer chains */
	for(size_t i = 0; i < S.bucket_count; i++){
		struct entry *e = S.buckets[i];
		while(e){
			struct entry *next = e->next;
			size_t b = hash_name(e->username) & (count - 1);
			e->next = buckets[b];
			buckets[b] = e;
			e = next;
		}
	}
	free(S.buckets);
	S.buckets = buckets;
	S.bucket_count = count;
}

static void unlink_entries(bool idle_only)
{
	for(size_t i = 0; i < S.bucket_count; i++){
		struct entry **link = &S.buckets[i];
		while(*link){
			struct entry *e = *link;
			if(idle_only && e->client != NULL){
				link = &e->next;
				continue;
			}
			*link = e->next;
			if(e->client == NULL) S.idle_entries--;
			S.entries--;
			free(e->username);
			free(e);
		}
	}
}

static void drop(const char *username)
{
	struct entry **link = &S.buckets[hash_name(username) & (S.bucket_count - 1)];
	for(; *link; link = &(*link)->next){
		struct entry *e = *link;
		if(strcmp(e->username, username) == 0){
			*link = e->next;
			if(e->client == NULL) S.idle_entries--;
			S.entries--;
			free(e->username);
			free(e);
			return;
		}
	}
}

/* The credential as the database has it now; the entry keeps its connection, if any. */
static struct entry *remember(const char *username, const char *tenant, const char *password_hash,
		bool by_certificate)
{
	struct entry *e = find(username);
	if(e == NULL){
		if(S.idle_entries >= S.cache_size){
			/* Bounded: forget every idle credential; the next connects look them up again. */
			unlink_entries(true);
		}
		e = calloc(1, sizeof(*e));
		if(e == NULL) return NULL;
		e->username = strdup(username);
		if(e->username == NULL){
			free(e);
			return NULL;
		}
		size_t b = hash_name(username) & (S.bucket_count - 1);
		e->next = S.buckets[b];
		S.buckets[b] = e;
		S.entries++;
		S.idle_entries++;
		if(S.entries > S.bucket_count) grow();
	}
	snprintf(e->tenant, sizeof(e->tenant), "%s", tenant);
	snprintf(e->password_hash, sizeof(e->password_hash), "%s", password_hash);
	e->by_certificate = by_certificate;
	return e;
}

static void attach(struct entry *e, const struct mosquitto *client)
{
	if(e->client == NULL) S.idle_entries--;
	e->client = client;
}

static void detach(struct entry *e)
{
	if(e->client != NULL) S.idle_entries++;
	e->client = NULL;
}

/* ---------------------------------------------------------- the database */

static void pg_close(struct pg *pg)
{
	if(pg->conn) PQfinish(pg->conn);
	pg->conn = NULL;
	pg->connecting = false;
	pg->prepared = false;
	pg->next_attempt_ns = now_ns() + RECONNECT_INTERVAL_NS;
}

static PGconn *pg_start(struct pg *pg)
{
	const char *keys[] = {"dbname", "application_name", NULL};
	const char *values[] = {S.conninfo, pg->application_name, NULL};
	return PQconnectStartParams(keys, values, 1);
}

/* Advance a connection without blocking; true once it is ready for queries. */
static bool pg_ready(struct pg *pg, const char *name)
{
	if(pg->conn && !pg->connecting){
		if(PQstatus(pg->conn) == CONNECTION_OK) return true;
		mosquitto_log_printf(MOSQ_LOG_WARNING, "iotcloud_auth: %s database connection lost", name);
		pg_close(pg);
		return false;
	}
	if(pg->conn == NULL){
		if(now_ns() < pg->next_attempt_ns) return false;
		pg->conn = pg_start(pg);
		if(pg->conn == NULL || PQstatus(pg->conn) == CONNECTION_BAD){
			pg_close(pg);
			return false;
		}
		PQsetnonblocking(pg->conn, 1);
		pg->connecting = true;
	}
	switch(PQconnectPoll(pg->conn)){
		case PGRES_POLLING_OK:
			pg->connecting = false;
			mosquitto_log_printf(MOSQ_LOG_INFO, "iotcloud_auth: %s database connection up", name);
			return true;
		case PGRES_POLLING_FAILED:
			mosquitto_log_printf(MOSQ_LOG_WARNING, "iotcloud_auth: %s database connection failed: %s",
					name, PQerrorMessage(pg->conn));
			pg_close(pg);
			return false;
		default:
			return false;
	}
}

/* Wait, bounded, for the running query on the auth connection to finish. */
static PGresult *await_result(int timeout_ms)
{
	PGconn *conn = S.auth.conn;
	long deadline = now_ns() + (long)timeout_ms * 1000000L;
	for(;;){
		if(PQflush(conn) < 0) return NULL;
		if(!PQconsumeInput(conn)) return NULL;
		if(!PQisBusy(conn)){
			PGresult *result = PQgetResult(conn);
			PGresult *extra;
			while((extra = PQgetResult(conn)) != NULL) PQclear(extra);
			return result;
		}
		long left_ms = (deadline - now_ns()) / 1000000L;
		if(left_ms <= 0) return NULL;
		struct pollfd pfd = {.fd = PQsocket(conn), .events = POLLIN};
		if(poll(&pfd, 1, (int)left_ms) < 0 && errno != EINTR) return NULL;
	}
}

static const char *const STATEMENTS[][2] = {
	{"credential", "SELECT tenant_id, password_hash FROM broker_credentials WHERE username = $1"},
	{"certificate", "SELECT tenant_id, username FROM broker_certificates WHERE fingerprint = $1"},
};

/* One row of a lookup statement from the database: 1 found, 0 none, -1 unavailable.
 * "credential": key = user name, out = tenant and token hash; "certificate": key =
 * fingerprint, out = tenant and device id. */
static int lookup(const char *statement, const char *key, char tenant[MAX_TENANT_ID + 1],
		char *second, size_t second_size)
{
	if(!pg_ready(&S.auth, "auth")){
		/* A connection that is still opening gets the rest of this lookup's time. */
		long deadline = now_ns() + (long)S.query_timeout_ms * 1000000L;
		while(S.auth.conn && S.auth.connecting && now_ns() < deadline){
			struct pollfd pfd = {.fd = PQsocket(S.auth.conn), .events = POLLIN | POLLOUT};
			poll(&pfd, 1, 10);
			if(pg_ready(&S.auth, "auth")) break;
		}
		if(!S.auth.conn || S.auth.connecting) return -1;
	}
	if(!S.auth.prepared){
		/* Parsed and planned once per connection: a cold connect storm is one round trip each. */
		for(size_t i = 0; i < sizeof(STATEMENTS) / sizeof(STATEMENTS[0]); i++){
			if(!PQsendPrepare(S.auth.conn, STATEMENTS[i][0], STATEMENTS[i][1], 1, NULL)){
				pg_close(&S.auth);
				return -1;
			}
			PGresult *prepared = await_result(S.query_timeout_ms);
			bool ok = prepared && PQresultStatus(prepared) == PGRES_COMMAND_OK;
			if(prepared) PQclear(prepared);
			if(!ok){
				mosquitto_log_printf(MOSQ_LOG_WARNING, "iotcloud_auth: lookup not prepared: %s",
						PQerrorMessage(S.auth.conn));
				pg_close(&S.auth);
				return -1;
			}
		}
		S.auth.prepared = true;
	}
	const char *params[1] = {key};
	if(!PQsendQueryPrepared(S.auth.conn, statement, 1, params, NULL, NULL, 0)){
		pg_close(&S.auth);
		return -1;
	}
	PGresult *result = await_result(S.query_timeout_ms);
	if(result == NULL){
		mosquitto_log_printf(MOSQ_LOG_WARNING,
				"iotcloud_auth: %s lookup of %s failed or took over %d ms", statement, key,
				S.query_timeout_ms);
		pg_close(&S.auth);
		return -1;
	}
	int found = -1;
	if(PQresultStatus(result) == PGRES_TUPLES_OK){
		found = PQntuples(result) > 0;
		if(found){
			snprintf(tenant, MAX_TENANT_ID + 1, "%s", PQgetvalue(result, 0, 0));
			snprintf(second, second_size, "%s", PQgetvalue(result, 0, 1));
		}
	}else{
		mosquitto_log_printf(MOSQ_LOG_WARNING, "iotcloud_auth: credential lookup failed: %s",
				PQresultErrorMessage(result));
	}
	PQclear(result);
	return found;
}

/* ------------------------------------------------------------- presence */

static void enqueue(const char *device_id, bool connected)
{
	if(S.queue_len == S.queue_cap){
		size_t cap = S.queue_cap ? S.queue_cap * 2 : 1024;
		struct presence_event *queue = NULL;
		if(cap <= MAX_PRESENCE_QUEUE) queue = realloc(S.queue, cap * sizeof(*queue));
		if(queue == NULL){
			if(!S.queue_overflowed){
				mosquitto_log_printf(MOSQ_LOG_WARNING,
						"iotcloud_auth: presence queue full (database away?); events dropped");
			}
			S.queue_overflowed = true;
			return;
		}
		S.queue = queue;
		S.queue_cap = cap;
	}
	struct presence_event *ev = &S.queue[S.queue_len++];
	snprintf(ev->device_id, sizeof(ev->device_id), "%s", device_id);
	ev->connected = connected;
	ev->at_ms = wall_ms();
}

/* Device ids hold only [A-Za-z0-9._:-], so they go into JSON as they are. */
static char *presence_json(size_t count)
{
	size_t size = 2 + count * (MAX_DEVICE_ID + 48);
	char *json = malloc(size);
	if(json == NULL) return NULL;
	size_t at = 0;
	json[at++] = '[';
	for(size_t i = 0; i < count; i++){
		const struct presence_event *ev = &S.queue[i];
		at += (size_t)snprintf(json + at, size - at, "%s{\"d\":\"%s\",\"c\":%s,\"t\":%lld}",
				i ? "," : "", ev->device_id, ev->connected ? "true" : "false", ev->at_ms);
	}
	json[at++] = ']';
	json[at] = '\0';
	return json;
}

static void on_notification(const char *device_id);

static void recheck_clear(void)
{
	for(size_t i = 0; i < S.recheck_count; i++) free(S.recheck_names[i]);
	S.recheck_count = 0;
}

/* The next batch of connected devices, as a PostgreSQL array literal (device ids need no
 * quoting); NULL when every bucket has been visited. */
static char *recheck_batch(void)
{
	recheck_clear();
	while(S.recheck_bucket < S.bucket_count && S.recheck_count < RECHECK_BATCH){
		for(struct entry *e = S.buckets[S.recheck_bucket]; e; e = e->next){
			if(e->client && S.recheck_count < RECHECK_BATCH){
				S.recheck_names[S.recheck_count++] = strdup(e->username);
			}
		}
		S.recheck_bucket++;
	}
	if(S.recheck_count == 0) return NULL;
	char *literal = malloc(3 + S.recheck_count * (MAX_DEVICE_ID + 1));
	if(literal == NULL) return NULL;
	size_t at = 0;
	literal[at++] = '{';
	for(size_t i = 0; i < S.recheck_count; i++){
		if(S.recheck_names[i] == NULL) continue;
		if(at > 1) literal[at++] = ',';
		size_t len = strlen(S.recheck_names[i]);
		memcpy(literal + at, S.recheck_names[i], len);
		at += len;
	}
	literal[at++] = '}';
	literal[at] = '\0';
	return literal;
}

/* Cut every checked device whose credential is gone or changed. */
static void recheck_result(PGresult *result)
{
	for(size_t i = 0; i < S.recheck_count; i++){
		const char *name = S.recheck_names[i];
		if(name == NULL) continue;
		struct entry *e = find(name);
		if(e == NULL || e->client == NULL) continue;
		const char *kind = e->by_certificate ? "c" : "t";
		bool current = false;
		for(int row = 0; row < PQntuples(result) && !current; row++){
			current = strcmp(PQgetvalue(result, row, 0), name) == 0
				&& strcmp(PQgetvalue(result, row, 2), kind) == 0
				&& same_hash(PQgetvalue(result, row, 1), e->password_hash);
		}
		if(!current) on_notification(name);
	}
	recheck_clear();
}

static void async_send(void)
{
	if(!S.listening){
		if(PQsendQuery(S.async.conn, "LISTEN iot_broker_credentials")){
			S.async_query = SENT_LISTEN;
			S.listening = true;
			S.in_flight = 0;
			/* Notifications missed while away: drop every idle credential, re-check the rest. */
			unlink_entries(true);
		}
		return;
	}
	if(S.rechecking){
		char *names = recheck_batch();
		if(names == NULL){
			S.rechecking = false;
		}else{
			const char *params[1] = {names};
			if(PQsendQueryParams(S.async.conn, "SELECT username, password_hash, 't' "
					"FROM broker_credentials WHERE username = ANY($1::text[]) "
					"UNION ALL SELECT username, fingerprint, 'c' "
					"FROM broker_certificates WHERE username = ANY($1::text[])", 1, NULL, params,
					NULL, NULL, 0)){
				S.async_query = SENT_RECHECK;
			}
			free(names);
			return;
		}
	}
	if(!S.started_recorded){
		const char *params[1] = {S.broker};
		if(PQsendQueryParams(S.async.conn, "SELECT broker_started($1)", 1, NULL, params, NULL,
				NULL, 0)){
			S.async_query = SENT_STARTED;
			S.in_flight = 0;
		}
		return;
	}
	if(S.queue_len == 0) return;
	size_t count = S.queue_len < PRESENCE_BATCH ? S.queue_len : PRESENCE_BATCH;
	char *json = presence_json(count);
	if(json == NULL) return;
	const char *params[2] = {S.broker, json};
	if(PQsendQueryParams(S.async.conn, "SELECT broker_presence($1, $2::jsonb)", 2, NULL, params,
			NULL, NULL, 0)){
		S.async_query = SENT_PRESENCE;
		S.in_flight = count;
	}
	free(json);
}

static void async_finished(bool ok)
{
	if(ok && S.async_query == SENT_PRESENCE){
		memmove(S.queue, S.queue + S.in_flight, (S.queue_len - S.in_flight) * sizeof(*S.queue));
		S.queue_len -= S.in_flight;
		S.queue_overflowed = false;
	}else if(ok && S.async_query == SENT_STARTED){
		S.started_recorded = true;
	}else if(ok && S.async_query == SENT_LISTEN){
		if(S.listened_before){
			S.rechecking = true;
			S.recheck_bucket = 0;
		}
		S.listened_before = true;
	}else if(!ok && S.async_query == SENT_LISTEN){
		S.listening = false;
	}else if(!ok && S.async_query == SENT_RECHECK){
		recheck_clear();
		S.rechecking = false;
	}
	S.async_query = IDLE;
	S.in_flight = 0;
}

static void on_notification(const char *device_id)
{
	struct entry *e = find(device_id);
	bool was_connected = e && e->client;
	drop(device_id);
	if(was_connected){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"iotcloud_auth: credential of %s changed; cutting its session", device_id);
		enqueue(device_id, false);
	}
	mosquitto_kick_client_by_username(device_id, false);
}

static void async_tick(void)
{
	if(!pg_ready(&S.async, "presence")){
		S.listening = false;
		S.async_query = IDLE;
		S.in_flight = 0;
		return;
	}
	PGconn *conn = S.async.conn;
	if(PQflush(conn) < 0 || !PQconsumeInput(conn)){
		pg_close(&S.async);
		S.listening = false;
		S.async_query = IDLE;
		S.in_flight = 0;
		return;
	}
	while(S.async_query != IDLE && !PQisBusy(conn)){
		PGresult *result = PQgetResult(conn);
		if(result == NULL){
			async_finished(true);
			break;
		}
		ExecStatusType status = PQresultStatus(result);
		if(status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK){
			mosquitto_log_printf(MOSQ_LOG_WARNING, "iotcloud_auth: presence write failed: %s",
					PQresultErrorMessage(result));
			PQclear(result);
			while((result = PQgetResult(conn)) != NULL) PQclear(result);
			async_finished(false);
			break;
		}
		if(S.async_query == SENT_RECHECK) recheck_result(result);
		PQclear(result);
	}
	PGnotify *note;
	while((note = PQnotifies(conn)) != NULL){
		on_notification(note->extra);
		PQfreemem(note);
	}
	if(S.async_query == IDLE) async_send();
}

/* ------------------------------------------------------------ callbacks */

/* A client certificate (only a `require_certificate` listener asks for one, so it has been
 * verified against that listener's trust store): its fingerprint names the device. */
static int on_certificate_auth(struct mosquitto *client, X509 *cert)
{
	char fingerprint[SHA256_HEX + 1];
	bool hashed = certificate_fingerprint(cert, fingerprint);
	X509_free(cert);
	const char *client_id = mosquitto_client_id(client);
	if(!hashed || client_id == NULL) return MOSQ_ERR_AUTH;
	char tenant[MAX_TENANT_ID + 1], device_id[MAX_DEVICE_ID + 1];
	int found = lookup("certificate", fingerprint, tenant, device_id, sizeof(device_id));
	if(found <= 0){
		if(found == 0){
			mosquitto_log_printf(MOSQ_LOG_NOTICE,
					"iotcloud_auth: refused a certificate no live device holds (SHA-256 %s)",
					fingerprint);
		}
		return MOSQ_ERR_AUTH;
	}
	if(strcmp(client_id, device_id) != 0){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"iotcloud_auth: refused %s's certificate: the client id must be the device id",
				device_id);
		return MOSQ_ERR_AUTH;
	}
	/* The device id, not what the client sent, is its user name from now on: ACL checks,
	 * kicks and presence all go by it. */
	if(mosquitto_set_username(client, device_id) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_AUTH;
	struct entry *e = remember(device_id, tenant, fingerprint, true);
	if(e == NULL) return MOSQ_ERR_AUTH;
	attach(e, client);
	enqueue(device_id, true);
	return MOSQ_ERR_SUCCESS;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_basic_auth *ed = event_data;
	X509 *cert = mosquitto_client_certificate(ed->client);
	if(cert != NULL) return on_certificate_auth(ed->client, cert);
	const char *client_id = mosquitto_client_id(ed->client);
	if(ed->username == NULL || ed->password == NULL || client_id == NULL){
		return MOSQ_ERR_AUTH;
	}
	if(strlen(ed->password) > MAX_PASSWORD){
		return MOSQ_ERR_AUTH;
	}
	char offered[SHA256_HEX + 1];
	if(!sha256_hex(ed->password, offered)) return MOSQ_ERR_AUTH;

	if(strcmp(ed->username, S.service_user) == 0){
		if(!same_hash(offered, S.service_hash)) return MOSQ_ERR_AUTH;
		if(!starts_with(client_id, S.service_prefix)){
			mosquitto_log_printf(MOSQ_LOG_NOTICE,
					"iotcloud_auth: service login with client id %s refused (must start with %s)",
					client_id, S.service_prefix);
			return MOSQ_ERR_AUTH;
		}
		return MOSQ_ERR_SUCCESS;
	}
	if(!valid_device_id(ed->username) || strcmp(client_id, ed->username) != 0){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"iotcloud_auth: refused a login: the client id must equal the device id");
		return MOSQ_ERR_AUTH;
	}
	struct entry *e = find(ed->username);
	if(e == NULL || e->by_certificate || !same_hash(offered, e->password_hash)){
		/* Unknown here, a token newer than the one remembered, or remembered from a
		 * certificate (whose fingerprint is public, never a password): ask the database. */
		char tenant[MAX_TENANT_ID + 1], stored[SHA256_HEX + 1];
		int found = lookup("credential", ed->username, tenant, stored, sizeof(stored));
		if(found < 0) return MOSQ_ERR_AUTH;
		if(found == 0){
			if(e && e->client == NULL) drop(ed->username);
			return MOSQ_ERR_AUTH;
		}
		if(!same_hash(offered, stored)) return MOSQ_ERR_AUTH;
		e = remember(ed->username, tenant, stored, false);
		if(e == NULL) return MOSQ_ERR_AUTH;
	}
	attach(e, ed->client);
	enqueue(ed->username, true);
	return MOSQ_ERR_SUCCESS;
}

/* `rest` is a topic below a shadow prefix: "reported" or "name/<shadow>/reported". */
static bool is_report(const char *rest, const char *leaf)
{
	if(strcmp(rest, leaf) == 0) return true;
	if(!starts_with(rest, "name/")) return false;
	const char *slash = strchr(rest + 5, '/');
	return slash && slash != rest + 5 && strcmp(slash + 1, leaf) == 0;
}

static bool aws_request(const char *rest)
{
	return is_report(rest, "get") || is_report(rest, "update") || is_report(rest, "delete");
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *username = mosquitto_client_username(ed->client);
	if(username == NULL) return MOSQ_ERR_ACL_DENIED;
	if(strcmp(username, S.service_user) == 0) return MOSQ_ERR_SUCCESS;
	struct entry *e = find(username);
	if(e == NULL || e->client != ed->client) return MOSQ_ERR_ACL_DENIED;
	if(ed->access == MOSQ_ACL_UNSUBSCRIBE) return MOSQ_ERR_SUCCESS;

	char own[sizeof("tenant//device//shadow/") + MAX_TENANT_ID + MAX_DEVICE_ID];
	char any_tenant[sizeof("tenant/+/device//shadow/") + MAX_DEVICE_ID];
	char aws[sizeof("$aws/things//shadow/") + MAX_DEVICE_ID];
	snprintf(own, sizeof(own), "tenant/%s/device/%s/shadow/", e->tenant, username);
	snprintf(any_tenant, sizeof(any_tenant), "tenant/+/device/%s/shadow/", username);
	snprintf(aws, sizeof(aws), "$aws/things/%s/shadow/", username);
	const char *topic = ed->topic;

	switch(ed->access){
		case MOSQ_ACL_WRITE:
			if(starts_with(topic, own) && is_report(topic + strlen(own), "reported")){
				return MOSQ_ERR_SUCCESS;
			}
			if(starts_with(topic, aws) && aws_request(topic + strlen(aws))){
				return MOSQ_ERR_SUCCESS;
			}
			return MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_READ:
			return starts_with(topic, own) || starts_with(topic, aws) ? MOSQ_ERR_SUCCESS
				: MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_SUBSCRIBE:
			/* A filter below one of its own prefixes can match only its own topics. */
			return starts_with(topic, own) || starts_with(topic, any_tenant)
				|| starts_with(topic, aws) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
		default:
			return MOSQ_ERR_ACL_DENIED;
	}
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)userdata;
	struct mosquitto_evt_disconnect *ed = event_data;
	const char *username = mosquitto_client_username(ed->client);
	if(username == NULL || strcmp(username, S.service_user) == 0) return MOSQ_ERR_SUCCESS;
	struct entry *e = find(username);
	/* A connection the device has since replaced is not the device going away. */
	if(e == NULL || e->client != ed->client) return MOSQ_ERR_SUCCESS;
	detach(e);
	enqueue(username, false);
	return MOSQ_ERR_SUCCESS;
}

static int on_tick(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;
	async_tick();
	if(S.auth.conn == NULL || S.auth.connecting) pg_ready(&S.auth, "auth");
	return MOSQ_ERR_SUCCESS;
}

/* -------------------------------------------------------------- plugin */

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

static const char *option(struct mosquitto_opt *opts, int count, const char *key)
{
	for(int i = 0; i < count; i++){
		if(strcmp(opts[i].key, key) == 0) return opts[i].value;
	}
	return NULL;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *opts, int opt_count)
{
	(void)userdata;
	memset(&S, 0, sizeof(S));
	S.id = identifier;
	const char *db = option(opts, opt_count, "database");
	const char *user = option(opts, opt_count, "service_user");
	const char *hash = option(opts, opt_count, "service_password_sha256");
	const char *prefix = option(opts, opt_count, "service_clientid_prefix");
	const char *name = option(opts, opt_count, "broker_name");
	const char *cache = option(opts, opt_count, "cache_size");
	const char *timeout = option(opts, opt_count, "query_timeout_ms");
	if(db == NULL || user == NULL || hash == NULL || strlen(hash) != SHA256_HEX){
		mosquitto_log_printf(MOSQ_LOG_ERR, "iotcloud_auth: plugin_opt_database, plugin_opt_service_user "
				"and plugin_opt_service_password_sha256 (64 hex digits) are required");
		return MOSQ_ERR_INVAL;
	}
	S.conninfo = strdup(db);
	S.service_user = strdup(user);
	snprintf(S.service_hash, sizeof(S.service_hash), "%s", hash);
	for(char *c = S.service_hash; *c; c++) *c = (char)tolower((unsigned char)*c);
	S.service_prefix = strdup(prefix ? prefix : "$iotcloud-");
	unsigned char instance[6];
	if(RAND_bytes(instance, sizeof(instance)) != 1) return MOSQ_ERR_UNKNOWN;
	snprintf(S.broker, sizeof(S.broker), "%.200s/%02x%02x%02x%02x%02x%02x", name ? name : "broker",
			instance[0], instance[1], instance[2], instance[3], instance[4], instance[5]);
	S.cache_size = cache ? strtoul(cache, NULL, 10) : 100000;
	S.query_timeout_ms = timeout ? atoi(timeout) : 1000;
	if(S.query_timeout_ms <= 0) S.query_timeout_ms = 1000;
	S.bucket_count = 1024;
	S.buckets = calloc(S.bucket_count, sizeof(*S.buckets));
	if(!S.conninfo || !S.service_user || !S.service_prefix || !S.buckets) return MOSQ_ERR_NOMEM;

	S.auth.application_name = "iotcloud-broker-auth";
	S.async.application_name = "iotcloud-broker-listen";
	/* At start-up the broker may wait: open the lookup connection now. */
	const char *keys[] = {"dbname", "application_name", NULL};
	const char *values[] = {S.conninfo, S.auth.application_name, NULL};
	S.auth.conn = PQconnectdbParams(keys, values, 1);
	if(PQstatus(S.auth.conn) != CONNECTION_OK){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "iotcloud_auth: database not reachable yet: %s",
				PQerrorMessage(S.auth.conn));
		pg_close(&S.auth);
	}
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "iotcloud_auth: devices authenticate against the "
			"database; presence as %s", S.broker);

	int rc = mosquitto_callback_register(S.id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL);
	if(!rc) rc = mosquitto_callback_register(S.id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
	if(!rc) rc = mosquitto_callback_register(S.id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, NULL);
	if(!rc) rc = mosquitto_callback_register(S.id, MOSQ_EVT_TICK, on_tick, NULL, NULL);
	return rc;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *opts, int opt_count)
{
	(void)userdata;
	(void)opts;
	(void)opt_count;
	mosquitto_callback_unregister(S.id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(S.id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(S.id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
	mosquitto_callback_unregister(S.id, MOSQ_EVT_TICK, on_tick, NULL);
	/* Presence still queued is written now, while the broker stops, if it can be. */
	if(S.async.conn && !S.async.connecting && S.queue_len && S.started_recorded){
		PQsetnonblocking(S.async.conn, 0);
		PGresult *r;
		while((r = PQgetResult(S.async.conn)) != NULL) PQclear(r);
		char *json = presence_json(S.queue_len < PRESENCE_BATCH ? S.queue_len : PRESENCE_BATCH);
		if(json){
			const char *params[2] = {S.broker, json};
			PQclear(PQexecParams(S.async.conn, "SELECT broker_presence($1, $2::jsonb)", 2, NULL,
					params, NULL, NULL, 0));
			free(json);
		}
	}
	pg_close(&S.auth);
	pg_close(&S.async);
	recheck_clear();
	unlink_entries(false);
	free(S.buckets);
	free(S.queue);
	free(S.conninfo);
	free(S.service_user);
	free(S.service_prefix);
	return MOSQ_ERR_SUCCESS;
}
