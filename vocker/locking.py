"""Store-wide reader/writer lock, so gc never deletes what an import is writing.

Imports, exports and a mount caching bytecode hold it shared; gc holds it exclusively. The OS releases it
when a process dies (even by kill -9), so a crash never leaves the store locked.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows: msvcrt has no shared locks, so every holder is exclusive.
    fcntl = None  # type: ignore[assignment]
    import msvcrt


@contextlib.contextmanager
def _locked(path: Path, shared: bool, blocking: bool) -> Iterator[bool]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
            try:
                fcntl.flock(fd, flags)
            except BlockingIOError:
                yield False
                return
        else:  # pragma: no cover - Windows
            try:
                msvcrt.locking(fd, msvcrt.LK_LOCK if blocking else msvcrt.LK_NBLCK, 1)
            except OSError:
                yield False
                return
        yield True
    finally:
        os.close(fd)


def shared(path: Path, blocking: bool = True) -> contextlib.AbstractContextManager[bool]:
    """Yields False (without waiting) when ``blocking`` is off and gc holds the lock."""
    return _locked(path, shared=True, blocking=blocking)


def exclusive(path: Path, blocking: bool = True) -> contextlib.AbstractContextManager[bool]:
    """Yields False (without waiting) when ``blocking`` is off and someone holds the lock."""
    return _locked(path, shared=False, blocking=blocking)
