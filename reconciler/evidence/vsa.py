"""Verification summaries: a signed SLSA VSA attached to every artifact an environment got.

Downstream admission controllers (Kyverno, policy-controller, ``cosign
verify-attestation``) can then ask "was this digest verified for prod?" without
trusting the registry: the summary is an in-toto statement (predicate type
``https://slsa.dev/verification_summary/v1``, subject the artifact's digest) in a DSSE
envelope signed with the reconciler's record key, wrapped in a Sigstore bundle v0.3 and
pushed as an OCI 1.1 referrer of the artifact in the target repository; registries
without the referrers API get the ``sha256-<hex>`` tag-schema index, as cosign writes it.

Except for an artifact signed the legacy way (a ``sha256-<hex>.sig`` tag and no bundle
referrer): cosign v3 looks only at bundle referrers once one exists, so a VSA bundle
would hide its signature from ``cosign verify``. Such an artifact gets the summary as
cosign v1/v2 writes attestations instead: a DSSE envelope layer appended to its
``sha256-<hex>.att`` manifest, which ``cosign verify-attestation`` reads and which
leaves ``cosign verify`` as it was.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
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
DSSE_LAYER = "application/vnd.dsse.envelope.v1+json"
IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
# Environments of one pass may attach to one digest at once: one lock per subject.
_subject_locks: defaultdict[tuple[str, str, str], threading.Lock] = defaultdict(threading.Lock)
_locks_lock = threading.Lock()


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


def attach_summary(
    registry: Registry, repo: str, subject: Manifest, payload: bytes, key: SigningKey
) -> str:
    """Sign the VSA statement ``payload`` and attach it to ``subject`` the way its
    signatures are stored (see the module docstring); returns the manifest digest."""
    if legacy_signed(registry, repo, subject.digest):
        doc = envelope(payload, key, name_key=False)
        return attach_legacy(registry, repo, subject.digest, _dump(doc))
    return attach(registry, repo, subject, bundle(payload, key))


def legacy_signed(registry: Registry, repo: str, digest: str) -> bool:
    """A ``.sig`` tag and no bundle referrer: what cosign v3 verifies only while no
    bundle referrer exists."""
    if registry.resolve(repo, referrers_tag(digest) + ".sig") is None:
        return False
    return all(d.artifact_type != BUNDLE_TYPE for d in registry.referrers(repo, digest))


def attach_legacy(registry: Registry, repo: str, digest: str, signed: bytes) -> str:
    """Append the DSSE envelope ``signed`` to the subject's ``.att`` manifest as cosign
    v1/v2 does (a layer per attestation, ``predicateType`` annotated)."""
    tag = referrers_tag(digest) + ".att"
    layer = {
        "mediaType": DSSE_LAYER,
        "digest": sha256_digest(signed),
        "size": len(signed),
        "annotations": {SIGNATURE_ANNOTATION: "", "predicateType": PREDICATE_TYPE},
    }
    registry.put_blob(repo, sha256_digest(signed), len(signed), [signed])
    with _lock_of(registry, repo, digest):
        layers: list[Any] = []
        if registry.resolve(repo, tag) is not None:
            try:
                layers = list(registry.get_manifest(repo, tag).document().get("layers") or [])
            except NotFound:
                layers = []
        if any(isinstance(d, dict) and d.get("digest") == layer["digest"] for d in layers):
            return registry.resolve(repo, tag) or ""
        layers.append(layer)
        config = _dump(
            {
                "architecture": "",
                "config": {},
                "created": "0001-01-01T00:00:00Z",
                "os": "",
                "rootfs": {"type": "layers", "diff_ids": [d.get("digest") for d in layers]},
            }
        )
        registry.put_blob(repo, sha256_digest(config), len(config), [config])
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": IMAGE_CONFIG,
                "digest": sha256_digest(config),
                "size": len(config),
            },
            "layers": layers,
        }
        return registry.put_manifest(repo, tag, _dump(doc), OCI_MANIFEST)


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
    with _lock_of(registry, repo, subject):
        existing: list[Descriptor] = []
        if registry.resolve(repo, tag) is not None:
            try:
                existing = registry.get_manifest(repo, tag).children()
            except NotFound:
                existing = []
        if all(d.digest != referrer.digest for d in existing):
            registry.put_manifest(repo, tag, build_index([*existing, referrer]), OCI_INDEX)


def _lock_of(registry: Registry, repo: str, subject: str) -> threading.Lock:
    with _locks_lock:
        return _subject_locks[(registry.name, repo, subject)]


def _dump(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _digest_set(digest: str) -> dict[str, str]:
    algorithm, _, value = digest.partition(":")
    return {algorithm: value}
