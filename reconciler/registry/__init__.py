"""Registries: the OCI distribution API and OCI image layouts, behind one Protocol.

``open_registry("host:port", settings)`` or ``open_registry("oci:/root")`` gives a
:class:`Registry`; :class:`Registries` caches one per host so the per-host
concurrency and rate limits hold across a whole reconcile pass. Manifests are
bytes end to end (:class:`Manifest`); digests are ``sha256:<hex>`` and verified
on every read. Every error is a :class:`RegistryError` that is also either
``Stalled`` or ``Transient``. Nothing here runs through oras-py; why is written
down in :mod:`reconciler.registry.http`.
"""

from __future__ import annotations

import threading

from reconciler.registry.auth import Credential, DockerCredentials, set_auth_file
from reconciler.registry.base import Registry
from reconciler.registry.config import (
    DEFAULT_CONCURRENCY,
    DOCKER_HUB,
    HostConfig,
    RegistrySettings,
    RetryPolicy,
    api_host,
    canonical_host,
)
from reconciler.registry.copy import CopyResult, copy_artifact
from reconciler.registry.errors import (
    AuthenticationFailed,
    DigestMismatch,
    HostDown,
    InvalidManifest,
    InvalidReference,
    NotFound,
    RegistryError,
    RegistryRefused,
    RegistryUnavailable,
    ResponseTooLarge,
    TLSFailure,
    Unsupported,
)
from reconciler.registry.http import HttpRegistry
from reconciler.registry.layout import LayoutRegistry
from reconciler.registry.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    EMPTY_JSON,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    referrers_tag,
    sha256_digest,
)
from reconciler.registry.pacing import RequestStats
from reconciler.registry.reference import (
    LAYOUT_PREFIX,
    Reference,
    canonical_repository,
    parse_reference,
)

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DOCKER_HUB",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "EMPTY_JSON",
    "OCI_EMPTY",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "AuthenticationFailed",
    "CopyResult",
    "Credential",
    "Descriptor",
    "DigestMismatch",
    "DockerCredentials",
    "HostConfig",
    "HostDown",
    "HttpRegistry",
    "InvalidManifest",
    "InvalidReference",
    "LayoutRegistry",
    "Manifest",
    "NotFound",
    "Reference",
    "Registries",
    "Registry",
    "RegistryError",
    "RegistryRefused",
    "RegistrySettings",
    "RegistryUnavailable",
    "RequestStats",
    "ResponseTooLarge",
    "RetryPolicy",
    "TLSFailure",
    "Unsupported",
    "api_host",
    "canonical_repository",
    "copy_artifact",
    "open_registry",
    "parse_reference",
    "referrers_tag",
    "set_auth_file",
    "sha256_digest",
]


def open_registry(
    location: str | Reference,
    settings: RegistrySettings | None = None,
    *,
    credentials: DockerCredentials | None = None,
    stats: RequestStats | None = None,
) -> Registry:
    """A registry for ``host[:port]``, a full reference, ``oci:`` or ``oci:/root``.

    A string ``oci:/root`` opens a layout store whose relative repositories live
    under ``root``; a parsed layout :class:`Reference` (``oci:/dir:tag``) opens a
    store for absolute directories, with ``reference.repository`` as the repo.
    """
    settings = settings or RegistrySettings()
    host = _store_of(location)
    if host.startswith(LAYOUT_PREFIX):
        return LayoutRegistry(host[len(LAYOUT_PREFIX) :] or None, stats=stats)
    return HttpRegistry(
        host,
        settings.for_host(host),
        credentials or _credentials(settings),
        stats,
        certs_dirs=settings.certs_dirs,
    )


class Registries:
    """One registry client per host, sharing credentials and a request counter."""

    def __init__(self, settings: RegistrySettings | None = None) -> None:
        self.settings = settings or RegistrySettings()
        self.stats = RequestStats()
        self._credentials = _credentials(self.settings)
        self._open: dict[str, Registry] = {}
        self._lock = threading.Lock()
        self._opening: dict[str, threading.Lock] = {}

    def get(self, location: str | Reference) -> Registry:
        """The client of ``location``'s host. Each host's client is made once, under that
        host's own lock: environment threads asking for a host that is ready, or for
        another host, do not queue behind it."""
        key = _store_of(location)
        found = self._open.get(key)
        if found is not None:
            return found
        with self._lock:
            opening = self._opening.setdefault(key, threading.Lock())
        with opening:
            found = self._open.get(key)
            if found is None:
                found = open_registry(
                    location, self.settings, credentials=self._credentials, stats=self.stats
                )
                with self._lock:
                    self._open[key] = found
            return found

    def close(self) -> None:
        """Close every client opened so far; a later :meth:`get` opens anew."""
        with self._lock:
            for registry in self._open.values():
                registry.close()
            self._open.clear()


def _credentials(settings: RegistrySettings) -> DockerCredentials:
    return DockerCredentials(settings.docker_config, auth_file=settings.auth_file)


def _store_of(location: str | Reference) -> str:
    """``host[:port]``, ``oci:`` (absolute layout dirs) or ``oci:/root``."""
    if isinstance(location, Reference):
        return location.registry
    if location.startswith(LAYOUT_PREFIX):
        return location
    return parse_reference(location).registry if "/" in location else canonical_host(location)
