"""Lazy mounts: a remote image recorded without its file contents, each fetched on first read.

``lazy_pull`` records a *partial* image: its config, trees and tag, plus the pack indexes that
say where each missing content lies (store.partial_images). The store asks a ``Fetcher`` for a
content it lacks (Store.read_blob, Store.blob_chunks): one single-range GET into its pack,
checked against the content's digest (never served wrong), then kept in the store. A reader
waits at most WAIT seconds (a server gone or silent is EIO for that file, never a hang; the
mount serves everything else meanwhile). ``vocker pull`` completes a partial image.

Contents up to ONE_FRAME_MAX (most files) are served from memory at once and made durable in
the background a batch at a time (one syncfs per batch, not one per file: an `import` reads
hundreds); larger ones, read through a file (BlobReader), are kept before they are served.
A large content whose pack index gives its chunk layout (vocker.partial) is fetched a chunk at
a time instead, as it is read (a native library an import maps is mostly never touched): each
chunk checked against its BLAKE3 before it is served and kept in its sparse file under
partial/, which becomes the blob (checked whole against its sha256) once every chunk is there.
Either way a blob is recorded only once durable, under the store's shared lock (gc waits), so a
kill -9 leaves at most temp files and unrecorded blobs, which gc removes and verify ignores.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import threading
import time
from typing import Any

import attrs

from .. import cbor
from ..blobstore import CHUNK, ONE_FRAME_MAX, BlobInfo, BlobReader, ChunkCache, Staged
from ..errors import VockerError
from .. import partial as partials
from ..partial import PartialFile, PartialReader
from ..store import Store
from . import packs
from .artifact import Transfer, fetch_frames, fetch_structure, plan_packs, resolve_remote
from .http import Client, RangeIgnored
from .registry import is_remote_ref, local_tag, locate
from .remote import ATTEMPTS, Remote, TransferError, retrying

log = logging.getLogger("vocker.lazy")

#: Seconds a read waits for a content to arrive before it fails with EIO (the fetch may go on).
WAIT = float(os.environ.get("VOCKER_LAZY_WAIT", "20"))
#: Fetched small contents are made durable and recorded this often (seconds), a batch at a time.
COMMIT_EVERY = 0.5
#: Parallel fetches (FUSE serves reads on several threads).
WORKERS = 8
#: A directory's first read fetches its other contents up to this size ahead, in parallel (an
#: `import` reads most small files of each package it enters; one by one, each would wait a
#: round trip), on PREFETCHERS threads of their own so that a read never queues behind them.
PREFETCH_MAX = 128 << 10
PREFETCHERS = 4


@attrs.frozen
class Location:
    source: str  # JSON of the partial image's source ({"ref": ..., "insecure": ...})
    pack: dict[str, Any]  # {"digest", "size"} of the pack holding it
    frame: packs.Frame


def lazy_pull(store: Store, remote: Remote, ref: str, tag: str | None, source: dict[str, Any],
              provenance: dict[str, Any] | None = None, workers: int | None = None) -> Transfer:
    """Record a remote image without its file contents: config, trees and pack indexes (all
    checked, every missing content located in a pack), then the image, its tag and where its
    contents lie, in one transaction. An image the store has (complete or partial) is just tagged."""
    started = time.perf_counter()
    image = resolve_remote(remote, ref)
    result = Transfer(image_id=image.image_id, tag=tag)
    if store.has_image(image.image_id):
        result.new = False
    else:
        structure = fetch_structure(store, remote, image, result)
        with store.lock_shared():  # gc must not take contents the image needs before it is recorded
            have = store.blob_infos(structure.needed)
            missing = {d: s for d, s in structure.needed.items() if d not in have}
            plans = plan_packs(remote, image, missing, result, workers)
            indexes = cbor.dumps([[p.desc["digest"], p.desc["size"], p.index_bytes] for p in plans])
            prov = {**image.provenance, **(provenance or {})}
            with store.write() as conn:
                store.record_objects(conn, "tree", structure.nodes)
                store.record_image(conn, image.image_id, structure.config, structure.size, structure.files, prov)
                if missing:
                    store.record_partial(conn, image.image_id, source, indexes)
    if tag is not None:
        with store.write() as conn:
            store.set_tag(conn, tag, image.image_id)
    result.seconds = time.perf_counter() - started
    return result


def local_ref(store: Store, ref: str, insecure: bool = False) -> tuple[str, Transfer | None]:
    """What to mount for REF: REF itself when it names no remote image; else the remote image,
    recorded as a partial image (``lazy_pull``) and tagged as ``vocker pull`` would tag it."""
    if not is_remote_ref(ref):
        return ref, None
    if ref.startswith((".", "~")):  # the mount daemon runs elsewhere: where it came from, absolute
        ref = os.path.abspath(os.path.expanduser(ref))
    remote, name = locate(ref, insecure=insecure)
    tag = local_tag(remote, name, None)
    try:
        t = lazy_pull(store, remote, name, tag, {"ref": ref, "insecure": insecure}, provenance={"pulled_from": ref})
    except TransferError as exc:  # unreachable: what the store has under that name, as docker run does
        if tag is None or not exc.transient:
            raise
        try:
            store.resolve(tag)
        except VockerError:
            raise exc from None
        return tag, None
    return tag or t.image_id, t


class Fetcher:
    """Fetches the contents partial images lack, for one store (made by the store at its first miss)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._where: dict[str, Location] = {}
        self._images: set[str] = set()
        self._loaded = 0.0
        self._remotes: dict[str, Remote] = {}
        self._lock = threading.Lock()
        self._inflight: dict[str, concurrent.futures.Future[bytes]] = {}
        self._partials: dict[str, PartialFile] = {}  # large contents being fetched a chunk at a time
        self._chunks_inflight: dict[tuple[str, int], concurrent.futures.Future[bytes]] = {}
        #: bytes fetched for chunks (the daemon logs it: tests and benchmarks read it)
        self.chunk_bytes = 0
        self._fresh: dict[str, tuple[Staged | None, bytes]] = {}  # served, not recorded yet
        self._pool = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="vocker-lazy")
        self._ahead = concurrent.futures.ThreadPoolExecutor(PREFETCHERS, thread_name_prefix="vocker-lazy-ahead")
        self._committer: threading.Thread | None = None
        self._load()

    def _load(self) -> None:
        for image_id, (source, indexes) in self.store.partial_images().items():
            if image_id in self._images:
                continue
            key = json.dumps(source, sort_keys=True)
            for pack_digest, pack_size, index_bytes in cbor.loads(indexes, "pack indexes"):
                for f in packs.PackIndex.decode(index_bytes, pack_size).frames:
                    self._where.setdefault(f.digest, Location(key, {"digest": pack_digest, "size": pack_size}, f))
            self._images.add(image_id)
        self._loaded = time.monotonic()

    def knows(self, digest: str) -> bool:
        if digest not in self._where and time.monotonic() - self._loaded > 1.0:
            with self._lock:  # a partial image recorded since (a long-lived process)
                self._load()
        return digest in self._where

    def info(self, digest: str) -> BlobInfo:
        """What the store will record for the content once fetched (from its pack index, whose
        size pull checked against the trees)."""
        f = self._where[digest].frame
        return BlobInfo(digest, f.size, f.length, f.codec)

    def fetch(self, digest: str) -> bytes:
        """The content, checked; fetched once however many readers ask at a time, and waited for
        at most WAIT seconds (TransferError: the reader's EIO)."""
        with self._lock:
            fresh = self._fresh.get(digest)
            if fresh is not None:
                return fresh[1]
            future = self._inflight.get(digest)
            if future is None or future.cancel():  # not asked yet, or only queued to be fetched ahead
                future = self._submit(self._pool, digest)
        return self._wait(future, digest)

    def _wait(self, future: concurrent.futures.Future[bytes], digest: str) -> bytes:
        try:
            return future.result(timeout=WAIT)
        except concurrent.futures.TimeoutError:
            raise TransferError(f"the content {digest} did not arrive within {WAIT:g}s "
                                f"from {json.loads(self._where[digest].source)['ref']}", transient=True) from None

    def chunk_checks(self, digest: str) -> bytes | None:
        """The chunk digests of a large content whose pack index gives its chunk layout, else None
        (then it is fetched whole)."""
        layout = self._where[digest].frame.layout
        return layout.checks if layout is not None and layout.size > partials.LARGE else None

    def reader(self, digest: str, chunks: bytes, cache: ChunkCache | None) -> BlobReader:
        """A reader of a large content: chunk by chunk as read, or (no cache: read once, whole, as
        an export does) the whole content fetched and kept first."""
        if cache is None or self.chunk_checks(digest) is None:
            self.fetch(digest)
            info = self.info(digest)
            return BlobReader(self.store.blobs.path(digest), digest, info.codec, info.size, chunks, cache)
        with self._lock:
            partial = self._partials.get(digest)
            if partial is None:
                layout = self._where[digest].frame.layout
                assert layout is not None
                partial = self._partials[digest] = PartialFile(self.store.blobs, digest, layout)
        return PartialReader(digest, partial.layout.size, chunks, cache, lambda c: self._chunk(partial, c))

    def _chunk(self, partial: PartialFile, c: int) -> bytes:
        """Chunk ``c`` of a partly fetched content: from its file when there (checked), else fetched
        once however many readers ask, waited for at most WAIT seconds."""
        data = partial.read(c)
        if data is not None:
            return data
        whole = self._whole(partial)
        if whole is not None:  # fetched whole since (a pull, a server that ignores Range): read there
            return whole.pread(CHUNK, c * CHUNK)
        key = (partial.digest, c)
        with self._lock:
            future = self._chunks_inflight.get(key)
            if future is None:
                future = self._chunks_inflight[key] = self._pool.submit(self._fetch_chunk, partial, c)
                future.add_done_callback(lambda f, k=key: self._chunks_inflight.get(k) is f
                                         and self._chunks_inflight.pop(k))
        return self._wait(future, partial.digest)

    def _whole(self, partial: PartialFile) -> BlobReader | None:
        """A reader of the content's blob when it is in the store (its partial file then is not)."""
        if partial.whole is None:
            lay = partial.layout
            try:
                partial.whole = BlobReader(self.store.blobs.path(partial.digest), partial.digest, lay.codec, lay.size,
                                           lay.checks, None)
            except VockerError:  # not there (MissingObjectError): fetched a chunk at a time
                return None
        return partial.whole

    def _fetch_chunk(self, partial: PartialFile, c: int) -> bytes:
        """One chunk's frame, one single-range GET (retried when wrong), checked, then kept in the
        content's file; the last one missing makes it a blob (in the background)."""
        where = self._where[partial.digest]
        start, end = partial.layout.stored_range(c)
        base = where.frame.offset
        remote = self._remote(where.source)

        def get() -> tuple[bytes, bytes]:
            stored = remote.get_range(where.pack["digest"], base + start, base + end)
            try:
                return stored, partial.layout.content(c, stored)
            except VockerError as exc:
                raise type(exc)(f"{exc} (content {partial.digest} from pack {where.pack['digest']})") from None

        try:
            stored, data = retrying(f"chunk {c} of {partial.digest}", get)
        except RangeIgnored:  # the server sends whole packs only: the content whole, once
            return self._fetch(partial.digest)[c * CHUNK:(c + 1) * CHUNK]
        except VockerError as exc:
            log.error("cannot fetch chunk %d of %s: %s", c, partial.digest, exc)
            raise
        partial.write(c, stored)
        with self._lock:
            self.chunk_bytes += len(stored)
        log.debug("fetched chunk %d of %s (%d bytes; %d bytes in chunks so far)", c, partial.digest, len(stored),
                 self.chunk_bytes)
        if partial.complete:
            self._ahead.submit(self._promote, partial)
        return data

    def _promote(self, partial: PartialFile) -> None:
        """Every chunk is here: the seek table too, then the file checked whole against the
        content's sha256, made durable and recorded as its blob (under the shared lock; while gc
        runs it stays partial, completed by a pull)."""
        where = self._where[partial.digest]
        try:
            tail = partial.layout.tail
            if tail is not None:
                base, remote = where.frame.offset, self._remote(where.source)
                partial.write_tail(retrying(f"seek table of {partial.digest}", lambda: remote.get_range(
                    where.pack["digest"], base + tail[0], base + tail[1])))
            with self.store.lock_shared(blocking=False) as got:
                if got and not self.store.blob_infos([partial.digest]):
                    self._commit([partial.staged()])
        except FileNotFoundError:  # a pull fetched it whole meanwhile (and dropped the file)
            pass
        except Exception as exc:  # read chunk by chunk still; a pull fetches it whole
            log.warning("cannot keep %s whole: %s", partial.digest, exc)

    def _submit(self, pool: concurrent.futures.ThreadPoolExecutor, digest: str) -> concurrent.futures.Future[bytes]:
        """Called with the lock held."""
        future = self._inflight[digest] = pool.submit(self._fetch, digest)
        future.add_done_callback(lambda f, d=digest: self._inflight.get(d) is f and self._inflight.pop(d))
        return future

    def prefetch(self, digests: list[str]) -> None:
        """Fetch these contents ahead (the small ones this fetcher knows), without waiting: one
        job per pack, whose neighbouring frames come in one range (fetch_frames)."""
        groups: dict[tuple[str, str], list[str]] = {}
        with self._lock:
            for d in dict.fromkeys(digests):
                where = self._where.get(d)
                if where is not None and where.frame.size <= PREFETCH_MAX and d not in self._fresh \
                        and d not in self._inflight:
                    groups.setdefault((where.source, where.pack["digest"]), []).append(d)
            for group in groups.values():
                futures: dict[str, concurrent.futures.Future[bytes]] = {}
                for d in group:
                    futures[d] = self._inflight[d] = concurrent.futures.Future()
                    futures[d].add_done_callback(lambda f, d=d: self._inflight.get(d) is f and self._inflight.pop(d))
                self._ahead.submit(self._fetch_ahead, futures)

    def _fetch_ahead(self, futures: dict[str, concurrent.futures.Future[bytes]]) -> None:
        """Fetch a pack's contents for the futures no reader took over (fetch cancels a queued one)."""
        wanted = sorted((d for d, f in futures.items() if f.set_running_or_notify_cancel()),
                        key=lambda d: self._where[d].frame.offset)
        if not wanted:
            return
        where = self._where[wanted[0]]
        try:
            got = fetch_frames(self._remote(where.source), where.pack, [self._where[d].frame for d in wanted],
                               Transfer())
            for f, stored, data in got:
                self._keep(f.digest, stored, data)
                futures[f.digest].set_result(data)
        except BaseException as exc:  # the readers of these contents meet it (or fetch them alone)
            log.warning("cannot fetch ahead from %s: %s", where.pack["digest"], exc)
            for d in wanted:
                if not futures[d].done():
                    futures[d].set_exception(exc)

    def _remote(self, source: str) -> Remote:
        with self._lock:
            if source not in self._remotes:
                given = json.loads(source)
                # each attempt bounded, so a silent server frees the worker soon after the reader gave up
                self._remotes[source], _ = locate(given["ref"], insecure=bool(given.get("insecure")),
                                                  client=Client(timeout=WAIT / ATTEMPTS))
            return self._remotes[source]

    def _fetch(self, digest: str) -> bytes:
        where = self._where[digest]
        started = time.perf_counter()
        try:
            (_, stored, data), = fetch_frames(self._remote(where.source), where.pack, [where.frame], Transfer())
        except VockerError as exc:
            log.error("cannot fetch %s: %s", digest, exc)
            raise
        log.debug("fetched %s (%d bytes) in %.3f s", digest, len(stored), time.perf_counter() - started)
        self._keep(digest, stored, data)
        return data

    def _keep(self, digest: str, stored: bytes, data: bytes) -> None:
        codec = self._where[digest].frame.codec
        with self.store.lock_shared(blocking=False) as got:
            if not got:  # gc runs: served from memory, fetched again later
                if len(data) > ONE_FRAME_MAX:
                    raise TransferError("the store is busy (vocker gc runs); try again", transient=True)
                with self._lock:
                    self._fresh[digest] = (None, data)
                self._start_committer()
                return
            staged = self.store.blobs.stage_stored(digest, stored, codec, data)
            if len(data) > ONE_FRAME_MAX:  # read through its file (BlobReader): kept before it is served
                self._commit([staged])
                partials.drop(self.store.blobs, [digest])  # what a chunked read had fetched of it
                return
        with self._lock:
            self._fresh[digest] = (staged, data)
        self._start_committer()

    def _commit(self, staged: list[Staged]) -> None:
        """Durable, then recorded (the store's rule); the caller holds the shared lock."""
        self.store.blobs.commit_or_discard(staged)
        with self.store.write() as conn:
            self.store.record_staged(conn, staged)
        for s in staged:
            self.store.keep_fetched(s)

    def _start_committer(self) -> None:
        with self._lock:
            if self._committer is None:
                self._committer = threading.Thread(target=self._commit_loop, name="vocker-lazy-commit", daemon=True)
                self._committer.start()

    def _commit_loop(self) -> None:
        while True:
            time.sleep(COMMIT_EVERY)
            try:
                self.flush()
            except Exception as exc:  # served already: fetched again when read next
                log.warning("cannot keep fetched contents: %s", exc)

    def flush(self) -> None:
        """Make the contents served so far durable and record them (a batch: one syncfs). While gc
        runs they are dropped instead (gc may take staged files): fetched again when read next."""
        with self._lock:
            batch = dict(self._fresh)
        if not batch:
            return
        staged = [s for s, _ in batch.values() if s is not None]
        try:
            with self.store.lock_shared(blocking=False) as got:
                if got and staged:
                    self._commit(staged)
            if not got:
                self.store.blobs.discard(staged)
        finally:
            with self._lock:
                for digest in batch:
                    self._fresh.pop(digest, None)


def source_of(store: Store, ref: str) -> dict[str, Any] | None:
    """Where a local partial image came from (for 'vocker pull NAME' to complete it), or None."""
    try:
        image_id = store.resolve(ref)
    except VockerError:
        return None
    found = store.partial_images().get(image_id)
    return found[0] if found else None

