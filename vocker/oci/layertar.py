"""One layer as a standard OCI layer tarball (``application/vnd.oci.image.layer.v1.tar``), for
tools that know no vocker (podman, buildah, tar): directories, files and symlinks under a
prefix, templates rendered for that prefix, and hidden names as OCI whiteouts (``.wh.NAME``,
``.wh..wh..opq`` for an opaque directory). Members carry no owner and a fixed time, so the
same layer gives the same tarball.
"""

from __future__ import annotations

import io
import tarfile
from typing import IO

from .. import template
from ..store import Store
from ..tree import Kind
from ..walk import check_limits

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


def _info(name: str, kind: bytes, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, mtime
    info.uname = info.gname = ""
    return info


def write_layer(store: Store, root: str, stream: IO[bytes], prefix: str, mtime: int = 0) -> tuple[int, int]:
    """Write the layer whose tree is ``root`` as a tar to ``stream``; returns (entries, content bytes)."""
    check_limits(store, root)  # a tiny tree of repeated directories must not become a huge tarball
    prefix = prefix.strip("/")
    base = prefix.encode()
    render_root = b"/" + base
    entries = size = 0
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        parts = [p for p in prefix.split("/") if p]
        for i in range(len(parts)):
            tar.addfile(_info("/".join(parts[:i + 1]), tarfile.DIRTYPE, 0o755, mtime))
        stack = [(root, prefix)]
        while stack:
            digest, where = stack.pop()
            tree = store.tree(digest)
            if getattr(tree, "opaque", False):  # set by layers above the lowest (multi-layer images)
                tar.addfile(_info(f"{where}/{OPAQUE}".lstrip("/"), tarfile.REGTYPE, 0o644, mtime), io.BytesIO())
            subdirs = []
            for e in tree.entries:
                path = f"{where}/{e.name}".lstrip("/")
                entries += 1
                if e.kind is Kind.DIR:
                    tar.addfile(_info(path, tarfile.DIRTYPE, 0o755, mtime))
                    subdirs.append((e.digest, path))
                elif e.kind is Kind.SYMLINK:
                    info = _info(path, tarfile.SYMTYPE, 0o777, mtime)
                    info.linkname = e.target or ""
                    tar.addfile(info)
                elif e.kind is Kind.FILE:
                    data = store.read_content(e)
                    if e.template:
                        data = template.render(template.decode(data), render_root)
                    info = _info(path, tarfile.REGTYPE, 0o755 if e.executable else 0o644, mtime)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                    size += len(data)
                else:  # a whiteout: the name is gone from the layers below
                    tar.addfile(_info(f"{where}/{WHITEOUT}{e.name}".lstrip("/"), tarfile.REGTYPE, 0o644, mtime),
                                io.BytesIO())
            stack.extend(reversed(subdirs))  # type: ignore[arg-type]
    return entries, size
