"""FUSE driver on libfuse3's low-level API (ctypes): each request becomes one ContainerView call.

Selected with ``VOCKER_FUSE=lowlevel`` (vocker.daemon). Against the high-level driver
(fuse_linux), which it otherwise matches option for option, it saves requests:
- CREATE, MKDIR, MKNOD, SYMLINK, LINK and SETATTR are answered with the attributes the
  change produced (high-level libfuse sends itself a GETATTR after each);
- it answers OPENDIR with ENOSYS, so the kernel (5.1+) sends no OPENDIR or RELEASEDIR
  again and keeps every directory's listing (as ``cache_readdir`` + ``keep_cache``): a warm
  walk of the tree sends no request per directory. The kernel drops a cached listing itself
  when a change through this mount touches the directory (its version counter); the changes
  made from outside a request (a warm mount's reset, a remount) drop it with the entries they
  invalidate; and a generated ``__pycache__`` listed while it still lists pycs not compiled
  yet (view.listing_may_change) is dropped once a lookup below it changed its listing (a
  source that does not compile loses its pyc name at its directory's compile).
The view is path-based, the kernel names nodes by id: ll_nodes keeps the table between them.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
import threading
import time
from typing import Any, Callable

from vocker.view import Attr, ContainerView, Detached, Parts, errno_of

from . import ll_ctypes as ll
from .fuse_linux import _UNKNOWN_INO, CACHE_SECONDS, MAX_IDLE_THREADS, _gil_ensure, _pinned
from .ll_nodes import Node, NodeTable

log = logging.getLogger("vocker.fuse")
_KIND_STAT = {}
for _kind in (0, stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
    _KIND_STAT[_kind] = _st = ll.c_stat()
    _st.st_ino, _st.st_mode = _UNKNOWN_INO, _kind


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


def _ns(ts: Any) -> int:
    return ts.tv_sec * 1_000_000_000 + ts.tv_nsec


class LowLevelFS:
    def __init__(self, view: ContainerView, on_ready: Callable[[], None]) -> None:
        self.view = view
        self.on_ready = on_ready
        self.nodes = NodeTable()
        self.session: int | None = None
        #: directories being read: their listing, made at each read from the start (rewinddir)
        self._reading: dict[int, list[tuple[bytes, int]]] = {}
        #: directories whose listing (as the kernel keeps it) compiling may change: their names
        self._volatile: dict[int, list[tuple[bytes, int]]] = {}
        self._dir_lock = threading.Lock()
        view.invalidate = self._invalidate
        view.invalidate_entry = self._invalidate_entry
        view.move_aside = self._move_aside
        self.ops = ll.fuse_lowlevel_ops()
        self._callbacks: list[Any] = []  # referenced for the session's life
        for field, proto in ll.OPS:
            method = getattr(self, "op_" + field, None)
            if method is not None:
                cb = proto(self._wrap(method, field))
                self._callbacks.append(cb)
                setattr(self.ops, field, cb)

    # -- plumbing ----------------------------------------------------------------

    @staticmethod
    def _wrap(method: Callable[..., None], name: str) -> Callable[..., None]:
        """Keep libfuse's worker thread's Python state (see fuse_linux._errors) and answer any
        exception with the view's errno (for the calls that take a request)."""
        takes_req = name not in ("init", "destroy")

        def call(*args: Any) -> None:
            if not getattr(_pinned, "done", False):
                _gil_ensure()
                _pinned.done = True
            try:
                method(*args)
            except Exception as exc:
                if takes_req:
                    ll.reply_err(args[0], errno_of(exc, name))
        return call

    def _attr(self, node: Node) -> Attr:
        if node.parts is None:
            if node.detached is None:
                raise OSError(errno.ENOENT, "removed")
            return node.detached.getattr()
        return self.view.getattr(node.parts)

    def _reply_entry(self, req: int, parts: Parts, attr: Attr | None = None, fi: Any = None) -> None:
        """Answer a LOOKUP or a creation with the node of ``parts`` and its attributes."""
        if attr is None:
            attr = self.view.getattr(parts)
        node = self.nodes.remember(parts)
        e = ll.fuse_entry_param()
        e.ino = node.id
        ll.fill_stat(e.attr, attr)
        e.attr_timeout = e.entry_timeout = CACHE_SECONDS
        if fi is None:
            failed = ll.reply_entry(req, ctypes.byref(e))
        else:
            self.nodes.opened(node, 1)  # before the reply: the next request may come at once
            failed = ll.reply_create(req, ctypes.byref(e), fi)
            if failed:  # interrupted: nobody will release the handle
                self.nodes.opened(node, -1)
                self.view.release(fi.contents.fh)
        if failed:
            self.nodes.forget(node.id, 1)

    def _reply_attr(self, req: int, attr: Attr) -> None:
        st = ll.c_stat()
        ll.fill_stat(st, attr)
        ll.reply_attr(req, ctypes.byref(st), CACHE_SECONDS)

    def _child(self, parent: int, name: bytes) -> Parts:
        return self.nodes.parts(parent) + (_name(name),)

    # -- the control hooks (warm mounts, remount, hard links) ---------------------

    def _invalidate(self, parts: Parts) -> None:
        """Drop the kernel's cached attributes, pages and listing of a path."""
        node = self.nodes.find(parts)
        if node is not None and self.session is not None:
            ll.notify_inval_inode(self.session, node.id, 0, 0)

    def _invalidate_entry(self, parts: Parts) -> None:
        """Drop the kernel's cached name ``parts`` (and what it cached below it), and the
        parent's cached listing; from outside a request of this mount."""
        parent = self.nodes.find(parts[:-1]) if parts else None
        if parent is None or self.session is None:
            return
        name = os.fsencode(parts[-1])
        ll.notify_inval_entry(self.session, parent.id, name, len(name))
        ll.notify_inval_inode(self.session, parent.id, 0, 0)

    def _move_aside(self, parts: Parts) -> None:
        """A remount: the image file at ``parts`` held open keeps its node (its pages and its
        attributes as they were) for its holders, and the name's next lookup gets a new one."""
        node = self.nodes.find(parts)
        if node is None:
            return
        node.detached = Detached(self.view.getattr(parts))
        self.nodes.unname(parts)
        self._invalidate_entry(parts)

    # -- requests ------------------------------------------------------------------

    def op_init(self, userdata: int, conn: int) -> None:
        self.on_ready()

    def op_lookup(self, req: int, parent: int, name: bytes) -> None:
        parts = self._child(parent, name)
        try:
            attr = self.view.getattr(parts)
        except FileNotFoundError:
            e = ll.fuse_entry_param()  # ino 0: a negative entry, cached as long as the others
            e.entry_timeout = CACHE_SECONDS
            ll.reply_entry(req, ctypes.byref(e))
        else:
            self._reply_entry(req, parts, attr)
        if parent in self._volatile:
            self._recheck_listing(parent)

    def _recheck_listing(self, ino: int) -> None:
        """A lookup below a directory whose kept listing compiling may change (it compiles a
        pending pyc): drop that listing from the kernel if it changed; once nothing is pending,
        the listing is stable. After the reply: no request of the kernel's waits on this one."""
        node = self.nodes._nodes.get(ino)
        stable = node is None or node.parts is None or not self.view.listing_may_change(node.parts)
        listing = [] if node is None else self._listing(ino)
        with self._dir_lock:
            changed = self._volatile.get(ino) != listing
            if stable:
                self._volatile.pop(ino, None)
            elif changed:
                self._volatile[ino] = listing
        if changed and self.session is not None:
            ll.notify_inval_inode(self.session, ino, 0, 0)

    def op_forget(self, req: int, ino: int, nlookup: int) -> None:
        self.nodes.forget(ino, nlookup)
        ll.reply_none(req)

    def op_getattr(self, req: int, ino: int, fi: Any) -> None:
        self._reply_attr(req, self._attr(self.nodes.node(ino)))

    def op_setattr(self, req: int, ino: int, attr_p: Any, to_set: int, fi: Any) -> None:
        node = self.nodes.node(ino)
        parts = node.parts if node.parts is not None else ()
        attr = attr_p.contents
        if node.parts is None and not (fi and to_set == ll.SET_SIZE):
            raise OSError(errno.ENOENT, "removed")
        if to_set & ll.SET_MODE:
            self.view.chmod(parts, attr.st_mode)
        if to_set & (ll.SET_UID | ll.SET_GID):
            self.view.chown(parts, attr.st_uid if to_set & ll.SET_UID else -1,
                            attr.st_gid if to_set & ll.SET_GID else -1)
        if to_set & ll.SET_SIZE:
            self.view.truncate(parts, attr.st_size, fi.contents.fh if fi else None)
        if to_set & (ll.SET_ATIME | ll.SET_MTIME):
            now = time.time_ns()
            times: Any = tuple(now if to_set & is_now else _ns(getattr(attr, field)) if to_set & is_set else None
                               for is_set, is_now, field in ((ll.SET_ATIME, ll.SET_ATIME_NOW, "st_atimespec"),
                                                             (ll.SET_MTIME, ll.SET_MTIME_NOW, "st_mtimespec")))
            if to_set & ll.SET_ATIME_NOW and to_set & ll.SET_MTIME_NOW:
                times = None  # the view sets both to now
            self.view.utimens(parts, times)
        self._reply_attr(req, self._attr(node))

    def op_readlink(self, req: int, ino: int) -> None:
        ll.reply_readlink(req, os.fsencode(self.view.readlink(self.nodes.parts(ino))))

    def op_mknod(self, req: int, parent: int, name: bytes, mode: int, rdev: int) -> None:
        parts = self._child(parent, name)
        self.view.mknod(parts, mode)
        self._reply_entry(req, parts)

    def op_mkdir(self, req: int, parent: int, name: bytes, mode: int) -> None:
        parts = self._child(parent, name)
        self.view.mkdir(parts, mode)
        self._reply_entry(req, parts)

    def op_symlink(self, req: int, target: bytes, parent: int, name: bytes) -> None:
        parts = self._child(parent, name)
        self.view.symlink(parts, os.fsdecode(target))
        self._reply_entry(req, parts)

    def op_link(self, req: int, ino: int, newparent: int, newname: bytes) -> None:
        parts = self._child(newparent, newname)
        self.view.link(self.nodes.parts(ino), parts)
        self._reply_entry(req, parts)

    def _remove(self, parts: Parts) -> None:
        """Unlink ``parts``; a file still open keeps what an fstat of it needs."""
        node = self.nodes.find(parts)
        if node is not None and node.opens > 0:
            node.detached = self.view.detach(parts)
        else:
            self.view.unlink(parts)
        self.nodes.unname(parts)

    def op_unlink(self, req: int, parent: int, name: bytes) -> None:
        self._remove(self._child(parent, name))
        ll.reply_err(req, 0)

    def op_rmdir(self, req: int, parent: int, name: bytes) -> None:
        parts = self._child(parent, name)
        self.view.rmdir(parts)
        self.nodes.unname(parts)
        ll.reply_err(req, 0)

    def op_rename(self, req: int, parent: int, name: bytes, newparent: int, newname: bytes, flags: int) -> None:
        old, new = self._child(parent, name), self._child(newparent, newname)
        if flags & ~ll.RENAME_NOREPLACE:
            raise OSError(errno.EINVAL, "rename flags")
        if flags & ll.RENAME_NOREPLACE and old != new:
            try:
                self.view.getattr(new)
            except FileNotFoundError:
                pass
            else:
                raise OSError(errno.EEXIST, "exists")
        is_dir = self._is_dir(old)
        target = self.nodes.find(new)
        if target is not None and target.opens > 0 and old != new:
            # a file renamed over while open: its holders keep it, as after an unlink
            target.detached = self.view.detach(new)
        self.view.rename(old, new)
        if old != new:
            self.nodes.move(old, new, is_dir)
        ll.reply_err(req, 0)

    def _is_dir(self, parts: Parts) -> bool:
        return stat.S_ISDIR(self.view.getattr(parts).mode)

    def op_open(self, req: int, ino: int, fi: Any) -> None:
        node = self.nodes.node(ino)
        if node.parts is None:
            raise OSError(errno.ENOENT, "removed")
        f = fi.contents
        f.fh = self.view.open(node.parts, f.flags)
        f.keep_cache = 1  # as kernel_cache: every change goes through this mount
        self.nodes.opened(node, 1)  # before the reply: an unlink may come at once
        if ll.reply_open(req, fi):
            self.nodes.opened(node, -1)
            self.view.release(f.fh)

    def op_create(self, req: int, parent: int, name: bytes, mode: int, fi: Any) -> None:
        parts = self._child(parent, name)
        f = fi.contents
        f.fh = self.view.create(parts, mode, f.flags)
        f.keep_cache = 1
        try:
            attr = self.view.getattr(parts)
        except Exception:
            self.view.release(f.fh)
            raise
        self._reply_entry(req, parts, attr, fi)

    def op_read(self, req: int, ino: int, size: int, off: int, fi: Any) -> None:
        data = self.view.read(fi.contents.fh, size, off)
        ll.reply_buf(req, data, len(data))

    def op_write(self, req: int, ino: int, buf: int, size: int, off: int, fi: Any) -> None:
        ll.reply_write(req, self.view.write(fi.contents.fh, ctypes.string_at(buf, size), off))

    def op_release(self, req: int, ino: int, fi: Any) -> None:
        try:
            self.view.release(fi.contents.fh)
        finally:
            node = self.nodes._nodes.get(ino)
            if node is not None:
                self.nodes.opened(node, -1)
        ll.reply_err(req, 0)

    def op_fsync(self, req: int, ino: int, datasync: int, fi: Any) -> None:
        self.view.fsync(fi.contents.fh, bool(datasync))
        ll.reply_err(req, 0)

    def _listing(self, ino: int) -> list[tuple[bytes, int]]:
        if self.nodes.node(ino).parts is None:
            return []  # removed while open: empty, as on a disk
        return [(b".", stat.S_IFDIR), (b"..", stat.S_IFDIR),
                *((os.fsencode(n), kind) for n, kind in self.view.readdir_typed(self.nodes.parts(ino)))]

    def op_opendir(self, req: int, ino: int, fi: Any) -> None:
        """ENOSYS: the kernel then sends no OPENDIR nor RELEASEDIR for the mount's life, reads
        directories without a handle and keeps their listings (FUSE_CAP_NO_OPENDIR_SUPPORT)."""
        log.info("opendir: answered ENOSYS, the kernel keeps listings without OPENDIR from now on")
        ll.reply_err(req, errno.ENOSYS)

    def op_readdir(self, req: int, ino: int, size: int, off: int, fi: Any) -> None:
        with self._dir_lock:
            listing = None if off == 0 else self._reading.get(ino)
        if listing is None:
            listing = self._listing(ino)
            if off == 0:
                parts = self.nodes.node(ino).parts
                volatile = parts is not None and self.view.listing_may_change(parts)
                with self._dir_lock:
                    if len(self._reading) > 1000:  # readers that stopped half way
                        self._reading.clear()
                    self._reading[ino] = listing
                    if volatile:
                        self._volatile[ino] = listing
        buf = ctypes.create_string_buffer(size)
        base, pos = ctypes.addressof(buf), 0
        for i in range(off, len(listing)):
            name, kind = listing[i]
            n = ll.add_direntry(req, base + pos, size - pos, name, ctypes.byref(_KIND_STAT[kind]), i + 1)
            if n > size - pos:
                break
            pos += n
        if pos == 0:  # the end: the kernel asks no more
            with self._dir_lock:
                self._reading.pop(ino, None)
        ll.reply_buf(req, buf.raw[:pos], pos)

    def op_statfs(self, req: int, ino: int) -> None:
        st = self.view.statfs()
        out = ll.c_statvfs()
        for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail",
                  "f_namemax"):
            setattr(out, k, getattr(st, k))
        ll.reply_statfs(req, ctypes.byref(out))



