"""Sharing images: save/load, push/pull through a real registry (docker-registry), static
servers (nginx with Range, python -m http.server without), and the faults on the way."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from servers import registry_blobs, start_http_server, start_nginx, start_registry

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/docker-registry") or not shutil.which("nginx"),
                                reason="needs docker-registry and nginx (scripts/setup.sh installs them)")


@pytest.fixture
def servers():  # type: ignore[no-untyped-def]
    """Start servers with ``servers.append(start_...(...))``; all are stopped at the end, pass or fail."""
    started: list = []
    yield started
    for s in started:
        s.stop()
    for s in started:  # nothing of theirs is left (nginx's workers outlive a killed master)
        pid = getattr(s, "proc", None) and s.proc.pid
        if pid:
            left = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout.split()
            assert not left, f"server processes left: {left}"


@pytest.fixture
def other(vocker, tmp_path):  # type: ignore[no-untyped-def]
    """A second machine: the same CLI on another, empty store."""
    from conftest import VockerRunner

    home = tmp_path / "other-home"
    home.mkdir()
    return VockerRunner(home, vocker.exe)


def image_id(vocker, ref: str) -> str:  # type: ignore[no-untyped-def]
    return json.loads(vocker("image", "inspect", ref).stdout)["id"]


def packages_tree(root: Path, changed: int | None = None, count: int = 24) -> Path:
    """A tree of ``count`` 'packages' of ~0.6 MiB incompressible files each; ``changed``: one of them differs."""
    for p in range(count):
        rng = random.Random(p * 1000 + (7 if p == changed else 0))
        for f in range(6):
            path = root / "site-packages" / f"pkg{p:02d}" / f"mod{f}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rng.randbytes(100_000))
    return root


def assert_one_line_error(proc, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vocker: error: "), proc.stderr
    for w in words:
        assert w in lines[0], proc.stderr


def recorded_blobs(runner) -> int:  # type: ignore[no-untyped-def]
    """How many blobs the store's database records (read as another process would)."""
    import sqlite3

    db = runner.home / "vocker.db"
    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            return conn.execute("SELECT count(*) FROM blobs").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def assert_nothing_recorded(runner) -> None:  # type: ignore[no-untyped-def]
    assert runner("image", "ls", "-q").stdout.split() == []
    assert runner("verify").returncode == 0


# -- save / load ------------------------------------------------------------------------------


