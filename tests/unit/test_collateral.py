"""Collateral (issue 11) against a real EVM: eth-tester + py-evm behind a loopback JSON-RPC server,
with our own test double of the validators' contract (tests/contracts/CollateralDouble.sol).

The substrate side (permits, uids, commitments, AssociatedEvmAddress) is the static chain file;
only the chain itself is faked. Commands run through `main(argv)` as an operator types them, one
through a subprocess for the confirmation refusal.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from bittensor_wallet import Keypair
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak

from miner_agent.chain.backend import ChainRejected, StaticChain
from miner_agent.collateral.contract import CollateralContract, collateral_abi, connect
from miner_agent.collateral.errors import CONTRACT_ERRORS, explain
from miner_agent.collateral.keystore import generate_evm_key, key_path, load_evm_key
from miner_agent.collateral.mirror import evm_mirror_ss58
from miner_agent.commands.main import main
from miner_agent.keys import create_wallet
from miner_agent.miner_config import load_config
from tests.fixtures.evm import ARTIFACT, EvmChain, running_evm

REPO = Path(__file__).resolve().parents[2]
NETUID = 12
MINER_UID = 5
TAO = 10**18
THRESHOLD_WEI = 10**16  # the validators' default, 0.01 TAO


@pytest.fixture(scope="module")
def evm() -> Iterator[EvmChain]:
    with running_evm() as chain:
        yield chain


@dataclass
class World:
    """One miner wallet with a funded EVM key, validators with contracts, a config file."""

    config_path: Path
    key_address: str
    validators: list[str] = field(default_factory=list)
    contracts: dict[str, str] = field(default_factory=dict)
    trustees: dict[str, str] = field(default_factory=dict)

    def cli(self, *argv: str) -> int:
        return main(["collateral", *argv, "--config", str(self.config_path)])

    def status(self, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
        capsys.readouterr()
        code = self.cli("status", "--json")
        return code, json.loads(capsys.readouterr().out)


def make_world(evm: EvmChain, tmp: Path, kinds: list[str], *, decision_timeout_s: int = 5 * 24 * 3600,
               associate: bool = True) -> World:
    """`kinds`: one validator each; "good", "wrong_netuid", "wrong_trustee" or "no_contract"."""
    wallets = tmp / "wallets"
    miner = create_wallet(wallets, "miner", "default")
    chain_file, config_path = tmp / "chain.json", tmp / "miner-agent.toml"
    config_path.write_text(
        f'[wallet]\npath = "{wallets}"\nname = "miner"\nhotkey = "default"\n'
        f'[miner]\nstate_dir = "{tmp / "state"}"\n'
        f'[chain]\nbackend = "static"\nnetuid = {NETUID}\nstatic_validators_file = "{chain_file}"\nstatic_block = 1000\n'
        f'[collateral]\nevm_rpc = "{evm.url}"\nthreshold_wei = {THRESHOLD_WEI}\n')
    key = generate_evm_key(key_path(load_config(config_path).wallet))
    evm.fund(key.address, 1 * TAO)
    world = World(config_path, key.address)
    state: dict = {"validators": [], "uids": {miner.hotkey: MINER_UID}, "commitments": {}, "evm": {}}
    if associate:
        state["evm"][str(MINER_UID)] = key.address
    for uid, kind in enumerate(kinds, start=10):
        hotkey = Keypair.create_from_mnemonic(Keypair.generate_mnemonic()).ss58_address
        trustee = Account.create().address
        world.validators.append(hotkey)
        world.trustees[hotkey] = trustee
        state["validators"].append(hotkey)
        state["uids"][hotkey] = uid
        state["evm"][str(uid)] = trustee
        if kind == "no_contract":
            continue
        address = evm.deploy(NETUID + 1 if kind == "wrong_netuid" else NETUID,
                             Account.create().address if kind == "wrong_trustee" else trustee,
                             decision_timeout_s=decision_timeout_s)
        world.contracts[hotkey] = address
        state["commitments"][hotkey] = json.dumps({"contract": {"address": address.lower()}})
    chain_file.write_text(json.dumps(state))
    return world


# --- the ABI, errors, key file, association message: no EVM needed ----------------------------------

def test_runtime_abi_is_the_test_contracts_interface() -> None:
    artifact = json.loads(ARTIFACT.read_text())["abi"]
    interface = [e for e in artifact if e["type"] in ("function", "event", "error")]
    key = lambda e: (e["type"], e["name"])  # noqa: E731
    assert sorted(interface, key=key) == sorted(collateral_abi(), key=key)


def test_every_abi_error_has_a_sentence_under_its_selector() -> None:
    errors = {keccak(text=f"{e['name']}()")[:4].hex(): e["name"] for e in collateral_abi() if e["type"] == "error"}
    assert len(errors) == 10
    assert {sel: name for sel, (name, _) in CONTRACT_ERRORS.items()} == errors


@pytest.mark.parametrize("selector", sorted(CONTRACT_ERRORS))
def test_revert_data_from_a_node_becomes_the_sentence(selector: str) -> None:
    from web3.exceptions import ContractCustomError

    name, sentence = CONTRACT_ERRORS[selector]
    assert explain(ContractCustomError(f"0x{selector}", data=f"0x{selector}")) == f"the contract refused ({name}): {sentence}"


def test_key_file_is_private_and_a_readable_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w" / "miner" / "h160" / "default"
    key = generate_evm_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    stored = json.loads(path.read_text())
    assert stored["address"] == key.address == Account.from_key(stored["private_key"]).address
    assert set(stored) == {"address", "private_key", "public_key"}
    with pytest.raises(Exception, match="already exists"):
        generate_evm_key(path)
    path.chmod(0o644)
    with pytest.raises(Exception, match=r"readable by other users \(mode 0644\).*chmod 600"):
        load_evm_key(path)


def test_ss58_mirror_matches_the_reference_example() -> None:
    assert evm_mirror_ss58("0xf24FF3a9CF04c71Dbc94D0b566f7A27B94566cac") == "5Fghzk1AJt88PeFEzuRfXzbPchiBbsVGTTXcdx599VdZzkTA"


def test_collateral_help_does_not_import_web3() -> None:
    code = ("import sys\nfrom miner_agent.commands.main import main\ntry:\n main(['collateral', 'deposit', '--help'])\n"
            "except SystemExit:\n pass\nassert 'web3' not in sys.modules and 'eth_account' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, timeout=60)


# --- associate: the signature the chain checks --------------------------------------------------------

class RateLimitedChain(StaticChain):
    """The chain's answer inside the association window (the static backend never refuses so)."""

    async def associate_evm_key(self, netuid: int, evm_address: str, block_number: int, signature: bytes) -> None:
        raise ChainRejected("associate_evm_key: EvmKeyAssociateRateLimitExceeded (rate limit)")


