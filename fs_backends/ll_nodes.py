"""The low-level driver's node table: FUSE node ids <-> the view's paths.

The kernel names files by node ids it got from LOOKUP (and CREATE, MKDIR, ...) and gives
each back with FORGET once it drops them; the view is path-based. A node keeps its path
until its name goes (unlink, rename over it, a remount moving it aside): then it lives on,
nameless, for the processes that still hold it, with what an fstat of it needs
(``detached``). Ids are never reused, so no generation number is needed.
"""

from __future__ import annotations

import errno
import itertools
import threading

import attrs

from vocker.view import Detached, Parts

ROOT_ID = 1


@attrs.define(eq=False)
class Node:
    id: int
    parts: Parts | None  # None once its name is gone
    lookups: int = 0
    opens: int = 0  # handles of the view opened through this node
    detached: Detached | None = None


class NodeTable:
    def __init__(self) -> None:
        root = Node(ROOT_ID, (), 1)
        self._nodes: dict[int, Node] = {ROOT_ID: root}
        self._by_parts: dict[Parts, Node] = {(): root}
        self._next = itertools.count(ROOT_ID + 1)
        self.lock = threading.Lock()

    def node(self, nid: int) -> Node:
        try:
            return self._nodes[nid]
        except KeyError:
            raise OSError(errno.ESTALE, "unknown node") from None

    def parts(self, nid: int) -> Parts:
        """The path of a node that still has a name (ENOENT for one removed while open)."""
        parts = self.node(nid).parts
        if parts is None:
            raise OSError(errno.ENOENT, "removed")
        return parts

    def find(self, parts: Parts) -> Node | None:
        return self._by_parts.get(parts)

    def remember(self, parts: Parts) -> Node:
        """The node of ``parts`` (a new one if the kernel knows none), one lookup more."""
        with self.lock:
            node = self._by_parts.get(parts)
            if node is None:
                node = Node(next(self._next), parts)
                self._nodes[node.id] = node
                self._by_parts[parts] = node
            node.lookups += 1
            return node

    def forget(self, nid: int, count: int) -> None:
        with self.lock:
            node = self._nodes.get(nid)
            if node is None or nid == ROOT_ID:
                return
            node.lookups -= count
            if node.lookups > 0:
                return
            del self._nodes[nid]
            if node.parts is not None and self._by_parts.get(node.parts) is node:
                del self._by_parts[node.parts]
        if node.detached is not None:
            node.detached.close()

    def opened(self, node: Node, delta: int) -> None:
        with self.lock:
            node.opens += delta

    def unname(self, parts: Parts) -> Node | None:
        """``parts`` is gone: its node (returned) keeps living for its holders, nameless."""
        with self.lock:
            node = self._by_parts.pop(parts, None)
            if node is not None:
                node.parts = None
            return node

    def move(self, old: Parts, new: Parts, is_dir: bool) -> None:
        """A rename: the node at ``old`` (and for a directory those below it) now at ``new``;
        the one at ``new`` before, if any, has lost its name."""
        with self.lock:
            replaced = self._by_parts.pop(new, None)
            if replaced is not None:
                replaced.parts = None
            n = len(old)
            moving = [p for p in self._by_parts if p[:n] == old] if is_dir else [old]
            for p in moving:
                node = self._by_parts.pop(p, None)
                if node is not None:
                    node.parts = new + p[n:]
                    self._by_parts[node.parts] = node
