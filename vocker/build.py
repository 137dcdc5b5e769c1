"""Build images from requirements: resolve to a lock, install exactly the lock, import.

uv resolves (``uv pip compile --generate-hashes``) and installs (``uv pip sync
--require-hashes``) into a fresh venv in a temporary directory, which is then
imported like any venv (that directory is in the store's ``tmp/``, where gc finds it
after a kill). A build whose cache key (pinned set + interpreter facts +
options, see locks.py) is already in the store returns that image and installs
nothing.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import attrs

from . import locks, scratch
from .errors import BuildError, FormatError, UsageError, VockerError
from .progress import Reporter
from .pythons import find_requested
from .store import Store

def installer() -> str:
    """uv, or pip where uv cannot run (or VOCKER_INSTALLER=pip asks for it)."""
    wanted = os.environ.get("VOCKER_INSTALLER", "")
    if wanted not in ("", "uv", "pip"):
        raise UsageError(f"VOCKER_INSTALLER must be 'uv' or 'pip', not {wanted!r}")
    if wanted == "pip":
        return "pip"
    if wanted == "uv" or shutil.which("uv", path=os.path.dirname(sys.executable)) or shutil.which("uv"):
        return "uv"
    return "pip"


def options(seed: bool = True) -> dict[str, str]:
    """Build options that are part of the cache key (the installer writes INSTALLER and RECORD;
    the import rules decide what of the installed venv the image keeps; whether pip is seeded)."""
    from .normalize import RULES_VERSION

    return {"installer": installer(), "import_rules": str(RULES_VERSION), "seed": "pip" if seed else "none"}


__all__ = ["BuildError", "BuildRequest", "BuildResult", "IndexOptions", "audit", "build", "lookup"]


@attrs.frozen
class IndexOptions:
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    offline: bool = False

    def uv_args(self) -> list[str]:
        """Explicit options, else pip's configuration (uv reads its own uv.toml itself)."""
        opts = self if (self.index_url or self.extra_index_urls or self.find_links or self.no_index) \
            else attrs.evolve(pip_config(), offline=self.offline)
        args: list[str] = []
        if opts.index_url:
            args += ["--index-url", opts.index_url]
        for url in opts.extra_index_urls:
            args += ["--extra-index-url", url]
        for link in opts.find_links:
            args += ["--find-links", link]
        if opts.no_index:
            args.append("--no-index")
        if self.offline:
            args.append("--offline")
        return args


def pip_config() -> IndexOptions:
    """Index settings from pip.conf files and PIP_* variables, as pip would read them."""
    parser = configparser.ConfigParser()
    files = ["/etc/pip.conf", "/etc/xdg/pip/pip.conf", os.path.expanduser("~/.pip/pip.conf"),
             os.path.expanduser("~/.config/pip/pip.conf")]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(os.environ["PIP_CONFIG_FILE"])
    parser.read([f for f in files if os.path.isfile(f)])

    def get(key: str) -> str:
        env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if env is not None:
            return env
        for section in ("install", "global"):
            if parser.has_option(section, key):
                return parser.get(section, key)
        return ""

    index = get("index-url").strip() or None
    return IndexOptions(index, tuple(get("extra-index-url").split()), tuple(get("find-links").split()),
                        get("no-index").strip().lower() in ("1", "true", "yes", "on"))


@attrs.frozen
class BuildRequest:
    specs: tuple[str, ...] = ()
    requirements: Path | None = None  # requirements.txt, a lock, or pyproject.toml
    python: str | None = None
    lock_path: Path | None = None
    index: IndexOptions = IndexOptions()
    upgrade: bool = False
    seed: bool = True  # pip in the image, so `pip install` in it cannot reach the host's pip


@attrs.frozen
class BuildResult:
    image_id: str | None  # None for --lock-only
    cached: bool
    lock_path: Path | None
    lock_text: str
    key: str
    resolved: bool  # a resolution ran (else an existing lock was reused)
    seconds: float


def uv_exe() -> str:
    found = shutil.which("uv", path=os.path.dirname(sys.executable)) or shutil.which("uv")
    if not found:
        raise VockerError("uv is not installed: pip install uv")
    return found


Progress = Callable[[str], None]


def _gist(stderr: str, code: int) -> str:
    """uv's error in one line: its first lines, without the tree drawing (the whole text goes in details)."""
    lines = [ln.strip(" ×╰─▶│") for ln in stderr.splitlines() if ln.strip(" ×╰─▶│")]
    lines = [ln for ln in lines if not ln.startswith(("Resolved ", "Prepared ", "Using ", "Creating "))]
    return "; ".join(ln.removeprefix("error: ") for ln in lines[:2]) or f"uv exited with {code}"


