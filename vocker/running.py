"""Run a command inside a mounted environment, passing its exit code and signals through."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .mounting import mounted
from .runclient import activated_env, wait_forwarding
from .store import Store


def run_in(store: Store, ref: str, command: list[str], *, read_only: bool = False,
           python: Path | None = None, allow_other: bool = False) -> int:
    if command and command[0] == "--":
        command = command[1:]
    with mounted(store, ref, read_only=read_only, python=python, allow_other=allow_other) as root:
        try:
            proc = subprocess.Popen(command, env=activated_env(root))
        except OSError as exc:
            from .errors import CommandNotRunError
            raise CommandNotRunError(f"cannot run {command[0]}: {exc.strerror}",
                                     isinstance(exc, FileNotFoundError)) from None
        return wait_forwarding(proc)
