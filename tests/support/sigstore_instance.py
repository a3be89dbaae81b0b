"""An offline, private Sigstore instance for tests: Fulcio-style CA, CT log and Rekor log.

Verification code must be tested against real bundles, and the public-good instance
can neither be reached offline nor made to sign what a test needs (an expired
certificate, a foreign root, a tampered envelope). Everything here is real
cryptography: sigstore-python 4.5.1 verifies these bundles against
``trusted_root_json()`` exactly as it verifies production ones:

- a P-384 root and intermediate CA issue P-256 leaf certificates shaped like
  Fulcio's (critical SAN, codeSigning EKU, OIDC issuer extensions ``.1.1`` and
  ``.1.8``) carrying exactly one embedded SCT (RFC 6962 precertificate entry);
- an RFC 6962 Merkle tree transparency log gives each entry an inclusion proof,
  a signed checkpoint and a signed entry timestamp (SET).

Also here, for the paths sigstore-python does not cover:

- legacy cosign layers as cosign v1/v2 writes them (``sign_legacy``): a ``.sig``
  simple-signing payload or a ``.att`` DSSE envelope, with the Fulcio certificate, its
  chain and a Rekor bundle (the signed entry timestamp and its payload: body,
  integratedTime, logIndex, logID) in annotations, the entry a real ``hashedrekord`` /
  ``dsse`` body in the instance's log; and the same for a key (``log_key_layer``);
- cosign key pairs, simple-signing payloads and public-key DSSE bundles, optionally
  with a transparency-log entry of this instance (``sign_dsse_with_key(..., log=)``).

Certificates can carry Fulcio's claims (``claims={"github_workflow_ref": ...}``): the
GitHub workflow extensions (``.1.2``-``.1.6``, raw bytes, as cosign's
``--certificate-github-workflow-*`` read them) and the build signer URI (``.1.9``).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import os
import secrets
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "INTOTO_PAYLOAD_TYPE",
    "LegacyLayer",
    "SigstoreInstance",
    "cosign_key_pair",
    "in_toto_statement",
    "sign_dsse_with_key",
    "sign_simple_signing",
    "simple_signing_payload",
    "tamper_dsse_payload",
]

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
TRUSTED_ROOT_MEDIA_TYPE = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
INTOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
COSIGN_PREDICATE_TYPE = "https://sigstore.dev/cosign/sign/v1"

_OID_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
_OID_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
_OID_SCT_LIST = ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")
# Fulcio's claim extensions: v1 ones hold raw bytes, later ones a DER UTF8String.
_CLAIM_OIDS: dict[str, tuple[ObjectIdentifier, bool]] = {
    "github_workflow_trigger": (ObjectIdentifier("1.3.6.1.4.1.57264.1.2"), False),
    "github_workflow_sha": (ObjectIdentifier("1.3.6.1.4.1.57264.1.3"), False),
    "github_workflow_name": (ObjectIdentifier("1.3.6.1.4.1.57264.1.4"), False),
    "github_workflow_repository": (ObjectIdentifier("1.3.6.1.4.1.57264.1.5"), False),
    "github_workflow_ref": (ObjectIdentifier("1.3.6.1.4.1.57264.1.6"), False),
    "build_signer_uri": (ObjectIdentifier("1.3.6.1.4.1.57264.1.9"), True),
}
SIMPLE_SIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE_LAYER_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
_P256_DETAILS = "PKIX_ECDSA_P256_SHA_256"
_LEAF_LIFETIME = dt.timedelta(minutes=10)  # Fulcio's certificate lifetime
_FILLER_ENTRIES = 3  # so that the first real entry already has a non-trivial proof


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _der(tag: int, content: bytes) -> bytes:
    """One DER TLV; enough for the OCTET STRING and UTF8String values built here."""
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def _spki_der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_id(key: ec.EllipticCurvePublicKey) -> bytes:
    """RFC 6962 key ID (SHA-256 of the SPKI DER): the log ID of Rekor and CT logs."""
    return hashlib.sha256(_spki_der(key)).digest()


def _rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _sha256_hex(digest: str) -> str:
    """A SHA-256 digest as bare lowercase hex, from ``sha256:<hex>`` or ``<hex>``."""
    hex_digest = digest.removeprefix("sha256:").lower()
    if len(hex_digest) != 64 or any(c not in "0123456789abcdef" for c in hex_digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return hex_digest


def _pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the envelope signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


# --- RFC 6962 Merkle tree ---------------------------------------------------------------


def _leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (RFC 6962 section 2.1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _tree_hash(leaves: Sequence[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return _node_hash(_tree_hash(leaves[:k]), _tree_hash(leaves[k:]))


def _audit_path(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """RFC 6962 PATH(m, D[n]), ordered leaf level first, as Rekor returns it."""
    if len(leaves) <= 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*_audit_path(index, leaves[:k]), _tree_hash(leaves[k:])]
    return [*_audit_path(index - k, leaves[k:]), _tree_hash(leaves[:k])]


class _TransparencyLog:
    """A Rekor v1 style log: append a body, get back a fully proven tlog entry."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.log_id = _key_id(self.key.public_key())
        self.name = f"{name}.rekor.test"
        self.origin = f"{self.name} - {secrets.randbelow(2**63)}"
        self.leaves = [_leaf_hash(secrets.token_bytes(32)) for _ in range(_FILLER_ENTRIES)]

    def _sign(self, data: bytes) -> bytes:
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))

    def _checkpoint(self, size: int, root: bytes) -> str:
        note = f"{self.origin}\n{size}\n{_b64(root)}\n"
        signature = self.log_id[:4] + self._sign(note.encode())
        return f"{note}\n\u2014 {self.name} {_b64(signature)}\n"

    def append(self, body: bytes, kind: str, integrated_time: int) -> dict[str, Any]:
        """Log ``body`` (the canonicalized entry) and return its bundle ``tlogEntries`` item."""
        index = len(self.leaves)
        self.leaves.append(_leaf_hash(body))
        size = len(self.leaves)
        root = _tree_hash(self.leaves)
        promise = rfc8785.dumps(
            {
                "body": _b64(body),
                "integratedTime": integrated_time,
                "logID": self.log_id.hex(),
                "logIndex": index,
            }
        )
        return {
            "logIndex": str(index),
            "logId": {"keyId": _b64(self.log_id)},
            "kindVersion": {"kind": kind, "version": "0.0.1"},
            "integratedTime": str(integrated_time),
            "inclusionPromise": {"signedEntryTimestamp": _b64(self._sign(promise))},
            "inclusionProof": {
                "logIndex": str(index),
                "rootHash": _b64(root),
                "treeSize": str(size),
                "hashes": [_b64(h) for h in _audit_path(index, self.leaves)],
                "checkpoint": {"envelope": self._checkpoint(size, root)},
            },
            "canonicalizedBody": _b64(body),
        }


