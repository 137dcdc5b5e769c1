"""Shared pytest fixtures for the vocker test suite.

Fixtures (see each docstring for details):

* ``wheels_dir`` (session): directory of offline wheels built by
  :mod:`wheelfactory`: alpha 1.0, alpha 2.0, beta 1.0 (needs alpha>=1), gamma 1.0.
* ``base_python`` (session): the base interpreter both venv creators use.
* ``uv_exe`` (session): path of the ``uv`` executable.
* ``make_venv`` (function): factory ``make_venv(path, *, creator="venv"|"uv",
  packages=("alpha==1.0",)) -> Path``.
* ``vocker_home`` (function): fresh directory, exported as ``VOCKER_HOME``.
* ``vocker`` (function): runs the ``vocker`` console script,
  ``vocker(*args, check=True, input=None, timeout=120) -> CompletedProcess``.

These fixtures never import the ``vocker`` package.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import pytest

#: Warm mounts (vocker.warm) are off in this suite unless a test turns them on; then they live
#: under the test's store (not $XDG_RUNTIME_DIR), where no_leftover_mounts finds what is left.
os.environ["VOCKER_WARM_IDLE"] = "0"
os.environ.pop("XDG_RUNTIME_DIR", None)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mounthelp import daemon_pids, force_cleanup, mounted_under, wait_for  # noqa: E402
from wheelfactory import build_wheel  # noqa: E402

# --------------------------------------------------------------------------- wheels

ALPHA_INIT = '''\
"""alpha {version}: tiny test package."""

VALUE = {value}


def main() -> None:
    print("alpha {version}")
'''

BETA_MODULE = '''\
"""beta 1.0: depends on alpha."""

import alpha


def value() -> int:
    return alpha.VALUE * 10
'''

GAMMA_INIT = '''\
"""gamma 1.0: a package with sub-packages, data and a big module."""

from importlib import resources

VERSION = "1.0"


def info() -> str:
    return resources.files(__name__).joinpath("data/info.txt").read_text(encoding="utf-8")
'''

GAMMA_BIG_ENTRIES = 4096


def gamma_big_module(entries: int = GAMMA_BIG_ENTRIES) -> str:
    """Deterministic, ~200 KiB Python module holding one big dict literal."""
    lines = ['"""Generated module: a big dict literal (deterministic)."""', "", "TABLE = {"]
    for i in range(entries):
        digest = hashlib.sha256(f"gamma-{i}".encode()).hexdigest()[:24]
        lines.append(f"    'key_{i:05d}': ('{digest}', {i}, {i * i % 9973}),  # entry {i:05d}")
    lines += ["}", "", f"SIZE = {entries}", ""]
    return "\n".join(lines)


def gamma_files() -> dict[str, str | bytes]:
    files: dict[str, str | bytes] = {
        "gamma/__init__.py": GAMMA_INIT,
        "gamma/big.py": gamma_big_module(),
        "gamma/data/info.txt": "gamma data file\nline 2\n",
        "gamma/sub/__init__.py": '"""gamma.sub package."""\n',
    }
    for n in range(1, 6):
        files[f"gamma/sub/mod{n}.py"] = f"NUMBER = {n}\n\n\ndef twice() -> int:\n    return NUMBER * 2\n"
    return files


def build_test_wheels(out_dir: Path) -> dict[str, Path]:
    """Build all test wheels into *out_dir*; returns ``{"alpha-1.0": path, ...}``."""
    wheels = {}
    for version, value in (("1.0", 1), ("2.0", 2)):
        wheels[f"alpha-{version}"] = build_wheel(
            out_dir,
            "alpha",
            version,
            {"alpha/__init__.py": ALPHA_INIT.format(version=version, value=value)},
            console_scripts={"alpha-cli": "alpha:main"},
        )
    wheels["beta-1.0"] = build_wheel(out_dir, "beta", "1.0", {"beta.py": BETA_MODULE}, requires=["alpha>=1"])
    wheels["gamma-1.0"] = build_wheel(out_dir, "gamma", "1.0", gamma_files())
    return wheels


@pytest.fixture(scope="session")
def wheels_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with offline test wheels (usable with ``--find-links``).

    alpha 1.0 / 2.0 (``alpha/__init__.py``: ``VALUE = 1|2``, ``main()`` prints
    "alpha 1.0|2.0", console script ``alpha-cli``), beta 1.0 (``beta.py``,
    Requires-Dist ``alpha>=1``), gamma 1.0 (``gamma/`` with ``sub/`` package,
    ``data/info.txt`` and the ~200 KiB ``big.py``).
    """
    out = tmp_path_factory.mktemp("wheels")
    build_test_wheels(out)
    return out


