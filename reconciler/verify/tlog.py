"""Rekor (v1) transparency-log entries, checked offline against a trusted root.

Used where sigstore-python does not verify: legacy cosign layers (whose
``dev.sigstore.cosign/bundle`` annotation carries only a signed entry timestamp) and
key-signed Sigstore bundles. An entry counts when

(1) its log is in the trusted root and was valid at the integrated time;
(2) its signed entry timestamp (SET) verifies with that log's key over the RFC 8785
    JSON of ``{body, integratedTime, logID, logIndex}``, and/or its inclusion proof
    leads to the root hash of a checkpoint the log signed;
(3) its body records this very signature: :func:`check_body` (the entry's hash, key and
    signature against what is being verified, as cosign's ``VerifyBundle`` does).

Every failure is a :class:`TlogError` whose message says which step failed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from reconciler.verify.sigstore_root import TrustRoot, spki_id


class TlogError(ValueError):
    """A transparency-log entry that does not prove what it should."""


@dataclass(frozen=True)
class InclusionProof:
    """A Merkle path from the entry to ``root_hash`` of a tree of ``tree_size`` entries,
    and the log's signed checkpoint of that root."""

    log_index: int
    tree_size: int
    root_hash: bytes
    hashes: tuple[bytes, ...]
    checkpoint: str


