"""What the container view and its drivers share: its records (attributes, lookups, handles),
its names for overlay markers, and how an exception becomes an errno."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
import threading
from typing import Callable, Union

import attrs

from .blobstore import BlobReader
from .errors import VockerError
from .imagelayer import Lower, Parts
from .imagelayer import os_error as _err
from .tree import Kind

log = logging.getLogger("vocker.view")

#: The longest name of a path component, in bytes (UTF-8), as on the disks of Linux and macOS.
NAME_MAX = 255
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
FILE_TYPE = {Kind.FILE: stat.S_IFREG, Kind.DIR: stat.S_IFDIR, Kind.SYMLINK: stat.S_IFLNK}


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
class UpperHandle:
    fd: int
    parts: Parts = ()
    written: bool = False
    #: opened for writing while it has other names: each write refreshes them in the kernel
    linked: bool = False


@attrs.define
class LowerHandle:
    data: bytes | None
    reader: BlobReader | None
    parts: Parts = ()
    #: not loaded yet: with the kernel's page cache warm, most opens never read
    node: Lower | None = None
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    #: set once the file was copied up: reads then see the writable copy, as overlayfs does
    upper_fd: int = -1


Handle = Union[UpperHandle, LowerHandle]


def same_file(a: str, b: str, dir_fd: int) -> bool:
    sa, sb = os.lstat(a, dir_fd=dir_fd), os.lstat(b, dir_fd=dir_fd)
    return (sa.st_ino, sa.st_dev) == (sb.st_ino, sb.st_dev)


def check_name(name: str, parts: Parts) -> None:
    """ENAMETOOLONG for a name a plain disk refuses, in a lookup as in a creation (not ENOENT)."""
    # a str of up to 63 characters is at most 252 bytes in UTF-8 (or with surrogate escapes)
    if len(name) > NAME_MAX // 4 and len(os.fsencode(name)) > NAME_MAX:
        raise _err(errno.ENAMETOOLONG, parts)
