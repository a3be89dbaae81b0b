"""Verification summaries: a signed SLSA VSA attached to every artifact an environment got.

Downstream admission controllers (Kyverno, policy-controller, ``cosign
verify-attestation``) can then ask "was this digest verified for prod?" without
trusting the registry: the summary is an in-toto statement (predicate type
``https://slsa.dev/verification_summary/v1``, subject the artifact's digest) in a DSSE
envelope signed with the reconciler's record key, wrapped in a Sigstore bundle v0.3 and
pushed as an OCI 1.1 referrer of the artifact in the target repository; registries
without the referrers API get the ``sha256-<hex>`` tag-schema index, as cosign writes it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from reconciler import __version__
from reconciler.evidence.signing import SigningKey, envelope, statement
from reconciler.registry import (
    EMPTY_JSON,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    NotFound,
    Registry,
    referrers_tag,
    sha256_digest,
)
from reconciler.registry.oci import build_index

PREDICATE_TYPE = "https://slsa.dev/verification_summary/v1"
BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
VERIFIER_ID = "https://reconciler.dev/reconciler"
_index_lock = threading.Lock()  # environments of one pass may attach to one digest at once


def summary(
    *,
    subject: str,
    resource: str,
    policy_uri: str,
    evidence: Mapping[str, Any],
    verified_at: str,
    levels: tuple[str, ...] = (),
) -> bytes:
    """The VSA statement for one artifact (``subject`` its digest)."""
    predicate = {
        "verifier": {"id": VERIFIER_ID, "version": {"reconciler": __version__}},
        "timeVerified": verified_at,
        "resourceUri": resource,
        "policy": {"uri": policy_uri},
        "inputAttestations": [
            {"uri": f"{resource}@{e['evidence']}", "digest": _digest_set(e["evidence"])}
            for e in evidence.get("signatures", [])
            if isinstance(e, dict) and str(e.get("evidence", "")).startswith("sha256:")
        ],
        "verificationResult": "PASSED",
        "verifiedLevels": list(levels),
    }
    return statement({resource: subject}, PREDICATE_TYPE, predicate)


def bundle(payload: bytes, key: SigningKey) -> bytes:
    """A Sigstore bundle v0.3 carrying the signed envelope and the public key's hint."""
    doc = {
        "mediaType": BUNDLE_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key.keyid}},
        "dsseEnvelope": envelope(payload, key, name_key=False),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def attach(registry: Registry, repo: str, subject: Manifest, data: bytes) -> str:
    """Push ``data`` (a bundle) as a referrer of ``subject``; keep the tag-schema index."""
    if not registry.blob_exists(repo, sha256_digest(EMPTY_JSON)):
        registry.put_blob(repo, sha256_digest(EMPTY_JSON), len(EMPTY_JSON), [EMPTY_JSON])
    registry.put_blob(repo, sha256_digest(data), len(data), [data])
    annotations = {"dev.sigstore.bundle.content": "dsse-envelope"}
    annotations["dev.sigstore.bundle.predicateType"] = PREDICATE_TYPE
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BUNDLE_TYPE,
        "config": {
            "mediaType": OCI_EMPTY,
            "digest": sha256_digest(EMPTY_JSON),
            "size": len(EMPTY_JSON),
        },
        "layers": [{"mediaType": BUNDLE_TYPE, "digest": sha256_digest(data), "size": len(data)}],
        "subject": {
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": len(subject.data),
        },
        "annotations": annotations,
    }
    manifest = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    digest = sha256_digest(manifest)
    registry.put_manifest(repo, digest, manifest, OCI_MANIFEST)
    if registry.has_referrers_api is None:
        registry.referrers(repo, subject.digest)  # probes for the API
    if not registry.has_referrers_api:
        _index(registry, repo, subject.digest, Manifest(manifest, OCI_MANIFEST).descriptor())
    return digest


def _index(registry: Registry, repo: str, subject: str, referrer: Descriptor) -> None:
    """Add ``referrer`` to the ``sha256-<hex>`` index of ``subject`` (created if absent)."""
    tag = referrers_tag(subject)
    with _index_lock:
        existing: list[Descriptor] = []
        if registry.resolve(repo, tag) is not None:
            try:
                existing = registry.get_manifest(repo, tag).children()
            except NotFound:
                existing = []
        if all(d.digest != referrer.digest for d in existing):
            registry.put_manifest(repo, tag, build_index([*existing, referrer]), OCI_INDEX)


def _digest_set(digest: str) -> dict[str, str]:
    algorithm, _, value = digest.partition(":")
    return {algorithm: value}
