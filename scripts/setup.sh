#!/usr/bin/env bash
# Create a venv with deltagrid and its test tools installed. Safe to run again.
# PYTHON names the interpreter (default: the newest of 3.14 ... 3.11 that runs here); VENV the
# venv's folder (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

runs() { command -v "$1" >/dev/null 2>&1 && "$1" -c 'import sys' >/dev/null 2>&1; }
if [ -z "${PYTHON:-}" ]; then
    for candidate in python3.14 python3.13 python3.12 python3.11 python3; do
        if runs "$candidate"; then PYTHON=$candidate; break; fi
    done
fi
if [ -z "${PYTHON:-}" ] || ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: deltagrid needs CPython 3.11 or newer (3.11 to 3.14); found ${PYTHON:-none}" >&2
    exit 1
fi

# deltagrid calls librsync 2 through ctypes: the system's (the one system package it needs),
# or, where python-rsync has a wheel (CPython 3.10-3.12), the copy inside it.
has_librsync() {
    ldconfig -p 2>/dev/null | grep -q 'librsync\.so\.2' || [ -e /opt/homebrew/lib/librsync.dylib ] \
        || [ -e /usr/local/lib/librsync.dylib ]
}
install_librsync() {
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo -n"
    if command -v apt-get >/dev/null; then
        for package in librsync2 librsync2t64; do
            $sudo apt-get install -y -qq "$package" >/dev/null 2>&1 && return
        done
        $sudo apt-get update -qq >/dev/null 2>&1 || return 0
        for package in librsync2 librsync2t64; do
            $sudo apt-get install -y -qq "$package" >/dev/null 2>&1 && return
        done
    elif command -v dnf >/dev/null; then
        $sudo dnf install -y -q librsync >/dev/null 2>&1 || true
    fi
}
has_librsync || install_librsync || true
if ! has_librsync && ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info >= (3, 13))'; then
    echo "setup: librsync 2 is missing: install librsync2 (Debian/Ubuntu; librsync2t64 on" \
        "Debian 13), librsync (Fedora) or 'brew install librsync' (macOS)" >&2
    exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[test]'
