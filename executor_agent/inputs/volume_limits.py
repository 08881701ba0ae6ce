"""The error and the limits shared by every volume downloader (re-exported by `volumes`).

Kept apart from `volumes` so the HTTP and Hugging Face helpers can use them without an import
cycle. Defaults follow the stock executor where it has one (protocol.md §8.1, behaviour.md §2.5);
the others exist because the stock executor has no guard there at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from executor_agent.net.egress import PUBLIC_ONLY, EgressPolicy
from horde_protocol.volumes import VOLUME_MAX_SIZE_BYTES

GIB = 1024**3
MIB = 1024**2
KIB = 1024

HF_DEFAULT_ENDPOINT = "https://huggingface.co"
HF_MAX_BYTES = 64 * GIB  # all files of one repo snapshot; models are far bigger than 2 GiB
# One job's whole /volume, every sub-volume and download together. As large as one Hugging Face
# snapshot may be, so the biggest single volume still fits; the job runner lowers it to the job's
# disk limit (see `job_volume_limits`).
JOB_VOLUME_MAX_BYTES = HF_MAX_BYTES
# Files + directories in one job's /volume, all sub-volumes together: one archive's worth, so
# splitting an archive into many does not multiply it.
JOB_VOLUME_MAX_ENTRIES = 100_000
# Sub-volumes of one multi_volume. The stock executor has no cap; SDK jobs use one per mount
# point, a few in practice. 128 leaves room for a model sharded into single_file volumes while
# bounding the requests (each with its own retries) and extractions one job can make us do.
MAX_SUB_VOLUMES = 128


class VolumeError(Exception):
    """The job's fault (bad URL, hostile archive, too big, server gave up); shown to the user as
    "Download failed: <str(exc)>", so the message names the thing and the limit."""


@dataclass(frozen=True)
class VolumeLimits:
    """Every bound on one `fetch_volume` call; tests shrink them to stay fast."""

    # size
    max_volume_bytes: int = JOB_VOLUME_MAX_BYTES  # the whole /volume of the job: all sub-volumes, all downloads
    max_volume_entries: int = JOB_VOLUME_MAX_ENTRIES  # files + directories in the whole /volume
    max_sub_volumes: int = MAX_SUB_VOLUMES  # volumes in one multi_volume
    max_bytes: int = VOLUME_MAX_SIZE_BYTES  # 2 GiB per HTTP/inline download (stock VOLUME_MAX_SIZE_BYTES)
    max_extracted_bytes: int = 8 * GIB  # all files extracted from one archive
    max_zip_entries: int = 100_000  # files + directories in one archive
    max_compression_ratio: int = 200  # extracted bytes per archive byte; deflate of zeros reaches ~1000
    ratio_floor_bytes: int = 16 * MIB  # archives extracting to less than this skip the ratio check
    # time
    connect_timeout_s: float = 30.0  # TCP + TLS handshake
    response_headers_timeout_s: float = 60.0  # request sent (incl. redirects) -> all headers read
    read_timeout_s: float = 60.0  # longest silence while reading a body
    min_throughput_bytes_per_s: int = 64 * KIB  # a slower body is a slow-drip server (or a dead link)
    throughput_window_s: float = 30.0  # throughput is judged over windows this long
    # HTTP
    max_header_line_bytes: int = 8190  # status line / one header field (aiohttp's default)
    max_header_count: int = 128  # together with the line cap bounds the header block to ~1 MiB
    max_redirects: int = 10
    max_concurrent_downloads: int = 3  # stock MAX_CONCURRENT_DOWNLOADS (here: files of one HF volume)
    attempts: int = 3  # tries per URL (stock: 3)
    retry_backoff_s: float = 1.0  # before try 2; doubled before each later try, plus <=10 % jitter
    # Hugging Face
    hf_endpoint: str = HF_DEFAULT_ENDPOINT  # the Hub's base URL (tests point it at a local server)
    hf_token: str | None = None  # executor-wide HF_ACCESS_TOKEN, used when the volume has no token
    hf_max_bytes: int = HF_MAX_BYTES
    hf_max_files: int = 10_000  # files listed for one snapshot
    hf_max_api_response_bytes: int = 32 * MIB  # the JSON file listing
    # where a zip_url archive waits before extraction; None = the parent of `dest` (the job dir),
    # never inside `dest`, which the container sees
    temp_dir: Path | None = None
    # where URLs may connect; the default refuses loopback, private, link-local and this host's addresses
    egress: EgressPolicy = PUBLIC_ONLY


def job_volume_limits(egress: EgressPolicy, *, disk_limit_mib: int) -> VolumeLimits:
    """The limits for one job's volume on this host: the operator's egress exceptions, and no more
    volume than the job may write to disk at all (`[container] disk_limit_mib`, 0 = no limit)."""
    max_volume_bytes = JOB_VOLUME_MAX_BYTES
    if disk_limit_mib > 0:
        max_volume_bytes = min(max_volume_bytes, disk_limit_mib * MIB)
    return VolumeLimits(egress=egress, max_volume_bytes=max_volume_bytes)


__all__ = [
    "HF_DEFAULT_ENDPOINT",
    "JOB_VOLUME_MAX_BYTES",
    "JOB_VOLUME_MAX_ENTRIES",
    "MAX_SUB_VOLUMES",
    "VolumeError",
    "VolumeLimits",
    "job_volume_limits",
]
