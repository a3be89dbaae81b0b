"""The reconciler follows the registry settings of the policy in force."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

from reconciler.desired import Loader
from reconciler.engine.reconcile import Reconciler
from reconciler.git import GitSource
from reconciler.model import DesiredState, RegistryEntry, Settings
from tests.support.judged import in_force


def state(plain_http: bool) -> DesiredState:
    hosts = {"reg.example:5000": RegistryEntry(plain_http=plain_http)}
    return DesiredState(
        commit="c" * 40,
        tree="t" * 40,
        proposed_settings=Settings(registries=MappingProxyType(hosts)),
        catalogs=MappingProxyType({}),
        environments=MappingProxyType({}),
        tags=MappingProxyType({}),
        policies=MappingProxyType({}),
    )


def test_registry_clients_are_rebuilt_when_the_settings_change(tmp_path: Path) -> None:
    """A daemon must not keep the registry settings of its first commit forever."""
    reconciler = Reconciler(GitSource(str(tmp_path)), Loader(None))
    first = reconciler.registries(in_force(state(plain_http=True)).policy)
    assert reconciler.registries(in_force(state(plain_http=True)).policy) is first
    second = reconciler.registries(in_force(state(plain_http=False)).policy)
    assert second is not first
    assert not second.settings.for_host("reg.example:5000").plain_http
    assert first.settings.for_host("reg.example:5000").plain_http
    reconciler.close()
