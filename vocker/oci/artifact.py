"""An image as an OCI artifact: the store's objects out to a Remote (push) and back (pull).

The OCI manifest lists, per vocker layer (lowest first), one trees blob (every tree node
reachable from the layer's root) followed by the packs of the file contents that layer
brings, each pack preceded by its index. The config blob is the vocker manifest itself, so
its digest is the image ID, and a receiver checks everything against digests it holds:
manifest -> config (image ID) -> trees (node digests) -> pack index -> frames (file digests).

Pulling records file contents pack by pack (an interrupted pull resumes without fetching
them again; gc waits for it) and the trees, manifest and tag last, in one transaction; with
``all_or_nothing`` (a load from a file) nothing is recorded until everything is checked.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Iterator

import attrs
import pyzstd

from .. import cbor, interrupts
from .. import partial as partials
from ..blobstore import Staged, chunk_digests_of, decode
from ..digest import check_digest, digest_bytes, is_digest
from ..errors import FormatError, IntegrityError, UsageError
from ..manifest import Manifest
from ..parallel import pmap
from ..progress import NullReporter, Reporter
from ..store import Store
from ..tree import MAX_DEPTH, MAX_ENTRIES, Entry, Kind, Tree
from . import media, packs
from .http import RangeIgnored
from .remote import Remote, fetch_blob, retrying

TREES_VERSION = 1
#: Refused before parsing: a registry caps manifests at 4 MiB too.
MANIFEST_MAX = 4 << 20
LAYERS_MAX = 10_000
TREES_MAX = 512 << 20  # decompressed trees blob
#: Fetch only the needed frames of a pack (Range) when they are less than this share of it.
RANGE_SHARE = 0.5
#: A pull makes what it fetched durable and records it at most this often (seconds): one syncfs
#: per batch, and an interrupted pull loses at most this much work.
COMMIT_EVERY = 1.0
#: Needed frames closer than this are fetched in one range.
RANGE_GAP = 64 << 10


@attrs.define
class Transfer:
    """What a push or pull sent/fetched against what it skipped (blobs and bytes)."""

    image_id: str = ""
    moved: int = 0
    moved_bytes: int = 0
    skipped: int = 0
    skipped_bytes: int = 0
    new: bool = True
    seconds: float = 0.0
    tag: str | None = None
    _lock: threading.Lock = attrs.field(factory=threading.Lock, repr=False)

    def count(self, moved: bool, nbytes: int) -> None:
        with self._lock:
            if moved:
                self.moved, self.moved_bytes = self.moved + 1, self.moved_bytes + nbytes
            else:
                self.skipped, self.skipped_bytes = self.skipped + 1, self.skipped_bytes + nbytes


# -- push ---------------------------------------------------------------------


def _descriptor(media_type: str, data: bytes, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"mediaType": media_type, "digest": digest_bytes(data), "size": len(data)}
    if annotations:
        out["annotations"] = annotations
    return out


def _walk_files(store: Store, root: str, nodes: dict[str, bytes]) -> Iterator[tuple[tuple[str, ...], Entry]]:
    """(path, entry) of the files below ``root`` with a blob, in path order (depth first, names
    sorted), a shared directory once; every node's bytes land in ``nodes``."""
    stack: list[tuple[str, tuple[str, ...]]] = [(root, ())]
    while stack:
        digest, path = stack.pop()
        if digest in nodes:
            continue
        nodes[digest] = store.object_bytes(digest, "tree")
        subdirs = []
        for e in store.tree(digest).entries:
            if e.kind is Kind.FILE and e.digest is not None:
                yield path + (e.name,), e
            elif e.kind is Kind.DIR:
                subdirs.append((e.digest, path + (e.name,)))
        stack.extend(reversed(subdirs))  # type: ignore[arg-type]


def trees_blob(root: str, nodes: dict[str, bytes]) -> bytes:
    body = cbor.dumps({"v": TREES_VERSION, "root": root, "nodes": [nodes[d] for d in sorted(nodes)]})
    return pyzstd.compress(body, 3)


