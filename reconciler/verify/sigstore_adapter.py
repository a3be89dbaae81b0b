"""The one place that uses sigstore-python beyond its policy classes (tested with 4.5.x).

Public API: ``Bundle.from_json``, ``TrustedRoot.from_file``, ``Verifier(trusted_root=)``,
``Verifier.verify_dsse`` / ``verify_artifact``, ``sigstore.hashes.Hashed``. Two things
have no public API and are isolated here, each pinned by
``tests/unit/test_sigstore_adapter.py`` so that an upgrade fails loudly instead of
changing what is trusted:

- the public-good ``trusted_root.json`` that the package ships (``sigstore/_store``),
  the offline default;
- the TUF client (``sigstore._internal.tuf.TrustUpdater``) for the optional refresh of
  that root: only with ``RECONCILER_SIGSTORE_REFRESH=1``, online, cached by sigstore
  under the user's cache directory and here for an hour per process.

Everything else about a bundle (DSSE or message signature, its log index) is read
from the bundle's JSON, never from sigstore-python's private attributes.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from reconciler.errors import Transient

log = logging.getLogger(__name__)

TESTED_VERSIONS = ("4.5.",)
PUBLIC_GOOD_TUF = "https://tuf-repo-cdn.sigstore.dev"
REFRESH_ENV = "RECONCILER_SIGSTORE_REFRESH"
REFRESH_EVERY = 3600.0  # seconds a refreshed root is reused within one process


class SigstoreRefused(ValueError):
    """sigstore-python refused a bundle (or it could not be read); the message says why."""


@dataclass(frozen=True)
class KeylessResult:
    """What a keyless bundle proved: the DSSE payload (None for a message signature)."""

    payload_type: str | None
    payload: bytes | None
    log_index: int | None


def sigstore_version() -> str:
    """The installed sigstore-python's version, pinned against :data:`TESTED_VERSIONS` by
    the tests so that an upgrade is looked at before it changes what is trusted."""
    import sigstore

    return str(sigstore.__version__)


# --------------------------------------------------------------------------- trusted roots


def shipped_trusted_root() -> str:
    """The public-good ``trusted_root.json`` inside the installed sigstore package."""
    store = resources.files("sigstore") / "_store" / "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev"
    return (store / "trusted_root.json").read_text(encoding="utf-8")


_refreshed: tuple[float, str] | None = None
_refresh_lock = threading.Lock()


def refresh_requested() -> bool:
    """``RECONCILER_SIGSTORE_REFRESH`` asks for the public-good root over TUF (online)."""
    return os.environ.get(REFRESH_ENV, "").strip().lower() in {"1", "true", "yes"}


def default_trusted_root() -> str:
    """The root for policies that name none: shipped (offline), or refreshed over TUF.

    Raises:
        Transient: the refresh was asked for and failed (offline, TUF error).
    """
    if not refresh_requested():
        return shipped_trusted_root()
    global _refreshed
    with _refresh_lock:
        if _refreshed is not None and time.monotonic() - _refreshed[0] < REFRESH_EVERY:
            return _refreshed[1]
        text = refresh_over_tuf()
        _refreshed = (time.monotonic(), text)
        return text


def refresh_over_tuf(url: str = PUBLIC_GOOD_TUF) -> str:
    """Update the TUF metadata of ``url`` (verified by TUF from the root sigstore ships)
    and return its current trusted root. Online; never called unless asked for."""
    from sigstore._internal.tuf import TrustUpdater

    try:
        path = TrustUpdater(url, offline=False).get_trusted_root_path()
        return Path(path).read_text(encoding="utf-8")
    except Exception as exc:  # TUF and network errors come in many types
        raise Transient(
            f"could not refresh the Sigstore trusted root over TUF from {url}: "
            f"{exc.__class__.__name__}: {exc}",
            f"retry when {url} is reachable, or unset {REFRESH_ENV} to use the trusted root "
            "shipped with sigstore-python (offline)",
        ) from None


# --------------------------------------------------------------------------- verification


@lru_cache(maxsize=16)
def _verifier(root_json: str) -> Any:
    from sigstore.errors import Error
    from sigstore.models import TrustedRoot
    from sigstore.verify import Verifier

    # TrustedRoot's public constructor reads a file.
    with tempfile.TemporaryDirectory(prefix="reconciler-root-") as tmp:
        path = Path(tmp) / "trusted_root.json"
        path.write_text(root_json, encoding="utf-8")
        try:
            return Verifier(trusted_root=TrustedRoot.from_file(str(path)))
        except (Error, ValueError) as exc:
            raise SigstoreRefused(f"unusable trusted root: {exc}") from None


def verify_keyless_bundle(
    bundle_json: bytes, root_json: str, policy: Any, digest: str
) -> KeylessResult:
    """Verify a certificate bundle: chain, SCT, inclusion proof, checkpoint, signed
    time (sigstore-python), the ``policy`` (any object with ``verify(cert)``), and the
    signature over the DSSE envelope or over ``digest`` (a message signature).

    Raises:
        SigstoreRefused: any of it failed.
    """
    from sigstore.errors import Error
    from sigstore.hashes import Hashed
    from sigstore.models import Bundle
    from sigstore_models.common.v1 import HashAlgorithm

    verifier = _verifier(root_json)
    try:
        doc = json.loads(bundle_json)
        bundle = Bundle.from_json(bundle_json)
    except (Error, ValueError) as exc:
        raise SigstoreRefused(f"unusable bundle: {exc}") from None
    try:
        if "dsseEnvelope" in doc:
            payload_type, payload = verifier.verify_dsse(bundle, policy)
            result = KeylessResult(payload_type, payload, _log_index(doc))
        else:
            hashed = Hashed(
                algorithm=HashAlgorithm.SHA2_256,
                digest=bytes.fromhex(digest.removeprefix("sha256:")),
            )
            verifier.verify_artifact(hashed, bundle, policy)
            result = KeylessResult(None, None, _log_index(doc))
    except Error as exc:
        raise SigstoreRefused(str(exc)) from None
    return result


def _log_index(doc: dict[str, Any]) -> int | None:
    entries = (doc.get("verificationMaterial") or {}).get("tlogEntries") or []
    try:
        return int(entries[0]["logIndex"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None
