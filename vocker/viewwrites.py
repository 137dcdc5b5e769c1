"""The writing half of the container view: every change lands in the upper layer (copy-up,
whiteouts, opaque directories, hard-link bookkeeping), as kernel overlayfs does it.

A mixin of vocker.view.ContainerView, which holds the state it works on (the upper layer's
descriptors, the memoised lookups, the link index); kept apart so that each file has one job.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat

from .imagelayer import Parts, refuse_escaping
from .imagelayer import os_error as _err
from .tree import Kind
from .viewtypes import (
    OPAQUE,
    WHITEOUT,
    Detached,
    Found,
    LowerHandle,
    UpperHandle,
    check_name,
    same_file,
)


class Writes:
    """Changes to a container (see the module's docstring)."""

    def _writable(self, parts: Parts = ()) -> None:
        if self.upper is None:
            raise _err(errno.EROFS, parts)

    def _check_new_name(self, parts: Parts) -> None:
        if parts:
            check_name(parts[-1], parts)
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
                if isinstance(h, LowerHandle) and h.parts == parts and h.upper_fd < 0:
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
        self._handles[fh] = UpperHandle(fd, parts)
        return fh

    def write(self, fh: int, data: bytes, offset: int) -> int:
        h = self._handles[fh]
        if not isinstance(h, UpperHandle):
            raise _err(errno.EBADF)
        h.written = True
        written = os.pwrite(h.fd, data, offset)
        if h.linked:  # the other names' cached size and pages are stale now, not only at close
            self._invalidate_links(h.parts, os.fstat(h.fd))
        return written

    def fsync(self, fh: int, datasync: bool) -> None:
        h = self._handles.get(fh)
        if isinstance(h, UpperHandle):
            (os.fdatasync if datasync else os.fsync)(h.fd)

    def truncate(self, parts: Parts, length: int, fh: int | None = None) -> None:
        h = self._handles.get(fh) if fh is not None else None
        if isinstance(h, UpperHandle):
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
                                  and same_file(self._upath(old), self._upath(new), self._ufd)):
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
