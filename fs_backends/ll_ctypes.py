"""ctypes declarations of libfuse3's low-level API (fuse_lowlevel.h, libfuse >= 3.12).

Only what vocker's low-level driver uses; the structures libfuse shares with its
high-level API (``struct stat``, ``statvfs``, ``fuse_file_info``) are mfusepy's, which
already follows their layout across libfuse versions.
"""

from __future__ import annotations

import ctypes
import os
from ctypes import CFUNCTYPE, POINTER, c_char_p, c_double, c_int, c_size_t, c_uint, c_uint64, c_void_p

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")  # both libfuse2 and 3 may be installed

import mfusepy as _mf  # noqa: E402

lib = _mf._libfuse
c_stat = _mf.c_stat
c_statvfs = _mf.c_statvfs
fuse_file_info = _mf.fuse_file_info
c_off_t = ctypes.c_int64
c_mode_t = c_uint
c_dev_t = c_uint64
fuse_ino_t = c_uint64
fuse_req_t = c_void_p

ROOT_ID = 1
#: to_set bits of SETATTR (FUSE_SET_ATTR_*)
SET_MODE, SET_UID, SET_GID, SET_SIZE, SET_ATIME, SET_MTIME = 1, 2, 4, 8, 16, 32
SET_ATIME_NOW, SET_MTIME_NOW = 128, 256
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


class fuse_entry_param(ctypes.Structure):
    _fields_ = [("ino", fuse_ino_t), ("generation", c_uint64), ("attr", c_stat),
                ("attr_timeout", c_double), ("entry_timeout", c_double)]


class fuse_args(ctypes.Structure):
    _fields_ = [("argc", c_int), ("argv", POINTER(c_char_p)), ("allocated", c_int)]


FI = POINTER(fuse_file_info)
_V = None  # every low-level callback returns void
#: struct fuse_lowlevel_ops, in its order; the ones vocker does not implement stay NULL.
OPS = [
    ("init", CFUNCTYPE(_V, c_void_p, c_void_p)),
    ("destroy", CFUNCTYPE(_V, c_void_p)),
    ("lookup", CFUNCTYPE(_V, fuse_req_t, fuse_ino_t, c_char_p)),
    ("forget", CFUNCTYPE(_V, fuse_req_t, fuse_ino_t, c_uint64)),
    ("getattr", CFUNCTYPE(_V, fuse_req_t, fuse_ino_t, FI)),
    ("setattr", CFUNCTYPE(_V, fuse_req_t, fuse_ino_t, POINTER(c_stat), c_int, FI)),
    ("readlink", CFUNCTYPE(_V, fuse_req_t, fuse_ino_t)),
    ("mknod", CFUNCTYPE(_V, fuse_req_t, fuse_ino_t, c_char_p, c_mode_t, c_dev_t)),
    ("mkdir", CFUNCTYPE(_V, fuse_req_t, fuse_ino_t, c_char_p, c_mode_t)),
    ("unlink", CFUNCTYPE(_V, fuse_req_t, fuse_ino_t, c_char_p)),
    ("rmdir", CFUNCTYPE(_V, fuse_req_t, fuse_ino_t, c_char_p)),
    ("symlink", CFUNCTYPE(_V, fuse_req_t, c_char_p, fuse_ino_t, c_char_p)),
    ("rename", CFUNCTYPE(_V, fuse_req_t, fuse_ino_t, c_char_p, fuse_ino_t, c_char_p, c_uint)),
    ("link", CFUNCTYPE(_V, fuse_req_t, fuse_ino_t, fuse_ino_t, c_char_p)),
    ("open", CFUNCTYPE(_V, fuse_req_t, fuse_ino_t, FI)),
    ("read", CFUNCTYPE(_V, fuse_req_t, fuse_ino_t, c_size_t, c_off_t, FI)),
    ("write", CFUNCTYPE(_V, fuse_req_t, fuse_ino_t, c_void_p, c_size_t, c_off_t, FI)),
    ("flush", c_void_p),
    ("release", CFUNCTYPE(_V, fuse_req_t, fuse_ino_t, FI)),
    ("fsync", CFUNCTYPE(_V, fuse_req_t, fuse_ino_t, c_int, FI)),
    ("opendir", CFUNCTYPE(_V, fuse_req_t, fuse_ino_t, FI)),
    ("readdir", CFUNCTYPE(_V, fuse_req_t, fuse_ino_t, c_size_t, c_off_t, FI)),
    ("releasedir", CFUNCTYPE(_V, fuse_req_t, fuse_ino_t, FI)),
    ("fsyncdir", c_void_p),
    ("statfs", CFUNCTYPE(_V, fuse_req_t, fuse_ino_t)),
    ("setxattr", c_void_p), ("getxattr", c_void_p), ("listxattr", c_void_p), ("removexattr", c_void_p),
    ("access", c_void_p),
    ("create", CFUNCTYPE(_V, fuse_req_t, fuse_ino_t, c_char_p, c_mode_t, FI)),
    ("getlk", c_void_p), ("setlk", c_void_p), ("bmap", c_void_p), ("ioctl", c_void_p), ("poll", c_void_p),
    ("write_buf", c_void_p), ("retrieve_reply", c_void_p), ("forget_multi", c_void_p), ("flock", c_void_p),
    ("fallocate", c_void_p), ("readdirplus", c_void_p), ("copy_file_range", c_void_p), ("lseek", c_void_p),
]


