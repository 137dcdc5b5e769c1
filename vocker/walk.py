"""Walking an image's trees: listing entries and finding everything reachable."""

from __future__ import annotations

from typing import Iterator

from .errors import FormatError
from .store import Store
from .tree import Entry, Kind

Rel = tuple[str, ...]


def iter_entries(store: Store, tree_digest: str, prefix: Rel = ()) -> Iterator[tuple[Rel, Entry]]:
    """Every entry below a tree, parents before children."""
    if not prefix:
        store.prefetch_trees(tree_digest)
    for entry in store.tree(tree_digest).entries:
        rel = prefix + (entry.name,)
        yield rel, entry
        if entry.kind is Kind.DIR:
            assert entry.digest is not None
            yield from iter_entries(store, entry.digest, rel)


def single_layer(layers: tuple[str, ...]) -> str:
    if len(layers) != 1:
        raise FormatError(f"images with {len(layers)} layers are not supported by this vocker version")
    return layers[0]


def check_link(rel: Rel, target: str) -> None:
    """Refuse link targets that could point outside the image root.

    Allowed: relative targets whose '..' parts all come first and climb no higher
    than the link's own directory depth. Every hop of a chain of such links stays
    inside the root, because parent directories are real directories and after the
    climb the target only descends.
    """
    where = "/".join(rel)
    if target.startswith("/") or "\\" in target or "\0" in target:
        raise FormatError(f"unsafe symlink in image: {where} -> {target}")
    parts = [p for p in target.split("/") if p not in ("", ".")]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    if ".." in parts[ups:] or ups > len(rel) - 1:
        raise FormatError(f"unsafe symlink in image: {where} -> {target}")
