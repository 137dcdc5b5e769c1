"""The distribution: a LICENSE matching pyproject.toml, and an sdist that can run its own tests."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_license_file_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and "LICENSE" in project["license-files"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")


def _local_imports(tests: Path) -> set[str]:
    """Modules of tests/ that test files import (conftest, mounthelp, ...)."""
    local = {p.stem for p in tests.glob("*.py")}
    names = set()
    for path in tests.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
    return names & local


def test_the_sdist_ships_what_its_tests_import(tmp_path: Path, uv_exe: Path) -> None:
    # offline: the build backend (setuptools) must already be in uv's cache, as after any install
    source = tmp_path / "source"  # without the checkout's egg-info, whose file list setuptools would reuse
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "*.egg-info", "__pycache__", "build", "dist", ".vocker", "bench-out"))
    proc = subprocess.run([uv_exe, "build", "--sdist", "--offline", "-o", tmp_path, source],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot build the sdist offline here: {proc.stderr.strip().splitlines()[-1:]}")
    [sdist] = tmp_path.glob("vocker-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    unpacked = next((tmp_path / "x").iterdir())
    assert (unpacked / "LICENSE").is_file()
    needed = _local_imports(ROOT / "tests") | {"conftest"}
    assert needed >= {"conftest", "mounthelp", "wheelfactory"}
    missing = sorted(m for m in needed if not (unpacked / "tests" / f"{m}.py").is_file())
    assert not missing, f"the sdist's tests import modules it does not ship: {missing}"
    # and they run: the fixtures' own checks, from the unpacked sdist, against the installed vocker
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fixtures.py"],
                         cwd=unpacked, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and re.search(r"\d+ passed", run.stdout), run.stdout[-2000:]
