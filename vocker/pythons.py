"""Finding a host interpreter that can run an image's environment."""

from __future__ import annotations

import functools
import glob
import os
import shutil
from pathlib import Path

from .errors import NoInterpreterError
from .manifest import PythonFacts
from .venv import probe_interpreter


@functools.lru_cache(maxsize=64)
def _probe(path: str) -> dict[str, str] | None:
    try:
        return probe_interpreter(path)
    except NoInterpreterError:
        return None


def _candidates(facts: PythonFacts, hint: str | None) -> list[str]:
    minor = facts.minor
    names = [f"python{minor}", f"pypy{minor}"] if facts.implementation == "pypy" else [f"python{minor}"]
    found = [hint] if hint else []
    for name in names:
        exe = shutil.which(name)
        if exe:
            found.append(exe)
        found += [f"/usr/bin/{name}", f"/usr/local/bin/{name}", f"/opt/homebrew/bin/{name}"]
    home = Path.home()
    found += sorted(glob.glob(str(home / ".pyenv/versions" / f"{minor}*" / "bin" / f"python{minor}")))
    found += sorted(glob.glob(str(home / ".local/share/uv/python" / f"*-{minor}*" / "bin" / f"python{minor}")))
    return [c for c in dict.fromkeys(found) if c and os.path.isfile(c)]


def compatible(facts: PythonFacts, info: dict[str, str]) -> bool:
    """Same implementation, bytecode magic and extension ABI: the venv's packages will work."""
    return (info["implementation"] == facts.implementation and info["magic"] == facts.magic
            and info["soabi"] == facts.soabi)


def find_interpreter(facts: PythonFacts, hint: str | None = None, explicit: Path | None = None) -> dict[str, str]:
    """Probe info of the best host interpreter for ``facts`` (the exact version preferred)."""
    wanted = f"{facts.implementation} {facts.version}"
    if explicit is not None:
        info = _probe(str(explicit))
        if info is None:
            raise NoInterpreterError(f"cannot run {explicit}")
        if not compatible(facts, info):
            raise NoInterpreterError(
                f"{explicit} is {info['implementation']} {info['version']}; the image needs {wanted} (same minor version)")
        return info
    matches = [i for i in map(_probe, _candidates(facts, hint)) if i is not None and compatible(facts, i)]
    if not matches:
        raise NoInterpreterError(
            f"no Python {facts.minor} ({facts.implementation}) found on this machine; the image was built with "
            f"{wanted}. Install Python {facts.minor}, or pass --python PATH")
    exact = [i for i in matches if i["version"] == facts.version]
    return (exact or matches)[0]
