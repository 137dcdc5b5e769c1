"""Image references as users type them: ``name[:tag]``, a full ID, or an ID prefix.

Names follow Docker's rules and limits: lowercase path components, at most 255
characters for the name and 128 for the tag. Patterns are full matches (``re.match``
with ``$`` would let a trailing newline through).
"""

from __future__ import annotations

import re

from .errors import UsageError

DEFAULT_TAG = "latest"
#: Docker's limits: a repository name of at most 255 characters, a tag of at most 128.
NAME_MAX = 255
TAG_MAX = 128
_NAME_RE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,%d}" % (TAG_MAX - 1))
_HEX = r"[0-9a-f]{4,64}"
_ID_PREFIX_RE = re.compile(rf"(?:sha256:)?({_HEX})")
_HEX_RE = re.compile(_HEX)


def normalize_tag(ref: str) -> str:
    """``name`` -> ``name:latest``; raise UsageError on names a registry would refuse."""
    name, sep, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "")
    if not sep:
        tag = DEFAULT_TAG
    if len(name) > NAME_MAX or not _NAME_RE.fullmatch(name) or not _TAG_RE.fullmatch(tag):
        raise UsageError(
            f"invalid image name {_shown(ref)}: use lowercase letters, digits, '.', '_', '-' and '/' "
            f"for the name (at most {NAME_MAX}), optionally ':TAG' (letters, digits, '_', '.', '-'; "
            f"at most {TAG_MAX})"
        )
    return f"{name}:{tag}"


def new_tag(ref: str) -> str:
    """``normalize_tag`` for a tag about to be set: also refuses names that would be read
    as an image ID prefix (``vocker run abcd`` must not mean a tag one day and an ID the next)."""
    tag = normalize_tag(ref)
    if id_prefix(ref) is not None or _HEX_RE.fullmatch(tag.rpartition(":")[0]):
        raise UsageError(f"invalid image name {_shown(ref)}: a name of 4-64 hex digits looks like an image ID")
    return tag


def id_prefix(ref: str) -> str | None:
    """The hex prefix if ``ref`` looks like an image ID (full or abbreviated)."""
    m = _ID_PREFIX_RE.fullmatch(ref)
    return m.group(1) if m else None


def _shown(ref: str) -> str:
    """The reference for an error line: quoted (a newline shows as \\n), and cut if huge."""
    return repr(ref) if len(ref) <= 80 else f"{ref[:60]!r}... ({len(ref)} characters)"
