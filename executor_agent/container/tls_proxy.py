"""Streaming jobs: the server certificate, the mutual-TLS proxy and the /health wait (behaviour.md §2.6).

The stock executor runs an `nginx:1.26-alpine` container in front of the job. We have no
such image on every host and need none: the agent itself terminates TLS (client
certificate REQUIRED, the user's certificate from `streaming_details.public_key` the only
trusted CA) and forwards plain bytes to `<job container ip>:8000` on the job's
internal podman network. The host reaches that network directly (the bridge lives in
the root namespace), while the job has no route out of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
import shutil
import ssl
import stat
from dataclasses import dataclass, field
from pathlib import Path

from agent_common.private import PRIVATE_FILE_MODE, private_open

log = logging.getLogger(__name__)

JOB_PORT = 8000  # stock JOB_CONTAINER_PORT: the job serves plain HTTP here
RSA_KEY_BITS = 2048
RSA_PUBLIC_EXPONENT = 65537
CERT_VALID_DAYS = 365
CERT_COMMON_NAME = "localhost"
KEY_FILE_MODE = PRIVATE_FILE_MODE  # 0600: the private key is the agent's alone
SSL_DIR_MODE = 0o700  # the job's ssl dir: the agent's alone too
CERT_FILE, KEY_FILE, CLIENT_CA_FILE = "certificate.pem", "private_key.pem", "client.crt"  # stock names
TLS_HANDSHAKE_TIMEOUT_S = 10.0  # a client that never finishes its handshake is dropped after this
UPSTREAM_CONNECT_TIMEOUT_S = 5.0  # the job container is on this host; longer means it is not listening
PIPE_CHUNK_BYTES = 64 * 1024
HEALTH_PATH = "/health"
HEALTH_REQUEST_TIMEOUT_S = 2.0  # one /health probe
HEALTH_FAILED_MESSAGE = "Streaming job health check failed"


class StreamingError(Exception):
    """The streaming server could not be set up on this host (our fault, not the job's)."""


@dataclass(frozen=True)
class ServerCert:
    cert_pem: str
    key_pem: str


def make_server_cert(executor_ip: str | None) -> ServerCert:
    """Self-signed RSA-2048/SHA-256 certificate, CN localhost, SAN localhost + executor_ip
    (an IP SAN when it parses as an IP, else a DNS SAN), valid 365 days: what the stock
    executor makes, so users pinning it see the same shape."""
    # cryptography here, not at the top: only streaming jobs make certificates, and it costs ~7 MiB resident.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=RSA_KEY_BITS)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CERT_COMMON_NAME)])
    sans: list[x509.GeneralName] = [x509.DNSName(CERT_COMMON_NAME)]
    if executor_ip:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(executor_ip)))
        except ValueError:
            sans.append(x509.DNSName(executor_ip))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=CERT_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption()).decode()
    return ServerCert(cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem)


@dataclass(frozen=True)
class CertFiles:
    """The endpoint's files in the job's ssl dir; they outlive an agent restart so the next
    agent serves the certificate the validator pinned."""

    cert_path: Path
    key_path: Path
    client_ca_path: Path

    @classmethod
    def in_dir(cls, ssl_dir: Path) -> CertFiles:
        return cls(ssl_dir / CERT_FILE, ssl_dir / KEY_FILE, ssl_dir / CLIENT_CA_FILE)


def write_cert_files(cert: ServerCert, client_ca_pem: str, ssl_dir: Path) -> CertFiles:
    """The stock layout (certificate.pem, private_key.pem, client.crt) in a 0700 dir; the
    key is private (0600) from its first byte, whatever the process umask."""
    ssl_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(ssl_dir, SSL_DIR_MODE)
    files = CertFiles.in_dir(ssl_dir)
    files.cert_path.write_text(cert.cert_pem)
    with private_open(files.key_path) as f:
        f.write(cert.key_pem.encode())
    files.client_ca_path.write_text(client_ca_pem)
    return files


