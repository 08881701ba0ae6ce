"""Sending a job's `/output` where the validator asked (protocol.md §8.2, behaviour.md §2.4).

`upload_outputs` returns `upload_results`: key -> JSON string `{"headers": {...}, "body": "..."}`
of the upload response (keys `output.zip`, a single file's `relative_path`, or `system_output`).
Anything wrong with the target or the job's output is an UploadError (job failure
`upload_failed`); other exceptions are ours. A request has `request_timeout_s` in all, 3 attempts
with 1 s / 2 s back-off, and any status >= 400 counts as a failed attempt (as in the stock executor,
4xx included: presigned-URL stores answer 403 for clock skew that a retry may outlive). A target the
egress guard refuses (loopback, private, link-local, this host; executor_agent/net/egress.py) is an
UploadError at once, never retried.

Cancellation-safe: the session closes in `async with`, the zip is an unnamed O_TMPFILE file, and
the zipping thread is stopped and awaited before its descriptors close (see `blocking`).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

from executor_agent.fs.blocking import run_cancellable
from executor_agent.fs.safepath import UnsafePathError, open_regular_file, split_relative_path
from executor_agent.net.egress import PUBLIC_ONLY, EgressPolicy, EgressRefused
from executor_agent.net.egress_http import guarded_session
from executor_agent.outputs.outzip import OutputZipError, list_output_files, write_output_zip
from horde_protocol.uploads import (
    OUTPUT_UPLOAD_MAX_SIZE_BYTES,
    MultiUpload,
    OutputUpload,
    SingleFilePostUpload,
    SingleFilePutUpload,
    ZipAndHttpPostUpload,
    ZipAndHttpPutUpload,
)

log = logging.getLogger(__name__)

ZIP_RESULT_KEY = "output.zip"
SYSTEM_OUTPUT_RESULT_KEY = "system_output"
ZIP_FILENAME = "output.zip"
RESPONSE_CHUNK_BYTES = 64 * 1024
# headers we compute ourselves; a validator-sent value would corrupt the request framing
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection"})


class UploadError(Exception):
    """The upload failed because of the target or the job's output; the message says which."""


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = OUTPUT_UPLOAD_MAX_SIZE_BYTES  # 2 GiB per zip or single file
    max_zip_files: int = 1000  # files in one output zip (stock MAX_NUMBER_OF_FILES)
    request_timeout_s: float = 300.0  # one attempt, connect to last response byte (stock: 300 s)
    connect_timeout_s: float = 30.0
    attempts: int = 3
    retry_backoff_s: float = 1.0  # before try 2; doubled before try 3 (1 s, 2 s as in the stock executor)
    max_response_body_bytes: int = 10 * 1024 * 1024  # kept of each response body; the rest is dropped
    max_concurrent_uploads: int = 3  # files of one multi_upload in flight at once
    max_header_line_bytes: int = 8190  # response status line / header field
    max_header_count: int = 128
    temp_dir: Path | None = None  # where the zip is built; None = the parent of output_dir
    egress: EgressPolicy = PUBLIC_ONLY  # where uploads may connect; default: public addresses only


# ---- one HTTP request with retries -----------------------------------------------------------

# builds a fresh request body for each attempt: (data for aiohttp, extra headers, headers to skip)
BodyFactory = Callable[[contextlib.ExitStack], tuple[Any, dict[str, str], tuple[str, ...]]]


def _result_json(resp: aiohttp.ClientResponse, body: bytes) -> str:
    headers: dict[str, str] = {}
    for name, value in resp.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    charset = resp.charset or "utf-8"
    try:
        codecs.lookup(charset)
    except LookupError:
        charset = "utf-8"
    return json.dumps({"headers": headers, "body": body.decode(charset, errors="replace")})


