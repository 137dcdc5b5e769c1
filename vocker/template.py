"""Templates: file contents with the environment's location cut out.

A venv bakes its own absolute path into scripts and config. To make images
location-independent, such files are stored as a list of parts: byte strings are
literal, text strings name a variable filled in for the path in use (export
directory or mount point). Stored as canonical CBOR ``{"v": 1, "p": [...]}``.
"""

from __future__ import annotations

import re
import shlex
from typing import Iterable, Iterator, Union

from . import cbor
from .errors import FormatError

TEMPLATE_VERSION = 1
#: The environment root, as an absolute path.
VENV = "venv"
#: A script's interpreter line(s) for ``<root>/bin/python``: a plain ``#!`` line, or a
#: ``/bin/sh`` trampoline when the path is too long or needs quoting (as pip does).
SHEBANG = "shebang"
VARIABLES = (VENV, SHEBANG)

Part = Union[bytes, str]

#: Longest shebang line the Linux kernel honours (BINPRM_BUF_SIZE - 1).
_MAX_SHEBANG = 127


def encode(parts: list[Part]) -> bytes:
    return cbor.dumps({"v": TEMPLATE_VERSION, "p": parts})


# Streaming encoding, for files too large to hold (normalize.VenvPaths.template_pieces): the
# same canonical CBOR as ``encode``, {"p": [...], "v": 1} ("p" sorts before "v"), in pieces.

def _head(major: int, n: int) -> bytes:
    """A CBOR item head in its shortest form (RFC 8949 §4.2.1)."""
    if n < 24:
        return bytes([major << 5 | n])
    for extra, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * width):
            return bytes([major << 5 | extra]) + n.to_bytes(width, "big")
    raise ValueError("too large for CBOR")


def encode_head(parts: int) -> bytes:
    """What precedes the parts: the map, its key "p" and the array head."""
    return _head(5, 2) + _head(3, 1) + b"p" + _head(4, parts)


def encode_bytes_head(n: int) -> bytes:
    """The head of a literal part of ``n`` bytes (the bytes follow)."""
    return _head(2, n)


def encode_variable(name: str) -> bytes:
    raw = name.encode()
    return _head(3, len(raw)) + raw


def encode_tail() -> bytes:
    return _head(3, 1) + b"v" + _head(0, TEMPLATE_VERSION)


def decode(data: bytes) -> list[Part]:
    raw = cbor.loads(data, "template")
    if not isinstance(raw, dict) or set(raw) != {"v", "p"} or raw["v"] != TEMPLATE_VERSION:
        raise FormatError("corrupt template")
    parts = raw["p"]
    if not isinstance(parts, list) or not all(
        isinstance(p, bytes) or (isinstance(p, str) and p in VARIABLES) for p in parts
    ):
        raise FormatError("corrupt template: unknown part")
    return parts


def shebang_for(root: bytes) -> bytes:
    python = root + b"/bin/python"
    if len(python) + 2 <= _MAX_SHEBANG and re.fullmatch(rb"[A-Za-z0-9_./+@%,=:-]+", python):
        return b"#!" + python
    quoted = shlex.quote(python.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
    return b"#!/bin/sh\n'''exec' " + quoted + b' "$0" "$@"\n' + b"' '''"


def render(parts: list[Part], root: bytes) -> bytes:
    values = {VENV: root, SHEBANG: shebang_for(root)}
    return b"".join(p if isinstance(p, bytes) else values[p] for p in parts)


def render_placeholders(parts: list[Part]) -> bytes:
    """For audits: show where variables go without choosing a location."""
    return b"".join(p if isinstance(p, bytes) else _placeholder(p) for p in parts)


def _placeholder(name: str) -> bytes:
    return b"{{vocker:" + name.encode() + b"}}"


def render_stream(encoded: Iterable[bytes], root: bytes | None) -> Iterator[bytes]:
    """``render`` (or, with no ``root``, ``render_placeholders``) of an encoded template given
    in pieces, without holding it: for templates of large files. Accepts exactly what
    ``decode`` accepts (the one canonical encoding); raises FormatError on anything else,
    possibly after yielding the parts before it."""
    r = _Reader(iter(encoded))
    if r.take(3) != encode_head(0)[:3]:
        raise FormatError("corrupt template")
    values = {VENV: root, SHEBANG: shebang_for(root)} if root is not None else {v: _placeholder(v) for v in VARIABLES}
    major, count = r.head()
    if major != 4:
        raise FormatError("corrupt template")
    for _ in range(count):
        major, n = r.head()
        if major == 2:
            yield from r.pieces(n)
        elif major == 3 and n <= 16 and (name := r.take(n).decode("utf-8", "replace")) in VARIABLES:
            yield values[name]
        else:
            raise FormatError("corrupt template: unknown part")
    if r.take(3) != encode_tail() or not r.at_end():
        raise FormatError("corrupt template")


class _Reader:
    """Reads a CBOR byte stream given in pieces (a position in the current piece, so small
    reads do not copy what remains of it)."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._buf = b""
        self._pos = 0

    def _fill(self) -> bool:
        more = next(self._pieces, None)
        if more is None:
            return False
        self._buf = self._buf[self._pos:] + more
        self._pos = 0
        return True

    def take(self, n: int) -> bytes:
        while len(self._buf) - self._pos < n:
            if not self._fill():
                raise FormatError("corrupt template: truncated")
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out

    def pieces(self, n: int) -> Iterator[bytes]:
        while n > 0:
            if self._pos == len(self._buf) and not self._fill():
                raise FormatError("corrupt template: truncated")
            out = self._buf[self._pos:self._pos + n]
            self._pos += len(out)
            n -= len(out)
            yield out

    def head(self) -> tuple[int, int]:
        """(major type, argument) of the next item, which must be in its shortest form."""
        first = self.take(1)[0]
        major, info = first >> 5, first & 31
        if info < 24:
            return major, info
        if info > 27:
            raise FormatError("corrupt template: not canonical CBOR")
        raw = self.take(1 << (info - 24))
        n = int.from_bytes(raw, "big")
        if _head(major, n) != bytes([first]) + raw:
            raise FormatError("corrupt template: not canonical CBOR")
        return major, n

    def at_end(self) -> bool:
        while self._pos == len(self._buf):
            if not self._fill():
                return True
        return False
