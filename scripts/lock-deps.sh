#!/usr/bin/env bash
# Writes the locked, hashed dependency set from pyproject.toml (docs/packaging.md):
#   requirements/executor.txt  base dependencies          -> the executor-agent .deb
#   requirements/miner.txt     base + the `miner` extra    -> the miner-agent .deb
#   requirements/test.txt      base + `miner` + `test`     -> scripts/bootstrap.sh (dev machines, CI)
# Each is one universal lock (uv's --universal): valid for every Python the project supports
# (requires-python >=3.11: Debian 12's 3.11, Ubuntu 24.04's 3.12, Debian 13's 3.13), with
# environment markers where a version or a package differs, and the sha256 of every file
# PyPI has for each pin. executor.txt and miner.txt take their versions from test.txt, so the
# three never disagree on a shared package.
#
#   bash scripts/lock-deps.sh                        re-lock after editing pyproject.toml (keeps pins)
#   bash scripts/lock-deps.sh --upgrade-package web3 upgrade one dependency (repeatable)
#   bash scripts/lock-deps.sh --upgrade              upgrade everything
#
# Needs PyPI. uv is the locking tool only (a pinned version in .venv-lock); nothing installs
# with it: bootstrap.sh and build-debs.sh use pip --require-hashes on these files.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
MIN_PYTHON=3.11   # pyproject's requires-python
TOOLS=.venv-lock

if [ ! -x "$TOOLS/bin/uv" ] || [ "$("$TOOLS/bin/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  echo "lock-deps: installing uv $UV_VERSION into $TOOLS"
  [ -x "$TOOLS/bin/python" ] || "${PYTHON:-python3}" -m venv "$TOOLS"
  echo '*' >"$TOOLS/.gitignore"
  "$TOOLS/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION" 2>&1 | grep -v 'is ignored' || true
fi
compile() {  # $1 = output file, then uv arguments
  local out=$1; shift
  "$TOOLS/bin/uv" pip compile -q pyproject.toml --universal --python-version "$MIN_PYTHON" --generate-hashes \
    --index-url https://pypi.org/simple --no-header -o "$out" "$@"
  # A header that names the command, so an edit by hand is recognisable as one.
  { echo "# Locked by: bash scripts/lock-deps.sh (uv $UV_VERSION, universal, Python >=$MIN_PYTHON). Do not edit."
    cat "$out"; } >"$out.tmp" && mv "$out.tmp" "$out"
}
mkdir -p requirements
compile requirements/test.txt --extra miner --extra test "$@"
compile requirements/miner.txt --extra miner -c requirements/test.txt
compile requirements/executor.txt -c requirements/test.txt
for f in requirements/*.txt; do echo "lock-deps: $f: $(grep -c '^[a-z0-9]' "$f") packages"; done
