"""The layering rule of ARCHITECTURE.md, checked on the source: neither agent imports the other,
and the shared packages import neither agent. This is what lets each .deb ship only its own agent.

The check reads every import statement (module level, inside functions, `from X import Y` and
plain `import X`) with `ast`, so a lazy import in a function body is caught as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# package -> top-level packages it must never import
FORBIDDEN: dict[str, set[str]] = {
    "miner_agent": {"executor_agent"},
    "executor_agent": {"miner_agent"},
    "agent_common": {"miner_agent", "executor_agent"},
    "horde_protocol": {"miner_agent", "executor_agent", "agent_common"},
}


def imported_roots(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, root in imported_roots(path):
            if root in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {root}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_lies_below_it(package: str) -> None:
    assert violations(package) == []


def test_the_checker_sees_a_lazy_cross_import(tmp_path: Path) -> None:
    """The rule must be able to fail: a function-level import of the other agent is found."""
    source = tmp_path / "sneaky.py"
    source.write_text("def f():\n    from executor_agent.daemon import server\n    import miner_agent.jobs\n")
    assert imported_roots(source) == [(2, "executor_agent"), (3, "miner_agent")]


def test_no_two_modules_share_a_file_name() -> None:
    """Unique module names keep tracebacks, logger names and `grep` unambiguous."""
    seen: dict[str, Path] = {}
    clashes = []
    for package in FORBIDDEN:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name in ("__init__.py", "__main__.py"):
                continue
            if path.name in seen:
                clashes.append(f"{seen[path.name].relative_to(ROOT)} and {path.relative_to(ROOT)}")
            seen.setdefault(path.name, path)
    assert clashes == []
