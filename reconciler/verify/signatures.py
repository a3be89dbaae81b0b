"""Signatures: does a policy accept some signature of a digest? Fail closed.

What can sign a digest, and who checks it:

- cosign keys, legacy ``sha256-<hex>.sig`` tags (simple signing): checked here with
  ``cryptography`` over the exact payload bytes; the payload must be of type
  ``cosign container image signature`` and name the digest being promoted.
- Sigstore bundles whose verification material is a public key (``cosign sign --key``):
  checked here too (DSSE over PAE, or a message signature over the digest) because
  sigstore-python verifies only certificate bundles.
- Keyless Sigstore bundles (a Fulcio certificate): sigstore-python's ``Verifier``, built
  offline from the policy's trusted root, checks the certificate chain, SCT, inclusion
  proof, checkpoint and signed time; the identity policy checks issuer and subject.
  sigstore-python does not look inside a DSSE payload, so the in-toto subject digest and
  the predicate type are checked here.

Everything here takes bytes and returns a :class:`Match` or raises :class:`Refused`;
discovery (registry I/O) is :func:`discover`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)
from cryptography.x509 import (
    Certificate,
    OtherName,
    RFC822Name,
    SubjectAlternativeName,
    UniformResourceIdentifier,
    UnrecognizedExtension,
)

from reconciler.model import Identity, Policy, PublicKey
from reconciler.registry import Registry, RegistryError, referrers_tag
from reconciler.verify.errors import Refused

log = logging.getLogger(__name__)

BUNDLE_TYPES = frozenset(
    {
        "application/vnd.dev.sigstore.bundle.v0.3+json",
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.1",
    }
)
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_TYPE = "cosign container image signature"
IN_TOTO = "application/vnd.in-toto+json"
PREDICATE_TYPES = frozenset({"https://sigstore.dev/cosign/sign/v1"})
MAX_EVIDENCE_BYTES = 1 << 20
MAX_EVIDENCE = 32
_SUBJECT_OTHERNAME = "1.3.6.1.4.1.57264.1.7"
_ISSUER_V1 = "1.3.6.1.4.1.57264.1.1"
_ISSUER_V2 = "1.3.6.1.4.1.57264.1.8"


@dataclass(frozen=True)
class Evidence:
    """One signature found for a digest: a bundle, or a simple-signing payload + signature."""

    where: str  # how it was found, for messages
    digest: str  # digest of the bundle / payload blob, for the receipt
    bundle: bytes | None = None
    payload: bytes | None = None
    signature: str | None = None  # base64 DER, with ``payload``


@dataclass(frozen=True)
class Match:
    """Which rule of a policy a signature satisfied: the receipt an apply record keeps."""

    signer: str  # "key sha256:…" or "identity <issuer> <subject>"
    evidence: str  # the evidence's digest
    tlog_index: int | None = None

    def __str__(self) -> str:
        tlog = f" tlog {self.tlog_index}" if self.tlog_index is not None else ""
        return f"{self.signer} ({self.evidence[:19]}{tlog})"


# --------------------------------------------------------------------------- discovery


def discover(registry: Registry, repository: str, digest: str) -> list[Evidence]:
    """Referrers (API, then the ``sha256-<hex>`` index tag), then the legacy ``.sig`` tag."""
    found: list[Evidence] = []
    for desc in registry.referrers(repository, digest)[:MAX_EVIDENCE]:
        if desc.artifact_type not in BUNDLE_TYPES:
            continue
        manifest = registry.get_manifest(repository, desc.digest)
        for layer in manifest.blobs():
            if layer.media_type in BUNDLE_TYPES and layer.size <= MAX_EVIDENCE_BYTES:
                data = _blob(registry, repository, layer.digest)
                found.append(Evidence(f"referrer {desc.digest[:19]}", layer.digest, bundle=data))
    sig_tag = referrers_tag(digest) + ".sig"
    sig = registry.resolve(repository, sig_tag)
    if sig is not None:
        manifest = registry.get_manifest(repository, sig)
        for layer in manifest.blobs():
            if layer.media_type != SIMPLE_SIGNING or layer.size > MAX_EVIDENCE_BYTES:
                continue
            signature = (layer.annotations or {}).get(COSIGN_SIGNATURE_ANNOTATION)
            if signature:
                payload = _blob(registry, repository, layer.digest)
                found.append(
                    Evidence(f"tag {sig_tag}", layer.digest, payload=payload, signature=signature)
                )
    return found


def _blob(registry: Registry, repository: str, digest: str) -> bytes:
    with registry.open_blob(repository, digest) as chunks:
        data = b"".join(chunks)
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise RegistryError(f"{repository}@{digest}: blob does not hash to its digest")
    return data


# --------------------------------------------------------------------------- policy


def require(
    policy: Policy,
    digest: str,
    evidence: Sequence[Evidence],
    what: str,
    predicate_types: frozenset[str] | None = PREDICATE_TYPES,
) -> Match:
    """The first evidence ``policy`` accepts for ``digest``; Refused naming why none did.

    ``predicate_types`` limits what an in-toto statement may claim (None: anything).
    """
    if policy.empty:
        raise Refused("signatures", f"{what}: the policy names no key and no identity")
    if not evidence:
        raise Refused(
            "signatures",
            f"{what}: no signature found for {digest} (referrers API, sha256-<hex> "
            "referrer tag, sha256-<hex>.sig tag)",
            "sign the digest (cosign sign --key … or keyless) and push the signature "
            "next to the artifact",
        )
    reasons: list[str] = []
    for item in evidence:
        try:
            return accept(policy, digest, item, predicate_types)
        except Refused as exc:
            reasons.append(f"{item.where}: {exc.message.removeprefix('refused (signatures): ')}")
    raise Refused(
        "signatures",
        f"{what}: no signature of {digest} satisfies the policy ({policy.describe()}): "
        + "; ".join(reasons),
        "sign with a key or identity the policy names, or fix the policy",
    )


def accept(
    policy: Policy,
    digest: str,
    item: Evidence,
    predicate_types: frozenset[str] | None = PREDICATE_TYPES,
) -> Match:
    if item.payload is not None and item.signature is not None:
        return _simple_signing(policy.keys, digest, item)
    assert item.bundle is not None
    try:
        doc = json.loads(item.bundle)
    except ValueError:
        raise Refused("signatures", "the bundle is not JSON") from None
    if not isinstance(doc, dict):
        raise Refused("signatures", "the bundle is not a JSON object")
    material = doc.get("verificationMaterial") or {}
    if "publicKey" in material:
        return _key_bundle(policy.keys, digest, doc, item, predicate_types)
    return _keyless_bundle(policy, digest, item, predicate_types)


# --------------------------------------------------------------------------- keys


def key_id(key: PublicKey) -> str:
    spki = load_pem_public_key(key.pem.encode()).public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()[:16]


def verify_with(key: PublicKey, signature: bytes, data: bytes, prehashed: bool = False) -> bool:
    try:
        public = load_pem_public_key(key.pem.encode())
    except (ValueError, TypeError):
        log.warning("policy key %s is not a usable PEM public key", key.source)
        return False
    algorithm: Any = Prehashed(hashes.SHA256()) if prehashed else hashes.SHA256()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(public, ed25519.Ed25519PublicKey) and not prehashed:
            public.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _simple_signing(keys: Iterable[PublicKey], digest: str, item: Evidence) -> Match:
    assert item.payload is not None and item.signature is not None
    try:
        signature = base64.b64decode(item.signature, validate=True)
    except ValueError:
        raise Refused("signatures", "the signature annotation is not base64") from None
    for key in keys:
        if not verify_with(key, signature, item.payload):
            continue
        # Only a payload whose signature verified is worth reading.
        try:
            critical = json.loads(item.payload)["critical"]
            kind, named = critical["type"], critical["image"]["docker-manifest-digest"]
        except (ValueError, KeyError, TypeError):
            raise Refused("signatures", "the signed payload is not cosign simple signing") from None
        if kind != COSIGN_TYPE:
            raise Refused(
                "signatures", f"the signed payload has type {kind!r}, not {COSIGN_TYPE!r}"
            )
        if named != digest:
            raise Refused("signatures", f"the signature is for {named}, not {digest}")
        return Match(f"key {key_id(key)}", item.digest)
    raise Refused("signatures", "no policy key verifies this signature")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what a DSSE signature is over."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def _key_bundle(
    keys: Sequence[PublicKey],
    digest: str,
    doc: dict[str, Any],
    item: Evidence,
    predicate_types: frozenset[str] | None,
) -> Match:
    if not keys:
        raise Refused("signatures", "a key-signed bundle, but the policy names no key")
    try:
        if "dsseEnvelope" in doc:
            env = doc["dsseEnvelope"]
            payload = base64.b64decode(env["payload"], validate=True)
            payload_type = env["payloadType"]
            sigs = [base64.b64decode(s["sig"], validate=True) for s in env["signatures"]]
            signed, prehashed = pae(payload_type, payload), False
        else:
            message = doc["messageSignature"]
            sigs = [base64.b64decode(message["signature"], validate=True)]
            named = base64.b64decode(message["messageDigest"]["digest"], validate=True)
            if message["messageDigest"].get("algorithm", "SHA2_256") != "SHA2_256":
                raise Refused("signatures", "the message digest is not SHA2_256")
            if "sha256:" + named.hex() != digest:
                raise Refused("signatures", f"the bundle signs sha256:{named.hex()}, not {digest}")
            signed, prehashed, payload, payload_type = named, True, b"", None
    except (KeyError, TypeError, ValueError) as exc:
        raise Refused("signatures", f"malformed bundle ({exc.__class__.__name__}: {exc})") from None
    for key in keys:
        if not any(verify_with(key, sig, signed, prehashed) for sig in sigs):
            continue
        if payload_type is not None:  # DSSE: whatever the type says, it must name the digest
            _check_statement(payload_type, payload, digest, predicate_types)
        return Match(f"key {key_id(key)}", item.digest)
    raise Refused("signatures", "no policy key verifies this bundle")


def _check_statement(
    payload_type: str, payload: bytes, digest: str, predicate_types: frozenset[str] | None
) -> None:
    """The in-toto statement must name ``digest`` as a subject (and an allowed predicate)."""
    if payload_type != IN_TOTO:
        raise Refused("signatures", f"DSSE payload type {payload_type!r} is not {IN_TOTO}")
    try:
        statement = json.loads(payload)
        subjects = statement["subject"]
        hexes = {s["digest"]["sha256"] for s in subjects if "sha256" in s.get("digest", {})}
        predicate = statement.get("predicateType")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise Refused("signatures", "the DSSE payload is not an in-toto statement") from None
    if digest.removeprefix("sha256:") not in hexes:
        raise Refused("signatures", f"the in-toto statement's subject is not {digest}")
    if predicate_types is not None and predicate not in predicate_types:
        raise Refused(
            "signatures",
            f"predicateType {predicate!r} is not one of {', '.join(sorted(predicate_types))}",
        )


# --------------------------------------------------------------------------- keyless


@cache
def _trusted_root(text: str | None) -> Any:
    from sigstore.models import TrustedRoot
    from sigstore_models.trustroot import v1 as trustroot_v1

    if text is None:
        text = default_trusted_root()
    return TrustedRoot(trustroot_v1.TrustedRoot.from_json(text))


def default_trusted_root() -> str:
    """The Sigstore public-good trusted root shipped inside sigstore-python (offline)."""
    store = resources.files("sigstore") / "_store" / "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev"
    return (store / "trusted_root.json").read_text(encoding="utf-8")


class IdentityPolicy:
    """A sigstore-python policy: the issuer exactly, the subject exactly or by anchored regexp.

    sigstore's own ``Identity`` knows only exact subjects; a regexp must match the
    whole SAN (``re.fullmatch``), never a substring.
    """

    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    def verify(self, cert: Certificate) -> None:
        from sigstore.errors import VerificationError

        issuer = _issuer_of(cert)
        if issuer != self.identity.issuer:
            raise VerificationError(f"issuer {issuer!r} is not {self.identity.issuer!r}")
        sans = _sans(cert)
        if self.identity.subject is not None:
            ok = self.identity.subject in sans
        else:
            pattern = re.compile(self.identity.subject_regexp or "(?!)")
            ok = any(pattern.fullmatch(s) for s in sans)
        if not ok:
            wanted = self.identity.subject or f"/{self.identity.subject_regexp}/"
            raise VerificationError(f"subject {sorted(sans)} does not match {wanted}")

    def __str__(self) -> str:
        subject = self.identity.subject or f"~{self.identity.subject_regexp}"
        return f"identity {self.identity.issuer} {subject}"


def _issuer_of(cert: Certificate) -> str | None:
    """The OIDC issuer Fulcio embedded: the v2 extension (a DER UTF8String), else v1 (raw)."""
    by_oid = {ext.oid.dotted_string: ext.value for ext in cert.extensions}
    v2 = by_oid.get(_ISSUER_V2)
    if isinstance(v2, UnrecognizedExtension):
        return _der_utf8(v2.value)
    v1 = by_oid.get(_ISSUER_V1)
    if isinstance(v1, UnrecognizedExtension):
        return v1.value.decode(errors="replace")
    return None


def _der_utf8(data: bytes) -> str | None:
    if len(data) < 2 or data[0] != 0x0C:
        return None
    length, offset = data[1], 2
    if length & 0x80:
        n = length & 0x7F
        length, offset = int.from_bytes(data[2 : 2 + n], "big"), 2 + n
    return data[offset : offset + length].decode(errors="replace")


def _sans(cert: Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(SubjectAlternativeName).value
    values = set(san.get_values_for_type(RFC822Name))
    values.update(san.get_values_for_type(UniformResourceIdentifier))
    values.update(
        other.value.decode(errors="replace")
        for other in san.get_values_for_type(OtherName)
        if other.type_id.dotted_string == _SUBJECT_OTHERNAME
    )
    return values


def _keyless_bundle(
    policy: Policy, digest: str, item: Evidence, predicate_types: frozenset[str] | None
) -> Match:
    from sigstore.errors import Error as SigstoreError
    from sigstore.hashes import Hashed
    from sigstore.models import Bundle
    from sigstore.verify import Verifier
    from sigstore_models.common.v1 import HashAlgorithm

    if not policy.identities:
        raise Refused("signatures", "a keyless bundle, but the policy names no identity")
    assert item.bundle is not None
    try:
        bundle = Bundle.from_json(item.bundle)
        verifier = Verifier(trusted_root=_trusted_root(policy.trusted_root_json))
    except (SigstoreError, ValueError) as exc:
        raise Refused("signatures", f"unusable bundle or trusted root: {exc}") from None
    failures = []
    for identity in policy.identities:
        rule = IdentityPolicy(identity)
        try:
            if bundle._dsse_envelope is not None:
                payload_type, payload = verifier.verify_dsse(bundle, rule)
                _check_statement(payload_type, payload, digest, predicate_types)
            else:
                hashed = Hashed(
                    algorithm=HashAlgorithm.SHA2_256,
                    digest=bytes.fromhex(digest.removeprefix("sha256:")),
                )
                verifier.verify_artifact(hashed, bundle, rule)
        except SigstoreError as exc:
            failures.append(str(exc))
            continue
        except Refused as exc:
            failures.append(exc.message.removeprefix("refused (signatures): "))
            continue
        return Match(str(rule), item.digest, bundle.log_entry._inner.log_index)
    raise Refused("signatures", "; ".join(failures) or "no identity matched")
