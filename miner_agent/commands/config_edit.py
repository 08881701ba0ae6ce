"""Edit the miner's TOML config the way an operator would by hand: comments and order kept.

tomlkit round-trips the file, so `config set` and `executors add/remove` change only the
value they name. Every edit is validated as a whole MinerConfig before the file is
replaced (atomically), so a bad value never lands on disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import tomlkit
from pydantic import ValidationError
from tomlkit.exceptions import ParseError
from tomlkit.toml_document import TOMLDocument

from agent_common.tomlfile import describe
from miner_agent.miner_config import ConfigError, MinerConfig


def read_document(path: Path) -> TOMLDocument:
    try:
        return tomlkit.parse(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except ParseError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def parse_value(text: str) -> Any:
    """A TOML value if the text is one (`8001`, `true`, `["a", "b"]`), else the text as a string."""
    try:
        return tomlkit.parse(f"v = {text}")["v"]
    except ParseError:
        return text


def set_key(doc: TOMLDocument, dotted: str, value: Any) -> None:
    """Set `section.key` (tables created as needed); array-of-tables entries are edited by name elsewhere."""
    *tables, key = dotted.split(".")
    if not key or any(not t for t in tables):
        raise ConfigError(f"{dotted!r} is not a key; use section.key, e.g. miner.listen_port")
    node: Any = doc
    for name in tables:
        if name not in node:
            node[name] = tomlkit.table()
        node = node[name]
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted!r}: {name} is not a table")
    node[key] = value


def add_executor(doc: TOMLDocument, entry: dict[str, Any]) -> None:
    executors = doc.get("executors")
    if executors is None:
        executors = tomlkit.aot()
        doc["executors"] = executors
    if any(e.get("name") == entry["name"] for e in executors):
        raise ConfigError(f"an executor named {entry['name']!r} already exists; remove it first or pick another name")
    table = tomlkit.table()
    for key, value in entry.items():
        if value is not None:
            table[key] = str(value) if isinstance(value, Path) else value
    executors.append(table)


def remove_executor(doc: TOMLDocument, name: str) -> None:
    executors = doc.get("executors")
    names = [e.get("name") for e in executors] if executors is not None else []
    if name not in names:
        raise ConfigError(f"no executor named {name!r} in the config (configured: {', '.join(map(str, names)) or 'none'})")
    del executors[names.index(name)]


def validate(doc: TOMLDocument, path: Path) -> MinerConfig:
    try:
        return MinerConfig.model_validate(doc.unwrap())
    except ValidationError as exc:
        raise ConfigError(f"{describe(exc, path)}; nothing was changed") from None


def write_document(doc: TOMLDocument, path: Path) -> None:
    """Validate, then replace the file atomically, keeping its mode."""
    validate(doc, path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(tomlkit.dumps(doc))
    try:
        os.chmod(tmp, path.stat().st_mode & 0o7777)
    except FileNotFoundError:
        pass
    os.replace(tmp, path)
