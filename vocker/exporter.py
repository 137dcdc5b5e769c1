"""Materialise an image as a working directory (the fallback where no mount exists).

Everything is written into a scratch directory and renamed into place at the end, so
an interrupted export never leaves a half-made environment under the requested name;
the scratch directory is where gc or the next export finds it (scratch.py). Large
files are streamed chunk by chunk, so memory does not grow with their size. Nothing is written outside it: names come validated from
the tree decoder, files are created with O_EXCL|O_NOFOLLOW, and symlinks that could
point outside are refused.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

import attrs

from . import blobstore, bytecode, layerstack, scratch, template, walk
from .errors import UsageError, VockerError
from .manifest import PythonFacts
from .parallel import pmap
from .progress import NullReporter, Reporter
from .pythons import find_interpreter
from .scaffold import Link, scaffold
from .store import Store
from .tree import Entry, Kind
from .ui import human_size

Rel = tuple[str, ...]
_O_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


@attrs.frozen
class ExportResult:
    image_id: str
    dest: Path
    files: int
    size: int
    pycs: int
    compiled: int
    interpreter: str | None
    seconds: float


def export_image(store: Store, ref: str, dest: Path, *, audit: bool = False, python: Path | None = None,
                 reporter: Reporter | None = None) -> ExportResult:
    started = time.perf_counter()
    reporter = reporter or NullReporter()
    image_id = store.resolve(ref)
    manifest = store.manifest(image_id)
    record = store.image(image_id)
    dest = dest.absolute()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(f"destination exists and is not an empty directory: {dest}")
    facts = manifest.python if manifest.kind == "venv" and not audit else None
    interpreter = find_interpreter(facts, record.provenance.get("base_interpreter"), python) if facts else None
    root = os.fsencode(str(dest))
    mtime_ns = bytecode.shipped_mtime(record.created) * 10**9  # as in a mount; pycs depend on it
    made = next((p for p in reversed(dest.parents) if not p.exists()), None)  # outermost parent we create
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with store.lock_shared():  # held until the rename: gc removes only a dead export's scratch
            scratch.remove_stale(store)
            tree = layerstack.flat_root(store, manifest)
            size = walk.check_limits(store, tree)
            with scratch.for_export(store, dest) as tmp:
                _check_space(tmp, dest.parent, size.size, size.entries)
                entries = list(walk.iter_entries(store, tree))
                files, pycs, compiled = _fill(store, entries, ref, tmp, root, audit, facts, interpreter, mtime_ns,
                                              reporter)
                umask = os.umask(0)
                os.umask(umask)
                tmp.chmod(0o777 & ~umask)  # mkdtemp made it private; give it a normal directory's mode
                os.replace(tmp, dest)
    except BaseException:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise
    return ExportResult(image_id, dest, len(files), sum(e.size for _, e in files), pycs, compiled,
                        interpreter["executable"] if interpreter else None, time.perf_counter() - started)


def _fill(store: Store, entries: list[tuple[Rel, Entry]], ref: str, tmp: Path, root: bytes, audit: bool,
          facts: PythonFacts | None, interpreter: dict[str, str] | None, mtime_ns: int,
          reporter: Reporter) -> tuple[list[tuple[Rel, Entry]], int, int]:
    """Write the image's entries (and scaffolding and pycs) into ``tmp``."""
    files: list[tuple[Rel, Entry]] = [(rel, e) for rel, e in entries if e.kind is Kind.FILE]
    base = str(tmp)
    for rel, entry in entries:
        target = os.path.join(base, *rel)
        if entry.kind is Kind.DIR:
            os.mkdir(target, 0o755)
        elif entry.kind is Kind.SYMLINK:
            assert entry.target is not None
            if audit and walk.escapes(rel, entry.target):
                _write_file(target, walk.link_placeholder(entry.target), 0o644, mtime_ns)
            else:
                walk.check_link(rel, entry.target)
                os.symlink(entry.target, target)
    reporter.begin(f"Exporting {ref}", sum(e.size for _, e in files))
    store.blob_infos(e.digest for _, e in files if e.digest is not None)  # one query, not one per file

    def write(item: tuple[Rel, Entry]) -> None:
        rel, entry = item
        mode = 0o755 if entry.executable and not audit else 0o644
        path = os.path.join(base, *rel)
        if entry.digest is not None and entry.size > blobstore.STREAM_MIN:
            rendered = None if audit else root
            _write_stream(store, path, entry, mode, mtime_ns,
                          (lambda pieces: template.render_stream(pieces, rendered)) if entry.template else None)
        else:
            data = store.read_content(entry)
            if entry.template:
                parts = template.decode(data)
                data = template.render_placeholders(parts) if audit else template.render(parts, root)
            _write_file(path, data, mode, mtime_ns)
        reporter.advance(entry.size)

    try:
        pmap(write, files)
    finally:
        reporter.end()
    pycs = compiled = 0
    if facts is not None and interpreter is not None:
        # the export's own scratch: what a kill leaves there goes with it
        for rel, item in scaffold(os.fsdecode(root), facts, interpreter, scratch=str(tmp)).items():
            path = tmp / rel
            if path.exists() or path.is_symlink():
                continue  # the image's own file wins
            if isinstance(item, Link):
                os.symlink(item.target, path)
            else:
                _write_file(path, item.data, 0o755 if item.executable else 0o644)
        pycs, compiled = _write_pycs(store, tmp, files, facts.magic, facts.cache_tag, facts.lib,
                                     interpreter["executable"], reporter)
    return files, pycs, compiled


