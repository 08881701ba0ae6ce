"""The egress guard's decisions without any socket: which addresses are refused, how URL hosts
are read, how the operator's allowlist is parsed, and that a refusal reaches the job as its own
fault (VolumeError / UploadError) before anything is sent."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import replace
from pathlib import Path

import aiohttp.connector as aiohttp_connector
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from agent_common.tomlfile import ConfigError
from executor_agent.executor_config import AgentConfig, load_config
from executor_agent.inputs.volume_fetch import VolumeError, VolumeLimits, fetch_volume
from executor_agent.inputs.volume_limits import JOB_VOLUME_MAX_BYTES, job_volume_limits
from executor_agent.net.egress import (
    EgressPolicy,
    EgressRefused,
    host_addresses,
    literal_address,
    refusal_reason,
)
from executor_agent.net.egress_http import GuardedResolver
from executor_agent.outputs.upload import UploadError, UploadLimits, upload_outputs
from horde_protocol.uploads import SingleFilePutUpload, ZipAndHttpPostUpload
from horde_protocol.volumes import HuggingfaceVolume, SingleFileVolume, ZipUrlVolume

ip = ipaddress.ip_address


@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("0.0.0.0", "unspecified"),
    ("169.254.169.254", "link-local"),
    ("10.1.2.3", "private"),
    ("172.31.255.255", "private"),
    ("192.168.0.1", "private"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("224.0.0.251", "multicast"),
    ("255.255.255.255", "reserved"),
    ("198.18.0.1", "benchmarking"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fe80::1%2", "link-local"),
    ("fd00::1", "private"),
    ("ff02::1", "multicast"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:169.254.169.254", "link-local"),
    ("::7f00:1", "reserved"),  # IPv4-compatible ::127.0.0.1
    ("64:ff9b::a9fe:a9fe", "link-local address (cloud metadata lives here) in NAT64"),
    ("2002:7f00:1::1", "loopback address in 6to4"),
    ("2001::1", "Teredo"),
])
def test_non_public_addresses_are_refused(address: str, reason: str) -> None:
    found = refusal_reason(ip(address))
    assert found is not None and reason in found


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8",
                                     "64:ff9b::808:808", "2002:808:808::1"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal_reason(ip(address)) is None


@pytest.mark.parametrize(("host", "address"), [
    ("127.0.0.1", "127.0.0.1"), ("127.1", "127.0.0.1"), ("0x7f000001", "127.0.0.1"), ("2130706433", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"), ("127.0.0.1.", "127.0.0.1"), ("[::1]", "::1"), ("::ffff:7f00:1", "::ffff:127.0.0.1"),
    ("example.com", None), ("localhost", None), ("bad.cafe", None), ("deadbeef", None),
])
def test_literal_hosts_are_read_like_inet_aton(host: str, address: str | None) -> None:
    assert literal_address(host) == (None if address is None else ip(address))


def test_allowlist_entry_forms() -> None:
    policy = EgressPolicy.from_entries(["10.20.0.0/16", "127.0.0.1:5000", "[::1]:8080", "fd00::1",
                                        "files.LAN", "registry.lan:5000"])
    policy.check_address(ip("10.20.3.4"), 1, "10.20.3.4")
    policy.check_address(ip("127.0.0.1"), 5000, "127.0.0.1")
    policy.check_address(ip("::ffff:127.0.0.1"), 5000, "::ffff:127.0.0.1")  # the same socket address
    policy.check_address(ip("::1"), 8080, "::1")
    policy.check_address(ip("fd00::1"), 443, "fd00::1")
    with pytest.raises(EgressRefused, match=r"127\.0\.0\.1:5001: a loopback address"):
        policy.check_address(ip("127.0.0.1"), 5001, "127.0.0.1")
    with pytest.raises(EgressRefused, match=r"10\.21\.0\.1:80: a private address"):
        policy.check_address(ip("10.21.0.1"), 80, "10.21.0.1")
    assert policy.allows_name("files.lan", 1) and policy.allows_name("FILES.lan.", 443)
    assert policy.allows_name("registry.lan", 5000) and not policy.allows_name("registry.lan", 5001)
    assert not policy.allows_name("evil.files.lan", 80)


@pytest.mark.parametrize("entry", ["127.0.0.1/8", "0x7f000001", "127.1", "files.lan:0", "files.lan:99999",
                                   "[files.lan]:80", "a b", "", "http://files.lan/", "::1:80:x:y:z:w:v"])
def test_bad_allowlist_entries_are_refused_with_the_entry_named(entry: str) -> None:
    with pytest.raises(ValueError, match="allow entry"):
        EgressPolicy.from_entries([entry])


def test_own_addresses_are_refused_even_when_public() -> None:
    policy = EgressPolicy(own_addresses=lambda: frozenset({ip("203.0.114.7")}))
    with pytest.raises(EgressRefused, match=r"203\.0\.114\.7:9100: an address of this host \(URL host 'me.example'\)"):
        policy.check_address(ip("203.0.114.7"), 9100, "me.example")
    with pytest.raises(EgressRefused, match="an address of this host"):
        policy.check_address(ip("::ffff:203.0.114.7"), 9100, "me.example")
    allowed = replace(EgressPolicy.from_entries(["203.0.114.7:9100"]), own_addresses=policy.own_addresses)
    allowed.check_address(ip("203.0.114.7"), 9100, "me.example")


def test_host_addresses_include_loopback() -> None:
    own = host_addresses()
    assert ip("127.0.0.1") in own
    if Path("/proc/net/if_inet6").exists() and "lo" in Path("/proc/net/if_inet6").read_text():
        assert ip("::1") in own


class FakeDns(AbstractResolver):
    """Answers every name with fixed addresses: what a hostile DNS zone can make a name resolve to."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                              proto=0, flags=0) for a in self.addresses]

    async def close(self) -> None:
        pass


