"""Walking an image's trees: listing entries and finding everything reachable."""

from __future__ import annotations

from typing import Iterator

from .errors import FormatError
from .store import Store
from .tree import MAX_DEPTH, MAX_ENTRIES, Entry, Kind

Rel = tuple[str, ...]


def iter_entries(store: Store, tree_digest: str) -> Iterator[tuple[Rel, Entry]]:
    """Every entry below a tree, parents before children, up to the format's limits.

    Identical directories are stored once, so a few hundred bytes of nodes can describe
    billions of files: walking stops with a FormatError past MAX_ENTRIES entries or
    MAX_DEPTH levels, before an export fills a disk with them.
    """
    store.prefetch_trees(tree_digest)
    count = 0
    stack: list[tuple[Rel, str]] = [((), tree_digest)]
    while stack:
        prefix, digest = stack.pop()
        if len(prefix) >= MAX_DEPTH:
            raise FormatError(f"image is nested deeper than {MAX_DEPTH} directories: {'/'.join(prefix[:8])}/...")
        subdirs = []
        for entry in store.tree(digest).entries:
            count += 1
            if count > MAX_ENTRIES:
                raise FormatError(f"image has more than {MAX_ENTRIES:,} files, directories and links "
                                  "(the limit of this vocker version)")
            rel = prefix + (entry.name,)
            yield rel, entry
            if entry.kind is Kind.DIR:
                assert entry.digest is not None
                subdirs.append((rel, entry.digest))
        stack.extend(reversed(subdirs))


def single_layer(layers: tuple[str, ...]) -> str:
    if len(layers) != 1:
        raise FormatError(f"images with {len(layers)} layers are not supported by this vocker version")
    return layers[0]


def escapes(rel: Rel, target: str) -> bool:
    """Whether a link at ``rel`` could point outside the image root.

    Safe: relative targets whose '..' parts all come first and climb no higher than the
    link's own directory depth. Every hop of a chain of such links stays inside the
    root, because parent directories are real directories and after the climb the
    target only descends.
    """
    if target.startswith("/") or "\\" in target or "\0" in target:
        return True
    parts = [p for p in target.split("/") if p not in ("", ".")]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    return ".." in parts[ups:] or ups > len(rel) - 1


def check_link(rel: Rel, target: str) -> None:
    """Refuse link targets that could point outside the image root (see ``escapes``)."""
    if escapes(rel, target):
        raise FormatError(f"unsafe symlink in image: {'/'.join(rel)} -> {target}")


def link_placeholder(target: str) -> bytes:
    """What an audit (export or mount) shows instead of a link out of the image: a small
    file naming the target, so the auditor sees it and nothing follows it."""
    return f"vocker: symlink to {target!r}, which points outside the image (not followed)\n".encode()
