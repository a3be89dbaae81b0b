"""The test Sigstore instance is real: sigstore-python verifies and refuses its bundles offline.

Product tests lean on ``tests.support.sigstore_instance``; if it produced bundles a real
verifier would not accept (or would accept when it must not), those tests would prove
nothing. These tests pin it to sigstore-python's own verdicts, with the network blocked.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sigstore.errors import VerificationError
from sigstore.hashes import Hashed
from sigstore.models import Bundle, InvalidBundle, TrustedRoot
from sigstore.verify import Verifier
from sigstore.verify.policy import Identity
from sigstore_models.bundle.v1 import Bundle as BundleModel
from sigstore_models.common.v1 import HashAlgorithm

from tests.support.sigstore_instance import (
    BUNDLE_MEDIA_TYPE,
    INTOTO_PAYLOAD_TYPE,
    SigstoreInstance,
    cosign_key_pair,
    in_toto_statement,
    sign_dsse_with_key,
    sign_simple_signing,
    tamper_dsse_payload,
)

IDENTITY = "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main"
ISSUER = "https://token.actions.githubusercontent.com"
ARTIFACT = b"an OCI manifest, say"
DIGEST = hashlib.sha256(ARTIFACT).hexdigest()
POLICY = Identity(identity=IDENTITY, issuer=ISSUER)


@pytest.fixture(scope="module", autouse=True)
def _no_network() -> Iterator[None]:
    """Any connection attempt (TUF refresh, Rekor lookup) fails, from fixture setup on."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        yield


@pytest.fixture(scope="module")
def instance() -> SigstoreInstance:
    return SigstoreInstance.create()


@pytest.fixture(scope="module")
def verifier(instance: SigstoreInstance, tmp_path_factory: pytest.TempPathFactory) -> Verifier:
    path = instance.write_trusted_root(tmp_path_factory.mktemp("trust"))
    return Verifier(trusted_root=TrustedRoot.from_file(str(path)))


@pytest.fixture(scope="module")
def dsse_bundle(instance: SigstoreInstance) -> str:
    return instance.sign_dsse(in_toto_statement(DIGEST), identity=IDENTITY, issuer=ISSUER)


def _subject_digests(payload: bytes) -> list[str]:
    return [s["digest"]["sha256"] for s in json.loads(payload)["subject"]]


# --- accepted ----------------------------------------------------------------------------


def test_dsse_bundle_verifies(verifier: Verifier, dsse_bundle: str) -> None:
    payload_type, payload = verifier.verify_dsse(Bundle.from_json(dsse_bundle), POLICY)
    assert payload_type == INTOTO_PAYLOAD_TYPE
    assert payload == in_toto_statement(DIGEST)
    assert _subject_digests(payload) == [DIGEST]
    assert json.loads(payload)["predicateType"] == "https://sigstore.dev/cosign/sign/v1"


@pytest.mark.parametrize("digest", [DIGEST, f"sha256:{DIGEST}", bytes.fromhex(DIGEST)])
def test_message_bundle_verifies(
    instance: SigstoreInstance, verifier: Verifier, digest: str | bytes
) -> None:
    bundle = Bundle.from_json(instance.sign_message(digest, identity=IDENTITY, issuer=ISSUER))
    hashed = Hashed(algorithm=HashAlgorithm.SHA2_256, digest=bytes.fromhex(DIGEST))
    verifier.verify_artifact(hashed, bundle, POLICY)
    verifier.verify_artifact(ARTIFACT, bundle, POLICY)


def test_email_identity(instance: SigstoreInstance, verifier: Verifier) -> None:
    email, issuer = "alice@example.com", "https://accounts.example.com"
    bundle = instance.sign_dsse(in_toto_statement(DIGEST), identity=email, issuer=issuer)
    verifier.verify_dsse(Bundle.from_json(bundle), Identity(identity=email, issuer=issuer))


def test_log_is_a_growing_merkle_tree(
    instance: SigstoreInstance, verifier: Verifier, dsse_bundle: str
) -> None:
    """Older bundles keep verifying as the log grows; proofs are real audit paths."""
    for _ in range(3):
        instance.sign_message(DIGEST, identity=IDENTITY, issuer=ISSUER)
    entry = json.loads(dsse_bundle)["verificationMaterial"]["tlogEntries"][0]
    assert entry["kindVersion"] == {"kind": "dsse", "version": "0.0.1"}
    assert int(entry["inclusionProof"]["treeSize"]) > 1
    assert entry["inclusionProof"]["hashes"]
    assert entry["inclusionProof"]["checkpoint"]["envelope"].startswith("test.rekor.test - ")
    verifier.verify_dsse(Bundle.from_json(dsse_bundle), POLICY)


def test_trusted_root_shape(instance: SigstoreInstance) -> None:
    root = json.loads(instance.trusted_root_json())
    assert root["mediaType"] == "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
    assert [len(root[k]) for k in ("tlogs", "ctlogs", "certificateAuthorities")] == [1, 1, 1]
    assert len(root["certificateAuthorities"][0]["certChain"]["certificates"]) == 2


# --- refused -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "reason"),
    [
        pytest.param(
            Identity(identity=IDENTITY.replace("main", "evil"), issuer=ISSUER),
            "SANs do not match",
            id="wrong-subject",
        ),
        pytest.param(
            Identity(identity=IDENTITY, issuer="https://accounts.google.com"),
            "OIDCIssuer does not match",
            id="wrong-issuer",
        ),
    ],
)
def test_wrong_identity_refused(
    verifier: Verifier, dsse_bundle: str, policy: Identity, reason: str
) -> None:
    with pytest.raises(VerificationError, match=reason):
        verifier.verify_dsse(Bundle.from_json(dsse_bundle), policy)


