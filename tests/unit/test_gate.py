"""The gate, driven with values: the order it guards and each rule's refusal."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from types import MappingProxyType

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from reconciler.git.history import Entry
from reconciler.model import (
    Catalog,
    DesiredState,
    DesiredTag,
    Environment,
    ItemRef,
    Policy,
    PublicKey,
    Record,
    Release,
    Settings,
    frozen_map,
)
from reconciler.verify import Gate, Refused, Rule, Waiting
from reconciler.verify.errors import Disposition, disposition
from reconciler.verify.inforce import CommitFacts, Judgement, PolicyInForce, judge_trail
from reconciler.verify.root import TrustRoot
from reconciler.verify.signatures import Evidence
from tests.support.judged import in_force

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

OLD, NEW = "sha256:" + "1" * 64, "sha256:" + "2" * 64
SKIP = Policy(insecure_skip_signatures=True)


def key() -> tuple[ec.EllipticCurvePrivateKey, PublicKey]:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, PublicKey("keys/cosign.pub", pem.decode())


def signed(private: ec.EllipticCurvePrivateKey, digest: str) -> Evidence:
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": "r"},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            }
        }
    ).encode()
    sig = base64.b64encode(private.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    return Evidence("tag .sig", "sha256:" + "e" * 64, payload=payload, signature=sig)


def state(
    digest: str = NEW,
    *,
    policy: Policy = SKIP,
    signers: Policy | None = None,
    hazards: dict[str, str] | None = None,
    allow_hazards: bool = False,
    requires: tuple[str, ...] = ("staging",),
) -> DesiredState:
    release = Release(
        "v1.2", MappingProxyType({"web": ItemRef(digest)}), hazards=frozen_map(hazards)
    )
    catalog = Catalog("shop", "reg.example/shop", (release,), signers, "catalogs/shop.cue")
    envs = {
        "staging": Environment("staging", "shop", "v1.2", file="environments/staging.cue"),
        "prod": Environment(
            "prod",
            "shop",
            "v1.2",
            requires=requires,
            allow_hazards=allow_hazards,
            file="environments/prod.cue",
        ),
    }
    tags = {
        n: (DesiredTag(n, "web", "reg.example/shop", f"{n}-web", digest, "reg.example/shop"),)
        for n in envs
    }
    return DesiredState(
        commit="c" * 40,
        tree="t" * 40,
        proposed_settings=Settings(),
        catalogs=MappingProxyType({"shop": catalog}),
        environments=MappingProxyType(envs),
        tags=MappingProxyType(tags),
        policies=MappingProxyType(dict.fromkeys(envs, policy)),
    )


def record(env: str, digest: str, release: str = "v1.2", commit: str = "b" * 40) -> Record:
    return Record(
        environment=env,
        commit=commit,
        tree="t" * 40,
        catalog="shop",
        release=release,
        repository="reg.example/shop",
        tags=frozen_map({f"{env}-web": digest}),
        owned=frozen_map({f"{env}-web": digest}),
        verified=frozen_map({}),
        time="2026-11-30T00:00:00Z",
        reconciler="test",
        digest="sha256:" + "9" * 64,
    )


def through_requires(gate: Gate, ran: dict[str, list[Record]]) -> None:
    gate.records(True)
    gate.history(True)
    gate.commits(in_force(gate.state))
    gate.governance(None)
    gate.hazards()
    gate.requires(lambda name: iter(ran.get(name, [])), NOW)
    gate.freeze((), NOW, rollback=False)


def test_a_receipt_exists_only_after_every_step_in_order() -> None:
    gate = Gate(state(), "prod", None)
    with pytest.raises(RuntimeError, match="hazards checked after new"):
        gate.hazards()
    with pytest.raises(RuntimeError, match="no receipt"):
        gate.receipt()
    through_requires(gate, {"staging": [record("staging", NEW)]})
    with pytest.raises(RuntimeError, match="history checked after freeze"):
        gate.history(True)
    gate.artifacts({NEW: 1}, {})
    receipt = gate.receipt()
    assert receipt.requires == (("staging", "sha256:" + "9" * 64),)
    assert receipt.artifacts[0].unverified and receipt.artifacts[0].manifests == 1
    assert receipt.to_json()["artifacts"][0]["digest"] == NEW
    assert "UNVERIFIED" in receipt.verified()[NEW]


def test_history_refuses_a_commit_that_does_not_descend() -> None:
    gate = Gate(state(), "prod", record("prod", OLD))
    gate.records(True)
    with pytest.raises(Refused) as exc:
        gate.history(False)
    assert (
        exc.value.rule is Rule.HISTORY and "does not descend from bbbbbbbbbbbb" in exc.value.message
    )


def test_hazards_are_refused_unless_the_environment_allows_them() -> None:
    gate = Gate(state(hazards={"CVE-1": "bad"}), "prod", None)
    gate.records(True)
    gate.history(True)
    gate.commits(in_force(gate.state))
    gate.governance(None)
    with pytest.raises(Refused) as exc:
        gate.hazards()
    assert exc.value.rule is Rule.HAZARDS and "environments/prod.cue" in exc.value.hint
    allowed = Gate(state(hazards={"CVE-1": "bad"}, allow_hazards=True), "prod", None)
    allowed.records(True)
    allowed.history(True)
    allowed.commits(in_force(allowed.state))
    allowed.governance(None)
    allowed.hazards()


def test_requires_is_about_digests_not_release_names() -> None:
    """staging's record says v1.2, but v1.2 was rebuilt: staging never ran the new digest."""
    gate = Gate(state(NEW), "prod", None)
    with pytest.raises(Waiting) as exc:
        through_requires(gate, {"staging": [record("staging", OLD)]})
    assert exc.value.rule is Rule.REQUIRES
    assert (
        "staging runs v1.2 and never ran the digests prod would apply (web sha256:2222"
        in exc.value.message
    )
    assert disposition(exc.value) is Disposition.WAIT


