"""Image references as users type them: ``name[:tag]``, a full ID, or an ID prefix."""

from __future__ import annotations

import re

from .errors import UsageError

DEFAULT_TAG = "latest"
_NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_ID_PREFIX_RE = re.compile(r"^(?:sha256:)?([0-9a-f]{4,64})$")


def normalize_tag(ref: str) -> str:
    """``name`` -> ``name:latest``; raise UsageError on names a registry would refuse."""
    name, sep, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "")
    if not sep:
        tag = DEFAULT_TAG
    if not _NAME_RE.match(name) or not _TAG_RE.match(tag):
        raise UsageError(
            f"invalid image name {ref!r}: use lowercase letters, digits, '.', '_', '-' and '/' "
            "for the name, optionally ':TAG'"
        )
    return f"{name}:{tag}"


def id_prefix(ref: str) -> str | None:
    """The hex prefix if ``ref`` looks like an image ID (full or abbreviated)."""
    m = _ID_PREFIX_RE.match(ref)
    return m.group(1) if m else None