def serve(view: ContainerView, mountpoint: str, *, name: str, read_only: bool, audit: bool,
          on_ready: Callable[[], None], allow_other: bool = False) -> None:
    """Mount and serve until unmounted (blocks); the same options as fuse_linux.serve."""
    options = [f"fsname=vocker:{name}", "subtype=vocker", "default_permissions", "auto_unmount"]
    if read_only or audit:
        options.append("ro")
    if audit:
        options += ["noexec", "nosuid", "nodev"]
    if allow_other:
        options.append("allow_other")
    argv = [b"vocker", b"-o", ",".join(options).encode("utf-8", "surrogateescape")]
    c_argv = (ctypes.c_char_p * (len(argv) + 1))(*argv, None)
    args = ll.fuse_args(len(argv), c_argv, 0)
    fs = LowLevelFS(view, on_ready)
    se = ll.session_new(ctypes.byref(args), ctypes.byref(fs.ops), ctypes.sizeof(fs.ops), None)
    if not se:
        raise RuntimeError(f"cannot start a FUSE session with options {','.join(options)}")
    try:
        if ll.session_mount(se, os.fsencode(mountpoint)) != 0:
            raise RuntimeError(f"cannot mount {mountpoint}")
        fs.session = se
        ll.set_signal_handlers(se)
        cfg = ll.loop_cfg_create()
        ll.loop_cfg_set_idle_threads(cfg, MAX_IDLE_THREADS)
        try:
            ll.loop_mt(se, cfg)
        finally:
            ll.loop_cfg_destroy(cfg)
            ll.remove_signal_handlers(se)
            fs.session = None
            ll.session_unmount(se)
    finally:
        ll.session_destroy(se)
