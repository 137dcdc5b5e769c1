#!/usr/bin/env python3
"""Benchmark vocker against `cp -a`, plain disk and uv (and vocker 0.6.2 from PyPI) on realistic venvs.

Run through ``scripts/bench`` (it sets up .venv and puts it on PATH). Parts: ``--only
import``, ``mount``, ``build`` or ``writes`` runs one of them (default: all).

The import/export part:

1. build a ~100 MB venv (python -m venv + pip install of pinned wheels), once;
2. ``vocker image import`` into a fresh store, vs ``cp -a`` of the same venv;
3. re-import of the unchanged venv into the same store;
4. ``vocker export`` to a fresh directory: first export (compiles bytecode) and a
   second one (bytecode cached);
5. stored bytes of 10 venvs (uv-made: the base set plus one small extra each) in one
   store, vs one of them alone and vs the plain venvs;
6. ``image import`` of the same venv with vocker 0.6.2 from PyPI (skippable).

The mount part (FUSE; each against the same environment on plain disk, i.e. the
image exported with ``vocker export``, in the same run):

M1. mount time of a small (~90 files) and a large (~15 000 files, 100 distributions)
    image: in-process ``vocker.mounting.mount()`` until ready, and the ``vocker mount``
    CLI against ``vocker --version``; the first mount separately, and the first import
    through it (which compiles the bytecode of what it imports);
M2. ``python -c "import numpy, requests, rich, pydantic"`` warm, and with the page
    cache dropped (a fresh mount after the drop), with the image's read-ahead profile
    and without one (as on the image's first mount);
M3. ``find`` and ``tar cf - | cat`` over the whole tree, warm;
M4. sequential read of a generated 500 MiB file (plain-tree image), warm;
M5. from image in store to ``python -c pass`` in a fresh environment: ``vocker run``
    vs ``vocker export`` + run vs ``uv venv`` + ``uv pip install`` (warm uv cache).

The writes part (``--only writes``; a container of the small image against the same
on plain disk, i.e. the image exported, in the same run; a fresh container each time):

W1. ``tar xf`` of an archive of 10 000 small files in 400 directories;
W2. ``uv pip install --no-deps`` (offline, warm uv cache, copy mode) of 50 distributions
    from the mount part's wheels;
W3. ``git clone`` (``file://``: the pack protocol) of a generated repository of 3 000 files
    and 300 commits;
W4. ``find`` and ``du -s`` over the large image (the mount part's), warm.
``--fuse highlevel,lowlevel`` measures each FUSE driver (``VOCKER_FUSE``) against the
same disk runs.

Every timing is the wall-clock time of the whole command (interpreter start-up
included) unless it says in-process, the median of ``--repeat`` runs (3x as many for
the sub-second timings of the mount part), and is reported as a ratio against a
baseline measured in the same run, because the machine is shared and noisy.
Everything lives under the work dir (default ``bench-out/``): downloaded wheels
(so re-runs are offline), the test venvs, one fresh VOCKER_HOME per scenario and
repetition, logs and ``results.json`` / ``results.md``. Every mount is unmounted even
when a scenario fails, and FUSE mounts left under the work dir are lazily unmounted.
"""

from __future__ import annotations

import argparse
import importlib
import contextlib
import datetime
import hashlib
import json
import os
import platform
import random
import re
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)

# -- what gets installed (pinned so runs are comparable) ------------------------------------------

