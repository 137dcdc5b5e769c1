"""Walking an image's trees: listing entries and finding everything reachable."""

from __future__ import annotations

from typing import Iterator

import attrs

from .errors import FormatError
from .store import Store
from .tree import MAX_DEPTH, MAX_ENTRIES, MAX_PATH_PARTS, Entry, Kind

Rel = tuple[str, ...]


@attrs.frozen
class Extent:
    """What a tree expands to, computed once per distinct node (no expansion needed)."""

    entries: int  # files, directories and links below, counted at every place they appear
    size: int  # bytes of those files
    height: int  # directory levels below (0: no subdirectory)
    parts: int  # the path components of all those entries (what a list of their paths holds)


def extent(store: Store, tree_digest: str) -> Extent:
    store.prefetch_trees(tree_digest)
    memo: dict[str, Extent] = {}
    stack: list[tuple[str, bool]] = [(tree_digest, False)]
    while stack:
        digest, children_done = stack.pop()
        if digest in memo:
            continue
        subdirs = [e.digest for e in store.tree(digest).entries if e.kind is Kind.DIR]
        if not children_done:
            stack.append((digest, True))
            stack.extend((d, False) for d in subdirs if d not in memo)  # type: ignore[misc]
            continue
        entries = size = height = parts = 0
        for e in store.tree(digest).entries:
            entries += 1
            parts += 1
            if e.kind is Kind.FILE:
                size += e.size
            elif e.kind is Kind.DIR:
                child = memo[e.digest]  # type: ignore[index]
                entries += child.entries
                parts += child.parts + child.entries  # one level deeper from here
                size += child.size
                height = max(height, child.height + 1)
        memo[digest] = Extent(entries, size, height, parts)
    return memo[tree_digest]


def check_limits(store: Store, tree_digest: str) -> Extent:
    """The tree's extent, or FormatError when it passes the format's limits: identical
    directories are stored once, so a few hundred bytes of nodes can describe billions of
    files (or a path list of gigabytes), which an export must refuse before it starts."""
    ext = extent(store, tree_digest)
    if ext.entries > MAX_ENTRIES:
        raise FormatError(f"image has {ext.entries:,} files, directories and links, more than {MAX_ENTRIES:,} "
                          "(the limit of this vocker version)")
    if ext.height + 1 > MAX_DEPTH:
        raise FormatError(f"image is nested {ext.height + 1} directories deep, more than {MAX_DEPTH}")
    if ext.parts > MAX_PATH_PARTS:
        raise FormatError(f"image's paths have {ext.parts:,} components in all, more than {MAX_PATH_PARTS:,}")
    return ext


def iter_entries(store: Store, tree_digest: str) -> Iterator[tuple[Rel, Entry]]:
    """Every entry below a tree, parents before children. Call ``check_limits`` first when
    the tree may come from anyone: this expands whatever it is given."""
    stack: list[tuple[Rel, str]] = [((), tree_digest)]
    while stack:
        prefix, digest = stack.pop()
        subdirs = []
        for entry in store.tree(digest).entries:
            rel = prefix + (entry.name,)
            yield rel, entry
            if entry.kind is Kind.DIR:
                assert entry.digest is not None
                subdirs.append((rel, entry.digest))
        stack.extend(reversed(subdirs))




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