def test_other_instance_refused(verifier: Verifier) -> None:
    other = SigstoreInstance.create("other")
    dsse = other.sign_dsse(in_toto_statement(DIGEST), identity=IDENTITY, issuer=ISSUER)
    message = other.sign_message(DIGEST, identity=IDENTITY, issuer=ISSUER)
    with pytest.raises(VerificationError, match="certificate chain"):
        verifier.verify_dsse(Bundle.from_json(dsse), POLICY)
    with pytest.raises(VerificationError, match="certificate chain"):
        verifier.verify_artifact(ARTIFACT, Bundle.from_json(message), POLICY)


def test_tampered_payload_refused(verifier: Verifier, dsse_bundle: str) -> None:
    forged = in_toto_statement(hashlib.sha256(b"malware").hexdigest())
    with pytest.raises(VerificationError, match="DSSE: invalid signature"):
        verifier.verify_dsse(Bundle.from_json(tamper_dsse_payload(dsse_bundle, forged)), POLICY)


def test_wrong_artifact_refused(instance: SigstoreInstance, verifier: Verifier) -> None:
    bundle = Bundle.from_json(instance.sign_message(DIGEST, identity=IDENTITY, issuer=ISSUER))
    with pytest.raises(VerificationError, match="digest mismatch"):
        verifier.verify_artifact(b"another artifact", bundle, POLICY)


_NOW = dt.datetime.now(dt.UTC)
_EXPIRED: dict[str, dict[str, Any]] = {
    "expired-before-signing": {"not_after": _NOW - dt.timedelta(hours=1)},
    "logged-after-expiry": {"not_before": _NOW, "integrated_time": _NOW + dt.timedelta(hours=1)},
    "logged-before-validity": {
        "not_before": _NOW + dt.timedelta(minutes=5),
        "integrated_time": _NOW,
    },
}


@pytest.mark.parametrize("times", _EXPIRED.values(), ids=_EXPIRED.keys())
def test_certificate_outside_validity_refused(
    instance: SigstoreInstance, verifier: Verifier, times: dict[str, Any]
) -> None:
    dsse = instance.sign_dsse(in_toto_statement(DIGEST), identity=IDENTITY, issuer=ISSUER, **times)
    message = instance.sign_message(DIGEST, identity=IDENTITY, issuer=ISSUER, **times)
    with pytest.raises(VerificationError, match="not valid at validation time"):
        verifier.verify_dsse(Bundle.from_json(dsse), POLICY)
    with pytest.raises(VerificationError, match="not valid at validation time"):
        verifier.verify_artifact(ARTIFACT, Bundle.from_json(message), POLICY)


def test_bad_inputs_rejected(instance: SigstoreInstance) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        instance.sign_message(ARTIFACT, identity=IDENTITY, issuer=ISSUER)
    with pytest.raises(ValueError, match="sha256"):
        in_toto_statement("sha512:abcd")
    with pytest.raises(ValueError, match="not_after"):
        instance.sign_dsse(b"{}", identity=IDENTITY, issuer=ISSUER, not_before=_NOW, not_after=_NOW)


# --- key-based cosign material -----------------------------------------------------------


def _public_key(pem: str) -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key(pem.encode())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


@pytest.fixture(scope="module")
def key_pair() -> Iterator[tuple[ec.EllipticCurvePrivateKey, str]]:
    yield cosign_key_pair()


def test_simple_signing(key_pair: tuple[ec.EllipticCurvePrivateKey, str]) -> None:
    key, pem = key_pair
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    payload, signature = sign_simple_signing(key, DIGEST, "registry.example/app")
    assert payload == (
        b'{"critical":{"identity":{"docker-reference":"registry.example/app"},'
        b'"image":{"docker-manifest-digest":"sha256:' + DIGEST.encode() + b'"},'
        b'"type":"cosign container image signature"},"optional":null}'
    )
    _public_key(pem).verify(base64.b64decode(signature), payload, ec.ECDSA(hashes.SHA256()))


def test_dsse_with_key(key_pair: tuple[ec.EllipticCurvePrivateKey, str]) -> None:
    key, pem = key_pair
    statement = in_toto_statement(DIGEST)
    text = sign_dsse_with_key(key, statement)
    BundleModel.from_json(text)  # schema-valid protobuf-specs bundle
    bundle = json.loads(text)
    assert bundle["mediaType"] == BUNDLE_MEDIA_TYPE
    spki = _public_key(pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hint = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    assert bundle["verificationMaterial"] == {"publicKey": {"hint": hint}, "tlogEntries": []}
    envelope = bundle["dsseEnvelope"]
    assert base64.b64decode(envelope["payload"]) == statement
    pae = b"DSSEv1 %d %s %d %s" % (
        len(INTOTO_PAYLOAD_TYPE),
        INTOTO_PAYLOAD_TYPE.encode(),
        len(statement),
        statement,
    )
    sig = base64.b64decode(envelope["signatures"][0]["sig"])
    _public_key(pem).verify(sig, pae, ec.ECDSA(hashes.SHA256()))
    # sigstore-python has no key-based path: the product must verify these itself.
    with pytest.raises(InvalidBundle):
        Bundle.from_json(text)


def test_write_trusted_root_to_file(instance: SigstoreInstance, tmp_path: Path) -> None:
    path = instance.write_trusted_root(tmp_path / "root.json")
    assert path == tmp_path / "root.json"
    TrustedRoot.from_file(str(path))
