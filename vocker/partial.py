"""Large blobs fetched a chunk at a time (a lazy mount reads a part of a big native library).

A pack index may say, for a large content, where each CHUNK of it lies in its stored bytes
and the BLAKE3 it must have (``ChunkLayout``): a reader then fetches only the frames it
reads. Until every chunk is here, the stored bytes live in a sparse file under
``partial/`` (``PartialFile``), never under ``blobs/``: verify, gc and export see no blob
until the file is complete, checked whole against its sha256, made durable and renamed
into place (then recorded, as every blob). No record of which chunks are present is kept:
a chunk is present exactly when its stored bytes decode to content that matches its
digest, so a kill -9 at any point (a torn write, a hole) just means that chunk is fetched
again; gc removes the files no partial image needs.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable

import attrs
import blake3
import pyzstd

from .blobstore import CHUNK, ONE_FRAME_MAX, RAW, ZSTD_SEEKABLE, BlobFiles, BlobInfo, BlobReader, ChunkCache, Staged
from .digest import hex_of
from .errors import IntegrityError
from .seekable import FOOTER_SIZE, HEADER_SIZE, SeekTable, SeekTableError

#: Contents above this size travel with a chunk layout (what a mount reads through a BlobReader).
LARGE = ONE_FRAME_MAX


def chunk_count(size: int) -> int:
    return -(-size // CHUNK)


@attrs.frozen
class ChunkLayout:
    """Where each CHUNK of a content lies in its stored bytes (raw, or seekable zstd with one
    frame per CHUNK) and the BLAKE3 digest it must have."""

    size: int
    codec: str
    length: int  # stored bytes
    checks: bytes  # 32 bytes per chunk (blobstore.chunk_digests_of)
    ends: tuple[int, ...] = ()  # seekable: the stored end of each chunk's frame; raw: none

    def stored_range(self, c: int) -> tuple[int, int]:
        if self.codec == RAW:
            return c * CHUNK, min((c + 1) * CHUNK, self.size)
        return (self.ends[c - 1] if c else 0), self.ends[c]

    def content_size(self, c: int) -> int:
        return min(CHUNK, self.size - c * CHUNK)

    @property
    def tail(self) -> tuple[int, int] | None:
        """The stored range after the frames (the seek table), or None."""
        return (self.ends[-1], self.length) if self.codec == ZSTD_SEEKABLE else None

    def content(self, c: int, stored: bytes) -> bytes:
        """Chunk ``c`` of the content from its stored bytes, decompressing at most its size and
        checked against its digest (IntegrityError otherwise)."""
        start, end = self.stored_range(c)
        size = self.content_size(c)
        data = stored
        if len(stored) == end - start and self.codec == ZSTD_SEEKABLE:
            try:
                d = pyzstd.ZstdDecompressor()
                data = d.decompress(stored, size)
                if not d.eof or d.unused_data:
                    data = b""
            except pyzstd.ZstdError:
                data = b""
        if len(stored) != end - start or len(data) != size or \
                blake3.blake3(data).digest() != self.checks[32 * c:32 * c + 32]:
            raise IntegrityError(f"chunk {c} does not match its digest")
        return data

    @classmethod
    def of_stored(cls, stored: bytes, size: int, codec: str, checks: bytes) -> "ChunkLayout | None":
        """The layout of a blob's stored bytes, or None when it has none (small, one frame, or
        frames of another size than CHUNK, as stores of older versions wrote)."""
        if size <= LARGE or len(checks) != 32 * chunk_count(size):
            return None
        if codec == RAW:
            return cls(size, codec, len(stored), checks)
        if codec != ZSTD_SEEKABLE:
            return None
        try:
            table = SeekTable.of_bytes(stored)
        except SeekTableError:
            return None
        if table.content != tuple(min(i * CHUNK, size) for i in range(chunk_count(size) + 1)):
            return None
        return cls(size, codec, len(stored), checks, table.stored[1:])

    def check(self) -> None:
        """Refuse a layout that cannot be the stored form of its content (from a remote index)."""
        n = chunk_count(self.size)
        ok = len(self.checks) == 32 * n and self.size > 0
        if self.codec == RAW:
            ok = ok and not self.ends and self.length == self.size
        elif self.codec == ZSTD_SEEKABLE:
            ok = ok and len(self.ends) == n and all(b > a for a, b in zip((0,) + self.ends, self.ends)) \
                and self.ends[-1] + HEADER_SIZE + FOOTER_SIZE + 8 * n <= self.length
        else:
            ok = False
        if not ok:
            raise ValueError("a chunk layout that does not fit its content")


class PartialFile:
    """The sparse file of a large blob being fetched chunk by chunk (``partial/<hex>``)."""

    def __init__(self, blobs: BlobFiles, digest: str, layout: ChunkLayout) -> None:
        self.digest, self.layout, self.blobs = digest, layout, blobs
        self.path = partial_path(blobs, digest)
        self.path.parent.mkdir(mode=0o700, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        if os.fstat(self._fd).st_size != layout.length:
            os.ftruncate(self._fd, layout.length)  # holes: read as zeros, which match no chunk
        self.present: set[int] = set()  # chunks known good in this process
        self.whole: BlobReader | None = None  # its blob, once fetched whole by another way

    def read(self, c: int) -> bytes | None:
        """Chunk ``c`` if the file holds it (checked), else None."""
        start, end = self.layout.stored_range(c)
        try:
            data = self.layout.content(c, os.pread(self._fd, end - start, start))
        except IntegrityError:
            return None
        self.present.add(c)
        return data

    def write(self, c: int, stored: bytes) -> None:
        """Keep chunk ``c``'s stored bytes (checked by the caller); not durable until ``staged``."""
        os.pwrite(self._fd, stored, self.layout.stored_range(c)[0])
        self.present.add(c)

    def write_tail(self, stored: bytes) -> None:
        assert self.layout.tail is not None
        os.pwrite(self._fd, stored, self.layout.tail[0])

    @property
    def complete(self) -> bool:
        return len(self.present) == chunk_count(self.layout.size)

    def staged(self) -> Staged:
        """The whole file as a blob to commit (durable, renamed, recorded): checked against the
        blob's sha256 and its chunk digests first (IntegrityError)."""
        lay = self.layout
        chunks = self.blobs.chunk_digests(self.digest, lay.codec, lay.size, self.path)
        if chunks != lay.checks:
            raise IntegrityError(f"the chunk digests of {self.digest} in its pack index do not match its content")
        return Staged(str(self.path), str(self.blobs.path(self.digest)), BlobInfo(self.digest, lay.size, lay.length,
                                                                                   lay.codec), chunks)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def partial_path(blobs: BlobFiles, digest: str) -> Path:
    return blobs.root / "partial" / hex_of(digest)


