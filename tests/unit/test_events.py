"""Registry events as triggers: what is queued, what costs nothing, how bursts coalesce."""

from __future__ import annotations

import json
from types import MappingProxyType

import pytest

from reconciler.daemon.events import EventQueue, RegistryEvent, parse
from reconciler.model import DesiredState, DesiredTag, Settings

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def state() -> DesiredState:
    tags = {
        env: tuple(
            DesiredTag(env, item, "reg.example:5000/team/app", f"{env}-{item}", D1, "x")
            for item in ("web", "worker")
        )
        for env in ("dev", "prod")
    }
    return DesiredState(
        commit="c" * 40,
        tree="t" * 40,
        proposed_settings=Settings(),
        catalogs=MappingProxyType({}),
        environments=MappingProxyType({}),
        tags=MappingProxyType(tags),
        policies=MappingProxyType({}),
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def queue() -> tuple[EventQueue, Clock]:
    clock = Clock()
    q = EventQueue(clock)
    q.manage(state(), ["dev", "prod"])
    return q, clock


def test_parse_reads_distribution_envelopes_and_refuses_anything_else() -> None:
    body = json.dumps(
        {
            "events": [
                {
                    "action": "push",
                    "target": {"repository": "team/app", "tag": "dev-web", "digest": D2},
                },
                {"action": "pull", "target": {"repository": "team/app", "digest": D1}},
                {"action": "push", "target": "not an object"},
            ]
        }
    ).encode()
    assert parse(body) == [
        RegistryEvent("push", "team/app", "dev-web", D2),
        RegistryEvent("pull", "team/app", None, D1),
    ]
    for bad in (b"[]", b'{"events": 1}', b"not json"):
        with pytest.raises(ValueError):
            parse(bad)


def test_a_push_to_a_managed_tag_queues_a_check_of_that_tag_only() -> None:
    q, _ = queue()
    assert q.offer([RegistryEvent("push", "team/app", "prod-web", D2)]) == 1
    assert q.take() == {"prod": (frozenset({"prod-web"}), 100.0)}
    assert q.take() == {}


def test_pulls_blobs_unmanaged_and_foreign_repositories_cost_nothing() -> None:
    q, _ = queue()
    ignored = [
        RegistryEvent("pull", "team/app", "prod-web", D1),
        RegistryEvent("push", "team/app", None, D2),  # a blob or a manifest by digest
        RegistryEvent("push", "team/app", "reconciler-record.prod", D2),
        RegistryEvent("push", "team/app", "sha256-" + "1" * 64, D2),
        RegistryEvent("push", "other/app", "prod-web", D2),
    ]
    assert q.offer(ignored) == 0 and q.take() == {}


def test_bursts_coalesce_per_environment_and_keep_the_first_time() -> None:
    q, clock = queue()
    q.offer([RegistryEvent("push", "team/app", "prod-web", D2)])
    clock.now = 105.0
    q.offer(
        [
            RegistryEvent("push", "team/app", "prod-web", D1),
            RegistryEvent("push", "team/app", "prod-worker", D2),
        ]
    )
    assert q.take() == {"prod": (frozenset({"prod-web", "prod-worker"}), 100.0)}


def test_our_own_writes_echo_for_free_even_when_the_event_comes_first() -> None:
    q, clock = queue()
    q.wrote("reg.example:5000/team/app", "dev-web", D2)
    assert q.offer([RegistryEvent("push", "team/app", "dev-web", D2)]) == 0
    q.offer(
        [RegistryEvent("push", "team/app", "dev-worker", D2)]
    )  # arrives before we say we wrote it
    q.wrote("reg.example:5000/team/app", "dev-worker", D2)
    assert q.take() == {}
    clock.now += 1000  # long after: a push of that digest is someone else's
    assert q.offer([RegistryEvent("push", "team/app", "dev-web", D2)]) == 1


def test_a_deleted_manifest_checks_every_managed_tag_that_pointed_at_it() -> None:
    q, _ = queue()
    assert q.offer([RegistryEvent("delete", "team/app", None, D1)]) == 4
    taken = q.take()
    assert taken["dev"][0] == {"dev-web", "dev-worker"}
    assert taken["prod"][0] == {"prod-web", "prod-worker"}
