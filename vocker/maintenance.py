"""Store upkeep: verify (re-hash everything), gc (free what no image needs), df."""

from __future__ import annotations

import contextlib
import os
import shutil

import attrs
from . import db, partial, scratch
from .blobstore import CHUNK, BlobInfo
from .digest import digest_bytes, short
from .errors import FormatError, IntegrityError, MissingObjectError
from .parallel import pmap
from .progress import NullReporter, Reporter
from .store import Store
from .tree import Kind

#: gc replaces the empty staging directory when its own size is above this (bytes).
TMP_DIR_MAX = 64 << 10


@attrs.define
class Reach:
    """Everything one image needs."""

    trees: set[str] = attrs.field(factory=set)
    blobs: set[str] = attrs.field(factory=set)
    #: sizes of all file contents by digest, inline ones included (the bytecode cache is keyed by them)
    contents: dict[str, int] = attrs.field(factory=dict)
    #: blobs that entries claim different sizes for: digest -> the sizes claimed
    sizes: dict[str, set[int]] = attrs.field(factory=dict)
    #: objects that could not be read: digest -> (kind, reason)
    broken: dict[str, tuple[str, str]] = attrs.field(factory=dict)


def reach(store: Store, image_id: str) -> Reach:
    out = Reach()
    try:
        manifest = store.manifest(image_id)
    except (MissingObjectError, IntegrityError, FormatError) as exc:
        out.broken[image_id] = ("manifest", str(exc))
        return out
    stack = list(manifest.layers)
    while stack:
        digest = stack.pop()
        if digest in out.trees:
            continue
        out.trees.add(digest)
        try:
            tree = store.tree(digest)
        except (MissingObjectError, IntegrityError, FormatError) as exc:
            out.broken[digest] = ("tree", str(exc))
            continue
        for e in tree.entries:
            if e.kind is Kind.DIR:
                stack.append(e.digest)  # type: ignore[arg-type]
            elif e.kind is Kind.FILE:
                if e.digest is not None:
                    out.blobs.add(e.digest)
                    if out.contents.setdefault(e.digest, e.size) != e.size:  # one of them is wrong
                        out.sizes.setdefault(e.digest, {out.contents[e.digest]}).add(e.size)
                        out.broken[e.digest] = ("blob", f"tree entries record different sizes for blob {e.digest}")
                else:
                    out.contents[digest_bytes(e.inline or b"")] = e.size
    return out


@attrs.frozen
class Problem:
    kind: str  # "blob", "tree", "manifest", "cache"
    digest: str
    reason: str
    images: tuple[str, ...]  # display names of the affected images

    def line(self) -> str:
        if self.kind == "database":
            return f"{self.reason} ({self.digest}) — affects every image"
        affected = ", ".join(self.images) if self.images else "no image (bytecode cache only)"
        reason = self.reason if self.digest in self.reason else f"{self.kind} {self.digest}: {self.reason}"
        return f"{reason} — affects {affected}"


def _display(store: Store) -> dict[str, str]:
    return {r.id: (", ".join(r.tags) + f" ({short(r.id)})" if r.tags else short(r.id)) for r in store.images()}


def database_problems(store: Store, most: int = 20) -> list[str]:
    """What SQLite's own check finds wrong in the store database (a damaged page or index
    would otherwise go unnoticed until some query meets it)."""
    with store.read() as conn:
        rows = [r[0] for r in conn.execute(f"PRAGMA integrity_check({int(most)})")]
    return [] if rows == ["ok"] else [f"store database is damaged: {r}" for r in rows]


def verify(store: Store, reporter: Reporter | None = None) -> tuple[int, list[Problem]]:
    """Check the database, then re-hash every object reachable from an image (and every
    cached pyc). Returns (checked, problems)."""
    where = str(store.database.path)
    try:
        damaged = [Problem("database", where, reason, ()) for reason in database_problems(store)]
        checked, problems = _verify_objects(store, reporter or NullReporter())
    except db.DatabaseError as exc:  # too damaged (or busy) to read on
        what = "store database is damaged" if db.damaged(exc) else "cannot read the store database"
        return 0, [Problem("database", where, f"{what}: {exc}", ())]
    return checked, damaged + problems


