"""OCI values: digests, descriptors, manifests kept as bytes.

A manifest is never re-serialised: its identity is the sha256 of its exact bytes,
so it travels as :class:`Manifest` (bytes + media type) and is parsed only to find
what it points at (children, blobs, subject).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from reconciler.registry.errors import DigestMismatch, InvalidManifest, InvalidReference

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"  # the blob OCI_EMPTY describes: the config of an artifact without one
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_LIST})
# Distribution only returns Docker-Content-Digest on HEAD when the OCI types are listed.
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST))

REF_NAME = "org.opencontainers.image.ref.name"
# Cosign's tag conventions for signatures, attestations and SBOMs of a digest.
COSIGN_SUFFIXES = (".sig", ".att", ".sbom")

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_ANY_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[A-Za-z0-9=_-]+$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def sha256_digest(data: bytes) -> str:
    """The ``sha256:<hex>`` digest of ``data``, as manifests and references name it."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_digest(ref: str) -> bool:
    """``ref`` looks like a digest of any algorithm (else it is a tag); whether it can be
    verified is :func:`check_digest`'s question."""
    return _ANY_DIGEST.match(ref) is not None and ":" in ref


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is ``sha256:<64 hex>``; we cannot verify anything else."""
    if _DIGEST.match(digest):
        return digest
    if _ANY_DIGEST.match(digest):
        raise InvalidReference(
            f"unsupported digest algorithm in {digest[:80]!r}",
            "only sha256 digests can be verified",
        )
    raise InvalidReference(f"invalid digest {digest[:80]!r}", "expected sha256:<64 hex digits>")


def check_tag(tag: str) -> str:
    """``tag`` if the OCI tag grammar allows it.

    Raises:
        InvalidReference: it does not.
    """
    if _TAG.match(tag):
        return tag
    raise InvalidReference(
        f"invalid tag {tag[:140]!r}", "tags match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
    )


def verify_digest(data: bytes, digest: str, what: str) -> None:
    """Content is trusted only once it hashes to the digest it was asked for by.

    Raises:
        DigestMismatch: naming ``what``, both digests, and that the source is not to be
            trusted.
    """
    actual = sha256_digest(data)
    if actual != digest:
        raise DigestMismatch(
            f"{what}: content hashes to {actual}, expected {digest}",
            "the registry or the path to it altered the content; do not trust this source",
        )


def referrers_tag(digest: str) -> str:
    """The tag-schema fallback name for the referrers of ``digest``."""
    algorithm, _, hexpart = check_digest(digest).partition(":")
    return f"{algorithm}-{hexpart}"


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor; ``raw`` keeps unknown fields for lossless round trips."""

    media_type: str
    digest: str
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def from_json(cls, obj: object, where: str) -> Descriptor:
        """A descriptor of a manifest; ``where`` names it in errors.

        Raises:
            InvalidManifest: no digest or size, or fields of the wrong type.
            InvalidReference: a digest that is not ``sha256:``.
        """
        if not isinstance(obj, dict):
            raise InvalidManifest(f"{where}: descriptor is not an object")
        digest = obj.get("digest")
        size = obj.get("size")
        media_type = obj.get("mediaType", "")
        if not isinstance(digest, str) or not isinstance(size, int) or size < 0:
            raise InvalidManifest(f"{where}: descriptor needs a digest and a size")
        if not isinstance(media_type, str):
            raise InvalidManifest(f"{where}: descriptor mediaType is not a string")
        annotations = obj.get("annotations") or {}
        artifact_type = obj.get("artifactType")
        return cls(
            media_type=media_type,
            digest=check_digest(digest),
            size=size,
            artifact_type=artifact_type if isinstance(artifact_type, str) else None,
            annotations={str(k): str(v) for k, v in annotations.items()}
            if isinstance(annotations, dict)
            else {},
            raw=dict(obj),
        )

    def to_json(self) -> dict[str, Any]:
        """The descriptor as it was read (``raw``, every field kept), else as built."""
        if self.raw:
            return dict(self.raw)
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


class Manifest(NamedTuple):
    """Manifest bytes exactly as stored, with their media type."""

    data: bytes
    media_type: str

    @property
    def digest(self) -> str:
        """The digest of the exact bytes: what a tag points at."""
        return sha256_digest(self.data)

    @property
    def is_index(self) -> bool:
        """An index (OCI or Docker manifest list): its children are manifests, not layers."""
        return self.media_type in INDEX_TYPES

    def document(self) -> dict[str, Any]:
        """The parsed JSON (parsed again on each call; the bytes stay the truth).

        Raises:
            InvalidManifest: not a JSON object.
        """
        return parse_document(self.data)

    def children(self) -> list[Descriptor]:
        """Manifests an index points at (empty for an image manifest)."""
        doc = self.document()
        if not self.is_index and "manifests" not in doc:
            return []
        items = doc.get("manifests") or []
        if not isinstance(items, list):
            raise InvalidManifest("index: 'manifests' is not a list")
        return [Descriptor.from_json(d, f"manifests[{i}]") for i, d in enumerate(items)]

    def blobs(self) -> list[Descriptor]:
        """Config and layers of an image manifest (empty for an index)."""
        doc = self.document()
        out: list[Descriptor] = []
        if "config" in doc:
            out.append(Descriptor.from_json(doc["config"], "config"))
        layers = doc.get("layers") or []
        if not isinstance(layers, list):
            raise InvalidManifest("manifest: 'layers' is not a list")
        out.extend(Descriptor.from_json(d, f"layers[{i}]") for i, d in enumerate(layers))
        return out

    def subject(self) -> Descriptor | None:
        """The manifest this one refers to (a signature's or attestation's artifact), if any."""
        doc = self.document()
        return Descriptor.from_json(doc["subject"], "subject") if "subject" in doc else None

    def descriptor(self, annotations: dict[str, str] | None = None) -> Descriptor:
        """A descriptor pointing at this manifest, for a referrers index; ``annotations``
        replace the manifest's own."""
        doc = self.document()
        artifact_type = doc.get("artifactType")
        if not isinstance(artifact_type, str):
            config = doc.get("config")
            cmt = config.get("mediaType") if isinstance(config, dict) else None
            artifact_type = cmt if isinstance(cmt, str) and not self.is_index else None
        raw: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.data),
        }
        if artifact_type:
            raw["artifactType"] = artifact_type
        merged = dict(doc.get("annotations") or {}) if annotations is None else annotations
        if merged:
            raw["annotations"] = merged
        return Descriptor.from_json(raw, "descriptor")


def parse_document(data: bytes) -> dict[str, Any]:
    """Raises: InvalidManifest: ``data`` is not a JSON object."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidManifest(f"manifest is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidManifest("manifest is not a JSON object")
    return doc


def media_type_of(data: bytes) -> str:
    """The document's own mediaType, else index vs manifest from its shape."""
    doc = parse_document(data)
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc or "layers" in doc:
        return OCI_MANIFEST
    raise InvalidManifest("manifest has no mediaType and is neither an index nor an image manifest")


def build_index(descriptors: list[Descriptor]) -> bytes:
    """A referrers-schema index; only used when no source bytes exist to copy."""
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [d.to_json() for d in descriptors],
    }
    return json.dumps(doc, separators=(",", ":")).encode()
