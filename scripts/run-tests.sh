#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 or 13 machine as root: installs what it needs
# (scripts/bootstrap.sh --test, and the conformance oracle's venv, which only the tests use),
# then runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --test
# The validators' own models (compute-horde, PyPI) in a separate venv: a test-only
# conformance oracle, never importable by the agents.
bash scripts/oracle-venv.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
