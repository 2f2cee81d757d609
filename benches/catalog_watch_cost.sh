#!/usr/bin/env bash
# What `pgkeep stream`'s periodic check costs the server with many tables:
# the catalog watch's full fingerprint query (SHAPES_SQL, every table's
# columns, defaults, constraints and indexes through pg_get_*def) against
# the signature query it now runs first (SIGNATURES_SQL: only tables whose
# catalog rows changed are fingerprinted again), plus the statistics query
# of the write watch (COUNTERS_SQL). Both SQL texts are read from the
# source, so the numbers are for the queries the stream sends.
#
# Usage: benches/catalog_watch_cost.sh [--tables N]   (default 5000)
# Environment: BENCH_DIR (default /tmp/pgkeep-catalog-bench), PG_BINDIR, BENCH_PORT.
set -euo pipefail
cd "$(dirname "$0")/.."

TABLES=5000
while [ $# -gt 0 ]; do
    case "$1" in
        --tables) TABLES=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
BENCH_DIR=${BENCH_DIR:-/tmp/pgkeep-catalog-bench}
BINDIR=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)}
PORT=${BENCH_PORT:-54397}
DATA=$BENCH_DIR/data
export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=postgres
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

[ -d "$DATA" ] && as_pg "$BINDIR/pg_ctl" -D "$DATA" -m fast stop >/dev/null 2>&1 || true
rm -rf "$BENCH_DIR"; mkdir -p "$DATA"
[ "$(id -u)" -eq 0 ] && chown -R postgres "$BENCH_DIR"
as_pg "$BINDIR/initdb" -D "$DATA" -U postgres --auth=trust >/dev/null
printf "port = %s\nlisten_addresses = '127.0.0.1'\nmax_locks_per_transaction = 1024\n" "$PORT" >>"$DATA/postgresql.conf"
as_pg "$BINDIR/pg_ctl" -D "$DATA" -l "$BENCH_DIR/server.log" -w start >/dev/null
trap 'as_pg "$BINDIR/pg_ctl" -D "$DATA" -m fast stop >/dev/null 2>&1 || true' EXIT

echo "==> $TABLES tables (key, unique pair, two defaults)" >&2
psql -q -d postgres -c "CREATE DATABASE many"
for ((start = 1; start <= TABLES; start += 1000)); do
    end=$((start + 999 < TABLES ? start + 999 : TABLES))
    psql -q -d many -c "DO \$\$ BEGIN FOR i IN $start..$end LOOP EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, a text NOT NULL DEFAULT ''x'', b int, c timestamptz DEFAULT now(), UNIQUE (a, b))', i); END LOOP; END \$\$"
done

# The SQL constants, as Rust has them (line continuations joined, escapes undone).
python3 - "$BENCH_DIR" <<'PY'
import re, sys
out = sys.argv[1]
def const(path, name):
    src = open(path).read()
    body = re.search(r'pub const %s: &str = "(.*?)";' % name, src, re.S).group(1)
    body = re.sub(r'\\\n\s*', ' ', body)
    return body.replace('\\\\', '\\')
for path, name in [("src/stream/catalog_watch.rs", "SHAPES_SQL"), ("src/stream/catalog_watch.rs", "SIGNATURES_SQL"), ("src/stream/write_watch.rs", "COUNTERS_SQL")]:
    sql = const(path, name).replace("$1", "'pgkeep_many_insert_only'")
    open(f"{out}/{name}.sql", "w").write(sql + ";\n")
PY

ms() { # median of 5 runs, in ms
    for _ in 1 2 3 4 5; do
        s=$(date +%s%N); psql -q -d many -f "$1" >/dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000000 ))
    done | sort -n | sed -n 3p
}
SHAPES=$(ms "$BENCH_DIR/SHAPES_SQL.sql")
SIGS=$(ms "$BENCH_DIR/SIGNATURES_SQL.sql")
COUNTERS=$(ms "$BENCH_DIR/COUNTERS_SQL.sql")
cat <<EOF

### Periodic check cost — $(date -u +%Y-%m-%d), $(nproc) cores, PostgreSQL $("$BINDIR/postgres" --version | awk '{print $3}'), $TABLES tables

| query (median of 5, psql round trip included) | ms |
|---|---:|
| every table fingerprinted (SHAPES_SQL, before) | $SHAPES |
| signatures only (SIGNATURES_SQL, a check where nothing changed) | $SIGS |
| write statistics (COUNTERS_SQL) | $COUNTERS |
EOF
