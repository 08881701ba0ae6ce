"""The container side of a job: podman through its API, and the streaming TLS proxy."""
