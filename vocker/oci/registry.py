"""An OCI distribution registry as a Remote (the /v2/ API), and where a REF points.

A REF is a registry reference (``HOST[:PORT]/NAME[:TAG|@DIGEST]``, docker's rules: a first
component without a dot or port is a Docker Hub name), a directory (an image layout: a path
starting with ``/``, ``.`` or ``~``, or ``oci:PATH``; ``file://``), or a static server
(``http://``, ``https://`` URL of a layout). A tag follows the last ``:`` of the path.
Registries on localhost/127.0.0.1 (or with ``--insecure``) are spoken to over plain HTTP.
"""

from __future__ import annotations

import re
import threading
import urllib.parse
from pathlib import Path

import attrs

from ..digest import is_digest
from ..errors import UsageError
from . import auth, media
from .http import Client, range_body, range_header, ranged, status_error
from .layout import LayoutDir, find_in_index, parse_index
from .remote import Remote, TransferError

DEFAULT_TAG = "latest"
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
_REPO_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@attrs.define
class Registry:
    host: str
    repo: str
    scheme: str
    client: Client
    push: bool = False  # ask tokens for push too
    #: another repository of this registry that holds the image's blobs (where it was pulled from):
    #: a blob missing here is mounted from there instead of sent
    mount_from: str | None = None
    _auth: dict[str, str] = attrs.field(factory=dict)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    @property
    def name(self) -> str:
        return f"{self.host}/{self.repo}"

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}/v2/{self.repo}/{path}"

    def _request(self, method: str, url: str, headers: dict[str, str] | None = None, body: bytes | None = None):  # type: ignore[no-untyped-def]
        """A request, answering an auth challenge once (and keeping the answer for later requests)."""
        r = self.client.request(method, url, headers, body, auth=self._auth)
        if r.status == 401 and r.header("www-authenticate"):
            scope = f"repository:{self.repo}:{'pull,push' if self.push else 'pull'}"
            with self._lock:
                self._auth = auth.authorize(self.client, r.header("www-authenticate"), self.host, scope,
                                            auth.credentials(self.host))
            r = self.client.request(method, url, headers, body, auth=self._auth)
            if r.status == 401:
                raise TransferError(f"{self.host} refused access to {self.repo}")
        return r

    def ping(self) -> None:
        r = self._request("GET", f"{self.scheme}://{self.host}/v2/")
        if r.status != 200:
            raise status_error(r, f"{self.host}/v2/")

    def has_blob(self, digest: str) -> bool:
        r = self._request("HEAD", self.url(f"blobs/{digest}"))
        if r.status in (200, 404):
            return r.status == 200
        raise status_error(r, f"HEAD blob {digest}")

    def get_blob(self, digest: str) -> bytes:
        r = self._request("GET", self.url(f"blobs/{digest}"))
        if r.status == 404:
            raise TransferError(f"blob {digest} is missing in {self.name}")
        if r.status != 200:
            raise status_error(r, f"blob {digest}")
        return r.body

    def get_range(self, digest: str, start: int, end: int) -> bytes:
        url = self.url(f"blobs/{digest}")
        return range_body(self._request("GET", url, range_header(start, end)), url, start, end)

    def mount_blob(self, digest: str) -> bool:
        if self.mount_from is None or self.mount_from == self.repo:
            return False
        r = self._request("POST", self.url(f"blobs/uploads/?mount={digest}&from={self.mount_from}"),
                          {"Content-Length": "0"}, b"")
        return r.status == 201  # 202: the registry lacks it there too and opened an upload (left unused)

    def put_blob(self, digest: str, data: bytes) -> None:
        r = self._request("POST", self.url("blobs/uploads/"), {"Content-Length": "0"}, b"")
        if r.status not in (201, 202) or not r.header("location"):
            raise status_error(r, "starting a blob upload")
        if r.status == 201:
            return
        location = urllib.parse.urljoin(r.url, r.header("location"))
        location += ("&" if "?" in location else "?") + f"digest={urllib.parse.quote(digest)}"
        r = self._request("PUT", location, {"Content-Type": "application/octet-stream",
                                             "Content-Length": str(len(data))}, data)
        if r.status not in (201, 204):
            raise status_error(r, f"uploading blob {digest}")

    def get_manifest(self, ref: str) -> bytes:
        r = self._request("GET", self.url(f"manifests/{ref}"), {"Accept": media.ACCEPT})
        if r.status == 404:
            raise UsageError(f"no image {self.name}{'@' if is_digest(ref) else ':'}{ref}")
        if r.status != 200:
            raise status_error(r, f"manifest {ref}")
        return r.body

    def put_manifest(self, tag: str, data: bytes, media_type: str) -> None:
        r = self._request("PUT", self.url(f"manifests/{tag}"), {"Content-Type": media_type}, data)
        if r.status not in (200, 201):
            raise status_error(r, f"uploading the manifest of {self.name}:{tag}")

    def tags(self) -> list[str]:
        import json

        r = self._request("GET", self.url("tags/list"))
        if r.status == 404:
            return []
        if r.status != 200:
            raise status_error(r, "tags list")
        try:
            tags = json.loads(r.body).get("tags") or []
        except (ValueError, AttributeError):
            raise TransferError(f"{self.name} answered a bad tags list") from None
        return sorted(t for t in tags if isinstance(t, str))


