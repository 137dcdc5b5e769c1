"""Where the store lives: ``VOCKER_HOME``, else the platform's user data directory."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def default_home() -> Path:
    env = os.environ.get("VOCKER_HOME")
    if env:
        return Path(env).expanduser().absolute()
    return platformdirs.user_data_path("vocker", appauthor=False)
