"""Checks for relative paths chosen by a validator (volume and upload `relative_path`).

The wire models accept any string, as reference-code validators do not restrict it; the newer SDK
(0.0.19, protocol.md §12) only accepts one canonical spelling. Whoever joins such a path onto a host
directory (the executor agent) must call `relative_path_problem` first and refuse the job if it
returns a reason.
"""

from __future__ import annotations

MAX_PATH_COMPONENT_BYTES = 255  # a file name longer than this cannot exist on Linux filesystems


def relative_path_problem(path: str) -> str | None:
    """None if `path` is a canonical relative path (no leading `/`, no empty, `.` or `..` component,
    no backslash, no NUL, every component at most 255 UTF-8 bytes), else a short reason."""
    if not path:
        return "is empty"
    if "\\" in path:
        return "contains a backslash"
    if "\0" in path:
        return "contains a NUL byte"
    if path.startswith("/"):
        return "is absolute"
    for component in path.split("/"):
        if component in ("", ".", ".."):
            return f"has a {component!r} component" if component else "has an empty component"
        if len(component.encode()) > MAX_PATH_COMPONENT_BYTES:
            return f"has a component longer than {MAX_PATH_COMPONENT_BYTES} bytes"
    return None
