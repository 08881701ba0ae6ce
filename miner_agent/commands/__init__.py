"""The `miner-agent` command line: one module per command group, no logic of their own."""
