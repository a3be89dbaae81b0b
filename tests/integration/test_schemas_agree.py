"""schemas/reconciler.cue and schemas/reconciler.schema.json say the same thing.

Each document below is judged by the real cue CLI (unified with the CUE schema) and by
JSON Schema; the verdicts must match, and must be the one written next to the case.
One known difference is left out on purpose: an unknown TOP-LEVEL field, which cue
does not close (a package's top level is open, in v0.17 as in v0.4); JSON Schema refuses
it, the loader runs both, and cue's positions name the file that wrote it.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from reconciler.desired import schema_dir
from tests.support.schemas import assert_agree, cat, cue_verdicts, env

D = "sha256:" + "c" * 64
FIXED = {"from": "2026-12-20T00:00:00Z", "until": "2027-01-04T00:00:00+01:00", "reason": "r"}
WEEKEND = {"days": ["fri", "sat"], "from": "18:00", "until": "08:00", "timeZone": "UTC",
           "reason": "weekend", "allowRollback": False}  # fmt: skip


CASES: dict[str, tuple[bool, dict[str, Any]]] = {
    "empty": (True, {}),
    "catalog-minimal": (True, cat()),
    "catalog-full": (
        True,
        cat(
            releases=[
                {
                    "name": "v1",
                    "items": {"a": D, "b": "r.example/x/y@" + D},
                    "metadata": {"k": "v"},
                    "hazards": None,
                },
                {"name": "v0", "items": {}, "hazards": {"CVE-1": "bad"}},
            ],
            signers={
                "keys": ["keys/a.pub"],
                "identities": [{"issuer": "https://i", "subject": "s"}],
            },
        ),
    ),
    "catalog-oci-layout-source": (True, cat(source="oci:/srv/layouts/app")),
    "environment-full": (
        True,
        env(
            items=["a"],
            target={"repository": "r.example/x/prod", "tag": "{env}-{item}"},
            requires=["qa"],
            verify={"insecureSkipSignatures": True, "trustedRoot": "t.json"},
            allowHazards=True,
            suspend=False,
            prune=True,
            name="dev",
        ),
    ),
    "settings-full": (
        True,
        {
            "settings": {
                "registries": {
                    "127.0.0.1:5000": {
                        "plainHTTP": True,
                        "caFile": "ca.pem",
                        "concurrency": 4,
                        "requestsPerSecond": 2.5,
                    }
                },
                "verify": {"keys": ["-----BEGIN PUBLIC KEY-----"]},
                "git": {"allowedSigners": "a"},
            }
        },
    ),
    "digest-short": (False, cat(releases=[{"name": "v1", "items": {"a": "sha256:abc"}}])),
    "digest-upper": (False, cat(releases=[{"name": "v1", "items": {"a": "sha256:" + "C" * 64}}])),
    "digest-repo-upper": (
        False,
        cat(releases=[{"name": "v1", "items": {"a": "r.example/X@" + D}}]),
    ),
    "source-bad": (False, cat(source="not a repo")),
    "source-missing": (
        False,
        {"catalogs": {"example.org/a": {"name": "example.org/a", "releases": []}}},
    ),
    "release-without-items": (True, cat(releases=[{"name": "v1"}])),
    "catalog-without-releases": (
        True,
        {"catalogs": {"example.org/a": {"name": "example.org/a", "source": "oci:/x"}}},
    ),
    "release-empty-name": (False, cat(releases=[{"name": "", "items": {}}])),
    "release-unknown-field": (False, cat(releases=[{"name": "v1", "items": {}, "notes": "x"}])),
    "hazards-string": (False, cat(releases=[{"name": "v1", "items": {}, "hazards": "yes"}])),
    "metadata-number": (False, cat(releases=[{"name": "v1", "items": {}, "metadata": {"k": 1}}])),
    "catalog-unknown-field": (False, cat(owner="me")),
    "environment-without-release": (False, {"environments": {"dev": {"catalog": "x"}}}),
    "environment-unknown-field": (False, env(relase="v2")),
    "environment-bad-requires": (False, env(requires=["not a name"])),
    "environment-allowhazards-string": (False, env(allowHazards="yes")),
    "environment-empty-tag": (False, env(target={"tag": ""})),
    "environment-target-unknown": (False, env(target={"digest": D})),
    "policy-unknown-field": (False, env(verify={"key": ["a"]})),
    "identity-without-issuer": (False, env(verify={"identities": [{"subject": "s"}]})),
    "registry-concurrency-zero": (False, {"settings": {"registries": {"h": {"concurrency": 0}}}}),
    "registry-rps-zero": (False, {"settings": {"registries": {"h": {"requestsPerSecond": 0}}}}),
    "registry-unknown-field": (False, {"settings": {"registries": {"h": {"insecure": True}}}}),
    "settings-unknown-field": (False, {"settings": {"verfy": {}}}),
    # Governance (issue 25)
    "governance-full": (
        True,
        env(
            requires=["qa", {"environment": "staging", "soak": "1d12h"}],
            signers="keys/prod_signers",
            approvals=2,
            freeze=[FIXED, WEEKEND],
            overrideFreeze="INC-7",
        ),
    ),
    "governance-settings-freeze": (True, {"settings": {"freeze": [WEEKEND]}}),
    "governance-approvals-three": (False, env(approvals=3)),
    "governance-soak-words": (False, env(requires=[{"environment": "s", "soak": "1 day"}])),
    "governance-requires-unknown-field": (False, env(requires=[{"environment": "s", "x": 1}])),
    "governance-recurring-with-instants": (False, env(freeze=[{**FIXED, "days": ["fri"]}])),
    "governance-fixed-with-clock-times": (
        False,
        env(freeze=[{"from": "18:00", "until": "08:00", "reason": "r"}]),
    ),
    "governance-no-days": (False, env(freeze=[{**WEEKEND, "days": []}])),
    "governance-bad-day": (False, env(freeze=[{**WEEKEND, "days": ["friday"]}])),
    "governance-no-reason": (False, env(freeze=[{"from": FIXED["from"], "until": FIXED["until"]}])),
}


@pytest.fixture(scope="module")
def verdicts(cue_bin: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bool]:
    return cue_verdicts(cue_bin, CASES, tmp_path_factory)


@pytest.mark.parametrize("name", list(CASES))
def test_cue_and_json_schema_agree(name: str, verdicts: dict[str, bool]) -> None:
    expected, doc = CASES[name]
    assert_agree(expected, doc, verdicts[name])


def test_json_schema_is_valid_draft_2020_12() -> None:
    schema = json.loads((schema_dir() / "reconciler.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