def check_complete(store: Store, image_id: str, shown: str) -> None:
    """Refuse to send a partial image (a lazy mount's): its contents are not all here."""
    if image_id in store.partial_images():
        raise UsageError(f"image {shown} is partial (mounted lazily, its file contents not all here); "
                         "'vocker pull' it first")


def push(store: Store, image_ref: str, remote: Remote, tag: str, reporter: Reporter | None = None,
         workers: int | None = None) -> Transfer:
    """Send an image to ``remote`` under ``tag``: only the blobs it lacks."""
    started = time.perf_counter()
    reporter = reporter or NullReporter()
    image_id = store.resolve(image_ref)
    check_complete(store, image_id, image_ref)
    result = Transfer(image_id=image_id, tag=tag)
    config = store.object_bytes(image_id, "manifest")
    manifest = Manifest.decode(config)
    record = store.image(image_id)
    layers: list[dict[str, Any]] = []
    jobs: list[tuple[str, Any]] = []  # ("blob", (descriptor, bytes)) or ("pack", [digests])
    sent: set[str] = set()
    for root in manifest.layers:
        store.prefetch_trees(root)
        nodes: dict[str, bytes] = {}
        order: dict[str, str] = {}  # digest -> group key, in path order
        for path, e in _walk_files(store, root, nodes):
            if e.digest not in sent and e.digest not in order:
                order[e.digest] = packs.group_key(path)  # type: ignore[index]
        sent.update(order)
        infos = store.blob_infos(order)
        trees = trees_blob(root, nodes)
        desc = _descriptor(media.TREES, trees, {media.ANN_LAYER: root})
        layers.append(desc)
        jobs.append(("blob", (desc, trees)))
        for digests in packs.group((k, d, infos[d].stored_size) for d, k in order.items()):
            slot = len(layers)
            layers += [{}, {}]  # filled by the job: the index, then the pack
            jobs.append(("pack", (slot, digests)))
    total = sum(i.stored_size for i in store.blob_infos(sent).values())
    reporter.begin(f"Pushing {image_ref}", total)

    def send(desc: dict[str, Any], data: bytes, check=None) -> None:  # type: ignore[no-untyped-def]
        digest = desc["digest"]
        if remote.has_blob(digest) or remote.mount_blob(digest):
            result.count(False, len(data))
            return
        if check is not None:
            check()
        retrying(f"upload of {digest}", lambda: remote.put_blob(digest, data))
        result.count(True, len(data))

    def run(job: tuple[str, Any]) -> None:
        kind, arg = job
        if kind == "blob":
            send(*arg)
            return
        slot, digests = arg
        infos = store.blob_infos(digests)
        frames = [(d, store.blobs.path(d).read_bytes(), infos[d].size, infos[d].codec, store.blob_chunks(infos[d]))
                  for d in digests]
        pack, index = packs.build(frames)
        index_desc = _descriptor(media.PACK_INDEX, index)
        pack_desc = _descriptor(media.PACK, pack, {media.ANN_INDEX: index_desc["digest"]})
        layers[slot], layers[slot + 1] = index_desc, pack_desc

        checked: list[bool] = []

        def check() -> None:  # what leaves must be what the store holds: checked before it is sent
            if checked:  # the index names the chunk digests too: checked once, before either is sent
                return
            for d, stored, size, codec, chunks in frames:
                data = decode(stored, codec, d)
                if len(data) != size or chunk_digests_of(data) != chunks:
                    raise IntegrityError(f"corrupt blob {d} in the local store ('vocker verify' tells more)")
            checked.append(True)

        send(index_desc, index, check)
        send(pack_desc, pack, check)
        reporter.advance(len(pack))

    try:
        pmap(run, jobs, workers)
    finally:
        reporter.end()
    send(_descriptor(media.CONFIG, config), config)
    doc = {
        "schemaVersion": 2, "mediaType": media.OCI_MANIFEST, "artifactType": media.ARTIFACT,
        "config": _descriptor(media.CONFIG, config), "layers": layers,
        "annotations": {media.ANN_CREATED: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
                        media.ANN_PROVENANCE: json.dumps(record.provenance, sort_keys=True)},
    }
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    retrying("manifest upload", lambda: remote.put_manifest(tag, body, media.OCI_MANIFEST))
    result.seconds = time.perf_counter() - started
    return result


