"""Benchmark part ``share``: push/pull of the ~100 MB realistic venv through a local registry
(Debian's docker-registry on 127.0.0.1), re-push after one package changed, save/load.

Baselines in the same run: ``tar -cf - | zstd -T0 -3`` of the venv into a file (and ``zstd -d |
tar -x`` back) for push/save and pull/load, and ``uv pip install`` of the same pins from the
local wheel directory (warm uv cache) into a fresh venv for pull. The re-push rows count the
bytes the registry's storage grew by against the image's whole push. Offline once the import
part's wheels are there.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

REGISTRY = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Registry:
    def __init__(self, base: Path) -> None:
        import urllib.request

        base.mkdir(parents=True, exist_ok=True)
        self.data = base / "data"
        self.port = _port()
        (base / "config.yml").write_text(
            "version: 0.1\nlog: {level: warn, accesslog: {disabled: true}}\n"
            f"storage:\n  filesystem: {{rootdirectory: {self.data}}}\n  cache: {{blobdescriptor: inmemory}}\n"
            f"http: {{addr: 127.0.0.1:{self.port}}}\n")
        self.proc = subprocess.Popen([REGISTRY, "serve", str(base / "config.yml")], stdout=subprocess.DEVNULL,
                                     stderr=open(base / "log", "ab"))
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/", timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not start")

    def stored(self) -> int:
        return sum(p.stat().st_size for p in self.data.rglob("data") if p.is_file())

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _metadata_bytes(port: int, repo: str, tag: str) -> int:
    """Bytes of what a lazy mount fetches up front: the manifest, config, trees and pack indexes."""
    import json
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/{repo}/manifests/{tag}",
                                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    body = urllib.request.urlopen(req, timeout=10).read()
    doc = json.loads(body)
    return len(body) + doc["config"]["size"] + sum(d["size"] for d in doc["layers"]
                                                   if d["mediaType"] != "application/vnd.vocker.pack.v1")


def _content_bytes(home: Path, source: Path) -> tuple[int, int]:
    """Stored bytes of the image contents a store holds (its own bytecode cache aside), and of
    those over 1 MiB (native libraries), counting the large files fetched only in part (their
    sparse files under partial/) by the disk blocks they fill (a little over the chunks fetched)."""
    import sqlite3

    with sqlite3.connect(source / "vocker.db") as src:
        wanted = {r[0] for r in src.execute("SELECT digest FROM blobs")}
    with sqlite3.connect(home / "vocker.db") as conn:
        rows = [(n, size) for d, n, size in conn.execute("SELECT digest, stored_size, size FROM blobs") if d in wanted]
    parts = sum(p.stat().st_blocks * 512 for p in (home / "partial").glob("*")) if (home / "partial").is_dir() else 0
    return sum(n for n, _ in rows) + parts, sum(n for n, size in rows if size > 1 << 20) + parts


def _logical_size(home: Path, tag: str) -> int:
    import sqlite3

    with sqlite3.connect(home / "vocker.db") as conn:
        return conn.execute("SELECT i.size FROM images i JOIN tags t ON t.image_id = i.id WHERE t.name = ?",
                            (tag,)).fetchone()[0]


def _touch_package(site: Path, name: str) -> int:
    """A new version of one package: every .py of it gets another line (files changed: returned)."""
    n = 0
    for p in sorted((site / name).rglob("*.py")):
        p.write_text(p.read_text() + "\n# patched\n")
        n += 1
    return n


def run(bench: Any) -> str:
    bench.fetch_wheels()  # once; later runs are offline
    venv = bench.build_base_venv()  # the import part's ~100 MB venv
    work = bench.fresh(bench.work / "share")
    runner, vocker, repeat = bench.runner, bench.vocker, bench.repeat
    src_home = work / "src-home"
    env = bench.venv_env(src_home)
    runner.run([vocker, "image", "import", str(venv), "-t", "bench:v1"], env=env, name="share-import")
    # v2: the same venv with a new version of one package, imported from the same path (a copy's
    # scripts would name the original venv, and differ from the original's templated ones)
    patched = work / "venv-copy"
    runner.run(["cp", "-a", str(venv), str(patched)], name="share-cp")
    runner.run([vocker, "image", "import", str(patched), "-t", "bench:v1"], env=env, name="share-import")
    site = next((patched / "lib").glob("python3*/site-packages"))
    changed = _touch_package(site, "rich")
    runner.run([vocker, "image", "import", str(patched), "-t", "bench:v2"], env=env, name="share-import-v2")
    stored = sum(p.stat().st_size for p in (src_home / "blobs").rglob("*") if p.is_file())
    archive = work / "venv.tar.zst"

    uv_env = dict(os.environ, UV_CACHE_DIR=str(bench.work / "uv-cache-share"))

    def uv_install(target: Path, name: str) -> float:
        t = runner.run(["uv", "venv", "-q", "--python", bench.python, str(target)], env=uv_env,
                       name=f"{name}-venv").seconds
        return t + runner.run(["uv", "pip", "install", "-q", "--no-index", "--find-links", str(bench.wheels),
                               "--python", str(target / "bin" / "python"), *bench.pins], env=uv_env,
                              name=f"{name}-install").seconds

    uv_install(bench.fresh(work / "uv-warm"), "share-uv-warm")  # fills the uv cache: the baseline runs warm
    push, pull, tarz, untarz, uv, save, load, repush, repush_bytes, first_bytes = ([] for _ in range(10))
    lazy, full_start, lazy_bytes, lazy_big = [], [], [], []
    imports = bench.mount_import
    for i in range(repeat):
        reg = _Registry(work / f"registry-{i}")
        try:
            ref = f"127.0.0.1:{reg.port}/bench/app"
            push.append(runner.run([vocker, "push", "bench:v1", f"{ref}:v1"], env=env, name=f"share-push-{i}").seconds)
            first_bytes.append(reg.stored())
            repush.append(runner.run([vocker, "push", "bench:v2", f"{ref}:v2"], env=env,
                                     name=f"share-repush-{i}").seconds)
            repush_bytes.append(reg.stored() - first_bytes[-1])
            home = bench.fresh(work / f"pull-home-{i}")
            pull.append(runner.run([vocker, "pull", f"{ref}:v1"], env=bench.venv_env(home),
                                   name=f"share-pull-{i}").seconds)
            # the pulled image mounted and its first import (compiling what it imports) after the pull
            mnt = bench.fresh(work / f"mnt-{i}")
            t = bench.vmount(bench.venv_env(home), "bench/app:v1", mnt, f"share-full-{i}").seconds
            t += runner.run([str(mnt / "bin" / "python"), "-c", imports], name=f"share-full-import-{i}").seconds
            bench.vunmount(bench.venv_env(home), mnt, f"share-full-{i}")
            full_start.append(pull[-1] + t)
            # lazy: mount the remote image into an empty store, and the same first import
            home = bench.fresh(work / f"lazy-home-{i}")
            t = bench.vmount(bench.venv_env(home), f"{ref}:v1", mnt, f"share-lazy-{i}").seconds
            t += runner.run([str(mnt / "bin" / "python"), "-c", imports], name=f"share-lazy-import-{i}").seconds
            lazy.append(t)
            time.sleep(1.0)  # the last fetched contents are kept in the background (twice a second)
            bench.vunmount(bench.venv_env(home), mnt, f"share-lazy-{i}")
            contents, big = _content_bytes(home, src_home)
            lazy_bytes.append(_metadata_bytes(reg.port, "bench/app", "v1") + contents)
            lazy_big.append(big)
        finally:
            reg.stop()
        tarz.append(runner.run(["sh", "-c", f"tar -C {venv} -cf - . | zstd -q -T0 -3 -f -o {archive}"],
                               name=f"share-tarzstd-{i}").seconds)
        out = bench.fresh(work / f"untar-{i}")
        out.mkdir()
        untarz.append(runner.run(["sh", "-c", f"zstd -q -d -c {archive} | tar -C {out} -xf -"],
                                 name=f"share-untar-{i}").seconds)
        target = bench.fresh(work / f"uv-{i}")
        uv.append(uv_install(target, f"share-uv-{i}"))
        saved = work / f"image-{i}.tar"
        save.append(runner.run([vocker, "save", "bench:v1", "-o", str(saved)], env=env, name=f"share-save-{i}").seconds)
        home = bench.fresh(work / f"load-home-{i}")
        load.append(runner.run([vocker, "load", "-i", str(saved)], env=bench.venv_env(home),
                               name=f"share-load-{i}").seconds)
        for p in (out, target, saved):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    med = statistics.median
    size = archive.stat().st_size
    bench.row("S1 push of the ~100 MB venv image to a local registry", med(push), med(tarz), 3.0,
              f"registry stored {med(first_bytes) / 1e6:.1f} MB (the store holds {stored / 1e6:.1f} MB for both "
              f"images; tar|zstd -3: {size / 1e6:.1f} MB)", base_name="tar | zstd")
    bench.row("S2 pull of that image into an empty store", med(pull), med(untarz), 3.0,
              "every frame checked and recorded", base_name="zstd -d | tar x")
    bench.row("S2b the same pull against installing the same pins with uv", med(pull), med(uv), 3.0,
              f"uv venv + uv pip install of {len(bench.pins)} pins from the local wheel directory, warm uv cache",
              base_name="uv pip install")
    bench.row("S3 re-push after changing one package (rich, every .py file)", med(repush_bytes),
              med(first_bytes), 0.10, f"{changed} files changed; bytes the registry's storage grew by, "
              f"against the first push's; the re-push took {med(repush):.2f}s", unit="bytes",
              base_name="first push")
    bench.row("S6 lazy mount of the remote image + first import, into an empty store", med(lazy), med(full_start),
              None, f"python -c '{imports}' (compiling what it imports); baseline: full pull ({med(pull):.2f} s), "
              "then mount + the same import", base_name="pull + mount + import",
              target_desc="< pull + mount + import", passed=med(lazy) < med(full_start))
    logical = _logical_size(src_home, "bench:v1")
    bench.row("S6b bytes a lazy mount fetched for that import", med(lazy_bytes), med(first_bytes), 0.30,
              "manifest, config, trees and pack indexes, plus the contents fetched (Range), against every blob "
              f"of the image; {med(lazy_big) / 1e6:.1f} MB of it are the parts of the files over 1 MiB the import "
              "maps (numpy's openblas and core, pydantic-core: fetched by the 128 KiB chunks read, each checked "
              f"against its digest); {med(lazy_bytes) / logical:.0%} of the image's {logical / 1e6:.0f} MB of files",
              unit="bytes", base_name="whole image")
    bench.row("S4 save of the image to one file", med(save), med(tarz), None, "", base_name="tar | zstd")
    bench.row("S5 load of that file into an empty store", med(load), med(untarz), None,
              "checked whole before anything is recorded", base_name="zstd -d | tar x")
    return ("## Share (push/pull, save/load)\n"
            f"The import part's venv ({bench.results['venv']['files']} files) as an image, pushed to Debian's "
            "docker-registry on 127.0.0.1 (a fresh one per repetition) and pulled into an empty store; a second "
            f"image with every .py of rich changed ({changed} files) pushed after it; save/load of the first; "
            f"a lazy mount of the first into an empty store and a first `{imports}`, against a full pull "
            "then the same mount and import. "
            f"Median of {repeat}.\n")
