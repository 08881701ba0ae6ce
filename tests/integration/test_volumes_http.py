"""zip_url, single_file and multi_volume against a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from executor_agent.inputs.volume_fetch import VolumeError, VolumeLimits, fetch_volume
from horde_protocol.volumes import MultiVolume, SingleFileVolume, ZipUrlVolume
from tests.fixtures.egress import LOOPBACK_EGRESS
from tests.fixtures.httpserver import (
    LocalHttpServer,
    drip,
    drop_after,
    hang,
    redirect,
    respond,
    sequence,
    serve_bytes,
)
from tests.unit.test_volumes_inline import inline, make_zip

# the test server is on loopback, which job URLs may not reach unless the allowlist says so
FAST = VolumeLimits(retry_backoff_s=0.01, read_timeout_s=2.0, response_headers_timeout_s=2.0, egress=LOOPBACK_EGRESS)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "job" / "volume"


async def test_zip_url_downloads_and_extracts(http_server: LocalHttpServer, dest: Path) -> None:
    url = http_server.route("GET", "/v.zip", serve_bytes(make_zip([("data/a.txt", b"A"), ("b.txt", b"B")])))
    await fetch_volume(ZipUrlVolume(contents=url + "?X-Amz-Signature=secret", relative_path="in"), dest, FAST)
    assert (dest / "in" / "data" / "a.txt").read_bytes() == b"A"
    assert (dest / "in" / "b.txt").read_bytes() == b"B"
    [req] = http_server.requests
    assert req.method == "GET" and req.query == {"X-Amz-Signature": "secret"}
    assert req.headers["Accept-Encoding"] == "identity" and "Range" not in req.headers
    assert list(dest.parent.iterdir()) == [dest]  # the archive left no temp file in the job dir


async def test_zip_url_without_content_length(http_server: LocalHttpServer, dest: Path) -> None:
    url = http_server.route("GET", "/v.zip", serve_bytes(make_zip([("a", b"1")]), content_length=False))
    await fetch_volume(ZipUrlVolume(contents=url), dest, FAST)
    assert (dest / "a").read_bytes() == b"1"


async def test_zip_url_follows_redirects(http_server: LocalHttpServer, dest: Path) -> None:
    http_server.route("GET", "/real.zip", serve_bytes(make_zip([("a", b"1")])))
    http_server.route("GET", "/hop", redirect("/real.zip", 301))
    url = http_server.route("GET", "/start", redirect(http_server.url("/hop"), 307))
    await fetch_volume(ZipUrlVolume(contents=url), dest, FAST)
    assert (dest / "a").read_bytes() == b"1"
    assert [r.path for r in http_server.requests] == ["/start", "/hop", "/real.zip"]


async def test_too_many_redirects(http_server: LocalHttpServer, dest: Path) -> None:
    url = http_server.route("GET", "/loop", redirect("/loop"))
    with pytest.raises(VolumeError, match="more than 3 redirects"):
        await fetch_volume(ZipUrlVolume(contents=url), dest, replace(FAST, max_redirects=3))


async def test_retry_after_500(http_server: LocalHttpServer, dest: Path) -> None:
    data = make_zip([("a", b"1")])
    url = http_server.route("GET", "/v.zip", sequence(respond(500), respond(503), serve_bytes(data)))
    await fetch_volume(ZipUrlVolume(contents=url), dest, FAST)
    assert (dest / "a").read_bytes() == b"1"
    assert len(http_server.requests) == 3


async def test_gives_up_after_three_attempts(http_server: LocalHttpServer, dest: Path) -> None:
    url = http_server.route("GET", "/v.zip", respond(502))
    with pytest.raises(VolumeError, match="failed after 3 attempts: .*HTTP 502"):
        await fetch_volume(ZipUrlVolume(contents=url), dest, FAST)
    assert len(http_server.requests) == 3


async def test_client_error_not_retried(http_server: LocalHttpServer, dest: Path) -> None:
    url = http_server.route("GET", "/v.zip", respond(404))
    with pytest.raises(VolumeError, match="HTTP 404"):
        await fetch_volume(ZipUrlVolume(contents=url), dest, FAST)
    assert len(http_server.requests) == 1


async def test_resume_with_range_after_dropped_connection(http_server: LocalHttpServer, dest: Path) -> None:
    payload = os.urandom(300_000)
    data = make_zip([("blob", payload)], compression=0)
    url = http_server.route("GET", "/v.zip", sequence(drop_after(data, 100_000), serve_bytes(data)))
    await fetch_volume(ZipUrlVolume(contents=url), dest, FAST)
    assert (dest / "blob").read_bytes() == payload
    first, second = http_server.requests
    assert "Range" not in first.headers
    offset = int(second.headers["Range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < offset <= 100_000
    assert second.headers["If-Range"] == '"v1"'


async def test_server_ignoring_range_restarts_from_zero(http_server: LocalHttpServer, dest: Path) -> None:
    data = make_zip([("blob", os.urandom(200_000))], compression=0)
    url = http_server.route("GET", "/v.zip", sequence(drop_after(data, 50_000), serve_bytes(data, ranges=False)))
    await fetch_volume(ZipUrlVolume(contents=url), dest, FAST)
    assert (dest / "blob").stat().st_size == 200_000


async def test_oversized_content_length_fails_early(http_server: LocalHttpServer, dest: Path) -> None:
    url = http_server.route("GET", "/v.zip", serve_bytes(b"\0" * 5000))
    with pytest.raises(VolumeError, match="Input volume too large: .* declares 5000 bytes, limit is 4096"):
        await fetch_volume(ZipUrlVolume(contents=url), dest, replace(FAST, max_bytes=4096))
    assert len(http_server.requests) == 1  # not retried


async def test_oversized_body_without_content_length(http_server: LocalHttpServer, dest: Path) -> None:
    url = http_server.route("GET", "/f", serve_bytes(b"\0" * 5000, content_length=False))
    with pytest.raises(VolumeError, match="Input volume too large: .* sent more than 4096 bytes"):
        await fetch_volume(SingleFileVolume(url=url, relative_path="f.bin"), dest, replace(FAST, max_bytes=4096))
    assert not (dest / "f.bin").exists()  # the partial file is removed


async def test_slow_drip_server_trips_throughput_guard(http_server: LocalHttpServer, dest: Path) -> None:
    url = http_server.route("GET", "/f", drip(b"x" * 10, every_s=0.05, total_chunks=100))
    limits = replace(FAST, attempts=1, min_throughput_bytes_per_s=10_000, throughput_window_s=0.3)
    with pytest.raises(VolumeError, match="transfer too slow"):
        await fetch_volume(SingleFileVolume(url=url, relative_path="f.bin"), dest, limits)


async def test_silent_server_times_out(http_server: LocalHttpServer, dest: Path) -> None:
    url = http_server.route("GET", "/f", hang())
    limits = replace(FAST, attempts=2, response_headers_timeout_s=0.2)
    with pytest.raises(VolumeError, match="failed after 2 attempts: timed out"):
        await fetch_volume(SingleFileVolume(url=url, relative_path="f.bin"), dest, limits)


async def test_oversized_response_header(http_server: LocalHttpServer, dest: Path) -> None:
    url = http_server.route("GET", "/f", respond(200, b"x", headers={"X-Big": "a" * 20_000}))
    with pytest.raises(VolumeError, match="malformed or oversized response"):
        await fetch_volume(SingleFileVolume(url=url, relative_path="f.bin"), dest, FAST)


async def test_non_http_url_rejected(dest: Path) -> None:
    for url in ("file:///etc/passwd", "ftp://127.0.0.1/x", "not a url"):
        with pytest.raises(VolumeError, match="only http and https"):
            await fetch_volume(SingleFileVolume(url=url, relative_path="f"), dest, FAST)


async def test_single_file_into_nested_path(http_server: LocalHttpServer, dest: Path) -> None:
    payload = os.urandom(70_000)
    url = http_server.route("GET", "/model.bin", serve_bytes(payload))
    await fetch_volume(SingleFileVolume(url=url, relative_path="models/v1/model.bin"), dest, FAST)
    assert (dest / "models" / "v1" / "model.bin").read_bytes() == payload


async def test_single_file_relative_path_escape_sends_nothing(http_server: LocalHttpServer, dest: Path) -> None:
    url = http_server.route("GET", "/f", serve_bytes(b"x"))
    for bad in ("../escape", "/etc/cron.d/x", ".", ""):
        with pytest.raises(VolumeError, match="relative_path"):
            await fetch_volume(SingleFileVolume(url=url, relative_path=bad), dest, FAST)
    assert http_server.requests == []


async def test_multi_volume_in_order(http_server: LocalHttpServer, dest: Path) -> None:
    zip_url = http_server.route("GET", "/z.zip", serve_bytes(make_zip([("x.txt", b"from zip"), ("z", b"z")])))
    file_url = http_server.route("GET", "/x.txt", serve_bytes(b"from single"))
    volume = MultiVolume(volumes=[
        inline(make_zip([("x.txt", b"from inline"), ("i", b"i")])),
        ZipUrlVolume(contents=zip_url),
        SingleFileVolume(url=file_url, relative_path="x.txt"),
    ])
    await fetch_volume(volume, dest, FAST)
    assert (dest / "x.txt").read_bytes() == b"from single"
    assert (dest / "i").read_bytes() == b"i" and (dest / "z").read_bytes() == b"z"
    assert [r.path for r in http_server.requests] == ["/z.zip", "/x.txt"]


async def test_cancellation_leaves_no_temp_file(http_server: LocalHttpServer, dest: Path) -> None:
    url = http_server.route("GET", "/v.zip", drip(b"x" * 1000, every_s=0.05, total_chunks=100))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(fetch_volume(ZipUrlVolume(contents=url), dest, FAST), timeout=0.3)
    assert list(dest.parent.iterdir()) == [dest] and list(dest.iterdir()) == []


async def test_cancellation_removes_partial_single_file(http_server: LocalHttpServer, dest: Path) -> None:
    url = http_server.route("GET", "/f", drip(b"x" * 1000, every_s=0.05, total_chunks=100))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(fetch_volume(SingleFileVolume(url=url, relative_path="f"), dest, FAST), timeout=0.3)
    assert list(dest.iterdir()) == []


async def test_hostile_zip_from_url(http_server: LocalHttpServer, dest: Path) -> None:
    import zipfile

    url = http_server.route("GET", "/v.zip", serve_bytes(make_zip([(zipfile.ZipInfo("../../evil"), b"x")])))
    with pytest.raises(VolumeError, match=r"zip_url http://127\.0\.0\.1:\d+/v\.zip: entry"):
        await fetch_volume(ZipUrlVolume(contents=url), dest, FAST)
    assert not any(dest.parent.parent.rglob("evil"))


async def test_custom_handler_sees_no_cookies(http_server: LocalHttpServer, dest: Path) -> None:
    async def set_cookie(request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": "/f", "Set-Cookie": "s=1; Path=/"})

    http_server.route("GET", "/f", serve_bytes(b"ok"))
    url = http_server.route("GET", "/c", set_cookie)
    await fetch_volume(SingleFileVolume(url=url, relative_path="f"), dest, FAST)
    assert "Cookie" not in http_server.requests[1].headers


async def test_downloads_share_the_job_budget_and_a_zip_url_archive_is_given_back(
        http_server: LocalHttpServer, dest: Path) -> None:
    """Peak disk: the archive of a zip_url counts while it is extracted, and no longer after."""
    import zipfile

    archive = make_zip([("a.bin", os.urandom(1000))], compression=zipfile.ZIP_STORED)
    single = os.urandom(3000)
    volume = MultiVolume(volumes=[
        ZipUrlVolume(contents=http_server.route("GET", "/v.zip", serve_bytes(archive)), relative_path="z"),
        SingleFileVolume(url=http_server.route("GET", "/f", serve_bytes(single)), relative_path="f.bin"),
    ])
    # archive + its 1000 bytes while extracting; then 1000 + 3000: fits only if the archive is released
    fits = max(len(archive) + 1000, 1000 + len(single))
    assert fits < len(archive) + 1000 + len(single)
    await fetch_volume(volume, dest, replace(FAST, max_volume_bytes=fits))
    assert (dest / "f.bin").read_bytes() == single and (dest / "z" / "a.bin").stat().st_size == 1000
    with pytest.raises(VolumeError, match=r"^Input volume too large: single_file http://127\.0\.0\.1:\d+/f declares "
                                          rf"3000 bytes and all volumes of this job together exceed the limit of "
                                          rf"{fits - 1} bytes$"):
        await fetch_volume(volume, dest.parent / "again", replace(FAST, max_volume_bytes=fits - 1))
    # no Content-Length to fail early on: the bytes themselves are counted as they arrive
    volume.volumes[1] = SingleFileVolume(url=http_server.route("GET", "/g", serve_bytes(single, content_length=False)),
                                         relative_path="f.bin")
    with pytest.raises(VolumeError, match=r"^Input volume too large: single_file http://127\.0\.0\.1:\d+/g: all "
                                          rf"volumes of this job together exceed the limit of {fits - 1} bytes$"):
        await fetch_volume(volume, dest.parent / "third", replace(FAST, max_volume_bytes=fits - 1))
    assert not (dest.parent / "third" / "f.bin").exists()
