"""Progress of a batch job: a bar with rate and ETA on a terminal, a log line now and then
otherwise (CI logs and cron mail want lines, not carriage returns)."""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)


class JobProgress:
    def __init__(self, total: int | None, *, done: int = 0, enabled: bool | None = None,
                 every_s: float = 10.0) -> None:
        self.total = total
        self.done = done
        self.started_with = done
        self.every_s = every_s
        self._t0 = time.monotonic()
        self._last = self._t0
        self.tty = sys.stderr.isatty() if enabled is None else enabled
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> JobProgress:
        if self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("scoring"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn(), console=Console(stderr=True), transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("scoring", total=self.total, completed=self.done,
                                            rate="")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
        self.log_line(final=True, stopped=exc_type is not None)

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self._t0
        return (self.done - self.started_with) / elapsed if elapsed > 0 else 0.0

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, rate=f"{self.rate:.1f} rows/s")
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self.log_line()

    def log_line(self, *, final: bool = False, stopped: bool = False) -> None:
        rate = self.rate
        eta: float | None = None
        if self.total is not None and rate > 0:
            eta = max(self.total - self.done, 0) / rate
        of = f"/{self.total}" if self.total is not None else ""
        when = f", ETA {eta:.0f} s" if eta is not None and not final else ""
        logger.info(
            "%s: %d%s rows, %.1f rows/s%s",
            "batch stopped" if stopped else "batch finished" if final else "batch progress",
            self.done, of, rate, when,
            extra={"rows_done": self.done, "rows_total": self.total,
                   "rows_per_s": round(rate, 1), "eta_s": None if eta is None else round(eta)},
        )