def test_requires_finds_the_digests_further_down_the_chain() -> None:
    ran: dict[str, list[Record]] = {
        "staging": [record("staging", OLD, "v1.3"), record("staging", NEW)]
    }
    gate = Gate(state(NEW), "prod", None)
    through_requires(gate, ran)


def test_requires_with_no_record_waits() -> None:
    with pytest.raises(Waiting, match="staging has no apply record yet"):
        through_requires(Gate(state(), "prod", None), {})


def test_requires_reads_the_chain_only_when_the_head_does_not_satisfy() -> None:
    asked: list[str] = []

    def ran(name: str) -> Iterable[Record]:
        asked.append("head")
        yield record(name, NEW)
        asked.append("chain")
        yield record(name, OLD)

    gate = Gate(state(NEW), "prod", None)
    gate.records(True)
    gate.history(True)
    gate.commits(in_force(gate.state))
    gate.governance(None)
    gate.hazards()
    gate.requires(ran, NOW)
    assert asked == ["head"]


def test_skipping_the_environment_policy_never_skips_the_catalog_signers() -> None:
    private, public = key()
    stranger, _ = key()
    catalog_signers = Policy(keys=(public,))
    gate = Gate(state(policy=SKIP, signers=catalog_signers), "prod", None)
    through_requires(gate, {"staging": [record("staging", NEW)]})
    assert gate.needs_evidence()
    with pytest.raises(Refused) as exc:
        gate.artifacts({NEW: 1}, {NEW: [signed(stranger, NEW)]})
    assert exc.value.rule is Rule.SIGNATURES and "catalog signers" in exc.value.message

    gate = Gate(state(policy=SKIP, signers=catalog_signers), "prod", None)
    through_requires(gate, {"staging": [record("staging", NEW)]})
    gate.artifacts({NEW: 1}, {NEW: [signed(private, NEW)]})
    (artifact,) = gate.receipt().artifacts
    assert artifact.unverified and [role for role, _ in artifact.signatures] == ["catalog"]


def test_a_catalog_may_opt_out_of_its_own_signers() -> None:
    gate = Gate(state(policy=SKIP, signers=SKIP), "prod", None)
    assert not gate.needs_evidence()


# --------------------------------------------------------------------------- commits

E0, E1, E2 = Entry("0" * 40, 0o100644), Entry("1" * 40, 0o100644), Entry("2" * 40, 0o100644)
PATH = "environments/prod.cue"


