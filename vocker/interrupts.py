"""What a command had recorded when Ctrl-C stopped it, so that its last line tells the truth.

A KeyboardInterrupt can strike at any bytecode, also right after a commit returned and
before any code could note it. So a command that records something registers, before it
starts, how to find out whether it did; after an interrupt the CLI asks (one read of the
store) rather than trust a flag that may not have been set.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any, Callable

import attrs


@attrs.define
class Recording:
    """One thing a command may record. ``check`` (set once the command knows what it is
    about to commit) names what is recorded, or returns None; unset, nothing was."""

    check: Callable[[], str | None] | None = None


#: The recordings of the running CLI command; None outside the CLI (library use keeps nothing).
_recordings: list[Recording] | None = None
#: Set when C code swallowed a KeyboardInterrupt (reported as "Exception ignored in ...").
_swallowed = False
_SIGINT = (signal.SIGINT,)


def track() -> None:
    """Start keeping recordings, and catch interrupts that C code swallows (the CLI, once per command)."""
    global _recordings
    _recordings = []
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        global _swallowed
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            _swallowed = True  # no traceback: the CLI ends the command as interrupted
        else:
            previous(unraisable)

    sys.unraisablehook = hook


def swallowed() -> bool:
    """Whether a Ctrl-C was lost in code that could not raise it (the command then ends as interrupted)."""
    return _swallowed


def hold() -> Any:
    """Hold off Ctrl-C in this thread until ``release`` (it is delivered then) around C code that would
    swallow a KeyboardInterrupt; returns what ``release`` needs. The mask is this thread's: with
    other threads running (a progress bar's), the kernel may hand SIGINT to one of them and Python
    still raises it here, so the unraisable hook of ``track`` is what keeps the outcome truthful."""
    if hasattr(signal, "pthread_sigmask"):
        return signal.pthread_sigmask(signal.SIG_BLOCK, _SIGINT)
    return None


def release(held: Any) -> None:
    if held is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def recording() -> Recording:
    """A Recording for a command to fill in, kept for ``message()`` when the CLI tracks."""
    r = Recording()
    if _recordings is not None:
        _recordings.append(r)
    return r


def message() -> str:
    """The CLI's line for an interrupt: what is recorded, "nothing was recorded" when a command
    that records was stopped before it did, or just "interrupted" for other commands."""
    if not _recordings:
        return "interrupted"
    try:
        done = [what for r in _recordings if r.check is not None and (what := r.check()) is not None]
    except Exception:  # the store cannot tell: say no more than is known
        return "interrupted; 'vocker images' shows whether the image was recorded"
    return "interrupted; " + ("; ".join(done) if done else "nothing was recorded")


def ignore() -> None:
    """Ignore Ctrl-C from now on: the command is ending and has one line left to print (a second
    Ctrl-C would cut it short), or has finished and only the interpreter's exit is left (where
    SIGINT either prints a traceback or kills the process)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
