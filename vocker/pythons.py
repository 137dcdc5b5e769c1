"""Finding a host interpreter that can run an image's environment."""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import platformdirs

from .errors import NoInterpreterError
from .manifest import PythonFacts
from .venv import probe_interpreter


def _cache_file() -> Path:
    return platformdirs.user_cache_path("vocker", appauthor=False) / "interpreters.json"


@functools.lru_cache(maxsize=64)
def _probe(path: str) -> dict[str, str] | None:
    """Probe info of an interpreter, remembered on disk per (real path, size, mtime).

    Starting an interpreter costs ~30 ms; every mount and export needs one.
    """
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    key = f"{real}|{st.st_size}|{st.st_mtime_ns}"
    cache_file = _cache_file()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if isinstance(cache, dict) and isinstance(cache.get(key), dict):
        return cache[key]
    try:
        info = probe_interpreter(path)
    except NoInterpreterError:
        return None
    cache = cache if isinstance(cache, dict) else {}
    cache[key] = info
    with contextlib.suppress(OSError):
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_file)
    return info


def _candidates(facts: PythonFacts, hint: str | None) -> Iterator[str]:
    return _candidates_for(facts.minor, facts.implementation, hint, exact=facts.version)


def uv_find(request: str) -> str | None:
    """The interpreter ``uv python find`` picks for a request ("cpython@3.11.7", "pypy@3.10"): uv
    knows where Pythons live (PATH, its own, the system's), outside any virtual environment."""
    uv = shutil.which("uv", path=os.path.dirname(sys.executable)) or shutil.which("uv")
    if uv is None:
        return None
    try:
        proc = subprocess.run([uv, "python", "find", "--system", "--no-python-downloads", request],
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = proc.stdout.strip()
    return found if proc.returncode == 0 and found else None


def _candidates_for(minor: str, implementation: str = "cpython", hint: str | None = None,
                    exact: str | None = None) -> Iterator[str]:
    """Interpreters to probe, best first, found lazily: the hint needs no search at all.

    uv cannot see pyenv's versions other than the selected one (its shims for the others
    fail), so those are the one place looked at by hand.
    """
    seen: set[str] = set()
    uv_name = "pypy" if implementation == "pypy" else "cpython"

    def fresh(path: str | None) -> bool:
        if not path or path in seen or not os.path.isfile(path):
            return False
        seen.add(path)
        return True

    if fresh(hint):
        yield hint  # type: ignore[misc]
    for request in ([f"{uv_name}@{exact}"] if exact else []) + [f"{uv_name}@{minor}"]:
        found = uv_find(request)
        if fresh(found):
            yield found  # type: ignore[misc]
    name = f"pypy{minor}" if implementation == "pypy" else f"python{minor}"
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv", "versions")
    for path in sorted(glob.glob(str(pyenv / f"{minor}*" / "bin" / name))):
        if fresh(path):
            yield path


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
    matches = []
    for candidate in _candidates(facts, hint):
        info = _probe(candidate)
        if info is not None and compatible(facts, info):
            if info["version"] == facts.version:
                return info  # the exact version: no need to look further
            matches.append(info)
    if not matches:
        raise NoInterpreterError(
            f"no Python {facts.minor} ({facts.implementation}) found on this machine; the image was built with "
            f"{wanted}. Install Python {facts.minor}, or pass --python PATH")
    return matches[0]


def find_requested(request: str | None) -> dict[str, str]:
    """The interpreter a build asked for: None (the one running vocker), a path, or "3.X[.Y]"."""
    if request is None:
        base = getattr(sys, "_base_executable", None) or sys.executable
        info = _probe(base)
        if info is None:
            raise NoInterpreterError(f"cannot run {base}")
        return info
    if os.sep in request or request.startswith("."):
        info = _probe(request)
        if info is None:
            raise NoInterpreterError(f"cannot run Python interpreter {request}")
        return info
    if not re.fullmatch(r"3\.\d+(\.\d+)?", request):
        raise NoInterpreterError(f"--python takes a version like 3.11 (or a path), not {request!r}")
    minor = ".".join(request.split(".")[:2])
    base = getattr(sys, "_base_executable", None) or sys.executable
    for candidate in _candidates_for(minor, hint=base, exact=request if request.count(".") == 2 else None):
        info = _probe(candidate)
        if info is None or info["implementation"] != "cpython":
            continue
        if info["version"] == request or (request.count(".") == 1 and info["version"].startswith(request + ".")):
            return info
    raise NoInterpreterError(f"Python {request} is not installed on this machine; install it (for example "
                             f"with 'uv python install {request}') or pass --python PATH")
