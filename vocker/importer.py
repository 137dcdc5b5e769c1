"""Turn a directory (a venv, or any tree) into an image in the store.

Pipeline: walk the tree (skipping venv scaffolding and bytecode), then hash,
normalise, compress and write file contents in a thread pool (hashlib and zstd
release the GIL), then build the Merkle nodes bottom-up and record blobs, nodes,
manifest and tag in one transaction. A crash or Ctrl-C before that commit leaves
only orphan blob files, which gc removes; after it, the image is complete. Files over
blobstore.STREAM_MIN are streamed (the same rules, applied in bounded memory).
"""

from __future__ import annotations

import os
import platform
import stat
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Union

import attrs

from . import __version__, blobstore, editables, importcache, interrupts, normalize, template, venv, walk
from .blobstore import Staged
from .digest import digest_bytes
from .errors import UsageError, VockerError
from .manifest import Manifest, PythonFacts
from .parallel import pmap
from .progress import NullReporter, Reporter
from .store import Store
from .tree import INLINE_MAX, Entry, Kind, Tree, check_name

Rel = tuple[str, ...]


@attrs.frozen
class FileTask:
    rel: Rel
    path: str
    st: os.stat_result

    @property
    def size(self) -> int:
        return self.st.st_size

    @property
    def executable(self) -> bool:
        return bool(self.st.st_mode & stat.S_IXUSR)


@attrs.frozen
class LinkTask:
    rel: Rel
    target: str


@attrs.frozen
class WhiteoutTask:
    """An OCI whiteout in a writable layer (``.wh.NAME``): NAME is gone from the layers below."""


#: A node's key for the OCI opaque marker (``.wh..wh..opq``): never a valid name, so no clash.
OPAQUE_KEY = "/opaque"
WHITEOUT_PREFIX = ".wh."
OPAQUE_NAME = ".wh..wh..opq"

Node = dict[str, Union["Node", FileTask, LinkTask, WhiteoutTask]]


@attrs.frozen
class ImportResult:
    image_id: str
    new: bool
    kind: str
    files: int
    size: int
    new_blobs: int
    new_stored_bytes: int
    tag: str | None
    seconds: float
    unchanged: int = 0  # files taken from the import cache without reading them
    #: symlinks that point out of the image ("path -> target"): stored, but never served or exported
    escaping_links: tuple[str, ...] = ()
    #: editable installs ("name -> source"): the image refers to files outside itself
    editables: tuple[str, ...] = ()


@attrs.define
class _Walker:
    root: Path
    site: Rel | None  # site-packages of a venv; None for a plain tree
    files: list[FileTask] = attrs.field(factory=list)
    total: int = 0
    escaping: list[str] = attrs.field(factory=list)
    layer: bool = False  # a writable layer: its OCI whiteouts and opaque markers are read as such

    def walk(self, path: str, rel: Rel) -> Node:
        node: Node = {}
        try:
            entries = list(os.scandir(path))
        except OSError as exc:
            raise VockerError(f"cannot read {path}: {exc.strerror}") from None
        for e in entries:
            name = _decode_name(e.name, e.path)
            whiteout = self.layer and name.startswith(WHITEOUT_PREFIX)
            if whiteout and name == OPAQUE_NAME:
                node[OPAQUE_KEY] = WhiteoutTask()
                continue
            if whiteout:
                name = name[len(WHITEOUT_PREFIX):]
            sub = rel + (name,)
            if self.site is not None and (name == "__pycache__" or venv.is_scaffold(sub, self.site)):
                continue
            if whiteout:
                node.setdefault(name, WhiteoutTask())  # a name present as well is there again
                continue
            st = e.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                node[name] = LinkTask(sub, _decode_name(os.readlink(e.path), e.path))
                if walk.escapes(sub, node[name].target):  # type: ignore[union-attr]
                    self.escaping.append(f"{'/'.join(sub)} -> {node[name].target}")  # type: ignore[union-attr]
            elif stat.S_ISDIR(st.st_mode):
                node[name] = self.walk(e.path, sub)
            elif stat.S_ISREG(st.st_mode):
                task = FileTask(sub, e.path, st)
                node[name] = task
                self.files.append(task)
                self.total += st.st_size
            else:
                raise VockerError(f"cannot import {e.path}: not a regular file, directory or symlink")
        return node


