#!/bin/bash
# iot-mosquitto's start: checks its settings, writes mosquitto.conf from the environment,
# makes the private CA's certificates when no certificate of your own is given, then runs
# Mosquitto. A bad setting is one line on stderr and exit 2 (docs/deploy.md).
#   POSTGRES_HOST/POSTGRES_PORT/POSTGRES_DB/POSTGRES_USER/POSTGRES_PASSWORD  the database
#   IOTCLOUD_BROKER_SERVICE_PASSWORD  the services' broker login ($iotcloud-service)
#   IOTCLOUD_TLS_CERT/IOTCLOUD_TLS_KEY  your own certificate and key (PEM); else the private CA
#   IOTCLOUD_TLS_NAMES  extra names and addresses for the private CA's server certificate
#   IOTCLOUD_BROKER_DURABILITY  fast (default) or safe, as in docs/operations.md
set -euo pipefail
SERVICE_USER='$iotcloud-service'
SERVICE_PREFIX='$iotcloud-'
TLS_DIR=/tls
CONF=/mosquitto/config/mosquitto.conf

fail() {
  echo "iot-mosquitto: $*" >&2
  exit 2
}

secret() { # name: set, not the example value, no white space (it goes into client config files)
  local name=$1 value=${!1:-}
  [ -n "$value" ] || fail "$name is not set (see deploy/.env.example)"
  case $value in change-me*) fail "$name still has the example value of deploy/.env.example; set a random one (openssl rand -hex 32)" ;; esac
  case $value in *[[:space:]]*) fail "$name must not contain white space" ;; esac
}

urlencode() {
  local LC_ALL=C s=$1 out='' c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case $c in [a-zA-Z0-9._~-]) out+=$c ;; *) out+=$(printf '%%%02X' "'$c") ;; esac
  done
  printf %s "$out"
}

readable() { # setting: the file it names can be opened for reading
  local name=$1 path=${!1}
  [ -r "$path" ] && [ -f "$path" ] && head -c 1 "$path" >/dev/null 2>&1 ||
    fail "$name ($path) cannot be read by the broker (uid $(id -u)): check the path and its permissions"
}

secret POSTGRES_PASSWORD
secret IOTCLOUD_BROKER_SERVICE_PASSWORD
durability=${IOTCLOUD_BROKER_DURABILITY:-fast}
case $durability in
  fast) persistence=("autosave_interval 5") ;;
  safe) persistence=("autosave_on_changes true" "autosave_interval 1") ;;
  *) fail "IOTCLOUD_BROKER_DURABILITY must be one of fast, safe, got '$durability'" ;;
esac

# --- TLS: your certificate, or the private CA's under /tls (a volume: devices keep trusting it)
if [ -n "${IOTCLOUD_TLS_CERT:-}${IOTCLOUD_TLS_KEY:-}" ]; then
  [ -n "${IOTCLOUD_TLS_CERT:-}" ] && [ -n "${IOTCLOUD_TLS_KEY:-}" ] ||
    fail "IOTCLOUD_TLS_CERT and IOTCLOUD_TLS_KEY must be set together"
  readable IOTCLOUD_TLS_CERT
  readable IOTCLOUD_TLS_KEY
  openssl x509 -in "$IOTCLOUD_TLS_CERT" -noout 2>/dev/null ||
    fail "IOTCLOUD_TLS_CERT ($IOTCLOUD_TLS_CERT) holds no PEM certificate"
  openssl pkey -in "$IOTCLOUD_TLS_KEY" -noout -passin pass: 2>/dev/null ||
    fail "IOTCLOUD_TLS_KEY ($IOTCLOUD_TLS_KEY) holds no usable PEM private key (without a passphrase)"
  [ "$(openssl x509 -in "$IOTCLOUD_TLS_CERT" -noout -pubkey)" = "$(openssl pkey -in "$IOTCLOUD_TLS_KEY" -pubout)" ] ||
    fail "IOTCLOUD_TLS_KEY ($IOTCLOUD_TLS_KEY) is not the key of the certificate in IOTCLOUD_TLS_CERT"
  certfile=$IOTCLOUD_TLS_CERT keyfile=$IOTCLOUD_TLS_KEY
