"""Benchmark part ``derive``: swapping the image under a live mount, and ``run --with`` again.

D1: two synthetic venvs that differ in one package (100 files), at 1,000 and at 10,000 files,
imported as images; one is mounted, every file looked up once (the kernel caches them all:
the worst case for what a swap must drop), then the mount is swapped back and forth. Timed in
process (what ``vocker remount`` does after starting Python), so the two sizes compare the
swap itself: flat in image size is the target. D2: ``vocker run IMAGE --with SPEC -- python -c
'import pkg'`` a second time (the layer is cached) against ``uv run --with`` with a warm cache,
both offline from a directory of wheels.
"""

from __future__ import annotations

import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from .layers import _package, _site

SWAP_SNIPPET = """
import sys, time
from vocker.store import Store
from vocker.swap import remount
store = Store.open()
times = []
for i in range(int(sys.argv[4])):
    t = time.perf_counter(); done = remount(store, sys.argv[1], sys.argv[2 + i % 2])
    times.append(time.perf_counter() - t)
times.sort()
print(times[len(times) // 2], times[0], done.changed)
"""


def _venvs(bench: Any, work: Path, packages: int) -> tuple[Path, Path]:
    one = work / f"v1-{packages}"
    bench.runner.run([bench.python, "-m", "venv", "--without-pip", str(one)], name=f"derive-venv-{packages}")
    for p in range(packages):
        _package(_site(one), f"pkg{p:03d}")
    two = work / f"v2-{packages}"
    shutil.copytree(one, two, symlinks=True)
    shutil.rmtree(_site(two) / "pkg000")
    shutil.rmtree(_site(two) / "pkg000-1.0.dist-info")
    _package(_site(two), "pkg000", "2.0")
    for m in range(100):  # another version: every module's bytes differ
        path = _site(two) / "pkg000" / f"mod{m:03d}.py"
        path.write_text(path.read_text() + "VERSION = 2\n")
    return one, two


def run(bench: Any) -> str:
    work = bench.fresh(bench.work / "derive")
    home = work / "home"
    home.mkdir(parents=True)
    env = bench.venv_env(home)
    runner, vocker = bench.runner, bench.vocker
    swaps = max(10, 2 * bench.fast_n)
    results = {}
    for packages in (10, 100):
        one, two = _venvs(bench, work, packages)
        runner.run([vocker, "image", "import", str(one), "-t", f"s{packages}:1"], env=env, name="derive-import")
        runner.run([vocker, "image", "import", str(two), "-t", f"s{packages}:2"], env=env, name="derive-import")
        where = work / f"mnt-{packages}"
        with bench.cli_mounted(env, f"s{packages}:1", where, f"derive-{packages}"):
            runner.run(["find", str(where), "-type", "f", "-exec", "true", "{}", "+"], name="derive-find")
            r = runner.run([sys.executable, "-c", SWAP_SNIPPET, str(where), f"s{packages}:2", f"s{packages}:1",
                            str(swaps)], env=env, name=f"derive-swap-{packages}")
            cli = statistics.median(runner.run([vocker, "remount", str(where), f"s{packages}:{1 + i % 2}"], env=env,
                                               name="derive-swap-cli").seconds for i in range(4))
        median, best, changed = r.stdout.split()
        results[packages] = (float(median), float(best), int(changed), cli)
    small, large = results[10], results[100]
    bench.row("D1 swap on a live mount, images differing in one package (10k files)", large[0], small[0], 0.1,
              f"median of {swaps} swaps in process (best {large[1] * 1000:.1f} ms, {large[2]} paths differ); "
              f"the command: {large[3] * 1000:.0f} ms; baseline: the same swap on a 1k-file image",
              unit="ms", base_name="1k files", target_desc="< 100 ms, flat in size",
              passed=large[0] < 0.1 and large[0] <= 1.5 * small[0] + 0.002)

    wheels = work / "wheels"
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
    from wheelfactory import build_wheel  # noqa: E402

    build_wheel(wheels, "benchwith", "1.0", {f"benchwith/m{i:02d}.py": f"X = {i}\n" for i in range(20)}
                | {"benchwith/__init__.py": "from .m00 import X\n"})
    index = {**env, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels), "UV_OFFLINE": "1"}
    code = ["python", "-c", "import benchwith"]
    cmd = [vocker, "run", "s10:1", "--with", "benchwith==1.0", "--", *code]
    first = runner.run(cmd, env=index, name="derive-with-first").seconds
    python = str(one / "bin" / "python")
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or "uv"
    uv_cmd = [uv, "run", "--no-project", "--python", python, "--with", "benchwith==1.0", "--no-index",
              "--find-links", str(wheels), "--offline", *code]
    runner.run(uv_cmd, env=index, name="derive-uv-first")
    ours, theirs = [], []
    for _ in range(bench.repeat * 2):  # interleaved
        ours.append(runner.run(cmd, env=index, name="derive-with").seconds)
        theirs.append(runner.run(uv_cmd, env=index, name="derive-uv-with").seconds)
    runner.run([vocker, "gc"], env=env, name="derive-release")  # the warm mounts the runs left go
    bench.row("D2 run --with a second time (cached layer)", min(ours), min(theirs), None,
              f"first run (locks, installs, commits): {first:.2f} s; best of {len(ours)}, interleaved",
              base_name="uv run --with, warm")
    return ("Derive (`--only derive`): D1 swaps the image under a live mount (`vocker remount`) between two "
            "synthetic venvs that differ in one package (100 files), at 1k and 10k files, every file looked "
            "up first; D2 runs `vocker run IMAGE --with SPEC` a second time against `uv run --with`, offline.")
