"""A reconcile pass at scale vs. a raw HTTP floor and a `skopeo copy` loop, in one run.

ENVS environments x ITEMS items (1,000 tags by default) in one catalog, every digest
signed with a cosign key (legacy .sig), state in a real git repository with CUE settings.
Measured, all in the same run against one local registry:

- first converge: `reconciler apply` as a user runs it, a separate process with its
  default cache (``$XDG_CACHE_HOME/reconciler``, pointed into the bench's temp dir; no
  ``RECONCILER_CACHE_DIR``): start-up, git, a cold `cue` call, observe, plan, the gate,
  apply, records. Against the floor "PUT + HEAD every tag" on 16 keep-alive
  ``http.client`` connections (one per thread), and `skopeo copy --preserve-digests`
  and `crane copy` doing the same tag moves (a sample, scaled);
- no-op: `reconciler apply` of the same commit again, vs. the floor "HEAD every tag"
  (1,000 requests on those 16 connections); then the same pass in process, which must
  make zero `cue` calls and zero writes;
- the apply process's peak RSS (``wait4``), not the bench's.

Each ratio is the median of ``--rounds`` paired rounds (default 3): a round pushes the
artifacts to a repository of its own, measures the PUT + HEAD floor, the converge, the
no-op and the HEAD floor one after the other, so both sides of a ratio meet the same
machine (on a shared 2-core machine the floor alone moved by 30% between minutes).

The floor used to be a ``requests.Session`` pool: it spends ~1.4 ms of CPU per request
against http.client's ~0.3, and on a 2-core machine that CPU is the registry's too, so
it raised the floor by a third and made the ratio look better than it was (the "floor
with requests" row shows it).

    .venv/bin/python -m bench.bench_reconcile [--envs 50] [--items 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pygit2
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from requests.adapters import HTTPAdapter

from bench.bench_registry import start_registry
from reconciler.desired import Loader
from reconciler.engine.reconcile import Mode, Reconciler
from reconciler.git import GitSource
from reconciler.registry import OCI_MANIFEST, HostConfig, HttpRegistry, Registries, RegistrySettings
from reconciler.registry.oci import MANIFEST_ACCEPT, referrers_tag
from reconciler.verify.root import TrustRoot


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_artifact(client: HttpRegistry, repo: str, name: str) -> tuple[str, bytes]:
    config = json.dumps({"architecture": "amd64", "os": "linux", "name": name}).encode()
    layer = hashlib.sha256(name.encode()).digest() * 32
    for blob in (config, layer):
        client.put_blob(repo, sha(blob), len(blob), [blob])
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    return client.put_manifest(repo, sha(manifest), manifest, OCI_MANIFEST), manifest


def sign(client: HttpRegistry, repo: str, digest: str, key: ec.EllipticCurvePrivateKey) -> None:
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": repo},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    ).encode()
    signature = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    config = b"{}"
    for blob in (config, payload):
        client.put_blob(repo, sha(blob), len(blob), [blob])
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha(config),
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                    "digest": sha(payload),
                    "size": len(payload),
                    "annotations": {"dev.cosignproject.cosign/signature": signature},
                }
            ],
        }
    ).encode()
    client.put_manifest(repo, referrers_tag(digest) + ".sig", manifest, OCI_MANIFEST)


def state_repository(
    path: Path, host: str, repo: str, envs: int, digests: dict[str, str], pem: str, threads: int
) -> None:
    files = {
        "reconciler.cue": (
            "package reconciler\n\nsettings: {\n"
            f'\tregistries: "{host}": {{plainHTTP: true, concurrency: {threads}}}\n'
            '\tverify: keys: ["keys/cosign.pub"]\n}\n'
        ),
        "keys/cosign.pub": pem,
        "catalogs/app.json": json.dumps(
            {
                "name": "example.org/bench",
                "source": f"{host}/{repo}",
                "releases": [{"name": "v1", "items": digests}],
            }
        ),
    }
    for i in range(envs):
        files[f"environments/e{i:03d}.json"] = json.dumps(
            {"catalog": "example.org/bench", "release": "v1"}
        )
    git = pygit2.init_repository(str(path), initial_head="main")
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    git.index.add_all()
    git.index.write()
    who = pygit2.Signature("bench", "bench@example.org")
    git.create_commit("refs/heads/main", who, who, "bench state", git.index.write_tree(), [])


def apply_process(state: Path, cache_home: Path) -> tuple[float, int, float]:
    """`reconciler apply --json` as a whole process with its default cache:
    (wall seconds, tags moved, peak RSS in MiB)."""
    command = [sys.executable, "-m", "reconciler", "apply", "--repo", str(state), "--json"]
    command.append("--trust-on-first-use")  # the bench made this repository itself
    env = {k: v for k, v in os.environ.items() if k != "RECONCILER_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(cache_home)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        sys.exit(f"reconciler apply failed:\n{stdout[-2000:]}{stderr[-2000:]}")
    envs = json.loads(stdout)["environments"]
    moved = sum(len((e["applied"] or {}).get("moved", [])) for e in envs)
    return elapsed, moved, usage.ru_maxrss / 1024


def floor(host: str, repo: str, threads: int, tags: list[str], manifest: bytes | None) -> float:
    """PUT then HEAD every tag (HEAD only without ``manifest``) on ``threads`` keep-alive
    ``http.client`` connections, one per thread: the least a pass can do."""
    local = threading.local()
    path = f"/v2/{repo}/manifests/"

    def connection() -> http.client.HTTPConnection:
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection(host, timeout=30)
        conn: http.client.HTTPConnection = local.connection
        return conn

    def head(tag: str) -> None:
        conn = connection()
        conn.request("HEAD", path + tag, headers={"Accept": MANIFEST_ACCEPT})
        response = conn.getresponse()
        response.read()  # a HEAD right after a PUT can answer 500 on distribution 2.8

    def put_head(tag: str) -> None:
        conn = connection()
        conn.request("PUT", path + tag, body=manifest, headers={"Content-Type": OCI_MANIFEST})
        response = conn.getresponse()
        response.read()
        assert response.status == 201, response.status
        head(tag)

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(head if manifest is None else put_head, tags))
    return time.perf_counter() - start


def requests_floor(host: str, repo: str, threads: int, tags: list[str]) -> float:
    """The old floor: HEAD every tag through a ``requests.Session`` pool."""
    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=threads, max_retries=0))
    base = f"http://{host}/v2/{repo}/manifests/"

    def head(tag: str) -> None:
        session.head(base + tag, headers={"Accept": MANIFEST_ACCEPT}, timeout=(5, 30))

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(head, tags))
    return time.perf_counter() - start


def skopeo_loop(host: str, repo: str, digest: str, sample: int) -> float:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        sys.exit("skopeo not found; run `make setup`")
    start = time.perf_counter()
    for i in range(sample):
        subprocess.run(
            [
                skopeo,
                "copy",
                "--quiet",
                "--preserve-digests",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                f"docker://{host}/{repo}@{digest}",
                f"docker://{host}/{repo}:skopeo-{i}",
            ],
            check=True,
            capture_output=True,
        )
    return time.perf_counter() - start


def crane_loop(host: str, repo: str, digest: str, sample: int) -> float:
    """The same tag moves with `crane copy` (go-containerregistry), a second peer."""
    crane = shutil.which("crane")
    if crane is None:
        sys.exit("crane not found; run `make setup` (it builds crane under .tools/bin)")
    start = time.perf_counter()
    for i in range(sample):
        subprocess.run(
            [
                crane,
                "copy",
                "--insecure",
                f"{host}/{repo}@{digest}",
                f"{host}/{repo}:crane-{i}",
            ],
            check=True,
            capture_output=True,
        )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--envs", type=int, default=50)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds; medians shown")
    parser.add_argument("--skopeo-sample", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None, help="append the table here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-reconcile-") as tmp:
        process, host = start_registry(Path(tmp))
        try:
            rows = run(Path(tmp), host, args)
        finally:
            process.terminate()
            process.wait()
    report(rows, args)


@dataclass
class Round:
    """One paired round: each ratio's two sides measured next to each other, on a
    repository and tags of the round's own, so a machine that slows down between rounds
    moves both sides."""

    floor_converge: float
    converge: float
    noop: float
    floor_noop: float
    rss_converge: float
    rss_noop: float


def one_round(tmp: Path, host: str, args: argparse.Namespace, r: int) -> Round:
    repo = f"bench/app{r}"
    client = HttpRegistry(host, HostConfig(plain_http=True, concurrency=args.threads))
    key = ec.generate_private_key(ec.SECP256R1())
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    digests, manifests = {}, {}
    for i in range(args.items):
        digest, manifest = push_artifact(client, repo, f"item{i}")
        sign(client, repo, digest, key)
        digests[f"i{i:02d}"], manifests[digest] = digest, manifest
    state = tmp / f"state{r}"
    state_repository(state, host, repo, args.envs, digests, pem, args.threads)
    count = args.envs * args.items
    floor_tags = [f"floor-{n}" for n in range(count)]
    floor_converge = floor(host, repo, args.threads, floor_tags, next(iter(manifests.values())))
    converge, moved, rss_converge = apply_process(state, tmp / f"xdg{r}")
    noop, moved_again, rss_noop = apply_process(state, tmp / f"xdg{r}")
    floor_noop = floor(host, repo, args.threads, floor_tags, None)
    assert moved == count and moved_again == 0, (moved, moved_again)
    return Round(floor_converge, converge, noop, floor_noop, rss_converge, rss_noop)


def run(tmp: Path, host: str, args: argparse.Namespace) -> list[tuple[str, float, str]]:
    rounds = [one_round(tmp, host, args, r) for r in range(args.rounds)]
    last = args.rounds - 1
    state, repo = tmp / f"state{last}", f"bench/app{last}"
    count = args.envs * args.items

    cache = tmp / "cache"
    registries = Registries(
        RegistrySettings(hosts={host: HostConfig(plain_http=True, concurrency=args.threads)})
    )
    loader = Loader(cache)
    reconciler = Reconciler(
        GitSource(str(state), cache),
        loader,
        registries=registries,
        trust_root=TrustRoot.on_first_use(),
    )
    reconciler.run(Mode.APPLY)  # warms this process's own cache
    cue_before, writes_before = loader.cue_calls, registries.stats.writes()
    start = time.perf_counter()
    again = reconciler.run(Mode.APPLY)
    noop_in_process = time.perf_counter() - start
    assert again.in_sync
    cue_noop = loader.cue_calls - cue_before
    writes_noop = registries.stats.writes() - writes_before

    floor_tags = [f"floor-{n}" for n in range(count)]
    floor_noop_requests = requests_floor(host, repo, args.threads, floor_tags)
    digest = HttpRegistry(host, HostConfig(plain_http=True)).resolve(repo, floor_tags[0])
    assert digest is not None
    sample = min(args.skopeo_sample, count)
    skopeo = skopeo_loop(host, repo, digest, sample) * count / sample
    crane = crane_loop(host, repo, digest, sample) * count / sample

    def med(values: list[float]) -> float:
        return statistics.median(values)

    def spread(values: list[float], target: str = "") -> str:
        rounds = f"rounds: {', '.join(f'{v:.2f}' for v in values)}" if len(values) > 1 else ""
        return "; ".join(part for part in (target, rounds) if part)

    converges = [r.converge for r in rounds]
    floors = [r.floor_converge for r in rounds]
    c_ratio = [x.converge / x.floor_converge for x in rounds]
    n_ratio = [x.noop / x.floor_noop for x in rounds]
    return [
        ("tags", float(count), f"{args.envs} environments x {args.items} items"),
        ("first converge: `reconciler apply` process", med(converges), spread(converges)),
        ("  floor: PUT + HEAD every tag (http.client)", med(floors), ""),
        ("  converge / floor", med(c_ratio), spread(c_ratio, "target <= 1.5")),
        (f"  skopeo copy loop ({sample} sampled, scaled)", skopeo, ""),
        ("  skopeo / converge", skopeo / med(converges), "target >= 8"),
        (f"  crane copy loop ({sample} sampled, scaled)", crane, ""),
        ("  crane / converge", crane / med(converges), ""),
        ("no-op: `reconciler apply` process", med([x.noop for x in rounds]), ""),
        ("  floor: HEAD every tag (http.client)", med([x.floor_noop for x in rounds]), ""),
        ("  no-op / floor", med(n_ratio), spread(n_ratio, "target <= 1.5")),
        ("  floor with requests.Session (the old bench's)", floor_noop_requests, ""),
        (
            "  no-op / requests floor",
            rounds[-1].noop / floor_noop_requests,
            "what the old bench showed (last round)",
        ),
        ("  no-op pass in process", noop_in_process, f"{cue_noop} cue calls, {writes_noop} writes"),
        ("peak RSS of the apply process, converge (MiB)", max(x.rss_converge for x in rounds), ""),
        ("peak RSS of the apply process, no-op (MiB)", max(x.rss_noop for x in rounds), ""),
    ]


def report(rows: list[tuple[str, float, str]], args: argparse.Namespace) -> None:
    lines = [
        f"reconcile pass, {platform.machine()} {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, concurrency {args.threads}",
        "",
        "| measure | value | note |",
        "| --- | ---: | --- |",
    ]
    for name, value, note in rows:
        whole = name == "tags" or name.startswith("peak")
        shown = f"{value:.0f}" if whole else f"{value:.2f}"
        unit = "x" if "/" in name else ("" if whole else " s")
        lines.append(f"| {name.strip()} | {shown}{unit} | {note} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with args.out.open("a") as fh:
            fh.write(text + "\n\n")


if __name__ == "__main__":
    main()
