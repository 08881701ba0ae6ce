"""Operator plugins: the job-runner hooks and their example."""
