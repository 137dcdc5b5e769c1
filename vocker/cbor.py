"""Canonical CBOR: the one byte encoding that image IDs are computed over."""

from __future__ import annotations

from typing import Any

import cbor2

from . import interrupts
from .errors import FormatError


def dumps(obj: Any) -> bytes:
    """Encode with RFC 8949 core deterministic rules (sorted map keys, shortest forms).

    Ctrl-C is held off while cbor2 encodes (2 us): it checks every list with an
    ``isinstance`` that runs Python code, and a KeyboardInterrupt raised there is
    swallowed ("Exception ignored in ...") while the command goes on.
    """
    held = interrupts.hold()
    try:
        return cbor2.dumps(obj, canonical=True)
    finally:
        interrupts.release(held)


def loads(data: bytes, what: str = "object", *, check_canonical: bool = True) -> Any:
    """Decode untrusted bytes; any malformation becomes a FormatError, never a crash.

    Re-encoding must give the same bytes: a non-canonical encoding would let two
    byte strings describe one tree, breaking the Merkle identity.
    """
    try:
        obj = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types, some not CBORDecodeError
        raise FormatError(f"corrupt {what}: not valid CBOR ({exc})") from None
    if not check_canonical:
        return obj
    try:
        canonical = dumps(obj)
    except Exception as exc:
        raise FormatError(f"corrupt {what}: unsupported CBOR value ({exc})") from None
    if canonical != bytes(data):
        raise FormatError(f"corrupt {what}: not canonical CBOR")
    return obj
