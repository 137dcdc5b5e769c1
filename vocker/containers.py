"""Containers (an image plus a writable layer) and their mounts, as recorded in the store."""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import attrs
from .errors import NotFoundError, UsageError
from .home import private_dir
from .store import Store

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # full match: no trailing newline


@attrs.frozen
class Container:
    name: str
    image_id: str
    created: float
    persistent: bool


@attrs.frozen
class MountRecord:
    mountpoint: str
    container: str
    pid: int
    created: float
    options: dict[str, Any]


def container_dir(store: Store, name: str) -> Path:
    return store.root / "containers" / name


def unmount_flag(store: Store, name: str) -> Path:
    """Made by ``vocker unmount`` before it unmounts: the daemon's read-ahead stops (its open files would make the mount busy)."""
    return container_dir(store, name) / "unmounting"


def upper_dir(store: Store, name: str) -> Path:
    return container_dir(store, name) / "upper"


def claim(store: Store, name: str) -> int | None:
    """Take the container's lock: an open file descriptor, or None when another process holds it.

    The process that serves a mount holds it for its whole life (the mount command takes it and
    the daemon inherits it), and so does whoever creates or removes the container. It is an
    flock, so it ends with its holder however that ends (kill -9 included): a container whose
    lock is free has no live mount daemon and nobody working on it. FileNotFoundError when the
    container's directory is gone.
    """
    path = container_dir(store, name) / "lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:  # the holder may have removed the container between our open and flock
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def get(store: Store, name: str) -> Container | None:
    with store.read() as conn:
        row = conn.execute("SELECT name, image_id, created, persistent FROM containers WHERE name = ?",
                           (name,)).fetchone()
    return Container(row[0], row[1], row[2], bool(row[3])) if row else None


def require(store: Store, name: str, hint: str = "") -> Container:
    """The container ``name``, or NotFoundError: the one exit code for it in every command."""
    found = get(store, name)
    if found is None:
        raise NotFoundError(f"no such container: {name}{hint}")
    return found


def all_containers(store: Store) -> list[Container]:
    with store.read() as conn:
        rows = conn.execute("SELECT name, image_id, created, persistent FROM containers ORDER BY created").fetchall()
    return [Container(r[0], r[1], r[2], bool(r[3])) for r in rows]


