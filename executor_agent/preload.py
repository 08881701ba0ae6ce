"""`executor-agent preload`: pull the job images validators use before a job needs them.

A job's startup stage has about 5 s (stock DYNAMIC_EXECUTOR_STARTUP_TIME_LIMIT), far too
little to pull a multi-GB image, so the stock miner asks operators to pre-pull the list
`DYNAMIC_PRELOAD_DOCKER_JOB_IMAGES` from its dynamic configuration hourly from cron
(docs/preload-job-images.sh). Here executor-agent-preload.timer runs this module instead.

The list is the union of `[preload] images` from the executor config and the dynamic
config's value. Unlike the stock script (which takes `items[0]`), the dynamic config is
read the way the miner reads it: items in order, future `effective_from` skipped, the last
applicable one wins. Pulls go through the same podman API service as jobs (libpod REST,
`policy=always`, so moving tags such as `v1-latest` are refreshed), one at a time, one
journal line per image. The exit status is 1 when anything failed, so a failed run shows
in `systemctl --failed` until the next good one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp

from executor_agent.container.job_spec import normalize_image
from executor_agent.executor_config import AgentConfig
from executor_agent.imagegc import PRELOAD_LIST_FILE
from horde_protocol.dynamic_config import PRELOAD_IMAGES_KEY, DynamicConfigFormatError, current_value

log = logging.getLogger(__name__)

DYNAMIC_PRELOAD_KEY = PRELOAD_IMAGES_KEY
FETCH_TIMEOUT_S = 30.0  # the dynamic config is a few KB
MAX_DYNAMIC_CONFIG_BYTES = 4 * 1024 * 1024
USER_AGENT = "backend-developers-ltd"  # the header the stock miner sends to GitHub
LIBPOD_API = "http://d/v4.0.0/libpod"  # host part unused on a unix socket
MAX_ERROR_CHARS = 300


class PreloadError(Exception):
    """The image list could not be read; str() names the source and the problem."""


def _write_list(path: Path, images: list[str]) -> None:
    """Atomically, so the agent's GC never reads half a list."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(images))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("preload list not saved path=%s error=%s (image GC may remove dynamic-config images)", path, exc)


@dataclass(frozen=True)
class PullResult:
    image: str
    ok: bool
    outcome: str  # "new", "updated", "unchanged" or "failed"
    image_id: str = ""
    took_ms: int = 0
    error: str = ""


def images_from_dynamic_config(doc: Any, now: datetime) -> list[str]:
    """The preload list in a miner dynamic-config document, or [] when it has none.

    Format: {KEY: {"description": str, "items": [{"value": any, "effective_from": iso|null}]}}.
    """
    if not isinstance(doc, dict):
        raise PreloadError("dynamic config: top level is not a JSON object")
    entry = doc.get(DYNAMIC_PRELOAD_KEY)
    if entry is None:
        return []
    try:
        found, value = current_value(DYNAMIC_PRELOAD_KEY, entry.get("items") if isinstance(entry, dict) else None, now)
    except DynamicConfigFormatError as exc:
        raise PreloadError(f"dynamic config: {exc}") from None
    if not found:
        value = []
    if isinstance(value, str):  # a JSON field may arrive encoded once more
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise PreloadError(f"dynamic config: {DYNAMIC_PRELOAD_KEY} value is a string, not a list") from None
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise PreloadError(f"dynamic config: {DYNAMIC_PRELOAD_KEY} value is not a list of image names")
    return [v.strip() for v in value]


