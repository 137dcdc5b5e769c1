"""Build small, valid, deterministic pure-Python wheels for tests and demos.

Dependency-free (standard library only).  Building the same inputs twice gives
byte-identical files: zip entries are sorted and carry a fixed timestamp
(1980-01-01 00:00:00) and fixed permissions.

Command line (used by ``scripts/demo``)::

    python tests/wheelfactory.py --out DIR

builds the demo package ``vocker-demo-hello`` 1.0 (module ``hello_vocker``,
console script ``hello-vocker`` printing "hello from vocker") into DIR and
prints the wheel's path.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import sys
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["build_wheel", "normalize_dist_name", "record_hash", "build_demo_wheel"]

GENERATOR = "vocker-tests-wheelfactory 1.0"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = 0o644


def normalize_dist_name(name: str) -> str:
    """Distribution name as used in wheel file and ``.dist-info`` names.

    PEP 503 normalisation (runs of ``-_.`` collapse to one) followed by the
    wheel escaping (``-`` -> ``_``); the result is lower-case.
    """
    return re.sub(r"[-_.]+", "_", name).lower()


def record_hash(data: bytes) -> str:
    """``sha256=<urlsafe base64 without padding>`` as written in RECORD."""
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _as_bytes(content: str | bytes) -> bytes:
    return content.encode("utf-8") if isinstance(content, str) else content


def _metadata(name: str, version: str, requires: Iterable[str]) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {req}" for req in requires]
    return "\n".join(lines) + "\n\n"


def _wheel_file() -> str:
    return (
        "Wheel-Version: 1.0\n"
        f"Generator: {GENERATOR}\n"
        "Root-Is-Purelib: true\n"
        "Tag: py3-none-any\n"
        "\n"
    )


def _entry_points(console_scripts: Mapping[str, str]) -> str:
    lines = ["[console_scripts]"]
    lines += [f"{script} = {target}" for script, target in sorted(console_scripts.items())]
    return "\n".join(lines) + "\n\n"


def build_wheel(
    out_dir: str | Path,
    name: str,
    version: str,
    files: Mapping[str, str | bytes],
    *,
    requires: Iterable[str] = (),
    console_scripts: Mapping[str, str] | None = None,
) -> Path:
    """Write ``{dist}-{version}-py3-none-any.whl`` into *out_dir* and return its path.

    *files* maps archive paths (``"pkg/__init__.py"``) to their contents; str
    contents are encoded as UTF-8.  *requires* become ``Requires-Dist`` lines and
    *console_scripts* (``{"script": "module:function"}``) go to
    ``entry_points.txt``.
    """
    dist = normalize_dist_name(name)
    dist_info = f"{dist}-{version}.dist-info"
    entries: dict[str, bytes] = {}
    for arcname, content in files.items():
        arcname = arcname.replace("\\", "/").lstrip("/")
        if not arcname or arcname.split("/", 1)[0] == dist_info:
            raise ValueError(f"invalid file name for wheel contents: {arcname!r}")
        if arcname in entries:
            raise ValueError(f"duplicate file in wheel: {arcname!r}")
        entries[arcname] = _as_bytes(content)

    entries[f"{dist_info}/METADATA"] = _metadata(name, version, requires).encode("utf-8")
    entries[f"{dist_info}/WHEEL"] = _wheel_file().encode("utf-8")
    if console_scripts:
        entries[f"{dist_info}/entry_points.txt"] = _entry_points(console_scripts).encode("utf-8")

    record_name = f"{dist_info}/RECORD"
    record_lines = [f"{arc},{record_hash(data)},{len(data)}" for arc, data in sorted(entries.items())]
    record_lines.append(f"{record_name},,")
    entries[record_name] = ("\n".join(record_lines) + "\n").encode("utf-8")

    # Regular files first (sorted), then .dist-info files with RECORD last, as
    # recommended by the wheel spec; the order is fully determined by the inputs.
    def order(arc: str) -> tuple[int, str]:
        if arc == record_name:
            return (2, arc)
        return (1 if arc.startswith(dist_info + "/") else 0, arc)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{dist}-{version}-py3-none-any.whl"
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for arc in sorted(entries, key=order):
            info = zipfile.ZipInfo(arc, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, so external_attr is honoured
            info.external_attr = (0o100000 | _FILE_MODE) << 16
            zf.writestr(info, entries[arc])
    tmp.replace(path)
    return path


DEMO_NAME = "vocker-demo-hello"
DEMO_VERSION = "1.0"
DEMO_MODULE = '''\
"""Demo package for vocker."""

GREETING = "hello from vocker"


def main() -> None:
    print(GREETING)
'''


def build_demo_wheel(out_dir: str | Path) -> Path:
    """The demo wheel used by ``scripts/demo``."""
    return build_wheel(
        out_dir,
        DEMO_NAME,
        DEMO_VERSION,
        {"hello_vocker/__init__.py": DEMO_MODULE},
        console_scripts={"hello-vocker": "hello_vocker:main"},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"Build the {DEMO_NAME} {DEMO_VERSION} demo wheel.")
    parser.add_argument("--out", required=True, type=Path, help="directory to write the wheel into")
    args = parser.parse_args(argv)
    print(build_demo_wheel(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
