"""The ``Registry`` protocol both stores implement (HTTP distribution API, OCI layout)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Protocol

from reconciler.registry.oci import Descriptor, Manifest
from reconciler.registry.pacing import RequestStats


class Registry(Protocol):
    """Where artifacts live. Every method raises only :class:`RegistryError` subclasses.

    ``repo`` is a repository name (HTTP) or a layout directory (OCI layout);
    ``ref`` is a tag or a ``sha256:`` digest. Manifests are bytes, verified
    against their digest on every read.
    """

    @property
    def name(self) -> str:
        """``host[:port]`` or ``oci:[root]``; equal names share blobs (mount)."""
        ...

    @property
    def stats(self) -> RequestStats:
        """Requests made, by host, method and status (one counter for a Registries' clients)."""
        ...

    @property
    def has_referrers_api(self) -> bool | None:
        """True/False once known; None before the first referrers call."""
        ...

    def resolve(self, repo: str, tag: str) -> str | None:
        """The digest the tag points at; None when the tag or repository is absent."""
        ...

    def manifest_exists(self, repo: str, digest: str) -> bool:
        """Whether ``repo`` holds the manifest ``digest``, without reading it (a copy skips it)."""
        ...

    def get_manifest(self, repo: str, ref: str) -> Manifest:
        """Exact bytes and media type; raises NotFound or DigestMismatch."""
        ...

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str | None = None) -> str:
        """Store the exact bytes at a tag or digest; returns the digest."""
        ...

    def delete_tag(self, repo: str, tag: str, expected: str | None = None) -> None:
        """Remove one tag only, never a manifest another tag names.

        Nothing happens when the tag is absent or, with ``expected``, points
        elsewhere. Raises Unsupported where the registry deletes nothing at all.
        """
        ...

    def list_tags(self, repo: str) -> list[str]:
        """Every tag of ``repo`` (empty when the repository is absent): one request tells the
        pass which tags exist, so absent tags cost none."""
        ...

    def blob_exists(self, repo: str, digest: str) -> bool:
        """Whether ``repo`` holds the blob ``digest`` (a copy uploads only missing blobs)."""
        ...

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Make a blob of ``from_repo`` (same registry) available in ``repo``."""
        ...

    def open_blob(self, repo: str, digest: str) -> AbstractContextManager[Iterator[bytes]]:
        """A blob as a stream of chunks, for copying large layers unread; the digest is checked
        where it is stored (``put_blob``)."""
        ...

    def read_blob(self, repo: str, digest: str, max_bytes: int) -> bytes:
        """A small blob (a record, a signature payload), capped and digest-checked once.

        Raises ResponseTooLarge past ``max_bytes``, DigestMismatch, NotFound.
        """
        ...

    def put_blob(self, repo: str, digest: str, size: int, chunks: Iterable[bytes]) -> None:
        """Store a blob from a stream; raises DigestMismatch if it does not hash."""
        ...

    def referrers(self, repo: str, digest: str) -> list[Descriptor]:
        """Manifests whose ``subject`` is ``digest`` (API, else the tag schema)."""
        ...

    def close(self) -> None:
        """Release connections; the client is not used afterwards."""
        ...
