"""Helpers shared by the mount tests (test_overlay.py, test_containers.py).

* :func:`fuse_mounts` / :func:`mounted_under`: FUSE mount points from /proc/self/mountinfo.
* :func:`force_cleanup`: lazy-unmount every FUSE mount under some directories and
  SIGKILL every mount daemon whose log file lives under them (used by the autouse
  fixtures, so a failing test never leaves a mount or a daemon behind).
* :func:`snapshot`: a comparable picture of a directory tree.
* :func:`run_ops`: apply a list of file-system operations, recording result or errno.
* :func:`query`: read the store's SQLite database directly (no vocker import).

This module never imports the ``vocker`` package.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import sqlite3
import stat
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator


# --------------------------------------------------------------------------- mounts and daemons


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def fuse_mounts() -> dict[str, str]:
    """mount point -> fs type, for every FUSE mount visible to this process."""
    out = {}
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            rfields = right.split()
            if rfields and rfields[0].startswith("fuse"):
                out[_unescape(left.split()[4])] = rfields[0]
    return out


def _under(path: str, roots: Iterable[Path | str]) -> bool:
    for root in roots:
        r = os.path.realpath(root)
        if path == r or path.startswith(r.rstrip("/") + "/"):
            return True
    return False


def mounted_under(*roots: Path | str) -> list[str]:
    return sorted(m for m in fuse_mounts() if _under(m, roots))


def proc_mounts_text() -> str:
    return Path("/proc/mounts").read_text()


def daemon_pids(*roots: Path | str) -> list[int]:
    """Live processes with a ``daemon.log`` (a mount daemon's stdout) or a ``warm.log`` (the
    warm-mount service's) under one of ``roots`` open."""
    pids = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{entry}/fd/{fd}")
            except OSError:
                continue
            target = target.removesuffix(" (deleted)")
            if target.endswith(("/daemon.log", "/warm.log")) and _under(target, roots):
                pids.append(int(entry))
                break
    return pids


def force_cleanup(*roots: Path | str) -> list[str]:
    """Lazy-unmount FUSE mounts under ``roots`` and kill their daemons; returns what was left over."""
    leftovers = []
    for mp in mounted_under(*roots):
        leftovers.append(f"mount {mp}")
        subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True, timeout=30)
    for pid in daemon_pids(*roots):
        leftovers.append(f"daemon {pid}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return leftovers


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def query(home: Path, sql: str, *args: object) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(home / "vocker.db", timeout=30)) as db:
        return db.execute(sql, args).fetchall()


def mount_record(home: Path, mountpoint: Path | str) -> tuple[str, int] | None:
    """(container name, daemon pid) recorded for a mount point, or None."""
    rows = query(home, "SELECT container, pid FROM mounts WHERE mountpoint = ?", os.path.realpath(mountpoint))
    return (rows[0][0], rows[0][1]) if rows else None


# --------------------------------------------------------------------------- trees


def _content(data: bytes) -> Any:
    return data if len(data) <= 64 else f"{len(data)}:sha256:{hashlib.sha256(data).hexdigest()}"


def snapshot(root: Path | str, *, mtimes: Iterable[str] = (), owners: bool = False) -> dict[str, tuple]:
    """relative path -> (type, mode & 0o7777, content) for files, (type, mode) for dirs,
    ("link", target) for symlinks; plus the mtime (ns) of the paths in ``mtimes``."""
    root = str(root)
    want_mtime = set(mtimes)
    out: dict[str, tuple] = {}

    def add(path: str, rel: str) -> None:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            item: tuple = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            item = ("dir", oct(st.st_mode & 0o7777))
        elif stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                item = ("file", oct(st.st_mode & 0o7777), _content(f.read()))
        else:
            item = ("other", oct(st.st_mode))
        if rel in want_mtime:
            item += (st.st_mtime_ns,)
        if owners:
            item += (st.st_uid, st.st_gid)
        out[rel] = item

    add(root, ".")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            add(path, os.path.relpath(path, root))
    return out


def diff(a: dict, b: dict, names: tuple[str, str] = ("mount", "plain")) -> list[str]:
    lines = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            lines.append(f"{key}: {names[0]}={a.get(key, '<absent>')!r} {names[1]}={b.get(key, '<absent>')!r}")
    return lines


# --------------------------------------------------------------------------- operations


def _kind(mode: int) -> str:
    return "l" if stat.S_ISLNK(mode) else "d" if stat.S_ISDIR(mode) else "f" if stat.S_ISREG(mode) else "?"


def _stat_tuple(st: os.stat_result) -> tuple:
    kind = _kind(st.st_mode)
    if kind == "f":
        return (kind, oct(st.st_mode & 0o7777), st.st_size, st.st_nlink)
    if kind == "l":
        return (kind, st.st_size)
    return (kind, oct(st.st_mode & 0o7777))


def _read(p: Callable[[str], str], rel: str) -> Any:
    with open(p(rel), "rb") as f:
        return _content(f.read())