def test_save_load_round_trip_verifies_and_a_second_load_adds_nothing(tmp_path, make_venv, vocker, other) -> None:
    env = make_venv(tmp_path / "env", packages=("alpha==1.0", "beta", "gamma"))
    vocker("image", "import", env, "-t", "app:v1")
    archive = tmp_path / "app.tar"
    vocker("save", "app:v1", "-o", archive)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "index.json" in names and "oci-layout" in names
    first = other("load", "-i", archive)
    assert "Loaded 1 new image" in first.stdout
    assert image_id(other, "app:v1") == image_id(vocker, "app:v1")
    blobs = sorted((other.home / "blobs").rglob("*"))
    again = other("load", "-i", archive)
    assert "0 new images, 1 already in store" in again.stdout
    assert sorted((other.home / "blobs").rglob("*")) == blobs
    other("verify")
    other("export", "app:v1", tmp_path / "out")
    out = subprocess.run([tmp_path / "out" / "bin" / "python", "-c", "import beta; print(beta.value())"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "10"


def test_save_to_stdout_and_load_from_stdin_are_byte_identical_files(tmp_path, make_venv, vocker, other) -> None:
    env = make_venv(tmp_path / "env")
    vocker("image", "import", env, "-t", "app")
    vocker("save", "app", "-o", tmp_path / "a.tar")
    piped = subprocess.run(f"{vocker.exe} save app -o - > {tmp_path / 'b.tar'}", shell=True, check=True,
                           env={**os.environ, "VOCKER_HOME": str(vocker.home)})
    assert piped.returncode == 0
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()  # deterministic
    subprocess.run(f"{other.exe} load -i - < {tmp_path / 'b.tar'}", shell=True, check=True,
                   env={**os.environ, "VOCKER_HOME": str(other.home)}, capture_output=True)
    assert image_id(other, "app") == image_id(vocker, "app")


def _flip_in_largest_member(archive: Path, out: Path) -> None:
    with tarfile.open(archive) as src, tarfile.open(out, "w") as dst:
        members = src.getmembers()
        largest = max(members, key=lambda m: m.size)
        for m in members:
            data = src.extractfile(m).read()  # type: ignore[union-attr]
            if m is largest:
                data = data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 1]) + data[len(data) // 2 + 1:]
            dst.addfile(m, __import__("io").BytesIO(data))


def test_load_of_a_damaged_or_truncated_archive_records_nothing(tmp_path, make_venv, vocker, other) -> None:
    env = make_venv(tmp_path / "env", packages=("alpha==1.0", "gamma"))
    vocker("image", "import", env, "-t", "app")
    vocker("save", "app", "-o", tmp_path / "a.tar")
    _flip_in_largest_member(tmp_path / "a.tar", tmp_path / "flipped.tar")
    assert_one_line_error(other("load", "-i", tmp_path / "flipped.tar", check=False), "does not match")
    assert_nothing_recorded(other)
    data = (tmp_path / "a.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:len(data) // 2])
    assert_one_line_error(other("load", "-i", tmp_path / "cut.tar", check=False))
    assert_nothing_recorded(other)
    assert not list((other.home / "tmp").iterdir())


# -- registries ---------------------------------------------------------------------------------


def test_push_pull_through_a_registry_and_a_second_push_sends_nothing(tmp_path, make_venv, vocker, other,
                                                                        servers) -> None:
    reg = start_registry(tmp_path / "registry")
    servers.append(reg)
    env = make_venv(tmp_path / "env", packages=("alpha==1.0", "beta", "gamma"))
    vocker("image", "import", env, "-t", "app:v1")
    ref = f"{reg.address}/team/app:v1"
    first = vocker("push", "app:v1", ref).stdout
    assert first.startswith(f"Pushed app:v1 to {reg.address}/team/app:v1: sent ")
    again = vocker("push", "app:v1", ref).stdout
    assert ": sent 0 blobs (0 B), skipped " in again
    assert vocker("tags", f"{reg.address}/team/app").stdout.split() == ["v1"]
    remote = json.loads(other("image", "inspect", ref).stdout)  # no pull
    assert remote["id"] == image_id(vocker, "app:v1")
    assert other("image", "ls", "-q").stdout.split() == []
    pulled = other("pull", ref).stdout
    assert pulled.startswith(f"Pulled {ref} as team/app:v1: fetched ")
    assert image_id(other, "team/app:v1") == image_id(vocker, "app:v1")
    other("verify")
    # pushed to another repository of the registry it came from: mounted there, nothing sent
    # (a HEAD in the new repository answers 404 for blobs linked only to team/app)
    copied = other("push", "team/app:v1", f"{reg.address}/team/copy:v1").stdout
    assert ": sent 0 blobs (0 B), skipped " in copied, copied
    # the registry holds an ordinary OCI artifact manifest
    import urllib.request

    req = urllib.request.Request(f"http://{ref.replace(':v1', '')}".replace(reg.address, reg.address + "/v2", 1)
                                 + "/manifests/v1", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    doc = json.loads(urllib.request.urlopen(req).read())
    assert doc["artifactType"] == "application/vnd.vocker.image.v1"
    assert doc["config"]["digest"] == image_id(vocker, "app:v1")


def test_repush_after_changing_one_package_uploads_about_that_package(tmp_path, vocker, servers) -> None:
    reg = start_registry(tmp_path / "registry")
    servers.append(reg)
    vocker("image", "import", packages_tree(tmp_path / "v1"), "-t", "big:v1")
    vocker("push", "big:v1", f"{reg.address}/big:v1")
    before = registry_blobs(reg)
    vocker("image", "import", packages_tree(tmp_path / "v2", changed=11), "-t", "big:v2")
    vocker("push", "big:v2", f"{reg.address}/big:v2")
    new = {d: s for d, s in registry_blobs(reg).items() if d not in before}
    total = sum(before.values())
    assert sum(new.values()) < 0.25 * total, (sum(new.values()), total)
    # packing is deterministic: the same image pushed to another repository gives the same blobs
    vocker("push", "big:v1", tmp_path / "layout")
    vocker("push", "big:v1", tmp_path / "layout2")
    assert sorted(os.listdir(tmp_path / "layout" / "blobs" / "sha256")) == \
        sorted(os.listdir(tmp_path / "layout2" / "blobs" / "sha256"))
    assert set(os.listdir(tmp_path / "layout" / "blobs" / "sha256")) <= {d[7:] for d in before}


def test_flipped_byte_in_a_served_blob_is_refused_and_nothing_recorded(tmp_path, vocker, other, servers) -> None:
    reg = start_registry(tmp_path / "registry")
    servers.append(reg)
    vocker("image", "import", packages_tree(tmp_path / "t", count=4), "-t", "t")
    vocker("push", "t", f"{reg.address}/t")
    blobs = registry_blobs(reg)
    biggest = max(blobs, key=blobs.__getitem__)
    data_file = next(reg.root.rglob(f"{biggest[7:]}/data"))
    raw = bytearray(data_file.read_bytes())
    raw[len(raw) // 3] ^= 0x40
    data_file.write_bytes(bytes(raw))
    proc = other("pull", f"{reg.address}/t", check=False)
    assert_one_line_error(proc, biggest, "does not match its digest")
    assert_nothing_recorded(other)


def test_registry_killed_mid_push_and_mid_pull_then_both_resume(tmp_path, vocker, other, servers) -> None:
    base = tmp_path / "registry"
    reg = start_registry(base)
    servers.append(reg)
    vocker("image", "import", packages_tree(tmp_path / "t", count=100), "-t", "t")
    ref = f"{reg.address}/t"
    push = subprocess.Popen([vocker.exe, "push", "-j", "1", "t", ref], env={**os.environ, "VOCKER_HOME": str(vocker.home)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while len(registry_blobs(reg)) < 3 and push.poll() is None:
        time.sleep(0.01)
    reg.kill()
    _, stderr = push.communicate(timeout=60)
    assert push.returncode != 0 and stderr.startswith("vocker: error: ") and len(stderr.splitlines()) == 1, stderr
    partial = len(registry_blobs(reg))
    reg = start_registry(base, reg.port)
    servers.append(reg)
    done = vocker("push", "t", ref).stdout
    skipped = int(done.split("skipped ")[1].split()[0])
    assert skipped >= partial - 1 > 0, (done, partial)  # what was there was not sent again

    pull = subprocess.Popen([other.exe, "pull", "-j", "1", ref], env={**os.environ, "VOCKER_HOME": str(other.home)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while pull.poll() is None and not recorded_blobs(other):  # a first batch is kept
        time.sleep(0.01)
    reg.kill()
    _, stderr = pull.communicate(timeout=60)
    assert pull.returncode != 0 and len(stderr.splitlines()) == 1, stderr
    assert other("image", "ls", "-q").stdout.split() == []
    other("verify")
    reg = start_registry(base, reg.port)
    servers.append(reg)
    done = other("pull", ref).stdout
    assert int(done.split("skipped ")[1].split()[0]) > 0, done  # packs fetched before were not fetched again
    assert image_id(other, "t:latest") == image_id(vocker, "t")
    other("verify")


# -- static repositories ------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["nginx", "http.server"])
def test_pull_from_a_static_server_with_and_without_range(tmp_path, vocker, other, servers, server) -> None:
    layout = tmp_path / "site" / "repo"
    vocker("image", "import", packages_tree(tmp_path / "v1"), "-t", "big:v1")
    vocker("image", "import", packages_tree(tmp_path / "v2", changed=5), "-t", "big:v2")
    vocker("push", "big:v1", f"{layout}:v1")
    vocker("push", "big:v2", f"{layout}:v2")
    assert vocker("tags", layout).stdout.split() == ["v1", "v2"]
    srv = start_nginx(tmp_path / "nginx", tmp_path / "site",  # /moved/ redirects, as blob storage does
                      "location /moved/ { rewrite ^/moved/(.*)$ /repo/$1 redirect; }") \
        if server == "nginx" else start_http_server(tmp_path / "site")
    servers.append(srv)
    url = f"http://{srv.address}/repo"
    other("pull", f"{url}:v1")
    assert image_id(other, "repo:v1") == image_id(vocker, "big:v1")
    # v2 shares all but one package: only its frames are fetched (single Range GETs where served,
    # else whole packs), and every frame is checked
    other("pull", f"{url}:v2")
    assert image_id(other, "repo:v2") == image_id(vocker, "big:v2")
    other("verify")
    if server == "nginx":
        assert " 206 " in srv.log.read_text()  # type: ignore[union-attr]
        other("pull", f"http://{srv.address}/moved:v1", "-t", "redirected")
        assert image_id(other, "redirected") == image_id(vocker, "big:v1")
        assert " 302 " in srv.log.read_text()  # type: ignore[union-attr]
    other("pull", f"file://{layout}:v2", "-t", "again")
    assert image_id(other, "again") == image_id(vocker, "big:v2")


def test_a_blob_missing_on_the_server_fails_in_one_line(tmp_path, vocker, other) -> None:
    layout = tmp_path / "repo"
    vocker("image", "import", packages_tree(tmp_path / "t", count=4), "-t", "t")
    vocker("push", "t", layout)
    blobs = sorted((layout / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    blobs[-1].unlink()
    assert_one_line_error(other("pull", layout, check=False), "missing")
    assert_nothing_recorded(other)


def _rewrite(layout: Path, media_type: str, change) -> None:  # type: ignore[no-untyped-def]
    """Replace the first blob of ``media_type`` in a layout by ``change(bytes)``, fixing the digests above it."""
    import hashlib

    index = json.loads((layout / "index.json").read_text())
    mdesc = index["manifests"][0]
    blob = lambda d: layout / "blobs" / "sha256" / d[7:]  # noqa: E731
    manifest = json.loads(blob(mdesc["digest"]).read_bytes())
    desc = next(d for d in manifest["layers"] if d["mediaType"] == media_type)
    data = change(blob(desc["digest"]).read_bytes())
    old = desc["digest"]
    desc["digest"], desc["size"] = "sha256:" + hashlib.sha256(data).hexdigest(), len(data)
    for d in manifest["layers"]:
        if d.get("annotations", {}).get("vnd.vocker.pack.index") == old:
            d["annotations"]["vnd.vocker.pack.index"] = desc["digest"]
    blob(desc["digest"]).write_bytes(data)
    body = json.dumps(manifest).encode()
    mdesc["digest"], mdesc["size"] = "sha256:" + hashlib.sha256(body).hexdigest(), len(body)
    blob(mdesc["digest"]).write_bytes(body)
    (layout / "index.json").write_text(json.dumps(index))


def _dotdot_tree(data: bytes) -> bytes:
    import cbor2
    import pyzstd

    doc = cbor2.loads(pyzstd.decompress(data))
    node = cbor2.loads(doc["nodes"][0])
    node["e"][0]["n"] = ".."
    doc["nodes"][0] = cbor2.dumps(node, canonical=True)
    return pyzstd.compress(cbor2.dumps(doc, canonical=True))


def _outside_index(data: bytes) -> bytes:
    import cbor2

    doc = cbor2.loads(data)
    doc["e"][-1][1] += 1 << 30  # the last frame's offset: far past the pack's end
    return cbor2.dumps(doc, canonical=True)


def _huge_size(data: bytes) -> bytes:
    import cbor2

    doc = cbor2.loads(data)
    doc["e"][0][3] = 1 << 40  # a frame claiming a terabyte
    return cbor2.dumps(doc, canonical=True)


@pytest.mark.parametrize("media_type,change,words", [
    ("application/vnd.vocker.pack.index.v1+cbor", _huge_size, ("implausible size",)),
    ("application/vnd.vocker.trees.v1+cbor+zstd", _dotdot_tree, ("invalid name", "'..'")),
    ("application/vnd.vocker.pack.index.v1+cbor", _outside_index, ("outside its pack",)),
])
def test_hostile_remote_content_is_refused_in_one_line(tmp_path, vocker, other, media_type, change, words) -> None:
    layout = tmp_path / "repo"
    vocker("image", "import", packages_tree(tmp_path / "t", count=3), "-t", "t")
    vocker("push", "t", layout)
    _rewrite(layout, media_type, change)
    assert_one_line_error(other("pull", layout, check=False), *words)
    assert_nothing_recorded(other)


def test_token_auth_registry_login_then_push_and_pull(tmp_path, make_venv, vocker, other, servers,
                                                      monkeypatch) -> None:
    from servers import TokenServer

    tokens = TokenServer(tmp_path / "tokens", {"alice": "s3cret"})
    servers.append(tokens)
    reg = start_registry(tmp_path / "registry", auth=tokens.registry_auth())
    servers.append(reg)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    env = make_venv(tmp_path / "env")
    vocker("image", "import", env, "-t", "app")
    ref = f"{reg.address}/team/app:v1"
    assert_one_line_error(vocker("push", "app", ref, check=False), "refused access")
    assert_one_line_error(vocker("login", reg.address, "-u", "alice", "--password-stdin", input="wrong\n",
                                 check=False), "refused the credentials")
    assert not (tmp_path / "docker" / "config.json").exists()
    assert "Login succeeded" in vocker("login", reg.address, "-u", "alice", "--password-stdin", input="s3cret\n").stdout
    config = tmp_path / "docker" / "config.json"
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    assert reg.address in json.loads(config.read_text())["auths"]
    vocker("push", "app", ref)
    assert any("scope=repository%3Ateam%2Fapp%3Apull%2Cpush" in r for r in tokens.requests)
    other("pull", ref)  # the same docker config: the credentials vocker login kept
    assert image_id(other, "team/app:v1") == image_id(vocker, "app")


def test_ctrl_c_during_a_pull_keeps_the_store_consistent_and_the_pull_resumes(tmp_path, vocker, other,
                                                                              servers) -> None:
    import signal

    reg = start_registry(tmp_path / "registry")
    servers.append(reg)
    vocker("image", "import", packages_tree(tmp_path / "t", count=100), "-t", "t")
    ref = f"{reg.address}/t"
    vocker("push", "t", ref)
    pull = subprocess.Popen([other.exe, "pull", "-j", "1", ref], env={**os.environ, "VOCKER_HOME": str(other.home)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while pull.poll() is None and not recorded_blobs(other):
        time.sleep(0.01)
    pull.send_signal(signal.SIGINT)
    _, stderr = pull.communicate(timeout=60)
    assert pull.returncode == 130, stderr
    assert stderr.splitlines() == ["vocker: interrupted; the file contents fetched so far are kept; "
                                   "pull again to resume"], stderr
    assert other("image", "ls", "-q").stdout.split() == []
    other("verify")
    assert not [p for p in (other.home / "tmp").iterdir() if p.is_file()]
    done = other("pull", ref).stdout
    assert int(done.split("skipped ")[1].split()[0]) > 0, done
    assert image_id(other, "t:latest") == image_id(vocker, "t")


def test_layer_export_is_a_standard_tarball_that_tar_reads(tmp_path, make_venv, vocker) -> None:
    env = make_venv(tmp_path / "env", packages=("alpha==1.0", "gamma"))
    vocker("image", "import", env, "-t", "app")
    vocker("layer", "export", "app", "-o", tmp_path / "layer.tar", "--prefix", "/opt/app")
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xf", tmp_path / "layer.tar", "-C", out], check=True)
    site = next((out / "opt" / "app" / "lib").glob("python3*/site-packages"))
    assert (site / "gamma" / "data" / "info.txt").read_bytes() == \
        next((env / "lib").glob("python3*/site-packages/gamma/data/info.txt")).read_bytes()
    script = (out / "opt" / "app" / "bin" / "alpha-cli").read_text()
    assert script.startswith("#!/opt/app/bin/python") and os.access(out / "opt" / "app" / "bin" / "alpha-cli", os.X_OK)
    again = tmp_path / "again.tar"
    subprocess.run(f"{vocker.exe} layer export app --prefix /opt/app -o - > {again}", shell=True, check=True,
                   env={**os.environ, "VOCKER_HOME": str(vocker.home)})
    assert again.read_bytes() == (tmp_path / "layer.tar").read_bytes()
