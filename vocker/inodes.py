"""Inode identity in a container's view: the numbers a mount shows, and the names of hard links.

A mount shows one number per node for its lifetime, equal for hard links, as a disk does
(``du``, ``tar``, ``rsync -H`` and ``cp -a`` find hard links by it). A file of the
writable layer shows the number it has there, so its links share it and it survives
remounts; a node of the image gets one derived from its path, so it is the same at every
mount. The two kinds cannot meet: image numbers have the top bit set, which the
writable layer's file systems leave clear (the rare one that does not is renumbered).

The writable layer's hard links are separate nodes for the kernel, so after one name
changes the driver must refresh the others: :class:`LinkIndex` knows them without walking
the layer on every change.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading

#: Image nodes are numbered in [TOP, 2**64): above any number a writable layer's file has.
TOP = 1 << 63

Parts = tuple[str, ...]
Key = tuple[int, int]  # (st_dev, st_ino) of a writable-layer file


class Numbers:
    """Inode numbers, unique within a mount: a writable-layer file's own (``upper``), else one
    hashed from an image node's path (``image``). Two paths whose hashes meet are told apart by
    the later one taking the next free number (so only they may differ between mounts)."""

    def __init__(self) -> None:
        self._taken: dict[int, int] = {}  # number -> 128-bit hash of what holds it; never shrinks
        self._images: dict[Parts, int] = {}  # what image() gave (every getattr asks): no hash twice

    def image(self, parts: Parts) -> int:
        number = self._images.get(parts)
        if number is None:
            key = b"image\0" + "/".join(parts).encode("utf-8", "surrogateescape")
            number = self._images[parts] = self._claim(key)
        return number

    def upper(self, st: os.stat_result) -> int:
        if st.st_ino < TOP:
            return st.st_ino
        return self._claim(b"upper\0%d\0%d" % (st.st_dev, st.st_ino))

    def _claim(self, key: bytes) -> int:
        h = int.from_bytes(hashlib.blake2b(key, digest_size=16).digest(), "big")
        n = h & (TOP - 1)
        while True:  # linear probing: numbers are never given back, so a holder is found before a gap
            holder = self._taken.setdefault(TOP | n, h)  # atomic: safe from every driver thread
            if holder == h:
                return TOP | n
            n = (n + 1) & (TOP - 1)


class LinkIndex:
    """The names of each multiply-linked file of the writable layer.

    Built by one walk of the layer the first time it is asked (most layers have no hard
    links and never are), then kept true by the view's link, unlink and rename, so no
    change walks the layer again. Copy-ups, creates and directories never concern it: they
    make files with one link.
    """

    def __init__(self, root_fd: int) -> None:
        """``root_fd``: a descriptor of the layer's root, which paths are relative to (so a
        path as long as a mount allows is reached, whatever the layer's own path)."""
        self.root_fd = root_fd
        self._names: dict[Key, set[Parts]] | None = None
        self.lock = threading.RLock()

    def names(self, st: os.stat_result) -> set[Parts]:
        """Every name of the file ``st`` describes (a copy; empty for a file with one link)."""
        if stat.S_ISDIR(st.st_mode) or st.st_nlink <= 1:
            return set()
        with self.lock:
            if self._names is None:
                self._names = self._walk()
            return set(self._names.get((st.st_dev, st.st_ino), ()))

    def linked(self, st: os.stat_result, *names: Parts) -> None:
        """``names`` are (now) links of ``st``'s file."""
        with self.lock:
            if self._names is not None:
                self._names.setdefault((st.st_dev, st.st_ino), set()).update(names)

    def unlinked(self, st: os.stat_result, name: Parts) -> None:
        """``name`` no longer links to ``st``'s file (removed, or renamed over)."""
        with self.lock:
            if self._names is None:
                return
            key = (st.st_dev, st.st_ino)
            names = self._names.get(key)
            if names is not None:
                names.discard(name)
                if len(names) <= 1:  # a single name left: nothing to refresh any more
                    del self._names[key]

    def moved(self, old: Parts, new: Parts) -> None:
        """A rename: ``old`` and every name below it are now under ``new``."""
        with self.lock:
            if self._names is None:
                return
            n = len(old)
            for names in self._names.values():
                hit = [p for p in names if p[:n] == old]
                if hit:
                    names.difference_update(hit)
                    names.update(new + p[n:] for p in hit)

    def _walk(self) -> dict[Key, set[Parts]]:
        found: dict[Key, set[Parts]] = {}
        stack: list[Parts] = [()]
        while stack:
            parts = stack.pop()
            fd = _open_dir("/".join(parts) or ".", self.root_fd)
            if fd < 0:
                continue
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        if entry.name.startswith(".wh."):
                            continue  # whiteouts and opaque markers: never linked to
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(parts + (entry.name,))
                            continue
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        if st.st_nlink > 1:
                            found.setdefault((st.st_dev, st.st_ino), set()).add(parts + (entry.name,))
            finally:
                os.close(fd)
        return found


def _open_dir(path: str, dir_fd: int) -> int:
    """A directory to list without changing its atime (O_NOATIME needs its owner: else as is); -1 if gone."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    for extra in (getattr(os, "O_NOATIME", 0), 0):
        try:
            return os.open(path, flags | extra, dir_fd=dir_fd)
        except PermissionError:
            continue
        except OSError:
            return -1
    return -1