async def test_associate_signs_what_the_chain_recovers(evm: EvmChain, tmp_path: Path) -> None:
    import argparse

    from miner_agent.collateral import actions
    from miner_agent.keys import load_hotkey

    world = make_world(evm, tmp_path, [], associate=False)
    config = load_config(world.config_path)
    signer = load_hotkey(config.wallet.path, config.wallet.name, config.wallet.hotkey)
    chain = StaticChain(config.chain.static_validators_file, 4321, own_hotkey=signer.hotkey)
    args = argparse.Namespace(force=False)
    assert await actions._associate(config, args, signer, chain) == 0
    (write,) = chain.writes
    assert write.kind == "associate_evm_key" and write.detail["block_number"] == 4321
    signature = bytes.fromhex(str(write.detail["signature"]).removeprefix("0x"))
    assert len(signature) == 65
    message = bytes(signer.keypair.public_key) + keccak(struct.pack("<Q", 4321))  # what subtensor's evm.rs hashes
    assert Account.recover_message(encode_defunct(primitive=message), signature=signature) == world.key_address
    assert write.detail["evm_key"] == world.key_address

    # Already associated with this key: nothing is sent again (it would only burn the rate limit).
    assert await actions._associate(config, args, signer, chain) == 0
    assert len(chain.writes) == 1

    limited = RateLimitedChain(config.chain.static_validators_file, 5000, own_hotkey=signer.hotkey,
                               evm_associations={(NETUID, MINER_UID): (Account.create().address, 4000)})
    with pytest.raises(actions.Refused, match=r"retry at block 11200 \(in about 20.7 h\)"):
        await actions._associate(config, args, signer, limited)


# --- status, deposit, refusals -------------------------------------------------------------------------

