"""Streaming HTTP GET for volumes: redirects, `Range` resume, retries, and guards against hostile
servers (huge bodies, huge headers, silence, slow drip).

Every byte is counted as it arrives, because `Content-Length` is only a claim: it is used to fail
early, never to decide that a body is small. A failed attempt keeps what it wrote and the next one
asks for the rest with `Range` (plus `If-Range`, so a file that changed meanwhile is sent whole).
Every connection, redirects included, goes through the egress guard (executor_agent/net/egress.py):
a URL that points at loopback, a private network or this host is the job's fault, not retried.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import BinaryIO, TypeVar

import aiohttp
from yarl import URL

from executor_agent.inputs.volume_budget import VolumeBudget, VolumeBudgetExceeded
from executor_agent.inputs.volume_limits import VolumeError, VolumeLimits
from executor_agent.net.egress import EgressRefused
from executor_agent.net.egress_http import guarded_session

log = logging.getLogger(__name__)

DOWNLOAD_CHUNK_BYTES = 256 * 1024  # 256 KiB per read from the socket
RETRY_JITTER_FRACTION = 0.1  # up to +10 % on each back-off, as the stock executor does
_RETRYABLE_STATUS = frozenset({408, 425, 429})  # plus every 5xx
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

T = TypeVar("T")


class Retryable(Exception):
    """A failure worth another attempt (5xx, dropped connection, silence, slow drip)."""


def display_url(url: str) -> str:
    """The URL without credentials and query string: presigned URLs carry secrets and noise."""
    try:
        u = URL(url)
    except ValueError:
        return "<invalid URL>"
    if not u.host:
        return url[:100]
    return str(u.with_user(None).with_query(None).with_fragment(None))


class ByteBudget:
    """Bytes allowed to one volume, shared by the concurrent downloads that fill it, and charged
    to the job's whole-volume budget (`shared`) too."""

    def __init__(self, limit_bytes: int, shared: VolumeBudget | None = None) -> None:
        self.limit_bytes = limit_bytes
        self.used_bytes = 0
        self._shared = shared

    def check_declared(self, more_bytes: int, what: str) -> None:
        if self.used_bytes + more_bytes > self.limit_bytes:
            raise VolumeError(
                f"Input volume too large: {what} declares {more_bytes} bytes, limit is {self.limit_bytes} bytes"
            )
        if self._shared is not None:
            try:
                self._shared.check_declared(more_bytes)
            except VolumeBudgetExceeded as exc:
                raise VolumeError(f"Input volume too large: {what} declares {more_bytes} bytes and {exc}") from None

    def add(self, n: int, what: str) -> None:
        self.used_bytes += n
        if self.used_bytes > self.limit_bytes:
            raise VolumeError(f"Input volume too large: {what} sent more than {self.limit_bytes} bytes")
        if self._shared is not None:
            try:
                self._shared.charge_bytes(n)
            except VolumeBudgetExceeded as exc:
                raise VolumeError(f"Input volume too large: {what}: {exc}") from None

    def release(self, n: int) -> None:
        self.used_bytes -= n
        if self._shared is not None:
            self._shared.release_bytes(n)


class ThroughputGuard:
    """Fails a body that arrives slower than `min_bytes_per_s`, judged over whole windows.

    The socket read timeout catches a server that goes silent; this catches one that sends a byte
    just often enough to never be silent."""

    def __init__(self, min_bytes_per_s: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._min = min_bytes_per_s
        self._window_s = window_s
        self._clock = clock
        self._start = clock()
        self._bytes = 0

    def feed(self, n: int) -> None:
        self._bytes += n
        elapsed = self._clock() - self._start
        if elapsed < self._window_s:
            return
        rate = self._bytes / elapsed
        if rate < self._min:
            raise Retryable(f"transfer too slow: {rate:.0f} bytes/s, minimum is {self._min} bytes/s")
        self._start += elapsed
        self._bytes = 0


def open_session(limits: VolumeLimits) -> aiohttp.ClientSession:
    """A session with our timeouts and header caps; no cookies, no proxies from the environment,
    no transparent decompression (it would break byte counting and `Range` offsets), and no
    connection the egress policy `limits.egress` refuses."""
    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=limits.connect_timeout_s,
        sock_connect=limits.connect_timeout_s,
        sock_read=limits.read_timeout_s,
    )
    return guarded_session(
        limits.egress,
        timeout=timeout,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        max_line_size=limits.max_header_line_bytes,
        max_field_size=limits.max_header_line_bytes,
        max_headers=limits.max_header_count,
    )


def check_status(resp: aiohttp.ClientResponse, what: str) -> None:
    """>= 400 is a failure; only the statuses that may heal (5xx, 408, 425, 429) are retried."""
    if resp.status < 400:
        return
    message = f"{what}: HTTP {resp.status} {resp.reason or ''}".rstrip()
    if resp.status >= 500 or resp.status in _RETRYABLE_STATUS:
        raise Retryable(message)
    raise VolumeError(message)


