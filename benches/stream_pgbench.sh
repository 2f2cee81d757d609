#!/usr/bin/env bash
# Change-archiving benchmark: `pgkeep stream` follows a pgbench run of N
# transactions (default 100,000, TPC-B-like: 3 updates and 1 insert each);
# then a point-in-time restore to `latest` replays them on a full backup
# taken before the run. Measured in the same run, on the same machine:
#
# - archive bytes (change segments) vs the WAL the server generated for the
#   window, and vs that WAL compressed with zstd (each 16 MiB WAL file, as a
#   WAL archiver such as WAL-G stores it); kept by a physical slot;
# - pgbench TPS while streaming, and the stream's lag (seconds from a WAL
#   position being written to it being durable in the archive), sampled
#   every second;
# - replay rate (row changes/s) and the restore's phases;
# - peak RSS of the stream process and of the restore;
# - that the restored tables equal the source's.
#
# Usage: benches/stream_pgbench.sh [--transactions N] [--scale S] [--clients C] [--builtin tpcb-like|simple-update]
# Environment: BENCH_DIR (default /tmp/pgkeep-stream-bench), PG_BINDIR, BENCH_PORT.
set -euo pipefail
cd "$(dirname "$0")/.."

TXNS=100000; SCALE=10; CLIENTS=4; BUILTIN=tpcb-like
while [ $# -gt 0 ]; do
    case "$1" in
        --transactions) TXNS=$2; shift 2 ;;
        --scale) SCALE=$2; shift 2 ;;
        --clients) CLIENTS=$2; shift 2 ;;
        --builtin) BUILTIN=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
BENCH_DIR=${BENCH_DIR:-/tmp/pgkeep-stream-bench}
BINDIR=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)}
PORT=${BENCH_PORT:-54398}
DATA=$BENCH_DIR/data
OUT=$BENCH_DIR/out
DB=pgbench
export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=postgres
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

echo "==> building pgkeep (release)" >&2
cargo build --release --quiet
PGKEEP=$PWD/target/release/pgkeep
PGK_ENV=(env DB_HOST=$PGHOST DB_PORT=$PORT DB_USER=postgres DB_NAME=$DB BACKUP_DIR="$OUT/repo")

# A fresh cluster for every run: the numbers must not depend on leftovers.
[ -d "$DATA" ] && as_pg "$BINDIR/pg_ctl" -D "$DATA" -m fast stop >/dev/null 2>&1 || true
rm -rf "$BENCH_DIR"; mkdir -p "$DATA" "$OUT/repo"
[ "$(id -u)" -eq 0 ] && chown -R postgres "$BENCH_DIR"
as_pg "$BINDIR/initdb" -D "$DATA" -U postgres --auth=trust >/dev/null
cat >>"$DATA/postgresql.conf" <<EOF
port = $PORT
listen_addresses = '127.0.0.1'
wal_level = logical
max_wal_size = 4GB
shared_buffers = 512MB
EOF
as_pg "$BINDIR/pg_ctl" -D "$DATA" -l "$BENCH_DIR/server.log" -w start >/dev/null
trap '[ -n "$STREAM_PID" ] && pkill -TERM -P $STREAM_PID; as_pg "$BINDIR/pg_ctl" -D "$DATA" -m fast stop >/dev/null 2>&1 || true' EXIT
STREAM_PID=

echo "==> pgbench -i -s $SCALE" >&2
psql -q -d postgres -c "CREATE DATABASE $DB"
"$BINDIR/pgbench" -q -i -s "$SCALE" "$DB" 2>/dev/null

echo "==> pgkeep stream (its own automatic full backup off: the benchmark takes one), then a full backup" >&2
/usr/bin/time -f '%M' -o "$OUT/stream.rss" "${PGK_ENV[@]}" "$PGKEEP" -q stream --segment-seconds 2 --no-auto-full-backup >"$OUT/stream.log" 2>&1 &
STREAM_PID=$!
until [ "$(psql -Atd $DB -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgkeep_$DB' AND active")" = 1 ]; do sleep 0.2; done
"${PGK_ENV[@]}" "$PGKEEP" -q backup >/dev/null
# Keep the window's WAL for the comparison.
psql -q -d $DB -c "SELECT pg_create_physical_replication_slot('bench_keep_wal', true)" >/dev/null
psql -q -d $DB -c "CHECKPOINT"
LSN0=$(psql -Atd $DB -c "SELECT pg_current_wal_insert_lsn()")

echo "==> pgbench: $TXNS transactions, $CLIENTS clients, lag sampled every second" >&2
: >"$OUT/lag.samples"
(
    while true; do
        psql -Atd $DB -c "SELECT extract(epoch FROM clock_timestamp()), pg_current_wal_insert_lsn() - '0/0', \
            (SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = 'pgkeep_$DB')" >>"$OUT/lag.samples" 2>/dev/null || true
        sleep 1
    done
) &
SAMPLER=$!
PER_CLIENT=$(( TXNS / CLIENTS ))
"$BINDIR/pgbench" -n -b "$BUILTIN" -c "$CLIENTS" -j 2 -t "$PER_CLIENT" "$DB" >"$OUT/pgbench.out" 2>&1
LSN1=$(psql -Atd $DB -c "SELECT pg_current_wal_insert_lsn()")
# Wait until the archive holds everything, then stop the stream (SIGTERM: seal, store, confirm).
until [ "$(psql -Atd $DB -c "SELECT confirmed_flush_lsn >= '$LSN1' FROM pg_replication_slots WHERE slot_name = 'pgkeep_$DB'")" = t ]; do sleep 0.5; done
sleep 2
kill $SAMPLER; wait $SAMPLER 2>/dev/null || true
# SIGTERM to pgkeep itself (the child of /usr/bin/time, which then records its peak RSS).
pkill -TERM -P $STREAM_PID; wait $STREAM_PID || true; STREAM_PID=

