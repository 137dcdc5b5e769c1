"""The OCI media types and annotation keys vocker's artifacts use (docs/format.md, "Distribution")."""

from __future__ import annotations

import json
from typing import Any

from ..errors import FormatError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
#: The artifact: an image manifest of this artifactType is a vocker image.
ARTIFACT = "application/vnd.vocker.image.v1"
#: The config blob is the vocker manifest itself (canonical CBOR): its digest is the image ID.
CONFIG = "application/vnd.vocker.config.v1+cbor"
#: Every tree node reachable from one layer's root, zstd-compressed canonical CBOR.
TREES = "application/vnd.vocker.trees.v1+cbor+zstd"
#: A pack: file contents as stored, one frame after another; and its index.
PACK = "application/vnd.vocker.pack.v1"
PACK_INDEX = "application/vnd.vocker.pack.index.v1+cbor"

#: On a trees descriptor: the layer's root tree digest.
ANN_LAYER = "vnd.vocker.layer"
#: On a pack descriptor: the digest of its index (listed just before it).
ANN_INDEX = "vnd.vocker.pack.index"
#: On the manifest: the image's provenance (JSON), never part of its ID.
ANN_PROVENANCE = "vnd.vocker.provenance"
ANN_CREATED = "org.opencontainers.image.created"
ANN_REF_NAME = "org.opencontainers.image.ref.name"

ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX))


def load_json(data: bytes, limit: int, what: str) -> Any:
    """A JSON document from a remote (``what`` names it in the error), refused in one line
    when larger than ``limit`` bytes or not JSON: nothing untrusted is parsed unbounded."""
    if len(data) > limit:
        raise FormatError(f"{what} is larger than {limit} bytes; refused")
    try:
        return json.loads(data)
    except ValueError:
        raise FormatError(f"{what} is not JSON") from None
