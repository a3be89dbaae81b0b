"""`make bench`: run every benchmark and write bench/RESULTS.md.

Each benchmark measures its own baseline in the same run (a raw HTTP floor, skopeo),
so the ratios mean something on any machine; absolute seconds only describe this one.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    ("Registry client vs raw HTTP floor", ["bench.bench_registry"]),
    ("Desired state: cold vs cached", ["bench.bench_desired"]),
    ("Reconcile pass: 1,000 tags", ["bench.bench_reconcile", "--envs", "50", "--items", "20"]),
    (
        "Reconcile pass: 10,000 tags",
        ["bench.bench_reconcile", "--envs", "100", "--items", "100", "--rounds", "1"],
    ),
    ("Daemon requests: 1,000 tags", ["bench.bench_daemon", "--envs", "50", "--items", "20"]),
    ("Daemon requests: 10,000 tags", ["bench.bench_daemon", "--envs", "100", "--items", "100"]),
]


def main() -> int:
    sections = [
        "# Benchmark results",
        "",
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; client and registry "
        "share the machine. Written by `make bench` (bench/__main__.py).",
    ]
    for title, module in BENCHMARKS:
        print(f"== {title}", flush=True)
        proc = subprocess.run(
            [sys.executable, "-m", *module], cwd=HERE.parent, capture_output=True, text=True
        )
        print(proc.stdout, end="")
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        sections += [
            "",
            f"## {title}",
            "",
            "```" if "|" not in proc.stdout else "",
            proc.stdout.strip(),
            "```" if "|" not in proc.stdout else "",
        ]
    (HERE / "RESULTS.md").write_text("\n".join(sections).replace("\n\n\n", "\n\n") + "\n")
    print(f"wrote {HERE / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
