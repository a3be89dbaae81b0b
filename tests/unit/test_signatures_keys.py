"""Key-based signature verification: legacy cosign .sig payloads and public-key bundles."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from reconciler.model import Policy, PublicKey
from reconciler.verify import Refused
from reconciler.verify.signatures import Evidence, key_id, pae, require

DIGEST = "sha256:" + hashlib.sha256(b"the manifest").hexdigest()
OTHER = "sha256:" + hashlib.sha256(b"another manifest").hexdigest()


def keypair() -> tuple[ec.EllipticCurvePrivateKey, PublicKey]:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, PublicKey("keys/test.pub", pem.decode())


def simple_signing(
    private: ec.EllipticCurvePrivateKey, digest: str, kind: str = "cosign container image signature"
) -> Evidence:
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": "registry.example/app"},
                "image": {"docker-manifest-digest": digest},
                "type": kind,
            },
            "optional": None,
        }
    ).encode()
    signature = private.sign(payload, ec.ECDSA(hashes.SHA256()))
    return Evidence(
        "tag sha256-x.sig",
        "sha256:" + "1" * 64,
        payload=payload,
        signature=base64.b64encode(signature).decode(),
    )


def statement(digest: str, predicate: str = "https://sigstore.dev/cosign/sign/v1") -> bytes:
    return json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "app", "digest": {"sha256": digest.removeprefix("sha256:")}}],
            "predicateType": predicate,
            "predicate": {},
        }
    ).encode()


def dsse_bundle(
    private: ec.EllipticCurvePrivateKey,
    payload: bytes,
    sign: bytes | None = None,
    ptype: str = "application/vnd.in-toto+json",
) -> Evidence:
    sig = private.sign(pae(ptype, sign if sign is not None else payload), ec.ECDSA(hashes.SHA256()))
    doc = {
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": "k"}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": ptype,
            "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": ""}],
        },
    }
    return Evidence("referrer sha256:b", "sha256:" + "2" * 64, bundle=json.dumps(doc).encode())


def message_bundle(
    private: ec.EllipticCurvePrivateKey, digest: str, claimed: str | None = None
) -> Evidence:
    raw = bytes.fromhex(digest.removeprefix("sha256:"))
    sig = private.sign(raw, ec.ECDSA(Prehashed(hashes.SHA256())))
    named = bytes.fromhex((claimed or digest).removeprefix("sha256:"))
    doc = {
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": "k"}},
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": base64.b64encode(named).decode()},
            "signature": base64.b64encode(sig).decode(),
        },
    }
    return Evidence("referrer sha256:m", "sha256:" + "3" * 64, bundle=json.dumps(doc).encode())


def test_legacy_sig_with_the_right_key_matches_and_names_the_key() -> None:
    private, public = keypair()
    match = require(Policy(keys=(public,)), DIGEST, [simple_signing(private, DIGEST)], "dev/web")
    assert match.signer == f"key {key_id(public)}"


def test_legacy_sig_with_another_key_is_refused() -> None:
    private, _ = keypair()
    _, other_public = keypair()
    with pytest.raises(Refused, match="no policy key verifies this signature") as exc:
        require(Policy(keys=(other_public,)), DIGEST, [simple_signing(private, DIGEST)], "dev/web")
    assert exc.value.rule == "signatures"


def test_legacy_sig_over_another_digest_is_refused() -> None:
    private, public = keypair()
    with pytest.raises(Refused, match=f"the signature is for {OTHER}, not {DIGEST}"):
        require(Policy(keys=(public,)), DIGEST, [simple_signing(private, OTHER)], "dev/web")


def test_legacy_sig_with_tampered_payload_is_refused() -> None:
    private, public = keypair()
    good = simple_signing(private, OTHER)
    assert good.payload is not None
    tampered = Evidence(
        good.where,
        good.digest,
        payload=good.payload.replace(OTHER.encode(), DIGEST.encode()),
        signature=good.signature,
    )
    with pytest.raises(Refused, match="no policy key verifies"):
        require(Policy(keys=(public,)), DIGEST, [tampered], "dev/web")


def test_legacy_sig_of_another_type_is_refused() -> None:
    private, public = keypair()
    with pytest.raises(Refused, match="has type 'something else'"):
        require(
            Policy(keys=(public,)), DIGEST, [simple_signing(private, DIGEST, "something else")], "x"
        )


def test_one_of_several_keys_matching_is_enough() -> None:
    private, public = keypair()
    others = [keypair()[1] for _ in range(3)]
    match = require(Policy(keys=(*others, public)), DIGEST, [simple_signing(private, DIGEST)], "x")
    assert match.signer == f"key {key_id(public)}"


def test_any_good_signature_among_bad_ones_is_enough() -> None:
    private, public = keypair()
    stranger, _ = keypair()
    evidence = [simple_signing(stranger, DIGEST), simple_signing(private, DIGEST)]
    assert require(Policy(keys=(public,)), DIGEST, evidence, "x").signer.startswith("key ")


def test_key_bundle_dsse_passes_and_checks_the_statement() -> None:
    private, public = keypair()
    policy = Policy(keys=(public,))
    assert require(
        policy, DIGEST, [dsse_bundle(private, statement(DIGEST))], "x"
    ).signer.startswith("key")
    with pytest.raises(Refused, match="subject is not"):
        require(policy, DIGEST, [dsse_bundle(private, statement(OTHER))], "x")
    with pytest.raises(Refused, match="predicateType 'https://example/other'"):
        require(
            policy, DIGEST, [dsse_bundle(private, statement(DIGEST, "https://example/other"))], "x"
        )
    tampered = dsse_bundle(private, statement(DIGEST), sign=statement(OTHER))
    with pytest.raises(Refused, match="no policy key verifies this bundle"):
        require(policy, DIGEST, [tampered], "x")


@pytest.mark.parametrize("ptype", ["", "text/plain", "application/vnd.in-toto+json; x"])
def test_key_bundle_dsse_of_any_other_payload_type_counts_for_nothing(ptype: str) -> None:
    """A key-signed DSSE envelope with an empty or foreign payloadType is no signature of
    the digest, however validly it is signed."""
    private, public = keypair()
    policy = Policy(keys=(public,))
    for payload in (statement(DIGEST), b"anything at all"):
        with pytest.raises(Refused, match="DSSE payload type"):
            require(policy, DIGEST, [dsse_bundle(private, payload, ptype=ptype)], "x")


def test_key_bundle_message_signature_must_be_over_the_digest() -> None:
    private, public = keypair()
    policy = Policy(keys=(public,))
    assert require(policy, DIGEST, [message_bundle(private, DIGEST)], "x").signer.startswith("key")
    with pytest.raises(Refused, match="the bundle signs"):
        require(policy, DIGEST, [message_bundle(private, OTHER)], "x")
    with pytest.raises(Refused, match="no policy key verifies"):
        require(policy, DIGEST, [message_bundle(private, OTHER, claimed=DIGEST)], "x")


def test_no_signature_and_empty_policy_are_refusals() -> None:
    _, public = keypair()
    with pytest.raises(Refused, match="no signature found for"):
        require(Policy(keys=(public,)), DIGEST, [], "prod/web")
    with pytest.raises(Refused, match="names no key and no identity"):
        require(Policy(), DIGEST, [], "prod/web")


def test_keyless_bundle_needs_an_identity_in_the_policy() -> None:
    _, public = keypair()
    doc = {
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"certificate": {"rawBytes": ""}},
    }
    evidence = Evidence("referrer", "sha256:" + "4" * 64, bundle=json.dumps(doc).encode())
    with pytest.raises(Refused, match="policy names no identity"):
        require(Policy(keys=(public,)), DIGEST, [evidence], "x")


def test_malformed_bundles_are_refused_not_crashes() -> None:
    _, public = keypair()
    for raw in (b"not json", b"[]", b'{"verificationMaterial": {"publicKey": {}}}'):
        with pytest.raises(Refused):
            require(
                Policy(keys=(public,)),
                DIGEST,
                [Evidence("r", "sha256:" + "5" * 64, bundle=raw)],
                "x",
            )