else
  [ -w "$TLS_DIR" ] || fail "$TLS_DIR is not writable by the broker (uid $(id -u)); it keeps the private CA"
  sans="DNS:localhost,DNS:iot-mosquitto,DNS:$(hostname),IP:127.0.0.1,IP:::1"
  IFS=',' read -r -a extra <<<"${IOTCLOUD_TLS_NAMES:-}"
  for name in "${extra[@]}"; do
    name=${name//[[:space:]]/}
    [ -n "$name" ] || continue
    if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then sans+=",IP:$name"; else sans+=",DNS:$name"; fi
  done
  umask 077
  if [ ! -s "$TLS_DIR/ca.pem" ]; then
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days 3650 \
      -subj "/O=iotcloud/CN=iotcloud private CA ($(hostname))" \
      -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -addext "subjectKeyIdentifier=hash" \
      -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem.tmp" 2>/dev/null
    chmod 644 "$TLS_DIR/ca.pem.tmp" && mv "$TLS_DIR/ca.pem.tmp" "$TLS_DIR/ca.pem"
    echo "iot-mosquitto: created the private CA; devices trust $TLS_DIR/ca.pem"
  fi
  [ -r "$TLS_DIR/ca.key" ] || fail "$TLS_DIR/ca.pem has no ca.key beside it; restore it, or remove ca.pem to make a new CA"
  # A server certificate for these names, issued again when they change or it nears its end.
  if [ "$(cat "$TLS_DIR/server.names" 2>/dev/null)" != "$sans" ] ||
    ! openssl x509 -in "$TLS_DIR/server.pem" -noout -checkend $((30 * 86400)) >/dev/null 2>&1; then
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
      -subj "/CN=iot-mosquitto" -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr" 2>/dev/null
    printf '%s\n' "subjectAltName=$sans" "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" \
      "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" >"$TLS_DIR/server.ext"
    openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
      -CAcreateserial -days 397 -sha256 -extfile "$TLS_DIR/server.ext" -out "$TLS_DIR/server.pem" 2>/dev/null
    rm -f "$TLS_DIR/server.csr" "$TLS_DIR/server.ext"
    printf '%s' "$sans" >"$TLS_DIR/server.names"
  fi
  certfile=$TLS_DIR/server.pem keyfile=$TLS_DIR/server.key
fi

# --- mosquitto.conf (written at every start; edits are overwritten)
db_url="postgresql://$(urlencode "${POSTGRES_USER:-iot}"):$(urlencode "$POSTGRES_PASSWORD")@${POSTGRES_HOST:-iot-postgres}:${POSTGRES_PORT:-5432}/$(urlencode "${POSTGRES_DB:-iotcloud}")?connect_timeout=5"
service_hash=$(printf %s "$IOTCLOUD_BROKER_SERVICE_PASSWORD" | sha256sum | cut -d' ' -f1)
umask 077
{
  echo "# Written by broker-entrypoint at every start; edits are overwritten."
  echo "per_listener_settings false"
  echo "allow_anonymous false"
  echo "listener 1883"
  echo "listener 8883"
  echo "certfile $certfile"
  echo "keyfile $keyfile"
  echo "persistence true"
  echo "persistence_location /mosquitto/data/"
  printf '%s\n' "${persistence[@]}"
  echo "max_queued_messages 1000000"
  echo "max_inflight_messages 1000"
  echo "set_tcp_nodelay true"
  echo "connection_messages false"
  echo "log_dest stdout"
  echo "log_type error"
  echo "log_type warning"
  echo "plugin /usr/lib/iotcloud/iotcloud_auth.so"
  echo "plugin_opt_database $db_url"
  echo "plugin_opt_service_user $SERVICE_USER"
  echo "plugin_opt_service_password_sha256 $service_hash"
  echo "plugin_opt_service_clientid_prefix $SERVICE_PREFIX"
  echo "plugin_opt_broker_name ${IOTCLOUD_BROKER_NAME:-$(hostname)}"
} >"$CONF"

# `docker exec iot-mosquitto mosquitto_sub -t ...` logs in as the services (the broker takes no
# anonymous clients): the clients read their default options from these files.
for client in mosquitto_sub mosquitto_pub mosquitto_rr; do
  printf '%s\n' "-h localhost" "-p 1883" "-u $SERVICE_USER" "-P $IOTCLOUD_BROKER_SERVICE_PASSWORD" \
    "-I ${SERVICE_PREFIX}exec-" >"$HOME/.config/$client"
done

exec mosquitto -c "$CONF"
