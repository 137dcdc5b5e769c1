"""Benchmark part ``layers``: commit, image diff, and a 10-layer image against the same tree in one.

A synthetic venv of 10,000 files (100 packages of 100 modules, each with a dist-info) is
imported; a container of it gets one more package (100 files) and is committed. Then nine
more commits of one package each make a 10-layer image, squashed into one layer for the
comparison. Offline: nothing is downloaded.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

PACKAGES, MODULES = 100, 100
#: In-process timing of one image diff (what the command does after starting Python).
DIFF_SNIPPET = """
import sys, time
from vocker.store import Store
from vocker.layering import image_changes
store = Store.open()
times = []
for _ in range(5):
    store = Store.open()
    t = time.perf_counter(); paths, pkgs = image_changes(store, sys.argv[1], sys.argv[2])
    times.append(time.perf_counter() - t)
print(min(times), len(paths), pkgs)
"""


def _package(site: Path, name: str, version: str = "1.0") -> None:
    pkg = site / name
    pkg.mkdir(parents=True)
    for m in range(MODULES):
        (pkg / f"mod{m:03d}.py").write_text(f"# {name} module {m}\nVALUE = {m}\n" + "x = 1\n" * (m % 7))
    (pkg / "__init__.py").write_text(f"from .mod000 import VALUE\n__version__ = {version!r}\n")
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "RECORD").write_text("".join(f"{name}/mod{m:03d}.py,,\n" for m in range(MODULES)))


def _site(root: Path) -> Path:
    lib = next((root / "lib").glob("python3*"))
    return lib / "site-packages"


def run(bench: Any) -> str:
    work = bench.fresh(bench.work / "layers")
    home = work / "home"
    home.mkdir(parents=True)
    env = bench.venv_env(home)
    runner = bench.runner
    venv = work / "venv"
    runner.run([bench.python, "-m", "venv", "--without-pip", str(venv)], name="layers-venv")
    site = _site(venv)
    for p in range(PACKAGES):
        _package(site, f"pkg{p:03d}")
    vocker = bench.vocker
    imports = [runner.run([vocker, "image", "import", str(venv), "-t", "l:base", "--rehash"], env=env,
                          name="layers-import").seconds for _ in range(bench.repeat)]
    t_import = statistics.median(imports)

    def commit_one(i: int, base: str, tag: str) -> float:
        name = f"c{i}"
        runner.run([vocker, "create", base, "--name", name], env=env, name=f"layers-create-{i}")
        where = work / f"mnt-{i}"
        with bench.cli_mounted(env, name, where, f"layers-{i}"):
            _package(_site(where), f"extra{i:02d}")
        seconds = runner.run([vocker, "commit", name, "-t", tag, "-m", f"extra{i:02d}"], env=env,
                             name=f"layers-commit-{i}").seconds
        runner.run([vocker, "rm", name], env=env, name=f"layers-rm-{i}")
        return seconds

    t_commit = commit_one(0, "l:base", "l:1")
    bench.row("L1 commit of one package (100 files) on a 10k-file image", t_commit, t_import, 1.0,
              f"10,100 files; baseline: a full import of the 10k-file venv (--rehash, median of {bench.repeat})",
              base_name="image import")

    startup = statistics.median(runner.run([vocker, "--version"], env=env, name="layers-version").seconds
                                for _ in range(3))
    cli_diff = statistics.median(runner.run([vocker, "image", "diff", "l:base", "l:1"], env=env,
                                            name="layers-diff").seconds for _ in range(3))
    r = runner.run([sys.executable, "-c", DIFF_SNIPPET, "l:base", "l:1"], env=env, name="layers-diff-inproc")
    t_diff = float(r.stdout.split()[0])
    bench.row("L2 image diff of two 10k-file images that differ in one package (in process)", t_diff, None,
              50, f"the whole command: {cli_diff * 1000:.0f} ms, of which starting vocker {startup * 1000:.0f} ms",
              unit="ms", base_name="-", target_desc="< 50 ms", passed=t_diff < 0.05)

    tag = "l:1"
    for i in range(1, 9):  # the import's layer, l:1's, and eight more: 10 layers
        commit_one(i, tag, f"l:{i + 1}")
        tag = f"l:{i + 1}"
    runner.run([vocker, "image", "squash", tag, "-t", "l:flat"], env=env, name="layers-squash")
    code = "import " + ", ".join(f"pkg{p:03d}" for p in range(0, PACKAGES, 5)) + ", " + \
        ", ".join(f"extra{i:02d}" for i in range(9))
    results: dict[str, dict[str, float]] = {}
    for ref in ("l:flat", tag, "l:flat", tag):  # interleaved, so both see the same machine load
        where = work / "mnt-cmp"
        mount = bench.vmount(env, ref, where, "layers-cmp").seconds
        try:
            python = str(where / "bin" / "python")
            runner.run([python, "-c", code], name="layers-import-first")  # compiles, warms
            warm = min(runner.run([python, "-c", code], name="layers-import-warm").seconds
                       for _ in range(bench.fast_n))
            ls = runner.run(["find", str(where), "-name", "*.py"], name="layers-find").seconds
        finally:
            bench.vunmount(env, where, "layers-cmp")
        got = results.setdefault(ref, {"mount": [], "warm": [], "find": []})  # type: ignore[dict-item]
        got["mount"].append(mount)  # type: ignore[attr-defined]
        got["warm"].append(warm)  # type: ignore[attr-defined]
        got["find"].append(ls)  # type: ignore[attr-defined]
    flat, layered = ({k: min(v) for k, v in results[r].items()} for r in ("l:flat", tag))  # type: ignore[attr-defined]
    for key, label in (("mount", "mount (vocker mount)"), ("warm", "warm import of 30 packages"),
                       ("find", "first find of every .py (every directory merged)")):
        ratio = layered[key] / flat[key]
        bench.row(f"L3 10-layer image: {label}", layered[key], flat[key], None,
                  "the same files squashed into one layer as the baseline", base_name="1 layer",
                  target_desc="<= 1.05x" if key != "find" else "info",
                  passed=(ratio <= 1.05) if key != "find" else None)
    return ("Layers (`--only layers`): a synthetic venv of 10,000 files (100 packages of 100 modules), "
            "offline. L1 commits one more package (100 files) installed in a mounted container; L2 diffs "
            "the two images; L3 compares a 10-layer image (nine more such commits) with the same files "
            "squashed into one layer.")
