"""A container's filesystem, independent of any mount driver.

The view merges, like kernel overlayfs and OCI layers:
- the *lower* layer: the image as vocker.imagelayer serves it (its tree read straight
  from the store, plus rendered templates, venv scaffolding and cached bytecode);
- the *upper* layer: a plain directory that receives every change. Deletions are
  OCI whiteouts (an empty ``.wh.<name>``), a re-created directory is marked
  opaque (``.wh..wh..opq``), so the layer exports losslessly as an OCI layer.

Paths are tuples of names. Methods raise OSError with an errno, which drivers
(FUSE, WinFsp) pass on. Everything that changes the upper layer goes through
here, which is what lets the in-memory index of it (and the kernel's long cache
timeouts) stay exact.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import secrets
import shutil
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Callable, Iterator, Union

import attrs

from . import bytecode
from .blobstore import BlobReader
from .errors import VockerError
from .imagelayer import ImageLayer, Lower, Parts, refuse_escaping, split  # noqa: F401 (split: for drivers)
from .imagelayer import os_error as _err
from .inodes import LinkIndex, Numbers
from .manifest import Manifest
from .readahead import Recorder
from .store import Store
from .tree import Kind

log = logging.getLogger("vocker.view")

#: The longest name of a path component, in bytes (UTF-8), as on the disks of Linux and macOS.
NAME_MAX = 255
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_FILE_TYPE = {Kind.FILE: stat.S_IFREG, Kind.DIR: stat.S_IFDIR, Kind.SYMLINK: stat.S_IFLNK}


def errno_of(exc: Exception, operation: str) -> int:
    """The errno a driver answers for an exception of a view call.

    A damaged store (a corrupt or hostile tree, a malformed database) is EIO with one log
    line naming what is wrong, never EINVAL and a traceback; an unexpected exception is a
    bug, logged with its traceback, and EIO too.
    """
    if isinstance(exc, OSError):
        return exc.errno or errno.EIO
    if isinstance(exc, (VockerError, sqlite3.Error)):
        log.error("%s: %s", operation, exc)
    else:
        log.exception("%s: internal error", operation)
    return errno.EIO




@attrs.define
class UpperDir:
    names: set[str]
    whiteouts: set[str]
    opaque: bool


@attrs.frozen
class Found:
    upper: bool  # present in the upper layer
    lower: Lower | None  # visible in the lower layer (even when the upper one shadows it)
    lower_below: bool  # lower children of this directory are visible (a directory of the image, not opaque)

    @property
    def kind_is_dir_lower(self) -> bool:
        return self.lower is not None and self.lower.kind is Kind.DIR


@attrs.frozen
class Attr:
    mode: int
    size: int
    mtime_ns: int
    atime_ns: int
    ctime_ns: int
    nlink: int
    uid: int
    gid: int
    blocks: int  # 512-byte blocks allocated: du counts them, and tar --sparse takes fewer for holes
    ino: int     # the node's number for the mount's lifetime (vocker.inodes)

    @classmethod
    def of(cls, st: os.stat_result, ino: int) -> "Attr":
        return cls(st.st_mode, st.st_size, st.st_mtime_ns, st.st_atime_ns, st.st_ctime_ns, st.st_nlink,
                   st.st_uid, st.st_gid, st.st_blocks, ino)


@attrs.define
class Detached:
    """A removed file that is still open somewhere, with what an fstat of it needs."""
    attr: Attr | None  # a lower file's attributes (it cannot change without a copy-up)
    fd: int = -1       # else a descriptor of the removed upper file, for its current attributes
    #: the upper file's number, as getattr showed it before the removal
    number: Callable[[os.stat_result], int] = attrs.field(default=lambda st: st.st_ino)

    def getattr(self) -> Attr:
        if self.fd < 0:
            return self.attr  # type: ignore[return-value]
        st = os.fstat(self.fd)
        return Attr.of(st, self.number(st))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@attrs.define
class _UpperHandle:
    fd: int
    parts: Parts = ()
    written: bool = False
    #: opened for writing while it has other names: each write refreshes them in the kernel
    linked: bool = False


@attrs.define
class _LowerHandle:
    data: bytes | None
    reader: BlobReader | None
    parts: Parts = ()
    #: not loaded yet: with the kernel's page cache warm, most opens never read
    node: Lower | None = None
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    #: set once the file was copied up: reads then see the writable copy, as overlayfs does
    upper_fd: int = -1


Handle = Union[_UpperHandle, _LowerHandle]


def _same_file(a: str, b: str, dir_fd: int) -> bool:
    sa, sb = os.lstat(a, dir_fd=dir_fd), os.lstat(b, dir_fd=dir_fd)
    return (sa.st_ino, sa.st_dev) == (sb.st_ino, sb.st_dev)


def _check_name(name: str, parts: Parts) -> None:
    """ENAMETOOLONG for a name a plain disk refuses, in a lookup as in a creation (not ENOENT)."""
    # a str of up to 63 characters is at most 252 bytes in UTF-8 (or with surrogate escapes)
    if len(name) > NAME_MAX // 4 and len(os.fsencode(name)) > NAME_MAX:
        raise _err(errno.ENAMETOOLONG, parts)


class ContainerView:
    def __init__(self, store: Store, image_id: str, root: str, upper: Path | None, *,
                 interpreter: dict[str, str] | None = None, mtime_ns: int | None = None,
                 audit: bool = False) -> None:
        """``root`` is where the view is mounted (templates render for it); ``upper`` None: read-only.

        ``interpreter`` (probe info of a host Python) enables venv scaffolding and bytecode;
        ``audit`` shows templates with placeholders and no exec bits, as ``export --audit``.
        """
        self.audit = audit
        self.store = store
        self.manifest: Manifest = store.manifest(image_id)
        record = store.image(image_id)
        self.mtime_ns = mtime_ns if mtime_ns is not None else bytecode.shipped_mtime(record.created) * 10**9
        self.image = ImageLayer(store, self.manifest, root, self.mtime_ns, interpreter=interpreter, audit=audit)
        self.upper = upper
        self.work = upper.parent / "work" if upper is not None else None
        if self.work is not None:
            self.work.mkdir(parents=True, exist_ok=True)
        # Every upper-layer call is relative to these descriptors, held for the view's life: a
        # path inside the mount may then be as long as on a plain disk, whatever the layer's own
        # path (the kernel limits each path passed to 4095 bytes).
        flags = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
        self._ufd = os.open(upper, flags) if upper is not None else -1
        self._wfd = os.open(self.work, flags) if self.work is not None else -1
        self.uid, self.gid = os.getuid(), os.getgid()
        self._lock = threading.RLock()
        self._upper_dirs: dict[Parts, UpperDir | None] = {}
        self._handles: dict[int, Handle] = {}
        self._gen = 0  # even: no change in progress
        # Plain dicts (atomic under the GIL, unlike an LRU) read by every FUSE thread; bounded by clearing.
        # An entry stays true until a change drops it (_forget): see find.
        self._found: dict[Parts, Found] = {}
        self._next = itertools.count(1)
        #: Called with the other names of a hard-linked upper file after it changed, so
        #: the driver can drop the kernel's cached pages and attributes for them.
        self.invalidate: Callable[[Parts], None] | None = None
        #: Called (by warm mounts, from outside any request) to drop the kernel's cached name of a path.
        self.invalidate_entry: Callable[[Parts], None] | None = None
        #: Called (by a remount, from outside any request) to move the kernel's name of an image file
        #: held open aside, so that the path's next lookup gets a new inode (vocker.swap).
        self.move_aside: Callable[[Parts], None] | None = None
        #: Notes lower-layer reads for the image's read-ahead profile while set (vocker.readahead).
        self.recorder: Recorder | None = None
        self._numbers = Numbers()
        self._links = LinkIndex(self._ufd) if upper is not None else None

    # -- the upper layer -------------------------------------------------------

    def _upath(self, parts: Parts) -> str:
        """``parts`` relative to the upper layer's root: for calls with ``dir_fd=self._ufd``."""
        assert self.upper is not None
        return "/".join(parts) or "."

    def _upper_dir(self, parts: Parts) -> UpperDir | None:
        if self.upper is None:
            return None
        try:
            return self._upper_dirs[parts]
        except KeyError:
            pass
        try:  # O_NOFOLLOW: an upper symlink is never a directory of the view
            fd = os.open(self._upath(parts), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                         | getattr(os, "O_CLOEXEC", 0), dir_fd=self._ufd)
        except (FileNotFoundError, NotADirectoryError, OSError):
            ud = None
        else:
            try:
                names = os.listdir(fd)
            finally:
                os.close(fd)
            wh = {n[len(WHITEOUT):] for n in names if n.startswith(WHITEOUT) and n != OPAQUE}
            ud = UpperDir({n for n in names if not n.startswith(WHITEOUT)}, wh, OPAQUE in names)
        self._upper_dirs[parts] = ud
        return ud

    @contextlib.contextmanager
    def _mutating(self) -> Iterator[None]:
        """Serialise changes; the generation, odd while one runs, tells find that a lookup
        overlapped a change and must not be memoised."""
        with self._lock:
            self._gen += 1
            try:
                yield
            finally:
                self._gen += 1

    def _forget(self, parts: Parts) -> None:
        """Drop the memoised lookup of a node a change is making, removing or replacing (what
        its children look like does not change: for that, _forget_all)."""
        self._found.pop(parts, None)

    def _forget_all(self) -> None:
        """A change that may alter a whole subtree's lookups (a directory removed, moved or made
        opaque): rare, so every memoised lookup goes."""
        self._found.clear()

    def _add_name(self, parts: Parts, kind_dir: bool = False) -> None:
        """``parts`` now exists in the upper layer (its parent directory does)."""
        self._upper_dir(parts[:-1]).names.add(parts[-1])  # type: ignore[union-attr]
        if kind_dir:
            self._upper_dirs[parts] = UpperDir(set(), set(), False)
        else:  # known not to be a directory: no lookup has to try opening it as one
            self._upper_dirs[parts] = None
        self._forget(parts)

    def _discard_name(self, parts: Parts) -> None:
        """``parts`` no longer exists in the upper layer."""
        self._upper_dir(parts[:-1]).names.discard(parts[-1])  # type: ignore[union-attr]
        self._forget(parts)

    def _upper_is_dir(self, parts: Parts) -> bool:
        return self._upper_dir(parts) is not None

    def find(self, parts: Parts) -> Found:
        """Where ``parts`` lives; ENOENT/ENOTDIR like a lookup would. No syscalls once warm.

        Memoised: each change drops the lookups it alters (_forget), so the rest stay warm.
        A lookup is kept only if no change overlapped it: none ran when it started (an even
        generation) nor since (the same generation once stored; else it is dropped again,
        as the change may have come after its own _forget).
        """
        found = self._found.get(parts)
        if found is not None:
            return found
        gen = self._gen
        found = self._find(parts)
        if gen % 2 == 0:
            if len(self._found) > 200_000:
                self._found.clear()
            self._found[parts] = found
            if self._gen != gen:
                self._found.pop(parts, None)
        return found

    def _find(self, parts: Parts) -> Found:
        """One step from the parent's (memoised) Found: the kernel looks a parent up before
        its children, so a lookup costs the same at any depth."""
        if not parts:
            own = self._upper_dir(()) if self.upper is not None else None
            return Found(own is not None, self.image.root, not (own is not None and own.opaque))
        _check_name(parts[-1], parts)
        parent = self.find(parts[:-1])
        lower_ok = parent.lower_below
        if parent.upper:
            ud = self._upper_dir(parts[:-1])
            if ud is None:
                raise _err(errno.ENOTDIR, parts)  # an upper file or symlink in the middle of the path
            if parts[-1] in ud.whiteouts:
                raise _err(errno.ENOENT, parts)
            in_upper = parts[-1] in ud.names
        else:
            if parent.lower is None or parent.lower.kind is not Kind.DIR:
                raise _err(errno.ENOTDIR, parts)
            in_upper = False
        lower = self.image.node(parts) if lower_ok else None
        if not in_upper and lower is None:
            raise _err(errno.ENOENT, parts)
        own = self._upper_dir(parts) if in_upper else None
        # below a name with no directory of the image (new, or an image file), nothing of the image shows:
        # lookups under it need not ask the image (which would walk up to the nearest directory it has)
        return Found(in_upper, lower, lower_ok and lower is not None and lower.kind is Kind.DIR
                     and not (own is not None and own.opaque))

    # -- reading ---------------------------------------------------------------

    def getattr(self, parts: Parts) -> Attr:
        found = self.find(parts)
        if found.upper:
            st = os.lstat(self._upath(parts), dir_fd=self._ufd)
            if stat.S_ISDIR(st.st_mode) and found.kind_is_dir_lower and found.lower_below:
                # a directory of the image, copied up to hold changes: still that directory
                return Attr.of(st, self._numbers.image(parts))
            return Attr.of(st, self._numbers.upper(st))
        node = found.lower
        assert node is not None
        refuse_escaping(node, parts)
        if node.kind is Kind.FILE and node.entry is not None and node.entry.digest is not None \
                and not node.entry.template:
            self.image.check_size(parts, node.entry)
        if node.kind is Kind.DIR:
            mode = stat.S_IFDIR | 0o755
        elif node.kind is Kind.SYMLINK:
            mode = stat.S_IFLNK | 0o777
        else:
            mode = stat.S_IFREG | (0o755 if node.executable and not self.audit else 0o644)
        t = self.mtime_ns
        size = self.image.size(node)
        # as ext4 shows them: a directory's one block of 4 KiB, a short symlink held in its inode
        blocks = 8 if node.kind is Kind.DIR else 0 if node.kind is Kind.SYMLINK else -(-size // 512)
        return Attr(mode, size, t, t, t, 2 if node.kind is Kind.DIR else 1, self.uid, self.gid, blocks,
                    self._numbers.image(parts))

    def readdir(self, parts: Parts) -> list[str]:
        return [name for name, _ in self.readdir_typed(parts)]

    def readdir_typed(self, parts: Parts) -> list[tuple[str, int]]:
        """The merged listing, sorted, with each name's file type (its S_IFMT bits) where the
        image alone tells it, else 0 (unknown: the kernel looks the name up if it needs it).
        With types, a walk of the tree (find, os.walk) looks up only directories, and a pyc
        listed but not compiled yet stays so until something opens or stats it."""
        found = self.find(parts)
        upper: set[str] = set()
        hidden: set[str] = set()
        if found.upper:
            ud = self._upper_dir(parts)
            if ud is None:
                raise _err(errno.ENOTDIR, parts)
            upper, hidden = ud.names, ud.whiteouts
        elif found.lower is None or found.lower.kind is not Kind.DIR:
            raise _err(errno.ENOTDIR, parts)
        lower = (self.image.children(parts) or {}) if found.lower_below and found.kind_is_dir_lower else {}
        names = upper | (lower.keys() - hidden)
        return [(n, _FILE_TYPE[lower[n].kind] if n in lower and n not in upper else 0) for n in sorted(names)]

    def listing_may_change(self, parts: Parts) -> bool:
        """Whether the listing of directory ``parts`` may change with no change through the mount
        (so a driver must not let the kernel cache it): a generated __pycache__ that lists pycs
        not compiled yet, of which one that fails to compile goes once its directory is compiled."""
        found = self.find(parts)
        if not (found.lower_below and found.lower is not None and found.lower.pyc_dir is not None):
            return False
        return any(node.pyc_pending for node in (self.image.children(parts) or {}).values())

    def readlink(self, parts: Parts) -> str:
        found = self.find(parts)
        if found.upper:
            return os.readlink(self._upath(parts), dir_fd=self._ufd)
        if found.lower is None or found.lower.kind is not Kind.SYMLINK:
            raise _err(errno.EINVAL, parts)
        refuse_escaping(found.lower, parts)
        return found.lower.target or ""

    def open(self, parts: Parts, flags: int) -> int:
        writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND)
        if writing:
            self._writable(parts)
            with self._mutating():
                self._copy_up(parts, self.find(parts))
        found = self.find(parts)
        if found.upper:
            fd = os.open(self._upath(parts), flags & ~os.O_CREAT & ~os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                         dir_fd=self._ufd)
            handle: Handle = _UpperHandle(fd, parts, written=bool(flags & os.O_TRUNC))
            if writing:
                st = os.fstat(fd)
                handle.linked = st.st_nlink > 1
                if flags & os.O_TRUNC:
                    self._invalidate_links(parts, st)
        else:
            assert found.lower is not None
            if found.lower.kind is Kind.DIR:
                raise _err(errno.EISDIR, parts)
            handle = _LowerHandle(None, None, parts, found.lower)
        fh = next(self._next)
        self._handles[fh] = handle
        return fh

    def read(self, fh: int, size: int, offset: int) -> bytes:
        h = self._handles[fh]
        if isinstance(h, _UpperHandle):
            return os.pread(h.fd, size, offset)
        if h.upper_fd >= 0:
            return os.pread(h.upper_fd, size, offset)
        if h.node is not None:  # first read: load (and verify) now
            with h.lock:
                if h.node is not None:
                    if h.parts:
                        self.image.prefetch_infos(h.parts[:-1])
                    h.data, h.reader = self.image.open(h.node)
                    h.node = None
        recorder = self.recorder
        if recorder is not None and h.parts:
            recorder.note(h.parts, offset, size, None if h.data is None else len(h.data))
        if h.data is not None:
            return h.data[offset:offset + size]
        assert h.reader is not None
        try:
            return h.reader.pread(size, offset)
        except VockerError as exc:
            log.error("%s", exc)  # names the digest: the operator can run vocker verify
            raise _err(errno.EIO) from None

    def release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        if isinstance(h, _UpperHandle):
            try:
                if h.written:
                    self._invalidate_links(h.parts, os.fstat(h.fd))
            finally:
                os.close(h.fd)
        elif h is not None:
            if h.reader is not None:
                h.reader.close()
            if h.upper_fd >= 0:
                os.close(h.upper_fd)

    def statfs(self) -> os.statvfs_result:
        return os.statvfs(self._ufd if self.upper is not None else self.store.root)

    # -- writing ---------------------------------------------------------------

    def _writable(self, parts: Parts = ()) -> None:
        if self.upper is None:
            raise _err(errno.EROFS, parts)

    def _check_new_name(self, parts: Parts) -> None:
        if parts:
            _check_name(parts[-1], parts)
        if not parts or parts[-1].startswith(WHITEOUT):
            raise _err(errno.EINVAL, parts)  # reserved for whiteouts, as in OCI layers

    def _ensure_upper_dir(self, parts: Parts) -> None:
        """Make ``parts`` (a directory of the merged view) exist in the upper layer."""
        for i in range(len(parts)):
            parent, name = parts[:i], parts[i]
            ud = self._upper_dir(parent)
            assert ud is not None
            if name not in ud.names:
                os.mkdir(self._upath(parts[:i + 1]), 0o755, dir_fd=self._ufd)
                self._add_name(parts[:i + 1], kind_dir=True)

    def _copy_up(self, parts: Parts, found: Found) -> None:
        """Give the upper layer its own copy of a lower-only node, keeping mode and content."""
        if found.upper:
            return
        node = found.lower
        assert node is not None and self.work is not None
        refuse_escaping(node, parts)
        self._ensure_upper_dir(parts[:-1])
        target = self._upath(parts)
        if node.kind is Kind.DIR:
            os.mkdir(target, 0o755, dir_fd=self._ufd)
        elif node.kind is Kind.SYMLINK:
            os.symlink(node.target or "", target, dir_fd=self._ufd)
        else:
            data, reader = self.image.open(node)
            tmp = f"copy-up-{secrets.token_hex(8)}"  # in work/: the copy appears whole or not at all
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600,
                             dir_fd=self._wfd)
                with os.fdopen(fd, "wb") as f:
                    if data is not None:
                        f.write(data)
                    else:
                        assert reader is not None
                        offset = 0
                        while chunk := reader.pread(1 << 20, offset):
                            f.write(chunk)
                            offset += len(chunk)
                    f.flush()
                    os.fchmod(fd, 0o755 if node.executable else 0o644)
                    os.utime(fd, ns=(self.mtime_ns, self.mtime_ns))
                os.rename(tmp, target, src_dir_fd=self._wfd, dst_dir_fd=self._ufd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=self._wfd)
                raise
            finally:
                if reader is not None:
                    reader.close()
        self._add_name(parts, kind_dir=node.kind is Kind.DIR)
        if node.kind is Kind.FILE:
            for h in list(self._handles.values()):
                if isinstance(h, _LowerHandle) and h.parts == parts and h.upper_fd < 0:
                    h.upper_fd = os.open(target, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0), dir_fd=self._ufd)

    def _marker(self, parts: Parts) -> None:
        """An empty file (a whiteout or an opaque marker) at ``parts`` of the upper layer."""
        os.close(os.open(self._upath(parts), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0),
                         0o666, dir_fd=self._ufd))

    def _whiteout(self, parts: Parts) -> None:
        self._ensure_upper_dir(parts[:-1])
        ud = self._upper_dir(parts[:-1])
        assert ud is not None
        self._marker(parts[:-1] + (WHITEOUT + parts[-1],))
        ud.whiteouts.add(parts[-1])
        self._forget(parts)

    def _drop_whiteout(self, parts: Parts) -> bool:
        ud = self._upper_dir(parts[:-1])
        if ud is None or parts[-1] not in ud.whiteouts:
            return False
        os.unlink(self._upath(parts[:-1] + (WHITEOUT + parts[-1],)), dir_fd=self._ufd)
        ud.whiteouts.discard(parts[-1])
        self._forget(parts)
        return True

    def _is_dir(self, parts: Parts, found: Found) -> bool:
        if found.upper:
            return self._upper_is_dir(parts)
        return found.lower is not None and found.lower.kind is Kind.DIR

    def _forget_upper_dirs(self, parts: Parts) -> None:
        for key in [k for k in self._upper_dirs if k[:len(parts)] == parts]:
            del self._upper_dirs[key]
        self._forget_all()

    def _make_opaque(self, parts: Parts) -> None:
        self._marker(parts + (OPAQUE,))
        self._upper_dirs.pop(parts, None)  # re-read with the marker
        self._forget_all()

    def _exists(self, parts: Parts) -> Found | None:
        try:
            return self.find(parts)
        except FileNotFoundError:
            return None

    def _prepare_new(self, parts: Parts) -> bool:
        """Ready the upper layer for a new node at ``parts``; True if it replaces a deleted one."""
        self._writable(parts)
        self._check_new_name(parts)
        parent = self.find(parts[:-1])
        if parent.upper is False and (parent.lower is None or parent.lower.kind is not Kind.DIR):
            raise _err(errno.ENOTDIR, parts)
        if self._exists(parts) is not None:
            raise _err(errno.EEXIST, parts)
        self._ensure_upper_dir(parts[:-1])
        return self._drop_whiteout(parts)

    def create(self, parts: Parts, mode: int, flags: int) -> int:
        with self._mutating():
            self._prepare_new(parts)
            fd = os.open(self._upath(parts), (flags | os.O_CREAT | os.O_EXCL) | getattr(os, "O_CLOEXEC", 0),
                         mode & 0o7777, dir_fd=self._ufd)
            self._add_name(parts)
        fh = next(self._next)
        self._handles[fh] = _UpperHandle(fd, parts)
        return fh

    def write(self, fh: int, data: bytes, offset: int) -> int:
        h = self._handles[fh]
        if not isinstance(h, _UpperHandle):
            raise _err(errno.EBADF)
        h.written = True
        written = os.pwrite(h.fd, data, offset)
        if h.linked:  # the other names' cached size and pages are stale now, not only at close
            self._invalidate_links(h.parts, os.fstat(h.fd))
        return written

    def fsync(self, fh: int, datasync: bool) -> None:
        h = self._handles.get(fh)
        if isinstance(h, _UpperHandle):
            (os.fdatasync if datasync else os.fsync)(h.fd)

    def truncate(self, parts: Parts, length: int, fh: int | None = None) -> None:
        h = self._handles.get(fh) if fh is not None else None
        if isinstance(h, _UpperHandle):
            os.ftruncate(h.fd, length)
            h.written = True
            if h.linked:
                self._invalidate_links(h.parts, os.fstat(h.fd))
            return
        self._writable(parts)
        with self._mutating():
            self._copy_up(parts, self.find(parts))
            fd = os.open(self._upath(parts), os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), dir_fd=self._ufd)
            try:
                os.ftruncate(fd, length)
            finally:
                os.close(fd)
            self._changed(parts)

    def mkdir(self, parts: Parts, mode: int) -> None:
        with self._mutating():
            replaced = self._prepare_new(parts)
            os.mkdir(self._upath(parts), mode & 0o7777, dir_fd=self._ufd)
            self._add_name(parts, kind_dir=True)
            if replaced or self.image.node(parts) is not None:
                self._make_opaque(parts)  # delete-then-recreate: the old lower contents must stay gone

    def symlink(self, parts: Parts, target: str) -> None:
        with self._mutating():
            self._prepare_new(parts)
            os.symlink(target, self._upath(parts), dir_fd=self._ufd)
            self._add_name(parts)

    def mknod(self, parts: Parts, mode: int) -> None:
        """A FIFO, a Unix socket (``bind``) or an empty regular file, made in the writable layer
        as overlayfs does; device nodes are refused as for an unprivileged user."""
        kind = stat.S_IFMT(mode)
        if kind in (stat.S_IFCHR, stat.S_IFBLK):
            raise _err(errno.EPERM, parts)
        if kind not in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFREG):
            raise _err(errno.EINVAL, parts)
        with self._mutating():
            self._prepare_new(parts)
            os.mknod(self._upath(parts), kind | (mode & 0o7777), dir_fd=self._ufd)
            self._add_name(parts)

    def link(self, existing: Parts, parts: Parts) -> None:
        with self._mutating():
            self._writable(parts)
            src = self.find(existing)
            if self._is_dir(existing, src):
                raise _err(errno.EPERM, existing)
            self._copy_up(existing, src)
            self._prepare_new(parts)
            os.link(self._upath(existing), self._upath(parts), src_dir_fd=self._ufd, dst_dir_fd=self._ufd,
                    follow_symlinks=False)
            self._add_name(parts)
            st = os.lstat(self._upath(parts), dir_fd=self._ufd)
            self._links.linked(st, existing, parts)  # type: ignore[union-attr]
            self._invalidate_links(parts, st)  # their link count changed

    def unlink(self, parts: Parts) -> None:
        with self._mutating():
            self._writable(parts)
            found = self.find(parts)
            if found.upper:
                if self._is_dir(parts, found):
                    raise _err(errno.EISDIR, parts)
                st = os.lstat(self._upath(parts), dir_fd=self._ufd)
                os.unlink(self._upath(parts), dir_fd=self._ufd)
                if st.st_nlink > 1:
                    self._invalidate_links(parts, st)  # their link count changed
                    self._links.unlinked(st, parts)  # type: ignore[union-attr]
                self._discard_name(parts)
            elif found.lower is not None and found.lower.kind is Kind.DIR:
                raise _err(errno.EISDIR, parts)
            if found.lower is not None:
                self._whiteout(parts)

    def detach(self, parts: Parts) -> Detached:
        """Remove a file that is still open, as ``unlink`` does, and keep what an fstat of it
        needs. For drivers whose library instead renames such a file to a hidden name until
        its last close (libfuse): that rename would copy a lower file up, and show and
        persist the hidden name in the writable layer."""
        found = self.find(parts)
        if found.upper:
            fd = os.open(self._upath(parts), getattr(os, "O_PATH", os.O_RDONLY) | getattr(os, "O_NOFOLLOW", 0)
                         | getattr(os, "O_CLOEXEC", 0), dir_fd=self._ufd)
            detached = Detached(None, fd, number=self._numbers.upper)
        else:
            detached = Detached(self.getattr(parts))
        try:
            self.unlink(parts)
        except BaseException:
            detached.close()
            raise
        return detached

    def _list_before_locking(self, parts: Parts) -> None:
        """Looking up a pyc not compiled yet compiles its directory: do it before _mutating
        holds every change to the container (a rename onto a pyc name: Python writing one)."""
        with contextlib.suppress(OSError):
            self.image.children(parts)

    def rmdir(self, parts: Parts) -> None:
        self._list_before_locking(parts)
        with self._mutating():
            self._writable(parts)
            if not parts:
                raise _err(errno.EBUSY)
            found = self.find(parts)
            if not self._is_dir(parts, found):
                raise _err(errno.ENOTDIR, parts)
            if self.readdir(parts):
                raise _err(errno.ENOTEMPTY, parts)
            if found.upper:
                shutil.rmtree(self._upath(parts), dir_fd=self._ufd)  # holds only whiteouts and markers now
                self._discard_name(parts)
                self._forget_upper_dirs(parts)
            if found.lower is not None:
                self._whiteout(parts)

    def rename(self, old: Parts, new: Parts) -> None:
        self._list_before_locking(new)
        with self._mutating():
            self._writable(old)
            self._check_new_name(new)
            src = self.find(old)
            src_is_dir = self._is_dir(old, src)
            if src_is_dir and src.lower_below and src.kind_is_dir_lower:
                # Its contents come (in part) from the image's directory of that name: refused as
                # overlayfs without redirect_dir does, and mv copies instead. An opaque or upper-only
                # directory holds nothing of the image, so it moves.
                raise _err(errno.EXDEV, old)
            if new[:len(old)] == old and len(new) > len(old):
                raise _err(errno.EINVAL, new)
            dst = self._exists(new)
            if dst is not None:
                if old == new or (src.upper and dst.upper
                                  and _same_file(self._upath(old), self._upath(new), self._ufd)):
                    return  # POSIX: renaming a file onto itself (or another link to it) does nothing
                dst_is_dir = self._is_dir(new, dst)
                if src_is_dir and not dst_is_dir:
                    raise _err(errno.ENOTDIR, new)
                if dst_is_dir and not src_is_dir:
                    raise _err(errno.EISDIR, new)
                if dst_is_dir:
                    if self.readdir(new):
                        raise _err(errno.ENOTEMPTY, new)
                    if dst.upper:  # only whiteouts and markers are left in it
                        shutil.rmtree(self._upath(new), dir_fd=self._ufd)
                        self._discard_name(new)
                        self._forget_upper_dirs(new)
            parent = self.find(new[:-1])
            if not parent.upper and (parent.lower is None or parent.lower.kind is not Kind.DIR):
                raise _err(errno.ENOTDIR, new)
            self._copy_up(old, src)
            self._ensure_upper_dir(new[:-1])
            self._drop_whiteout(new)
            replaced = self._linked_stat(new)
            os.rename(self._upath(old), self._upath(new), src_dir_fd=self._ufd, dst_dir_fd=self._ufd)
            self._discard_name(old)
            self._add_name(new, kind_dir=src_is_dir)
            if src_is_dir:
                self._forget_upper_dirs(old)
                self._forget_upper_dirs(new)
                below = self.image.node(new) if parent.lower_below else None
                if below is not None and below.kind is Kind.DIR:
                    # lands on a deleted or empty directory of the image: its contents must stay hidden
                    self._make_opaque(new)
                else:  # an OCI layer marks only directories of the image opaque
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._upath(new + (OPAQUE,)), dir_fd=self._ufd)
            if src.lower is not None:
                self._whiteout(old)  # the lower file must not reappear under its old name
            self._renamed_links(old, new, src_is_dir, replaced)

    def chmod(self, parts: Parts, mode: int) -> None:
        with self._mutating():
            self._writable(parts)
            self._copy_up_as_is(parts, self.find(parts))
            os.chmod(self._upath(parts), mode & 0o7777, dir_fd=self._ufd)
            self._changed(parts)

    def chown(self, parts: Parts, uid: int, gid: int) -> None:
        with self._mutating():
            self._writable(parts)
            self._copy_up_as_is(parts, self.find(parts))
            os.chown(self._upath(parts), uid, gid, dir_fd=self._ufd, follow_symlinks=False)
            self._changed(parts)

    def utimens(self, parts: Parts, times: tuple[int | None, int | None] | None) -> None:
        """Set (atime, mtime) in ns: None sets both to now, a None in the pair keeps that time
        (utimensat's UTIME_NOW and UTIME_OMIT; a driver gives the current time for a single NOW)."""
        if times == (None, None):  # utimensat changes nothing, not even ctime
            self._writable(parts)
            self.find(parts)
            return
        with self._mutating():
            self._writable(parts)
            self._copy_up_as_is(parts, self.find(parts))
            path = self._upath(parts)
            if times is None:
                os.utime(path, dir_fd=self._ufd, follow_symlinks=False)
            else:
                atime, mtime = times
                if atime is None or mtime is None:
                    st = os.lstat(path, dir_fd=self._ufd)
                    atime = st.st_atime_ns if atime is None else atime
                    mtime = st.st_mtime_ns if mtime is None else mtime
                os.utime(path, ns=(atime, mtime), dir_fd=self._ufd, follow_symlinks=False)
            self._changed(parts)

    def _copy_up_as_is(self, parts: Parts, found: Found) -> None:
        """Copy up for a change of metadata, keeping the image's times on a directory or a
        symlink as a file's copy-up does: a chmod or `touch -a` must not change the mtime."""
        if found.upper:
            return
        self._copy_up(parts, found)
        if found.lower is not None and found.lower.kind is not Kind.FILE:
            os.utime(self._upath(parts), ns=(self.mtime_ns, self.mtime_ns), dir_fd=self._ufd, follow_symlinks=False)

    def _changed(self, parts: Parts) -> None:
        """After a metadata change by path: other hard-link names must not show stale attributes."""
        self._invalidate_links(parts, os.lstat(self._upath(parts), dir_fd=self._ufd))

    def _invalidate_links(self, parts: Parts, st: os.stat_result) -> None:
        """Hard links within the upper layer are separate kernel inodes: refresh the other names
        (directories and files with one link have none; the others are indexed, never searched)."""
        if self.invalidate is None or self._links is None:
            return
        for other in self._links.names(st) - {parts}:
            self.invalidate(other)

    def _linked_stat(self, parts: Parts) -> os.stat_result | None:
        """The upper file at ``parts`` when it has other links (which a rename over it changes)."""
        try:
            st = os.lstat(self._upath(parts), dir_fd=self._ufd)
        except FileNotFoundError:
            return None
        return st if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode) else None

    def _renamed_links(self, old: Parts, new: Parts, is_dir: bool, replaced: os.stat_result | None) -> None:
        """After a rename: the index follows the names, the other links of a file renamed over
        show its new link count, and those of the renamed file its new ctime."""
        assert self._links is not None
        if replaced is not None:
            self._invalidate_links(new, replaced)
            self._links.unlinked(replaced, new)
        if is_dir:
            self._links.moved(old, new)
            return
        st = os.lstat(self._upath(new), dir_fd=self._ufd)
        if st.st_nlink > 1:
            self._links.moved(old, new)
            self._invalidate_links(new, st)

    # -- another image (remount) -------------------------------------------------

    def open_image_files(self) -> set[Parts]:
        """The image files some handle is reading (not copied up): what a remount must keep."""
        return {h.parts for h in list(self._handles.values()) if isinstance(h, _LowerHandle) and h.upper_fd < 0}

    def replace_image(self, manifest: Manifest) -> None:
        """Show another image (same Python) under the same writable layer from now on. Open
        handles keep the nodes they opened; every memoised lookup goes."""
        with self._mutating():
            self.image.replace_stack(manifest)
            self.manifest = manifest
            self.recorder = None  # what is read now is another image's start-up
            self._forget_all()

    # -- reuse (warm mounts) -----------------------------------------------------

    def discard_changes(self) -> list[tuple[Parts, bool]] | None:
        """Empty the writable layer, so that the view is the pristine image again (a warm mount
        between two runs); None, changing nothing, while a file of that layer is open.

        Returns what the kernel may hold stale, for the driver to drop: ``(parts, True)`` for a
        name whose entry changed (created, deleted, replaced, a file written: its dentry, and
        what is below it, must go), ``(parts, False)`` for a directory of the image that only
        had something changed inside (its attributes and listing go; its cached subtree stays).
        """
        if self.upper is None:
            return []
        with self._mutating():
            if any(isinstance(h, _UpperHandle) or h.upper_fd >= 0 for h in self._handles.values()):
                return None
            changes: list[tuple[Parts, bool]] = [((), False)]
            self._changed_below((), changes)
            for fd, where in ((self._ufd, self.upper), (self._wfd, self.work)):
                assert where is not None
                for name in os.listdir(fd):
                    if stat.S_ISDIR(os.lstat(name, dir_fd=fd).st_mode):
                        shutil.rmtree(where / name)
                    else:
                        os.unlink(name, dir_fd=fd)
            os.chmod(self._ufd, 0o755)  # the root's mode, as containers.create_throwaway made it
            self._upper_dirs.clear()
            self._forget_all()
            self._links = LinkIndex(self._ufd)
        return changes

    def _changed_below(self, parts: Parts, changes: list[tuple[Parts, bool]]) -> None:
        """Add what the upper directory at ``parts`` changed (see discard_changes)."""
        ud = self._upper_dir(parts)
        assert ud is not None
        changes.extend((parts + (name,), True) for name in sorted(ud.whiteouts))
        for name in sorted(ud.names):
            child = parts + (name,)
            lower = self.image.node(child)
            if (self._upper_dir(child) is not None and lower is not None and lower.kind is Kind.DIR
                    and not self._upper_dir(child).opaque):  # type: ignore[union-attr]
                changes.append((child, False))
                self._changed_below(child, changes)
            else:
                changes.append((child, True))

    def close(self) -> None:
        for fh in list(self._handles):
            self.release(fh)
        for fd in (self._ufd, self._wfd):
            if fd >= 0:
                os.close(fd)
        self._ufd = self._wfd = -1
        self.image.close()
