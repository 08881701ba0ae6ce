"""One doctor row and the report: what was checked, the result, and what to do about it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Result = Literal["ok", "warn", "FAIL", "not checked"]


class CheckRow(BaseModel):
    """`detail` is what was found; `fix` is the operator's next step ("" when nothing to do)."""

    check: str
    result: Result
    detail: str
    fix: str = ""


def ok(check: str, detail: str) -> CheckRow:
    return CheckRow(check=check, result="ok", detail=detail)


def warn(check: str, detail: str, fix: str = "") -> CheckRow:
    return CheckRow(check=check, result="warn", detail=detail, fix=fix)


def fail(check: str, detail: str, fix: str = "") -> CheckRow:
    return CheckRow(check=check, result="FAIL", detail=detail, fix=fix)


def not_checked(check: str, why: str, fix: str = "") -> CheckRow:
    return CheckRow(check=check, result="not checked", detail=why, fix=fix)


class DoctorReport(BaseModel):
    rows: list[CheckRow] = Field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(row.result == "FAIL" for row in self.rows)

    def exit_code(self) -> int:
        """1 when any check failed: a deployment step or a cron job can gate on it."""
        return 1 if self.failed else 0
