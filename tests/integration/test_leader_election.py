"""``reconciler run --leader-elect`` against a real Kubernetes API server (kube-apiserver on
etcd), a real registry and real git: three daemons on one state repository.

The Lease timings are short (3 s / 2 s / 0.5 s) to keep the tests quick; every deadline
is derived from them plus the daemon's pass allowance, never tighter.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from reconciler.daemon.options import SECRET_ENV
from reconciler.evidence import records
from reconciler.model import Record
from tests.support.daemon import (
    DaemonProcess,
    Remote,
    converged,
    daemon_command,
    eventually,
    within,
)
from tests.support.kube import NAMESPACE, RESOURCES, KubeCluster
from tests.support.registry_servers import Fault, FaultProxy, RegistryServer
from tests.support.staterepo import ROOT
from tests.support.world import World, build_world

LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 3.0, 2.0, 0.5
TAKEOVER = LEASE_DURATION + RETRY_PERIOD  # client-go's bound for another to take over
ALL_V11 = {"dev": "v1.1", "staging": "v1.1", "prod": "v1.1"}
SECRET = "a-webhook-secret-0123456789"


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    cluster = KubeCluster(tmp_path_factory.mktemp("kube"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(kube: KubeCluster) -> Iterator[KubeCluster]:
    """The module's API server, every Lease gone after each test (shards see each other's)."""
    if kube.apiserver is None:
        kube.start_apiserver()
    yield kube
    if kube.apiserver is None:
        kube.start_apiserver()
    kube.request("DELETE", f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases")


@pytest.fixture
def proxy(plain_registry: RegistryServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(plain_registry.host)
    yield proxy
    proxy.close()


@pytest.fixture
def world(proxy: FaultProxy, tmp_path: Path, cue_bin: str) -> World:
    """The state names the registry through a proxy that can stop a daemon mid-write."""
    return build_world(proxy.host, tmp_path)


def elected(
    cluster: KubeCluster, remote: Remote, tmp_path: Path, name: str, *extra: str
) -> DaemonProcess:
    """One replica: its own cache (its local anchor), the shared Lease, short timings."""
    return DaemonProcess(
        tmp_path / f"{name}.log", remote.url,
        "--leader-elect", "--kubeconfig", str(cluster.kubeconfig(tmp_path / "kubeconfig")),
        "--lease-namespace", NAMESPACE,
        "--identity", name, "--lease-duration", str(LEASE_DURATION),
        "--renew-deadline", str(RENEW_DEADLINE), "--retry-period", str(RETRY_PERIOD),
        *extra,
        env={"RECONCILER_CACHE_DIR": str(tmp_path / f"cache-{name}"), SECRET_ENV: SECRET},
    )  # fmt: skip


def three(cluster: KubeCluster, remote: Remote, tmp_path: Path) -> list[DaemonProcess]:
    return [elected(cluster, remote, tmp_path, f"replica-{i}") for i in range(3)]


def leaders(daemons: list[DaemonProcess], lease: str = "reconciler") -> list[DaemonProcess]:
    found = []
    for daemon in daemons:
        if daemon.proc.poll() is not None:
            continue
        with contextlib.suppress(requests.RequestException):  # one that stops does not answer
            if daemon.sample("reconciler_leader", lease=lease) == 1:
                found.append(daemon)
    return found


def one_leader(daemons: list[DaemonProcess], seconds: float) -> DaemonProcess:
    eventually(lambda: len(leaders(daemons)) == 1, seconds, "exactly one leader")
    (leader,) = leaders(daemons)
    return leader


def first_convergence(world: World, daemons: list[DaemonProcess]) -> None:
    """Every tag as desired, and every environment's record written after its tags."""
    eventually(converged(world, **ALL_V11), within(2) + TAKEOVER, "first convergence", daemons[0])
    eventually(
        lambda: all(records.read_head(world.registry, world.source, e) for e in ALL_V11),
        10, "the first records", daemons[0],
    )  # fmt: skip


def head(world: World, env: str) -> Record:
    found = records.read_head(world.registry, world.source, env)
    assert found is not None
    return found


def applied(daemon: DaemonProcess, env: str | None = None) -> int:
    return len(daemon.events("applied", env))


# --------------------------------------------------------------------------- tests


