"""The miner's side of the validators' collateral contracts (issue 11, docs/collateral.md).

Modules, one job each: config (the [collateral] section), keystore (the EVM key file), association
(the message the chain checks), abi + errors (the contract's interface and revert sentences),
contract (calls and transactions over web3), discovery (which contract a validator uses), report
(one row per validator), duty (the running miner's periodic check). Only report/duty/config are
imported by the daemon; web3 is imported lazily so `--help` and the executor never load it.
"""
