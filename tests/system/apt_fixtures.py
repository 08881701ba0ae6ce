"""Helpers for the apt repository test: a throwaway signing key, scripts/build-apt-repo.sh,
"version N+1" made from the built .debs, and the README's apt blocks.

N+1 is the same package with a higher Version: only the control member of the .deb is
rewritten (a .deb is an `ar` archive of debian-binary, control.tar.*, data.tar.*), and the
data member is copied byte for byte, so a new version costs milliseconds instead of a
second build-debs.sh run.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile
from pathlib import Path

from tests.system.conftest import Machine, Run

REPO = Path(__file__).resolve().parents[2]
BUILD_APT_REPO = REPO / "scripts" / "build-apt-repo.sh"
README = REPO / "README.md"
README_SECTION = "## Installing from the apt repository"
SCRIPT_TIMEOUT_S = 300.0  # reprepro hashes and copies ~100 MiB of .debs per publish; seconds at most
AR_MAGIC = b"!<arch>\n"
AR_HEADER_BYTES = 60
TAR_MODES = {".tar": "", ".tar.gz": "gz", ".tar.xz": "xz"}
# podman 4.3 sometimes loses the exit code of a long `podman exec` when its events file is
# rotated meanwhile ("exec died event for session ... not found: unable to find event",
# containers/podman#20018); the command itself ran. Long commands leave their exit status and
# output in files, read back by short execs.
EXEC_EVENT_LOST = "unable to find event"
STEP_FILE = "/root/.systest-step"
READ_BACK_TRIES = 5


# -- the repository script ---------------------------------------------------------------

def build_apt_repo(*args: str | Path, gnupghome: Path | None = None) -> str:
    """Runs scripts/build-apt-repo.sh; its stdout, or an AssertionError with what it said."""
    env = None if gnupghome is None else {**os.environ, "GNUPGHOME": str(gnupghome)}
    done = subprocess.run(["bash", str(BUILD_APT_REPO), *map(str, args)], check=False, capture_output=True, text=True,
                          env=env, timeout=SCRIPT_TIMEOUT_S)
    if done.returncode != 0:
        raise AssertionError(f"build-apt-repo.sh {' '.join(map(str, args))} exited {done.returncode}:\n"
                             f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def make_signing_key(gnupghome: Path) -> str:
    """A passphrase-less ed25519 key in `gnupghome`, made by the script; its fingerprint."""
    fingerprint = build_apt_repo("keygen", gnupghome).strip()
    assert re.fullmatch(r"[0-9A-F]{40}", fingerprint), fingerprint
    return fingerprint


# -- long commands in the machine -----------------------------------------------------------

def run_long(box: Machine, script: str, timeout_s: float) -> Run:
    """`script` (bash, stderr folded into stdout, stopping at the first failure) run in the
    machine; its exit status and output read back from files, so podman losing the exec's
    exit event cannot fail a step that succeeded (see EXEC_EVENT_LOST)."""
    wrapped = (f"rm -f {STEP_FILE}.rc; ( set -e\n{script}\n) >{STEP_FILE}.out 2>&1; "
               f"echo $? >{STEP_FILE}.rc")
    done = box.sh(wrapped, check=False, timeout=timeout_s)
    if done.rc != 0 and EXEC_EVENT_LOST not in done.err:
        raise AssertionError(f"in {box.name}: podman exec failed ({done.rc}): {done.err[-2000:]}")
    for _ in range(READ_BACK_TRIES):
        back = box.sh(f"cat {STEP_FILE}.rc && cat {STEP_FILE}.out", check=False)
        if back.rc == 0 and back.out.strip():
            rc_line, _, output = back.out.partition("\n")
            result = Run(int(rc_line), output, "")
            if result.rc != 0:
                raise AssertionError(f"in {box.name}: exited {result.rc}:\n{script}\noutput: {output[-4000:]}")
            return result
    raise AssertionError(f"in {box.name}: no exit status left by:\n{script}\n{back.err[-1000:]}")


# -- version N+1 ---------------------------------------------------------------------------

def next_version(version: str) -> str:
    """The same version with its last upstream number raised: 0.1.0 -> 0.1.1, 0.1.0+deb12 ->
    0.1.1+deb12, 0.1.0~deb13 -> 0.1.1~deb13 (the Debian-release tag stays where it is)."""
    match = re.match(r"^(.*?)(\d+)([~+].*)?$", version)
    if match is None:
        raise ValueError(f"no number to raise in version {version!r}")
    return f"{match.group(1)}{int(match.group(2)) + 1}{match.group(3) or ''}"


def _ar_members(blob: bytes) -> list[tuple[bytes, bytes]]:
    """(raw 60-byte header, data) of each member; the headers are kept to write them back."""
    if not blob.startswith(AR_MAGIC):
        raise ValueError("not an ar archive (a .deb starts with !<arch>)")
    members, at = [], len(AR_MAGIC)
    while at < len(blob):
        header = blob[at:at + AR_HEADER_BYTES]
        size = int(header[48:58].decode().strip())
        start = at + AR_HEADER_BYTES
        members.append((header, blob[start:start + size]))
        at = start + size + (size % 2)  # members are padded to an even offset
    return members


def _ar_header(header: bytes, size: int) -> bytes:
    return header[:48] + str(size).ljust(10).encode() + header[58:]


def _retar_control(name: str, data: bytes, version: str) -> bytes:
    suffix = next((s for s in sorted(TAR_MODES, key=len, reverse=True) if name.endswith(s)), None)
    if suffix is None:
        raise ValueError(f"control member {name!r}: compression this helper does not handle")
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as src, \
            tarfile.open(fileobj=out, mode=f"w:{TAR_MODES[suffix]}", format=tarfile.GNU_FORMAT) as dst:
        for info in src.getmembers():
            payload = src.extractfile(info).read() if info.isfile() else None
            if info.name in ("./control", "control"):
                text, count = re.subn(r"^Version: .*$", f"Version: {version}", payload.decode(), flags=re.MULTILINE)
                assert count == 1, "control has no Version field"
                payload = text.encode()
                info.size = len(payload)
            dst.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return out.getvalue()


def rewrite_version(deb: Path, target_dir: Path, version: str) -> Path:
    """A copy of `deb` whose control says `version`, named as dpkg-deb would name it."""
    members = _ar_members(deb.read_bytes())
    out = bytearray(AR_MAGIC)
    for header, data in members:
        name = header[:16].decode().strip().rstrip("/")
        if name.startswith("control.tar"):
            data = _retar_control(name, data, version)
            header = _ar_header(header, len(data))
        out += header + data + (b"\n" if len(data) % 2 else b"")
    package, _, arch = deb.stem.split("_")
    target = target_dir / f"{package}_{version}_{arch}.deb"
    target.write_bytes(bytes(out))
    return target


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True,
                          check=True).stdout.strip()


# -- the README ------------------------------------------------------------------------------

def readme_blocks() -> list[str]:
    """The ```sh blocks of the README's apt section, in order: install, switch to preprod."""
    text = README.read_text()
    section = text[text.index(README_SECTION):]
    end = section.find("\n## ", 1)
    return re.findall(r"```sh\n(.*?)```", section if end < 0 else section[:end], re.DOTALL)


def with_repo_url(block: str, url: str) -> str:
    """The block with its one `REPO=...` line pointing at `url` (the README's is an example)."""
    replaced, count = re.subn(r"^REPO=\S+", f"REPO={url}", block, flags=re.MULTILINE)
    assert count == 1, f"the README's apt block has no REPO= line:\n{block}"
    return replaced
