"""Terminal presentation shared by CLI commands: sizes, times, progress bars."""

from __future__ import annotations

import sys
import time
from typing import Any


class _LazyConsole:
    """A rich Console made on first use: importing rich costs more than a quiet command's whole run."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Any = None

    def get(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr, highlight=False, soft_wrap=True)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)

    def print(self, *objects: Any, **options: Any) -> None:
        if self._console is None and options == {"markup": False} and len(objects) == 1 and isinstance(objects[0], str):
            # A plain line before any rich output: written as is, without importing rich.
            stream = sys.stderr if self._stderr else sys.stdout
            stream.write(objects[0] + "\n")
            stream.flush()
            return
        self.get().print(*objects, **options)


out: Any = _LazyConsole(stderr=False)
err: Any = _LazyConsole(stderr=True)


def table(**options: Any) -> Any:
    """A borderless rich Table."""
    from rich.table import Table

    return Table(box=None, pad_edge=False, **options)


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
        self._progress: Any = None
        self._task = None

    def begin(self, label: str, total: int) -> None:
        if not err.is_terminal:
            return
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), TimeRemainingColumn(), console=err.get(), transient=True)
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
