#!/usr/bin/env bash
# Peak memory of backup, verify --deep and restore for a table with huge
# values: one bytea of BYTEA_MB and one text of TEXT_MB (separate rows), plus
# small rows. Runs a given pgkeep binary under /usr/bin/time -v and prints a
# Markdown table of wall seconds and peak RSS; the restored table is compared
# with the original (md5 of every value, server-side).
#
# Usage: benches/huge_value_rss.sh [--bin PATH] [--bytea-mb N] [--text-mb N] [--keep]
#   --bin       pgkeep binary (default target/debug/pgkeep)
#   --bytea-mb  bytea size in MB (10^6 bytes; default 200; COPY emits 2N+3 bytes of hex)
#   --text-mb   text size in MB (default 400)
#   --keep      keep the cluster in $BENCH_DIR
# Environment: BENCH_DIR (default /tmp/pgkeep-huge), PG_BINDIR, BENCH_PORT.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=target/debug/pgkeep
BYTEA_MB=200
TEXT_MB=400
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) BIN=$2; shift 2 ;;
        --bytea-mb) BYTEA_MB=$2; shift 2 ;;
        --text-mb) TEXT_MB=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
BIN=$(readlink -f "$BIN")

BENCH_DIR=${BENCH_DIR:-/tmp/pgkeep-huge}
BINDIR=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)}
PORT=${BENCH_PORT:-54398}
DATA=$BENCH_DIR/data
REPO=$BENCH_DIR/repo
DB=huge
export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=postgres PGDATABASE=$DB

as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
stop_cluster() {
    as_pg "$BINDIR/pg_ctl" -D "$DATA" -m fast stop >/dev/null 2>&1 || true
}

mkdir -p "$BENCH_DIR"
[ "$(id -u)" -eq 0 ] && chown postgres "$BENCH_DIR"
if [ ! -d "$DATA" ]; then
    as_pg "$BINDIR/initdb" -D "$DATA" -U postgres -A trust --no-sync >/dev/null
    cat >>"$DATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$BENCH_DIR'
wal_level = logical
fsync = off
synchronous_commit = off
full_page_writes = off
max_wal_size = 8GB
CONF
fi
as_pg "$BINDIR/pg_ctl" -D "$DATA" -l "$BENCH_DIR/server.log" -w start >/dev/null 2>&1 || true
[ $KEEP -eq 1 ] || trap stop_cluster EXIT

# 1. The dataset: built server-side, so no client holds a value.
psql -q -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "DROP DATABASE IF EXISTS ${DB}_restored" -c "CREATE DATABASE $DB"
psql -q -v ON_ERROR_STOP=1 <<SQL
CREATE TABLE big (id int PRIMARY KEY, b bytea, t text);
ALTER TABLE big ALTER b SET STORAGE EXTERNAL, ALTER t SET STORAGE EXTERNAL;
INSERT INTO big VALUES (1, decode(repeat('00112233445566778899aabbccddeeff', $BYTEA_MB * 1000000 / 16), 'hex'), NULL);
INSERT INTO big VALUES (2, NULL, repeat('pgkeep huge text', $TEXT_MB * 1000000 / 16));
INSERT INTO big SELECT i, int4send(i), md5(i::text) FROM generate_series(3, 1000) i;
SQL

export DB_HOST=127.0.0.1 DB_PORT=$PORT DB_USER=postgres DB_NAME=$DB DB_SSLMODE=disable BACKUP_DIR=$REPO
rm -rf "$REPO"; mkdir -p "$REPO"

measure() { # label, then the command
    local label=$1; shift
    /usr/bin/time -v "$@" >"$BENCH_DIR/$label.out" 2>"$BENCH_DIR/$label.err" || {
        echo "$label failed:" >&2; tail -5 "$BENCH_DIR/$label.err" >&2; exit 1; }
    local rss wall
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$BENCH_DIR/$label.err")
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$BENCH_DIR/$label.err")
    printf '| %s | %s | %d |\n' "$label" "$wall" $((rss / 1024))
}

echo "bytea $BYTEA_MB MB + text $TEXT_MB MB, binary $BIN"
echo
echo "| command | wall | peak RSS MiB |"
echo "|---|---:|---:|"
measure backup "$BIN" backup
ID=$(ls "$REPO/backups" | grep '^full_backup_' | sort | tail -n1)
measure "verify --deep" "$BIN" verify --deep "$ID"
measure restore "$BIN" restore "$ID" --target-db "${DB}_restored" --yes

# 2. Exact round trip: every value's md5 and length, both databases.
q="SELECT string_agg(id || ':' || coalesce(md5(b), '-') || ':' || coalesce(md5(t), '-') || ':' || coalesce(length(b), -1) || ':' || coalesce(length(t), -1), ',' ORDER BY id) FROM big"
a=$(psql -Atq -d "$DB" -c "$q"); b=$(psql -Atq -d "${DB}_restored" -c "$q")
[ "$a" = "$b" ] && echo "round trip exact" || { echo "ROUND TRIP DIFFERS" >&2; exit 1; }
