"""The reconciler's own signatures: DSSE envelopes over in-toto statements.

Apply records and verification summaries are signed with the private key the operator
gives the reconciler (``--record-key FILE`` or ``RECONCILER_RECORD_KEY``; PEM PKCS#8,
optionally encrypted with ``RECONCILER_RECORD_KEY_PASSWORD``) and verified with the
public keys ``settings.records.keys`` names: ECDSA P-256 as ``cosign generate-key-pair``
makes them, or Ed25519. The envelope is the one cosign, in-toto and Sigstore read:
``{"payloadType", "payload" (base64), "signatures": [{"keyid", "sig"}]}`` with the
signature over DSSE's pre-authentication encoding.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from reconciler.errors import Stalled
from reconciler.model import PublicKey
from reconciler.verify.signatures import key_id, pae, verify_with

IN_TOTO = "application/vnd.in-toto+json"
STATEMENT_V1 = "https://in-toto.io/Statement/v1"
MAX_KEY_BYTES = 64 << 10
KEY_ENV, PASSWORD_ENV = "RECONCILER_RECORD_KEY", "RECONCILER_RECORD_KEY_PASSWORD"


class KeyProblem(Stalled):
    """The record-signing key cannot be used: missing, unreadable, of the wrong kind."""


class EnvelopeInvalid(ValueError):
    """An envelope that is malformed, or signed by no key that counts."""


@dataclass(frozen=True)
class SigningKey:
    """A private key and its public half; ``keyid`` is the public key's id."""

    private: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    public: PublicKey

    @property
    def keyid(self) -> str:
        """The id the envelope names and ``settings.records.keys`` must list (:func:`key_id`)."""
        return key_id(self.public)

    def sign(self, data: bytes) -> bytes:
        """A raw signature over ``data``: ECDSA with SHA-256, or Ed25519."""
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            return self.private.sign(data)
        return self.private.sign(data, ec.ECDSA(hashes.SHA256()))


def load_signing_key(path: Path, password: bytes | None = None) -> SigningKey:
    """Raises: KeyProblem naming the file and what is wrong (never the password)."""
    try:
        if path.stat().st_size > MAX_KEY_BYTES:
            raise KeyProblem(f"{path}: too large for a private key")
        data = path.read_bytes()
    except OSError as exc:
        raise KeyProblem(
            f"cannot read the record key {path}: {exc.strerror or exc}",
            "pass --record-key with a PEM private key (reconciler keygen makes one)",
        ) from None
    try:
        private = serialization.load_pem_private_key(data, password)
    except TypeError:
        raise KeyProblem(f"{path} is encrypted", f"set {PASSWORD_ENV} to its password") from None
    except ValueError:
        raise KeyProblem(
            f"{path} is not a usable PEM private key (or the password is wrong)",
            "use a PKCS#8 PEM key from `reconciler keygen` or `cosign generate-key-pair`",
        ) from None
    if isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP256R1):
        return _with_public(private, str(path))
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return _with_public(private, str(path))
    raise KeyProblem(f"{path}: only ECDSA P-256 and Ed25519 keys sign records")


def new_signing_key(kind: str = "ecdsa-p256") -> SigningKey:
    """A fresh key (``ecdsa-p256``, as cosign makes them, or ``ed25519``)."""
    if kind == "ed25519":
        return _with_public(ed25519.Ed25519PrivateKey.generate(), "generated")
    return _with_public(ec.generate_private_key(ec.SECP256R1()), "generated")


def _with_public(
    private: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey, source: str
) -> SigningKey:
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return SigningKey(private, PublicKey(source, pem.decode()))


def signing_key_from(option: Path | None) -> SigningKey | None:
    """The record key named by ``--record-key`` or ``$RECONCILER_RECORD_KEY``, if any."""
    path = option or (Path(os.environ[KEY_ENV]) if os.environ.get(KEY_ENV) else None)
    if path is None:
        return None
    password = os.environ.get(PASSWORD_ENV)
    return load_signing_key(path, password.encode() if password else None)


def generate(path: Path, kind: str = "ecdsa-p256") -> tuple[Path, Path]:
    """Write ``path`` (private, PKCS#8 PEM, mode 0600) and ``path.pub``; refuse to overwrite."""
    key = new_signing_key(kind)
    password = os.environ.get(PASSWORD_ENV)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    pem = key.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    pub_path = path.with_name(path.name + ".pub")
    for target in (path, pub_path):
        if target.exists():
            raise KeyProblem(f"{target} exists", "choose another path; keys are never overwritten")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub_path.write_text(key.public.pem)
    return path, pub_path


# --------------------------------------------------------------------------- DSSE


def statement(
    subjects: Mapping[str, str], predicate_type: str, predicate: Mapping[str, Any]
) -> bytes:
    """An in-toto v1 statement; ``subjects`` maps a name to a ``sha256:<hex>`` digest."""
    return json.dumps(
        {
            "_type": STATEMENT_V1,
            "subject": [
                {"name": name, "digest": {"sha256": digest.removeprefix("sha256:")}}
                for name, digest in sorted(subjects.items())
            ],
            "predicateType": predicate_type,
            "predicate": predicate,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def envelope(payload: bytes, key: SigningKey | None, name_key: bool = True) -> dict[str, Any]:
    """A DSSE envelope of an in-toto ``payload``; unsigned (no signatures) without a key.

    ``name_key=False`` leaves ``keyid`` empty, as cosign does: verifiers that match key
    ids (go-securesystemslib) then try the key they were given.
    """
    signatures = []
    if key is not None:
        sig = key.sign(pae(IN_TOTO, payload))
        keyid = key.keyid if name_key else ""
        signatures.append({"keyid": keyid, "sig": base64.b64encode(sig).decode()})
    return {
        "payloadType": IN_TOTO,
        "payload": base64.b64encode(payload).decode(),
        "signatures": signatures,
    }


def open_envelope(doc: object) -> tuple[bytes, tuple[tuple[str, bytes], ...]]:
    """(payload, ((keyid, signature), ...)) of an in-toto DSSE envelope; EnvelopeInvalid."""
    try:
        assert isinstance(doc, dict)
        if doc["payloadType"] != IN_TOTO:
            raise EnvelopeInvalid(f"payloadType {doc['payloadType']!r} is not {IN_TOTO}")
        payload = base64.b64decode(doc["payload"], validate=True)
        sigs = tuple(
            (str(s.get("keyid", "")), base64.b64decode(s["sig"], validate=True))
            for s in doc.get("signatures") or []
        )
    except (AssertionError, KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, EnvelopeInvalid):
            raise
        raise EnvelopeInvalid("not a DSSE envelope") from None
    return payload, sigs


def signed_by(
    payload: bytes, signatures: Sequence[tuple[str, bytes]], keys: Sequence[PublicKey]
) -> str:
    """The id of the first key that verifies one of ``signatures``; EnvelopeInvalid if none."""
    if not signatures:
        raise EnvelopeInvalid("it is not signed")
    signed = pae(IN_TOTO, payload)
    for key in keys:
        if any(verify_with(key, sig, signed) for _, sig in signatures):
            return key_id(key)
    ids = ", ".join(sorted({k or "?" for k, _ in signatures}))
    raise EnvelopeInvalid(f"no key in force verifies its signature (signed by key {ids})")
