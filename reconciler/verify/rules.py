"""Pure trust rules: hazards, promotion order and git history."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from reconciler.model import DesiredState, Record
from reconciler.verify.errors import Refused


def check_hazards(state: DesiredState, env: str) -> None:
    """A release with hazards is refused unless the environment sets ``allowHazards``."""
    environment = state.environments[env]
    release = state.release_of(env)
    if release.hazardous and not environment.allow_hazards:
        listed = "; ".join(f"{k}: {v}" for k, v in sorted(release.hazards.items()))
        raise Refused(
            "hazards",
            f"release {release.name} of {environment.catalog} has hazards ({listed})",
            f"promote another release, or set allowHazards: true in {environment.file} "
            "to accept them knowingly",
        )


def check_order(
    state: DesiredState,
    env: str,
    applied: Callable[[str, str, str], Record | None],
    current: Mapping[str, Record | None],
) -> None:
    """Every environment in ``requires`` must have an apply record of this release.

    ``applied(env, catalog, release)`` finds such a record anywhere in that environment's
    record chain, so a rollback to a release that went through the chain earlier is not
    blocked by the chain having moved on. ``current`` (newest records) words the refusal.
    """
    environment = state.environments[env]
    for name in environment.requires:
        if applied(name, environment.catalog, environment.release) is not None:
            continue
        record = current.get(name)
        if record is None:
            raise Refused(
                "requires",
                f"{name} has no apply record yet, so {environment.release} cannot reach {env}",
                f"apply {environment.release} to {name} first",
            )
        raise Refused(
            "requires",
            f"{name} runs {record.release}, not {environment.release}, and never ran it "
            f"(its last apply record: commit {record.commit[:12]})",
            f"promote {environment.release} to {name} first",
        )


def check_history(
    env: str, commit: str, last: Record | None, descends: Callable[[str, str], bool]
) -> None:
    """The commit must be the last applied one or descend from it: no force-push back in time.

    ``descends(new, old)`` answers from git; an unknown old commit is a refusal too.
    """
    if last is None or last.commit == commit:
        return
    try:
        ok = descends(commit, last.commit)
    except (KeyError, ValueError):
        ok = False
    if not ok:
        raise Refused(
            "history",
            f"commit {commit[:12]} does not descend from {last.commit[:12]}, "
            f"the last commit applied to {env}",
            "roll back with a new commit (git revert), not by moving the branch back",
        )
