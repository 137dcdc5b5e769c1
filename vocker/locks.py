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
from pathlib import Path
from typing import Any

import attrs
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import (InvalidSdistFilename, InvalidWheelFilename, canonicalize_name, parse_sdist_filename,
                             parse_wheel_filename)

from . import cbor
from .digest import digest_bytes
from .errors import FormatError

HEADER = "# vocker-lock: "
KEY_VERSION = 1
_HASH = re.compile(r"--hash=(sha256):([0-9a-f]{64})")


@attrs.frozen
class Pin:
    name: str  # PEP 503 normalised
    version: str  # "" for a URL whose file name does not tell
    hashes: tuple[str, ...]  # "sha256:<hex>", sorted
    url: str | None = None  # a direct reference (a local wheel, a URL): installed from exactly there

    def canonical(self) -> list[Any]:
        """What the cache key holds; a pin by version keeps the form it always had."""
        plain = [self.name, self.version, list(self.hashes)]
        return plain if self.url is None else [*plain, self.url]


@attrs.frozen
class Lock:
    pins: tuple[Pin, ...]
    header: dict[str, str]

    def canonical(self) -> list[Any]:
        return [p.canonical() for p in self.pins]


def normalize_name(name: str) -> str:
    return str(canonicalize_name(name))


def _path_requirement(text: str, base: Path | None) -> Requirement | None:
    """``./dist/pkg-1.0-py3-none-any.whl`` (a bare path, as uv writes it back) as ``pkg @ file:///...``."""
    if base is None or not text.endswith((".whl", ".tar.gz", ".zip")) or " " in text:
        return None
    path = Path(text.removeprefix("file:"))
    try:
        name = (parse_wheel_filename(path.name)[0] if path.suffix == ".whl" else parse_sdist_filename(path.name)[0])
    except (InvalidWheelFilename, InvalidSdistFilename):
        return None
    return Requirement(f"{name} @ {(base / path).resolve().as_uri()}")


def _version_of(url: str) -> str:
    filename = url.rsplit("/", 1)[-1]
    try:
        return str(parse_wheel_filename(filename)[1])
    except InvalidWheelFilename:
        try:
            return str(parse_sdist_filename(filename)[1])
        except InvalidSdistFilename:
            return ""


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


def parse(text: str, where: str = "lock", base: Path | None = None) -> Lock:
    """Parse a complete lock; FormatError names the first line that is not pinned with hashes.

    A pin is ``name==version`` or a direct reference ``name @ URL`` (a local wheel, a URL),
    with ``--hash=sha256:...`` either way. ``base``: resolve bare relative paths against it
    (only while resolving; a written lock holds absolute ``file://`` URLs).
    """
    header: dict[str, str] = {}
    for raw in text.splitlines():
        if raw.startswith(HEADER):
            header.update(parse_header(raw))
    pins: dict[str, Pin] = {}
    for number, line in _logical_lines(text):
        tokens = line.split()
        hashes = [t for t in tokens if t.startswith("--hash=")]
        requirement = " ".join(t for t in tokens if not t.startswith("--hash="))
        if requirement.startswith("-"):
            raise FormatError(f"{where}:{number}: options are not allowed in a lock: {requirement!r}")
        try:
            req = Requirement(requirement)
        except InvalidRequirement:
            req = _path_requirement(requirement, base)  # type: ignore[assignment]
        specs = list(req.specifier) if req is not None else []
        pinned = req is not None and (req.url is not None and not specs
                                      or len(specs) == 1 and specs[0].operator in ("==", "===")
                                      and "*" not in specs[0].version)
        if not pinned or not hashes:
            raise FormatError(f"{where}:{number}: {requirement!r} is not pinned with hashes "
                              "(name==version or name @ URL, with --hash=sha256:...)")
        assert req is not None
        if req.url is not None and req.url.startswith("file:") and not req.url.startswith("file:///"):
            raise FormatError(f"{where}:{number}: {req.url!r} is a relative file URL; a lock needs an absolute one")
        parsed = []
        for h in hashes:
            hm = _HASH.fullmatch(h)
            if not hm:
                raise FormatError(f"{where}:{number}: unsupported hash {h!r} (sha256 expected)")
            parsed.append(f"{hm.group(1)}:{hm.group(2)}")
        name = normalize_name(req.name)
        if name in pins:
            raise FormatError(f"{where}:{number}: {name} is pinned twice")
        version = specs[0].version if specs else _version_of(req.url or "")
        pins[name] = Pin(name, version, tuple(sorted(set(parsed))), req.url)
    if not pins:
        raise FormatError(f"{where}: no pinned requirements")
    return Lock(tuple(sorted(pins.values(), key=lambda p: p.name)), header)


def render(lock: Lock) -> str:
    """The pins as a requirements file installers take (no header): one pin per entry."""
    lines = []
    for pin in lock.pins:
        head = f"{pin.name} @ {pin.url}" if pin.url is not None else f"{pin.name}=={pin.version}"
        lines.append(" \\\n".join([head, *(f"    --hash={h}" for h in pin.hashes)]) + "\n")
    return "".join(lines)


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


def parse_header(line: str) -> dict[str, str]:
    """The fields of a ``# vocker-lock: k=v; ...`` line."""
    header = {}
    for part in line.removeprefix(HEADER).split(";"):
        key, _, value = part.strip().partition("=")
        if key:
            header[key.strip()] = value.strip()
    return header


def render_header(fields: dict[str, str]) -> str:
    return HEADER + "; ".join(f"{k}={v}" for k, v in sorted(fields.items())) + "\n"
