"""Deriving images from images: commit a container's changes as a layer, squash, history, diff.

The layer a commit stores is not the writable layer as it happens to be on disk (copied-up
directories, stray whiteouts, the order things were done in) but the canonical layer between
the image's flat tree and the container's (vocker.layerstack.layer_between), read with the
import's rules with the mount point as the venv's location. So the same change made in two
containers, mounted anywhere, on any day, commits to the same image ID.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import stat
import time
from pathlib import Path
from typing import Any, Iterator

import attrs

from . import __version__, containers, normalize, walk
from .digest import digest_bytes
from .errors import UsageError, VockerError
from .importer import OPAQUE_NAME, WHITEOUT_PREFIX, ingest_dir
from .layerstack import Change, LayerStack, changes, flat_root, layer_between
from .manifest import Manifest
from .progress import NullReporter, Reporter
from .store import Store
from .tree import Kind

#: A commit of a mounted container pauses the mount's users and reads its writable layer until
#: two looks at every entry's status, before and after, agree; it gives up after this many.
COMMIT_TRIES = 5


class NothingToCommit(UsageError):
    """The container's files are its image's: no layer to add."""


@attrs.frozen
class Derived:
    image_id: str
    new: bool
    tag: str | None
    layers: int
    seconds: float


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _site(manifest: Manifest) -> tuple[str, ...] | None:
    return tuple(manifest.python.lib.split("/")) + ("site-packages",) if manifest.python is not None else None


def history(store: Store, image_id: str) -> list[dict[str, Any]]:
    """What created each layer, lowest first: recorded by commit; an image made otherwise has
    one layer, made as its provenance says."""
    record = store.image(image_id)
    recorded = record.provenance.get("history")
    if isinstance(recorded, list):
        return recorded
    made = str(record.provenance.get("created_by", ""))
    how = "build" if " build" in made else "squash" if "squash" in made else "import"
    return [{"created_by": how, "message": "", "created": record.provenance.get("created", "")}]


def _reachable_new(store: Store, root: str, pending: dict[str, bytes]) -> dict[str, bytes]:
    """The nodes below ``root`` (itself included) that are only in ``pending``, to record."""
    out: dict[str, bytes] = {}
    stack = [root]
    while stack:
        digest = stack.pop()
        if digest in out or digest not in pending:
            continue  # recorded already, with everything below it
        out[digest] = pending[digest]
        stack.extend(e.digest for e in store.tree(digest).entries if e.kind is Kind.DIR)  # type: ignore[misc]
    return out


def _counts(store: Store, flat: str) -> tuple[int, int]:
    files = size = 0
    for _, e in walk.iter_entries(store, flat):
        if e.kind is Kind.FILE:
            files += 1
            size += e.size
    return files, size


def _record(store: Store, manifest: Manifest, objects: dict[str, bytes], staged: list, flat: str,
            provenance: dict[str, Any], tag: str | None) -> tuple[str, bool]:
    manifest_bytes = manifest.encode()
    image_id = digest_bytes(manifest_bytes)
    files, size = _counts(store, flat)
    store.blobs.commit_or_discard(staged)
    with store.write() as conn:
        store.record_staged(conn, staged)
        store.record_objects(conn, "tree", objects)
        new = store.record_image(conn, image_id, manifest_bytes, size, files, provenance)
        if tag is not None:
            store.set_tag(conn, tag, image_id)
    return image_id, new


def _snapshot(path: str) -> dict[str, tuple[int, ...]]:
    """Every entry's identity and change times: equal before and after a read, nothing was
    written in between (any write, create, remove or rename changes a ctime or a listing)."""
    out: dict[str, tuple[int, ...]] = {}
    stack = [path]
    while stack:
        here = stack.pop()
        try:
            with os.scandir(here) as it:
                for e in it:
                    st = e.stat(follow_symlinks=False)
                    out[e.path] = (st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(e.path)
        except FileNotFoundError:
            out[here] = ()
    return out


def _users_of(mountpoint: str, spare: set[int]) -> list[int]:
    """The processes with their working directory or an open file inside the mount (as
    ``fuser -m`` finds them), except ``spare``."""
    inside = mountpoint.rstrip("/") + "/"
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) in spare:
            continue
        try:
            links = [os.readlink(f"/proc/{pid}/cwd")]
            links += [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:  # gone, or another user's
            continue
        if any(link == mountpoint or link.startswith(inside) for link in links):
            found.append(int(pid))
    return found


@contextlib.contextmanager
def _paused(mountpoint: str | None, daemon: int | None) -> Iterator[None]:
    """Stop the processes using the mount while its writable layer is read, as ``docker
    commit`` pauses a container, and let them go on afterwards, whatever happens. A process
    that could not be stopped (another user's) or starts using the mount meanwhile is caught
    by the check that nothing changed during the read."""
    stopped: list[int] = []
    try:
        if mountpoint is not None:
            for pid in _users_of(mountpoint, {os.getpid()} | ({daemon} if daemon else set())):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGSTOP)
                    stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)


def mountpoint_of(store: Store, name: str) -> str | None:
    """Where the container is mounted, else where it was last mounted (its files name that path)."""
    for m in containers.mounts(store):
        if m.container == name:
            return m.mountpoint
    try:
        return (containers.container_dir(store, name) / "mountpoint").read_text() or None
    except OSError:
        return None


def commit(store: Store, name: str, tag: str | None, message: str = "", *,
           reporter: Reporter | None = None, created_by: str = "commit") -> Derived:
    """The container's changes as one new layer on top of its image (see the module's doc);
    ``created_by`` names what made them in the image's history (commit, install, ...)."""
    started = time.perf_counter()
    reporter = reporter or NullReporter()
    container = containers.require(store, name, " (commit takes a container; 'vocker ps -a' lists them)")
    manifest = store.manifest(container.image_id)
    upper = containers.upper_dir(store, name)
    where = mountpoint_of(store, name)
    live = next((m for m in containers.mounts(store) if m.container == name), None)
    paths = normalize.VenvPaths.of(where, os.path.realpath(where)) if where and manifest.python else None
    with store.lock_shared():
        if not upper.is_dir():
            raise NothingToCommit(f"nothing to commit: container {name} has no changes")
        for _ in range(COMMIT_TRIES):
            with _paused(live.mountpoint if live else None, live.pid if live else None):
                before = _snapshot(str(upper))
                got = ingest_dir(store, str(upper), paths, _site(manifest), reporter, f"Committing {name}",
                                 layer=True, commit_blobs=False)
                still = _snapshot(str(upper)) == before
            if still:
                break
            store.blobs.discard(list(got.ingest.staged.values()))
        else:
            raise VockerError(f"container {name} kept changing while it was read ({COMMIT_TRIES} tries); "
                              "pause what writes into it and commit again")
        staged = list(got.ingest.staged.values())
        try:
            pending = dict(got.objects)
            store.hold_trees(pending)
            new_flat = LayerStack(store, manifest.layers + (got.root,)).flat(pending)
            store.hold_trees(pending)
            layer = layer_between(store, flat_root(store, manifest), new_flat, pending)
            if layer is None:
                raise NothingToCommit(f"nothing to commit: container {name} has no changes to its image")
            store.hold_trees(pending)
            derived = Manifest(manifest.kind, manifest.layers + (layer,), manifest.python)
            base = store.image(container.image_id).provenance
            provenance = {k: base[k] for k in ("base_interpreter",) if k in base}
            provenance.update(created_by=f"vocker {__version__} {created_by}", created=_now(), container=name,
                              host_platform=platform.platform(), parent=container.image_id,
                              history=history(store, container.image_id) + [
                                  {"created_by": created_by, "message": message, "created": _now()}])
            objects = _reachable_new(store, layer, pending) | _reachable_new(store, new_flat, pending)
        except BaseException:
            store.blobs.discard(staged)
            raise
        image_id, new = _record(store, derived, objects, staged, new_flat, provenance, tag)
    return Derived(image_id, new, tag, len(derived.layers), time.perf_counter() - started)


