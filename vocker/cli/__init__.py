"""The ``vocker`` command line: a thin edge over the core modules.

Each command lives in the module of its job (images, containers, builds, upkeep); this
module runs one command and turns any error into one line and an exit code.
"""

from __future__ import annotations

import errno
import os
import sys

import click

from .. import interrupts
from ..errors import VockerError
from ..ui import err
from . import builds, completion, containers, derive, images, layers, share, swap, upkeep  # noqa: F401  (they register their commands)
from .common import OwnFailure, cli

__all__ = ["cli", "main"]


def _one_line(exc: BaseException) -> tuple[str, int]:
    """The message and exit code for an error; never a traceback."""
    from sqlite3 import Error as DatabaseError

    from ..db import damaged

    if isinstance(exc, VockerError):
        return str(exc), exc.exit_code
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        if exc.errno == errno.ENOSPC:
            return f"no space left on device{where}; nothing was recorded", 1
        if exc.errno == errno.EROFS:
            return f"read-only file system{where}", 1
        return f"{exc.strerror or exc}{where}", 1
    if damaged(exc):
        return f"the store database is damaged ({exc}); 'vocker verify' tells more", 1
    if isinstance(exc, DatabaseError):
        return f"store database error: {exc}", 1
    return f"internal error: {type(exc).__name__}: {exc} (set VOCKER_DEBUG=1 for a traceback)", 70


def main(argv: list[str] | None = None) -> None:
    """Run one command: one line on stderr for any error; 130 for Ctrl-C, saying what is recorded."""
    try:
        interrupts.track()
        code = _run(list(sys.argv[1:] if argv is None else argv))
        if interrupts.swallowed():
            raise KeyboardInterrupt  # lost in C code on the way: the command still ends as interrupted
        interrupts.ignore()  # done: a Ctrl-C during the interpreter's exit would be a traceback or a kill
    except KeyboardInterrupt:
        interrupts.ignore()  # a second Ctrl-C must not cut the line short
        err.print(f"vocker: {interrupts.message()}", markup=False)
        code = 130
    sys.exit(code)


def _run(argv: list[str]) -> int | str | None:
    """The command's exit code, having printed the one line of its error if it failed.
    A KeyboardInterrupt goes on up to main(), from anywhere (also from these handlers)."""
    instruction = os.environ.get(completion.COMPLETE_VAR)
    if instruction:  # the shell asks for completions (the script 'vocker completion SHELL' prints)
        return completion.complete(instruction)
    try:
        # Not cli.main(): it turns Ctrl-C into click's Abort after printing a blank line.
        with cli.make_context("vocker", argv) as ctx:
            cli.invoke(ctx)
        return 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:  # a command's own exit code (verify, run, lookup)
        return exc.code
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        err.print(f"vocker: error: {exc.format_message()}{hint}", markup=False)
        return 2
    except click.Abort:
        err.print("vocker: aborted", markup=False)
        return 1
    except click.ClickException as exc:
        err.print(f"vocker: error: {exc.format_message()}", markup=False)
        return exc.exit_code
    except Exception as exc:
        if os.environ.get("VOCKER_DEBUG"):
            raise
        message, code = _one_line(exc.cause if isinstance(exc, OwnFailure) else exc)
        code = exc.code if isinstance(exc, OwnFailure) else code
        err.print(f"vocker: error: {message}", markup=False)
        return code
