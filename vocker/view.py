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
import os
import stat
import threading
from pathlib import Path
from typing import Callable, Iterator

from . import bytecode
from .errors import VockerError

# What drivers take from here (the view is their one entry point).
from .imagelayer import (
    ImageLayer,
    Parts,
    refuse_escaping,
    split,  # noqa: E402,F401
)
from .imagelayer import os_error as _err
from .inodes import LinkIndex, Numbers
from .manifest import Manifest
from .readahead import Recorder
from .store import Store
from .tree import Kind
from .viewreuse import Reuse
from .viewtypes import (  # noqa: E402,F401
    FILE_TYPE,
    OPAQUE,
    WHITEOUT,
    Attr,
    Detached,
    Found,
    Handle,
    LowerHandle,
    UpperDir,
    UpperHandle,
    check_name,
    errno_of,
    log,
)
from .viewwrites import Writes


class ContainerView(Writes, Reuse):
    """A container's merged filesystem: lookups and reads here, changes in Writes, reuse in Reuse."""


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
        check_name(parts[-1], parts)
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
        return [(n, FILE_TYPE[lower[n].kind] if n in lower and n not in upper else 0) for n in sorted(names)]

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
            handle: Handle = UpperHandle(fd, parts, written=bool(flags & os.O_TRUNC))
            if writing:
                st = os.fstat(fd)
                handle.linked = st.st_nlink > 1
                if flags & os.O_TRUNC:
                    self._invalidate_links(parts, st)
        else:
            assert found.lower is not None
            if found.lower.kind is Kind.DIR:
                raise _err(errno.EISDIR, parts)
            handle = LowerHandle(None, None, parts, found.lower)
        fh = next(self._next)
        self._handles[fh] = handle
        return fh

    def read(self, fh: int, size: int, offset: int) -> bytes:
        h = self._handles[fh]
        if isinstance(h, UpperHandle):
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
        if isinstance(h, UpperHandle):
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

    def close(self) -> None:
        for fh in list(self._handles):
            self.release(fh)
        for fd in (self._ufd, self._wfd):
            if fd >= 0:
                os.close(fd)
        self._ufd = self._wfd = -1
        self.image.close()