# --- The instance ------------------------------------------------------------------------


class SigstoreInstance:
    """A private Sigstore deployment: trust it via ``trusted_root_json()``, sign with it.

    Each instance has its own keys, so a second instance is "another Sigstore" whose
    bundles a verifier trusting the first must refuse.
    """

    def __init__(self, name: str) -> None:
        """Use ``create()``; the constructor is private plumbing."""
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"instance name must be a non-empty word: {name!r}")
        self.name = name
        now = _now()
        self._ca_start = now - dt.timedelta(days=30)
        self._root_key = ec.generate_private_key(ec.SECP384R1())
        self._intermediate_key = ec.generate_private_key(ec.SECP384R1())
        self._ct_key = ec.generate_private_key(ec.SECP256R1())
        self._log = _TransparencyLog(name)

        root_name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"{name}.sigstore.test"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{name}-root"),
            ]
        )
        self._root = self._ca_cert(
            root_name, self._root_key.public_key(), root_name, self._root_key, None
        ).sign(self._root_key, hashes.SHA384())
        intermediate_name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"{name}.sigstore.test"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{name}-intermediate"),
            ]
        )
        self._intermediate = self._ca_cert(
            intermediate_name, self._intermediate_key.public_key(), root_name, self._root_key, 0
        ).sign(self._root_key, hashes.SHA384())

    def _ca_cert(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        issuer: x509.Name,
        issuer_key: ec.EllipticCurvePrivateKey,
        path_length: int | None,
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._ca_start)
            .not_valid_after(self._ca_start + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                critical=False,
            )
        )

    @classmethod
    def create(cls, name: str = "test") -> SigstoreInstance:
        """A fresh instance with new keys (a few milliseconds)."""
        return cls(name)

    # --- trust material -----------------------------------------------------------------

    def trusted_root_json(self) -> str:
        """The instance's ``trusted_root.json`` text, as TUF would distribute it."""

        def log_instance(key: ec.EllipticCurvePrivateKey, url: str) -> dict[str, Any]:
            return {
                "baseUrl": url,
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": _b64(_spki_der(key.public_key())),
                    "keyDetails": _P256_DETAILS,
                    "validFor": {"start": _rfc3339(self._ca_start)},
                },
                "logId": {"keyId": _b64(_key_id(key.public_key()))},
            }

        chain = [self._intermediate, self._root]
        root = {
            "mediaType": TRUSTED_ROOT_MEDIA_TYPE,
            "tlogs": [log_instance(self._log.key, f"https://{self._log.name}")],
            "certificateAuthorities": [
                {
                    "subject": {
                        "organization": f"{self.name}.sigstore.test",
                        "commonName": f"{self.name}-root",
                    },
                    "uri": f"https://fulcio.{self.name}.sigstore.test",
                    "certChain": {
                        "certificates": [
                            {"rawBytes": _b64(c.public_bytes(serialization.Encoding.DER))}
                            for c in chain
                        ]
                    },
                    "validFor": {"start": _rfc3339(self._ca_start)},
                }
            ],
            "ctlogs": [log_instance(self._ct_key, f"https://ctfe.{self.name}.sigstore.test")],
            "timestampAuthorities": [],
        }
        return json.dumps(root, indent=2)

    def write_trusted_root(self, path: str | os.PathLike[str]) -> Path:
        """Write ``trusted_root.json`` to ``path`` (or into it, if it is a directory)."""
        target = Path(path)
        if target.is_dir():
            target = target / "trusted_root.json"
        target.write_text(self.trusted_root_json(), encoding="utf-8")
        return target

    # --- Fulcio -------------------------------------------------------------------------

    def _leaf(
        self,
        public_key: ec.EllipticCurvePublicKey,
        identity: str,
        issuer: str,
        not_before: dt.datetime,
        not_after: dt.datetime,
        claims: Mapping[str, str] | None = None,
    ) -> x509.Certificate:
        """A Fulcio-style leaf whose one SCT covers its own TBS minus the SCT extension."""
        if "@" in identity and "://" not in identity:
            san: x509.GeneralName = x509.RFC822Name(identity)
        else:
            san = x509.UniformResourceIdentifier(identity)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._intermediate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self._intermediate_key.public_key()
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName([san]), critical=True)
            .add_extension(x509.UnrecognizedExtension(_OID_ISSUER_V1, issuer.encode()), False)
            .add_extension(
                x509.UnrecognizedExtension(_OID_ISSUER_V2, _der(0x0C, issuer.encode())), False
            )
        )
        for claim, value in (claims or {}).items():
            if claim not in _CLAIM_OIDS:
                raise ValueError(f"unknown claim {claim!r}: one of {', '.join(_CLAIM_OIDS)}")
            oid, der = _CLAIM_OIDS[claim]
            raw = _der(0x0C, value.encode()) if der else value.encode()
            builder = builder.add_extension(x509.UnrecognizedExtension(oid, raw), False)
        precert = builder.sign(self._intermediate_key, hashes.SHA384())

        # RFC 6962 3.2: the SCT signs the precertificate entry (issuer key hash + TBS).
        timestamp = struct.pack("!Q", int(not_before.timestamp() * 1000))
        tbs = precert.tbs_certificate_bytes
        signed = (
            b"\x00\x00"  # v1, certificate_timestamp
            + timestamp
            + b"\x00\x01"  # precert_entry
            + _key_id(self._intermediate_key.public_key())
            + len(tbs).to_bytes(3, "big")
            + tbs
            + b"\x00\x00"  # no extensions
        )
        signature = self._ct_key.sign(signed, ec.ECDSA(hashes.SHA256()))
        sct = (
            b"\x00"
            + _key_id(self._ct_key.public_key())
            + timestamp
            + b"\x00\x00"
            + b"\x04\x03"  # sha256, ecdsa
            + struct.pack("!H", len(signature))
            + signature
        )
        sct_list = struct.pack("!HH", len(sct) + 2, len(sct)) + sct
        return builder.add_extension(
            x509.UnrecognizedExtension(_OID_SCT_LIST, _der(0x04, sct_list)), False
        ).sign(self._intermediate_key, hashes.SHA384())

    def _keyless(
        self,
        identity: str,
        issuer: str,
        not_before: dt.datetime | None,
        not_after: dt.datetime | None,
        integrated_time: dt.datetime | None,
        claims: Mapping[str, str] | None = None,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, int]:
        """An ephemeral key, its certificate and the log's integration time."""
        integrated = integrated_time or _now()
        if not_before is None:
            not_before = (
                not_after - _LEAF_LIFETIME if not_after else integrated - dt.timedelta(minutes=1)
            )
        if not_after is None:
            not_after = not_before + _LEAF_LIFETIME
        if not_after <= not_before:
            raise ValueError("certificate not_after must be after not_before")
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._leaf(key.public_key(), identity, issuer, not_before, not_after, claims)
        return key, cert, int(integrated.timestamp())

    # --- signing --------------------------------------------------------------------------

    def sign_dsse(
        self,
        statement: bytes,
        *,
        identity: str,
        issuer: str,
        payload_type: str = INTOTO_PAYLOAD_TYPE,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        integrated_time: dt.datetime | None = None,
        claims: Mapping[str, str] | None = None,
    ) -> str:
        """A v0.3 bundle of a DSSE envelope over ``statement``, logged as ``dsse`` 0.0.1.

        ``not_before``/``not_after`` bound the certificate (default: 10 minutes around
        now) and ``integrated_time`` is the log's time (default: now); put the time
        outside the validity to get a bundle that must be refused as expired.
        ``claims``: Fulcio claim extensions of the certificate (module docstring).
        """
        key, cert, integrated = self._keyless(
            identity, issuer, not_before, not_after, integrated_time, claims
        )
        signature = key.sign(_pae(payload_type, statement), ec.ECDSA(hashes.SHA256()))
        envelope = {
            "payload": _b64(statement),
            "payloadType": payload_type,
            "signatures": [{"sig": _b64(signature)}],
        }
        cert_pem_b64 = _b64(cert.public_bytes(serialization.Encoding.PEM))
        body = rfc8785.dumps(
            {
                "apiVersion": "0.0.1",
                "kind": "dsse",
                "spec": {
                    # Rekor hashes the envelope text it was sent.
                    "envelopeHash": {
                        "algorithm": "sha256",
                        "value": hashlib.sha256(_json(envelope).encode()).hexdigest(),
                    },
                    "payloadHash": {
                        "algorithm": "sha256",
                        "value": hashlib.sha256(statement).hexdigest(),
                    },
                    "signatures": [{"signature": _b64(signature), "verifier": cert_pem_b64}],
                },
            }
        )
        return self._bundle(
            cert, self._log.append(body, "dsse", integrated), "dsseEnvelope", envelope
        )

    def sign_message(
        self,
        digest: str | bytes,
        *,
        identity: str,
        issuer: str,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        integrated_time: dt.datetime | None = None,
        claims: Mapping[str, str] | None = None,
    ) -> str:
        """A v0.3 message-signature bundle over an artifact's SHA-256, logged as hashedrekord.

        ``digest`` is the artifact's SHA-256: hex (``sha256:`` prefix allowed) or the
        32 raw bytes. Times as for ``sign_dsse``.
        """
        if isinstance(digest, bytes):
            if len(digest) != 32:
                raise ValueError("a raw digest must be 32 bytes (pass the sha256, not the data)")
            raw = digest
        else:
            raw = bytes.fromhex(_sha256_hex(digest))
        key, cert, integrated = self._keyless(
            identity, issuer, not_before, not_after, integrated_time, claims
        )
        signature = key.sign(raw, ec.ECDSA(Prehashed(hashes.SHA256())))
        body = rfc8785.dumps(
            {
                "apiVersion": "0.0.1",
                "kind": "hashedrekord",
                "spec": {
                    "data": {"hash": {"algorithm": "sha256", "value": raw.hex()}},
                    "signature": {
                        "content": _b64(signature),
                        "publicKey": {
                            "content": _b64(cert.public_bytes(serialization.Encoding.PEM))
                        },
                    },
                },
            }
        )
        content = {
            "messageDigest": {"algorithm": "SHA2_256", "digest": _b64(raw)},
            "signature": _b64(signature),
        }
        entry = self._log.append(body, "hashedrekord", integrated)
        return self._bundle(cert, entry, "messageSignature", content)

    # --- legacy cosign layers (cosign v1/v2) ----------------------------------------------

    def sign_legacy(
        self,
        payload: bytes,
        *,
        identity: str,
        issuer: str,
        envelope: bool = False,
        claims: Mapping[str, str] | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        integrated_time: dt.datetime | None = None,
        entry_kind: str = "dsse",
    ) -> LegacyLayer:
        """A keyless legacy layer: a ``.sig`` layer signing ``payload`` (simple signing) or,
        with ``envelope``, a ``.att`` layer whose payload is a DSSE envelope over
        ``payload`` (an in-toto statement). The annotations are cosign v2's; the log entry
        is ``hashedrekord`` 0.0.1 (``.sig``) or ``entry_kind`` ``dsse``/``intoto`` 0.0.1
        (``.att``). Times and claims as for ``sign_dsse``."""
        key, cert, integrated = self._keyless(
            identity, issuer, not_before, not_after, integrated_time, claims
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        chain_pem = b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (self._intermediate, self._root)
        )
        layer = _legacy_layer(key, payload, envelope)
        entry = self._log.append(
            _legacy_body(layer, cert_pem, entry_kind), _kind(layer, entry_kind), integrated
        )
        layer.annotations.update(
            {
                "dev.sigstore.cosign/certificate": cert_pem.decode(),
                "dev.sigstore.cosign/chain": chain_pem.decode(),
                "dev.sigstore.cosign/bundle": legacy_rekor_bundle(entry),
            }
        )
        return layer

    def log_key_layer(
        self,
        private_key: ec.EllipticCurvePrivateKey,
        payload: bytes,
        *,
        envelope: bool = False,
        integrated_time: dt.datetime | None = None,
    ) -> LegacyLayer:
        """A layer ``cosign sign --key`` / ``attest --key`` writes with the log on: signed
        by the key, logged here, the Rekor bundle in the annotation (no certificate)."""
        layer = _legacy_layer(private_key, payload, envelope)
        public_pem = private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        integrated = int((integrated_time or _now()).timestamp())
        entry = self._log.append(
            _legacy_body(layer, public_pem, "dsse"), _kind(layer, "dsse"), integrated
        )
        layer.annotations["dev.sigstore.cosign/bundle"] = legacy_rekor_bundle(entry)
        return layer

    def log_key_entry(
        self, body: bytes, kind: str, integrated_time: dt.datetime | None = None
    ) -> dict[str, Any]:
        """Append a canonicalized ``body`` to the log: a bundle's ``tlogEntries`` item."""
        return self._log.append(body, kind, int((integrated_time or _now()).timestamp()))

    @staticmethod
    def _bundle(
        cert: x509.Certificate, entry: dict[str, Any], field: str, content: dict[str, Any]
    ) -> str:
        return json.dumps(
            {
                "mediaType": BUNDLE_MEDIA_TYPE,
                "verificationMaterial": {
                    "certificate": {
                        "rawBytes": _b64(cert.public_bytes(serialization.Encoding.DER))
                    },
                    "tlogEntries": [entry],
                },
                field: content,
            }
        )


