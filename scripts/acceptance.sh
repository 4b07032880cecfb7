#!/usr/bin/env bash
# The user's acceptance steps 1-10 (the device-twin check) against a running install, with a
# PASS or FAIL line per step; exits 1 if any step failed. Start the stack first (`make run`,
# or `iotcloud up` with your own DATABASE_URL), then run this from the checkout.
#
# Settings (environment), with their defaults:
#   DATABASE_URL      the embedded database's URL (from `iotcloud status`)
#   UI_URL            http://127.0.0.1:8000      operator API
#   INGEST_URL        http://127.0.0.1:8001      device API
#   MQTT_HOST         127.0.0.1                  broker (plain MQTT)
#   MQTT_PORT         1884
#   ACCEPTANCE_EMAIL  admin@demo.local           an operator (admin) whose token `iotcloud token` prints
#   TOKEN             (unset)                    or give the bearer token yourself
#   ACCEPTANCE_STEPS  "1 2 3 4 5 6 7 8 9 10"     the steps to run
# It registers one device of its own (acceptance-<random>) and deletes it at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY="$ROOT/.venv/bin/python"
IOTCLOUD="$ROOT/.venv/bin/iotcloud"
export PYTHONPATH="$ROOT/services${PYTHONPATH:+:$PYTHONPATH}"
UI_URL=${UI_URL:-http://127.0.0.1:8000}
INGEST_URL=${INGEST_URL:-http://127.0.0.1:8001}
MQTT_HOST=${MQTT_HOST:-127.0.0.1}
MQTT_PORT=${MQTT_PORT:-1884}
ACCEPTANCE_EMAIL=${ACCEPTANCE_EMAIL:-admin@demo.local}
STEPS=${ACCEPTANCE_STEPS:-1 2 3 4 5 6 7 8 9 10}
LOG=$(mktemp -d "${TMPDIR:-/tmp}/acceptance.XXXXXX")
failures=0

say() { printf '%s\n' "$*"; }
die() { say "acceptance: $*" >&2; exit 2; }
[ -x "$PY" ] || die "no .venv here: run make setup first"

if [ -z "${DATABASE_URL:-}" ]; then
  DATABASE_URL=$("$IOTCLOUD" status --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["database"]["url"] or "")') \
    || die "cannot read the embedded database's URL (iotcloud status)"
  [ -n "$DATABASE_URL" ] || die "the embedded database is not running: start the stack (make run) or set DATABASE_URL"
fi
export DATABASE_URL

# sql QUERY: the rows of a query, one per line, columns separated by |
sql() {
  "$PY" - "$1" <<'PYEOF'
import asyncio, os, sys
import asyncpg
async def main() -> None:
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        for row in await conn.fetch(sys.argv[1]):
            print("|".join("" if v is None else str(v) for v in row.values()))
    finally:
        await conn.close()
asyncio.run(main())
PYEOF
}

# json_get EXPR: evaluate a Python expression on the JSON document on stdin (as d)
json_get() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

step() {  # step N TITLE FUNCTION
  local number=$1 title=$2 function=$3
  case " $STEPS " in *" $number "*) ;; *) return 0 ;; esac
  if "$function" >"$LOG/step-$number.log" 2>&1; then
    say "PASS  step $number: $title"
  else
    failures=$((failures + 1))
    say "FAIL  step $number: $title"
    sed 's/^/      /' "$LOG/step-$number.log" | tail -n 15
  fi
}

# --- set-up: a token and a device of our own ----------------------------------------------
if [ -z "${TOKEN:-}" ]; then
  TOKEN=$("$IOTCLOUD" token --email "$ACCEPTANCE_EMAIL" 2>"$LOG/token.err") \
    || die "no token for $ACCEPTANCE_EMAIL: $(cat "$LOG/token.err") (set ACCEPTANCE_EMAIL or TOKEN)"
fi
AUTH=(-H "Authorization: Bearer $TOKEN")
ME=$(curl -fsS "${AUTH[@]}" "$UI_URL/auth/me") || die "the operator API at $UI_URL does not accept the token (UI_URL, TOKEN)"
TENANT=$(printf '%s' "$ME" | json_get 'd["tenant_id"]')
DEVICE_ID="acceptance-$(date +%s)-$RANDOM"
CREATED=$(curl -fsS "${AUTH[@]}" -H 'Content-Type: application/json' -d "{\"device_id\": \"$DEVICE_ID\"}" \
  "$UI_URL/customer/devices") || die "cannot register a device (the user must be an admin)"
PROV_TOKEN=$(printf '%s' "$CREATED" | json_get 'd["provision_token"]')
cleanup() { curl -fsS -X DELETE "${AUTH[@]}" "$UI_URL/customer/devices/$DEVICE_ID" >/dev/null 2>&1 || true; rm -rf "$LOG"; }
trap cleanup EXIT
say "acceptance: tenant $TENANT, device $DEVICE_ID, $UI_URL, $INGEST_URL, mqtt://$MQTT_HOST:$MQTT_PORT"

