#!/usr/bin/env bash
# Large-transaction benchmark: one INSERT … SELECT of about N GiB of
# pgoutput changes (default 2; ~254-byte rows, like a backfill) in a single
# transaction while `pgkeep stream` (release build, default
# --transaction-memory 16MiB) archives the database; then a point-in-time
# restore to `latest` replays it on a full backup taken before it.
# Measured in the same run:
#
# - the raw size of the transaction's changes (sum of the parts' and the
#   segment's raw payloads) and the archive's stored size;
# - stream throughput: raw MiB/s from the transaction's COMMIT returning to
#   the slot being confirmed past it (with protocol 1 the server sends a
#   transaction only after its commit, reading back its own spill files);
# - peak RSS of the stream and of the restore;
# - replay rate (row changes/s) and that the restored table equals the source.
#
# Usage: benches/stream_bigtxn.sh [--gib N] [--transaction-memory SIZE]
# Environment: BENCH_DIR (default /tmp/pgkeep-bigtxn-bench), PG_BINDIR, BENCH_PORT,
# PGKEEP_BIN (use this binary instead of building a release one).
set -euo pipefail
cd "$(dirname "$0")/.."

GIB=2; TXN_MEMORY=16MiB
while [ $# -gt 0 ]; do
    case "$1" in
        --gib) GIB=$2; shift 2 ;;
        --transaction-memory) TXN_MEMORY=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
# One row is about 254 bytes of pgoutput Insert.
ROWS=$(python3 -c "print(int($GIB * (1 << 30) / 254))")
BENCH_DIR=${BENCH_DIR:-/tmp/pgkeep-bigtxn-bench}
BINDIR=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)}
PORT=${BENCH_PORT:-54397}
DATA=$BENCH_DIR/data
OUT=$BENCH_DIR/out
DB=bigtxn
export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=postgres
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

if [ -n "${PGKEEP_BIN:-}" ]; then
    PGKEEP=$PGKEEP_BIN   # e.g. a debug build, for a quick check of the script
else
    echo "==> building pgkeep (release)" >&2
    cargo build --release --quiet
    PGKEEP=$PWD/target/release/pgkeep
fi
PGK_ENV=(env DB_HOST=$PGHOST DB_PORT=$PORT DB_USER=postgres DB_NAME=$DB BACKUP_DIR="$OUT/repo")

# A fresh cluster for every run.
[ -d "$DATA" ] && as_pg "$BINDIR/pg_ctl" -D "$DATA" -m fast stop >/dev/null 2>&1 || true
rm -rf "$BENCH_DIR"; mkdir -p "$DATA" "$OUT/repo"
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
trap '[ -n "$STREAM_PID" ] && pkill -TERM -P $STREAM_PID; as_pg "$BINDIR/pg_ctl" -D "$DATA" -m fast stop >/dev/null 2>&1 || true' EXIT
STREAM_PID=

psql -q -d postgres -c "CREATE DATABASE $DB"
psql -q -d $DB -c "CREATE TABLE backfill (id bigint PRIMARY KEY, grp int NOT NULL, at timestamptz NOT NULL, payload text NOT NULL)"

echo "==> pgkeep stream --transaction-memory $TXN_MEMORY, then a full backup" >&2
/usr/bin/time -f '%M' -o "$OUT/stream.rss" "${PGK_ENV[@]}" "$PGKEEP" -q stream --segment-seconds 2 --no-auto-full-backup \
    --transaction-memory "$TXN_MEMORY" >"$OUT/stream.log" 2>&1 &
STREAM_PID=$!
until [ "$(psql -Atd $DB -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgkeep_$DB' AND active")" = 1 ]; do sleep 0.2; done
"${PGK_ENV[@]}" "$PGKEEP" -q backup >/dev/null

echo "==> one transaction: $ROWS rows (~$GIB GiB of changes)" >&2
T0=$(date +%s.%N)
psql -q -d $DB -c "INSERT INTO backfill SELECT g, g % 1000, timestamptz '2026-01-01' + g * interval '1 second',
    md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) || md5((g * 31)::text) || md5((g * 37)::text) || md5((g * 41)::text)
    FROM generate_series(1, $ROWS) g"
T1=$(date +%s.%N)
LSN1=$(psql -Atd $DB -c "SELECT pg_current_wal_insert_lsn()")
until [ "$(psql -Atd $DB -c "SELECT confirmed_flush_lsn >= '$LSN1' FROM pg_replication_slots WHERE slot_name = 'pgkeep_$DB'")" = t ]; do sleep 0.5; done
T2=$(date +%s.%N)
pkill -TERM -P $STREAM_PID; wait $STREAM_PID || true; STREAM_PID=

# Raw and stored sizes: every part, and the segment that ends the transaction.
read -r PARTS RAW STORED < <(python3 - "$OUT/repo/changes" <<'PY'
import json, os, sys
parts = raw = stored = 0
for root, _, files in os.walk(sys.argv[1]):
    for f in files:
        p = os.path.join(root, f)
        with open(p, 'rb') as fh:
            head = fh.read(4096)
        meta = json.loads(head[8:head.index(b'\n', 8)])
        if f.endswith('.part') or meta.get('parts'):
            parts += f.endswith('.part')
            raw += meta['raw_size']
            stored += os.path.getsize(p)
print(parts, raw, stored)
PY
)

echo "==> point-in-time restore to latest" >&2
/usr/bin/time -f '%M' -o "$OUT/restore.rss" "${PGK_ENV[@]}" "$PGKEEP" -q restore latest --target-time latest \
    --target-db bigtxn_pitr --yes --json >"$OUT/restore.json"
q="SELECT count(*) || ' ' || sum(hashtext(t::text)::bigint) FROM backfill t"
SAME=no; [ "$(psql -Atd $DB -c "$q")" = "$(psql -Atd bigtxn_pitr -c "$q")" ] && SAME=yes

J() { python3 -c "import json; d=json.load(open('$OUT/restore.json')); print($1)"; }
F() { python3 -c "print($1)"; }
cat <<EOF

### Large-transaction benchmark — $(date -u +%Y-%m-%d), $(nproc) cores, PostgreSQL $(psql -Atc 'SHOW server_version' | cut -d' ' -f1), one INSERT of $ROWS rows, --transaction-memory $TXN_MEMORY

| measure | value | target |
|---|---:|---|
| the transaction's changes (raw pgoutput) | $(( RAW / 1048576 )) MiB in $PARTS parts + 1 segment | ≥ 2048 MiB |
| stored (\`pgk-col1+zstd\`) | $(( STORED / 1048576 )) MiB | |
| INSERT on the server | $(F "round($T1 - $T0, 1)") s | |
| COMMIT → slot confirmed past it | $(F "round($T2 - $T1, 1)") s ($(F "round($RAW / 1048576 / max($T2 - $T1, 0.001), 1)") MiB/s raw) | |
| peak RSS: stream | $(( $(tail -1 "$OUT/stream.rss") / 1024 )) MiB | ≤ 200 |
| replay | $(J "round(d['point_in_time']['changes_per_second'])") row changes/s ($(J "d['point_in_time']['applied']['changes']") changes in $(J "round(d['seconds']['replay'],1)") s) | |
| peak RSS: restore | $(( $(tail -1 "$OUT/restore.rss") / 1024 )) MiB | ≤ 200 |
| restored table equals the source | $SAME | yes |
EOF
