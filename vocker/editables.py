"""Editable installs in a venv: packages whose code stays in a source checkout outside it.

An image of such a venv holds only a pointer (a ``.pth`` file or an import hook) to that
checkout, so it works only where the checkout is, with whatever the checkout holds then.
Importing one is allowed, with a warning naming each.
"""

from __future__ import annotations

import json
from pathlib import Path

from .venv import is_venv, lib_dir


def find(root: Path) -> list[str]:
    """One "NAME -> WHERE" per editable install in the venv at ``root`` (none for a plain tree).

    Found by PEP 610's ``direct_url.json`` (``dir_info.editable``), setuptools'
    ``__editable__*.pth`` and legacy ``*.egg-link`` files.
    """
    if not is_venv(root):
        return []
    try:
        site = root / lib_dir(root) / "site-packages"
    except Exception:  # not a usable venv: the import says so itself
        return []
    found: dict[str, str] = {}
    for direct_url in site.glob("*.dist-info/direct_url.json"):
        try:
            doc = json.loads(direct_url.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("dir_info"), dict) and doc["dir_info"].get("editable"):
            name = direct_url.parent.name.removesuffix(".dist-info").rsplit("-", 1)[0]
            found[name.lower()] = f"{name} -> {str(doc.get('url', '?')).removeprefix('file://')}"
    for pth in site.glob("__editable__*.pth"):
        name = pth.stem.removeprefix("__editable__").strip("._").rsplit("-", 1)[0]
        found.setdefault(name.lower(), f"{name} -> (an import hook in {pth.name})")
    for link in site.glob("*.egg-link"):
        where = link.read_text(encoding="utf-8", errors="replace").splitlines()[:1]
        found.setdefault(link.stem.lower(), f"{link.stem} -> {where[0] if where else '?'}")
    return sorted(found.values())
