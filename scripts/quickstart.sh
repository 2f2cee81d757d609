#!/usr/bin/env bash
# pgkeep quickstart: a backup of a sample database, with no database at hand,
# then point-in-time table undo after an accidental DELETE.
#
# It installs the PostgreSQL server packages if no initdb is found (the same
# check as scripts/test.sh), creates a throwaway cluster in a temporary
# directory on a free loopback port (wal_level=logical), loads a small sample
# database `quickstart`, builds pgkeep, takes one backup into a temporary
# repository (BACKUP_DIR), and shows what the repository holds. Then the
# seed's recovery scenario 1, accidental data deletion: `pgkeep stream`
# archives changes, a DELETE removes the cancelled orders, and a
# point-in-time restore of that one table to the second before brings them
# back, shown side by side. The cluster is stopped and removed on exit,
# also when a step fails or on Ctrl-C.
#
# As root, PostgreSQL runs as the `postgres` OS user (it refuses to run as
# root); as a normal user, it runs as that user.
#
# Usage: scripts/quickstart.sh
# Environment:
#   PGKEEP_BUILD=release|debug   cargo profile to build (default: release)
#   PGKEEP_BIN=/path/to/pgkeep   use this binary instead of building one
#   QUICKSTART_PORT=N            port for the cluster (default: first free from 54329)
#   QUICKSTART_KEEP=1            keep the backup repository (the cluster is removed anyway)
#   PG_BINDIR=DIR                PostgreSQL server programs (default: newest /usr/lib/postgresql/*/bin)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'quickstart: error: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }
as_root() { if is_root; then "$@"; else sudo "$@"; fi; }

# Run a PostgreSQL server program as the OS user that owns the cluster.
as_pg() {
    if ! is_root; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u postgres -- "$@"
    else
        su -s /bin/bash postgres -c "$(printf '%q ' "$@")"
    fi
}

have_pg_server() {
    [ -n "${PG_BINDIR:-}" ] && [ -x "$PG_BINDIR/initdb" ] && return 0
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

# ---------------------------------------------------------------------------
# 1. PostgreSQL server programs.
if ! have_pg_server; then
    log "installing PostgreSQL server packages"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql postgresql-contrib
fi
if [ -n "${PG_BINDIR:-}" ] && [ -x "$PG_BINDIR/initdb" ]; then
    BINDIR=$PG_BINDIR
else
    BINDIR=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
fi
if is_root && ! id postgres >/dev/null 2>&1; then
    log "creating the postgres OS user"
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi
PSQL="$BINDIR/psql"
[ -x "$PSQL" ] || PSQL=$(command -v psql) || die "no psql found in $BINDIR or PATH"
log "PostgreSQL programs: $BINDIR ($("$BINDIR/postgres" --version))"

# ---------------------------------------------------------------------------
# 2. pgkeep itself (before the cluster starts, so a long build keeps nothing running).
if [ -n "${PGKEEP_BIN:-}" ]; then
    PGKEEP=$PGKEEP_BIN
else
    command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust from https://rustup.rs)"
    TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
    case "${PGKEEP_BUILD:-release}" in
        release)
            log "cargo build --release (set PGKEEP_BUILD=debug for a faster build)"
            cargo build --release --locked
            PGKEEP=$TARGET_DIR/release/pgkeep
            ;;
        debug)
            log "cargo build (debug)"
            cargo build --locked
            PGKEEP=$TARGET_DIR/debug/pgkeep
            ;;
        *) die "PGKEEP_BUILD must be release or debug, not '${PGKEEP_BUILD}'" ;;
    esac
