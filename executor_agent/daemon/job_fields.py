"""Checking the job's own fields before any of them reaches podman, the disk or the network.

Everything in a `V0InitialJobRequest` / `V0JobRequest` was written by whoever submitted the
job. Left unchecked, a bad field surfaces deep inside the engine (an env value with a NUL byte,
an `artifacts_dir` of `/volume`, an empty program name: podman refuses the container) and is
then reported as *our* failure, a `V0HordeFailedRequest`, which costs the miner score for the
job author's mistake. Or it is not refused at all and silently changes the job (podman 4.3
turns the env key `A=B` with value `x` into `A=B=x`, i.e. `A` = `B=x`).

So the lifecycle asks here first, and a problem becomes the job's failure
(`V0JobFailedRequest`) with a message naming the field. The functions are pure: they read
the models and return the first problem, or None.

Reasons follow the stock failure table (protocol.md §5.4): a volume field is
`download_failed` and an upload field `upload_failed`, as they would fail there in the stock
executor, only earlier; every other field is `unknown` (the stock executor has no reason for a
malformed request; `nonzero_return_code` or `timeout` would be untrue).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from horde_protocol.enums import JobFailureReason
from horde_protocol.messages import V0InitialJobRequest, V0JobRequest
from horde_protocol.paths import relative_path_problem
from horde_protocol.uploads import MultiUpload, SingleFilePostUpload, SingleFilePutUpload
from horde_protocol.volumes import HuggingfaceVolume, InlineVolume, MultiVolume, SingleFileVolume, ZipUrlVolume

INVALID_FIELD_MESSAGE = "Invalid job request: {field} {problem}"
# The stock texts of the two reasons begin so (protocol.md §5.4); ours go on to name the field.
MESSAGE_PREFIX = {JobFailureReason.DOWNLOAD_FAILED: "Download failed: ", JobFailureReason.UPLOAD_FAILED: "Upload failed: "}

# execve(2) refuses any single argv or envp string longer than this (the kernel's
# MAX_ARG_STRLEN, 32 pages): the container would fail to start, as our fault.
MAX_ARG_STRLEN_BYTES = 32 * 4096
# All of argv and envp together. execve allows a quarter of the stack rlimit (2 MiB at the
# usual 8 MiB); half of that leaves room for what podman and the image's ENV add.
MAX_EXEC_ARGS_BYTES = 1024 * 1024
# Env variables in one job. Far above any real job (the SDK passes a handful); bounds the work
# the checks, podman and the kernel do for one request.
MAX_ENV_VARS = 4096
# A raw script is source code mounted at /script.py, not a data channel (volumes are). 8 MiB
# is far above any script, and keeps one request from parking tens of MiB on disk outside the
# disk limit's sight.
MAX_RAW_SCRIPT_BYTES = 8 * 1024 * 1024
# Linux PATH_MAX: a longer mount target cannot exist in the container.
MAX_CONTAINER_PATH_BYTES = 4096
# Where artifacts_dir may not be mounted: our own mounts, and the kernel filesystems the
# runtime sets up (podman refuses to mount over them, which would again be reported as ours).
RESERVED_CONTAINER_PATHS = ("/volume", "/output", "/script.py", "/proc", "/sys", "/dev")
# Image references: the distribution/reference grammar that podman and docker parse with.
MAX_IMAGE_NAME_BYTES = 255  # the grammar's NameTotalLengthMax
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_REFERENCE = re.compile(rf"(?P<name>{_NAME})(?::{_TAG})?(?:@{_DIGEST})?", re.ASCII)
# HTTP header names are RFC 9110 tokens; values may not break the request framing.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", re.ASCII)
_HEADER_VALUE_FORBIDDEN = ("\r", "\n", "\0")
URL_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class FieldProblem:
    """One bad field: which (as a path into the request), what is wrong, and which failure
    reason it is reported with."""

    field: str
    problem: str
    reason: JobFailureReason = JobFailureReason.UNKNOWN

    @property
    def message(self) -> str:
        text = INVALID_FIELD_MESSAGE.format(field=self.field, problem=self.problem)
        return MESSAGE_PREFIX.get(self.reason, "") + text


def initial_problem(initial: V0InitialJobRequest) -> FieldProblem | None:
    """What is wrong with the initial request's job fields (checked in the startup stage,
    before its image is looked up); None when nothing is."""
    if initial.docker_image:
        return _first(_image_problems("docker_image", initial.docker_image))
    return None


def request_problem(request: V0JobRequest, initial: V0InitialJobRequest | None = None) -> FieldProblem | None:
    """What is wrong with the job request (checked when it arrives, before anything is
    downloaded); None when nothing is. `initial` supplies the volume when the request has none."""
    volume = request.volume if request.volume is not None else (initial.volume if initial is not None else None)
    return _first(_request_problems(request, volume))


def _first(problems: Iterator[FieldProblem]) -> FieldProblem | None:
    return next(problems, None)


def _request_problems(request: V0JobRequest, volume: Any) -> Iterator[FieldProblem]:
    yield from _image_problems("docker_image", request.docker_image)
    yield from _env_problems(request.env)
    yield from _command_problems(request.docker_run_cmd)
    exec_bytes = sum(len(_b(k)) + len(_b(v)) + 2 for k, v in _items(request.env))
    exec_bytes += sum(len(_b(a)) + 1 for a in request.docker_run_cmd or [] if isinstance(a, str))
    if exec_bytes > MAX_EXEC_ARGS_BYTES:
        yield FieldProblem("env and docker_run_cmd", f"take {exec_bytes} bytes together, more than the limit of "
                           f"{MAX_EXEC_ARGS_BYTES}; pass large data in a volume")
    if request.raw_script is not None:
        if not isinstance(request.raw_script, str):
            yield FieldProblem("raw_script", "is not a string")
        elif len(_b(request.raw_script)) > MAX_RAW_SCRIPT_BYTES:
            yield FieldProblem("raw_script", f"has {len(_b(request.raw_script))} bytes, more than the limit of "
                               f"{MAX_RAW_SCRIPT_BYTES}; pass large data in a volume")
    if request.artifacts_dir:
        yield from _artifacts_dir_problems(request.artifacts_dir)
    if volume is not None:
        yield from _volume_problems("volume", volume)
    if request.output_upload is not None:
        yield from _upload_problems("output_upload", request.output_upload)


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _items(env: Any) -> list[tuple[str, str]]:
    if not isinstance(env, dict):
        return []
    return [(k, v) for k, v in env.items() if isinstance(k, str) and isinstance(v, str)]


def _image_problems(field: str, image: Any) -> Iterator[FieldProblem]:
    if not isinstance(image, str) or not image:
        yield FieldProblem(field, "is empty; name an image like 'python:3.11-slim'")
        return
    match = IMAGE_REFERENCE.fullmatch(image)
    if match is None:
        yield FieldProblem(field, f"{image[:300]!r} is not a valid image reference (lowercase repository path, "
                           "optional registry host, ':tag' and '@sha256:digest')")
    elif len(match.group("name")) > MAX_IMAGE_NAME_BYTES:
        yield FieldProblem(field, f"has a repository name longer than {MAX_IMAGE_NAME_BYTES} characters")


def _env_problems(env: Any) -> Iterator[FieldProblem]:
    if not isinstance(env, dict):
        yield FieldProblem("env", "is not an object of strings")
        return
    if len(env) > MAX_ENV_VARS:
        yield FieldProblem("env", f"has {len(env)} variables, more than the limit of {MAX_ENV_VARS}")
    for key, value in env.items():
        if not isinstance(key, str):
            yield FieldProblem("env", f"key {key!r} is not a string")
            continue
        name = f"env key {key[:100]!r}"
        if not key:
            yield FieldProblem("env", "has an empty key")
        elif "=" in key:
            yield FieldProblem(name, "contains '='; a variable name cannot hold it")
        elif "\0" in key:
            yield FieldProblem(name, "contains a NUL byte")
        if not isinstance(value, str):
            yield FieldProblem(f"env[{key[:100]!r}]", "is not a string")
        elif "\0" in value:
            yield FieldProblem(f"env[{key[:100]!r}]", "contains a NUL byte")
        elif len(_b(key)) + 1 + len(_b(value)) >= MAX_ARG_STRLEN_BYTES:
            yield FieldProblem(f"env[{key[:100]!r}]", f"is longer than {MAX_ARG_STRLEN_BYTES - 1} bytes (with its "
                               "name), more than the kernel passes to a program; pass large data in a volume")


def _command_problems(command: Any) -> Iterator[FieldProblem]:
    if not isinstance(command, list):
        yield FieldProblem("docker_run_cmd", "is not a list of strings")
        return
    for index, arg in enumerate(command):
        field = f"docker_run_cmd[{index}]"
        if not isinstance(arg, str):
            yield FieldProblem(field, "is not a string")
        elif "\0" in arg:
            yield FieldProblem(field, "contains a NUL byte")
        elif index == 0 and not arg:
            yield FieldProblem(field, "is empty: the program to run must be named ([] runs the image's CMD)")
        elif len(_b(arg)) >= MAX_ARG_STRLEN_BYTES:
            yield FieldProblem(field, f"is longer than {MAX_ARG_STRLEN_BYTES - 1} bytes, more than the kernel "
                               "passes to a program; pass large data in a volume")


def _artifacts_dir_problems(path: Any) -> Iterator[FieldProblem]:
    field = "artifacts_dir"
    if not isinstance(path, str):
        yield FieldProblem(field, "is not a string")
        return
    shown = repr(path[:200])
    if "\0" in path:
        yield FieldProblem(field, f"{shown} contains a NUL byte")
    elif not path.startswith("/"):
        yield FieldProblem(field, f"{shown} is not an absolute path; use one like '/artifacts'")
    elif len(_b(path)) > MAX_CONTAINER_PATH_BYTES:
        yield FieldProblem(field, f"is longer than {MAX_CONTAINER_PATH_BYTES} bytes")
    elif any(part in (".", "..") for part in path.split("/")):
        yield FieldProblem(field, f"{shown} has a '.' or '..' component")
    else:
        normal = "/" + "/".join(part for part in path.split("/") if part)
        if normal == "/":
            yield FieldProblem(field, "is the container's root directory")
        for reserved in RESERVED_CONTAINER_PATHS:
            if normal == reserved or normal.startswith(reserved + "/"):
                yield FieldProblem(field, f"{shown} is {reserved} or inside it, where the container already has a "
                                   "mount; use a directory of its own like '/artifacts'")


def _relative_path_problems(field: str, path: Any, *, allow_root: bool,
                            reason: JobFailureReason) -> Iterator[FieldProblem]:
    if path is None or path == "":
        if not allow_root:
            yield FieldProblem(field, "is empty", reason)
        return
    if not isinstance(path, str):
        yield FieldProblem(field, "is not a string", reason)
        return
    problem = relative_path_problem(path)
    if problem is not None:
        yield FieldProblem(field, f"{path[:200]!r} {problem}; use a plain relative path like 'data/file.bin'", reason)


def _url_problems(field: str, url: Any, reason: JobFailureReason) -> Iterator[FieldProblem]:
    if not isinstance(url, str) or not url:
        yield FieldProblem(field, "is empty", reason)
        return
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:  # a bad IPv6 literal or port
        yield FieldProblem(field, f"is not a valid URL ({exc})", reason)
        return
    if parts.scheme.lower() not in URL_SCHEMES or not host:
        yield FieldProblem(field, "is not an http(s) URL with a host", reason)
    elif any(c in url for c in ("\r", "\n", "\0", " ")):
        yield FieldProblem(field, "contains whitespace or a NUL byte", reason)


def _volume_problems(field: str, volume: Any) -> Iterator[FieldProblem]:
    reason = JobFailureReason.DOWNLOAD_FAILED
    if isinstance(volume, MultiVolume):
        for index, sub in enumerate(volume.volumes):
            yield from _volume_problems(f"{field}.volumes[{index}]", sub)
    elif isinstance(volume, (InlineVolume, HuggingfaceVolume)):
        yield from _relative_path_problems(f"{field}.relative_path", volume.relative_path, allow_root=True,
                                           reason=reason)
    elif isinstance(volume, ZipUrlVolume):
        yield from _relative_path_problems(f"{field}.relative_path", volume.relative_path, allow_root=True,
                                           reason=reason)
        yield from _url_problems(f"{field}.contents", volume.contents, reason)
    elif isinstance(volume, SingleFileVolume):
        yield from _relative_path_problems(f"{field}.relative_path", volume.relative_path, allow_root=False,
                                           reason=reason)
        yield from _url_problems(f"{field}.url", volume.url, reason)


def _header_problems(field: str, headers: Any, reason: JobFailureReason) -> Iterator[FieldProblem]:
    if not headers:
        return
    if not isinstance(headers, dict):
        yield FieldProblem(field, "is not an object of strings", reason)
        return
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            yield FieldProblem(field, f"has an invalid header name {str(name)[:100]!r}", reason)
        elif not isinstance(value, str) or any(c in value for c in _HEADER_VALUE_FORBIDDEN):
            yield FieldProblem(f"{field}[{name!r}]", "contains a line break or NUL byte", reason)


def _form_field_problems(field: str, form: Any, reason: JobFailureReason) -> Iterator[FieldProblem]:
    if not form:
        return
    if not isinstance(form, dict):
        yield FieldProblem(field, "is not an object of strings", reason)
        return
    for name, value in form.items():
        if not isinstance(name, str) or not isinstance(value, str):
            yield FieldProblem(field, f"entry {str(name)[:100]!r} is not a string", reason)
        elif any(c in name for c in _HEADER_VALUE_FORBIDDEN):
            yield FieldProblem(field, f"name {name[:100]!r} contains a line break or NUL byte", reason)


def _upload_problems(field: str, upload: Any) -> Iterator[FieldProblem]:
    reason = JobFailureReason.UPLOAD_FAILED
    if isinstance(upload, MultiUpload):
        for index, sub in enumerate(upload.uploads):
            yield from _upload_problems(f"{field}.uploads[{index}]", sub)
        if upload.system_output is not None:
            yield from _upload_problems(f"{field}.system_output", upload.system_output)
        return
    yield from _url_problems(f"{field}.url", getattr(upload, "url", None), reason)
    if isinstance(upload, (SingleFilePostUpload, SingleFilePutUpload)):
        yield from _relative_path_problems(f"{field}.relative_path", upload.relative_path, allow_root=False,
                                           reason=reason)
        yield from _header_problems(f"{field}.signed_headers", upload.signed_headers, reason)
    yield from _form_field_problems(f"{field}.form_fields", getattr(upload, "form_fields", None), reason)


__all__ = ["FieldProblem", "initial_problem", "request_problem"]
