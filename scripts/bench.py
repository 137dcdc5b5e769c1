#!/usr/bin/env python3
"""Benchmark vocker against `cp -a` (and vocker 0.6.2 from PyPI) on a realistic venv.

Run through ``scripts/bench`` (it sets up .venv and puts it on PATH). Scenarios:

1. build a ~100 MB venv (python -m venv + pip install of pinned wheels), once;
2. ``vocker image import`` into a fresh store, vs ``cp -a`` of the same venv;
3. re-import of the unchanged venv into the same store;
4. ``vocker export`` to a fresh directory: first export (compiles bytecode) and a
   second one (bytecode cached);
5. stored bytes of 10 venvs (uv-made: the base set plus one small extra each) in one
   store, vs one of them alone and vs the plain venvs;
6. ``image import`` of the same venv with vocker 0.6.2 from PyPI (skippable).

Every timing is the wall-clock time of the whole command (interpreter start-up
included), the median of ``--repeat`` runs, and is reported as a ratio against a
baseline measured in the same run, because the machine is shared and noisy.
Everything lives under the work dir (default ``bench-out/``): downloaded wheels
(so re-runs are offline), the test venvs, one fresh VOCKER_HOME per scenario and
repetition, logs and ``results.json`` / ``results.md``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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

MB = 1e6  # decimal megabytes, as vocker prints them


# -- helpers ----------------------------------------------------------------------------------------

def log(msg: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {msg}")


class Runner:
    """Runs commands, keeps their output under work/logs, times them."""

    def __init__(self, work: Path) -> None:
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
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
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


def spec_hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


_IMPORT_RE = re.compile(r"(\d+) files, ([\d.]+ \w+); (\d+) new blobs \(([\d.]+ \w+) stored\) in ([\d.]+)s")
_EXPORT_RE = re.compile(r"\) in ([\d.]+)s")
_PYCS_RE = re.compile(r"(\d+) pycs \((\d+) newly compiled\)")


def parse_import(out: str) -> dict[str, Any]:
    m = _IMPORT_RE.search(out)
    if not m:
        return {"already": "Already in store" in out}
    return {"files": int(m[1]), "size": m[2], "new_blobs": int(m[3]), "new_stored": m[4],
            "internal_s": float(m[5]), "already": "Already in store" in out}


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
        self.results: dict[str, Any] = {"mode": self.mode, "repeat": self.repeat, "scenarios": {}}
        self.rows: list[dict[str, Any]] = []

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
        rmtree(home)
        rmtree(tree)
        rmtree(self.scratch / "warm-up-out")

    def fresh(self, path: Path) -> Path:
        rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # -- step 0: wheels -----------------------------------------------------------------------------

    def fetch_wheels(self) -> None:
        wanted = sorted(set(FULL_PINS + QUICK_PINS + EXTRAS))
        stamp = self.wheels / f".complete-{spec_hash(wanted)}"
        if stamp.exists():
            log(f"wheels: cached in {self.wheels} (offline)")
            return
        self.wheels.mkdir(parents=True, exist_ok=True)
        log(f"wheels: pip download of {len(wanted)} pinned requirements into {self.wheels}")
        self.runner.run([self.python, "-m", "pip", "download", "-q", "--only-binary=:all:",
                         "-d", str(self.wheels), *wanted], name="pip-download")
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
            *, unit: str = "s", base_name: str = "cp -a", result: str | None = None) -> None:
        ratio = value / base if value is not None and base else None
        if result is None:
            if target is None:
                result = "info"
            elif unit == "bytes":
                result = "PASS" if ratio is not None and ratio < target else "FAIL"
            else:
                result = "PASS" if value is not None and value < target else "FAIL"
        fmt = fmt_mb if unit == "bytes" else fmt_s
        if target is None:
            tgt = "-"
        elif unit == "bytes":
            tgt = f"< {target}x of 1"
        else:
            tgt = f"< {target:g} s"
        self.rows.append({"scenario": scenario, "vocker": fmt(value), "baseline": f"{fmt(base)} ({base_name})",
                          "ratio": "-" if ratio is None else f"{ratio:.2f}x", "target": tgt, "result": result,
                          "details": details, "value": value, "base": base})

    def table(self) -> Table:
        t = Table(title=f"vocker benchmark ({self.mode}, median of {self.repeat})", show_lines=True)
        for col in ("scenario", "vocker", "baseline", "ratio", "target", "result", "details"):
            t.add_column(col, overflow="fold", ratio=3 if col == "details" else None)
        for r in self.rows:
            style = {"PASS": "green", "FAIL": "red", "FAILED": "red"}.get(r["result"], "")
            t.add_row(r["scenario"], r["vocker"], r["baseline"], r["ratio"], r["target"],
                      f"[{style}]{r['result']}[/{style}]" if style else r["result"], r["details"])
        return t

    def markdown(self) -> str:
        lines = ["| scenario | vocker | baseline | ratio | target | result | details |",
                 "|---|---|---|---|---|---|---|"]
        for r in self.rows:
            cells = [r[k].replace("|", "\\|") for k in ("scenario", "vocker", "baseline", "ratio", "target", "result",
                                                       "details")]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    # -- main -----------------------------------------------------------------------------------------

    def main(self) -> int:
        started = time.perf_counter()
        self.work.mkdir(parents=True, exist_ok=True)
        for d in (self.stores, self.scratch):
            rmtree(d)
            d.mkdir(parents=True)
        self.results["machine"] = machine_facts(self.work)
        m = self.results["machine"]
        log(f"work dir {self.work}; {m['nproc']} CPUs ({m['cpu']}); Python {m['python']}; {m['vocker']} "
            f"(git {m['vocker_git']}); load {' '.join(m['loadavg_start'])}")
        self.fetch_wheels()
        venv = self.build_base_venv()
        self.warm_up()
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
        elapsed = time.perf_counter() - started
        self.results["elapsed_s"] = elapsed
        self.results["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        self.results["rows"] = [{k: v for k, v in r.items()} for r in self.rows]
        (self.work / "results.json").write_text(json.dumps(self.results, indent=2, default=str))
        v = self.results["venv"]
        header = (f"`{shlex.join(['scripts/bench', *self.args.argv])}` — {m['date']}, {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, {m['vocker']} "
                  f"(git {m['vocker_git']}), load {' '.join(m['loadavg_start'])} -> "
                  f"{' '.join(self.results['machine']['loadavg_end'])}, elapsed {elapsed:.0f} s\n\n"
                  f"venv: {v['files']} files, {v['bytes'] / MB:.1f} MB ({v['files_no_pyc']} files, "
                  f"{v['bytes_no_pyc'] / MB:.1f} MB without __pycache__); site-packages "
                  f"{v['site_packages_du'] / MB:.1f} MB on disk, {v['site_packages_du_no_pyc'] / MB:.1f} MB "
                  f"without __pycache__\n\n")
        (self.work / "results.md").write_text(header + self.markdown())
        console.print(self.table())
        console.print(f"results: {self.work / 'results.json'}, {self.work / 'results.md'}; logs: {self.runner.logs}")
        console.print(f"total elapsed: {elapsed:.1f} s")
        return 1 if any(r["result"] in ("FAIL", "FAILED") for r in self.rows) else 0


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
                   "thread pools run inline (written to WORK/profile.txt)")
    p.add_argument("--rebuild", action="store_true", help="re-create the test venvs even if cached")
    args = p.parse_args(argv)
    args.argv = argv
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