echo "==> WAL of the window, compressed with zstd per file" >&2
WAL_BYTES=$(psql -Atd $DB -c "SELECT '$LSN1'::pg_lsn - '$LSN0'::pg_lsn")
FIRST=$(psql -Atd $DB -c "SELECT pg_walfile_name('$LSN0')")
LAST=$(psql -Atd $DB -c "SELECT pg_walfile_name('$LSN1')")
ZWAL=0; NWAL=0
for f in $(ls "$DATA/pg_wal" | grep -E '^[0-9A-F]{24}$' | sort); do
    if [[ "$f" > "$FIRST" || "$f" == "$FIRST" ]] && [[ "$f" < "$LAST" || "$f" == "$LAST" ]]; then
        ZWAL=$(( ZWAL + $(zstd -q -c -3 "$DATA/pg_wal/$f" | wc -c) )); NWAL=$(( NWAL + 1 ))
    fi
done
psql -q -d $DB -c "SELECT pg_drop_replication_slot('bench_keep_wal')" >/dev/null
ARCHIVE=$(find "$OUT/repo/changes" -name '*.seg' -printf '%s\n' | awk '{s+=$1} END {print s+0}')
SEGS=$(find "$OUT/repo/changes" -name '*.seg' | wc -l)

echo "==> point-in-time restore to latest" >&2
/usr/bin/time -f '%M' -o "$OUT/restore.rss" "${PGK_ENV[@]}" "$PGKEEP" -q restore latest --target-time latest \
    --target-db pgbench_pitr --yes --json >"$OUT/restore.json"

echo "==> comparing every table with the source" >&2
SAME=yes
for t in pgbench_accounts pgbench_branches pgbench_tellers pgbench_history; do
    q="SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM $t t"
    if [ "$(psql -Atd $DB -c "$q")" != "$(psql -Atd pgbench_pitr -c "$q")" ]; then SAME="no ($t differs)"; fi
done

TPS=$(grep -Eo 'tps = [0-9.]+' "$OUT/pgbench.out" | head -1 | cut -d' ' -f3)
LAG=$(python3 - "$OUT/lag.samples" <<'PY'
import sys
rows = [l.strip().split('|') for l in open(sys.argv[1]) if l.count('|') == 2 and l.strip().split('|')[2]]
rows = [(float(t), int(float(w)), int(float(c))) for t, w, c in rows]
worst = 0.0
for t, w, c in rows:
    # Lag at t: how long ago the WAL position now confirmed was the insert position.
    older = [s for s, ww, _ in rows if ww <= c and s <= t]
    if older:
        worst = max(worst, t - max(older))
print(f"{worst:.1f}")
PY
)
J() { python3 -c "import json; d=json.load(open('$OUT/restore.json')); print($1)"; }
cat <<EOF

### Change-archiving benchmark — $(date -u +%Y-%m-%d), $(nproc) cores, PostgreSQL $(psql -Atc 'SHOW server_version' | cut -d' ' -f1), pgbench $BUILTIN, scale $SCALE, $TXNS transactions, $CLIENTS clients

| measure | value | target |
|---|---:|---|
| WAL generated in the window | $(( WAL_BYTES / 1048576 )) MiB | |
| same WAL, zstd -3 per file ($NWAL files) | $(( ZWAL / 1048576 )) MiB | |
| pgkeep change archive ($SEGS segments) | $(( ARCHIVE / 1048576 )) MiB | |
| archive / zstd WAL | $(python3 -c "print(f'{$ARCHIVE / max($ZWAL,1):.3f}')") | ≤ 0.2 |
| archive / raw WAL | $(python3 -c "print(f'{$ARCHIVE / max($WAL_BYTES,1):.3f}')") | |
| pgbench TPS while streaming | $TPS | |
| worst stream lag | $LAG s | < 5 s |
| replay rate | $(J "round(d['point_in_time']['changes_per_second'])") row changes/s ($(J "d['point_in_time']['applied']['changes']") changes in $(J "round(d['seconds']['replay'],1)") s) | ≥ 200,000 (issue 16, simple-update) |
| restore phases (s) | schema $(J "round(d['seconds']['schema'],1)"), data $(J "round(d['seconds']['data'],1)"), indexes $(J "round(d['seconds']['indexes'],1)"), verify $(J "round(d['seconds']['verify'],1)"), replay $(J "round(d['seconds']['replay'],1)") | |
| peak RSS: stream / restore | $(( $(tail -1 "$OUT/stream.rss") / 1024 )) / $(( $(tail -1 "$OUT/restore.rss") / 1024 )) MiB | ≤ 200 |
| restored tables equal the source | $SAME | yes |
EOF
