"""Lazy mounts of remote images (issue 14 item 4): a partial image whose file contents are
fetched on first read, against real servers on 127.0.0.1 (docker-registry, nginx)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import cbor2
import pytest

from conftest import MOUNTS
from mounthelp import daemon_pids, query, snapshot, wait_for
from servers import Server, start_nginx, start_registry
from test_share import other, recorded_blobs, servers  # noqa: F401 - fixtures

pytestmark = [*MOUNTS, pytest.mark.skipif(not os.path.exists("/usr/bin/docker-registry") or
                                          not os.path.exists("/usr/sbin/nginx"),
                                          reason="needs docker-registry and nginx (scripts/setup.sh installs them)")]

#: a short bounded wait for the tests (the default is 20 s)
WAIT = 3


def app_venv(make_venv, path: Path) -> Path:  # type: ignore[no-untyped-def]
    """A venv of the test packages plus a big package nobody imports (6 x 200 kB random files: more
    than a lazy mount fetches ahead)."""
    env = make_venv(path, packages=("alpha==1.0", "beta", "gamma"))
    site = next(env.glob("lib/python*/site-packages"))
    rng = random.Random(14)
    for n in range(6):
        (site / "bigpkg").mkdir(exist_ok=True)
        (site / "bigpkg" / f"blob{n}.bin").write_bytes(rng.randbytes(200_000))
    return env


def site_of(root: Path) -> Path:
    return next(root.glob("lib/python*/site-packages"))


def contents(root: Path) -> dict[str, tuple]:
    """The site-packages' files as read (bytecode aside: its header holds the files' mtime)."""
    return {k: v for k, v in snapshot(site_of(root)).items() if "__pycache__" not in k}


def stored_blob_count(runner) -> int:  # type: ignore[no-untyped-def]
    return sum(1 for p in (runner.home / "blobs" / "sha256").rglob("*") if p.is_file())


def blobs_of(runner) -> set[str]:  # type: ignore[no-untyped-def]
    return {r[0] for r in query(runner.home, "SELECT digest FROM blobs")} if (runner.home / "vocker.db").exists() \
        else set()


def images(runner) -> list[dict]:  # type: ignore[no-untyped-def]
    return json.loads(runner("image", "ls", "--format", "json").stdout)


def unmount(runner, where: Path) -> None:  # type: ignore[no-untyped-def]
    runner("unmount", where)


def test_lazy_mount_fetches_only_what_is_read_and_pull_completes_it(tmp_path, make_venv, vocker, other,
                                                                    servers) -> None:  # noqa: F811
    reg = start_registry(tmp_path / "registry")
    servers.append(reg)
    vocker("image", "import", app_venv(make_venv, tmp_path / "env"), "-t", "app:v1")
    ref = f"{reg.address}/team/app:v1"
    vocker("push", "app:v1", ref)
    total = blobs_of(vocker)  # the image's contents (no bytecode compiled there)
    where = tmp_path / "mnt"
    mounted = other("mount", ref, where).stdout
    assert "partial image" in mounted
    [record] = images(other)
    assert record["partial"] is True and record["tags"] == ["team/app:v1"]
    assert "(partial)" in other("image", "ls").stdout
    assert json.loads(other("image", "inspect", "team/app:v1").stdout)["partial"] is True
    assert recorded_blobs(other) == 0  # manifest, trees and indexes only
    out = subprocess.run([where / "bin" / "python", "-c", "import beta, gamma.big; print(beta.value(), gamma.big.SIZE)"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["10", "4096"], out.stderr
    wait_for(lambda: blobs_of(other) & total, timeout=10)  # kept in the store, in the background
    fetched = blobs_of(other) & total
    assert 0 < len(fetched) < len(total) / 2, (len(fetched), len(total))
    # a partial image is not corruption, and gc keeps what it has (the mount still reads it)
    assert other("verify").returncode == 0
    other("gc")
    assert blobs_of(other) & total == fetched
    assert other("verify").returncode == 0
    # every file read through the lazy mount, then the image completed: the export is the same bytes
    seen = contents(where)
    unmount(other, where)
    pulled = other("pull", "team/app:v1").stdout  # its local name: completed from where it came from
    assert pulled.startswith(f"Pulled {ref} as team/app:v1: fetched "), pulled
    assert images(other)[0]["partial"] is False
    assert blobs_of(other) >= total
    other("verify")
    other("export", "team/app:v1", tmp_path / "out")
    assert contents(tmp_path / "out") == seen
    # a complete image pushes (a partial one is refused, in one line)
    other("push", "team/app:v1", tmp_path / "layout")


def test_run_of_a_remote_ref_is_lazy_and_a_partial_image_refuses_push(tmp_path, make_venv, vocker, other,
                                                                      servers) -> None:  # noqa: F811
    reg = start_registry(tmp_path / "registry")
    servers.append(reg)
    vocker("image", "import", app_venv(make_venv, tmp_path / "env"), "-t", "app")
    vocker("push", "app", f"{reg.address}/app:v1")
    total = blobs_of(vocker)
    ran = other("run", f"{reg.address}/app:v1", "python", "-c", "import gamma.big; print(gamma.big.SIZE)")
    assert ran.stdout.split() == ["4096"]
    assert images(other)[0]["partial"] is True and images(other)[0]["tags"] == ["app:v1"]
    assert len(blobs_of(other) & total) < len(total) / 2
    for cmd in (("push", "app:v1", tmp_path / "layout"), ("save", "app:v1", "-o", tmp_path / "app.tar")):
        proc = other(*cmd, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("vocker: error: image app:v1 is partial"), lines
        assert "is partial (mounted lazily, its file contents not all here); 'vocker pull' it first" in lines[0]
    assert not (tmp_path / "app.tar").exists()


def _layout_frames(layout: Path) -> list[tuple[str, int, int, str]]:
    """(pack hex, offset, length, content digest) of every frame of a layout's packs."""
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    doc = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_bytes())
    out = []
    layers = doc["layers"]
    for i, desc in enumerate(layers):
        if desc["mediaType"] == "application/vnd.vocker.pack.v1":
            entries = cbor2.loads((blobs / layers[i - 1]["digest"][7:]).read_bytes())["e"]
            out += [(desc["digest"][7:], e[1], e[2], e[0]) for e in entries]
    return out


