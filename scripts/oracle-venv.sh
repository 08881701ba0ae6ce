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
PIP_EXTRA=()
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  # Debian 13 has only Python 3.13. compute-horde 0.0.27 declares `==3.11.*`, but its models and
  # client import and pass the whole conformance suite on 3.13 (checked 2026-12-01), so the
  # declaration is overridden rather than the tests refused.
  PYTHON=python3
  if "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] == (3, 11))'; then
    echo "oracle-venv: no python3.11; using $("$PYTHON" --version) and pip --ignore-requires-python"
    PIP_EXTRA=(--ignore-requires-python)
  fi
fi
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
"$VENV/bin/pip" install -q --disable-pip-version-check ${PIP_EXTRA[@]+"${PIP_EXTRA[@]}"} \
  'compute-horde==0.0.27' 'async-substrate-interface<2' 'bittensor-wallet' 2>&1 | grep -v 'is ignored' || true
"$VENV/bin/python" -c "$CHECK"
echo "oracle-venv: ready ($VENV)"