fi
[ -x "$PGKEEP" ] || die "no pgkeep binary at $PGKEEP"
case "$PGKEEP" in /*) ;; *) PGKEEP=$ROOT/$PGKEEP ;; esac

# ---------------------------------------------------------------------------
# 3. A throwaway cluster, removed on exit whatever happens.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pgkeep-quickstart.XXXXXX")
chmod 755 "$WORK"                       # the postgres user must reach its directories
CLUSTER=$WORK/cluster
PGDATA=$CLUSTER/data
REPO=$WORK/repository
STARTED=0
STREAM_PID=

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$STREAM_PID" ]; then
        kill -TERM "$STREAM_PID" 2>/dev/null || true
        wait "$STREAM_PID" 2>/dev/null || true
    fi
    if [ "$STARTED" = 1 ]; then
        log "stopping the quickstart cluster"
        as_pg "$BINDIR/pg_ctl" stop -D "$PGDATA" -m immediate -s >/dev/null 2>&1 || true
    fi
    if [ "${QUICKSTART_KEEP:-0}" = 1 ] && [ -d "$REPO" ]; then
        rm -rf "$CLUSTER"
        log "kept the backup repository in $REPO"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [ -n "${QUICKSTART_PORT:-}" ]; then
    PORT=$QUICKSTART_PORT
    port_in_use "$PORT" && die "port $PORT on 127.0.0.1 is in use"
else
    PORT=54329
    while port_in_use "$PORT"; do
        PORT=$((PORT + 1))
        [ "$PORT" -lt 54400 ] || die "no free port between 54329 and 54399"
    done
fi

mkdir -p "$CLUSTER/socket"
PASSWORD="qs-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
printf '%s\n' "$PASSWORD" >"$CLUSTER/pwfile"
is_root && chown -R postgres:postgres "$CLUSTER"

log "initdb in $PGDATA"
as_pg "$BINDIR/initdb" -D "$PGDATA" -U postgres --pwfile="$CLUSTER/pwfile" \
    --auth=scram-sha-256 -E UTF8 --no-locale >"$CLUSTER/initdb.log" 2>&1 \
    || { cat "$CLUSTER/initdb.log" >&2; die "initdb failed"; }
rm -f "$CLUSTER/pwfile"
cat >>"$PGDATA/postgresql.conf" <<EOF

# quickstart
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$CLUSTER/socket'
wal_level = logical
max_wal_senders = 4
max_replication_slots = 4
EOF

log "starting PostgreSQL on 127.0.0.1:$PORT"
STARTED=1
as_pg "$BINDIR/pg_ctl" start -D "$PGDATA" -l "$CLUSTER/server.log" -w -t 60 -s \
    || { tail -n 20 "$CLUSTER/server.log" >&2 || true; die "pg_ctl start failed"; }

export PGPASSWORD=$PASSWORD
psql_run() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres "$@"; }

# ---------------------------------------------------------------------------
# 4. Sample data: customers (jsonb), orders (foreign key, generated column,
#    multi-line text), and events (a table partitioned by quarter).
log "creating database quickstart with sample data"
psql_run -d postgres -c "CREATE DATABASE quickstart"
psql_run -d quickstart <<'SQL'
DO $$ BEGIN PERFORM setseed(0.42); END $$;

CREATE TABLE customers (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL,
    email      text NOT NULL UNIQUE,
    profile    jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL
);
INSERT INTO customers (name, email, profile, created_at)
SELECT 'Customer ' || g,
       'customer' || g || '@example.com',
       jsonb_build_object('tier', (ARRAY['free', 'pro', 'enterprise'])[1 + g % 3],
                          'tags', jsonb_build_array('t' || g % 7, 't' || g % 11)),
       timestamptz '2026-01-01 00:00+00' - g * interval '1 hour'
FROM generate_series(1, 10000) g;

CREATE TABLE orders (
    id          bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id),
    amount      numeric(10, 2) NOT NULL,
    amount_cents bigint GENERATED ALWAYS AS ((amount * 100)::bigint) STORED,
    status      text NOT NULL,
    note        text,
    ordered_at  timestamptz NOT NULL
);
CREATE INDEX orders_customer_id_idx ON orders (customer_id);
INSERT INTO orders (customer_id, amount, status, note, ordered_at)
SELECT 1 + g % 10000,
       round((random() * 500)::numeric, 2),
       (ARRAY['new', 'paid', 'shipped', 'cancelled'])[1 + g % 4],
       CASE WHEN g % 10 = 0 THEN E'gift wrap\nleave at the door (order ' || g || ')' END,
       timestamptz '2026-01-01 00:00+00' + g * interval '2 minutes'
FROM generate_series(1, 100000) g;

CREATE TABLE events (
    id          bigserial,
    occurred_at timestamptz NOT NULL,
    kind        text NOT NULL,
    payload     jsonb,
    PRIMARY KEY (id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE TABLE events_2026_q1 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2026-04-01');
CREATE TABLE events_2026_q2 PARTITION OF events FOR VALUES FROM ('2026-04-01') TO ('2026-07-01');
CREATE TABLE events_2026_q3 PARTITION OF events FOR VALUES FROM ('2026-07-01') TO ('2026-10-01');
CREATE TABLE events_default PARTITION OF events DEFAULT;
INSERT INTO events (occurred_at, kind, payload)
SELECT timestamptz '2026-01-01 00:00+00' + g * interval '8 minutes',
       (ARRAY['login', 'view', 'purchase'])[1 + g % 3],
       jsonb_build_object('customer', 1 + g % 10000, 'ms', g % 977)
FROM generate_series(1, 50000) g;

ANALYZE;
SQL
psql_run -d quickstart -At -c \
    "SELECT format('%s: %s rows', c, n) FROM (VALUES
        ('customers', (SELECT count(*) FROM customers)),
        ('orders', (SELECT count(*) FROM orders)),
        ('events', (SELECT count(*) FROM events))) v(c, n)" | sed 's/^/    /' >&2
unset PGPASSWORD

# ---------------------------------------------------------------------------
# 5. The backup. pgkeep reads the seed's variables (DB_*, BACKUP_DIR). It runs
#    from $WORK so a ./pgkeep.toml in your checkout is not picked up, and
#    without PGKEEP_CONFIG / S3_BUCKET / DATABASE_URL from your shell.
pgkeep() {
    (cd "$WORK" && env -u PGKEEP_CONFIG -u S3_BUCKET -u DATABASE_URL \
        DB_HOST=127.0.0.1 DB_PORT="$PORT" DB_USER=postgres DB_PASSWORD="$PASSWORD" \
        DB_NAME=quickstart DB_SSLMODE=disable BACKUP_DIR="$REPO" PG_BINDIR="$BINDIR" \
        "$PGKEEP" "$@")
}

log "pgkeep config (where each setting comes from; the password is redacted)"
pgkeep config >&2

log "pgkeep backup"
pgkeep backup --json >"$WORK/backup.json"

# ---------------------------------------------------------------------------
# 6. What the repository holds.
echo
echo "Repository $REPO:"
find "$REPO" -type f -printf '%P\t%s\n' | sort | awk -F'\t' '{ printf "  %10d  %s\n", $2, $1 }'

MANIFEST=$(find "$REPO/backups" -name manifest.json | head -n1)
echo
echo "Manifest ${MANIFEST#"$REPO"/}:"
if command -v python3 >/dev/null 2>&1; then
    python3 - "$MANIFEST" <<'PY'
import json, sys
envelope = json.load(open(sys.argv[1]))
m = envelope["body"]
summary = {
    "format": f'{envelope["format"]} v{envelope["version"]}',
    "sha256 (of body)": envelope["sha256"],
    "backup_id": m["backup_id"],
    "kind": m["kind"],
    "database": m["database"],
    "server": m["server"]["version"],
    "snapshot": f'{m["snapshot"]["method"]} at {m["snapshot"]["consistent_lsn"]}',
    "compression": f'{m["compression"]["algorithm"]} level {m["compression"]["level"]}',
    "tables": {f'{t["schema"]}.{t["name"]}': t["rows"] for t in m["tables"]},
    "sequences": len(m["sequences"]),
    "large_objects": m["large_objects"],
    "objects": len(m["objects"]),
    "stats": m["stats"],
}
print(json.dumps(summary, indent=2))
PY
else
    cat "$WORK/backup.json"
fi

# ---------------------------------------------------------------------------
# 7. List the backups, verify the newest, then restore it into a new
#    database: pgkeep loads it into quickstart_restored and proves every
#    table's row count and content fingerprint equal to the backup's.
log "pgkeep list"
pgkeep list

log "pgkeep verify latest --deep (every chunk re-read, then a scratch restore compared table by table)"
pgkeep verify latest --deep

# `restore latest` restores the latest data: the newest backup plus every
# change `pgkeep stream` archived after it. No stream runs here, so the
# summary says the backup alone was restored (`--target backup` asks for
# exactly that).
log "pgkeep restore latest --target-db quickstart_restored --yes"
pgkeep restore latest --target-db quickstart_restored --yes

psql_q() { PGPASSWORD=$PASSWORD psql_run "$@"; }
echo
echo "Rows per table, source vs restored:"
for t in $(psql_q -d quickstart -Atc "SELECT format('%I.%I', schemaname, relname) FROM pg_stat_user_tables ORDER BY 1"); do
    a=$(psql_q -d quickstart -Atc "SELECT count(*) FROM $t")
    b=$(psql_q -d quickstart_restored -Atc "SELECT count(*) FROM $t")
    printf '  %-32s %8s %8s\n' "$t" "$a" "$b"
done

# ---------------------------------------------------------------------------
# 8. Point-in-time table undo (the seed's recovery scenario 1). `pgkeep
#    setup` installs DDL capture; `pgkeep stream` follows a logical slot and
#    archives every committed change; a full backup taken while it runs is
#    the base. Then some writes, the time just before the mistake, and the
#    mistake: every cancelled order deleted.
log "pgkeep setup (DDL capture) and pgkeep stream (in the background, log in $WORK/stream.log)"
pgkeep setup >&2
pgkeep stream --segment-seconds 1 --no-auto-full-backup >"$WORK/stream.log" 2>&1 &
STREAM_PID=$!
for _ in $(seq 1 150); do
    [ "$(psql_q -d quickstart -Atc "SELECT count(*) FROM pg_replication_slots WHERE active AND database = 'quickstart'")" -ge 1 ] && break
    kill -0 "$STREAM_PID" 2>/dev/null || { cat "$WORK/stream.log" >&2; die "pgkeep stream exited"; }
    sleep 0.2
done
log "pgkeep backup (the base of point-in-time restores: taken while stream runs)"
pgkeep backup >&2
psql_q -d quickstart -c "UPDATE orders SET status = 'paid' WHERE id % 1000 = 0 AND status = 'new'" \
    -c "INSERT INTO orders (customer_id, amount, status, ordered_at) SELECT 1 + g, 9.99, 'cancelled', now() FROM generate_series(1, 5) g"
sleep 1
BEFORE=$(psql_q -d quickstart -Atc "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
sleep 1
CANCELLED=$(psql_q -d quickstart -Atc "SELECT count(*) FROM orders WHERE status = 'cancelled'")
log "the mistake, after $BEFORE: DELETE FROM orders WHERE status = 'cancelled' ($CANCELLED rows)"
psql_q -d quickstart -c "DELETE FROM orders WHERE status = 'cancelled'"
# Wait until the stream has archived everything written so far, then stop it.
for _ in $(seq 1 150); do
    [ "$(psql_q -d quickstart -Atc "SELECT bool_and(confirmed_flush_lsn >= pg_current_wal_insert_lsn()) FROM pg_replication_slots WHERE database = 'quickstart'")" = t ] && break
    sleep 0.2
done
kill -TERM "$STREAM_PID"; wait "$STREAM_PID" || true; STREAM_PID=

log "pgkeep restore latest --target-time '$BEFORE' --table public.orders --target-db orders_undo --yes"
pgkeep restore latest --target-time "$BEFORE" --table public.orders --target-db orders_undo --yes

echo
echo "Cancelled orders, in quickstart (after the DELETE) and in orders_undo (restored to $BEFORE):"
printf '  %-12s %10s %10s\n' "" quickstart orders_undo
printf '  %-12s %10s %10s\n' "cancelled" \
    "$(psql_q -d quickstart -Atc "SELECT count(*) FROM orders WHERE status = 'cancelled'")" \
    "$(psql_q -d orders_undo -Atc "SELECT count(*) FROM orders WHERE status = 'cancelled'")"
printf '  %-12s %10s %10s\n' "all orders" \
    "$(psql_q -d quickstart -Atc "SELECT count(*) FROM orders")" \
    "$(psql_q -d orders_undo -Atc "SELECT count(*) FROM orders")"

# Copy the deleted rows home (the generated column is computed again).
COLS="id, customer_id, amount, status, note, ordered_at"
psql_q -d orders_undo -c "\\copy (SELECT $COLS FROM orders WHERE status = 'cancelled') TO pstdout" \
    | psql_q -d quickstart -c "\\copy orders ($COLS) FROM pstdin"
echo
echo "After copying them home from orders_undo:"
printf '  %-12s %10s\n' "cancelled" "$(psql_q -d quickstart -Atc "SELECT count(*) FROM orders WHERE status = 'cancelled'")"
printf '  %-12s %10s\n' "all orders" "$(psql_q -d quickstart -Atc "SELECT count(*) FROM orders")"
echo
echo "Quickstart done; the cluster is being stopped and removed."
