"""Example executor managers (see fleet/manager.py)."""