# -- pull ---------------------------------------------------------------------


@attrs.frozen
class RemoteImage:
    """A remote manifest, checked as far as reading it goes (not the blobs it names)."""

    digest: str  # of the OCI manifest
    doc: dict[str, Any]
    image_id: str
    config_size: int
    trees: tuple[tuple[str, dict[str, Any]], ...]  # (layer root, trees descriptor)
    packs: tuple[tuple[dict[str, Any], dict[str, Any]], ...]  # (index descriptor, pack descriptor)

    @property
    def provenance(self) -> dict[str, Any]:
        try:
            value = json.loads(self.doc.get("annotations", {}).get(media.ANN_PROVENANCE, "{}"))
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


def _checked_descriptor(raw: object, media_type: str | None = None) -> dict[str, Any]:
    if not isinstance(raw, dict) or not is_digest(raw.get("digest")) or not isinstance(raw.get("size"), int) \
            or isinstance(raw.get("size"), bool) or raw["size"] < 0 or not isinstance(raw.get("mediaType"), str):
        raise FormatError("corrupt remote manifest: bad descriptor")
    if media_type is not None and raw["mediaType"] != media_type:
        raise FormatError(f"corrupt remote manifest: expected {media_type}, got {raw['mediaType']!r}")
    ann = raw.get("annotations", {})
    if not isinstance(ann, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in ann.items()):
        raise FormatError("corrupt remote manifest: bad annotations")
    return raw


def parse_manifest(body: bytes, where: str) -> RemoteImage:
    """Read an OCI manifest naming a vocker image; FormatError (one line) for anything else."""
    doc = media.load_json(body, MANIFEST_MAX, f"manifest from {where}")
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise FormatError(f"manifest from {where} is not an OCI image manifest")
    if doc.get("artifactType") != media.ARTIFACT:
        what = doc.get("artifactType") or doc.get("config", {}).get("mediaType") if isinstance(doc.get("config"), dict) \
            else doc.get("mediaType")
        raise UsageError(f"{where} is not a vocker image (its type is {what!r}); vocker reads only "
                         f"artifacts of type {media.ARTIFACT}")
    config = _checked_descriptor(doc.get("config"), media.CONFIG)
    raw_layers = doc.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers or len(raw_layers) > LAYERS_MAX:
        raise FormatError(f"corrupt manifest from {where}: bad layers")
    trees, pack_list = [], []
    index: dict[str, Any] | None = None
    for raw in raw_layers:
        desc = _checked_descriptor(raw)
        kind = desc["mediaType"]
        if kind == media.TREES:
            root = check_digest(desc.get("annotations", {}).get(media.ANN_LAYER), "layer root")
            trees.append((root, desc))
        elif kind == media.PACK_INDEX:
            index = desc
        elif kind == media.PACK:
            if index is None or desc.get("annotations", {}).get(media.ANN_INDEX) != index["digest"]:
                raise FormatError(f"corrupt manifest from {where}: a pack without its index")
            pack_list.append((index, desc))
            index = None
        else:
            raise FormatError(f"corrupt manifest from {where}: unknown layer type {kind!r}")
    return RemoteImage(digest_bytes(body), doc, config["digest"], config["size"], tuple(trees), tuple(pack_list))


def _read_trees(data: bytes, root: str, desc: dict[str, Any]) -> dict[str, bytes]:
    """The nodes of a trees blob, each checked (canonical, names) and keyed by its digest."""
    try:
        body, _ = packs.bounded_decompress(data, TREES_MAX)
    except pyzstd.ZstdError as exc:
        raise FormatError(f"corrupt trees blob {desc['digest']}: {exc}") from None
    if len(body) > TREES_MAX:
        raise FormatError(f"trees blob {desc['digest']} expands past {TREES_MAX} bytes; refused")
    raw = cbor.loads(body, "trees blob")
    if not isinstance(raw, dict) or set(raw) != {"v", "root", "nodes"} or raw["v"] != TREES_VERSION \
            or raw["root"] != root or not isinstance(raw["nodes"], list):
        raise FormatError(f"corrupt trees blob {desc['digest']}")
    nodes: dict[str, bytes] = {}
    for node in raw["nodes"]:
        if not isinstance(node, bytes):
            raise FormatError(f"corrupt trees blob {desc['digest']}")
        Tree.decode(node)  # canonical, names checked: '..', '/', NUL are refused here
        nodes[digest_bytes(node)] = node
    return nodes


