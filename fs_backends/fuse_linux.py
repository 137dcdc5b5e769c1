"""FUSE driver (mfusepy on libfuse3): translates each FUSE call into a ContainerView call.

Options follow the measurements in shared/research/fuse.md: the kernel keeps file
pages (kernel_cache) and entries/attributes for 60 s, which is safe because every
change to the container goes through this mount; requests run multi-threaded, so a
slow store read does not stall other requests; no flush/ioctl/access handlers, to
save a round trip on every close and open.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import stat
import threading
import time
from typing import Any, Callable

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")  # both libfuse2 and 3 may be installed

import mfusepy as fuse  # noqa: E402

from vocker.view import Attr, ContainerView, Detached, errno_of, split  # noqa: E402

CACHE_SECONDS = 60
#: utimensat's markers, which libfuse passes as tv_nsec with tv_sec 0, so with use_ns mfusepy
#: gives them as these numbers of ns (a time exactly that long after 1970-01-01 reads as them).
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
#: With use_ino, mfusepy gives a bare name inode number 0, which readdir(3) skips as a deleted
#: entry: listings say "unknown" (libfuse's FUSE_UNKNOWN_INO) and stat tells the number.
_UNKNOWN_INO = 0xFFFFFFFF
#: A listing's entry per file type (0: unknown), made once: readdir is a hot path.
_DIRENT = {kind: {"st_mode": kind, "st_ino": _UNKNOWN_INO} for kind in (0, stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK)}
#: libfuse renames a file removed while open (or renamed over while open) to this name
#: and removes that at its last close; the view removes the file at once instead.
HIDDEN = re.compile(r"\.fuse_hidden[0-9a-f]{16}\Z")
#: What an image file held open across a remount is renamed to in the kernel (never in the view).
ASIDE_PREFIX = ".vocker_aside"

_invalidate_path = fuse._libfuse.fuse_invalidate_path
_invalidate_path.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
_invalidate_path.restype = ctypes.c_int
_get_session = fuse._libfuse.fuse_get_session
_get_session.argtypes = (ctypes.c_void_p,)
_get_session.restype = ctypes.c_void_p
_inval_entry = fuse._libfuse.fuse_lowlevel_notify_inval_entry
_inval_entry.argtypes = (ctypes.c_void_p, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t)
_inval_entry.restype = ctypes.c_int
_libc = ctypes.CDLL(None, use_errno=True)


class _FileHandle(ctypes.Structure):  # struct file_handle, with room for FUSE's (at most 24 bytes)
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int), ("f_handle", ctypes.c_ubyte * 64)]


def _node_id(path: str) -> int | None:
    """The FUSE node id the kernel knows ``path`` (in a FUSE mount) by, or None.

    libfuse's high-level API tells no node ids, and dropping a cached name needs its parent's;
    the kernel encodes it as the first 8 bytes of a FUSE file handle (fuse_encode_fh).
    """
    handle = _FileHandle(handle_bytes=64)
    mount_id = ctypes.c_int()
    if _libc.name_to_handle_at(-100, path.encode("utf-8", "surrogateescape"), ctypes.byref(handle),
                               ctypes.byref(mount_id), 0) != 0 or handle.handle_bytes < 8:
        return None
    raw = bytes(handle.f_handle[:8])
    return int.from_bytes(raw[:4], "little") << 32 | int.from_bytes(raw[4:8], "little")


#: libfuse's worker threads are not Python threads, so every callback would create and
#: destroy a Python thread state; taking one extra reference on each worker's first call
#: keeps it (35 % faster warm `find`). Workers are kept alive (max_idle_threads below),
#: so the states kept are bounded by the pool size.
_pinned = threading.local()
_gil_ensure = ctypes.pythonapi.PyGILState_Ensure
MAX_IDLE_THREADS = 16


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Exceptions -> FuseOSError with the view's errno (mfusepy would answer EINVAL and log a
    traceback for anything but an OSError)."""
    def wrapped(*args: Any) -> Any:
        if not getattr(_pinned, "done", False):
            _gil_ensure()
            _pinned.done = True
        try:
            return fn(*args)
        except Exception as exc:
            raise fuse.FuseOSError(errno_of(exc, fn.__name__)) from None
    wrapped.__name__ = fn.__name__
    return wrapped


