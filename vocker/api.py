"""The Python API: ``with vocker.mount("myenv:latest") as path: ...``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterable, Iterator

from .mounting import mounted
from .runclient import lease
from .store import Store


@contextlib.contextmanager
def mount(ref: str, path: str | Path | None = None, *, read_only: bool = False,
          home: str | Path | None = None, python: str | Path | None = None,
          with_: Iterable[str] = ()) -> Iterator[Path]:
    """Mount an image (throw-away writable layer) or a named container; always unmounts.

    ``with_``: mount the image plus a cached layer that installs these SPECs over it (as
    ``vocker run --with``), so a test suite can run against several versions of a dependency.

    ``path`` defaults to a warm mount of the image (vocker.warm: kept for the next use, its
    changes discarded when the block ends), or a new temporary directory when warm mounts are
    off (VOCKER_WARM_IDLE=0), for a named container or with other options; ``home`` defaults
    to the default store.
    """
    store = Store.open(Path(home) if home is not None else None)
    if with_:
        from .deriving import with_layer

        ref = with_layer(store, ref, tuple(with_)).image_id
    if path is None and not read_only and python is None:
        with lease(store.root, ref) as where:
            if where is not None:
                yield where
                return
    with mounted(store, ref, Path(path) if path is not None else None, read_only=read_only,
                 python=Path(python) if python is not None else None) as where:
        yield where


def remount(path: str | Path, ref: str, *, home: str | Path | None = None) -> None:
    """Switch what ``mount`` gave (``path``) to image ``ref`` with the same Python, in place: its
    writable layer stays, open files keep their bytes, new lookups see ``ref`` (vocker.swap).
    A warm mount goes back to its own image when its block ends."""
    from .swap import remount as swap_remount

    swap_remount(Store.open(Path(home) if home is not None else None), path, ref)
