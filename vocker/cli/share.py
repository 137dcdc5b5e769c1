"""Commands that move images out of and into the store: save, load, push, pull, login, tags."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import IO, Iterator

import click

from .. import refs
from ..digest import short
from ..errors import UsageError
from ..ui import RichReporter, err, human_size, out
from .common import cli, open_store
from .completion import complete_images
from .output import Column, format_option, print_json, print_table

insecure_option = click.option("--insecure", is_flag=True,
                               help="Speak plain HTTP to the registry (always so for localhost and 127.0.0.1).")


def _summary(t, what_moved: str) -> str:  # type: ignore[no-untyped-def]
    return (f"{what_moved} {t.moved} blob{'s' if t.moved != 1 else ''} ({human_size(t.moved_bytes)}), skipped "
            f"{t.skipped} already there ({human_size(t.skipped_bytes)}) in {t.seconds:.2f}s")


@cli.command("push")
@click.argument("image_ref", metavar="IMAGE", shell_complete=complete_images)
@click.argument("ref", metavar="REF")
@insecure_option
@click.option("-j", "--jobs", type=click.IntRange(1, 64), help="Parallel transfers (default: 8).")
def push_cmd(image_ref: str, ref: str, insecure: bool, jobs: int | None) -> None:
    """Send an image to a registry (HOST[:PORT]/NAME[:TAG]) or an image layout directory.

    File contents travel in packs of a few MiB; only the blobs the other side lacks are sent,
    so pushing an image that differs in one package sends about that package.
    """
    from ..oci.artifact import check_complete, push
    from ..oci.registry import Registry, locate

    store = open_store()
    remote, tag = locate(ref, insecure=insecure, push=True)
    if "@" in ref:
        raise UsageError("push to a tag (REF[:TAG]), not to a digest")
    image_id = store.resolve(image_ref)
    check_complete(store, image_id, image_ref)
    if isinstance(remote, Registry):
        source = store.image(image_id).provenance.get("pulled_from")
        if isinstance(source, str):
            with contextlib.suppress(UsageError):
                origin, _ = locate(source, insecure=insecure)
                if isinstance(origin, Registry) and origin.host == remote.host:
                    remote.mount_from = origin.repo
    t = push(store, image_id, remote, tag, RichReporter(), jobs)
    out.print(f"Pushed {image_ref} to {remote.name}:{tag}: {_summary(t, 'sent')}", markup=False)


@cli.command("pull")
@click.argument("ref", metavar="REF")
@click.option("-t", "--tag", metavar="NAME[:TAG]", help="Tag the image here (default: the remote name and tag).")
@insecure_option
@click.option("-j", "--jobs", type=click.IntRange(1, 64), help="Parallel transfers (default: 8).")
def pull_cmd(ref: str, tag: str | None, insecure: bool, jobs: int | None) -> None:
    """Fetch an image from a registry, an image layout directory, a file:// or an http(s):// URL.

    Only the file contents the store lacks are fetched, each checked against its digest
    before it is recorded; an interrupted pull resumes where it stopped. A partial image
    (mounted lazily) is completed: pull its REF again, or its local NAME.
    """
    from ..oci.artifact import pull
    from ..oci.lazy import source_of
    from ..oci.registry import is_remote_ref, local_tag, locate

    store = open_store()
    source = None if is_remote_ref(ref) else source_of(store, ref)
    if source is not None:  # a local partial image: completed from where it came from
        ref, insecure = source["ref"], insecure or bool(source.get("insecure"))
    remote, name = locate(ref, insecure=insecure)
    local = local_tag(remote, name, tag)
    t = pull(store, remote, name, local, RichReporter(), jobs, provenance={"pulled_from": ref})
    what = "Pulled" if t.new else "Already in store:"
    out.print(f"{what} {ref} as {local or t.image_id}: {_summary(t, 'fetched')}", markup=False)
    out.print(f"  {t.image_id}", markup=False)


@contextlib.contextmanager
def _output(path: str) -> Iterator[IO[bytes]]:
    """stdout for '-', else a file written beside its destination and renamed into place when complete."""
    if path == "-":
        if sys.stdout.isatty():
            raise UsageError("refusing to write an image archive to a terminal; use -o FILE or a pipe")
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    dest = Path(path)
    tmp = dest.with_name(f".{dest.name}.vocker-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@cli.command("save")
@click.argument("image_refs", metavar="IMAGE...", nargs=-1, required=True, shell_complete=complete_images)
@click.option("-o", "--output", metavar="FILE", required=True, help="The archive to write ('-': stdout).")
def save_cmd(image_refs: tuple[str, ...], output: str) -> None:
    """Write images to one file (a tar of an OCI image layout) that 'vocker load' reads anywhere.

    It holds exactly the objects the images need, compressed, each once.
    """
    from ..oci.artifact import check_complete, push
    from ..oci.layout import TarWriter

    started = time.perf_counter()
    store = open_store()
    ids = [(ref, store.resolve(ref)) for ref in image_refs]
    for ref, image_id in ids:
        check_complete(store, image_id, ref)  # before the file is begun
    moved = 0
    with _output(output) as stream:
        writer = TarWriter.open(stream)
        for ref, image_id in ids:
            tags = store.image(image_id).tags
            tag = refs.normalize_tag(ref) if refs.normalize_tag(ref) in tags else (tags[0] if tags else image_id)
            t = push(store, image_id, writer, tag, RichReporter(), workers=1)  # one writer: a deterministic file
            moved += t.moved_bytes
        writer.close()
    where = "stdout" if output == "-" else output
    size = f"{human_size(moved)} of contents" + ("" if output == "-" else f", {human_size(os.path.getsize(output))} file")
    err.print(f"Saved {len(ids)} image{'s' if len(ids) > 1 else ''} to {where} ({size}) "
              f"in {time.perf_counter() - started:.2f}s", markup=False)


@cli.command("load")
@click.option("-i", "--input", "input_", metavar="FILE", required=True, help="The archive to read ('-': stdin).")
def load_cmd(input_: str) -> None:
    """Read images from a file 'vocker save' wrote: everything is checked before anything is recorded."""
    from .. import scratch
    from ..oci.artifact import pull
    from ..oci.layout import ref_name, unpack

    started = time.perf_counter()
    store = open_store()
    loaded = []
    with store.lock_shared(), scratch.in_store(store, "load") as tmp:
        if input_ == "-":
            layout = unpack(sys.stdin.buffer, tmp / "layout")
        else:
            try:
                f = open(input_, "rb")
            except OSError as exc:
                raise UsageError(f"cannot read {input_}: {exc.strerror}") from None
            with f:
                layout = unpack(f, tmp / "layout")
        for entry in layout._manifests():
            name = ref_name(entry)
            tag = None
            if name and not name.startswith("sha256:"):
                with contextlib.suppress(UsageError):
                    tag = refs.new_tag(name)
            t = pull(store, layout, entry["digest"], tag, RichReporter(), all_or_nothing=True,
                     provenance={"loaded_from": "-" if input_ == "-" else str(Path(input_).absolute())})
            loaded.append((tag or t.image_id, t))
    if not loaded:
        raise UsageError(f"{input_} holds no image")
    for name, t in loaded:
        what = "Loaded" if t.new else "Already in store:"
        out.print(f"{what} {name} ({short(t.image_id)}): {t.moved} blobs read", markup=False)
    new = sum(t.new for _, t in loaded)
    out.print(f"Loaded {new} new image{'s' if new != 1 else ''}, {len(loaded) - new} already in store, "
              f"in {time.perf_counter() - started:.2f}s", markup=False)


@cli.command("login")
@click.argument("host")
@click.option("-u", "--username", prompt=True, help="The user name.")
@click.option("-p", "--password", help="The password (better: --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@insecure_option
def login_cmd(host: str, username: str, password: str | None, password_stdin: bool, insecure: bool) -> None:
    """Check credentials against a registry and keep them in ~/.docker/config.json, as docker does."""
    from ..oci import auth
    from ..oci.http import Client

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif password is None:
        password = click.prompt("Password", hide_input=True)
    plain = insecure or host.split(":")[0] in ("localhost", "127.0.0.1")
    client = Client()
    r = client.request("GET", f"{'http' if plain else 'https'}://{host}/v2/")
    if r.status == 401 and r.header("www-authenticate"):
        answer = auth.authorize(client, r.header("www-authenticate"), host, None, (username, password))
        r = client.request("GET", f"{'http' if plain else 'https'}://{host}/v2/", auth=answer)
    if r.status == 401:
        raise UsageError(f"{host} refused the credentials")
    if r.status != 200:
        raise UsageError(f"{host} is not a registry (GET /v2/ answered HTTP {r.status})")
    path = auth.save_credentials(host, username, password)
    out.print(f"Login succeeded: credentials for {host} kept in {path}", markup=False)


@cli.command("tags")
@click.argument("ref", metavar="REF")
@insecure_option
@format_option
def tags_cmd(ref: str, insecure: bool, fmt: str) -> None:
    """List the tags of a remote repository (registry, layout directory or static server)."""
    from ..oci.registry import locate

    remote, _ = locate(ref, insecure=insecure)
    tags = remote.tags()
    if fmt == "json":
        print_json({"repository": remote.name, "tags": tags})
        return
    print_table((Column("TAG"),), [(t,) for t in tags], header=out.is_terminal)  # a pipe: one tag a line


@cli.group("layer")
def layer_group() -> None:
    """Work with an image's layers."""


