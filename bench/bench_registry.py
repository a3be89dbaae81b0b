"""Registry client overhead vs. a raw ``requests`` floor, measured in the same run.

Starts its own ``docker-registry`` on 127.0.0.1, pushes one image, then times
HEAD (resolve) and PUT (retag) of 1,000 tags through ``HttpRegistry`` and
through a bare ``requests.Session`` thread pool at the same concurrency. The
registry is the bottleneck on small machines, so only the ratio means much;
rounds alternate which side goes first and the median is reported.

    .venv/bin/python bench/bench_registry.py [--tags 1000] [--threads 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

from reconciler.registry import OCI_MANIFEST, HostConfig, HttpRegistry
from reconciler.registry.oci import MANIFEST_ACCEPT


def start_registry(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    if not Path(binary).exists():
        sys.exit("docker-registry not found; run `make setup`")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = directory / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: error, accesslog: {disabled: true}}\n"
        f"storage: {{filesystem: {{rootdirectory: {directory / 'data'}}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}, secret: bench}}\n"
    )
    process = subprocess.Popen([binary, "serve", str(config)], stderr=subprocess.DEVNULL)
    host = f"127.0.0.1:{port}"
    for _ in range(500):
        try:
            requests.get(f"http://{host}/v2/", timeout=1)
            return process, host
        except requests.RequestException:
            time.sleep(0.01)
    process.terminate()
    sys.exit("docker-registry did not start")


def push_image(client: HttpRegistry, repo: str) -> bytes:
    config = b'{"architecture":"amd64","os":"linux"}'
    layer = hashlib.sha256(b"bench").digest() * 64
    for blob in (config, layer):
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        client.put_blob(repo, digest, len(blob), [blob])

    def desc(media_type: str, blob: bytes) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        return {"mediaType": media_type, "digest": digest, "size": len(blob)}

    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc("application/vnd.oci.image.config.v1+json", config),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", layer)],
        }
    ).encode()
    client.put_manifest(repo, "base", manifest, OCI_MANIFEST)
    return manifest


def timed(threads: int, work: Callable[[int], None], count: int) -> float:
    with ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        list(pool.map(work, range(count)))
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tags", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
        process, host = start_registry(Path(tmp))
        try:
            run(host, args.tags, args.threads, args.rounds)
        finally:
            process.terminate()
            process.wait()


class _PoolFull(logging.Handler):
    """Counts urllib3's "Connection pool is full" warnings: connections thrown away."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "Connection pool is full" in record.getMessage():
            self.count += 1


def run(host: str, count: int, threads: int, rounds: int) -> None:
    repo = "bench/app"
    pool_full = _PoolFull()
    logging.getLogger("urllib3").addHandler(pool_full)
    # The client's default concurrency (16), fed by ``threads`` threads like a pass's pools.
    client = HttpRegistry(host, HostConfig(plain_http=True))
    manifest = push_image(client, repo)

    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=threads, max_retries=0)
    session.mount("http://", adapter)
    base = f"http://{host}/v2/{repo}/manifests/"

    def floor_put(i: int) -> None:
        r = session.put(
            f"{base}t{i}", data=manifest, headers={"Content-Type": OCI_MANIFEST}, timeout=(5, 30)
        )
        assert r.status_code == 201, r.status_code

    def floor_head(i: int) -> None:
        r = session.head(f"{base}t{i}", headers={"Accept": MANIFEST_ACCEPT}, timeout=(5, 30))
        assert r.status_code == 200 and r.headers["Docker-Content-Digest"]

    def client_put(i: int) -> None:
        client.put_manifest(repo, f"t{i}", manifest, OCI_MANIFEST)

    def client_head(i: int) -> None:
        assert client.resolve(repo, f"t{i}") is not None

    results: dict[str, dict[str, list[float]]] = {
        "PUT": {"floor": [], "client": []},
        "HEAD": {"floor": [], "client": []},
    }
    sides = {
        "PUT": {"floor": floor_put, "client": client_put},
        "HEAD": {"floor": floor_head, "client": client_head},
    }
    timed(threads, floor_put, count)  # warm up: create the tags, open connections
    timed(threads, client_head, min(count, 100))
    for round_ in range(rounds):
        order = ("floor", "client") if round_ % 2 == 0 else ("client", "floor")
        for op in ("PUT", "HEAD"):
            for side in order:
                results[op][side].append(timed(threads, sides[op][side], count))

    print(f"{count} tags, {threads} threads, {rounds} rounds (median), registry {host}")
    print(f"{'op':<6}{'floor s':>10}{'client s':>10}{'ratio':>8}{'client req/s':>14}")
    for op, by_side in results.items():
        floor = statistics.median(by_side["floor"])
        mine = statistics.median(by_side["client"])
        print(f"{op:<6}{floor:>10.3f}{mine:>10.3f}{mine / floor:>8.2f}{count / mine:>14.0f}")
    print(f"requests counted by the client: {client.stats.total()}")
    print(
        f"client concurrency {client.config.concurrency} (default); "
        f"'Connection pool is full' warnings: {pool_full.count}"
    )
    client.close()


if __name__ == "__main__":
    main()
