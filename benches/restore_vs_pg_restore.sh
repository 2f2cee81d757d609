#!/usr/bin/env bash
# Restore benchmark: `pgkeep restore --target-db` against `pg_restore -j N`
# from a `pg_dump -Fd` of the same database, on the same machine, in the same
# run. Uses the dataset of benches/backup_vs_pg_dump.sh (built there with
# --prepare or --keep).
#
# Contenders, each into a new database:
#   - pg_restore -j N, in one run (its total), and again by section
#     (pre-data, data -j N, post-data -j N) for its phase times;
#   - pgkeep restore from a local repository (with its verification pass);
#   - pgkeep restore of the same backup from S3 (a Garage on loopback),
#     unless --no-s3;
#   - with --before BIN, another pgkeep binary from the same local repository.
# After each restore: pages not all-visible (ANALYZE's relallvisible), the
# oldest relfrozenxid age, and how long a VACUUM (FREEZE) then takes: what
# is left to do before the database is ready for production load. Autovacuum
# is off during the run (restored after), so that work is measured instead
# of being done by autovacuum at a time that depends on the contender.
# The dataset's cluster (benches/backup_vs_pg_dump.sh --prepare) runs
# without fsync; for realistic numbers, enable data checksums
# (pg_checksums --enable, cluster stopped) and set fsync, full_page_writes
# and synchronous_commit on in its postgresql.conf, as BENCHMARKS.md did.
#
# With --rounds N, pg_restore -j N and the local pgkeep restore then run
# N - 1 more times, alternating which goes first, and the report gives each
# round's ratio and the median: on a shared 2-core VM one pair of runs
# spreads more than the difference between the contenders.
#
# Usage: benches/restore_vs_pg_restore.sh [--jobs N] [--no-s3] [--before BIN] [--rounds N]
# Environment: BENCH_DIR (default /tmp/pgkeep-bench), PG_BINDIR, BENCH_PORT, GARAGE_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."

JOBS=$(nproc)
S3=1
BEFORE=
ROUNDS=1
while [ $# -gt 0 ]; do
    case "$1" in
        --jobs) JOBS=$2; shift 2 ;;
        --no-s3) S3=0; shift ;;
        --before) BEFORE=$(realpath "$2"); shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
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

psql -q -d postgres -c "ALTER SYSTEM SET autovacuum = off" -c "SELECT pg_reload_conf()" >/dev/null
trap 'psql -q -d postgres -c "ALTER SYSTEM RESET autovacuum" -c "SELECT pg_reload_conf()" >/dev/null' EXIT
rm -rf "$OUT"; mkdir -p "$OUT/empty"
[ "$(id -u)" -eq 0 ] && chown postgres "$OUT"
dropall() { for d in pg_restore pg_restore_sections pgkeep pgkeep_s3 pgkeep_before; do psql -q -d postgres -c "DROP DATABASE IF EXISTS bench_$d"; done; }
dropall
pg_env=(DB_HOST=$PGHOST DB_PORT=$PORT DB_USER=postgres DB_NAME=$DB)
if [ "$S3" = 1 ]; then
    # shellcheck source=benches/lib/garage.sh
    . benches/lib/garage.sh
    garage_start "$BENCH_DIR/garage"
    trap 'garage_stop; psql -q -d postgres -c "ALTER SYSTEM RESET autovacuum" -c "SELECT pg_reload_conf()" >/dev/null' EXIT
    export S3_PREFIX=restore-bench
fi

echo "==> inputs: pg_dump -Fd -j $JOBS and pgkeep backup of $DB" >&2
"$BINDIR/pg_dump" -Fd -j "$JOBS" -f "$OUT/dump.Fd" "$DB"
env "${pg_env[@]}" BACKUP_DIR="$OUT/repo" "$PGKEEP" -q backup --jobs "$JOBS" >/dev/null

