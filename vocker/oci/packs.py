"""Packs: file contents travel in blobs of a few MiB, one frame per file plus an index.

A registry stores ~100 blobs/s one by one (research: registry.md), so a venv's thousands of
files go as packs. A frame is the content exactly as the local store keeps it (raw, one zstd
frame, or seekable zstd), so packing copies bytes and recompresses nothing; the index
(canonical CBOR) names each frame's content digest, offset, length, size and codec, so a
reader can Range-read one file out of a pack (what a lazy mount needs) and check it alone.

Packing is deterministic: files in path order, cut into packs where a package begins (chosen
by a hash of the package's name) or, inside a large package, at content-defined points, so a
change to one package changes the packs holding it and the cuts around it stay where they were.
"""

from __future__ import annotations

import hashlib
import re
from typing import Iterable, Iterator

import attrs
import pyzstd

from .. import cbor
from ..blobstore import RAW, ZSTD, ZSTD_SEEKABLE
from ..digest import check_digest, digest_bytes
from ..errors import FormatError, IntegrityError
from ..partial import ChunkLayout
from ..seekable import SeekTableError, SeekTable

#: Version 2 indexes may give large contents a chunk layout; one without is written as version 1,
#: byte for byte as before (so packs without large files keep their index digests).
INDEX_VERSION = 1
CHUNKED_VERSION = 2
#: A pack is cut where a package begins once it holds MIN bytes (at half of those places, by a
#: hash of the package's name), inside a package once it holds TARGET, and always before MAX
#: (unless one file is larger). About 1-2 MiB: a registry takes a blob in a few ms, and an
#: image that differs in one package then re-sends a few MiB, not a tenth of a venv.
MIN = 512 << 10
TARGET = 2 << 20
MAX = 8 << 20
#: The share of package starts where a pack that holds MIN bytes is cut.
CUT_CHANCE = 0.5
CODECS = (RAW, ZSTD, ZSTD_SEEKABLE)
#: A frame may not claim to expand more than this ratio (plus a margin): a zstd bomb is refused.
MAX_RATIO = 4096
MAX_ENTRY = 8 << 30


@attrs.frozen
class Frame:
    digest: str  # sha256 of the content
    offset: int
    length: int  # stored bytes in the pack
    size: int  # content bytes
    codec: str
    #: where each chunk lies in the frame and its BLAKE3 (large contents): a reader may fetch a part
    layout: ChunkLayout | None = None

    def entry(self) -> list[object]:
        out: list[object] = [self.digest, self.offset, self.length, self.size, self.codec]
        if self.layout is not None:
            ends = self.layout.ends
            out += [self.layout.checks, [b - a for a, b in zip((0,) + ends[:-1], ends)]]
        return out


@attrs.frozen
class PackIndex:
    frames: tuple[Frame, ...]

    def encode(self) -> bytes:
        chunked = any(f.layout is not None for f in self.frames)
        return cbor.dumps({"v": CHUNKED_VERSION if chunked else INDEX_VERSION, "e": [f.entry() for f in self.frames]})

    @classmethod
    def decode(cls, data: bytes, pack_size: int) -> "PackIndex":
        """Parse an index, refusing one that points outside its pack, overlaps, or claims bombs."""
        raw = cbor.loads(data, "pack index")
        if not isinstance(raw, dict) or set(raw) != {"v", "e"} or raw["v"] not in (INDEX_VERSION, CHUNKED_VERSION) \
                or not isinstance(raw["e"], list):
            raise FormatError("corrupt pack index: not a version 1 or 2 pack index")
        frames, end = [], 0
        lengths = (5, 7) if raw["v"] == CHUNKED_VERSION else (5,)
        for item in raw["e"]:
            if not (isinstance(item, list) and len(item) in lengths and all(isinstance(x, int) and not isinstance(x, bool)
                                                                            for x in item[1:4])):
                raise FormatError("corrupt pack index: bad entry")
            frame = Frame(check_digest(item[0], "pack entry digest"), item[1], item[2], item[3], item[4],
                          _layout(item) if len(item) == 7 else None)
            if frame.codec not in CODECS:
                raise FormatError(f"corrupt pack index: unknown codec {frame.codec!r}")
            if frame.offset < end or frame.length < 0 or frame.offset + frame.length > pack_size:
                raise FormatError("hostile pack index: an entry points outside its pack or overlaps another")
            if frame.size < 0 or frame.size > MAX_ENTRY or frame.size > frame.length * MAX_RATIO + (1 << 20):
                raise FormatError(f"hostile pack index: entry {frame.digest} claims an implausible size {frame.size}")
            if frame.codec == RAW and frame.size != frame.length:
                raise FormatError("corrupt pack index: a raw entry's size is not its length")
            end = frame.offset + frame.length
            frames.append(frame)
        return cls(tuple(frames))


