"""Machine specs: the stock shape, probes parsed from recorded text, clear scrape errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from executor_agent.specs import (
    SpecsSources,
    collect_specs,
    parse_lscpu,
    parse_lscpu_mhz,
    parse_meminfo,
    parse_nvidia_smi_csv,
    parse_os_release,
)

# The CSV nvidia-smi prints for the stock query on a two-GPU H100 host (format as nvidia-smi
# writes it: a header with units, one row per GPU; no GPU was at hand to capture a fresh one).
NVIDIA_SMI_H100 = """\
name, driver_version, name, memory.total [MiB], compute_cap, power.limit [W], clocks.current.graphics [MHz], \
clocks.current.memory [MHz], uuid, serial
NVIDIA H100 80GB HBM3, 550.90.07, NVIDIA H100 80GB HBM3, 81559 MiB, 9.0, 700.00 W, 1980 MHz, 2619 MHz, \
GPU-5e2a3c4b-8f1d-4c7e-9a6b-2d3f4e5a6b7c, 1652823054512
NVIDIA H100 80GB HBM3, 550.90.07, NVIDIA H100 80GB HBM3, 81559 MiB, 9.0, 700.00 W, 345 MHz, 2619 MHz, \
GPU-0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e, 1652823054620
"""

LSCPU = """Architecture:            x86_64
CPU(s):                  2
  On-line CPU(s) list:   0,1
Vendor ID:               AuthenticAMD
  Model name:            AMD EPYC 7B13
"""

MEMINFO = "MemTotal:       24684092 kB\nMemFree:        23358344 kB\nMemAvailable:   24017040 kB\n"


def fake_nvidia_smi(tmp_path: Path, text: str, rc: int = 0) -> str:
    out = tmp_path / "out.csv"
    out.write_text(text)
    script = tmp_path / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncase \"$*\" in *--query-gpu=*) cat {out}; exit {rc};; esac\nexit 9\n")
    script.chmod(0o755)
    return str(script)


def test_nvidia_smi_csv_to_stock_details() -> None:
    gpu = parse_nvidia_smi_csv(NVIDIA_SMI_H100)
    assert gpu["count"] == 2
    assert gpu["details"][0] == {
        "name": "NVIDIA H100 80GB HBM3", "driver": "550.90.07", "capacity": "81559", "cuda": "9.0",
        "power_limit": "700.00", "graphics_speed": "1980", "memory_speed": "2619",
        "uuid": "GPU-5e2a3c4b-8f1d-4c7e-9a6b-2d3f4e5a6b7c", "serial": "1652823054512",
    }


def test_text_parsers() -> None:
    assert parse_lscpu(LSCPU) == ("AMD EPYC 7B13", 2)
    assert parse_lscpu_mhz("# The following is the parsable format\n#MHZ\n2596.1379\n\n3000\n") == [2596.1379, 3000.0]
    assert parse_meminfo(MEMINFO) == {"available": 24017040, "free": 23358344, "total": 24684092, "used": 1325748}
    assert parse_os_release('NAME="Debian GNU/Linux"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n') == \
        "Debian GNU/Linux 12 (bookworm)"


def test_collect_with_fake_nvidia_smi(tmp_path: Path) -> None:
    sources = SpecsSources(nvidia_smi=fake_nvidia_smi(tmp_path, NVIDIA_SMI_H100), disk_path=tmp_path)
    specs = collect_specs(sources)
    assert specs["gpu"]["count"] == 2 and "gpu_scrape_error" not in specs
    assert set(specs["ram"]) == {"available", "free", "total", "used"}
    assert set(specs["hard_disk"]) == {"total", "used", "free"} and specs["hard_disk"]["total"] > 0
    assert specs["cpu"]["count"] >= 1 and isinstance(specs["cpu"]["clocks"], list)
    assert json.loads(json.dumps(specs)) == specs


def test_no_gpu_is_a_clear_scrape_error(tmp_path: Path) -> None:
    specs = collect_specs(SpecsSources(nvidia_smi=str(tmp_path / "absent-nvidia-smi"), disk_path=tmp_path))
    assert specs["gpu"] == {"count": 0, "details": []}
    assert specs["gpu_scrape_error"].startswith("no NVIDIA GPU found: ")
    failing = fake_nvidia_smi(tmp_path, "NVIDIA-SMI has failed because it couldn't communicate with the driver\n", 9)
    specs = collect_specs(SpecsSources(nvidia_smi=failing, disk_path=tmp_path))
    assert "exited with 9" in specs["gpu_scrape_error"]


def test_each_probe_fails_on_its_own(tmp_path: Path) -> None:
    (tmp_path / "meminfo").write_text("nothing useful\n")
    specs = collect_specs(SpecsSources(nvidia_smi="/nonexistent", lscpu=str(tmp_path / "no-lscpu"),
                                       meminfo=tmp_path / "meminfo", os_release=tmp_path / "missing",
                                       disk_path=tmp_path / "missing-dir"))
    for part in ("gpu", "cpu", "ram", "hard_disk", "os"):
        assert specs[f"{part}_scrape_error"], part
    assert specs["cpu"] == {"count": 0, "model": "", "clocks": []} and specs["os"] == ""


def test_cli_prints_json(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'jobs_dir = "{tmp_path}/jobs"\nnvidia_smi_path = "{fake_nvidia_smi(tmp_path, NVIDIA_SMI_H100)}"\n')
    done = subprocess.run([sys.executable, "-m", "executor_agent.cli", "specs", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(done.stdout)["gpu"]["count"] == 2
