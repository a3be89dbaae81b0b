"""Forges: where merge requests are opened, checked and reported on (Gitea, GitHub, GitLab).

``open_forge(policy.forge)`` gives the :class:`Forge` of ``settings.forge`` in force, with
the token from the reconciler's environment. I/O at the edge, like the registry layer: the
clients know nothing of plans or gates; :mod:`reconciler.proposals.mergerequests` and the
daemon decide what to say.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.forge.base import (
    APPLY,
    LABEL,
    VERIFY,
    CommitState,
    Forge,
    ForgeError,
    ForgeRefused,
    ForgeUnavailable,
    MergeRequest,
    Status,
    clip,
    token_from,
)
from reconciler.model import ForgeSettings

__all__ = [
    "APPLY",
    "LABEL",
    "VERIFY",
    "CommitState",
    "Forge",
    "ForgeError",
    "ForgeRefused",
    "ForgeUnavailable",
    "MergeRequest",
    "Status",
    "clip",
    "open_forge",
]


def open_forge(settings: ForgeSettings | None, environ: Mapping[str, str] | None = None) -> Forge:
    """The client of ``settings`` (``settings.forge`` of the policy in force).

    Raises:
        ForgeRefused: no forge configured, an unknown type, or its token is not set.
    """
    if settings is None:
        raise ForgeRefused(
            "no forge is configured: settings.forge is not set in the policy in force",
            'add settings: forge: {type: "gitea", url: …, repository: "owner/name", '
            'tokenEnv: "RECONCILER_FORGE_TOKEN"} in a signed commit on main',
        )
    token = token_from(settings, environ)
    if settings.type == "gitea":
        from reconciler.forge.gitea import Gitea

        return Gitea(settings.url, settings.repository, token)
    if settings.type == "github":
        from reconciler.forge.github import GitHub

        return GitHub(settings.url, settings.repository, token)
    if settings.type == "gitlab":
        from reconciler.forge.gitlab import GitLab

        return GitLab(settings.url, settings.repository, token)
    raise ForgeRefused(f"settings.forge.type {settings.type!r} is not gitea, github or gitlab")
