"""Swap the image under a live mount (``vocker remount``), keeping its writable layer.

The daemon side (:func:`swap`) diffs the two images' Merkle trees (equal subtrees skipped by
digest, so the work follows the size of the change, not of the image), replaces the view's
layer stack, and drops the kernel's cached names, attributes and pages of exactly the paths
that differ. A file some process holds open keeps reading what it opened: its handle names
the old node, and before the swap its kernel name is moved aside (a rename the driver keeps
from the view), so the next lookup of its path gets a new inode with its own page cache, as
overlayfs gives a new file its own inode. The caller's side (:func:`remount`) checks the
request and asks the daemon on its control socket (vocker.warm).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import attrs

from . import containers
from .errors import NotFoundError, UsageError, VockerError
from .layerstack import Change, changes, flat_root
from .manifest import Manifest
from .store import Store
from .tree import Kind

log = logging.getLogger("vocker.swap")

Parts = tuple[str, ...]


def check_compatible(old: Manifest, new: Manifest, what: str) -> None:
    """A mount serves one Python (its scaffolding, bytecode and interpreter): refuse another."""
    if new.kind != old.kind:
        raise UsageError(f"{what} is a {new.kind} image; the mount shows a {old.kind} image")
    if new.python != old.python:
        def name(m: Manifest) -> str:
            return f"{m.python.implementation} {m.python.version}" if m.python else "no Python"
        raise UsageError(f"{what} has {name(new)}, the mount {name(old)}: a remount keeps the interpreter, "
                         "so it takes an image with the same Python")


def kernel_plan(found: list[Change]) -> list[tuple[Parts, bool]]:
    """What to drop from the kernel's caches: ``(parts, True)`` a name (added, removed, replaced:
    with everything the kernel holds below it), ``(parts, False)`` a changed file's or directory's
    attributes and pages. A changed source also drops its directory's ``__pycache__`` (its pycs
    are generated from the sources, and a pyc of a same-sized source would pass Python's check)."""
    plan: list[tuple[Parts, bool]] = []
    gone: set[Parts] = set()  # whole names dropped: nothing below them needs a call
    caches: set[Parts] = set()
    for c in found:
        parts = tuple(c.path.split("/"))
        if any(parts[:i] in gone for i in range(1, len(parts))):
            continue
        if c.status == "C" and c.kind is Kind.DIR:
            plan.append((parts, False))
            continue
        plan.append((parts, True))
        if c.status == "C":
            plan.append((parts, False))
        else:
            gone.add(parts)
        if parts[-1].endswith(".py") and parts[:-1] + ("__pycache__",) not in caches:
            caches.add(parts[:-1] + ("__pycache__",))
            plan.append((parts[:-1] + ("__pycache__",), True))
    return plan


def swap(store: Store, view, image_id: str) -> int:  # view: vocker.view.ContainerView
    """Show ``image_id`` in the view from now on (see the module's doc); how many paths differ.
    Nothing changes when it is refused."""
    try:
        new = store.manifest(image_id)
    except VockerError as exc:
        raise NotFoundError(f"cannot read image {image_id[7:19]}: {exc}") from None
    old = view.manifest
    check_compatible(old, new, f"image {image_id[7:19]}")
    found = list(changes(store, flat_root(store, old), flat_root(store, new)))
    if not found:
        view.replace_image(new)
        return 0
    held = view.open_image_files()
    for c in found:
        parts = tuple(c.path.split("/"))
        if c.status == "C" and c.kind is not Kind.DIR and parts in held and view.move_aside is not None:
            view.move_aside(parts)
    view.replace_image(new)
    for parts, entry in kernel_plan(found):  # outside the view's lock: resolving a parent asks the mount
        if entry:
            if view.invalidate_entry is not None:
                view.invalidate_entry(parts)
        elif view.invalidate is not None:
            view.invalidate(parts)
    return len(found)


def control_address(store: Store, container: str) -> bytes:
    """A mount's control socket (abstract: nothing on disk to go stale; same user only)."""
    from .runclient import _key

    return f"\0vocker-mount-{os.getuid()}-{_key(store.root)}-{container}".encode()


@attrs.frozen
class Remounted:
    mountpoint: str
    image_id: str
    changed: int
    seconds: float


def remount(store: Store, path: str | Path, ref: str) -> Remounted:
    """Switch the container mounted at ``path`` to image ``ref`` (same Python), keeping its
    writable layer; the container then belongs to that image. Refused, changing nothing, for a
    missing image, another Python, or a path that is not a vocker mount of this store."""
    from . import warm
    from .mounting import resolve_mountpoint, status

    started = time.perf_counter()
    mountpoint = resolve_mountpoint(path)
    record = containers.mount_of(store, mountpoint)
    if record is None:
        raise UsageError(f"not a vocker mount of this store: {path}")
    address = record.options.get("control")
    if not address:
        raise UsageError(f"{mountpoint} was mounted by a vocker without remount: unmount and mount it again")
    container = containers.get(store, record.container)
    if container is None:
        raise VockerError(f"{mountpoint}: its container {record.container} is gone")
    image_id = store.resolve(ref)
    check_compatible(store.manifest(container.image_id), store.manifest(image_id), ref)
    if status(record) != "healthy":
        raise VockerError(f"the mount at {mountpoint} is not healthy ({status(record)}): see 'vocker ps'")
    answer = warm.control(address.encode("latin-1"), f"remount {image_id}", timeout=60)
    if not answer.startswith("ok"):
        raise VockerError(f"cannot remount {mountpoint}: {answer.removeprefix('error: ') or 'its daemon did not answer'}")
    return Remounted(mountpoint, image_id, int(answer.split()[1]), time.perf_counter() - started)


@attrs.define
class Remounter:
    """The daemon's handler of ``remount IMAGE_ID``: swap, then record the container's new image
    (undone when that cannot be recorded); a warm mount is put back on its own image when its
    lease ends (:meth:`restore`), so the pool it belongs to stays true."""

    store: Store
    view: object  # vocker.view.ContainerView
    name: str
    original: str
    current: str = ""

    def __call__(self, image_id: str) -> str:
        before = self.view.manifest  # type: ignore[attr-defined]
        changed = swap(self.store, self.view, image_id)
        try:
            containers.set_image(self.store, self.name, image_id)
        except Exception:
            self.view.replace_image(before)  # type: ignore[attr-defined]
            raise
        self.current = image_id
        log.info("remounted on image %s: %d paths differ", image_id, changed)
        return f"ok {changed}"

    def restore(self) -> None:
        if self.current and self.current != self.original:
            self(self.original)
