"""An image's read-only layers, stacked: what each directory holds once every layer is applied.

A layer is a Merkle tree that may also hide what lies below it: whiteout entries (a name of
the layers below is gone) and opaque nodes (nothing below shows in that directory), with the
semantics of kernel overlayfs and OCI layers. A directory of the stack is identified by its
*key*: the nodes of that directory in each layer, topmost first. Resolving it merges those
nodes once (memoised), so a mount does nothing per layer up front, and a lookup reads only
the layers that hold the directory it looks into. The stack is one object its user holds, so
that user can swap in another stack later without anything else knowing.

The same merge gives the *flat* tree of a stack (no whiteouts: what ``squash`` stores and
``export`` writes), and ``layer_between`` computes the canonical layer that turns one flat tree
into another (what ``commit`` stores), skipping equal subtrees by their digests.
"""

from __future__ import annotations

from typing import Iterator

import attrs

from .digest import digest_bytes
from .manifest import Manifest
from .store import Store
from .tree import Entry, Kind, Tree

#: One directory of the stack: (layer index, node digest) per layer holding it, topmost first.
Key = tuple[tuple[int, str], ...]
Rel = tuple[str, ...]


@attrs.frozen
class Listing:
    """A merged directory: its visible entries (a directory's entry is its topmost one) and the
    key of each child directory."""

    entries: dict[str, Entry]
    dirs: dict[str, Key]


class LayerStack:
    """The merged read-only tree of ``layers`` (lowest first, as a manifest lists them)."""

    def __init__(self, store: Store, layers: tuple[str, ...]) -> None:
        self.store = store
        self.layers = layers
        self.root: Key = tuple((i, d) for i, d in reversed(list(enumerate(layers))))
        # A plain dict (atomic under the GIL) read by every FUSE thread; bounded by clearing.
        self._memo: dict[Key, Listing] = {}
        self._flat: dict[Key, str] = {}

    @classmethod
    def of(cls, store: Store, manifest: Manifest) -> "LayerStack":
        return cls(store, manifest.layers)

    def listing(self, key: Key) -> Listing:
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        if len(key) == 1:  # one layer holds it: its node as it is (the only case of a one-layer image)
            tree = self.store.tree(key[0][1])
            level = key[0][0]
            entries = {e.name: e for e in tree.entries if e.kind is not Kind.WHITEOUT}
            dirs = {e.name: ((level, e.digest),) for e in tree.entries if e.kind is Kind.DIR}
            out = Listing(entries, dirs)  # type: ignore[arg-type]
        else:
            out = self._merge(key)
        if len(self._memo) > 100_000:
            self._memo.clear()
        self._memo[key] = out
        return out

    def _merge(self, key: Key) -> Listing:
        entries: dict[str, Entry] = {}
        dirs: dict[str, list[tuple[int, str]]] = {}
        closed: set[str] = set()  # names nothing lower may add to (a whiteout, a file, or a lower non-directory)
        for level, digest in key:
            tree = self.store.tree(digest)
            for e in tree.entries:
                name = e.name
                if name in closed:
                    continue
                if e.kind is Kind.WHITEOUT:
                    closed.add(name)
                elif name in entries:  # a directory above: a lower directory merges, anything else is hidden
                    if e.kind is Kind.DIR:
                        dirs[name].append((level, e.digest))  # type: ignore[arg-type]
                    else:
                        closed.add(name)
                else:
                    entries[name] = e
                    if e.kind is Kind.DIR:
                        dirs[name] = [(level, e.digest)]  # type: ignore[list-item]
                    else:
                        closed.add(name)
            if tree.opaque:
                break
        return Listing(entries, {name: tuple(k) for name, k in dirs.items()})

    def key(self, rel: Rel) -> Key | None:
        """The key of the directory at ``rel``, or None when there is none."""
        key = self.root
        for name in rel:
            found = self.listing(key).dirs.get(name)
            if found is None:
                return None
            key = found
        return key

    def flat(self, objects: dict[str, bytes], key: Key | None = None) -> str:
        """The digest of the stack's tree with every layer applied (no whiteouts, no opaque
        marks), adding the nodes it makes to ``objects``. A directory only the lowest layer
        holds is that layer's node as it is: the cost follows what the upper layers touch."""
        key = self.root if key is None else key
        if len(key) == 1 and key[0][0] == 0:
            return key[0][1]
        hit = self._flat.get(key)
        if hit is not None:
            return hit
        listing = self.listing(key)
        entries = [Entry(name, Kind.DIR, digest=self.flat(objects, listing.dirs[name])) if e.kind is Kind.DIR else e
                   for name, e in listing.entries.items()]
        data = Tree.of(entries).encode()
        digest = digest_bytes(data)
        objects[digest] = data
        self._flat[key] = digest
        return digest


