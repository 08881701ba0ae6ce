"""pyproject.toml and the locks in requirements/ agree, so what bootstrap, CI and the .debs install
(`pip install --require-hashes -r requirements/...`) is what pyproject.toml asks for.

A requirement added, removed or narrowed in pyproject.toml without `bash scripts/lock-deps.sh`
fails here, naming the package and the file; so does a lock edited by hand into something
unpinned or unhashed (docs/packaging.md).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from dataclasses import dataclass
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
LOCKS = REPO / "requirements"
# Which pyproject extras each lock holds, on top of the base dependencies.
LOCK_EXTRAS: dict[str, tuple[str, ...]] = {"executor.txt": (), "miner.txt": ("miner",), "test.txt": ("miner", "test")}
# What the executor-agent package must never carry (issue 13: the executor host needs none of it).
MINER_ONLY = {"bittensor", "web3", "eth-account", "asyncssh", "async-substrate-interface"}
DIRECT = "miner-agent (pyproject.toml)"
PROJECT_PACKAGES = {"executor_agent", "horde_protocol", "agent_common", "miner_agent"}
EXECUTOR_SIDE = ("executor_agent", "horde_protocol", "agent_common")  # what the executor package carries
HEADER = "# Locked by: bash scripts/lock-deps.sh"
ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)\s*(?:;\s*(?P<marker>[^\\]+?))?\s*\\?$")


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    marker: str
    hashes: int
    direct: bool


def read_lock(path: Path) -> list[Pin]:
    """The pins of one lock file: `name==version [; marker]`, its --hash lines and its `# via` block."""
    pins: list[Pin] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.startswith("#"):
            continue
        match = ENTRY.match(line)
        assert match, f"{path.name}: not an exact pin: {line!r} (run bash scripts/lock-deps.sh)"
        hashes, direct = 0, False
        while i < len(lines) and lines[i].startswith(" "):
            hashes += lines[i].strip().startswith("--hash=sha256:")
            direct = direct or lines[i].strip().lstrip("#").strip().removeprefix("via ") == DIRECT
            i += 1
        pins.append(Pin(canonicalize_name(match["name"]), match["version"], (match["marker"] or "").strip(),
                        hashes, direct))
    return pins


def wanted(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


@pytest.mark.parametrize("lock", sorted(LOCK_EXTRAS))
def test_every_pyproject_requirement_is_pinned_in_the_lock_within_its_range(lock: str) -> None:
    pins = read_lock(LOCKS / lock)
    by_name = {pin.name: pin for pin in pins}
    for req in wanted(LOCK_EXTRAS[lock]):
        name = canonicalize_name(req.name)
        assert name in by_name, f"{lock}: {req} from pyproject.toml is not locked; run bash scripts/lock-deps.sh"
        pin = by_name[name]
        assert req.specifier.contains(pin.version, prereleases=True), (
            f"{lock}: {name}=={pin.version} does not satisfy pyproject.toml's {req}; run bash scripts/lock-deps.sh")


@pytest.mark.parametrize("lock", sorted(LOCK_EXTRAS))
def test_the_locks_direct_dependencies_are_exactly_pyprojects(lock: str) -> None:
    """A dependency dropped from pyproject.toml leaves the lock too (uv marks direct ones `via pyproject.toml`)."""
    direct = {pin.name for pin in read_lock(LOCKS / lock) if pin.direct}
    assert direct == {canonicalize_name(r.name) for r in wanted(LOCK_EXTRAS[lock])}, (
        f"{lock} is stale; run bash scripts/lock-deps.sh")


@pytest.mark.parametrize("lock", sorted(LOCK_EXTRAS))
def test_every_pin_is_exact_and_hashed_and_the_file_is_generated(lock: str) -> None:
    text = (LOCKS / lock).read_text()
    assert text.startswith(HEADER), f"{lock} was not written by scripts/lock-deps.sh"
    pins = read_lock(LOCKS / lock)
    assert pins
    for pin in pins:
        assert pin.hashes >= 1, f"{lock}: {pin.name}=={pin.version} has no --hash"
    assert not re.search(r"^\s*(-e|--editable|-r|git\+|https?://)", text, re.MULTILINE), f"{lock}: unpinned source"


def test_the_three_locks_agree_on_every_shared_package() -> None:
    versions: dict[tuple[str, str], dict[str, str]] = {}
    for lock in LOCK_EXTRAS:
        for pin in read_lock(LOCKS / lock):
            versions.setdefault((pin.name, pin.marker), {})[lock] = pin.version
    split = {key: seen for key, seen in versions.items() if len(set(seen.values())) > 1}
    assert not split, f"locks disagree (run bash scripts/lock-deps.sh): {split}"


def test_the_executor_lock_carries_nothing_only_the_miner_needs() -> None:
    names = {pin.name for pin in read_lock(LOCKS / "executor.txt")}
    assert not names & MINER_ONLY, f"requirements/executor.txt has miner-only packages: {sorted(names & MINER_ONLY)}"


def test_everything_the_executor_side_imports_is_in_the_executor_lock() -> None:
    """The executor-agent package installs only requirements/executor.txt: a third-party import added to
    executor_agent, horde_protocol or agent_common must come from a package in it (or into the base
    dependencies, and re-lock). The system test proves the same in the built package's own venv."""
    locked = {pin.name for pin in read_lock(LOCKS / "executor.txt")}
    providers = packages_distributions()
    missing: dict[str, str] = {}
    for module, where in sorted(third_party_imports(EXECUTOR_SIDE).items()):
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        if not dists & locked:
            missing[module] = f"{where} (from {sorted(dists) or 'no installed distribution'})"
    assert not missing, f"imported on the executor side but not in requirements/executor.txt: {missing}"


def third_party_imports(packages: tuple[str, ...]) -> dict[str, str]:
    """{top-level module: first file importing it} for absolute imports outside the stdlib and the project."""
    found: dict[str, str] = {}
    for package in packages:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in PROJECT_PACKAGES:
                        found.setdefault(top, str(path.relative_to(REPO)))
    return found