async def test_resolver_keeps_only_public_addresses() -> None:
    resolver = GuardedResolver(EgressPolicy(), FakeDns("127.0.0.1", "93.184.215.14", "169.254.169.254", "fd00::1"))
    assert [r["host"] for r in await resolver.resolve("mixed.example", 443)] == ["93.184.215.14"]
    resolver = GuardedResolver(EgressPolicy(), FakeDns("169.254.169.254", "::1"))
    with pytest.raises(EgressRefused, match=r"169\.254\.169\.254:80: a link-local address .*URL host 'meta\.example'"):
        await resolver.resolve("meta.example", 80)
    allowed = GuardedResolver(EgressPolicy.from_entries(["mirror.lan:80"]), FakeDns("10.0.0.5"))
    assert [r["host"] for r in await allowed.resolve("MIRROR.lan", 80)] == ["10.0.0.5"]
    with pytest.raises(EgressRefused, match="a private address"):
        await allowed.resolve("mirror.lan", 8080)


def test_config_key(tmp_path: Path) -> None:
    assert AgentConfig().egress.allow == []
    config = AgentConfig.model_validate({"egress": {"allow": ["127.0.0.1:8000", "files.lan"]}})
    assert config.egress.policy == EgressPolicy.from_entries(["127.0.0.1:8000", "files.lan"])
    path = tmp_path / "agent.toml"
    path.write_text('[egress]\nallow = ["127.0.0.1/8"]\n')
    with pytest.raises(ConfigError, match=r"egress\.allow: .*allow entry '127\.0\.0\.1/8'"):
        load_config(path)


def test_job_volume_limits_follow_the_disk_limit() -> None:
    policy = EgressPolicy.from_entries(["files.lan"])
    limits = job_volume_limits(policy, disk_limit_mib=256)
    assert (limits.max_volume_bytes, limits.egress) == (256 * 1024 * 1024, policy)
    assert job_volume_limits(policy, disk_limit_mib=0).max_volume_bytes == JOB_VOLUME_MAX_BYTES
    assert job_volume_limits(policy, disk_limit_mib=10**9).max_volume_bytes == JOB_VOLUME_MAX_BYTES


