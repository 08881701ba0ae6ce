"""Log lines: one per event, journald priorities, and no secrets."""

from __future__ import annotations

import asyncio
import io
import logging

from agent_common.logs import LOG_COALESCE_S, CoalescingHandler, JournalFormatter, redact


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
    # the words in any case, without a URL in the line (the quick path must still see them)
    assert redact("TOKEN=hf_abc123 next") == "TOKEN=<redacted> next"
    assert redact("x-amz-SIGNATURE: deadbeef") == "x-amz-SIGNATURE: <redacted>"
    assert redact("got BEARER sk_live_1") == "got BEARER <redacted>"


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


class _CountingStream(io.StringIO):
    """stderr as the handler sees it, counting the writes (each one a system call on a real fd)."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _turn_logger(stream: _CountingStream) -> logging.Logger:
    handler = CoalescingHandler(stream)
    handler.setFormatter(JournalFormatter(journal=True))
    logger = logging.getLogger(f"test.turn.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


async def test_the_loops_lines_go_out_together_soon_after() -> None:
    stream = _CountingStream()
    log = _turn_logger(stream)
    for n in range(100):
        log.info("job declined job=%d reason=busy", n)
        if n == 50:
            await asyncio.sleep(0)  # other turns of the loop, within the coalescing window
    assert stream.writes == 0
    await asyncio.sleep(LOG_COALESCE_S * 2)
    assert stream.writes == 1
    assert stream.getvalue().splitlines() == [f"<6>{log.name}: job declined job={n} reason=busy" for n in range(100)]


async def test_another_thread_writes_at_once_after_what_the_loop_has_pending() -> None:
    stream = _CountingStream()
    log = _turn_logger(stream)
    log.info("from the loop")
    await asyncio.to_thread(log.warning, "from a thread")  # before the window ends
    assert stream.getvalue().splitlines() == [f"<6>{log.name}: from the loop", f"<4>{log.name}: from a thread"]


def test_without_a_running_loop_each_line_is_written_and_flush_writes_what_is_left() -> None:
    stream = _CountingStream()
    log = _turn_logger(stream)
    log.info("no loop here")
    assert stream.getvalue() == f"<6>{log.name}: no loop here\n"

    async def one_turn() -> None:
        log.info("logged, then the loop ends before its next turn")

    loop = asyncio.new_event_loop()
    loop.run_until_complete(one_turn())
    loop.close()

    async def next_loop() -> None:  # a later asyncio.run in the same process: its lines are not stuck
        log.info("from the next loop")
        await asyncio.sleep(LOG_COALESCE_S * 2)

    asyncio.run(next_loop())
    assert stream.getvalue().endswith("logged, then the loop ends before its next turn\n"
                                      f"<6>{log.name}: from the next loop\n")
    log.handlers[0].flush()  # what logging.shutdown does at exit: nothing was left
    assert stream.getvalue().count("\n") == 3
