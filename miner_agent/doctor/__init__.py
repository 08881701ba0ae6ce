"""`miner-agent doctor`: the reasons validators skip a miner, checked from the miner's side.

model (rows and the report), one module of pure verdict functions per group of checks
(chain_checks, validator_checks, class_checks, executor_checks), live (what only the running
miner knows, served on its admin socket), gather (the I/O: chain, admin socket, dynamic
config, public address) and render (the table and --json).
"""
