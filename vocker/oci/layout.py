"""OCI image layouts: a directory (push/pull), a tar of one (save/load).

The layout is the standard one (``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``), so
a directory pushed here can be served by any static file server and read by ``static.py``,
and tools that read layouts see ordinary (artifact) manifests. Every file is written
atomically (temp + fsync + rename); index.json last, so a reader never sees a tag naming
blobs that are not there yet.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tarfile
import threading
from pathlib import Path
from typing import IO, Any

import attrs

from ..digest import hex_of, is_digest
from ..errors import FormatError, UsageError
from . import media
from .remote import TransferError

LAYOUT = {"imageLayoutVersion": "1.0.0"}
INDEX_MAX = 16 << 20
_BLOB_NAME = re.compile(r"blobs/sha256/([0-9a-f]{64})")


def index_doc(manifests: list[dict[str, Any]]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": media.OCI_INDEX, "manifests": manifests},
                      sort_keys=True, indent=1).encode()


def index_entry(tag: str | None, data: bytes, digest: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"mediaType": media.OCI_MANIFEST, "digest": digest, "size": len(data),
                             "artifactType": media.ARTIFACT}
    if tag is not None:
        entry["annotations"] = {media.ANN_REF_NAME: tag}
    return entry


def parse_index(data: bytes, where: str) -> list[dict[str, Any]]:
    doc = media.load_json(data, INDEX_MAX, f"index.json of {where}")
    manifests = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(manifests, list) or not all(isinstance(m, dict) and is_digest(m.get("digest"))
                                                  for m in manifests):
        raise FormatError(f"index.json of {where} is not an OCI image index")
    return manifests


def ref_name(entry: dict[str, Any]) -> str | None:
    ann = entry.get("annotations")
    name = ann.get(media.ANN_REF_NAME) if isinstance(ann, dict) else None
    return name if isinstance(name, str) else None


def find_in_index(manifests: list[dict[str, Any]], ref: str, where: str) -> str:
    """The manifest digest a tag (or digest) names in an index."""
    if is_digest(ref):
        return ref
    for m in manifests:
        if ref_name(m) == ref:
            return m["digest"]
    raise UsageError(f"no image tagged {ref!r} in {where}")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@attrs.define
class LayoutDir:
    """An OCI image layout directory as a Remote."""

    root: Path
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    @property
    def name(self) -> str:
        return str(self.root)

    def blob(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / hex_of(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob(digest).is_file()

    def get_blob(self, digest: str) -> bytes:
        try:
            return self.blob(digest).read_bytes()
        except FileNotFoundError:
            raise TransferError(f"blob {digest} is missing in {self.name}") from None

    def get_range(self, digest: str, start: int, end: int) -> bytes:
        try:
            with open(self.blob(digest), "rb") as f:
                f.seek(start)
                return f.read(end - start)
        except FileNotFoundError:
            raise TransferError(f"blob {digest} is missing in {self.name}") from None

    def mount_blob(self, digest: str) -> bool:
        return False

    def put_blob(self, digest: str, data: bytes) -> None:
        self._setup()
        _write_atomic(self.blob(digest), data)

    def _setup(self) -> None:
        if not (self.root / "oci-layout").is_file():
            if self.root.exists() and not self.root.is_dir():
                raise UsageError(f"not a directory: {self.root}")
            (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            _write_atomic(self.root / "oci-layout", json.dumps(LAYOUT).encode())

    def _manifests(self) -> list[dict[str, Any]]:
        try:
            data = (self.root / "index.json").read_bytes()
        except FileNotFoundError:
            if not self.root.is_dir():
                raise UsageError(f"no such image layout directory: {self.root}") from None
            return []
        return parse_index(data, self.name)

    def get_manifest(self, ref: str) -> bytes:
        return self.get_blob(find_in_index(self._manifests(), ref, self.name))

    def put_manifest(self, tag: str, data: bytes, media_type: str) -> None:
        from ..digest import digest_bytes

        digest = digest_bytes(data)
        self.put_blob(digest, data)
        with self._lock:
            manifests = [m for m in self._manifests() if ref_name(m) != tag]
            manifests.append(index_entry(tag, data, digest))
            _write_atomic(self.root / "index.json", index_doc(manifests))

    def tags(self) -> list[str]:
        return sorted({n for n in map(ref_name, self._manifests()) if n})


@attrs.define
class TarWriter:
    """A layout written straight into a tar stream (``vocker save``): blobs as they come, the
    index last. Members carry no owner or time, so the same images give the same file."""

    tar: tarfile.TarFile
    written: set[str] = attrs.field(factory=set)
    manifests: list[dict[str, Any]] = attrs.field(factory=list)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    name: str = "the archive"

    @classmethod
    def open(cls, stream: IO[bytes]) -> "TarWriter":
        writer = cls(tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT))
        writer._add("oci-layout", json.dumps(LAYOUT).encode())
        return writer

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        with self._lock:
            self.tar.addfile(info, io.BytesIO(data))

    def has_blob(self, digest: str) -> bool:
        return digest in self.written

    def mount_blob(self, digest: str) -> bool:
        return False

    def put_blob(self, digest: str, data: bytes) -> None:
        with self._lock:
            if digest in self.written:
                return
            self.written.add(digest)
        self._add(f"blobs/sha256/{hex_of(digest)}", data)

    def put_manifest(self, tag: str, data: bytes, media_type: str) -> None:
        from ..digest import digest_bytes

        digest = digest_bytes(data)
        self.put_blob(digest, data)
        self.manifests.append(index_entry(tag, data, digest))

    def close(self) -> None:
        self._add("index.json", index_doc(self.manifests))
        self.tar.close()


def unpack(stream: IO[bytes], dest: Path) -> LayoutDir:
    """A layout tar (``vocker save``'s, or any OCI layout tar) into ``dest``: only its index and
    blobs, under names it cannot choose (no path from the archive is used as it is)."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    layout = LayoutDir(dest)
    seen_index = False
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                match = _BLOB_NAME.fullmatch(name)
                if not member.isfile() or not (match or name in ("index.json", "oci-layout")):
                    continue
                src = tar.extractfile(member)
                assert src is not None
                if name == "index.json":
                    data = src.read(INDEX_MAX + 1)
                    parse_index(data, "the archive")
                    (dest / "index.json").write_bytes(data)
                    seen_index = True
                elif match:
                    with open(layout.blob("sha256:" + match.group(1)), "wb") as out:
                        while piece := src.read(1 << 20):
                            out.write(piece)
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise FormatError(f"not an image archive (a tar of an OCI image layout): {exc}") from None
    if not seen_index:
        raise FormatError("not an image archive: it has no index.json (truncated?)")
    return layout
