"""What a command pays before it starts: heavy modules load only when used."""

from __future__ import annotations

import subprocess
import sys


def test_the_cli_does_not_load_sigstores_verifier_until_a_keyless_signature_is_checked() -> None:
    code = "import sys, reconciler.cli.main; print('sigstore.verify' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
