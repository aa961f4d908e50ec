#!/usr/bin/env bash
# Build the wheel, install it (not editable) into a fresh venv outside the checkout, and run a
# backup -> restore round trip with it from a folder that holds its own store/ and report/, so
# neither an editable install nor the checkout's folders can stand in for the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip wheel -q --no-deps -w "$work/dist" .
wheel=$(ls "$work"/dist/deltagrid-*.whl)
tops=$("$PY" - "$wheel" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
print(" ".join(sorted({n.split("/")[0] for n in names if ".dist-info/" not in n})))
EOF
)
if [ "$tops" != "deltagrid" ]; then
    echo "wheel check: the wheel installs top-level names '$tops', not just 'deltagrid'" >&2
    exit 1
fi
"$PY" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "$wheel"
mkdir -p "$work/cwd/store" "$work/cwd/report" "$work/src/sub"
echo "shadow" > "$work/cwd/store/__init__.py"
echo "shadow" > "$work/cwd/report/__init__.py"
head -c 300000 /dev/urandom > "$work/src/sub/random.bin"
printf 'hello\n' > "$work/src/a.txt"
cd "$work/cwd"
"$work/venv/bin/deltagrid" --home "$work/home" -q backup "$work/src"
"$work/venv/bin/deltagrid" --home "$work/home" -q restore "$work/out"
diff -r "$work/src" "$work/out$work/src"
echo "wheel check: one top-level package; installed wheel backs up and restores exactly"
