"""The one sigstore-python adapter: pinned to what it relies on, so an upgrade fails here,
loudly, before it changes what the reconciler trusts. The TUF refresh never runs: the
updater is replaced by fakes, and the network is blocked."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import sigstore.models
import sigstore.verify
from sigstore._internal import tuf

from reconciler.errors import Transient
from reconciler.verify import sigstore_adapter as adapter
from reconciler.verify.sigstore_root import TrustRoot

UPGRADE = (
    "sigstore-python {version} is not the tested 4.5.x: re-check "
    "reconciler/verify/sigstore_adapter.py (the shipped root under sigstore/_store, "
    "sigstore._internal.tuf.TrustUpdater, Verifier.verify_dsse/verify_artifact, "
    "Bundle.from_json, TrustedRoot.from_file) and then widen TESTED_VERSIONS"
)


@pytest.fixture(autouse=True)
def no_network(offline: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, and no refreshed root left over from another test."""
    monkeypatch.setattr(adapter, "_refreshed", None)


def test_sigstore_is_the_tested_version() -> None:
    version = adapter.sigstore_version()
    assert version.startswith(adapter.TESTED_VERSIONS), UPGRADE.format(version=version)


def test_the_shipped_public_good_root_is_where_the_adapter_reads_it() -> None:
    text = adapter.shipped_trusted_root()
    root = TrustRoot.from_json(text)
    assert root.tlogs and root.ctlogs and root.authorities
    assert any("rekor.sigstore.dev" in log.url for log in root.tlogs)
    # sigstore's own offline trust config reads the same file.
    store = Path(sigstore.__file__).parent / "_store" / "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev"
    assert (store / "trusted_root.json").read_text() == text


def test_the_public_api_the_adapter_calls_is_there() -> None:
    assert "trusted_root" in inspect.signature(sigstore.verify.Verifier).parameters
    for method in ("verify_dsse", "verify_artifact"):
        assert callable(getattr(sigstore.verify.Verifier, method)), method
    assert callable(sigstore.models.Bundle.from_json)
    assert callable(sigstore.models.TrustedRoot.from_file)
    params = inspect.signature(tuf.TrustUpdater).parameters
    assert list(params)[:2] == ["url", "offline"], UPGRADE.format(version=sigstore.__version__)
    assert callable(tuf.TrustUpdater.get_trusted_root_path)


def test_default_root_is_offline_unless_a_refresh_is_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Forbidden:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise AssertionError("TUF must not be touched without RECONCILER_SIGSTORE_REFRESH")

    monkeypatch.setattr(tuf, "TrustUpdater", Forbidden)
    monkeypatch.delenv(adapter.REFRESH_ENV, raising=False)
    assert adapter.default_trusted_root() == adapter.shipped_trusted_root()


def test_refresh_uses_tuf_and_is_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    refreshed = tmp_path / "trusted_root.json"
    doc = json.loads(adapter.shipped_trusted_root())
    doc["tlogs"] = doc["tlogs"][:1]  # recognisably not the shipped file
    refreshed.write_text(json.dumps(doc))
    calls: list[tuple[str, bool]] = []

    class FakeUpdater:
        def __init__(self, url: str, offline: bool = False) -> None:
            calls.append((url, offline))

        def get_trusted_root_path(self) -> str:
            return str(refreshed)

    monkeypatch.setattr(tuf, "TrustUpdater", FakeUpdater)
    monkeypatch.setenv(adapter.REFRESH_ENV, "1")
    assert adapter.default_trusted_root() == refreshed.read_text()
    assert adapter.default_trusted_root() == refreshed.read_text()
    assert calls == [(adapter.PUBLIC_GOOD_TUF, False)]  # once per process and hour


def test_a_failed_refresh_is_transient_and_names_the_way_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Offline:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise OSError("network unreachable")

    monkeypatch.setattr(tuf, "TrustUpdater", Offline)
    monkeypatch.setenv(adapter.REFRESH_ENV, "1")
    with pytest.raises(Transient) as exc:
        adapter.default_trusted_root()
    assert "could not refresh the Sigstore trusted root over TUF" in exc.value.message
    assert adapter.REFRESH_ENV in exc.value.hint


def test_an_unusable_root_is_refused() -> None:
    with pytest.raises(adapter.SigstoreRefused, match="unusable trusted root"):
        adapter.verify_keyless_bundle(b"{}", '{"mediaType": "nope"}', None, "sha256:" + "0" * 64)


def test_the_adapter_reaches_into_no_private_bundle_attribute() -> None:
    """The reconciler reads DSSE-ness and log index from the bundle JSON, not from
    ``bundle._dsse_envelope`` or ``log_entry._inner``."""
    package = Path(adapter.__file__).parent
    for module in package.glob("*.py"):
        text = module.read_text()
        assert "_dsse_envelope" not in text, module
        assert "_inner" not in text, module
