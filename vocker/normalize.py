"""Import-time rules that make a venv's files independent of where it was built.

- the venv's absolute path inside text files becomes a template variable;
- script shebangs pointing at the venv's python (plain or pip's /bin/sh
  trampoline, python or python3 or python3.X) become one canonical variable;
- ``direct_url.json`` naming a local file (a wheel path on the build machine) and
  uv's ``uv_cache.json`` (when it last saw a local source: a timestamp of the build
  machine) are dropped, as are RECORD lines for dropped files and for bytecode;
- RECORD lines of templated files lose their hash and size (the rendered file
  differs per location), and lines are sorted, so installers that write the same
  files in another order give the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import re
from typing import BinaryIO, Iterator

import attrs

from . import template
from .template import Part

#: Bump when these rules change what an import stores: import caches and build cache
#: keys include it, so nothing made under older rules is reused as if made under these.
RULES_VERSION = 2


@attrs.frozen
class VenvPaths:
    """The byte strings that spell this venv's location."""

    spellings: tuple[bytes, ...]  # longest first: the realpath may be longer than the given path
    _pattern: re.Pattern[bytes] = attrs.field(init=False, repr=False)
    _shebang: re.Pattern[bytes] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        alts = b"|".join(re.escape(s) for s in self.spellings)
        # A match must end at a path boundary, so /venv does not match inside /venv2.
        object.__setattr__(self, "_pattern", re.compile(b"(?:" + alts + rb")(?![A-Za-z0-9_.\-])"))
        object.__setattr__(self, "_shebang", re.compile(
            rb"\A(?:#!(?:" + alts + rb")/bin/python[0-9.]*(?=\r?\n)"
            rb"|#!/bin/sh\n'''exec' (['\"])(?:" + alts + rb")/bin/python[0-9.]*\1 \"\$0\" \"\$@\"\n' ''')"
        ))

    @classmethod
    def of(cls, given: str, real: str) -> "VenvPaths":
        spellings = {given.encode("utf-8", "surrogateescape"), real.encode("utf-8", "surrogateescape")}
        return cls(tuple(sorted(spellings, key=len, reverse=True)))

    def mentioned_in(self, data: bytes) -> bool:
        return any(s in data for s in self.spellings)

    def to_template(self, data: bytes, is_script: bool) -> list[Part] | None:
        """Template parts for ``data``, or None when it does not depend on the location."""
        parts: list[Part] = []
        rest = data
        if is_script:
            m = self._shebang.match(data)
            if m:
                parts.append(template.SHEBANG)
                rest = data[m.end():]
        if not self.mentioned_in(rest) and not parts:
            return None
        if b"\0" in rest:  # binary: substituting a path of another length would corrupt it
            return None if not parts else parts + [rest]
        pos = 0
        for m in self._pattern.finditer(rest):
            parts += [rest[pos:m.start()], template.VENV]
            pos = m.end()
        parts.append(rest[pos:])
        merged = [p for p in parts if p != b""]
        return merged if any(isinstance(p, str) for p in merged) else None

    def scan(self, is_script: bool) -> "TemplateScan":
        """What ``to_template`` makes of a file too large to hold, fed to it piece by piece."""
        return TemplateScan(self, is_script)

    def template_pieces(self, path: str, scan: "TemplateScan") -> Iterator[bytes]:
        """The encoded template of the file at ``path`` that ``scan`` was fed, exactly
        ``template.encode(self.to_template(...))`` of it, in pieces of bounded size.

        Two readers of the file: one finds the matches, the other copies what lies between.
        Raises FileChanged when the file is no longer what ``scan`` saw.
        """
        assert scan.templated
        count = (scan.shebang_end is not None) + (1 if scan.nul else scan.matches + scan.literals)
        yield template.encode_head(count)
        if scan.shebang_end is not None:
            yield template.encode_variable(template.SHEBANG)
        start = scan.shebang_end or 0
        with open(path, "rb") as f, open(path, "rb") as finder:
            copier = _Copier(f, start)
            yield from self._rest(scan, start, copier, finder)
            if copier.parts != count - (scan.shebang_end is not None) or f.read(1):
                raise FileChanged()
        yield template.encode_tail()

    def _rest(self, scan: "TemplateScan", start: int, copier: "_Copier", finder: BinaryIO) -> Iterator[bytes]:
        if scan.nul:  # binary after a shebang: the rest is one literal
            yield from copier.literal(scan.size - start)
            return
        done = start
        finder.seek(start)
        matcher = _Matcher(self._pattern, len(self.spellings[0]) + 1)
        while True:
            piece = finder.read(SCAN_PIECE)
            for s, e in matcher.feed(piece, eof=not piece):
                if start + s > done:
                    yield from copier.literal(start + s - done)
                yield copier.variable(template.VENV, e - s)
                done = start + e
            if not piece:
                break
        if done < scan.size:
            yield from copier.literal(scan.size - done)


#: Large files are read in pieces of this size.
SCAN_PIECE = 1 << 20
#: A ``bin/`` script's first line is looked for in its first SHEBANG_HEAD bytes (a longer
#: first line, in a file streamed because it is large, is left as it is).
SHEBANG_HEAD = 1 << 20


