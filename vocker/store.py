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
from sqlite3 import Connection
from typing import Any, Iterable

import attrs
from cachetools import LRUCache
from . import db, locking, refs
from .blobstore import CHUNK, BlobFiles, BlobInfo, Staged
from .digest import digest_bytes
from .errors import IntegrityError, MissingObjectError, NotFoundError, UsageError, VockerError
from .home import default_home, private_dir
from .manifest import Manifest
from .tree import Entry, Kind, Tree


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
    #: recorded from a remote without its file contents (a lazy mount): fetched on first read
    partial: bool = False


@attrs.define
class Store:
    root: Path
    blobs: BlobFiles
    database: db.Database
    _trees: LRUCache = attrs.field(factory=lambda: LRUCache(maxsize=20000))
    _infos: LRUCache = attrs.field(factory=lambda: LRUCache(maxsize=200000))
    _chunks: LRUCache = attrs.field(factory=lambda: LRUCache(maxsize=200000))  # digest -> chunk digests
    _cache_lock: threading.Lock = attrs.field(factory=threading.Lock)
    #: nodes this process made and reads without recording them (a layered image's merged tree)
    _held: dict[str, Tree] = attrs.field(factory=dict)
    #: fetches the missing contents of partial images (vocker.oci.lazy), made at the first miss
    _lazy: Any = None

    def __attrs_post_init__(self) -> None:
        self.blobs.missing_reader = self._partial_reader

    @classmethod
    def open(cls, root: Path | None = None, *, prefetch: bool = False) -> "Store":
        """``prefetch``: have the kernel read the database ahead (for a mount daemon)."""
        root = Path(root) if root is not None else default_home()
        try:
            private_dir(root)  # see home.private_dir: nothing in a store is for other users
            blobs = BlobFiles(root)
            blobs.setup()
            database = db.Database(root / "vocker.db", prefetch)
        except db.Error as exc:
            if _read_only(root):
                raise VockerError(f"the store at {root} is on a read-only file system") from None
            raise VockerError(f"cannot open store database in {root}: {exc}") from None
        except OSError as exc:
            raise UsageError(f"cannot open store at {root}: {exc.strerror or exc}") from None
        return cls(root, blobs, database)

    # -- transactions -------------------------------------------------------

    def read(self) -> contextlib.AbstractContextManager[Connection]:
        return self.database.read()

    def write(self, durable: bool = True, wait_ms: int = db.BUSY_MS) -> contextlib.AbstractContextManager[Connection]:
        """One transaction; ``wait_ms``: how long to wait for another writer (caches wait little)."""
        return self.database.write(wait_ms, durable)

    def close(self) -> None:
        self.database.close()

    def lock_shared(self, blocking: bool = True) -> contextlib.AbstractContextManager[bool]:
        return locking.shared(self.root / "store.lock", blocking)

    def lock_exclusive(self, blocking: bool = True) -> contextlib.AbstractContextManager[bool]:
        return locking.exclusive(self.root / "store.lock", blocking)

    # -- blobs --------------------------------------------------------------

    def blob_digests(self) -> set[str]:
        with self.read() as conn:
            return {r[0] for r in conn.execute("SELECT digest FROM blobs")}

    def blob_info(self, digest: str) -> BlobInfo:
        with self._cache_lock:
            hit = self._infos.get(digest)
        if hit is not None:
            return hit
        infos = self.blob_infos([digest])
        if digest not in infos:
            lazy = self._lazy_source(digest)
            if lazy is None:
                raise MissingObjectError(f"missing blob {digest}")
            return lazy.info(digest)  # a partial image's: its facts from the pack index, fetched on read
        return infos[digest]

    def blob_infos(self, digests: Iterable[str]) -> dict[str, BlobInfo]:
        """Recorded facts of many blobs, and their chunk digests, in a few queries (they
        never change; cached)."""
        wanted = set(digests)
        out: dict[str, BlobInfo] = {}
        chunks: dict[str, bytes] = {}
        with self.read() as conn:
            for r in db.select_in(conn, "SELECT b.digest, b.size, b.stored_size, b.codec, c.chunk_size, c.blake3 "
                                  "FROM blobs b LEFT JOIN blob_checks c ON c.digest = b.digest "
                                  "WHERE b.digest IN ({})", wanted):
                out[r[0]] = BlobInfo(*r[:4])
                if r[4] == CHUNK:
                    chunks[r[0]] = bytes(r[5])
        with self._cache_lock:
            self._infos.update(out)
            self._chunks.update(chunks)
        return out

    def prefetch_blob_infos(self, digests: Iterable[str]) -> None:
        """Cache the recorded facts of the blobs not cached yet, in a few queries; contents a
        partial image lacks are fetched ahead (a directory's first read: its files come next)."""
        with self._cache_lock:
            wanted = [d for d in digests if d not in self._infos]
        if wanted:
            found = self.blob_infos(wanted)
            missing = [d for d in wanted if d not in found]
            if missing and self._lazy_source(missing[0]) is not None:
                self._lazy.prefetch(missing)

    def content_info(self, entry: "Entry") -> BlobInfo:
        """The blob of a file entry, which must hold exactly the size the entry records: a
        tree that claims another size is corrupt (a mount and an export would disagree)."""
        assert entry.digest is not None
        info = self.blob_info(entry.digest)
        if info.size != entry.size:
            raise IntegrityError(f"corrupt tree: {entry.name!r} records {entry.size} bytes, "
                                 f"its blob {entry.digest} holds {info.size}")
        return info

    def read_content(self, entry: "Entry") -> bytes:
        """A file entry's stored bytes (inlined or its blob), verified (not rendered)."""
        if entry.inline is not None:
            return entry.inline
        assert entry.digest is not None
        return self.read_blob(entry.digest, self.content_info(entry))

    def read_blob(self, digest: str, info: BlobInfo | None = None) -> bytes:
        """A blob's verified content: checked against its chunk digests when recorded, else its sha256."""
        info = info or self.blob_info(digest)
        with self._cache_lock:
            chunks = self._chunks.get(digest)
        try:
            return self.blobs.read(digest, info.codec, info.size, chunks)
        except MissingObjectError:
            lazy = self._lazy_source(digest)
            if lazy is None:
                raise
            return lazy.fetch(digest)

    def _lazy_source(self, digest: str) -> Any:
        """The fetcher of partial images when ``digest`` is a content one of them lacks, else None.
        Made on the first miss only (vocker.oci.lazy: the store does not speak HTTP itself), and
        asked again about digests it does not know (a partial image recorded since)."""
        if self._lazy is None:
            with self.read() as conn:
                if conn.execute("SELECT 1 FROM partial_images LIMIT 1").fetchone() is None:
                    return None
            from .oci.lazy import Fetcher

            with self._cache_lock:
                if self._lazy is None:
                    self._lazy = Fetcher(self)
        return self._lazy if self._lazy.knows(digest) else None

    def _partial_reader(self, digest: str, chunks: bytes, cache: Any) -> Any:
        """A reader of a large content a partial image lacks (BlobFiles.reader, on a miss): it
        fetches the chunks read, or the whole content for a reader without a cache (one pass)."""
        lazy = self._lazy_source(digest)
        return lazy.reader(digest, chunks, cache) if lazy is not None else None

    def keep_fetched(self, staged: Staged) -> None:
        """Remember a blob fetched and recorded at run time (its facts and chunk digests)."""
        with self._cache_lock:
            self._infos[staged.info.digest] = staged.info
            self._chunks[staged.info.digest] = staged.chunks

    def blob_chunks(self, info: BlobInfo) -> bytes:
        """Chunk digests of a blob for verified range reads: recorded ones, else computed
        by checking the whole blob against its sha256 once and recorded for next time."""
        with self._cache_lock:
            hit = self._chunks.get(info.digest)
        if hit is None:
            recorded = self.blob_infos([info.digest])  # caches the recorded chunk digests, if any
            lazy = self._lazy_source(info.digest) if not recorded else None
            if lazy is not None:
                checks = lazy.chunk_checks(info.digest)
                if checks is not None:  # its pack index has them: chunks are fetched as they are read
                    return checks
                lazy.fetch(info.digest)  # a partial image's content: fetched (and recorded, chunks too) now
            with self._cache_lock:
                hit = self._chunks.get(info.digest)
        if hit is not None:
            return hit
        chunks = self.blobs.chunk_digests(info.digest, info.codec, info.size)
        # A reader must not wait behind another process's long write: if the database is
        # busy, the digests are simply computed again next time.
        with contextlib.suppress(db.OperationalError), self.write(wait_ms=100) as conn:
            self.record_chunks(conn, {info.digest: chunks})
        with self._cache_lock:
            self._chunks[info.digest] = chunks
        return chunks

    @staticmethod
    def record_chunks(conn: Connection, chunks: dict[str, bytes]) -> None:
        conn.executemany("INSERT OR REPLACE INTO blob_checks (digest, chunk_size, blake3) VALUES (?, ?, ?)",
                         [(d, CHUNK, c) for d, c in chunks.items()])

    def forget_chunks(self, digest: str) -> None:
        with self.write() as conn:
            conn.execute("DELETE FROM blob_checks WHERE digest = ?", (digest,))
        with self._cache_lock:
            self._chunks.pop(digest, None)

    def put_blobs(self, datas: dict[str, bytes], pycs: tuple[str, dict[str, str | None]] | None = None,
                  wait_ms: int = db.BUSY_MS) -> None:
        """Store contents (digest -> bytes) durably, optionally with pyc cache rows naming them.

        ``wait_ms``: how long to wait for another writer (as ``write``)."""
        with self.read() as conn:
            present = {r[0] for r in db.select_in(conn, "SELECT digest FROM blobs WHERE digest IN ({})", datas)}
        staged = [self.blobs.stage(d, data) for d, data in datas.items() if d not in present]
        self.blobs.commit_or_discard(staged)
        with self.write(wait_ms=wait_ms) as conn:
            self.record_staged(conn, staged)
            if pycs is not None:
                self.record_pycs(conn, *pycs)

    @classmethod
    def record_staged(cls, conn: Connection, staged: Iterable[Staged]) -> None:
        """Record committed blobs, with the chunk digests staging computed."""
        staged = list(staged)
        cls.record_blobs(conn, (s.info for s in staged))
        cls.record_chunks(conn, {s.info.digest: s.chunks for s in staged})

    @staticmethod
    def record_blobs(conn: Connection, infos: Iterable[BlobInfo]) -> None:
        conn.executemany("INSERT OR IGNORE INTO blobs (digest, size, stored_size, codec) VALUES (?, ?, ?, ?)",
                         [attrs.astuple(i) for i in infos])

    # -- objects (trees, manifests) -----------------------------------------

    @staticmethod
    def record_objects(conn: Connection, kind: str, objs: dict[str, bytes]) -> None:
        conn.executemany("INSERT OR IGNORE INTO objects (digest, kind, data) VALUES (?, ?, ?)",
                         [(d, kind, data) for d, data in objs.items()])

    def object_bytes(self, digest: str, what: str) -> bytes:
        with self.read() as conn:
            row = conn.execute("SELECT data FROM objects WHERE digest = ?", (digest,)).fetchone()
        data = row[0] if row else None
        if data is None:
            raise MissingObjectError(f"missing {what} {digest}")
        if digest_bytes(data) != digest:
            raise IntegrityError(f"corrupt {what} {digest} (content does not match its digest)")
        return bytes(data)

    def hold_trees(self, objects: dict[str, bytes]) -> None:
        """Make nodes readable by ``tree`` for this process's life without recording them."""
        self._held.update({d: Tree.decode(data) for d, data in objects.items()})

    def tree(self, digest: str) -> Tree:
        with self._cache_lock:
            hit = self._held.get(digest) or self._trees.get(digest)
        if hit is not None:
            return hit
        tree = Tree.decode(self.object_bytes(digest, "tree"), check_canonical=False)
        with self._cache_lock:
            self._trees[digest] = tree
        return tree

    def prefetch_trees(self, root: str) -> None:
        """Load every tree below ``root`` into the cache with one query per level, not per node."""
        level, seen = [root], set()
        while level:
            level = [d for d in dict.fromkeys(level) if d not in seen]  # a shared directory once, not per use
            seen.update(level)
            with self._cache_lock:
                missing = [d for d in level if d not in self._trees and d not in self._held]
            found: dict[str, bytes] = {}
            with self.read() as conn:
                found.update({d: bytes(data) for d, data in db.select_in(
                    conn, "SELECT digest, data FROM objects WHERE digest IN ({})", missing)})
            nxt = []
            for d in level:
                if d in found and digest_bytes(found[d]) == d:
                    tree = Tree.decode(found[d], check_canonical=False)
                    with self._cache_lock:
                        self._trees[d] = tree
                else:
                    try:
                        tree = self.tree(d)  # raises the precise missing/corrupt error
                    except Exception:
                        continue  # let the caller meet it where it walks
                nxt += [e.digest for e in tree.entries if e.digest is not None and e.kind is Kind.DIR]
            level = nxt

    def manifest(self, image_id: str) -> Manifest:
        return Manifest.decode(self.object_bytes(image_id, "manifest"))

    # -- images and tags -----------------------------------------------------

    def resolve(self, ref: str) -> str:
        """Image ID for a tag, a full ID or a unique ID prefix."""
        prefix = refs.id_prefix(ref)
        with self.read() as conn:
            if prefix is not None:
                ids = [r[0] for r in conn.execute("SELECT id FROM images WHERE id LIKE ? LIMIT 2", (f"sha256:{prefix}%",))]
                if len(ids) == 1:
                    return ids[0]
                if len(ids) > 1:
                    raise UsageError(f"image ID prefix {ref!r} is ambiguous; give more characters")
            try:
                tag = refs.normalize_tag(ref)
            except UsageError:
                if prefix is not None:
                    raise NotFoundError(f"no such image: {ref}") from None
                raise
            row = conn.execute("SELECT image_id FROM tags WHERE name = ?", (tag,)).fetchone()
        image_id = row[0] if row else None
        if image_id is None:
            raise NotFoundError(f"no such image: {ref}")
        return image_id

    def partial_images(self) -> dict[str, tuple[dict[str, Any], bytes]]:
        """image ID -> (source, pack indexes) of the partial images (see db.SCHEMA)."""
        with self.read() as conn:
            return {r[0]: (json.loads(r[1]), bytes(r[2]))
                    for r in conn.execute("SELECT image_id, source, indexes FROM partial_images")}

    @staticmethod
    def record_partial(conn: Connection, image_id: str, source: dict[str, Any], indexes: bytes) -> None:
        conn.execute("INSERT OR IGNORE INTO partial_images (image_id, source, indexes) VALUES (?, ?, ?)",
                     (image_id, json.dumps(source, sort_keys=True), indexes))

    @staticmethod
    def complete(conn: Connection, image_id: str) -> None:
        """The image has all its contents now (a pull finished it): no longer partial."""
        conn.execute("DELETE FROM partial_images WHERE image_id = ?", (image_id,))

    def has_image(self, image_id: str) -> bool:
        with self.read() as conn:
            return conn.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone() is not None

    @staticmethod
    def record_image(conn: Connection, image_id: str, manifest_bytes: bytes, size: int, files: int,
                     provenance: dict[str, Any]) -> bool:
        """Record an image (idempotent); True if it is new to this store."""
        Store.record_objects(conn, "manifest", {image_id: manifest_bytes})
        result = conn.execute(
            "INSERT OR IGNORE INTO images (id, size, files, created, provenance) VALUES (?, ?, ?, ?, ?)",
            (image_id, size, files, time.time(), json.dumps(provenance, sort_keys=True)),
        )
        return result.rowcount == 1

    @staticmethod
    def set_tag(conn: Connection, tag: str, image_id: str) -> None:
        conn.execute("INSERT INTO tags (name, image_id) VALUES (?, ?) "
                     "ON CONFLICT (name) DO UPDATE SET image_id = excluded.image_id", (tag, image_id))

    def tag(self, ref: str, new_tag: str) -> str:
        tag = refs.new_tag(new_tag)
        image_id = self.resolve(ref)
        with self.write() as conn:
            self.set_tag(conn, tag, image_id)
        return tag

    def images(self, image_id: str | None = None) -> list[ImageRecord]:
        """All images, newest first (or just ``image_id``)."""
        where, args = ("", ()) if image_id is None else ("WHERE {} = ?", (image_id,))
        with self.read() as conn:
            tag_rows = conn.execute(f"SELECT name, image_id FROM tags {where.format('image_id')} ORDER BY name",
                                    args).fetchall()
            rows = conn.execute("SELECT id, size, files, created, provenance FROM images "
                                f"{where.format('id')} ORDER BY created DESC", args).fetchall()
            partial = {r[0] for r in conn.execute("SELECT image_id FROM partial_images")}
        by_image: dict[str, list[str]] = {}
        for name, tagged in tag_rows:
            by_image.setdefault(tagged, []).append(name)
        return [ImageRecord(r["id"], r["size"], r["files"], r["created"], json.loads(r["provenance"]),
                            tuple(by_image.get(r["id"], ())), r["id"] in partial) for r in rows]

    def image(self, image_id: str) -> ImageRecord:
        found = self.images(image_id)
        if not found:
            raise NotFoundError(f"no such image: {image_id}")
        return found[0]

    def remove(self, ref: str) -> tuple[str, bool]:
        """Untag ``ref`` if it is one of several tags, else delete the image.

        Returns (image_id, deleted). Blobs are freed later by gc.
        """
        image_id = self.resolve(ref)
        tag = refs.normalize_tag(ref) if self._is_tag(ref) else None
        # gc holds the lock exclusively from reading the images to deleting what they do not
        # need: removing one under it would make gc find a manifest gone and stop.
        with self.lock_shared(), self.write() as conn:
            names = [r[0] for r in conn.execute("SELECT name FROM tags WHERE image_id = ?", (image_id,))]
            if tag is not None and len(names) > 1:
                conn.execute("DELETE FROM tags WHERE name = ?", (tag,))
                return image_id, False
            users = [r[0] for r in conn.execute("SELECT name FROM containers WHERE image_id = ?", (image_id,))]
            if users:
                raise UsageError(f"image {ref} is used by container(s) {', '.join(sorted(users))}; "
                                 "remove them first ('vocker rm')")
            conn.execute("DELETE FROM read_profiles WHERE image_id = ?", (image_id,))
            conn.execute("DELETE FROM tags WHERE image_id = ?", (image_id,))
            conn.execute("DELETE FROM images WHERE id = ?", (image_id,))
            conn.execute("DELETE FROM partial_images WHERE image_id = ?", (image_id,))
            conn.execute("DELETE FROM objects WHERE digest = ?", (image_id,))
        return image_id, True

    def _is_tag(self, ref: str) -> bool:
        try:
            tag = refs.normalize_tag(ref)
        except UsageError:
            return False
        with self.read() as conn:
            return conn.execute("SELECT 1 FROM tags WHERE name = ?", (tag,)).fetchone() is not None

    # -- bytecode cache ------------------------------------------------------

    def cached_pycs(self, magic: str, sources: Iterable[str]) -> dict[str, str | None]:
        """source digest -> pyc body blob (None: known not to compile) for those cached."""
        wanted = set(sources)
        out: dict[str, str | None] = {}
        with self.read() as conn:
            out.update({s: p for s, p in db.select_in(
                conn, "SELECT source, pyc FROM pycs WHERE magic = ? AND source IN ({})", wanted, magic)})
        return out

    def pyc_bodies(self, magic: str, sources: Iterable[str]) -> dict[str, tuple[str, int]]:
        """source digest -> (pyc body blob, its size), for sources with cached bytecode."""
        wanted = set(sources)
        out: dict[str, tuple[str, int]] = {}
        with self.read() as conn:
            out.update({s: (p, n) for s, p, n in db.select_in(
                conn, "SELECT pycs.source, pycs.pyc, blobs.size FROM pycs JOIN blobs ON blobs.digest = pycs.pyc "
                "WHERE pycs.magic = ? AND pycs.source IN ({})", wanted, magic)})
        return out

    @staticmethod
    def record_pycs(conn: Connection, magic: str, entries: dict[str, str | None]) -> None:
        conn.executemany("INSERT OR IGNORE INTO pycs (source, magic, pyc, ok) VALUES (?, ?, ?, ?)",
                         [(s, magic, p, p is not None) for s, p in entries.items()])
