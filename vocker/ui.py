"""Terminal presentation shared by CLI commands: sizes, times, progress bars."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def human_age(ts: float) -> str:
    delta = max(0, time.time() - ts)
    for seconds, unit in ((86400 * 365, "year"), (86400 * 30, "month"), (86400 * 7, "week"), (86400, "day"),
                          (3600, "hour"), (60, "minute")):
        if delta >= seconds:
            n = int(delta // seconds)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"


class RichReporter:
    """A byte-counting progress bar on stderr, shown only on a terminal."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task = None

    def begin(self, label: str, total: int) -> None:
        if not err.is_terminal:
            return
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), TimeRemainingColumn(), console=err, transient=True)
        self._progress.start()
        self._task = self._progress.add_task(label, total=total)

    def advance(self, amount: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, amount)  # type: ignore[arg-type]

    def end(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def fail(message: str, code: int = 1) -> None:
    err.print(f"vocker: error: {message}", markup=False)
    sys.exit(code)