def _verify_objects(store: Store, reporter: Reporter) -> tuple[int, list[Problem]]:
    names = _display(store)
    reaches = {image_id: reach(store, image_id) for image_id in names}
    # a partial image (a lazy mount's) lacks contents by design: fetched on first read, not lost
    partial = set(store.partial_images())
    complete = set().union(*(r.blobs for i, r in reaches.items() if i not in partial))
    with store.read() as conn:
        rows = {r[0]: BlobInfo(*r) for r in conn.execute("SELECT digest, size, stored_size, codec FROM blobs")}
        chunked = {d: bytes(c) for d, c in conn.execute("SELECT digest, blake3 FROM blob_checks WHERE chunk_size = ?",
                                                          (CHUNK,))}
    missing: dict[str, bytes] = {}  # chunk digests to record (a store from before they were kept)
    wanted = set().union(*(r.blobs for r in reaches.values())) | set(rows)
    broken: dict[str, tuple[str, str]] = {}
    for r in reaches.values():
        broken.update(r.broken)

    def check(digest: str) -> tuple[str, str] | None:
        info = rows.get(digest)
        try:
            if info is None:
                if digest not in complete:
                    return None
                return ("blob", f"missing blob {digest} (not recorded in the store)")
            # Streamed against its sha256, the blob's identity: memory does not grow with its size.
            chunks = store.blobs.chunk_digests(digest, info.codec, info.size)
            if digest not in chunked:
                missing[digest] = chunks
            elif chunked[digest] != chunks:
                store.forget_chunks(digest)  # a cache: recomputed from the verified blob on next use
                return ("blob", f"wrong chunk digests recorded for blob {digest} (content fine; record dropped)")
        except (IntegrityError, FormatError) as exc:
            return ("blob", str(exc))
        finally:
            reporter.advance(info.size if info else 0)
        return None

    reporter.begin("Verifying", sum(rows[d].size for d in wanted if d in rows))
    try:
        for digest, bad in zip(sorted(wanted), pmap(check, sorted(wanted))):
            if bad is not None:
                broken[digest] = bad
    finally:
        reporter.end()
        if missing:  # a cache: a store that cannot take it now is still verified
            with contextlib.suppress(db.Error), store.write() as conn:
                store.record_chunks(conn, missing)
    for r in reaches.values():
        for digest in r.blobs:
            info = rows.get(digest)
            wrong = sorted(r.sizes.get(digest, {r.contents[digest]}) - {info.size}) if info is not None else []
            if wrong and (digest not in broken or digest in r.sizes):  # names the wrong claims, not just "differ"
                claims = " and ".join(map(str, wrong))
                broken[digest] = ("blob", f"tree entries record {claims} bytes for blob {digest}, "
                                          f"which holds {info.size}")  # type: ignore[union-attr]
    problems = []
    for digest, (kind, reason) in sorted(broken.items()):
        affected = tuple(sorted(names[i] for i, r in reaches.items()
                                if digest == i or digest in r.blobs or digest in r.trees))
        problems.append(Problem(kind if affected else "cache", digest, reason, affected))
    checked = len(wanted) + len(set().union(*(r.trees for r in reaches.values()))) + len(reaches)
    return checked, problems


@attrs.frozen
class GcResult:
    blobs: int
    bytes: int
    objects: int
    pycs: int
    orphans: int


