"""Attestation policies at the gate: SLSA provenance required and matched; OpenVEX
statements turn into hazards (``affected``) or clear the catalog's (``not_affected``,
``fixed``). Driven with values: key-signed DSSE bundles, no registry."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from reconciler.model import (
    AttestationRule,
    Catalog,
    DesiredState,
    DesiredTag,
    Environment,
    ItemRef,
    Policy,
    PublicKey,
    Release,
    Settings,
    frozen_map,
)
from reconciler.verify import Gate, Receipt, Refused, Rule
from reconciler.verify.attestations import VexStatement, judge_vex, latest, vex_statements
from reconciler.verify.signatures import Evidence
from tests.support.judged import in_force
from tests.support.sigstore_instance import cosign_key_pair, in_toto_statement, sign_dsse_with_key

NOW = datetime(2026, 12, 1, 12, 0).astimezone()
WEB = "sha256:" + hashlib.sha256(b"web").hexdigest()
WORKER = "sha256:" + hashlib.sha256(b"worker").hexdigest()
PROVENANCE = "https://slsa.dev/provenance/v1"
OPENVEX = "https://openvex.dev/ns/v0.2.0"
BUILDER = "https://github.com/acme/shop/.github/workflows/release.yml@refs/tags/v1.2"


@pytest.fixture(scope="module")
def signer() -> tuple[ec.EllipticCurvePrivateKey, PublicKey]:
    private, pem = cosign_key_pair()
    return private, PublicKey("keys/cosign.pub", pem)


def state(
    key: PublicKey,
    rules: Sequence[AttestationRule],
    *,
    hazards: Mapping[str, str] | None = None,
    allow_hazards: bool = False,
    items: Mapping[str, str] | None = None,
) -> DesiredState:
    items = items or {"web": WEB}
    release = Release(
        "v1.2",
        MappingProxyType({i: ItemRef(d) for i, d in items.items()}),
        hazards=frozen_map(hazards),
    )
    catalog = Catalog("shop", "reg.example/shop", (release,), None, "catalogs/shop.cue")
    env = Environment("prod", "shop", "v1.2", allow_hazards=allow_hazards, file="envs/prod.cue")
    tags = tuple(
        DesiredTag("prod", i, "reg.example/shop", f"prod-{i}", d, "reg.example/shop")
        for i, d in items.items()
    )
    policy = Policy(keys=(key,), attestations=tuple(rules))
    return DesiredState(
        commit="c" * 40,
        tree="t" * 40,
        proposed_settings=Settings(),
        catalogs=MappingProxyType({"shop": catalog}),
        environments=MappingProxyType({"prod": env}),
        tags=MappingProxyType({"prod": tags}),
        policies=MappingProxyType({"prod": policy}),
    )


def signed(
    private: ec.EllipticCurvePrivateKey, digest: str, kind: str | None = None, **predicate: Any
) -> Evidence:
    statement = (
        in_toto_statement(digest)
        if kind is None
        else in_toto_statement(digest, kind, predicate=predicate or None)
    )
    text = sign_dsse_with_key(private, statement)
    return Evidence(
        f"referrer {kind or 'signature'}",
        "sha256:" + hashlib.sha256(text.encode()).hexdigest(),
        bundle=text.encode(),
    )


def vex(private: ec.EllipticCurvePrivateKey, digest: str, *statements: dict[str, Any]) -> Evidence:
    return signed(
        private,
        digest,
        OPENVEX,
        **{
            "@context": "https://openvex.dev/ns/v0.2.0",
            "@id": "https://acme.example/vex/1",
            "author": "acme security",
            "timestamp": "2026-11-01T00:00:00Z",
            "version": 1,
            "statements": list(statements),
        },
    )


def statement(cve: str, status: str, when: str | None = None, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"vulnerability": {"name": cve}, "status": status, **extra}
    if when:
        doc["timestamp"] = when
    return doc


def gate_through(state_: DesiredState, evidence: Mapping[str, list[Evidence]]) -> Receipt:
    gate = Gate(state_, "prod", None)
    gate.records(True)
    gate.history(True)
    gate.commits(in_force(gate.state))
    gate.governance(None)
    gate.hazards()
    gate.requires(lambda name: iter(()), NOW)
    gate.freeze((), NOW, rollback=False)
    gate.artifacts(dict.fromkeys(evidence, 1), evidence)
    return gate.receipt()


# --------------------------------------------------------------------------- provenance


def test_provenance_present_is_in_the_receipt(signer: tuple[Any, PublicKey]) -> None:
    private, key = signer
    rule = AttestationRule(PROVENANCE, builder_id=BUILDER)
    found = [
        signed(private, WEB),
        signed(private, WEB, PROVENANCE, runDetails={"builder": {"id": BUILDER}}),
    ]
    receipt = gate_through(state(key, [rule]), {WEB: found})
    artifact = receipt.artifacts[0]
    assert [m.predicate_type for _, m in artifact.attestations] == [PROVENANCE]
    assert f"attested {PROVENANCE}: key " in artifact.describe()
    assert artifact.to_json()["attestations"][0]["predicateType"] == PROVENANCE


def test_provenance_absent_is_refused(signer: tuple[Any, PublicKey]) -> None:
    private, key = signer
    with pytest.raises(Refused) as exc:
        gate_through(state(key, [AttestationRule(PROVENANCE)]), {WEB: [signed(private, WEB)]})
    assert exc.value.rule is Rule.SIGNATURES
    assert f"no attestation of type {PROVENANCE}" in exc.value.message
    assert "none found" in exc.value.message


def test_provenance_of_the_wrong_builder_is_refused(signer: tuple[Any, PublicKey]) -> None:
    private, key = signer
    found = [
        signed(private, WEB),
        signed(private, WEB, PROVENANCE, runDetails={"builder": {"id": "https://evil.example"}}),
    ]
    with pytest.raises(Refused, match=re.escape("builder id 'https://evil.example' is not")) as exc:
        gate_through(state(key, [AttestationRule(PROVENANCE, builder_id=BUILDER)]), {WEB: found})
    assert exc.value.rule is Rule.SIGNATURES


def test_provenance_signed_by_someone_else_is_refused(signer: tuple[Any, PublicKey]) -> None:
    private, key = signer
    stranger, _ = cosign_key_pair()
    found = [
        signed(private, WEB),
        signed(stranger, WEB, PROVENANCE, runDetails={"builder": {"id": BUILDER}}),
    ]
    with pytest.raises(Refused, match="no policy key verifies this bundle") as exc:
        gate_through(state(key, [AttestationRule(PROVENANCE)]), {WEB: found})
    assert exc.value.rule is Rule.SIGNATURES


def test_provenance_about_another_digest_is_refused(signer: tuple[Any, PublicKey]) -> None:
    private, key = signer
    found = [signed(private, WEB), signed(private, WORKER, PROVENANCE)]
    with pytest.raises(Refused, match=re.escape(f"subject is not {WEB}")):
        gate_through(state(key, [AttestationRule(PROVENANCE)]), {WEB: found})


# --------------------------------------------------------------------------- OpenVEX


def test_vex_affected_is_a_hazard_refused(signer: tuple[Any, PublicKey]) -> None:
    private, key = signer
    found = [
        signed(private, WEB),
        vex(private, WEB, statement("CVE-2026-7", "affected", action_statement="upgrade")),
    ]
    with pytest.raises(Refused) as exc:
        gate_through(state(key, [AttestationRule(OPENVEX)]), {WEB: found})
    assert exc.value.rule is Rule.HAZARDS
    assert "CVE-2026-7" in exc.value.message and "affected per VEX" in exc.value.message
    assert "upgrade" in exc.value.message


def test_vex_affected_accepted_with_allow_hazards(signer: tuple[Any, PublicKey]) -> None:
    private, key = signer
    found = [signed(private, WEB), vex(private, WEB, statement("CVE-2026-7", "affected"))]
    receipt = gate_through(state(key, [AttestationRule(OPENVEX)], allow_hazards=True), {WEB: found})
    assert set(receipt.hazards) == {"CVE-2026-7"}
    assert receipt.artifacts[0].vex == {"CVE-2026-7": "affected"}


def test_vex_not_affected_clears_the_catalog_hazard(signer: tuple[Any, PublicKey]) -> None:
    private, key = signer
    found = [
        signed(private, WEB),
        vex(
            private,
            WEB,
            statement("CVE-2026-1", "not_affected", justification="vulnerable_code_not_present"),
        ),
    ]
    hazardous = state(key, [AttestationRule(OPENVEX)], hazards={"CVE-2026-1": "in libfoo"})
    receipt = gate_through(hazardous, {WEB: found})
    assert dict(receipt.hazards) == {}
    assert receipt.artifacts[0].to_json()["vex"] == {"CVE-2026-1": "not_affected"}


def test_vex_fixed_by_alias_clears_the_catalog_hazard(signer: tuple[Any, PublicKey]) -> None:
    private, key = signer
    fixed = {"vulnerability": {"name": "CVE-2026-1", "aliases": ["GHSA-aaaa"]}, "status": "fixed"}
    found = [signed(private, WEB), vex(private, WEB, fixed)]
    hazardous = state(key, [AttestationRule(OPENVEX)], hazards={"GHSA-aaaa": "in libfoo"})
    assert dict(gate_through(hazardous, {WEB: found}).hazards) == {}


def test_a_hazard_stays_unless_vex_clears_it_for_every_digest(
    signer: tuple[Any, PublicKey],
) -> None:
    private, key = signer
    items = {"web": WEB, "worker": WORKER}
    hazardous = state(
        key, [AttestationRule(OPENVEX)], hazards={"CVE-2026-1": "in libfoo"}, items=items
    )
    evidence = {
        WEB: [signed(private, WEB), vex(private, WEB, statement("CVE-2026-1", "not_affected"))],
        WORKER: [signed(private, WORKER), vex(private, WORKER)],  # says nothing of it
    }
    with pytest.raises(Refused) as exc:
        gate_through(hazardous, evidence)
    assert exc.value.rule is Rule.HAZARDS and "CVE-2026-1: in libfoo" in exc.value.message


def test_without_a_vex_rule_hazards_are_refused_at_step_3(signer: tuple[Any, PublicKey]) -> None:
    _, key = signer
    gate = Gate(state(key, [], hazards={"CVE-2026-1": "bad"}), "prod", None)
    gate.records(True)
    gate.history(True)
    gate.commits(in_force(gate.state))
    gate.governance(None)
    with pytest.raises(Refused) as exc:
        gate.hazards()
    assert exc.value.rule is Rule.HAZARDS


def test_vex_required_by_the_rule(signer: tuple[Any, PublicKey]) -> None:
    private, key = signer
    with pytest.raises(Refused, match=re.escape(f"no attestation of type {OPENVEX}")) as exc:
        gate_through(state(key, [AttestationRule(OPENVEX)]), {WEB: [signed(private, WEB)]})
    assert exc.value.rule is Rule.SIGNATURES


def test_vex_signed_by_a_stranger_does_not_clear(signer: tuple[Any, PublicKey]) -> None:
    private, key = signer
    stranger, _ = cosign_key_pair()
    found = [
        signed(private, WEB),
        vex(private, WEB),  # the real, empty VEX
        vex(stranger, WEB, statement("CVE-2026-1", "not_affected")),
    ]
    hazardous = state(key, [AttestationRule(OPENVEX)], hazards={"CVE-2026-1": "in libfoo"})
    with pytest.raises(Refused) as exc:
        gate_through(hazardous, {WEB: found})
    assert exc.value.rule is Rule.HAZARDS


# --------------------------------------------------------------------------- VEX rules


def vs(status: str, when: str, names: tuple[str, ...] = ("CVE-1",)) -> VexStatement:
    return VexStatement(names, status, datetime.fromisoformat(when), "", "key k")


def test_the_newest_statement_wins_and_affected_wins_a_tie() -> None:
    newer_fix = latest(
        [vs("affected", "2026-01-01T00:00:00+00:00"), vs("fixed", "2026-02-01T00:00:00+00:00")]
    )
    assert newer_fix["CVE-1"].status == "fixed"
    tie = latest(
        [
            vs("not_affected", "2026-01-01T00:00:00+00:00"),
            vs("affected", "2026-01-01T00:00:00+00:00"),
        ]
    )
    assert tie["CVE-1"].status == "affected"
    verdict = judge_vex({WEB: [vs("fixed", "2026-01-01T00:00:00+00:00")]}, {"CVE-1": "bad"})
    assert set(verdict.cleared) == {"CVE-1"} and verdict.hazards == {}


def test_statements_about_other_products_are_ignored() -> None:
    hexed = WEB.removeprefix("sha256:")
    predicate = {
        "timestamp": "2026-11-01T00:00:00Z",
        "statements": [
            statement("CVE-A", "affected", products=[{"@id": f"pkg:oci/web@sha256%3A{hexed}"}]),
            statement(
                "CVE-B", "affected", products=[{"@id": "pkg:oci/other@sha256%3A" + "0" * 64}]
            ),
            statement("CVE-C", "affected", products=[{"@id": "x", "hashes": {"sha-256": hexed}}]),
            statement("CVE-D", "under_investigation"),
        ],
    }
    found = {s.names[0]: s.status for s in vex_statements(predicate, WEB, "key k")}
    assert found == {"CVE-A": "affected", "CVE-C": "affected", "CVE-D": "under_investigation"}
    assert set(judge_vex({WEB: vex_statements(predicate, WEB, "k")}, {}).hazards) == {
        "CVE-A",
        "CVE-C",
    }


def test_a_vex_rule_accepts_any_openvex_version(signer: tuple[Any, PublicKey]) -> None:
    """cosign attest --type openvex says https://openvex.dev/ns; a rule may name a version."""
    private, key = signer
    found = [
        signed(private, WEB),
        signed(
            private,
            WEB,
            "https://openvex.dev/ns",
            statements=[statement("CVE-2026-1", "fixed")],
        ),
    ]
    hazardous = state(key, [AttestationRule(OPENVEX)], hazards={"CVE-2026-1": "in libfoo"})
    receipt = gate_through(hazardous, {WEB: found})
    assert dict(receipt.hazards) == {}
    assert receipt.artifacts[0].attestations[0][1].predicate_type == "https://openvex.dev/ns"
