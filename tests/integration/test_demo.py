"""`make demo` runs the whole loop on the embedded default; this runs it and reads it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.staterepo import ROOT


def test_demo_promotes_rolls_back_and_audits_without_cue() -> None:
    # `make demo` builds no cue (its state is JSON): run it with no cue on PATH.
    path = os.pathsep.join(
        d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / "cue").exists()
    )
    assert shutil.which("cue", path=path) is None
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PATH": path},
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "Traceback" not in out + proc.stderr
    for env in ("dev", "staging", "prod"):
        assert f"{env} promoted from v1.1 to v1.2" in out
    assert "prod rolled back from v1.2 to v1.1, reverting" in out
    assert "refused (hazards)" in out
    assert out.count("  in-sync") >= 3  # status after the promotions
    audit = out[out.index("$ reconciler audit") :]
    assert "rollback  v1.2 -> v1.1     applied acme/state!4" in audit
    assert "merged by Riley Reviewer" in audit and "signed: key sha256:" in audit
    assert "record signed by key sha256:" in audit
    forged = out[out.index("forges prod's apply record") :]
    assert "refused (records)" in forged and "is not a record" in forged
    assert "record    untrusted" in forged