def _file_with_digest(root: Path, digest: str) -> Path:
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink() and "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest() == digest:
            return p
    raise AssertionError(f"no file with content {digest}")


def serve_image(vocker, env: Path, tmp_path: Path, servers: list) -> tuple[Path, Server]:  # type: ignore[no-untyped-def]
    """``env`` imported as ``app``, pushed as ``app:v1`` to an image layout that nginx serves."""
    vocker("image", "import", env, "-t", "app")
    layout = tmp_path / "www" / "images"
    vocker("push", "app", f"{layout}:v1")
    web = start_nginx(tmp_path / "nginx", tmp_path / "www")
    servers.append(web)
    return layout, web


def test_flipped_byte_served_is_refused_eio_and_the_rest_is_served(tmp_path, make_venv, vocker, other,
                                                                   servers) -> None:  # noqa: F811
    env = app_venv(make_venv, tmp_path / "env")
    layout, web = serve_image(vocker, env, tmp_path, servers)
    frames = _layout_frames(layout)
    bad_pack, off, length, bad = next(f for f in frames if f[2] >= 100_000)  # a bigpkg blob
    victim = _file_with_digest(site_of(env), bad)
    good = next(_file_with_digest(site_of(env), f[3]) for f in frames if f[3] != bad and f[2] >= 100_000)
    pack_file = layout / "blobs" / "sha256" / bad_pack
    raw = bytearray(pack_file.read_bytes())
    raw[off + length // 2] ^= 0x01
    pack_file.write_bytes(bytes(raw))
    where = tmp_path / "mnt"
    other("mount", f"http://{web.address}/images:v1", where, env={"VOCKER_LAZY_WAIT": str(WAIT)})
    try:
        rel = victim.relative_to(env)
        proc = subprocess.run(["cat", where / rel], capture_output=True, timeout=60)
        assert proc.returncode != 0 and b"Input/output error" in proc.stderr and not proc.stdout
        assert (where / good.relative_to(env)).read_bytes() == good.read_bytes()  # the mount serves the rest
        wait_for(lambda: recorded_blobs(other) == 1, timeout=10)
        assert bad not in {f"sha256:{p.name}" for p in (other.home / "blobs").rglob("*")}  # never kept
        assert other("verify").returncode == 0
    finally:
        unmount(other, where)


def test_server_that_stops_answering_gives_eio_in_bounded_time_and_the_mount_stays_usable(
        tmp_path, make_venv, vocker, other, servers) -> None:  # noqa: F811
    env = app_venv(make_venv, tmp_path / "env")
    vocker("image", "import", env, "-t", "app")
    reg = start_registry(tmp_path / "registry")
    servers.append(reg)
    vocker("push", "app", f"{reg.address}/app:v1")
    where = tmp_path / "mnt"
    other("mount", f"{reg.address}/app:v1", where, env={"VOCKER_LAZY_WAIT": str(WAIT)})
    site = site_of(where)
    first = (site / "bigpkg" / "blob0.bin").read_bytes()  # fetched while the server answers
    os.killpg(reg.proc.pid, signal.SIGSTOP)  # connections are accepted by the kernel, never answered
    try:
        started = time.monotonic()
        proc = subprocess.run(["cat", site / "bigpkg" / "blob1.bin"], capture_output=True, timeout=60)
        took = time.monotonic() - started
        assert proc.returncode != 0 and b"Input/output error" in proc.stderr, proc.stderr
        assert WAIT - 0.5 < took < WAIT + 5, took
        # the mount stays usable: what it has, listings, and another read (bounded again)
        assert (site / "bigpkg" / "blob0.bin").read_bytes() == first
        assert sorted(p.name for p in (site / "bigpkg").iterdir())[:2] == ["blob0.bin", "blob1.bin"]
        proc = subprocess.run(["cat", site / "bigpkg" / "blob2.bin"], capture_output=True, timeout=60)
        assert proc.returncode != 0
    finally:
        os.killpg(reg.proc.pid, signal.SIGCONT)
    # the server is back: the same file is served (nothing was cached as failed)
    assert (site / "bigpkg" / "blob1.bin").read_bytes() == (site_of(env) / "bigpkg" / "blob1.bin").read_bytes()
    # kill -9 of the daemon in the middle of a lazy fetch leaves a store that verifies
    os.killpg(reg.proc.pid, signal.SIGSTOP)
    try:
        reader = subprocess.Popen(["cat", site / "bigpkg" / "blob3.bin"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        for pid in daemon_pids(tmp_path):
            os.kill(pid, signal.SIGKILL)
        reader.wait(timeout=30)
    finally:
        os.killpg(reg.proc.pid, signal.SIGCONT)
    other("unmount", "-f", where)
    assert other("verify").returncode == 0
    other("gc")
    assert other("verify").returncode == 0
    other("pull", f"{reg.address}/app:v1")
    assert other("verify").returncode == 0 and images(other)[0]["partial"] is False


# -- large files: fetched by the chunks that are read ------------------------------------------

CHUNK = 128 << 10
BIG = 4 << 20  # random: stored raw
TEXT = (3 << 20) + 12_345  # compressible: stored as seekable zstd


def big_venv(make_venv, path: Path) -> Path:  # type: ignore[no-untyped-def]
    """The app venv plus two large files (over 1 MiB): one incompressible, one compressible."""
    env = app_venv(make_venv, path)
    rng = random.Random(15)
    (site_of(env) / "bigpkg" / "huge.bin").write_bytes(rng.randbytes(BIG))
    words = [rng.randbytes(6).hex().encode() for _ in range(4000)]
    (site_of(env) / "bigpkg" / "text.dat").write_bytes(b" ".join(rng.choice(words) for _ in range(TEXT // 13))[:TEXT])
    return env


def served_bytes(web, pack_hex: str) -> int:  # type: ignore[no-untyped-def]
    """Body bytes nginx sent of one blob (its access log: the combined format)."""
    total = 0
    for line in web.log.read_text().splitlines():
        if f"/blobs/sha256/{pack_hex} " in line:
            total += int(line.split('"')[2].split()[1])
    return total


def read_at(path: Path, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def partial_files(runner) -> list[Path]:  # type: ignore[no-untyped-def]
    return sorted((runner.home / "partial").glob("*")) if (runner.home / "partial").exists() else []


def test_large_file_fetches_only_the_chunks_read_then_pull_completes_it(tmp_path, make_venv, vocker, other,
                                                                        servers) -> None:  # noqa: F811
    env = big_venv(make_venv, tmp_path / "env")
    layout, web = serve_image(vocker, env, tmp_path, servers)
    huge, text = site_of(env) / "bigpkg" / "huge.bin", site_of(env) / "bigpkg" / "text.dat"
    frames = {digest: (pack, length) for pack, _, length, digest in _layout_frames(layout)}
    huge_pack, huge_len = frames["sha256:" + hashlib.sha256(huge.read_bytes()).hexdigest()]
    where = tmp_path / "mnt"
    other("mount", f"http://{web.address}/images:v1", where)
    try:
        rel = huge.relative_to(env)
        middle = BIG // 2 + 1000
        assert read_at(where / rel, middle, 4096) == huge.read_bytes()[middle:middle + 4096]
        sent = served_bytes(web, huge_pack)
        assert 4096 <= sent <= 3 * CHUNK < huge_len / 8, (sent, huge_len)  # about a chunk (and readahead)
        assert len(partial_files(other)) == 1 and recorded_blobs(other) < 3
        # a compressible one read whole through the mount: every chunk fetched, then kept as a blob
        assert (where / text.relative_to(env)).read_bytes() == text.read_bytes()
        digest = "sha256:" + hashlib.sha256(text.read_bytes()).hexdigest()
        wait_for(lambda: digest in blobs_of(other), timeout=10)
        assert other("verify").returncode == 0
        other("gc")  # the image is still partial: what it has fetched stays, the part of huge.bin too
        assert digest in blobs_of(other) and len(partial_files(other)) == 1
        assert read_at(where / rel, middle, 4096) == huge.read_bytes()[middle:middle + 4096]
        # the image completed while the mount runs: the open file reads on from the blob pulled
        fd = os.open(where / rel, os.O_RDONLY)
        try:
            assert os.pread(fd, 100, CHUNK) == huge.read_bytes()[CHUNK:CHUNK + 100]
            [tag] = images(other)[0]["tags"]
            other("pull", tag)
            assert images(other)[0]["partial"] is False and partial_files(other) == []
            before = sum(served_bytes(web, p) for p, _ in frames.values())
            assert os.pread(fd, 100, BIG - 100) == huge.read_bytes()[-100:]
            seen = contents(where)
            assert sum(served_bytes(web, p) for p, _ in frames.values()) == before  # nothing fetched since
        finally:
            os.close(fd)
    finally:
        unmount(other, where)
    assert other("verify").returncode == 0
    other("export", tag, tmp_path / "out")
    assert contents(tmp_path / "out") == seen
    other("gc")
    assert other("verify").returncode == 0


def test_flipped_byte_in_a_chunk_is_eio_for_that_range_only(tmp_path, make_venv, vocker, other,
                                                             servers) -> None:  # noqa: F811
    env = big_venv(make_venv, tmp_path / "env")
    layout, web = serve_image(vocker, env, tmp_path, servers)
    huge = site_of(env) / "bigpkg" / "huge.bin"
    want = huge.read_bytes()
    pack, off, _, _ = next(f for f in _layout_frames(layout) if f[3] == "sha256:" + hashlib.sha256(want).hexdigest())
    bad = 10  # stored raw: chunk 10 is at 10 * CHUNK in the frame
    pack_file = layout / "blobs" / "sha256" / pack
    raw = bytearray(pack_file.read_bytes())
    raw[off + bad * CHUNK + 777] ^= 0x01
    pack_file.write_bytes(bytes(raw))
    where = tmp_path / "mnt"
    other("mount", f"http://{web.address}/images:v1", where, env={"VOCKER_LAZY_WAIT": str(WAIT)})
    try:
        path = where / huge.relative_to(env)
        for c in (bad - 4, bad + 4):
            assert read_at(path, c * CHUNK, 4096) == want[c * CHUNK:c * CHUNK + 4096]
        proc = subprocess.run(["dd", f"if={path}", "bs=4096", f"skip={bad * CHUNK // 4096 + 3}", "count=1",
                               "iflag=direct"], capture_output=True, timeout=60)
        assert proc.returncode != 0 and b"Input/output error" in proc.stderr, proc.stderr
        for c in (bad - 4, bad - 1, bad + 1, bad + 4):  # the rest of the file is served
            assert read_at(path, c * CHUNK + 5, 4096) == want[c * CHUNK + 5:c * CHUNK + 4101]
        assert other("verify").returncode == 0
    finally:
        unmount(other, where)
    assert "sha256:" + hashlib.sha256(want).hexdigest() not in blobs_of(other)  # never kept as a blob


def test_kill_9_during_a_chunk_fetch_leaves_a_store_that_verifies(tmp_path, make_venv, vocker, other,
                                                                  servers) -> None:  # noqa: F811
    env = big_venv(make_venv, tmp_path / "env")
    vocker("image", "import", env, "-t", "app")
    reg = start_registry(tmp_path / "registry")
    servers.append(reg)
    vocker("push", "app", f"{reg.address}/app:v1")
    where = tmp_path / "mnt"
    other("mount", f"{reg.address}/app:v1", where, env={"VOCKER_LAZY_WAIT": "30"})
    path = site_of(where) / "bigpkg" / "huge.bin"
    want = (site_of(env) / "bigpkg" / "huge.bin").read_bytes()
    try:
        assert read_at(path, 5 * CHUNK, 100) == want[5 * CHUNK:5 * CHUNK + 100]
        os.killpg(reg.proc.pid, signal.SIGSTOP)
        try:
            reader = subprocess.Popen(["dd", f"if={path}", "bs=4096", f"skip={20 * CHUNK // 4096}", "count=1"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            for pid in daemon_pids(tmp_path):
                os.kill(pid, signal.SIGKILL)
            reader.wait(timeout=30)
        finally:
            os.killpg(reg.proc.pid, signal.SIGCONT)
    finally:
        other("unmount", "-f", where, check=False)
    assert partial_files(other)  # the part fetched, in its sparse file: never a blob
    assert other("verify").returncode == 0
    other("gc")
    assert other("verify").returncode == 0 and partial_files(other)  # still partial: kept
    other("pull", f"{reg.address}/app:v1")
    assert other("verify").returncode == 0 and images(other)[0]["partial"] is False and not partial_files(other)
    other("export", "app:v1", tmp_path / "out")
    assert (site_of(tmp_path / "out") / "bigpkg" / "huge.bin").read_bytes() == want


def _bad_chunk_layout(data: bytes) -> bytes:
    doc = cbor2.loads(data)
    entry = next(e for e in doc["e"] if len(e) == 7)
    entry[5] = entry[5][:-32]  # one chunk digest short
    return cbor2.dumps(doc, canonical=True)


def test_pack_index_gives_large_files_a_chunk_layout_and_others_stay_version_1(tmp_path, make_venv, vocker,
                                                                               other) -> None:  # noqa: F811
    from test_share import _rewrite, assert_nothing_recorded, assert_one_line_error

    def indexes(layout: Path) -> list[dict]:
        blobs = layout / "blobs" / "sha256"
        doc = json.loads((blobs / json.loads((layout / "index.json").read_text())["manifests"][0]["digest"][7:])
                         .read_bytes())
        return [cbor2.loads((blobs / d["digest"][7:]).read_bytes()) for d in doc["layers"]
                if d["mediaType"] == "application/vnd.vocker.pack.index.v1+cbor"]

    vocker("image", "import", app_venv(make_venv, tmp_path / "small"), "-t", "small")
    vocker("push", "small", tmp_path / "small-repo")
    assert {(i["v"], len(e)) for i in indexes(tmp_path / "small-repo") for e in i["e"]} == {(1, 5)}  # as before
    env = big_venv(make_venv, tmp_path / "env")
    vocker("image", "import", env, "-t", "app")
    layout = tmp_path / "repo"
    vocker("push", "app", layout)
    large = [e for i in indexes(layout) for e in i["e"] if e[3] > 1 << 20]
    assert len(large) == 2 and all(len(e) == 7 and len(e[5]) == 32 * -(-e[3] // CHUNK) for e in large)
    assert {e[4] for e in large} == {"raw", "zstd-seekable"}
    for i in indexes(layout):  # version 2 only where a large file needs it; small files' entries as before
        assert i["v"] == (2 if any(len(e) == 7 for e in i["e"]) else 1)
        assert all(len(e) == 5 for e in i["e"] if e[3] <= 1 << 20)
    _rewrite(layout, "application/vnd.vocker.pack.index.v1+cbor", _bad_chunk_layout)
    assert_one_line_error(other("pull", layout, check=False), "chunk layout that does not fit")
    assert_nothing_recorded(other)
