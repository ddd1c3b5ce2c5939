#!/usr/bin/env bash
# Sets up everything bkv needs on a fresh Debian machine, idempotently and quietly:
#   - system packages: libsodium (ristretto255 for pysodium), SoftHSM2 (PKCS#11 backend),
#     PostgreSQL server and client (the record store tests start a private cluster
#     with its initdb / pg_ctl; the server is not enabled for anything else)
#   - .venv with bkv installed editable plus its dev dependencies, from PyPI.
# Re-running it when nothing changed costs a few dpkg queries.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(libsodium23 softhsm2 postgresql)
PYTHON=${PYTHON:-python3}
VENV=.venv

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "bootstrap: installing system packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "bootstrap: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.bkv-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "bootstrap: installing Python dependencies into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip 2>/dev/null || true
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
    touch "$stamp"
fi
