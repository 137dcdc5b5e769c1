"""Import a real venv, export it, and run what comes out (through the CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path



def image_id(vocker, ref: str) -> str:  # type: ignore[no-untyped-def]
    return json.loads(vocker("image", "inspect", ref).stdout)["id"]


def run(*cmd: str | Path, **kw) -> str:  # type: ignore[no-untyped-def]
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, **kw).stdout


def pyc_mtimes(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*.pyc")}


def test_same_packages_same_id_across_paths_names_times_and_creators(tmp_path, make_venv, vocker) -> None:
    pkgs = ("alpha==1.0", "gamma==1.0")
    a = make_venv(tmp_path / "one" / "env-a", packages=pkgs)
    b = make_venv(tmp_path / "two" / "deeper" / "other-name", packages=pkgs)
    c = make_venv(tmp_path / "uvmade", creator="uv", packages=pkgs)
    old = time.time() - 86400 * 30  # "a different day": mtimes must not matter
    for p in b.rglob("*"):
        os.utime(p, (old, old), follow_symlinks=False)
    vocker("image", "import", a, "-t", "a")
    vocker("image", "import", b, "-t", "b")
    vocker("image", "import", c, "-t", "c")
    ids = {image_id(vocker, t) for t in "abc"}
    assert len(ids) == 1, ids
    different = make_venv(tmp_path / "three", packages=("alpha==2.0", "gamma==1.0"))
    vocker("image", "import", different, "-t", "d")
    assert image_id(vocker, "d") not in ids


def test_reimport_adds_no_duplicate(tmp_path, make_venv, vocker) -> None:
    env = make_venv(tmp_path / "env")
    first = vocker("image", "import", env, "-t", "x").stdout
    again = vocker("image", "import", env, "-t", "x").stdout
    assert first.startswith("Imported") and again.startswith("Already in store")
    assert len(vocker("image", "ls", "-q").stdout.split()) == 1


def test_export_runs_console_script_and_imports(tmp_path, make_venv, vocker) -> None:
    env = make_venv(tmp_path / "src", packages=("alpha==1.0", "beta", "gamma"))
    vocker("image", "import", env, "-t", "app")
    dest = tmp_path / "elsewhere" / "exported"
    vocker("export", "app", dest)
    assert run(dest / "bin" / "alpha-cli").strip() == "alpha 1.0"
    out = run(dest / "bin" / "python", "-c", "import beta, gamma, sys; print(beta.value(), gamma.info().strip(), sys.prefix)")
    assert out.split()[0] == "10" and out.split()[-1] == str(dest)
    shebang = (dest / "bin" / "alpha-cli").read_text().splitlines()[0]
    assert shebang == f"#!{dest}/bin/python"
    assert os.access(dest / "bin" / "alpha-cli", os.X_OK)
    assert (dest / "lib64").is_symlink() and os.readlink(dest / "lib64") == "lib"
    # activate works and names the new location
    out = run("bash", "-c", f"source {dest}/bin/activate && echo $VIRTUAL_ENV && which python")
    assert out.split() == [str(dest), f"{dest}/bin/python"]
    # no trace of the source venv's path anywhere
    for p in dest.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert str(env).encode() not in p.read_bytes(), p


def test_bytecode_is_used_shared_and_never_stale(tmp_path, make_venv, vocker) -> None:
    env = make_venv(tmp_path / "src", packages=("alpha==1.0", "gamma"))
    vocker("image", "import", env, "-t", "one")
    dest = tmp_path / "out1"
    first = vocker("export", "one", dest).stdout
    assert "newly compiled" in first and " 0 newly compiled" not in first
    before = pyc_mtimes(dest)
    assert any("gamma" in str(p) for p in before)
    run(dest / "bin" / "python", "-c", "import alpha, gamma, gamma.big, gamma.sub.mod1")
    assert pyc_mtimes(dest) == before, "importing rewrote bytecode: the shipped pycs were not used"
    # a second image sharing those sources compiles only what is new to the store (beta.py)
    env2 = make_venv(tmp_path / "src2", packages=("alpha==1.0", "gamma", "beta"))
    vocker("image", "import", env2, "-t", "two")
    second = vocker("export", "two", tmp_path / "out2").stdout
    assert "10 pycs (1 newly compiled)" in second
    # edit a module: the new source wins over the cached bytecode, even with the same size and
    # at once (a pyc matches its source by whole-second mtime and size, so the shipped mtime is past)
    init = dest / "lib" / "python3.11" / "site-packages" / "alpha" / "__init__.py"
    assert int(init.stat().st_mtime) < int(time.time())
    init.write_text(init.read_text().replace("VALUE = 1", "VALUE = 7"))
    assert run(dest / "bin" / "python", "-c", "import alpha; print(alpha.VALUE)").strip() == "7"


def test_symlinks_and_exec_bits_are_kept(tmp_path, make_venv, vocker) -> None:
    env = make_venv(tmp_path / "src", packages=("gamma",))
    site = env / "lib" / "python3.11" / "site-packages"
    (site / "gamma-link").symlink_to("gamma")
    tool = site / "gamma" / "tool.sh"
    tool.write_text("#!/bin/sh\necho tool\n")
    tool.chmod(0o755)
    vocker("image", "import", env, "-t", "links")
    dest = tmp_path / "out"
    vocker("export", "links", dest)
    out_site = dest / "lib" / "python3.11" / "site-packages"
    assert (out_site / "gamma-link").is_symlink() and os.readlink(out_site / "gamma-link") == "gamma"
    assert os.access(out_site / "gamma" / "tool.sh", os.X_OK)
    assert not os.access(out_site / "gamma" / "__init__.py", os.X_OK)
    # lib64 -> lib did not make site-packages count twice: every regular file once, minus
    # the scaffolding (pyvenv.cfg and four activate scripts), bytecode and uv's
    # machine-local uv_cache.json.
    regular = sum(1 for d, dirs, fs in os.walk(env) if "__pycache__" not in d
                  for f in fs if not os.path.islink(os.path.join(d, f)) and f != "uv_cache.json")
    assert json.loads(vocker("image", "inspect", "links").stdout)["files"] == regular - 5


def test_plain_tree_and_audit_export(tmp_path, make_venv, vocker) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "data.bin").write_bytes(bytes(range(256)) * 10)
    (tree / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (tree / "run.sh").chmod(0o755)
    proc = vocker("image", "import", tree, "-t", "plain")
    assert "plain tree" in proc.stderr
    dest = tmp_path / "plain-out"
    vocker("export", "plain", dest)
    assert (dest / "sub" / "data.bin").read_bytes() == bytes(range(256)) * 10
    assert os.access(dest / "run.sh", os.X_OK) and not (dest / "pyvenv.cfg").exists()

    env = make_venv(tmp_path / "venv", packages=("alpha",))
    vocker("image", "import", env, "-t", "v")
    audit = tmp_path / "audit"
    vocker("export", "--audit", "v", audit)
    script = audit / "bin" / "alpha-cli"
    assert script.read_text().startswith("{{vocker:shebang}}")
    assert not os.access(script, os.X_OK)
    assert not (audit / "pyvenv.cfg").exists() and not (audit / "bin" / "python").exists()
    assert not list(audit.rglob("*.pyc"))


def test_record_and_direct_url_are_normalised(tmp_path, make_venv, vocker, wheels_dir) -> None:
    wheel = next(wheels_dir.glob("alpha-1.0-*.whl"))
    env = make_venv(tmp_path / "src", packages=(str(wheel),))
    dist = next((env / "lib" / "python3.11" / "site-packages").glob("alpha-*.dist-info"))
    assert (dist / "direct_url.json").exists()  # uv records the local wheel path
    vocker("image", "import", env, "-t", "n")
    dest = tmp_path / "out"
    vocker("export", "n", dest)
    out_dist = dest / "lib" / "python3.11" / "site-packages" / dist.name
    assert not (out_dist / "direct_url.json").exists()
    record = (out_dist / "RECORD").read_text().splitlines()
    assert record == sorted(record)
    script_line = next(line for line in record if line.startswith("../../../bin/alpha-cli"))
    assert script_line == "../../../bin/alpha-cli,,"
    assert not any("direct_url.json" in line for line in record)
    if (dist / "uv_cache.json").exists():  # uv: when it last saw the local wheel (machine-local)
        assert not (out_dist / "uv_cache.json").exists()
        assert not any("uv_cache.json" in line for line in record)


def test_reimport_skips_unchanged_files_but_sees_changes(tmp_path, make_venv, vocker) -> None:
    env = make_venv(tmp_path / "env", packages=("alpha==1.0", "gamma"))
    time.sleep(2.1)  # files younger than 2 s are never cached (an edit could share their timestamp)
    first = vocker("image", "import", env, "-t", "x").stdout
    assert "unchanged since the last import" not in first
    again = vocker("image", "import", env, "-t", "x").stdout
    assert "unchanged since the last import" in again and again.startswith("Already in store")
    # same size, same mtime, other content: the ctime still changes, so it is re-read
    init = env / "lib" / "python3.11" / "site-packages" / "alpha" / "__init__.py"
    st = init.stat()
    init.write_text(init.read_text().replace("VALUE = 1", "VALUE = 3"))
    os.utime(init, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed = vocker("image", "import", env, "-t", "y").stdout
    assert changed.startswith("Imported")
    assert image_id(vocker, "x") != image_id(vocker, "y")
    rehashed = vocker("image", "import", "--rehash", env, "-t", "y").stdout
    assert "unchanged since" not in rehashed and rehashed.startswith("Already in store")
