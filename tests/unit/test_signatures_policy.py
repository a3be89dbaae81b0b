"""Signature policies as a state file writes them: every field, parsed into the model by
the builder; mistakes named by field. Field names are cosign's flags."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.desired.build import Builder
from reconciler.desired.sources import Position, SourceMap
from reconciler.errors import InvalidState
from reconciler.model import AttestationRule, Identity
from reconciler.verify import identity as identities
from tests.support.sigstore_instance import cosign_key_pair

D = "sha256:" + "a" * 64
PEM = cosign_key_pair()[1]
ISSUER = "https://token.actions.githubusercontent.com"


class Reader:
    commit, tree_id = "c" * 40, "t" * 40

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.data = files or {}

    def read(self, relpath: str) -> bytes:
        return self.data[relpath]

    def exists(self, relpath: str) -> bool:
        return relpath in self.data

    def files(self, directory: str = "") -> Iterator[tuple[str, int]]:
        return iter(())

    def display(self, relpath: str) -> str:
        return relpath

    def inputs(self) -> frozenset[str]:
        return frozenset(self.data)


def build(verify: dict[str, Any], signers: dict[str, Any] | None = None) -> Any:
    catalog: dict[str, Any] = {
        "name": "shop",
        "source": "r.example/acme/shop",
        "releases": [{"name": "v1", "items": {"web": D}}],
    }
    if signers is not None:
        catalog["signers"] = signers
    doc = {
        "catalogs": {"shop": catalog},
        "environments": {"prod": {"catalog": "shop", "release": "v1", "verify": verify}},
    }
    where = SourceMap(
        {
            ("catalogs", "shop", "releases"): (Position("catalogs/shop.cue", 3),),
            ("environments", "prod", "release"): (Position("environments/prod.cue", 4),),
        }
    )
    reader = Reader({"keys/cosign.pub": PEM.encode(), "keys/trusted_root.json": b"{}"})
    return Builder(reader, doc, where).build()


def problems(verify: dict[str, Any]) -> str:
    with pytest.raises(InvalidState) as exc:
        build(verify)
    return str(exc.value)


def test_every_field_reaches_the_model() -> None:
    state = build(
        {
            "identities": [
                {
                    "issuerRegExp": r"https://token\.actions\..+",
                    "subjectRegExp": r"https://github\.com/acme/.+",
                    "githubWorkflowRepository": "acme/shop",
                    "githubWorkflowRef": "refs/tags/v1.2",
                    "githubWorkflowTrigger": "push",
                    "githubWorkflowSha": "a" * 40,
                    "githubWorkflowName": "release",
                    "buildSignerURI": "https://github.com/acme/shop/.github/workflows/r.yml@x",
                }
            ],
            "keys": ["keys/cosign.pub"],
            "trustedRoot": "keys/trusted_root.json",
            "insecureIgnoreTlog": True,
            "signatures": {"repository": "r.example/acme/signatures"},
            "attestations": [
                {"predicateType": "https://slsa.dev/provenance/v1", "builderId": "b"},
                {"predicateType": "https://openvex.dev/ns/v0.2.0"},
            ],
        },
        signers={"keys": ["keys/cosign.pub"], "signatures": {"repository": "r.example/s"}},
    )
    policy = state.policies["prod"]
    assert policy.identities == (
        Identity(
            issuer_regexp=r"https://token\.actions\..+",
            subject_regexp=r"https://github\.com/acme/.+",
            github_workflow_repository="acme/shop",
            github_workflow_ref="refs/tags/v1.2",
            github_workflow_trigger="push",
            github_workflow_sha="a" * 40,
            github_workflow_name="release",
            build_signer_uri="https://github.com/acme/shop/.github/workflows/r.yml@x",
        ),
    )
    assert policy.insecure_ignore_tlog and policy.trusted_root == "keys/trusted_root.json"
    assert policy.signatures_repository == "r.example/acme/signatures"
    assert policy.attestations == (
        AttestationRule("https://slsa.dev/provenance/v1", builder_id="b"),
        AttestationRule("https://openvex.dev/ns/v0.2.0"),
    )
    assert state.catalogs["shop"].signers.signatures_repository == "r.example/s"
    assert "TLOG IGNORED" in policy.describe() and "2 attestations" in policy.describe()


def test_a_policy_change_changes_the_fingerprint() -> None:
    """A new claim or attestation rule re-verifies what is applied."""
    base = {"identities": [{"issuer": ISSUER, "subject": "s"}]}
    tighter = {
        "identities": [{"issuer": ISSUER, "subject": "s", "githubWorkflowRef": "refs/heads/main"}]
    }
    attested = {**base, "attestations": [{"predicateType": "https://slsa.dev/provenance/v1"}]}
    prints = {build(v).policy_fingerprint("prod") for v in (base, tighter, attested)}
    assert len(prints) == 3


@pytest.mark.parametrize(
    ("identity", "message"),
    [
        ({"issuer": ISSUER, "issuerRegExp": ".*", "subject": "s"}, "exactly one of 'issuer'"),
        ({"subject": "s"}, "exactly one of 'issuer' or 'issuerRegExp'"),
        ({"issuer": ISSUER}, "exactly one of 'subject' or 'subjectRegExp'"),
        ({"issuerRegExp": "(", "subject": "s"}, "issuerRegExp: not a valid regular expression"),
        ({"issuer": ISSUER, "subjectRegExp": "["}, "subjectRegExp: not a valid regular expression"),
    ],
)
def test_identity_mistakes_are_named(identity: dict[str, str], message: str) -> None:
    text = problems({"identities": [identity]})
    assert "environments.prod.verify.identities[0]" in text and message in text


def test_insecure_ignore_tlog_needs_keys() -> None:
    text = problems(
        {"identities": [{"issuer": ISSUER, "subject": "s"}], "insecureIgnoreTlog": True}
    )
    assert "environments.prod.verify.insecureIgnoreTlog" in text
    assert "keyless signatures always need their transparency-log entry" in text


def test_builder_id_only_for_provenance() -> None:
    text = problems(
        {
            "keys": ["keys/cosign.pub"],
            "attestations": [{"predicateType": "https://openvex.dev/ns", "builderId": "b"}],
        }
    )
    assert "environments.prod.verify.attestations[0].builderId" in text
    assert "applies to SLSA provenance" in text


def test_describe_names_the_identity_as_receipts_show_it() -> None:
    exact = Identity(ISSUER, "https://x/y")
    assert identities.describe(exact) == f"identity {ISSUER} https://x/y"
    pattern = Identity(issuer_regexp="https://t.+", subject_regexp="a.*", github_workflow_ref="r")
    assert identities.describe(pattern) == "identity ~https://t.+ ~a.* [githubWorkflowRef=r]"
