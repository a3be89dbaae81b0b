"""Idle is free (issue 15): the real registry notifies the daemon of pushes and deletes;
a counting proxy in front of the registry sees every request the daemon makes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import requests

from tests.support.daemon import DaemonProcess, Remote, converged, eventually, within
from tests.support.registry_servers import (
    FaultProxy,
    RegistryFactory,
    RegistryServer,
    free_port,
    registry_config,
)
from tests.support.world import World, build_world, expected_tags

TOKEN = "a-registry-events-token-0123456789"


@pytest.fixture
def notifying(
    registry_factory: RegistryFactory, tmp_path: Path
) -> Iterator[tuple[RegistryServer, int]]:
    """A registry whose notifications go to the daemon port returned with it."""
    daemon_port = free_port()
    directory = tmp_path / "registry"
    directory.mkdir()
    port = free_port()
    config = registry_config(directory, port) + (
        "notifications:\n  endpoints:\n    - name: reconciler\n"
        f"      url: http://127.0.0.1:{daemon_port}/hooks/registry\n"
        f'      headers: {{Authorization: ["Bearer {TOKEN}"]}}\n'
        "      timeout: 2s\n      threshold: 10\n      backoff: 1s\n"
    )
    server = RegistryServer(directory, port, config).start()
    yield server, daemon_port
    server.stop()


def proxied(world: World, proxy: FaultProxy, upstream: str) -> None:
    """The state names the registry through the counting proxy."""
    settings = (world.repo.path / "reconciler.cue").read_text().replace(upstream, proxy.host)
    catalog = (world.repo.path / "catalogs/shop.cue").read_text().replace(upstream, proxy.host)
    world.repo.commit({"reconciler.cue": settings, "catalogs/shop.cue": catalog})


def test_idle_costs_nothing_a_promotion_costs_its_share_and_an_event_corrects_a_retag(
    notifying: tuple[RegistryServer, int],
    tmp_path: Path,
    cue_bin: str,
) -> None:
    registry, daemon_port = notifying
    world = build_world(registry.host, tmp_path)
    proxy = FaultProxy(registry.host)
    try:
        proxied(world, proxy, registry.host)
        remote = Remote(world, tmp_path / "remote.git")
        daemon = DaemonProcess(
            tmp_path / "daemon.log", remote.url, "--drift-interval", "3600",
            port=daemon_port, env={"RECONCILER_REGISTRY_WEBHOOK_TOKEN": TOKEN},
        )  # fmt: skip
        try:
            run(world, proxy, daemon, remote)
        finally:
            daemon.kill()
    finally:
        proxy.close()


def run(world: World, proxy: FaultProxy, daemon: DaemonProcess, remote: Remote) -> None:
    all_v11 = {"dev": "v1.1", "staging": "v1.1", "prod": "v1.1"}
    eventually(converged(world, **all_v11), within(2), "first convergence", daemon)
    eventually(lambda: daemon.sample("reconciler_passes_total", result="ok") >= 1, 10, "a pass")
    first_pass = len(proxy.log)

    # Idle: passes keep running (git is polled every second) and cost no registry request.
    idle = daemon.sample("reconciler_passes_total", result="idle")
    before = len(proxy.log)
    eventually(
        lambda: daemon.sample("reconciler_passes_total", result="idle") >= idle + 3, 15, "idle"
    )
    assert len(proxy.log) == before, proxy.log[before:]

    # A commit promoting one environment: only dev is planned, and its echo costs nothing.
    before = len(proxy.log)
    remote.promote(dev="v1.2")
    eventually(converged(world, **{**all_v11, "dev": "v1.2"}), within(1), "promotion", daemon)
    eventually(lambda: daemon.events("applied", "dev")[1:] != [], 5, "applied logged", daemon)
    seen = [e for e in daemon.events("commit")][-1]
    applied = daemon.events("applied", "dev")[-1]
    assert seconds_between(seen["time"], applied["time"]) <= 2.0
    promotion = len(proxy.log) - before
    assert 0 < promotion < first_pass / 2, (promotion, first_pass)
    assert daemon.sample("reconciler_registry_requests_by_reason_total", reason="event") == 0

    # Someone retags prod-web by hand (not through the proxy): the registry's event asks
    # for a check of that tag, and it is restored long before any drift scan.
    hazardous = world.registry.get_manifest(world.source, world.digests["v1.0"]["web"])
    world.registry.put_manifest(world.source, "prod-web", hazardous.data, hazardous.media_type)
    expected = expected_tags(world, **{**all_v11, "dev": "v1.2"})
    eventually(
        lambda: world.tags().get("prod-web") == expected["prod-web"], 10, "event heal", daemon
    )
    eventually(
        lambda: daemon.sample("reconciler_event_correction_seconds_count") >= 1, 5, "measured"
    )
    assert daemon.sample("reconciler_registry_requests_by_reason_total", reason="event") > 0
    assert daemon.sample("reconciler_registry_requests_by_reason_total", reason="drift") == 0
    assert (
        daemon.sample(
            "reconciler_environment_release_info",
            environment="dev",
            catalog="example.org/acme/shop",
            release="v1.2",
        )
        == 1
    )


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def test_registry_webhook_checks_the_token_in_constant_time_and_is_off_without_one(
    plain_registry: RegistryServer, tmp_path: Path, cue_bin: str
) -> None:
    world = build_world(plain_registry.host, tmp_path)
    remote = Remote(world, tmp_path / "remote.git")
    body = json.dumps({"events": []}).encode()
    daemon = DaemonProcess(
        tmp_path / "on.log", remote.url, env={"RECONCILER_REGISTRY_WEBHOOK_TOKEN": TOKEN}
    )
    try:
        url = daemon.base + "/hooks/registry"
        assert requests.post(url, data=body, timeout=5).status_code == 401
        bad = {"Authorization": "Bearer wrong"}
        assert requests.post(url, data=body, headers=bad, timeout=5).status_code == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert requests.post(url, data=body, headers=good, timeout=5).status_code == 202
        assert requests.post(url, data=b"[1,", headers=good, timeout=5).status_code == 400
    finally:
        daemon.kill()
    off = DaemonProcess(tmp_path / "off.log", remote.url)
    try:
        good = {"Authorization": f"Bearer {TOKEN}"}
        response = requests.post(off.base + "/hooks/registry", data=body, headers=good, timeout=5)
        assert response.status_code == 404
    finally:
        off.kill()