#: The realistic venv: numpy + requests + rich + pydantic + friends, transitive deps pinned too.
#: site-packages comes to ~100 MB of package files (~140 MB with pip's compiled bytecode).
FULL_PINS = [
    "numpy==2.3.5",
    "requests==2.34.2", "urllib3==2.8.0", "idna==3.20", "certifi==2026.10.18", "charset-normalizer==3.5.2",
    "rich==15.0.0", "markdown-it-py==4.3.0", "mdurl==0.1.2", "pygments==2.21.0",
    "pydantic==2.14.3", "pydantic-core==2.50.4", "annotated-types==0.8.0", "typing-extensions==4.16.0",
    "typing-inspection==0.4.5",
    "pyyaml==6.0.3", "jinja2==3.1.6", "markupsafe==3.0.4", "packaging==26.3", "attrs==26.1.0", "click==8.5.1",
    "httpx==0.28.1", "httpcore==1.0.9", "h11==0.16.0", "anyio==4.16.0",
    "tzdata==2026.6", "pyparsing==3.3.3", "markdown==3.11.3",
]
#: the build part: a 20-distribution environment from the import part's wheels
BUILD_PINS = [p for p in FULL_PINS if p.split("==")[0] not in (
    "numpy", "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "tzdata", "pyparsing", "markdown")]
FULL_SMOKE = "import numpy, requests, rich, pydantic, yaml, jinja2, httpx; print(numpy.__version__)"

#: --quick: a small venv for a smoke check of the benchmark itself.
QUICK_PINS = [
    "requests==2.34.2", "urllib3==2.8.0", "idna==3.20", "certifi==2026.10.18", "charset-normalizer==3.5.2",
    "rich==15.0.0", "markdown-it-py==4.3.0", "mdurl==0.1.2", "pygments==2.21.0", "pyyaml==6.0.3",
]
QUICK_SMOKE = "import requests, rich, yaml; print(requests.__version__)"

#: Scenario 5: each of the 10 venvs is the base set plus one of these.
EXTRAS = [
    "six==1.17.0", "tomli==2.5.0", "wrapt==2.5.2", "decorator==5.3.1", "toolz==1.2.0",
    "cachetools==8.0.0", "more-itertools==11.2.1", "pluggy==1.7.0", "iniconfig==2.3.1", "tabulate==0.10.0",
]

OLD_VOCKER = ["vocker==0.6.2", "cbor2<6", "tqdm"]
OLD_TIMEOUT = 1800  # seconds

TARGET_IMPORT_S = 3.0
TARGET_REIMPORT_S = 1.0
TARGET_SHARED_RATIO = 1.3

# -- the mount part (``--only mount``) ------------------------------------------------------------

#: The ~100-distribution environment: `pip download jupyterlab numpy requests rich pydantic pandas`
#: resolved on 2026-11-21 (exactly 100 distributions), every one pinned. ~14 900 files, ~250 MB.
#: It is the large image of scenario M1 and the environment of M2, M3 and M5.
ENV100_PINS = [
    "annotated-types==0.8.0", "anyio==4.16.0", "argon2-cffi==25.1.0", "argon2-cffi-bindings==26.2.0",
    "arrow==1.4.0", "asttokens==3.0.2", "async-lru==2.4.0", "attrs==26.1.0", "babel==2.18.0",
    "beautifulsoup4==4.15.0", "bleach==6.4.0", "certifi==2026.10.18", "cffi==2.1.1",
    "charset-normalizer==3.5.2", "comm==0.2.3", "debugpy==1.8.22", "defusedxml==0.7.1", "executing==2.3.0",
    "fastjsonschema==2.22.3", "fqdn==1.6.0", "h11==0.16.0", "httpcore==1.0.9", "httpx==0.28.1", "idna==3.20",
    "ipykernel==7.4.0", "ipython==9.18.1", "ipython-pygments-lexers==1.1.1", "isoduration==20.11.0",
    "jedi==0.20.1", "jinja2==3.1.6", "json5==0.17.3", "jsonpointer==3.12", "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1", "jupyter-builder==1.3.0", "jupyter-client==8.10.0",
    "jupyter-core==5.9.1", "jupyter-events==0.12.1", "jupyter-lsp==2.3.1", "jupyter-server==2.21.1",
    "jupyter-server-terminals==0.5.4", "jupyterlab==4.6.6", "jupyterlab-pygments==0.3.0",
    "jupyterlab-server==2.28.1", "lark==1.3.1", "markdown-it-py==4.3.0", "markupsafe==3.0.4",
    "matplotlib-inline==0.2.2", "mdurl==0.1.2", "mistune==3.4.0", "nbclient==0.11.0", "nbconvert==7.17.2",
    "nbformat==5.11.1", "nest-asyncio2==1.7.4", "notebook-shim==0.2.4", "numpy==2.4.6", "overrides==7.7.0",
    "packaging==26.3", "pandas==3.1.1", "pandocfilters==1.5.1", "parso==0.8.7", "pexpect==4.9.0",
    "platformdirs==4.14.5", "prometheus-client==0.26.0", "prompt-toolkit==3.0.53", "psutil==7.2.2",
    "ptyprocess==0.7.0", "pure-eval==0.2.4", "pycparser==3.12", "pydantic==2.14.3", "pydantic-core==2.50.4",
    "pygments==2.21.0", "python-dateutil==4.0.0", "python-json-logger==4.2.0", "pyyaml==6.0.3",
    "pyzmq==27.3.0", "referencing==0.37.0", "requests==2.34.2", "rfc3339-validator==0.1.4",
    "rfc3986-validator==0.1.1", "rfc3987-syntax==1.1.0", "rich==15.0.0", "rpds-py==2026.9.1",
    "send2trash==2.2.0", "six==1.17.0", "soupsieve==4.1.1", "stack-data==0.6.3", "terminado==0.18.1",
    "tinycss2==1.5.1", "tornado==6.6.1", "traitlets==5.16.1", "typing-extensions==4.16.0",
    "typing-inspection==0.4.5", "tzdata==2026.6", "uri-template==1.3.0", "urllib3==2.8.0", "wcwidth==0.9.4",
    "webcolors==25.10.0", "webencodings==0.6.1", "websocket-client==1.9.2",
]
ENV100_IMPORT = "import numpy, requests, rich, pydantic"
#: --quick: the environment of M2/M3/M5 (and the "large" image of M1) is QUICK_PINS.
QUICK_IMPORT = "import requests, rich, yaml"
#: The small image of M1: ~90 files.
SMALL_PINS = ["urllib3==2.8.0", "idna==3.20", "certifi==2026.10.18"]
#: M4: size of the generated file (MiB).
BIGFILE_MIB = 500
QUICK_BIGFILE_MIB = 64

TARGET_MOUNT_S = 0.200        # in-process mount() until ready
TARGET_PY_WARM = 1.15         # python -c "import ..." on the mount vs the exported venv, warm
TARGET_PY_COLD = 1.35         # the same with the page cache dropped (and a fresh mount)
TARGET_SEQREAD = 0.8          # throughput of a warm sequential read vs disk (at least)
TARGET_RUN_VS_UV = 0.2        # vocker run ... python -c pass: at least 5x faster than uv venv + install

# -- the writes part (``--only writes``) -----------------------------------------------------------

#: W1: the archive extracted: directories x files per directory (deterministic contents, 0-4 KiB).
TAR_DIRS, TAR_FILES_PER_DIR = 400, 25
QUICK_TAR_DIRS = 40
#: W2: distributions installed into the small image (taken from the mount part's wheels, --no-deps).
PIP_DISTS = 50
QUICK_PIP_DISTS = 5
#: W3: the repository cloned: files, and commits that each change a few of them.
GIT_FILES, GIT_COMMITS = 3000, 300
QUICK_GIT_FILES, QUICK_GIT_COMMITS = 300, 30
TARGET_WRITES = 1.5           # tar xf / pip install / git clone into a container vs plain disk (at most)

MB = 1e6  # decimal megabytes, as vocker prints them


# -- helpers ----------------------------------------------------------------------------------------

#: The parts written in this file, and those in scripts/benchparts/ (one module per part, with
#: ``run(bench: Bench) -> str``: it adds rows with ``bench.row()`` and returns the part's markdown intro).
CORE_PARTS = ("import", "mount", "build", "writes")
PLUGIN_PARTS: tuple[str, ...] = tuple(sorted(
    p.stem for p in (Path(__file__).parent / "benchparts").glob("*.py") if not p.stem.startswith("_")))


def log(msg: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {msg}")


class Runner:
    """Runs commands, keeps their output under work/logs, times them."""

    def __init__(self, work: Path) -> None:
        # Commands run in the work dir by default: vocker uses ./.vocker/ as its store when the
        # current directory has one (project stores), which would override VOCKER_HOME.
        self.cwd = work
        self.logs = work / "logs"
        rmtree(self.logs)  # this run's logs only
        self.logs.mkdir(parents=True)
        self.n = 0

    def run(self, cmd: list[str], *, env: dict[str, str] | None = None, name: str = "cmd",
            check: bool = True, timeout: float | None = None, cwd: Path | None = None) -> "Result":
        self.n += 1
        logfile = self.logs / f"{self.n:03d}-{name}.log"
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd or self.cwd)
            rc, stdout, stderr = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as exc:
            rc = -9
            stdout = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            stderr = (exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or ""))
            stderr += f"\n[bench] timed out after {timeout}s"
        seconds = time.perf_counter() - t0
        logfile.write_text(f"$ {shlex.join(cmd)}\n# exit {rc} after {seconds:.3f}s\n"
                           f"--- stdout\n{stdout}\n--- stderr\n{stderr}\n")
        result = Result(cmd, rc, stdout, stderr, seconds, logfile)
        if check and rc != 0:
            raise BenchError(f"command failed (exit {rc}, log {logfile}): {shlex.join(cmd)}\n{result.tail()}")
        return result


class Result:
    def __init__(self, cmd: list[str], rc: int, stdout: str, stderr: str, seconds: float, logfile: Path) -> None:
        self.cmd, self.rc, self.stdout, self.stderr, self.seconds, self.logfile = cmd, rc, stdout, stderr, seconds, logfile

    def tail(self, n: int = 6) -> str:
        lines = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return "\n".join(lines[-n:])


class BenchError(Exception):
    pass


def rmtree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def du_bytes(*paths: Path) -> int:
    """Disk usage (allocated blocks, like `du -s -B1 -c`) of the existing paths."""
    existing = [str(p) for p in paths if p.exists()]
    if not existing:
        return 0
    out = subprocess.run(["du", "-s", "-B1", "-c", *existing], capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def tree_stats(root: Path) -> dict[str, int]:
    """Apparent bytes and file counts of a tree, with and without __pycache__."""
    s = {"files": 0, "bytes": 0, "files_no_pyc": 0, "bytes_no_pyc": 0}
    for dirpath, dirnames, filenames in os.walk(root):
        in_cache = "__pycache__" in Path(dirpath).relative_to(root).parts
        for f in filenames:
            st = os.lstat(os.path.join(dirpath, f))
            s["files"] += 1
            s["bytes"] += st.st_size
            if not in_cache:
                s["files_no_pyc"] += 1
                s["bytes_no_pyc"] += st.st_size
    return s


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def fmt_s(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x:.2f} s"


def fmt_mb(x: float | None) -> str:
    return "-" if x is None else f"{x / MB:.1f} MB"


def fmt_ms(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x * 1000:.0f} ms"


def fmt_rate(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x:.0f} MB/s"


def spec_hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


# "N files[ (M unchanged since the last import, not re-read)], SIZE; K new blobs (S stored) in Ts"
_IMPORT_RE = re.compile(r"(\d+) files(?: \((\d+) unchanged[^)]*\))?, ([\d.]+ \w+); (\d+) new blobs "
                        r"\(([\d.]+ \w+) stored\) in ([\d.]+)s")
_EXPORT_RE = re.compile(r"\) in ([\d.]+)s")
_PYCS_RE = re.compile(r"(\d+) pycs \((\d+) newly compiled\)")


def parse_import(out: str) -> dict[str, Any]:
    m = _IMPORT_RE.search(out)
    if not m:
        return {"already": "Already in store" in out}
    return {"files": int(m[1]), "unchanged": int(m[2] or 0), "size": m[3], "new_blobs": int(m[4]),
            "new_stored": m[5], "internal_s": float(m[6]), "already": "Already in store" in out}


def parse_export(out: str) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if m := _EXPORT_RE.search(out):
        d["internal_s"] = float(m[1])
    if m := _PYCS_RE.search(out):
        d["pycs"], d["compiled"] = int(m[1]), int(m[2])
    return d


def parse_df(out: str) -> dict[str, str]:
    d = {}
    for line in out.splitlines():
        m = re.match(r"\s*(store|images|files|logical size|unique content|stored on disk|bytecode cache|"
                     r"dedup ratio|compression ratio)\s+(.*?)\s*$", line)
        if m:
            d[m[1]] = m[2]
    return d


def machine_facts(work: Path) -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def sh(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO).stdout.strip()
        except OSError:
            return "?"

    fs = sh("df", "-T", str(work)).splitlines()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": sh("nproc"),
        "cpu": cpu,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "kernel": platform.release(),
        "filesystem": fs[-1].split()[1] if len(fs) > 1 else "?",
        "vocker": sh("vocker", "--version"),
        "vocker_git": sh("git", "describe", "--always", "--dirty", "--abbrev=12"),
        "vocker_uncommitted": sh("git", "status", "--short", "--", "vocker").splitlines(),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "fusermount3": sh("fusermount3", "-V"),
        "mfusepy": sh(sys.executable, "-c", "import importlib.metadata as m; print(m.version('mfusepy'))"),
        "mem_total": next((l.split(":", 1)[1].strip() for l in Path("/proc/meminfo").read_text().splitlines()
                           if l.startswith("MemTotal")), "?"),
    }


# -- the benchmark ----------------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work: Path = args.work
        self.quick: bool = args.quick
        self.repeat: int = args.repeat
        self.pins = QUICK_PINS if self.quick else FULL_PINS
        self.smoke = QUICK_SMOKE if self.quick else FULL_SMOKE
        self.mode = "quick" if self.quick else "full"
        self.wheels = self.work / "wheels"
        self.venvs = self.work / "venvs"
        self.stores = self.work / "stores"
        self.scratch = self.work / "scratch"
        self.runner = Runner(self.work)
        self.python = sys.executable  # the project .venv's interpreter; test venvs share its base
        self.vocker = shutil.which("vocker") or str(Path(sys.executable).parent / "vocker")
        self.uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
        self.results: dict[str, Any] = {"mode": self.mode, "repeat": self.repeat, "only": args.only, "scenarios": {}}
        self.rows: list[dict[str, Any]] = []
        self.part = "import"  # which table row() adds to
        # mount part
        self.mount_wheels = self.work / "wheels-mount"
        self.fast_n = 3 * self.repeat  # repetitions of the sub-second timings of the mount part
        self.mount_import = QUICK_IMPORT if self.quick else ENV100_IMPORT
        self.base_python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
        self.live_mounts: dict[str, dict[str, str]] = {}  # mount point -> env of the vocker that mounted it
        self.parts = [*CORE_PARTS, *PLUGIN_PARTS] if args.only == "all" else [args.only]

    # == build (--only build) =========================================================================

    def build_part(self) -> None:
        """vocker build of a cached lock (target < 0.3 s) and a cold build, vs uv venv + uv pip sync."""
        self.fetch_wheels()
        work = self.fresh(self.scratch / "build")
        work.mkdir()
        (work / "requirements.txt").write_text("\n".join(BUILD_PINS) + "\n")
        index = ["--no-index", "--find-links", str(self.wheels)]
        uv_env = dict(os.environ, UV_CACHE_DIR=str(self.work / "uv-cache-build"))
        home = self.fresh(self.stores / "build-lock")
        env = dict(self.venv_env(home), UV_CACHE_DIR=uv_env["UV_CACHE_DIR"])
        self.runner.run([self.vocker, "build", "-r", "requirements.txt", *index, "--lock-only"], env=env,
                        name="build-lock", cwd=work)
        lock = work / "requirements.lock"

        def uv_sync(tag: str) -> float:
            d = self.fresh(self.scratch / f"build-uv-{tag}")
            t0 = time.perf_counter()
            self.runner.run([self.uv, "venv", "-q", "--python", self.base_python, str(d)], env=uv_env,
                            name="uv-venv", cwd=work)
            self.runner.run([self.uv, "pip", "sync", "-q", "--python", str(d / "bin" / "python"), str(lock), *index],
                            env=uv_env, name="uv-sync", cwd=work)
            seconds = time.perf_counter() - t0
            rmtree(d)
            return seconds

        uv_sync("warm")  # fills the uv cache: the baseline is a warm-cache install
        cold, uv_times, cached = [], [], []
        for i in range(self.repeat):
            home = self.fresh(self.stores / f"build-{i}")
            env = dict(self.venv_env(home), UV_CACHE_DIR=uv_env["UV_CACHE_DIR"])
            r = self.runner.run([self.vocker, "build", "-r", "requirements.lock", *index, "-t", "b"], env=env,
                                name="build-cold", cwd=work)
            cold.append(r.seconds)
            uv_times.append(uv_sync(str(i)))
            for _ in range(3):
                r = self.runner.run([self.vocker, "build", "-r", "requirements.lock", *index, "-t", "b"], env=env,
                                    name="build-cached", cwd=work)
                if "cached" not in r.stdout:
                    raise BenchError(f"expected a cache hit: {r.stdout}")
                cached.append(r.seconds)
        version = [self.runner.run([self.vocker, "--version"], env=env, name="version").seconds for _ in range(3)]
        base = median(uv_times)
        self.row("B1 vocker build of an already-cached lock", median(cached), base, 0.3,
                 f"20 distributions; cache hit, nothing installed; samples {_samples(cached)}; "
                 f"CLI start-up alone (`vocker --version`) {median(version):.2f} s",
                 base_name="uv venv + uv pip sync, warm cache")
        self.row("B2 vocker build, cold (store empty), 20 distributions", median(cold), base, None,
                 f"resolve skipped (lock given), uv venv + uv pip sync --require-hashes + import; samples "
                 f"{_samples(cold)}; uv samples {_samples(uv_times)}", base_name="uv venv + uv pip sync, warm cache")

    # environment for vocker: a fresh store, never the user's
    def venv_env(self, home: Path) -> dict[str, str]:
        env = dict(os.environ)
        env["VOCKER_HOME"] = str(home)
        env.pop("VOCKER_DEBUG", None)
        # Measure vocker as installed normally, with its own modules' bytecode cached. (This
        # sandbox sets PYTHONDONTWRITEBYTECODE=1 and the checkout is an editable install, so
        # vocker/*.py would otherwise be recompiled on every start.) The cache goes to the
        # work dir, never into the source tree; warm_up() fills it.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(self.work / "pycache")
        return env

    def warm_up(self) -> None:
        """One untimed import/export of a tiny tree: fills the bytecode cache of vocker itself."""
        home = self.fresh(self.stores / "warm-up")
        tree = self.fresh(self.scratch / "warm-up")
        tree.mkdir()
        (tree / "hello.txt").write_text("hello\n" * 100)
        env = self.venv_env(home)
        self.runner.run([self.vocker, "image", "import", str(tree), "-t", "warm:up"], env=env, name="warm-import")
        self.runner.run([self.vocker, "export", "warm:up", str(self.scratch / "warm-up-out")], env=env,
                        name="warm-export")
        self.runner.run([self.vocker, "df"], env=env, name="warm-df")
        if "mount" in self.parts or "writes" in self.parts:  # vocker.mounting, the daemon, mfusepy
            mnt = self.fresh(self.scratch / "warm-up-mnt")
            self.vmount(env, "warm:up", mnt, "warm")
            self.vunmount(env, mnt, "warm")
            rmtree(mnt)
        rmtree(home)
        rmtree(tree)
        rmtree(self.scratch / "warm-up-out")

    def fresh(self, path: Path) -> Path:
        rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # -- step 0: wheels -----------------------------------------------------------------------------

    def fetch_wheels(self) -> None:
        self.download_wheels(self.wheels, sorted(set(FULL_PINS + QUICK_PINS + EXTRAS)), "wheels", "pip-download")

    def download_wheels(self, dest: Path, wanted: list[str], label: str, logname: str) -> None:
        """pip download of pinned wheels once; later runs are offline."""
        stamp = dest / f".complete-{spec_hash(wanted)}"
        if stamp.exists():
            log(f"{label}: cached in {dest} (offline)")
            return
        dest.mkdir(parents=True, exist_ok=True)
        log(f"{label}: pip download of {len(wanted)} pinned requirements into {dest}")
        self.runner.run([self.python, "-m", "pip", "download", "-q", "--only-binary=:all:",
                         "-d", str(dest), *wanted], name=logname)
        stamp.touch()

    # -- step 1: the realistic venv -----------------------------------------------------------------

    def build_base_venv(self) -> Path:
        # The directory name must not occur inside any file: vocker 0.6.2 refuses to import
        # a venv whose *name* appears in its files (it allows only the full path).
        venv = self.venvs / f"vkbench_{self.mode}_venv"
        stamp = venv.with_name(venv.name + ".spec")  # outside the venv: not part of what is measured
        spec = spec_hash("pip-venv", self.pins, self.python, "prompt")
        if self.args.rebuild or not stamp.exists() or stamp.read_text() != spec:
            log(f"building {venv.name}: python -m venv + pip install of {len(self.pins)} pinned wheels")
            self.fresh(venv)
            # --prompt: by default the activate scripts contain the directory name, and vocker 0.6.2
            # then fails on Linux (it allows the venv's name only in Scripts/, the Windows layout).
            t = self.runner.run([self.python, "-m", "venv", "--prompt", "vkbench", str(venv)],
                                name="venv-base").seconds
            t += self.runner.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index",
                                  "--find-links", str(self.wheels), *self.pins], name="pip-install-base").seconds
            stamp.write_text(spec)
            log(f"  built in {t:.1f}s")
        else:
            log(f"reusing {venv} (same pins; --rebuild to make it afresh)")
        info = tree_stats(venv)
        site = next((venv / "lib").glob("python*/site-packages"))
        info["site_packages_du"] = du_bytes(site)
        info["venv_du"] = du_bytes(venv)
        site_nopyc = subprocess.run(["du", "-s", "-B1", "--exclude=__pycache__", str(site)], capture_output=True,
                                    text=True, check=True).stdout.split()[0]
        info["site_packages_du_no_pyc"] = int(site_nopyc)
        self.results["venv"] = {"path": str(venv), "pins": self.pins, **info}
        console.print(
            f"  venv {venv}: {info['files']} files, {info['bytes'] / MB:.1f} MB apparent "
            f"({info['venv_du'] / MB:.1f} MB on disk); site-packages {info['site_packages_du'] / MB:.1f} MB on disk, "
            f"{info['site_packages_du_no_pyc'] / MB:.1f} MB without __pycache__; "
            f"without __pycache__: {info['files_no_pyc']} files, {info['bytes_no_pyc'] / MB:.1f} MB"
        )
        return venv

    # -- baselines ----------------------------------------------------------------------------------

    def cp_a(self, src: Path, tag: str) -> float:
        dst = self.fresh(self.scratch / f"cp-{tag}")
        t = self.runner.run(["cp", "-a", str(src), str(dst)], name=f"cp-{tag}").seconds
        rmtree(dst)
        return t

    # -- scenarios 2-4 ------------------------------------------------------------------------------

    def import_export(self, venv: Path) -> None:
        cp, imp, reimp, exp1, exp2 = [], [], [], [], []
        imp_info: list[dict] = []
        reimp_info: list[dict] = []
        exp_info: list[dict] = []
        smoke: str | None = None
        content = self.results["venv"]["bytes_no_pyc"]
        for i in range(self.repeat):
            log(f"import/re-import/export: repetition {i + 1}/{self.repeat}")
            cp.append(self.cp_a(venv, f"base-r{i}"))
            home = self.fresh(self.stores / f"import-r{i}")
            env = self.venv_env(home)
            r = self.runner.run([self.vocker, "image", "import", str(venv), "-t", "bench:base"], env=env,
                                name=f"import-r{i}")
            imp.append(r.seconds)
            imp_info.append(parse_import(r.stdout) | {"store_bytes": self.store_bytes(home)})
            r = self.runner.run([self.vocker, "image", "import", str(venv), "-t", "bench:base"], env=env,
                                name=f"reimport-r{i}")
            reimp.append(r.seconds)
            reimp_info.append(parse_import(r.stdout))
            if not reimp_info[-1].get("already"):
                console.print(f"[yellow]warning: re-import did not say 'Already in store': {r.stdout.strip()}")
            d1 = self.fresh(self.scratch / f"export-r{i}-first")
            d2 = self.fresh(self.scratch / f"export-r{i}-second")
            r1 = self.runner.run([self.vocker, "export", "bench:base", str(d1)], env=env, name=f"export1-r{i}")
            r2 = self.runner.run([self.vocker, "export", "bench:base", str(d2)], env=env, name=f"export2-r{i}")
            exp1.append(r1.seconds)
            exp2.append(r2.seconds)
            exp_info.append({"first": parse_export(r1.stdout), "second": parse_export(r2.stdout)})
            if i == 0:  # does the exported venv work?
                s = self.runner.run([str(d2 / "bin" / "python"), "-c", self.smoke], name="export-smoke", check=False)
                smoke = "ok" if s.rc == 0 else f"FAILED: {s.tail(3)}"
                self.results["export_du"] = du_bytes(d1)
            rmtree(d1)
            rmtree(d2)
            if i < self.repeat - 1:
                rmtree(home)

        cp_m = median(cp)
        self.results["scenarios"]["cp_a"] = {"samples": cp, "median": cp_m}
        self.results["scenarios"]["import"] = {"samples": imp, "median": median(imp), "vocker_output": imp_info,
                                               "mb_per_s": content / MB / median(imp)}
        self.results["scenarios"]["reimport"] = {"samples": reimp, "median": median(reimp), "vocker_output": reimp_info}
        self.results["scenarios"]["export_first"] = {"samples": exp1, "median": median(exp1), "smoke": smoke,
                                                     "vocker_output": [e["first"] for e in exp_info]}
        self.results["scenarios"]["export_second"] = {"samples": exp2, "median": median(exp2),
                                                      "vocker_output": [e["second"] for e in exp_info]}
        internal = median([x["internal_s"] for x in imp_info if "internal_s" in x])
        self.row("import, fresh store", median(imp), cp_m, TARGET_IMPORT_S,
                 f"{content / MB / median(imp):.1f} MB/s of {content / MB:.1f} MB (excl. __pycache__); "
                 f"store after import {median([x['store_bytes'] for x in imp_info]) / MB:.1f} MB; "
                 f"paired ratio {_paired(imp, cp)}; "
                 f"vocker's own timer {internal:.2f} s; samples {_samples(imp)}; cp -a samples {_samples(cp)}")
        internal = median([x["internal_s"] for x in reimp_info if "internal_s" in x])
        self.row("re-import, unchanged", median(reimp), cp_m, TARGET_REIMPORT_S,
                 f"vocker's own timer {internal:.2f} s; paired ratio {_paired(reimp, cp)}; samples {_samples(reimp)}")
        e = exp_info[0]["first"]
        self.row("export, first (compiles .pyc)", median(exp1), cp_m, None,
                 f"{e.get('pycs', '?')} pycs, {e.get('compiled', '?')} compiled; own timer "
                 f"{median([x['first'].get('internal_s', float('nan')) for x in exp_info]):.2f} s; "
                 f"samples {_samples(exp1)}")
        self.row("export, second (.pyc cached)", median(exp2), cp_m, None,
                 f"own timer {median([x['second'].get('internal_s', float('nan')) for x in exp_info]):.2f} s; "
                 f"samples {_samples(exp2)}; exported venv runs: {smoke}")

    # -- scenario 5 ---------------------------------------------------------------------------------

    def shared_venvs(self) -> list[Path]:
        out = []
        uv_env = dict(os.environ, UV_LINK_MODE="copy", UV_CACHE_DIR=str(self.work / "uv-cache"))
        for i, extra in enumerate(EXTRAS):
            name = extra.split("==")[0]
            venv = self.venvs / f"shared-{self.mode}-{i:02d}-{name}"
            stamp = venv.with_name(venv.name + ".spec")
            spec = spec_hash("uv-venv", self.pins, extra, self.python)
            if self.args.rebuild or not stamp.exists() or stamp.read_text() != spec:
                self.fresh(venv)
                self.runner.run([self.python, "-m", "venv", "--without-pip", str(venv)], name=f"venv-shared-{i}")
                self.runner.run([self.uv, "pip", "install", "--quiet", "--no-config", "--offline", "--python",
                                 str(venv / "bin" / "python"), "--no-index", "--find-links", str(self.wheels),
                                 *self.pins, extra], env=uv_env, name=f"uv-install-shared-{i}")
                stamp.write_text(spec)
            out.append(venv)
        return out

    def store_bytes(self, home: Path) -> int:
        return du_bytes(home / "blobs", *sorted(home.glob("vocker.db*")))

    @staticmethod
    def pyc_count(home: Path) -> int:
        with contextlib.closing(sqlite3.connect(home / "vocker.db")) as conn:
            return conn.execute("SELECT COUNT(*) FROM pycs WHERE ok").fetchone()[0]

    def shared(self) -> None:
        log("10 venvs sharing most packages: creating them with uv (copy mode) from the cached wheels")
        t0 = time.perf_counter()
        venvs = self.shared_venvs()
        log(f"  ready in {time.perf_counter() - t0:.1f}s")
        plain = du_bytes(*venvs)
        one_bytes, ten_bytes, ten_times, cp_times, one_times = [], [], [], [], []
        df_one: dict[str, str] = {}
        df_ten: dict[str, str] = {}
        for i in range(self.repeat):
            log(f"10 shared venvs: repetition {i + 1}/{self.repeat}")
            # baseline time: cp -a of the 10 plain venvs
            dst = self.fresh(self.scratch / f"cp-shared-r{i}")
            dst.mkdir()
            cp_times.append(self.runner.run(["cp", "-a", *map(str, venvs), str(dst)], name=f"cp-shared-r{i}").seconds)
            rmtree(dst)
            # one venv alone
            home1 = self.fresh(self.stores / f"shared-one-r{i}")
            one_times.append(self.runner.run([self.vocker, "image", "import", str(venvs[0]), "-t", "bench:one"],
                                             env=self.venv_env(home1), name=f"shared-one-r{i}").seconds)
            one_bytes.append(self.store_bytes(home1))
            df_one = parse_df(self.runner.run([self.vocker, "df"], env=self.venv_env(home1), name="df-one").stdout)
            # all ten into one store
            home = self.fresh(self.stores / f"shared-ten-r{i}")
            t = 0.0
            for j, venv in enumerate(venvs):
                t += self.runner.run([self.vocker, "image", "import", str(venv), "-t", f"bench:shared{j}"],
                                     env=self.venv_env(home), name=f"shared-ten-r{i}-{j}").seconds
            ten_times.append(t)
            ten_bytes.append(self.store_bytes(home))
            df_ten = parse_df(self.runner.run([self.vocker, "df"], env=self.venv_env(home), name="df-ten").stdout)
            if i < self.repeat - 1:
                rmtree(home1)
                rmtree(home)
        one, ten = median(one_bytes), median(ten_bytes)
        self.results["scenarios"]["shared"] = {
            "venvs": [str(v) for v in venvs], "extras": EXTRAS, "plain_du": plain,
            "one_store_bytes": one_bytes, "ten_store_bytes": ten_bytes, "df_one": df_one, "df_ten": df_ten,
            "ten_import_seconds": ten_times, "one_import_seconds": one_times, "cp_ten_seconds": cp_times,
        }
        self.row("10 shared venvs: stored bytes vs 1", ten, one, TARGET_SHARED_RATIO,
                 f"du of blobs + vocker.db*; vocker df 'stored on disk': 10 = {df_ten.get('stored on disk', '?')}, "
                 f"1 = {df_one.get('stored on disk', '?')}; dedup ratio {df_ten.get('dedup ratio', '?')}",
                 unit="bytes", base_name="1 venv in its own store")
        self.row("10 shared venvs: stored vs plain du", ten, plain, None,
                 f"du -s of the 10 plain (uv-made, no .pyc) venvs = {plain / MB:.1f} MB; "
                 f"logical size {df_ten.get('logical size', '?')}",
                 unit="bytes", base_name="du -s of the 10 venvs")
        self.row("10 shared venvs: import all 10", median(ten_times), median(cp_times), None,
                 f"sum of 10 imports into one store vs one `cp -a` of the 10 venvs; first venv alone: "
                 f"{fmt_s(median(one_times))}; samples {_samples(ten_times)}")

    # -- scenario 6 ---------------------------------------------------------------------------------

    def old_vocker(self, venv: Path) -> None:
        ovenv = self.work / "old-vocker-venv"
        owheels = self.work / "wheels-old-vocker"
        py = ovenv / "bin" / "python"
        res: dict[str, Any] = {"requirements": OLD_VOCKER}
        self.results["scenarios"]["old_vocker"] = res
        cp_m = self.results["scenarios"].get("cp_a", {}).get("median")
        try:
            stamp = ovenv.with_name(ovenv.name + ".spec")
            spec = spec_hash(OLD_VOCKER, self.python)
            if not stamp.exists() or stamp.read_text() != spec:
                owheels.mkdir(parents=True, exist_ok=True)
                ostamp = owheels / f".complete-{spec_hash(OLD_VOCKER)}"
                if not ostamp.exists():
                    # `pip wheel`, not `pip download`: a dependency (atomicwrites) is an sdist only, and
                    # building it at install time would need setuptools from the network again.
                    log(f"vocker 0.6.2: pip wheel {' '.join(OLD_VOCKER)} into {owheels}")
                    self.runner.run([self.python, "-m", "pip", "wheel", "-q", "-w", str(owheels), *OLD_VOCKER],
                                    name="pip-wheel-old")
                    ostamp.touch()
                log(f"vocker 0.6.2: installing into {ovenv}")
                self.fresh(ovenv)
                self.runner.run([self.python, "-m", "venv", str(ovenv)], name="venv-old")
                self.runner.run([str(py), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(owheels),
                                 *OLD_VOCKER], name="pip-install-old")
                stamp.write_text(spec)
            show = self.runner.run([str(py), "-m", "pip", "show", "vocker"], name="old-version", check=False,
                                   cwd=self.work).stdout
            res["version"] = next((l.split(":", 1)[1].strip() for l in show.splitlines() if l.startswith("Version:")), "?")
            # CLI (from --help): `python -m vocker repo init NAME`, then
            # `python -m vocker image import -R NAME DIR`; the store is $VOCKER_BASE.
            base = self.fresh(self.stores / "old-vocker")
            env = dict(os.environ, VOCKER_BASE=str(base))
            # cwd: not the repo root, or `python -m vocker` would find this checkout's ./vocker first
            self.runner.run([str(py), "-m", "vocker", "repo", "init", "bench"], env=env, name="old-repo-init",
                            cwd=self.work)
            log(f"vocker 0.6.2: image import of {venv.name} (one run; this takes minutes)")
            r = self.runner.run([str(py), "-m", "vocker", "image", "import", "-R", "bench", str(venv)], env=env,
                                name="old-import", check=False, timeout=OLD_TIMEOUT, cwd=self.work)
            res.update({"seconds": r.seconds, "rc": r.rc, "log": str(r.logfile), "store_du": du_bytes(base)})
            if r.rc != 0:
                res["error"] = r.tail(4)
                self.row("vocker 0.6.2: import", None, cp_m, None,
                         f"FAILED after {r.seconds:.1f}s (exit {r.rc}): {r.tail(2)} (log {r.logfile})",
                         result="FAILED")
                return
            new = self.results["scenarios"]["import"]["median"]
            cur = [x["store_bytes"] for x in self.results["scenarios"]["import"]["vocker_output"]]
            res["speedup_new_vs_old"] = r.seconds / new
            self.row("vocker 0.6.2: import (1 run)", r.seconds, cp_m, None,
                     f"current vocker is {r.seconds / new:.0f}x faster ({fmt_s(new)}); "
                     f"0.6.2 store {du_bytes(base) / MB:.1f} MB on disk (xz) vs current "
                     f"{median(cur) / MB:.1f} MB (zstd)")
        except (BenchError, OSError, subprocess.SubprocessError) as exc:
            res["error"] = str(exc)
            self.row("vocker 0.6.2: import", None, cp_m, None, f"FAILED: {str(exc).splitlines()[0]}", result="FAILED")

    # == the mount layer (--only mount) ===============================================================
    #
    # M1 mount time (in-process mount() and the `vocker mount` CLI), small and large image;
    # M2 python -c "import numpy, ..." warm and with the page cache dropped;
    # M3 find / tar over the tree, warm;  M4 sequential read of a 500 MiB file, warm;
    # M5 image in store -> `python -c pass` in a fresh environment: vocker run / export / uv.
    # Every mount is tracked in self.live_mounts and unmounted in a finally; unmount_leftovers()
    # then lazily unmounts whatever FUSE mount is still under the work dir.

    def vmount(self, env: dict[str, str], ref: str, where: Path, tag: str) -> Result:
        self.live_mounts[str(where)] = env  # before: a mount that half-failed is still cleaned up
        return self.runner.run([self.vocker, "mount", ref, str(where)], env=env, name=f"mount-{tag}")

    def vunmount(self, env: dict[str, str], where: Path, tag: str) -> Result:
        r = self.runner.run([self.vocker, "unmount", str(where)], env=env, name=f"unmount-{tag}")
        self.live_mounts.pop(str(where), None)
        return r

    @contextlib.contextmanager
    def cli_mounted(self, env: dict[str, str], ref: str, where: Path, tag: str) -> Iterator[Path]:
        self.vmount(env, ref, where, tag)
        try:
            yield where
        finally:
            self.vunmount(env, where, tag)
            with contextlib.suppress(OSError):
                where.rmdir()

    def unmount_leftovers(self, when: str) -> list[str]:
        """Unmount what this run mounted and did not unmount, then any FUSE mount under the work dir."""
        for where, env in list(self.live_mounts.items()):
            self.runner.run([self.vocker, "unmount", "--force", where], env=env, name="unmount-cleanup", check=False)
            self.live_mounts.pop(where, None)
        left = fuse_mounts_under(self.work)
        for mp in left:
            subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
        if left:
            console.print(f"[yellow]{when}: {len(left)} FUSE mount(s) left under {self.work}, lazily unmounted: "
                          f"{', '.join(left)}")
        self.results.setdefault("leftover_mounts", {})[when] = left
        return left

    def plain_env(self) -> dict[str, str]:
        """For the measured interpreters of M2: no pycache prefix (it would hide the environments' own
        __pycache__), and no bytecode writes, so neither side changes between runs."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPYCACHEPREFIX", "PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONSTARTUP")}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    def can_drop_caches(self) -> bool:
        try:
            self.drop_caches()
            return True
        except OSError as exc:
            console.print(f"[yellow]cannot drop the page cache ({exc}); the cold scenario is skipped")
            return False

    @staticmethod
    def drop_caches() -> None:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")

    def fetch_mount_wheels(self) -> None:
        wanted = sorted(set(SMALL_PINS + (QUICK_PINS if self.quick else ENV100_PINS)))
        self.download_wheels(self.mount_wheels, wanted, "mount wheels", "pip-download-mount")

    def uv_venv(self, name: str, pins: list[str]) -> Path:
        """A venv made with `python -m venv --without-pip` + `uv pip install` (copy mode, offline)."""
        venv = self.venvs / f"mount-{name}"
        stamp = venv.with_name(venv.name + ".spec")
        spec = spec_hash("uv-venv-mount", pins, self.python)
        if self.args.rebuild or not stamp.exists() or stamp.read_text() != spec:
            log(f"building {venv.name}: python -m venv + uv pip install of {len(pins)} pinned wheels")
            self.fresh(venv)
            uv_env = dict(os.environ, UV_LINK_MODE="copy", UV_CACHE_DIR=str(self.work / "uv-cache"))
            self.runner.run([self.python, "-m", "venv", "--without-pip", str(venv)], name=f"venv-{name}")
            self.runner.run([self.uv, "pip", "install", "--quiet", "--no-config", "--offline", "--python",
                             str(venv / "bin" / "python"), "--no-index", "--find-links", str(self.mount_wheels),
                             *pins], env=uv_env, name=f"uv-install-{name}")
            stamp.write_text(spec)
        return venv

    def bigfile_tree(self, venv: Path) -> Path:
        """A directory (no pyvenv.cfg: a plain tree) holding data.bin, generated deterministically."""
        mib = QUICK_BIGFILE_MIB if self.quick else BIGFILE_MIB
        sos = sorted(venv.rglob("*.so"), key=lambda p: (-p.stat().st_size, str(p.relative_to(venv))))
        if not sos:
            raise BenchError(f"no .so file in {venv} to build the test file from")
        so = sos[0]
        tree = self.work / "data" / f"bigfile-{self.mode}"
        stamp = tree.with_name(tree.name + ".spec")
        spec = spec_hash("bigfile-v1", mib, str(so.relative_to(venv)), so.stat().st_size)
        if self.args.rebuild or not stamp.exists() or stamp.read_text() != spec:
            log(f"generating {tree}/data.bin: {mib} MiB (random, {so.name} and CSV-like text, a third each)")
            self.fresh(tree)
            tree.mkdir()
            generate_bigfile(tree / "data.bin", mib, so.read_bytes())
            stamp.write_text(spec)
        return tree

    def mount_helper(self, home: Path, cfg: dict[str, Any], tag: str) -> dict[str, Any]:
        """Run _MOUNT_HELPER (in-process mount()/unmount()/export_image() timings) in a child process."""
        base = self.scratch / "mnt" / f"api-{tag}"
        base.mkdir(parents=True, exist_ok=True)
        cfg = {"home": str(home), "base": str(base), **cfg}
        r = self.runner.run([self.python, "-c", _MOUNT_HELPER, json.dumps(cfg)], env=self.venv_env(home),
                            name=f"api-{tag}", cwd=self.scratch, timeout=3600)
        return json.loads(r.stdout.strip().splitlines()[-1])

    def mount_part(self) -> None:
        res: dict[str, Any] = {}
        self.results["scenarios"]["mount"] = res
        try:
            self._mount_part(res)
        finally:
            res["leftover_mounts"] = self.unmount_leftovers("end of the mount part")

    def _mount_part(self, res: dict[str, Any]) -> None:
        self.fetch_mount_wheels()
        small = self.uv_venv("small", SMALL_PINS)
        large = self.uv_venv("quick" if self.quick else "env100", QUICK_PINS if self.quick else ENV100_PINS)
        bigdir = self.bigfile_tree(large)
        home = self.fresh(self.stores / "mount")
        env = self.venv_env(home)
        (self.scratch / "mnt").mkdir(parents=True, exist_ok=True)
        (self.scratch / "tmp").mkdir(parents=True, exist_ok=True)
        images: dict[str, Any] = {}
        res["images"] = images
        for tag, tree in (("small", small), ("large", large), ("bigfile", bigdir)):
            log(f"mount part: importing {tree.name} as bench:{tag}")
            r = self.runner.run([self.vocker, "image", "import", str(tree), "-t", f"bench:{tag}"], env=env,
                                name=f"import-{tag}")
            # files: as vocker counts them (parse_import), not the tree's (activate scripts, uv's .lock)
            images[tag] = {"path": str(tree), **tree_stats(tree), **parse_import(r.stdout), "import_s": r.seconds,
                           "pins": len(SMALL_PINS if tag == "small" else QUICK_PINS if self.quick else ENV100_PINS)
                           if tag != "bigfile" else None}
            if tag != "bigfile":
                log(f"  first mount of bench:{tag} (in-process)")
                images[tag]["first_mount"] = self.mount_helper(home, {"first": [f"bench:{tag}"]},
                                                               f"first-{tag}")["first"][f"bench:{tag}"]
            if tag == "large":  # before the export below compiles every source
                log("  first import through a mount of bench:large (compiles what it imports), then again")
                # plain_env: with the bench's PYTHONPYCACHEPREFIX, Python would not look into the mount's __pycache__
                run_env = dict(self.plain_env(), VOCKER_HOME=str(home), TMPDIR=str(self.scratch / "tmp"))
                images[tag]["first_imports"] = [self.runner.run(
                    [self.vocker, "run", "bench:large", "--", "python", "-c", self.mount_import], env=run_env,
                    name=f"first-import-{i}").seconds for i in range(2)]
                images[tag]["first_import_pycs"] = self.pyc_count(home)
        images["bigfile"]["stored"] = self.store_bytes(home)
        # the plain-disk twin of the large image, with the same pycs: baseline of M2 and M3
        exported = self.fresh(self.scratch / "export-large")
        r = self.runner.run([self.vocker, "export", "bench:large", str(exported)], env=env, name="export-large")
        images["large"]["export_s"] = r.seconds
        images["large"]["export_stats"] = tree_stats(exported)
        steps = [("M1 mount time", lambda: self.m1_mount_time(home, env)),
                 ("M2/M3 python import, find, tar (warm)", lambda: self.m2_m3_warm(env, exported)),
                 ("M2 python import (caches dropped)", lambda: self.m2_cold(env, exported)),
                 ("M4 sequential read", lambda: self.m4_seqread(env, bigdir)),
                 ("M5 fresh environment", lambda: self.m5_fresh_env(env))]
        for label, step in steps:
            log(f"mount part: {label}")
            try:
                step()
            except BenchError as exc:
                console.print(f"[red]{label} failed:[/red] {exc}")
                self.row(label, None, None, None, f"FAILED: {str(exc).splitlines()[0]}", result="FAILED")
            # a scenario that failed half-way must not leave its mounts to the next one
            for where, menv in list(self.live_mounts.items()):
                self.runner.run([self.vocker, "unmount", "--force", where], env=menv, name="unmount-after-failure",
                                check=False)
                self.live_mounts.pop(where, None)
        if self.args.profile:
            self.profile_mount(home)
        rmtree(exported)

    # -- M1 -------------------------------------------------------------------------------------------

    def m1_mount_time(self, home: Path, env: dict[str, str]) -> None:
        res = self.results["scenarios"]["mount"]
        images = res["images"]
        refs = ["bench:small", "bench:large"]
        n = self.fast_n
        api = self.mount_helper(home, {"warm": refs, "warmup": 2, "n": n, "export_n": self.repeat}, "warm")
        res["m1_api"] = api
        # the CLI, interleaved with its start-up baseline
        cli: dict[str, list[float]] = {r: [] for r in refs}
        cli_un: dict[str, list[float]] = {r: [] for r in refs}
        ver, pyc = [], []
        host = self.plain_env()
        for i in range(n):
            pyc.append(self.runner.run([self.base_python, "-c", "pass"], env=host, name="python-pass").seconds)
            ver.append(self.runner.run([self.vocker, "--version"], env=env, name="version").seconds)
            for ref in (refs if i % 2 == 0 else refs[::-1]):
                tag = ref.split(":")[1]
                d = self.scratch / "mnt" / f"cli-{tag}-{i}"
                cli[ref].append(self.vmount(env, ref, d, f"cli-{tag}").seconds)
                cli_un[ref].append(self.vunmount(env, d, f"cli-{tag}").seconds)
                d.rmdir()
        res["m1_cli"] = {"mount": cli, "unmount": cli_un, "version": ver, "python_pass": pyc}
        m = {r: median([x["mount"] for x in api["mount"][r]]) for r in refs}
        threads = sorted({x["threads"] for r in refs for x in api["mount"][r]})
        for r in refs:
            tag = r.split(":")[1]
            im = images[tag]
            samples = [x["mount"] for x in api["mount"][r]]
            un = median([x["unmount"] for x in api["mount"][r]])
            ls = median([x["first_listdir"] for x in api["mount"][r]])
            flat = f"; large/small {m[r] / m['bench:small']:.2f}x (flat in size)" if tag == "large" else ""
            self.row(f"M1 mount() in-process, {tag} image ({im['files']} files)", m[r],
                     median(api["export"][r]), None,
                     f"until ready, imports excluded{flat}; samples {_samples_ms(samples)}; then first listdir "
                     f"{ls * 1000:.1f} ms, unmount() {un * 1000:.0f} ms; threads in the caller {threads} "
                     f"(1: the daemon is forked, not a new interpreter); 2 warm-up mounts first",
                     unit="ms", base_name="export_image() in-process", target_desc=f"< {TARGET_MOUNT_S * 1000:.0f} ms",
                     passed=m[r] < TARGET_MOUNT_S)
        for r in refs:
            tag = r.split(":")[1]
            first = images[tag]["first_mount"]
            self.row(f"M1 first mount() of the {tag} image", first["mount"], m[r], None,
                     "compiles nothing up front (a mount compiles a directory's sources when a pyc of its "
                     "__pycache__ is first looked up); baseline: the warm mount() above", unit="ms", base_name="later mounts",
                     target_desc="-", passed=None)
        one, two = images["large"]["first_imports"]
        self.row(f"M1 first `vocker run IMG -- python -c \"{self.mount_import}\"` of the large image", one, two, None,
                 f"compiles the {images['large']['first_import_pycs']} sources of the directories the import looks "
                 f"into, once (shared by every image); baseline: the same command right after", base_name="second run",
                 target_desc="-", passed=None)
        v = median(ver)
        for r in refs:
            tag = r.split(":")[1]
            self.row(f"M1 `vocker mount` CLI, {tag} image", median(cli[r]), v, None,
                     f"wall time of the command; {(median(cli[r]) - v) * 1000:.0f} ms over `vocker --version`; "
                     f"`vocker unmount` {median(cli_un[r]) * 1000:.0f} ms; samples {_samples_ms(cli[r])}",
                     unit="ms", base_name="vocker --version", target_desc="-", passed=None)
        self.row("M1 `vocker --version` (CLI start-up)", v, median(pyc), None,
                 f"samples {_samples_ms(ver)}; `python -c pass` samples {_samples_ms(pyc)}", unit="ms",
                 base_name="python -c pass", target_desc="-", passed=None)

    # -- M2 / M3 ------------------------------------------------------------------------------------

    def py_import(self, root: Path, tag: str) -> float:
        return self.runner.run([str(root / "bin" / "python"), "-c", self.mount_import], env=self.plain_env(),
                               name=tag, cwd=self.scratch).seconds

    def m2_m3_warm(self, env: dict[str, str], exported: Path) -> None:
        res = self.results["scenarios"]["mount"]
        n = self.fast_n
        with self.cli_mounted(env, "bench:large", self.scratch / "mnt" / "warm-large", "warm-large") as live:
            # M2 warm: both primed once, then interleaved
            prime = {"mount": self.py_import(live, "m2-prime-mount"), "disk": self.py_import(exported, "m2-prime-disk")}
            wm, wd = [], []
            for i in range(n):
                for side in (("disk", "mount") if i % 2 == 0 else ("mount", "disk")):
                    if side == "mount":
                        wm.append(self.py_import(live, "m2-warm-mount"))
                    else:
                        wd.append(self.py_import(exported, "m2-warm-disk"))
            res["m2_warm"] = {"mount": wm, "disk": wd, "prime": prime}
            ratio = median(wm) / median(wd)
            self.row(f"M2 python -c \"{self.mount_import}\", warm", median(wm), median(wd), None,
                     f"paired ratio {_paired(wm, wd)}; samples {_samples(wm)}; disk {_samples(wd)}; first run on the "
                     f"new mount (untimed prime) {prime['mount']:.2f} s, disk {prime['disk']:.2f} s",
                     base_name="exported venv", target_desc=f"<= {TARGET_PY_WARM}x disk", passed=ratio <= TARGET_PY_WARM)
            # M3: find and tar over the whole tree
            q = {"mount": shlex.quote(str(live)), "disk": shlex.quote(str(exported))}
            count = {k: self.runner.run(["bash", "-c", f"find {v} | wc -l"], name=f"m3-count-{k}").stdout.strip()
                     for k, v in q.items()}
            for what, cmd in (("find", "find {} > /dev/null"), ("tar", "set -o pipefail; tar cf - -C {} . | cat > /dev/null")):
                first = {side: self.runner.run(["bash", "-c", cmd.format(q[side])], name=f"m3-{what}-prime-{side}").seconds
                         for side in ("mount", "disk")}  # prime; on the mount the first walk of this daemon
                t: dict[str, list[float]] = {"mount": [], "disk": []}
                for i in range(n):
                    for side in (("disk", "mount") if i % 2 == 0 else ("mount", "disk")):
                        t[side].append(self.runner.run(["bash", "-c", cmd.format(q[side])],
                                                       name=f"m3-{what}-{side}").seconds)
                res[f"m3_{what}"] = {**t, "prime": first}
                extra = (f"{count['mount']} entries on the mount, {count['disk']} in the export" if what == "find" else
                         f"{res['images']['large']['export_stats']['bytes'] / MB:.0f} MB of files")
                self.row(f"M3 `{cmd.split(';')[-1].strip().format('DIR')}`, warm", median(t["mount"]), median(t["disk"]),
                         None, f"{extra}; paired ratio {_paired(t['mount'], t['disk'])}; samples {_samples(t['mount'])}; "
                         f"disk {_samples(t['disk'])}; first run on this mount (untimed prime) {first['mount']:.2f} s, "
                         f"disk {first['disk']:.2f} s", base_name="exported venv", target_desc="-", passed=None)

    def m2_cold(self, env: dict[str, str], exported: Path) -> None:
        res = self.results["scenarios"]["mount"]
        if not self.can_drop_caches():
            self.row(f"M2 python -c \"{self.mount_import}\", caches dropped", None, None, None,
                     "skipped: cannot write /proc/sys/vm/drop_caches (not root?)", result="skipped")
            return
        cm, cd, cf = [], [], []
        sides = ("disk", "mount", "first")
        for i in range(self.fast_n):  # sub-second and noisy: as many samples as the warm timings
            for side in sides[i % 3:] + sides[:i % 3]:
                self.drop_caches()
                if side == "disk":
                    # the same warm-up of the host interpreter and stdlib that `vocker mount` gives the other side
                    self.runner.run([self.vocker, "--version"], env=env, name="m2-cold-equalise")
                    cd.append(self.py_import(exported, "m2-cold-disk"))
                    continue
                if side == "first":  # as if the image had never been mounted: no read-ahead profile
                    with contextlib.closing(sqlite3.connect(Path(env["VOCKER_HOME"]) / "vocker.db")) as db, db:
                        db.execute("DELETE FROM read_profiles")
                with self.cli_mounted(env, "bench:large", self.scratch / "mnt" / f"cold-{side}-{i}", "cold") as d:
                    (cm if side == "mount" else cf).append(self.py_import(d, f"m2-cold-{side}"))
        res["m2_cold"] = {"mount": cm, "disk": cd, "first_mount": cf}
        ratio = median(cm) / median(cd)
        how = ("sync + drop_caches before each; mount side: a fresh `vocker mount` after the drop (not timed); "
               "disk side: `vocker --version` after the drop (not timed), the same warm-up of the host Python")
        self.row(f"M2 python -c \"{self.mount_import}\", caches dropped", median(cm), median(cd), None,
                 f"{how}; the mount reads ahead the image's profile (recorded by the earlier mounts); "
                 f"paired ratio {_paired(cm, cd)}; samples {_samples(cm)}; disk {_samples(cd)}",
                 base_name="exported venv", target_desc=f"<= {TARGET_PY_COLD}x disk", passed=ratio <= TARGET_PY_COLD)
        self.row(f"M2 python -c \"{self.mount_import}\", caches dropped, first mount (no read-ahead profile)",
                 median(cf), median(cd), None,
                 f"{how}; the profile deleted before each mount; paired ratio {_paired(cf, cd)}; "
                 f"samples {_samples(cf)}", base_name="exported venv", target_desc="-", passed=None)

    # -- M4 -------------------------------------------------------------------------------------------

    def m4_seqread(self, env: dict[str, str], bigdir: Path) -> None:
        res = self.results["scenarios"]["mount"]
        src = bigdir / "data.bin"
        size = src.stat().st_size

        def cat(path: Path, tag: str) -> float:
            return self.runner.run(["bash", "-c", f"cat {shlex.quote(str(path))} > /dev/null"], name=tag).seconds

        with self.cli_mounted(env, "bench:bigfile", self.scratch / "mnt" / "bigfile", "bigfile") as root:
            f = root / "data.bin"
            if f.stat().st_size != size:
                raise BenchError(f"{f} has {f.stat().st_size} bytes, {src} {size}")
            first = cat(f, "m4-first-read-mount")  # through the daemon
            cat(src, "m4-prime-disk")
            tm, td = [], []
            for i in range(self.fast_n):
                for side in (("disk", "mount") if i % 2 == 0 else ("mount", "disk")):
                    if side == "mount":
                        tm.append(cat(f, "m4-mount"))
                    else:
                        td.append(cat(src, "m4-disk"))
            same = self.runner.run(["cmp", str(src), str(f)], name="m4-cmp", check=False).rc == 0
        res["m4"] = {"size": size, "first_mount_read_s": first, "mount": tm, "disk": td, "identical": same}
        rm, rd = size / MB / median(tm), size / MB / median(td)
        stored = res["images"]["bigfile"].get("new_stored", "?")
        self.row(f"M4 sequential read of a {size / MB:.0f} MB file, warm", rm, rd, None,
                 f"`cat FILE > /dev/null`; {stored} in the store (zstd-seekable); content identical: {same}; "
                 f"times {_samples(tm)}; disk {_samples(td)}", unit="MB/s", base_name="same file on disk",
                 target_desc=f">= {TARGET_SEQREAD}x disk", passed=rm / rd >= TARGET_SEQREAD)
        self.row("M4 first read after mounting (through the daemon)", size / MB / first, rd, None,
                 f"{first:.2f} s: the reads decompress and check each 128 KiB chunk against the digests "
                 f"recorded at import; the store file is in the page cache", unit="MB/s",
                 base_name="warm disk read", target_desc="-", passed=None)

    # -- M5 -------------------------------------------------------------------------------------------

    def m5_fresh_env(self, env: dict[str, str]) -> None:
        res = self.results["scenarios"]["mount"]
        pins = QUICK_PINS if self.quick else ENV100_PINS
        req = self.work / f"requirements-m5-{self.mode}.txt"
        req.write_text("".join(p + "\n" for p in pins))
        # so `vocker run`'s mount is under the work dir, and fresh each time (the warm part measures warm runs)
        run_env = dict(env, TMPDIR=str(self.scratch / "tmp"), VOCKER_WARM_IDLE="0")
        uv_env = {k: v for k, v in run_env.items() if not k.startswith("UV_") and k != "VIRTUAL_ENV"}
        uv_env["UV_CACHE_DIR"] = str(self.work / "uv-cache-m5")  # warm; UV_LINK_MODE left at its default

        def vocker_run(tag: str) -> float:
            return self.runner.run([self.vocker, "run", "bench:large", "--", "python", "-c", "pass"], env=run_env,
                                   name=f"m5-run-{tag}").seconds

        command: list[float] = []  # `python -c pass` of the exported venv: the command itself, from disk
        cli_start: list[float] = []  # `vocker --version`: the interpreter plus the CLI's imports

        def export(tag: str) -> float:
            d = self.fresh(self.scratch / f"m5-export-{tag}")
            t = self.runner.run([self.vocker, "export", "bench:large", str(d)], env=env, name=f"m5-export-{tag}").seconds
            py = self.runner.run([str(d / "bin" / "python"), "-c", "pass"], env=run_env, name=f"m5-export-py-{tag}")
            command.append(py.seconds)
            cli_start.append(self.runner.run([self.vocker, "--version"], env=run_env, name=f"m5-cli-{tag}").seconds)
            rmtree(d)
            return t + py.seconds

        def uv(tag: str) -> float:
            d = self.fresh(self.scratch / f"m5-uv-{tag}")
            t = self.runner.run([self.uv, "venv", "--quiet", "--no-config", "--python", self.base_python, str(d)],
                                env=uv_env, name=f"m5-uv-venv-{tag}").seconds
            t += self.runner.run([self.uv, "pip", "install", "--quiet", "--no-config", "--offline", "--no-index",
                                  "--find-links", str(self.mount_wheels), "-r", str(req), "--python",
                                  str(d / "bin" / "python")], env=uv_env, name=f"m5-uv-install-{tag}").seconds
            t += self.runner.run([str(d / "bin" / "python"), "-c", "pass"], env=run_env, name=f"m5-uv-py-{tag}").seconds
            rmtree(d)
            return t

        # untimed: the uv cache gets filled, and the mounted python is checked to run from the mount
        first = {"run": vocker_run("prime"), "export": export("prime"), "uv": uv("prime")}
        where = self.runner.run([self.vocker, "run", "bench:large", "--", "python", "-c",
                                 "import sys; print(sys.prefix)"], env=run_env, name="m5-run-check").stdout.strip()
        if not where.startswith(str(self.scratch / "tmp")):
            raise BenchError(f"vocker run's python has sys.prefix {where!r}, not a mount under {self.scratch / 'tmp'}")
        t: dict[str, list[float]] = {"run": [], "export": [], "uv": []}
        fns = {"run": vocker_run, "export": export, "uv": uv}
        order = ["run", "export", "uv"]
        for i in range(self.repeat):
            for k in order[i % 3:] + order[:i % 3]:
                t[k].append(fns[k](f"r{i}"))
        res["m5"] = {"first": first, **t, "pins": len(pins)}
        u = median(t["uv"])
        self.row(f"M5 image -> `python -c pass`: vocker run ({len(pins)} distributions)", median(t["run"]), u, None,
                 f"`vocker run IMG -- python -c pass` (mount in a temp dir, run, unmount); medians: "
                 f"{_speed(median(t['run']), u)} than uv; per repetition {_paired(t['run'], t['uv'])}; samples "
                 f"{_samples(t['run'])}; first (untimed) {first['run']:.2f} s",
                 base_name="uv venv + uv pip install (warm cache)",
                 target_desc=f"<= {TARGET_RUN_VS_UV}x uv (5x faster)", passed=median(t["run"]) / u <= TARGET_RUN_VS_UV)
        budget = TARGET_RUN_VS_UV * u
        cmd, cli = median(command[1:]), median(cli_start[1:])  # [0] is the untimed prime
        rest = median(t["run"]) - cmd - cli
        self.row("M5 where `vocker run`'s time goes", median(t["run"]), budget, None,
                 f"the 5x target leaves {budget * 1000:.0f} ms for all of it; the command itself (`python -c pass` "
                 f"of the exported venv, from disk) takes {cmd * 1000:.0f} ms and the CLI's start (`vocker "
                 f"--version`: interpreter + imports) {cli * 1000:.0f} ms, which leaves "
                 f"{(budget - cmd - cli) * 1000:.0f} ms for the mount (daemon start), unmount and exit; they took "
                 f"{rest * 1000:.0f} ms; command samples {_samples_ms(command[1:])}; CLI start samples "
                 f"{_samples_ms(cli_start[1:])}", base_name="5x target: 0.2x uv", target_desc="-", passed=None)
        self.row("M5 image -> `python -c pass`: vocker export + run", median(t["export"]), u, None,
                 f"`vocker export IMG DIR && DIR/bin/python -c pass` (bytecode cached); samples {_samples(t['export'])}",
                 base_name="uv venv + uv pip install (warm cache)", target_desc="-", passed=None)
        self.row("M5 uv venv + uv pip install --offline + `python -c pass`", u, u, None,
                 f"warm uv cache in {self.work.name}/uv-cache-m5, default link mode (hardlink), --no-index "
                 f"--find-links of the wheels, -r of the pinned list; samples {_samples(t['uv'])}",
                 base_name="itself", target_desc="-", passed=None)

    def profile_mount(self, home: Path) -> None:
        """--profile: cProfile of the daemon's work (see _DAEMON_PROFILE) into WORK/profile-mount.txt."""
        out = self.work / "profile-mount.txt"
        out.write_text("# cProfile of a mount daemon's callbacks (single-threaded FUSE loop, see bench.py)\n"
                       "# mfusepy.py(__init__) tottime is the FUSE loop waiting for requests: ignore it\n")
        imp = shlex.quote(self.mount_import)
        cases = [("tar of the large image: the first walk of a new daemon, then a warm one", "bench:large", 2,
                  "set -o pipefail; tar cf - -C MNT . | cat > /dev/null"),
                 ("python -c IMPORTS, page cache dropped, new daemon", "bench:large", 1,
                  f"sync; echo 3 > /proc/sys/vm/drop_caches; MNT/bin/python -c {imp}"),
                 ("python -c IMPORTS, 1 first + 5 warm runs", "bench:large", 6, f"MNT/bin/python -c {imp}"),
                 ("first read of the M4 file", "bench:bigfile", 1, "cat MNT/data.bin > /dev/null")]
        for i, (label, ref, rounds, workload) in enumerate(cases):
            log(f"  profiling the daemon: {label}")
            mnt = self.scratch / "mnt" / f"profile-{i}"
            cfg = {"home": str(home), "ref": ref, "mnt": str(mnt), "rounds": rounds, "workload": workload}
            r = self.runner.run([self.python, "-c", _DAEMON_PROFILE, json.dumps(cfg)], env=self.venv_env(home),
                                name=f"profile-mount-{i}", check=False, timeout=1800)
            with out.open("a") as f:
                f.write(f"\n==== {label}: {workload}  [{ref}; wall {r.seconds:.2f}s, exit {r.rc}]\n")
                f.write(r.stdout if r.rc == 0 else r.stdout + r.stderr)
            with contextlib.suppress(OSError):
                mnt.rmdir()
        log(f"daemon profiles written to {out}")

    def mount_facts_md(self) -> str:
        res = self.results["scenarios"].get("mount", {})
        im = res.get("images", {})
        lines = []
        for tag in ("small", "large"):
            x = im.get(tag)
            if x:
                lines.append(f"- {tag} image: {x.get('pins')} pinned distributions, {x.get('files', '?')} files, "
                             f"{x['bytes'] / MB:.1f} MB (venv made with uv, no __pycache__); first mount() "
                             f"{x.get('first_mount', {}).get('mount', float('nan')):.2f} s")
        if "large" in im and "export_stats" in im["large"]:
            e = im["large"]["export_stats"]
            lines.append(f"- exported large image (the disk baseline of M2/M3): {e['files']} files, "
                         f"{e['bytes'] / MB:.1f} MB incl. pycs; `vocker export` {im['large']['export_s']:.2f} s")
        if "bigfile" in im:
            x = im["bigfile"]
            lines.append(f"- M4 file: {x['bytes'] / MB:.1f} MB, {x.get('new_stored', '?')} stored")
        lines.append(f"- leftover mounts: {res.get('leftover_mounts', '?')}")
        return "\n".join(lines) + "\n"


    # == writes into a container (--only writes) =======================================================
    #
    # W1 tar xf / W2 uv pip install / W3 git clone, each into a fresh container of the small image
    # and into the same on plain disk (the image exported), interleaved; W4 find and du -s over the
    # large image, warm. Every mount is tracked in self.live_mounts and unmounted in a finally.

    def writes_part(self) -> None:
        res: dict[str, Any] = {}
        self.results["scenarios"]["writes"] = res
        try:
            self._writes_part(res)
        except BenchError as exc:
            console.print(f"[red]writes part failed:[/red] {exc}")
            self.row("writes", None, None, None, f"FAILED: {str(exc).splitlines()[0]}", result="FAILED")
        finally:
            res["leftover_mounts"] = self.unmount_leftovers("end of the writes part")

    def _writes_part(self, res: dict[str, Any]) -> None:
        self.fetch_mount_wheels()
        small = self.uv_venv("small", SMALL_PINS)
        large = self.uv_venv("quick" if self.quick else "env100", QUICK_PINS if self.quick else ENV100_PINS)
        home = self.fresh(self.stores / "writes")
        env = self.venv_env(home)
        drivers = self.args.fuse
        envs = {d: self.driver_env(env, d) for d in drivers}
        (self.scratch / "mnt").mkdir(parents=True, exist_ok=True)
        for tag, tree in (("small", small), ("large", large)):
            log(f"writes part: importing {tree.name} as bench:{tag}")
            self.runner.run([self.vocker, "image", "import", str(tree), "-t", f"bench:{tag}"], env=env,
                            name=f"writes-import-{tag}")
        base = self.fresh(self.scratch / "writes-small")  # the plain-disk twin of the small image
        self.runner.run([self.vocker, "export", "bench:small", str(base)], env=env, name="writes-export-small")
        archive, files = self.tar_archive()
        repo = self.git_repo()
        wheels = self.pip_wheels()
        res.update({"tar_files": files, "pip_wheels": [w.name for w in wheels], "repo": str(repo)})
        py = f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
        uv_env = {k: v for k, v in os.environ.items() if not k.startswith("UV_") and k != "VIRTUAL_ENV"}
        uv_env.update(UV_CACHE_DIR=str(self.work / "uv-cache-writes"), UV_LINK_MODE="copy")
        q = shlex.quote
        workloads = {  # name -> shell command writing into DEST (a directory that does not exist yet) or ENV
            "tar": f"mkdir DEST && tar xf {q(str(archive))} -C DEST",
            "pip": (f"{q(self.uv)} pip install --quiet --no-config --offline --no-index --no-deps --python "
                    f"ENV/bin/python " + " ".join(q(str(w)) for w in wheels)),
            "git": f"git clone --quiet file://{q(str(repo))} DEST",
        }
        # the uv cache is warm on both sides: unpack every wheel once, untimed
        warm = self.fresh(self.scratch / "writes-uv-warm")
        shutil.copytree(base, warm, symlinks=True)
        self.runner.run(["bash", "-c", workloads["pip"].replace("ENV", q(str(warm)))], env=uv_env, name="w2-warm")
        rmtree(warm)
        times: dict[str, dict[str, list[float]]] = {w: {"disk": [], **{d: [] for d in drivers}} for w in workloads}
        checks: dict[str, dict[str, str]] = {w: {} for w in workloads}
        for i in range(self.repeat):
            for what, cmd in workloads.items():
                sides = ["disk", *drivers]
                for side in (sides if i % 2 == 0 else sides[::-1]):
                    seconds, check = self.write_once(envs.get(side, env), uv_env, what, cmd, side, base, py, i)
                    times[what][side].append(seconds)
                    checks[what][side] = check
        res["times"], res["checks"] = times, checks
        labels = {"tar": f"W1 `tar xf` of {files} files in {TAR_DIRS if not self.quick else QUICK_TAR_DIRS} "
                         "directories into a container",
                  "pip": f"W2 `uv pip install` of {len(wheels)} distributions into a container",
                  "git": f"W3 `git clone` of a {GIT_FILES if not self.quick else QUICK_GIT_FILES}-file, "
                         f"{GIT_COMMITS if not self.quick else QUICK_GIT_COMMITS}-commit repository into a container"}
        hows = {"tar": "a fresh container of the small image each time; the archive's files are 0-4 KiB",
                "pip": "--offline --no-index --no-deps, warm uv cache, UV_LINK_MODE=copy on both sides, into the "
                       "small image (disk: a copy of its export)",
                "git": "file:// URL (the pack protocol, no hard links), then a checkout of every file"}
        for what in workloads:
            t = times[what]
            for d in drivers:
                same = checks[what][d] == checks[what]["disk"]
                ratio = median(t[d]) / median(t["disk"])
                self.row(labels[what] + self.driver_label(d), median(t[d]), median(t["disk"]), None,
                         f"{hows[what]}; result identical to disk: {same}; paired ratio {_paired(t[d], t['disk'])}; "
                         f"samples {_samples(t[d])}; disk {_samples(t['disk'])}", base_name="plain disk",
                         target_desc=f"<= {TARGET_WRITES}x disk", passed=ratio <= TARGET_WRITES and same)
        self.w4_walk(envs, res)
        rmtree(base)

    def driver_env(self, env: dict[str, str], driver: str) -> dict[str, str]:
        """``env`` for mounts served by one FUSE driver (vocker.daemon reads VOCKER_FUSE)."""
        env = dict(env)
        env.pop("VOCKER_FUSE", None)
        if driver != "highlevel":
            env["VOCKER_FUSE"] = driver
        return env

    def driver_label(self, driver: str) -> str:
        return f" ({driver} FUSE driver)" if len(self.args.fuse) > 1 or driver != "highlevel" else ""

    def write_once(self, env: dict[str, str], uv_env: dict[str, str], what: str, cmd: str, side: str, base: Path,
                   py: str, i: int) -> tuple[float, str]:
        """One timed run of a workload on one side; its time and a digest of what it wrote."""
        q = shlex.quote
        if side == "disk":
            root = self.fresh(self.scratch / f"writes-disk-{what}")
            if what == "pip":
                shutil.copytree(base, root, symlinks=True)
            else:
                root.mkdir()
            ctx: Any = contextlib.nullcontext(root)
        else:
            ctx = self.cli_mounted(env, "bench:small", self.scratch / "mnt" / f"writes-{what}-{side}-{i}", f"w-{what}")
        with ctx as root:
            shell = cmd.replace("DEST", q(str(root / "dest"))).replace("ENV", q(str(root)))
            r = self.runner.run(["bash", "-c", shell], env=uv_env if what == "pip" else None,
                                name=f"w-{what}-{side}", timeout=3600)
            target = root / py if what == "pip" else root / "dest"
            # what was written: names, kinds, modes and file sizes (not .git, whose packs may differ)
            listing = self.runner.run(["bash", "-c", f"cd {q(str(target))} && find . -path ./.git -prune -o -type d "
                                                     "-printf '%p d %m\\n' -o -printf '%p %y %m %s\\n' | LC_ALL=C "
                                                     "sort | sha256sum"], name=f"w-{what}-{side}-check").stdout.split()[0]
        if side == "disk":
            rmtree(root)
        return r.seconds, listing

    def w4_walk(self, envs: dict[str, dict[str, str]], res: dict[str, Any]) -> None:
        """find and du -s over the large image, warm, against its export (for each driver)."""
        exported = self.fresh(self.scratch / "writes-export-large")
        self.runner.run([self.vocker, "export", "bench:large", str(exported)], env=next(iter(envs.values())),
                        name="writes-export-large")
        for driver, env in envs.items():
            self.w4_walk_one(env, driver, exported, res)
        rmtree(exported)

    def w4_walk_one(self, env: dict[str, str], driver: str, exported: Path, res: dict[str, Any]) -> None:
        n = self.fast_n
        with self.cli_mounted(env, "bench:large", self.scratch / "mnt" / f"writes-walk-{driver}", "w-walk") as live:
            q = {"mount": shlex.quote(str(live)), "disk": shlex.quote(str(exported))}
            for what, cmd in (("find", "find {} > /dev/null"), ("du", "du -s {} > /dev/null")):
                first = {side: self.runner.run(["bash", "-c", cmd.format(q[side])], name=f"w4-{what}-prime-{side}").seconds
                         for side in ("mount", "disk")}
                t: dict[str, list[float]] = {"mount": [], "disk": []}
                for i in range(n):
                    for side in (("disk", "mount") if i % 2 == 0 else ("mount", "disk")):
                        t[side].append(self.runner.run(["bash", "-c", cmd.format(q[side])],
                                                       name=f"w4-{what}-{side}").seconds)
                res[f"w4_{what}" + ("" if driver == "highlevel" else f"_{driver}")] = {**t, "prime": first}
                self.row(f"W4 `{cmd.format('DIR').replace(' > /dev/null', '')}` over the large image, warm"
                         + self.driver_label(driver),
                         median(t["mount"]), median(t["disk"]), None,
                         f"paired ratio {_paired(t['mount'], t['disk'])}; samples {_samples(t['mount'])}; disk "
                         f"{_samples(t['disk'])}; first run on this mount (untimed prime) {first['mount']:.2f} s, disk "
                         f"{first['disk']:.2f} s", base_name="exported venv", target_desc="-", passed=None)

    def tar_archive(self) -> tuple[Path, int]:
        """The W1 archive (generated once): TAR_DIRS directories of TAR_FILES_PER_DIR files of 0-4 KiB."""
        dirs = QUICK_TAR_DIRS if self.quick else TAR_DIRS
        archive = self.work / "data" / f"writes-{dirs}x{TAR_FILES_PER_DIR}.tar"
        stamp = archive.with_name(archive.name + ".spec")
        spec = spec_hash("tar-v1", dirs, TAR_FILES_PER_DIR)
        if self.args.rebuild or not stamp.exists() or stamp.read_text() != spec:
            log(f"generating {archive.name}: {dirs * TAR_FILES_PER_DIR} files in {dirs} directories")
            tree = self.fresh(self.scratch / "writes-tar-tree")
            rng = random.Random(20261130)
            for d in range(dirs):
                sub = tree / f"d{d // 20:02d}" / f"dir{d:03d}"
                sub.mkdir(parents=True)
                for f in range(TAR_FILES_PER_DIR):
                    (sub / f"file{f:02d}.txt").write_bytes(rng.randbytes(rng.randrange(0, 4096)))
            archive.parent.mkdir(parents=True, exist_ok=True)
            self.runner.run(["tar", "cf", str(archive), "-C", str(tree), "."], name="w1-make-archive")
            rmtree(tree)
            stamp.write_text(spec)
        return archive, dirs * TAR_FILES_PER_DIR

    def git_repo(self) -> Path:
        """The W3 repository (generated once): GIT_FILES files, GIT_COMMITS commits changing a few each."""
        files, commits = (QUICK_GIT_FILES, QUICK_GIT_COMMITS) if self.quick else (GIT_FILES, GIT_COMMITS)
        repo = self.work / "data" / f"writes-repo-{files}x{commits}"
        stamp = repo.with_name(repo.name + ".spec")
        spec = spec_hash("git-v1", files, commits)
        if self.args.rebuild or not stamp.exists() or stamp.read_text() != spec:
            log(f"generating {repo.name}: {files} files, {commits} commits")
            self.fresh(repo)
            genv = dict(os.environ, GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.invalid",
                        GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.invalid",
                        GIT_AUTHOR_DATE="2026-11-30T00:00:00Z", GIT_COMMITTER_DATE="2026-11-30T00:00:00Z")
            self.runner.run(["git", "init", "-q", "-b", "main", str(repo)], env=genv, name="w3-git-init")
            rng = random.Random(20261130)
            paths = [Path(f"pkg{i % 30:02d}") / f"sub{i % 7}" / f"mod{i:04d}.py" for i in range(files)]

            def write(path: Path, round_: int) -> None:
                (repo / path).parent.mkdir(parents=True, exist_ok=True)
                lines = [f"# {path} round {round_}"] + [f"VALUE_{k} = {rng.random():.12f}" for k in
                                                        range(rng.randrange(5, 80))]
                (repo / path).write_text("\n".join(lines) + "\n")

            per = -(-files // (commits // 2))  # the first half of the commits adds the files
            for c in range(commits):
                if c < commits // 2:
                    for p in paths[c * per:(c + 1) * per]:
                        write(p, c)
                else:
                    for p in rng.sample(paths, 12):
                        write(p, c)
                self.runner.run(["bash", "-c", f"git add -A && git commit -q -m 'commit {c}'"], env=genv,
                                name="w3-git-commit", cwd=repo)
            self.runner.run(["git", "gc", "-q"], env=genv, name="w3-git-gc", cwd=repo)
            stamp.write_text(spec)
        return repo

    def pip_wheels(self) -> list[Path]:
        """W2's distributions: the first of the mount part's wheels that the small image lacks."""
        n = QUICK_PIP_DISTS if self.quick else PIP_DISTS
        have = {p.split("==")[0].replace("-", "_").lower() for p in SMALL_PINS}
        wheels = sorted(w for w in self.mount_wheels.glob("*.whl") if w.name.split("-")[0].lower() not in have)
        if len(wheels) < n:
            raise BenchError(f"only {len(wheels)} wheels in {self.mount_wheels}, {n} wanted")
        return wheels[:n]

    def writes_facts_md(self) -> str:
        res = self.results["scenarios"].get("writes", {})
        return (f"- container: a fresh throw-away container of the small image (`vocker mount`, not timed) for "
                f"each run; disk: a directory on the same file system (for W2 a copy of the image's export)\n"
                f"- W2 distributions: {', '.join(w.split('-')[0] for w in res.get('pip_wheels', []))}\n"
                f"- leftover mounts: {res.get('leftover_mounts', '?')}\n")

    # -- optional profile ----------------------------------------------------------------------------

    def profile(self, venv: Path) -> None:
        """cProfile of import (fresh, again) and export (first, second), thread pools made sequential.

        cProfile sees only the main thread, and vocker does its work in thread pools; running
        the pools' work inline makes it visible (at the price of the parallelism, so the
        totals are CPU-ish time, not wall time).
        """
        home = self.fresh(self.stores / "profile")
        env = self.venv_env(home)
        out = self.work / "profile.txt"
        out.write_text(f"# cProfile of vocker commands on {venv} with thread pools run inline (see bench.py)\n")
        steps = [("import (fresh store)", ["image", "import", str(venv), "-t", "bench:prof"]),
                 ("re-import (unchanged)", ["image", "import", str(venv), "-t", "bench:prof"]),
                 ("export (first: compiles bytecode)", ["export", "bench:prof", str(self.scratch / "prof-1")]),
                 ("export (second: bytecode cached)", ["export", "bench:prof", str(self.scratch / "prof-2")])]
        for label, args in steps:
            stats = self.work / "profile.tmp"
            r = self.runner.run([self.python, "-c", _SEQ_PROFILE, str(stats), *args], env=env,
                                name="profile-" + label.split()[0], check=False)
            with out.open("a") as f:
                f.write(f"\n==== vocker {' '.join(args)}  [{label}; wall {r.seconds:.2f}s, exit {r.rc}]\n")
                f.write(r.stdout)
                f.write(stats.read_text() if stats.exists() else r.stderr)
            stats.unlink(missing_ok=True)
        rmtree(self.scratch / "prof-1")
        rmtree(self.scratch / "prof-2")
        log(f"profiles written to {out}")

    # -- table --------------------------------------------------------------------------------------

    def row(self, scenario: str, value: float | None, base: float | None, target: float | None, details: str,
            *, unit: str = "s", base_name: str = "cp -a", result: str | None = None,
            target_desc: str | None = None, passed: bool | None = None) -> None:
        """One table row. ``target_desc``/``passed`` give a target of another kind than the defaults
        (seconds: value < target; bytes: ratio < target), e.g. a ratio bound or a throughput."""
        ratio = value / base if value is not None and base else None
        if result is None:
            if target_desc is not None:
                result = "info" if passed is None else ("PASS" if passed else "FAIL")
            elif target is None:
                result = "info"
            elif unit == "bytes":
                result = "PASS" if ratio is not None and ratio < target else "FAIL"
            else:
                result = "PASS" if value is not None and value < target else "FAIL"
        fmt = {"bytes": fmt_mb, "ms": fmt_ms, "MB/s": fmt_rate}.get(unit, fmt_s)
        if target_desc is not None:
            tgt = target_desc
        elif target is None:
            tgt = "-"
        elif unit == "bytes":
            tgt = f"< {target}x of 1"
        else:
            tgt = f"< {target:g} s"
        self.rows.append({"scenario": scenario, "vocker": fmt(value), "baseline": f"{fmt(base)} ({base_name})",
                          "ratio": "-" if ratio is None else f"{ratio:.2f}x", "target": tgt, "result": result,
                          "details": details, "value": value, "base": base, "part": self.part})

    def part_rows(self, part: str) -> list[dict[str, Any]]:
        rows = [r for r in self.rows if r["part"] == part]
        if part == "mount":  # in scenario order: M2's cold run is measured after M3
            rows.sort(key=lambda r: r["scenario"][:2] if re.match(r"M\d", r["scenario"]) else "M9")
        return rows

    def table(self, part: str) -> Table:
        what = {"import": "import/export", "mount": "mount layer", "writes": "writes into containers"}.get(part, part)
        t = Table(title=f"vocker benchmark: {what} ({self.mode}, median of {self.repeat})", show_lines=True)
        for col in ("scenario", "vocker", "baseline", "ratio", "target", "result", "details"):
            t.add_column(col, overflow="fold", ratio=3 if col == "details" else None)
        for r in self.part_rows(part):
            style = {"PASS": "green", "FAIL": "red", "FAILED": "red"}.get(r["result"], "")
            t.add_row(r["scenario"], r["vocker"], r["baseline"], r["ratio"], r["target"],
                      f"[{style}]{r['result']}[/{style}]" if style else r["result"], r["details"])
        return t

    def markdown(self, part: str) -> str:
        lines = ["| scenario | vocker | baseline | ratio | target | result | details |",
                 "|---|---|---|---|---|---|---|"]
        for r in self.part_rows(part):
            cells = [r[k].replace("|", "\\|") for k in ("scenario", "vocker", "baseline", "ratio", "target", "result",
                                                       "details")]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    # -- main -----------------------------------------------------------------------------------------

    def main(self) -> int:
        started = time.perf_counter()
        self.work.mkdir(parents=True, exist_ok=True)
        self.unmount_leftovers("start")  # never rmtree through a mount a killed run left behind
        for d in (self.stores, self.scratch):
            rmtree(d)
            d.mkdir(parents=True)
        self.results["machine"] = machine_facts(self.work)
        m = self.results["machine"]
        log(f"work dir {self.work}; {m['nproc']} CPUs ({m['cpu']}); Python {m['python']}; {m['vocker']} "
            f"(git {m['vocker_git']}); load {' '.join(m['loadavg_start'])}; parts: {', '.join(self.parts)}")
        self.warm_up()
        if "import" in self.parts:
            t0 = time.perf_counter()
            self.part = "import"
            self.import_part()
            self.results["elapsed_import_s"] = time.perf_counter() - t0
        if "mount" in self.parts:
            t0 = time.perf_counter()
            self.part = "mount"
            self.mount_part()
            self.results["elapsed_mount_s"] = time.perf_counter() - t0
        if "build" in self.parts:
            t0 = time.perf_counter()
            self.part = "build"
            self.build_part()
            self.results["elapsed_build_s"] = time.perf_counter() - t0
        if "writes" in self.parts:
            t0 = time.perf_counter()
            self.part = "writes"
            self.writes_part()
            self.results["elapsed_writes_s"] = time.perf_counter() - t0
        plugin_md = []
        for part in self.parts:
            if part in PLUGIN_PARTS:  # scripts/benchparts/<part>.py: run(bench) -> its markdown section
                t0 = time.perf_counter()
                self.part = part
                section = importlib.import_module(f"benchparts.{part}").run(self)
                self.results[f"elapsed_{part}_s"] = time.perf_counter() - t0
                plugin_md.append(f"\n## {part} ({self.results[f'elapsed_{part}_s']:.0f} s)\n\n{section}\n"
                                 + self.markdown(part))
        elapsed = time.perf_counter() - started
        self.results["elapsed_s"] = elapsed
        self.results["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        self.results["rows"] = [{k: v for k, v in r.items()} for r in self.rows]
        (self.work / "results.json").write_text(json.dumps(self.results, indent=2, default=str))
        header = (f"`{shlex.join(['scripts/bench', *self.args.argv])}` — {m['date']}, {m['nproc']} CPUs ({m['cpu']}), "
                  f"Python {m['python']}, {m['vocker']} (git {m['vocker_git']}), load {' '.join(m['loadavg_start'])} -> "
                  f"{' '.join(self.results['machine']['loadavg_end'])}, elapsed {elapsed:.0f} s\n\n")
        md = [header]
        if "import" in self.parts:
            v = self.results["venv"]
            md.append(f"## import/export ({self.results.get('elapsed_import_s', 0):.0f} s)\n\n"
                      f"venv: {v['files']} files, {v['bytes'] / MB:.1f} MB ({v['files_no_pyc']} files, "
                      f"{v['bytes_no_pyc'] / MB:.1f} MB without __pycache__); site-packages "
                      f"{v['site_packages_du'] / MB:.1f} MB on disk, {v['site_packages_du_no_pyc'] / MB:.1f} MB "
                      f"without __pycache__\n\n" + self.markdown("import") + "\n")
        if "mount" in self.parts:
            md.append(f"## mount layer ({self.results.get('elapsed_mount_s', 0):.0f} s)\n\n"
                      f"{m['fusermount3']}, mfusepy {m['mfusepy']}, kernel {m['kernel']}, {m['filesystem']}, "
                      f"RAM {m['mem_total']}\n\n" + self.mount_facts_md() + "\n" + self.markdown("mount"))
        if "build" in self.parts:
            md.append(f"\n## build ({self.results.get('elapsed_build_s', 0):.0f} s)\n\n"
                      f"{len(BUILD_PINS)} pinned distributions from the import part's wheels, offline "
                      f"(--no-index --find-links), warm uv cache\n\n" + self.markdown("build"))
        if "writes" in self.parts:
            md.append(f"\n## writes into a container ({self.results.get('elapsed_writes_s', 0):.0f} s)\n\n"
                      + self.writes_facts_md() + "\n" + self.markdown("writes"))
        md.extend(plugin_md)
        (self.work / "results.md").write_text("".join(md))
        for part in self.parts:
            console.print(self.table(part))
        console.print(f"results: {self.work / 'results.json'}, {self.work / 'results.md'}; logs: {self.runner.logs}")
        for part in self.parts:
            console.print(f"{part} part: {self.results.get(f'elapsed_{part}_s', 0):.1f} s")
        console.print(f"total elapsed: {elapsed:.1f} s")
        return 1 if any(r["result"] in ("FAIL", "FAILED") for r in self.rows) else 0

    def import_part(self) -> None:
        self.fetch_wheels()
        venv = self.build_base_venv()
        try:
            self.import_export(venv)
        except BenchError as exc:
            console.print(f"[red]import/export scenarios failed:[/red] {exc}")
            self.row("import/export", None, None, None, f"FAILED: {str(exc).splitlines()[0]}", result="FAILED")
        try:
            self.shared()
        except BenchError as exc:
            console.print(f"[red]shared-venvs scenario failed:[/red] {exc}")
            self.row("10 shared venvs", None, None, None, f"FAILED: {str(exc).splitlines()[0]}", result="FAILED")
        if self.args.skip_old or self.quick:
            self.row("vocker 0.6.2: import", None, None, None, "skipped (--skip-old / --quick)", result="skipped")
        else:
            self.old_vocker(venv)
        if self.args.profile:
            self.profile(venv)


#: cProfile of what a mount daemon does for a workload, in-process: a ContainerView (with a
#: writable layer, as `vocker mount` makes) served by a *single-threaded* FUSE loop in the main
#: thread, so that cProfile sees every callback (the daemon's loop is multi-threaded, and its
#: callbacks come from C threads no profiler sees); a thread runs the workload ROUNDS times
#: (bash, MNT replaced by the mount point) and then unmounts. argv[1]: JSON config.
_DAEMON_PROFILE = r"""
import cProfile, io, json, os, pstats, subprocess, sys, threading, time
from pathlib import Path
from vocker import containers
from vocker.pythons import find_interpreter
from vocker.store import Store
from vocker.view import ContainerView
import fs_backends.fuse_linux as fl
cfg = json.loads(sys.argv[1])
store = Store.open(Path(cfg["home"]))
image_id = store.resolve(cfg["ref"])
manifest = store.manifest(image_id)
interp = (find_interpreter(manifest.python, store.image(image_id).provenance.get("base_interpreter"))
          if manifest.kind == "venv" else None)
c = containers.create(store, image_id, None)
mnt = cfg["mnt"]
os.makedirs(mnt, exist_ok=True)
view = ContainerView(store, image_id, mnt, containers.upper_dir(store, c.name), interpreter=interp)
ready = threading.Event()
times = []
env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPYCACHEPREFIX", "VIRTUAL_ENV")}
env["PYTHONDONTWRITEBYTECODE"] = "1"

def work():
    ready.wait()
    try:
        for _ in range(cfg["rounds"]):
            t0 = time.perf_counter()
            p = subprocess.run(["bash", "-c", cfg["workload"].replace("MNT", mnt)], env=env, capture_output=True,
                               text=True)
            times.append(round(time.perf_counter() - t0, 3))
            if p.returncode:
                print("workload failed:", p.stderr[-400:])
    finally:
        subprocess.run(["fusermount3", "-u", mnt])

threading.Thread(target=work, daemon=True).start()
opts = {"fsname": "vocker:profile", "subtype": "vocker", "default_permissions": True, "kernel_cache": True,
        "entry_timeout": fl.CACHE_SECONDS, "attr_timeout": fl.CACHE_SECONDS, "negative_timeout": fl.CACHE_SECONDS,
        "auto_unmount": True}
pr = cProfile.Profile()
pr.enable()
try:
    fl.fuse.FUSE(fl.VockerFS(view, ready.set), mnt, foreground=True, nothreads=True, **opts)
finally:
    pr.disable()
    containers.remove(store, c.name)
print(f"workload times under the profiler (s): {times}")
s = io.StringIO()
st = pstats.Stats(pr, stream=s).strip_dirs()
st.sort_stats("tottime").print_stats(15)
st.sort_stats("cumtime").print_stats(30)
print(s.getvalue())
"""


_SEQ_PROFILE = r"""
import concurrent.futures, concurrent.futures.thread, cProfile, io, pstats, sys
class Inline:
    def __init__(self, *a, **k): pass
    def map(self, fn, *its, **k): return list(map(fn, *its))
    def submit(self, fn, *a, **k):
        f = concurrent.futures.Future()
        try:
            f.set_result(fn(*a, **k))
        except BaseException as e:
            f.set_exception(e)
        return f
    def shutdown(self, *a, **k): pass
    def __enter__(self): return self
    def __exit__(self, *a): pass
concurrent.futures.ThreadPoolExecutor = concurrent.futures.thread.ThreadPoolExecutor = Inline
out, sys.argv = sys.argv[1], ["vocker"] + sys.argv[2:]
pr = cProfile.Profile()
pr.enable()
try:
    from vocker.cli import main
    main()
except SystemExit:
    pass
finally:
    pr.disable()
    s = io.StringIO()
    st = pstats.Stats(pr, stream=s).strip_dirs()
    st.sort_stats("tottime").print_stats(20)
    st.sort_stats("cumtime").print_stats(35)
    open(out, "w").write(s.getvalue())
"""


def _paired(xs: list[float], bases: list[float]) -> str:
    """Median of the per-repetition ratios (each against the cp -a of the same repetition)."""
    return f"{median([x / b for x, b in zip(xs, bases) if b]):.2f}x"


def _samples(xs: list[float]) -> str:
    return "[" + ", ".join(f"{x:.2f}" for x in xs) + "]"


def _speed(x: float, base: float) -> str:
    return f"{base / x:.1f}x faster" if x <= base else f"{x / base:.1f}x slower"


def _samples_ms(xs: list[float]) -> str:
    return "[" + ", ".join(f"{x * 1000:.0f}" for x in xs) + "] ms"


def fuse_mounts_under(root: Path) -> list[str]:
    """FUSE mount points at or below ``root`` (from /proc/mounts)."""
    roots = {str(root.absolute()), os.path.realpath(root)}
    out = []
    for line in Path("/proc/mounts").read_text().splitlines():
        f = line.split()
        if len(f) < 3 or not f[2].startswith("fuse"):
            continue
        mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), f[1])
        if any(mp == r or mp.startswith(r + "/") for r in roots):
            out.append(mp)
    return out


