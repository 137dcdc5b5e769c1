"""Content digests in the OCI form ``sha256:<64 hex>``."""

from __future__ import annotations

import hashlib
import re

from .errors import FormatError

ALGORITHM = "sha256"
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


def digest_bytes(data: bytes | memoryview) -> str:
    return f"{ALGORITHM}:{hashlib.sha256(data).hexdigest()}"


def is_digest(value: object) -> bool:
    return isinstance(value, str) and _DIGEST_RE.fullmatch(value) is not None


def check_digest(value: object, what: str = "digest") -> str:
    """Return ``value`` if it is a well-formed digest, else raise FormatError."""
    if not is_digest(value):
        raise FormatError(f"invalid {what}: {value!r}")
    return value  # type: ignore[return-value]


def hex_of(digest: str) -> str:
    return digest.split(":", 1)[1]


def short(digest: str, length: int = 12) -> str:
    """The short form shown in listings (like docker's 12-character IDs)."""
    return hex_of(digest)[:length]
