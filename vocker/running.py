"""Run a command inside a mounted environment, passing its exit code and signals through."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from .mounting import mounted
from .store import Store


def activated_env(root: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """What `source bin/activate` would set, for a child process."""
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONHOME", None)
    env["VIRTUAL_ENV"] = str(root)
    env["VIRTUAL_ENV_PROMPT"] = f"({root.name}) "
    env["PATH"] = os.pathsep.join([str(root / "bin"), env.get("PATH", "")])
    return env


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
        forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
        previous = {s: signal.signal(s, lambda sig, _frame: proc.send_signal(sig)) for s in forwarded}
        try:
            code = proc.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    return code if code >= 0 else 128 - code
