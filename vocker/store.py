"""The local content-addressed store: blob files plus SQLite metadata.

Every read is verified against its digest before use. Writers record blob files
only after they are durable, and record an image in the same transaction as the
tree nodes and blob rows it needs, so the database never points at something
missing, whatever moment a crash strikes.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import attrs
from cachetools import LRUCache
from sqlalchemy import delete, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from . import db, locking, refs
from .blobstore import BlobFiles, BlobInfo
from .digest import digest_bytes
from .errors import IntegrityError, MissingObjectError, UsageError, VockerError
from .home import default_home
from .manifest import Manifest
from .tree import Tree


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


@attrs.frozen
class ImageRecord:
    id: str
    size: int
    files: int
    created: float
    provenance: dict[str, Any]
    tags: tuple[str, ...]


@attrs.define
class Store:
    root: Path
    blobs: BlobFiles
    engine: Any
    _trees: LRUCache = attrs.field(factory=lambda: LRUCache(maxsize=20000))
    _infos: LRUCache = attrs.field(factory=lambda: LRUCache(maxsize=200000))
    _trees_lock: threading.Lock = attrs.field(factory=threading.Lock)

    @classmethod
    def open(cls, root: Path | None = None) -> "Store":
        root = Path(root) if root is not None else default_home()
        try:
            root.mkdir(parents=True, exist_ok=True)
            blobs = BlobFiles(root)
            blobs.setup()
            engine = db.make_engine(root / "vocker.db")
        except OSError as exc:
            raise UsageError(f"cannot open store at {root}: {exc.strerror or exc}") from None
        except OperationalError as exc:
            if _read_only(root):
                raise VockerError(f"the store at {root} is on a read-only file system") from None
            raise VockerError(f"cannot open store database in {root}: {exc.orig}") from None
        return cls(root, blobs, engine)

    # -- transactions -------------------------------------------------------

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(vocker_write=True)
            with conn.begin():
                yield conn

    def lock_shared(self) -> contextlib.AbstractContextManager[bool]:
        return locking.shared(self.root / "store.lock")

    def lock_exclusive(self, blocking: bool = True) -> contextlib.AbstractContextManager[bool]:
        return locking.exclusive(self.root / "store.lock", blocking)

    # -- blobs --------------------------------------------------------------

    def blob_digests(self) -> set[str]:
        with self.read() as conn:
            return set(conn.scalars(select(db.blobs.c.digest)))

    def blob_info(self, digest: str) -> BlobInfo:
        with self._trees_lock:
            hit = self._infos.get(digest)
        if hit is not None:
            return hit
        infos = self.blob_infos([digest])
        if digest not in infos:
            raise MissingObjectError(f"missing blob {digest}")
        return infos[digest]

    def blob_infos(self, digests: Iterable[str]) -> dict[str, BlobInfo]:
        """Recorded facts of many blobs in a few queries (they never change; cached)."""
        wanted = list(set(digests))
        out: dict[str, BlobInfo] = {}
        with self.read() as conn:
            for i in range(0, len(wanted), 500):
                q = select(db.blobs).where(db.blobs.c.digest.in_(wanted[i:i + 500]))
                out.update({r.digest: BlobInfo(r.digest, r.size, r.stored_size, r.codec) for r in conn.execute(q)})
        with self._trees_lock:
            self._infos.update(out)
        return out

    def read_blob(self, digest: str, info: BlobInfo | None = None) -> bytes:
        info = info or self.blob_info(digest)
        return self.blobs.read(digest, info.codec, info.size)

    def put_blobs(self, datas: dict[str, bytes], pycs: tuple[str, dict[str, str | None]] | None = None) -> None:
        """Store contents (digest -> bytes) durably, optionally with pyc cache rows naming them."""
        with self.read() as conn:
            present = set(conn.scalars(select(db.blobs.c.digest).where(db.blobs.c.digest.in_(list(datas)))))
        staged = [self.blobs.stage(d, data) for d, data in datas.items() if d not in present]
        try:
            self.blobs.commit(staged)
        except BaseException:
            self.blobs.discard(staged)
            raise
        infos = [s.info for s in staged]
        with self.write() as conn:
            self.record_blobs(conn, infos)
            if pycs is not None:
                self.record_pycs(conn, *pycs)

    @staticmethod
    def record_blobs(conn: Connection, infos: Iterable[BlobInfo]) -> None:
        rows = [attrs.asdict(i) for i in infos]
        if rows:
            conn.execute(sqlite_insert(db.blobs).on_conflict_do_nothing(), rows)

    # -- objects (trees, manifests) -----------------------------------------

    @staticmethod
    def record_objects(conn: Connection, kind: str, objs: dict[str, bytes]) -> None:
        rows = [{"digest": d, "kind": kind, "data": data} for d, data in objs.items()]
        if rows:
            conn.execute(sqlite_insert(db.objects).on_conflict_do_nothing(), rows)

    def object_bytes(self, digest: str, what: str) -> bytes:
        with self.read() as conn:
            data = conn.scalar(select(db.objects.c.data).where(db.objects.c.digest == digest))
        if data is None:
            raise MissingObjectError(f"missing {what} {digest}")
        if digest_bytes(data) != digest:
            raise IntegrityError(f"corrupt {what} {digest} (content does not match its digest)")
        return bytes(data)

    def tree(self, digest: str) -> Tree:
        with self._trees_lock:
            hit = self._trees.get(digest)
        if hit is not None:
            return hit
        tree = Tree.decode(self.object_bytes(digest, "tree"))
        with self._trees_lock:
            self._trees[digest] = tree
        return tree

    def prefetch_trees(self, root: str) -> None:
        """Load every tree below ``root`` into the cache with one query per level, not per node."""
        level = [root]
        while level:
            with self._trees_lock:
                missing = [d for d in level if d not in self._trees]
            found: dict[str, bytes] = {}
            with self.read() as conn:
                for i in range(0, len(missing), 500):
                    q = select(db.objects.c.digest, db.objects.c.data).where(db.objects.c.digest.in_(missing[i:i + 500]))
                    found.update({d: bytes(data) for d, data in conn.execute(q)})
            nxt = []
            for d in level:
                if d in found and digest_bytes(found[d]) == d:
                    tree = Tree.decode(found[d])
                    with self._trees_lock:
                        self._trees[d] = tree
                else:
                    try:
                        tree = self.tree(d)  # raises the precise missing/corrupt error
                    except Exception:
                        continue  # let the caller meet it where it walks
                nxt += [e.digest for e in tree.entries if e.digest is not None and e.kind.value == "d"]
            level = nxt

    def manifest(self, image_id: str) -> Manifest:
        return Manifest.decode(self.object_bytes(image_id, "manifest"))

    # -- images and tags -----------------------------------------------------

    def resolve(self, ref: str) -> str:
        """Image ID for a tag, a full ID or a unique ID prefix."""
        prefix = refs.id_prefix(ref)
        with self.read() as conn:
            if prefix is not None:
                ids = list(conn.scalars(select(db.images.c.id).where(db.images.c.id.like(f"sha256:{prefix}%")).limit(2)))
                if len(ids) == 1:
                    return ids[0]
                if len(ids) > 1:
                    raise UsageError(f"image ID prefix {ref!r} is ambiguous; give more characters")
            try:
                tag = refs.normalize_tag(ref)
            except UsageError:
                if prefix is not None:
                    raise UsageError(f"no such image: {ref}") from None
                raise
            image_id = conn.scalar(select(db.tags.c.image_id).where(db.tags.c.name == tag))
        if image_id is None:
            raise UsageError(f"no such image: {ref}")
        return image_id

    def has_image(self, image_id: str) -> bool:
        with self.read() as conn:
            return conn.scalar(select(db.images.c.id).where(db.images.c.id == image_id)) is not None

    @staticmethod
    def record_image(conn: Connection, image_id: str, manifest_bytes: bytes, size: int, files: int,
                     provenance: dict[str, Any]) -> bool:
        """Record an image (idempotent); True if it is new to this store."""
        Store.record_objects(conn, "manifest", {image_id: manifest_bytes})
        result = conn.execute(
            sqlite_insert(db.images).on_conflict_do_nothing(),
            {"id": image_id, "size": size, "files": files, "created": time.time(),
             "provenance": json.dumps(provenance, sort_keys=True)},
        )
        return result.rowcount == 1

    @staticmethod
    def set_tag(conn: Connection, tag: str, image_id: str) -> None:
        stmt = sqlite_insert(db.tags).values(name=tag, image_id=image_id)
        conn.execute(stmt.on_conflict_do_update(index_elements=["name"], set_={"image_id": image_id}))

    def tag(self, ref: str, new_tag: str) -> str:
        tag = refs.normalize_tag(new_tag)
        image_id = self.resolve(ref)
        with self.write() as conn:
            self.set_tag(conn, tag, image_id)
        return tag

    def images(self, image_id: str | None = None) -> list[ImageRecord]:
        """All images, newest first (or just ``image_id``)."""
        tag_q = select(db.tags.c.name, db.tags.c.image_id).order_by(db.tags.c.name)
        img_q = select(db.images).order_by(db.images.c.created.desc())
        if image_id is not None:
            tag_q = tag_q.where(db.tags.c.image_id == image_id)
            img_q = img_q.where(db.images.c.id == image_id)
        with self.read() as conn:
            tag_rows = conn.execute(tag_q).all()
            rows = conn.execute(img_q).all()
        by_image: dict[str, list[str]] = {}
        for name, tagged in tag_rows:
            by_image.setdefault(tagged, []).append(name)
        return [ImageRecord(r.id, r.size, r.files, r.created, json.loads(r.provenance),
                            tuple(by_image.get(r.id, ()))) for r in rows]

    def image(self, image_id: str) -> ImageRecord:
        found = self.images(image_id)
        if not found:
            raise UsageError(f"no such image: {image_id}")
        return found[0]

    def remove(self, ref: str) -> tuple[str, bool]:
        """Untag ``ref`` if it is one of several tags, else delete the image.

        Returns (image_id, deleted). Blobs are freed later by gc.
        """
        image_id = self.resolve(ref)
        tag = refs.normalize_tag(ref) if self._is_tag(ref) else None
        with self.write() as conn:
            names = list(conn.scalars(select(db.tags.c.name).where(db.tags.c.image_id == image_id)))
            if tag is not None and len(names) > 1:
                conn.execute(delete(db.tags).where(db.tags.c.name == tag))
                return image_id, False
            users = list(conn.scalars(select(db.containers.c.name).where(db.containers.c.image_id == image_id)))
            if users:
                raise UsageError(f"image {ref} is used by container(s) {', '.join(sorted(users))}; "
                                 "remove them first ('vocker rm')")
            conn.execute(delete(db.pyc_images).where(db.pyc_images.c.image_id == image_id))
            conn.execute(delete(db.tags).where(db.tags.c.image_id == image_id))
            conn.execute(delete(db.images).where(db.images.c.id == image_id))
            conn.execute(delete(db.objects).where(db.objects.c.digest == image_id))
        return image_id, True

    def _is_tag(self, ref: str) -> bool:
        try:
            tag = refs.normalize_tag(ref)
        except UsageError:
            return False
        with self.read() as conn:
            return conn.scalar(select(db.tags.c.name).where(db.tags.c.name == tag)) is not None

    # -- bytecode cache ------------------------------------------------------

    def cached_pycs(self, magic: str, sources: Iterable[str]) -> dict[str, str | None]:
        """source digest -> pyc body blob (None: known not to compile) for those cached."""
        wanted = list(set(sources))
        out: dict[str, str | None] = {}
        with self.read() as conn:
            for i in range(0, len(wanted), 500):
                chunk = wanted[i:i + 500]
                q = select(db.pycs.c.source, db.pycs.c.pyc).where(db.pycs.c.magic == magic, db.pycs.c.source.in_(chunk))
                out.update({s: p for s, p in conn.execute(q)})
        return out

    def pyc_bodies(self, magic: str, sources: Iterable[str]) -> dict[str, tuple[str, int]]:
        """source digest -> (pyc body blob, its size), for sources with cached bytecode."""
        wanted = list(set(sources))
        out: dict[str, tuple[str, int]] = {}
        with self.read() as conn:
            for i in range(0, len(wanted), 500):
                q = (select(db.pycs.c.source, db.pycs.c.pyc, db.blobs.c.size)
                     .join(db.blobs, db.blobs.c.digest == db.pycs.c.pyc)
                     .where(db.pycs.c.magic == magic, db.pycs.c.source.in_(wanted[i:i + 500])))
                out.update({s: (p, n) for s, p, n in conn.execute(q)})
        return out

    @staticmethod
    def record_pycs(conn: Connection, magic: str, entries: dict[str, str | None]) -> None:
        rows = [{"source": s, "magic": magic, "pyc": p, "ok": p is not None} for s, p in entries.items()]
        if rows:
            conn.execute(sqlite_insert(db.pycs).on_conflict_do_nothing(), rows)
