"""A job's directory on this host: <jobs_dir>/<uuid>/{volume,output,artifacts,events.jsonl,...}."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

# The job may run as any user, and its root is an unprivileged host uid (a user namespace,
# container/job_spec.py), so volume/, output/ and artifacts/ are open to every uid: the stock
# executor chmods 777 too. What keeps other local users out is JOBS_DIR_MODE above them.
SHARED_DIR_MODE = 0o777
# <jobs_dir> itself: only the agent (and root) may enter it. Job containers write files there
# as their own host uids, setuid bits included; a local user who cannot reach them cannot run
# them, nor read another job's inputs and outputs. The bind mounts are made by podman (root)
# from the full path, so a container never needs to pass through this directory.
JOBS_DIR_MODE = 0o700


@dataclass(frozen=True)
class JobDirs:
    """<jobs_dir>/<uuid>/{volume,output,artifacts,events.jsonl,script.py}."""

    root: Path

    @property
    def volume(self) -> Path:
        return self.root / "volume"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def script(self) -> Path:
        return self.root / "script.py"

    @property
    def stdout_log(self) -> Path:
        return self.root / "stdout.log"  # the full stream; moved to output/stdout.txt for upload

    @property
    def stderr_log(self) -> Path:
        return self.root / "stderr.log"

    def create(self) -> None:
        prepare_jobs_dir(self.root.parent)
        for d in (self.volume, self.output, self.artifacts):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, SHARED_DIR_MODE)

    def remove_work(self) -> None:
        """Delete everything but the event log, which a late attach still needs."""
        for d in (self.volume, self.output, self.artifacts):
            shutil.rmtree(d, ignore_errors=True)
        for path in (self.script, self.stdout_log, self.stderr_log):
            path.unlink(missing_ok=True)


def prepare_jobs_dir(path: Path) -> None:
    """Create <jobs_dir> if needed and make it JOBS_DIR_MODE, whatever an older version or the
    umask left (at agent start, and again before each job's directories are made)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.stat(path).st_mode & 0o7777 != JOBS_DIR_MODE:
        os.chmod(path, JOBS_DIR_MODE)


def disk_use(roots: tuple[Path, ...]) -> int:
    """Bytes allocated on disk under the roots (st_blocks: a sparse file counts what it takes)."""
    total = 0
    for root in roots:
        for dirpath, _dirnames, filenames in os.walk(root):
            for name in filenames:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
                except OSError:
                    pass
    return total


def chmod_tree(root: Path) -> None:
    """Let a non-root job user read everything it was given (stock: chmod -R 777)."""
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, SHARED_DIR_MODE)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, SHARED_DIR_MODE)