@attrs.define
class StaticServer:
    """An image layout served by any HTTP(S) file server (read-only)."""

    base: str  # URL of the layout's directory, without a trailing slash
    client: Client

    @property
    def name(self) -> str:
        return self.base

    def _get(self, path: str) -> bytes:
        r = self.client.request("GET", f"{self.base}/{path}")
        if r.status == 404:
            raise TransferError(f"{path} is missing on {self.base}")
        if r.status != 200:
            raise status_error(r, f"{self.base}/{path}")
        return r.body

    def has_blob(self, digest: str) -> bool:
        return self.client.request("HEAD", f"{self.base}/blobs/sha256/{digest[7:]}").status == 200

    def get_blob(self, digest: str) -> bytes:
        return self._get(f"blobs/sha256/{digest[7:]}")

    def get_range(self, digest: str, start: int, end: int) -> bytes:
        return ranged(self.client, f"{self.base}/blobs/sha256/{digest[7:]}", start, end)

    def mount_blob(self, digest: str) -> bool:
        return False

    def put_blob(self, digest: str, data: bytes) -> None:
        raise UsageError(f"cannot push to a static server ({self.base}): push to a directory and serve that")

    def get_manifest(self, ref: str) -> bytes:
        return self.get_blob(find_in_index(parse_index(self._get("index.json"), self.base), ref, self.base))

    def put_manifest(self, tag: str, data: bytes, media_type: str) -> None:
        self.put_blob("", data)

    def tags(self) -> list[str]:
        from .layout import ref_name

        return sorted({n for n in map(ref_name, parse_index(self._get("index.json"), self.base)) if n})


def _split_tag(path: str) -> tuple[str, str | None]:
    """``path:tag`` -> (path, tag) when the part after the last ':' is a tag (no '/')."""
    head, sep, tail = path.rpartition(":")
    if sep and head and "/" not in tail and _TAG_RE.fullmatch(tail):
        return head, tail
    return path, None


def locate(ref: str, *, insecure: bool = False, push: bool = False, client: Client | None = None) -> tuple[Remote, str]:
    """(the Remote a REF points to, the tag or digest it names)."""
    client = client or Client()
    if "@" in ref and is_digest(ref.rpartition("@")[2]):
        where, _, name = ref.rpartition("@")
        remote, _ = locate(where, insecure=insecure, push=push, client=client)
        return remote, name
    if ref.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(ref)
        path, tag = _split_tag(parts.path)
        return StaticServer(urllib.parse.urlunsplit(parts._replace(path=path.rstrip("/"))), client), tag or DEFAULT_TAG
    if ref.startswith("file://"):
        ref = urllib.parse.unquote(urllib.parse.urlsplit(ref).path)
    elif ref.startswith("oci:"):
        ref = ref[4:]
    elif not ref.startswith(("/", ".", "~")):
        return _registry(ref, insecure, push, client)
    path, tag = _split_tag(ref)
    return LayoutDir(Path(path).expanduser()), tag or DEFAULT_TAG


def _registry(ref: str, insecure: bool, push: bool, client: Client) -> tuple[Registry, str]:
    first, _, rest = ref.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        host = first
    else:
        host, rest = auth.DOCKER_HUB, ref if "/" in ref else f"library/{ref}"
    repo, tag = _split_tag(rest)
    if not _REPO_RE.fullmatch(repo):
        raise UsageError(f"invalid reference {ref!r}: expected HOST[:PORT]/NAME[:TAG], a directory or a URL")
    api_host = "registry-1.docker.io" if host == auth.DOCKER_HUB else host
    plain = insecure or host.split(":")[0] in ("localhost", "127.0.0.1") or host.startswith("[::1]")
    return Registry(api_host, repo, "http" if plain else "https", client, push), tag or DEFAULT_TAG


def local_tag(remote: Remote, name: str, given: str | None) -> str | None:
    """The tag a pulled image gets: ``given``, else the remote repository's name and tag when valid here."""
    from .. import refs

    if given:
        return refs.new_tag(given)
    if is_digest(name):
        return None
    repo = remote.repo if isinstance(remote, Registry) else Path(remote.name.rstrip("/")).name
    try:
        return refs.new_tag(f"{repo}:{name}")
    except UsageError:
        return None


def is_remote_ref(ref: str) -> bool:
    """Whether a reference names something outside the store (for commands that take both)."""
    if ref.startswith(("http://", "https://", "file://", "oci:", "/", "./", "../", "~")):
        return True
    first, _, rest = ref.partition("/")
    return bool(rest) and ("." in first or ":" in first or first == "localhost")
