"""Filesystem guards shared by inputs and outputs: no-follow path walking and cancellable blocking work."""
