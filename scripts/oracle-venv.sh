#!/usr/bin/env bash
# Builds .venv-oracle: the validators' own protocol package (compute-horde 0.0.27 from PyPI), used
# ONLY by tests/conformance as a test oracle; runtime code never imports it. It lives in a separate venv
# because it drags in Django, bittensor 9 and ~390 MB of dependencies.
# Idempotent: a second run only checks that the oracle imports.
# `async-substrate-interface<2` avoids the scalecodec/cyscale import conflict (test-environment.md §6).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-oracle
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
CHECK='import compute_horde, compute_horde.protocol_messages, compute_horde.receipts.schemas, bittensor_wallet'

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "$CHECK" 2>/dev/null; then
  echo "oracle-venv: ready ($VENV)"
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "oracle-venv: creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
echo '*' > "$VENV/.gitignore"   # keep the oracle out of git even though only .venv/ is ignored
echo "oracle-venv: pip install compute-horde==0.0.27 (about 35 s, 390 MB)"
"$VENV/bin/pip" install -q --disable-pip-version-check \
  'compute-horde==0.0.27' 'async-substrate-interface<2' 'bittensor-wallet' 2>&1 | grep -v 'is ignored' || true
"$VENV/bin/python" -c "$CHECK"
echo "oracle-venv: ready ($VENV)"
