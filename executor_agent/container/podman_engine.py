"""A small async interface over podman-py, the only place that talks to podman.

podman-py is synchronous (requests), so every call runs in a worker thread. Job
containers are created and started through the podman API *service* (podman.socket),
never as children of this process, so they survive an agent restart; the job uuid
label is how a restarted agent (or a test) finds them again.

Podman 4.3 gotchas handled here (see test-environment.md §1):
* `images.pull()` does not raise for a missing image: we check `images.exists()` after.
* `wait()` polls every 250 ms by default: we pass `interval="20ms"`.
* `wait(timeout=...)` raises a requests read timeout dressed as APIError: we bound the
  wait with asyncio instead and kill the container, which ends the blocked thread.
* `container.logs(stream=False)` loads the whole log into memory: we stream the frames
  into a bounded `LogCapture` instead (a job may print gigabytes).
* an unresolvable CDI device (no GPU spec in /etc/cdi) fails at *start* with a 500 whose
  text names CDI: we raise `CdiUnavailable` so the job reports what to fix.
* `userns` nsmode `auto` through the API is silently ignored unless `idmappings` asks for
  AutoUserNs too, and then the container runs with the host's identity map: after create we
  read the map back from inspect and refuse to start a container whose root is host root
  (`UsernsUnavailable`). Without /etc/subuid and /etc/subgid ranges for `containers`, create
  fails with "could not find enough available IDs": `UsernsUnavailable` as well.
* removing a just-exited container that had a user namespace sometimes answers 500 "unlinkat
  .../userdata/shm: device or resource busy" although podman did remove it (the next call
  says 404): `remove` asks again, up to REMOVE_ATTEMPTS times.

This module is the only importer of podman-py: its errors become the engine's own
(`container/engine.py`) here, and `Podman` is the `ContainerEngine` the agent runs with.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import logging
import os
import uuid
from typing import Any

import podman
import requests
from podman.errors import ImageNotFound, NotFound, PodmanError

from executor_agent.container.engine import (
    CdiUnavailable,
    ContainerState,
    EngineError,
    EngineNotFound,
    ImageInfo,
    UsernsUnavailable,
)
from executor_agent.container.job_spec import JOB_LABEL, JobContainerSpec, normalize_image
from executor_agent.outputs.collect import FrameDecoder, LogCapture

log = logging.getLogger(__name__)

WAIT_SLICE_S = 1.0  # longest one blocking podman wait may hold a worker thread
MIN_WAIT_SLICE_S = 0.05
WAIT_POLL_INTERVAL = "20ms"  # podman-py's default of 250 ms adds up to a quarter second per job
KILL_WAIT_S = 10.0  # after SIGKILL the container must be gone from `running` within this bound
NOT_RUNNING_TEXTS = ("can only kill running containers", "not running", "state improper")
LOG_READ_CHUNK_BYTES = 256 * 1024  # one read from the log stream; frames are sliced out of it
NETWORK_PREFIX_LEN = 24  # one /24 per streaming job network
NETWORK_CREATE_ATTEMPTS = 64  # subnets tried before giving up (others are held by other networks)
REMOVE_ATTEMPTS = 5  # a "device or resource busy" remove is asked again; measured: the second always answered
REMOVE_RETRY_DELAY_S = 0.2
NO_SUBIDS_TEXT = "could not find enough available IDs"  # podman 4.3 create without subordinate ids
USERNS_HELP = ("add subordinate ids for podman's `containers` user: echo containers:2147483647:2147483648 | "
               "tee -a /etc/subuid /etc/subgid (the executor-agent package does this), then restart podman")


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _timed_out(exc: BaseException) -> bool:
    """True when the error is podman-py's request timeout (APIError <- ReadTimeout)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, requests.exceptions.Timeout):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _check_userns(attrs: dict[str, Any]) -> None:
    """Raise UsernsUnavailable unless the created container's uid and gid maps put its root
    on a host id other than 0 (inspect's HostConfig.IDMappings, "container:host:size")."""
    mappings = (attrs.get("HostConfig") or {}).get("IDMappings") or {}
    for kind in ("UidMap", "GidMap"):
        entries = [str(e).split(":") for e in mappings.get(kind) or []]
        root = next((int(host) for inner, host, _size in (e for e in entries if len(e) == 3) if inner == "0"), None)
        if root is None or root == 0:
            raise UsernsUnavailable(f"podman created the container without a user namespace ({kind}: "
                                    f"{mappings.get(kind)!r}); refusing to run a job as host root; {USERNS_HELP}")


