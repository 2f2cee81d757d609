#!/usr/bin/env bash
# Backup benchmark: pgkeep backup vs pg_dump -Fc, pg_dump -Fd -j N, and raw
# parallel COPY ... TO STDOUT > /dev/null (the server's limit), on the same
# data, on the same machine, in the same run. Prints a Markdown table with
# wall times, ratios, output sizes and peak RSS.
#
# Usage: benches/backup_vs_pg_dump.sh [--scale N] [--docs-rows N] [--jobs N] [--keep] [--before BIN]
#   --scale      pgbench scale (default 120, about 1.8 GB with indexes)
#   --docs-rows  rows of the text/jsonb/bytea table (default 2500000, about 1.3 GB; hex text, 2-3x compressible)
#   --jobs       parallel jobs for pgkeep, pg_dump -Fd and raw COPY (default: nproc)
#   --keep       keep the cluster and dataset in $BENCH_DIR for another run
#   --prepare    only build the dataset (and keep the cluster running)
#   --before     another pgkeep binary to time alongside (a "before" row)
# Environment: BENCH_DIR (default /tmp/pgkeep-bench), PG_BINDIR.
# The dataset is built once and reused while $BENCH_DIR/data exists.
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=120
DOCS_ROWS=2500000
JOBS=$(nproc)
KEEP=0
PREPARE=0
BEFORE=
while [ $# -gt 0 ]; do
    case "$1" in
        --scale) SCALE=$2; shift 2 ;;
        --docs-rows) DOCS_ROWS=$2; shift 2 ;;
        --jobs) JOBS=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --prepare) PREPARE=1; KEEP=1; shift ;;
        --before) BEFORE=$(realpath "$2"); shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

BENCH_DIR=${BENCH_DIR:-/tmp/pgkeep-bench}
BINDIR=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)}
PORT=${BENCH_PORT:-54399}
DATA=$BENCH_DIR/data
OUT=$BENCH_DIR/out
DB=bench
export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=postgres PGDATABASE=$DB

as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

stop_cluster() {
    as_pg "$BINDIR/pg_ctl" -D "$DATA" -m fast stop >/dev/null 2>&1 || true
}

mkdir -p "$BENCH_DIR"
[ "$(id -u)" -eq 0 ] && chown postgres "$BENCH_DIR"

# 1. Cluster and dataset (built once).
if [ ! -d "$DATA" ]; then
    echo "==> initdb in $DATA" >&2
    as_pg "$BINDIR/initdb" -D "$DATA" -U postgres -A trust --no-sync >/dev/null
    cat >>"$DATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$BENCH_DIR'
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
shared_buffers = 1GB
max_wal_size = 8GB
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    as_pg "$BINDIR/pg_ctl" -D "$DATA" -l "$BENCH_DIR/server.log" -w start >/dev/null
    psql -q -d postgres -c "CREATE DATABASE $DB"
    echo "==> pgbench -i -s $SCALE" >&2
    "$BINDIR/pgbench" -i -q -s "$SCALE" "$DB" >/dev/null 2>&1
    echo "==> docs table ($DOCS_ROWS rows of text, jsonb, bytea)" >&2
    psql -q -v ON_ERROR_STOP=1 <<EOF
CREATE TABLE docs (
    id bigint PRIMARY KEY,
    title text NOT NULL,
    body text,
    meta jsonb,
    blob bytea,
    created timestamptz NOT NULL
);
INSERT INTO docs
SELECT i,
       'document ' || i || ' ' || md5(i::text),
       md5((i * 7)::text) || ' ' || md5((i * 11)::text) || ' ' || md5((i * 13)::text) || ' lorem ipsum ' || md5((i * 17)::text) || ' ' || md5((i * 19)::text) || ' ' || md5((i * 23)::text),
       jsonb_build_object('i', i, 'tags', jsonb_build_array('a' || (i % 17), 'b' || (i % 101)), 'score', (i % 1000) / 7.0, 'active', i % 3 = 0, 'ref', md5((i * 29)::text)),
       decode(md5(i::text) || md5((i + 1)::text), 'hex'),
       timestamptz '2020-01-01' + (i || ' seconds')::interval
