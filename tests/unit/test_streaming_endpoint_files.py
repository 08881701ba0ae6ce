"""What a streaming endpoint leaves on disk for the next agent, without podman: modes, refusals, running.json.

The restart itself (real podman, real TLS, a real SIGTERM) is tests/integration/test_streaming_restart.py;
these pin the file rules it relies on, so a regression names the rule it broke.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executor_agent.container.tls_proxy import (
    CertFiles,
    StreamingError,
    load_server_context,
    make_server_cert,
    read_server_cert,
    write_cert_files,
)
from executor_agent.daemon.deadline import Deadline, StageBudgets
from executor_agent.daemon.recovery import (
    StreamingEndpoint,
    load_running_state,
    record_streaming_endpoint,
    save_running_state,
)
from executor_agent.daemon.streaming_job import SSL_DIR, StreamingSession, discard_endpoint_files
from executor_agent.executor_config import StreamingSettings
from horde_protocol.structs import StreamingDetails
from tests.unit.test_executor_lifecycle import initial, job_request

JOB = "7b0c3a52-8a3e-4c55-9a57-2a1c4e0e9d11"


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The worst umask a library caller could run under: the files must be private anyway."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def endpoint_for(files: CertFiles, port: int = 46300) -> StreamingEndpoint:
    return StreamingEndpoint(port=port, cert_path=files.cert_path, key_path=files.key_path,
                             client_ca_path=files.client_ca_path)


def test_the_key_is_private_from_its_first_byte(tmp_path: Path, open_umask: None) -> None:
    files = write_cert_files(make_server_cert("127.0.0.1"), make_server_cert(None).cert_pem, tmp_path / SSL_DIR)
    assert mode(files.key_path) == 0o600
    assert mode(files.key_path.parent) == 0o700
    assert read_server_cert(files).cert_pem.startswith("-----BEGIN CERTIFICATE-----")
    load_server_context(files)  # the next agent can serve with what is on disk


def test_a_key_others_could_read_or_a_link_is_refused(tmp_path: Path) -> None:
    files = write_cert_files(make_server_cert(None), make_server_cert(None).cert_pem, tmp_path / SSL_DIR)
    files.key_path.chmod(0o644)
    with pytest.raises(StreamingError, match="not a private regular file"):
        load_server_context(files)
    real = tmp_path / "elsewhere.pem"
    files.key_path.rename(real)
    real.chmod(0o600)
    files.key_path.symlink_to(real)
    with pytest.raises(StreamingError, match="not a private regular file"):
        load_server_context(files)


def test_missing_files_are_a_streaming_error(tmp_path: Path) -> None:
    with pytest.raises(StreamingError, match="unreadable"):
        load_server_context(CertFiles.in_dir(tmp_path / SSL_DIR))


def test_the_endpoint_joins_running_json_privately(tmp_path: Path, open_umask: None) -> None:
    files = CertFiles.in_dir(tmp_path / SSL_DIR)
    with pytest.raises(FileNotFoundError):  # nothing to add to before the container started
        record_streaming_endpoint(tmp_path, endpoint_for(files))
    budgets = StageBudgets.from_initial(initial(JOB).executor_timing, None)
    save_running_state(tmp_path, initial(JOB), job_request(JOB), "c0ffee", Deadline(budgets, time.monotonic()),
                       time.monotonic())
    record_streaming_endpoint(tmp_path, endpoint_for(files))
    state = load_running_state(tmp_path)
    assert state is not None and state.container_id == "c0ffee"
    assert state.streaming == endpoint_for(files)
    assert mode(tmp_path / "running.json") == 0o600


def test_discarding_removes_the_key(tmp_path: Path) -> None:
    files = write_cert_files(make_server_cert(None), make_server_cert(None).cert_pem, tmp_path / SSL_DIR)
    discard_endpoint_files(tmp_path)
    assert not files.key_path.exists() and not (tmp_path / SSL_DIR).exists()
    discard_endpoint_files(tmp_path)  # an ended job without a streaming endpoint: nothing to do


class AddressOnlyEngine:
    """The one engine call resume() makes before it binds: the job container's address."""

    async def container_ip(self, container_id: str, network: str) -> str | None:
        return "127.0.0.1"


def session(tmp_path: Path, client_pem: str, engine: Any = None) -> StreamingSession:
    settings = StreamingSettings(port_range=(46300, 46309), bind_host="127.0.0.1")
    return StreamingSession(JOB, StreamingDetails(public_key=client_pem, executor_ip="127.0.0.1"), settings,
                            engine or AddressOnlyEngine(), tmp_path)


async def test_resume_refuses_files_outside_the_jobs_ssl_dir(tmp_path: Path) -> None:
    client = make_server_cert(None)
    files = write_cert_files(make_server_cert(None), client.cert_pem, tmp_path / "other")
    with pytest.raises(StreamingError, match="outside"):
        await session(tmp_path, client.cert_pem).resume(endpoint_for(files), "c0ffee")


async def test_resume_on_a_taken_port_says_which_and_why(tmp_path: Path) -> None:
    client = make_server_cert(None)
    files = write_cert_files(make_server_cert(None), client.cert_pem, tmp_path / SSL_DIR)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        streaming = session(tmp_path, client.cert_pem)
        with pytest.raises(StreamingError, match=f"port {port} on 127.0.0.1 could not be re-bound: "):
            await streaming.resume(endpoint_for(files, port), "c0ffee")
    assert streaming.proxy is None