def _stat(a: Attr) -> dict[str, int]:
    return {"st_mode": a.mode, "st_size": a.size, "st_mtime": a.mtime_ns, "st_atime": a.atime_ns,
            "st_ctime": a.ctime_ns, "st_nlink": a.nlink, "st_uid": a.uid, "st_gid": a.gid,
            "st_blocks": a.blocks, "st_ino": a.ino}


class VockerFS(fuse.Operations):
    use_ns = True

    def __init__(self, view: ContainerView, on_ready: Callable[[], None], mountpoint: str = "") -> None:
        self.view = view
        self.on_ready = on_ready
        self.mountpoint = mountpoint
        self._fuse: Any = None
        self._detached: dict[str, Detached] = {}
        view.invalidate = self._invalidate
        view.invalidate_entry = self._invalidate_entry
        view.move_aside = self._move_aside
        #: names an image file held open across a remount was moved to -> its attributes then
        self._aside: dict[str, dict[str, int]] = {}

    def init(self, path: str) -> None:
        self._fuse = fuse._libfuse.fuse_get_context().contents.fuse
        self.on_ready()

    def _invalidate(self, parts: tuple[str, ...]) -> None:
        """Drop the kernel's cached attributes and pages of a path (libfuse >= 3.1)."""
        if self._fuse is not None:
            _invalidate_path(self._fuse, ("/" + "/".join(parts)).encode("utf-8", "surrogateescape"))

    def _invalidate_entry(self, parts: tuple[str, ...]) -> None:
        """Drop the kernel's cached name ``parts`` (a dentry, or a negative one), and with it
        what it cached below that name; to be called from outside a request of this mount (it
        resolves the parent's node id through the mount)."""
        if self._fuse is None or not parts:
            return
        parent = _node_id(os.path.join(self.mountpoint, *parts[:-1]))
        if parent is not None:
            name = parts[-1].encode("utf-8", "surrogateescape")
            _inval_entry(_get_session(self._fuse), parent, name, len(name))

    def _move_aside(self, parts: tuple[str, ...]) -> None:
        """Rename the kernel's name of an open image file to a hidden one (only libfuse's table
        and the kernel's dentry move; the view is not asked): its inode, page cache and handles
        stay with the processes holding it, and the path's next lookup makes a new inode. To be
        called from outside a request; on a read-only mount (EROFS) the path just goes on."""
        if self._fuse is None or not parts:
            return
        source = os.path.join(self.mountpoint, *parts)
        target = os.path.join(self.mountpoint, *parts[:-1], f"{ASIDE_PREFIX}{os.urandom(8).hex()}")
        try:
            self._aside["/" + os.path.relpath(target, self.mountpoint)] = _stat(self.view.getattr(parts))
            os.rename(source, target)
        except OSError as exc:
            logging.getLogger("vocker.swap").info("cannot keep %s apart for its readers: %s", source, exc)

    @_errors
    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        aside = self._aside.get(path)
        if aside is not None:
            return aside
        try:
            a = self.view.getattr(split(path))
        except FileNotFoundError:
            detached = self._detached.get(path)
            if detached is None:
                raise
            a = detached.getattr()
        return _stat(a)

    @_errors
    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        """Names with their types where the image tells them, so that a walk of the tree looks
        up only directories (and the inode number "unknown": see _DIRENT)."""
        return [(".", _DIRENT[stat.S_IFDIR], 0), ("..", _DIRENT[stat.S_IFDIR], 0),
                *((name, _DIRENT[kind], 0) for name, kind in self.view.readdir_typed(split(path)))]

    @_errors
    def readlink(self, path: str) -> str:
        return self.view.readlink(split(path))

    @_errors
    def open(self, path: str, flags: int) -> int:
        return self.view.open(split(path), flags)

    @_errors
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return self.view.read(fh, size, offset)

    @_errors
    def release(self, path: str, fh: int) -> int:
        self.view.release(fh)
        return 0

    @_errors
    def create(self, path: str, mode: int, flags: int) -> int:
        return self.view.create(split(path), mode, flags)

    @_errors
    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return self.view.write(fh, data, offset)

    @_errors
    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        self.view.truncate(split(path), length, fh)
        return 0

    @_errors
    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self.view.fsync(fh, bool(datasync))
        return 0

    @_errors
    def unlink(self, path: str) -> int:
        detached = self._detached.pop(path, None)
        if detached is not None:  # libfuse, at the last close of a removed file
            detached.close()
            return 0
        self.view.unlink(split(path))
        return 0

    @_errors
    def rmdir(self, path: str) -> int:
        self.view.rmdir(split(path))
        return 0

    @_errors
    def mkdir(self, path: str, mode: int) -> int:
        self.view.mkdir(split(path), mode)
        return 0

    @_errors
    def mknod(self, path: str, mode: int, dev: int) -> int:  # mkfifo, bind() of a Unix socket
        self.view.mknod(split(path), mode)
        return 0

    @_errors
    def rename(self, old: str, new: str) -> int:
        if new in self._aside:  # _move_aside: the kernel's and libfuse's names move, the view's does not
            return 0
        if HIDDEN.search(new):
            if new in self._detached:
                raise OSError(errno.EEXIST, new)
            self._detached[new] = self.view.detach(split(old))
            return 0
        self.view.rename(split(old), split(new))
        return 0

    @_errors
    def symlink(self, target: str, source: str) -> int:  # fusepy: link at `target` pointing to `source`
        self.view.symlink(split(target), source)
        return 0

    @_errors
    def link(self, target: str, source: str) -> int:  # fusepy: hard link `target` to existing `source`
        self.view.link(split(source), split(target))
        return 0

    @_errors
    def chmod(self, path: str, mode: int) -> int:
        self.view.chmod(split(path), mode)
        return 0

    @_errors
    def chown(self, path: str, uid: int, gid: int) -> int:
        self.view.chown(split(path), uid, gid)
        return 0

    @_errors
    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is not None:
            if times == (UTIME_NOW, UTIME_NOW):
                times = None  # the view sets both to now
            else:
                now = time.time_ns()
                times = tuple(now if t == UTIME_NOW else None if t == UTIME_OMIT else t  # type: ignore[assignment]
                              for t in times)
        self.view.utimens(split(path), times)
        return 0

    @_errors
    def statfs(self, path: str) -> dict[str, int]:
        st = self.view.statfs()
        return {k: getattr(st, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                                            "f_ffree", "f_favail", "f_namemax")}


def serve(view: ContainerView, mountpoint: str, *, name: str, read_only: bool, audit: bool,
          on_ready: Callable[[], None], allow_other: bool = False) -> None:
    """Mount and serve until unmounted (blocks); ``allow_other``: for other users too (the
    kernel checks their permissions: default_permissions)."""
    options: dict[str, Any] = {
        "fsname": f"vocker:{name}", "subtype": "vocker", "default_permissions": True,
        "kernel_cache": True, "entry_timeout": CACHE_SECONDS, "attr_timeout": CACHE_SECONDS,
        "negative_timeout": CACHE_SECONDS, "auto_unmount": True, "max_idle_threads": MAX_IDLE_THREADS,
        "use_ino": True,  # st_ino is the view's number (vocker.inodes), not libfuse's per-name one
    }
    if read_only or audit:
        options["ro"] = True
    if audit:
        options.update(noexec=True, nosuid=True, nodev=True)
    if allow_other:
        options["allow_other"] = True
    fuse.FUSE(VockerFS(view, on_ready, mountpoint), mountpoint, foreground=True, nothreads=False, **options)
