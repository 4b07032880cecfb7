#!/usr/bin/env bash
# Backup and restore of the deployment's database, through the iot-postgres container.
#   deploy/backup.sh backup [FILE]   pg_dump in custom format (default iotcloud-<UTC time>.dump)
#   deploy/backup.sh restore FILE    pg_restore into iot-postgres's database, replacing what is there
# Stop ui_iot and ingest_iot before a restore, start them after (docs/deploy.md).
#   DOCKER     the container CLI (default docker; podman works the same)
#   CONTAINER  the database container (default iot-postgres)
#   PGUSER/PGDATABASE  default iot / iotcloud
set -euo pipefail
docker=${DOCKER:-docker}
container=${CONTAINER:-iot-postgres}
user=${PGUSER:-iot}
database=${PGDATABASE:-iotcloud}

usage() {
  echo "usage: $0 backup [FILE] | restore FILE" >&2
  exit 2
}

case ${1:-} in
  backup)
    file=${2:-iotcloud-$(date -u +%Y%m%dT%H%M%SZ).dump}
    tmp="$file.partial"
    # A consistent snapshot (one transaction) while the services keep running.
    if ! "$docker" exec "$container" pg_dump -U "$user" -d "$database" --format=custom --no-owner >"$tmp"; then
      rm -f "$tmp"
      echo "backup: pg_dump in $container failed" >&2
      exit 1
    fi
    mv "$tmp" "$file"
    echo "backup: $file ($(wc -c <"$file") bytes)"
    ;;
  restore)
    file=${2:-}
    [ -n "$file" ] || usage
    [ -r "$file" ] || { echo "restore: $file cannot be read" >&2; exit 2; }
    # --clean --if-exists: the same objects are dropped first, so a database that already has
    # the schema (a service ran its migrations) is restored too. One transaction: all or nothing.
    "$docker" exec -i "$container" pg_restore -U "$user" -d "$database" --clean --if-exists \
      --no-owner --single-transaction --exit-on-error <"$file"
    echo "restore: $file into $container/$database"
    ;;
  *) usage ;;
esac
