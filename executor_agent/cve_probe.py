"""The CVE-2022-0492 probe: can a job container escape through a cgroup v1 `release_agent`?

Validators expect the executor to check this before it runs their job (the stock executor runs
twistlock's `can-ctr-escape-cve-2022-0492` image and requires the line CONTAINED_LINE). The
escape: inside the container, `unshare -UrmC` makes a user (and mount, cgroup) namespace where
the job is root, mounts a cgroup v1 hierarchy and writes its `release_agent`, which the host
kernel then runs as real root. A patched kernel refuses that write (EPERM: it needs
CAP_SYS_ADMIN in the initial user namespace), and our job isolation (own user namespace,
capabilities dropped, no-new-privileges) should stop it earlier still.

We run the same attempt, in a container made with the job containers' own isolation, from an
image already on this host (no pull: the probe never waits on a registry and never runs on a
job's path). The write, when it is allowed at all, writes back the value it read, so a
vulnerable host is left as it was. Verdict:

    exit 0 and CONTAINED_LINE   ok      the attempt failed at some step
    ESCAPED_LINE                FAIL    release_agent was writable from the container
    anything else               FAIL    the probe could not run (the detail says why)
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable

from executor_agent.container.engine import EngineError
from executor_agent.container.job_spec import isolation_kwargs, normalize_image
from executor_agent.container.podman_engine import Podman

log = logging.getLogger(__name__)

CONTAINED_LINE = "Contained: cannot escape via CVE-2022-0492"  # what the stock executor requires
ESCAPED_LINE = "ESCAPE: release_agent is writable (CVE-2022-0492)"
PROBE_TIMEOUT_S = 30.0  # the container does a handful of syscalls; a hang is a failure, not a wait
PROBE_LABEL = "io.computehorde.probe"
CGROUP_V1_CONTROLLERS = ("rdma", "memory", "cpu", "pids", "devices")  # any one mountable is enough

# The attempt, run by /bin/sh as the container's root. The inner script exits 0 only when it
# wrote release_agent. busybox's unshare has no -C, hence the second form.
_ATTEMPT = (
    "mkdir -p /tmp/cgprobe || exit 1; "
    "for c in " + " ".join(CGROUP_V1_CONTROLLERS) + "; do "
    "mount -t cgroup -o $c cgroup /tmp/cgprobe 2>/dev/null || continue; "
    "[ -e /tmp/cgprobe/release_agent ] || { umount /tmp/cgprobe; continue; }; "
    "v=$(cat /tmp/cgprobe/release_agent); "
    "if printf '%s\\n' \"$v\" > /tmp/cgprobe/release_agent 2>/dev/null; then exit 0; fi; "
    "umount /tmp/cgprobe; done; exit 1"
)
PROBE_SCRIPT = (
    f"if unshare -UrmC sh -c '{_ATTEMPT}' 2>/dev/null || unshare -Urm sh -c '{_ATTEMPT}' 2>/dev/null; "
    f"then echo '{ESCAPED_LINE}'; else echo '{CONTAINED_LINE}'; fi"
)

Result = tuple[str, str]


def probe_kwargs(image: str) -> dict[str, object]:
    """podman-py create arguments: a job container's isolation, no network, our label."""
    return {
        "image": normalize_image(image),
        "name": f"ch-probe-cve-2022-0492-{os.getpid()}",
        "labels": {PROBE_LABEL: "cve-2022-0492"},
        "entrypoint": ["/bin/sh", "-c"],
        "command": [PROBE_SCRIPT],
        "network_mode": "none",
        **isolation_kwargs(),
    }


def probe_verdict(exit_code: int | None, stdout: str, image: str) -> Result:
    """The check's result from what the probe container did (pure)."""
    if exit_code is None:
        return "FAIL", f"probe container in {image} did not finish within {PROBE_TIMEOUT_S:.0f} s"
    if ESCAPED_LINE in stdout:
        return "FAIL", ("a job container could write a cgroup release_agent (container escape, CVE-2022-0492): "
                        "upgrade the kernel (fixed in 5.17 and the stable lines) and keep the packaged "
                        "containers.conf; validators fail every job here")
    if exit_code == 0 and CONTAINED_LINE in stdout:
        return "ok", f"{CONTAINED_LINE} (probe run in {image} with the job isolation)"
    return "FAIL", f"probe in {image} exited {exit_code} without a verdict: {stdout.strip()[:200]!r}"


async def pick_probe_image(engine: Podman, candidates: Iterable[str]) -> str | None:
    """The first candidate present locally (preload list order); None when none is."""
    for ref in candidates:
        try:
            if await engine.image_exists(ref):
                return ref
        except EngineError:
            return None
    return None


async def run_probe(engine: Podman, candidates: Iterable[str]) -> tuple[str, str]:
    """Run the probe once; returns (status, detail) with status ok / FAIL / not checked."""
    image = await pick_probe_image(engine, candidates)
    if image is None:
        return "not checked", ("no preloaded image is on this host to run the probe in; "
                               "run `executor-agent preload` (the timer does it hourly)")
    container_id: str | None = None
    try:
        container_id = await engine.start_container(probe_kwargs(image))
        exit_code = await engine.wait(container_id, PROBE_TIMEOUT_S)
        stdout = (await engine.logs(container_id))[0] if exit_code is not None else ""
    except EngineError as exc:
        return "FAIL", f"probe container in {image} could not run: {str(exc)[:300]}"
    finally:
        if container_id is not None:
            await asyncio.shield(engine.remove(container_id))
    return probe_verdict(exit_code, stdout, image)
