"""Fencing: the Lease election's rules on a fake API and clock, the engine stopping before
its next write once the lease is gone, and the stale writer's record refused.

The same behaviour against a real API server: tests/integration/test_leader_election.py.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from reconciler.daemon.lease import ENVIRONMENTS, Elector, LeaseConfig, parse_environments
from reconciler.engine.apply import apply_changes
from reconciler.errors import LeaseLost, Stalled
from reconciler.evidence import records
from reconciler.evidence.anchor import Anchors
from reconciler.evidence.records import RecordTrust, Trust
from reconciler.fencing import Term
from reconciler.model import Action, Change, Drift, Record
from reconciler.registry import LayoutRegistry, Manifest, Registry
from reconciler.verify import Refused
from tests.support.registry_servers import build_image, push

CONFIG = LeaseConfig(
    name="reconciler", namespace="ns", identity="me", lease_duration=3, renew_deadline=2,
    retry_period=0.5,
)  # fmt: skip


class Conflict(Exception):
    status = 409


class FakeLeases:
    """The Lease API in memory: updates conditional on the resourceVersion, as the server."""

    def __init__(self) -> None:
        self.leases: dict[str, Any] = {}
        self.version = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ConnectionRefusedError("the API server is down")

    def get(self, name: str) -> Any | None:
        self._check()
        lease = self.leases.get(name)
        return None if lease is None else _copy(lease)

    def create(self, name: str, spec: dict[str, Any], annotations: dict[str, str]) -> Any:
        self._check()
        if name in self.leases:
            raise Conflict()
        self.version += 1
        lease = SimpleNamespace(
            metadata=SimpleNamespace(
                name=name,
                annotations=annotations,
                resource_version=str(self.version),
                uid=f"uid-{name}",
            ),
            spec=SimpleNamespace(**spec),
        )
        self.leases[name] = lease
        return _copy(lease)

    def replace(self, lease: Any) -> Any:
        self._check()
        stored = self.leases[lease.metadata.name]
        if stored.metadata.resource_version != lease.metadata.resource_version:
            raise Conflict()
        self.version += 1
        lease = _copy(lease)
        lease.metadata.resource_version = str(self.version)
        self.leases[lease.metadata.name] = lease
        return _copy(lease)

    def shards(self) -> dict[str, tuple[str, ...] | None]:
        self._check()
        return {
            n: parse_environments(lease.metadata.annotations[ENVIRONMENTS])
            for n, lease in self.leases.items()
            if ENVIRONMENTS in (lease.metadata.annotations or {})
        }


def _copy(lease: Any) -> Any:
    return SimpleNamespace(
        metadata=SimpleNamespace(
            **{**vars(lease.metadata), "annotations": dict(lease.metadata.annotations or {})}
        ),
        spec=SimpleNamespace(**vars(lease.spec)),
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _conflicts_are_409(monkeypatch: pytest.MonkeyPatch) -> None:
    """The elector tells a lost race by ``ApiException.status == 409``."""
    import kubernetes.client

    monkeypatch.setattr(kubernetes.client, "ApiException", Conflict)


def elector(api: FakeLeases, clock: Clock, **changes: Any) -> Elector:
    return Elector(replace(CONFIG, **changes), api, clock)  # type: ignore[arg-type]


def test_the_first_candidate_creates_the_lease_and_holds_term_0_while_it_renews() -> None:
    api, clock = FakeLeases(), Clock()
    me = elector(api, clock)
    me._attempt(clock())
    assert me.check("moving a tag") == Term("reconciler", "me", 0, "uid-reconciler")
    clock.now += 1.5
    me._attempt(clock())  # renewed
    clock.now += 1.5
    assert me.check("writing a record") == Term("reconciler", "me", 0, "uid-reconciler")
    assert api.leases["reconciler"].metadata.annotations[ENVIRONMENTS] == "*"


def test_without_a_renewal_within_the_deadline_the_fence_closes_by_the_clock_alone() -> None:
    api, clock = FakeLeases(), Clock()
    me = elector(api, clock)
    me._attempt(clock())
    api.down = True  # no renewal can happen; the fence does not ask the network
    clock.now += CONFIG.renew_deadline
    with pytest.raises(LeaseLost, match="stopped before moving prod-web"):
        me.check("moving prod-web")
    assert me.term() is None


def test_another_candidate_waits_a_lease_duration_of_its_own_clock_then_takes_a_new_term() -> None:
    api, clock = FakeLeases(), Clock()
    leader, other = elector(api, clock), elector(api, clock, identity="other")
    leader._attempt(clock())
    other._attempt(clock())
    assert other.term() is None and other.holder == "me"
    clock.now += CONFIG.lease_duration - 0.1  # the record has not changed, but not long enough
    other._attempt(clock())
    assert other.term() is None
    clock.now += 0.2
    other._attempt(clock())
    assert other.check("moving a tag") == Term("reconciler", "other", 1, "uid-reconciler")
    # The old leader, back after a pause: its fence closed by its clock; the Lease says why.
    with pytest.raises(LeaseLost):
        leader.check("writing a record")
    leader._attempt(clock())
    assert leader.term() is None and leader.holder == "other"


def test_a_stale_resource_version_loses_the_race() -> None:
    api, clock = FakeLeases(), Clock()
    first, second = elector(api, clock), elector(api, clock, identity="second")
    first._attempt(clock())
    clock.now += 10  # expired for a newcomer
    stale = api.get("reconciler")
    second.api = SimpleNamespace(  # type: ignore[assignment]
        get=lambda name: stale, replace=api.replace, shards=api.shards
    )
    first._attempt(clock())  # the holder renews first: the version moves on
    second._attempt(clock())
    assert second.term() is None and first.term() is not None


def test_a_shard_claiming_an_environment_of_another_lease_is_refused() -> None:
    api, clock = FakeLeases(), Clock()
    elector(api, clock, name="reconciler-prod", environments=("prod",))._attempt(clock())
    elector(api, clock, name="reconciler-dev", environments=("dev",))._check_shards()  # disjoint
    with pytest.raises(
        Stalled, match=r"reconciler-prod of another shard claims prod, and this replica"
    ):
        elector(api, clock, name="reconciler-x", environments=("dev", "prod"))._check_shards()
    with pytest.raises(
        Stalled, match=r"claims prod, and .* claims every environment"
    ):  # no --env: every environment
        elector(api, clock, name="reconciler-all")._check_shards()


def test_lease_durations_out_of_order_are_refused() -> None:
    with pytest.raises(Stalled, match="--renew-deadline"):
        replace(CONFIG, renew_deadline=5).check()


# --------------------------------------------------------------------------- the engine


class Fence:
    """Held for ``writes`` writes, then lost."""

    def __init__(self, writes: int) -> None:
        self.left, self.asked = writes, []  # type: ignore[var-annotated]

    def check(self, before: str) -> Term | None:
        self.asked.append(before)
        if self.left == 0:
            raise LeaseLost(f"lost: stopped before {before}")
        self.left -= 1
        return Term("reconciler", "me", 1)


def test_a_pass_that_loses_the_lease_stops_before_its_next_tag_move(tmp_path: Path) -> None:
    store, repo = LayoutRegistry(None), str(tmp_path / "layout")
    changes = []
    for tag in ("prod-a", "prod-b", "prod-c"):
        old = push(store, repo, build_image(f"old {tag}"), tag=tag)
        new = push(store, repo, build_image(f"new {tag}"))
        changes.append(
            Change(Action.UPDATE, f"oci:{repo}", tag, old, new, Drift.STALE, tag, f"oci:{repo}")
        )
    before = {c.tag: c.from_digest for c in changes}

    def registry_of(_: str) -> tuple[Registry, str]:
        return store, repo

    def manifest_of(_: str, digest: str) -> Manifest:
        return store.get_manifest(repo, digest)

    fence = Fence(writes=1)
    with pytest.raises(LeaseLost, match="stopped before moving"):
        apply_changes(
            changes, registry_of, manifest_of, 1, observed_at=time.monotonic(), fence=fence
        )
    moved = {t for t, d in before.items() if store.resolve(repo, t) != d}
    assert moved == {"prod-a"}  # the one write made while the lease was held
    assert fence.asked == [f"moving oci:{repo}:prod-a", f"moving oci:{repo}:prod-b"]


# --------------------------------------------------------------------------- records


def record(
    token: int | None, lease: str = "reconciler", holder: str = "a", uid: str = "u1"
) -> Record:
    return Record(
        environment="prod", commit="c" * 40, tree="t" * 40, catalog="cat", release="v1",
        repository="r", tags={}, owned={}, verified={}, time="2026-12-03T10:00:00Z",
        reconciler="test", term=None if token is None else Term(lease, holder, token, uid),
    )  # fmt: skip


def test_a_record_under_an_older_term_than_the_head_is_a_stale_writers(tmp_path: Path) -> None:
    trust = RecordTrust(Trust(), Anchors(tmp_path))
    with pytest.raises(Refused, match="term 3 of Lease reconciler, older than the term 4 of b"):
        trust.admit(record(3), record(4, holder="b"))
    trust.admit(record(4), record(4))  # the same term: the holder's next record
    trust.admit(record(5), record(4))  # a newer term
    trust.admit(record(1, lease="reconciler-prod"), record(4))  # another shard's Lease
    trust.admit(record(0, uid="u2"), record(4))  # the Lease was deleted and created again
    trust.admit(record(None), record(4))  # written without election
    trust.admit(record(3), None)  # the first record


def test_the_term_round_trips_through_the_signed_predicate() -> None:
    written = record(7, holder="replica-1")
    assert written.to_json()["term"] == {
        "lease": "reconciler",
        "uid": "u1",
        "holder": "replica-1",
        "token": 7,
    }
    assert Record.from_json(written.to_json(), "sha256:" + "0" * 64).term == written.term
    assert "term" not in record(None).to_json()  # records without election are unchanged


def test_a_replica_the_api_server_refuses_does_not_start() -> None:
    class Forbidden(Exception):
        status, reason = 403, "Forbidden"

    def refuse() -> dict[str, tuple[str, ...] | None]:
        raise Forbidden()

    api = FakeLeases()
    api.shards = refuse  # type: ignore[method-assign]
    with pytest.raises(Stalled, match="refuses this replica the Leases of namespace ns"):
        elector(api, Clock()).start()


def test_a_head_written_by_a_stale_writer_does_not_count(tmp_path: Path) -> None:
    """A stale writer that got past the fence and the head's compare-and-swap: its record
    follows one written under a newer term, and reading the head refuses it."""
    store, repo = LayoutRegistry(None), str(tmp_path / "layout")
    newer = replace(record(4, holder="b"), repository=repo)
    first = records.write(store, repo, newer, None)
    stale = replace(record(3, holder="a"), repository=repo, previous=first)
    records.write(store, repo, stale, first)
    trust = RecordTrust(Trust(), Anchors(None))
    with pytest.raises(Refused, match="older than the term 4 of b"):
        trust.head(store, repo, "prod", None, repo)
    honest = replace(record(5, holder="a"), repository=repo, previous=first)
    store.put_manifest(repo, "reconciler-record.prod", *_encoded(store, repo, first))
    records.write(store, repo, honest, first)
    head = trust.head(store, repo, "prod", None, repo)
    assert head is not None and head.term == honest.term


def _encoded(store: LayoutRegistry, repo: str, digest: str) -> tuple[bytes, str]:
    manifest = store.get_manifest(repo, digest)
    return manifest.data, manifest.media_type
