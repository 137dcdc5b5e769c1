"""Image manifests: the ordered layers plus the environment's reproducible facts.

The image ID is the digest of the manifest's canonical CBOR. Anything that differs
between two honest builds of the same environment (paths, dates, host names, the
base interpreter's location) lives in the image's *provenance* record instead,
which is stored beside the manifest but is not part of the ID.
"""

from __future__ import annotations

from typing import Any

import attrs

from . import cbor
from .digest import check_digest, digest_bytes
from .errors import FormatError

MANIFEST_VERSION = 1
KINDS = ("venv", "tree")


@attrs.frozen
class PythonFacts:
    """What an environment needs from the interpreter that runs it."""

    implementation: str  # sys.implementation.name, e.g. "cpython"
    version: str  # full version, e.g. "3.11.7"
    cache_tag: str  # sys.implementation.cache_tag, e.g. "cpython-311" (pyc file names)
    magic: str  # importlib.util.MAGIC_NUMBER as hex (pyc compatibility)
    soabi: str  # sysconfig SOABI, e.g. "cpython-311-x86_64-linux-gnu" ("" if unknown)
    platform: str  # sysconfig.get_platform(), e.g. "linux-x86_64"
    lib: str  # the stdlib-relative dir holding site-packages, e.g. "lib/python3.11"
    system_site_packages: bool = False

    @property
    def minor(self) -> str:
        return ".".join(self.version.split(".")[:2])

    def to_cbor(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_cbor(cls, raw: object) -> "PythonFacts":
        fields = {f.name: f.type for f in attrs.fields(cls)}
        if not isinstance(raw, dict) or set(raw) != set(fields):
            raise FormatError("corrupt manifest: bad python facts")
        for key, value in raw.items():
            expected = bool if key == "system_site_packages" else str
            if not isinstance(value, expected):
                raise FormatError(f"corrupt manifest: bad python fact {key!r}")
        return cls(**raw)


@attrs.frozen
class Manifest:
    kind: str  # "venv" (rendered with scaffolding) or "tree" (files as they are)
    layers: tuple[str, ...]  # tree digests, lowest first
    python: PythonFacts | None = None

    def to_cbor(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": MANIFEST_VERSION, "kind": self.kind, "layers": list(self.layers)}
        if self.python is not None:
            out["python"] = self.python.to_cbor()
        return out

    def encode(self) -> bytes:
        return cbor.dumps(self.to_cbor())

    def digest(self) -> str:
        return digest_bytes(self.encode())

    @classmethod
    def decode(cls, data: bytes) -> "Manifest":
        raw = cbor.loads(data, "manifest")
        if not isinstance(raw, dict) or not {"v", "kind", "layers"} <= set(raw) <= {"v", "kind", "layers", "python"}:
            raise FormatError("corrupt manifest: not an image manifest")
        if raw["v"] != MANIFEST_VERSION:
            raise FormatError(f"unsupported manifest format version {raw['v']!r}")
        if raw["kind"] not in KINDS:
            raise FormatError(f"corrupt manifest: unknown kind {raw['kind']!r}")
        layers = raw["layers"]
        if not isinstance(layers, list) or not layers:
            raise FormatError("corrupt manifest: no layers")
        python = PythonFacts.from_cbor(raw["python"]) if "python" in raw else None
        if (python is None) != (raw["kind"] == "tree"):
            raise FormatError("corrupt manifest: python facts must be present exactly for venv images")
        return cls(raw["kind"], tuple(check_digest(d, "layer digest") for d in layers), python)
