"""Read-ahead profiles: what a mount of an image read first, read ahead by its next mounts.

A cold start through FUSE pays, file after file, a round trip, a store read, a
decompression and a check while the application waits. The files an environment's
start-up reads are nearly the same every time, so a mount notes the store-backed
files (and, of large ones, the 128 KiB chunks the store checks) it serves in its first
``RECORD_SECONDS``, in first-read order, and the next mount of the image reads them
through itself in a background thread from its first moment: the application then
finds most of them in the kernel's page cache (like an OS's application prefetcher).

Only reads the profile does not already cover are noted, so the read-ahead's own
reads never grow it. A profile is a cache in the store's database: it is not part of
any image ID, a damaged one is ignored, and losing it costs only speed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Callable

import attrs

from . import cbor
from .blobstore import CHUNK
from .errors import FormatError
from .tree import check_name

if TYPE_CHECKING:
    from .store import Store

Parts = tuple[str, ...]
log = logging.getLogger("vocker.readahead")

RECORD_SECONDS = 10.0     #: a mount notes reads for this long (start-up, not a long session's later reads)
MAX_FILES = 4_096         #: bounds what a profile makes each mount read (a cold
MAX_BYTES = 64 << 20      #: `import numpy, requests, rich, pydantic` reads 170 files, 18 MB)
_READ = 1 << 20
_ABSENT = object()


@attrs.define
class Profile:
    """Files in first-read order; for each, the chunks read, or None for the whole file."""
    files: dict[Parts, set[int] | None] = attrs.field(factory=dict)

    def to_bytes(self) -> bytes:
        return cbor.dumps([["/".join(p), None if c is None else sorted(c)] for p, c in self.files.items()])

    @classmethod
    def from_bytes(cls, data: bytes) -> "Profile":
        """Decode and validate: the paths are opened under a mount point, so no part may escape it."""
        raw = cbor.loads(data, "read-ahead profile")
        if not isinstance(raw, list):
            raise FormatError("corrupt read-ahead profile: not a list")
        files: dict[Parts, set[int] | None] = {}
        for item in raw:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                raise FormatError("corrupt read-ahead profile: bad entry")
            parts = tuple(check_name(p) for p in item[0].split("/"))
            chunks = item[1]
            if chunks is not None and not (isinstance(chunks, list) and all(
                    isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 1 << 40 for c in chunks)):
                raise FormatError(f"corrupt read-ahead profile: bad chunks for {item[0]!r}")
            files[parts] = None if chunks is None else set(chunks)
        return cls(files)

    def plan(self) -> list[tuple[Parts, list[tuple[int, int]] | None]]:
        """Each file with the byte ranges to read (runs of adjacent chunks), or None: all of it."""
        out: list[tuple[Parts, list[tuple[int, int]] | None]] = []
        for parts, chunks in list(self.files.items()):
            if chunks is None:
                out.append((parts, None))
                continue
            runs: list[tuple[int, int]] = []
            for c in sorted(chunks):
                if runs and runs[-1][1] == c * CHUNK:
                    runs[-1] = (runs[-1][0], (c + 1) * CHUNK)
                else:
                    runs.append((c * CHUNK, (c + 1) * CHUNK))
            out.append((parts, runs))
        return out


class Recorder:
    """Notes the reads a mount serves that its profile does not cover yet (called per read: cheap)."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.changed = False
        # an estimate for a loaded profile (it keeps no sizes): a whole file counts one chunk
        self._bytes = sum(1 if c is None else len(c) for c in profile.files.values()) * CHUNK
        self._lock = threading.Lock()

    def note(self, parts: Parts, offset: int, size: int, whole_size: int | None) -> None:
        """A read of ``size`` bytes at ``offset``; ``whole_size``: the file is read whole (it is
        small), else only the chunks read are noted."""
        have = self.profile.files.get(parts, _ABSENT)
        if have is None:
            return
        if whole_size is None:
            first, last = offset // CHUNK, (offset + max(size, 1) - 1) // CHUNK
            if have is not _ABSENT and first in have and last in have:  # type: ignore[operator]
                return
        with self._lock:
            files = self.profile.files
            if self._bytes >= MAX_BYTES or (parts not in files and len(files) >= MAX_FILES):
                return
            if whole_size is not None:
                files[parts] = None
                self._bytes += whole_size
            else:
                known = files.setdefault(parts, set())
                if known is None:
                    return
                before = len(known)
                known.update(range(first, last + 1))
                self._bytes += (len(known) - before) * CHUNK
            self.changed = True


def load(store: "Store", image_id: str) -> Profile:
    with store.read() as conn:
        row = conn.execute("SELECT data FROM read_profiles WHERE image_id = ?", (image_id,)).fetchone()
    if row is None:
        return Profile()
    try:
        return Profile.from_bytes(row[0])
    except FormatError as exc:
        log.warning("ignoring the read-ahead profile of %s: %s", image_id, exc)
        return Profile()


def save(store: "Store", image_id: str, profile: Profile) -> None:
    """Not durable, and waits at most 2 s for another writer: a profile lost in a power cut
    or skipped costs one slower start, and a daemon must not linger after its unmount."""
    with store.write(durable=False, wait_ms=2000) as conn:
        conn.execute("INSERT OR REPLACE INTO read_profiles (image_id, data) VALUES (?, ?)",
                     (image_id, profile.to_bytes()))


def read_ahead(root: str, plan: list[tuple[Parts, list[tuple[int, int]] | None]],
               stop: Callable[[], bool]) -> tuple[int, int, float]:
    """Read the planned files through the mount at ``root`` so the kernel caches them.

    Returns (files, bytes, seconds). One file at a time: more readers finished sooner
    alone but slowed a short command beside them, and gained nothing for a long one.
    Stops early when ``stop()`` turns true (the mount is being unmounted: an open file
    would make it busy). Missing files are skipped: the container's own changes may
    have removed them.
    """
    started = time.perf_counter()
    files = total = 0
    # O_NONBLOCK: a FIFO where the profile saw a file must not hang the thread (and the unmount)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    for parts, runs in plan:
        if stop():
            break
        got = _read_file(os.path.join(root, *parts), flags, runs, stop)
        files += got >= 0
        total += max(got, 0)
    return files, total, time.perf_counter() - started


def _read_file(path: str, flags: int, runs: list[tuple[int, int]] | None, stop: Callable[[], bool]) -> int:
    """Bytes read, or -1 when the file cannot be opened or read."""
    try:
        fd = os.open(path, flags)
    except OSError:
        return -1
    total = 0
    try:
        if hasattr(os, "posix_fadvise"):  # exactly the noted chunks: the kernel's read-ahead would add more
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for start, end in runs if runs is not None else [(0, 1 << 62)]:
            while start < end and not stop():
                want = min(_READ, end - start)
                data = os.pread(fd, want, start)
                total += len(data)
                if len(data) < want:
                    break
                start += want
    except OSError:
        return -1
    finally:
        os.close(fd)
    return total