class FileChanged(Exception):
    """A large file changed between the passes over it."""


class _Matcher:
    """The venv path's matches in content fed piece by piece, exactly as ``finditer`` over
    the whole would find them: a match is taken only once ``margin`` bytes after its start
    are known (the longest spelling and the boundary character), so the pattern saw what
    it needs; only the undecided tail is kept."""

    def __init__(self, pattern: re.Pattern[bytes], margin: int) -> None:
        self.pattern, self.margin = pattern, margin
        self.buf = bytearray()
        self.base = 0  # offset of buf[0] in the content
        self.pos = 0  # where the next search starts, in buf
        self.total = 0

    def feed(self, piece: bytes, eof: bool = False) -> list[tuple[int, int]]:
        """(start, end) of the matches now decided, as offsets in the content."""
        self.buf += piece
        self.total += len(piece)
        last = len(self.buf) if eof else len(self.buf) - self.margin  # starts up to here are decided
        found = []
        pos = self.pos
        for m in self.pattern.finditer(self.buf, pos):
            if m.start() > last:
                break
            found.append((self.base + m.start(), self.base + m.end()))
            pos = m.end()
        pos = max(pos, last + 1) if not eof else len(self.buf)
        keep = min(pos, len(self.buf))
        del self.buf[:keep]
        self.base += keep
        self.pos = pos - keep
        return found


class TemplateScan:
    """Decides, in one pass over a file's pieces, whether and how ``VenvPaths.to_template``
    would template it: the shebang (from the first SHEBANG_HEAD bytes), whether the rest
    holds a NUL, and how many matches and non-empty literal parts it has."""

    def __init__(self, paths: VenvPaths, is_script: bool) -> None:
        self.paths = paths
        self.head: bytearray | None = bytearray() if is_script else None
        self.shebang_end: int | None = None
        self.matcher = _Matcher(paths._pattern, len(paths.spellings[0]) + 1)
        self.nul = False
        self.matches = 0
        self.literals = 0
        self.done = 0  # end of the last match, in the rest
        self.size = 0
        self.finished = False

    def feed(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.head is not None:
            self.head += piece
            if len(self.head) >= SHEBANG_HEAD:
                self._decide_head()
            return
        self._scan(piece)

    def finish(self) -> None:
        if self.head is not None:
            self._decide_head()
        self._scan(b"", eof=True)
        if self.done < self.matcher.total:
            self.literals += 1
        self.finished = True

    @property
    def templated(self) -> bool:
        assert self.finished
        return self.shebang_end is not None or (not self.nul and self.matches > 0)

    def _decide_head(self) -> None:
        head, self.head = bytes(self.head or b""), None
        m = self.paths._shebang.match(head)
        self.shebang_end = m.end() if m else None
        self._scan(head[m.end():] if m else head)

    def _scan(self, piece: bytes, eof: bool = False) -> None:
        self.nul = self.nul or b"\0" in piece
        for s, e in self.matcher.feed(piece, eof):
            self.literals += s > self.done
            self.matches += 1
            self.done = e


class _Copier:
    """Emits the parts of a file's rest in order: literal spans copied from ``f`` in pieces
    of at most SCAN_PIECE bytes, variables in place of the spans they replace."""

    def __init__(self, f: BinaryIO, start: int) -> None:
        self.f = f
        self.parts = 0
        f.seek(start)

    def variable(self, name: str, replaces: int) -> bytes:
        self.parts += 1
        self.f.seek(replaces, 1)
        return template.encode_variable(name)

    def literal(self, n: int) -> Iterator[bytes]:
        self.parts += 1
        yield template.encode_bytes_head(n)
        while n > 0:
            piece = self.f.read(min(n, SCAN_PIECE))
            if not piece:
                raise FileChanged()
            n -= len(piece)
            yield piece


def machine_local(name: str, parent: str, data: bytes) -> bool:
    """A dist-info file that only describes the build machine (dropped from images)."""
    if not parent.endswith(".dist-info"):
        return False
    return name == "uv_cache.json" or (name == "direct_url.json" and drop_direct_url(data))


def drop_direct_url(data: bytes) -> bool:
    """A direct_url.json that only records a local file of the build machine."""
    try:
        info = json.loads(data)
    except ValueError:
        return False
    url = info.get("url", "") if isinstance(info, dict) else ""
    editable = isinstance(info.get("dir_info"), dict) and info["dir_info"].get("editable")
    return isinstance(url, str) and url.startswith("file:") and not editable


def normalize_record(data: bytes, dist_info: str, templated: set[str], dropped: set[str]) -> bytes:
    """Rewrite a RECORD (``dist_info`` is the venv-relative dist-info dir)."""
    site = posixpath.dirname(dist_info)
    rows = []
    for row in csv.reader(io.StringIO(data.decode("utf-8", "surrogateescape"))):
        if not row:
            continue
        path = row[0]
        rel = posixpath.normpath(posixpath.join(site, path)) if not path.startswith("/") else path
        if "__pycache__" in rel.split("/") or rel.endswith(".pyc") or rel in dropped:
            continue
        if rel in templated:
            row = [path, "", ""]
        rows.append(row)
    rows.sort(key=lambda r: r[0])
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode("utf-8", "surrogateescape")