def flat_root(store: Store, manifest: Manifest) -> str:
    """The flat tree of an image: its one layer, or its layers merged (the merged nodes are
    held by the store for this process, never recorded)."""
    if len(manifest.layers) == 1:
        return manifest.layers[0]
    objects: dict[str, bytes] = {}
    digest = LayerStack.of(store, manifest).flat(objects)
    store.hold_trees(objects)
    return digest


def layer_between(store: Store, old: str, new: str, objects: dict[str, bytes]) -> str | None:
    """The canonical layer that turns the flat tree ``old`` into the flat tree ``new`` (None when
    they are equal), adding its nodes to ``objects``.

    Canonical, so the same change gives the same layer however it was made: an entry for each
    name added or changed, a whiteout for each name removed, a directory over a directory as
    the layer of that change; a directory that keeps none of its old entries (all removed or
    replaced) is one opaque node holding its new contents. Equal subtrees are skipped by digest.
    """
    if old == new:
        return None
    olds, news = store.tree(old).by_name(), store.tree(new).by_name()
    merging = {n for n, e in news.items() if n in olds and e.kind is Kind.DIR and olds[n].kind is Kind.DIR}
    if olds and not any(olds[n] == news.get(n) or n in merging for n in olds):
        tree = Tree.of(news.values(), opaque=True)
    else:
        entries = [Entry(n, Kind.WHITEOUT) for n in olds if n not in news]
        for name, e in news.items():
            if olds.get(name) == e:
                continue
            if name in merging:
                sub = layer_between(store, olds[name].digest, e.digest, objects)  # type: ignore[arg-type]
                entries.append(Entry(name, Kind.DIR, digest=sub))
            else:
                entries.append(e)
        tree = Tree.of(entries)
    data = tree.encode()
    digest = digest_bytes(data)
    objects[digest] = data
    return digest


@attrs.frozen
class Change:
    path: str
    status: str  # "A" added, "C" changed, "D" deleted (as docker diff)
    kind: Kind


def changes(store: Store, old: str | None, new: str | None, prefix: Rel = ()) -> Iterator[Change]:
    """What differs between two flat trees, path by path in name order, parents first; equal
    subtrees are skipped by digest, so two large images that differ in one package cost the
    size of that package."""
    if old == new:
        return
    olds = store.tree(old).by_name() if old is not None else {}
    news = store.tree(new).by_name() if new is not None else {}
    for name in sorted(olds.keys() | news.keys(), key=lambda n: n.encode("utf-8", "surrogatepass")):
        a, b = olds.get(name), news.get(name)
        if a == b:
            continue
        rel = prefix + (name,)
        path = "/".join(rel)
        if a is not None and b is not None and a.kind is Kind.DIR and b.kind is Kind.DIR:
            yield Change(path, "C", Kind.DIR)
            yield from changes(store, a.digest, b.digest, rel)
            continue
        if a is not None and b is not None and a.kind is b.kind:
            yield Change(path, "C", b.kind)
            continue
        if a is not None:
            yield Change(path, "D", a.kind)
            if a.kind is Kind.DIR:
                yield from changes(store, a.digest, None, rel)
        if b is not None:
            yield Change(path, "A", b.kind)
            if b.kind is Kind.DIR:
                yield from changes(store, None, b.digest, rel)