def create(store: Store, image_ref: str, name: str) -> Container:
    """A named container of an image: its writable layer persists across mounts."""
    if not _NAME_RE.fullmatch(name):
        raise UsageError(f"invalid container name {name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    container, fd = _create(store, store.resolve(image_ref), name, persistent=True)
    os.close(fd)
    return container


def create_throwaway(store: Store, image_id: str) -> tuple[Container, int]:
    """A container for one mount, and its lock (see :func:`claim`), which the mount keeps.

    The directory and lock exist before the row, so a row whose lock is free is never one
    being set up: :func:`orphans` may remove it.
    """
    return _create(store, image_id, "tmp-" + secrets.token_hex(6), persistent=False)


def _create(store: Store, image_id: str, name: str, *, persistent: bool) -> tuple[Container, int]:
    directory = container_dir(store, name)
    private_dir(store.root / "containers")  # what is written into a mount stays the owner's
    while True:
        directory.mkdir(parents=True, exist_ok=True)
        try:
            fd = claim(store, name)
            break
        except FileNotFoundError:  # reaped as an orphan directory between the two: again
            continue
    if fd is None:
        raise UsageError(f"container {name!r} already exists")
    try:
        with store.write(durable=persistent) as conn:
            if conn.execute("SELECT 1 FROM containers WHERE name = ?", (name,)).fetchone():
                raise UsageError(f"container {name!r} already exists")
            for leftover in ("upper", "work"):  # of a crashed removal
                shutil.rmtree(directory / leftover, ignore_errors=True)
            (directory / "upper").mkdir()
            (directory / "upper").chmod(0o755)  # the mount root's mode: not whatever umask the creator had
            (directory / "work").mkdir()
            conn.execute("INSERT INTO containers (name, image_id, created, persistent) VALUES (?, ?, ?, ?)",
                         (name, image_id, time.time(), persistent))
    except BaseException:
        os.close(fd)
        raise
    return Container(name, image_id, time.time(), persistent), fd


def set_image(store: Store, name: str, image_id: str) -> None:
    """The container now shows another image under its writable layer (vocker.swap)."""
    with store.write() as conn:
        conn.execute("UPDATE containers SET image_id = ? WHERE name = ?", (image_id, name))


def remove(store: Store, name: str, *, durable: bool = True) -> None:
    """Forget a container and delete its writable layer (the caller holds its lock, see :func:`claim`).

    ``durable=False`` for throw-away containers: no fsync, as their row means nothing after a
    power loss; their files go first, as they may be what filled the disk. Whatever an
    interrupted removal leaves (a row without files, files without a row) is an orphan for
    :func:`reap`.
    """
    if not durable:
        shutil.rmtree(container_dir(store, name), ignore_errors=True)
    with store.write(durable=durable) as conn:
        conn.execute("DELETE FROM containers WHERE name = ?", (name,))
    shutil.rmtree(container_dir(store, name), ignore_errors=True)


def is_held(store: Store, name: str) -> bool:
    """Whether a process holds the container's lock (serves a mount of it, creates or removes it)."""
    try:  # no lock file: nobody holds it (or its holder is removing the container)
        fd = os.open(container_dir(store, name) / "lock", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def orphans(store: Store) -> list[str]:
    """Throw-away containers, and directories without a container, that no process holds.

    What a killed ``vocker mount`` or mount daemon leaves behind: nothing can ever use them.
    """
    rows = {c.name: c for c in all_containers(store)}
    root = store.root / "containers"
    names = [c.name for c in rows.values() if not c.persistent]
    names += sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in rows) if root.is_dir() else []
    return [name for name in names if not is_held(store, name)]


def reap(store: Store, name: str) -> bool:
    """Remove an orphan (see :func:`orphans`) unless a process holds it by now; whether it did."""
    try:
        fd = claim(store, name)
    except FileNotFoundError:
        fd = -1  # the directory is gone: a row may be left
    if fd is None:
        return False
    try:
        container = get(store, name)
        if container is not None and container.persistent:
            return False
        remove(store, name, durable=False)
        return True
    finally:
        if fd >= 0:
            os.close(fd)


def record_mount(store: Store, mountpoint: str, container: str, pid: int, options: dict[str, Any]) -> None:
    """Record a mount about to be made; refused while another live daemon has one there (two
    mounts racing for one empty directory: the record of the first must not be lost)."""
    from .mounting import pid_alive

    with store.write(durable=False) as conn:  # no mount outlives a power loss
        row = conn.execute("SELECT pid FROM mounts WHERE mountpoint = ?", (mountpoint,)).fetchone()
        if row is not None and row[0] != pid and pid_alive(row[0]):
            raise UsageError(f"{mountpoint} is already a mount point (mount daemon pid {row[0]})")
        conn.execute("INSERT OR REPLACE INTO mounts (mountpoint, container, pid, created, options) "
                     "VALUES (?, ?, ?, ?, ?)", (mountpoint, container, pid, time.time(), json.dumps(options)))
    note_mountpoint(store, container, mountpoint)


def note_mountpoint(store: Store, container: str, mountpoint: str) -> None:
    """Keep where the container was last mounted: its files name that path, and a commit of it
    after the unmount cuts it out (vocker.layering)."""
    path = container_dir(store, container) / "mountpoint"
    tmp = path.with_name(f".mountpoint.{os.getpid()}")
    try:
        tmp.write_text(mountpoint)
        os.replace(tmp, path)
    except OSError:  # a note for later commits; the mount works without it
        tmp.unlink(missing_ok=True)


def forget_mount(store: Store, mountpoint: str, pid: int) -> None:
    """Forget the mount that daemon ``pid`` made (not one made there since)."""
    with store.write(durable=False) as conn:
        conn.execute("DELETE FROM mounts WHERE mountpoint = ? AND pid = ?", (mountpoint, pid))


def mounts(store: Store) -> list[MountRecord]:
    with store.read() as conn:
        rows = conn.execute("SELECT mountpoint, container, pid, created, options FROM mounts ORDER BY created").fetchall()
    return [MountRecord(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]


def mount_of(store: Store, mountpoint: str) -> MountRecord | None:
    return next((m for m in mounts(store) if m.mountpoint == mountpoint), None)