FROM generate_series(1, $DOCS_ROWS) i;
VACUUM ANALYZE;
EOF
else
    as_pg "$BINDIR/pg_ctl" -D "$DATA" -l "$BENCH_DIR/server.log" -w start >/dev/null 2>&1 || true
fi
[ "$KEEP" -eq 1 ] || trap stop_cluster EXIT

[ "$PREPARE" -eq 1 ] && { echo "==> dataset ready in $BENCH_DIR" >&2; exit 0; }

DB_SIZE=$(psql -Atc "SELECT pg_database_size('$DB')")
echo "==> database size: $((DB_SIZE / 1024 / 1024)) MiB" >&2

echo "==> building pgkeep (release)" >&2
cargo build --release --quiet
PGKEEP=$PWD/target/release/pgkeep

# Warm the page cache so every contender reads from memory alike.
psql -Atc "SELECT count(*) FROM pgbench_accounts" >/dev/null
psql -Atc "SELECT count(*) FROM docs" >/dev/null

rm -rf "$OUT"
mkdir -p "$OUT"
[ "$(id -u)" -eq 0 ] && chown postgres "$OUT"

# run NAME CMD...: wall seconds and peak RSS (KiB) into $OUT/NAME.{time,rss}
run() {
    local name=$1; shift
    echo "==> $name" >&2
    local start end
    start=$(date +%s.%N)
    /usr/bin/time -f '%M %U %S' -o "$OUT/$name.res" "$@"
    end=$(date +%s.%N)
    echo "$end - $start" | bc >"$OUT/$name.time"
    cut -d' ' -f1 "$OUT/$name.res" >"$OUT/$name.rss"
    awk '{printf "%.1f", $2 + $3}' "$OUT/$name.res" >"$OUT/$name.cpu"
}

# Raw parallel COPY to /dev/null: each big table split into JOBS ctid ranges,
# ranges spread over JOBS psql processes.
raw_copy() {
    local sqlfiles=() i
    for i in $(seq 1 "$JOBS"); do sqlfiles+=("$OUT/raw_$i.sql"); : >"$OUT/raw_$i.sql"; done
    local n=0
    while IFS='|' read -r rel pages; do
        local parts=$JOBS per
        [ "$pages" -lt 1000 ] && parts=1
        per=$(( (pages + parts - 1) / parts ))
        for p in $(seq 0 $((parts - 1))); do
            local cond=""
            [ "$p" -gt 0 ] && cond="ctid >= '($((p * per)),0)'::tid"
            if [ "$p" -lt $((parts - 1)) ]; then
                [ -n "$cond" ] && cond="$cond AND "
                cond="${cond}ctid < '($(((p + 1) * per)),0)'::tid"
            fi
            local where=""
            [ -n "$cond" ] && where="WHERE $cond"
            echo "COPY (SELECT * FROM ONLY $rel $where) TO STDOUT;" >>"$OUT/raw_$(( n % JOBS + 1 )).sql"
            n=$((n + 1))
        done
    done < <(psql -Atc "SELECT c.oid::regclass, greatest(pg_relation_size(c.oid) / 8192, 1) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname = 'public' ORDER BY 2 DESC")
    local pids=()
    for f in "${sqlfiles[@]}"; do
        psql -q -f "$f" >/dev/null &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
}
export -f raw_copy
export OUT JOBS

run raw_copy bash -c raw_copy
run pg_dump_Fc "$BINDIR/pg_dump" -Fc -f "$OUT/dump.Fc" "$DB"
run pg_dump_Fd "$BINDIR/pg_dump" -Fd -j "$JOBS" -f "$OUT/dump.Fd" "$DB"
run pgkeep env DB_HOST=$PGHOST DB_PORT=$PORT DB_USER=postgres DB_NAME=$DB BACKUP_DIR="$OUT/pgkeep" "$PGKEEP" -q backup --jobs "$JOBS" >"$OUT/pgkeep.summary"
if [ -n "$BEFORE" ]; then
    run pgkeep_before env DB_HOST=$PGHOST DB_PORT=$PORT DB_USER=postgres DB_NAME=$DB BACKUP_DIR="$OUT/pgkeep_before" "$BEFORE" -q backup --jobs "$JOBS" >/dev/null
