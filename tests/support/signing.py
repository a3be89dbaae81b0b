"""Real signatures pushed into a registry the way cosign stores them."""

from __future__ import annotations

import base64
import json

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from reconciler.registry import OCI_MANIFEST, Registry, referrers_tag
from tests.support.registry_servers import Built, push, sha256
from tests.support.sigstore_instance import LegacyLayer

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"
EMPTY = "application/vnd.oci.empty.v1+json"


def new_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """An ECDSA P-256 key pair like `cosign generate-key-pair` makes: (private, public PEM)."""
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, pem.decode()


def sign_legacy(
    registry: Registry, repo: str, digest: str, private: ec.EllipticCurvePrivateKey
) -> str:
    """Push a `sha256-<hex>.sig` simple-signing signature of ``digest``, as cosign 2 does."""
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": repo},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        },
        separators=(",", ":"),
    ).encode()
    signature = base64.b64encode(private.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    config = b"{}"
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": SIMPLE_SIGNING,
                "digest": sha256(payload),
                "size": len(payload),
                "annotations": {"dev.cosignproject.cosign/signature": signature},
            }
        ],
    }
    built = Built(
        json.dumps(doc).encode(), OCI_MANIFEST, {sha256(config): config, sha256(payload): payload}
    )
    return push(registry, repo, built, tag=referrers_tag(digest) + ".sig")


def attach_bundle(
    registry: Registry,
    repo: str,
    digest: str,
    bundle_json: str,
    subject_repo: str | None = None,
) -> str:
    """Push a Sigstore bundle as an OCI 1.1 referrer of ``digest`` (cosign 3's layout) and
    keep the ``sha256-<hex>`` referrers index up to date for registries without the API.

    ``subject_repo``: where the signed artifact lives, when ``repo`` is a separate
    signature repository (cosign's ``COSIGN_REPOSITORY``)."""
    subject = registry.get_manifest(subject_repo or repo, digest)
    empty, body = b"{}", bundle_json.encode()
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BUNDLE_V03,
        "config": {"mediaType": EMPTY, "digest": sha256(empty), "size": len(empty)},
        "layers": [{"mediaType": BUNDLE_V03, "digest": sha256(body), "size": len(body)}],
        "subject": {"mediaType": subject.media_type, "digest": digest, "size": len(subject.data)},
    }
    referrer = Built(
        json.dumps(doc).encode(), OCI_MANIFEST, {sha256(empty): empty, sha256(body): body}
    )
    push(registry, repo, referrer)
    index_tag = referrers_tag(digest)
    current = registry.resolve(repo, index_tag)
    manifests = []
    if current is not None:
        manifests = json.loads(registry.get_manifest(repo, current).data).get("manifests", [])
    manifests.append(
        {
            "mediaType": OCI_MANIFEST,
            "digest": referrer.digest,
            "size": len(referrer.data),
            "artifactType": BUNDLE_V03,
        }
    )
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }
    registry.put_manifest(
        repo, index_tag, json.dumps(index).encode(), "application/vnd.oci.image.index.v1+json"
    )
    return referrer.digest


def push_legacy(
    registry: Registry,
    repo: str,
    digest: str,
    layers: list[LegacyLayer],
    suffix: str = ".sig",
    replace: bool = False,
) -> str:
    """Push cosign v1/v2 ``sha256-<hex>.sig`` (or ``.att``) layers for ``digest``, added to
    the layers already there, as cosign appends signatures (``replace``: instead of them)."""
    tag = referrers_tag(digest) + suffix
    blobs: dict[str, bytes] = {}
    existing: list[dict[str, object]] = []
    current = None if replace else registry.resolve(repo, tag)
    if current is not None:
        existing = json.loads(registry.get_manifest(repo, current).data)["layers"]
    described = [
        {
            "mediaType": layer.media_type,
            "digest": layer.digest,
            "size": len(layer.blob),
            "annotations": dict(layer.annotations),
        }
        for layer in layers
    ]
    for layer in layers:
        blobs[layer.digest] = layer.blob
    config = json.dumps(
        {
            "architecture": "",
            "config": {},
            "created": "0001-01-01T00:00:00Z",
            "os": "",
            "rootfs": {
                "type": "layers",
                "diff_ids": [d["digest"] for d in [*existing, *described]],
            },
        }
    ).encode()
    blobs[sha256(config)] = config
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(config),
            "size": len(config),
        },
        "layers": [*existing, *described],
    }
    return push(registry, repo, Built(json.dumps(doc).encode(), OCI_MANIFEST, blobs), tag=tag)
