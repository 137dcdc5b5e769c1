"""vocker: reproducible Python environment images in a content-addressed store."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "mount", "remount"]


def __getattr__(name: str) -> Any:  # keep `import vocker` light: the API pulls in the store
    if name in ("mount", "remount"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
