"""`executor-agent doctor|specs|preload` as an operator runs them: real processes, exit codes, output."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import pytest

from tests.fixtures.imports import NOT_FOR_AN_EXECUTOR_AGENT, dump_on_exit_script, top_level_packages

pytestmark = pytest.mark.podman


async def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "executor_agent", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


def _config(tmp_path: Path, podman_url: str, extra: str = "") -> Path:
    path = tmp_path / "executor-agent.toml"
    path.write_text(f'socket_path = "{tmp_path}/agent.sock"\njobs_dir = "{tmp_path}/jobs"\n'
                    f'podman_url = "{podman_url}"\n{extra}')
    return path


async def test_doctor_on_a_ready_host(tmp_path, podman_socket, busybox_image) -> None:
    cfg = _config(tmp_path, podman_socket, f'[preload]\nimages = ["{busybox_image}"]\ndynamic_config_url = ""\n')
    code, out, err = await _cli("doctor", "--config", str(cfg))
    lines = {line[6:23].strip(): line[:4].strip() for line in out.splitlines()[:-1]}
    # no GPU here and no --class: the GPU checks do not apply; the CVE probe runs in the preloaded image
    assert lines == {"podman API": "ok", "directories": "ok", "disk": lines["disk"], "GPU / CDI": "n/a",
                     "container toolkit": "n/a", "user namespaces": "ok", "preloaded images": "ok",
                     "job runner": "ok", "CVE-2022-0492": "ok"}, out
    assert "Contained: cannot escape via CVE-2022-0492" in out
    assert "all 1 preload images are present" in out
    if lines["disk"] == "FAIL":  # a nearly full test machine: the one honest failure
        assert code == 1 and "jobs need at least" in out
    else:
        assert code == 0 and out.strip().endswith("doctor: all checks passed"), out + err


async def test_doctor_reports_a_dead_podman_and_a_missing_image(tmp_path, podman_socket) -> None:
    cfg = _config(tmp_path, f"unix://{tmp_path}/no-podman.sock", '[preload]\nimages = ["localhost/absent:1"]\n')
    code, out, _ = await _cli("doctor", "--config", str(cfg))
    assert code == 1
    assert out.splitlines()[0].startswith("FAIL  podman API") and "systemctl enable --now podman.socket" in out
    assert "doctor: 2 check(s) failed" in out  # podman, and the image list it cannot read
    assert "n/a   CVE-2022-0492" in out  # no image to run the probe in: not checked, not failed


async def test_doctor_for_a_gpu_class_needs_the_toolkit_and_the_cdi_spec(tmp_path, podman_socket) -> None:
    """A PATH without the NVIDIA tools (whatever this machine has): what a GPU executor without them sees."""
    bare = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    code, out, _ = await _cli("doctor", "--class", "spin_up-4min.gpu-24gb",
                              "--config", str(_config(tmp_path, podman_socket)), env=bare)
    assert code == 1
    lines = {line[6:23].strip(): line for line in out.splitlines()[:-1]}
    assert lines["container toolkit"].startswith("FAIL") and ">= 1.17.4" in lines["container toolkit"]
    assert lines["GPU / CDI"].startswith("FAIL")


async def test_specs_prints_the_validator_payload(tmp_path, podman_socket) -> None:
    code, out, _ = await _cli("specs", "--config", str(_config(tmp_path, podman_socket)))
    assert code == 0
    specs = json.loads(out)
    assert specs["cpu"]["count"] >= 1 and specs["ram"]["total"] > 0 and specs["hard_disk"]["total"] > 0
    assert "os" in specs and ("gpu" in specs or "gpu_scrape_error" in specs)


async def test_preload_reports_a_failed_pull_and_exits_1(tmp_path, podman_socket) -> None:
    cfg = _config(tmp_path, podman_socket, '[preload]\nimages = ["127.0.0.1:9/nothing/here:1"]\ndynamic_config_url = ""\n')
    code, out, err = await _cli("preload", "--config", str(cfg))
    assert code == 1
    assert "preload pull failed image=127.0.0.1:9/nothing/here:1" in err


async def test_bad_config_is_one_line(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("slots = 'many'\n")
    for command in ("doctor", "specs", "preload", "serve"):
        code, _, err = await _cli(command, "--config", str(bad))
        assert code == 2 and "slots" in err and "Traceback" not in err, (command, err)


async def test_an_idle_agent_serves_metrics_without_loading_aiohttp(tmp_path, podman_socket) -> None:
    """`executor-agent serve`, started, scraped and stopped: aiohttp (~13 MiB resident) comes with the
    first job's download or upload, not before (issue 14: idle RSS < 60 MiB)."""
    import aiohttp  # the scraper's, in this process

    cfg = _config(tmp_path, podman_socket, "[metrics]\nport = 0\n")  # any free port; the log names it
    dump = tmp_path / "modules.json"
    script = dump_on_exit_script("executor_agent.cli", "serve")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, str(dump), str(cfg),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    seen: list[str] = []
    try:
        while not (port := re.search(r"metrics listening host=127\.0\.0\.1 port=(\d+)", "".join(seen))):
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, "".join(seen)
            seen.append(line)
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port[1]}/metrics") as r:
            assert r.status == 200 and "# TYPE executor_agent_start_time_seconds gauge" in await r.text()
        proc.terminate()
        seen.append((await asyncio.wait_for(proc.communicate(), 30))[0].decode())
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, "".join(seen)
    loaded = top_level_packages(dump)
    assert "podman" in loaded and loaded & NOT_FOR_AN_EXECUTOR_AGENT == set(), "".join(seen)
