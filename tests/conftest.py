"""Shared pytest setup: only registers fixture modules."""

pytest_plugins = ["tests.fixtures.podman", "tests.fixtures.miner", "tests.fixtures.httpserver", "tests.fixtures.netns", "tests.fixtures.sshd"]
