"""Importing a venv with editable installs warns that the image refers to files outside itself."""

from __future__ import annotations

import json
import sys
from pathlib import Path

SITE = f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"


def add_editable(venv: Path, name: str, source: Path, *, pth: bool) -> None:
    """What a PEP 660 editable install leaves in site-packages (setuptools' form when ``pth``)."""
    dist = venv / SITE / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "INSTALLER").write_text("uv\n")
    (dist / "direct_url.json").write_text(json.dumps({"url": source.as_uri(), "dir_info": {"editable": True}}))
    if pth:
        (venv / SITE / f"__editable__.{name}-0.1.pth").write_text(f"{source}\n")
    (dist / "RECORD").write_text("")


def test_import_warns_about_each_editable_install(make_venv, vocker, tmp_path: Path) -> None:
    plain = vocker("image", "import", make_venv(tmp_path / "plain"), "-t", "plain")
    assert "editable" not in plain.stderr
    venv = make_venv(tmp_path / "env")
    add_editable(venv, "myapp", tmp_path / "src" / "myapp", pth=True)
    add_editable(venv, "mylib", tmp_path / "src" / "mylib", pth=False)
    proc = vocker("image", "import", venv, "-t", "dev")
    warnings = [ln for ln in proc.stderr.splitlines() if "editable install" in ln]
    assert len(warnings) == 2, proc.stderr
    assert warnings[0].startswith("vocker: warning: myapp -> ") and str(tmp_path / "src" / "myapp") in warnings[0]
    assert "mylib -> " in warnings[1] and "refers to files outside itself" in warnings[1]
    assert "Imported" in proc.stdout  # a warning: the image is still made