def test_one_of_three_applies_the_others_stand_by(
    cluster: KubeCluster, world: World, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    remote = Remote(world, tmp_path / "remote.git")
    daemons += three(cluster, remote, tmp_path)
    first_convergence(world, daemons)
    leader = one_leader(daemons, TAKEOVER)
    others = [d for d in daemons if d is not leader]
    for i, other in enumerate(others):  # a webhook that lands on a standby: answered, no pass
        delivery = {"X-Gitlab-Token": SECRET, "X-Gitlab-Event-UUID": f"{i:08d}-0000-4000-8000-0"}
        assert other.hook(b"{}", delivery) == 202

    remote.promote(dev="v1.2")
    eventually(converged(world, **{**ALL_V11, "dev": "v1.2"}), within(2), "the promotion")
    eventually(lambda: applied(leader, "dev") == 2, 5, "the leader's two applies", leader)
    for other in others:
        assert applied(other) == 0, other.tail()
        assert other.events("standby"), other.tail()
        assert other.sample("reconciler_leader", lease="reconciler") == 0
        assert other.get("/readyz").status_code == 200  # a standby is healthy and ready

    lease = cluster.lease("reconciler")
    assert lease is not None
    record = head(world, "dev")
    assert record.term is not None
    assert record.term.holder == lease["spec"]["holderIdentity"] == leader_identity(leader)
    assert record.term.token == lease["spec"]["leaseTransitions"]

    assert leader.stop() == 0  # SIGTERM: the running pass finishes, the Lease is released
    assert leader.events("released"), leader.tail()
    released = cluster.lease("reconciler")
    assert released is not None
    assert released["spec"].get("holderIdentity") != leader_identity(leader)


def test_sigkill_of_the_leader_another_takes_over_and_applies(
    cluster: KubeCluster, world: World, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    remote = Remote(world, tmp_path / "remote.git")
    daemons += three(cluster, remote, tmp_path)
    first_convergence(world, daemons)
    first = one_leader(daemons, TAKEOVER)
    before = head(world, "dev").term
    assert before is not None

    first.kill()  # SIGKILL: no release, the Lease must expire
    second = one_leader([d for d in daemons if d is not first], TAKEOVER + 5)
    remote.promote(dev="v1.2")
    eventually(converged(world, **{**ALL_V11, "dev": "v1.2"}), within(2), "the promotion")
    # The record follows the tags: written once every move is confirmed.
    eventually(lambda: head(world, "dev").release == "v1.2", 10, "its record", second)
    after = head(world, "dev").term
    assert after is not None and after.holder == leader_identity(second) != before.holder
    assert after.token > before.token
    assert applied(second, "dev") == 1


def test_a_stopped_leader_loses_the_lease_and_writes_nothing_when_it_resumes(
    cluster: KubeCluster,
    world: World,
    proxy: FaultProxy,
    tmp_path: Path,
    daemons: list[DaemonProcess],
) -> None:
    remote = Remote(world, tmp_path / "remote.git")
    daemons += three(cluster, remote, tmp_path)
    first_convergence(world, daemons)
    old = one_leader(daemons, TAKEOVER)
    old_term = head(world, "dev").term
    assert old_term is not None and old_term.holder == leader_identity(old)

    # The old leader is stopped in the middle of its pass: its first tag write is on
    # the wire (it was checked while the lease was held), the rest is not.
    proxy.add(
        Fault(
            "hook", method="PUT", path=r"/manifests/dev-",
            action=lambda: os.kill(old.proc.pid, signal.SIGSTOP),
        )
    )  # fmt: skip
    remote.promote(dev="v1.2")
    rest = [d for d in daemons if d is not old]
    new = one_leader(rest, within(2) + TAKEOVER + 5)
    eventually(converged(world, **{**ALL_V11, "dev": "v1.2"}), within(2), "the new leader applies")
    eventually(lambda: head(world, "dev").term.holder == leader_identity(new), 10, "its record")  # type: ignore[union-attr]
    tags_now, head_now = world.tags(), head(world, "dev").digest

    old.proc.send_signal(signal.SIGCONT)
    eventually(lambda: bool(old.events("lease-lost")), 10, "the old leader says so", old)
    # Its pass went on to its next write and stopped there (fencing), or never began.
    eventually(lambda: leaders(daemons) == [new], 10, "one leader, the new one")
    standby = old.sample("reconciler_passes_total", result="standby")
    eventually(
        lambda: old.sample("reconciler_passes_total", result="standby") > standby + 2,
        within(3), "a few passes of the old leader, as a standby", old,
    )  # fmt: skip
    assert world.tags() == tags_now and head(world, "dev").digest == head_now
    assert applied(old, "dev") == 1  # the first convergence, never the promotion
    new_term = head(world, "dev").term
    assert new_term is not None and new_term.token > old_term.token
    chain = records.read_chain(world.registry, world.source, "dev")
    assert [r.term.holder for r in chain if r.term] == [leader_identity(new), old_term.holder]


def test_without_the_api_server_the_leader_stops_and_one_leads_again_after(
    cluster: KubeCluster, world: World, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    remote = Remote(world, tmp_path / "remote.git")
    daemons += three(cluster, remote, tmp_path)
    first_convergence(world, daemons)
    leader = one_leader(daemons, TAKEOVER)

    cluster.stop_apiserver()
    eventually(lambda: not leaders(daemons), RENEW_DEADLINE + 5, "the leader steps down")
    assert leader.events("lease-lost"), leader.tail()
    remote.promote(dev="v1.2")
    before = world.tags()
    for daemon in daemons:  # each ran passes since, as a standby
        seen = daemon.sample("reconciler_passes_total", result="standby")
        eventually(
            lambda d=daemon, s=seen: d.sample("reconciler_passes_total", result="standby") > s + 2,
            within(3), "standby passes", daemon,
        )  # fmt: skip
    assert world.tags() == before  # nobody applies without the lease

    cluster.start_apiserver()
    one_leader(daemons, within(2) + TAKEOVER + 10)
    eventually(converged(world, **{**ALL_V11, "dev": "v1.2"}), within(2), "the promotion")


def test_two_shards_on_two_leases_apply_their_own_environments_only(
    cluster: KubeCluster, world: World, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    remote = Remote(world, tmp_path / "remote.git")
    early = ("--env", "dev", "--env", "staging", "--lease-name", "reconciler-early")
    late = ("--env", "prod", "--lease-name", "reconciler-prod")
    daemons.append(elected(cluster, remote, tmp_path, "early-0", *early))
    daemons.append(elected(cluster, remote, tmp_path, "prod-0", *late))
    daemons.append(elected(cluster, remote, tmp_path, "prod-1", *late))
    first_convergence(world, daemons)
    remote.promote(dev="v1.2", staging="v1.2", prod="v1.2")
    eventually(converged(world, dev="v1.2", staging="v1.2", prod="v1.2"), within(3), "promotion")

    early_shard, prod_shard = daemons[0], daemons[1:]
    eventually(lambda: sum(applied(d, "prod") for d in prod_shard) == 2, 10, "logged", daemons[1])
    eventually(lambda: applied(early_shard, "staging") == 2, 10, "logged", early_shard)
    assert {e["environment"] for e in early_shard.events("applied")} == {"dev", "staging"}
    assert {e["environment"] for d in prod_shard for e in d.events("applied")} == {"prod"}
    assert sum(applied(d, "prod") for d in prod_shard) == 2  # one leader of the two
    for env, lease in (("dev", "reconciler-early"), ("prod", "reconciler-prod")):
        term = head(world, env).term
        assert term is not None and term.lease == lease

    # A third shard naming prod again is refused at start, naming the Lease that has it.
    kubeconfig = tmp_path / "kubeconfig"
    refused = subprocess.run(
        [
            *daemon_command(), "--repo", remote.url, "--listen", "127.0.0.1:0",
            "--leader-elect", "--kubeconfig", str(kubeconfig), "--lease-namespace", NAMESPACE,
            "--env", "prod",
            "--lease-name", "reconciler-again",
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "reconciler-prod" in refused.stderr and "prod" in refused.stderr
    assert cluster.lease("reconciler-again") is None


def test_every_kubernetes_example_manifest_is_admitted_by_a_real_api_server(
    cluster: KubeCluster,
) -> None:
    """Server-side dry run (``dryRun=All``): schema, defaults and admission, nothing stored."""
    k8s = ROOT / "examples" / "kubernetes"
    kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text())
    docs = [
        d
        for name in kustomization["resources"]
        for d in yaml.safe_load_all((k8s / name).read_text())
        if d
    ]
    assert {d["kind"] for d in docs} >= {"Role", "RoleBinding", "StatefulSet", "Secret"}
    for doc in docs:
        answer = cluster.create(doc, dry_run=True)
        assert answer.status_code == 201, f"{doc['kind']} {doc['metadata']['name']}: {answer.text}"
        name = doc["metadata"]["name"]
        prefix, plural = RESOURCES[doc["kind"]]
        assert cluster.get(f"{prefix}/namespaces/{NAMESPACE}/{plural}/{name}").status_code == 404


def leader_identity(daemon: DaemonProcess) -> str:
    """The ``--identity`` a test daemon was started with."""
    args = daemon.proc.args
    assert isinstance(args, list)
    return str(args[args.index("--identity") + 1])
