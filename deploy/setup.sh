#!/usr/bin/env bash
# Prepare a machine for `make demo` and `make test`: PostgreSQL server
# programs (through apt when missing), PgBouncer, and the project's virtual
# environment with pinned packages. Safe to run again; it skips finished steps.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

have_pg_server() {
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null
}

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "ERROR: missing system packages: $*" >&2
        echo "HINT: run as root or install them: sudo apt-get install -y $*" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

missing=()
have_pg_server || missing+=(postgresql)
command -v pgbouncer >/dev/null || missing+=(pgbouncer)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]} with apt"
    apt_install "${missing[@]}"
fi

# Debian starts a cluster of its own after installing; Resguardo never uses it.
if command -v pg_lsclusters >/dev/null && [ "$(id -u)" -eq 0 ]; then
    pg_lsclusters -h 2>/dev/null | awk '$4=="online"{print $1, $2}' | while read -r version name; do
        pg_ctlcluster "$version" "$name" stop || true
    done
fi

stamp="$VENV/.installed"
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -r requirements.txt -c constraints.txt
    "$VENV/bin/python" -m pip install -q --no-deps -e .
    touch "$stamp"
fi
echo "setup: ready ($("$VENV/bin/python" --version), $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -1))"
