#!/usr/bin/env bash
# Run pgkeep's whole test suite against real PostgreSQL and real Garage.
# On a fresh Debian machine it first installs what is missing:
#   - PostgreSQL server packages (apt), when no initdb is found;
#   - Garage (cargo install garage --locked), when no garage binary is found.
# Then a fuzz smoke run of the seed corpora, then the whole suite.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

have_pg_server() {
    [ -n "${PG_BINDIR:-}" ] && [ -x "$PG_BINDIR/initdb" ] && return 0
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

if ! have_pg_server; then
    log "installing PostgreSQL server packages"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql postgresql-contrib
fi
# Tests start clusters as the 'postgres' OS user when run as root.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    log "creating the postgres OS user"
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

if [ -z "${GARAGE_BIN:-}" ]; then
    if command -v garage >/dev/null 2>&1; then
        GARAGE_BIN=$(command -v garage)
    elif [ -x "$HOME/.cargo/bin/garage" ]; then
        GARAGE_BIN="$HOME/.cargo/bin/garage"
    else
        log "installing Garage (cargo install garage --locked; several minutes on first run)"
        cargo install garage --locked
        GARAGE_BIN="$HOME/.cargo/bin/garage"
    fi
fi
export GARAGE_BIN
log "PostgreSQL: $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -n1) ; Garage: $GARAGE_BIN"

# Fuzz smoke: every seed of fuzz/corpus/<target>/ and deterministic mutations
# of it through the same bodies cargo-fuzz runs (fuzz/bodies/), on stable
# Rust. Runs first so a decoder finding shows at once; `cargo test` below
# runs it again with everything else.
log "fuzz smoke (tests/fuzz_smoke.rs)"
cargo test --locked --test fuzz_smoke

log "cargo test"
cargo test --locked "$@"
