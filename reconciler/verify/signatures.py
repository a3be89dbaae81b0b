"""Signatures and attestations: does a policy accept what signs a digest? Fail closed.

What can sign a digest, and who checks it:

- cosign keys, legacy ``sha256-<hex>.sig`` tags (simple signing) and ``.att`` tags (a
  DSSE envelope): checked with ``cryptography`` over the exact payload bytes
  (:mod:`reconciler.verify.legacy`); the payload must name the digest.
- Legacy **keyless** ``.sig``/``.att`` layers (cosign v1/v2: the Fulcio certificate,
  its chain and a Rekor bundle in annotations): chain, SCT, signed entry timestamp,
  entry consistency, expiry at the integrated time and the identity policy, checked in
  :mod:`reconciler.verify.legacy` against the trusted root.
- Sigstore bundles whose verification material is a public key (``cosign sign --key``):
  checked here (DSSE over PAE, or a message signature over the digest), because
  sigstore-python verifies only certificate bundles; with a trusted root named, their
  transparency-log entry too (unless ``insecureIgnoreTlog``).
- Keyless Sigstore bundles: sigstore-python's ``Verifier`` (through the one adapter,
  :mod:`reconciler.verify.sigstore_adapter`) checks chain, SCT, inclusion proof,
  checkpoint and signed time; the identity policy (:mod:`reconciler.verify.identity`)
  issuer, subject and claims. The in-toto subject digest and predicate type are
  checked here.

An in-toto statement with predicate type ``https://sigstore.dev/cosign/sign/v1`` is a
signature; any other is an attestation, which counts only for an attestation rule of
the policy (``attestations: [{predicateType, …}]``): :func:`judge`.

Everything here takes bytes and returns a :class:`Match` / :class:`Judgement` or raises
:class:`Refused`; finding the evidence (registry I/O) is :func:`find_evidence`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.x509 import Certificate

from reconciler.model import Identity, Policy, PublicKey
from reconciler.registry import Registry
from reconciler.verify import identity as identities
from reconciler.verify.attestations import (
    VexStatement,
    is_openvex,
    provenance_mismatch,
    vex_statements,
)
from reconciler.verify.errors import Refused, Rule
from reconciler.verify.legacy import key_tlog, verify_layer
from reconciler.verify.material import (
    IN_TOTO,
    PREDICATE_TYPES,
    Evidence,
    Match,
    Verified,
    check_statement,
    key_id,
    pae,
    parse_envelope,
    public_key,
    verify_raw,
    verify_with,
)
from reconciler.verify.sigstore_adapter import (
    SigstoreRefused,
    default_trusted_root,
    verify_keyless_bundle,
)
from reconciler.verify.tlog import LogEntry, TlogError

log = logging.getLogger(__name__)

# (policy, digest, evidence, predicate types) -> what it verified; Refused otherwise
Verifier = Callable[[Policy, str, Evidence, frozenset[str] | None], Verified]

__all__ = [
    "IN_TOTO",
    "PREDICATE_TYPES",
    "Evidence",
    "Judgement",
    "Match",
    "accept",
    "find_evidence",
    "judge",
    "key_id",
    "pae",
    "require",
    "verify_with",
]

BUNDLE_TYPES = frozenset(
    {
        "application/vnd.dev.sigstore.bundle.v0.3+json",
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.1",
    }
)
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE_LAYER = "application/vnd.dsse.envelope.v1+json"
COSIGN_SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_CERTIFICATE = "dev.sigstore.cosign/certificate"
COSIGN_CHAIN = "dev.sigstore.cosign/chain"
COSIGN_BUNDLE = "dev.sigstore.cosign/bundle"
MAX_EVIDENCE_BYTES = 1 << 20
MAX_EVIDENCE = 32


# --------------------------------------------------------------------------- discovery


def find_evidence(registry: Registry, repository: str, digest: str) -> list[Evidence]:
    """Referrers (API, then the ``sha256-<hex>`` index tag), then the legacy ``.sig``
    and ``.att`` tags, in ``repository`` (the artifact's, or a ``signatures.repository``)."""
    found: list[Evidence] = []
    for desc in registry.referrers(repository, digest)[:MAX_EVIDENCE]:
        if desc.artifact_type not in BUNDLE_TYPES:
            continue
        manifest = registry.get_manifest(repository, desc.digest)
        for layer in manifest.blobs():
            if layer.media_type in BUNDLE_TYPES and layer.size <= MAX_EVIDENCE_BYTES:
                data = registry.read_blob(repository, layer.digest, MAX_EVIDENCE_BYTES)
                found.append(Evidence(f"referrer {desc.digest[:19]}", layer.digest, bundle=data))
    hexed = digest.replace(":", "-")
    found += _legacy(registry, repository, f"{hexed}.sig", SIMPLE_SIGNING)
    found += _legacy(registry, repository, f"{hexed}.att", DSSE_LAYER)
    return found


def _legacy(registry: Registry, repository: str, tag: str, media_type: str) -> list[Evidence]:
    """The layers of a cosign ``.sig`` / ``.att`` tag, with their annotations."""
    target = registry.resolve(repository, tag)
    if target is None:
        return []
    found = []
    envelope = media_type == DSSE_LAYER
    for layer in registry.get_manifest(repository, target).blobs()[: MAX_EVIDENCE + 1]:
        if layer.media_type != media_type or layer.size > MAX_EVIDENCE_BYTES:
            continue
        notes = layer.annotations or {}
        signature = notes.get(COSIGN_SIGNATURE_ANNOTATION)
        if not signature and not envelope:
            continue
        found.append(
            Evidence(
                f"tag {tag}",
                layer.digest,
                payload=registry.read_blob(repository, layer.digest, MAX_EVIDENCE_BYTES),
                signature=signature or "",
                certificate=notes.get(COSIGN_CERTIFICATE) or None,
                chain=notes.get(COSIGN_CHAIN) or None,
                rekor_bundle=notes.get(COSIGN_BUNDLE) or None,
                envelope=envelope,
            )
        )
    return found


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class Judgement:
    """What one policy accepted for one digest: a signature, one attestation per rule,
    and the OpenVEX statements of the verified VEX attestations."""

    signature: Match
    attestations: tuple[Match, ...] = ()
    vex: tuple[VexStatement, ...] = ()


def _stripped(exc: Refused) -> str:
    return exc.message.removeprefix("refused (signatures): ")


def _none_found(digest: str, what: str) -> Refused:
    return Refused(
        Rule.SIGNATURES,
        f"{what}: no signature found for {digest} (referrers API, sha256-<hex> "
        "referrer tag, sha256-<hex>.sig tag)",
        "sign the digest (cosign sign --key … or keyless) and push the signature "
        "next to the artifact (or into the policy's signatures.repository)",
    )


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
        raise Refused(Rule.SIGNATURES, f"{what}: the policy names no key and no identity")
    if not evidence:
        raise _none_found(digest, what)
    reasons: list[str] = []
    for item in evidence:
        try:
            return accept(policy, digest, item, predicate_types)
        except Refused as exc:
            reasons.append(f"{item.where}: {_stripped(exc)}")
    raise _unsatisfied(policy, digest, what, reasons)


def _unsatisfied(policy: Policy, digest: str, what: str, reasons: Sequence[str]) -> Refused:
    return Refused(
        Rule.SIGNATURES,
        f"{what}: no signature of {digest} satisfies the policy ({policy.describe()}): "
        + "; ".join(reasons),
        "sign with a key or identity the policy names, or fix the policy",
    )


def judge(
    policy: Policy,
    digest: str,
    evidence: Sequence[Evidence],
    what: str,
    verifier: Verifier | None = None,
) -> Judgement:
    """A signature ``policy`` accepts, and an attestation for each of its rules.

    ``verifier`` checks one piece of evidence (default :func:`verify`); a pass gives one
    that remembers its answers, since fifty environments share the same digests.

    Raises:
        Refused: (rule ``signatures``) no accepted signature, or a rule's attestation
            is missing, signed by no one the policy names, or says something else.
    """
    if policy.empty:
        raise Refused(Rule.SIGNATURES, f"{what}: the policy names no key and no identity")
    if not evidence:
        raise _none_found(digest, what)
    verified: list[tuple[Evidence, Verified]] = []
    reasons: list[str] = []
    for item in evidence:
        try:
            verified.append((item, (verifier or verify)(policy, digest, item, None)))
        except Refused as exc:
            reasons.append(f"{item.where}: {_stripped(exc)}")
    signature = next((v.match for _, v in verified if v.is_signature), None)
    if signature is None:
        allowed = ", ".join(sorted(PREDICATE_TYPES))
        reasons += [
            f"{item.where}: predicateType {v.predicate_type!r} is not one of {allowed} "
            "(an attestation, not a signature)"
            for item, v in verified
        ]
        raise _unsatisfied(policy, digest, what, reasons)
    attestations: list[Match] = []
    vex: list[VexStatement] = []
    for rule in policy.attestations:
        kind = rule.predicate_type
        candidates = [(item, v) for item, v in verified if _same_type(v.predicate_type, kind)]
        accepted, why = [], []
        for item, v in candidates:
            assert v.statement is not None
            mismatch = provenance_mismatch(rule, v.statement)
            if mismatch is None:
                accepted.append(v)
            else:
                why.append(f"{item.where}: {mismatch}")
        if not accepted:
            found = "; ".join(why) or (
                "none found" + (" that verifies (" + "; ".join(reasons) + ")" if reasons else "")
            )
            raise Refused(
                Rule.SIGNATURES,
                f"{what}: no attestation of type {kind} for {digest} satisfies the policy "
                f"({policy.describe()}): {found}",
                f"attest the digest (cosign attest --type … --predicate …) with a key or "
                f"identity the policy names, or drop the attestation rule for {kind}",
            )
        attestations.append(accepted[0].match)
        if is_openvex(kind):
            for v in accepted:
                assert v.statement is not None
                vex += vex_statements(v.statement.get("predicate"), digest, v.match.signer)
    return Judgement(signature, tuple(attestations), tuple(vex))


def _same_type(found: str | None, wanted: str) -> bool:
    """Exactly the rule's predicate type; for OpenVEX, any version of it (cosign attests
    ``https://openvex.dev/ns``, documents name ``…/ns/v0.2.0``)."""
    if found is None:
        return False
    return found == wanted or (is_openvex(wanted) and is_openvex(found))


def accept(
    policy: Policy,
    digest: str,
    item: Evidence,
    predicate_types: frozenset[str] | None = PREDICATE_TYPES,
) -> Match:
    """The rule of ``policy`` that ``item`` satisfies for ``digest``.

    Raises:
        Refused: the evidence does not verify, or names another digest or signer.
    """
    return verify(policy, digest, item, predicate_types).match


def verify(
    policy: Policy, digest: str, item: Evidence, predicate_types: frozenset[str] | None
) -> Verified:
    """One piece of evidence against ``policy``; Refused naming the reason."""
    if item.payload is not None:
        return verify_layer(policy, digest, item, predicate_types)
    if item.bundle is None:
        raise Refused(Rule.SIGNATURES, "empty evidence")
    try:
        doc = json.loads(item.bundle)
    except ValueError:
        raise Refused(Rule.SIGNATURES, "the bundle is not JSON") from None
    if not isinstance(doc, dict):
        raise Refused(Rule.SIGNATURES, "the bundle is not a JSON object")
    material = doc.get("verificationMaterial") or {}
    if "publicKey" in material:
        return _key_bundle(policy, digest, doc, item, predicate_types)
    return _keyless_bundle(policy, digest, item, predicate_types)


# --------------------------------------------------------------------------- key bundles


def _key_bundle(
    policy: Policy,
    digest: str,
    doc: dict[str, Any],
    item: Evidence,
    predicate_types: frozenset[str] | None,
) -> Verified:
    """A bundle ``cosign sign --key`` / ``attest --key`` writes: a DSSE envelope or a
    message signature, a key hint, and (with the log on) a transparency-log entry."""
    keys: Sequence[PublicKey] = policy.keys
    if not keys:
        raise Refused(Rule.SIGNATURES, "a key-signed bundle, but the policy names no key")
    try:
        if "dsseEnvelope" in doc:
            payload_type, payload, sigs = parse_envelope(doc["dsseEnvelope"])
            signed, prehashed = pae(payload_type, payload), False
            logged = frozenset({_sha256_hex(payload)})
        else:
            message = doc["messageSignature"]
            sigs = [base64.b64decode(message["signature"], validate=True)]
            named = base64.b64decode(message["messageDigest"]["digest"], validate=True)
            if message["messageDigest"].get("algorithm", "SHA2_256") != "SHA2_256":
                raise Refused(Rule.SIGNATURES, "the message digest is not SHA2_256")
            if "sha256:" + named.hex() != digest:
                raise Refused(
                    Rule.SIGNATURES, f"the bundle signs sha256:{named.hex()}, not {digest}"
                )
            signed, prehashed, payload, payload_type = named, True, b"", None
            logged = frozenset({named.hex()})
        entries = [
            LogEntry.from_bundle_entry(e)
            for e in (doc.get("verificationMaterial") or {}).get("tlogEntries") or []
        ]
    except TlogError as exc:
        raise Refused(Rule.SIGNATURES, str(exc)) from None
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise Refused(
            Rule.SIGNATURES, f"malformed bundle ({exc.__class__.__name__}: {exc})"
        ) from None
    for key in keys:
        public = public_key(key)
        if public is None:
            continue
        matched = next((s for s in sigs if verify_raw(public, s, signed, prehashed)), None)
        if matched is None:
            continue
        statement = None
        if payload_type is not None:  # DSSE: whatever the type says, it must name the digest
            statement = check_statement(payload_type, payload, digest, predicate_types)
        index, ignored = key_tlog(policy, entries, hashes=logged, signature=matched, signer=public)
        predicate = statement.get("predicateType") if statement else None
        return Verified(
            Match(f"key {key_id(key)}", item.digest, index, predicate, ignored), statement
        )
    raise Refused(Rule.SIGNATURES, "no policy key verifies this bundle")


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- keyless


def _keyless_bundle(
    policy: Policy, digest: str, item: Evidence, predicate_types: frozenset[str] | None
) -> Verified:
    if not policy.identities:
        raise Refused(Rule.SIGNATURES, "a keyless bundle, but the policy names no identity")
    assert item.bundle is not None
    root = policy.trusted_root_json or default_trusted_root()
    rule = _AnyIdentity(policy.identities)
    try:
        result = verify_keyless_bundle(item.bundle, root, rule, digest)
    except SigstoreRefused as exc:
        raise Refused(Rule.SIGNATURES, str(exc)) from None
    assert rule.matched is not None  # the policy ran and held
    statement = None
    if result.payload_type is not None:
        assert result.payload is not None
        statement = check_statement(result.payload_type, result.payload, digest, predicate_types)
    predicate = statement.get("predicateType") if statement else None
    match = Match(identities.describe(rule.matched), item.digest, result.log_index, predicate)
    return Verified(match, statement)


class _AnyIdentity:
    """A sigstore-python policy: any of the identities (``AnyOf`` semantics), remembering
    which one held for the receipt, and each one's reason when none did."""

    def __init__(self, choices: Sequence[Identity]) -> None:
        self.choices = choices
        self.matched: Identity | None = None

    def verify(self, cert: Certificate) -> None:
        self.matched = identities.first_match(self.choices, cert)
