"""What each daemon poll runs: changes, events, drift scans spread over their interval.

The reconciler is a fake that records which environments each pass asked for; the
daemon's decisions are what is under test."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from reconciler.daemon.backoff import BackoffPolicy
from reconciler.daemon.events import RegistryEvent
from reconciler.daemon.service import Daemon
from reconciler.engine.reconcile import EnvOutcome, Mode, PassResult, Status
from reconciler.model import (
    Catalog,
    DesiredState,
    DesiredTag,
    Environment,
    ItemRef,
    Policy,
    Release,
    Settings,
)
from reconciler.registry import RequestStats
from reconciler.verify.inforce import Judgement, PolicyInForce
from tests.support.judged import in_force

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
NAMES = ("a", "b", "c", "d")


def state(digest: str = D1, commit: str = "c" * 40) -> DesiredState:
    release = Release("v1", MappingProxyType({"web": ItemRef(digest)}))
    envs = {n: Environment(n, "shop", "v1", file=f"environments/{n}.cue") for n in NAMES}
    tags = {
        n: (DesiredTag(n, "web", "reg.example/team/app", f"{n}-web", digest, "x"),) for n in NAMES
    }
    return DesiredState(
        commit=commit,
        tree="t" * 40,
        proposed_settings=Settings(),
        catalogs=MappingProxyType({"shop": Catalog("shop", "reg.example/team/app", (release,))}),
        environments=MappingProxyType(envs),
        tags=MappingProxyType(tags),
        policies=MappingProxyType(dict.fromkeys(NAMES, Policy(insecure_skip_signatures=True))),
    )


class FakeSource:
    display = "state.git"


class FakeReconciler:
    identity = "reconciler/test"
    source = FakeSource()

    def __init__(self) -> None:
        self.passes: list[tuple[list[str], dict[str, Collection[str]]]] = []
        self.stats = RequestStats()

    def registries(self, _: PolicyInForce) -> Any:
        return self

    def run(
        self,
        mode: Mode,
        envs: Sequence[str] | None,
        state: DesiredState,
        only_tags: Mapping[str, Collection[str]] | None = None,
        judgement: Judgement | None = None,
    ) -> PassResult:
        names = sorted(envs) if envs is not None else sorted(state.environments)
        self.passes.append((names, dict(only_tags or {})))
        return PassResult(state, [EnvOutcome(n, Status.IN_SYNC) for n in names])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def poll(d: Daemon, judged: DesiredState, now: float) -> str:
    """One poll of a daemon whose newest commit was judged and is in force."""
    d._candidate, d._judgement = judged, in_force(judged)
    return d._environments(judged, now)


def daemon() -> tuple[Daemon, FakeReconciler, Clock]:
    fake, clock = FakeReconciler(), Clock()
    d = Daemon(fake, BackoffPolicy(), clock=clock, drift_interval=400.0)  # type: ignore[arg-type]
    return d, fake, clock


def test_first_pass_runs_everything_then_an_unchanged_commit_runs_nothing() -> None:
    d, fake, clock = daemon()
    assert poll(d, state(), clock()) == "ok"
    assert fake.passes == [(list(NAMES), {})]
    clock.now += 60
    assert poll(d, state(), clock()) == "idle"
    assert len(fake.passes) == 1


def test_drift_scans_take_turns_spread_over_the_interval() -> None:
    d, fake, clock = daemon()
    poll(d, state(), clock())
    fake.passes.clear()
    scanned: list[list[str]] = []
    for _ in range(8):  # two intervals of 400 s in steps of 100 s
        clock.now += 100
        before = len(fake.passes)
        poll(d, state(), clock())
        scanned.append([n for names, _ in fake.passes[before:] for n in names])
    assert scanned == [["a"], ["b"], ["c"], ["d"], ["a"], ["b"], ["c"], ["d"]]


def test_a_new_commit_replans_only_what_changed() -> None:
    d, fake, clock = daemon()
    poll(d, state(), clock())
    clock.now += 1
    changed = state(commit="e" * 40)
    tags = dict(changed.tags)
    tags["b"] = (replace(tags["b"][0], digest=D2),)
    poll(d, replace(changed, tags=MappingProxyType(tags)), clock())
    assert fake.passes[-1] == (["b"], {})


def test_an_event_checks_only_the_tags_it_names() -> None:
    d, fake, clock = daemon()
    poll(d, state(), clock())
    d.events.offer(
        [
            RegistryEvent("push", "team/app", "c-web", D2),
            RegistryEvent("pull", "team/app", "a-web", D1),
        ]
    )
    clock.now += 1
    poll(d, state(), clock())
    assert fake.passes[-1] == (["c"], {"c": frozenset({"c-web"})})
