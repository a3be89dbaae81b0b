"""Key-signed Sigstore bundles and the transparency log: required and checked when the
policy names a trusted root, ignored only by ``insecureIgnoreTlog``; and the log checks
themselves (SET, inclusion proof, checkpoint) against the private instance."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from typing import Any

import pytest

from reconciler.model import Policy, PublicKey
from reconciler.verify import Refused
from reconciler.verify.signatures import Evidence, key_id, require
from reconciler.verify.sigstore_root import TrustRoot
from reconciler.verify.tlog import LogEntry, TlogError, verify_entry
from tests.support.sigstore_instance import (
    SigstoreInstance,
    cosign_key_pair,
    in_toto_statement,
    sign_dsse_with_key,
)

DIGEST = "sha256:" + hashlib.sha256(b"a manifest").hexdigest()
OTHER = "sha256:" + hashlib.sha256(b"another manifest").hexdigest()
ZERO = base64.b64encode(bytes(32)).decode()


pytestmark = pytest.mark.usefixtures("offline")  # verification never goes online


@pytest.fixture(scope="module")
def instance() -> SigstoreInstance:
    return SigstoreInstance.create("tlog")


def rooted(instance: SigstoreInstance, pem: str, **extra: bool) -> Policy:
    return Policy(
        keys=(PublicKey("keys/cosign.pub", pem),),
        trusted_root="keys/trusted_root.json",
        trusted_root_json=instance.trusted_root_json(),
        **extra,
    )


def bundle(text: str) -> Evidence:
    return Evidence("referrer sha256:…", "sha256:" + "b" * 64, bundle=text.encode())


def refused(policy: Policy, item: Evidence, fragment: str) -> None:
    with pytest.raises(Refused) as exc:
        require(policy, DIGEST, [item], "prod/web")
    assert exc.value.rule == "signatures"
    assert fragment in exc.value.message, exc.value.message


def test_logged_key_bundle_passes_with_its_log_index(instance: SigstoreInstance) -> None:
    private, pem = cosign_key_pair()
    text = sign_dsse_with_key(private, in_toto_statement(DIGEST), log=instance)
    match = require(rooted(instance, pem), DIGEST, [bundle(text)], "x")
    entry = json.loads(text)["verificationMaterial"]["tlogEntries"][0]
    assert match.signer == f"key {key_id(PublicKey('k', pem))}"
    assert match.tlog_index == int(entry["logIndex"])
    assert not match.insecure_ignore_tlog


def test_key_bundle_without_entry_is_refused_when_a_root_is_named(
    instance: SigstoreInstance,
) -> None:
    private, pem = cosign_key_pair()
    text = sign_dsse_with_key(private, in_toto_statement(DIGEST))  # --tlog-upload=false
    refused(rooted(instance, pem), bundle(text), "needs a transparency-log entry")


def test_insecure_ignore_tlog_accepts_it_loudly(instance: SigstoreInstance) -> None:
    private, pem = cosign_key_pair()
    text = sign_dsse_with_key(private, in_toto_statement(DIGEST))
    match = require(rooted(instance, pem, insecure_ignore_tlog=True), DIGEST, [bundle(text)], "x")
    assert match.insecure_ignore_tlog and match.tlog_index is None
    assert "TLOG NOT CHECKED (insecureIgnoreTlog)" in str(match)
    assert match.to_json()["insecureIgnoreTlog"] is True
    assert "TLOG IGNORED" in rooted(instance, pem, insecure_ignore_tlog=True).describe()


def test_without_a_root_there_is_no_log_to_check(instance: SigstoreInstance) -> None:
    private, pem = cosign_key_pair()
    text = sign_dsse_with_key(private, in_toto_statement(DIGEST))
    match = require(Policy(keys=(PublicKey("k", pem),)), DIGEST, [bundle(text)], "x")
    assert match.tlog_index is None and not match.insecure_ignore_tlog


def test_entry_of_another_log_is_refused(instance: SigstoreInstance) -> None:
    private, pem = cosign_key_pair()
    stranger = SigstoreInstance.create("stranger-log")
    text = sign_dsse_with_key(private, in_toto_statement(DIGEST), log=stranger)
    refused(rooted(instance, pem), bundle(text), "no transparency log with id")


def test_entry_of_another_envelope_is_refused(instance: SigstoreInstance) -> None:
    private, pem = cosign_key_pair()
    mine = json.loads(sign_dsse_with_key(private, in_toto_statement(DIGEST)))
    theirs = json.loads(sign_dsse_with_key(private, in_toto_statement(OTHER), log=instance))
    mine["verificationMaterial"]["tlogEntries"] = theirs["verificationMaterial"]["tlogEntries"]
    refused(rooted(instance, pem), bundle(json.dumps(mine)), "records another payload")


def test_entry_made_with_another_key_is_refused(instance: SigstoreInstance) -> None:
    private, pem = cosign_key_pair()
    other, _ = cosign_key_pair()
    statement = in_toto_statement(DIGEST)
    mine = json.loads(sign_dsse_with_key(private, statement))
    theirs = json.loads(sign_dsse_with_key(other, statement, log=instance))
    mine["verificationMaterial"]["tlogEntries"] = theirs["verificationMaterial"]["tlogEntries"]
    refused(rooted(instance, pem), bundle(json.dumps(mine)), "another")


def _forge_checkpoint(entry: dict[str, Any]) -> None:
    """Keep the note, replace its signature by one with the right key hint but no value."""
    checkpoint = entry["inclusionProof"]["checkpoint"]
    note, _, signature = checkpoint["envelope"].partition("\n\n")
    name, hint_and_sig = signature.strip().rsplit(" ", 1)
    hint = base64.b64decode(hint_and_sig)[:4]
    forged = base64.b64encode(hint + b"\x30\x06\x02\x01\x01\x02\x01\x01").decode()
    checkpoint["envelope"] = f"{note}\n\n{name} {forged}\n"


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (
            lambda e: e["inclusionPromise"].update(
                signedEntryTimestamp=base64.b64encode(b"x" * 70).decode()
            ),
            "SET",
        ),
        (lambda e: e.update(integratedTime=str(int(e["integratedTime"]) + 1)), "SET"),
        (lambda e: e["inclusionProof"]["hashes"].__setitem__(0, ZERO), "inclusion proof"),
        (
            lambda e: e["inclusionProof"].update(
                treeSize=str(int(e["inclusionProof"]["treeSize"]) + 1)
            ),
            "inclusion proof",
        ),
        (_forge_checkpoint, "checkpoint"),
    ],
    ids=["forged-set", "moved-time", "wrong-path", "wrong-size", "bad-checkpoint"],
)
def test_damaged_log_entry_is_refused(
    instance: SigstoreInstance, damage: object, fragment: str
) -> None:
    private, pem = cosign_key_pair()
    doc = json.loads(sign_dsse_with_key(private, in_toto_statement(DIGEST), log=instance))
    damage(doc["verificationMaterial"]["tlogEntries"][0])  # type: ignore[operator]
    refused(rooted(instance, pem), bundle(json.dumps(doc)), fragment)


def test_inclusion_proofs_verify_at_every_position(instance: SigstoreInstance) -> None:
    """The RFC 9162 path check against the instance's RFC 6962 tree, for many sizes."""
    root = TrustRoot.from_json(instance.trusted_root_json())
    for n in range(12):
        entry = instance.log_key_entry(b'{"n": %d}' % n, "dsse")
        parsed = LogEntry.from_bundle_entry(entry)
        verify_entry(parsed, root)
        no_set = dataclasses.replace(parsed, promise=None)
        verify_entry(no_set, root)  # the proof alone suffices
        assert parsed.proof is not None
        bad = dataclasses.replace(parsed, body=parsed.body + b" ", promise=None)
        with pytest.raises(TlogError, match="inclusion proof"):
            verify_entry(bad, root)