# --------------------------------------------------------------------------- venvs


def _find_base_python() -> Path:
    """The real base interpreter behind ``sys.executable`` (outside any venv)."""
    candidates = [getattr(sys, "_base_executable", None), sys.executable]
    bin_dir = "Scripts" if os.name == "nt" else "bin"
    for version_name in (f"python{sys.version_info[0]}.{sys.version_info[1]}", f"python{sys.version_info[0]}"):
        candidates.append(os.path.join(sys.base_prefix, bin_dir, version_name))
    venv_prefix = os.path.realpath(sys.prefix) if sys.prefix != sys.base_prefix else None
    for cand in candidates:
        if not cand or not os.path.exists(cand):
            continue
        real = os.path.realpath(cand)
        if venv_prefix and real.startswith(venv_prefix + os.sep):
            continue  # still inside our venv
        return Path(real)
    raise RuntimeError(f"cannot find the base interpreter of {sys.executable}")


@pytest.fixture(scope="session")
def base_python() -> Path:
    """The base interpreter (real path) used by both venv creators."""
    return _find_base_python()


@pytest.fixture(scope="session")
def uv_exe() -> Path:
    """The ``uv`` executable next to ``sys.executable`` (falls back to PATH)."""
    found = shutil.which("uv", path=os.path.dirname(sys.executable)) or shutil.which("uv")
    if not found:
        pytest.fail("uv not found next to sys.executable nor on PATH (install the 'test' extra)")
    return Path(found)


@pytest.fixture(scope="session")
def uv_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for running uv: private cache, no user config, no downloads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
    env.update(
        UV_CACHE_DIR=str(tmp_path_factory.mktemp("uv-cache")),
        UV_NO_CONFIG="1",
        UV_PYTHON_DOWNLOADS="never",
        UV_LINK_MODE="copy",  # installed files must not share inodes with the cache
        UV_NO_PROGRESS="1",
    )
    return env


