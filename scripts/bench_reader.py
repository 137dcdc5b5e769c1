"""Range reads of one large blob, chunk by chunk in random order, as a mount serves a cold
``.so``: vocker's BlobReader (pread + one decompression per frame, no shared position)
against pyzstd's SeekableZstdFile (one position, so readers take turns), 1 and 2 threads.

    .venv/bin/python scripts/bench_reader.py [--mib 24]

Prints ms per 128 KiB chunk (lower is better); each read also checks the chunk's BLAKE3.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import tempfile
import threading
import time
from pathlib import Path

import blake3
import pyzstd

from vocker.blobstore import CHUNK, ZSTD_SEEKABLE, BlobFiles, ChunkCache, chunk_digests_of


class SeekableFileReader:
    """The baseline: pyzstd's file object, one position behind a lock."""

    def __init__(self, path: Path, chunks: bytes) -> None:
        self._f = pyzstd.SeekableZstdFile(path, "r")
        self._lock = threading.Lock()
        self._chunks = chunks

    def read_chunk(self, c: int) -> bytes:
        with self._lock:
            self._f.seek(c * CHUNK)
            data = self._f.read(CHUNK)
        assert blake3.blake3(data).digest() == self._chunks[32 * c:32 * c + 32]
        return data


def content(mib: int) -> bytes:
    """Compressible like a shared library: runs of structured records with random fields."""
    rng = random.Random(0)
    rows = (b"%08x %s\n" % (i, rng.randbytes(24).hex().encode()[:rng.randrange(8, 48)]) for i in range(10 ** 9))
    out = bytearray()
    while len(out) < mib << 20:
        out += next(rows)
    return bytes(out[:mib << 20])


def timed(read_chunk, order: list[int], threads: int) -> float:
    parts = [order[i::threads] for i in range(threads)]
    workers = [threading.Thread(target=lambda cs: [read_chunk(c) for c in cs], args=(p,)) for p in parts]
    t = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return (time.perf_counter() - t) / len(order) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=24, help="blob size (default 24 MiB, like numpy's largest .so)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    data = content(args.mib)
    with tempfile.TemporaryDirectory() as tmp:
        blobs = BlobFiles(Path(tmp))
        blobs.setup()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        info = blobs.write(digest, data)
        assert info.codec == ZSTD_SEEKABLE
        chunks = chunk_digests_of(data)
        order = list(range(-(-len(data) // CHUNK)))
        random.Random(1).shuffle(order)
        print(f"{args.mib} MiB blob, {info.stored_size / len(data):.0%} stored; ms per chunk (median of {args.rounds})")
        for threads in (1, 2):
            new, old = [], []
            for _ in range(args.rounds):
                reader = blobs.reader(digest, info.codec, info.size, chunks, ChunkCache(max_bytes=CHUNK))
                new.append(timed(lambda c: reader.pread(CHUNK, c * CHUNK), order, threads))
                reader.close()
                old.append(timed(SeekableFileReader(blobs.path(digest), chunks).read_chunk, order, threads))
            n, o = sorted(new)[len(new) // 2], sorted(old)[len(old) // 2]
            print(f"  {threads} thread(s): BlobReader {n:.3f}  SeekableZstdFile {o:.3f}  ({o / n:.2f}x)")


if __name__ == "__main__":
    main()
