#!/bin/sh
# Set up edgedeploy on a fresh Debian/Ubuntu machine with Python >= 3.11.
#   scripts/setup.sh          the toolchain in .venv (llama-cpp-python is built once, ~6 min on 2 cores)
#   scripts/setup.sh --test   also the system tools the test rigs use (OpenSSH server, socat, adb,
#                             PostgreSQL for the history tests, Chromium for the HTML report check)
#                             and llama.cpp's rpc-server for the split tests (built once, ~2-4 min)
# Idempotent: what is already installed is not installed again.
set -eu
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

SUDO=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
APT_UPDATED=0
apt_install() {
    missing=""
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
    done
    [ -z "$missing" ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: please install:$missing (no apt-get here)" >&2
        return 1
    fi
    if [ "$APT_UPDATED" -eq 0 ]; then
        $SUDO apt-get update -qq
        APT_UPDATED=1
    fi
    echo "setup: installing$missing" >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "setup: need Python >= 3.11" >&2; exit 2; }

# A C/C++ compiler builds llama-cpp-python; venv/ensurepip is split out of python3 on Debian.
command -v g++ >/dev/null 2>&1 || apt_install g++ gcc make
"$PY" -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
if [ "$want_test" -eq 1 ]; then
    apt_install openssh-server openssh-client socat adb util-linux iproute2 dash postgresql chromium cmake
fi

if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# pip leaves an installed llama-cpp-python that satisfies the range alone: no rebuild.
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
if [ "$want_test" -eq 1 ]; then
    # a split across boards (ship --target A --target B) builds rpc-server on first use; the tests' build, made here once
    .venv/bin/python -c 'from toolchain.deploy.provision import host_runtime; from toolchain.deploy.rpc import ensure_build; ensure_build(host_runtime(), print)'
fi
echo "setup: ready (.venv/bin/edgedeploy)" >&2
