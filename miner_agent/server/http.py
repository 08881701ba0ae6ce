"""Plain HTTP on the axon port: receipt pages (`/receipts/<page>.jsonl`) and `/version`.

Validators fetch receipt pages incrementally with `Range: bytes=<n>-` and treat anything
but 206 + Content-Range (or 416 when nothing is new, 404 when the page does not exist)
as a transfer error, so pages are served by aiohttp's static file response, which
implements Range, 206, 416 and a pre-compressed `.gz` sibling exactly like a static
file server. Names are checked strictly: only `<digits>.jsonl` maps to a file.

The validators' incremental fetch (`Range: bytes=<n>-`, no conditional headers, no compression
asked for) of a small remainder is answered from one pread on the loop, with the status, headers
and body FileResponse gives it (tests/unit/test_receipt_pages_http.py holds the two side by side):
FileResponse's stat and open in the thread pool and its sendfile cost ~0.6 ms of CPU a request,
several times the rest of the request, which capped the page rate near 1,000 a second.
The 416 for "nothing new" likewise. Everything else (conditionals, gzip, whole pages, large
remainders) still goes to FileResponse. The read on the loop is of a file in the page cache,
at most SMALL_RANGE_MAX_BYTES.
"""

from __future__ import annotations

import os
import re
import stat
import time

from aiohttp import hdrs, web

from miner_agent import __version__
from miner_agent.server.context import CTX

_PAGE_NAME = re.compile(r"^[0-9]{1,12}\.jsonl$")
PAGE_CONTENT_TYPE = "application/jsonl"
# Largest remainder answered from a read on the loop; beyond it sendfile is the cheaper path.
SMALL_RANGE_MAX_BYTES = 256 * 1024
_OPEN_RANGE = re.compile(r"^bytes=([0-9]{1,15})-$")
_CONDITIONAL = (hdrs.IF_MATCH, hdrs.IF_NONE_MATCH, hdrs.IF_MODIFIED_SINCE, hdrs.IF_UNMODIFIED_SINCE, hdrs.IF_RANGE)
_PRECOMPRESSED = ("gzip", "br")  # the encodings FileResponse looks for a sibling file of


def small_open_range(request: web.Request, path: os.PathLike[str] | str) -> web.StreamResponse | None:
    """FileResponse's answer to `Range: bytes=<n>-`: 206 with a remainder up to SMALL_RANGE_MAX_BYTES,
    or 416 when nothing is new (a polling validator's usual answer). None when the request is
    anything else: the caller hands it to FileResponse."""
    if request.method != hdrs.METH_GET:
        return None
    match = _OPEN_RANGE.match(request.headers.get(hdrs.RANGE, ""))
    if match is None or any(h in request.headers for h in _CONDITIONAL):
        return None
    accept_encoding = request.headers.get(hdrs.ACCEPT_ENCODING, "").lower()
    if any(encoding in accept_encoding for encoding in _PRECOMPRESSED):
        return None
    start = int(match.group(1))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        count = st.st_size - start
        if not stat.S_ISREG(st.st_mode) or count > SMALL_RANGE_MAX_BYTES:
            return None
        if count <= 0:  # FileResponse: no body, chunked, the current length in Content-Range
            return web.StreamResponse(status=416, headers={hdrs.CONTENT_TYPE: PAGE_CONTENT_TYPE,
                                                           hdrs.CONTENT_RANGE: f"bytes */{st.st_size}"})
        # The fd holds this version of the page: a rewrite renames a new file over the name.
        body = os.pread(fd, count, start)
    finally:
        os.close(fd)
    if len(body) != count:
        return None
    response = web.Response(status=206, body=body, headers={hdrs.CONTENT_TYPE: PAGE_CONTENT_TYPE})
    # The order FileResponse sets them in.
    response.etag = f"{st.st_mtime_ns:x}-{st.st_size:x}"
    response.last_modified = st.st_mtime
    response.headers[hdrs.CONTENT_LENGTH] = str(count)
    response.headers[hdrs.ACCEPT_RANGES] = "bytes"
    response.headers[hdrs.CONTENT_RANGE] = f"bytes {start}-{start + count - 1}/{st.st_size}"
    return response


async def receipts_page(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if not _PAGE_NAME.match(name):
        raise web.HTTPNotFound()
    request.app[CTX].activity.pages_fetched(time.time())  # a 404 too: validators poll pages that may not exist yet
    path = request.app[CTX].receipts.pages_dir / name
    if not path.is_file():
        raise web.HTTPNotFound()
    small = small_open_range(request, path)
    if small is not None:
        return small
    return web.FileResponse(path, headers={hdrs.CONTENT_TYPE: PAGE_CONTENT_TYPE})


async def version(request: web.Request) -> web.Response:
    return web.json_response({"miner_version": __version__, "runner_version": __version__})
