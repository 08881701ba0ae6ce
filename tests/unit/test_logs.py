"""Log lines: one per event, journald priorities, and no secrets."""

from __future__ import annotations

import logging

from agent_common.logs import JournalFormatter, redact


def _format(msg: str, *args: object, level: int = logging.INFO, journal: bool = True, exc: bool = False) -> str:
    record = logging.LogRecord("x", level, __file__, 1, msg, args, None)
    if exc:
        try:
            raise RuntimeError("upload to https://bucket.s3.amazonaws.com/o?X-Amz-Signature=abc123&X-Amz-Credential=K failed")
        except RuntimeError:
            import sys

            record.exc_info = sys.exc_info()
    return JournalFormatter(journal).format(record)


def test_priority_prefix_and_one_line() -> None:
    assert _format("job ended job=%s", "u1") == "<6>x: job ended job=u1"
    assert _format("bad\nthing", level=logging.ERROR) == "<3>x: bad thing"
    assert _format("w", level=logging.WARNING).startswith("<4>")
    line = _format("upload failed", exc=True)
    assert "\n" not in line and line.startswith("<6>x: upload failed exception=")


def test_presigned_urls_and_tokens_are_redacted() -> None:
    text = redact("PUT https://b.s3.amazonaws.com/out.zip?X-Amz-Signature=deadbeef&X-Amz-Expires=60 -> 403")
    assert text == "PUT https://b.s3.amazonaws.com/out.zip?<redacted> -> 403"
    assert "secret" not in redact("fetch https://user:secret@host/x failed")
    assert redact("headers {'Authorization': 'Bearer hf_abcdef'}") == "headers {'Authorization': '<redacted>'}"
    assert redact("token=hf_abc123 next") == "token=<redacted> next"
    assert redact("job=3f1c stage=execution took_ms=812") == "job=3f1c stage=execution took_ms=812"


def test_tracebacks_are_redacted_too() -> None:
    line = _format("upload failed", exc=True)
    assert "abc123" not in line and "?<redacted>" in line


def test_lines_logged_inside_a_job_name_the_job_and_validator() -> None:
    import asyncio

    from agent_common.logs import set_job_fields

    async def job() -> tuple[str, str]:
        set_job_fields(job="u-1", validator="5Fvali")
        in_task = _format("event=volume_extracted files=%d", 3)
        in_thread = await asyncio.to_thread(_format, "upload done job=%s", "u-1")
        return in_task, in_thread

    in_task, in_thread = asyncio.run(job())
    assert in_task == "<6>x: event=volume_extracted files=3 job=u-1 validator=5Fvali"
    assert in_thread == "<6>x: upload done job=u-1 validator=5Fvali"
    assert _format("agent listening") == "<6>x: agent listening"  # outside any job: nothing added
