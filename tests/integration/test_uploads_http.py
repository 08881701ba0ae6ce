"""Every output upload type against a real aiohttp server on 127.0.0.1: the server must see exactly
the method, fields, headers and bytes protocol.md §8.2 describes, and hostile output must not leak
host files."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from executor_agent.outputs.upload import UploadError, UploadLimits, upload_outputs
from horde_protocol.uploads import (
    MultiUpload,
    SingleFilePostUpload,
    SingleFilePutUpload,
    ZipAndHttpPostUpload,
    ZipAndHttpPutUpload,
)
from tests.fixtures.egress import LOOPBACK_EGRESS
from tests.fixtures.httpserver import (
    LocalHttpServer,
    RecordedRequest,
    hang,
    respond,
    sequence,
    start_server,
)

# the test server is on loopback, which uploads may not reach unless the allowlist says so
FAST = UploadLimits(retry_backoff_s=0.01, request_timeout_s=2.0, egress=LOOPBACK_EGRESS)
OK_HEADERS = {"ETag": '"abc"', "X-Amz-Request-Id": "req-1"}


def multipart_fields(req: RecordedRequest) -> list[tuple[str, str | None, bytes]]:
    """(name, filename, data) of each part, in order, parsed from the raw request body."""
    boundary = re.search(r'boundary="?([^";]+)"?', req.headers["Content-Type"]).group(1).encode()
    fields = []
    for part in req.body.split(b"--" + boundary)[1:-1]:
        head, _, data = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        disposition = head.decode()
        name = re.search(r'name="([^"]*)"', disposition).group(1)
        filename = re.search(r'filename="([^"]*)"', disposition)
        fields.append((name, filename.group(1) if filename else None, data.removesuffix(b"\r\n")))
    return fields


def zip_contents(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    out = tmp_path / "job" / "output"
    (out / "sub").mkdir(parents=True)
    (out / "stdout.txt").write_bytes(b"out")
    (out / "stderr.txt").write_bytes(b"err")
    (out / "sub" / "result.bin").write_bytes(bytes(range(256)) * 40)
    return out


def expected_files(output_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(output_dir)): p.read_bytes() for p in output_dir.rglob("*") if p.is_file()}


async def test_zip_and_http_post(http_server: LocalHttpServer, output_dir: Path) -> None:
    url = http_server.route("POST", "/bucket", respond(204, headers=OK_HEADERS))
    upload = ZipAndHttpPostUpload(url=url, form_fields={"key": "jobs/1/output.zip", "policy": "p0l1cy"})
    results = await upload_outputs(upload, output_dir, FAST)
    [req] = http_server.requests
    assert req.method == "POST" and req.headers["Content-Type"].startswith("multipart/form-data")
    assert int(req.headers["Content-Length"]) == len(req.body) and "Transfer-Encoding" not in req.headers
    fields = multipart_fields(req)
    assert [(n, f) for n, f, _ in fields] == [("key", None), ("policy", None), ("file", "output.zip")]
    assert fields[0][2] == b"jobs/1/output.zip"
    assert zip_contents(fields[2][2]) == expected_files(output_dir)
    result = json.loads(results["output.zip"])
    assert result["headers"]["etag"] == '"abc"' and result["headers"]["x-amz-request-id"] == "req-1"
    assert all(k == k.lower() for k in result["headers"]) and result["body"] == ""
    assert list(output_dir.parent.iterdir()) == [output_dir]  # no temp zip left behind


async def test_zip_and_http_put(http_server: LocalHttpServer, output_dir: Path) -> None:
    url = http_server.route("PUT", "/obj", respond(200, b"stored", OK_HEADERS))
    results = await upload_outputs(ZipAndHttpPutUpload(url=url + "?X-Amz-Signature=s"), output_dir, FAST)
    [req] = http_server.requests
    assert req.method == "PUT" and req.query == {"X-Amz-Signature": "s"}
    assert int(req.headers["Content-Length"]) == len(req.body)
    assert "Content-Type" not in req.headers  # a presigned PUT signature may not cover one
    assert zip_contents(req.body) == expected_files(output_dir)
    assert json.loads(results["output.zip"])["body"] == "stored"


async def test_single_file_post(http_server: LocalHttpServer, output_dir: Path) -> None:
    url = http_server.route("POST", "/up", respond(201, b'{"ok":true}', {"Content-Type": "application/json"}))
    upload = SingleFilePostUpload(url=url, relative_path="sub/result.bin", form_fields={"a": "1"},
                                  signed_headers={"X-Signed": "sig", "Content-Length": "1"})
    results = await upload_outputs(upload, output_dir, FAST)
    [req] = http_server.requests
    assert req.headers["X-Signed"] == "sig"
    assert [(n, f) for n, f, _ in multipart_fields(req)] == [("a", None), ("file", "result.bin")]
    assert multipart_fields(req)[1][2] == (output_dir / "sub" / "result.bin").read_bytes()
    result = json.loads(results["sub/result.bin"])
    assert result["body"] == '{"ok":true}' and result["headers"]["content-type"].startswith("application/json")


async def test_single_file_put(http_server: LocalHttpServer, output_dir: Path) -> None:
    url = http_server.route("PUT", "/up", respond(200))
    upload = SingleFilePutUpload(url=url, relative_path="stdout.txt",
                                 signed_headers={"Content-Type": "text/plain", "x-amz-meta-job": "j1"})
    results = await upload_outputs(upload, output_dir, FAST)
    [req] = http_server.requests
    assert req.method == "PUT" and req.body == b"out" and req.headers["Content-Length"] == "3"
    assert req.headers["Content-Type"] == "text/plain" and req.headers["x-amz-meta-job"] == "j1"
    assert set(results) == {"stdout.txt"}


async def test_multi_upload_with_system_output(http_server: LocalHttpServer, output_dir: Path) -> None:
    post_url = http_server.route("POST", "/f1", respond(200, b"one"))
    put_url = http_server.route("PUT", "/f2", respond(200, b"two"))
    sys_url = http_server.route("POST", "/sys", respond(200, b"sys"))
    upload = MultiUpload(
        uploads=[SingleFilePostUpload(url=post_url, relative_path="sub/result.bin"),
                 SingleFilePutUpload(url=put_url, relative_path="stdout.txt")],
        system_output=ZipAndHttpPostUpload(url=sys_url),
    )
    results = await upload_outputs(upload, output_dir, FAST)
    assert {k: json.loads(v)["body"] for k, v in results.items()} == {
        "sub/result.bin": "one", "stdout.txt": "two", "system_output": "sys"}
    [sys_req] = http_server.requests_to("/sys")
    assert zip_contents(multipart_fields(sys_req)[0][2]) == {"stderr.txt": b"err"}
    assert http_server.requests_to("/f2")[0].body == b"out"


async def test_multi_upload_runs_at_most_three_at_once(http_server: LocalHttpServer, output_dir: Path) -> None:
    in_flight = peak = 0

    async def slow(request: web.Request) -> web.StreamResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return web.Response()

    for i in range(6):
        (output_dir / f"f{i}").write_bytes(b"x")
    url = http_server.route("PUT", "/f", slow)
    upload = MultiUpload(uploads=[SingleFilePutUpload(url=url, relative_path=f"f{i}") for i in range(6)])
    results = await upload_outputs(upload, output_dir, FAST)
    assert len(results) == 6 and peak == 3


async def test_retry_after_two_400s(http_server: LocalHttpServer, output_dir: Path) -> None:
    url = http_server.route("POST", "/up", sequence(respond(400), respond(400), respond(200, b"ok")))
    results = await upload_outputs(ZipAndHttpPostUpload(url=url), output_dir, FAST)
    assert len(http_server.requests) == 3 and json.loads(results["output.zip"])["body"] == "ok"
    assert len({multipart_fields(r)[0][2] for r in http_server.requests}) == 1  # the whole zip each time


async def test_4xx_fails_after_three_attempts(http_server: LocalHttpServer, output_dir: Path) -> None:
    url = http_server.route("PUT", "/up", respond(403, b"SignatureDoesNotMatch"))
    with pytest.raises(UploadError, match="failed after 3 attempts: HTTP 403 Forbidden"):
        await upload_outputs(SingleFilePutUpload(url=url, relative_path="stdout.txt"), output_dir, FAST)
    assert len(http_server.requests) == 3


async def test_hanging_target_is_bounded(http_server: LocalHttpServer, output_dir: Path) -> None:
    url = http_server.route("PUT", "/up", hang())
    limits = replace(FAST, attempts=2, request_timeout_s=0.2)
    with pytest.raises(UploadError, match="failed after 2 attempts: no response within 0.2 s"):
        await upload_outputs(ZipAndHttpPutUpload(url=url), output_dir, limits)


async def test_symlinks_in_output_are_not_followed(http_server: LocalHttpServer, output_dir: Path,
                                                   tmp_path: Path) -> None:
    secret_dir = tmp_path / "host"
    secret_dir.mkdir()
    (secret_dir / "shadow").write_bytes(b"HOST SECRET")
    (output_dir / "leak").symlink_to(secret_dir / "shadow")
    (output_dir / "leakdir").symlink_to(secret_dir)
    url = http_server.route("PUT", "/up", respond(200))
    await upload_outputs(ZipAndHttpPutUpload(url=url), output_dir, FAST)
    assert b"HOST SECRET" not in http_server.requests[0].body
    assert set(zip_contents(http_server.requests[0].body)) == {"stdout.txt", "stderr.txt", "sub/result.bin"}
    for path, message in (("leak", "'leak' is a symlink"), ("leakdir/shadow", "'leakdir' is a symlink")):
        with pytest.raises(UploadError, match=message):
            await upload_outputs(SingleFilePutUpload(url=url, relative_path=path), output_dir, FAST)
    assert len(http_server.requests) == 1


async def test_fifo_in_output_is_skipped(http_server: LocalHttpServer, output_dir: Path) -> None:
    os.mkfifo(output_dir / "pipe")
    url = http_server.route("PUT", "/up", respond(200))
    await upload_outputs(ZipAndHttpPutUpload(url=url), output_dir, FAST)
    assert "pipe" not in zip_contents(http_server.requests[0].body)
    with pytest.raises(UploadError, match="not a regular file"):
        await upload_outputs(SingleFilePutUpload(url=url, relative_path="pipe"), output_dir, FAST)


@pytest.mark.parametrize("path", ["../output/stdout.txt", "/etc/passwd", "sub/./result.bin", "sub//result.bin",
                                  "sub\\result.bin", "a\0b", "", "missing.txt"])
async def test_bad_relative_path(http_server: LocalHttpServer, output_dir: Path, path: str) -> None:
    url = http_server.route("PUT", "/up", respond(200))
    with pytest.raises(UploadError, match="relative_path|does not exist"):
        await upload_outputs(MultiUpload(uploads=[SingleFilePutUpload(url=url, relative_path=path)]), output_dir, FAST)
    assert http_server.requests == []


async def test_too_many_files_for_zip(http_server: LocalHttpServer, output_dir: Path) -> None:
    url = http_server.route("PUT", "/up", respond(200))
    with pytest.raises(UploadError, match="output has 3 files, the limit is 2"):
        await upload_outputs(ZipAndHttpPutUpload(url=url), output_dir, replace(FAST, max_zip_files=2))
    assert http_server.requests == []


async def test_zip_and_file_size_caps(http_server: LocalHttpServer, output_dir: Path) -> None:
    (output_dir / "noise").write_bytes(os.urandom(20_000))
    url = http_server.route("PUT", "/up", respond(200))
    limits = replace(FAST, max_bytes=10_000)
    with pytest.raises(UploadError, match="output zip exceeds the limit of 10000 bytes"):
        await upload_outputs(ZipAndHttpPutUpload(url=url), output_dir, limits)
    with pytest.raises(UploadError, match="file has 20000 bytes, limit is 10000 bytes"):
        await upload_outputs(SingleFilePutUpload(url=url, relative_path="noise"), output_dir, limits)
    assert http_server.requests == []


async def test_response_body_is_capped(http_server: LocalHttpServer, output_dir: Path) -> None:
    url = http_server.route("PUT", "/up", respond(200, b"y" * 5000, {"Set-Cookie": "a=1"}))
    results = await upload_outputs(SingleFilePutUpload(url=url, relative_path="stdout.txt"), output_dir,
                                   replace(FAST, max_response_body_bytes=100))
    assert json.loads(results["stdout.txt"])["body"] == "y" * 100


async def test_cancellation_mid_upload_leaves_nothing(http_server: LocalHttpServer, output_dir: Path) -> None:
    url = http_server.route("POST", "/up", hang())
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(upload_outputs(ZipAndHttpPostUpload(url=url), output_dir, FAST), timeout=0.3)
    assert list(output_dir.parent.iterdir()) == [output_dir]


async def test_unreachable_target(output_dir: Path) -> None:
    async with start_server() as server:  # a loopback port we know is closed once it stops
        url = server.url("/up")
    with pytest.raises(UploadError, match="failed after 2 attempts: ClientConnectorError"):
        await upload_outputs(ZipAndHttpPutUpload(url=url), output_dir, replace(FAST, attempts=2))
