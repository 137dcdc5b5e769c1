"""What ``prune`` removes, and what ``df`` calls reclaimable.

Untagged images no container uses (a failed ``build --test`` leaves one), throw-away
containers nothing mounts (a killed mount leaves one), and then what gc frees: the
blobs no remaining image needs. Named containers and tagged images are never pruned.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs

from . import containers
from .errors import VockerError
from .maintenance import reach
from .mounting import reap_orphans
from .store import Store


@attrs.frozen
class Pruned:
    images: tuple[str, ...]  # image IDs deleted
    containers: int  # throw-away containers removed
    container_bytes: int  # their writable layers' bytes


def _tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                continue
    return total


def prune_containers(store: Store) -> Pruned:
    """Remove the throw-away containers no process holds; what their layers took."""
    sizes = {name: _tree_bytes(containers.container_dir(store, name)) for name in containers.orphans(store)}
    reaped = reap_orphans(store)
    return Pruned((), len(reaped), sum(sizes.get(n, 0) for n in reaped))


def _in_use(store: Store) -> set[str]:
    """Images a container other than an orphan refers to (a named one, or one mounted now)."""
    orphaned = set(containers.orphans(store))
    return {c.image_id for c in containers.all_containers(store) if c.name not in orphaned}


def prune_images(store: Store) -> Pruned:
    """Delete untagged images no container uses (their blobs go at the next gc)."""
    used = _in_use(store)
    deleted = []
    for record in store.images():
        if record.tags or record.id in used:
            continue
        try:
            _id, gone = store.remove(record.id)
        except VockerError:  # a container took it meanwhile: it is in use after all
            continue
        if gone:
            deleted.append(record.id)
    return Pruned(tuple(deleted), 0, 0)


def reclaimable(store: Store) -> int:
    """Bytes of blob files (bytecode included) that a ``system prune`` would free: those
    no tagged or used image needs."""
    used = _in_use(store)
    kept = [reach(store, r.id) for r in store.images() if r.tags or r.id in used]
    blobs = set().union(*(r.blobs for r in kept)) if kept else set()
    contents = set().union(*(r.contents for r in kept)) if kept else set()
    with store.read() as conn:
        rows = dict(conn.execute("SELECT digest, stored_size FROM blobs"))
        pycs = {p for s, _m, p in conn.execute("SELECT source, magic, pyc FROM pycs") if s in contents and p}
    return sum(size for digest, size in rows.items() if digest not in blobs and digest not in pycs)