def _run(cmd: list[str], env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(
            f"command failed with exit code {proc.returncode}: {cmd}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return proc


MakeVenv = Callable[..., Path]


@pytest.fixture
def make_venv(wheels_dir: Path, base_python: Path, uv_exe: Path, uv_env: dict[str, str]) -> MakeVenv:
    """Factory: ``make_venv(path, *, creator="venv", packages=("alpha==1.0",)) -> Path``.

    Creates a venv at *path* from :func:`base_python`, with ``python -m venv
    --without-pip`` (creator ``"venv"``) or ``uv venv`` (creator ``"uv"``), then
    installs *packages* (requirement strings) offline from ``wheels_dir`` with
    ``uv pip install``.  Returns the venv path.  Put *path* under ``tmp_path``
    so pytest cleans it up.
    """

    def make(
        path: str | Path,
        *,
        creator: str = "venv",
        packages: Iterable[str] = ("alpha==1.0",),
    ) -> Path:
        venv = Path(path).absolute()
        if creator == "venv":
            _run([str(base_python), "-m", "venv", "--without-pip", str(venv)])
        elif creator == "uv":
            _run(
                [str(uv_exe), "venv", "--no-config", "--no-python-downloads", "--quiet",
                 "--python", str(base_python), str(venv)],
                env=uv_env,
            )
        else:
            raise ValueError(f"unknown venv creator {creator!r} (expected 'venv' or 'uv')")
        packages = list(packages)
        if packages:
            _run(
                [str(uv_exe), "pip", "install", "--no-config", "--offline", "--quiet",
                 "--python", str(venv / "bin" / "python"),
                 "--no-index", "--find-links", str(wheels_dir), *packages],
                env=uv_env,
            )
        return venv

    return make


# --------------------------------------------------------------------------- vocker CLI


@pytest.fixture
def vocker_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty directory, set as ``VOCKER_HOME`` for the test's duration."""
    home = tmp_path / "vocker-home"
    home.mkdir()
    monkeypatch.setenv("VOCKER_HOME", str(home))
    return home


class VockerRunner:
    """Runs the installed ``vocker`` console script with ``VOCKER_HOME=home``.

    ``runner(*args, check=True, input=None, timeout=120, env=None, cwd=None)``
    returns a ``CompletedProcess`` with text ``stdout``/``stderr``.  With
    ``check=True`` a non-zero exit raises ``AssertionError`` showing the
    arguments, stdout and stderr.  ``env`` adds/overrides environment variables.
    """

    def __init__(self, home: Path, exe: Path | None) -> None:
        self.home = home
        self.exe = exe

    def __call__(
        self,
        *args: str | os.PathLike[str],
        check: bool = True,
        input: str | None = None,  # noqa: A002 - mirrors subprocess.run
        timeout: float = 120,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        if self.exe is None:
            raise AssertionError(
                f"the 'vocker' console script is not installed next to {sys.executable} "
                "(run the tests via scripts/test)"
            )
        cmd = [str(self.exe), *map(str, args)]
        full_env = dict(os.environ)
        full_env.update(VOCKER_HOME=str(self.home), PYTHONIOENCODING="utf-8", NO_COLOR="1", COLUMNS="200")
        if env:
            full_env.update(env)
        try:
            proc = subprocess.run(
                cmd,
                env=full_env,
                cwd=cwd,
                input=input,
                stdin=subprocess.DEVNULL if input is None else None,
                capture_output=True,
                text=True,
                encoding="utf-8",
                errors="replace",
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(
                f"vocker {' '.join(cmd[1:])} timed out after {timeout} s\n"
                f"--- stdout ---\n{_text(exc.stdout)}\n--- stderr ---\n{_text(exc.stderr)}"
            ) from None
        if check and proc.returncode != 0:
            raise AssertionError(
                f"vocker {' '.join(cmd[1:])} exited with {proc.returncode}\n"
                f"args: {cmd[1:]}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
            )
        return proc

    def __repr__(self) -> str:
        return f"VockerRunner(home={str(self.home)!r}, exe={str(self.exe)!r})"


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def _find_vocker_exe() -> Path | None:
    found = shutil.which("vocker", path=os.path.dirname(sys.executable))
    return Path(found) if found else None


@pytest.fixture
def vocker(vocker_home: Path) -> VockerRunner:
    """Callable running the ``vocker`` CLI against ``vocker_home``; see :class:`VockerRunner`."""
    return VockerRunner(vocker_home, _find_vocker_exe())


# --------------------------------------------------------------------------- mounts

#: ``pytestmark = MOUNTS`` in a module whose tests mount: skipped without FUSE, and every
#: test checked for (and cleaned of) mounts and daemons left under its tmp_path.
MOUNTS = [pytest.mark.skipif(shutil.which("fusermount3") is None or not os.path.exists("/dev/fuse"),
                             reason="needs FUSE (fuse3 and /dev/fuse)"),
          pytest.mark.usefixtures("no_leftover_mounts")]


@pytest.fixture
def no_leftover_mounts(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Teardown: force-unmount anything under tmp_path and kill its mount daemons, pass or fail;
    fails the test if anything was left. Modules that mount use it for every test
    (``pytest.mark.usefixtures("no_leftover_mounts")``)."""
    yield
    wait_for(lambda: not mounted_under(tmp_path) and not daemon_pids(tmp_path), timeout=3)
    leftovers = force_cleanup(tmp_path)
    assert not leftovers, f"left behind after the test: {leftovers}"