# --- statements and tampering -------------------------------------------------------------


def in_toto_statement(
    digest: str,
    predicate_type: str = COSIGN_PREDICATE_TYPE,
    name: str = "artifact",
    predicate: dict[str, Any] | None = None,
) -> bytes:
    """An in-toto v1 statement about one subject, ``digest`` (``sha256:<hex>`` or hex)."""
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": name, "digest": {"sha256": _sha256_hex(digest)}}],
        "predicateType": predicate_type,
        "predicate": predicate or {},
    }
    return _json(statement).encode()


def tamper_dsse_payload(bundle_json: str, new_payload: bytes) -> str:
    """The same bundle with the envelope payload swapped and the old signature kept."""
    bundle = json.loads(bundle_json)
    bundle["dsseEnvelope"]["payload"] = _b64(new_payload)
    return json.dumps(bundle)


# --- legacy layers ---------------------------------------------------------------------


@dataclasses.dataclass
class LegacyLayer:
    """One layer of a cosign ``.sig`` / ``.att`` manifest: its blob, media type and
    annotations (``tests.support.signing.push_legacy`` pushes it)."""

    blob: bytes
    media_type: str
    annotations: dict[str, str]
    signature: bytes  # raw, for log bodies

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.blob).hexdigest()


def simple_signing_payload(digest: str, reference: str = "registry.test/repo") -> bytes:
    """A cosign simple-signing payload naming ``digest``, serialised as cosign's Go does."""
    return _json(
        {
            "critical": {
                "identity": {"docker-reference": reference},
                "image": {"docker-manifest-digest": f"sha256:{_sha256_hex(digest)}"},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    ).encode()


def _legacy_layer(key: ec.EllipticCurvePrivateKey, payload: bytes, envelope: bool) -> LegacyLayer:
    if not envelope:
        signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
        return LegacyLayer(
            payload,
            SIMPLE_SIGNING_MEDIA_TYPE,
            {"dev.cosignproject.cosign/signature": _b64(signature)},
            signature,
        )
    signature = key.sign(_pae(INTOTO_PAYLOAD_TYPE, payload), ec.ECDSA(hashes.SHA256()))
    env = _json(
        {
            "payloadType": INTOTO_PAYLOAD_TYPE,
            "payload": _b64(payload),
            "signatures": [{"keyid": "", "sig": _b64(signature)}],
        }
    ).encode()
    predicate = json.loads(payload).get("predicateType", "")
    return LegacyLayer(
        env,
        DSSE_LAYER_MEDIA_TYPE,
        {"dev.cosignproject.cosign/signature": "", "predicateType": predicate},
        signature,
    )


def _kind(layer: LegacyLayer, entry_kind: str) -> str:
    return "hashedrekord" if layer.media_type == SIMPLE_SIGNING_MEDIA_TYPE else entry_kind


def _legacy_body(layer: LegacyLayer, verifier_pem: bytes, entry_kind: str) -> bytes:
    """The Rekor entry body cosign v1/v2 uploads for a layer."""
    if layer.media_type == SIMPLE_SIGNING_MEDIA_TYPE:
        spec: dict[str, Any] = {
            "data": {"hash": {"algorithm": "sha256", "value": _sha256_of(layer.blob)}},
            "signature": {
                "content": _b64(layer.signature),
                "publicKey": {"content": _b64(verifier_pem)},
            },
        }
        return rfc8785.dumps({"apiVersion": "0.0.1", "kind": "hashedrekord", "spec": spec})
    statement = base64.b64decode(json.loads(layer.blob)["payload"])
    if entry_kind == "intoto":
        spec = {
            "content": {
                "hash": {"algorithm": "sha256", "value": _sha256_of(layer.blob)},
                "payloadHash": {"algorithm": "sha256", "value": _sha256_of(statement)},
            },
            "publicKey": _b64(verifier_pem),
        }
        return rfc8785.dumps({"apiVersion": "0.0.1", "kind": "intoto", "spec": spec})
    spec = {
        "envelopeHash": {"algorithm": "sha256", "value": _sha256_of(layer.blob)},
        "payloadHash": {"algorithm": "sha256", "value": _sha256_of(statement)},
        "signatures": [{"signature": _b64(layer.signature), "verifier": _b64(verifier_pem)}],
    }
    return rfc8785.dumps({"apiVersion": "0.0.1", "kind": "dsse", "spec": spec})


def _sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def legacy_rekor_bundle(entry: dict[str, Any]) -> str:
    """cosign's ``dev.sigstore.cosign/bundle`` annotation for a ``tlogEntries`` item."""
    return _json(
        {
            "SignedEntryTimestamp": entry["inclusionPromise"]["signedEntryTimestamp"],
            "Payload": {
                "body": entry["canonicalizedBody"],
                "integratedTime": int(entry["integratedTime"]),
                "logIndex": int(entry["logIndex"]),
                "logID": base64.b64decode(entry["logId"]["keyId"]).hex(),
            },
        }
    )


# --- cosign with a key (no Fulcio, no log) ------------------------------------------------


def cosign_key_pair() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """An ECDSA P-256 key pair as ``cosign generate-key-pair`` makes: (key, ``PUBLIC KEY`` PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, pem.decode()


def sign_simple_signing(
    private_key: ec.EllipticCurvePrivateKey, digest: str, reference: str
) -> tuple[bytes, str]:
    """A legacy cosign ``.sig`` layer: (payload bytes, base64 DER ECDSA over their SHA-256).

    The payload is serialised as cosign's Go code does (compact, field order kept);
    verifiers must check the signature over these exact bytes, not a re-encoding.
    """
    payload = _json(
        {
            "critical": {
                "identity": {"docker-reference": reference},
                "image": {"docker-manifest-digest": f"sha256:{_sha256_hex(digest)}"},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    ).encode()
    return payload, _b64(private_key.sign(payload, ec.ECDSA(hashes.SHA256())))


def sign_dsse_with_key(
    private_key: ec.EllipticCurvePrivateKey,
    statement: bytes,
    payload_type: str = INTOTO_PAYLOAD_TYPE,
    log: SigstoreInstance | None = None,
) -> str:
    """A v0.3 bundle as ``cosign sign --key`` writes it: a public-key hint, a DSSE envelope.

    The hint is base64(SHA-256(SPKI DER)) as cosign sets it; there is no certificate.
    Without ``log`` there is no tlog entry (``--tlog-upload=false``), so sigstore-python
    refuses it and verifiers check it with the key; with ``log``, the envelope is logged
    in that instance (a ``dsse`` 0.0.1 entry with inclusion proof, checkpoint and SET).
    """
    signature = private_key.sign(_pae(payload_type, statement), ec.ECDSA(hashes.SHA256()))
    envelope = {
        "payload": _b64(statement),
        "payloadType": payload_type,
        "signatures": [{"sig": _b64(signature)}],
    }
    entries = []
    if log is not None:
        public_pem = private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        body = rfc8785.dumps(
            {
                "apiVersion": "0.0.1",
                "kind": "dsse",
                "spec": {
                    "envelopeHash": {
                        "algorithm": "sha256",
                        "value": _sha256_of(_json(envelope).encode()),
                    },
                    "payloadHash": {"algorithm": "sha256", "value": _sha256_of(statement)},
                    "signatures": [{"signature": _b64(signature), "verifier": _b64(public_pem)}],
                },
            }
        )
        entries.append(log.log_key_entry(body, "dsse"))
    return json.dumps(
        {
            "mediaType": BUNDLE_MEDIA_TYPE,
            "verificationMaterial": {
                "publicKey": {"hint": _b64(_key_id(private_key.public_key()))},
                "tlogEntries": entries,
            },
            "dsseEnvelope": envelope,
        }
    )
