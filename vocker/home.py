"""Which store to use: a project's ``.vocker/``, or the user store.

- ``--local``: ``.vocker/`` in the current directory (created if missing);
- ``--global``: the user store, ``$VOCKER_HOME`` or the platform's user data directory;
- neither: ``.vocker/`` in the current directory if it exists, else the user store.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

LOCAL_DIR = ".vocker"
#: A store's root and its containers/ are private to their owner: blobs and the database
#: keep no file modes, so a venv's 0600 file would otherwise be readable by anyone there.
PRIVATE_DIR_MODE = 0o700

#: Set by the CLI's --local/--global for the whole invocation.
_mode: str | None = None


def set_mode(mode: str | None) -> None:
    global _mode
    _mode = mode


def user_home() -> tuple[Path, str]:
    env = os.environ.get("VOCKER_HOME")
    if env:
        return Path(env).expanduser().absolute(), "$VOCKER_HOME"
    import platformdirs  # here: `vocker run` on a warm mount with $VOCKER_HOME set goes without it

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


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) private to its owner, or tighten it if it is wider.

    Tightening an existing directory (as an older vocker left it, 0755) is what keeps
    what is already in it private; the mode is set whatever the umask, also as root.
    Where it cannot be changed (not ours, a read-only file system) it is left as it is.
    """
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode != PRIVATE_DIR_MODE:
        with contextlib.suppress(OSError):
            os.chmod(path, PRIVATE_DIR_MODE)
