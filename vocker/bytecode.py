"""Bytecode as a derived artifact, shared across images and outside image IDs.

A pyc body (the marshalled code object) depends only on the source bytes and the
interpreter's bytecode magic: code objects are compiled with a fixed file name, and
the import system rewrites ``co_filename`` to the real path when it loads them. So
bodies are cached in the store keyed by (source digest, magic), compiled once per
interpreter, and every environment gets ordinary *timestamp* pycs: a 16-byte header
(magic, flags 0, source mtime, source size) in front of the cached body. An edit to
a ``.py`` changes its mtime and size, so Python never runs stale bytecode; an
untouched environment never compiles on first import.

An export compiles what its image's sources lack all at once; a mount compiles a
directory's sources when a pyc of its ``__pycache__`` is first looked up (not when it
is listed), so a first mount is as quick as any other, a walk of the tree compiles
nothing, and an import compiles only what it imports.
"""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import threading
import time
from typing import IO, TYPE_CHECKING, Callable, Iterable

from . import db
from .digest import digest_bytes
from .errors import VockerError
from .parallel import pmap
from .progress import NullReporter, Reporter

if TYPE_CHECKING:
    from .store import Store

#: The file name compiled into code objects; replaced by the real path at import time.
COMPILE_NAME = "<vocker>"

#: Reads length-prefixed sources until EOF and answers each at once (a length of -1: does
#: not compile), so one worker serves a batch or, kept running, a mount's requests.
_WORKER = r"""
import marshal, struct, sys
inp, out = sys.stdin.buffer, sys.stdout.buffer
while len(head := inp.read(4)) == 4:
    source = inp.read(struct.unpack("<I", head)[0])
    try:
        body = marshal.dumps(compile(source, %r, "exec", dont_inherit=True))
    except Exception:
        out.write(struct.pack("<i", -1))
    else:
        out.write(struct.pack("<i", len(body))); out.write(body)
    out.flush()
""" % COMPILE_NAME


#: Sources per compiler process at least; below that, its start-up (~20 ms) dominates.
MIN_CHUNK = 50
#: Compiler processes per job, so that progress moves and the jobs finish together.
CHUNKS_PER_JOB = 8


