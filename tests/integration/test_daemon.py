"""The daemon as a subprocess against a real registry and a real git remote (file://).

Deadlines are "within N intervals" plus an allowance for the pass itself (a cold ``cue``
evaluation takes 1-1.5 s here); nothing asserts a timing tighter than that.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.evidence import records
from tests.support import recordkeys
from tests.support.daemon import (
    DaemonProcess,
    Remote,
    converged,
    eventually,
    within,
)
from tests.support.registry_servers import (
    Fault,
    FaultProxy,
    RegistryFactory,
    RegistryServer,
)
from tests.support.world import ITEMS, World, build_world, desired_only, expected_tags

SECRET = "a-webhook-secret-0123456789"


@pytest.fixture
def world(plain_registry: RegistryServer, tmp_path: Path, cue_bin: str) -> World:
    return build_world(plain_registry.host, tmp_path)


def github_signature(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------- tests


def test_promotion_revert_and_hand_made_drift_converge_and_metrics_parse(
    world: World, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    remote = Remote(world, tmp_path / "remote.git")
    # Hand-made drift is found by the drift scan; make it frequent here.
    daemon = DaemonProcess(tmp_path / "daemon.log", remote.url, "--drift-interval", "2")
    daemons.append(daemon)
    all_v11 = {"dev": "v1.1", "staging": "v1.1", "prod": "v1.1"}
    eventually(converged(world, **all_v11), within(2), "first convergence", daemon)
    eventually(lambda: daemon.get("/readyz").status_code == 200, within(1), "ready", daemon)
    assert daemon.hook(b"{}", {}) == 404  # no secret configured: the webhook is disabled

    remote.promote(dev="v1.2")
    promoted = str(world.repo.repo.head.target)
    eventually(converged(world, **{**all_v11, "dev": "v1.2"}), within(2), "the promotion", daemon)

    remote.revert(promoted)
    eventually(converged(world, **all_v11), within(2), "the revert", daemon)
    eventually(
        lambda: (
            [r.release for r in records.read_chain(world.registry, world.source, "dev")]
            == ["v1.1", "v1.2", "v1.1"]
        ),
        5,
        "the revert recorded",
        daemon,
    )

    # Drift by hand: a hazardous digest under a desired tag is healed by the drift scan.
    hazardous = world.registry.get_manifest(world.source, world.digests["v1.0"]["worker"])
    world.registry.put_manifest(world.source, "dev-worker", hazardous.data, hazardous.media_type)
    eventually(converged(world, **all_v11), within(2), "the drift healed", daemon)

    # Four passes did work: the first, the promotion, the revert, the drift. The tag is
    # back before the healing pass has written its record and counted it: wait for both.
    eventually(lambda: daemon.sample("reconciler_passes_total", result="ok") >= 4, 5, "4 passes")
    eventually(
        lambda: (
            daemon.sample("reconciler_drift_corrected_total", environment="dev", drift="hazardous")
            >= 1
        ),
        5,
        "the hazardous drift counted",
        daemon,
    )
    samples = daemon.metrics()
    names = {name for name, _ in samples}
    assert {
        "reconciler_passes_total",
        "reconciler_pass_duration_seconds_count",
        "reconciler_environment_last_success_timestamp_seconds",
        "reconciler_environment_drift_tags",
        "reconciler_registry_requests_total",
        "reconciler_desired_state_info",
    } <= names
    assert (
        daemon.sample("reconciler_drift_corrected_total", environment="dev", drift="hazardous") >= 1
    )
    assert daemon.sample("reconciler_environment_health", environment="prod", state="ok") == 1
    assert (
        daemon.sample("reconciler_environment_last_success_timestamp_seconds", environment="dev")
        > 0
    )
    hosts = {
        dict(labels)["host"]
        for name, labels in samples
        if name == "reconciler_registry_requests_total"
    }
    assert hosts == {world.host}
    assert len(daemon.events("applied", "prod")) == 1  # transitions, not polls

    assert daemon.stop() == 0
    assert daemon.events("stopped")


def test_webhook_needs_a_valid_proof_and_triggers_one_pass(
    world: World, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    remote = Remote(world, tmp_path / "remote.git")
    daemon = DaemonProcess(
        tmp_path / "daemon.log", remote.url, "--interval", "3600",  # only webhooks trigger
        env={"RECONCILER_WEBHOOK_SECRET": SECRET},
    )  # fmt: skip
    daemons.append(daemon)
    all_v11 = {"dev": "v1.1", "staging": "v1.1", "prod": "v1.1"}
    eventually(converged(world, **all_v11), within(1), "the pass at start", daemon)
    eventually(
        lambda: daemon.sample("reconciler_passes_total", result="ok") == 1, 5, "pass counted"
    )

    remote.promote(dev="v1.2")
    body = json.dumps(
        {"ref": "refs/heads/main", "after": str(world.repo.repo.head.target)}
    ).encode()
    assert daemon.hook(body, {"X-Hub-Signature-256": github_signature(body, "wrong")}) == 401
    assert daemon.hook(body, {"X-Hub-Signature-256": github_signature(b"other body")}) == 401
    assert daemon.hook(body, {"X-Gitlab-Token": "wrong"}) == 401
    assert daemon.hook(body, {}) == 401
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=5)
    connection.request("POST", "/hooks/git", headers={"Content-Length": str(64 << 20)})
    assert connection.getresponse().status == 413  # refused before reading the body
    connection.close()
    assert daemon.sample("reconciler_webhook_requests_total", result="unauthorized") == 4
    assert daemon.sample("reconciler_passes_total", result="ok") == 1  # nothing triggered
    assert world.tags()["dev-web"] == world.digests["v1.1"]["web"]

    delivery = {"X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"}
    assert daemon.hook(body, {"X-Hub-Signature-256": github_signature(body), **delivery}) == 202
    eventually(
        converged(world, **{**all_v11, "dev": "v1.2"}), within(1), "GitHub-signed hook", daemon
    )

    remote.promote(staging="v1.2")
    event = {"X-Gitlab-Event-UUID": "13792a34-cac6-4fda-95a8-c58e00a3954e"}
    assert daemon.hook(b"{}", {"X-Gitlab-Token": SECRET, **event}) == 202
    eventually(
        converged(world, **{**all_v11, "dev": "v1.2", "staging": "v1.2"}),
        within(1),
        "GitLab-token hook",
        daemon,
    )
    eventually(
        lambda: daemon.sample("reconciler_passes_total", result="ok") == 3, 5, "3 passes", daemon
    )
    assert daemon.sample("reconciler_webhook_requests_total", result="accepted") == 2
    assert SECRET not in daemon.log.read_text()

    assert daemon.stop(signal.SIGINT) == 0


def test_registry_outage_backs_off_then_converges_with_nothing_lost(
    registry_factory: RegistryFactory, tmp_path: Path, cue_bin: str, daemons: list[DaemonProcess]
) -> None:
    registry = registry_factory.plain()
    world = build_world(registry.host, tmp_path)
    remote = Remote(world, tmp_path / "remote.git")
    daemon = DaemonProcess(
        tmp_path / "daemon.log", remote.url, "--backoff-base", "0.5", "--backoff-cap", "2"
    )
    daemons.append(daemon)
    eventually(
        converged(world, dev="v1.1", staging="v1.1", prod="v1.1"), within(2), "start", daemon
    )
    # Tags in place is not the end of the pass: records and summaries come after them.
    eventually(
        lambda: all(daemon.events("applied", env) for env in ("dev", "staging", "prod")),
        within(1),
        "the first pass finished",
        daemon,
    )

    registry.stop()
    try:
        remote.promote(dev="v1.2")

        def backing_off() -> bool:
            m = daemon.metrics()
            health = m.get(
                ("reconciler_environment_health", (("environment", "dev"), ("state", "backoff")))
            )
            errors = sum(
                v
                for (n, labels), v in m.items()
                if n == "reconciler_registry_requests_total" and ("status", "error") in labels
            )
            return health == 1 and errors >= 12  # three failed passes' worth of attempts

        eventually(backing_off, within(4) + 20, "backoff while the registry is down", daemon)
        assert daemon.get("/healthz").status_code == 200
    finally:
        registry.start()

    eventually(
        converged(world, dev="v1.2", staging="v1.1", prod="v1.1"), within(2) + 5, "recovery", daemon
    )
    # Only dev's tags changed, so only dev met the outage; wait until all report ok.
    eventually(
        lambda: all(
            daemon.sample("reconciler_environment_health", environment=env, state="ok") == 1
            for env in ("dev", "staging", "prod")
        ),
        within(2),
        "every environment healthy",
        daemon,
    )
    assert len(daemon.events("backoff", "dev")) == 1, daemon.tail()  # logged once...
    assert len(daemon.events("recovered", "dev")) == 1, daemon.tail()  # ...and recovered once
    for env in ("staging", "prod"):  # the commit changed nothing of theirs: never tried
        assert not daemon.events("backoff", env), daemon.tail()
    chain = records.read_chain(world.registry, world.source, "dev")
    assert [r.release for r in chain] == ["v1.2", "v1.1"]
    assert daemon.stop() == 0


@pytest.fixture
def proxied_world(
    plain_registry: RegistryServer, fault_proxy: FaultProxy, tmp_path: Path, cue_bin: str
) -> World:
    """A world whose state names the registry through the fault proxy."""
    world = build_world(plain_registry.host, tmp_path)
    world.repo.commit(
        {
            "reconciler.cue": "package reconciler\n\nsettings: {\n"
            f'\tregistries: "{fault_proxy.host}": plainHTTP: true\n'
            f"\tverify: insecureSkipSignatures: true\n\t{recordkeys.SETTINGS}\n}}\n",
            "catalogs/shop.cue": (world.repo.path / "catalogs/shop.cue")
            .read_text()
            .replace(plain_registry.host, fault_proxy.host),
        }
    )
    return world


def test_sigterm_during_a_pass_finishes_it_and_exits_0(
    proxied_world: World, fault_proxy: FaultProxy, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    world = proxied_world
    remote = Remote(world, tmp_path / "remote.git")
    fault_proxy.add(Fault("delay", times=-1, method="PUT", delay=0.2))  # a slow registry
    daemon = DaemonProcess(tmp_path / "daemon.log", remote.url)
    daemons.append(daemon)
    eventually(lambda: fault_proxy.count("PUT") >= 1, within(1), "the pass is writing", daemon)

    assert daemon.stop(signal.SIGTERM) == 0, daemon.tail()
    stopping, applied = daemon.events("stopping"), daemon.events("applied", "prod")
    assert stopping and daemon.events("stopped") and applied
    assert str(stopping[0]["time"]) <= str(applied[0]["time"])  # the signal came mid-pass
    # The running pass was finished, not abandoned: every tag and record is in place.
    all_v11 = {"dev": "v1.1", "staging": "v1.1", "prod": "v1.1"}
    assert converged(world, **all_v11)()
    for env in ("dev", "staging", "prod"):
        chain = records.read_chain(world.registry, world.source, env)
        assert [r.release for r in chain] == ["v1.1"]
        assert chain[0].tags == expected_tags(world, **{env: "v1.1"})

    fault_proxy.clear()
    writes = fault_proxy.count("PUT")
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "apply", "--repo", remote.url],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert fault_proxy.count("PUT") == writes == 0  # nothing was left to finish
    assert set(ITEMS) <= {t.split("-", 1)[1] for t in desired_only(world.tags())}