def _layout(item: list) -> ChunkLayout:  # type: ignore[type-arg]
    """The chunk layout of a version 2 entry, refused unless it fits the entry."""
    checks, lengths = item[5], item[6]
    if not isinstance(checks, bytes) or not isinstance(lengths, list) or \
            not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in lengths):
        raise FormatError("corrupt pack index: bad chunk layout")
    ends, at = [], 0
    for n in lengths:
        at += n
        ends.append(at)
    layout = ChunkLayout(item[3], item[4], item[2], checks, tuple(ends))
    try:
        layout.check()
    except ValueError:
        raise FormatError(f"hostile pack index: entry {item[0]} has a chunk layout that does not fit it") from None
    return layout


def content_of(frame: Frame, stored: bytes) -> bytes:
    """A frame's content, checked against its digest (IntegrityError otherwise), decompressing
    at most ``frame.size`` bytes whatever the frame says."""
    if len(stored) != frame.length:
        raise IntegrityError(f"truncated frame for {frame.digest}")
    try:
        if frame.codec == RAW:
            data = stored
        elif frame.codec == ZSTD:
            data = _one_frame(memoryview(stored), frame.size)
        else:
            data = _seekable(stored, frame.size)
    except (pyzstd.ZstdError, SeekTableError, EOFError) as exc:
        raise IntegrityError(f"corrupt frame for {frame.digest} ({exc})") from None
    if len(data) != frame.size or digest_bytes(data) != frame.digest:
        raise IntegrityError(f"corrupt frame for {frame.digest} (content does not match its digest)")
    return data


def _one_frame(stored: memoryview, size: int) -> bytes:
    """One whole zstd frame of exactly ``size`` bytes (never decompressing more)."""
    d = pyzstd.ZstdDecompressor()
    data = d.decompress(stored, size + 1) if size else d.decompress(stored, 1)
    if not d.eof or d.unused_data or len(data) != size:
        raise pyzstd.ZstdError("a frame that is not exactly its recorded size")
    return data


def _seekable(stored: bytes, size: int) -> bytes:
    """The frames of a seekable blob, each bounded by its seek table entry, which must add up to
    ``size`` and to the stored bytes (what a mount's range reads rely on)."""
    table = SeekTable.of_bytes(stored)
    if table.content_size != size:
        raise SeekTableError("the seek table does not match the size")
    view = memoryview(stored)
    pieces = [_one_frame(view[table.stored[i]:table.stored[i + 1]], table.content[i + 1] - table.content[i])
              for i in range(len(table.stored) - 1)]
    return b"".join(pieces)


def bounded_decompress(stored: bytes, size: int) -> tuple[bytes, bool]:
    """All frames of ``stored`` decompressed, but never more than ``size`` + 1 bytes (a bomb
    stops there); with whether the input ended at a frame's end. (For the few, small
    trees blobs: it is slow on large inputs.)"""
    d = pyzstd.EndlessZstdDecompressor()
    out = bytearray(d.decompress(stored, max_length=size + 1))
    while len(out) <= size and not d.needs_input:
        more = d.decompress(b"", max_length=size + 1 - len(out))
        if not more and not d.needs_input:
            break
        out += more
    return bytes(out), d.at_frame_edge


def _chance(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2.0 ** 64


def group_key(path: tuple[str, ...]) -> str:
    """The package a file belongs to, as far as packing cares: the first name below
    ``site-packages`` (else the first path component), up to its first '-' or '.', so
    ``numpy/``, ``numpy-1.26.4.dist-info/`` and ``numpy.libs/`` go together whatever the version."""
    for i, part in enumerate(path[:-1]):
        if part == "site-packages":
            path = path[i + 1:]
            break
    top = path[0] if len(path) > 1 else ""
    return re.split(r"[-.]", top, maxsplit=1)[0].lower()


def group(files: Iterable[tuple[str, str, int]]) -> Iterator[list[str]]:
    """Cut (group key, digest, stored length) in path order into packs of digests.

    A cut depends on the pack's size only through MIN, TARGET and MAX, otherwise on the names
    of packages and the digests of files: after a changed package, the first package start
    chosen by its name where both versions hold MIN bytes is a cut in both, and every pack
    from there on is the same. A package larger than TARGET is cut inside by its files' digests.
    """
    pack: list[str] = []
    total = 0
    key = None
    for k, digest, length in files:
        if pack and (total + length > MAX or (k != key and total >= MIN and _chance(k) < CUT_CHANCE)):
            yield pack
            pack, total = [], 0
        key = k
        pack.append(digest)
        total += length
        if total >= TARGET and _chance(digest) < length / TARGET:
            yield pack
            pack, total = [], 0
    if pack:
        yield pack


def build(frames: list[tuple[str, bytes, int, str, bytes]]) -> tuple[bytes, bytes]:
    """(pack bytes, index bytes) of (digest, stored bytes, size, codec, chunk digests) in the given
    order; a large content gets its chunk layout (a lazy reader then fetches only what it reads)."""
    out, index, offset = [], [], 0
    for digest, stored, size, codec, checks in frames:
        index.append(Frame(digest, offset, len(stored), size, codec, ChunkLayout.of_stored(stored, size, codec, checks)))
        out.append(stored)
        offset += len(stored)
    return b"".join(out), PackIndex(tuple(index)).encode()
