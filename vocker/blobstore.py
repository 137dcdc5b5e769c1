"""Blob files: one file per distinct content, named by its sha256 digest.

Layout (OCI image-layout style, so names stay legal on every OS):
``blobs/sha256/<2 hex>/<64 hex>``. A blob is stored raw, as one zstd frame (contents
up to 1 MiB), or in the zstd *seekable* format (independent 128 KiB frames plus a seek
table) for larger contents, so the mount layer can decompress any byte range
without reading a whole large file. Compression is kept only where it saves space.

Writes are staged in ``tmp/`` and committed in batches: the staged files are made
durable (one ``syncfs`` of the store's file system on Linux, else an fsync each),
then renamed into place, then their directories are fsynced, and only then does the
caller record them in the database. A crash leaves at worst orphan temp files,
never a partial blob under its final name.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import itertools
import os
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator

import attrs
import blake3
import pyzstd
from cachetools import LRUCache

from .digest import digest_bytes, hex_of
from .errors import IntegrityError, MissingObjectError
from .seekable import SeekTable, SeekTableError

RAW = "raw"
ZSTD = "zstd"  # one frame: the whole content
ZSTD_SEEKABLE = "zstd-seekable"  # frames of FRAME_SIZE plus a seek table
#: Contents up to this size are compressed as one zstd frame.
ONE_FRAME_MAX = 1 << 20
#: Frame size of the seekable format, and the unit in which large blobs are checked:
#: the kernel reads at most 128 KiB at a time, so a read decompresses and hashes little
#: more than it returns (1 MiB frames cost ~2.5x that on a cold `import numpy`), for ~5 %
#: more bytes stored than 1 MiB frames. Blobs written with other frame sizes stay readable.
CHUNK = FRAME_SIZE = 128 << 10
#: zstd level 2: about 30 % faster than 3 for ~5 % more bytes on a typical venv (docs/benchmarks.md).
LEVEL = 2
#: Store compressed only when it saves at least this fraction.
MIN_SAVING = 0.10
#: Contents above this size are never held in memory whole: import, export and verify
#: stream them chunk by chunk (memory stays bounded whatever the file's size).
STREAM_MIN = 16 << 20

_counter = itertools.count()


class ContentChanged(Exception):
    """Streamed content differed between two passes over it."""


@attrs.frozen
class BlobInfo:
    digest: str
    size: int
    stored_size: int
    codec: str


@attrs.frozen
class Staged:
    """A blob written to a temp file, not yet durable nor under its final name."""

    tmp: str
    final: str
    info: BlobInfo
    chunks: bytes  # the content's chunk digests (see chunk_digests_of)


def encode(data: bytes) -> tuple[bytes, str]:
    """The bytes to store for ``data`` and their codec; deterministic for a given input."""
    if len(data) < 64:
        return data, RAW
    if len(data) <= ONE_FRAME_MAX:
        packed, codec = pyzstd.compress(data, LEVEL), ZSTD
    else:
        buf = io.BytesIO()
        with pyzstd.SeekableZstdFile(buf, "w", level_or_option=LEVEL, max_frame_content_size=FRAME_SIZE) as f:
            f.write(data)
        packed, codec = buf.getvalue(), ZSTD_SEEKABLE
    if len(packed) <= len(data) * (1 - MIN_SAVING):
        return packed, codec
    return data, RAW


def decode(stored: bytes, codec: str, digest: str = "") -> bytes:
    """Stored bytes back to content. The seek table of the seekable format is checked
    too, since range reads (the mount layer) rely on it."""
    if codec == RAW:
        return stored
    try:
        if codec == ZSTD:
            return pyzstd.decompress(stored)
        with pyzstd.SeekableZstdFile(io.BytesIO(stored), "r") as f:
            data = f.read()
            if f.seek(0, io.SEEK_END) != len(data):  # the seek table disagrees with the frames
                raise pyzstd.SeekableFormatError("seek table does not match the frames")
            return data
    except (pyzstd.ZstdError, pyzstd.SeekableFormatError, EOFError) as exc:
        raise IntegrityError(f"corrupt blob {digest} (bad compressed data: {exc})") from None


def chunk_digests_of(data: bytes) -> bytes:
    """The BLAKE3 of each CHUNK of ``data``, concatenated (32 bytes each).

    Reads check content against these rather than against the blob's sha256: they are
    computed only from content that matched the sha256, and BLAKE3 is 10-20x faster
    than sha256 on CPUs without SHA extensions (docs/benchmarks.md), which made
    hashing a third of a mount's cold-read cost. Per chunk, so a range read checks
    only what it returns.
    """
    view = memoryview(data)
    return b"".join(blake3.blake3(view[i:i + CHUNK]).digest() for i in range(0, len(data), CHUNK))


@attrs.define
class BlobFiles:
    root: Path  # the store root
    #: a reader of a content whose blob file is not here (a partial image's: the store sets it), or None
    missing_reader: "Callable[[str, bytes, ChunkCache | None], BlobReader | None] | None" = None

    @property
    def blob_dir(self) -> Path:
        return self.root / "blobs" / "sha256"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def setup(self) -> None:
        if (self.blob_dir / "ff").is_dir() and self.tmp_dir.is_dir():
            return  # made in order, so "ff" means all are there (saves 257 mkdirs per command)
        self.tmp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for i in range(256):
            (self.blob_dir / f"{i:02x}").mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        h = hex_of(digest)
        return self.blob_dir / h[:2] / h

    def stage(self, digest: str, data: bytes) -> Staged:
        """Compress and write ``data`` (whose digest the caller computed) to a temp file, readable
        by its owner only (whatever mode the file had in the venv, no one else sees it here)."""
        payload, codec = encode(data)
        tmp = os.path.join(self.tmp_dir, f"{hex_of(digest)[:16]}.{os.getpid()}.{next(_counter)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        # The chunk digests now, while the bytes are at hand: every later read checks against
        # them, and a reader would otherwise first hash the whole blob with sha256.
        return Staged(tmp, str(self.path(digest)), BlobInfo(digest, len(data), len(payload), codec), chunk_digests_of(data))

    def stage_stored(self, digest: str, stored: bytes, codec: str, data: bytes) -> Staged:
        """Stage bytes already encoded as ``codec`` (a pack frame received from elsewhere),
        whose decoding ``data`` the caller has checked against ``digest``: no recompression."""
        tmp = os.path.join(self.tmp_dir, f"{hex_of(digest)[:16]}.{os.getpid()}.{next(_counter)}")
        with _new_file(tmp) as f:
            f.write(stored)
        return Staged(tmp, str(self.path(digest)), BlobInfo(digest, len(data), len(stored), codec), chunk_digests_of(data))

    def stage_stream(self, pieces: Callable[[], Iterable[bytes]]) -> Staged:
        """Stage content too large to hold in memory, given as pieces of any size.

        One pass computes the sha256, the chunk digests and the seekable zstd encoding
        (the frames ``encode`` makes) into the temp file. When compression saves too
        little, ``pieces()`` is read again and copied raw; it must give the same digest.
        """
        tmp = os.path.join(self.tmp_dir, f"stream.{os.getpid()}.{next(_counter)}")
        try:
            with _new_file(tmp) as raw:
                with pyzstd.SeekableZstdFile(raw, "w", level_or_option=LEVEL, max_frame_content_size=FRAME_SIZE) as z:
                    digest, size, chunks = _hash_chunks(pieces(), z.write)
                raw.flush()
                stored = os.fstat(raw.fileno()).st_size
            codec = ZSTD_SEEKABLE
            if size <= ONE_FRAME_MAX:  # small after all (a template can be): stored as ``stage`` would
                os.unlink(tmp)
                data = b"".join(pieces())
                if digest_bytes(data) != digest:
                    raise ContentChanged(f"the content of {digest} changed while it was being stored")
                return self.stage(digest, data)
            if stored > size * (1 - MIN_SAVING):
                os.unlink(tmp)
                with _new_file(tmp) as raw:
                    again, _, _ = _hash_chunks(pieces(), raw.write)
                if again != digest:
                    raise ContentChanged(f"the content of {digest} changed while it was being stored")
                stored, codec = size, RAW
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return Staged(tmp, str(self.path(digest)), BlobInfo(digest, size, stored, codec), chunks)

    def commit_or_discard(self, staged: list[Staged]) -> None:
        """``commit``, or, if that fails (a full disk, Ctrl-C), remove every staged file: the
        caller records the blobs only after this returns."""
        try:
            self.commit(staged)
        except BaseException:
            self.discard(staged)
            raise

    def commit(self, staged: list[Staged]) -> None:
        """Make staged blobs durable and put them under their names (the caller then records them)."""
        if not staged:
            return
        if not _syncfs(self.tmp_dir):
            for s in staged:
                fd = os.open(s.tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        for s in staged:
            os.replace(s.tmp, s.final)
        for shard in {os.path.dirname(s.final) for s in staged}:
            _fsync_dir(Path(shard))

    def discard(self, staged: list[Staged]) -> None:
        for s in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(s.tmp)

    def write(self, digest: str, data: bytes) -> BlobInfo:
        """Stage and commit one blob."""
        staged = self.stage(digest, data)
        try:
            self.commit([staged])
        except BaseException:
            self.discard([staged])
            raise
        return staged.info

    def read(self, digest: str, codec: str, size: int | None = None, chunks: bytes | None = None) -> bytes:
        """The verified content of a blob; raises IntegrityError rather than return wrong bytes.

        Checked against its recorded ``chunks`` digests when given (fast), else its sha256.
        """
        try:
            stored = self.path(digest).read_bytes()
        except FileNotFoundError:
            raise MissingObjectError(f"missing blob {digest}") from None
        data = decode(stored, codec, digest)
        matches = chunk_digests_of(data) == chunks if chunks is not None else digest_bytes(data) == digest
        if (size is not None and len(data) != size) or not matches:
            raise IntegrityError(f"corrupt blob {digest} (content does not match its digest)")
        return data

    def chunk_digests(self, digest: str, codec: str, size: int, path: Path | None = None) -> bytes:
        """Stream-check a blob (at ``path`` if not under its name) against its sha256 and return its chunk digests.

        Computed only from content that matched the blob's digest, so they are as
        trustworthy as the digest itself; a BlobReader then checks each chunk it reads
        against them instead of re-hashing the whole blob at every first open.
        """
        if codec == ZSTD and path is None:  # one frame of at most ONE_FRAME_MAX: decode and check it whole
            return chunk_digests_of(self.read(digest, codec, size))
        path = path or self.path(digest)
        h = hashlib.sha256()
        chunks: list[bytes] = []
        total = 0
        try:
            f = pyzstd.SeekableZstdFile(path, "r") if codec == ZSTD_SEEKABLE else open(path, "rb")
        except FileNotFoundError:
            raise MissingObjectError(f"missing blob {digest}") from None
        except (pyzstd.ZstdError, pyzstd.SeekableFormatError) as exc:
            raise IntegrityError(f"corrupt blob {digest} ({exc})") from None
        with f:
            try:
                while chunk := _read_exactly(f, CHUNK):
                    h.update(chunk)
                    chunks.append(blake3.blake3(chunk).digest())
                    total += len(chunk)
                if codec == ZSTD_SEEKABLE and f.seek(0, io.SEEK_END) != total:
                    raise pyzstd.SeekableFormatError("seek table does not match the frames")
            except (pyzstd.ZstdError, pyzstd.SeekableFormatError, EOFError) as exc:
                raise IntegrityError(f"corrupt blob {digest} ({exc})") from None
        if total != size or f"sha256:{h.hexdigest()}" != digest:
            raise IntegrityError(f"corrupt blob {digest} (content does not match its digest)")
        return b"".join(chunks)

    def reader(self, digest: str, codec: str, size: int, chunks: bytes, cache: "ChunkCache | None") -> "BlobReader":
        try:
            return BlobReader(self.path(digest), digest, codec, size, chunks, cache)
        except MissingObjectError:
            found = self.missing_reader(digest, chunks, cache) if self.missing_reader is not None else None
            if found is None:
                raise
            return found

    def iter_files(self):  # type: ignore[no-untyped-def]
        """(digest, path) of every blob file present, recorded or not."""
        for shard in self.blob_dir.iterdir():
            for entry in os.scandir(shard):
                yield "sha256:" + entry.name, Path(entry.path)


@contextlib.contextmanager
def _new_file(path: str) -> Iterator[io.BufferedWriter]:
    """A new temp file, removed again if writing it fails (the mode of ``stage``'s files)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise


def _hash_chunks(pieces: Iterable[bytes], sink: Callable[[bytes], object]) -> tuple[str, int, bytes]:
    """(sha256 digest, size, chunk digests) of content given as pieces of any size, each
    CHUNK passed on to ``sink`` as it is complete."""
    h = hashlib.sha256()
    digests: list[bytes] = []
    size = 0
    buf = bytearray()

    def take(chunk: bytes) -> None:
        h.update(chunk)
        digests.append(blake3.blake3(chunk).digest())
        sink(chunk)

    for piece in pieces:
        size += len(piece)
        if not buf and len(piece) == CHUNK:
            take(piece)
            continue
        buf += piece
        while len(buf) >= CHUNK:
            take(bytes(buf[:CHUNK]))
            del buf[:CHUNK]
    if buf:
        take(bytes(buf))
    return f"sha256:{h.hexdigest()}", size, b"".join(digests)


def _read_exactly(f: io.RawIOBase | io.BufferedIOBase | pyzstd.SeekableZstdFile, n: int) -> bytes:
    data = f.read(n)
    while data and len(data) < n:
        more = f.read(n - len(data))
        if not more:
            break
        data += more
    return data


class ChunkCache:
    """Checked chunks of large blobs, shared by every reader of a mount."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self._chunks: LRUCache = LRUCache(maxsize=max_bytes, getsizeof=len)
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> bytes | None:
        with self._lock:
            return self._chunks.get(key)

    def put(self, key: tuple[str, int], data: bytes) -> None:
        with self._lock:
            self._chunks[key] = data


class BlobReader:
    """Random access to a blob's content, each CHUNK checked against its recorded digest
    before it is first returned (a corrupt chunk raises IntegrityError, never wrong bytes).
    Reads are ``pread`` calls with no shared position, so threads read one blob at once.
    Without a ``cache``, nothing read is kept (a large blob streamed once)."""

    def __init__(self, path: Path, digest: str, codec: str, size: int, chunks: bytes,
                 cache: ChunkCache | None) -> None:
        if len(chunks) != 32 * -(-size // CHUNK):
            raise IntegrityError(f"chunk digests of blob {digest} do not match its size")
        self._digest, self._size, self._chunks, self._cache = digest, size, chunks, cache
        self._table: SeekTable | None = None
        self._data: bytes | None = None
        self._fd = -1
        try:
            if codec == ZSTD:
                self._data = decode(path.read_bytes(), codec, digest)
                return
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            if codec == ZSTD_SEEKABLE:
                try:
                    self._table = SeekTable.read(self._fd)
                    if self._table.content_size != size:
                        raise SeekTableError("the seek table does not match the recorded size")
                except BaseException:
                    self.close()
                    raise
        except FileNotFoundError:
            raise MissingObjectError(f"missing blob {digest}") from None
        except SeekTableError as exc:
            raise IntegrityError(f"corrupt blob {digest} ({exc})") from None

    def pread(self, size: int, offset: int) -> bytes:
        end = min(offset + size, self._size)
        pieces = []
        while offset < end:
            c = offset // CHUNK
            start = offset - c * CHUNK
            piece = self._chunk(c)[start:start + end - offset]
            if not piece:  # the stored content is shorter than recorded
                raise IntegrityError(f"corrupt blob {self._digest} (truncated)")
            pieces.append(piece)
            offset += len(piece)
        return b"".join(pieces)

    def iter_chunks(self) -> Iterator[bytes]:
        """The whole content, one checked CHUNK at a time."""
        for c in range(-(-self._size // CHUNK)):
            data = self._chunk(c)
            if len(data) != min(CHUNK, self._size - c * CHUNK):
                raise IntegrityError(f"corrupt blob {self._digest} (truncated)")
            yield data

    def _chunk(self, c: int) -> bytes:
        key = (self._digest, c)
        data = self._cache.get(key) if self._cache is not None else None
        if data is not None:
            return data
        data = self._read(c)
        if blake3.blake3(data).digest() != self._chunks[32 * c:32 * c + 32]:
            raise IntegrityError(f"corrupt blob {self._digest} (chunk {c} does not match its digest)")
        if self._cache is not None:
            self._cache.put(key, data)
        return data

    def _read(self, c: int) -> bytes:
        """Chunk ``c`` of the content, not checked yet."""
        try:
            if self._data is not None:
                data = self._data[c * CHUNK:(c + 1) * CHUNK]
            elif self._table is not None:
                data = self._table.read_range(self._fd, c * CHUNK, (c + 1) * CHUNK)
            else:
                data = os.pread(self._fd, CHUNK, c * CHUNK)
        except (pyzstd.ZstdError, SeekTableError) as exc:
            raise IntegrityError(f"corrupt blob {self._digest} ({exc})") from None
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


_libc = None
if hasattr(os, "fork") and os.uname().sysname == "Linux":
    with contextlib.suppress(OSError):
        _libc = ctypes.CDLL(None, use_errno=True)


def _syncfs(path: Path) -> bool:
    """Flush the whole file system holding ``path`` in one call (Linux); False if unavailable."""
    if _libc is None or not hasattr(_libc, "syncfs"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        return _libc.syncfs(fd) == 0
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
