"""The policy fields of both schemas agree, judged by the real cue and by JSON Schema:
issuer or issuerRegExp (exactly one), claims, insecureIgnoreTlog, signatures.repository,
attestations."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.schemas import assert_agree, cat, cue_verdicts, env

ISSUER = "https://token.actions.githubusercontent.com"

CASES: dict[str, tuple[bool, dict[str, Any]]] = {
    "identity-claims": (
        True,
        env(
            verify={
                "identities": [
                    {
                        "issuer": ISSUER,
                        "subjectRegExp": "https://github\\.com/acme/.+",
                        "githubWorkflowRepository": "acme/shop",
                        "githubWorkflowRef": "refs/heads/main",
                        "githubWorkflowTrigger": "push",
                        "githubWorkflowSha": "a" * 40,
                        "githubWorkflowName": "release",
                        "buildSignerURI": "https://github.com/acme/shop/x.yml@refs/heads/main",
                    }
                ]
            }
        ),
    ),
    "identity-issuer-regexp": (
        True,
        env(verify={"identities": [{"issuerRegExp": "https://.+", "subject": "s"}]}),
    ),
    "identity-both-issuers": (
        False,
        env(verify={"identities": [{"issuer": ISSUER, "issuerRegExp": ".+", "subject": "s"}]}),
    ),
    "identity-unknown-claim": (
        False,
        env(verify={"identities": [{"issuer": ISSUER, "subject": "s", "githubWorkflow": "x"}]}),
    ),
    "identity-empty-claim": (
        False,
        env(verify={"identities": [{"issuer": ISSUER, "subject": "s", "githubWorkflowRef": ""}]}),
    ),
    "policy-full": (
        True,
        cat(
            signers={
                "keys": ["keys/a.pub"],
                "trustedRoot": "keys/trusted_root.json",
                "insecureIgnoreTlog": True,
                "signatures": {"repository": "r.example/acme/signatures"},
                "attestations": [
                    {
                        "predicateType": "https://slsa.dev/provenance/v1",
                        "builderId": "https://github.com/acme/shop/x.yml@refs/heads/main",
                        "buildType": "https://actions.github.io/buildtypes/workflow/v1",
                    },
                    {"predicateType": "https://openvex.dev/ns/v0.2.0"},
                ],
            }
        ),
    ),
    "signatures-layout": (True, env(verify={"signatures": {"repository": "oci:/srv/sigs"}})),
    "signatures-bad-repository": (False, env(verify={"signatures": {"repository": "Not A Repo"}})),
    "signatures-unknown-field": (False, env(verify={"signatures": {"tag": "x"}})),
    "ignore-tlog-string": (False, env(verify={"insecureIgnoreTlog": "yes"})),
    "attestation-without-type": (False, env(verify={"attestations": [{"builderId": "b"}]})),
    "attestation-unknown-field": (
        False,
        env(verify={"attestations": [{"predicateType": "p", "builder": "b"}]}),
    ),
}


@pytest.fixture(scope="module")
def verdicts(cue_bin: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bool]:
    return cue_verdicts(cue_bin, CASES, tmp_path_factory)


@pytest.mark.parametrize("name", list(CASES))
def test_policy_fields_agree(name: str, verdicts: dict[str, bool]) -> None:
    expected, doc = CASES[name]
    assert_agree(expected, doc, verdicts[name])
