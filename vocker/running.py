"""Run a command inside a mounted environment, passing its exit code and signals through."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from . import shells
from .errors import CommandNotRunError
from .mounting import mounted
from .runclient import activated_env, idle_seconds, prompt_name, run_warm, wait_forwarding
from .store import Store


def check_inside(command: list[str], root: Path, path: str, prompt: str) -> None:
    """Refuse a bare ``python``/``pip`` that PATH finds outside the environment (exit 127, as
    not found there): an image without pip would otherwise install into whatever environment
    the host's pip belongs to."""
    if not command or "/" in command[0] or command[0] not in shells.GUARDED:
        return
    found = shutil.which(command[0], path=path)
    if found is not None and Path(found).parent != root / "bin":
        raise CommandNotRunError(shells.refusal(command[0], prompt).removeprefix("vocker: error: "), True)


def run_in(store: Store, ref: str, command: list[str], *, read_only: bool = False, python: Path | None = None,
           allow_other: bool = False, env: Mapping[str, str] | None = None, cwd: Path | None = None,
           interactive_shell: bool = False, with_: tuple[str, ...] = ()) -> int:
    """Mount ``ref``, run ``command`` with the environment active, unmount; the command's exit code.

    ``env`` adds variables; ``interactive_shell``: ``command`` is a shell, started so that the
    environment wins over the user's start-up files (see :mod:`vocker.shells`); ``with_``: run
    on ``ref`` plus a cached layer installing these SPECs (vocker.deriving.with_layer).
    """
    if command and command[0] == "--":
        command = command[1:]
    name = prompt_name(ref)
    if with_:
        from .deriving import with_layer
        from .ui import err

        ref = with_layer(store, ref, with_, on_step=lambda m: err.print(m, markup=False)).image_id
        if not (read_only or python or allow_other or env or cwd or interactive_shell) and idle_seconds() > 0:
            code = run_warm(store.root, ref, command, name)  # as 'vocker run IMAGE CMD' does
            if code is not None:
                return code
    # The mount point is named after the image, so that what names the venv after its
    # directory (the activate scripts' prompt) shows the image, not a random name; not
    # with a ':' (app:v1), which would split PATH.
    where = name.replace(":", "-")
    parent = Path(tempfile.mkdtemp(prefix="vocker-"))
    try:
        with mounted(store, ref, parent / where, read_only=read_only, python=python,
                     allow_other=allow_other) as root:
            environ = activated_env(root, prompt=name)
            environ.update(env or {})
            if interactive_shell:
                rcdir = parent / "rc"
                rcdir.mkdir(mode=0o700)
                command, extra = shells.interactive(command[0], root, name, rcdir)
                environ.update(extra)
            else:
                check_inside(command, root, environ["PATH"], name)
            return _wait(command, environ, cwd)
    finally:
        shutil.rmtree(parent / "rc", ignore_errors=True)
        try:
            (parent / where).rmdir()
            parent.rmdir()
        except OSError:
            pass  # still mounted (a lazy unmount): the system's temporary directory keeps it


def _wait(command: list[str], env: dict[str, str], cwd: Path | None) -> int:
    """Run to the end, forwarding the signals a terminal or a supervisor sends."""
    try:
        proc = subprocess.Popen(command, env=env, cwd=cwd)
    except OSError as exc:
        raise CommandNotRunError(f"cannot run {command[0]}: {exc.strerror}",
                                 isinstance(exc, FileNotFoundError)) from None
    return wait_forwarding(proc)
