"""Containers (an image plus a writable layer) and their mounts, as recorded in the store."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import attrs
from .errors import UsageError
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


def get(store: Store, name: str) -> Container | None:
    with store.read() as conn:
        row = conn.execute("SELECT name, image_id, created, persistent FROM containers WHERE name = ?",
                           (name,)).fetchone()
    return Container(row[0], row[1], row[2], bool(row[3])) if row else None


def all_containers(store: Store) -> list[Container]:
    with store.read() as conn:
        rows = conn.execute("SELECT name, image_id, created, persistent FROM containers ORDER BY created").fetchall()
    return [Container(r[0], r[1], r[2], bool(r[3])) for r in rows]


def create(store: Store, image_ref: str, name: str | None) -> Container:
    """A container of an image: named ones persist, unnamed ones live for one mount."""
    if name is not None and not _NAME_RE.fullmatch(name):
        raise UsageError(f"invalid container name {name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    image_id = store.resolve(image_ref)
    persistent = name is not None
    name = name or "tmp-" + secrets.token_hex(6)
    upper = upper_dir(store, name)
    with store.write(durable=persistent) as conn:
        if conn.execute("SELECT 1 FROM containers WHERE name = ?", (name,)).fetchone():
            raise UsageError(f"container {name!r} already exists")
        conn.execute("INSERT INTO containers (name, image_id, created, persistent) VALUES (?, ?, ?, ?)",
                     (name, image_id, time.time(), persistent))
        shutil.rmtree(container_dir(store, name), ignore_errors=True)  # leftovers of a crashed removal
        private_dir(store.root / "containers")  # what is written into a mount stays the owner's
        upper.mkdir(parents=True)
        upper.chmod(0o755)  # the mount root's mode: not whatever umask the creator had
        (upper.parent / "work").mkdir()
    return Container(name, image_id, time.time(), persistent)


def remove(store: Store, name: str, *, durable: bool = True) -> None:
    """Forget a container and delete its writable layer (the caller checked it is not mounted).

    ``durable=False`` for throw-away containers: no fsync, as their row means nothing after a power loss.
    """
    with store.write(durable=durable) as conn:
        conn.execute("DELETE FROM containers WHERE name = ?", (name,))
    shutil.rmtree(container_dir(store, name), ignore_errors=True)


def record_mount(store: Store, mountpoint: str, container: str, pid: int, options: dict[str, Any]) -> None:
    with store.write(durable=False) as conn:  # no mount outlives a power loss
        conn.execute("INSERT OR REPLACE INTO mounts (mountpoint, container, pid, created, options) "
                     "VALUES (?, ?, ?, ?, ?)", (mountpoint, container, pid, time.time(), json.dumps(options)))


def forget_mount(store: Store, mountpoint: str) -> None:
    with store.write(durable=False) as conn:
        conn.execute("DELETE FROM mounts WHERE mountpoint = ?", (mountpoint,))


def mounts(store: Store) -> list[MountRecord]:
    with store.read() as conn:
        rows = conn.execute("SELECT mountpoint, container, pid, created, options FROM mounts ORDER BY created").fetchall()
    return [MountRecord(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]


def mount_of(store: Store, mountpoint: str) -> MountRecord | None:
    return next((m for m in mounts(store) if m.mountpoint == mountpoint), None)
