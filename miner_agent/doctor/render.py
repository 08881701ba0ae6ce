"""Doctor's output: one table for people (check, result, what was found and what to do), JSON for scripts."""

from __future__ import annotations

import textwrap

from miner_agent.doctor.model import DoctorReport

TABLE_WIDTH = 120  # the last column wraps at this width; journald and terminals both read it
CHECK_COLUMN_MAX = 34


def render_table(report: DoctorReport) -> str:
    check_w = min(CHECK_COLUMN_MAX, max([len("CHECK"), *(len(r.check) for r in report.rows)]))
    result_w = max(len("RESULT"), *(len(r.result) for r in report.rows)) if report.rows else len("RESULT")
    text_w = max(40, TABLE_WIDTH - check_w - result_w - 4)
    lines = [f"{'CHECK'.ljust(check_w)}  {'RESULT'.ljust(result_w)}  WHAT TO DO"]
    for row in report.rows:
        stop = "" if row.detail.endswith((".", "?", "!")) else "."
        said = row.detail + (f"{stop} Fix: {row.fix}" if row.fix else "")
        wrapped = textwrap.wrap(said, text_w) or [""]
        lines.append(f"{row.check[:check_w].ljust(check_w)}  {row.result.ljust(result_w)}  {wrapped[0]}")
        lines += [f"{'':{check_w}}  {'':{result_w}}  {more}" for more in wrapped[1:]]
    failed = report.failed
    warned = sum(r.result == "warn" for r in report.rows)
    lines.append("")
    lines.append(f"doctor: {failed} failed, {warned} warning(s), {len(report.rows)} checks"
                 if failed or warned else f"doctor: all {len(report.rows)} checks passed")
    return "\n".join(lines)


def render_json(report: DoctorReport) -> str:
    return report.model_dump_json(indent=2)