def fact(
    cid: str,
    parents: tuple[str, ...],
    changed: dict[str, Entry | None],
    entries: dict[str, Entry | None],
    signer: str | None = None,
) -> CommitFacts:
    """A commit of a trail: what it changed (with the first parent's entries), its own
    entries where others changed things, and who signed it."""
    problem = "" if signer else f'commit {cid * 10} "m" is not signed'
    return CommitFacts(
        cid * 40,
        f'commit {cid * 10} "m"',
        tuple(p * 40 for p in parents),
        changed,
        False,
        signer,
        problem,
        entries=entries,
    )


SOURCE = "allowed_signers as of commit aaaaaaaaaaaa"


def test_signed_commits_pass_and_name_their_signer() -> None:
    judged = judge_trail([fact("2", ("a",), {PATH: E0}, {PATH: E1}, signer="alice")], SOURCE)
    assert judged == [("2" * 40, "signed by alice")]


def test_an_unsigned_change_is_refused_naming_commit_files_and_policy() -> None:
    with pytest.raises(Refused) as exc:
        judge_trail([fact("2", ("a",), {PATH: E0}, {PATH: E1})], SOURCE)
    error = exc.value
    assert error.rule is Rule.COMMITS
    assert "2222222222" in error.message and PATH in error.message
    assert SOURCE in error.message
    assert "signed commit that restores those files" in error.hint


def test_a_later_signed_commit_that_restores_the_content_excuses_it() -> None:
    judged = judge_trail(
        [
            fact("3", ("2",), {PATH: E1}, {PATH: E0}, signer="alice"),
            fact("2", ("a",), {PATH: E0}, {PATH: E1}),
        ],
        SOURCE,
    )
    assert judged == [("3" * 40, "signed by alice"), ("2" * 40, "undone by 3333333333")]


def test_a_signed_commit_that_does_not_restore_the_content_excuses_nothing() -> None:
    """The message says "This reverts commit <sha>"; the tree says otherwise."""
    with pytest.raises(Refused, match="2222222222"):
        judge_trail(
            [
                fact("3", ("2",), {PATH: E1}, {PATH: E2}, signer="alice"),
                fact("2", ("a",), {PATH: E0}, {PATH: E1}),
            ],
            SOURCE,
        )


def test_an_undo_must_descend_from_what_it_undoes() -> None:
    """A signed commit on a side branch holding the old content does not excuse."""
    with pytest.raises(Refused, match="2222222222"):
        judge_trail(
            [
                fact("2", ("a",), {PATH: E0}, {PATH: E1}),
                fact("3", ("a",), {"other": None}, {PATH: E0, "other": E2}, signer="alice"),
            ],
            SOURCE,
        )


def test_a_clean_merge_needs_no_signature_an_unclean_one_does() -> None:
    merge = replace(fact("4", ("2", "3"), {PATH: E0}, {}), clean_merge=True)
    assert judge_trail([merge], SOURCE) == [("4" * 40, "clean merge (adds nothing)")]
    with pytest.raises(Refused, match="4444444444"):
        judge_trail([replace(merge, clean_merge=False)], SOURCE)


def test_the_gate_stops_at_a_commit_that_is_not_in_force() -> None:
    gate = Gate(state(), "prod", record("prod", OLD))
    gate.records(True)
    gate.history(True)
    refused = Refused(Rule.COMMITS, "commit 2222222222 is not signed")
    judgement = Judgement(
        "c" * 40, PolicyInForce(TrustRoot("test"), "a" * 40, None), refusal=refused
    )
    with pytest.raises(Refused, match="2222222222"):
        gate.commits(judgement)
    with pytest.raises(RuntimeError):
        gate.hazards()


def test_requires_and_prune_need_signed_records_unless_explicitly_insecure() -> None:
    """Unsigned records could be written by anyone with push to the registry."""
    with pytest.raises(Refused) as exc:
        Gate(state(), "prod", None).records(False)
    assert exc.value.rule is Rule.RECORDS and "prod uses requires" in exc.value.message
    Gate(state(), "staging", None).records(False)  # relies on no record: applies
    Gate(state(), "prod", None).records(False, insecure_unsigned=True)


def test_dispositions() -> None:
    from reconciler.errors import Stalled, Transient

    assert disposition(Transient("x")) is Disposition.RETRY
    assert disposition(Refused(Rule.SIGNATURES, "x")) is Disposition.STALL
    assert disposition(Stalled("x")) is Disposition.STALL
    assert disposition(ValueError("bug")) is Disposition.RETRY
