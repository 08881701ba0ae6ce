"""miner-agent: the validator-facing half of a systemd-native ComputeHorde miner."""

__version__ = "0.1.0"
