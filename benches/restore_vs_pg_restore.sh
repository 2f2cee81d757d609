#!/usr/bin/env bash
# Restore benchmark: `pgkeep restore --target-db` against `pg_restore -j N`
# from a `pg_dump -Fd` of the same database, on the same machine, in the same
# run. Uses the dataset of benches/backup_vs_pg_dump.sh (built there with
# --prepare or --keep). Prints a Markdown table with wall times, the ratio,
# peak RSS, and pgkeep's time per phase.
#
# Usage: benches/restore_vs_pg_restore.sh [--jobs N]
# Environment: BENCH_DIR (default /tmp/pgkeep-bench), PG_BINDIR, BENCH_PORT.
set -euo pipefail
cd "$(dirname "$0")/.."

JOBS=$(nproc)
while [ $# -gt 0 ]; do
    case "$1" in
        --jobs) JOBS=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
BENCH_DIR=${BENCH_DIR:-/tmp/pgkeep-bench}
BINDIR=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)}
PORT=${BENCH_PORT:-54399}
DATA=$BENCH_DIR/data
OUT=$BENCH_DIR/restore-out
DB=bench
export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=postgres

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ -d "$DATA" ] || { echo "no dataset in $DATA: run benches/backup_vs_pg_dump.sh --prepare first" >&2; exit 2; }
as_pg "$BINDIR/pg_ctl" -D "$DATA" -l "$BENCH_DIR/server.log" -w start >/dev/null 2>&1 || true

echo "==> building pgkeep (release)" >&2
cargo build --release --quiet
PGKEEP=$PWD/target/release/pgkeep

rm -rf "$OUT"; mkdir -p "$OUT"
[ "$(id -u)" -eq 0 ] && chown postgres "$OUT"
psql -q -d postgres -c "DROP DATABASE IF EXISTS bench_pg_restore" -c "DROP DATABASE IF EXISTS bench_pgkeep"

echo "==> inputs: pg_dump -Fd -j $JOBS and pgkeep backup of $DB" >&2
"$BINDIR/pg_dump" -Fd -j "$JOBS" -f "$OUT/dump.Fd" "$DB"
env DB_HOST=$PGHOST DB_PORT=$PORT DB_USER=postgres DB_NAME=$DB BACKUP_DIR="$OUT/repo" "$PGKEEP" -q backup --jobs "$JOBS" >/dev/null

run() {
    local name=$1; shift
    echo "==> $name" >&2
    local start end
    start=$(date +%s.%N)
    /usr/bin/time -f '%M' -o "$OUT/$name.rss" "$@"
    end=$(date +%s.%N)
    echo "$end - $start" | bc >"$OUT/$name.time"
}

psql -q -d postgres -c "CREATE DATABASE bench_pg_restore"
run pg_restore "$BINDIR/pg_restore" -j "$JOBS" -d bench_pg_restore "$OUT/dump.Fd"
run pgkeep env DB_HOST=$PGHOST DB_PORT=$PORT DB_USER=postgres DB_NAME=$DB BACKUP_DIR="$OUT/repo" \
    "$PGKEEP" -q restore latest --target-db bench_pgkeep --yes --json --jobs "$JOBS" >"$OUT/pgkeep.json"

secs() { printf '%.1f' "$1"; }
ratio() { printf '%.2f' "$(echo "scale=4; $1 / $2" | bc)"; }
T_PR=$(secs "$(cat "$OUT/pg_restore.time")"); T_PK=$(secs "$(cat "$OUT/pgkeep.time")")
phase() { python3 -c "import json,sys; print('%.1f' % json.load(open('$OUT/pgkeep.json'))['seconds']['$1'])"; }
SIZE=$(psql -Atc "SELECT pg_database_size('$DB') / 1048576")

cat <<EOF

### Restore benchmark — $(date -u +%Y-%m-%d), $(nproc) cores, PostgreSQL $(psql -Atc 'SHOW server_version' | cut -d' ' -f1), database $SIZE MiB, jobs $JOBS

| contender | wall s | vs pgkeep | peak RSS MiB |
|---|---:|---:|---:|
| pg_restore -j $JOBS (from pg_dump -Fd) | $T_PR | $(ratio "$T_PR" "$T_PK") | $(( $(cat "$OUT/pg_restore.rss") / 1024 )) |
| pgkeep restore --target-db | $T_PK | 1.00 | $(( $(cat "$OUT/pgkeep.rss") / 1024 )) |

pgkeep phases (s): schema $(phase schema), data $(phase data), indexes $(phase indexes), verify $(phase verify).
Target: pgkeep / pg_restore = $(ratio "$T_PK" "$T_PR") (≤ 0.6); peak RSS $(( $(cat "$OUT/pgkeep.rss") / 1024 )) MiB (≤ 200).
EOF
psql -q -d postgres -c "DROP DATABASE IF EXISTS bench_pg_restore" -c "DROP DATABASE IF EXISTS bench_pgkeep"
