"""Merge-request helpers without a forge: which environments a change touches, waiting for
a forge to know a pushed branch, and the description's verdict and way out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from reconciler.forge import CommitState, ForgeUnavailable
from reconciler.model import ItemRef, Release
from reconciler.proposals import mergerequests
from reconciler.proposals.mergerequests import (
    MARKER,
    Check,
    changed_environments,
    describe,
    wait_for_branch,
)
from reconciler.verify import Refused, Rule
from tests.unit.test_forge_report import CATALOG, D0, state


def test_changed_environments_by_definition_or_by_release_content() -> None:
    before, after = state("a" * 40, "v1.1"), state("b" * 40, "v1.2")
    assert changed_environments(None, after) == ["prod"]
    assert changed_environments(before, after) == ["prod"]
    assert changed_environments(before, before) == []
    # The same release name with other digests (a catalog edit) is a change too.
    edited = replace(
        CATALOG, releases=(Release("v1.1", {"web": ItemRef(D0)}), *CATALOG.releases[1:])
    )
    rewritten = replace(before, catalogs={CATALOG.name: edited})
    assert changed_environments(before, rewritten) == ["prod"]


class Slow:
    kind = "fake"

    def __init__(self, answers: list[str | None]) -> None:
        self.answers = answers

    def branch_head(self, branch: str) -> str | None:
        return self.answers.pop(0) if self.answers else None


def test_waiting_for_the_forge_to_know_a_pushed_branch(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    wait_for_branch(Slow([None, "old", "new"]), "b", "new", slept.append)  # type: ignore[arg-type]
    assert len(slept) == 2
    monkeypatch.setattr(mergerequests, "BRANCH_WAIT", 0.0)
    with pytest.raises(ForgeUnavailable, match="does not show branch b at new"):
        wait_for_branch(Slow([]), "b", "new", slept.append)  # type: ignore[arg-type]


def test_a_description_says_the_verdict_and_the_way_out() -> None:
    refused = Refused(Rule.HAZARDS, "release v1.0 has hazards", "promote another release")
    check = Check("h" * 40, CommitState.FAILURE, "prod: rule hazards: …", ["prod"], error=refused)
    text = describe(check, "prod to v1.0")
    assert text.startswith(MARKER) and "## prod to v1.0" in text
    assert "**failure** on `hhhhhhhhhhhh`" in text and "> way out: promote another release" in text
    assert check.status.context == "reconciler/verify" and len(check.status.description) <= 140