def _decode_name(name: str, where: str) -> str:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise VockerError(f"cannot import {where!r}: name is not valid UTF-8") from None
    return name


@attrs.define
class _Ingest:
    """Stores file contents; shared by the worker threads."""

    store: Store
    known: set[str]
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    staged: dict[str, Staged] = attrs.field(factory=dict)

    def file_entry(self, name: str, data: bytes, executable: bool, is_template: bool) -> Entry:
        if len(data) <= INLINE_MAX:
            return Entry(name, Kind.FILE, size=len(data), inline=data, executable=executable, template=is_template)
        digest = digest_bytes(data)
        with self.lock:
            needed = digest not in self.known
            self.known.add(digest)
        if needed:
            staged = self.store.blobs.stage(digest, data)
            with self.lock:
                self.staged[digest] = staged
        return Entry(name, Kind.FILE, size=len(data), digest=digest, executable=executable, template=is_template)

    def staged_entry(self, name: str, staged: Staged, executable: bool, is_template: bool) -> Entry:
        """The entry of content staged by streaming (its digest known only now; always over
        INLINE_MAX: a template of a large file keeps at least 5 bytes per path it replaces)."""
        digest = staged.info.digest
        with self.lock:
            needed = digest not in self.known
            self.known.add(digest)
            if needed:
                self.staged[digest] = staged
        if not needed:
            self.store.blobs.discard([staged])
        return Entry(name, Kind.FILE, size=staged.info.size, digest=digest, executable=executable,
                     template=is_template)


def import_tree(store: Store, src: Path, tag: str | None = None, *, python: Path | None = None,
                reporter: Reporter | None = None, rehash: bool = False) -> ImportResult:
    started = time.perf_counter()
    reporter = reporter or NullReporter()
    recording = interrupts.recording()  # nothing recorded until its check says otherwise
    if not src.exists():
        raise UsageError(f"no such directory: {src}")
    if not src.is_dir():
        raise UsageError(f"not a directory: {src}")
    given = str(src.absolute())
    is_venv = venv.is_venv(src)
    facts: PythonFacts | None = None
    provenance: dict[str, Any] = {
        "created_by": f"vocker {__version__} image import", "source": given,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host_platform": platform.platform(),
    }
    site: Rel | None = None
    paths: normalize.VenvPaths | None = None
    real = None
    if is_venv:
        facts, base = venv.facts_for(src, python)
        provenance["base_interpreter"] = base
        site = tuple(facts.lib.split("/")) + ("site-packages",)
        real = os.path.realpath(given)
        paths = normalize.VenvPaths.of(given, real)

    context = importcache.context_for(given, real)
    with store.lock_shared():
        got = ingest_dir(store, given, paths, site, reporter, f"Importing {src.name or given}",
                         cached_context=None if rehash else context, drop_empty=("include",) if is_venv else ())
        manifest = Manifest("venv" if is_venv else "tree", (got.root,), facts)
        manifest_bytes = manifest.encode()
        image_id = digest_bytes(manifest_bytes)
        results, ingest, objects, walker = got.results, got.ingest, got.objects, got.walker
        files = sum(1 for e in results.values() if e is not None)
        size = sum(e.size for e in results.values() if e is not None)
        infos = [s.info for s in ingest.staged.values()]
        recording.check = lambda: _recorded(store, image_id, tag)
        with store.write() as conn:
            store.record_staged(conn, ingest.staged.values())
            store.record_objects(conn, "tree", objects)
            new = store.record_image(conn, image_id, manifest_bytes, size, files, provenance)
            if tag is not None:
                store.set_tag(conn, tag, image_id)
        importcache.save(store, context, got.seen)
    return ImportResult(
        image_id=image_id, new=new, kind=manifest.kind, files=files, size=size, new_blobs=len(infos),
        new_stored_bytes=sum(i.stored_size for i in infos), tag=tag,
        seconds=time.perf_counter() - started, unchanged=len(got.hits), escaping_links=tuple(sorted(walker.escaping)),
        editables=tuple(editables.find(src)),
    )