def gc(store: Store) -> GcResult:
    """Delete what no image needs. Call with the store's exclusive lock held."""
    records = store.images()
    reaches = [reach(store, r.id) for r in records]
    broken = {d for r in reaches for d in r.broken}
    if broken:
        raise IntegrityError(f"store has unreadable objects (e.g. {sorted(broken)[0]}); run 'vocker verify' first")
    trees = set().union(*(r.trees for r in reaches)) if reaches else set()
    blobs = set().union(*(r.blobs for r in reaches)) if reaches else set()
    contents = set().union(*(r.contents for r in reaches)) if reaches else set()  # digests
    manifests = {r.id for r in records}
    # a partial image lacks contents by design; what it has is kept, what it lacks is not a loss
    complete = set().union(*(r.blobs for r, rec in zip(reaches, records) if not rec.partial))
    with store.write() as conn:
        rows = {d: s for d, s in conn.execute("SELECT digest, stored_size FROM blobs")}
        unrecorded = sorted(complete - set(rows))
        if unrecorded:  # their files look like orphans: deleting them would lose what an image needs
            raise IntegrityError(f"the store is inconsistent: {len(unrecorded)} blob(s) that images need are not "
                                 f"recorded (e.g. {unrecorded[0]}); nothing was deleted. Run 'vocker verify'")
        pyc_rows = conn.execute("SELECT source, magic, pyc FROM pycs").fetchall()
        dead_pycs = [(s, m) for s, m, _ in pyc_rows if s not in contents]
        blobs |= {p for s, _, p in pyc_rows if s in contents and p is not None}
        conn.executemany("DELETE FROM pycs WHERE source = ? AND magic = ?", dead_pycs)
        objs = {r[0] for r in conn.execute("SELECT digest FROM objects")}
        dead_objs = objs - trees - manifests
        conn.executemany("DELETE FROM objects WHERE digest = ?", [(d,) for d in dead_objs])
        dead_blobs = set(rows) - blobs
        conn.executemany("DELETE FROM blobs WHERE digest = ?", [(d,) for d in dead_blobs])
        conn.executemany("DELETE FROM blob_checks WHERE digest = ?", [(d,) for d in dead_blobs])

    # Rows first, files after: a crash in between leaves orphan files, never dangling rows.
    freed = 0
    orphans = 0
    for digest, path in store.blobs.iter_files():
        if digest in complete or (digest in rows and digest not in dead_blobs):
            continue  # a partial image's unrecorded file goes: an interrupted lazy fetch, fetched again
        try:
            freed += path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        orphans += digest not in rows
    # a partial image's large contents fetched a chunk at a time: kept while it lacks them
    freed += partial.remove_stale(store.blobs, blobs - set(rows))
    shutil.rmtree(store.root / "cache" / "import", ignore_errors=True)  # may name freed blobs; rebuilt on import
    tmp = store.blobs.tmp_dir
    for leftover in tmp.iterdir():  # interrupted writes; no writer runs under the lock
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    if tmp.stat().st_size > TMP_DIR_MAX:
        # A directory that once staged many files keeps its size on ext4, and every scan
        # reads all of it: start a fresh one (BlobFiles.setup remakes it after a crash here).
        with contextlib.suppress(OSError):
            tmp.rmdir()
        tmp.mkdir(exist_ok=True)
    scratch.remove_stale(store)  # exports to other file systems whose exporter died
    return GcResult(len(dead_blobs), freed, len(dead_objs), len(dead_pycs), orphans)


@attrs.frozen
class Usage:
    images: int
    logical: int  # sum of every image's file sizes, as if each were a separate copy
    unique: int  # distinct file contents the images need (inlined small files included)
    cache: int  # bytes on disk of the bytecode cache
    files: int
    database: int  # bytes of the metadata database (small files live inline in it)
    blob_content: int  # content bytes of the blobs the images need
    blob_stored: int  # their bytes on disk

    @property
    def stored(self) -> int:
        """Bytes the store takes on disk: the images' blobs, the metadata database and the
        bytecode cache (left out, a 65 MB cache went missing from a 251 MB store)."""
        return self.blob_stored + self.database + self.cache

    @property
    def dedup_ratio(self) -> float:
        return self.logical / self.unique if self.unique else 1.0

    @property
    def compression_ratio(self) -> float:
        """Over blob files only: counting the database made a small store look inflated (0.02x)."""
        return self.blob_content / self.blob_stored if self.blob_stored else 1.0


def usage(store: Store) -> Usage:
    records = store.images()
    reaches = [reach(store, r.id) for r in records]
    needed = set().union(*(r.blobs for r in reaches)) if reaches else set()
    with store.read() as conn:
        rows = {d: (size, stored) for d, size, stored in
                conn.execute("SELECT digest, size, stored_size FROM blobs")}
    unique = sum({d: n for r in reaches for d, n in r.contents.items()}.values())
    database = sum(os.path.getsize(p) for p in store.root.glob("vocker.db*"))
    blob_content = sum(rows[d][0] for d in needed if d in rows)
    blob_stored = sum(rows[d][1] for d in needed if d in rows)
    cache = sum(v[1] for d, v in rows.items() if d not in needed)
    return Usage(len(records), sum(r.size for r in records), unique, cache, sum(r.files for r in records),
                 database, blob_content, blob_stored)