# run NAME CMD…: wall seconds to $OUT/NAME.time, peak RSS KiB to $OUT/NAME.rss.
run() {
    local name=$1; shift
    echo "==> $name" >&2
    local start end
    sync; echo 1 >/proc/sys/vm/drop_caches 2>/dev/null || true
    psql -q -d postgres -c CHECKPOINT
    local g0; g0=$(garage_cpu)
    start=$(date +%s.%N)
    /usr/bin/time -f '%M %U %S' -o "$OUT/$name.res" "$@"
    end=$(date +%s.%N)
    echo "$end - $start" | bc >"$OUT/$name.time"
    cut -d' ' -f1 "$OUT/$name.res" >"$OUT/$name.rss"
    awk '{printf "%.1f", $2 + $3}' "$OUT/$name.res" >"$OUT/$name.cpu"
    echo "$(garage_cpu) - $g0" | bc >"$OUT/$name.garage"
}
# CPU seconds Garage has used so far (0 without it).
garage_cpu() {
    if [ -n "${GARAGE_PID:-}" ]; then awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$GARAGE_PID/stat"; else echo 0; fi
}
# readiness NAME: pages not all-visible, oldest relfrozenxid age, VACUUM (FREEZE) seconds.
readiness() {
    local db=bench_$1
    psql -q -d "$db" -c ANALYZE
    psql -Atq -d "$db" -c "SELECT coalesce(sum(relpages - relallvisible), 0) FROM pg_class WHERE relkind = 'r' AND relnamespace <> 'pg_catalog'::regnamespace" >"$OUT/$1.notvisible"
    psql -Atq -d "$db" -c "SELECT max(age(relfrozenxid)) FROM pg_class WHERE relkind = 'r' AND relnamespace <> 'pg_catalog'::regnamespace" >"$OUT/$1.age"
    local start end
    start=$(date +%s.%N)
    psql -q -d "$db" -c "VACUUM (FREEZE)"
    end=$(date +%s.%N)
    echo "$end - $start" | bc >"$OUT/$1.vacuum"
}
sect() {
    local s=$1 start end; shift
    start=$(date +%s.%N); "$@"; end=$(date +%s.%N)
    echo "$end - $start" | bc >"$OUT/pg_restore_sections.$s"
}
pg_restore_sections() {
    sect pre "$BINDIR/pg_restore" --section=pre-data -d bench_pg_restore_sections "$OUT/dump.Fd"
    sect data "$BINDIR/pg_restore" --section=data -j "$JOBS" -d bench_pg_restore_sections "$OUT/dump.Fd"
    sect post "$BINDIR/pg_restore" --section=post-data -j "$JOBS" -d bench_pg_restore_sections "$OUT/dump.Fd"
}

psql -q -d postgres -c "CREATE DATABASE bench_pg_restore" -c "CREATE DATABASE bench_pg_restore_sections"
run pg_restore "$BINDIR/pg_restore" -j "$JOBS" -d bench_pg_restore "$OUT/dump.Fd"
readiness pg_restore
echo "==> pg_restore by section" >&2
sync; echo 1 >/proc/sys/vm/drop_caches 2>/dev/null || true
pg_restore_sections
echo "$(cat "$OUT/pg_restore_sections.pre") + $(cat "$OUT/pg_restore_sections.data") + $(cat "$OUT/pg_restore_sections.post")" | bc >"$OUT/pg_restore_sections.time"
echo 0 >"$OUT/pg_restore_sections.rss"; echo "-" >"$OUT/pg_restore_sections.cpu"; echo 0 >"$OUT/pg_restore_sections.garage"
psql -q -d postgres -c "DROP DATABASE bench_pg_restore" -c "DROP DATABASE bench_pg_restore_sections"
run pgkeep env -u S3_BUCKET "${pg_env[@]}" BACKUP_DIR="$OUT/repo" \
    "$PGKEEP" -q restore latest --target-db bench_pgkeep --yes --json --jobs "$JOBS" >"$OUT/pgkeep.json"
readiness pgkeep
psql -q -d postgres -c "DROP DATABASE bench_pgkeep"
if [ "$S3" = 1 ]; then
    run pgkeep_s3 env "${pg_env[@]}" BACKUP_DIR="$OUT/empty" \
        "$PGKEEP" -q restore latest --target-db bench_pgkeep_s3 --yes --json --jobs "$JOBS" >"$OUT/pgkeep_s3.json"
    psql -q -d postgres -c "DROP DATABASE bench_pgkeep_s3"
fi
if [ -n "$BEFORE" ]; then
    run pgkeep_before env -u S3_BUCKET "${pg_env[@]}" BACKUP_DIR="$OUT/repo" \
        "$BEFORE" -q restore latest --target-db bench_pgkeep_before --yes --json --jobs "$JOBS" >"$OUT/pgkeep_before.json"
    readiness pgkeep_before
    psql -q -d postgres -c "DROP DATABASE bench_pgkeep_before"
fi

# More rounds of the two main contenders, alternating which goes first.
round_pg_restore() {
    psql -q -d postgres -c "CREATE DATABASE bench_pg_restore"
    run "pg_restore.r$1" "$BINDIR/pg_restore" -j "$JOBS" -d bench_pg_restore "$OUT/dump.Fd"
    psql -q -d postgres -c "DROP DATABASE bench_pg_restore"
}
round_pgkeep() {
    run "pgkeep.r$1" env -u S3_BUCKET "${pg_env[@]}" BACKUP_DIR="$OUT/repo" \
        "$PGKEEP" -q restore latest --target-db bench_pgkeep --yes --json --jobs "$JOBS" >"$OUT/pgkeep.r$1.json"
    psql -q -d postgres -c "DROP DATABASE bench_pgkeep"
}
cp "$OUT/pg_restore.time" "$OUT/pg_restore.r1.time"; cp "$OUT/pgkeep.time" "$OUT/pgkeep.r1.time"
for r in $(seq 2 "$ROUNDS"); do
    if [ $((r % 2)) = 0 ]; then round_pgkeep "$r"; round_pg_restore "$r"; else round_pg_restore "$r"; round_pgkeep "$r"; fi
done

