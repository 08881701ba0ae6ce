"""`executor-agent doctor`: is this host ready to run jobs? One line per check, as it runs.

Each check returns (status, detail): "ok", "warn" (works, but look at it) or "FAIL" (jobs
will fail). The exit status is 1 when anything failed, so it can gate a deployment.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from executor_agent.container.podman_engine import Podman
from executor_agent.executor_config import AgentConfig
from executor_agent.imagegc import PRELOAD_LIST_FILE, read_preload_list

CDI_SPEC_DIRS = (Path("/etc/cdi"), Path("/var/run/cdi"))  # where podman 4 looks for CDI specs
GPU_CDI_KIND = "nvidia.com/gpu"
MIN_FREE_DISK_BYTES = 20 * 1024**3  # a job image plus its volume and output need room
DISK_WARN_PERCENT = 85

Result = tuple[str, str]
T = TypeVar("T")


def _with_podman(config: AgentConfig, ask: Callable[[Podman], Awaitable[T]]) -> T:
    """One question to the podman service through the agent's own engine facade."""

    async def asking() -> T:
        engine = Podman(config.podman_url)
        try:
            return await ask(engine)
        finally:
            await engine.close()

    return asyncio.run(asking())


async def _ping_and_version(engine: Podman) -> str | None:
    return await engine.version() if await engine.ping() else None


def check_podman(config: AgentConfig) -> Result:
    try:
        version = _with_podman(config, _ping_and_version)
        if version is None:
            return "FAIL", f"podman API at {config.podman_url} does not answer; systemctl enable --now podman.socket"
    except Exception as exc:  # any failure to talk to it is the finding
        return "FAIL", f"podman API at {config.podman_url}: {type(exc).__name__}: {exc}; " \
                       "systemctl enable --now podman.socket, or fix podman_url"
    return "ok", f"podman {version} answers at {config.podman_url}"


def check_directories(config: AgentConfig) -> Result:
    problems = []
    for what, path in (("jobs_dir", config.jobs_dir), ("socket_path directory", config.socket_path.parent)):
        existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
        if not os.access(existing, os.W_OK):
            problems.append(f"{what} {path}: {existing} is not writable by this user")
    return ("FAIL", "; ".join(problems)) if problems else ("ok", f"jobs_dir {config.jobs_dir} and the socket dir are writable")


def check_disk(config: AgentConfig) -> Result:
    path = next((p for p in (config.jobs_dir, *config.jobs_dir.parents) if p.exists()), Path("/"))
    usage = shutil.disk_usage(path)
    percent = 100 * usage.used / usage.total if usage.total else 0
    detail = f"{usage.free / 1024**3:.1f} GiB free on {path} ({percent:.0f}% used)"
    if usage.free < MIN_FREE_DISK_BYTES:
        return "FAIL", f"{detail}; jobs need at least {MIN_FREE_DISK_BYTES // 1024**3} GiB"
    if percent > DISK_WARN_PERCENT:
        return "warn", f"{detail}; image GC starts removing images at {config.image_gc.disk_high_percent}%"
    return "ok", detail


def check_gpu(config: AgentConfig) -> Result:
    smi = shutil.which(config.nvidia_smi_path)
    specs = [p for d in CDI_SPEC_DIRS if d.is_dir() for p in sorted(d.iterdir()) if _mentions_gpu(p)]
    if smi and specs:
        return "ok", f"nvidia-smi at {smi}; CDI spec {specs[0]} (jobs with nvidia_all get nvidia.com/gpu=all)"
    if smi:
        return "FAIL", "nvidia-smi works but no CDI spec for nvidia.com/gpu: GPU jobs will fail; run " \
                       "`nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`"
    if specs:
        return "warn", f"CDI spec {specs[0]} present but {config.nvidia_smi_path} is not: is the NVIDIA driver loaded?"
    return "warn", "no NVIDIA GPU (no nvidia-smi, no CDI spec): fine for CPU executor classes only"


def _mentions_gpu(path: Path) -> bool:
    try:
        return path.is_file() and GPU_CDI_KIND in path.read_text(errors="replace")
    except OSError:
        return False


def check_images(config: AgentConfig) -> Result:
    listed = list(dict.fromkeys([*config.preload.images, *read_preload_list(config.jobs_dir.parent / PRELOAD_LIST_FILE)]))
    if not listed:
        return "warn", "no preload list yet: run `executor-agent preload` (the timer does it hourly)"

    async def missing_of(engine: Podman) -> list[str]:
        return [ref for ref in listed if not await engine.image_exists(ref)]

    try:
        missing = _with_podman(config, missing_of)
    except Exception as exc:
        return "FAIL", f"cannot list images: {type(exc).__name__}: {exc}"
    if missing:
        return "warn", f"{len(missing)} of {len(listed)} preload images missing ({', '.join(missing[:3])}" \
                       f"{', ...' if len(missing) > 3 else ''}): jobs using them will have to pull in the 5 s startup"
    return "ok", f"all {len(listed)} preload images are present"


def check_job_runner(config: AgentConfig) -> Result:
    if not config.job_runner:
        return "ok", "built-in job runner"
    from executor_agent.plugins.job_runner import load_job_runner

    try:
        load_job_runner(config.job_runner, dict(config.job_runner_options))
    except Exception as exc:  # JobRunnerError, or anything the plugin's own import raised
        return "FAIL", str(exc)
    return "ok", f"job_runner {config.job_runner} loads"


SUBID_FILES = (Path("/etc/subuid"), Path("/etc/subgid"))
SUBID_USER = "containers"  # whose ranges podman's userns=auto hands out


def subid_ranges(path: Path, user: str = SUBID_USER) -> int:
    """How many subordinate ids `user` has in a /etc/subuid-format file (0 when none)."""
    total = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] == user and parts[2].isdigit():
            total += int(parts[2])
    return total


def check_subids(config: AgentConfig, files: tuple[Path, ...] = SUBID_FILES) -> Result:
    """Every job runs in its own user namespace of USERNS_SIZE ids; without ranges no job starts."""
    from executor_agent.container.job_spec import USERNS_SIZE

    counts = {path: subid_ranges(path) for path in files}
    short = [str(path) for path, n in counts.items() if n < USERNS_SIZE * max(1, config.slots)]
    if short:
        return "FAIL", (f"{' and '.join(short)} give `{SUBID_USER}` fewer than {USERNS_SIZE} ids per slot: jobs cannot "
                        f"get a user namespace; add `{SUBID_USER}:2147483647:2147483648` to both and restart podman")
    jobs = min(counts.values()) // USERNS_SIZE
    return "ok", f"`{SUBID_USER}` has subordinate ids for {jobs} concurrent job user namespaces"


CHECKS: list[tuple[str, Callable[[AgentConfig], Result]]] = [
    ("podman API", check_podman),
    ("directories", check_directories),
    ("disk", check_disk),
    ("GPU / CDI", check_gpu),
    ("user namespaces", check_subids),
    ("preloaded images", check_images),
    ("job runner", check_job_runner),
]


def run_doctor(config: AgentConfig, out: Callable[[str], None] = print) -> int:
    failed = 0
    for name, check in CHECKS:
        status, detail = check(config)
        failed += status == "FAIL"
        out(f"{status:4}  {name:17} {detail}")
    out(f"doctor: {'all checks passed' if not failed else f'{failed} check(s) failed'}")
    return 1 if failed else 0