class fuse_lowlevel_ops(ctypes.Structure):
    _fields_ = OPS


def _fn(name: str, restype: object, *argtypes: object) -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = restype, argtypes
    return fn


reply_err = _fn("fuse_reply_err", c_int, fuse_req_t, c_int)
reply_none = _fn("fuse_reply_none", None, fuse_req_t)
reply_entry = _fn("fuse_reply_entry", c_int, fuse_req_t, POINTER(fuse_entry_param))
reply_create = _fn("fuse_reply_create", c_int, fuse_req_t, POINTER(fuse_entry_param), FI)
reply_attr = _fn("fuse_reply_attr", c_int, fuse_req_t, POINTER(c_stat), c_double)
reply_readlink = _fn("fuse_reply_readlink", c_int, fuse_req_t, c_char_p)
reply_open = _fn("fuse_reply_open", c_int, fuse_req_t, FI)
reply_write = _fn("fuse_reply_write", c_int, fuse_req_t, c_size_t)
reply_buf = _fn("fuse_reply_buf", c_int, fuse_req_t, c_char_p, c_size_t)
reply_statfs = _fn("fuse_reply_statfs", c_int, fuse_req_t, POINTER(c_statvfs))
add_direntry = _fn("fuse_add_direntry", c_size_t, fuse_req_t, c_void_p, c_size_t, c_char_p, POINTER(c_stat), c_off_t)
notify_inval_inode = _fn("fuse_lowlevel_notify_inval_inode", c_int, c_void_p, fuse_ino_t, c_off_t, c_off_t)
notify_inval_entry = _fn("fuse_lowlevel_notify_inval_entry", c_int, c_void_p, fuse_ino_t, c_char_p, c_size_t)
session_new = _fn("fuse_session_new", c_void_p, POINTER(fuse_args), POINTER(fuse_lowlevel_ops), c_size_t, c_void_p)
session_mount = _fn("fuse_session_mount", c_int, c_void_p, c_char_p)
session_unmount = _fn("fuse_session_unmount", None, c_void_p)
session_destroy = _fn("fuse_session_destroy", None, c_void_p)
set_signal_handlers = _fn("fuse_set_signal_handlers", c_int, c_void_p)
remove_signal_handlers = _fn("fuse_remove_signal_handlers", None, c_void_p)
loop_mt = _fn("fuse_session_loop_mt_312", c_int, c_void_p, c_void_p)
loop_cfg_create = _fn("fuse_loop_cfg_create", c_void_p)
loop_cfg_destroy = _fn("fuse_loop_cfg_destroy", None, c_void_p)
loop_cfg_set_idle_threads = _fn("fuse_loop_cfg_set_idle_threads", None, c_void_p, c_uint)


def fill_stat(st: c_stat, a: object) -> None:
    """A view Attr into a struct stat (times in ns)."""
    st.st_ino, st.st_mode, st.st_nlink = a.ino, a.mode, a.nlink  # type: ignore[attr-defined]
    st.st_uid, st.st_gid, st.st_size, st.st_blocks = a.uid, a.gid, a.size, a.blocks  # type: ignore[attr-defined]
    for field, ns in (("st_atimespec", a.atime_ns), ("st_mtimespec", a.mtime_ns),  # type: ignore[attr-defined]
                      ("st_ctimespec", a.ctime_ns)):  # type: ignore[attr-defined]
        ts = getattr(st, field)
        ts.tv_sec, ts.tv_nsec = divmod(ns, 1_000_000_000)
