#!/bin/bash
# iot-postgres's start: the first time, a cluster whose superuser is POSTGRES_USER with
# POSTGRES_PASSWORD (password logins over the network, trust on the container's own socket,
# which is what `docker exec iot-postgres psql -U iot iotcloud` uses) and the database
# POSTGRES_DB; then PostgreSQL in the foreground. A bad setting is one line and exit 2.
set -euo pipefail
user=${POSTGRES_USER:-iot}
db=${POSTGRES_DB:-iotcloud}
fail() {
  echo "iot-postgres: $*" >&2
  exit 2
}
[ -n "${POSTGRES_PASSWORD:-}" ] || fail "POSTGRES_PASSWORD is not set (see deploy/.env.example)"
case $POSTGRES_PASSWORD in change-me*) fail "POSTGRES_PASSWORD still has the example value of deploy/.env.example; set a random one (openssl rand -hex 32)" ;; esac
[ -w "$PGDATA" ] || fail "$PGDATA is not writable by uid $(id -u)"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  printf '%s\n' "host all all 0.0.0.0/0 scram-sha-256" "host all all ::/0 scram-sha-256" >>"$PGDATA/pg_hba.conf"
  printf '%s\n' "listen_addresses = '*'" "max_connections = ${POSTGRES_MAX_CONNECTIONS:-200}" >>"$PGDATA/postgresql.conf"
  # The first start on a private socket: nothing (not even the healthcheck) sees the server
  # before its database exists.
  init_socket=$(mktemp -d)
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=$init_socket" -w -s start
  createdb -h "$init_socket" -U "$user" "$db"
  pg_ctl -D "$PGDATA" -m fast -w -s stop
  rmdir "$init_socket"
  echo "iot-postgres: initialised $PGDATA with user $user and database $db"
fi
exec postgres -D "$PGDATA"