async def _read_capped(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """At most `max_bytes` of the body, counted in bytes; the rest is not read."""
    body = bytearray()
    async for chunk in resp.content.iter_chunked(RESPONSE_CHUNK_BYTES):
        body += chunk[: max_bytes - len(body)]
        if len(body) >= max_bytes:
            break
    return bytes(body)


async def _send(session: aiohttp.ClientSession, method: str, url: str, make_body: BodyFactory,
                signed_headers: dict[str, str] | None, limits: UploadLimits, what: str) -> str:
    extra = {k: v for k, v in (signed_headers or {}).items() if k.lower() not in _FRAMING_HEADERS}
    last = "no attempt made"
    for attempt in range(1, limits.attempts + 1):
        try:
            with contextlib.ExitStack() as stack:
                data, headers, skip = make_body(stack)
                async with asyncio.timeout(limits.request_timeout_s):
                    async with session.request(method, url, data=data, headers={**headers, **extra},
                                               skip_auto_headers=skip, allow_redirects=False) as resp:
                        body = await _read_capped(resp, limits.max_response_body_bytes)
                        if resp.status < 400:
                            log.info("event=upload_done what=%s status=%d attempt=%d", what, resp.status, attempt)
                            return _result_json(resp, body)
                        last = f"HTTP {resp.status} {resp.reason or ''}".rstrip()
        except TimeoutError:
            last = f"no response within {limits.request_timeout_s:g} s"
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
            raise UploadError(f"{what}: not a usable http(s) URL ({exc})") from None
        except EgressRefused as exc:
            raise UploadError(f"{what}: {exc}") from None
        except aiohttp.ClientError as exc:
            last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if attempt < limits.attempts:
            delay = limits.retry_backoff_s * 2 ** (attempt - 1)
            log.info("event=upload_retry what=%s attempt=%d error=%r delay_s=%.2f", what, attempt, last, delay)
            await asyncio.sleep(delay)
    raise UploadError(f"{what}: failed after {limits.attempts} attempts: {last}")


def _file_body(open_file: Callable[[], BinaryIO], size: int, post: bool, filename: str, content_type: str,
               form_fields: dict[str, str] | None) -> BodyFactory:
    """A raw PUT body, or a multipart form with `file` as the last field (S3 POST policies demand
    it). aiohttp closes the file it sends, so each attempt opens its own."""

    def make(stack: contextlib.ExitStack) -> tuple[Any, dict[str, str], tuple[str, ...]]:
        fileobj = stack.enter_context(open_file())
        if not post:  # the signature of a presigned PUT may not cover a Content-Type we invent
            return fileobj, {"Content-Length": str(size)}, ("Content-Type",)
        form = aiohttp.FormData()
        for name, value in (form_fields or {}).items():
            form.add_field(name, value)
        form.add_field("file", fileobj, filename=filename, content_type=content_type)
        return form, {}, ()

    return make


# ---- what to send ----------------------------------------------------------------------------


@contextlib.contextmanager
def _open_root(output_dir: Path) -> Iterator[int]:
    try:
        fd = os.open(output_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise UploadError(f"output directory {output_dir} cannot be opened: {exc.strerror}") from None
    try:
        yield fd
    finally:
        os.close(fd)


async def _upload_single(session: aiohttp.ClientSession, upload: SingleFilePostUpload | SingleFilePutUpload,
                         root_fd: int, limits: UploadLimits) -> str:
    what = f"upload of {upload.relative_path!r}"
    try:
        parts = split_relative_path(upload.relative_path, what="relative_path")
        fd, st = open_regular_file(root_fd, parts)
    except UnsafePathError as exc:
        raise UploadError(f"{what}: {exc}") from None
    os.close(fd)
    if st.st_size > limits.max_bytes:
        raise UploadError(f"{what}: file has {st.st_size} bytes, limit is {limits.max_bytes} bytes")

    def open_file() -> BinaryIO:
        try:
            return os.fdopen(open_regular_file(root_fd, parts)[0], "rb")
        except UnsafePathError as exc:
            raise UploadError(f"{what}: {exc}") from None

    post = isinstance(upload, SingleFilePostUpload)
    form_fields = upload.form_fields if isinstance(upload, SingleFilePostUpload) else None
    body = _file_body(open_file, st.st_size, post, parts[-1], "application/octet-stream", form_fields)
    return await _send(session, "POST" if post else "PUT", upload.url, body, upload.signed_headers, limits, what)


async def _upload_zip(session: aiohttp.ClientSession, upload: ZipAndHttpPostUpload | ZipAndHttpPutUpload,
                      root_fd: int, exclude: frozenset[tuple[str, ...]], temp_dir: Path,
                      limits: UploadLimits, what: str) -> str:
    files = await asyncio.to_thread(list_output_files, root_fd, exclude)  # no writes, nothing to cancel
    if len(files) > limits.max_zip_files:
        raise UploadError(f"{what}: output has {len(files)} files, the limit is {limits.max_zip_files}; "
                          "pack them into fewer files")
    with tempfile.TemporaryFile(dir=temp_dir) as archive:  # O_TMPFILE: gone when closed
        try:
            size = await run_cancellable(
                lambda cancel: write_output_zip(root_fd, files, archive, limits.max_bytes, cancel))
        except OutputZipError as exc:
            raise UploadError(f"{what}: {exc}") from None
        log.info("event=output_zipped what=%s files=%d bytes=%d", what, len(files), size)

        def open_zip() -> BinaryIO:
            fd = os.dup(archive.fileno())  # own handle per attempt; aiohttp closes what it sent
            os.lseek(fd, 0, os.SEEK_SET)
            return os.fdopen(fd, "rb")

        post = isinstance(upload, ZipAndHttpPostUpload)
        form_fields = upload.form_fields if isinstance(upload, ZipAndHttpPostUpload) else None
        body = _file_body(open_zip, size, post, ZIP_FILENAME, "application/zip", form_fields)
        return await _send(session, "POST" if post else "PUT", upload.url, body, None, limits, what)


async def _upload_multi(session: aiohttp.ClientSession, upload: MultiUpload, root_fd: int, temp_dir: Path,
                        limits: UploadLimits) -> dict[str, str]:
    try:
        exclude = frozenset(split_relative_path(u.relative_path, what="relative_path") for u in upload.uploads)
    except UnsafePathError as exc:
        raise UploadError(str(exc)) from None
    semaphore = asyncio.Semaphore(limits.max_concurrent_uploads)
    results: dict[str, str] = {}

    async def one(key: str, send: Callable[[], Any]) -> None:
        async with semaphore:
            results[key] = await send()

    try:
        async with asyncio.TaskGroup() as group:
            for item in upload.uploads:
                group.create_task(
                    one(item.relative_path, lambda item=item: _upload_single(session, item, root_fd, limits)))
            if upload.system_output is not None:
                system = upload.system_output
                group.create_task(one(SYSTEM_OUTPUT_RESULT_KEY, lambda: _upload_zip(
                    session, system, root_fd, exclude, temp_dir, limits, "system_output upload")))
    except BaseExceptionGroup as group_error:
        errors = group_error.exceptions
        raise next((e for e in errors if isinstance(e, UploadError)), errors[0]) from None
    return results


def _open_session(limits: UploadLimits) -> aiohttp.ClientSession:
    return guarded_session(
        limits.egress,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=limits.connect_timeout_s),
        cookie_jar=aiohttp.DummyCookieJar(),
        max_line_size=limits.max_header_line_bytes,
        max_field_size=limits.max_header_line_bytes,
        max_headers=limits.max_header_count,
    )


async def upload_outputs(upload: OutputUpload, output_dir: Path, limits: UploadLimits) -> dict[str, str]:
    """Upload what `upload` asks for from `output_dir`; returns `upload_results`."""
    temp_dir = limits.temp_dir or output_dir.parent
    with _open_root(output_dir) as root_fd:
        async with _open_session(limits) as session:
            if isinstance(upload, ZipAndHttpPostUpload | ZipAndHttpPutUpload):
                result = await _upload_zip(session, upload, root_fd, frozenset(), temp_dir, limits, "output upload")
                return {ZIP_RESULT_KEY: result}
            if isinstance(upload, SingleFilePostUpload | SingleFilePutUpload):
                return {upload.relative_path: await _upload_single(session, upload, root_fd, limits)}
            if isinstance(upload, MultiUpload):
                return await _upload_multi(session, upload, root_fd, temp_dir, limits)
    raise UploadError(f"unsupported output_upload_type {getattr(upload, 'output_upload_type', None)!r}")


__all__ = ["UploadError", "UploadLimits", "upload_outputs"]