secs() { printf '%.1f' "$(cat "$OUT/$1")"; }
ratio() { printf '%.2f' "$(echo "scale=4; $1 / $2" | bc)"; }
json() { python3 -c "import json,sys; d=json.load(open('$OUT/$1.json'))['seconds']; v=d$2; print(v if isinstance(v, int) else '%.1f' % v)"; }
T_PR=$(secs pg_restore.time)
row() { # name label
    local t; t=$(secs "$1.time")
    local ready="-"
    [ -f "$OUT/$1.vacuum" ] && ready="$(secs "$1.vacuum") | $(cat "$OUT/$1.notvisible") | $(cat "$OUT/$1.age")"
    [ "$ready" = "-" ] && ready="- | - | -"
    local rss=$(( $(cat "$OUT/$1.rss") / 1024 )); [ "$rss" = 0 ] && rss="-"
    local g; g=$(printf '%.1f' "$(cat "$OUT/$1.garage")"); [ "$g" = "0.0" ] && g="-"
    echo "| $2 | $t | $(ratio "$t" "$T_PR") | $rss | $(cat "$OUT/$1.cpu") | $g | $ready |"
}
phases() { # name
    echo "| $1 | $(json "$1" "['schema']") | $(json "$1" "['data']") | $(json "$1" "['indexes']") | $(json "$1" "['verify']") | $(json "$1" "['busy']['load']") | $(json "$1" "['busy']['build']") | $(json "$1" "['busy']['verify']") | $(json "$1" "['busy']['frozen_tables']")/$(( $(json "$1" "['busy']['frozen_tables']") + $(json "$1" "['busy']['unfrozen_tables']") )) |"
}
SIZE=$(psql -Atc "SELECT pg_database_size('$DB') / 1048576" -d postgres)

cat <<EOF

### Restore benchmark — $(date -u +%Y-%m-%d), $(nproc) cores, PostgreSQL $(psql -d postgres -Atc 'SHOW server_version' | cut -d' ' -f1), database $SIZE MiB, jobs $JOBS, data checksums $(psql -d postgres -Atc 'SHOW data_checksums'), fsync $(psql -d postgres -Atc 'SHOW fsync'), full_page_writes $(psql -d postgres -Atc 'SHOW full_page_writes'), autovacuum off

| contender | wall s | vs pg_restore | peak RSS MiB | client CPU s | Garage CPU s | VACUUM (FREEZE) after, s | pages not all-visible | max age(relfrozenxid) |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
$(row pg_restore "pg_restore -j $JOBS (from pg_dump -Fd)")
$(row pg_restore_sections "pg_restore by section (pre-data, data -j $JOBS, post-data -j $JOBS)")
$(row pgkeep "pgkeep restore --target-db (local repository, verified)")
$( [ "$S3" = 1 ] && row pgkeep_s3 "pgkeep restore --target-db (S3: Garage, verified)")
$( [ -n "$BEFORE" ] && row pgkeep_before "pgkeep restore --target-db (before: $(basename "$BEFORE"))")

pg_restore by section (s): pre-data $(secs pg_restore_sections.pre), data $(secs pg_restore_sections.data), post-data $(secs pg_restore_sections.post).

pgkeep phases (s; wall clock: data until the last table is in, then what index builds and verification added; busy: worker-seconds, overlapping):

| run | schema | data | indexes | verify | busy load | busy build | busy verify | tables frozen |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
$(phases pgkeep)
$( [ "$S3" = 1 ] && phases pgkeep_s3)

Rounds (pg_restore -j $JOBS and pgkeep from the local repository; round 1 is the run above, pg_restore first; even rounds run pgkeep first):

| round | pg_restore s | pgkeep s | pgkeep / pg_restore |
|---|---:|---:|---:|
$(for r in $(seq 1 "$ROUNDS"); do echo "| $r | $(secs "pg_restore.r$r.time") | $(secs "pgkeep.r$r.time") | $(ratio "$(cat "$OUT/pgkeep.r$r.time")" "$(cat "$OUT/pg_restore.r$r.time")") |"; done)

Median pgkeep / pg_restore over $ROUNDS round(s): $(for r in $(seq 1 "$ROUNDS"); do ratio "$(cat "$OUT/pgkeep.r$r.time")" "$(cat "$OUT/pg_restore.r$r.time")"; echo; done | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : sprintf("%.2f", (a[NR/2] + a[NR/2+1]) / 2)}').

Targets: pgkeep / pg_restore = $(ratio "$(secs pgkeep.time)" "$T_PR") (≤ 1.0); pgkeep loading (busy load / jobs: its data phase overlaps index builds and read-backs) / pg_restore data section = $(ratio "$(echo "scale=4; $(json pgkeep "['busy']['load']") / $JOBS" | bc)" "$(secs pg_restore_sections.data)") (≤ 1.0); busy verify / busy load = $(ratio "$(json pgkeep "['busy']['verify']")" "$(json pgkeep "['busy']['load']")") (≤ 0.25)$( [ "$S3" = 1 ] && echo "; S3 / local = $(ratio "$(secs pgkeep_s3.time)" "$(secs pgkeep.time)") (≤ 1.1)"); peak RSS $(( $(cat "$OUT/pgkeep.rss") / 1024 )) MiB (≤ 200).
EOF
dropall