def generate_bigfile(path: Path, mib: int, so: bytes) -> None:
    """``mib`` MiB of deterministic, partly compressible data, in 1 MiB blocks taking turns:
    random bytes (incompressible), a slice of a real shared library, CSV-like numbers."""
    block = 1 << 20
    rng = random.Random(20261121)
    texts = []
    for _ in range(4):
        lines, n = [], 0
        while n < block:
            line = ",".join(f"{rng.random() * 1000:.6f}" for _ in range(8)) + "\n"
            lines.append(line)
            n += len(line)
        texts.append("".join(lines).encode()[:block])
    if len(so) < 2 * block:
        so = so * (2 * block // max(1, len(so)) + 1)
    with open(path, "wb") as f:
        for i in range(mib):
            kind = i % 3
            if kind == 0:
                data = random.Random(i).randbytes(block)
            elif kind == 1:
                off = (i * 2654435761) % (len(so) - block)
                data = so[off:off + block]
            else:
                data = (f"# block {i}\n".encode() + texts[i % 4])[:block]
            f.write(data)


#: In-process timings of vocker.mounting.mount()/unmount() and vocker.exporter.export_image(),
#: run in a child process (vocker's imports are not timed): argv[1] is a JSON config, the
#: last line of stdout the JSON result. Every mount is unmounted in a finally.
_MOUNT_HELPER = r"""
import json, os, shutil, sys, threading, time
from pathlib import Path
started = time.perf_counter()
from vocker import mounting
from vocker.exporter import export_image
from vocker.store import Store
cfg = json.loads(sys.argv[1])
out = {"imports_s": time.perf_counter() - started, "first": {}, "mount": {}, "export": {}}
store = Store.open(Path(cfg["home"]))
base = Path(cfg["base"])
live = []
n = 0

def cycle(ref):
    global n
    n += 1
    d = base / f"m{n}"
    threads = threading.active_count()
    t0 = time.perf_counter()
    live.append(d)
    mounting.mount(store, ref, d)
    t1 = time.perf_counter()
    entries = len(os.listdir(d))
    t2 = time.perf_counter()
    mounting.unmount(store, d)
    t3 = time.perf_counter()
    live.remove(d)
    d.rmdir()
    return {"mount": t1 - t0, "first_listdir": t2 - t1, "unmount": t3 - t2, "threads": threads,
            "entries": entries}

try:
    for ref in cfg.get("first", []):
        out["first"][ref] = cycle(ref)
    refs = cfg.get("warm", [])
    for _ in range(cfg.get("warmup", 0)):
        for ref in refs:
            cycle(ref)
    for i in range(cfg.get("n", 0)):
        for ref in (refs if i % 2 == 0 else refs[::-1]):
            out["mount"].setdefault(ref, []).append(cycle(ref))
    for i in range(cfg.get("export_n", 0)):
        for ref in refs:
            n += 1
            d = base / f"e{n}"
            t0 = time.perf_counter()
            export_image(store, ref, d)
            out["export"].setdefault(ref, []).append(time.perf_counter() - t0)
            shutil.rmtree(d)
finally:
    for d in live:
        try:
            if str(d.absolute()) in mounting.fuse_mounts():
                mounting.unmount(store, d, force=True)
        except Exception as exc:
            print(f"cleanup of {d} failed: {exc}", file=sys.stderr)
print(json.dumps(out))
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=None, help="repetitions per timing; the median is reported "
                   "(default 3; 1 with --quick)")
    p.add_argument("--work", type=Path, default=None, help="work dir (default: bench-out/ in the repo)")
    p.add_argument("--quick", action="store_true", help="smoke check: small venv (requests+rich+pyyaml), "
                   "1 repetition, no vocker 0.6.2")
    p.add_argument("--skip-old", action="store_true", help="do not benchmark vocker 0.6.2 from PyPI")
    p.add_argument("--profile", action="store_true", help="also cProfile import, re-import and both exports, "
                   "thread pools run inline (written to WORK/profile.txt), and the mount daemon's work for "
                   "tar, python imports and a big read (WORK/profile-mount.txt)")
    p.add_argument("--rebuild", action="store_true", help="re-create the test venvs (and the generated file) "
                   "even if cached")
    p.add_argument("--fuse", default=None, help="writes part: the FUSE drivers to measure, each against "
                   "the same disk runs, e.g. 'highlevel,lowlevel' (default: VOCKER_FUSE's, else highlevel)")
    p.add_argument("--only", choices=(*CORE_PARTS, *PLUGIN_PARTS, "all"), default="all",
                   help="run only one part: import/export, the mount layer, build, or writes into "
                        "containers (default: all)")
    args = p.parse_args(argv)
    args.argv = argv
    args.fuse = (args.fuse or os.environ.get("VOCKER_FUSE") or "highlevel").split(",")
    if not set(args.fuse) <= {"highlevel", "lowlevel"}:
        p.error("--fuse takes highlevel and/or lowlevel")
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    caller = Path(os.environ.get("BENCH_CALLER_PWD", os.getcwd()))
    args.work = (caller / args.work if args.work is not None and not args.work.is_absolute()
                 else args.work or REPO / "bench-out").absolute()
    return args


if __name__ == "__main__":
    sys.exit(Bench(parse_args(sys.argv[1:])).main())
