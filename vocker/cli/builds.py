"""Commands that build images from requirements: build, lookup, audit."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import click

import contextlib

from .. import refs
from ..errors import BuildError
from ..ui import RichReporter, err, out
from .common import index_from_options, open_store, cli, index_options, with_store_options
from .completion import complete_images


class _Steps:
    """A build's steps, one line each on stderr; on a terminal, uv's latest line beside a spinner
    while it resolves, downloads and installs (gone when the step ends)."""

    def __init__(self) -> None:
        self._status: Any = None
        self._step = ""

    def step(self, message: str) -> None:
        self.stop()
        self._step = message.removesuffix("...")
        err.print(message, markup=False)

    def progress(self, line: str) -> None:
        if not err.is_terminal:
            return
        if self._status is None:
            self._status = err.status("", spinner="dots")
            self._status.start()
        self._status.update(f"{self._step}: {line}"[:200])

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


@contextlib.contextmanager
def _build_errors(steps: _Steps | None = None) -> Iterator[None]:
    """The installer's whole error output above vocker's one line: its last lines are often the cause."""
    try:
        yield
    except BuildError as exc:
        if steps is not None:
            steps.stop()
        if exc.details.strip():
            err.print(exc.details.rstrip("\n"), markup=False)
        raise
    finally:
        if steps is not None:
            steps.stop()


seed_option = click.option("--no-seed", "no_seed", is_flag=True,
                           help="Leave pip out of the image (seeded by default, so 'pip install' in it cannot "
                                "reach a pip outside it); part of the cache key.")


@cli.command("build")
@click.argument("specs", metavar="[SPEC]...", nargs=-1)
@click.option("-r", "--requirements", type=click.Path(path_type=Path, dir_okay=False),
              help="requirements.txt, an existing lock, or pyproject.toml (its dependencies; the project "
                   "itself is not installed: build its wheel and give that as SPEC).")
@click.option("--python", metavar="3.X|PATH", help="Interpreter to build for (default: the one running vocker).")
@click.option("--from", "base", metavar="IMAGE", shell_complete=complete_images,
              help="Build one layer on top of IMAGE, with its interpreter (cached per base image).")
@click.option("-t", "--tag", metavar="NAME[:TAG]", help="Tag the image (TAG defaults to 'latest').")
@click.option("--lock", "lock_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write the lock (default: beside the input, NAME.txt -> NAME.lock, FILE -> FILE.lock).")
@click.option("--lock-only", is_flag=True, help="Resolve and write the lock; build nothing.")
@click.option("--upgrade", "-U", is_flag=True, help="Re-resolve even if the lock is up to date with its input.")
@click.option("--test", "test_cmd", metavar="CMD",
              help="Shell command run inside the built environment (mounted) before tagging, also when the "
                   "image is cached; failing tags nothing and removes a newly built image.")
@seed_option
@index_options
@with_store_options
def build_cmd(specs: tuple[str, ...], requirements: Path | None, python: str | None, base: str | None,
              tag: str | None, lock_path: Path | None, lock_only: bool, upgrade: bool, test_cmd: str | None,
              no_seed: bool, **index: Any) -> None:
    """Build an image from requirements: resolve a lock, install exactly it, import.

    SPECs are requirements as uv takes them: 'rich>=13', a local wheel ./dist/x.whl,
    'pkg @ file:///path/pkg.whl' or a URL (pinned by hash in the lock). The cache key is
    the pinned lock + interpreter + platform + options: building the same lock again
    returns the stored image without installing anything. pip is seeded into the image
    (from the interpreter's ensurepip) unless --no-seed. With --from IMAGE the lock is
    installed over IMAGE with its interpreter and committed as one layer; the key also
    holds IMAGE's ID.
    """
    from ..build import BuildRequest, build

    tag = refs.new_tag(tag) if tag else None
    if specs and requirements:
        raise click.UsageError("give either SPECs or -r FILE, not both")
    if requirements is not None and requirements.suffix == ".toml" and requirements.name != "pyproject.toml":
        raise click.UsageError("-r takes a requirements file, a lock or pyproject.toml")
    req = BuildRequest(tuple(specs), requirements, python, lock_path, index_from_options(**index), upgrade,
                       seed=not no_seed)
    store = open_store()

    steps = _Steps()

    def run_test(image_id: str) -> int:
        from ..running import run_in

        steps.step(f"testing: {test_cmd}")
        return run_in(store, image_id, ["/bin/sh", "-c", test_cmd or "true"])

    with _build_errors(steps):
        if base is not None:
            from ..deriving import build_from

            result = build_from(store, base, req, tag=tag, lock_only=lock_only,
                                test=run_test if test_cmd else None, reporter=RichReporter(), on_step=steps.step,
                                progress=steps.progress)
        else:
            result = build(store, req, tag=tag, lock_only=lock_only, test=run_test if test_cmd else None,
                           reporter=RichReporter(), on_step=steps.step, progress=steps.progress)
    where = f" -> {result.lock_path}" if result.lock_path else ""
    out.print(f"lock: {'resolved' if result.resolved else 'up to date'}{where}", markup=False)
    if lock_only:
        return
    state = "cached: nothing installed" if result.cached else "built"
    out.print(f"{state}: {tag or result.image_id} ({result.image_id}) in {result.seconds:.2f}s", markup=False)


@cli.command("lookup")
@click.argument("lockfile", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--python", metavar="3.X|PATH", help="Interpreter the image would be for (default: vocker's).")
@seed_option
@with_store_options
def lookup_cmd(lockfile: Path, python: str | None, no_seed: bool) -> None:
    """Is there a stored image for this lock? Prints it (exit 0) or says no (exit 1)."""
    from .. import locks
    from ..build import lookup, options
    from ..pythons import find_requested

    lock = locks.parse(lockfile.read_text(encoding="utf-8"), str(lockfile))
    info = find_requested(python)
    key = locks.cache_key(lock, info, options(seed=not no_seed))
    store = open_store()
    image_id = lookup(store, key)
    if image_id is None:
        out.print(f"no image for {lockfile} (python {info['version']}, {info['platform']})", markup=False)
        sys.exit(1)
    record = store.image(image_id)
    out.print(f"{image_id} {', '.join(record.tags) or '<untagged>'}", markup=False)


@cli.command("audit")
@click.argument("image_ref", metavar="IMAGE", shell_complete=complete_images)
@index_options
@with_store_options
def audit_cmd(image_ref: str, **index: Any) -> None:
    """Rebuild an image from its recorded lock in a fresh place; exit 1 if the ID differs."""
    from ..build import audit

    explicit = index["index_url"] or index["extra_index_url"] or index["find_links"] or index["no_index"]
    with _build_errors():
        result = audit(open_store(), image_ref, index_from_options(**index) if explicit or index["offline"] else None,
                       on_step=lambda m: err.print(m, markup=False))
    if result.matches:
        out.print(f"OK: rebuilding gives the same image {result.image_id}", markup=False)
        return
    out.print(f"MISMATCH: the image is {result.image_id}, the rebuild gives {result.rebuilt_id}", markup=False)
    for line in result.differences:
        out.print(f"  {line}", markup=False)
    sys.exit(1)