def _expand(roots: tuple[str, ...], tree_of) -> tuple[int, int, dict[str, int]]:  # type: ignore[no-untyped-def]
    """(files, bytes, blob digest -> size) of the layers, refusing what passes the format's limits.
    Counted per distinct node (memo), so a tiny tree naming billions of files is refused cheaply."""
    memo: dict[str, tuple[int, int, int, int]] = {}  # digest -> (entries, files, bytes, height)
    blobs: dict[str, int] = {}

    def visit(digest: str, depth: int) -> tuple[int, int, int, int]:
        if digest in memo:
            return memo[digest]
        if depth > MAX_DEPTH:
            raise FormatError(f"image is deeper than {MAX_DEPTH} directory levels; refused")
        entries = files = size = height = 0
        for e in tree_of(digest).entries:
            entries += 1
            if e.kind is Kind.FILE:
                files, size = files + 1, size + e.size
                if e.digest is not None and blobs.setdefault(e.digest, e.size) != e.size:
                    raise FormatError(f"corrupt tree: entries record different sizes for blob {e.digest}")
            elif e.kind is Kind.DIR:
                sub = visit(e.digest, depth + 1)  # type: ignore[arg-type]
                entries, files, size = entries + sub[0], files + sub[1], size + sub[2]
                height = max(height, sub[3] + 1)
            if entries > MAX_ENTRIES:
                raise FormatError(f"image expands to more than {MAX_ENTRIES} entries; refused")
        memo[digest] = (entries, files, size, height)
        return memo[digest]

    files = size = 0
    for root in roots:
        _, f, s, _ = visit(root, 0)
        files, size = files + f, size + s
    return files, size, blobs


def resolve_remote(remote: Remote, ref: str) -> RemoteImage:
    """The manifest ``ref`` (tag or digest) names on ``remote``, checked against its digest when given by digest."""
    def get() -> bytes:
        body = remote.get_manifest(ref)
        if is_digest(ref) and digest_bytes(body) != ref:
            raise IntegrityError(f"manifest {ref} from {remote.name} does not match its digest")
        return body

    return parse_manifest(retrying(f"manifest {ref}", get), f"{remote.name}:{ref}" if ":" not in ref else ref)


def inspect(remote: Remote, ref: str) -> dict[str, Any]:
    """What ``vocker image inspect`` shows of a remote image: its manifest and provenance, nothing pulled."""
    image = resolve_remote(remote, ref)
    config = fetch_blob(remote, image.image_id, image.config_size)
    return {"id": image.image_id, "remote": remote.name, "ref": ref, "digest": image.digest,
            "manifest": Manifest.decode(config).to_cbor(), "provenance": image.provenance,
            "layers": len(image.trees), "packs": len(image.packs),
            "bytes": sum(p["size"] for _, p in image.packs) + sum(t["size"] for _, t in image.trees)}


@attrs.frozen
class Structure:
    """What a pull knows before any file content: the image's config and trees, checked."""

    config: bytes  # the vocker manifest's bytes (its digest is the image ID)
    manifest: Manifest
    nodes: dict[str, bytes]  # the tree nodes to record
    files: int
    size: int
    needed: dict[str, int]  # blob digest -> size, of every file content


def fetch_structure(store: Store, remote: Remote, image: RemoteImage, result: Transfer) -> Structure:
    """The config and the trees of a remote image, each checked, and what its layers expand to."""
    config = fetch_blob(remote, image.image_id, image.config_size)
    manifest = Manifest.decode(config)
    roots = {root for root, _ in image.trees}
    if tuple(r for r, _ in image.trees) != manifest.layers and set(manifest.layers) != roots:
        raise FormatError(f"corrupt image from {remote.name}: its trees do not match its layers")
    nodes: dict[str, bytes] = {}
    for root, desc in image.trees:
        data = fetch_blob(remote, desc["digest"], desc["size"])
        nodes.update(_read_trees(data, root, desc))
        result.count(True, len(data))
    trees: dict[str, Tree] = {}

    def tree_of(digest: str) -> Tree:
        if digest not in trees:
            if digest in nodes:
                trees[digest] = Tree.decode(nodes[digest], check_canonical=False)
            else:
                try:
                    trees[digest] = store.tree(digest)
                except IntegrityError:
                    raise FormatError(f"image from {remote.name} lacks its tree {digest}") from None
        return trees[digest]

    files, size, needed = _expand(manifest.layers, tree_of)
    return Structure(config, manifest, {d: n for d, n in nodes.items() if d in trees}, files, size, needed)


