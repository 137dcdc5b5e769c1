"""Which store to use: a project's ``.vocker/``, or the user store.

- ``--local``: ``.vocker/`` in the current directory (created if missing);
- ``--global``: the user store, ``$VOCKER_HOME`` or the platform's user data directory;
- neither: ``.vocker/`` in the current directory if it exists, else the user store.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

LOCAL_DIR = ".vocker"

#: Set by the CLI's --local/--global for the whole invocation.
_mode: str | None = None


def set_mode(mode: str | None) -> None:
    global _mode
    _mode = mode


def user_home() -> tuple[Path, str]:
    env = os.environ.get("VOCKER_HOME")
    if env:
        return Path(env).expanduser().absolute(), "$VOCKER_HOME"
    return platformdirs.user_data_path("vocker", appauthor=False), "the user data directory (default)"


def resolve_home(mode: str | None = None, cwd: Path | None = None) -> tuple[Path, str]:
    """(store root, why it was chosen)."""
    mode = mode or _mode
    local = (cwd or Path.cwd()).absolute() / LOCAL_DIR
    if mode == "local":
        return local, "--local: the project store in the current directory"
    if mode == "global":
        root, why = user_home()
        return root, f"--global: the user store ({why})"
    if local.is_dir():
        return local, f"{LOCAL_DIR}/ exists in the current directory (use --global for the user store)"
    return user_home()


def default_home() -> Path:
    return resolve_home()[0]
