"""scripts/build-apt-repo.sh on small stand-in .debs (real reprepro, real gpg, no podman):
each release's builds land in that release's repository, republishing is a no-op, the same
version with other bytes and an older version are refused, promote moves preprod's versions
into stable, and what it signs verifies with the key it publishes.

The stand-ins carry the real packages' names and the control fields that matter (version tag,
python3 range), so the script's choices are the ones it makes for the real .debs; the full
path with the real packages and apt is tests/system/test_apt_repo.py.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.apt_fixtures import BUILD_APT_REPO, build_apt_repo, make_signing_key

PYTHON_RANGE = {"bookworm": "python3 (>= 3.11), python3 (<< 3.12)", "trixie": "python3 (>= 3.13), python3 (<< 3.14)"}
SCRIPT_TIMEOUT_S = 60.0


def stand_in(directory: Path, package: str, version: str, release: str = "bookworm", payload: str = "") -> Path:
    stage = directory / f"stage-{package}-{version}-{len(payload)}"
    (stage / "DEBIAN").mkdir(parents=True)
    (stage / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: amd64\nMaintainer: t <t@localhost>\n"
        f"Section: net\nPriority: optional\nDepends: {PYTHON_RANGE[release]}\nDescription: stand-in\n")
    if payload:
        (stage / "usr" / "share").mkdir(parents=True)
        (stage / "usr" / "share" / "payload").write_text(payload)
    deb = directory / f"{package}_{version}_amd64{'-' + str(len(payload)) if payload else ''}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(stage), str(deb)], check=True,
                   capture_output=True)
    return deb


def attempt(*args: str | Path, gnupghome: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(BUILD_APT_REPO), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "GNUPGHOME": str(gnupghome)}, timeout=SCRIPT_TIMEOUT_S, check=False)


@pytest.fixture
def key(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    home = tmp_path / "gnupg"
    fingerprint = make_signing_key(home)
    yield home, fingerprint
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env={**os.environ, "GNUPGHOME": str(home)}, check=False,
                   capture_output=True)


def listing(repo: Path, home: Path) -> set[tuple[str, ...]]:
    return {tuple(line.split("\t")) for line in build_apt_repo("list", "--repo", repo, gnupghome=home).splitlines()}


def test_each_release_gets_its_builds_and_republishing_changes_nothing(tmp_path: Path, key: tuple[Path, str]) -> None:
    home, fingerprint = key
    repo = tmp_path / "repo"
    debs = [stand_in(tmp_path, p, f"0.1.0+{tag}", release) for p in ("miner-agent", "executor-agent")
            for tag, release in (("deb12", "bookworm"), ("deb13", "trixie"))]
    build_apt_repo("publish", "--key", fingerprint, "--suite", "stable", "--repo", repo, *debs, gnupghome=home)
    expected = {(release, suite, p, f"0.1.0+{tag}" if suite == "stable" else "")
                for p in ("miner-agent", "executor-agent") for suite in ("stable", "preprod")
                for tag, release in (("deb12", "bookworm"), ("deb13", "trixie"))}
    assert listing(repo, home) == expected
    release_file = repo / "www" / "trixie" / "dists" / "stable" / "Release"
    assert "Suite: stable\nCodename: stable\n" in release_file.read_text()
    # Signed with the key it publishes, both suites (preprod is there, empty, from the start).
    keyring = tmp_path / "published.gpg"
    subprocess.run(["gpg", "--batch", "--yes", "--dearmor", "-o", str(keyring), str(repo / "www" / "miner-agent.asc")],
                   check=True, capture_output=True)
    for release in ("bookworm", "trixie"):
        for suite in ("stable", "preprod"):
            inrelease = repo / "www" / release / "dists" / suite / "InRelease"
            subprocess.run(["gpgv", "--keyring", str(keyring), str(inrelease)], check=True, capture_output=True)
    again = attempt("publish", "--key", fingerprint, "--suite", "stable", "--repo", repo, *debs, gnupghome=home)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("already published") == 4, again.stderr
    assert listing(repo, home) == expected
    assert not (repo / "www" / "reprepro").exists() and (repo / "reprepro" / "trixie" / "db").is_dir()


def test_other_bytes_under_a_published_version_and_older_versions_are_refused(tmp_path: Path,
                                                                             key: tuple[Path, str]) -> None:
    home, fingerprint = key
    repo = tmp_path / "repo"
    build_apt_repo("publish", "--key", fingerprint, "--suite", "preprod", "--repo", repo,
                   stand_in(tmp_path, "miner-agent", "0.1.1+deb12"), gnupghome=home)
    changed = attempt("publish", "--key", fingerprint, "--suite", "preprod", "--repo", repo,
                      stand_in(tmp_path, "miner-agent", "0.1.1+deb12", payload="other"), gnupghome=home)
    assert changed.returncode == 1
    assert "bookworm/preprod already has miner-agent 0.1.1+deb12 with other contents" in changed.stderr
    older = attempt("publish", "--key", fingerprint, "--suite", "preprod", "--repo", repo,
                    stand_in(tmp_path, "miner-agent", "0.1.0+deb12"), gnupghome=home)
    assert older.returncode == 1 and "refusing to go back" in older.stderr, older.stderr
    untagged = stand_in(tmp_path, "miner-agent", "0.1.2")
    (tmp_path / "untagged").mkdir()
    subprocess.run(["dpkg-deb", "-R", str(untagged), str(tmp_path / "untagged")], check=True)
    control = tmp_path / "untagged" / "DEBIAN" / "control"
    control.write_text(control.read_text().replace(PYTHON_RANGE["bookworm"], "python3"))
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tmp_path / "untagged"), str(untagged)],
                   check=True, capture_output=True)
    unknown = attempt("publish", "--key", fingerprint, "--suite", "preprod", "--repo", repo, untagged, gnupghome=home)
    assert unknown.returncode == 1 and "pass --release" in unknown.stderr, unknown.stderr
    build_apt_repo("publish", "--key", fingerprint, "--suite", "preprod", "--release", "noble", "--repo", repo,
                   untagged, gnupghome=home)
    assert ("noble", "preprod", "miner-agent", "0.1.2") in listing(repo, home)


def test_promote_moves_preprods_versions_into_stable_once(tmp_path: Path, key: tuple[Path, str]) -> None:
    home, fingerprint = key
    repo = tmp_path / "repo"
    for suite, version in (("stable", "0.1.0+deb13"), ("preprod", "0.1.1+deb13")):
        build_apt_repo("publish", "--key", fingerprint, "--suite", suite, "--repo", repo,
                       *(stand_in(tmp_path, p, version, "trixie") for p in ("miner-agent", "executor-agent")),
                       gnupghome=home)
    first = attempt("promote", "--key", fingerprint, "--repo", repo, gnupghome=home)
    assert first.returncode == 0, first.stderr
    assert "trixie: miner-agent 0.1.1+deb13 promoted preprod -> stable (was 0.1.0+deb13)" in first.stderr
    assert {v for r, s, p, v in listing(repo, home)} == {"0.1.1+deb13"}
    second = attempt("promote", "--key", fingerprint, "--repo", repo, gnupghome=home)
    assert second.returncode == 0 and "promoted" not in second.stderr, second.stderr
    assert "stable already has executor-agent 0.1.1+deb13" in second.stderr
    # The old version went from the pool with the last suite that held it.
    pool = {p.name for p in (repo / "www" / "trixie" / "pool").rglob("*.deb")}
    assert pool == {"miner-agent_0.1.1+deb13_amd64.deb", "executor-agent_0.1.1+deb13_amd64.deb"}


def test_help_teaches_and_a_missing_key_says_what_to_pass(tmp_path: Path) -> None:
    shown = subprocess.run(["bash", str(BUILD_APT_REPO), "--help"], capture_output=True, text=True, check=False)
    assert shown.returncode == 0
    assert "publish --key KEY --suite stable|preprod" in shown.stdout and "promote" in shown.stdout
    missing = attempt("publish", "--suite", "stable", "--repo", tmp_path / "repo", tmp_path, gnupghome=tmp_path)
    assert missing.returncode == 1 and "--key is required" in missing.stderr, missing.stderr