@attrs.frozen
class PackPlan:
    """A pack that holds contents the store lacks: its checked index and the frames wanted from it."""

    desc: dict[str, Any]
    index: packs.PackIndex
    index_bytes: bytes
    frames: list[packs.Frame]


def plan_packs(remote: Remote, image: RemoteImage, missing: dict[str, int], result: Transfer,
               workers: int | None = None) -> list[PackPlan]:
    """The packs to fetch ``missing`` (digest -> size) from, each content from the first pack
    holding it; every index checked, and an image whose packs lack a content refused."""
    indexes: dict[str, tuple[packs.PackIndex, bytes]] = {}

    def read_index(pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
        index_desc, pack_desc = pair
        if not missing:
            result.count(False, pack_desc["size"])
            return
        data = fetch_blob(remote, index_desc["digest"], index_desc["size"])
        indexes[pack_desc["digest"]] = packs.PackIndex.decode(data, pack_desc["size"]), data

    pmap(read_index, image.packs, workers)
    claimed: set[str] = set()
    plans = []
    for _, pack_desc in image.packs:
        if pack_desc["digest"] not in indexes:
            continue
        index, data = indexes[pack_desc["digest"]]
        frames = [f for f in index.frames if f.digest in missing and f.digest not in claimed]
        for f in frames:
            if f.size != missing[f.digest]:
                raise FormatError(f"corrupt image from {remote.name}: pack entry {f.digest} records "
                                  f"{f.size} bytes, its tree entry {missing[f.digest]}")
        claimed.update(f.digest for f in frames)
        if frames:
            plans.append(PackPlan(pack_desc, index, data, frames))
        else:
            result.count(False, pack_desc["size"])
    lost = set(missing) - claimed
    if lost:
        raise IntegrityError(f"image from {remote.name} lacks the contents of {len(lost)} file(s), "
                             f"e.g. {sorted(lost)[0]}")
    return plans


def pull(store: Store, remote: Remote, ref: str, tag: str | None, reporter: Reporter | None = None,
         workers: int | None = None, all_or_nothing: bool = False, provenance: dict[str, Any] | None = None) -> Transfer:
    """Fetch an image into the store: only the file contents it lacks, each checked before use.
    A partial image (a lazy mount's) is completed."""
    started = time.perf_counter()
    reporter = reporter or NullReporter()
    recording = interrupts.recording()
    image = resolve_remote(remote, ref)
    result = Transfer(image_id=image.image_id, tag=tag)
    partial = image.image_id in store.partial_images()
    if store.has_image(image.image_id) and not partial:  # nothing to fetch: just the tag
        fetch_blob(remote, image.image_id, image.config_size)  # the remote image is a vocker image
        recording.check = lambda: f"image {image.image_id} is recorded"
        if tag is not None:
            with store.write() as conn:
                store.set_tag(conn, tag, image.image_id)
        result.new = False
        result.skipped = 1 + len(image.trees) + 2 * len(image.packs)
        result.skipped_bytes = sum(p["size"] for _, p in image.packs)
        result.seconds = time.perf_counter() - started
        return result
    structure = fetch_structure(store, remote, image, result)
    config, files, size, needed = structure.config, structure.files, structure.size, structure.needed
    with store.lock_shared():  # gc must not take contents recorded before the image that needs them
        have = store.blob_infos(needed)
        missing = {d: s for d, s in needed.items() if d not in have}
        lock = threading.Lock()
        staged_all: list[Staged] = []
        wanted_packs = [(p.desc, p.frames) for p in plan_packs(remote, image, missing, result, workers)]
        reporter.begin(f"Pulling {ref}", sum(sum(f.length for f in fr) for _, fr in wanted_packs))

        last_commit = [float("-inf")]  # the first pack is kept at once, later ones once a second

        def fetch(item: tuple[dict[str, Any], list[packs.Frame]]) -> None:
            pack_desc, frames = item
            checked = fetch_frames(remote, pack_desc, frames, result)  # every frame checked before any is staged
            staged: list[Staged] = []
            try:
                for f, stored, data in checked:
                    staged.append(store.blobs.stage_stored(f.digest, stored, f.codec, data))
            except BaseException:
                store.blobs.discard(staged)
                raise
            reporter.advance(sum(f.length for f in frames))
            with lock:
                staged_all.extend(staged)
                if all_or_nothing or time.monotonic() - last_commit[0] < COMMIT_EVERY:
                    return
                batch = staged_all[:]
                del staged_all[:]
                last_commit[0] = time.monotonic()
            # Durable and recorded a batch at a time (one syncfs each): an interrupted pull keeps them
            store.blobs.commit_or_discard(batch)
            with store.write() as conn:
                store.record_staged(conn, batch)

        def recorded() -> str | None:
            if store.has_image(image.image_id):
                return f"image {tag + ' ' if tag else ''}{image.image_id} is recorded"
            if store.blob_infos(missing):  # asked after the fact: a commit may have just happened
                return "the file contents fetched so far are kept; pull again to resume"
            return None

        recording.check = recorded
        try:
            pmap(fetch, wanted_packs, workers)
            store.blobs.commit(staged_all)
        except BaseException:
            store.blobs.discard(staged_all)
            raise
        finally:
            reporter.end()
        prov = dict(image.provenance)
        prov.update(provenance or {})
        with store.write() as conn:
            store.record_staged(conn, staged_all)
            store.record_objects(conn, "tree", structure.nodes)
            store.record_image(conn, image.image_id, config, size, files, prov)
            store.complete(conn, image.image_id)
            if tag is not None:
                store.set_tag(conn, tag, image.image_id)
        partials.drop(store.blobs, missing)  # what lazy reads had fetched of them a chunk at a time
    result.seconds = time.perf_counter() - started
    return result


def fetch_frames(remote: Remote, pack_desc: dict[str, Any], frames: list[packs.Frame],
            result: Transfer) -> list[tuple[packs.Frame, bytes, bytes]]:
    """(frame, stored bytes, content) of the wanted frames, each checked: the whole pack
    (checked against its digest) when most of it is wanted or the server ignores Range, else
    one single-range GET per run of neighbouring frames."""
    def whole(pack: bytes | None = None) -> list[tuple[packs.Frame, bytes, bytes]]:
        if pack is None or len(pack) != pack_desc["size"] or digest_bytes(pack) != pack_desc["digest"]:
            pack = fetch_blob(remote, pack_desc["digest"], pack_desc["size"])
        result.count(True, len(pack))
        return [(f, pack[f.offset:f.offset + f.length], packs.content_of(f, pack[f.offset:f.offset + f.length]))
                for f in frames]

    if sum(f.length for f in frames) >= pack_desc["size"] * RANGE_SHARE:
        return whole()
    runs: list[list[packs.Frame]] = []
    for f in frames:  # frames are in offset order: neighbours share a range
        if runs and f.offset - (runs[-1][-1].offset + runs[-1][-1].length) <= RANGE_GAP:
            runs[-1].append(f)
        else:
            runs.append([f])
    out = []
    for run in runs:
        start, end = run[0].offset, run[-1].offset + run[-1].length

        def get(run=run, start=start, end=end) -> list[tuple[packs.Frame, bytes, bytes]]:
            data = remote.get_range(pack_desc["digest"], start, end)
            return [(f, data[f.offset - start:f.offset - start + f.length],
                     packs.content_of(f, data[f.offset - start:f.offset - start + f.length])) for f in run]

        try:
            out += retrying(f"pack {pack_desc['digest']}", get)
        except RangeIgnored as full:
            return whole(full.body)
        result.count(True, end - start)
    return out
