"""Registry errors, classified where the cause is known.

Each class is both a :class:`RegistryError` (so callers can catch "anything the
registry layer raised") and either :class:`~reconciler.errors.Stalled` (a person
must act) or :class:`~reconciler.errors.Transient` (retry later), so the reconcile
loop dispatches on the type alone. Messages are built from redacted URLs only.
"""

from __future__ import annotations

from reconciler.errors import ReconcilerError, Stalled, Transient


class RegistryError(ReconcilerError):
    """Base of every error raised by :mod:`reconciler.registry`."""


class RegistryUnavailable(RegistryError, Transient):
    """Connection refused or reset, a timeout, 429 or 5xx after the retries ran out."""


class HostDown(RegistryUnavailable):
    """The host's breaker is open: every request to it failed for a while, so what is
    pending fails at once with this one error instead of retrying on a dead host."""


class RegistryRefused(RegistryError, Stalled):
    """The registry answered with a permanent refusal (a 4xx other than auth)."""


class AuthenticationFailed(RegistryRefused):
    """401/403 after presenting every credential we have."""


class TLSFailure(RegistryRefused):
    """The server certificate did not verify; a CA file is usually missing."""


class NotFound(RegistryRefused):
    """A manifest or blob that must exist does not."""


class DigestMismatch(RegistryRefused):
    """Content does not hash to the digest it was fetched or stored by."""


class InvalidReference(RegistryRefused):
    """A reference, digest or repository name that cannot be parsed."""


class InvalidManifest(RegistryRefused):
    """Manifest bytes that are not a JSON object we can follow."""


class Unsupported(RegistryRefused):
    """The registry lacks an API the operation needs (e.g. tag delete)."""


class ResponseTooLarge(RegistryRefused):
    """The registry sent more than the size cap for what was asked."""
