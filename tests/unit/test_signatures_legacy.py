"""Legacy cosign layers (``.sig``/``.att``, cosign v1/v2) through the reconciler's layer,
against a private Sigstore instance: keyless (certificate, chain, Rekor SET) and keyed."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json

import pytest

from reconciler.model import AttestationRule, Identity, Policy, PublicKey
from reconciler.verify import Refused
from reconciler.verify.signatures import Evidence, judge, key_id, require
from tests.support.sigstore_instance import (
    LegacyLayer,
    SigstoreInstance,
    cosign_key_pair,
    in_toto_statement,
    legacy_rekor_bundle,
    simple_signing_payload,
)

DIGEST = "sha256:" + hashlib.sha256(b"a manifest").hexdigest()
OTHER = "sha256:" + hashlib.sha256(b"another manifest").hexdigest()
WORKFLOW = "https://github.com/acme/shop/.github/workflows/release.yml@refs/tags/v1.2"
ISSUER = "https://token.actions.githubusercontent.com"
CLAIMS = {
    "github_workflow_repository": "acme/shop",
    "github_workflow_ref": "refs/tags/v1.2",
    "github_workflow_trigger": "push",
    "github_workflow_sha": "a" * 40,
    "github_workflow_name": "release",
    "build_signer_uri": WORKFLOW,
}
PROVENANCE = "https://slsa.dev/provenance/v1"


pytestmark = pytest.mark.usefixtures("offline")  # verification never goes online


@pytest.fixture(scope="module")
def instance() -> SigstoreInstance:
    return SigstoreInstance.create("legacy")


def policy(instance: SigstoreInstance, *identities: Identity, **extra: object) -> Policy:
    return Policy(
        identities=identities or (Identity(ISSUER, WORKFLOW),),
        trusted_root="keys/trusted_root.json",
        trusted_root_json=instance.trusted_root_json(),
        **extra,  # type: ignore[arg-type]
    )


def evidence(layer: LegacyLayer, **changes: str) -> Evidence:
    notes = {**layer.annotations, **changes}
    return Evidence(
        "tag sha256-….sig",
        layer.digest,
        payload=layer.blob,
        signature=notes.get("dev.cosignproject.cosign/signature", ""),
        certificate=notes.get("dev.sigstore.cosign/certificate") or None,
        chain=notes.get("dev.sigstore.cosign/chain") or None,
        rekor_bundle=notes.get("dev.sigstore.cosign/bundle") or None,
        envelope=layer.media_type.startswith("application/vnd.dsse"),
    )


def keyless_sig(instance: SigstoreInstance, digest: str = DIGEST, **kw: object) -> LegacyLayer:
    return instance.sign_legacy(
        simple_signing_payload(digest),
        identity=str(kw.pop("identity", WORKFLOW)),
        issuer=str(kw.pop("issuer", ISSUER)),
        **kw,  # type: ignore[arg-type]
    )


def refused(pol: Policy, item: Evidence, fragment: str, digest: str = DIGEST) -> Refused:
    with pytest.raises(Refused) as exc:
        require(pol, digest, [item], "prod/web")
    assert exc.value.rule == "signatures"
    assert fragment in exc.value.message, exc.value.message
    assert "prod/web" in exc.value.message
    return exc.value


# --------------------------------------------------------------------------- keyless .sig


def test_keyless_sig_as_cosign_v2_writes_it_passes_with_receipt(
    instance: SigstoreInstance,
) -> None:
    layer = keyless_sig(instance)
    match = require(policy(instance), DIGEST, [evidence(layer)], "prod/web")
    assert match.signer == f"identity {ISSUER} {WORKFLOW}"
    assert match.evidence == layer.digest
    bundle = json.loads(layer.annotations["dev.sigstore.cosign/bundle"])
    assert match.tlog_index == bundle["Payload"]["logIndex"]
    assert not match.insecure_ignore_tlog


def test_wrong_identity_is_refused(instance: SigstoreInstance) -> None:
    layer = keyless_sig(instance, identity=WORKFLOW.replace("release.yml", "debug.yml"))
    refused(policy(instance), evidence(layer), "does not match")


def test_wrong_issuer_is_refused(instance: SigstoreInstance) -> None:
    layer = keyless_sig(instance, issuer="https://accounts.example.com")
    refused(policy(instance), evidence(layer), "issuer 'https://accounts.example.com'")


def test_issuer_and_subject_regexps_are_anchored(instance: SigstoreInstance) -> None:
    item = evidence(keyless_sig(instance))
    whole = Identity(
        issuer_regexp=r"https://token\.actions\.githubusercontent\.com",
        subject_regexp=r"https://github\.com/acme/shop/\.github/workflows/release\.yml@.+",
    )
    assert require(policy(instance, whole), DIGEST, [item], "x").signer.startswith(
        "identity ~https://token"
    )
    prefix = dataclasses.replace(whole, issuer_regexp=r"https://token\.actions")
    refused(policy(instance, prefix), item, "is not ~https://token")
    partial = dataclasses.replace(whole, subject_regexp=r"https://github\.com/acme")
    refused(policy(instance, partial), item, "does not match")


def test_claims_all_hold_or_the_signature_is_refused(instance: SigstoreInstance) -> None:
    item = evidence(keyless_sig(instance, claims=CLAIMS))
    every = Identity(ISSUER, WORKFLOW, **CLAIMS)
    match = require(policy(instance, every), DIGEST, [item], "x")
    assert "githubWorkflowRef=refs/tags/v1.2" in match.signer
    assert f"buildSignerURI={WORKFLOW}" in match.signer
    for claim, wrong in [
        ("github_workflow_repository", "evil/shop"),
        ("github_workflow_ref", "refs/heads/debug"),
        ("github_workflow_trigger", "workflow_dispatch"),
        ("github_workflow_sha", "b" * 40),
        ("github_workflow_name", "debug"),
        ("build_signer_uri", WORKFLOW.replace("release", "debug")),
    ]:
        rule = dataclasses.replace(every, **{claim: wrong})
        field = {
            "github_workflow_repository": "githubWorkflowRepository",
            "github_workflow_ref": "githubWorkflowRef",
            "github_workflow_trigger": "githubWorkflowTrigger",
            "github_workflow_sha": "githubWorkflowSha",
            "github_workflow_name": "githubWorkflowName",
            "build_signer_uri": "buildSignerURI",
        }[claim]
        refused(policy(instance, rule), item, f"{field}: ")


def test_a_claim_the_certificate_lacks_is_refused(instance: SigstoreInstance) -> None:
    item = evidence(keyless_sig(instance))  # no claims at all
    rule = Identity(ISSUER, WORKFLOW, github_workflow_repository="acme/shop")
    refused(policy(instance, rule), item, "does not contain GitHubWorkflowRepository")


def test_any_identity_of_the_policy_may_match(instance: SigstoreInstance) -> None:
    item = evidence(keyless_sig(instance))
    other = Identity(ISSUER, "https://github.com/acme/other/.github/workflows/x.yml@refs/x")
    assert require(policy(instance, other, Identity(ISSUER, WORKFLOW)), DIGEST, [item], "x")
    with pytest.raises(Refused, match=r"does not match.*; .*does not match"):
        require(policy(instance, other, other), DIGEST, [item], "x")


def test_set_of_another_entry_is_refused(instance: SigstoreInstance) -> None:
    mine, theirs = keyless_sig(instance), keyless_sig(instance, OTHER)
    swapped = evidence(
        mine, **{"dev.sigstore.cosign/bundle": theirs.annotations["dev.sigstore.cosign/bundle"]}
    )
    refused(policy(instance), swapped, "records another payload")


def test_forged_set_is_refused(instance: SigstoreInstance) -> None:
    layer = keyless_sig(instance)
    bundle = json.loads(layer.annotations["dev.sigstore.cosign/bundle"])
    bundle["Payload"]["integratedTime"] += 60  # a later time than the log signed
    item = evidence(layer, **{"dev.sigstore.cosign/bundle": json.dumps(bundle)})
    refused(policy(instance), item, "signed entry timestamp (SET) does not verify")


def test_certificate_expired_at_integrated_time_is_refused(instance: SigstoreInstance) -> None:
    now = dt.datetime.now(dt.UTC)
    layer = keyless_sig(
        instance,
        not_before=now - dt.timedelta(hours=2),
        not_after=now - dt.timedelta(hours=1),
        integrated_time=now,
    )
    refused(policy(instance), evidence(layer), "expired")


def test_tampered_payload_is_refused(instance: SigstoreInstance) -> None:
    layer = keyless_sig(instance, OTHER)
    forged = dataclasses.replace(layer, blob=simple_signing_payload(DIGEST))
    refused(policy(instance), evidence(forged), "does not verify with the certificate's key")


def test_signature_of_another_digest_is_refused(instance: SigstoreInstance) -> None:
    refused(policy(instance), evidence(keyless_sig(instance, OTHER)), f"is for {OTHER}")


def test_keyless_sig_without_rekor_bundle_is_refused(instance: SigstoreInstance) -> None:
    item = dataclasses.replace(evidence(keyless_sig(instance)), rekor_bundle=None)
    refused(policy(instance), item, "cannot be verified offline")


def test_another_instance_is_refused(instance: SigstoreInstance) -> None:
    stranger = SigstoreInstance.create("stranger")
    refused(policy(instance), evidence(keyless_sig(stranger)), "no transparency log with id")


def test_certificate_of_another_ca_is_refused_even_with_our_log(
    instance: SigstoreInstance,
) -> None:
    stranger = SigstoreInstance.create("stranger-ca")
    theirs = keyless_sig(stranger)
    # A genuine entry in OUR log, for THEIR certificate: the log vouches, the CA does not.
    cert = theirs.annotations["dev.sigstore.cosign/certificate"]
    body = json.dumps(
        {
            "apiVersion": "0.0.1",
            "kind": "hashedrekord",
            "spec": {
                "data": {"hash": {"algorithm": "sha256", "value": theirs.digest[7:]}},
                "signature": {
                    "content": theirs.annotations["dev.cosignproject.cosign/signature"],
                    "publicKey": {"content": base64.b64encode(cert.encode()).decode()},
                },
            },
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    entry = instance.log_key_entry(body, "hashedrekord")
    item = evidence(theirs, **{"dev.sigstore.cosign/bundle": legacy_rekor_bundle(entry)})
    refused(policy(instance), item, "does not chain to the trusted root")


def test_sct_of_an_unknown_ct_log_is_refused(instance: SigstoreInstance) -> None:
    root = json.loads(instance.trusted_root_json())
    root["ctlogs"] = json.loads(SigstoreInstance.create("other-ct").trusted_root_json())["ctlogs"]
    swapped = dataclasses.replace(policy(instance), trusted_root_json=json.dumps(root))
    refused(swapped, evidence(keyless_sig(instance)), "certificate transparency: ")


def test_keyless_sig_against_a_key_only_policy_is_refused(instance: SigstoreInstance) -> None:
    _, pem = cosign_key_pair()
    item = evidence(keyless_sig(instance))
    refused(Policy(keys=(PublicKey("k.pub", pem),)), item, "names no identity")


# --------------------------------------------------------------------------- keyed .sig


def test_key_sig_with_log_entry_is_checked_when_a_root_is_named(
    instance: SigstoreInstance,
) -> None:
    private, pem = cosign_key_pair()
    key = PublicKey("keys/cosign.pub", pem)
    logged = instance.log_key_layer(private, simple_signing_payload(DIGEST))
    rooted = Policy(
        keys=(key,), trusted_root="r.json", trusted_root_json=instance.trusted_root_json()
    )
    match = require(rooted, DIGEST, [evidence(logged)], "x")
    assert match.signer == f"key {key_id(key)}" and match.tlog_index is not None

    unlogged = dataclasses.replace(evidence(logged), rekor_bundle=None)
    refused(rooted, unlogged, "needs a transparency-log entry")
    loud = require(dataclasses.replace(rooted, insecure_ignore_tlog=True), DIGEST, [unlogged], "x")
    assert loud.insecure_ignore_tlog and "TLOG NOT CHECKED" in str(loud)
    # Without a root there is no log to check against: accepted as before.
    plain = require(Policy(keys=(key,)), DIGEST, [unlogged], "x")
    assert plain.tlog_index is None and not plain.insecure_ignore_tlog


def test_key_sig_with_entry_of_another_signature_is_refused(instance: SigstoreInstance) -> None:
    private, pem = cosign_key_pair()
    mine = instance.log_key_layer(private, simple_signing_payload(DIGEST))
    theirs = instance.log_key_layer(private, simple_signing_payload(OTHER))
    swapped = evidence(
        mine, **{"dev.sigstore.cosign/bundle": theirs.annotations["dev.sigstore.cosign/bundle"]}
    )
    rooted = Policy(
        keys=(PublicKey("k.pub", pem),),
        trusted_root="r.json",
        trusted_root_json=instance.trusted_root_json(),
    )
    refused(rooted, swapped, "records another payload")


# --------------------------------------------------------------------------- .att layers


@pytest.mark.parametrize("entry_kind", ["dsse", "intoto"])
def test_keyless_att_attestation_satisfies_a_provenance_rule(
    instance: SigstoreInstance, entry_kind: str
) -> None:
    signature = evidence(keyless_sig(instance))
    statement = in_toto_statement(
        DIGEST,
        PROVENANCE,
        predicate={"runDetails": {"builder": {"id": WORKFLOW}}},
    )
    att = instance.sign_legacy(
        statement, identity=WORKFLOW, issuer=ISSUER, envelope=True, entry_kind=entry_kind
    )
    rule = AttestationRule(PROVENANCE, builder_id=WORKFLOW)
    judged = judge(policy(instance, attestations=(rule,)), DIGEST, [signature, evidence(att)], "x")
    assert judged.attestations[0].predicate_type == PROVENANCE
    assert judged.attestations[0].evidence == att.digest
    wrong = AttestationRule(PROVENANCE, builder_id="https://evil.example/builder")
    with pytest.raises(Refused, match="builder id") as exc:
        judge(policy(instance, attestations=(wrong,)), DIGEST, [signature, evidence(att)], "x")
    assert exc.value.rule == "signatures"


def test_an_attestation_is_not_a_signature(instance: SigstoreInstance) -> None:
    att = instance.sign_legacy(
        in_toto_statement(DIGEST, PROVENANCE), identity=WORKFLOW, issuer=ISSUER, envelope=True
    )
    with pytest.raises(Refused, match="an attestation, not a signature"):
        judge(policy(instance), DIGEST, [evidence(att)], "x")
