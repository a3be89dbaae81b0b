"""The test support leaves nothing behind: the session's record key (a private key) is
removed with the process that made it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.staterepo import ROOT


def test_the_session_record_key_directory_is_removed_at_exit() -> None:
    code = "from tests.support.recordkeys import session_key; print(session_key()[0])"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    key = Path(done.stdout.strip())
    assert key.name == "records.key" and key.parent.name.startswith("reconciler-record-key-")
    assert not key.parent.exists()
