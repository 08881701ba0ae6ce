"""Outbound network access on behalf of a job (volume downloads and output uploads)."""
