"""Image and container names: full-match validation, Docker's length limits, no ID-like tags.

Every refusal goes through the CLI: exit 2, one ``vocker: error:`` line, no traceback,
and nothing recorded.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "tree"
    src.mkdir()
    (src / "file.txt").write_text("hello\n")
    return src


@pytest.fixture
def image(vocker, tree: Path) -> str:
    """A stored image tagged ``app:latest``; returns its ID."""
    vocker("image", "import", tree, "-t", "app")
    return vocker("image", "ls", "-q").stdout.split()[0]


def tags(home: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(home / "vocker.db")) as db:
        return {name for (name,) in db.execute("SELECT name FROM tags")}


def refused(proc, *words: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vocker: error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


BAD_TAGS = {
    "trailing newline": "evil\n",
    "newline after the tag": "app:v1\n",
    "newline inside": "ev\nil",
    "tag of 129 characters": "app:" + "t" * 129,
    "name of 256 characters": "n" * 256,
    "100,000 characters": "x" * 100_000,
}
ID_LIKE = {
    "4 hex digits": "abcd",
    "8 hex digits with a tag": "deadbeef:v1",
    "64 hex digits": "0123456789abcdef" * 4,
    "sha256: prefix": "sha256:abcd",
    "hex name, latest tag": "cafe:latest",
}


@pytest.mark.parametrize("bad", list(BAD_TAGS.values()), ids=list(BAD_TAGS))
def test_tag_refuses_malformed_names(vocker, vocker_home: Path, image: str, bad: str) -> None:
    refused(vocker("tag", "app", bad, check=False), "invalid image name")
    assert tags(vocker_home) == {"app:latest"}


@pytest.mark.parametrize("bad", list(ID_LIKE.values()), ids=list(ID_LIKE))
def test_tag_refuses_names_that_look_like_image_ids(vocker, vocker_home: Path, image: str, bad: str) -> None:
    refused(vocker("tag", "app", bad, check=False), "image ID")
    assert tags(vocker_home) == {"app:latest"}


@pytest.mark.parametrize("bad", ["evil\n", "t" * 300, "abcd", "app:" + "v" * 129], ids=["newline", "long", "id-like",
                                                                                        "long tag"])
def test_import_and_build_refuse_bad_tags(vocker, vocker_home: Path, tree: Path, bad: str) -> None:
    refused(vocker("image", "import", tree, "-t", bad, check=False))
    refused(vocker("build", "alpha==1.0", "-t", bad, "--offline", check=False))
    assert vocker("image", "ls", "-q").stdout == ""


@pytest.mark.parametrize("bad", ["dev\n", "dev\nx", "d" * 65])
def test_create_refuses_bad_container_names(vocker, vocker_home: Path, image: str, bad: str) -> None:
    refused(vocker("create", "app", "--name", bad, check=False), "invalid container name")
    assert vocker("ps", "-a").stdout.count("\n") == 1  # the header only
    assert not (vocker_home / "containers").exists() or list((vocker_home / "containers").iterdir()) == []


def test_ordinary_names_keep_working(vocker, vocker_home: Path, image: str) -> None:
    good = ["app:v1", "my.app/sub-name_x:V1.0-rc_2", "abc", "cafe-bar", "deadbeefx", "x" * 255,
            "app:" + "t" * 128, "abcd1234x:v1"]
    for name in good:
        vocker("tag", "app", name)
    expected = {"app:latest"} | {n if ":" in n.split("/")[-1] else f"{n}:latest" for n in good}
    assert tags(vocker_home) == expected
    short = image.removeprefix("sha256:")[:12]
    assert vocker("image", "inspect", short).returncode == 0  # an ID prefix still resolves
    assert vocker("image", "inspect", "abc").returncode == 0
    assert vocker("image", "rm", "app:v1").stdout.startswith("Untagged: app:v1")
    assert "app:v1" not in tags(vocker_home)
    vocker("create", "app", "--name", "dev.1_x-y")
    assert "dev.1_x-y" in vocker("ps", "-a").stdout


def test_digest_checks_are_full_matches() -> None:
    from vocker.digest import is_digest

    good = "sha256:" + "ab" * 32
    assert is_digest(good)
    assert not is_digest(good + "\n")