def squash(store: Store, ref: str, tag: str | None) -> Derived:
    """The image as one layer: its flat tree. The same files as a plain import give that import's ID."""
    started = time.perf_counter()
    image_id = store.resolve(ref)
    manifest = store.manifest(image_id)
    with store.lock_shared():
        pending: dict[str, bytes] = {}
        flat = LayerStack.of(store, manifest).flat(pending)
        store.hold_trees(pending)
        squashed = Manifest(manifest.kind, (flat,), manifest.python)
        base = store.image(image_id).provenance
        provenance = {k: base[k] for k in ("base_interpreter",) if k in base}
        provenance.update(created_by=f"vocker {__version__} image squash", created=_now(), parent=image_id,
                          host_platform=platform.platform())
        new_id, new = _record(store, squashed, _reachable_new(store, flat, pending), [], flat, provenance, tag)
    return Derived(new_id, new, tag, 1, time.perf_counter() - started)


@attrs.frozen
class LayerInfo:
    digest: str
    files: int  # files and links the layer adds or replaces
    deleted: int  # whiteouts
    size: int  # bytes of its files
    created_by: str
    message: str
    created: str


def layer_infos(store: Store, image_id: str) -> list[LayerInfo]:
    manifest = store.manifest(image_id)
    notes = history(store, image_id)
    out = []
    for i, layer in enumerate(manifest.layers):
        files = deleted = size = 0
        for _, e in walk.iter_entries(store, layer):
            if e.kind is Kind.WHITEOUT:
                deleted += 1
            elif e.kind is not Kind.DIR:
                files += 1
                size += e.size
        note = notes[i] if i < len(notes) and isinstance(notes[i], dict) else {}
        out.append(LayerInfo(layer, files, deleted, size, str(note.get("created_by", "")),
                             str(note.get("message", "")), str(note.get("created", ""))))
    return out