def _run_uv(args: list[str], what: str, progress: Progress | None = None) -> None:
    """Run uv, handing each line it writes to ``progress`` as it comes; BuildError with all of them if it fails."""
    proc = subprocess.Popen([uv_exe(), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            errors="replace", env={**os.environ, "NO_COLOR": "1"})
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if progress is not None and line.strip():
            progress(line.strip())
    code = proc.wait()
    if code != 0:
        text = "".join(lines)
        raise BuildError(f"{what}: {_gist(text, code)}", details=text)


def _input_text(req: BuildRequest) -> tuple[str, str]:
    """(what the lock is resolved from, a label for messages)."""
    if req.requirements is not None:
        if not req.requirements.is_file():
            raise UsageError(f"no such file: {req.requirements}")
        return req.requirements.read_text(encoding="utf-8"), req.requirements.name
    if not req.specs:
        raise UsageError("nothing to build: give requirements (SPEC...), -r requirements.txt or pyproject.toml")
    return "\n".join(req.specs) + "\n", "the command line"


def default_lock_path(req: BuildRequest) -> Path | None:
    """Where the lock goes: ``NAME.txt`` -> ``NAME.lock``, any other input ``FILE`` -> ``FILE.lock``
    (``pyproject.toml.lock``), so two inputs in one directory never share a lock."""
    if req.lock_path is not None:
        return req.lock_path
    if req.requirements is None:
        return None  # specs on the command line: the lock lives in the store only
    if req.requirements.suffix == ".txt":
        return req.requirements.with_suffix(".lock")
    return req.requirements.with_name(req.requirements.name + ".lock")


def _check_lock_owner(req: BuildRequest, lock_path: Path, label: str) -> None:
    """A default lock path already holding another input's lock (or a hand-made one) is not overwritten."""
    if req.lock_path is not None or not lock_path.is_file():
        return
    header = {}
    with open(lock_path, encoding="utf-8", errors="replace") as f:
        first = f.readline()
    if first.startswith(locks.HEADER):
        header = locks.parse_header(first)
    if header.get("input") != label:
        source = f"the lock of {header['input']}" if header.get("input") else "a lock vocker did not write"
        raise UsageError(f"{lock_path} holds {source}, not of {label}; give the lock of {label} "
                         "another place with --lock PATH")


def lock_for(req: BuildRequest, python: dict[str, str], on_step: Progress = lambda _m: None,
             progress: Progress | None = None) -> tuple[str, Path | None, bool]:
    """The lock text (resolving only when needed), where it was written, and whether it was resolved."""
    text, label = _input_text(req)
    if req.requirements is not None and req.requirements.name != "pyproject.toml" and locks.is_lock(text):
        return text, req.requirements, False  # already a lock: build exactly that
    header = {"input": label, "input-sha256": hashlib.sha256(text.encode()).hexdigest(),
              "python": f"{python['implementation']}-{python['version']}", "platform": python["platform"]}
    lock_path = default_lock_path(req)
    if lock_path is not None:
        _check_lock_owner(req, lock_path, label)
    if lock_path is not None and lock_path.is_file() and not req.upgrade:
        existing = lock_path.read_text(encoding="utf-8")
        try:
            parsed = locks.parse(existing, str(lock_path))
        except VockerError:
            parsed = None
        if parsed is not None and all(parsed.header.get(k) == v for k, v in header.items()):
            return existing, lock_path, False  # same input, same interpreter: the lock stands
    with tempfile.TemporaryDirectory(prefix="vocker-lock-") as tmp:
        source = req.requirements if req.requirements is not None else Path(tmp, "requirements.in")
        if req.requirements is None:
            source.write_text(text, encoding="utf-8")
        out = Path(tmp, "requirements.lock")
        what = f"cannot resolve the requirements from {label}"
        on_step(f"resolving the requirements from {label} with {installer()}")
        if installer() == "uv":
            _run_uv(["pip", "compile", str(source), "--generate-hashes", "--no-header",
                     "--python", python["executable"], "-o", str(out), *req.index.uv_args()], what, progress)
        else:
            if source.name == "pyproject.toml":
                raise UsageError("resolving pyproject.toml needs uv (pip install uv)")
            _pip_compile(python, source, out, req.index, what)
        pins = out.read_text(encoding="utf-8")
    try:
        locks.parse(pins, "resolved lock")  # uv's output must be a complete lock
    except FormatError:  # a local wheel written back as a relative path: absolute, as the lock is used elsewhere
        pins = locks.render(locks.parse(pins, "resolved lock", base=Path.cwd()))
    resolved = locks.render_header(header) + pins
    if lock_path is not None:
        _write_atomic(lock_path, resolved)
    return resolved, lock_path, True


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def lookup(store: Store, key: str) -> str | None:
    """The image built for a cache key, if it is still in the store."""
    with store.read() as conn:
        row = conn.execute('SELECT image_id FROM builds WHERE "key" = ?', (key,)).fetchone()
    image_id = row[0] if row else None
    return image_id if image_id is not None and store.has_image(image_id) else None


def build_record(store: Store, image_id: str) -> dict[str, object] | None:
    with store.read() as conn:
        row = conn.execute('SELECT "key", lock, info FROM builds WHERE image_id = ? ORDER BY created DESC',
                           (image_id,)).fetchone()
    if row is None:
        return None
    return {"key": row[0], "lock": row[1], **json.loads(row[2])}


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
        raise BuildError(f"{what}: {'; '.join(lines[-2:]) or f'exit code {proc.returncode}'}",
                         details=proc.stdout + proc.stderr)


def _pip_compile(python: dict[str, str], source: Path, out: Path, index: IndexOptions, what: str) -> None:
    """The pip fallback: a dry-run install report gives the resolved set and each artifact's sha256."""
    report = out.with_suffix(".json")
    _run([python["executable"], "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
          "--disable-pip-version-check", "--report", str(report), "-r", str(source), *index.uv_args()], what)
    lines = []
    for item in json.loads(report.read_text())["install"]:
        archive = item.get("download_info", {}).get("archive_info", {})
        sha = archive.get("hashes", {}).get("sha256") or (archive.get("hash") or "").partition("sha256=")[2]
        if not sha:
            raise BuildError(f"{what}: pip reported no sha256 for {item['metadata']['name']}")
        pin = (f"{item['metadata']['name']} @ {item['download_info']['url']}" if item.get("is_direct")
               else f"{item['metadata']['name']}=={item['metadata']['version']}")
        lines.append(f"{pin} \\\n    --hash=sha256:{sha}\n")
    out.write_text("".join(sorted(lines, key=str.lower)))


def install(lock_text: str, python: dict[str, str], index: IndexOptions, dest: Path, tool: str = "uv",
            seed: bool = True, progress: Progress | None = None) -> None:
    """A fresh venv at ``dest`` with exactly the locked distributions, and pip when ``seed``.

    pip comes from the interpreter's own ensurepip, not an index: the same for the same
    interpreter (whose version is in the cache key), and offline.
    """
    lock_file = dest.parent / "requirements.lock"
    lock_file.write_text(lock_text, encoding="utf-8")
    if tool == "pip":
        _run([python["executable"], "-m", "venv", "--without-pip", str(dest)], "cannot create the build venv")
        _run([python["executable"], "-m", "pip", "--python", str(dest / "bin" / "python"), "install", "--quiet",
              "--disable-pip-version-check", "--no-deps", "--require-hashes", "-r", str(lock_file),
              *index.uv_args()], "cannot install the lock")
    else:
        _run_uv(["venv", "--quiet", "--python", python["executable"], "--no-python-downloads", str(dest)],
                "cannot create the build venv")
        _run_uv(["pip", "sync", "--require-hashes", "--python", str(dest / "bin" / "python"),
                 str(lock_file), *index.uv_args()], "cannot install the lock", progress)
    if seed:
        if progress is not None:
            progress("seeding pip (ensurepip)")
        # its temporary copy of the pip wheel goes in the build's scratch, which gc empties after a kill
        _run([str(dest / "bin" / "python"), "-m", "ensurepip", "--default-pip"],
             f"cannot seed pip with the ensurepip of {python['executable']} (install its ensurepip, "
             "python3-venv on Debian, or build with --no-seed)", env={**os.environ, "TMPDIR": str(dest.parent)})


def gate(store: Store, image_id: str, new: bool, test: Callable[[str], int] | None) -> None:
    """A build's --test, on a cache hit too (a gate that can be skipped is none): a failure tags
    nothing, and a new image that failed is removed again (its blobs go at the next gc)."""
    if test is None:
        return
    code = test(image_id)
    if code == 0:
        return
    left = ""
    if new and not store.image(image_id).tags:
        store.remove(image_id)
    elif not new:
        left = " (it was in the store before this build)"
    raise BuildError(f"the build's test failed (exit code {code}); image {image_id[7:19]} was not tagged{left}")


def record_build(store: Store, key: str, image_id: str, lock_text: str, info: dict[str, object],
                 tag: str | None, *, cached: bool = False) -> None:
    """Remember the image built for a cache key (unless it came from there: ``cached``) and tag
    it, so the same key installs nothing again."""
    with store.write() as conn:
        if not cached:
            conn.execute('INSERT INTO builds ("key", image_id, lock, info, created) VALUES (?, ?, ?, ?, ?) '
                         'ON CONFLICT ("key") DO UPDATE SET image_id = excluded.image_id, lock = excluded.lock, '
                         'info = excluded.info', (key, image_id, lock_text, json.dumps(info), time.time()))
        if tag is not None:
            store.set_tag(conn, tag, image_id)


def build(store: Store, req: BuildRequest, *, tag: str | None = None, lock_only: bool = False,
          test: Callable[[str], int] | None = None, reporter: Reporter | None = None,
          on_step: Callable[[str], None] = lambda _msg: None, progress: Progress | None = None) -> BuildResult:
    """Resolve (or reuse) the lock, then return the image for its cache key, installing only on a miss.

    ``test`` gets the image ID and returns an exit code; it runs on a cache hit too, and the
    image is tagged and its build recorded only when it passes (a new image that fails is
    removed again). ``on_step`` gets a line per step, ``progress`` each line uv writes.
    """
    started = time.perf_counter()
    python = find_requested(req.python)
    if req.requirements is not None and req.requirements.name == "pyproject.toml":
        on_step("note: pyproject.toml gives its dependencies only; the project itself is not installed "
                "(to include it, build its wheel and build from that: vocker build ./dist/NAME-*.whl)")
    lock_text, lock_path, resolved = lock_for(req, python, on_step, progress)
    lock = locks.parse(lock_text, str(lock_path or "lock"))
    key = locks.cache_key(lock, python, options(req.seed))
    if lock_only:
        return BuildResult(None, False, lock_path, lock_text, key, resolved, time.perf_counter() - started)
    image_id = lookup(store, key)
    cached = image_id is not None
    if image_id is None:
        # The build venv is scratch in the store, under the shared lock: gc removes what a kill leaves.
        with store.lock_shared(), scratch.in_store(store, "vocker-build-") as tmp:
            env = Path(tmp, "env")
            seeded = " and pip" if req.seed else ""
            on_step(f"installing {len(lock.pins)} locked distributions{seeded} with {installer()}")
            install(lock_text, python, req.index, env, installer(), req.seed, progress)
            from .importer import import_tree

            on_step("importing the built environment")
            result = import_tree(store, env, None, python=Path(python["executable"]), reporter=reporter)
        image_id, new = result.image_id, result.new
    else:
        new = False
    gate(store, image_id, new, test)
    info = {"python": {k: python[k] for k in ("implementation", "version", "soabi", "platform")},
            "options": options(req.seed), "input": lock.header.get("input", str(lock_path or "")),
            "pins": len(lock.pins), "index": attrs.asdict(req.index)}
    record_build(store, key, image_id, lock_text, info, tag, cached=cached)
    return BuildResult(image_id, cached, lock_path, lock_text, key, resolved, time.perf_counter() - started)


@attrs.frozen
class AuditResult:
    image_id: str
    rebuilt_id: str
    differences: tuple[str, ...]

    @property
    def matches(self) -> bool:
        return self.image_id == self.rebuilt_id


def audit(store: Store, ref: str, index: IndexOptions | None = None,
          on_step: Callable[[str], None] = lambda _msg: None) -> AuditResult:
    """Rebuild an image from its recorded lock in a fresh place and compare the IDs.

    Packages come from the indexes the build used, unless ``index`` says otherwise.
    """
    from .treediff import diff

    image_id = store.resolve(ref)
    record = build_record(store, image_id)
    if record is None:
        raise UsageError(f"image {ref} has no build record (it was imported, not built): nothing to rebuild from")
    python_facts = record["python"]
    assert isinstance(python_facts, dict)
    if index is None:
        recorded = record.get("index") or {}
        assert isinstance(recorded, dict)
        index = IndexOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()})
        gone = [f for f in index.find_links if os.path.isabs(f) and not os.path.exists(f)]
        if gone:
            raise UsageError(f"the build used --find-links {gone[0]}, which no longer exists; give the "
                             "audit its packages' source (--find-links, --index-url, --no-index)")
    python = find_requested(str(python_facts["version"]))
    if (python["soabi"], python["platform"]) != (python_facts["soabi"], python_facts["platform"]):
        raise UsageError(f"image {ref} was built for {python_facts['soabi']} on {python_facts['platform']}; "
                         f"this machine has {python['soabi']} on {python['platform']}")
    with store.lock_shared(), scratch.in_store(store, "vocker-audit-") as tmp:
        fresh = Store.open(Path(tmp, "store"))  # nothing cached can hide a difference
        on_step(f"rebuilding from the recorded lock ({record['pins']} distributions)")
        env = Path(tmp, "rebuild", "env")
        env.parent.mkdir()
        recorded_options = record.get("options") or {}
        assert isinstance(recorded_options, dict)
        install(str(record["lock"]), python, index, env, str(recorded_options.get("installer", "uv")),
                recorded_options.get("seed", "none") == "pip")
        from .importer import import_tree

        rebuilt = import_tree(fresh, env, None, python=Path(python["executable"])).image_id
        differences = () if rebuilt == image_id else tuple(diff(store, image_id, fresh, rebuilt))
        fresh.close()
    return AuditResult(image_id, rebuilt, differences)
