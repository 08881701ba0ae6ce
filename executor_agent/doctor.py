"""`executor-agent doctor`: is this host ready to run jobs? One line per check, as it runs.

Each check returns (status, detail): "ok", "warn" (works, but look at it), "FAIL" (jobs
will fail) or "not checked" (does not apply here, or could not be tried; the detail says
which). The exit status is 1 when anything failed, so it can gate a deployment.

The same rows reach `miner-agent doctor` over the link (a `doctor` frame, answered by
daemon/health.py): the running agent adds its start-up CVE-2022-0492 probe result and reruns
the cheap checks below. GPU checks (CDI spec, nvidia-container-toolkit >= 1.17.4) apply to a
GPU executor class; without a class given, to a host that has nvidia-smi.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from executor_agent.container.podman_engine import Podman
from executor_agent.executor_config import AgentConfig
from executor_agent.imagegc import PRELOAD_LIST_FILE, read_preload_list
from horde_protocol.enums import ExecutorClass

CDI_SPEC_DIRS = (Path("/etc/cdi"), Path("/var/run/cdi"))  # where podman 4 looks for CDI specs
GPU_CDI_KIND = "nvidia.com/gpu"
MIN_FREE_DISK_BYTES = 20 * 1024**3  # a job image plus its volume and output need room
DISK_WARN_PERCENT = 85
# CVE-2025-23359 is fixed in 1.17.4; validators refuse a GPU executor with an older toolkit
# (behaviour.md §2.9). Read from the host's own `nvidia-ctk --version`.
MIN_TOOLKIT_VERSION = (1, 17, 4)
TOOLKIT_COMMANDS = ("nvidia-ctk", "nvidia-container-toolkit")
TOOLKIT_VERSION_TIMEOUT_S = 10.0
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")

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


def parse_toolkit_version(output: str) -> tuple[int, int, int] | None:
    """The version in `nvidia-ctk --version` output ("NVIDIA Container Toolkit CLI version 1.17.4"):
    the first x.y.z of the first line, as the stock check takes the first line's last token."""
    first = output.strip().splitlines()[0] if output.strip() else ""
    match = _VERSION.search(first)
    return None if match is None else (int(match[1]), int(match[2]), int(match[3]))


def toolkit_verdict(gpu_class: bool, output: str | None, command: str | None) -> Result:
    """Pure: `output` is the tool's --version text, None when no tool was found."""
    if not gpu_class:
        return "not checked", "CPU class: the NVIDIA container toolkit is not needed"
    wanted = ".".join(map(str, MIN_TOOLKIT_VERSION))
    if output is None:
        return "FAIL", (f"no {' or '.join(TOOLKIT_COMMANDS)} on PATH: validators require nvidia-container-toolkit >= "
                        f"{wanted} for GPU classes; apt-get install nvidia-container-toolkit")
    version = parse_toolkit_version(output)
    if version is None:
        return "FAIL", f"`{command} --version` printed no version ({output.strip()[:80]!r})"
    shown = ".".join(map(str, version))
    if version < MIN_TOOLKIT_VERSION:
        return "FAIL", f"nvidia-container-toolkit {shown} is older than {wanted} (CVE-2025-23359): validators " \
                       "refuse this executor; upgrade nvidia-container-toolkit"
    return "ok", f"nvidia-container-toolkit {shown} (>= {wanted})"


def toolkit_version_output() -> tuple[str | None, str | None]:
    """(--version output, command) of the first toolkit command found; (None, None) when none is."""
    for name in TOOLKIT_COMMANDS:
        path = shutil.which(name)
        if path is None:
            continue
        try:
            done = subprocess.run([path, "--version"], capture_output=True, text=True,
                                  timeout=TOOLKIT_VERSION_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"could not run: {exc}", name
        return done.stdout or done.stderr, name
    return None, None


def is_gpu_class(executor_class: str | None, config: AgentConfig) -> bool:
    """GPU checks apply to a GPU class; with no class known, to a host that has nvidia-smi."""
    if executor_class:
        try:
            return ExecutorClass(executor_class).spec.has_gpu
        except ValueError:
            pass
    return shutil.which(config.nvidia_smi_path) is not None


def check_toolkit(config: AgentConfig, gpu_class: bool) -> Result:
    output, command = toolkit_version_output()
    return toolkit_verdict(gpu_class, output, command)


def check_cdi(config: AgentConfig, gpu_class: bool) -> Result:
    """For a GPU class a missing CDI spec fails every job (podman cannot give the container the GPU)."""
    if not gpu_class:
        return "not checked", "CPU class: no GPU or CDI spec needed"
    status, detail = check_gpu(config)
    return (status, detail) if status == "ok" else ("FAIL", f"GPU class: {detail}")


def probe_candidates(config: AgentConfig) -> list[str]:
    """Images the CVE probe may run in: the preload list, which should be on the host anyway."""
    return list(dict.fromkeys([*config.preload.images, *read_preload_list(config.jobs_dir.parent / PRELOAD_LIST_FILE)]))


def check_cve_2022_0492(config: AgentConfig) -> Result:
    from executor_agent.cve_probe import run_probe

    try:
        return _with_podman(config, lambda engine: run_probe(engine, probe_candidates(config)))
    except Exception as exc:
        return "FAIL", f"probe could not run: {type(exc).__name__}: {exc}"


CHECKS: list[tuple[str, Callable[[AgentConfig], Result]]] = [
    ("podman API", check_podman),
    ("directories", check_directories),
    ("disk", check_disk),
    ("GPU / CDI", check_gpu),
    ("user namespaces", check_subids),
    ("preloaded images", check_images),
    ("job runner", check_job_runner),
]


def host_checks(config: AgentConfig, executor_class: str | None = None) -> list[tuple[str, str, str]]:
    """(check, status, detail) of every cheap check (all but the CVE probe), in table order.
    Blocking (podman calls through their own loop): the agent runs it in a thread."""
    gpu = is_gpu_class(executor_class, config)
    rows: list[tuple[str, str, str]] = []
    for name, check in CHECKS:
        if name == "GPU / CDI":
            rows.append((name, *check_cdi(config, gpu)))
            rows.append(("container toolkit", *check_toolkit(config, gpu)))
            continue
        rows.append((name, *check(config)))
    return rows


def run_doctor(config: AgentConfig, out: Callable[[str], None] = print, executor_class: str | None = None) -> int:
    failed = 0
    rows = host_checks(config, executor_class)
    rows.append(("CVE-2022-0492", *check_cve_2022_0492(config)))
    for name, status, detail in rows:
        failed += status == "FAIL"
        shown = "n/a" if status == "not checked" else status  # four columns wide, like ok/warn/FAIL
        out(f"{shown:4}  {name:17} {detail}")
    out(f"doctor: {'all checks passed' if not failed else f'{failed} check(s) failed'}")
    return 1 if failed else 0
