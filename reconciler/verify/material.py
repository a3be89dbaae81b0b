"""What signature verification works on and hands back: evidence, matches, key checks.

Shared by :mod:`reconciler.verify.signatures` (bundles, the policy) and
:mod:`reconciler.verify.legacy` (cosign's ``.sig``/``.att`` layers), so neither imports
the other's internals. Everything here is pure.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
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

from reconciler.model import PublicKey
from reconciler.verify.errors import Refused, Rule

log = logging.getLogger(__name__)

IN_TOTO = "application/vnd.in-toto+json"
COSIGN_TYPE = "cosign container image signature"
# A statement of this type is a signature (cosign v3 signs with it); any other is an
# attestation, which only an attestation rule of the policy can ask for.
PREDICATE_TYPES = frozenset({"https://sigstore.dev/cosign/sign/v1"})


@dataclass(frozen=True)
class Evidence:
    """One thing found next to a digest that may sign or attest it.

    A Sigstore bundle (``bundle``), or a legacy cosign layer: a ``.sig`` simple-signing
    ``payload`` with its base64 ``signature``, or a ``.att`` DSSE envelope (``payload``
    with ``envelope``), each optionally with the keyless annotations (``certificate``,
    ``chain``, ``rekor_bundle``) cosign v1/v2 writes.
    """

    where: str  # how it was found, for messages
    digest: str  # digest of the bundle / payload blob, for the receipt
    bundle: bytes | None = None
    payload: bytes | None = None
    signature: str | None = None  # base64 DER, with a ``.sig`` payload
    certificate: str | None = None  # dev.sigstore.cosign/certificate (PEM)
    chain: str | None = None  # dev.sigstore.cosign/chain (PEM, intermediates first)
    rekor_bundle: str | None = None  # dev.sigstore.cosign/bundle (JSON)
    envelope: bool = False  # ``payload`` is a DSSE envelope (a ``.att`` layer)


@dataclass(frozen=True)
class Match:
    """Which rule of a policy a signature or attestation satisfied: the receipt keeps it."""

    signer: str  # "key sha256:…" or "identity <issuer> <subject>"
    evidence: str  # the evidence's digest
    tlog_index: int | None = None
    predicate_type: str | None = None  # set for attestations
    insecure_ignore_tlog: bool = False  # accepted without a log entry, by insecureIgnoreTlog

    def __str__(self) -> str:
        tlog = f" tlog {self.tlog_index}" if self.tlog_index is not None else ""
        loud = " TLOG NOT CHECKED (insecureIgnoreTlog)" if self.insecure_ignore_tlog else ""
        return f"{self.signer} ({self.evidence[:19]}{tlog}){loud}"

    def to_json(self) -> dict[str, Any]:
        """The match as the receipt stores it."""
        doc: dict[str, Any] = {
            "signer": self.signer,
            "evidence": self.evidence,
            "tlogIndex": self.tlog_index,
        }
        if self.predicate_type is not None:
            doc["predicateType"] = self.predicate_type
        if self.insecure_ignore_tlog:
            doc["insecureIgnoreTlog"] = True
        return doc


@dataclass(frozen=True)
class Verified:
    """A piece of evidence that verified: the match, and the in-toto statement it carried
    (None for a simple-signing payload or a message signature)."""

    match: Match
    statement: Mapping[str, Any] | None = None

    @property
    def predicate_type(self) -> str | None:
        """The in-toto predicate type the evidence claims, None without a statement."""
        if self.statement is None:
            return None
        kind = self.statement.get("predicateType")
        return kind if isinstance(kind, str) else None

    @property
    def is_signature(self) -> bool:
        """Counts as a signature of the digest (no statement, or cosign's signing predicate),
        rather than an attestation, which satisfies only an attestation rule."""
        return self.statement is None or self.predicate_type in PREDICATE_TYPES


def key_id(key: PublicKey) -> str:
    """A short stable id of a public key (``sha256:`` and 16 hex digits of its SPKI DER),
    however its PEM is written."""
    spki = load_pem_public_key(key.pem.encode()).public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()[:16]


def public_key(key: PublicKey) -> Any | None:
    """The key ready to verify with, or None (logged) when its PEM is unusable: one bad key
    of a policy must not stop the others from matching."""
    try:
        return load_pem_public_key(key.pem.encode())
    except (ValueError, TypeError):
        log.warning("policy key %s is not a usable PEM public key", key.source)
        return None


def verify_with(key: PublicKey, signature: bytes, data: bytes, prehashed: bool = False) -> bool:
    """The signature verifies with ``key``; False, never an exception, for an unusable key."""
    public = public_key(key)
    return public is not None and verify_raw(public, signature, data, prehashed)


def verify_raw(public: Any, signature: bytes, data: bytes, prehashed: bool = False) -> bool:
    """A cosign signature: ECDSA or RSA over SHA-256 (of ``data``, or ``data`` is the
    digest), or Ed25519 over the data itself."""
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


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what a DSSE signature is over."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def parse_envelope(data: bytes | Mapping[str, Any]) -> tuple[str, bytes, list[bytes]]:
    """A DSSE envelope: (payloadType, payload, signatures). Refused when malformed."""
    try:
        env = json.loads(data) if isinstance(data, bytes) else data
        payload = base64.b64decode(env["payload"], validate=True)
        payload_type = env["payloadType"]
        sigs = [base64.b64decode(s["sig"], validate=True) for s in env["signatures"]]
        if not isinstance(payload_type, str) or not sigs:
            raise ValueError("no payloadType or no signature")
    except (KeyError, TypeError, ValueError) as exc:
        raise Refused(Rule.SIGNATURES, f"malformed DSSE envelope ({exc})") from None
    return payload_type, payload, sigs


def check_simple_signing(payload: bytes, digest: str) -> None:
    """A verified ``.sig`` payload must be a cosign image signature naming ``digest``."""
    try:
        critical = json.loads(payload)["critical"]
        kind, named = critical["type"], critical["image"]["docker-manifest-digest"]
    except (ValueError, KeyError, TypeError):
        raise Refused(Rule.SIGNATURES, "the signed payload is not cosign simple signing") from None
    if kind != COSIGN_TYPE:
        raise Refused(Rule.SIGNATURES, f"the signed payload has type {kind!r}, not {COSIGN_TYPE!r}")
    if named != digest:
        raise Refused(Rule.SIGNATURES, f"the signature is for {named}, not {digest}")


def check_statement(
    payload_type: str, payload: bytes, digest: str, predicate_types: frozenset[str] | None
) -> dict[str, Any]:
    """The in-toto statement must name ``digest`` as a subject (and an allowed predicate
    type, unless ``predicate_types`` is None); returns the statement."""
    if payload_type != IN_TOTO:
        raise Refused(Rule.SIGNATURES, f"DSSE payload type {payload_type!r} is not {IN_TOTO}")
    try:
        statement = json.loads(payload)
        subjects = statement["subject"]
        hexes = {s["digest"]["sha256"] for s in subjects if "sha256" in s.get("digest", {})}
        predicate = statement.get("predicateType")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise Refused(Rule.SIGNATURES, "the DSSE payload is not an in-toto statement") from None
    if not isinstance(statement, dict):
        raise Refused(Rule.SIGNATURES, "the DSSE payload is not an in-toto statement")
    if digest.removeprefix("sha256:") not in hexes:
        raise Refused(Rule.SIGNATURES, f"the in-toto statement's subject is not {digest}")
    if predicate_types is not None and predicate not in predicate_types:
        raise Refused(
            Rule.SIGNATURES,
            f"predicateType {predicate!r} is not one of {', '.join(sorted(predicate_types))}",
        )
    return statement