fi

size_of() { du -sb "$1" | cut -f1; }
ratio() { printf '%.2f' "$(echo "scale=4; $1 / $2" | bc)"; }
secs() { printf '%.1f' "$1"; }
T_RAW=$(secs "$(cat "$OUT/raw_copy.time")"); T_FC=$(secs "$(cat "$OUT/pg_dump_Fc.time")"); T_FD=$(secs "$(cat "$OUT/pg_dump_Fd.time")"); T_PK=$(secs "$(cat "$OUT/pgkeep.time")")
S_FC=$(size_of "$OUT/dump.Fc"); S_FD=$(size_of "$OUT/dump.Fd"); S_PK=$(size_of "$OUT/pgkeep/backups")
mib() { echo $(( $1 / 1024 / 1024 )); }
RAW_BYTES=$(python3 -c "
import json, glob
p = glob.glob('$OUT/pgkeep/backups/*/manifest.json')[0]
m = json.load(open(p))['body']
m = json.loads(m) if isinstance(m, str) else m
print(sum(c['raw_size'] for t in m['tables'] for c in t['chunks']))")
per_gib() { python3 -c "print('%.2f' % ($(cat "$OUT/$1.cpu") / ($RAW_BYTES / 2**30)))"; }

cat <<EOF

### Backup benchmark — $(date -u +%Y-%m-%d), $(nproc) cores, PostgreSQL $(psql -Atc 'SHOW server_version' | cut -d' ' -f1), scale $SCALE + $DOCS_ROWS docs rows, database $(mib "$DB_SIZE") MiB, jobs $JOBS

| contender | wall s | vs pgkeep | output MiB | peak RSS MiB | client CPU s | client CPU s/GiB |
|---|---:|---:|---:|---:|---:|---:|
| raw parallel COPY > /dev/null | $T_RAW | $(ratio "$T_RAW" "$T_PK") | - | $(( $(cat "$OUT/raw_copy.rss") / 1024 )) | $(cat "$OUT/raw_copy.cpu") | $(per_gib raw_copy) |
| pg_dump -Fc | $T_FC | $(ratio "$T_FC" "$T_PK") | $(mib "$S_FC") | $(( $(cat "$OUT/pg_dump_Fc.rss") / 1024 )) | $(cat "$OUT/pg_dump_Fc.cpu") | $(per_gib pg_dump_Fc) |
| pg_dump -Fd -j $JOBS | $T_FD | $(ratio "$T_FD" "$T_PK") | $(mib "$S_FD") | $(( $(cat "$OUT/pg_dump_Fd.rss") / 1024 )) | $(cat "$OUT/pg_dump_Fd.cpu") | $(per_gib pg_dump_Fd) |
| pgkeep backup (zstd 1) | $T_PK | 1.00 | $(mib "$S_PK") | $(( $(cat "$OUT/pgkeep.rss") / 1024 )) | $(cat "$OUT/pgkeep.cpu") | $(per_gib pgkeep) |
$( [ -n "$BEFORE" ] && echo "| pgkeep backup (before: $(basename "$BEFORE")) | $(secs "$(cat "$OUT/pgkeep_before.time")") | $(ratio "$(cat "$OUT/pgkeep_before.time")" "$T_PK") | $(mib "$(size_of "$OUT/pgkeep_before/backups")") | $(( $(cat "$OUT/pgkeep_before.rss") / 1024 )) | $(cat "$OUT/pgkeep_before.cpu") | $(per_gib pgkeep_before) |")

Client CPU is user + system time of the contender's processes (psql for the raw COPY), per GiB of COPY text ($(python3 -c "print('%.2f' % ($RAW_BYTES / 2**30))") GiB).

Targets: pgkeep / pg_dump -Fd -j$JOBS = $(ratio "$T_PK" "$T_FD") (≤ 0.5); pgkeep / raw COPY = $(ratio "$T_PK" "$T_RAW") (≤ 1.3); pgkeep output / pg_dump -Fc = $(ratio "$S_PK" "$S_FC") (≤ 1.0); pgkeep peak RSS $(( $(cat "$OUT/pgkeep.rss") / 1024 )) MiB (≤ 200).
EOF
