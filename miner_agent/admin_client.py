"""Talk to a running miner's admin socket; every failure becomes one actionable line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

ADMIN_TIMEOUT_S = 10.0


class AdminUnavailable(Exception):
    """The miner is not running, or the socket is not ours to open."""


async def call(socket: Path, method: str, path: str, timeout_s: float = ADMIN_TIMEOUT_S) -> tuple[int, dict[str, Any]]:
    if not socket.exists():
        raise AdminUnavailable(
            f"no admin socket at {socket}; is miner-agent running with this config? (systemctl status miner-agent)"
        )
    connector = aiohttp.UnixConnector(path=str(socket))
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:
            async with http.request(method, f"http://miner-agent{path}") as resp:
                return resp.status, await resp.json()
    except PermissionError:
        raise AdminUnavailable(f"permission denied on {socket}; run as root or as the miner-agent user") from None
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise AdminUnavailable(f"miner-agent at {socket} did not answer: {exc}") from None
