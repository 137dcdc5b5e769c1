"""Fast checks that the shared fixtures and the wheel factory work."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from wheelfactory import build_demo_wheel, build_wheel, record_hash


def _run(*cmd: str | Path) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_wheel_build_is_deterministic(tmp_path: Path) -> None:
    files = {"pkg/__init__.py": "X = 1\n", "pkg/data.bin": bytes(range(256)), "pkg/a.py": "A = 'a'\n"}
    first = build_wheel(tmp_path / "one", "My.Pkg-name", "0.3", files, requires=["alpha>=1"],
                        console_scripts={"my-cli": "pkg:main"})
    # Same content, different dict order: still the same bytes.
    second = build_wheel(tmp_path / "two", "My.Pkg-name", "0.3", dict(reversed(list(files.items()))),
                         requires=["alpha>=1"], console_scripts={"my-cli": "pkg:main"})
    assert first.name == "my_pkg_name-0.3-py3-none-any.whl"
    assert first.read_bytes() == second.read_bytes()

    changed = build_wheel(tmp_path / "three", "My.Pkg-name", "0.3", {**files, "pkg/__init__.py": "X = 2\n"})
    assert changed.read_bytes() != first.read_bytes()

    with zipfile.ZipFile(first) as zf:
        assert {info.date_time for info in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        names = zf.namelist()
        assert names[-1] == "my_pkg_name-0.3.dist-info/RECORD"
        meta = zf.read("my_pkg_name-0.3.dist-info/METADATA").decode()
        assert "Metadata-Version: 2.1\nName: My.Pkg-name\nVersion: 0.3\nRequires-Dist: alpha>=1\n" in meta
        wheel = zf.read("my_pkg_name-0.3.dist-info/WHEEL").decode()
        assert "Root-Is-Purelib: true" in wheel and "Tag: py3-none-any" in wheel
        assert "my-cli = pkg:main" in zf.read("my_pkg_name-0.3.dist-info/entry_points.txt").decode()


def test_demo_wheel_cli(tmp_path: Path) -> None:
    script = Path(__file__).with_name("wheelfactory.py")
    out = _run(sys.executable, script, "--out", tmp_path)
    wheel = Path(out.strip())
    assert wheel == tmp_path / "vocker_demo_hello-1.0-py3-none-any.whl"
    assert wheel.read_bytes() == build_demo_wheel(tmp_path / "again").read_bytes()


@pytest.mark.parametrize("wheel_name", ["alpha-1.0", "beta-1.0", "gamma-1.0"])
def test_record_hashes_are_correct(wheels_dir: Path, wheel_name: str) -> None:
    name, version = wheel_name.split("-")
    with zipfile.ZipFile(wheels_dir / f"{name}-{version}-py3-none-any.whl") as zf:
        record_name = f"{name}-{version}.dist-info/RECORD"
        rows = list(csv.reader(io.StringIO(zf.read(record_name).decode())))
        listed = {row[0] for row in rows}
        assert listed == set(zf.namelist())
        for path, hash_, size in rows:
            if path == record_name:
                assert (hash_, size) == ("", "")
                continue
            data = zf.read(path)
            assert hash_ == record_hash(data), path
            assert int(size) == len(data), path
    # Independent check of the hash encoding (urlsafe base64, no padding).
    assert record_hash(b"") == "sha256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"


def test_gamma_wheel_has_big_module(wheels_dir: Path) -> None:
    with zipfile.ZipFile(wheels_dir / "gamma-1.0-py3-none-any.whl") as zf:
        big = zf.getinfo("gamma/big.py")
        assert 150 * 1024 < big.file_size < 300 * 1024
        assert big.compress_size < big.file_size / 2  # deflate actually helps
        assert "gamma/data/info.txt" in zf.namelist()
        assert sum(n.startswith("gamma/sub/") for n in zf.namelist()) >= 4


@pytest.mark.parametrize("creator", ["venv", "uv"])
def test_make_venv_alpha(make_venv, base_python: Path, tmp_path: Path, creator: str) -> None:
    venv = make_venv(tmp_path / f"env-{creator}", creator=creator)
    assert venv == tmp_path / f"env-{creator}"
    assert _run(venv / "bin" / "python", "-c", "import alpha; print(alpha.VALUE)") == "1\n"
    assert _run(venv / "bin" / "alpha-cli") == "alpha 1.0\n"
    # Both creators use the same base interpreter, and the venv is a real venv.
    info = _run(venv / "bin" / "python", "-c",
                "import sys; print(sys.prefix); print(sys.base_prefix)").splitlines()
    assert Path(info[0]) == venv.resolve()
    assert os.path.realpath(info[1]) == os.path.realpath(sys.base_prefix)
    cfg = (venv / "pyvenv.cfg").read_text()
    assert any(line.split("=", 1)[-1].strip() == str(base_python.parent)
               for line in cfg.splitlines() if line.startswith("home"))


def test_make_venv_beta_pulls_dependency(make_venv, tmp_path: Path) -> None:
    venv = make_venv(tmp_path / "env", creator="uv", packages=["beta", "gamma"])
    out = _run(venv / "bin" / "python", "-c",
               "import alpha, beta, gamma, gamma.big, gamma.sub.mod3 as m;"
               "print(alpha.VALUE, beta.value(), gamma.big.SIZE, m.twice(), gamma.info().split()[0])")
    assert out.split() == ["2", "20", "4096", "6", "gamma"]  # newest alpha satisfies alpha>=1


def test_make_venv_no_packages(make_venv, tmp_path: Path) -> None:
    venv = make_venv(tmp_path / "empty", packages=())
    proc = subprocess.run([venv / "bin" / "python", "-c", "import alpha"], capture_output=True)
    assert proc.returncode != 0


def test_vocker_home_and_runner(vocker_home: Path, vocker, tmp_path: Path) -> None:
    assert os.environ["VOCKER_HOME"] == str(vocker_home)
    assert vocker_home.is_dir() and not any(vocker_home.iterdir())
    assert vocker.home == vocker_home
    # Exercise the runner's mechanics with a stand-in executable (no vocker needed).
    fake = tmp_path / "fake-vocker"
    fake.write_text('#!/bin/sh\necho "home=$VOCKER_HOME args=$*"\ncat\necho oops >&2\nexit "${FAKE_RC:-0}"\n')
    fake.chmod(0o755)
    vocker.exe = fake
    proc = vocker("image", "ls", input="stdin-data\n")
    assert proc.stdout == f"home={vocker_home} args=image ls\nstdin-data\n"
    assert proc.stderr == "oops\n"
    assert vocker("x", check=False, env={"FAKE_RC": "3"}).returncode == 3
    with pytest.raises(AssertionError, match=r"(?s)exited with 3.*args: \['x'\].*home=.*oops"):
        vocker("x", env={"FAKE_RC": "3"})
