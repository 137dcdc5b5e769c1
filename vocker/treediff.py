"""What differs between two images, path by path (for audits)."""

from __future__ import annotations

from . import layerstack, walk
from .manifest import Manifest
from .store import Store
from .tree import Entry, Kind


def _files(store: Store, manifest: Manifest) -> dict[str, Entry]:
    tree = layerstack.flat_root(store, manifest)
    walk.check_limits(store, tree)
    return {"/".join(rel): e for rel, e in walk.iter_entries(store, tree)}


def _describe(a: Entry, b: Entry) -> str | None:
    if a.kind is not b.kind:
        return f"kind differs ({a.kind.name.lower()} vs {b.kind.name.lower()})"
    if a.kind is Kind.SYMLINK:
        return None if a.target == b.target else f"link target differs ({a.target} vs {b.target})"
    if a.kind is Kind.DIR:
        return None
    notes = []
    if (a.digest, a.inline) != (b.digest, b.inline):
        notes.append(f"content differs ({a.size} vs {b.size} bytes)" if a.size != b.size else
                     f"content differs (same size, {a.size} bytes)")
    if a.executable != b.executable:
        notes.append(f"executable bit differs ({a.executable} vs {b.executable})")
    if a.template != b.template:
        notes.append("stored as a template in only one of them")
    return "; ".join(notes) or None


def diff(store_a: Store, id_a: str, store_b: Store, id_b: str, limit: int = 200) -> list[str]:
    """Human-readable differences, 'a' being the original and 'b' the rebuild."""
    ma, mb = store_a.manifest(id_a), store_b.manifest(id_b)
    out = []
    if ma.python != mb.python:
        out.append(f"python facts differ: {ma.python} vs {mb.python}")
    if ma.kind != mb.kind:
        out.append(f"kind differs: {ma.kind} vs {mb.kind}")
    fa, fb = _files(store_a, ma), _files(store_b, mb)
    for path in sorted(set(fa) | set(fb)):
        if path not in fb:
            out.append(f"only in the image: {path}")
        elif path not in fa:
            out.append(f"only in the rebuild: {path}")
        else:
            note = _describe(fa[path], fb[path])
            if note:
                out.append(f"{path}: {note}")
        if len(out) >= limit:
            out.append("... (more differences not shown)")
            break
    return out