@layer_group.command("export")
@click.argument("image_ref", metavar="IMAGE", shell_complete=complete_images)
@click.option("-o", "--output", metavar="FILE", required=True, help="The tarball to write ('-': stdout).")
@click.option("--layer", "index", type=int, default=-1, show_default="the top one",
              help="Which layer: 0 is the lowest, -1 the top.")
@click.option("--prefix", default="/opt/venv", show_default=True,
              help="Where the layer's files go in the tarball; templates are rendered for it.")
def layer_export(image_ref: str, output: str, index: int, prefix: str) -> None:
    """Write one layer as a standard OCI layer tarball (whiteouts as .wh. files) that podman,
    buildah or tar read. Only the layer's own files: no venv scaffolding, no bytecode."""
    from ..oci.layertar import write_layer

    store = open_store()
    image_id = store.resolve(image_ref)
    layers = store.manifest(image_id).layers
    if not -len(layers) <= index < len(layers):
        raise UsageError(f"image {image_ref} has {len(layers)} layer{'s' if len(layers) != 1 else ''}; "
                         f"no layer {index}")
    if not prefix.startswith("/") or any(p in ("..", ".") for p in prefix.split("/")):
        raise UsageError(f"--prefix must be an absolute path without '.' or '..': {prefix!r}")
    with store.lock_shared(), _output(output) as stream:
        entries, size = write_layer(store, layers[index], stream, prefix, int(store.image(image_id).created))
    where = "stdout" if output == "-" else output
    err.print(f"Exported layer {layers[index]} of {image_ref} to {where}: {entries} entries, "
              f"{human_size(size)} under {prefix}", markup=False)