# --- the steps ------------------------------------------------------------------------------
step1() {
  local columns index
  columns=$(sql "SELECT column_name FROM information_schema.columns WHERE table_name = 'device_state'
    AND column_name IN ('desired_state','reported_state','desired_version','reported_version','shadow_updated_at')
    ORDER BY column_name")
  say "$columns"
  [ "$(printf '%s\n' "$columns" | grep -c .)" = 5 ] || { say "expected 5 columns"; return 1; }
  index=$(sql "SELECT indexname FROM pg_indexes WHERE tablename = 'device_state' AND indexname = 'idx_device_state_shadow_pending'")
  [ "$index" = idx_device_state_shadow_pending ] || { say "index idx_device_state_shadow_pending missing"; return 1; }
}

step2() {
  "$PY" -c "from shared.twin import compute_delta, sync_status; print('OK')" | grep -qx OK &&
  "$PY" -c "
from shared.twin import compute_delta
delta = compute_delta({'a': 1, 'b': 2}, {'a': 1, 'b': 99, 'c': 3})
assert delta == {'b': 2}, f'Got: {delta}'
print('delta OK')"
}

step3() {
  local twin
  [ "$(sql "SELECT count(*) FROM device_state WHERE device_id = '$DEVICE_ID'")" = 1 ] || { say "no device_state row"; return 1; }
  twin=$(curl -fsS "${AUTH[@]}" "$UI_URL/customer/devices/$DEVICE_ID/twin") || return 1
  say "$twin"
  printf '%s' "$twin" | json_get 'all(k in d for k in ("desired", "reported", "delta", "desired_version", "reported_version", "sync_status")) or sys.exit(1)'
}

step4() {
  local twin
  twin=$(curl -fsS -X PATCH "${AUTH[@]}" -H 'Content-Type: application/json' \
    -d '{"desired": {"reporting_interval_s": 30, "alert_temp_threshold": 45}}' \
    "$UI_URL/customer/devices/$DEVICE_ID/twin/desired") || return 1
  say "$twin"
  [ "$(printf '%s' "$twin" | json_get 'd["desired_version"]')" = 1 ] || { say "desired_version is not 1"; return 1; }
  [ "$(sql "SELECT desired_version FROM device_state WHERE device_id = '$DEVICE_ID'")" = 1 ] || { say "the database says otherwise"; return 1; }
}

step5() {
  local message
  command -v mosquitto_sub >/dev/null || { say "mosquitto_sub is not installed (mosquitto-clients)"; return 1; }
  message=$(mosquitto_sub -h "$MQTT_HOST" -p "$MQTT_PORT" -i "$DEVICE_ID" -u "$DEVICE_ID" -P "$PROV_TOKEN" \
    -t "tenant/$TENANT/device/$DEVICE_ID/shadow/desired" -C 1 -W 5) || { say "no retained message within 5 s"; return 1; }
  say "$message"
  printf '%s' "$message" | json_get '("desired" in d and "version" in d) or sys.exit(1)'
}

step6() {
  local shadow
  shadow=$(curl -fsS -H "X-Provision-Token: $PROV_TOKEN" "$INGEST_URL/device/v1/shadow") || return 1
  say "$shadow"
  printf '%s' "$shadow" | json_get '(d["version"] == 1 and d["desired"]["reporting_interval_s"] == 30) or sys.exit(1)'
}

step7() {
  local reply status
  reply=$(curl -fsS -X POST -H "X-Provision-Token: $PROV_TOKEN" -H 'Content-Type: application/json' \
    -d '{"reported": {"reporting_interval_s": 30, "alert_temp_threshold": 45}, "version": 1}' \
    "$INGEST_URL/device/v1/shadow/reported") || return 1
  say "$reply"
  printf '%s' "$reply" | json_get '(d["accepted"] is True and d["version"] == 1) or sys.exit(1)' || return 1
  status=$(curl -fsS "${AUTH[@]}" "$UI_URL/customer/devices/$DEVICE_ID/twin" | json_get '"%s %s" % (d["sync_status"], d["reported_version"])')
  say "$status"
  [ "$status" = "synced 1" ]
}

step8() {
  local delta
  curl -fsS -X PATCH "${AUTH[@]}" -H 'Content-Type: application/json' -d '{"desired": {"reporting_interval_s": 60}}' \
    "$UI_URL/customer/devices/$DEVICE_ID/twin/desired" >/dev/null || return 1
  delta=$(curl -fsS "${AUTH[@]}" "$UI_URL/customer/devices/$DEVICE_ID/twin/delta") || return 1
  say "$delta"
  printf '%s' "$delta" | json_get '(d["delta"].get("reporting_interval_s") == 60 and d["in_sync"] is False) or sys.exit(1)'
}

step9() { npm run build --prefix frontend 2>&1 | tail -5; return "${PIPESTATUS[0]}"; }

step10() { "$ROOT/.venv/bin/pytest" tests/unit/ -q --no-cov -p no:cacheprovider -k twin 2>&1 | tail -10; return "${PIPESTATUS[0]}"; }

step 1 "migration applied (5 shadow columns, pending index)" step1
step 2 "shared/twin.py: compute_delta, sync_status" step2
step 3 "operator API: GET twin" step3
step 4 "operator API: PATCH desired (version 1)" step4
step 5 "MQTT: retained desired message" step5
step 6 "device HTTP pull" step6
step 7 "device HTTP report, then synced 1" step7
step 8 "delta endpoint" step8
step 9 "frontend build" step9
step 10 "unit tests of the twin" step10

if [ "$failures" -gt 0 ]; then
  say "acceptance: $failures step(s) failed"
  exit 1
fi
say "acceptance: every step passed"
