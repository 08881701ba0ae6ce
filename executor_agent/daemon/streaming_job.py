"""One streaming job's network side: certificate, internal network, TLS proxy, readiness.

`JobRun` drives it: `prepare()` right after V0ExecutorReadyRequest (the stock executor
makes its certificate there too), `network` names the job container's network,
`serve()` once the container runs (proxy up, /health answered, then the caller sends
V0StreamingJobReadyRequest), `close()` after the terminal message. Kept apart from
job.py so the ordinary batch path stays free of TLS and network code.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from executor_agent.container import tls_proxy as tls
from executor_agent.container.engine import ContainerEngine
from executor_agent.executor_config import StreamingSettings
from horde_protocol.structs import StreamingDetails

log = logging.getLogger(__name__)

NETWORK_PREFIX = "ch-"
CONTAINER_IP_TIMEOUT_S = 5.0  # podman reports the address right after start; allow a slow API
CONTAINER_IP_POLL_S = 0.1


class HealthCheckFailed(Exception):
    """The job never answered 200 on /health in time (the job's fault: stock `timeout`)."""

    def __init__(self, exit_code: int | None = None) -> None:
        super().__init__(tls.HEALTH_FAILED_MESSAGE)
        self.exit_code = exit_code


def network_name(job_uuid: str) -> str:
    return f"{NETWORK_PREFIX}{job_uuid}"


class StreamingSession:
    def __init__(self, job_uuid: str, details: StreamingDetails, settings: StreamingSettings, engine: ContainerEngine,
                 job_root: Path) -> None:
        self.job_uuid = job_uuid
        self.details = details
        self.settings = settings
        self.engine = engine
        self.ssl_dir = job_root / "ssl"
        self.network = network_name(job_uuid)
        self.cert: tls.ServerCert | None = None
        self.proxy: tls.TlsProxy | None = None
        self._network_made = False

    async def prepare(self) -> None:
        """Generate the server certificate (RSA keygen takes tens of ms: off the loop)."""
        self.cert = await asyncio.to_thread(tls.make_server_cert, self.details.executor_ip)

    async def create_network(self) -> None:
        """A fresh internal network for the job container; a leftover of an earlier run of
        the same job (agent crash) is removed first."""
        await self.engine.remove_network(self.network)
        subnet = await self.engine.create_internal_network(self.network, self.job_uuid, self.settings.subnet_pool)
        log.info("streaming network created job=%s network=%s subnet=%s", self.job_uuid, self.network, subnet)
        self._network_made = True

    async def serve(self, container_id: str) -> int:
        """Start the TLS proxy in front of the running job and wait for its /health;
        returns the public port. Raises HealthCheckFailed (job's fault) or
        tls.StreamingError (ours)."""
        if self.cert is None:
            await self.prepare()
        assert self.cert is not None
        job_ip = await self._container_ip(container_id)
        context = await asyncio.to_thread(tls.server_context, self.cert, self.details.public_key, self.ssl_dir)
        self.proxy = tls.TlsProxy(context, job_ip)
        port = await self.proxy.start(self.settings.bind_host, self.settings.port_range)
        log.info("streaming proxy listening job=%s port=%d upstream=%s:%d", self.job_uuid, port, job_ip, tls.JOB_PORT)
        await self._wait_healthy(container_id, job_ip)
        return port

    async def _container_ip(self, container_id: str) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONTAINER_IP_TIMEOUT_S
        while True:
            ip = await self.engine.container_ip(container_id, self.network)
            if ip:
                return ip
            if loop.time() > deadline:
                raise tls.StreamingError(f"job container has no address on network {self.network}")
            await asyncio.sleep(CONTAINER_IP_POLL_S)

    async def _wait_healthy(self, container_id: str, job_ip: str) -> None:
        """Poll GET /health until 200; a container that exits first cannot become healthy."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.health_timeout_s
        while True:
            if await tls.health_ok(job_ip):
                log.info("streaming job healthy job=%s", self.job_uuid)
                return
            state = await self.engine.state(container_id)
            if state is None or state.status in ("exited", "stopped", "dead"):
                raise HealthCheckFailed(state.exit_code if state is not None else None)
            if loop.time() + self.settings.health_poll_interval_s > deadline:
                raise HealthCheckFailed()
            await asyncio.sleep(self.settings.health_poll_interval_s)

    async def close(self, remove_network: bool = True) -> None:
        """Stop the proxy, then (once the container is gone) the network and the key files."""
        if self.proxy is not None:
            await self.proxy.close()
            log.info("streaming proxy closed job=%s port=%d connections=%d", self.job_uuid, self.proxy.port,
                     self.proxy.connections)
            self.proxy = None
        if remove_network:
            try:
                await self.engine.remove_network(self.network)
            except Exception:  # noqa: BLE001 - logged; cleanup goes on
                log.warning("network removal failed job=%s network=%s", self.job_uuid, self.network, exc_info=True)
        await asyncio.to_thread(tls.remove_ssl_dir, self.ssl_dir)

