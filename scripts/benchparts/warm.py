"""Warm mounts (issue 16): `vocker run` and the pytest fixture on a kept, reset mount.

WA1. ``vocker run IMG -- python -c pass`` (warm) against the same interpreter from a kept
     ``vocker mount`` of the image (target: < 50 ms over it), and against ``uv run --no-sync``
     in an existing venv;
WA2. repeated ``vocker run IMG -- python -c "import pandas, scipy.linalg, matplotlib.pyplot"``
     against the same environment on disk (the image exported: the same pycs), target <= 1.15x;
WA3. 50 ``vocker_mount`` fixture mounts of one image in a pytest session against 50 plain
     temporary directories (and, for the record, the same 50 mounts with warm mounts off).
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path
from typing import Any

PINS = ["pandas==3.0.6", "numpy==2.4.6", "scipy==1.17.1", "matplotlib==3.11.2"]
IMPORT = "import pandas, scipy.linalg, matplotlib.pyplot"
FIXTURE_TESTS = 50
TARGET_OVER_KEPT = 0.050  # s
TARGET_IMPORT = 1.15


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def _venv(bench: Any) -> Path:
    wheels = bench.work / "wheels-warm"
    bench.download_wheels(wheels, PINS, "warm wheels", "pip-download-warm")
    venv = bench.venvs / "warm-pydata"
    stamp = venv.with_name(venv.name + ".spec")
    spec_hash = sys.modules[type(bench).__module__].spec_hash  # scripts/bench.py's

    spec = spec_hash("warm-pydata", PINS, bench.python)
    if bench.args.rebuild or not stamp.exists() or stamp.read_text() != spec:
        bench.fresh(venv)
        uv_env = dict(os.environ, UV_LINK_MODE="copy", UV_CACHE_DIR=str(bench.work / "uv-cache"))
        bench.runner.run([bench.python, "-m", "venv", "--without-pip", str(venv)], name="venv-warm")
        bench.runner.run([bench.uv, "pip", "install", "--quiet", "--no-config", "--offline", "--python",
                          str(venv / "bin" / "python"), "--no-index", "--find-links", str(wheels), *PINS],
                         env=uv_env, name="uv-install-warm")
        stamp.write_text(spec)
    return venv


def run(bench: Any) -> str:
    venv = _venv(bench)
    home = bench.fresh(bench.stores / "warm")
    env = dict(bench.venv_env(home), VOCKER_WARM_IDLE="600")
    env.pop("XDG_RUNTIME_DIR", None)  # the warm mounts under the bench's store, where cleanup finds them
    bench.runner.run([bench.vocker, "image", "import", str(venv), "-t", "warm:pydata"], env=env, name="warm-import")
    exported = bench.fresh(bench.scratch / "warm-export")
    bench.runner.run([bench.vocker, "export", "warm:pydata", str(exported)], env=env, name="warm-export")
    mpl = bench.scratch / "warm-mplconfig"
    mpl.mkdir(parents=True, exist_ok=True)
    # plain_env: no PYTHONPYCACHEPREFIX, so Python uses the environments' own __pycache__
    run_env = dict(bench.plain_env(), VOCKER_HOME=str(home), VOCKER_WARM_IDLE="600", MPLBACKEND="Agg",
                   MPLCONFIGDIR=str(mpl))
    run_env.pop("XDG_RUNTIME_DIR", None)
    kept = bench.scratch / "warm-kept"
    bench.fresh(kept)
    bench.runner.run([bench.vocker, "mount", "warm:pydata", str(kept)], env=env, name="warm-kept-mount")
    project = bench.fresh(bench.scratch / "warm-uv-project")
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "p"\nversion = "0"\nrequires-python = ">=3.10"\n')
    uv_env = dict(bench.plain_env(), UV_PROJECT_ENVIRONMENT=str(exported), UV_CACHE_DIR=str(bench.work / "uv-cache"))
    n = bench.fast_n
    try:
        for _ in range(2):  # the first run mounts and compiles what it imports; then warm
            bench.runner.run([bench.vocker, "run", "warm:pydata", "--", "python", "-c", IMPORT], env=run_env,
                             name="warm-prime")
            bench.runner.run([str(kept / "bin" / "python"), "-c", IMPORT], env=run_env, name="warm-prime-kept")
        run_pass, kept_pass, uv_pass = [], [], []
        for _ in range(n):
            run_pass.append(bench.runner.run([bench.vocker, "run", "warm:pydata", "--", "python", "-c", "pass"],
                                             env=run_env, name="warm-run-pass").seconds)
            kept_pass.append(bench.runner.run([str(kept / "bin" / "python"), "-c", "pass"], env=run_env,
                                              name="warm-kept-pass").seconds)
            uv_pass.append(bench.runner.run([bench.uv, "run", "--no-sync", "python", "-c", "pass"], env=uv_env,
                                            cwd=project, name="warm-uv-pass").seconds)
        over = _median(run_pass) - _median(kept_pass)
        bench.row("WA1 vocker run IMG -- python -c pass (warm mount)", _median(run_pass), _median(kept_pass), None,
                  f"{over * 1000:.0f} ms over the kept mount; uv run --no-sync {_median(uv_pass) * 1000:.0f} ms",
                  unit="ms", base_name="python -c pass from a kept mount", target_desc="< +50 ms",
                  passed=over < TARGET_OVER_KEPT)
        bench.row("WA1 vocker run IMG -- python -c pass vs uv run --no-sync", _median(run_pass), _median(uv_pass),
                  None, "uv run --no-sync python -c pass in a project whose environment is the exported image",
                  unit="ms", base_name="uv run --no-sync")
        run_imp, disk_imp = [], []
        for _ in range(bench.repeat):
            run_imp.append(bench.runner.run([bench.vocker, "run", "warm:pydata", "--", "python", "-c", IMPORT],
                                            env=run_env, name="warm-run-import").seconds)
            disk_imp.append(bench.runner.run([str(exported / "bin" / "python"), "-c", IMPORT], env=run_env,
                                             name="warm-disk-import").seconds)
        ratio = _median(run_imp) / _median(disk_imp)
        bench.row(f"WA2 repeated vocker run: {IMPORT}", _median(run_imp), _median(disk_imp), None,
                  f"warm mount reused and reset between runs; samples {', '.join(f'{x:.2f}' for x in run_imp)}",
                  base_name="the exported venv on disk", target_desc=f"<= {TARGET_IMPORT}x", passed=ratio <= TARGET_IMPORT)
    finally:
        bench.runner.run([bench.vocker, "unmount", "--force", str(kept)], env=env, name="warm-kept-unmount",
                         check=False)
        bench.runner.run([bench.vocker, "gc"], env=env, name="warm-release", check=False)  # releases warm mounts
    tests = bench.fresh(bench.scratch / "warm-fixture")
    tests.mkdir()
    (tests / "test_mounts.py").write_text(
        "import pytest\n\n"
        f"@pytest.mark.parametrize('i', range({FIXTURE_TESTS}))\n"
        "def test_mount(vocker_mount, i):\n"
        "    env = vocker_mount('warm:pydata')\n"
        "    assert (env / 'pyvenv.cfg').is_file()\n"
        "    (env / f'written-{i}').write_text('x')\n")
    (tests / "test_tmp.py").write_text(
        "import pytest\n\n"
        f"@pytest.mark.parametrize('i', range({FIXTURE_TESTS}))\n"
        "def test_tmp(tmp_path, i):\n"
        "    assert tmp_path.is_dir()\n"
        "    (tmp_path / f'written-{i}').write_text('x')\n")
    pytest_cmd = [bench.python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    warm_s, cold_s, tmp_s = [], [], []
    try:
        for _ in range(bench.repeat):
            warm_s.append(bench.runner.run([*pytest_cmd, "test_mounts.py"], env=run_env, cwd=tests,
                                           name="warm-fixture").seconds)
            bench.runner.run([bench.vocker, "gc"], env=env, name="warm-release-fixture")  # each session starts cold
            cold_s.append(bench.runner.run([*pytest_cmd, "test_mounts.py"], env=dict(run_env, VOCKER_WARM_IDLE="0"),
                                           cwd=tests, name="cold-fixture").seconds)
            tmp_s.append(bench.runner.run([*pytest_cmd, "test_tmp.py"], env=run_env, cwd=tests,
                                          name="tmp-fixture").seconds)
    finally:
        bench.runner.run([bench.vocker, "gc"], env=env, name="warm-release-end", check=False)
        bench.unmount_leftovers("end of the warm part")
    bench.row(f"WA3 pytest: {FIXTURE_TESTS} vocker_mount fixture mounts of one image", _median(warm_s), _median(tmp_s),
              None, f"warm mounts off (a fresh mount per test): {_median(cold_s):.2f} s "
              f"({_median(cold_s) / _median(tmp_s):.2f}x)", base_name=f"{FIXTURE_TESTS} tmp_path directories")
    return (f"`vocker run` and the `vocker_mount` fixture on warm mounts. Image: {', '.join(PINS)} (and their "
            "dependencies), made with `python -m venv` + `uv pip install`. The kept mount of WA1 is a separate "
            "`vocker mount` of the same image; the disk baseline of WA2 is the image exported (the same pycs). "
            "Each timing is the whole command, the median of the repetitions; warm mounts are released (`vocker gc`) "
            "before each cold fixture session.")