def drop(blobs: BlobFiles, digests: object) -> None:
    """Remove the partial files of these contents (fetched whole since, or no longer needed)."""
    for d in digests:  # type: ignore[attr-defined]
        with contextlib.suppress(FileNotFoundError):
            partial_path(blobs, d).unlink()


def remove_stale(blobs: BlobFiles, keep: set[str]) -> int:
    """Remove the partial files of contents not in ``keep`` (gc: those partial images still lack);
    returns how many bytes they held on disk."""
    freed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(blobs.root / "partial"):
            if "sha256:" + entry.name not in keep:
                with contextlib.suppress(FileNotFoundError):
                    freed += entry.stat().st_blocks * 512
                    os.unlink(entry.path)
    return freed


class PartialReader(BlobReader):
    """A BlobReader of a content not (all) here: each chunk comes from ``load`` (which fetches it
    if need be) and is checked against its digest before it is returned, as any BlobReader's."""

    def __init__(self, digest: str, size: int, chunks: bytes, cache: ChunkCache | None,
                 load: Callable[[int], bytes]) -> None:
        if len(chunks) != 32 * chunk_count(size):
            raise IntegrityError(f"chunk digests of blob {digest} do not match its size")
        self._digest, self._size, self._chunks, self._cache = digest, size, chunks, cache
        self._load = load
        self._fd = -1

    def _read(self, c: int) -> bytes:
        return self._load(c)
