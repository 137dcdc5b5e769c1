"""Lock files and build cache keys (pure: no I/O beyond what callers pass in).

A lock is a requirements file in pip's hash-checking form, as ``uv pip compile
--generate-hashes`` writes it: every requirement is ``name==version`` with one or
more ``--hash=sha256:...``. vocker adds one header comment recording what the lock
was resolved from, so an unchanged input reuses its lock instead of re-resolving.

The build cache key is the digest of the *pinned* set (normalised names, versions,
sorted hashes), the interpreter's facts (implementation, version, ABI, platform) and
the build options — never the fuzzy requirements, which mean something else every
time upstream releases.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from . import cbor
from .digest import digest_bytes
from .errors import FormatError

HEADER = "# vocker-lock: "
KEY_VERSION = 1
_PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;]+)\s*(;.*)?")
_HASH = re.compile(r"--hash=(sha256):([0-9a-f]{64})")


@attrs.frozen
class Pin:
    name: str  # PEP 503 normalised
    version: str
    hashes: tuple[str, ...]  # "sha256:<hex>", sorted


@attrs.frozen
class Lock:
    pins: tuple[Pin, ...]
    header: dict[str, str]

    def canonical(self) -> list[Any]:
        return [[p.name, p.version, list(p.hashes)] for p in self.pins]


def normalize_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Join backslash continuations and drop comments; keep the first line number."""
    out: list[tuple[int, str]] = []
    current, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0] if not raw.lstrip().startswith("#") else ""
        if not current:
            start = number
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            out.append((start, current.strip()))
        current = ""
    if current.strip():
        out.append((start, current.strip()))
    return out


def parse(text: str, where: str = "lock") -> Lock:
    """Parse a complete lock; FormatError names the first line that is not pinned with hashes."""
    header: dict[str, str] = {}
    for raw in text.splitlines():
        if raw.startswith(HEADER):
            for part in raw[len(HEADER):].split(";"):
                key, _, value = part.strip().partition("=")
                if key:
                    header[key.strip()] = value.strip()
    pins: dict[str, Pin] = {}
    for number, line in _logical_lines(text):
        tokens = line.split()
        hashes = [t for t in tokens if t.startswith("--hash=")]
        requirement = " ".join(t for t in tokens if not t.startswith("--hash="))
        if requirement.startswith("-"):
            raise FormatError(f"{where}:{number}: options are not allowed in a lock: {requirement!r}")
        m = _PIN.fullmatch(requirement)
        if not m or not hashes:
            raise FormatError(f"{where}:{number}: {requirement!r} is not pinned with hashes (name==version --hash=...)")
        parsed = []
        for h in hashes:
            hm = _HASH.fullmatch(h)
            if not hm:
                raise FormatError(f"{where}:{number}: unsupported hash {h!r} (sha256 expected)")
            parsed.append(f"{hm.group(1)}:{hm.group(2)}")
        name = normalize_name(m.group(1))
        if name in pins:
            raise FormatError(f"{where}:{number}: {name} is pinned twice")
        pins[name] = Pin(name, m.group(3), tuple(sorted(set(parsed))))
    if not pins:
        raise FormatError(f"{where}: no pinned requirements")
    return Lock(tuple(sorted(pins.values(), key=lambda p: p.name)), header)


def is_lock(text: str) -> bool:
    try:
        parse(text)
    except FormatError:
        return False
    return True


def cache_key(lock: Lock, python: dict[str, str], options: dict[str, str]) -> str:
    """The build cache key: pinned set + interpreter facts + build options."""
    facts = {k: python[k] for k in ("implementation", "version", "soabi", "platform")}
    return digest_bytes(cbor.dumps({"v": KEY_VERSION, "pins": lock.canonical(), "python": facts,
                                    "options": dict(options)}))


def render_header(fields: dict[str, str]) -> str:
    return HEADER + "; ".join(f"{k}={v}" for k, v in sorted(fields.items())) + "\n"