@attrs.define
class Ingested:
    """A directory read into the store's form: its root node, the nodes and staged blobs it
    needs (blobs committed as files, not yet recorded), and what the import cache learns."""

    root: str
    objects: dict[str, bytes]
    results: dict[Rel, Entry | None]
    ingest: "_Ingest"
    walker: "_Walker"
    seen: list[tuple[str, os.stat_result, importcache.Outcome]]
    hits: list[str]


def ingest_dir(store: Store, path: str, paths: normalize.VenvPaths | None, site: Rel | None, reporter: Reporter,
               title: str, *, cached_context: str | None = None, drop_empty: tuple[str, ...] = (),
               layer: bool = False, commit_blobs: bool = True) -> Ingested:
    """Read the directory at ``path`` with the import's rules: ``paths`` spell the venv's location
    (cut out of its files), ``site`` is its site-packages (scaffolding and bytecode left out).
    ``layer``: OCI whiteouts (``.wh.NAME``, ``.wh..wh..opq``) become whiteout entries and opaque
    nodes, as in a container's writable layer. The caller holds the store's shared lock and
    records the result (or discards its staged blobs)."""
    walker = _Walker(Path(path), site, layer=layer)
    root = walker.walk(path, ())
    ingest = _Ingest(store, store.blob_digests())
    cached = {} if cached_context is None else importcache.load(store, cached_context)
    templated: set[str] = set()
    dropped: set[str] = set()
    seen: list[tuple[str, os.stat_result, importcache.Outcome]] = []
    hits: list[str] = []

    def process(task: FileTask) -> Entry | None:
        reporter.advance(task.size)
        rel = "/".join(task.rel)
        hit = cached.get(task.path)
        if hit is not None and hit[0] == importcache.stat_key(task.st):
            outcome = hit[1]
            if outcome.entry is None or outcome.entry.digest is None or outcome.entry.digest in ingest.known:
                _note(outcome, rel)
                with ingest.lock:
                    hits.append(rel)
                    seen.append((task.path, task.st, outcome))
                return outcome.entry
        outcome = _large_outcome(task) if _streams(task) else _outcome(task, _read(task.path))
        _note(outcome, rel)
        with ingest.lock:
            seen.append((task.path, task.st, outcome))
        return outcome.entry

    def _note(outcome: importcache.Outcome, rel: str) -> None:
        if outcome.entry is None or outcome.templated:
            with ingest.lock:
                (dropped if outcome.entry is None else templated).add(rel)

    def _outcome(task: FileTask, data: bytes) -> importcache.Outcome:
        name = task.rel[-1]
        if paths is not None:
            if len(task.rel) > 1 and normalize.machine_local(name, task.rel[-2], data):
                return importcache.Outcome(None, False)
            parts = paths.to_template(data, is_script=task.rel[0] in ("bin", "Scripts"))
            if parts is not None:
                return importcache.Outcome(ingest.file_entry(name, template.encode(parts), task.executable, True),
                                           True)
        return importcache.Outcome(ingest.file_entry(name, data, task.executable, False), False)

    def _streams(task: FileTask) -> bool:
        """Large files are streamed, except dist-info metadata, which the rules parse whole."""
        return task.size > blobstore.STREAM_MIN and not (
            paths is not None and len(task.rel) > 1 and task.rel[-2].endswith(".dist-info"))

    def _large_outcome(task: FileTask) -> importcache.Outcome:
        """As ``_outcome``, in bounded memory: the first pass over the file hashes and
        compresses it and, in a venv, decides whether it is a template (the same rules);
        only then is a template made, in a second streaming pass."""
        scan = paths.scan(is_script=task.rel[0] in ("bin", "Scripts")) if paths is not None else None
        first = [scan]

        def pieces() -> Iterator[bytes]:
            watch = first.pop() if first else None  # only the first pass is scanned
            for piece in _pieces(task.path):
                if watch is not None:
                    watch.feed(piece)
                yield piece
            if watch is not None:
                watch.finish()

        try:
            staged = store.blobs.stage_stream(pieces)
            if scan is None or not scan.templated:
                return importcache.Outcome(ingest.staged_entry(task.rel[-1], staged, task.executable, False),
                                           False)
            store.blobs.discard([staged])
            assert paths is not None
            staged = store.blobs.stage_stream(lambda: paths.template_pieces(task.path, scan))
        except (normalize.FileChanged, blobstore.ContentChanged):
            raise VockerError(f"{task.path} changed while it was being imported") from None
        except OSError as exc:
            raise VockerError(f"cannot read {task.path}: {exc.strerror}") from None
        return importcache.Outcome(ingest.staged_entry(task.rel[-1], staged, task.executable, True), True)

    def process_record(task: FileTask) -> Entry:
        data = normalize.normalize_record(_read(task.path), "/".join(task.rel[:-1]), templated, dropped)
        reporter.advance(task.size)
        return ingest.file_entry(task.rel[-1], data, task.executable, False)

    reporter.begin(title, walker.total)
    try:
        plain = [t for t in walker.files if not (paths is not None and _is_record(t.rel))]
        records = [t for t in walker.files if paths is not None and _is_record(t.rel)]
        results: dict[Rel, Entry | None] = dict(zip((t.rel for t in plain), pmap(process, plain)))
        # RECORDs last: they need to know which files were templated or dropped.
        results.update(zip((t.rel for t in records), pmap(process_record, records)))
        objects: dict[str, bytes] = {}
        root_digest = _build(root, results, objects, drop_empty=drop_empty)
        if commit_blobs:
            store.blobs.commit(list(ingest.staged.values()))
    except BaseException:
        store.blobs.discard(list(ingest.staged.values()))
        raise
    finally:
        reporter.end()
    return Ingested(root_digest, objects, results, ingest, walker, seen, hits)