async def with_retries(op: Callable[[], Awaitable[T]], limits: VolumeLimits, what: str) -> T:
    """Run `op` up to `limits.attempts` times; VolumeError stops at once, Retryable and transport
    errors back off (1 s, 2 s, ... + jitter). An egress refusal is final. Cancellation always propagates."""
    last = "no attempt made"
    for attempt in range(1, limits.attempts + 1):
        try:
            return await op()
        except VolumeError:
            raise
        except EgressRefused as exc:
            raise VolumeError(f"{what}: {exc}") from None
        except Retryable as exc:
            last = str(exc)
        except aiohttp.TooManyRedirects:
            raise VolumeError(f"{what}: more than {limits.max_redirects} redirects") from None
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
            raise VolumeError(f"{what}: not a usable http(s) URL ({exc})") from None
        except aiohttp.ClientResponseError as exc:  # aiohttp's own parse errors, e.g. oversized headers
            raise VolumeError(f"{what}: malformed or oversized response ({exc.message})") from None
        except TimeoutError:  # incl. aiohttp's socket read/connect timeouts
            last = "timed out"
        except aiohttp.ClientError as exc:
            last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if attempt < limits.attempts:
            delay = limits.retry_backoff_s * 2 ** (attempt - 1) * (1 + random.uniform(0, RETRY_JITTER_FRACTION))
            log.info("event=download_retry what=%s attempt=%d error=%r delay_s=%.2f", what, attempt, last, delay)
            await asyncio.sleep(delay)
    raise VolumeError(f"{what}: failed after {limits.attempts} attempts: {last}")


class _Progress:
    """What survives between attempts of one download: how far we got and which version."""

    def __init__(self) -> None:
        self.offset = 0
        self.validator: str | None = None  # strong ETag or Last-Modified, for If-Range


def _rewind(out: BinaryIO, progress: _Progress, budget: ByteBudget) -> None:
    out.seek(0)
    out.truncate()
    budget.release(progress.offset)
    progress.offset = 0


async def _attempt(session: aiohttp.ClientSession, url: str, out: BinaryIO, progress: _Progress,
                   budget: ByteBudget, limits: VolumeLimits, headers: Mapping[str, str], what: str) -> None:
    request_headers = {"Accept-Encoding": "identity", **headers}
    if progress.offset:
        request_headers["Range"] = f"bytes={progress.offset}-"
        if progress.validator:
            request_headers["If-Range"] = progress.validator
    async with asyncio.timeout(limits.response_headers_timeout_s):
        resp = await session.get(url, headers=request_headers, max_redirects=limits.max_redirects)
    async with resp:
        if resp.status == 416 and progress.offset:
            _rewind(out, progress, budget)
            raise Retryable(f"{what}: server refused to resume, starting over")
        check_status(resp, what)
        if resp.status == 206:
            match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != progress.offset:
                _rewind(out, progress, budget)
                raise Retryable(f"{what}: server resumed at the wrong offset, starting over")
        elif resp.status == 200:
            if progress.offset:  # Range ignored or file changed: the full body follows
                _rewind(out, progress, budget)
        else:
            raise VolumeError(f"{what}: unexpected HTTP {resp.status}")
        etag = resp.headers.get("ETag")
        progress.validator = etag if etag and not etag.startswith("W/") else resp.headers.get("Last-Modified")
        if resp.content_length is not None:
            budget.check_declared(resp.content_length, what)
        guard = ThroughputGuard(limits.min_throughput_bytes_per_s, limits.throughput_window_s)
        async for chunk in resp.content.iter_chunked(DOWNLOAD_CHUNK_BYTES):
            budget.add(len(chunk), what)
            out.write(chunk)  # local disk, page cache: cheap enough to do on the loop
            progress.offset += len(chunk)
            guard.feed(len(chunk))


async def download(session: aiohttp.ClientSession, url: str, out: BinaryIO, budget: ByteBudget,
                   limits: VolumeLimits, *, what: str, headers: Mapping[str, str] | None = None) -> int:
    """GET `url` into the empty, seekable `out`; returns the number of bytes written."""
    try:
        scheme = URL(url).scheme
    except ValueError:
        scheme = ""
    if scheme not in ("http", "https"):
        raise VolumeError(f"{what}: only http and https URLs are supported")
    progress = _Progress()
    await with_retries(
        lambda: _attempt(session, url, out, progress, budget, limits, headers or {}, what), limits, what
    )
    out.flush()
    return progress.offset


async def read_limited(resp: aiohttp.ClientResponse, max_bytes: int, what: str) -> bytes:
    """The whole body, counted while reading; more than `max_bytes` is an error."""
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise VolumeError(f"{what}: response of {resp.content_length} bytes exceeds {max_bytes} bytes")
    body = bytearray()
    async for chunk in resp.content.iter_chunked(DOWNLOAD_CHUNK_BYTES):
        body += chunk
        if len(body) > max_bytes:
            raise VolumeError(f"{what}: response exceeds {max_bytes} bytes")
    return bytes(body)
