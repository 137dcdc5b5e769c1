"""What makes a directory a venv, and which of its files are scaffolding.

Scaffolding is what the venv *tool* writes (pyvenv.cfg, the python links, activate
scripts, lib64, marker files). It differs between `python -m venv`, virtualenv and
uv and embeds host paths, so it is left out of images and generated afresh for the
path and host interpreter in use (see scaffold.py). Everything packages installed
is kept.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from .errors import NoInterpreterError
from .manifest import PythonFacts

_PYTHON_LINK = re.compile(r"^(?:python|pypy)(?:\d+(?:\.\d+)?)?w?(?:\.exe)?$")
_BIN_SCAFFOLD = {
    "activate", "activate.csh", "activate.fish", "activate.nu", "activate.ps1", "Activate.ps1",
    "activate.bat", "deactivate.bat", "deactivate.csh", "activate.xsh", "activate_this.py", "pydoc.bat",
}
_ROOT_SCAFFOLD = {"pyvenv.cfg", ".gitignore", "CACHEDIR.TAG", "lib64"}
_SITE_SCAFFOLD = {"_virtualenv.py", "_virtualenv.pth"}


def is_venv(path: Path) -> bool:
    return (path / "pyvenv.cfg").is_file()


def read_cfg(path: Path) -> dict[str, str]:
    """pyvenv.cfg as a dict (keys lower-cased, as the interpreter reads them)."""
    out: dict[str, str] = {}
    for line in (path / "pyvenv.cfg").read_text(encoding="utf-8", errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip().lower()] = value.strip()
    return out


def lib_dir(path: Path) -> str:
    """The venv-relative directory that holds site-packages, e.g. ``lib/python3.11``."""
    found = sorted(p.parent.relative_to(path).as_posix() for p in path.glob("lib/*/site-packages"))
    if (path / "Lib" / "site-packages").is_dir():
        found.append("Lib")
    if len(found) != 1:
        raise NoInterpreterError(f"{path} has {'no' if not found else 'several'} lib/*/site-packages: not a usable venv")
    return found[0]


def is_scaffold(rel: tuple[str, ...], site_packages: tuple[str, ...]) -> bool:
    """True for files the venv tool made (never for anything a package installed)."""
    if len(rel) == 1:
        return rel[0] in _ROOT_SCAFFOLD
    if len(rel) == 2 and rel[0] in ("bin", "Scripts"):
        return rel[1] in _BIN_SCAFFOLD or _PYTHON_LINK.fullmatch(rel[1]) is not None
    if len(rel) == len(site_packages) + 1 and rel[:-1] == site_packages:
        return rel[-1] in _SITE_SCAFFOLD or rel[-1].endswith(".virtualenv")
    return False


_PROBE = r"""
import importlib.util, json, platform, sys, sysconfig
print(json.dumps({
    "implementation": sys.implementation.name,
    "version": platform.python_version(),
    "cache_tag": sys.implementation.cache_tag or "",
    "magic": importlib.util.MAGIC_NUMBER.hex(),
    "soabi": sysconfig.get_config_var("SOABI") or "",
    "platform": sysconfig.get_platform(),
    "executable": sys.executable,
}))
"""


def probe_interpreter(python: str | Path) -> dict[str, str]:
    """Ask a (trusted, host) interpreter for its facts. -I -S: nothing from any venv runs."""
    try:
        out = subprocess.run([str(python), "-I", "-S", "-c", _PROBE], capture_output=True, text=True,
                             timeout=60, check=True).stdout
        return json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise NoInterpreterError(f"cannot run Python interpreter {python}: {exc}") from None


def base_interpreter(path: Path, cfg: dict[str, str]) -> Path:
    """The host interpreter a venv was made from, found from pyvenv.cfg alone."""
    candidates = [cfg.get("executable", ""), cfg.get("base-executable", "")]
    home = cfg.get("home")
    version = cfg.get("version_info") or cfg.get("version") or ""
    minor = ".".join(version.split(".")[:2])
    if home:
        candidates += [f"{home}/python{minor}", f"{home}/python3", f"{home}/python", f"{home}/python.exe"]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise NoInterpreterError(
        f"cannot find the base interpreter of venv {path} (pyvenv.cfg home = {home or '?'}); "
        "pass --python PATH to name one of the same version"
    )


def facts_for(path: Path, python: Path | None = None) -> tuple[PythonFacts, str]:
    """Python facts of a venv and the host interpreter they were read from."""
    cfg = read_cfg(path)
    python = python or base_interpreter(path, cfg)
    info = probe_interpreter(python)
    facts = PythonFacts(
        implementation=info["implementation"], version=info["version"], cache_tag=info["cache_tag"],
        magic=info["magic"], soabi=info["soabi"], platform=info["platform"], lib=lib_dir(path),
        system_site_packages=cfg.get("include-system-site-packages", "false").lower() == "true",
    )
    if facts.lib.startswith("lib/python") and facts.lib != f"lib/python{facts.minor}" and facts.implementation == "cpython":
        raise NoInterpreterError(
            f"venv {path} has {facts.lib} but interpreter {python} is Python {facts.version}; "
            "pass --python PATH to name the interpreter it was made with"
        )
    return facts, info["executable"]
