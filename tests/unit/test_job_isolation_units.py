"""The job container's isolation as data: what create_kwargs asks podman for, what survives a
job-runner plugin, and the engine's refusal of a container whose root is host root. Real
podman proves the effect in tests/integration/test_job_isolation.py."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from executor_agent.container.engine import UsernsUnavailable
from executor_agent.container.job_spec import (
    BIND_OPTIONS,
    JOB_CAPABILITIES,
    USERNS_SIZE,
    JobContainerSpec,
    enforce_isolation,
    isolation_kwargs,
)
from executor_agent.container.podman_engine import _check_userns
from executor_agent.daemon.failures import HordeFailure
from executor_agent.daemon.job_container import USERNS_MESSAGE, JobContainer
from executor_agent.daemon.jobdirs import JOBS_DIR_MODE, JobDirs, prepare_jobs_dir
from executor_agent.executor_config import AgentConfig


def spec(tmp_path: Path, **kw: Any) -> JobContainerSpec:
    return JobContainerSpec(job_uuid="u", image="img", command=["true"], volume_dir=tmp_path / "v",
                            output_dir=tmp_path / "o", **kw)


def test_create_kwargs_ask_for_a_user_namespace_no_new_privileges_and_few_capabilities(tmp_path: Path) -> None:
    kwargs = spec(tmp_path, gpu_preset="nvidia_all").create_kwargs()
    assert kwargs["userns_mode"] == "auto"
    assert kwargs["idmappings"] == {"AutoUserNs": True, "AutoUserNsOpts": {"Size": USERNS_SIZE}}
    assert kwargs["no_new_privileges"] is True and kwargs["privileged"] is False
    assert kwargs["cap_drop"] == ["ALL"] and kwargs["cap_add"] == list(JOB_CAPABILITIES)
    assert set(JOB_CAPABILITIES) == {"CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "SETGID", "SETUID"}
    assert kwargs["devices"] == ["nvidia.com/gpu=all"]  # the GPU preset is untouched by the isolation
    assert "security_opt" not in kwargs  # podman-py would send it as SELinux options


def test_every_bind_is_nosuid_nodev_and_keeps_its_mode(tmp_path: Path) -> None:
    kwargs = spec(tmp_path, artifacts_dir=tmp_path / "a", artifacts_target="/art",
                  script_path=tmp_path / "s.py").create_kwargs()
    assert "mounts" not in kwargs  # podman-py's `mounts` cannot carry nosuid/nodev
    binds = {entry["bind"]: entry for entry in kwargs["volumes"].values()}
    assert {target: entry["mode"] for target, entry in binds.items()} == {
        "/volume": "ro", "/output": "rw", "/art": "rw", "/script.py": "ro"}
    assert all(entry["extended_mode"] == list(BIND_OPTIONS) == ["nosuid", "nodev"] for entry in binds.values())
    assert str(tmp_path / "o") in kwargs["volumes"]


def test_relative_job_paths_become_absolute_binds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    kwargs = JobContainerSpec(job_uuid="u", image="img", command=[], volume_dir=Path("jobs/u/volume"),
                              output_dir=Path("jobs/u/output")).create_kwargs()
    # a key without a leading "/" would be taken by podman-py for a named volume
    assert sorted(kwargs["volumes"]) == [str(tmp_path / "jobs/u/output"), str(tmp_path / "jobs/u/volume")]


def test_enforce_isolation_leaves_our_own_kwargs_alone(tmp_path: Path) -> None:
    kwargs = spec(tmp_path).create_kwargs()
    before = repr(kwargs)
    assert enforce_isolation(kwargs) == []
    assert repr(kwargs) == before


def test_enforce_isolation_undoes_what_a_plugin_weakened(tmp_path: Path) -> None:
    kwargs = spec(tmp_path).create_kwargs()
    kwargs.update(privileged=True, userns_mode="host", cap_add=["SYS_ADMIN"], cap_drop=[],
                  no_new_privileges=False, security_opt=["label=disable"])
    kwargs.pop("idmappings")
    kwargs["volumes"][str(tmp_path / "o")]["extended_mode"] = []
    kwargs["mounts"] = [{"type": "bind", "source": "/srv/models", "target": "/models", "read_only": True},
                        {"type": "tmpfs", "target": "/scratch"}]
    changed = enforce_isolation(kwargs)
    assert set(changed) >= {"privileged", "userns_mode", "idmappings", "cap_add", "cap_drop", "no_new_privileges",
                            "mounts[/models]", f"volumes[{tmp_path / 'o'}]"}
    assert {k: kwargs[k] for k in isolation_kwargs()} == isolation_kwargs()
    assert "security_opt" not in kwargs
    assert kwargs["volumes"]["/srv/models"] == {"bind": "/models", "mode": "ro", "extended_mode": ["nosuid", "nodev"]}
    assert kwargs["volumes"][str(tmp_path / "o")]["extended_mode"] == ["nosuid", "nodev"]
    assert kwargs["mounts"] == [{"type": "tmpfs", "target": "/scratch"}]  # podman's tmpfs is nosuid,nodev already


@pytest.mark.parametrize("mappings", [
    None,  # podman 4.3 through the API with nsmode auto alone: no map at all
    {"UidMap": ["0:0:4294967295"], "GidMap": ["0:0:4294967295"]},  # the identity map
    {"UidMap": ["0:2147483647:65536"], "GidMap": ["0:0:65536"]},  # gid 0 still host root's group
    {"UidMap": ["1:2147483647:65536"], "GidMap": ["1:2147483647:65536"]},  # container root not mapped
])
def test_the_engine_refuses_a_container_whose_root_is_host_root(mappings: dict[str, list[str]] | None) -> None:
    with pytest.raises(UsernsUnavailable, match="refusing to run a job as host root"):
        _check_userns({"HostConfig": {"IDMappings": mappings}})


def test_the_engine_accepts_an_unprivileged_root() -> None:
    _check_userns({"HostConfig": {"IDMappings": {"UidMap": ["0:2147483647:65536"],
                                                 "GidMap": ["0:2147483647:65536"]}}})


class NoUsernsEngine:
    async def start_container(self, kwargs: dict[str, Any]) -> str:
        raise UsernsUnavailable("could not find enough available IDs")


async def test_no_user_namespace_is_a_horde_failure_that_says_what_to_fix(tmp_path: Path) -> None:
    container = JobContainer("u", JobDirs(tmp_path / "jobs" / "u"), AgentConfig(), NoUsernsEngine())  # type: ignore[arg-type]
    with pytest.raises(HordeFailure) as caught:
        await container.start(spec(tmp_path).create_kwargs(), "none")
    assert caught.value.message == USERNS_MESSAGE and "/etc/subuid" in USERNS_MESSAGE
    assert "could not find enough available IDs" in caught.value.context["podman_error"]


def test_jobs_dir_is_closed_to_other_users_whatever_was_there(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir(mode=0o755)
    jobs.chmod(0o755)  # what an older version (or the umask) left
    prepare_jobs_dir(jobs)
    assert stat.S_IMODE(jobs.stat().st_mode) == JOBS_DIR_MODE == 0o700
    jobs.chmod(0o755)
    JobDirs(jobs / "u").create()  # each job's dirs tighten it again
    assert stat.S_IMODE(jobs.stat().st_mode) == 0o700
    fresh = tmp_path / "fresh" / "jobs"
    prepare_jobs_dir(fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
