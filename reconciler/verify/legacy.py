"""Legacy cosign layers (``sha256-<hex>.sig`` and ``.att`` tags), as cosign v1/v2 writes them.

sigstore-python cannot verify these: their Rekor "bundle" is a signed entry timestamp
without an inclusion proof. What cosign's ``verifyInternal``/``VerifyBundle`` checks is
done here, offline, against the policy's trusted root (or the default one).

A layer signed with a **key** (no certificate annotation):

(k1) a policy key verifies the signature over the exact payload bytes (``.sig``) or
     over the DSSE envelope's PAE (``.att``);
(k2) the payload names the digest (simple signing, or an in-toto statement);
(k3) when the policy names a trusted root, the layer's Rekor bundle is required and
     checked as in steps (2) and (3) below, unless ``insecureIgnoreTlog``.

A **keyless** layer (``dev.sigstore.cosign/certificate``):

(1) the certificate's key verifies the signature (as k1);
(2) the Rekor bundle (``dev.sigstore.cosign/bundle``) is present, and its signed entry
    timestamp verifies with a transparency log of the trusted root valid at the
    integrated time;
(3) the entry records this signature: the payload's hash, the signature, the
    certificate (cosign ``compareSigs``/``comparePublicKey``/``bundleHash``);
(4) the integrated time is within the certificate's validity (cosign ``CheckExpiry``);
(5) the certificate chains to a CA of the trusted root valid at that time, with the
    code-signing usage;
(6) its embedded SCT verifies with a CT log of the trusted root;
(7) the identity policy holds (issuer, subject, claims);
(8) the payload names the digest (as k2).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import (
    ExtendedKeyUsage,
    ExtensionNotFound,
    KeyUsage,
    PrecertificateSignedCertificateTimestamps,
)
from cryptography.x509.certificate_transparency import LogEntryType
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)
from sigstore.errors import VerificationError as PolicyError

from reconciler.model import Policy
from reconciler.verify import identity as identities
from reconciler.verify.errors import Refused, Rule
from reconciler.verify.material import (
    Evidence,
    Match,
    Verified,
    check_simple_signing,
    check_statement,
    key_id,
    pae,
    parse_envelope,
    public_key,
    verify_raw,
)
from reconciler.verify.sigstore_adapter import default_trusted_root
from reconciler.verify.sigstore_root import TrustRoot, spki_id
from reconciler.verify.tlog import LogEntry, TlogError, check_body, parse_body, verify_entry

MAX_CHAIN = 8


def refuse(message: str) -> Refused:
    """A refusal under the ``signatures`` rule, as every legacy check says no."""
    return Refused(Rule.SIGNATURES, message)


@dataclass(frozen=True)
class _Layer:
    """What a layer signs: the bytes the signature covers, the signatures, and how the
    payload must name the digest."""

    signed: bytes
    signatures: tuple[bytes, ...]
    payload_type: str | None  # DSSE (.att); None: simple signing (.sig)
    payload: bytes
    hashes: frozenset[str]  # sha256 hex a log entry may record for this layer


def _layer(item: Evidence) -> _Layer:
    assert item.payload is not None
    blob_hash = hashlib.sha256(item.payload).hexdigest()
    if item.envelope:
        payload_type, payload, sigs = parse_envelope(item.payload)
        return _Layer(
            pae(payload_type, payload),
            tuple(sigs),
            payload_type,
            payload,
            frozenset({blob_hash, hashlib.sha256(payload).hexdigest()}),
        )
    try:
        signature = base64.b64decode(item.signature or "", validate=True)
    except (ValueError, binascii.Error):
        raise refuse("the signature annotation is not base64") from None
    return _Layer(item.payload, (signature,), None, item.payload, frozenset({blob_hash}))


def _content(
    layer: _Layer, digest: str, predicate_types: frozenset[str] | None
) -> dict[str, Any] | None:
    """(k2)/(8): the payload names the digest; returns an in-toto statement, if any."""
    if layer.payload_type is None:
        check_simple_signing(layer.payload, digest)
        return None
    return check_statement(layer.payload_type, layer.payload, digest, predicate_types)


def verify_layer(
    policy: Policy, digest: str, item: Evidence, predicate_types: frozenset[str] | None
) -> Verified:
    """A legacy layer against ``policy``. Raises Refused naming the step that failed."""
    layer = _layer(item)
    if item.certificate:
        return _keyless(policy, digest, item, layer, predicate_types)
    return _keyed(policy, digest, item, layer, predicate_types)


# --------------------------------------------------------------------------- keys


def _keyed(
    policy: Policy,
    digest: str,
    item: Evidence,
    layer: _Layer,
    predicate_types: frozenset[str] | None,
) -> Verified:
    if not policy.keys:
        raise refuse("a key-signed layer, but the policy names no key")
    for key in policy.keys:
        public = public_key(key)
        if public is None:
            continue
        matched = next((s for s in layer.signatures if verify_raw(public, s, layer.signed)), None)
        if matched is None:
            continue
        statement = _content(layer, digest, predicate_types)  # (k2)
        entries = [LogEntry.from_cosign_annotation(item.rekor_bundle)] if item.rekor_bundle else []
        index, ignored = key_tlog(  # (k3)
            policy,
            entries,
            hashes=layer.hashes,
            signature=matched,
            signer=public,
        )
        predicate = statement.get("predicateType") if statement else None
        match = Match(f"key {key_id(key)}", item.digest, index, predicate, ignored)
        return Verified(match, statement)
    raise refuse(
        "no policy key verifies this signature"
        if layer.payload_type is None
        else "no policy key verifies this attestation"
    )


def key_tlog(
    policy: Policy,
    entries: Sequence[LogEntry | Any],
    *,
    hashes: frozenset[str],
    signature: bytes | None,
    signer: Any,
) -> tuple[int | None, bool]:
    """A key signature's transparency-log entry: (its index, whether it was ignored).

    Required and checked when the policy names a trusted root (there is a log to check
    it against), unless ``insecureIgnoreTlog``; without a root there is none to check.
    """
    if policy.trusted_root_json is None:
        return None, False
    if policy.insecure_ignore_tlog:
        return None, True
    root = _root(policy.trusted_root_json)
    if not entries:
        raise refuse(
            f"the policy names a trusted root ({policy.trusted_root}), so a key signature "
            "needs a transparency-log entry, and this one has none (signed with "
            "--tlog-upload=false?); set insecureIgnoreTlog: true to accept that knowingly"
        )
    reasons = []
    for entry in entries:
        try:
            verify_entry(entry, root)
            check_body(parse_body(entry.body), hashes=hashes, signature=signature, signer=signer)
        except TlogError as exc:
            reasons.append(str(exc))
            continue
        return entry.log_index, False
    raise refuse("transparency log: " + "; ".join(reasons))


def _root(text: str) -> TrustRoot:
    try:
        return TrustRoot.from_json(text)
    except ValueError as exc:
        raise refuse(str(exc)) from None


# --------------------------------------------------------------------------- keyless


def _keyless(
    policy: Policy,
    digest: str,
    item: Evidence,
    layer: _Layer,
    predicate_types: frozenset[str] | None,
) -> Verified:
    if not policy.identities:
        raise refuse("a keyless (certificate) signature, but the policy names no identity")
    try:
        cert = x509.load_pem_x509_certificate((item.certificate or "").encode())
        chain = x509.load_pem_x509_certificates(item.chain.encode()) if item.chain else []
    except ValueError:
        raise refuse("the certificate or chain annotation is not PEM") from None
    # (1) the certificate's key signs the payload
    matched = next(
        (s for s in layer.signatures if verify_raw(cert.public_key(), s, layer.signed)), None
    )
    if matched is None:
        raise refuse("the signature does not verify with the certificate's key (tampered?)")
    # (2) a log entry the trusted root's log vouches for
    if not item.rekor_bundle:
        raise refuse(
            "a keyless signature without a Rekor bundle annotation cannot be verified "
            "offline (its time of signing is unknown)"
        )
    root = _root(policy.trusted_root_json or default_trusted_root())
    try:
        entry = LogEntry.from_cosign_annotation(item.rekor_bundle)
        verify_entry(entry, root)
        # (3) the entry is about this signature, payload and certificate
        check_body(parse_body(entry.body), hashes=layer.hashes, signature=matched, signer=cert)
    except TlogError as exc:
        raise refuse(f"transparency log: {exc}") from None
    when = entry.time
    # (4) the certificate was valid when the log integrated the entry
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        raise refuse(
            f"the certificate was not valid at the log's integrated time {when:%Y-%m-%dT%H:%M:%SZ}"
            f" (valid {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to "
            f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}): expired"
        )
    # (5) it chains to the trusted root's CAs at that time
    issuers = _chain(cert, chain[:MAX_CHAIN], root, when)
    # (6) its embedded SCT verifies with a CT log of the trusted root
    _check_sct(cert, issuers, root, when)
    # (7) the identity policy
    try:
        matched_identity = identities.first_match(policy.identities, cert)
    except PolicyError as exc:
        raise refuse(str(exc)) from None
    # (8) the payload names the digest
    statement = _content(layer, digest, predicate_types)
    predicate = statement.get("predicateType") if statement else None
    match = Match(identities.describe(matched_identity), item.digest, entry.log_index, predicate)
    return Verified(match, statement)


def _chain(
    cert: x509.Certificate,
    untrusted: list[x509.Certificate],
    root: TrustRoot,
    when: datetime,
) -> list[x509.Certificate]:
    """The verified chain above ``cert`` (issuer first), built at ``when`` like
    sigstore-python does: webpki defaults, but a code-signing EKU instead of client auth."""
    anchors = root.ca_certificates(when)
    if not anchors:
        raise refuse(f"the trusted root has no certificate authority valid at {when:%Y-%m-%d}")
    try:
        usage = cert.extensions.get_extension_for_class(KeyUsage).value
        extended = cert.extensions.get_extension_for_class(ExtendedKeyUsage).value
    except ExtensionNotFound:
        raise refuse("the certificate lacks key usage or extended key usage") from None
    if not usage.digital_signature or ExtendedKeyUsageOID.CODE_SIGNING not in extended:
        raise refuse("the certificate is not for code signing")
    ca_policy = ExtensionPolicy.webpki_defaults_ca().may_be_present(
        ExtendedKeyUsage, Criticality.NON_CRITICAL, None
    )
    ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        ExtendedKeyUsage, Criticality.NON_CRITICAL, None
    )
    verifier = (
        PolicyBuilder()
        .store(Store(anchors))
        .time(when)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
        .build_client_verifier()
    )
    try:
        return list(verifier.verify(cert, untrusted).chain[1:])
    except (VerificationError, ValueError) as exc:
        raise refuse(f"the certificate does not chain to the trusted root: {exc}") from None


def _check_sct(
    cert: x509.Certificate, issuers: list[x509.Certificate], root: TrustRoot, when: datetime
) -> None:
    """RFC 6962 3.2: the SCT signs the precertificate entry (the issuer's key hash and the
    TBS certificate without the SCT extension)."""
    try:
        scts = list(
            cert.extensions.get_extension_for_class(PrecertificateSignedCertificateTimestamps).value
        )
    except ExtensionNotFound:
        raise refuse("the certificate has no embedded SCT") from None
    if not issuers:
        raise refuse("the certificate's issuer is unknown, so its SCT cannot be checked")
    issuer_key_hash = spki_id(issuers[0].public_key())
    tbs = cert.tbs_precertificate_bytes
    reasons = []
    for sct in scts:
        if sct.entry_type != LogEntryType.PRE_CERTIFICATE:
            reasons.append("not a precertificate SCT")
            continue
        if not isinstance(sct.signature_hash_algorithm, hashes.SHA256):
            reasons.append("not SHA-256")
            continue
        stamp = int(sct.timestamp.replace(tzinfo=UTC).timestamp() * 1000)
        signed = (
            struct.pack("!BBQH", sct.version.value, 0, stamp, 1)
            + issuer_key_hash
            + len(tbs).to_bytes(3, "big")
            + tbs
            + struct.pack("!H", len(sct.extension_bytes))
            + sct.extension_bytes
        )
        try:
            log = root.ctlog(sct.log_id, when)
        except ValueError as exc:
            reasons.append(str(exc))
            continue
        if log.verify(sct.signature, signed):
            return
        reasons.append(f"the SCT of log {sct.log_id.hex()[:16]}… does not verify")
    raise refuse("certificate transparency: " + ("; ".join(reasons) or "no SCT"))
