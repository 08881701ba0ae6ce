"""Shared pytest setup: the fixture modules, the test tiers, and the podman rule.

Tiers come from the directory a test lives in (`tests/<dir>/...`), not from a line in each
file: a new test file is in its tier the moment it exists, and a test outside the known
directories stops the run instead of silently belonging to no tier. `tests/conformance`
is integration: it runs a second interpreter (the compute-horde oracle venv that
scripts/oracle-venv.sh builds), which is more than a unit test may depend on.

The podman rule: every test that needs podman carries the `podman` marker, written in its
file, so `-m "not podman"` runs on a host without podman. Two checks keep that true:
* at collection, a test whose fixtures reach a real podman without the marker stops the
  run, naming the test and the fixture;
* at run time, a test without the marker finds a `podman` first on its PATH that records
  the call and fails the test at teardown (the CLI used directly, not through a fixture).

The per-test timeout is pytest-timeout's (`timeout` in pyproject.toml): it fails a hung
test by name with every thread's stack. System tests boot a machine and build images in
their first test's setup, so they get SYSTEM_TEST_TIMEOUT_S instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures.podman", "tests.fixtures.miner", "tests.fixtures.httpserver", "tests.fixtures.netns",
                  "tests.fixtures.sshd"]

TESTS_DIR = Path(__file__).resolve().parent
TIER_OF_DIR: dict[str, str] = {"unit": "unit", "integration": "integration", "conformance": "integration",
                               "system": "system"}
# Fixtures that start or reach a real podman. Every fixture built on one of them (busybox_image,
# agent_config, executor_agent, link_client, executor_hosts, machine) is caught through it:
# an item's fixturenames is the whole closure of what it requests.
PODMAN_FIXTURES = frozenset({"podman_socket", "isolated_podman", "systest_image"})
# The first system test builds the .debs of both suites in debootstrapped roots (~200 s from
# nothing, bounded by DEBS_BUILD_TIMEOUT_S = 1200 s in tests/system/conftest.py) and its suite's
# machine image (~70 s, BUILD_TIMEOUT_S = 900 s), then boots it. 1800 s covers a slow first run of
# both builds; the later images stay far below it.
SYSTEM_TEST_TIMEOUT_S = 1800
PODMAN_GUARD_LOG_ENV = "CH_PODMAN_GUARD_LOG"
PODMAN_GUARD_SCRIPT = f"""#!/bin/sh
# Installed by tests/conftest.py for tests without the podman marker.
echo "podman $*" >> "${PODMAN_GUARD_LOG_ENV}"
echo "podman: not available to a test without the podman marker (tests/conftest.py)" >&2
exit 127
"""


def _tier(item: pytest.Item) -> str:
    try:
        top = item.path.resolve().relative_to(TESTS_DIR).parts[0]
    except ValueError:
        top = ""
    if top not in TIER_OF_DIR:
        raise pytest.UsageError(f"{item.nodeid}: a test must live in one of tests/{{{','.join(TIER_OF_DIR)}}}/ "
                                "so that a tier marker selects it (tests/conftest.py)")
    return TIER_OF_DIR[top]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tier markers go on before `-m` deselects (hence tryfirst); unmarked podman users stop the run."""
    unmarked: list[str] = []
    for item in items:
        tier = _tier(item)
        item.add_marker(getattr(pytest.mark, tier))
        if tier == "system" and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SYSTEM_TEST_TIMEOUT_S))
        used = PODMAN_FIXTURES.intersection(item.fixturenames)
        if used and item.get_closest_marker("podman") is None:
            unmarked.append(f"  {item.nodeid} (uses {', '.join(sorted(used))})")
    if unmarked:
        raise pytest.UsageError("these tests need podman but lack the podman marker; add "
                                "`pytestmark = pytest.mark.podman` to their file:\n" + "\n".join(unmarked))


@pytest.fixture(scope="session")
def _podman_guard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory whose only file is the recording `podman` stand-in."""
    bin_dir = tmp_path_factory.mktemp("podman-guard")
    script = bin_dir / "podman"
    script.write_text(PODMAN_GUARD_SCRIPT)
    script.chmod(0o755)
    return bin_dir


@pytest.fixture(autouse=True)
def _podman_only_with_marker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Shadow the podman CLI for a test without the marker, and fail it if it ran podman anyway."""
    if request.node.get_closest_marker("podman") is not None:
        yield
        return
    bin_dir: Path = request.getfixturevalue("_podman_guard_dir")
    log = bin_dir / f"calls-{os.getpid()}-{id(request.node)}.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv(PODMAN_GUARD_LOG_ENV, str(log))
    yield
    if log.exists():
        calls = log.read_text().strip()
        log.unlink()
        pytest.fail(f"{request.node.nodeid} ran the podman CLI without the podman marker:\n{calls}\n"
                    "add `pytestmark = pytest.mark.podman` to its file", pytrace=False)