def distributions(store: Store, image_id: str) -> dict[str, str]:
    """The distributions installed in a venv image (name -> version), from its *.dist-info names."""
    manifest = store.manifest(image_id)
    site = _site(manifest)
    if site is None:
        return {}
    stack = LayerStack.of(store, manifest)
    key = stack.key(site)
    if key is None:
        return {}
    out = {}
    for name, e in stack.listing(key).entries.items():
        if e.kind is Kind.DIR and name.endswith(".dist-info"):
            dist, _, version = name[:-len(".dist-info")].rpartition("-")
            if dist:
                out[dist] = version
    return dict(sorted(out.items(), key=lambda kv: kv[0].lower()))


def package_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """``httpx 0.25.0 -> 0.26.0``, ``+ rich 13.7.1``, ``- idna 3.6``, by name."""
    lines = []
    for name in sorted(before.keys() | after.keys(), key=str.lower):
        a, b = before.get(name), after.get(name)
        if a == b:
            continue
        lines.append(f"+ {name} {b}" if a is None else f"- {name} {a}" if b is None else f"{name} {a} -> {b}")
    return lines


def image_changes(store: Store, ref_a: str, ref_b: str) -> tuple[list[Change], list[str]]:
    """Paths and packages that differ from image A to image B."""
    id_a, id_b = store.resolve(ref_a), store.resolve(ref_b)
    ma, mb = store.manifest(id_a), store.manifest(id_b)
    paths = list(changes(store, flat_root(store, ma), flat_root(store, mb)))
    return paths, package_changes(distributions(store, id_a), distributions(store, id_b))


def container_changes(store: Store, name: str) -> list[Change]:
    """What the container's writable layer adds (A), changes (C) and deletes (D) in its image,
    as ``docker diff`` lists it; bytecode and venv scaffolding are left out, as an import does."""
    container = containers.require(store, name)
    manifest = store.manifest(container.image_id)
    stack = LayerStack.of(store, manifest)
    site = _site(manifest)
    upper = containers.upper_dir(store, name)
    out: list[Change] = []

    def skip(rel: tuple[str, ...]) -> bool:
        from .venv import is_scaffold

        return site is not None and (rel[-1] == "__pycache__" or is_scaffold(rel, site))

    def visit(path: Path, rel: tuple[str, ...], lower_key: Any) -> None:
        lower = stack.listing(lower_key).entries if lower_key is not None else {}
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            raise VockerError(f"cannot read {path}: {exc.strerror}") from None
        if OPAQUE_NAME in names:
            for gone in sorted(set(lower) - set(names)):
                if not skip(rel + (gone,)):
                    out.append(Change("/".join(rel + (gone,)), "D", lower[gone].kind))
            lower_key = None
        for n in names:
            if n == OPAQUE_NAME:
                continue
            if n.startswith(WHITEOUT_PREFIX):
                gone = n[len(WHITEOUT_PREFIX):]
                if gone in lower and gone not in names and not skip(rel + (gone,)):
                    out.append(Change("/".join(rel + (gone,)), "D", lower[gone].kind))
                continue
            sub = rel + (n,)
            if skip(sub):
                continue
            st = os.lstat(path / n)
            kind = Kind.DIR if stat.S_ISDIR(st.st_mode) else Kind.SYMLINK if stat.S_ISLNK(st.st_mode) else Kind.FILE
            existed = lower_key is not None and n in lower
            out.append(Change("/".join(sub), "C" if existed else "A", kind))
            if kind is Kind.DIR:
                below = stack.listing(lower_key).dirs.get(n) if existed else None
                visit(path / n, sub, below)

    if upper.is_dir():
        visit(upper, (), stack.root)
    return sorted(out, key=lambda c: c.path.encode("utf-8", "surrogateescape"))
