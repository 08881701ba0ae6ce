"""executor-agent: runs ComputeHorde jobs in podman on a GPU host; never imports miner_agent."""

__version__ = "0.1.0"
