"""Machine specs: what this host has, sent as V0MachineSpecsRequest after a successful job.

The shape is the stock executor's (behaviour.md §2.8), because validators store it as
is: `gpu {count, details: [...]}` from nvidia-smi, `cpu {count, model, clocks}` from
lscpu, `ram {available, free, total, used}` in kB from /proc/meminfo, `hard_disk
{total, used, free}` in KiB, `os`, and a `<part>_scrape_error` string for every probe
that failed. Values inside `gpu.details` stay the strings nvidia-smi printed (the stock
executor sends "81559", not 81559).

Differences from stock, on purpose:
* nvidia-smi runs on the host (the agent is not in a container), so no `ubuntu` image
  is needed; a host without it gets a `gpu_scrape_error` that says so in words.
* `os` comes from /etc/os-release (PRETTY_NAME), which every systemd host has, rather
  than `lsb_release -d`, which a minimal host lacks; the text is the same.
* `hard_disk` is the filesystem of the jobs dir (volumes and outputs live there).

Collecting runs subprocesses, so it happens in a worker thread, once at agent start and
then every `specs_refresh_s`; jobs read the cached copy and never wait for a probe.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NVIDIA_SMI_QUERY = "name,driver_version,name,memory.total,compute_cap,power.limit,clocks.gr,clocks.mem,uuid,serial"
PROBE_TIMEOUT_S = 20.0  # nvidia-smi can take seconds on a busy 8-GPU host; lscpu well under one
MAX_ERROR_CHARS = 500
OS_RELEASE = Path("/etc/os-release")
MEMINFO = Path("/proc/meminfo")

# nvidia-smi CSV header -> stock detail key; values keep only their first word ("81559 MiB" -> "81559").
GPU_FIELDS = {
    "name": "name",
    "driver_version": "driver",
    "memory.total [MiB]": "capacity",
    "compute_cap": "cuda",
    "power.limit [W]": "power_limit",
    "clocks.current.graphics [MHz]": "graphics_speed",
    "clocks.current.memory [MHz]": "memory_speed",
    "uuid": "uuid",
    "serial": "serial",
}
FIRST_WORD_FIELDS = {"capacity", "power_limit", "graphics_speed", "memory_speed", "uuid", "serial"}


class ProbeError(Exception):
    """One probe failed; str() is the text that goes into `<part>_scrape_error`."""


@dataclass(frozen=True)
class SpecsSources:
    """Where the probes look; tests point them at fakes (a script that prints recorded
    nvidia-smi output, a copy of /proc/meminfo)."""

    nvidia_smi: str = "nvidia-smi"
    lscpu: str = "lscpu"
    meminfo: Path = MEMINFO
    os_release: Path = OS_RELEASE
    disk_path: Path = Path("/")


# --- pure parsers (unit-tested on recorded text) ---------------------------------------------


def parse_nvidia_smi_csv(text: str) -> dict[str, Any]:
    """`nvidia-smi --query-gpu=... --format=csv` output -> {"count", "details"}."""
    rows = [[cell.strip() for cell in row] for row in csv.reader(text.splitlines()) if row]
    if not rows:
        raise ProbeError("nvidia-smi printed nothing")
    header, body = rows[0], rows[1:]
    missing = [name for name in GPU_FIELDS if name not in header]
    if missing:
        raise ProbeError(f"nvidia-smi output lacks the columns {missing}; header was {header}")
    details = []
    for row in body:
        by_name = dict(zip(header, row))  # "name" appears twice in the query; both are the same
        detail = {}
        for column, key in GPU_FIELDS.items():
            value = by_name.get(column, "")
            detail[key] = value.split(" ")[0] if key in FIRST_WORD_FIELDS else value
        details.append(detail)
    return {"count": len(details), "details": details}


def parse_lscpu(text: str) -> tuple[str, int]:
    """`lscpu` -> (model name, CPU count)."""
    model = re.search(r"^\s*Model name:\s*(.*)$", text, re.M)
    count = re.search(r"^\s*CPU\(s\):\s*(\d+)", text, re.M)
    if model is None or count is None:
        raise ProbeError("lscpu output has no 'Model name:' or 'CPU(s):' line")
    return model.group(1).strip(), int(count.group(1))


def parse_lscpu_mhz(text: str) -> list[float]:
    """`lscpu --parse=MHZ` -> one clock per CPU (comment lines and empty values skipped)."""
    return [float(line) for line in (x.strip() for x in text.splitlines()) if re.fullmatch(r"[0-9]+(\.[0-9]+)?", line)]


def parse_cpuinfo_mhz(text: str) -> list[float]:
    """/proc/cpuinfo `cpu MHz` lines; the fallback where lscpu prints no clocks (many VMs)."""
    return [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([0-9.]+)", text, re.M)]


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo -> {"available", "free", "total", "used"} in kB (used = total - free, as stock)."""
    values = {}
    for name, key in (("MemAvailable", "available"), ("MemFree", "free"), ("MemTotal", "total")):
        m = re.search(rf"^{name}:\s*(\d+)\s+kB$", text, re.M)
        if m is None:
            raise ProbeError(f"/proc/meminfo has no {name} line")
        values[key] = int(m.group(1))
    values["used"] = values["total"] - values["free"]
    return values