def load_server_context(files: CertFiles) -> ssl.SSLContext:
    """TLS server context that refuses any client without a certificate signed by (or
    equal to) the user's certificate. A key file that is a link, or that others could
    read, is refused: it may no longer be ours alone (`load_cert_chain` reads only files)."""
    try:
        info = os.lstat(files.key_path)
        client_ca_pem = files.client_ca_path.read_text()
    except OSError as exc:
        raise StreamingError(f"certificate files unreadable: {exc}") from None
    if not stat.S_ISREG(info.st_mode) or stat.S_IMODE(info.st_mode) & ~KEY_FILE_MODE:
        raise StreamingError(f"private key {files.key_path} is not a private regular file "
                             f"(mode {stat.S_IMODE(info.st_mode):o}, want {KEY_FILE_MODE:o})")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(files.cert_path, files.key_path)
    except (OSError, ssl.SSLError) as exc:
        raise StreamingError(f"server certificate or key unusable: {exc}") from None
    try:
        ctx.load_verify_locations(cadata=client_ca_pem)
    except ssl.SSLError as exc:
        raise StreamingError(f"streaming_details.public_key is not a PEM certificate: {exc}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(cert: ServerCert, client_ca_pem: str, ssl_dir: Path) -> tuple[ssl.SSLContext, CertFiles]:
    """Write the files and load the context from them (a new streaming job)."""
    files = write_cert_files(cert, client_ca_pem, ssl_dir)
    return load_server_context(files), files


def read_server_cert(files: CertFiles) -> ServerCert:
    """The certificate the validator pinned (what V0StreamingJobReadyRequest carried), with its key."""
    try:
        return ServerCert(files.cert_path.read_text(), files.key_path.read_text())
    except OSError as exc:
        raise StreamingError(f"certificate files unreadable: {exc}") from None


@dataclass
class TlsProxy:
    """Accepts mutual-TLS connections on one host port and pipes each to the job.

    The handshake (and so the client-certificate check) completes before a connection
    reaches `_serve`: a client without the right certificate never touches the job."""

    context: ssl.SSLContext
    upstream_host: str
    upstream_port: int = JOB_PORT
    port: int = 0
    _server: asyncio.Server | None = None
    _pipes: set[asyncio.Task[None]] = field(default_factory=set)
    connections: int = 0

    async def start(self, bind_host: str, port_range: tuple[int, int]) -> int:
        """Listen on the first free port of the range (inclusive); returns it."""
        low, high = port_range
        for port in range(low, high + 1):
            try:
                await self.listen(bind_host, port)
            except OSError:
                continue
            return port
        raise StreamingError(f"no free streaming port in {low}-{high} on {bind_host}; widen [streaming] port_range")

    async def listen(self, bind_host: str, port: int) -> None:
        """Listen on exactly this port (a restarted agent re-opens the announced one); raises
        OSError when it is taken. SO_REUSEADDR (asyncio's default here) lets the port be
        re-bound while the previous agent's closed connections sit in TIME_WAIT."""
        self._server = await asyncio.start_server(
            self._serve, bind_host, port, ssl=self.context, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S)
        self.port = port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._pipes.add(task)
        self.connections += 1
        try:
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(self.upstream_host, self.upstream_port), UPSTREAM_CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError):
                log.info("streaming upstream unreachable host=%s port=%d", self.upstream_host, self.upstream_port)
                return
            # The job's side decides when a connection is over: TLS has no half-close, so
            # once the job closes (or resets) we close the client's side as well.
            upward = asyncio.create_task(_pipe(reader, up_writer))
            try:
                await _pipe(up_reader, writer)
            finally:
                upward.cancel()
                await asyncio.gather(upward, return_exceptions=True)
                await _close(up_writer)
        finally:
            await _close(writer)
            if task is not None:
                self._pipes.discard(task)

    async def close(self) -> None:
        """Stop listening and cut every open connection (the job is over)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), TLS_HANDSHAKE_TIMEOUT_S)
            self._server = None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(PIPE_CHUNK_BYTES):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, ssl.SSLError):
        pass


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


async def health_ok(host: str, port: int = JOB_PORT) -> bool:
    """One plain `GET /health` to the job; True on status 200."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(HEALTH_REQUEST_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {HEALTH_PATH} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            status = await reader.readline()
        parts = status.split()
        return len(parts) >= 2 and parts[1] == b"200"
    except (OSError, TimeoutError, ValueError):
        return False
    finally:
        if writer is not None:
            await _close(writer)


def remove_ssl_dir(ssl_dir: Path) -> None:
    shutil.rmtree(ssl_dir, ignore_errors=True)
