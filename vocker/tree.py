"""Merkle tree nodes: one canonical-CBOR node per directory.

A node records only what makes an environment work the same anywhere: names, kinds,
the executable bit, sizes, content digests (or tiny contents inline) and link
targets. Nothing host-specific (mtimes, owners, inode numbers) goes in, so the same
files give the same digest on every machine.
"""

from __future__ import annotations

import enum
from typing import Any, Iterable

import attrs

from . import cbor
from .digest import check_digest, digest_bytes
from .errors import FormatError

TREE_VERSION = 1
#: Nodes of an upper layer that hide something below (a whiteout entry, or the opaque mark)
#: are written as version 2: a reader that predates layers refuses them with a clear
#: "unsupported tree format version" rather than showing what they hide. Every other node
#: stays version 1, byte for byte, so no existing digest changes.
LAYER_TREE_VERSION = 2
#: Files up to this size are stored inside their directory's node: it saves a blob
#: file (and an fsync) for the many empty or tiny files of a venv. Part of the format.
INLINE_MAX = 256
#: Limits of what an image may expand to (checked wherever it is expanded, e.g. an export):
#: identical directories are stored once, so a tiny tree can name billions of files.
MAX_ENTRIES = 1_000_000
MAX_DEPTH = 256
#: ... and at most this many path components in all (a million files 16 levels deep), so
#: a list of an image's paths stays within a few hundred MB.
MAX_PATH_PARTS = 16_000_000


class Kind(str, enum.Enum):
    FILE = "f"
    DIR = "d"
    SYMLINK = "l"
    #: only in an upper layer: hides the name in the layers below (OCI ``.wh.NAME``)
    WHITEOUT = "w"


_KINDS = {k.value: k for k in Kind}
_FIELDS = {Kind.FILE: frozenset("nkschxt"), Kind.DIR: frozenset("nkh"), Kind.SYMLINK: frozenset("nkl"),
           Kind.WHITEOUT: frozenset("nk")}


def check_name(name: object) -> str:
    """Reject names that could escape a directory or are not portable path parts."""
    if not isinstance(name, str) or name in ("", ".", ".."):
        raise FormatError(f"invalid name in tree: {name!r}")
    if "/" in name or "\0" in name or "\\" in name:
        raise FormatError(f"invalid name in tree: {name!r}")
    return name


@attrs.frozen
class Entry:
    name: str
    kind: Kind
    #: File: content size in bytes (for a template, the size of the stored template).
    size: int = 0
    #: File: digest of the content blob (None when inlined). Dir: digest of its node.
    digest: str | None = None
    #: File: the whole content, for files of at most INLINE_MAX bytes.
    inline: bytes | None = None
    executable: bool = False
    #: File: content is a template (see template.py), rendered for the path in use.
    template: bool = False
    #: Symlink: the link target, as stored.
    target: str | None = None

    def to_cbor(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.name, "k": self.kind.value}
        if self.kind is Kind.FILE:
            out["s"] = self.size
            if self.inline is not None:
                out["c"] = self.inline
            else:
                out["h"] = self.digest
            if self.executable:
                out["x"] = True
            if self.template:
                out["t"] = True
        elif self.kind is Kind.DIR:
            out["h"] = self.digest
        elif self.kind is Kind.SYMLINK:
            out["l"] = self.target
        return out

    @classmethod
    def from_cbor(cls, raw: object) -> "Entry":
        if not isinstance(raw, dict):
            raise FormatError("corrupt tree: entry is not a map")
        name = check_name(raw.get("n"))
        kind = _KINDS.get(raw.get("k"))  # type: ignore[arg-type]
        if kind is None:
            raise FormatError(f"corrupt tree: unknown kind for {name!r}")
        if not _FIELDS[kind].issuperset(raw):
            raise FormatError(f"corrupt tree: unexpected fields for {name!r}")
        if kind is Kind.DIR:
            return cls(name, kind, digest=check_digest(raw.get("h"), "tree digest"))
        if kind is Kind.WHITEOUT:
            return cls(name, kind)
        if kind is Kind.SYMLINK:
            target = raw.get("l")
            if not isinstance(target, str) or not target or "\0" in target:
                raise FormatError(f"corrupt tree: invalid link target for {name!r}")
            return cls(name, kind, target=target)
        size = raw.get("s")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise FormatError(f"corrupt tree: invalid size for {name!r}")
        executable, template = raw.get("x", False), raw.get("t", False)
        if executable is not True and executable is not False or template is not True and template is not False:
            raise FormatError(f"corrupt tree: invalid flags for {name!r}")
        if "c" in raw:
            inline = raw["c"]
            if "h" in raw or not isinstance(inline, bytes) or len(inline) != size or size > INLINE_MAX:
                raise FormatError(f"corrupt tree: invalid inline content for {name!r}")
            return cls(name, kind, size=size, inline=inline, executable=executable, template=template)
        return cls(name, kind, size=size, digest=check_digest(raw.get("h"), "content digest"),
                   executable=executable, template=template)


def _sort_key(name: str) -> bytes:
    return name.encode("utf-8", "surrogatepass")


@attrs.frozen
class Tree:
    entries: tuple[Entry, ...]
    #: only in an upper layer: nothing of the layers below shows in this directory (OCI ``.wh..wh..opq``)
    opaque: bool = False

    @classmethod
    def of(cls, entries: Iterable[Entry], opaque: bool = False) -> "Tree":
        return cls(tuple(sorted(entries, key=lambda e: _sort_key(e.name))), opaque)

    @property
    def hides(self) -> bool:
        """Whether the node hides anything below it (whiteouts or the opaque mark): a layer form."""
        return self.opaque or any(e.kind is Kind.WHITEOUT for e in self.entries)

    def encode(self) -> bytes:
        if not self.hides:  # the version-1 form, unchanged since the first images
            return cbor.dumps({"v": TREE_VERSION, "e": [e.to_cbor() for e in self.entries]})
        out: dict[str, Any] = {"v": LAYER_TREE_VERSION, "e": [e.to_cbor() for e in self.entries]}
        if self.opaque:
            out["o"] = True
        return cbor.dumps(out)

    def digest(self) -> str:
        return digest_bytes(self.encode())

    def by_name(self) -> dict[str, Entry]:
        return {e.name: e for e in self.entries}

    @classmethod
    def decode(cls, data: bytes, *, check_canonical: bool = True) -> "Tree":
        """Parse and validate a node. ``check_canonical=False`` skips re-encoding to compare
        bytes (a third of the cost), for nodes whose digest was just checked and that the
        store only records after encoding or checking them itself; names and fields are
        still validated."""
        raw = cbor.loads(data, "tree", check_canonical=check_canonical)
        if not isinstance(raw, dict) or not {"v", "e"} <= set(raw) <= {"v", "e", "o"} \
                or not isinstance(raw["e"], list):
            raise FormatError("corrupt tree: not a tree node")
        if raw["v"] not in (TREE_VERSION, LAYER_TREE_VERSION):
            raise FormatError(f"unsupported tree format version {raw['v']!r}")
        if raw.get("o", True) is not True:
            raise FormatError("corrupt tree: invalid opaque mark")
        entries = tuple(Entry.from_cbor(e) for e in raw["e"])
        names = [_sort_key(e.name) for e in entries]
        if names != sorted(set(names)):  # canonical order, and each name once
            raise FormatError("corrupt tree: entries unsorted or duplicated")
        tree = cls(entries, "o" in raw)
        if (raw["v"] == LAYER_TREE_VERSION) != tree.hides:  # one form per node, so one digest
            raise FormatError("corrupt tree: wrong node version for its entries")
        return tree
