"""vocker: reproducible Python environment images in a content-addressed store.

The API (see vocker.api): images(), import_venv(), export(), build(), run(), mount(), remount();
errors are the exceptions of vocker.errors.
"""

from __future__ import annotations

import sys
import types
from typing import Any

__version__ = "0.1.0"
_API = ("images", "import_venv", "export", "build", "run", "mount", "remount", "Image")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:  # keep `import vocker` light: the API pulls in the store
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(name)


class _Package(types.ModuleType):
    """``vocker.build`` is the API's function, though a submodule has that name too: importing
    the submodule would otherwise replace the function with it (``from .build import ...``
    goes through sys.modules and is unaffected)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
