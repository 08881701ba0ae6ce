"""One streaming job's network side: certificate, internal network, TLS proxy, readiness.

`JobRun` drives it: `prepare()` right after V0ExecutorReadyRequest (the stock executor
makes its certificate there too), `network` names the job container's network,
`serve()` once the container runs (proxy up, /health answered, then the caller sends
V0StreamingJobReadyRequest), `close()` after the terminal message. Kept apart from
job.py so the ordinary batch path stays free of TLS and network code.

Restarts: the job container outlives the agent, and so must its endpoint, since the
validator pinned the port and certificate it was sent. Once /health answers, `serve()`
records both in running.json; a restarted agent's registry calls `resume()`, which
re-opens that port with that certificate (no second ready message: the first is in the
event log). The key files stay in `<job>/ssl` as long as the job is unfinished, so
`close()` leaves them and `discard_endpoint_files()` removes them once it has ended.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from executor_agent.container import tls_proxy as tls
from executor_agent.container.engine import ContainerEngine
from executor_agent.daemon.recovery import StreamingEndpoint, record_streaming_endpoint
from executor_agent.executor_config import StreamingSettings
from horde_protocol.structs import StreamingDetails

log = logging.getLogger(__name__)

NETWORK_PREFIX = "ch-"
SSL_DIR = "ssl"  # <job>/ssl: certificate.pem, private_key.pem (0600), client.crt
CONTAINER_IP_TIMEOUT_S = 5.0  # podman reports the address right after start; allow a slow API
CONTAINER_IP_POLL_S = 0.1


class HealthCheckFailed(Exception):
    """The job never answered 200 on /health in time (the job's fault: stock `timeout`)."""

    def __init__(self, exit_code: int | None = None) -> None:
        super().__init__(tls.HEALTH_FAILED_MESSAGE)
        self.exit_code = exit_code


def network_name(job_uuid: str) -> str:
    return f"{NETWORK_PREFIX}{job_uuid}"


def discard_endpoint_files(job_root: Path) -> None:
    """The job has ended: its key is of no further use to anyone, and must not linger."""
    tls.remove_ssl_dir(job_root / SSL_DIR)


class StreamingSession:
    def __init__(self, job_uuid: str, details: StreamingDetails, settings: StreamingSettings, engine: ContainerEngine,
                 job_root: Path) -> None:
        self.job_uuid = job_uuid
        self.details = details
        self.settings = settings
        self.engine = engine
        self.job_root = job_root
        self.ssl_dir = job_root / SSL_DIR
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
        context, files = await asyncio.to_thread(tls.server_context, self.cert, self.details.public_key, self.ssl_dir)
        self.proxy = tls.TlsProxy(context, job_ip)
        port = await self.proxy.start(self.settings.bind_host, self.settings.port_range)
        log.info("streaming proxy listening job=%s port=%d upstream=%s:%d", self.job_uuid, port, job_ip, tls.JOB_PORT)
        await self._wait_healthy(container_id, job_ip)
        await self._record(port, files)
        return port

    async def _record(self, port: int, files: tls.CertFiles) -> None:
        """Put the endpoint into running.json, right before the caller announces it. A failed
        write costs only the endpoint's survival of an agent restart, not the job: logged."""
        endpoint = StreamingEndpoint(port=port, cert_path=files.cert_path, key_path=files.key_path,
                                     client_ca_path=files.client_ca_path)
        write = asyncio.ensure_future(asyncio.to_thread(record_streaming_endpoint, self.job_root, endpoint))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            # the job's cleanup deletes running.json next: let this write land first, or it would reappear
            await asyncio.gather(write, return_exceptions=True)
            raise
        except OSError:
            log.warning("streaming endpoint not recorded; it will not survive an agent restart job=%s",
                        self.job_uuid, exc_info=True)

    async def resume(self, endpoint: StreamingEndpoint, container_id: str) -> None:
        """After an agent restart: listen again on the announced port with the announced
        certificate and proxy to the still-running job. Raises tls.StreamingError saying
        why not (files gone or not private, no container address, the port taken)."""
        files = tls.CertFiles(endpoint.cert_path, endpoint.key_path, endpoint.client_ca_path)
        ssl_dir = self.ssl_dir.resolve()
        for path in (files.cert_path, files.key_path, files.client_ca_path):
            if path.resolve().parent != ssl_dir:
                raise tls.StreamingError(f"recorded certificate file {path} is outside {self.ssl_dir}")
        context = await asyncio.to_thread(tls.load_server_context, files)
        self.cert = await asyncio.to_thread(tls.read_server_cert, files)
        job_ip = await self._container_ip(container_id)
        proxy = tls.TlsProxy(context, job_ip)
        try:
            await proxy.listen(self.settings.bind_host, endpoint.port)
        except OSError as exc:
            raise tls.StreamingError(f"port {endpoint.port} on {self.settings.bind_host} could not be re-bound: "
                                     f"{exc.strerror or exc}") from None
        self.proxy = proxy
        log.info("streaming proxy resumed job=%s port=%d upstream=%s:%d", self.job_uuid, endpoint.port, job_ip,
                 tls.JOB_PORT)

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
        """Stop the proxy, then (once the container is gone) the network. The key files stay:
        on an agent stop the next agent serves with them; once the job has ended the
        registry discards them (`discard_endpoint_files`)."""
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

