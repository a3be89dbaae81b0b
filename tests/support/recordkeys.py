"""The record-signing key of the test session, made with the reconciler's own keygen.

Every test runs with ``RECONCILER_RECORD_KEY`` pointing at it (conftest), and the
states the tests build list its public key in ``settings.records.keys``, as a user's
would; tests about unsigned or foreign records make their own.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path

from reconciler.evidence.signing import generate

RECORDS_PUB = "keys/records.pub"
SETTINGS = f'records: keys: ["{RECORDS_PUB}"]'


@cache
def session_key() -> tuple[Path, str]:
    """(private key path, public key PEM); the directory (a private key) is removed
    when the process that made it exits."""
    directory = Path(tempfile.mkdtemp(prefix="reconciler-record-key-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    private, public = generate(directory / "records.key")
    return private, public.read_text()


def json_settings() -> dict[str, str]:
    """``reconciler.json`` and the public key, for states written as JSON."""
    return {
        "reconciler.json": '{"records": {"keys": ["' + RECORDS_PUB + '"]}}',
        RECORDS_PUB: session_key()[1],
    }