def test_deposit_then_status_against_the_threshold(evm: EvmChain, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(evm, tmp_path, ["good", "good"])
    code, report = world.status(capsys)
    assert code == 1 and report["checked"] and not report["ok"]
    assert [r["collateral_wei"] for r in report["rows"]] == [0, 0]
    assert all("below the threshold" in r["problem"] for r in report["rows"])
    assert report["associated_h160"] == world.key_address and report["evm_balance_wei"] == TAO

    first = world.validators[0]
    assert world.cli("deposit", "--validator", first, "--amount", "0.01", "--yes") == 0
    out = capsys.readouterr().out
    assert "value 0.01 TAO (10000000000000000 wei)" in out and "gas limit 100000" in out
    code, report = world.status(capsys)
    rows = {r["validator"]: r for r in report["rows"]}
    assert code == 1 and rows[first]["ok"] and rows[first]["collateral_wei"] == THRESHOLD_WEI
    assert not rows[world.validators[1]]["ok"]

    assert world.cli("deposit", "--all", "--amount", "0.01", "--yes") == 0
    code, report = world.status(capsys)
    assert code == 0 and report["ok"]
    assert sorted(r["collateral_wei"] for r in report["rows"]) == [THRESHOLD_WEI, 2 * THRESHOLD_WEI]

    assert world.cli("status") == 0  # the table
    table = capsys.readouterr().out
    assert "VALIDATOR" in table and world.contracts[first] in table and "FILTERED" not in table


def test_wrong_netuid_or_trustee_is_refused(evm: EvmChain, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(evm, tmp_path, ["good", "wrong_netuid", "wrong_trustee", "no_contract"])
    good, netuid, trustee, none = world.validators
    code, report = world.status(capsys)
    rows = {r["validator"]: r for r in report["rows"]}
    assert code == 1
    assert rows[netuid]["problem"].endswith(f"is for netuid {NETUID + 1}, not ours ({NETUID}); not used")
    assert f"but the validator's associated EVM address is {world.trustees[trustee]}" in rows[trustee]["problem"]
    assert "publishes no collateral contract" in rows[none]["problem"]
    assert [rows[v]["contract_ok"] for v in world.validators] == [True, False, False, False]

    assert world.cli("deposit", "--validator", netuid, "--amount", "0.01", "--yes") == 1
    assert f"is for netuid {NETUID + 1}" in capsys.readouterr().err
    assert world.cli("deposit", "--all", "--amount", "0.01", "--yes") == 0  # only into the verified one
    w3 = connect(evm.url, 10)
    assert CollateralContract(w3, world.contracts[good]).collateral_of(world.key_address) == THRESHOLD_WEI
    for refused in (netuid, trustee):
        assert CollateralContract(w3, world.contracts[refused]).collateral_of(world.key_address) == 0


def test_unconfirmed_deposit_sends_nothing(evm: EvmChain, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_world(evm, tmp_path, ["good"])
    (validator,) = world.validators
    command = [sys.executable, "-m", "miner_agent.commands.main", "collateral", "deposit", "--validator", validator,
               "--amount", "0.01", "--config", str(world.config_path)]
    done = subprocess.run(command, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1, done.stderr
    assert "gas limit 100000" in done.stdout  # value and gas were shown first
    assert "stdin is not a terminal, so nothing was sent (add --yes" in done.stderr
    contract = CollateralContract(connect(evm.url, 10), world.contracts[validator])
    assert contract.collateral_of(world.key_address) == 0

    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    assert world.cli("deposit", "--validator", validator, "--amount", "0.01") == 1
    assert "not confirmed; nothing was sent" in capsys.readouterr().err
    assert contract.collateral_of(world.key_address) == 0


def test_deposit_without_association_is_refused(evm: EvmChain, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(evm, tmp_path, ["good"], associate=False)
    code, report = world.status(capsys)
    assert code == 1 and "run `miner-agent collateral associate`" in report["rows"][0]["problem"]
    assert world.cli("deposit", "--all", "--amount", "0.01", "--yes") == 1
    assert "our uid has no associated EVM address yet" in capsys.readouterr().err


def test_fund_prints_the_mirror_and_what_is_missing(evm: EvmChain, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(evm, tmp_path, ["good", "good"])
    assert world.cli("fund") == 0
    out = capsys.readouterr().out
    assert evm_mirror_ss58(world.key_address) in out
    assert "2 deposit(s) needed: 0.02 TAO" in out and "nothing missing" in out  # 1 TAO funded


# --- reclaim and finalize around the deny window ----------------------------------------------------------

def test_reclaim_before_and_after_the_deny_window(evm: EvmChain, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(evm, tmp_path, ["good"], decision_timeout_s=3600)
    (validator,) = world.validators
    assert world.cli("deposit", "--all", "--amount", "0.03", "--yes") == 0
    assert world.cli("reclaim", "--validator", validator, "--amount", "0.01", "--yes") == 0
    assert "reclaim #1 started; the validator may deny it until" in capsys.readouterr().out
    code, report = world.status(capsys)
    (row,) = report["rows"]
    assert row["pending_reclaims"][0]["reclaim_id"] == 1 and row["pending_reclaims"][0]["amount_wei"] == THRESHOLD_WEI
    assert row["collateral_wei"] == 3 * THRESHOLD_WEI  # pending reclaims still count until finalized

    assert world.cli("finalize", "--yes") == 1  # nothing past its window yet
    assert "reclaim #1 at validator" in capsys.readouterr().out
    assert world.cli("finalize", "--validator", validator, "--id", "1", "--yes") == 1
    assert "the contract refused (BeforeDenyTimeout)" in capsys.readouterr().err

    w3 = connect(evm.url, 10)
    before = w3.eth.get_balance(world.key_address)
    evm.time_travel(3601)
    assert world.cli("finalize", "--yes") == 0
    assert "reclaim #1: 0.01 TAO paid back" in capsys.readouterr().out
    assert w3.eth.get_balance(world.key_address) > before + THRESHOLD_WEI // 2
    code, report = world.status(capsys)
    assert code == 0 and report["rows"][0]["collateral_wei"] == 2 * THRESHOLD_WEI
    assert report["rows"][0]["pending_reclaims"] == []


# --- every revert the contract has, from a real EVM, as its sentence ---------------------------------------

def _refusal(call) -> str:  # noqa: ANN001 - a zero-argument callable expected to fail
    with pytest.raises(Exception) as caught:
        call()
    return explain(caught.value) if not str(caught.value).startswith("the contract") else str(caught.value)


def test_each_contract_error_surfaces_as_its_sentence(evm: EvmChain, tmp_path: Path) -> None:
    world = make_world(evm, tmp_path, ["good"], decision_timeout_s=60)
    (validator,) = world.validators
    w3 = connect(evm.url, 10)
    key = load_evm_key(key_path(load_config(world.config_path).wallet))
    contract = CollateralContract(w3, world.contracts[validator])
    minimum = contract.min_collateral_increase()
    gas = 200_000

    contract.send(contract.plan_deposit(key, 3 * minimum, gas), key)
    seen = {
        "InsufficientAmount": _refusal(lambda: contract.plan_deposit(key, minimum - 1, gas)),
        "AmountZero": _refusal(lambda: contract.plan_reclaim(key, 0, gas)),
        "ReclaimAmountTooLarge": _refusal(lambda: contract.plan_reclaim(key, 3 * minimum + 1, gas)),
        "ReclaimAmountTooSmall": _refusal(lambda: contract.plan_reclaim(key, minimum // 2, gas)),
        "ReclaimNotFound": _refusal(lambda: contract.plan_finalize(key, 999, gas)),
        "InvalidDepositMethod": _refusal(lambda: w3.eth.call({"from": key.address, "to": contract.address, "value": minimum})),
        "NotTrustee": _refusal(lambda: contract.contract.functions.denyReclaimRequest(1, "", b"\0" * 16).call(
            {"from": key.address})),
    }
    contract.send(contract.plan_reclaim(key, minimum, gas), key)
    seen["BeforeDenyTimeout"] = _refusal(lambda: contract.plan_finalize(key, 1, gas))
    evm.time_travel(61)
    evm.fund(world.trustees[validator], TAO // 10)  # eth-tester wants a caller that could pay for the call's gas
    seen["PastDenyTimeout"] = _refusal(lambda: contract.contract.functions.denyReclaimRequest(1, "", b"\0" * 16).call(
        {"from": world.trustees[validator]}))
    sentences = {name: sentence for name, sentence in CONTRACT_ERRORS.values()}
    for name, text in seen.items():
        assert text == f"the contract refused ({name}): {sentences[name]}", name
    # TransferFailed needs a receiver that rejects payment, which an EOA never does: covered by
    # test_revert_data_from_a_node_becomes_the_sentence with the node's revert data.


# --- the running miner: periodic check, gauges, log line, `miner-agent status` ------------------------------

async def test_running_miner_reports_collateral_on_metrics_status_and_log(
        evm: EvmChain, tmp_path: Path, start_miner, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    import asyncio
    import logging

    import aiohttp

    from miner_agent.admin_client import call
    from miner_agent.collateral.duty import status_line
    from miner_agent.miner_config import MinerSection

    world = make_world(evm, tmp_path, ["good", "good"])
    assert await asyncio.to_thread(world.cli, "deposit", "--validator", world.validators[0], "--amount", "0.01",
                                   "--yes") == 0  # the CLI runs its own event loop
    config = load_config(world.config_path)
    config = config.model_copy(update={"miner": MinerSection(
        listen_host="127.0.0.1", listen_port=0, state_dir=tmp_path / "state", metrics_port=0,
        admin_socket=tmp_path / "admin.sock")})
    agent = await start_miner(config)
    duty = agent.ctx.collateral
    assert duty.enabled and duty.period_s == 600
    with caplog.at_level(logging.INFO, logger="miner_agent.collateral.duty"):
        await duty.check_once()
    (line,) = [r.getMessage() for r in caplog.records if "collateral" in r.getMessage()]
    assert f"below threshold at 1/2 validators threshold_wei={THRESHOLD_WEI} below={world.validators[1]}:0" in line

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{agent.metrics_port}/metrics") as response:
            metrics = await response.text()
    good, short = world.validators
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])  # Prometheus reads 1e+16 as 10^16
               for line in metrics.splitlines() if line.startswith("miner_agent_collateral")}
    assert samples == {
        f'miner_agent_collateral_wei{{validator="{good}"}}': THRESHOLD_WEI,
        f'miner_agent_collateral_wei{{validator="{short}"}}': 0,
        f'miner_agent_collateral_sufficient{{validator="{good}"}}': 1,
        f'miner_agent_collateral_sufficient{{validator="{short}"}}': 0,
        "miner_agent_collateral_threshold_wei": THRESHOLD_WEI,
    }

    _, status = await call(config.admin_socket, "GET", "/status")
    assert status["collateral"]["below"][0]["validator"] == short
    assert status_line(status["collateral"]).startswith(f"collateral: BELOW THRESHOLD at 1/2 validators: {short}")


async def test_static_miner_without_evm_rpc_does_not_check(miner_config, start_miner) -> None:  # noqa: ANN001
    from miner_agent.admin_client import call
    from miner_agent.collateral.duty import status_line

    agent = await start_miner(miner_config)
    assert not agent.ctx.collateral.enabled
    assert "miner_agent_collateral_sufficient{" not in agent.ctx.metrics.render()
    _, status = await call(miner_config.admin_socket, "GET", "/status")
    assert status_line(status["collateral"]) == "collateral: not checked (static chain backend and no [collateral] evm_rpc)"


def test_evm_endpoint_comes_from_config_or_flag_and_a_dead_one_is_one_sentence(
        evm: EvmChain, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(evm, tmp_path, ["good"])
    text = world.config_path.read_text()
    world.config_path.write_text(text.replace(f'evm_rpc = "{evm.url}"\n', ""))
    assert world.cli() == 1  # status is the default; static backend, no evm_rpc: never a public endpoint
    assert capsys.readouterr().out.strip() == (
        "collateral: not checked (static chain backend and no [collateral] evm_rpc; set it or pass --evm-rpc URL)")
    assert world.cli("status", "--json", "--evm-rpc", evm.url) == 1
    assert json.loads(capsys.readouterr().out)["rows"][0]["collateral_wei"] == 0
    calls = len(evm.requests)
    assert world.cli("status", "--evm-rpc", "http://127.0.0.1:9") == 1  # discard port: nothing listens
    out = capsys.readouterr().out
    assert out.startswith("collateral: not checked (EVM RPC not read: ") and "Traceback" not in out
    assert len(evm.requests) == calls


def test_keygen_and_import_key_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wallets = tmp_path / "wallets"
    create_wallet(wallets, "miner", "default")
    config = tmp_path / "miner-agent.toml"
    config.write_text(f'[wallet]\npath = "{wallets}"\nname = "miner"\nhotkey = "default"\n')
    assert main(["collateral", "keygen", "--config", str(config)]) == 0
    made = json.loads((wallets / "miner" / "h160" / "default").read_text())["address"]
    assert f"EVM key created: {made}" in capsys.readouterr().out
    assert main(["collateral", "keygen", "--config", str(config)]) == 1
    assert "already exists; it may own collateral" in capsys.readouterr().err

    other = tmp_path / "other"
    create_wallet(other, "miner", "default")
    config.write_text(config.read_text().replace(str(wallets), str(other)))
    account = Account.create()
    secret = tmp_path / "key.hex"
    secret.write_text(bytes(account.key).hex() + "\n")  # without 0x, as some tools write it
    assert main(["collateral", "import-key", "--private-key-file", str(secret), "--config", str(config)]) == 0
    stored = other / "miner" / "h160" / "default"
    assert stored.stat().st_mode & 0o777 == 0o600
    assert json.loads(stored.read_text())["address"] == account.address
