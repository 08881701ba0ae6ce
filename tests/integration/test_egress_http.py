"""The egress guard against real servers on 127.0.0.1: loopback is refused by default, after DNS and
on every redirect hop, for downloads, Hugging Face and uploads alike; the allowlist opens exactly
what it names. Only loopback is ever contacted."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path

import pytest
from yarl import URL

from executor_agent.inputs.volume_fetch import VolumeError, VolumeLimits, fetch_volume
from executor_agent.net.egress import EgressPolicy
from executor_agent.outputs.upload import UploadError, UploadLimits, upload_outputs
from horde_protocol.uploads import (
    MultiUpload,
    SingleFilePostUpload,
    SingleFilePutUpload,
    ZipAndHttpPostUpload,
    ZipAndHttpPutUpload,
)
from horde_protocol.volumes import HuggingfaceVolume, MultiVolume, SingleFileVolume, ZipUrlVolume
from tests.fixtures.httpserver import LocalHttpServer, redirect, respond, serve_bytes
from tests.integration.test_volumes_huggingface import SHA, listing
from tests.unit.test_volumes_inline import inline, make_zip

# No allowlist: what every job gets by default. A long back-off would show if a refusal were retried.
DEFAULT = VolumeLimits(retry_backoff_s=5.0, read_timeout_s=2.0, response_headers_timeout_s=2.0)
UPLOAD_DEFAULT = UploadLimits(retry_backoff_s=5.0, request_timeout_s=2.0)
METRICS = b"# HELP miner_secret 1\nminer_secret 42\n"


def port(server: LocalHttpServer) -> int:
    port = URL(server.base_url).port
    assert port is not None
    return port


def only(server: LocalHttpServer) -> EgressPolicy:
    """An allowlist naming this one server (address and port), like a local file mirror."""
    return EgressPolicy.from_entries([f"127.0.0.1:{port(server)}"])


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "job" / "volume"


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    out = tmp_path / "job" / "output"
    out.mkdir(parents=True)
    (out / "result.txt").write_bytes(b"result")
    return out


async def test_loopback_volume_refused_by_default_allowed_by_the_allowlist(http_server: LocalHttpServer,
                                                                           dest: Path) -> None:
    url = http_server.route("GET", "/metrics", serve_bytes(METRICS))
    started = time.monotonic()
    for volume in (SingleFileVolume(url=url, relative_path="m"), ZipUrlVolume(contents=url)):
        with pytest.raises(VolumeError, match=rf"{re.escape(url)}: refused to connect to 127\.0\.0\.1:{port(http_server)}"
                                              r": a loopback address"):
            await fetch_volume(volume, dest, DEFAULT)
    assert time.monotonic() - started < 2, "a refusal must not be retried"
    assert http_server.requests == []
    assert not (dest / "m").exists()

    await fetch_volume(SingleFileVolume(url=url, relative_path="m"), dest, replace(DEFAULT, egress=only(http_server)))
    assert (dest / "m").read_bytes() == METRICS


@pytest.mark.parametrize("spelling", ["127.0.0.1", "localhost", "0x7f000001", "127.1", "[::ffff:127.0.0.1]"])
async def test_redirect_from_an_allowed_server_to_another_loopback_port_is_refused(
        http_server: LocalHttpServer, other_http_server: LocalHttpServer, dest: Path, spelling: str) -> None:
    other_http_server.route("GET", "/metrics", serve_bytes(METRICS))
    target = f"http://{spelling}:{port(other_http_server)}/metrics"
    start = http_server.route("GET", "/start", redirect(target))
    limits = replace(DEFAULT, egress=only(http_server))
    with pytest.raises(VolumeError, match=rf"refused to connect to (127\.0\.0\.1|\[::1\]|\[::ffff:7f00:1\])"
                                          rf":{port(other_http_server)}: a loopback address"):
        await fetch_volume(SingleFileVolume(url=start, relative_path="m"), dest, limits)
    assert [r.path for r in http_server.requests] == ["/start"]
    assert other_http_server.requests == []
    assert not (dest / "m").exists()


async def test_redirects_within_the_allowlist_are_followed(http_server: LocalHttpServer,
                                                           other_http_server: LocalHttpServer, dest: Path) -> None:
    data = other_http_server.route("GET", "/v.zip", serve_bytes(make_zip([("a.txt", b"A")])))
    start = http_server.route("GET", "/start", redirect(data.replace("127.0.0.1", "localhost")))
    limits = replace(DEFAULT, egress=EgressPolicy.from_entries([f"127.0.0.1:{port(http_server)}",
                                                                 f"localhost:{port(other_http_server)}"]))
    await fetch_volume(ZipUrlVolume(contents=start), dest, limits)
    assert (dest / "a.txt").read_bytes() == b"A"


async def test_host_name_that_resolves_to_loopback_is_refused(http_server: LocalHttpServer, dest: Path) -> None:
    http_server.route("GET", "/f", serve_bytes(b"x"))
    url = f"http://localhost:{port(http_server)}/f"
    with pytest.raises(VolumeError, match=rf"refused to connect to (127\.0\.0\.1|\[::1\]):{port(http_server)}: "
                                          r"a loopback address \(URL host 'localhost'\)"):
        await fetch_volume(SingleFileVolume(url=url, relative_path="f"), dest, DEFAULT)
    assert http_server.requests == []
    # an address entry for the one it resolves to, or a host-name entry, opens it
    await fetch_volume(SingleFileVolume(url=url, relative_path="f"), dest,
                       replace(DEFAULT, egress=EgressPolicy.from_entries(["127.0.0.0/8", "::1"])))
    await fetch_volume(SingleFileVolume(url=url, relative_path="g"), dest,
                       replace(DEFAULT, egress=EgressPolicy.from_entries([f"localhost:{port(http_server)}"])))
    assert (dest / "f").read_bytes() == (dest / "g").read_bytes() == b"x"


async def test_refusal_inside_a_multi_volume_fails_the_whole_volume(http_server: LocalHttpServer,
                                                                     dest: Path) -> None:
    url = http_server.route("GET", "/metrics", serve_bytes(METRICS))
    volume = MultiVolume(volumes=[inline(make_zip([("ok.txt", b"fine")])), SingleFileVolume(url=url, relative_path="m")])
    with pytest.raises(VolumeError, match="refused to connect to 127.0.0.1"):
        await fetch_volume(volume, dest, DEFAULT)
    assert http_server.requests == []


async def test_huggingface_redirect_to_a_cdn_outside_the_allowlist_is_refused(
        http_server: LocalHttpServer, other_http_server: LocalHttpServer, tmp_path: Path) -> None:
    async def api(request: object) -> object:
        return listing({"w.bin": b""})

    http_server.route("GET", "/api/models/org/repo/revision/main", api)
    cdn = other_http_server.route("GET", "/blob", serve_bytes(METRICS))
    http_server.route("GET", f"/org/repo/resolve/{SHA}/w.bin", redirect(cdn))
    limits = replace(DEFAULT, hf_endpoint=http_server.base_url, egress=only(http_server))
    with pytest.raises(VolumeError, match=rf"huggingface file w\.bin: refused to connect to 127\.0\.0\.1:"
                                          rf"{port(other_http_server)}"):
        await fetch_volume(HuggingfaceVolume(repo_id="org/repo"), tmp_path / "v", limits)
    assert other_http_server.requests == []
    with pytest.raises(VolumeError, match=rf"huggingface org/repo listing: refused to connect to 127\.0\.0\.1:"
                                          rf"{port(http_server)}"):
        await fetch_volume(HuggingfaceVolume(repo_id="org/repo"), tmp_path / "w", replace(limits, egress=DEFAULT.egress))


async def test_every_upload_type_to_loopback_is_refused_by_default(http_server: LocalHttpServer,
                                                                   output_dir: Path) -> None:
    url = http_server.route("PUT", "/up", respond(200, b"stored"))
    post = http_server.route("POST", "/up", respond(204))
    presigned = url + "?X-Amz-Signature=secret&X-Amz-Expires=600"
    uploads = [
        SingleFilePutUpload(url=presigned, relative_path="result.txt", signed_headers={"x-amz-acl": "private"}),
        SingleFilePostUpload(url=post, relative_path="result.txt", form_fields={"key": "k"}),
        ZipAndHttpPutUpload(url=presigned),
        ZipAndHttpPostUpload(url=post, form_fields={"policy": "p"}),
        MultiUpload(uploads=[SingleFilePutUpload(url=presigned, relative_path="result.txt")],
                    system_output=ZipAndHttpPostUpload(url=post)),
    ]
    started = time.monotonic()
    for upload in uploads:
        with pytest.raises(UploadError, match=rf"refused to connect to 127\.0\.0\.1:{port(http_server)}: "
                                              r"a loopback address"):
            await upload_outputs(upload, output_dir, UPLOAD_DEFAULT)
    assert time.monotonic() - started < 2, "a refusal must not be retried"
    assert http_server.requests == []

    allowed = replace(UPLOAD_DEFAULT, egress=only(http_server))
    results = await upload_outputs(uploads[0], output_dir, allowed)
    assert '"stored"' in results["result.txt"]
    assert [r.body for r in http_server.requests] == [b"result"]
