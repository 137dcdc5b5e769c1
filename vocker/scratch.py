"""Scratch directories of exports and builds, kept where a killed run's leftovers are found.

A run holds the store's shared lock while its scratch directory exists, so gc (which
empties the store's ``tmp/`` under the exclusive lock) removes only what a dead run
left. An export is assembled where one ``rename`` puts it in place: in ``tmp/`` when
that is on the destination's mount, else beside the destination, recorded in the
store's ``exports/`` for as long as it exists so that the next export removes it if
its exporter died (a record whose lock nobody holds).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .store import Store

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: sibling leftovers are not tracked there
    fcntl = None  # type: ignore[assignment]

#: The names of export scratch directories beside a destination (as before: `.NAME.vocker-XXXX`).
_SIBLING = re.compile(r"\..*\.vocker-[A-Za-z0-9_]+")


@contextlib.contextmanager
def in_store(store: Store, prefix: str) -> Iterator[Path]:
    """A private directory in the store's ``tmp/``, removed on exit (call with the shared lock held)."""
    with tempfile.TemporaryDirectory(prefix=prefix, dir=store.blobs.tmp_dir) as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def for_export(store: Store, dest: Path) -> Iterator[Path]:
    """A private directory from which ``os.replace`` can move the export to ``dest``; removed
    on exit unless moved. Call with the store's shared lock held and ``dest.parent`` made."""
    if _same_mount(store.blobs.tmp_dir, dest.parent):
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.vocker-", dir=store.blobs.tmp_dir))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    tmp = dest.parent / f".{dest.name}.vocker-{secrets.token_hex(4)}"
    with _recorded(store, tmp):
        os.mkdir(tmp, 0o700)
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale(store: Store) -> int:
    """Remove the scratch directories of exports to other file systems whose exporter died."""
    records = store.root / "exports"
    if fcntl is None or not records.is_dir():
        return 0
    removed = 0
    with _registry(store):
        for record in records.iterdir():
            if record.name.startswith("."):
                continue
            with contextlib.suppress(OSError), open(record, "rb") as f:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its export is running
                target = Path(os.fsdecode(f.read()))
                if target.is_absolute() and _SIBLING.fullmatch(target.name) and not target.is_symlink():
                    shutil.rmtree(target, ignore_errors=True)
                    removed += not target.exists()
                record.unlink()
    return removed


@contextlib.contextmanager
def _recorded(store: Store, tmp: Path) -> Iterator[None]:
    """Keep a record naming ``tmp``, locked while this process lives, until the block ends."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    records = store.root / "exports"
    records.mkdir(mode=0o700, exist_ok=True)
    record = records / secrets.token_hex(8)
    with _registry(store):  # no remove_stale sees the record before it is locked
        fd = os.open(record, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, os.fsencode(str(tmp)))
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            record.unlink()
        os.close(fd)


@contextlib.contextmanager
def _registry(store: Store) -> Iterator[None]:
    """Registering and sweeping exclude each other (both take moments)."""
    assert fcntl is not None
    records = store.root / "exports"
    records.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(records / ".lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _same_mount(a: Path, b: Path) -> bool:
    """Whether a directory can be renamed from ``a`` into ``b`` (same file system and mount)."""
    return _mount_of(a) == _mount_of(b)


def _mount_of(path: Path) -> tuple[int, int | None]:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        dev = os.fstat(fd).st_dev
        try:  # a bind mount shares st_dev with its source, but rename(2) across mounts fails
            info = Path(f"/proc/self/fdinfo/{fd}").read_text()
        except OSError:
            return dev, None
        ids = [int(line.split()[1]) for line in info.splitlines() if line.startswith("mnt_id:")]
        return dev, ids[0] if ids else None
    finally:
        os.close(fd)