def fetch_dynamic_config(url: str, timeout_s: float = FETCH_TIMEOUT_S) -> Any:
    """GET (or read, for file://) the dynamic config JSON. Blocking: run it in a thread."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https", "file"):
        raise PreloadError(f"dynamic_config_url {url!r}: use http://, https:// or file://")
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - scheme checked above
            body = response.read(MAX_DYNAMIC_CONFIG_BYTES + 1)
    except OSError as exc:
        raise PreloadError(f"dynamic config {url}: {getattr(exc, 'reason', None) or exc}") from None
    if len(body) > MAX_DYNAMIC_CONFIG_BYTES:
        raise PreloadError(f"dynamic config {url}: larger than {MAX_DYNAMIC_CONFIG_BYTES} bytes")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PreloadError(f"dynamic config {url}: not JSON: {exc}") from None


def plan(config_images: list[str], dynamic_images: list[str]) -> list[str]:
    """Config images first, then the dynamic ones; normalised (`:latest` added) and deduplicated."""
    seen: dict[str, None] = {}
    for ref in [*config_images, *dynamic_images]:
        seen.setdefault(normalize_image(ref.strip()), None)
    return list(seen)


def _unix_socket_path(podman_url: str) -> str:
    parts = urllib.parse.urlsplit(podman_url)
    if parts.scheme not in ("unix", "http+unix") or not parts.path:
        raise PreloadError(f"podman_url {podman_url!r}: preload needs a unix:///path socket")
    return parts.path


async def _image_id(session: aiohttp.ClientSession, ref: str) -> str:
    async with session.get(f"{LIBPOD_API}/images/{urllib.parse.quote(ref, safe='')}/json") as response:
        if response.status != 200:
            return ""
        return str((await response.json()).get("Id", ""))


async def pull_image(session: aiohttp.ClientSession, ref: str, timeout_s: float) -> PullResult:
    """One `policy=always` pull through the libpod API. Podman 4.3 answers 200 and puts a
    failure in the JSON stream ({"error": ...}), so the stream decides, not the status."""
    started = time.monotonic()
    before = await _image_id(session, ref)
    image_id, error = "", ""
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(f"{LIBPOD_API}/images/pull", params={"reference": ref, "policy": "always"}) as resp:
                if resp.status != 200:
                    error = f"HTTP {resp.status}: {(await resp.text())[:MAX_ERROR_CHARS]}"
                async for line in resp.content:
                    if not line.strip():
                        continue
                    try:
                        event = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if event.get("error"):
                        error = str(event["error"])
                    elif event.get("id"):
                        image_id = str(event["id"])
                    elif event.get("stream"):
                        log.debug("preload progress image=%s %s", ref, str(event["stream"]).strip())
    except TimeoutError:
        error = f"no result within {timeout_s:.0f} s"
    except aiohttp.ClientError as exc:
        error = f"podman API: {exc}"
    took_ms = int((time.monotonic() - started) * 1000)
    if error or not image_id:
        text = (error or "podman reported no image id").replace("\n", " ")[:MAX_ERROR_CHARS]
        return PullResult(ref, False, "failed", took_ms=took_ms, error=text)
    outcome = "new" if not before else ("unchanged" if before == image_id else "updated")
    return PullResult(ref, True, outcome, image_id=image_id, took_ms=took_ms)


async def run_preload(config: AgentConfig, now: datetime | None = None) -> list[PullResult]:
    """Read the lists, pull every image in turn, log one line each. Never raises for one
    bad image or an unreachable dynamic config: it logs, goes on, and reports a failure."""
    settings = config.preload
    dynamic: list[str] = []
    failures: list[PullResult] = []
    if settings.dynamic_config_url:
        try:
            doc = await asyncio.to_thread(fetch_dynamic_config, settings.dynamic_config_url)
            dynamic = images_from_dynamic_config(doc, now or datetime.now(timezone.utc))
        except PreloadError as exc:
            log.error("preload list unavailable source=dynamic_config error=%s", exc)
            failures.append(PullResult(settings.dynamic_config_url, False, "failed", error=str(exc)))
    images = plan(settings.images, dynamic)
    if not failures:  # only a complete list may replace the one the image GC protects
        _write_list(config.jobs_dir.parent / PRELOAD_LIST_FILE, images)
    log.info("preload started images=%d from_config=%d from_dynamic_config=%d podman=%s",
             len(images), len(settings.images), len(dynamic), config.podman_url)
    connector = aiohttp.UnixConnector(path=_unix_socket_path(config.podman_url))
    results: list[PullResult] = []
    async with aiohttp.ClientSession(connector=connector) as session:
        for ref in images:
            log.info("preload pulling image=%s", ref)
            result = await pull_image(session, ref, settings.pull_timeout_s)
            if result.ok:
                log.info("preload pulled image=%s result=%s id=%s took_ms=%d",
                         ref, result.outcome, result.image_id[:12], result.took_ms)
            else:
                log.error("preload pull failed image=%s took_ms=%d error=%s", ref, result.took_ms, result.error)
            results.append(result)
    counts = {k: sum(r.outcome == k for r in results) for k in ("new", "updated", "unchanged", "failed")}
    log.info("preload finished images=%d new=%d updated=%d unchanged=%d failed=%d list_errors=%d",
             len(results), counts["new"], counts["updated"], counts["unchanged"], counts["failed"], len(failures))
    return failures + results


def exit_status(results: list[PullResult]) -> int:
    """0 when every list was read and every image pulled, else 1."""
    return 0 if all(r.ok for r in results) else 1
