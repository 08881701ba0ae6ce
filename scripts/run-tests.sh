#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine as root: installs what it needs
# (scripts/bootstrap.sh), then runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