# Every URL below is refused by the guard before a connection is tried: the messages name the
# address, and none of them needs a network. Should the guard ever let one through,
# `no_connections` fails the test instead of letting a packet leave for 169.254.169.254.
REFUSED_URLS = [
    ("http://127.0.0.1:9100/metrics", r"127\.0\.0\.1:9100: a loopback"),
    ("http://[::1]:9100/metrics", r"\[::1\]:9100: a loopback"),
    ("http://0x7f000001/", r"127\.0\.0\.1:80: a loopback address \(URL host '0x7f000001'\)"),
    ("http://127.1/", r"127\.0\.0\.1:80: a loopback address \(URL host '127\.1'\)"),
    ("http://2130706433:8000/", r"127\.0\.0\.1:8000: a loopback"),
    ("http://169.254.169.254/latest/meta-data/", r"169\.254\.169\.254:80: a link-local address"),
    # Python 3.13 spells a mapped address ::ffff:169.254.169.254, 3.11 ::ffff:a9fe:a9fe
    ("https://[::ffff:169.254.169.254]/", r"\[::ffff:(a9fe:a9fe|169\.254\.169\.254)\]:443: a link-local address"),
    ("http://0.0.0.0:9100/", r"0\.0\.0\.0:9100: an unspecified address"),
    ("http://10.0.0.1/", r"10\.0\.0\.1:80: a private address"),
]
NO_RETRY = VolumeLimits(connect_timeout_s=1.0, attempts=3, retry_backoff_s=5.0)  # a retry would show as a delay


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp opens every TCP connection through aiohappyeyeballs.start_connection."""

    async def refuse(addr_infos: object, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"the egress guard let a connection through to {addr_infos}")

    monkeypatch.setattr(aiohttp_connector.aiohappyeyeballs, "start_connection", refuse)


@pytest.mark.usefixtures("no_connections")
@pytest.mark.parametrize(("url", "message"), REFUSED_URLS)
async def test_literal_volume_urls_are_refused(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(VolumeError, match=rf"^single_file http.*: refused to connect to {message}"):
        await fetch_volume(SingleFileVolume(url=url, relative_path="f"), tmp_path / "volume", NO_RETRY)
    assert not (tmp_path / "volume" / "f").exists()
    with pytest.raises(VolumeError, match=f"refused to connect to {message}"):
        await fetch_volume(ZipUrlVolume(contents=url), tmp_path / "volume", NO_RETRY)


@pytest.mark.usefixtures("no_connections")
async def test_huggingface_endpoint_is_guarded_too(tmp_path: Path) -> None:
    limits = replace(NO_RETRY, hf_endpoint="http://169.254.169.254")
    with pytest.raises(VolumeError, match=r"huggingface org/repo listing: refused to connect to 169\.254\.169\.254:80"):
        await fetch_volume(HuggingfaceVolume(repo_id="org/repo"), tmp_path / "volume", limits)


@pytest.mark.usefixtures("no_connections")
@pytest.mark.parametrize(("url", "message"), REFUSED_URLS)
async def test_literal_upload_urls_are_refused(tmp_path: Path, url: str, message: str) -> None:
    output = tmp_path / "output"
    output.mkdir()
    (output / "result.txt").write_text("secret result")
    limits = UploadLimits(connect_timeout_s=1.0, attempts=3, retry_backoff_s=5.0)
    with pytest.raises(UploadError, match=f"upload of 'result.txt': refused to connect to {message}"):
        await upload_outputs(SingleFilePutUpload(url=url, relative_path="result.txt"), output, limits)
    with pytest.raises(UploadError, match=f"output upload: refused to connect to {message}"):
        await upload_outputs(ZipAndHttpPostUpload(url=url), output, limits)
