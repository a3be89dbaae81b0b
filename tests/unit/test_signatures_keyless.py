"""Keyless verification through the reconciler's layer, against a private Sigstore instance."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re

import pytest

from reconciler.model import AttestationRule, Identity, Policy
from reconciler.verify import Refused
from reconciler.verify.signatures import Evidence, judge, require
from tests.support.sigstore_instance import SigstoreInstance, in_toto_statement, tamper_dsse_payload

DIGEST = "sha256:" + hashlib.sha256(b"a manifest").hexdigest()
OTHER = "sha256:" + hashlib.sha256(b"another manifest").hexdigest()
WORKFLOW = "https://github.com/acme/shop/.github/workflows/release.yml@refs/heads/main"
ISSUER = "https://token.actions.githubusercontent.com"


@pytest.fixture(scope="module")
def instance() -> SigstoreInstance:
    return SigstoreInstance.create("reconciler-test")


def policy(instance: SigstoreInstance, **identity: str) -> Policy:
    ident = Identity(
        identity.get("issuer", ISSUER), identity.get("subject"), identity.get("regexp")
    )
    if ident.subject is None and ident.subject_regexp is None:
        ident = Identity(ident.issuer, WORKFLOW)
    return Policy(
        identities=(ident,), trusted_root="t.json", trusted_root_json=instance.trusted_root_json()
    )


def evidence(bundle: str) -> Evidence:
    return Evidence("referrer", "sha256:" + "9" * 64, bundle=bundle.encode())


def test_dsse_statement_for_the_digest_passes_with_receipt(instance: SigstoreInstance) -> None:
    bundle = instance.sign_dsse(in_toto_statement(DIGEST), identity=WORKFLOW, issuer=ISSUER)
    match = require(policy(instance), DIGEST, [evidence(bundle)], "prod/web")
    assert match.signer == f"identity {ISSUER} {WORKFLOW}"
    assert match.tlog_index is not None


def test_message_signature_over_the_digest_passes(instance: SigstoreInstance) -> None:
    bundle = instance.sign_message(DIGEST, identity=WORKFLOW, issuer=ISSUER)
    assert require(policy(instance), DIGEST, [evidence(bundle)], "x").signer.startswith("identity")
    with pytest.raises(Refused, match="digest mismatch"):
        require(policy(instance), OTHER, [evidence(bundle)], "x")


def test_anchored_subject_regexp(instance: SigstoreInstance) -> None:
    bundle = evidence(
        instance.sign_dsse(in_toto_statement(DIGEST), identity=WORKFLOW, issuer=ISSUER)
    )
    ok = r"https://github\.com/acme/shop/\.github/workflows/release\.yml@refs/heads/.+"
    assert require(policy(instance, regexp=ok), DIGEST, [bundle], "x")
    with pytest.raises(Refused, match="does not match"):  # a prefix is not a match
        require(policy(instance, regexp=r"https://github\.com/acme"), DIGEST, [bundle], "x")
    with pytest.raises(Refused, match="does not match"):
        require(policy(instance, regexp=r"https://github\.com/evil/.*"), DIGEST, [bundle], "x")


@pytest.mark.parametrize(
    ("identity", "fragment"),
    [
        (
            {"subject": "https://github.com/evil/shop/.github/workflows/x.yml@refs/heads/main"},
            "does not match",
        ),
        ({"issuer": "https://accounts.example.com"}, "issuer"),
    ],
)
def test_wrong_subject_or_issuer_is_refused(
    instance: SigstoreInstance, identity: dict[str, str], fragment: str
) -> None:
    bundle = instance.sign_dsse(in_toto_statement(DIGEST), identity=WORKFLOW, issuer=ISSUER)
    with pytest.raises(Refused, match=fragment) as exc:
        require(policy(instance, **identity), DIGEST, [evidence(bundle)], "prod/web")
    assert exc.value.rule == "signatures" and "prod/web" in exc.value.message


def test_bundle_from_another_instance_is_refused(instance: SigstoreInstance) -> None:
    stranger = SigstoreInstance.create("stranger")
    bundle = stranger.sign_dsse(in_toto_statement(DIGEST), identity=WORKFLOW, issuer=ISSUER)
    with pytest.raises(Refused, match="certificate"):
        require(policy(instance), DIGEST, [evidence(bundle)], "x")


def test_statement_for_another_digest_is_refused(instance: SigstoreInstance) -> None:
    bundle = instance.sign_dsse(in_toto_statement(OTHER), identity=WORKFLOW, issuer=ISSUER)
    with pytest.raises(Refused, match=f"subject is not {DIGEST}"):
        require(policy(instance), DIGEST, [evidence(bundle)], "x")


def test_tampered_payload_is_refused(instance: SigstoreInstance) -> None:
    bundle = instance.sign_dsse(in_toto_statement(OTHER), identity=WORKFLOW, issuer=ISSUER)
    forged = tamper_dsse_payload(bundle, in_toto_statement(DIGEST))
    with pytest.raises(Refused, match="invalid signature"):
        require(policy(instance), DIGEST, [evidence(forged)], "x")


def test_expired_certificate_is_refused(instance: SigstoreInstance) -> None:
    now = dt.datetime.now(dt.UTC)
    bundle = instance.sign_dsse(
        in_toto_statement(DIGEST),
        identity=WORKFLOW,
        issuer=ISSUER,
        not_before=now - dt.timedelta(hours=2),
        not_after=now - dt.timedelta(hours=1),
        integrated_time=now,
    )
    with pytest.raises(Refused, match="not valid"):
        require(policy(instance), DIGEST, [evidence(bundle)], "x")


def test_unexpected_predicate_type_is_refused(instance: SigstoreInstance) -> None:
    statement = in_toto_statement(DIGEST, predicate_type="https://slsa.dev/provenance/v1")
    bundle = instance.sign_dsse(statement, identity=WORKFLOW, issuer=ISSUER)
    with pytest.raises(Refused, match="predicateType"):
        require(policy(instance), DIGEST, [evidence(bundle)], "x")


CLAIMS = {
    "github_workflow_repository": "acme/shop",
    "github_workflow_ref": "refs/heads/main",
    "github_workflow_trigger": "push",
    "github_workflow_sha": "c" * 40,
    "github_workflow_name": "release",
    "build_signer_uri": WORKFLOW,
}


def test_certificate_claims_through_sigstore_python(instance: SigstoreInstance) -> None:
    bundle = evidence(
        instance.sign_dsse(
            in_toto_statement(DIGEST), identity=WORKFLOW, issuer=ISSUER, claims=CLAIMS
        )
    )
    every = Identity(ISSUER, WORKFLOW, **CLAIMS)
    with_root = dataclasses.replace(policy(instance), identities=(every,))
    match = require(with_root, DIGEST, [bundle], "x")
    assert "githubWorkflowRepository=acme/shop" in match.signer
    wrong = dataclasses.replace(every, github_workflow_trigger="workflow_dispatch")
    with pytest.raises(Refused, match="githubWorkflowTrigger: ") as exc:
        require(dataclasses.replace(with_root, identities=(wrong,)), DIGEST, [bundle], "x")
    assert exc.value.rule == "signatures"


def test_issuer_regexp_through_sigstore_python(instance: SigstoreInstance) -> None:
    bundle = evidence(instance.sign_message(DIGEST, identity=WORKFLOW, issuer=ISSUER))
    anchored = Identity(issuer_regexp=r"https://token\.actions\..+\.com", subject=WORKFLOW)
    with_root = dataclasses.replace(policy(instance), identities=(anchored,))
    assert require(with_root, DIGEST, [bundle], "x").signer.startswith("identity ~https://")
    prefix = Identity(issuer_regexp=r"https://token", subject=WORKFLOW)
    with pytest.raises(Refused, match="is not ~https://token"):
        require(dataclasses.replace(with_root, identities=(prefix,)), DIGEST, [bundle], "x")


def test_keyless_attestation_bundle_satisfies_a_rule(instance: SigstoreInstance) -> None:
    signature = evidence(
        instance.sign_dsse(in_toto_statement(DIGEST), identity=WORKFLOW, issuer=ISSUER)
    )
    provenance = in_toto_statement(
        DIGEST,
        "https://slsa.dev/provenance/v1",
        predicate={
            "buildDefinition": {"buildType": "https://actions.github.io/buildtypes/workflow/v1"},
            "runDetails": {"builder": {"id": WORKFLOW}},
        },
    )
    att = evidence(instance.sign_dsse(provenance, identity=WORKFLOW, issuer=ISSUER))
    rule = AttestationRule(
        "https://slsa.dev/provenance/v1",
        builder_id=WORKFLOW,
        build_type="https://actions.github.io/buildtypes/workflow/v1",
    )
    pol = dataclasses.replace(policy(instance), attestations=(rule,))
    judged = judge(pol, DIGEST, [signature, att], "prod/web")
    assert judged.signature.predicate_type == "https://sigstore.dev/cosign/sign/v1"
    assert judged.attestations[0].predicate_type == "https://slsa.dev/provenance/v1"
    assert judged.attestations[0].tlog_index is not None
    with pytest.raises(
        Refused, match=re.escape("no attestation of type https://slsa.dev/provenance/v1")
    ):
        judge(pol, DIGEST, [signature], "prod/web")  # provenance absent
    other_type = dataclasses.replace(rule, build_type="https://example.com/other")
    with pytest.raises(Refused, match="build type"):
        judge(dataclasses.replace(pol, attestations=(other_type,)), DIGEST, [signature, att], "x")
