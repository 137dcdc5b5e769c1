"""Venv scaffolding generated for the path in use and the chosen host interpreter.

Images leave out pyvenv.cfg, the python links and the activate scripts (they embed
host paths and differ between venv tools); this module makes them afresh, using
the running Python's own ``venv`` templates for the activate scripts.
"""

from __future__ import annotations

import os
import sys
import tempfile
import venv as stdlib_venv
from pathlib import Path
from typing import Union

import attrs

from . import __version__
from .manifest import PythonFacts


@attrs.frozen
class Link:
    target: str


@attrs.frozen
class File:
    data: bytes
    executable: bool = False


Item = Union[Link, File]


def scaffold(root: str, facts: PythonFacts, interpreter: dict[str, str],
             scratch: str | None = None) -> dict[str, Item]:
    """Scaffolding for a venv at ``root``: venv-relative posix path -> item.

    ``scratch``: where the venv module may write its scripts for a moment (default: the
    system's temporary directory); a caller whose own scratch is swept after a crash
    passes it, so that a kill at that moment leaves nothing behind."""
    exe = interpreter["executable"]
    items: dict[str, Item] = {
        "pyvenv.cfg": File(
            f"home = {os.path.dirname(exe)}\n"
            f"include-system-site-packages = {'true' if facts.system_site_packages else 'false'}\n"
            f"version = {interpreter['version']}\n"
            f"executable = {exe}\n"
            f"vocker = {__version__}\n".encode()
        ),
        "bin/python": Link(exe),
        "bin/python3": Link("python"),
        f"bin/python{facts.minor}": Link("python"),
    }
    if os.name == "posix" and sys.platform != "darwin" and sys.maxsize > 2**32 and facts.lib.startswith("lib/"):
        items["lib64"] = Link("lib")
    items.update(_activate_scripts(root, scratch))
    return items


def _activate_scripts(root: str, scratch: str | None) -> dict[str, Item]:
    name = os.path.basename(root.rstrip("/")) or "venv"
    builder = stdlib_venv.EnvBuilder(prompt=name)
    scripts = os.path.join(os.path.dirname(stdlib_venv.__file__), "scripts")
    with tempfile.TemporaryDirectory(prefix="vocker-scaffold-", dir=scratch) as tmp:
        ctx = builder.ensure_directories(tmp)
        for key, value in list(vars(ctx).items()):
            if key != "bin_path" and isinstance(value, str) and value.startswith(tmp):
                setattr(ctx, key, root + value[len(tmp):])
        ctx.env_name = name
        builder.install_scripts(ctx, scripts)
        out: dict[str, Item] = {}
        for dirpath, _dirs, files in os.walk(ctx.bin_path):
            for f in files:
                path = Path(dirpath, f)
                rel = "bin/" + path.relative_to(ctx.bin_path).as_posix()
                out[rel] = File(path.read_bytes(), executable=os.access(path, os.X_OK))
    return out
