"""Operator plugins by dotted path, for both agents (job runners here, executor managers in
the miner, which may import this module).

Accepts "package.module:ClassName" and the stock dotted form "package.module.ClassName".
Every failure is one line naming the config key, because it is a config problem.
"""

from __future__ import annotations

import importlib
from typing import Any, TypeVar

T = TypeVar("T")


class PluginError(Exception):
    """The plugin cannot be loaded or built; str() names the key, the path and the fix."""


def load_plugin(key: str, path: str, base: type[T], options: dict[str, Any]) -> T:
    """Import `path`, check it subclasses `base`, and build it with `options`."""
    module_name, sep, class_name = path.partition(":")
    if not sep:
        module_name, _, class_name = path.rpartition(".")
    if not module_name or not class_name:
        raise PluginError(f"{key} {path!r}: expected \"package.module:ClassName\"")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"{key} {path!r}: cannot import {module_name}: {exc}") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, base):
        raise PluginError(f"{key} {path!r}: {class_name} is not a subclass of {base.__module__}.{base.__qualname__}")
    try:
        return cls(options)
    except Exception as exc:  # any constructor error is a config problem of the operator's
        raise PluginError(f"{key} {path!r}: constructor failed: {type(exc).__name__}: {exc}") from None