def parse_os_release(text: str) -> str:
    """PRETTY_NAME from os-release ("Debian GNU/Linux 12 (bookworm)")."""
    m = re.search(r"^PRETTY_NAME=(.*)$", text, re.M)
    if m is None:
        raise ProbeError("os-release has no PRETTY_NAME")
    return m.group(1).strip().strip("\"'")


# --- probes ----------------------------------------------------------------------------------


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise ProbeError(f"{argv[0]}: not found") from None
    except subprocess.TimeoutExpired:
        raise ProbeError(f"{argv[0]}: no answer within {PROBE_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().replace("\n", " ")
        raise ProbeError(f"{' '.join(argv)} exited with {done.returncode}: {detail}")
    return done.stdout


def probe_gpu(nvidia_smi: str) -> dict[str, Any]:
    if shutil.which(nvidia_smi) is None:
        raise ProbeError(f"no NVIDIA GPU found: {nvidia_smi} is not installed on this host "
                         "(no NVIDIA driver); set nvidia_smi_path if it lives elsewhere")
    return parse_nvidia_smi_csv(_run([nvidia_smi, f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv"]))


def probe_cpu(lscpu: str) -> dict[str, Any]:
    model, count = parse_lscpu(_run([lscpu]))
    clocks = parse_lscpu_mhz(_run([lscpu, "--parse=MHZ"]))
    if not clocks:
        try:
            clocks = parse_cpuinfo_mhz(Path("/proc/cpuinfo").read_text())
        except OSError:
            clocks = []
    return {"count": count, "model": model, "clocks": clocks}


def probe_disk(path: Path) -> dict[str, int]:
    usage = shutil.disk_usage(path)
    return {"total": usage.total // 1024, "used": usage.used // 1024, "free": usage.free // 1024}


def collect_specs(sources: SpecsSources) -> dict[str, Any]:
    """Every probe, each failure recorded as `<part>_scrape_error` (never raised)."""
    data: dict[str, Any] = {}

    def attempt(part: str, default: Any, fn: Callable[[], Any]) -> None:
        try:
            data[part] = fn()
        except (ProbeError, OSError, ValueError) as exc:
            data[part] = default
            text = str(exc) if isinstance(exc, ProbeError) else f"{type(exc).__name__}: {exc}"
            data[f"{part}_scrape_error"] = text[:MAX_ERROR_CHARS]

    attempt("gpu", {"count": 0, "details": []}, lambda: probe_gpu(sources.nvidia_smi))
    attempt("cpu", {"count": 0, "model": "", "clocks": []}, lambda: probe_cpu(sources.lscpu))
    attempt("ram", {}, lambda: parse_meminfo(sources.meminfo.read_text()))
    attempt("hard_disk", {}, lambda: probe_disk(sources.disk_path))
    attempt("os", "", lambda: parse_os_release(sources.os_release.read_text()))
    return data


class SpecsCache:
    """The last collected specs; `refresh()` runs the probes in a worker thread."""

    def __init__(self, sources: SpecsSources, clock: Callable[[], float] = time.monotonic) -> None:
        self.sources = sources
        self.specs: dict[str, Any] | None = None
        self.collected_at: float | None = None
        self._clock = clock
        self._lock = asyncio.Lock()

    async def refresh(self) -> dict[str, Any]:
        async with self._lock:
            started = self._clock()
            specs = await asyncio.to_thread(collect_specs, self.sources)
            self.specs, self.collected_at = specs, self._clock()
        errors = sorted(k for k in specs if k.endswith("_scrape_error"))
        log.info("machine specs collected gpus=%d cpus=%s errors=%s took_ms=%d", specs["gpu"]["count"],
                 specs["cpu"].get("count"), ",".join(errors) or "-", (self._clock() - started) * 1000)
        return specs

    async def keep_fresh(self, interval_s: float) -> None:
        """Collect now, then every interval_s, forever (a task the agent cancels on stop)."""
        while True:
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - a probe bug must not end the loop; the old copy stays
                log.exception("machine specs collection failed")
            await asyncio.sleep(interval_s)


def sources_from_config(config: Any) -> SpecsSources:
    return SpecsSources(nvidia_smi=config.nvidia_smi_path, disk_path=_existing(config.jobs_dir))


def _existing(path: Path) -> Path:
    """The path itself, or its nearest existing parent (the jobs dir may not exist yet)."""
    for candidate in (path, *path.parents):
        if os.path.exists(candidate):
            return candidate
    return Path("/")
