"""A Sigstore ``trusted_root.json``, read from its published format with ``cryptography``.

The paths sigstore-python does not verify (legacy cosign ``.sig``/``.att`` layers, key
signatures with a transparency-log entry) need the same trust material: the Fulcio CA
certificates, the CT log keys and the transparency-log keys, each with its validity
period. The format is the Sigstore protobuf-specs JSON (``TrustedRoot``), so reading it
here depends on no private part of sigstore-python.

Raises:
    ValueError: from :meth:`TrustRoot.from_json`, for text that is not a usable root.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
)

TRUSTED_ROOT_TYPE = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"


@dataclass(frozen=True)
class Validity:
    """``validFor``: from ``start`` (inclusive) to ``end`` (inclusive, None: open)."""

    start: datetime | None
    end: datetime | None

    def contains(self, when: datetime) -> bool:
        """``when`` falls within the period (both ends inclusive)."""
        return (self.start is None or self.start <= when) and (self.end is None or when <= self.end)


@dataclass(frozen=True)
class LogKey:
    """A transparency or CT log: its id (SHA-256 of the key's SPKI DER) and key."""

    log_id: bytes
    key: Any  # a cryptography public key
    validity: Validity
    url: str = ""

    def verify(self, signature: bytes, data: bytes) -> bool:
        """The log signed ``data`` with this key; False, not an exception, otherwise."""
        return verify_signature(self.key, signature, data)


@dataclass(frozen=True)
class Authority:
    """A Fulcio certificate authority: its chain (leaf-most first) and validity."""

    certificates: tuple[x509.Certificate, ...]
    validity: Validity


@dataclass(frozen=True)
class TrustRoot:
    """The Fulcio authorities, transparency logs and CT logs a Sigstore root pins, each with
    its validity period (not :class:`reconciler.verify.root.TrustRoot`, the deployment's)."""

    authorities: tuple[Authority, ...]
    tlogs: tuple[LogKey, ...]
    ctlogs: tuple[LogKey, ...]

    @classmethod
    def from_json(cls, text: str) -> TrustRoot:
        """Raises: ValueError: the text is not a usable ``trusted_root.json``."""
        return _parse(text)

    def tlog(self, log_id: bytes, when: datetime) -> LogKey:
        """The transparency log ``log_id``, valid at ``when``; ValueError otherwise."""
        return _find(self.tlogs, log_id, when, "transparency log")

    def ctlog(self, log_id: bytes, when: datetime) -> LogKey:
        """The CT log ``log_id`` valid at ``when`` (for an SCT); ValueError otherwise."""
        return _find(self.ctlogs, log_id, when, "CT log")

    def ca_certificates(self, when: datetime) -> list[x509.Certificate]:
        """Every CA certificate of an authority valid at ``when`` (trust anchors)."""
        return [c for a in self.authorities if a.validity.contains(when) for c in a.certificates]


def _find(logs: Sequence[LogKey], log_id: bytes, when: datetime, what: str) -> LogKey:
    known = [log for log in logs if log.log_id == log_id]
    if not known:
        raise ValueError(f"the trusted root has no {what} with id {log_id.hex()[:16]}…")
    for log in known:
        if log.validity.contains(when):
            return log
    raise ValueError(
        f"the {what} {log_id.hex()[:16]}… was not valid at {when:%Y-%m-%dT%H:%M:%SZ} "
        "by the trusted root"
    )


@lru_cache(maxsize=16)
def _parse(text: str) -> TrustRoot:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"the trusted root is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("the trusted root is not a JSON object")
    if doc.get("mediaType") != TRUSTED_ROOT_TYPE:
        raise ValueError(f"unsupported trusted root mediaType {doc.get('mediaType')!r}")
    try:
        authorities = tuple(
            Authority(
                tuple(
                    x509.load_der_x509_certificate(_b64(c["rawBytes"]))
                    for c in ca["certChain"]["certificates"]
                ),
                _validity(ca.get("validFor")),
            )
            for ca in doc.get("certificateAuthorities") or []
        )
        tlogs = tuple(_log(t) for t in doc.get("tlogs") or [])
        ctlogs = tuple(_log(t) for t in doc.get("ctlogs") or [])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"the trusted root is malformed ({exc.__class__.__name__}: {exc})"
        ) from None
    return TrustRoot(authorities, tlogs, ctlogs)


def _log(raw: Mapping[str, Any]) -> LogKey:
    public = raw["publicKey"]
    der = _b64(public["rawBytes"])
    key = load_der_public_key(der)
    log_id = _b64(raw["logId"]["keyId"]) if raw.get("logId") else spki_id(key)
    return LogKey(log_id, key, _validity(public.get("validFor")), str(raw.get("baseUrl", "")))


def _validity(raw: Mapping[str, Any] | None) -> Validity:
    raw = raw or {}
    return Validity(_time(raw.get("start")), _time(raw.get("end")))


def _time(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"not an RFC 3339 time: {value!r}")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _b64(value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError("expected base64 text")
    return base64.b64decode(value, validate=True)


def spki_id(key: Any) -> bytes:
    """SHA-256 of a public key's SPKI DER: RFC 6962's log id, cosign's key hint."""
    der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


def verify_signature(key: Any, signature: bytes, data: bytes) -> bool:
    """A log or CA signature over ``data``: ECDSA with the curve's hash, Ed25519, RSA."""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            digest: hashes.HashAlgorithm = {384: hashes.SHA384(), 521: hashes.SHA512()}.get(
                key.curve.key_size, hashes.SHA256()
            )
            key.verify(signature, data, ec.ECDSA(digest))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            return False
    except InvalidSignature:
        return False
    return True