def _read_at(p: Callable[[str], str], rel: str, offset: int, size: int) -> Any:
    fd = os.open(p(rel), os.O_RDONLY)
    try:
        return _content(os.pread(fd, size, offset))
    finally:
        os.close(fd)


def _create(p: Callable[[str], str], rel: str, data: bytes = b"", mode: int = 0o644) -> int:
    fd = os.open(p(rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def _open_write(flags: int) -> Callable[..., Any]:
    def op(p: Callable[[str], str], rel: str, offset: int | None = None, data: bytes = b"") -> int:
        fd = os.open(p(rel), flags)
        try:
            if offset is None:
                return os.write(fd, data) if data else 0
            return os.pwrite(fd, data, offset)
        finally:
            os.close(fd)
    return op


def _ftruncate(p: Callable[[str], str], rel: str, length: int) -> None:
    fd = os.open(p(rel), os.O_WRONLY)
    try:
        os.ftruncate(fd, length)
    finally:
        os.close(fd)


def _listdir(p: Callable[[str], str], rel: str) -> list[str]:
    names = os.listdir(p(rel))
    assert len(names) == len(set(names)), f"duplicate names in a listing of {rel}: {sorted(names)}"
    return sorted(names)


def _tree(p: Callable[[str], str], rel: str) -> dict[str, tuple]:
    return snapshot(p(rel))


OPS: dict[str, Callable[..., Any]] = {
    "read": _read,
    "read_at": _read_at,
    "create": _create,
    "write_at": _open_write(os.O_WRONLY),  # (rel, offset, data): pwrite into an existing file
    "append": lambda p, rel, data: _open_write(os.O_WRONLY | os.O_APPEND)(p, rel, None, data),
    "open_trunc": lambda p, rel, data=b"": _open_write(os.O_WRONLY | os.O_TRUNC)(p, rel, None, data),
    "open_rw": lambda p, rel: _open_write(os.O_RDWR)(p, rel),
    "truncate": lambda p, rel, n: os.truncate(p(rel), n),
    "ftruncate": _ftruncate,
    "unlink": lambda p, rel: os.unlink(p(rel)),
    "mkdir": lambda p, rel, mode=0o755: os.mkdir(p(rel), mode),
    "rmdir": lambda p, rel: os.rmdir(p(rel)),
    "rmtree": lambda p, rel: __import__("shutil").rmtree(p(rel)),
    "rename": lambda p, a, b: os.rename(p(a), p(b)),
    "symlink": lambda p, target, rel: os.symlink(target, p(rel)),
    "readlink": lambda p, rel: os.readlink(p(rel)),
    "link": lambda p, a, b: os.link(p(a), p(b), follow_symlinks=False),
    "chmod": lambda p, rel, mode: os.chmod(p(rel), mode),
    "chown": lambda p, rel, uid, gid: os.chown(p(rel), uid, gid, follow_symlinks=False),
    "utime": lambda p, rel, ns: os.utime(p(rel), ns=ns, follow_symlinks=False),
    "stat": lambda p, rel: _stat_tuple(os.stat(p(rel))),
    "lstat": lambda p, rel: _stat_tuple(os.lstat(p(rel))),
    "mtime": lambda p, rel: os.lstat(p(rel)).st_mtime_ns,
    "owner": lambda p, rel: (os.lstat(p(rel)).st_uid, os.lstat(p(rel)).st_gid),
    "exists": lambda p, rel: os.path.lexists(p(rel)),
    "listdir": _listdir,
    "tree": _tree,
}


def run_ops(root: Path | str, ops: Iterable[tuple]) -> list[tuple]:
    """Apply ``ops`` (tuples ``(name, *args)``, paths relative to ``root``) in order.

    Returns one ``("ok", result)`` or ``("err", "ENOENT")`` per operation."""
    root = str(root)

    def p(rel: str) -> str:
        return os.path.join(root, rel) if rel not in ("", ".") else root

    results = []
    for op in ops:
        name, *args = op
        try:
            results.append(("ok", OPS[name](p, *args)))
        except OSError as exc:
            results.append(("err", errno.errorcode.get(exc.errno or 0, str(exc.errno))))
    return results


def compare_ops(ops: list[tuple], got: list[tuple], want: list[tuple]) -> list[str]:
    return [f"#{i} {op!r}: mount={g!r} plain={w!r}" for i, (op, g, w) in enumerate(zip(ops, got, want)) if g != w]


@contextlib.contextmanager
def checked_tmpdir(prefix: str) -> Iterator[Path]:
    """A new directory under the system's temporary directory, for a test that mounts as another
    user there; afterwards it is cleaned of mounts and daemons and removed, and the test fails
    if anything was left behind."""
    where = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield where
    finally:
        wait_for(lambda: not mounted_under(where) and not daemon_pids(where), timeout=3)
        leftovers = force_cleanup(where)
        shutil.rmtree(where, ignore_errors=True)
        assert not leftovers, f"left behind after the test: {leftovers}"
