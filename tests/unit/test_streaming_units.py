"""Streaming jobs without podman: certificate shape, config keys, container network, miner address."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from pydantic import ValidationError

from executor_agent.container.job_spec import JobContainerSpec
from executor_agent.container.tls_proxy import make_server_cert
from executor_agent.executor_config import AgentConfig, StreamingSettings
from miner_agent.miner_config import LocalExecutor, MinerConfig, SshExecutor, streaming_address

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def _sans(pem: str) -> x509.SubjectAlternativeName:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_server_cert_is_stock_shaped() -> None:
    made = make_server_cert("203.0.113.7")
    cert = x509.load_pem_x509_certificate(made.cert_pem.encode())
    assert cert.public_key().key_size == 2048
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert cert.subject.rfc4514_string() == "CN=localhost"
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 365
    sans = _sans(made.cert_pem)
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("203.0.113.7")]
    assert "PRIVATE KEY" in made.key_pem


def test_server_cert_takes_a_name_as_dns_san() -> None:
    sans = _sans(make_server_cert("gpu-1.example.org").cert_pem)
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "gpu-1.example.org"]


def test_streaming_settings_defaults_and_checks() -> None:
    s = AgentConfig().streaming
    assert (s.port_range, s.bind_host, s.health_timeout_s) == ((6000, 6999), "0.0.0.0", 25.0)
    with pytest.raises(ValidationError):
        StreamingSettings(port_range=(7000, 6000))
    with pytest.raises(ValidationError):
        StreamingSettings(subnet_pool="10.0.0.0/28")


def test_container_joins_the_job_network_only_when_streaming() -> None:
    base = dict(job_uuid="u", image="img", command=[], volume_dir=Path("/v"), output_dir=Path("/o"))
    plain = JobContainerSpec(**base).create_kwargs()
    assert plain["network_mode"] == "none" and "networks" not in plain
    streaming = JobContainerSpec(**base, network="ch-u").create_kwargs()
    assert streaming["networks"] == {"ch-u": {}} and "network_mode" not in streaming


def test_streaming_address_defaults() -> None:
    local = LocalExecutor(name="l")
    ssh = SshExecutor(name="s", mode="ssh", host="10.1.2.3", key_path=Path("/k"), host_key=HOST_KEY)
    assert streaming_address(local) == "127.0.0.1"
    assert streaming_address(local, "auto") == "127.0.0.1"
    assert streaming_address(local, "198.51.100.4") == "198.51.100.4"
    assert streaming_address(ssh, "198.51.100.4") == "10.1.2.3"
    assert streaming_address(local.model_copy(update={"public_address": "gpu.example"})) == "gpu.example"
    cfg = MinerConfig.model_validate({"chain": {"announce_ip": "198.51.100.4"},
                                      "executors": [{"name": "l", "mode": "local"}]})
    assert cfg.executors[0].public_address == "198.51.100.4"
