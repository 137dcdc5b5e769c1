"""Blob files: one file per distinct content, named by its sha256 digest.

Layout (OCI image-layout style, so names stay legal on every OS):
``blobs/sha256/<2 hex>/<64 hex>``. A blob is stored raw, or in the zstd *seekable*
format (independent frames plus a seek table) when that saves space, so the mount
layer can decompress any byte range without reading the whole file. Writes go to
``tmp/`` first, are fsynced, then renamed into place: a crash leaves at worst an
orphan temp file, never a partial blob under its final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import threading
from pathlib import Path

import attrs
import pyzstd

from .digest import digest_bytes, hex_of
from .errors import IntegrityError, MissingObjectError

RAW = "raw"
ZSTD = "zstd"
#: Frame size of the seekable format: a random read decompresses at most this much.
FRAME_SIZE = 1 << 20
#: zstd level 2: about 30 % faster than 3 for ~5 % more bytes on a typical venv (docs/benchmarks.md).
LEVEL = 2
#: Store compressed only when it saves at least this fraction.
MIN_SAVING = 0.10


@attrs.frozen
class BlobInfo:
    digest: str
    size: int
    stored_size: int
    codec: str


def encode(data: bytes) -> tuple[bytes, str]:
    """The bytes to store for ``data`` and their codec; deterministic for a given input."""
    if len(data) < 64:
        return data, RAW
    buf = io.BytesIO()
    with pyzstd.SeekableZstdFile(buf, "w", level_or_option=LEVEL, max_frame_content_size=FRAME_SIZE) as f:
        f.write(data)
    packed = buf.getvalue()
    if len(packed) <= len(data) * (1 - MIN_SAVING):
        return packed, ZSTD
    return data, RAW


def decode(stored: bytes, codec: str, digest: str = "") -> bytes:
    """Stored bytes back to content; the seekable format's seek table is checked too,
    since range reads (the mount layer) rely on it."""
    if codec == RAW:
        return stored
    try:
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
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        for i in range(256):
            (self.blob_dir / f"{i:02x}").mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        h = hex_of(digest)
        return self.blob_dir / h[:2] / h

    def write(self, digest: str, data: bytes) -> BlobInfo:
        """Store ``data`` (whose digest the caller computed) durably under its name.

        The caller must fsync the shard directory (see ``sync_dirs``) before recording
        the blob in the database, so the rename itself survives a power cut.
        """
        payload, codec = encode(data)
        final = self.path(digest)
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, prefix=hex_of(digest)[:16] + ".")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return BlobInfo(digest, len(data), len(payload), codec)

    def sync_dirs(self, digests: set[str] | list[str]) -> None:
        for shard in {hex_of(d)[:2] for d in digests}:
            _fsync_dir(self.blob_dir / shard)

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
        try:
            f = pyzstd.SeekableZstdFile(self.path(digest), "r") if codec == ZSTD else open(self.path(digest), "rb")
        except FileNotFoundError:
            raise MissingObjectError(f"missing blob {digest}") from None
        except (pyzstd.ZstdError, pyzstd.SeekableFormatError) as exc:
            raise IntegrityError(f"corrupt blob {digest} ({exc})") from None
        with f:
            try:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    total += len(chunk)
                if codec == ZSTD and f.seek(0, io.SEEK_END) != total:
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
        if codec == ZSTD:
            self._zst: pyzstd.SeekableZstdFile | None = pyzstd.SeekableZstdFile(path, "r")
            self._fd = -1
        else:
            self._zst = None
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    def pread(self, size: int, offset: int) -> bytes:
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


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