def _write_stream(store: Store, path: str, entry: Entry, mode: int, mtime_ns: int,
                  render: Callable[[Iterator[bytes]], Iterator[bytes]] | None = None) -> None:
    """Write a large blob chunk by chunk, each checked as it is read (through ``render``
    for a template). Chunks of zeros are left as holes, so a sparse file comes out sparse
    (at the chunk's granularity)."""
    info = store.content_info(entry)
    reader = store.blobs.reader(info.digest, info.codec, info.size, store.blob_chunks(info), None)
    try:
        pieces = reader.iter_chunks() if render is None else render(reader.iter_chunks())
        fd = _create(path, mode)
        with os.fdopen(fd, "wb") as f:
            zero = bytes(blobstore.CHUNK)
            for piece in pieces:
                if len(piece) == len(zero) and piece == zero:
                    f.seek(len(piece), os.SEEK_CUR)
                else:
                    f.write(piece)
            f.truncate(f.tell())
            f.flush()
            os.utime(fd, ns=(mtime_ns, mtime_ns))
    finally:
        reader.close()


def _check_space(where: Path, dest_dir: Path, size: int, entries: int) -> None:
    """Refuse before writing anything when the image cannot fit (its files, plus a block per
    entry): a tiny tree of repeated directories can name terabytes."""
    try:
        st = os.statvfs(where)
    except (OSError, AttributeError):
        return
    need = size + entries * st.f_frsize
    free = st.f_bavail * st.f_frsize
    if need > free:
        raise VockerError(f"the image needs {human_size(need)} and {dest_dir} has {human_size(free)} free; "
                          "nothing was written")
    if st.f_files and entries > st.f_favail:
        raise VockerError(f"the image has {entries:,} entries and {dest_dir} has room for {st.f_favail:,} more; "
                          "nothing was written")


def _create(path: str | Path, mode: int) -> int:
    try:
        return os.open(path, _O_FLAGS, mode)
    except FileExistsError:
        raise VockerError(f"refusing to overwrite {path} while exporting") from None


def _write_file(path: str | Path, data: bytes, mode: int, mtime_ns: int | None = None) -> None:
    fd = _create(path, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        if mtime_ns is not None:
            f.flush()
            os.utime(fd, ns=(mtime_ns, mtime_ns))


def _write_pycs(store: Store, tmp: Path, files: list[tuple[Rel, Entry]], magic: str, cache_tag: str, lib: str,
                python: str, reporter: Reporter) -> tuple[int, int]:
    """Write a timestamp pyc beside every library source; compile only what no image had before."""
    sources = [(rel, e.digest or bytecode.inline_digest(e.inline)) for rel, e in files
               if not e.template and bytecode.wants_pyc(rel, lib)]
    base = str(tmp)
    readers = {d: Path(base, *rel).read_bytes for rel, d in sources}
    known, fresh = bytecode.ensure_cached(
        store, magic, lambda texts: bytecode.compile_sources(python, texts, reporter=reporter), readers)

    def write(item: tuple[Rel, str]) -> int:
        rel, digest = item
        body = fresh[digest] if digest in fresh else (store.read_blob(known[digest]) if known[digest] else None)  # type: ignore[arg-type]
        if body is None:
            return 0  # does not compile with this interpreter: Python reports it on import, as usual
        folder = os.path.join(base, *rel[:-1])
        st = os.stat(os.path.join(folder, rel[-1]))
        cache_dir = os.path.join(folder, "__pycache__")
        with contextlib.suppress(FileExistsError):
            os.mkdir(cache_dir, 0o755)
        _write_file(os.path.join(cache_dir, bytecode.pyc_name(rel[-1], cache_tag)),
                    bytecode.pyc_header(magic, st.st_mtime, st.st_size) + body, 0o644)
        return 1

    return sum(pmap(write, sources)), len(fresh)
