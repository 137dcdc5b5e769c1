"""The read-only layer of a container: an image as a mount shows it.

The image's Merkle tree is read straight from the store (trees loaded lazily, contents
decompressed and verified on demand), plus what is generated for the path in use:
templates rendered for the mount point, venv scaffolding (``pyvenv.cfg``, ``bin/python``)
and bytecode in virtual ``__pycache__`` directories, compiled when a pyc is first looked
up. Stored directories are those of the image's layer stack (vocker.layerstack), so all of
this works for the files of any layer. ``ContainerView`` (vocker.view) puts the writable
layer on top of it.

Paths are tuples of names; errors are OSError with an errno, as drivers answer them.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time

import attrs
from cachetools import LRUCache

from . import bytecode, template, walk
from .blobstore import ONE_FRAME_MAX, BlobReader, ChunkCache
from .errors import VockerError
from .layerstack import Key, LayerStack
from .manifest import Manifest
from .scaffold import Link, scaffold
from .store import Store
from .tree import Entry, Kind

log = logging.getLogger("vocker.view")

#: A mount compiles bytecode inside a lookup: it waits this long for another writer of
#: the store, then lets Python compile instead.
COMPILE_WAIT_MS = 2000
#: After a failed compile, a lookup of a pyc of that directory tries again no sooner than this.
COMPILE_RETRY_SECONDS = 30.0
#: A mount compiles a directory's sources together when the first pyc of its __pycache__
#: that has no cached bytecode yet is looked up; bigger sources (a few generated modules)
#: would hold that lookup for seconds even when nobody imports them, so Python compiles
#: those itself if it does.
COMPILE_MAX_BYTES = 1 << 20
#: Contents up to this size are kept decoded in memory after their first read; larger
#: ones are read chunk by chunk, with the chunk digests the store records for them.
SMALL = ONE_FRAME_MAX

Parts = tuple[str, ...]


def split(path: str) -> Parts:
    return tuple(filter(None, path.split("/")))


def os_error(code: int, parts: Parts = ()) -> OSError:
    return OSError(code, os.strerror(code), "/" + "/".join(parts))


@attrs.frozen
class Lower:
    """A node of the read-only layer: stored (``entry``) or generated (``data``/``target``)."""

    kind: Kind
    executable: bool = False
    entry: Entry | None = None
    data: bytes | None = None
    target: str | None = None
    #: for a generated __pycache__ dir: the directory whose sources it holds
    pyc_dir: Parts | None = None
    #: for a generated pyc: (pyc body digest, body size, source size)
    pyc: tuple[str, int, int] | None = None
    #: a pyc listed for a source not compiled yet: only a listing shows it; a lookup compiles
    #: its directory first (_lower), so a walk of the tree (find, an indexer) compiles nothing
    pyc_pending: bool = False
    #: a stored symlink that points out of the image: never served (EIO), as export refuses it
    escapes: bool = False
    #: a stored directory: where the layer stack holds it (vocker.layerstack)
    key: Key | None = None


def refuse_escaping(node: "Lower", parts: Parts) -> None:
    if node.escapes:
        log.error("unsafe symlink in image, not served: %s -> %s", "/".join(parts), node.target)
        raise os_error(errno.EIO, parts)


class ImageLayer:
    """One image's tree with its scaffolding and bytecode, for one mount point."""

    def __init__(self, store: Store, manifest: Manifest, root: str, mtime_ns: int, *,
                 interpreter: dict[str, str] | None = None, audit: bool = False) -> None:
        """``root``: where it is mounted (templates render for it); ``mtime_ns``: the time its
        files show. ``interpreter`` (probe info of a host Python) enables venv scaffolding and
        bytecode; ``audit`` shows templates with placeholders, as ``export --audit``."""
        self.store = store
        #: the read-only layers, merged lazily: one object, replaced as a whole by replace_stack
        self.stack = LayerStack.of(store, manifest)
        self.audit = audit
        self.root_bytes = os.fsencode(root)
        self.mtime_ns = mtime_ns
        self.facts = facts = manifest.python
        self.root = Lower(Kind.DIR, entry=Entry("", Kind.DIR, digest=manifest.layers[-1]), key=self.stack.root)
        # Plain dicts (atomic under the GIL, unlike an LRU) read by every FUSE thread; bounded by clearing.
        self._children: dict[Parts, dict[str, Lower]] = {}
        self._generation = 0  # a listing made from an older stack is not memoised (replace_stack)
        self._contents: LRUCache = LRUCache(maxsize=256 << 20, getsizeof=len)
        self._contents_lock = threading.Lock()
        self._chunk_cache = ChunkCache()
        self._infos_fetched: set[Parts] = set()  # directories whose blob facts were fetched at once
        self._virtual: dict[Parts, dict[str, Lower]] = {}
        if facts is not None and interpreter is not None:
            for rel, item in scaffold(root, facts, interpreter).items():
                parts = split(rel)
                node = (Lower(Kind.SYMLINK, target=item.target) if isinstance(item, Link)
                        else Lower(Kind.FILE, executable=item.executable, data=item.data))
                self._virtual.setdefault(parts[:-1], {})[parts[-1]] = node
        self._pycs = facts is not None and interpreter is not None
        self._compiler = bytecode.Compiler(interpreter["executable"]) if self._pycs else None  # type: ignore[index]
        self._compile_lock = threading.Lock()
        self._compile_retry: dict[Parts, float] = {}  # source dir -> when a failed compile may be tried again


    def replace_stack(self, manifest: Manifest) -> None:
        """Serve another image's layers from now on (a remount: vocker.swap). Its Python must be
        this one's, so the scaffolding and bytecode stay; contents are cached by digest, so they
        stay too. Nodes already handed out (open files) keep reading what they name."""
        assert manifest.python == self.facts
        stack = LayerStack.of(self.store, manifest)
        self._generation += 1
        self.stack = stack
        self.root = Lower(Kind.DIR, entry=Entry("", Kind.DIR, digest=manifest.layers[-1]), key=stack.root)
        self._children.clear()
        self._infos_fetched.clear()

    def children(self, parts: Parts) -> dict[str, Lower] | None:
        hit = self._children.get(parts)
        if hit is not None:
            return hit
        generation = self._generation
        node = self.node(parts)
        if node is None or node.kind is not Kind.DIR:
            return None
        children: dict[str, Lower] = {}
        entries: tuple[Entry, ...] = ()
        if node.key is not None:
            listing = self.stack.listing(node.key)
            entries = tuple(listing.entries.values())
            for e in entries:
                children[e.name] = self._entry_node(parts, e, listing.dirs.get(e.name))
        for name, extra in self._virtual.get(parts, {}).items():
            children.setdefault(name, extra)  # the image's own file wins
        for sub in {p[len(parts)] for p in self._virtual if len(p) > len(parts) and p[:len(parts)] == parts}:
            children.setdefault(sub, Lower(Kind.DIR))
        if node.pyc_dir is not None:
            children.update(self._pyc_nodes(node.pyc_dir))
        elif self._pycs and "__pycache__" not in children and any(
                e.name.endswith(".py") and not e.template and e.kind is Kind.FILE for e in entries) and \
                bytecode.in_lib(parts, self.facts.lib):  # type: ignore[union-attr]
            children["__pycache__"] = Lower(Kind.DIR, pyc_dir=parts)
        if len(self._children) > 100_000:
            self._children.clear()
        if generation == self._generation:
            self._children[parts] = children
            if generation != self._generation:  # replaced meanwhile: made from the old stack
                self._children.pop(parts, None)
        return children

    def _entry_node(self, parts: Parts, e: Entry, key: Key | None) -> Lower:
        if e.kind is Kind.SYMLINK and walk.escapes(parts + (e.name,), e.target or ""):
            if self.audit:  # shown, never followed
                return Lower(Kind.FILE, data=walk.link_placeholder(e.target or ""))
            return Lower(Kind.SYMLINK, entry=e, target=e.target, escapes=True)
        return Lower(e.kind, executable=e.executable, entry=e, target=e.target, key=key)

    def _pyc_sources(self, src_dir: Parts) -> tuple[dict[str, Entry], dict[str, str]]:
        """A directory's sources that get pycs (name -> entry), and their cache keys (name -> digest)."""
        sources = {e.name: e for e in self.stack.listing(self.node(src_dir).key).entries.values()  # type: ignore[union-attr,arg-type]
                   if e.kind is Kind.FILE and e.name.endswith(".py") and not e.template}
        return sources, {name: (e.digest or bytecode.inline_digest(e.inline)) for name, e in sources.items()}

    def _pyc_nodes(self, src_dir: Parts) -> dict[str, Lower]:
        """A __pycache__ as a listing shows it, compiling nothing: the pycs the store has bytecode
        for, and a pending name for each source nobody compiled yet (a lookup of it compiles).

        A pending pyc of a source that turns out not to compile is gone once looked up, as
        export writes none for it: rare, and a walk sees the same when a file is removed."""
        assert self.facts is not None
        sources, digests = self._pyc_sources(src_dir)
        bodies = self.store.pyc_bodies(self.facts.magic, digests.values())
        pending = {name for name, d in digests.items() if d not in bodies and sources[name].size <= COMPILE_MAX_BYTES}
        if pending:  # known not to compile: no pyc, now or later
            known = self.store.cached_pycs(self.facts.magic, {digests[name] for name in pending})
            pending = {name for name in pending if digests[name] not in known}
        out = {}
        for name, d in digests.items():
            pyc = bytecode.pyc_name(name, self.facts.cache_tag)
            if d in bodies:
                pyc_digest, size = bodies[d]
                out[pyc] = Lower(Kind.FILE, pyc=(pyc_digest, size, sources[name].size))
            elif name in pending:
                out[pyc] = Lower(Kind.FILE, pyc_pending=True)
        return out

    def _compile_pending(self, pycache: Parts) -> dict[str, Lower]:
        """A pending pyc was looked up (Python opens it to import): compile its directory's
        sources, as one batch, and list the __pycache__ again with what is cached now."""
        node = self.node(pycache)
        assert node is not None and node.pyc_dir is not None
        sources, digests = self._pyc_sources(node.pyc_dir)
        if self._compile_missing(node.pyc_dir, sources, digests):
            self._children.pop(pycache, None)
        return self.children(pycache) or {}

    def _compile_missing(self, src_dir: Parts, sources: dict[str, Entry], digests: dict[str, str]) -> bool:
        """Compile and cache what the store has no bytecode for (once per source and Python,
        for every image); False when that was skipped or failed (Python then compiles in
        the process, and a later lookup tries again)."""
        assert self.facts is not None and self._compiler is not None
        if time.monotonic() < self._compile_retry.get(src_dir, 0.0):
            return False
        readers = {digests[name]: (lambda e=e: self.store.read_content(e))  # type: ignore[misc]
                   for name, e in sources.items() if e.size <= COMPILE_MAX_BYTES}
        if not readers:
            return True
        where = "/".join(src_dir)
        try:
            with self._compile_lock, self.store.lock_shared(blocking=False) as got:
                if not got:  # gc is running: it would delete blobs it does not see recorded yet
                    log.warning("not compiling bytecode for %s while gc runs", where)
                    return False
                bytecode.ensure_cached(self.store, self.facts.magic, self._compiler, readers,
                                       wait_ms=COMPILE_WAIT_MS)
        except Exception as exc:  # a cache: the import still works without it
            log.warning("cannot compile or cache bytecode for %s: %s", where, exc)
            self._compile_retry[src_dir] = time.monotonic() + COMPILE_RETRY_SECONDS
            return False
        return True

    def node(self, parts: Parts) -> Lower | None:
        if not parts:
            return self.root
        siblings = self.children(parts[:-1])
        node = siblings.get(parts[-1]) if siblings is not None else None
        if node is not None and node.pyc_pending:  # looked up, so compiled now (listing one does not)
            node = self._compile_pending(parts[:-1]).get(parts[-1])
            if node is not None and node.pyc_pending:  # not compiled (the store is busy): Python compiles it
                node = None
        return node

    def size(self, node: Lower) -> int:
        if node.kind is Kind.DIR:
            return 4096
        if node.kind is Kind.SYMLINK:
            return len(os.fsencode(node.target or ""))
        if node.pyc is not None:
            return 16 + node.pyc[1]
        if node.data is not None:
            return len(node.data)
        assert node.entry is not None
        return len(self.content(node)) if node.entry.template else node.entry.size

    def content(self, node: Lower) -> bytes:
        """Whole content of a small or generated file (verified, rendered)."""
        if node.data is not None:
            return node.data
        key: tuple[object, ...]
        if node.pyc is not None:  # the header names the source's size: one body, many pycs
            key = ("pyc", node.pyc[0], node.pyc[2])
        else:
            assert node.entry is not None
            if node.entry.inline is not None and not node.entry.template:
                return node.entry.inline
            # What identifies the bytes: the stored content (its digest, or the inlined bytes
            # themselves, which have no digest) and whether it is rendered. The rendering's
            # other inputs (mount point, audit) are fixed for a view, and so is this cache.
            # The recorded size too: an entry that claims another size than its blob must not
            # find the bytes another entry of that blob cached (it is corrupt: EIO).
            key = ("file", node.entry.digest or node.entry.inline, node.entry.template, node.entry.size)
        with self._contents_lock:
            hit = self._contents.get(key)
        if hit is not None:
            return hit
        try:
            if node.pyc is not None:
                assert self.facts is not None
                data = bytecode.pyc_header(self.facts.magic, self.mtime_ns / 1e9, node.pyc[2]) + \
                    self.store.read_blob(node.pyc[0])
            else:
                e = node.entry
                assert e is not None
                raw = self.store.read_content(e)
                if e.template:
                    parts = template.decode(raw)
                    data = template.render_placeholders(parts) if self.audit else template.render(parts, self.root_bytes)
                else:
                    data = raw
        except VockerError as exc:
            log.error("%s", exc)  # names the digest: the operator can run vocker verify
            raise os_error(errno.EIO) from None
        if len(data) <= SMALL:
            with self._contents_lock:
                self._contents[key] = data
        return data

    def prefetch_infos(self, dir_parts: Parts) -> None:
        """On the first read in a directory, fetch what the store records of all its blobs
        in one query: a cold `import` reads most files of each package it enters."""
        if dir_parts in self._infos_fetched:
            return
        if len(self._infos_fetched) > 100_000:
            self._infos_fetched.clear()
        self._infos_fetched.add(dir_parts)
        children = self.children(dir_parts) or {}
        self.store.prefetch_blob_infos(
            c.pyc[0] if c.pyc is not None else c.entry.digest for c in children.values()  # type: ignore[union-attr]
            if c.kind is Kind.FILE and (c.pyc is not None or (c.entry is not None and c.entry.digest is not None)))

    def check_size(self, parts: Parts, entry: Entry) -> None:
        """A file must be the size of its blob, or a stat would tell another size than a read
        gives (one query per directory, as for its first read)."""
        self.prefetch_infos(parts[:-1])
        try:
            self.store.content_info(entry)
        except VockerError as exc:
            log.error("%s", exc)
            raise os_error(errno.EIO, parts) from None

    def open(self, node: Lower) -> tuple[bytes | None, BlobReader | None]:
        """A file's whole content (small, generated or rendered), or a reader of its blob."""
        e = node.entry
        if node.data is not None or node.pyc is not None or e is None or e.inline is not None or e.template \
                or e.size <= SMALL:
            return self.content(node), None
        assert e.digest is not None
        try:
            info = self.store.content_info(e)
            chunks = self.store.blob_chunks(info)
            return None, self.store.blobs.reader(e.digest, info.codec, info.size, chunks, self._chunk_cache)
        except (VockerError, OSError) as exc:
            log.error("cannot read blob %s: %s", e.digest, exc)
            raise os_error(errno.EIO) from None

    def close(self) -> None:
        if self._compiler is not None:
            self._compiler.close()
