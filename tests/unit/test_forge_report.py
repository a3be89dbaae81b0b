"""The daemon's reports on merge requests, with an in-memory forge: once per transition (a
restart included), only for what the merged commit changed, and the status on the merge
commit. The real thing on Gitea: tests/integration/test_forge_gitea.py."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import MappingProxyType

import pytest

from reconciler.daemon.forgereport import ForgeReporter
from reconciler.engine.apply import ApplyResult
from reconciler.engine.reconcile import EnvOutcome, Status
from reconciler.forge import APPLY, CommitState, MergeRequest
from reconciler.forge import Status as CommitStatus
from reconciler.model import (
    Action,
    Catalog,
    Change,
    DesiredState,
    Drift,
    Environment,
    EnvPlan,
    ForgeSettings,
    ItemRef,
    Release,
    Settings,
)
from reconciler.verify import Refused, Rule

D1, D2, D0 = "sha256:" + "1" * 64, "sha256:" + "2" * 64, "sha256:" + "0" * 64
BASE, MERGE, PUSHED, HAZARD = "b" * 40, "m" * 40, "p" * 40, "h" * 40
CATALOG = Catalog(
    "example.org/shop",
    "r.example/shop",
    (
        Release("v1.1", {"web": ItemRef(D1)}),
        Release("v1.2", {"web": ItemRef(D2)}),
        Release("v1.0", {"web": ItemRef(D0)}, hazards=MappingProxyType({"CVE-1": "broken"})),
    ),
)


def state(commit: str, release: str) -> DesiredState:
    return DesiredState(
        commit=commit,
        tree="t" * 40,
        proposed_settings=Settings(),
        catalogs=MappingProxyType({CATALOG.name: CATALOG}),
        environments=MappingProxyType({"prod": Environment("prod", CATALOG.name, release)}),
        tags=MappingProxyType({}),
        policies=MappingProxyType({}),
    )


STATES = {
    BASE: state(BASE, "v1.1"),
    MERGE: state(MERGE, "v1.2"),
    PUSHED: state(PUSHED, "v1.2"),  # a direct push on top of MERGE that changes nothing of prod
    HAZARD: state(HAZARD, "v1.0"),
}
PARENT = {MERGE: BASE, PUSHED: MERGE, HAZARD: MERGE}


@dataclass
class Commit:
    parents: tuple[str, ...]


class History:
    def commit(self, rev: str) -> Commit:
        return Commit((PARENT[rev],) if rev in PARENT else ())


class FakeReconciler:
    ref = "main"
    history = History()

    def state_at(self, commit: str) -> DesiredState:
        return STATES[commit]


@dataclass
class FakeForge:
    kind = "fake"
    repository = "acme/state"
    merged: dict[str, MergeRequest] = field(default_factory=dict)
    notes: dict[int, list[str]] = field(default_factory=dict)
    statuses: dict[str, list[CommitStatus]] = field(default_factory=dict)

    def merged_for(self, sha: str) -> MergeRequest | None:
        return self.merged.get(sha)

    def comments(self, number: int) -> list[str]:
        return list(self.notes.get(number, []))

    def comment(self, number: int, body: str) -> None:
        self.notes.setdefault(number, []).append(body)

    def set_status(self, sha: str, status: CommitStatus, target_url: str = "") -> None:
        self.statuses.setdefault(sha, []).append(status)


def pr(number: int, sha: str) -> MergeRequest:
    return MergeRequest(number, "t", "u", "b", "h", "main", "merged", merge_sha=sha)


def reporter(forge: FakeForge) -> ForgeReporter:
    made = ForgeReporter(FakeReconciler())  # type: ignore[arg-type]
    made.forge = forge  # type: ignore[assignment]
    return made


def applied() -> EnvOutcome:
    change = Change(Action.UPDATE, "r.example/shop", "prod-web", D1, D2, Drift.STALE, "web")
    plan = EnvPlan("prod", CATALOG.name, "v1.2", (change,), True)
    return EnvOutcome(
        "prod", Status.APPLIED, plan=plan, applied=ApplyResult(moved=["prod-web"]),
        note="prod promoted from v1.1 to v1.2",
    )  # fmt: skip


def report(r: ForgeReporter, commit: str, outcome: EnvOutcome) -> None:
    r.outcome(STATES[commit], STATES[commit], outcome)
    r.flush()


def test_an_applied_merge_is_told_once_even_across_a_restart() -> None:
    forge = FakeForge(merged={MERGE: pr(3, MERGE)})
    first = reporter(forge)
    report(first, MERGE, applied())
    report(first, MERGE, applied())  # the next pass says the same: not told again
    report(reporter(forge), MERGE, applied())  # a restarted daemon finds its marker
    [note] = forge.notes[3]
    assert "**Applied**" in note and D1 in note and D2 in note and "v1.2" in note
    assert forge.statuses[MERGE][0] == CommitStatus(
        APPLY, CommitState.SUCCESS, "prod: applied v1.2 (1 tags moved)"
    )


def test_a_refused_merge_names_the_rule_the_reason_and_the_way_out() -> None:
    forge = FakeForge(merged={HAZARD: pr(4, HAZARD)})
    refused = Refused(Rule.HAZARDS, "release v1.0 has hazards (CVE-1: broken)", "promote another")
    report(reporter(forge), HAZARD, EnvOutcome("prod", Status.REFUSED, error=refused))
    [note] = forge.notes[4]
    assert (
        "**Refused**" in note and "rule: `hazards`" in note and "way out: promote another" in note
    )
    [status] = forge.statuses[HAZARD]
    assert status.state is CommitState.FAILURE and "rule hazards" in status.description


def test_what_the_commit_did_not_change_is_not_reported() -> None:
    forge = FakeForge(merged={PUSHED: pr(5, PUSHED)})
    r = reporter(forge)
    refused = Refused(Rule.REQUIRES, "staging never ran it")
    report(r, PUSHED, EnvOutcome("prod", Status.REFUSED, error=refused))  # prod unchanged
    report(r, PUSHED, applied())  # drift corrected at a commit that did not change prod
    assert forge.notes == {} and forge.statuses == {}


def test_a_direct_push_gets_a_status_and_no_comment() -> None:
    forge = FakeForge()
    report(reporter(forge), MERGE, applied())
    assert forge.notes == {}
    assert [s.state for s in forge.statuses[MERGE]] == [CommitState.SUCCESS]


def test_nothing_is_done_without_a_forge() -> None:
    r = ForgeReporter(FakeReconciler())  # type: ignore[arg-type]
    r.configure(None)
    r.outcome(STATES[MERGE], STATES[MERGE], applied())
    r.tick()
    assert r.forge is None and r._queue.unfinished_tasks == 0


def test_a_missing_token_is_said_once_not_every_pass(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RECONCILER_FORGE_X", raising=False)
    r = ForgeReporter(FakeReconciler())  # type: ignore[arg-type]
    settings = ForgeSettings("gitea", "https://git.example.org", "a/b", "RECONCILER_FORGE_X")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            r.configure(settings)
    assert r.forge is None
    said = [m for m in caplog.messages if "not checked or reported" in m]
    assert len(said) == 1 and "$RECONCILER_FORGE_X" in said[0]
