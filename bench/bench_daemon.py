"""What the daemon costs the registry: an idle hour and one promotion, counted in requests.

ENVS environments x ITEMS items against a real registry and a real git repository; the
daemon (the real :class:`reconciler.daemon.service.Daemon`) runs its passes with a simulated
clock, so an hour of polling every ``--interval`` seconds takes as long as its requests
do. Counted: the first pass, an idle hour (polls, plus the drift scans that
``--drift-interval`` spreads over it), one commit promoting one environment, and the
wall time from that commit being seen to its tags moved.

    .venv/bin/python -m bench.bench_daemon [--envs 50] [--items 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import pygit2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench.bench_reconcile import push_artifact, sign, state_repository
from bench.bench_registry import start_registry
from reconciler.daemon.backoff import BackoffPolicy
from reconciler.daemon.service import Daemon
from reconciler.desired import Loader
from reconciler.engine.reconcile import Reconciler
from reconciler.git import GitSource
from reconciler.registry import HostConfig, HttpRegistry, Registries, RegistrySettings
from reconciler.verify.root import TrustRoot


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--envs", type=int, default=50)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--drift-interval", type=float, default=600.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp:
        process, host = start_registry(Path(tmp))
        try:
            rows = run(Path(tmp), host, args)
        finally:
            process.terminate()
            process.wait()
    print(
        f"daemon requests, {platform.machine()} {os.cpu_count()} cores, poll every "
        f"{args.interval:g} s, drift scans every {args.drift_interval:g} s\n"
    )
    print("| measure | value | note |\n| --- | ---: | --- |")
    for name, value, note in rows:
        print(f"| {name} | {value} | {note} |")


def run(tmp: Path, host: str, args: argparse.Namespace) -> list[tuple[str, str, str]]:
    repo = "bench/app"
    client = HttpRegistry(host, HostConfig(plain_http=True, concurrency=args.threads))
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    releases: dict[str, dict[str, str]] = {}
    for release in ("v1", "v2"):
        releases[release] = {}
        for i in range(args.items):
            digest, _ = push_artifact(client, repo, f"{release}-item{i}")
            sign(client, repo, digest, key)
            releases[release][f"i{i:02d}"] = digest
    state = tmp / "state"
    state_repository(state, host, repo, args.envs, releases["v1"], pem.decode(), args.threads)
    catalog = json.loads((state / "catalogs/app.json").read_text())
    catalog["releases"].append({"name": "v2", "items": releases["v2"]})
    commit(state, {"catalogs/app.json": json.dumps(catalog)}, "release v2")

    cache = tmp / "cache"
    registries = Registries(
        RegistrySettings(hosts={host: HostConfig(plain_http=True, concurrency=args.threads)})
    )
    reconciler = Reconciler(
        GitSource(str(state), cache),
        Loader(cache),
        registries=registries,
        trust_root=TrustRoot.on_first_use(),
    )
    clock = Clock()
    daemon = Daemon(reconciler, BackoffPolicy(), clock=clock, drift_interval=args.drift_interval)
    stats = registries.stats

    daemon.run_pass()
    first = stats.total()
    polls = int(3600 / args.interval)
    silent = 0
    for _ in range(polls):
        clock.now += args.interval
        before = stats.total()
        daemon.run_pass()
        silent += stats.total() == before
    idle = stats.total() - first
    scans = by_reason(daemon, "drift")

    clock.now += args.interval
    commit(state, {"environments/e000.json": '{"catalog": "example.org/bench", "release": "v2"}'})
    before = stats.total()
    change_before = by_reason(daemon, "change")
    started = time.perf_counter()
    daemon.run_pass()
    promotion_s = time.perf_counter() - started
    promotion = stats.total() - before
    change = by_reason(daemon, "change") - change_before
    moved = client.resolve(repo, "e000-i00") == releases["v2"]["i00"]
    reconciler.close()
    tags = args.envs * args.items
    return [
        ("tags", f"{tags}", f"{args.envs} environments x {args.items} items"),
        ("first pass", f"{first} requests", "converge from nothing"),
        (
            "idle hour",
            f"{idle} requests",
            f"{polls} polls; drift scans {scans} requests of them; {idle / tags:.1f} per tag",
        ),
        ("polls that made no request", f"{silent} of {polls}", "the rest ran a drift scan"),
        (
            "one environment promoted",
            f"{change} requests",
            f"{change / first:.1%} of the first pass; moved: {moved}",
        ),
        (
            "  that poll in all",
            f"{promotion} requests",
            "with the drift scans whose turn it was",
        ),
        ("  commit seen -> poll done", f"{promotion_s:.2f} s", "load, gate, apply, record"),
    ]


def by_reason(daemon: Daemon, reason: str) -> int:
    """Registry requests the daemon counted for ``reason``, from its own metrics."""
    value = daemon.metrics.registry.get_sample_value(
        "reconciler_registry_requests_by_reason_total", {"reason": reason}
    )
    return int(value or 0)


def commit(path: Path, files: dict[str, str], message: str = "promote") -> None:
    repo = pygit2.Repository(str(path))
    for rel, text in files.items():
        (path / rel).write_text(text)
    repo.index.add_all()
    repo.index.write()
    who = pygit2.Signature("bench", "bench@example.org")
    repo.create_commit(
        "refs/heads/main", who, who, message, repo.index.write_tree(), [repo.head.target]
    )


if __name__ == "__main__":
    main()
