"""The Python API: what the CLI does, for a program (an installer, a test harness).

    import vocker
    vocker.import_venv(".venv", "myenv")                 # venv -> image
    [img.tags for img in vocker.images()]
    vocker.export("myenv", "/opt/myenv")                 # image -> working venv
    vocker.build(["rich>=13"], tag="tools")              # requirements -> lock -> image
    code = vocker.run("myenv", ["python", "-c", "import rich"])
    with vocker.mount("myenv") as env: ...               # mounted, always unmounted

Every function takes ``home``: the store's directory (default: as the CLI chooses, see
``vocker config``). Failures are exceptions from :mod:`vocker.errors`, all of them
:class:`~vocker.errors.VockerError` with a one-line message: ``UsageError`` (no such
image, bad names), ``BuildError`` (resolution, installation or the build's test failed;
``details`` holds the installer's output), ``FuseUnavailableError``,
``NoInterpreterError``, ``IntegrityError`` (a corrupt store).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import attrs

from .build import BuildRequest, BuildResult, IndexOptions
from .exporter import ExportResult
from .importer import ImportResult
from .mounting import mounted
from .runclient import lease
from .store import Store

__all__ = ["Image", "ImportResult", "ExportResult", "BuildResult", "IndexOptions",
           "images", "import_venv", "export", "build", "run", "mount", "remount"]

PathLike = str | Path


def _store(home: PathLike | None) -> Store:
    return Store.open(Path(home) if home is not None else None)


@attrs.frozen
class Image:
    """One image of the store, as ``vocker images`` lists it."""

    id: str  # "sha256:<64 hex>"
    tags: tuple[str, ...]  # "name:tag", sorted
    kind: str  # "venv" or "tree"
    python: str | None  # "cpython 3.11.7" for a venv
    files: int
    size: int  # bytes of all its files
    created: float  # seconds since the epoch


def images(*, home: PathLike | None = None) -> list[Image]:
    """Every image in the store, newest first."""
    store = _store(home)
    try:
        out = []
        for r in store.images():
            manifest = store.manifest(r.id)
            py = f"{manifest.python.implementation} {manifest.python.version}" if manifest.python else None
            out.append(Image(r.id, r.tags, manifest.kind, py, r.files, r.size, r.created))
        return out
    finally:
        store.close()


def import_venv(path: PathLike, tag: str | None = None, *, home: PathLike | None = None,
                python: PathLike | None = None, rehash: bool = False) -> ImportResult:
    """Import a venv (or any directory) as an image, tagged ``tag`` ("name[:tag]") if given.

    The result names the image, whether it is new, and what deserves a warning:
    ``escaping_links`` (symlinks out of the image) and ``editables`` (editable installs,
    whose code stays outside it).
    """
    from . import refs
    from .importer import import_tree

    store = _store(home)
    try:
        return import_tree(store, Path(path), refs.new_tag(tag) if tag else None,
                           python=Path(python) if python is not None else None, rehash=rehash)
    finally:
        store.close()


def export(ref: str, dest: PathLike, *, home: PathLike | None = None, audit: bool = False,
           python: PathLike | None = None) -> ExportResult:
    """Write image ``ref`` as a working venv at ``dest`` (missing or empty); needs no FUSE.

    ``audit``: the raw stored contents, runnable by nothing (for untrusted images).
    """
    from .exporter import export_image

    store = _store(home)
    try:
        return export_image(store, ref, Path(dest), audit=audit, python=Path(python) if python is not None else None)
    finally:
        store.close()


def build(specs: Sequence[str] = (), *, requirements: PathLike | None = None, tag: str | None = None,
          python: str | None = None, lock: PathLike | None = None, index: IndexOptions | None = None,
          upgrade: bool = False, seed: bool = True, test: Sequence[str] | str | None = None,
          lock_only: bool = False, home: PathLike | None = None) -> BuildResult:
    """Build an image from requirements (``specs``, or a ``requirements`` file, lock or pyproject.toml).

    As ``vocker build``: the lock is resolved (or reused), and a build whose cache key is in
    the store installs nothing (``result.cached``). ``test`` (a command, run in the mounted
    image) must exit 0 before the image is tagged. ``index`` chooses where packages come
    from (default: pip's and uv's configuration). Raises BuildError when it fails.
    """
    from . import refs
    from .build import build as build_image

    store = _store(home)
    try:
        req = BuildRequest(tuple(specs), Path(requirements) if requirements is not None else None, python,
                           Path(lock) if lock is not None else None, index or IndexOptions(), upgrade, seed)

        def run_test(image_id: str) -> int:
            from .running import run_in

            command = ["/bin/sh", "-c", test] if isinstance(test, str) else list(test or ["true"])
            return run_in(store, image_id, command)

        return build_image(store, req, tag=refs.new_tag(tag) if tag else None, lock_only=lock_only,
                           test=run_test if test is not None else None)
    finally:
        store.close()


def run(ref: str, command: Sequence[str] | str, *, home: PathLike | None = None, read_only: bool = False,
        python: PathLike | None = None) -> int:
    """Run ``command`` (a list, or a string for ``/bin/sh -c``) with image or container ``ref``
    mounted and active; returns its exit code (128+N when signal N ended it).

    Its standard streams are this process's. An image's changes are discarded afterwards.
    """
    from .running import run_in

    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    if not argv:
        from .errors import UsageError

        raise UsageError("run needs a command")
    store = _store(home)
    try:
        return run_in(store, ref, argv, read_only=read_only, python=Path(python) if python is not None else None)
    finally:
        store.close()


@contextlib.contextmanager
def mount(ref: str, path: PathLike | None = None, *, read_only: bool = False,
          home: PathLike | None = None, python: PathLike | None = None,
          with_: Iterable[str] = ()) -> Iterator[Path]:
    """Mount an image (throw-away writable layer) or a named container; always unmounts.

    ``with_``: mount the image plus a cached layer that installs these SPECs over it (as
    ``vocker run --with``), so a test suite can run against several versions of a dependency.

    ``path`` defaults to a warm mount of the image (vocker.warm: kept for the next use, its
    changes discarded when the block ends), or a new temporary directory when warm mounts are
    off (VOCKER_WARM_IDLE=0), for a named container or with other options; ``home`` defaults
    to the default store.
    """
    store = _store(home)
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


def remount(path: PathLike, ref: str, *, home: PathLike | None = None) -> None:
    """Switch what ``mount`` gave (``path``) to image ``ref`` with the same Python, in place: its
    writable layer stays, open files keep their bytes, new lookups see ``ref`` (vocker.swap).
    A warm mount goes back to its own image when its block ends."""
    from .swap import remount as swap_remount

    swap_remount(_store(home), path, ref)
