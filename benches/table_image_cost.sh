#!/usr/bin/env bash
# What a migration the change archive cannot reproduce costs: a table image
# of that table, against the whole full backup `stream` took before table
# images existed. A database with one large table (default ~1 GiB of COPY
# text) and one small one; `pgkeep stream` (CLI defaults: automatic backups
# on) archives it, `pgkeep backup` takes the base. Then a rewrite with a
# volatile default (`ADD COLUMN … DEFAULT clock_timestamp()`) on the small
# table, then on the large one. Measured in the same run, per migration:
#
# - the image's rows and stored bytes, next to the full backup's;
# - seconds from the migration's COMMIT to the image's manifest (the window
#   during which a point-in-time target is refused for that table);
# - a restore to a time after both images (from the one base, putting both
#   images in place): wall time, and that every table equals the source.
#
# Usage: benches/table_image_cost.sh [--gib N]
# Environment: BENCH_DIR (default /tmp/pgkeep-image-bench), PG_BINDIR,
# BENCH_PORT, PGKEEP_BIN (use this binary instead of building a release one).
set -euo pipefail
cd "$(dirname "$0")/.."

GIB=1
while [ $# -gt 0 ]; do
    case "$1" in
        --gib) GIB=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
# A row of the large table is about 140 bytes of COPY text.
ROWS=$(python3 -c "print(int($GIB * (1 << 30) / 140))")
BENCH_DIR=${BENCH_DIR:-/tmp/pgkeep-image-bench}
BINDIR=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)}
PORT=${BENCH_PORT:-54398}
DATA=$BENCH_DIR/data
OUT=$BENCH_DIR/out
DB=images
export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=postgres
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

if [ -n "${PGKEEP_BIN:-}" ]; then
    PGKEEP=$PGKEEP_BIN
else
    echo "==> building pgkeep (release)" >&2
    cargo build --release --quiet
    PGKEEP=$PWD/target/release/pgkeep
fi
REPO=$OUT/repo
PGK_ENV=(env DB_HOST=$PGHOST DB_PORT=$PORT DB_USER=postgres DB_NAME=$DB BACKUP_DIR="$REPO")

[ -d "$DATA" ] && as_pg "$BINDIR/pg_ctl" -D "$DATA" -m fast stop >/dev/null 2>&1 || true
rm -rf "$BENCH_DIR"; mkdir -p "$DATA" "$REPO"
[ "$(id -u)" -eq 0 ] && chown -R postgres "$BENCH_DIR"
as_pg "$BINDIR/initdb" -D "$DATA" -U postgres --auth=trust >/dev/null
cat >>"$DATA/postgresql.conf" <<EOF
port = $PORT
listen_addresses = '127.0.0.1'
wal_level = logical
max_wal_size = 8GB
shared_buffers = 256MB
EOF
as_pg "$BINDIR/pg_ctl" -D "$DATA" -l "$BENCH_DIR/server.log" -w start >/dev/null
STREAM_PID=
trap '[ -n "$STREAM_PID" ] && kill -TERM $STREAM_PID 2>/dev/null; as_pg "$BINDIR/pg_ctl" -D "$DATA" -m fast stop >/dev/null 2>&1 || true' EXIT

echo "==> $ROWS rows in the large table" >&2
psql -q -d postgres -c "CREATE DATABASE $DB"
psql -q -d $DB <<SQL
CREATE TABLE large (id bigint PRIMARY KEY, grp int NOT NULL, payload text NOT NULL);
INSERT INTO large SELECT g, g % 1000, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) FROM generate_series(1, $ROWS) g;
CREATE TABLE small (id int PRIMARY KEY, v text NOT NULL);
CREATE TABLE tick (id int PRIMARY KEY);
INSERT INTO small SELECT g, 'v' || g FROM generate_series(1, 10000) g;
VACUUM ANALYZE;
SQL

"${PGK_ENV[@]}" "$PGKEEP" -q setup >/dev/null
"${PGK_ENV[@]}" "$PGKEEP" -q stream --segment-seconds 1 >"$OUT/stream.log" 2>&1 &
STREAM_PID=$!
until [ "$(psql -Atd $DB -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgkeep_$DB' AND active AND confirmed_flush_lsn IS NOT NULL")" = 1 ]; do sleep 0.2; done
# The stream's own first full backup covers the archive; wait for it.
until ls "$REPO"/backups/full_backup_*/manifest.json >/dev/null 2>&1; do sleep 0.5; done
full=$(ls -d "$REPO"/backups/full_backup_* | head -n1)
full_bytes=$(python3 -c "import json,sys; m=json.load(open('$full/manifest.json'))['body']; print(m['stats']['stored_bytes'], m['stats']['rows'])")

migrate() {   # table
    local before t0 t1 image
    before=$( (ls -d "$REPO"/backups/table_image_* 2>/dev/null || true) | wc -l)
    t0=$(date +%s.%N)
    psql -q -d $DB -c "ALTER TABLE $1 ADD COLUMN at_$1 timestamptz DEFAULT clock_timestamp()"
    until [ "$(ls "$REPO"/backups/table_image_*/manifest.json 2>/dev/null | wc -l)" -gt "$before" ]; do sleep 0.1; done
    t1=$(date +%s.%N)
    image=$(ls -td "$REPO"/backups/table_image_* | head -n1)
    python3 - "$image/manifest.json" "$1" "$t0" "$t1" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["body"]
print(f"{sys.argv[2]}: image {m['backup_id']}: {m['stats']['rows']} rows, {m['stats']['stored_bytes'] / 2**20:.2f} MiB stored; "
      f"COMMIT -> image manifest {float(sys.argv[4]) - float(sys.argv[3]):.1f} s")
PY
}

echo "==> full backup: $(echo "$full_bytes" | awk '{printf "%.1f MiB stored, %d rows", $1 / 1048576, $2}')"
echo "==> migration of the small table"; migrate small
echo "==> migration of the large table"; migrate large
psql -q -d $DB -c "UPDATE small SET v = 'after' WHERE id = 1"
TARGET=$(psql -Atd $DB -c "SELECT clock_timestamp()")
# A commit after the target, so the archive reaches it by the server's clock.
psql -q -d $DB -c "INSERT INTO tick VALUES (1)"
sleep 2
kill -TERM $STREAM_PID; wait $STREAM_PID || true; STREAM_PID=

echo "==> restore to $TARGET from the one base, both images put in place"
t0=$(date +%s.%N)
"${PGK_ENV[@]}" "$PGKEEP" -q restore latest --target-time "$TARGET" --target-db restored --yes >"$OUT/restore.log" 2>&1
t1=$(date +%s.%N)
echo "restore: $(python3 -c "print(f'{$t1 - $t0:.1f} s')")"
same() {   # table: rows of the source and the restore, every column
    local q="SELECT count(*) || ' ' || md5(string_agg(t::text, '|' ORDER BY t.id)) FROM $1 t"
    if [ "$(psql -Atd $DB -c "$q")" = "$(psql -Atd restored -c "$q")" ]; then echo "$1: equal to the source"; else echo "$1: DIFFERS"; exit 1; fi
}
same large   # at_large: clock_timestamp() of every row, as the source computed it
same small
