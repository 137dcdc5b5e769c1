"""Blob files: one file per distinct content, named by its sha256 digest.

Layout (OCI image-layout style, so names stay legal on every OS):
``blobs/sha256/<2 hex>/<64 hex>``. A blob is stored raw, as one zstd frame (contents
up to 1 MiB), or in the zstd *seekable* format (independent 1 MiB frames plus a seek
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

import attrs
import pyzstd

from .digest import digest_bytes, hex_of
from .errors import IntegrityError, MissingObjectError

RAW = "raw"
ZSTD = "zstd"  # one frame: the whole content
ZSTD_SEEKABLE = "zstd-seekable"  # frames of FRAME_SIZE plus a seek table
#: Frame size of the seekable format: a random read decompresses at most this much.
FRAME_SIZE = 1 << 20
#: zstd level 2: about 30 % faster than 3 for ~5 % more bytes on a typical venv (docs/benchmarks.md).
LEVEL = 2
#: Store compressed only when it saves at least this fraction.
MIN_SAVING = 0.10

_counter = itertools.count()


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


def encode(data: bytes) -> tuple[bytes, str]:
    """The bytes to store for ``data`` and their codec; deterministic for a given input."""
    if len(data) < 64:
        return data, RAW
    if len(data) <= FRAME_SIZE:
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


@attrs.define
class BlobFiles:
    root: Path  # the store root

    @property
    def blob_dir(self) -> Path:
        return self.root / "blobs" / "sha256"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def setup(self) -> None:
        if (self.blob_dir / "ff").is_dir() and self.tmp_dir.is_dir():
            return  # made in order, so "ff" means all are there (saves 257 mkdirs per command)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        for i in range(256):
            (self.blob_dir / f"{i:02x}").mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        h = hex_of(digest)
        return self.blob_dir / h[:2] / h

    def stage(self, digest: str, data: bytes) -> Staged:
        """Compress and write ``data`` (whose digest the caller computed) to a temp file."""
        payload, codec = encode(data)
        tmp = os.path.join(self.tmp_dir, f"{hex_of(digest)[:16]}.{os.getpid()}.{next(_counter)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return Staged(tmp, str(self.path(digest)), BlobInfo(digest, len(data), len(payload), codec))

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

    def read(self, digest: str, codec: str, size: int | None = None) -> bytes:
        """The verified content of a blob; raises IntegrityError rather than return wrong bytes."""
        try:
            stored = self.path(digest).read_bytes()
        except FileNotFoundError:
            raise MissingObjectError(f"missing blob {digest}") from None
        data = decode(stored, codec, digest)
        if (size is not None and len(data) != size) or digest_bytes(data) != digest:
            raise IntegrityError(f"corrupt blob {digest} (content does not match its digest)")
        return data

    def verify(self, digest: str, codec: str, size: int) -> None:
        """Stream-check a blob against its digest without holding it in memory."""
        h = hashlib.sha256()
        total = 0
        if codec == ZSTD:  # one frame of at most FRAME_SIZE: simply decode it
            self.read(digest, codec, size)
            return
        try:
            f = pyzstd.SeekableZstdFile(self.path(digest), "r") if codec == ZSTD_SEEKABLE else open(self.path(digest), "rb")
        except FileNotFoundError:
            raise MissingObjectError(f"missing blob {digest}") from None
        except (pyzstd.ZstdError, pyzstd.SeekableFormatError) as exc:
            raise IntegrityError(f"corrupt blob {digest} ({exc})") from None
        with f:
            try:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    total += len(chunk)
                if codec == ZSTD_SEEKABLE and f.seek(0, io.SEEK_END) != total:
                    raise pyzstd.SeekableFormatError("seek table does not match the frames")
            except (pyzstd.ZstdError, pyzstd.SeekableFormatError, EOFError) as exc:
                raise IntegrityError(f"corrupt blob {digest} ({exc})") from None
        if total != size or f"sha256:{h.hexdigest()}" != digest:
            raise IntegrityError(f"corrupt blob {digest} (content does not match its digest)")

    def reader(self, digest: str, codec: str) -> "BlobReader":
        return BlobReader(self.path(digest), codec)

    def iter_files(self):  # type: ignore[no-untyped-def]
        """(digest, path) of every blob file present, recorded or not."""
        for shard in self.blob_dir.iterdir():
            for entry in os.scandir(shard):
                yield "sha256:" + entry.name, Path(entry.path)


class BlobReader:
    """Random access to a blob's content (which the caller has verified)."""

    def __init__(self, path: Path, codec: str) -> None:
        self._lock = threading.Lock()
        self._data: bytes | None = None
        self._zst: pyzstd.SeekableZstdFile | None = None
        self._fd = -1
        if codec == ZSTD:  # small: decode once
            self._data = pyzstd.decompress(path.read_bytes())
        elif codec == ZSTD_SEEKABLE:
            self._zst = pyzstd.SeekableZstdFile(path, "r")
        else:
            self._zst = None
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    def pread(self, size: int, offset: int) -> bytes:
        if self._data is not None:
            return self._data[offset:offset + size]
        if self._zst is None:
            return os.pread(self._fd, size, offset)
        with self._lock:  # a seekable zstd file has one position
            self._zst.seek(offset)
            return self._zst.read(size)

    def close(self) -> None:
        if self._zst is not None:
            self._zst.close()
        elif self._fd >= 0:
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