@dataclass(frozen=True)
class LogEntry:
    """A Rekor entry as a bundle or cosign's annotation carries it; trusted only once
    :func:`verify_entry` checked it against a trusted root."""

    body: bytes  # the canonicalized entry body, as the log hashed it
    integrated_time: int
    log_index: int
    log_id: bytes
    promise: bytes | None = None  # the signed entry timestamp
    proof: InclusionProof | None = None

    @property
    def time(self) -> datetime:
        """When the log integrated the entry: when certificates and log keys must be valid."""
        return datetime.fromtimestamp(self.integrated_time, UTC)

    @classmethod
    def from_cosign_annotation(cls, text: str) -> LogEntry:
        """``dev.sigstore.cosign/bundle``: ``{SignedEntryTimestamp, Payload: {body,
        integratedTime, logIndex, logID}}`` as cosign v1/v2 writes it."""
        try:
            doc = json.loads(text)
            payload = doc["Payload"]
            return cls(
                body=base64.b64decode(payload["body"], validate=True),
                integrated_time=_int(payload["integratedTime"]),
                log_index=_int(payload["logIndex"]),
                log_id=bytes.fromhex(payload["logID"]),
                promise=base64.b64decode(doc["SignedEntryTimestamp"], validate=True),
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise TlogError(f"the Rekor bundle annotation is malformed ({exc})") from None

    @classmethod
    def from_bundle_entry(cls, raw: Mapping[str, Any]) -> LogEntry:
        """One ``verificationMaterial.tlogEntries`` item of a Sigstore bundle."""
        try:
            promise = (raw.get("inclusionPromise") or {}).get("signedEntryTimestamp")
            proof = raw.get("inclusionProof")
            return cls(
                body=base64.b64decode(raw["canonicalizedBody"], validate=True),
                integrated_time=_int(raw.get("integratedTime", 0)),
                log_index=_int(raw["logIndex"]),
                log_id=base64.b64decode(raw["logId"]["keyId"], validate=True),
                promise=base64.b64decode(promise, validate=True) if promise else None,
                proof=InclusionProof(
                    log_index=_int(proof["logIndex"]),
                    tree_size=_int(proof["treeSize"]),
                    root_hash=base64.b64decode(proof["rootHash"], validate=True),
                    hashes=tuple(base64.b64decode(h, validate=True) for h in proof["hashes"]),
                    checkpoint=str(proof["checkpoint"]["envelope"]),
                )
                if proof
                else None,
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise TlogError(f"the bundle's transparency-log entry is malformed ({exc})") from None


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"not an integer: {value!r}")
    return int(value)


def verify_entry(entry: LogEntry, root: TrustRoot) -> None:
    """Steps (1) and (2): the log is trusted and vouches for the entry. Raises TlogError."""
    try:
        log = root.tlog(entry.log_id, entry.time)
    except ValueError as exc:
        raise TlogError(str(exc)) from None
    if entry.promise is None and entry.proof is None:
        raise TlogError("the log entry has neither a signed entry timestamp nor a proof")
    if entry.promise is not None:
        if entry.integrated_time <= 0:
            raise TlogError("the log entry has a signed entry timestamp but no integrated time")
        if not log.verify(entry.promise, set_payload(entry)):
            raise TlogError(
                "the signed entry timestamp (SET) does not verify with the log's key: "
                "it was made for another entry, or by another log"
            )
    if entry.proof is not None:
        _verify_inclusion(entry, entry.proof)
        _verify_checkpoint(entry.proof, log.verify, entry.log_id)


def set_payload(entry: LogEntry) -> bytes:
    """What a SET signs: RFC 8785 JSON of the entry's four fields. With only ASCII
    strings and integers, sorted keys and no whitespace are exactly RFC 8785."""
    return json.dumps(
        {
            "body": base64.b64encode(entry.body).decode(),
            "integratedTime": entry.integrated_time,
            "logID": entry.log_id.hex(),
            "logIndex": entry.log_index,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def _leaf(body: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + body).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _verify_inclusion(entry: LogEntry, proof: InclusionProof) -> None:
    """RFC 9162 2.1.3.2: the audit path from the entry's leaf to the proof's root."""
    if proof.log_index != entry.log_index:
        raise TlogError("the inclusion proof is for another log index")
    index, last = proof.log_index, proof.tree_size - 1
    if not 0 <= index <= last:
        raise TlogError("the inclusion proof's index is outside its tree")
    node = _leaf(entry.body)
    for sibling in proof.hashes:
        if last == 0:
            raise TlogError("the inclusion proof is longer than its tree is deep")
        if index & 1 or index == last:
            node = _node(sibling, node)
            while index and not index & 1:
                index, last = index >> 1, last >> 1
        else:
            node = _node(node, sibling)
        index, last = index >> 1, last >> 1
    if last != 0 or node != proof.root_hash:
        raise TlogError("the inclusion proof does not lead to its root hash")


def _verify_checkpoint(proof: InclusionProof, verify: Any, log_id: bytes) -> None:
    """A signed note: ``origin\\nsize\\nb64(root)\\n[...]\\n\\n— name b64(hint+sig)\\n``."""
    text, sep, signatures = proof.checkpoint.partition("\n\n")
    if not sep:
        raise TlogError("the checkpoint is not a signed note")
    lines = text.split("\n")
    try:
        size, root = int(lines[1]), base64.b64decode(lines[2], validate=True)
    except (IndexError, ValueError, binascii.Error):
        raise TlogError("the checkpoint's body is malformed") from None
    if size != proof.tree_size or root != proof.root_hash:
        raise TlogError("the checkpoint is for another tree than the inclusion proof")
    note = (text + "\n").encode()
    for line in signatures.splitlines():
        if not line.startswith("\u2014 "):
            continue
        try:
            raw = base64.b64decode(line.rsplit(" ", 1)[1], validate=True)
        except (IndexError, ValueError, binascii.Error):
            continue
        if raw[:4] == log_id[:4] and verify(raw[4:], note):
            return
    raise TlogError("no signature of the log verifies the checkpoint")


# --------------------------------------------------------------------------- entry bodies


@dataclass(frozen=True)
class Body:
    """What an entry recorded: the signed data's hash, the signature, the signer's key."""

    kind: str
    hashes: tuple[str, ...]  # sha256 hex values the entry records for the signed material
    signatures: tuple[bytes, ...]
    keys: tuple[bytes, ...]  # PEM: a certificate or a public key


def parse_body(body: bytes) -> Body:
    """hashedrekord 0.0.1, dsse 0.0.1 and intoto 0.0.1/0.0.2, as cosign reads them."""
    try:
        doc = json.loads(body)
        kind, version, spec = doc["kind"], doc["apiVersion"], doc["spec"]
        if kind == "hashedrekord" and version == "0.0.1":
            data_hash = spec["data"]["hash"]
            return Body(
                kind,
                (_sha256(data_hash),),
                (_b64(spec["signature"]["content"]),),
                (_b64(spec["signature"]["publicKey"]["content"]),),
            )
        if kind == "dsse" and version == "0.0.1":
            sigs = spec["signatures"]
            return Body(
                kind,
                (_sha256(spec["envelopeHash"]), _sha256(spec["payloadHash"])),
                tuple(_b64(s["signature"]) for s in sigs),
                tuple(_b64(s["verifier"]) for s in sigs),
            )
        if kind == "intoto" and version == "0.0.1":
            return Body(kind, (_sha256(spec["content"]["hash"]),), (), (_b64(spec["publicKey"]),))
        if kind == "intoto" and version == "0.0.2":
            content = spec["content"]
            sigs = content["envelope"]["signatures"]
            # Its signatures are stored base64 twice; the envelope hash covers them.
            return Body(
                kind, (_sha256(content["hash"]),), (), tuple(_b64(s["publicKey"]) for s in sigs)
            )
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise TlogError(f"the log entry's body is malformed ({exc})") from None
    raise TlogError(f"unsupported log entry type {kind}/{version}")


def _sha256(raw: Mapping[str, Any]) -> str:
    if raw.get("algorithm") != "sha256":
        raise TlogError(f"unexpected hash algorithm {raw.get('algorithm')!r}")
    return str(raw["value"]).lower()


def _b64(value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError("expected base64 text")
    return base64.b64decode(value, validate=True)


def check_body(
    body: Body,
    *,
    hashes: frozenset[str],
    signature: bytes | None,
    signer: x509.Certificate | Any,
) -> None:
    """Step (3): the entry is about this signature (cosign ``compareSigs``,
    ``comparePublicKey``, ``bundleHash``). ``hashes``: the SHA-256 values (hex) the entry
    may record for what was signed (a payload, an envelope, the digest of a message);
    ``signature``: the signature it must record, where the entry records one;
    ``signer``: the certificate or public key that verified the signature."""
    if not hashes & set(body.hashes):
        raise TlogError("the log entry records another payload: it is for another signature")
    if signature is not None and body.signatures and signature not in body.signatures:
        raise TlogError("the log entry records another signature")
    if not any(_same_key(pem, signer) for pem in body.keys):
        raise TlogError("the log entry was made with another key or certificate")


def _same_key(pem: bytes, signer: x509.Certificate | Any) -> bool:
    try:
        if b"CERTIFICATE" in pem:
            cert = x509.load_pem_x509_certificate(pem)
            if isinstance(signer, x509.Certificate):
                return cert == signer
            return spki_id(cert.public_key()) == spki_id(signer)
        key = load_pem_public_key(pem)
    except ValueError:
        return False
    if isinstance(signer, x509.Certificate):
        return False  # a certificate's entry names the certificate, not a bare key
    return spki_id(key) == spki_id(signer)
