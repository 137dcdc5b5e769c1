"""Blob files on their own (no FUSE): codecs, whole reads checked against the sha256 or the
chunk digests, and range reads checked chunk by chunk."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import blake3
import pytest

from vocker.blobstore import CHUNK, RAW, ZSTD, ZSTD_SEEKABLE, BlobFiles, ChunkCache, chunk_digests_of
from vocker.errors import IntegrityError

SIZE = 5 * CHUNK + 12345  # a short last chunk


def contents() -> dict[str, bytes]:
    rng = random.Random(7)
    return {
        RAW: rng.randbytes(SIZE),  # incompressible
        ZSTD: b"".join(b"%08d small and compressible\n" % i for i in range(20_000))[:300_000],
        ZSTD_SEEKABLE: b"".join(b"row %09d of a large compressible file\n" % i for i in range(60_000)),
    }


@pytest.fixture
def blobs(tmp_path: Path) -> BlobFiles:
    b = BlobFiles(tmp_path)
    b.setup()
    return b


def write(blobs: BlobFiles, data: bytes) -> tuple[str, str]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return digest, blobs.write(digest, data).codec


@pytest.mark.parametrize("codec", [RAW, ZSTD, ZSTD_SEEKABLE])
def test_range_reads_return_exactly_the_content(blobs: BlobFiles, codec: str) -> None:
    data = contents()[codec]
    digest, stored_as = write(blobs, data)
    assert stored_as == codec
    chunks = blobs.chunk_digests(digest, codec, len(data))
    assert chunks == chunk_digests_of(data) and len(chunks) == 32 * -(-len(data) // CHUNK)
    reader = blobs.reader(digest, codec, len(data), chunks, ChunkCache())
    rng = random.Random(1)
    spans = [(0, len(data)), (CHUNK - 1, 2), (len(data) - 3, 100), (len(data), 10), (0, 0)]
    spans += [(rng.randrange(len(data)), rng.choice([1, 4096, CHUNK, 3 * CHUNK + 7])) for _ in range(200)]
    try:
        for offset, size in spans:
            assert reader.pread(size, offset) == data[offset:offset + size], (offset, size)
    finally:
        reader.close()


@pytest.mark.parametrize("codec", [RAW, ZSTD_SEEKABLE])
def test_a_corrupt_chunk_fails_only_the_reads_that_touch_it(blobs: BlobFiles, codec: str) -> None:
    data = contents()[codec]
    digest, _ = write(blobs, data)
    chunks = blobs.chunk_digests(digest, codec, len(data))
    path = blobs.path(digest)
    raw = bytearray(path.read_bytes())
    if codec == RAW:
        raw[2 * CHUNK + 10] ^= 0x01  # inside chunk 2
        bad = 2
    else:  # a frame's compressed bytes: whichever chunk it lands in must fail, the first must not
        raw[len(raw) // 2] ^= 0x01
        bad = None
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        blobs.chunk_digests(digest, codec, len(data))  # the whole-blob check sees it too
    reader = blobs.reader(digest, codec, len(data), chunks, ChunkCache())
    try:
        with pytest.raises(IntegrityError):
            reader.pread(len(data), 0)
        for attempt in range(2):  # the failure is not cached as content
            with pytest.raises(IntegrityError):
                reader.pread(len(data), 0)
        if bad is not None:
            assert reader.pread(CHUNK, 0) == data[:CHUNK]
            assert reader.pread(CHUNK, 3 * CHUNK) == data[3 * CHUNK:4 * CHUNK]
            with pytest.raises(IntegrityError):
                reader.pread(1, 2 * CHUNK + 10)
    finally:
        reader.close()


def test_wrong_chunk_digests_never_return_bytes(blobs: BlobFiles) -> None:
    data = contents()[RAW]
    digest, codec = write(blobs, data)
    chunks = bytearray(chunk_digests_of(data))
    chunks[32 * 1] ^= 0x01  # the record for chunk 1 is wrong, the blob is fine
    reader = blobs.reader(digest, codec, len(data), bytes(chunks), ChunkCache())
    try:
        assert reader.pread(CHUNK, 0) == data[:CHUNK]
        with pytest.raises(IntegrityError):
            reader.pread(10, CHUNK + 5)
    finally:
        reader.close()
    with pytest.raises(IntegrityError):  # a record that does not fit the size is refused up front
        blobs.reader(digest, codec, len(data), bytes(chunks[:-32]), ChunkCache())


def test_chunk_digests_are_blake3_of_each_chunk() -> None:
    data = contents()[RAW]
    expected = b"".join(blake3.blake3(data[i:i + CHUNK]).digest() for i in range(0, len(data), CHUNK))
    assert chunk_digests_of(data) == expected and len(expected) == 32 * 6


@pytest.mark.parametrize("codec", [RAW, ZSTD, ZSTD_SEEKABLE])
def test_whole_reads_check_the_chunk_digests_or_else_the_sha256(blobs: BlobFiles, codec: str) -> None:
    data = contents()[codec]
    digest, _ = write(blobs, data)
    staged_chunks = chunk_digests_of(data)
    assert blobs.read(digest, codec, len(data), staged_chunks) == data
    assert blobs.read(digest, codec, len(data)) == data
    wrong = bytearray(staged_chunks)
    wrong[-1] ^= 0x01
    with pytest.raises(IntegrityError):  # a wrong record fails the read, never returns unchecked bytes
        blobs.read(digest, codec, len(data), bytes(wrong))
    path = blobs.path(digest)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    for chunks in (staged_chunks, None):
        with pytest.raises(IntegrityError):
            blobs.read(digest, codec, len(data), chunks)


def test_seekable_range_reads_span_frames_of_any_size(tmp_path: Path) -> None:
    """Blobs written with another frame size stay readable: a chunk may span several frames."""
    import io
    import os

    import pyzstd

    from vocker.seekable import SeekTable
    data = contents()[ZSTD_SEEKABLE]
    buf = io.BytesIO()
    with pyzstd.SeekableZstdFile(buf, "w", max_frame_content_size=50_000) as f:
        f.write(data)
    path = tmp_path / "blob"
    path.write_bytes(buf.getvalue())
    fd = os.open(path, os.O_RDONLY)
    try:
        table = SeekTable.read(fd)
        assert table.content_size == len(data) and len(table.content) > len(data) // 50_000
        rng = random.Random(3)
        for _ in range(100):
            start = rng.randrange(len(data))
            end = start + rng.choice([1, 49_999, 50_001, CHUNK, 3 * CHUNK])
            assert table.read_range(fd, start, end) == data[start:end]
    finally:
        os.close(fd)


@pytest.mark.parametrize("damage", ["footer", "table header", "frame sizes", "truncated"])
def test_a_damaged_seek_table_is_refused_when_the_blob_is_opened(blobs: BlobFiles, damage: str) -> None:
    data = contents()[ZSTD_SEEKABLE]
    digest, codec = write(blobs, data)
    chunks = chunk_digests_of(data)
    path = blobs.path(digest)
    raw = bytearray(path.read_bytes())
    frames = int.from_bytes(raw[-9:-5], "little")
    table_start = len(raw) - 9 - 8 * frames
    if damage == "footer":
        raw[-1] ^= 0x01  # the magic number
    elif damage == "table header":
        raw[table_start - 8] ^= 0x01
    elif damage == "frame sizes":
        raw[table_start] ^= 0x01  # the first frame's stored size no longer adds up
    else:
        raw = raw[:len(raw) // 2] + raw[-(9 + 8 * frames + 8):]
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        blobs.reader(digest, codec, len(data), chunks, ChunkCache()).pread(len(data), 0)


def test_threads_read_one_blob_at_once(blobs: BlobFiles) -> None:
    """No shared file position: concurrent range reads of one reader all return their own bytes."""
    import concurrent.futures

    data = contents()[ZSTD_SEEKABLE]
    digest, codec = write(blobs, data)
    reader = blobs.reader(digest, codec, len(data), chunk_digests_of(data), ChunkCache(max_bytes=CHUNK))
    rng = random.Random(5)
    spans = [(rng.randrange(len(data)), rng.choice([100, CHUNK, 2 * CHUNK + 1])) for _ in range(400)]
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda span: reader.pread(span[1], span[0]), spans))
        assert got == [data[o:o + n] for o, n in spans]
    finally:
        reader.close()