def test_an_entry_with_neither_set_nor_proof_is_refused(instance: SigstoreInstance) -> None:
    root = TrustRoot.from_json(instance.trusted_root_json())
    parsed = LogEntry.from_bundle_entry(instance.log_key_entry(b"{}", "dsse"))
    with pytest.raises(TlogError, match="neither"):
        verify_entry(dataclasses.replace(parsed, promise=None, proof=None), root)


def test_a_log_outside_its_validity_is_refused(instance: SigstoreInstance) -> None:
    doc = json.loads(instance.trusted_root_json())
    doc["tlogs"][0]["publicKey"]["validFor"]["end"] = "2020-01-01T00:00:00Z"
    root = TrustRoot.from_json(json.dumps(doc))
    parsed = LogEntry.from_bundle_entry(instance.log_key_entry(b"{}", "dsse"))
    with pytest.raises(TlogError, match="was not valid at"):
        verify_entry(parsed, root)


def test_unusable_trusted_root_is_refused(instance: SigstoreInstance) -> None:
    private, pem = cosign_key_pair()
    text = sign_dsse_with_key(private, in_toto_statement(DIGEST), log=instance)
    broken = dataclasses.replace(rooted(instance, pem), trusted_root_json='{"mediaType": "x"}')
    refused(broken, bundle(text), "unsupported trusted root")
