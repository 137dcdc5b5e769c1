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