def _recorded(store: Store, image_id: str, tag: str | None) -> str | None:
    """What an interrupted import left recorded: the image under its tag, or None (asked after
    the fact, as Ctrl-C can land between the commit and any note of it)."""
    if not store.database.path.exists():  # a scratch store (audit's), already deleted
        return None
    with store.read() as conn:
        if conn.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone() is None:
            return None
        if tag is not None:
            row = conn.execute("SELECT image_id FROM tags WHERE name = ?", (tag,)).fetchone()
            if row is None or row[0] != image_id:
                return None
    return f"image {tag + ' ' if tag else ''}{image_id} is recorded"


def _is_record(rel: Rel) -> bool:
    return rel[-1] == "RECORD" and len(rel) > 1 and rel[-2].endswith(".dist-info")


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise VockerError(f"cannot read {path}: {exc.strerror}") from None


def _pieces(path: str) -> Iterator[bytes]:
    try:
        with open(path, "rb") as f:
            while piece := f.read(normalize.SCAN_PIECE):
                yield piece
    except OSError as exc:
        raise VockerError(f"cannot read {path}: {exc.strerror}") from None


def _build(node: Node, results: dict[Rel, Entry | None], objects: dict[str, bytes],
           drop_empty: tuple[str, ...] = ()) -> str:
    """Encode ``node`` and its subdirectories; returns the node's digest."""
    entries: list[Entry] = []
    for name, child in node.items():
        if name == OPAQUE_KEY:
            continue
        check_name(name)
        if isinstance(child, WhiteoutTask):
            entries.append(Entry(name, Kind.WHITEOUT))
        elif isinstance(child, FileTask):
            entry = results[child.rel]
            if entry is not None:
                entries.append(entry)
        elif isinstance(child, LinkTask):
            entries.append(Entry(name, Kind.SYMLINK, target=child.target))
        else:
            if name in drop_empty and not _has_files(child, results):
                continue  # e.g. the empty include/ that `python -m venv` makes and uv does not
            entries.append(Entry(name, Kind.DIR, digest=_build(child, results, objects)))
    tree = Tree.of(entries, opaque=OPAQUE_KEY in node)
    data = tree.encode()
    digest = digest_bytes(data)
    objects[digest] = data
    return digest


def _has_files(node: Node, results: dict[Rel, Entry | None]) -> bool:
    for child in node.values():
        if isinstance(child, WhiteoutTask):
            continue
        if isinstance(child, LinkTask) or (isinstance(child, FileTask) and results[child.rel] is not None):
            return True
        if isinstance(child, dict) and _has_files(child, results):
            return True
    return False