def compile_sources(python: str, sources: list[bytes], jobs: int | None = None,
                    reporter: Reporter | None = None) -> list[bytes | None]:
    """Compile with the (trusted, host) interpreter ``python``; None where a source does not compile.

    Compiling runs no code from the sources. -I -S keeps the interpreter from loading
    anything from any environment. ``reporter`` counts source bytes compiled (the first
    export of a large image compiles thousands of sources: ~10 s).
    """
    if not sources:
        return []
    reporter = reporter or NullReporter()
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(sources) // MIN_CHUNK or 1))
    per = max(MIN_CHUNK, -(-len(sources) // (jobs * CHUNKS_PER_JOB)))
    chunks = [sources[i:i + per] for i in range(0, len(sources), per)]

    def compile_chunk(chunk: list[bytes]) -> list[bytes | None]:
        result = _compile_chunk(python, chunk)
        reporter.advance(sum(map(len, chunk)))
        return result

    reporter.begin("Compiling bytecode", sum(map(len, sources)))
    try:
        results = pmap(compile_chunk, chunks, workers=jobs)
    finally:
        reporter.end()
    return [body for chunk_result in results for body in chunk_result]


def _worker_command(python: str) -> list[str]:
    return [python, "-I", "-S", "-c", _WORKER]


def _frames(sources: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(s)) + s for s in sources)


def _compile_chunk(python: str, sources: list[bytes]) -> list[bytes | None]:
    try:
        proc = subprocess.run(_worker_command(python), input=_frames(sources), capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise VockerError(f"compiling bytecode with {python} failed: {exc}") from None
    data, pos, out = proc.stdout, 0, []
    for _ in sources:
        (n,) = struct.unpack_from("<i", data, pos)
        pos += 4
        if n < 0:
            out.append(None)
        else:
            out.append(data[pos:pos + n])
            pos += n
    return out


class Compiler:
    """One compiler process kept for a mount, which compiles a directory's sources when
    a pyc of its ``__pycache__`` is first looked up (a process per directory would add ~20 ms
    to each). Thread-safe; the process ends with the mount (EOF on its stdin).

    A source the process dies on twice counts as one that does not compile, so one bad
    file cannot keep its directory from being cached; a process that cannot start is
    an error (nothing is recorded then)."""

    def __init__(self, python: str) -> None:
        self.python = python
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def __call__(self, sources: list[bytes]) -> list[bytes | None]:
        with self._lock:
            return [self._compile_retrying(source) for source in sources]

    def _compile_retrying(self, source: bytes) -> bytes | None:
        for _ in range(2):
            try:
                return self._compile(self._running(), source)
            except (OSError, ValueError, struct.error):  # died, or garbled: the next try starts anew
                self._stop()
        try:  # this source, or any? Only a working compiler may record that a source does not compile.
            self._compile(self._running(), b"")
        except (OSError, ValueError, struct.error):
            self._stop()
            raise VockerError(f"{self.python} does not work as a bytecode compiler") from None
        return None

    def _running(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            try:
                self._proc = subprocess.Popen(_worker_command(self.python), stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            except OSError as exc:
                raise VockerError(f"cannot start {self.python} to compile bytecode: {exc.strerror or exc}") from None
        return self._proc

    @staticmethod
    def _compile(proc: subprocess.Popen[bytes], source: bytes) -> bytes | None:
        """One source at a time: a batch could fill both pipes and deadlock."""
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(_frames([source]))
        proc.stdin.flush()
        (n,) = struct.unpack("<i", _read_exactly(proc.stdout, 4))
        return None if n < 0 else _read_exactly(proc.stdout, n)

    def _stop(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            self._proc.wait()
            self._proc = None

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                with contextlib.suppress(OSError):
                    self._proc.stdin.close()  # type: ignore[union-attr]
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=5)
                self._stop()


def _read_exactly(f: IO[bytes], n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError("the compiler process ended")
    return data


def ensure_cached(store: "Store", magic: str, compile: Callable[[list[bytes]], list[bytes | None]],
                  sources: dict[str, Callable[[], bytes]], wait_ms: int = db.BUSY_MS,
                  ) -> tuple[dict[str, str | None], dict[str, bytes | None]]:
    """Make the store hold bytecode for every source digest in ``sources`` (digest -> reader).

    ``compile`` turns sources into bodies (``compile_sources`` for a batch, a ``Compiler``
    for a mount). Returns (cached: digest -> pyc blob or None, fresh: digest -> body or
    None for what was compiled now). None marks a source that does not compile with
    this interpreter. ``wait_ms`` bounds the wait for another writer of the store.
    """
    known = store.cached_pycs(magic, sources)
    store.blob_infos(d for d in known.values() if d is not None)

    def read(digest: str) -> bytes | None:
        try:
            return sources[digest]()
        except VockerError:
            return None  # an unreadable (corrupt) source: no bytecode now, EIO when it is read

    missing = sorted(set(sources) - set(known))
    todo, texts = [], []
    for d, text in zip(missing, pmap(read, missing)):  # decompressing releases the GIL
        if text is not None:
            todo.append(d)
            texts.append(text)
    fresh: dict[str, bytes | None] = {}
    if todo:
        fresh = dict(zip(todo, compile(texts)))
        store.put_blobs({digest_bytes(b): b for b in fresh.values() if b is not None},
                        pycs=(magic, {d: (digest_bytes(b) if b is not None else None) for d, b in fresh.items()}),
                        wait_ms=wait_ms)
    return known, fresh


def shipped_mtime(created: float, now: float | None = None) -> int:
    """The whole-second mtime given to an image's files: its creation time, but always in the past.

    A timestamp pyc matches its source by (whole-second mtime, size). An edit that keeps
    the size and lands in the recorded second would still match and run stale bytecode,
    so the recorded second is never the current one: every later edit gets a newer second.
    """
    return min(int(created), int(time.time() if now is None else now) - 1)


def pyc_header(magic_hex: str, mtime: float, size: int) -> bytes:
    """Header of a timestamp-validated pyc (PEP 552 flags = 0)."""
    return bytes.fromhex(magic_hex) + struct.pack("<III", 0, int(mtime) & 0xFFFFFFFF, size & 0xFFFFFFFF)


def pyc_name(source_name: str, cache_tag: str) -> str:
    """``mod.py`` -> ``mod.cpython-311.pyc`` (the file goes in ``__pycache__``)."""
    return f"{source_name[:-3]}.{cache_tag}.pyc"


def in_lib(dir_parts: Iterable[str], lib: str) -> bool:
    """Whether a directory is (below) the venv's lib dir, where imports compile sources."""
    parts = tuple(dir_parts)
    lib_parts = tuple(lib.split("/"))
    return parts[:len(lib_parts)] == lib_parts


def wants_pyc(rel_parts: Iterable[str], lib: str) -> bool:
    """Sources the import system will compile: ``.py`` files under the venv's lib dir."""
    parts = tuple(rel_parts)
    return parts[-1].endswith(".py") and in_lib(parts[:-1], lib)


def inline_digest(data: bytes | None) -> str:
    """Cache key of an inlined source (stored in its tree node, not as a blob)."""
    return digest_bytes(data or b"")
