"""huggingface_volume against a local server that mimics the two Hub endpoints we use."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from executor_agent.inputs.volume_fetch import VolumeError, VolumeLimits, fetch_volume
from horde_protocol.volumes import HuggingfaceVolume, MultiVolume
from tests.fixtures.egress import LOOPBACK_EGRESS
from tests.fixtures.httpserver import (
    LocalHttpServer,
    redirect,
    respond,
    sequence,
    serve_bytes,
)
from tests.unit.test_volumes_inline import inline, make_zip

SHA = "0123456789abcdef0123456789abcdef01234567"
FILES = {"config.json": b"{}", "weights/model.safetensors": b"W" * 5000, "README.md": b"# hi", "sub/x.json": b"[]"}


def listing(files: dict[str, bytes], sha: str = SHA) -> web.Response:
    return web.json_response({"id": "org/repo", "sha": sha, "siblings": [{"rfilename": f} for f in files]})


def mock_hub(server: LocalHttpServer, *, kind: str = "models", prefix: str = "", revision: str = "main",
             files: dict[str, bytes] = FILES) -> VolumeLimits:
    """Routes of a fake Hub on `server` and limits pointing at it (on loopback: allowlisted explicitly)."""

    async def api(request: web.Request) -> web.StreamResponse:
        return listing(files)

    server.route("GET", f"/api/{kind}/org/repo/revision/{revision}", api)
    for name, data in files.items():
        server.route("GET", f"/{prefix}org/repo/resolve/{SHA}/{name}", serve_bytes(data))
    return VolumeLimits(hf_endpoint=server.base_url, retry_backoff_s=0.01, egress=LOOPBACK_EGRESS)


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


async def test_model_snapshot_with_token(http_server: LocalHttpServer, tmp_path: Path) -> None:
    limits = mock_hub(http_server)
    volume = HuggingfaceVolume(repo_id="org/repo", relative_path="hf", token="hf_secret")
    await fetch_volume(volume, tmp_path / "volume", limits)
    assert files_under(tmp_path / "volume" / "hf") == FILES
    assert len(http_server.requests) == 1 + len(FILES)
    assert all(r.headers["Authorization"] == "Bearer hf_secret" for r in http_server.requests)
    assert http_server.requests[0].path == "/api/models/org/repo/revision/main"


async def test_allow_patterns_and_executor_token_fallback(http_server: LocalHttpServer, tmp_path: Path) -> None:
    limits = replace(mock_hub(http_server), hf_token="hf_executor")
    volume = HuggingfaceVolume(repo_id="org/repo", allow_patterns=["*.json", "weights/"])
    await fetch_volume(volume, tmp_path / "volume", limits)
    assert sorted(files_under(tmp_path / "volume")) == ["config.json", "sub/x.json", "weights/model.safetensors"]
    assert {r.headers["Authorization"] for r in http_server.requests} == {"Bearer hf_executor"}


async def test_single_string_pattern_no_token(http_server: LocalHttpServer, tmp_path: Path) -> None:
    limits = mock_hub(http_server)
    await fetch_volume(HuggingfaceVolume(repo_id="org/repo", allow_patterns="README.md"), tmp_path / "v", limits)
    assert files_under(tmp_path / "v") == {"README.md": b"# hi"}
    assert all("Authorization" not in r.headers for r in http_server.requests)


@pytest.mark.parametrize(
    ("repo_type", "kind", "prefix"), [("dataset", "datasets", "datasets/"), ("space", "spaces", "spaces/")]
)
async def test_dataset_and_space_urls(http_server: LocalHttpServer, tmp_path: Path,
                                      repo_type: str, kind: str, prefix: str) -> None:
    limits = mock_hub(http_server, kind=kind, prefix=prefix, revision="v1.0", files={"d.csv": b"a,b"})
    volume = HuggingfaceVolume(repo_id="org/repo", repo_type=repo_type, revision="v1.0")
    await fetch_volume(volume, tmp_path / "v", limits)
    assert files_under(tmp_path / "v") == {"d.csv": b"a,b"}
    assert http_server.requests[1].path == f"/{prefix}org/repo/resolve/{SHA}/d.csv"


async def test_repo_not_found_is_not_retried(http_server: LocalHttpServer, tmp_path: Path) -> None:
    http_server.route("GET", "/api/models/org/missing/revision/main",
                      respond(401, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"}))
    limits = VolumeLimits(hf_endpoint=http_server.base_url, retry_backoff_s=0.01, egress=LOOPBACK_EGRESS)
    with pytest.raises(VolumeError, match="repository not found or not accessible"):
        await fetch_volume(HuggingfaceVolume(repo_id="org/missing"), tmp_path / "v", limits)
    assert len(http_server.requests) == 1


async def test_revision_not_found(http_server: LocalHttpServer, tmp_path: Path) -> None:
    http_server.route("GET", "/api/models/org/repo/revision/nope",
                      respond(404, headers={"X-Error-Code": "RevisionNotFound"}))
    limits = VolumeLimits(hf_endpoint=http_server.base_url, retry_backoff_s=0.01, egress=LOOPBACK_EGRESS)
    with pytest.raises(VolumeError, match="revision 'nope' not found"):
        await fetch_volume(HuggingfaceVolume(repo_id="org/repo", revision="nope"), tmp_path / "v", limits)


async def test_listing_and_file_retried_after_500(http_server: LocalHttpServer, tmp_path: Path) -> None:
    limits = mock_hub(http_server, files={"a.txt": b"A"})
    api = http_server.routes[("GET", "/api/models/org/repo/revision/main")]
    http_server.route("GET", "/api/models/org/repo/revision/main", sequence(respond(500), api))
    http_server.route("GET", f"/org/repo/resolve/{SHA}/a.txt", sequence(respond(503), serve_bytes(b"A")))
    await fetch_volume(HuggingfaceVolume(repo_id="org/repo"), tmp_path / "v", limits)
    assert files_under(tmp_path / "v") == {"a.txt": b"A"}
    assert len(http_server.requests) == 4


async def test_redirect_to_cdn_drops_token(http_server: LocalHttpServer, other_http_server: LocalHttpServer,
                                           tmp_path: Path) -> None:
    limits = mock_hub(http_server, files={"big.bin": b"B" * 1000})
    cdn_url = other_http_server.route("GET", "/blob/xyz", serve_bytes(b"B" * 1000))
    http_server.route("GET", f"/org/repo/resolve/{SHA}/big.bin", redirect(cdn_url))
    await fetch_volume(HuggingfaceVolume(repo_id="org/repo", token="hf_secret"), tmp_path / "v", limits)
    assert files_under(tmp_path / "v") == {"big.bin": b"B" * 1000}
    [cdn_request] = other_http_server.requests
    assert "Authorization" not in cdn_request.headers


async def test_hostile_file_name_in_listing(http_server: LocalHttpServer, tmp_path: Path) -> None:
    async def api(request: web.Request) -> web.StreamResponse:
        return listing({"../../evil": b"", "ok": b""})

    http_server.route("GET", "/api/models/org/repo/revision/main", api)
    limits = VolumeLimits(hf_endpoint=http_server.base_url, retry_backoff_s=0.01, egress=LOOPBACK_EGRESS)
    with pytest.raises(VolumeError, match="huggingface file name '../../evil'"):
        await fetch_volume(HuggingfaceVolume(repo_id="org/repo"), tmp_path / "job" / "v", limits)
    assert not any(tmp_path.rglob("evil"))


@pytest.mark.parametrize("repo_id", ["../etc", "org/../x", "org/repo/extra", "org/repo?x=1", ""])
async def test_bad_repo_id_sends_nothing(http_server: LocalHttpServer, tmp_path: Path, repo_id: str) -> None:
    limits = VolumeLimits(hf_endpoint=http_server.base_url, egress=LOOPBACK_EGRESS)  # so a stray request would show
    with pytest.raises(VolumeError, match="repo_id"):
        await fetch_volume(HuggingfaceVolume(repo_id=repo_id), tmp_path / "v", limits)
    assert http_server.requests == []


async def test_unknown_repo_type(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="repo_type 'bucket'"):
        await fetch_volume(HuggingfaceVolume(repo_id="org/repo", repo_type="bucket"), tmp_path / "v", VolumeLimits())


async def test_snapshot_byte_budget(http_server: LocalHttpServer, tmp_path: Path) -> None:
    limits = replace(mock_hub(http_server), hf_max_bytes=3000)
    with pytest.raises(VolumeError, match="Input volume too large"):
        await fetch_volume(HuggingfaceVolume(repo_id="org/repo"), tmp_path / "v", limits)


async def test_garbage_listing_is_retried_then_fails(http_server: LocalHttpServer, tmp_path: Path) -> None:
    http_server.route("GET", "/api/models/org/repo/revision/main", respond(200, b"<html>proxy error</html>"))
    limits = VolumeLimits(hf_endpoint=http_server.base_url, retry_backoff_s=0.01, egress=LOOPBACK_EGRESS)
    with pytest.raises(VolumeError, match="failed after 3 attempts: .*unexpected response"):
        await fetch_volume(HuggingfaceVolume(repo_id="org/repo"), tmp_path / "v", limits)
    assert len(http_server.requests) == 3


async def test_snapshot_shares_the_job_budget_with_the_other_volumes(http_server: LocalHttpServer,
                                                                     tmp_path: Path) -> None:
    limits = mock_hub(http_server)
    code = inline(make_zip([(f"src/m{i}.py", b"pass\n") for i in range(6)]), "code")
    volume = MultiVolume(volumes=[code, HuggingfaceVolume(repo_id="org/repo", relative_path="model")])
    with pytest.raises(VolumeError, match=r"huggingface org/repo: 4 files, and all volumes of this job together "
                                          r"have more than 8 files and directories"):
        await fetch_volume(volume, tmp_path / "v", replace(limits, max_volume_entries=8))
    size = sum(len(d) for d in FILES.values())
    with pytest.raises(VolumeError, match="all volumes of this job together exceed the limit of"):
        await fetch_volume(volume, tmp_path / "w", replace(limits, max_volume_bytes=6 * 5 + size - 1))
    await fetch_volume(volume, tmp_path / "x", replace(limits, max_volume_bytes=6 * 5 + size, max_volume_entries=10))
    assert files_under(tmp_path / "x" / "model") == FILES
