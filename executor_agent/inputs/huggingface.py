"""`huggingface_volume`: a repository snapshot fetched with our own small Hub client.

The stock executor calls `huggingface_hub.snapshot_download`; we need only two endpoints, so we
talk HTTP ourselves and keep the same guards as every other download (byte budget, timeouts, slow
drip, retries, no writes outside `dest`, the egress guard, the job's shared volume budget):

* `GET {hub}/api/{models|datasets|spaces}/{repo_id}/revision/{revision}` -> JSON with `sha` and
  `siblings: [{"rfilename": ...}]` (the listing `snapshot_download` itself uses);
* `GET {hub}/{""|datasets/|spaces/}{repo_id}/resolve/{sha}/{path}` -> the file, usually a redirect
  to a CDN; aiohttp drops `Authorization` when a redirect leaves the Hub's origin.

Files are resolved at the listed commit `sha`, so a branch moving mid-download cannot mix versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from fnmatch import fnmatchcase
from urllib.parse import quote

import aiohttp

from executor_agent.fs.safepath import UnsafePathError, create_file, open_dir, split_relative_path
from executor_agent.inputs.http_fetch import ByteBudget, Retryable, check_status, download, read_limited, with_retries
from executor_agent.inputs.safezip import FILE_MODE
from executor_agent.inputs.volume_budget import VolumeBudget, VolumeBudgetExceeded
from executor_agent.inputs.volume_limits import VolumeError, VolumeLimits
from horde_protocol.paths import relative_path_problem
from horde_protocol.volumes import HuggingfaceVolume

log = logging.getLogger(__name__)

DEFAULT_REVISION = "main"
_REPO_KINDS = {  # repo_type -> (API collection, URL prefix of resolve links)
    None: ("models", ""),
    "model": ("models", ""),
    "dataset": ("datasets", "datasets/"),
    "space": ("spaces", "spaces/"),
}
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
_NOT_FOUND_STATUS = frozenset({401, 403, 404})  # the Hub answers 401 for a private repo without token


def _allowed(path: str, patterns: list[str] | None) -> bool:
    """fnmatch as `snapshot_download` does it: a pattern ending in '/' means everything below."""
    if patterns is None:
        return True
    return any(fnmatchcase(path, p + "*" if p.endswith("/") else p) for p in patterns)


def _not_found_message(resp: aiohttp.ClientResponse, volume: HuggingfaceVolume, revision: str) -> str:
    code = resp.headers.get("X-Error-Code", "")
    if code == "RevisionNotFound":
        return f"huggingface {volume.repo_id}: revision {revision!r} not found"
    if code == "GatedRepo":
        return f"huggingface {volume.repo_id}: repository is gated; accept its terms and pass a token"
    return (
        f"huggingface {volume.repo_id}: repository not found or not accessible (HTTP {resp.status}); "
        "check repo_id, repo_type and token"
    )


async def _list_files(session: aiohttp.ClientSession, volume: HuggingfaceVolume, revision: str,
                      headers: dict[str, str], limits: VolumeLimits) -> tuple[str, list[str]]:
    """(commit sha, file paths) of the repo at `revision`. Not-found is final, not retried."""
    collection, _ = _REPO_KINDS[volume.repo_type]
    base = limits.hf_endpoint.rstrip("/")
    url = f"{base}/api/{collection}/{volume.repo_id}/revision/{quote(revision, safe='')}"
    what = f"huggingface {volume.repo_id} listing"

    async def attempt() -> tuple[str, list[str]]:
        async with asyncio.timeout(limits.response_headers_timeout_s):  # a listing is small: all of it
            async with session.get(url, headers=headers, max_redirects=limits.max_redirects) as resp:
                if resp.status in _NOT_FOUND_STATUS:
                    raise VolumeError(_not_found_message(resp, volume, revision))
                check_status(resp, what)
                body = await read_limited(resp, limits.hf_max_api_response_bytes, what)
        try:
            info = json.loads(body)
            siblings = info["siblings"]
            paths = [s["rfilename"] for s in siblings]
        except (ValueError, KeyError, TypeError) as exc:  # e.g. an HTML error page from a proxy
            raise Retryable(f"{what}: unexpected response ({type(exc).__name__})") from None
        if not all(isinstance(p, str) for p in paths):
            raise Retryable(f"{what}: unexpected response (non-string file name)")
        sha = info.get("sha")
        return (sha if isinstance(sha, str) and _COMMIT_SHA.fullmatch(sha) else revision), paths

    return await with_retries(attempt, limits, what)


async def _fetch_file(session: aiohttp.ClientSession, url: str, path: str, target_fd: int,
                      budget: ByteBudget, limits: VolumeLimits, headers: dict[str, str],
                      semaphore: asyncio.Semaphore) -> None:
    problem = relative_path_problem(path)
    if problem is not None:
        raise VolumeError(f"huggingface file name {path!r} {problem}")
    parts = tuple(path.split("/"))
    async with semaphore:
        parent = open_dir(target_fd, parts[:-1], create=True)
        try:
            fd = create_file(parent, parts[-1], FILE_MODE)
            try:
                with os.fdopen(fd, "w+b") as out:
                    await download(session, url, out, budget, limits, what=f"huggingface file {path}", headers=headers)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(parts[-1], dir_fd=parent)
                raise
        finally:
            os.close(parent)


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The error to report from a failed TaskGroup: a job-caused one if any, else the first."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for exc in leaves:
        if isinstance(exc, VolumeError | UnsafePathError):
            return exc
    return leaves[0]


async def fetch_huggingface(volume: HuggingfaceVolume, root_fd: int, session: aiohttp.ClientSession,
                            limits: VolumeLimits, shared: VolumeBudget | None = None) -> None:
    """Download the files of `volume.repo_id` matching `allow_patterns` into root/relative_path."""
    if volume.repo_type not in _REPO_KINDS:
        raise VolumeError(f"huggingface repo_type {volume.repo_type!r} is not one of model, dataset, space")
    if not _REPO_ID.fullmatch(volume.repo_id) or ".." in volume.repo_id:
        raise VolumeError(f"huggingface repo_id {volume.repo_id!r} is not of the form 'owner/name'")
    revision = volume.revision or DEFAULT_REVISION
    patterns = [volume.allow_patterns] if isinstance(volume.allow_patterns, str) else volume.allow_patterns
    token = volume.token or limits.hf_token
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    sha, paths = await _list_files(session, volume, revision, headers, limits)
    wanted = [p for p in paths if _allowed(p, patterns)]
    if len(wanted) > limits.hf_max_files:
        raise VolumeError(
            f"huggingface {volume.repo_id}: {len(wanted)} files, more than the limit of {limits.hf_max_files}")
    if shared is not None:
        try:
            shared.charge_entries(len(wanted))
        except VolumeBudgetExceeded as exc:
            raise VolumeError(f"huggingface {volume.repo_id}: {len(wanted)} files, and {exc}") from None

    _, prefix = _REPO_KINDS[volume.repo_type]
    base = f"{limits.hf_endpoint.rstrip('/')}/{prefix}{volume.repo_id}/resolve/{quote(sha, safe='')}"
    budget = ByteBudget(limits.hf_max_bytes, shared)
    semaphore = asyncio.Semaphore(limits.max_concurrent_downloads)
    target = open_dir(root_fd, split_relative_path(volume.relative_path, what="relative_path", allow_root=True),
                      create=True)
    try:
        async with asyncio.TaskGroup() as group:
            for path in wanted:
                url = f"{base}/{quote(path, safe='/')}"
                group.create_task(_fetch_file(session, url, path, target, budget, limits, headers, semaphore))
    except BaseExceptionGroup as group_error:
        raise _first_error(group_error) from None
    finally:
        os.close(target)
    log.info("event=volume_downloaded type=huggingface repo=%s sha=%s files=%d bytes=%d",
             volume.repo_id, sha, len(wanted), budget.used_bytes)
