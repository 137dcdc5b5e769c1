"""Large files in bounded memory: import, export and verify stream them (issue 11, item 18).

The memory test runs the real CLI in subprocesses and reads each one's peak RSS with
``os.wait4``; the equivalence tests check that streaming stores exactly what reading
whole files stores, so image IDs do not depend on a file's size.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from vocker import blobstore, normalize, template

SITE = f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
BIG = 300 << 20
RSS_LIMIT = 200 << 20  # well below the file's size: the old code peaked above it in each step


def run_measured(vocker, *args: object) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run the CLI; returns its result and its peak RSS in bytes (this child alone: wait4)."""
    env = dict(os.environ, VOCKER_HOME=str(vocker.home), NO_COLOR="1")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([str(vocker.exe), *map(str, args)], env=env, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(args, proc.returncode, out.read(), err.read()), usage.ru_maxrss * 1024


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            h.update(piece)
    return h.hexdigest()


def test_a_large_sparse_file_is_imported_exported_and_verified_in_bounded_memory(
        vocker, vocker_home: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "small.txt").write_text("small\n")
    big = tree / "big.bin"
    with open(big, "wb") as f:
        f.truncate(BIG)  # sparse: costs no disk
        for offset in (0, 1 << 20, BIG // 2 - 5, BIG - 7):
            f.seek(offset)
            f.write(random.Random(offset).randbytes(3000 if offset < BIG - 7 else 7))
    vocker("images")  # the store exists: what follows measures the commands, not its creation

    proc, peak = run_measured(vocker, "image", "import", tree, "-t", "big")
    assert proc.returncode == 0, proc.stderr
    assert peak < RSS_LIMIT, f"import peaked at {peak >> 20} MiB"

    dest = tmp_path / "out"
    proc, peak = run_measured(vocker, "export", "big", dest)
    assert proc.returncode == 0, proc.stderr
    assert peak < RSS_LIMIT, f"export peaked at {peak >> 20} MiB"
    assert (dest / "big.bin").stat().st_size == BIG
    assert sha256_of(dest / "big.bin") == sha256_of(big)
    assert (dest / "big.bin").stat().st_blocks * 512 < BIG // 4  # zero chunks stay holes

    proc, peak = run_measured(vocker, "verify")
    assert proc.returncode == 0 and proc.stdout.startswith("OK:"), proc.stdout + proc.stderr
    assert peak < RSS_LIMIT, f"verify peaked at {peak >> 20} MiB"
    assert list((vocker_home / "tmp").iterdir()) == []


def test_verify_still_finds_a_corrupt_large_blob(vocker, vocker_home: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    data = random.Random(7).randbytes(blobstore.STREAM_MIN + 3 * blobstore.CHUNK + 11)
    (tree / "noise.bin").write_bytes(data)  # incompressible: stored raw, after a second pass
    vocker("image", "import", tree, "-t", "noise")
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob = vocker_home / "blobs" / "sha256" / digest[7:9] / digest[7:]
    assert blob.stat().st_size == len(data)
    with open(blob, "r+b") as f:
        f.seek(len(data) // 2)
        f.write(b"X")
    proc = vocker("verify", check=False)
    assert proc.returncode == 1 and digest in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    proc = vocker("export", "noise", tmp_path / "out", check=False)
    assert proc.returncode != 0 and "corrupt blob" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def template_of(paths: normalize.VenvPaths, data: bytes, is_script: bool, piece: int, tmp: Path) -> bytes | None:
    """What the streaming rules store for ``data``, fed in pieces of ``piece`` bytes."""
    scan = paths.scan(is_script)
    for i in range(0, len(data), piece):
        scan.feed(data[i:i + piece])
    scan.finish()
    if not scan.templated:
        return None
    tmp.write_bytes(data)
    return b"".join(paths.template_pieces(str(tmp), scan))


def test_streamed_templates_are_exactly_the_whole_file_templates(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Random contents built from the venv's spellings, near-misses (a longer name, a path
    that goes on), shebangs and NULs, fed in pieces that split them anywhere."""
    monkeypatch.setattr(normalize, "SCAN_PIECE", 7)  # the second pass's reads split matches too
    paths = normalize.VenvPaths.of("/tmp/v", "/tmp/v-real")
    words = [b"/tmp/v", b"/tmp/v-real", b"/tmp/v2", b"/tmp/v/", b"a", b"-", b".", b"\n", b"\0", b" ",
             b"#!/tmp/v/bin/python3\n"]
    rng = random.Random(11)
    templated = 0
    for _ in range(3000):
        data = b"".join(rng.choice(words) for _ in range(rng.randrange(30)))
        if rng.random() < 0.4:
            data = data.replace(b"\0", b"")
        if rng.random() < 0.3:
            data = rng.choice([b"#!/tmp/v-real/bin/python3.12\n", b"#!/bin/sh\n'''exec' '/tmp/v/bin/python' "
                               b'"$0" "$@"\n' + b"' '''"]) + data
        for is_script in (False, True):
            whole = paths.to_template(data, is_script)
            want = template.encode(whole) if whole is not None else None
            assert template_of(paths, data, is_script, rng.randrange(1, 12), tmp_path / "f") == want, data
            if whole is not None:  # and rendering it as a stream gives what rendering it whole does
                assert b"".join(template.render_stream(split(want, rng), b"/there")) == template.render(whole, b"/there")
                assert b"".join(template.render_stream(split(want, rng), None)) == template.render_placeholders(whole)
                templated += 1
    assert templated > 1000


def split(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, 5)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


@pytest.mark.parametrize("bad", [
    b"", template.encode([b"x"])[:-1], template.encode([b"x"]) + b"\0",
    template.encode(["venv"]).replace(b"venv", b"vemv"),  # an unknown variable
    template.encode([b"x" * 30]).replace(b"\x58\x1e", b"\x59\x00\x1e"),  # a length not in its shortest form
    template.encode([b"x"]).replace(b"\x41x", b"\x01"),  # an integer for a part
])
def test_render_stream_refuses_what_decode_refuses(bad: bytes) -> None:
    from vocker.errors import FormatError

    with pytest.raises(FormatError):
        template.decode(bad)
    with pytest.raises(FormatError):
        b"".join(template.render_stream([bad], b"/there"))


def test_a_large_venv_gets_the_same_image_id_streamed_or_read_whole(
        make_venv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vocker.exporter import export_image
    from vocker.importer import import_tree
    from vocker.store import Store

    venv = make_venv(tmp_path / "env")
    path = str(venv).encode()
    rng = random.Random(3)
    lines = [rng.randbytes(40).hex().encode() + (b" " + path + b"/lib" if i % 997 == 0 else b"") for i in range(40000)]
    files = {
        f"{SITE}/paths.txt": b"\n".join(lines) + b"\n" + path,  # text naming the venv: a template
        "bin/tool": b"#!" + path + b"/bin/python\n" + b"\n".join(lines),  # a script: shebang and path
        f"{SITE}/mixed.bin": b"\0" + b"\n".join(lines),  # binary naming the venv: kept as is
        f"{SITE}/plain.txt": b"\n".join(lines).replace(path, b"/elsewhere"),
    }
    for rel, data in files.items():
        (venv / rel).write_bytes(data)
    assert all(len(d) > 2 << 20 for d in files.values())

    def run(stream_min: int, name: str) -> tuple[str, dict[str, bytes], dict[str, bytes]]:
        """The image ID and the files of an audit and of a real export (at one path)."""
        monkeypatch.setattr(blobstore, "STREAM_MIN", stream_min)
        store = Store.open(tmp_path / name)
        exported = []
        try:
            image = import_tree(store, venv).image_id
            for audit in (True, False):
                dest = tmp_path / "out"
                export_image(store, image, dest, audit=audit)
                exported.append({rel: (dest / rel).read_bytes() for rel in files})
                shutil.rmtree(dest)
        finally:
            store.close()
        return image, *exported

    whole, whole_audit, whole_real = run(1 << 40, "whole")
    streamed, streamed_audit, streamed_real = run(1 << 20, "streamed")
    assert streamed == whole
    assert streamed_audit == whole_audit and streamed_real == whole_real
    assert b"{{vocker:venv}}" in streamed_audit[f"{SITE}/paths.txt"]
    assert streamed_real["bin/tool"].startswith(b"#!" + str(tmp_path / "out").encode() + b"/bin/python\n")