class Podman:
    """Async facade over one podman API service; a `ContainerEngine`. Every podman-py and
    requests error is translated once, in `_call`, into EngineError (EngineNotFound for a
    404), so no caller knows podman's exception types."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client = podman.PodmanClient(base_url=url)

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        what = f"podman {getattr(fn, '__name__', fn)}"
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except (NotFound, ImageNotFound) as exc:
            raise EngineNotFound(f"{what}: {exc}") from exc
        except (PodmanError, OSError) as exc:  # podman-py's APIError is a requests error, hence an OSError
            raise EngineError(f"{what}: {exc}") from exc

    async def ping(self) -> bool:
        try:
            return bool(await self._call(self._client.ping))
        except EngineError:
            return False

    async def version(self) -> str:
        """The podman version the service reports (for `executor-agent doctor`)."""
        info = await self._call(self._client.version)
        return str((info or {}).get("Version", "?"))

    async def image_exists(self, image: str) -> bool:
        return bool(await self._call(self._client.images.exists, normalize_image(image)))

    async def ensure_image(self, image: str, *, pull: bool, timeout_s: float) -> bool:
        """True when the image is present locally, pulling it first if allowed."""
        ref = normalize_image(image)
        if await self.image_exists(ref):
            return True
        if not pull:
            return False
        repo, _, tag = ref.rpartition(":") if "@" not in ref else (ref, "", None)
        try:
            async with asyncio.timeout(timeout_s):
                await self._call(self._client.images.pull, repo, tag=tag or None)
        except (EngineError, TimeoutError) as exc:
            log.warning("image pull failed image=%s error=%s", ref, str(exc).replace("\n", " ")[:200])
            return False
        return await self.image_exists(ref)

    async def start_job(self, spec: JobContainerSpec) -> str:
        """Create and start the job container; returns its id. On a failed start the
        created container is removed so nothing half-made is left behind."""
        return await self.start_container(spec.create_kwargs())

    async def start_container(self, kwargs: dict[str, Any]) -> str:
        """Create and start from podman-py `containers.create` kwargs (after a job-runner
        plugin had its say); returns the id. A container asked to have a user namespace is
        started only once inspect shows one (module docstring)."""
        try:
            # a copy: podman-py appends to the lists inside (a bind's extended_mode)
            container = await self._call(self._client.containers.create, **copy.deepcopy(kwargs))
        except EngineError as exc:
            if NO_SUBIDS_TEXT in str(exc):
                raise UsernsUnavailable(f"{exc}; {USERNS_HELP}") from exc
            raise
        try:
            if (kwargs.get("idmappings") or {}).get("AutoUserNs"):
                _check_userns(container.attrs)
            await self._call(container.start)
        except EngineError as exc:
            await self.remove(container.id)
            if "CDI" in str(exc):
                raise CdiUnavailable(str(exc)) from exc
            raise
        return str(container.id)

    async def wait(self, container_id: str, timeout_s: float) -> int | None:
        """Exit code, or None when the container still runs after timeout_s.

        podman's wait blocks a worker thread, and a stopping agent must not be held by one
        (systemd would SIGKILL it after TimeoutStopSec), so the wait is made in slices of
        at most WAIT_SLICE_S, each ended by podman-py's own request timeout.
        """
        container = await self._get(container_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (left := deadline - loop.time()) > 0:
            try:
                return int(await self._call(container.wait, condition="exited", interval=WAIT_POLL_INTERVAL,
                                            timeout=max(MIN_WAIT_SLICE_S, min(WAIT_SLICE_S, left))))
            except EngineError as exc:
                if not _timed_out(exc):
                    raise
        return None

    async def kill(self, container_id: str) -> None:
        """SIGKILL (no grace: a job over its limit has had its time); ignores a gone container."""
        try:
            container = await self._get(container_id)
            await self._call(container.kill, signal="SIGKILL")
        except EngineNotFound:
            return
        except EngineError as exc:
            # podman 4.3 answers 500 "can only kill running containers ... state improper"
            if not any(text in str(exc) for text in NOT_RUNNING_TEXTS):
                raise
            return
        await self.wait(container_id, KILL_WAIT_S)

    async def logs(self, container_id: str) -> tuple[str, str]:
        """stdout and stderr as message texts (stock truncation, invalid bytes replaced);
        memory stays bounded however much the container printed."""
        out, err = LogCapture(), LogCapture()
        await self.capture_logs(container_id, out, err)
        return out.text(), err.text()

    async def capture_logs(self, container_id: str, stdout_capture: LogCapture,
                           stderr_capture: LogCapture) -> None:
        """Stream stdout and stderr (separately, after exit) into bounded captures."""

        def read(stdout: bool, capture: LogCapture) -> None:
            params = {"stdout": stdout, "stderr": not stdout, "follow": False}
            response = self._client.api.get(f"/containers/{container_id}/logs", params=params, stream=True)
            try:
                response.raise_for_status()
                decoder = FrameDecoder(capture)
                for chunk in response.iter_content(LOG_READ_CHUNK_BYTES):
                    decoder.feed(chunk)
            finally:
                response.close()

        await self._call(read, True, stdout_capture)
        await self._call(read, False, stderr_capture)

    async def disk_bytes(self, container_id: str) -> int:
        """What the container wrote to this host's disk outside its binds: its root
        filesystem layer (SizeRw) plus its log file."""

        def measure() -> int:
            response = self._client.api.get(f"/containers/{container_id}/json", params={"size": True})
            response.raise_for_status()
            attrs = response.json()
            total = int(attrs.get("SizeRw") or 0)
            log_path = ((attrs.get("HostConfig") or {}).get("LogConfig") or {}).get("Path")
            if log_path:
                try:
                    total += os.path.getsize(log_path)
                except OSError:
                    pass
            return total

        return int(await self._call(measure))

    async def state(self, container_id: str) -> ContainerState | None:
        try:
            container = await self._get(container_id)
        except EngineNotFound:
            return None
        st = container.attrs.get("State", {})
        code = st.get("ExitCode")
        return ContainerState(str(container.id), str(st.get("Status", "")), int(code) if code is not None else None,
                              int(st.get("Pid") or 0) or None)

    async def remove(self, container_id: str) -> None:
        """Force-remove; a container that is already gone is fine. Asked again on an error
        while the container is still there (podman 4.3's spurious "busy", module docstring)."""
        for attempt in range(1, REMOVE_ATTEMPTS + 1):
            try:
                await self._call(self._client.containers.remove, container_id, force=True)
                return
            except EngineNotFound:
                return
            except EngineError:
                if not await self._call(self._client.containers.exists, container_id):
                    return  # the error was spurious: it is gone
                if attempt == REMOVE_ATTEMPTS:
                    raise
                log.debug("container remove retried container=%s attempt=%d", container_id, attempt)
                await asyncio.sleep(REMOVE_RETRY_DELAY_S)

    async def job_containers(self, job_uuid: str | None = None) -> list[ContainerState]:
        """Containers carrying our job label (all of them, or one job's)."""
        label = f"{JOB_LABEL}={job_uuid}" if job_uuid else JOB_LABEL
        found = await self._call(self._client.containers.list, all=True, filters={"label": label})
        result = []
        for c in found:
            st = c.attrs.get("State")
            status = st if isinstance(st, str) else (st or {}).get("Status", "")
            result.append(ContainerState(str(c.id), str(status), c.attrs.get("ExitCode")))
        return result

    async def list_images(self) -> list[ImageInfo]:
        def fetch() -> list[ImageInfo]:
            response = self._client.api.get("/images/json", params={"all": False})
            response.raise_for_status()
            return [ImageInfo(
                image_id=str(item.get("Id", "")),
                names=tuple(n for n in (item.get("RepoTags") or item.get("Names") or []) if n and "<none>" not in n),
                digests=tuple(item.get("RepoDigests") or []),
                size_bytes=int(item.get("Size") or 0),
                created_unix=float(item.get("Created") or 0),
            ) for item in response.json()]

        return list(await self._call(fetch))

    async def image_ids_in_use(self) -> set[str]:
        """Images of every container podman knows (running or not, ours or not)."""
        found = await self._call(self._client.containers.list, all=True)
        return {str(c.attrs.get("ImageID") or c.attrs.get("Image") or "") for c in found} - {""}

    async def image_id(self, ref: str) -> str | None:
        try:
            image = await self._call(self._client.images.get, normalize_image(ref))
        except EngineNotFound:
            return None
        return str(image.id)

    async def remove_image(self, ref: str) -> None:
        """Untag or remove one image name (or id); never forced, so an image a container
        uses stays. A name that is already gone is fine."""
        try:
            await self._call(self._client.images.remove, ref, force=False)
        except EngineNotFound:
            pass

    async def graph_root(self) -> str:
        info = await self._call(self._client.info)
        return str((info.get("store") or {}).get("graphRoot") or "/var/lib/containers/storage")

    async def create_internal_network(self, name: str, job_uuid: str, subnet_pool: str) -> str:
        """A bridge network with no route out (`internal`, no DNS), labelled with the job
        uuid; returns its subnet. The subnet and gateway are given explicitly: podman 4.3
        gives an API-made internal network without DNS no gateway, so the host (our TLS
        proxy) would have no address on the bridge and no route to the job. Candidates are
        the pool's /24s from a point picked by the job uuid; one podman says is in use is
        skipped."""
        subnets = list(ipaddress.ip_network(subnet_pool).subnets(new_prefix=NETWORK_PREFIX_LEN))
        start = int(uuid.UUID(job_uuid).int % len(subnets)) if _is_uuid(job_uuid) else 0
        for i in range(min(len(subnets), NETWORK_CREATE_ATTEMPTS)):
            subnet = subnets[(start + i) % len(subnets)]
            try:
                await self._call(self._client.networks.create, name, internal=True, dns_enabled=False,
                                 labels={JOB_LABEL: job_uuid},
                                 subnets=[{"subnet": str(subnet), "gateway": str(next(subnet.hosts()))}])
                return str(subnet)
            except EngineError as exc:
                if "already" not in str(exc) and "overlap" not in str(exc):
                    raise
        raise EngineError(f"no free /{NETWORK_PREFIX_LEN} in subnet pool {subnet_pool}; widen [streaming] subnet_pool")

    async def remove_network(self, name: str) -> None:
        """Remove a network; one that is already gone is fine."""
        try:
            await self._call(self._client.networks.remove, name, force=True)
        except EngineNotFound:
            pass

    async def network_exists(self, name: str) -> bool:
        return bool(await self._call(self._client.networks.exists, name))

    async def container_ip(self, container_id: str, network: str) -> str | None:
        """The container's address on one network, or None when it has none (yet)."""
        container = await self._get(container_id)
        nets = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
        ip = (nets.get(network) or {}).get("IPAddress")
        return str(ip) if ip else None

    async def job_label_of(self, container_id: str) -> str | None:
        container = await self._get(container_id)
        return (container.labels or {}).get(JOB_LABEL)

    async def _get(self, container_id: str) -> Any:
        return await self._call(self._client.containers.get, container_id)

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)


__all__ = ["JOB_LABEL", "Podman"]  # JOB_LABEL: tests find job containers by it
