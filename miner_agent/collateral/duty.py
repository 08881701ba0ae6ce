"""The running miner's collateral check: every check period, off the hot path, one log line.

Validators re-read collateral every 10 minutes, so the miner does the same and reports what it
saw: gauges per validator on /metrics, one journal line per period naming the validators below
the threshold, and a line in `miner-agent status`. The check never blocks jobs (chain reads are
awaited, EVM reads run in a worker thread) and a failure is one warning; the next period retries.
With the static chain backend and no [collateral] evm_rpc it is off and says so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from miner_agent.chain.backend import ChainBackend
from miner_agent.collateral.report import CollateralReport, collateral_report, not_checked_reason
from miner_agent.metrics import Gauge
from miner_agent.miner_config import MinerConfig

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 5.0  # how long stop() waits for a check caught mid-request
FIRST_CHECK_DELAY_S = 5.0  # after start: the listener and chain duties come first

ReportFn = Callable[..., Awaitable[CollateralReport]]


class CollateralDuty:
    def __init__(self, config: MinerConfig, backend: ChainBackend, hotkey: str, *,
                 report: ReportFn = collateral_report, first_delay_s: float = FIRST_CHECK_DELAY_S) -> None:
        self.config = config
        self.backend = backend
        self.hotkey = hotkey
        self.period_s = config.collateral.check_period_s
        reason = not_checked_reason(config)
        self.off_reason = reason or ("[collateral] check_period_s = 0" if self.period_s == 0 else "")
        self.last: CollateralReport | None = None
        self.last_checked_at: float | None = None  # unix time of the last completed check
        self.last_error: str | None = None
        self.runs = 0
        self.failures = 0
        self._report = report
        self._first_delay_s = first_delay_s
        self._w3: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return not self.off_reason

    # The check -------------------------------------------------------------------------------------

    async def check_once(self) -> CollateralReport:
        """One report, the log line, the state the gauges and status read."""
        self.runs += 1
        try:
            if self._w3 is None:  # importing web3 takes a second of CPU: not on the event loop
                from miner_agent.collateral.contract import connect  # web3 itself is imported in connect

                settings = self.config.collateral
                url = str(settings.evm_rpc_url(self.config.chain.network))
                self._w3 = await asyncio.to_thread(connect, url, settings.rpc_timeout_s)
                await asyncio.to_thread(__import__, "eth_account")
            report = await self._report(self.config, self.backend, w3=self._w3, hotkey=self.hotkey)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one line, never a crash: the next period retries
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("collateral check failed retry_in_s=%d error=%s", self.period_s, self.last_error)
            raise
        self.last, self.last_checked_at = report, time.time()
        if not report.checked:
            self.failures += 1
            self.last_error = report.reason
            log.warning("collateral not checked retry_in_s=%d reason=%s", self.period_s, report.reason)
            return report
        self.last_error = None
        below = report.below_threshold()
        if below:
            listed = " ".join(f"{row.validator}:{row.collateral_wei if row.collateral_wei is not None else '-'}"
                              for row in below)
            log.warning("collateral below threshold at %d/%d validators threshold_wei=%d below=%s "
                        "(see `miner-agent collateral status`)", len(below), len(report.rows),
                        report.threshold_wei, listed)
        else:
            log.info("collateral ok validators=%d threshold_wei=%d", len(report.rows), report.threshold_wei)
        return report

    async def _loop(self) -> None:
        await asyncio.sleep(self._first_delay_s)
        while True:
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                pass  # already logged by check_once
            await asyncio.sleep(self.period_s)

    # Lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.enabled:
            log.info("collateral check off reason=%s", self.off_reason)
            return
        self._task = asyncio.create_task(self._loop(), name="collateral-check")
        log.info("collateral check started period_s=%d threshold_wei=%d", self.period_s,
                 self.config.collateral.threshold_wei)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task], timeout=STOP_TIMEOUT_S)

    # Readers (scrape time, admin status) ------------------------------------------------------------

    def gauges(self) -> list[Gauge]:
        """The three series the alert rules use (packaging/prometheus/); empty while off or unchecked."""
        def rows() -> list[Any]:
            return self.last.rows if self.last is not None and self.last.checked else []

        def collateral() -> dict:
            return {(("validator", r.validator),): float(r.collateral_wei) for r in rows() if r.collateral_wei is not None}

        def sufficient() -> dict:
            return {(("validator", r.validator),): 1.0 if r.ok else 0.0 for r in rows()}

        def threshold() -> dict:
            return {(): float(self.config.collateral.threshold_wei)} if self.enabled else {}

        return [
            Gauge("miner_agent_collateral_wei", "Our collateral in each permitted validator's contract, in wei",
                  collateral),
            Gauge("miner_agent_collateral_sufficient",
                  "1 if the validator would keep us (collateral at or above the threshold), else 0", sufficient),
            Gauge("miner_agent_collateral_threshold_wei", "The [collateral] threshold_wei the check compares with",
                  threshold),
        ]

    def status(self) -> dict[str, object]:
        """For the admin socket's /status (and `miner-agent status`)."""
        report = self.last
        below = [] if report is None else [
            {"validator": r.validator, "collateral_wei": r.collateral_wei, "problem": r.problem}
            for r in report.below_threshold()]
        return {
            "enabled": self.enabled,
            "off_reason": self.off_reason,
            "checked": bool(report and report.checked),
            "checked_at": self.last_checked_at,
            "threshold_wei": self.config.collateral.threshold_wei,
            "validators": 0 if report is None else len(report.rows),
            "below": below,
            "last_error": self.last_error,
            "runs": self.runs,
            "failures": self.failures,
        }


def status_line(status: dict[str, Any] | None, now: float | None = None) -> str:
    """The one line `miner-agent status` prints for the collateral check."""
    if not status:
        return "collateral: not checked (this miner-agent does not report it)"
    if not status.get("enabled"):
        return f"collateral: not checked ({status.get('off_reason')})"
    if not status.get("checked"):
        why = status.get("last_error") or "first check not done yet"
        return f"collateral: not checked ({why})"
    ago = max(0, int((now or time.time()) - float(status.get("checked_at") or 0)))
    below, total = status.get("below") or [], status.get("validators", 0)
    if not below:
        return f"collateral: enough at {total}/{total} validators (checked {ago // 60} min ago)"
    names = ", ".join(str(b["validator"]) for b in below)
    return (f"collateral: BELOW THRESHOLD at {len(below)}/{total} validators: {names} "
            f"(checked {ago // 60} min ago; see `miner-agent collateral status`)")
