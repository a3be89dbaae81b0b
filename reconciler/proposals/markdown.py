"""Markdown for merge requests: the plan of a pass as a comment or a description.

Used by ``plan --format markdown`` and by the merge requests the reconciler opens and
checks (:mod:`reconciler.proposals.mergerequests`), so both show the same thing.
"""

from __future__ import annotations

from reconciler.engine.reconcile import PassResult
from reconciler.model import Action

SIGN = {Action.CREATE: "+", Action.UPDATE: "~", Action.DELETE: "-"}


def cell(text: object) -> str:
    """``text`` on one line, safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def plan_markdown(result: PassResult) -> str:
    """The plan as a merge-request comment: a summary table, then each environment's
    changes (folded) and every refusal with its hint."""
    state = result.state
    counts: dict[str, int] = {}
    for o in result.outcomes:
        counts[o.status.value] = counts.get(o.status.value, 0) + 1
    mark = {"in-sync": "✅", "pending": "🔄", "applied": "✅", "suspended": "⏸️"}
    lines = [
        "### reconciler plan",
        "",
        f"Commit `{state.commit[:12]}` · tree `{state.tree[:12]}` · "
        + ", ".join(f"{n} {s}" for s, n in counts.items()),
        "",
        "| Environment | Release | Status | Changes | Verified |",
        "|---|---|---|---|---|",
    ]
    for o in result.outcomes:
        env = result.environment(o.environment)
        changes = len(o.plan.changes) if o.plan else 0
        policy = state.policies.get(o.environment)
        verify = (
            "⚠️ UNVERIFIED"
            if result.unverified(o.environment)
            else (policy.describe() if policy else "(not in force)")
        )
        status = f"{mark.get(o.status.value, '❌')} {o.status.value}"
        lines.append(
            f"| {cell(o.environment)} | {cell(env.catalog)} `{cell(env.release)}` | "
            f"{status} | {changes or '-'} | {cell(verify)} |"
        )
    for o in result.outcomes:
        details: list[str] = []
        if o.note:
            details.append(f"_{cell(o.note)}_")
            details.append("")
        if o.plan and o.plan.changes:
            details += ["| Change | Tag | From | To | Drift |", "|---|---|---|---|---|"]
            for c in o.plan.changes:
                tag = f"`{cell(c.repository)}:{cell(c.tag)}`"
                details.append(
                    f"| {SIGN[c.action]} {c.action.value} | {tag} "
                    f"| `{(c.from_digest or '-')[:19]}` | `{(c.to_digest or '(deleted)')[:19]}` "
                    f"| {c.drift.value} |"
                )
        for warning in o.warnings:
            details.append(f"- ⚠️ {cell(warning)}")
        if o.error is not None:
            details.append(f"**{o.status.value}**: {cell(o.error.message)}")
            if o.error.hint:
                details.append(f"> hint: {cell(o.error.hint)}")
        if details:
            summary = f"{o.environment}: {o.status.value}"
            if o.plan and o.plan.changes:
                summary += (
                    f", {len(o.plan.changes)} change{'s' if len(o.plan.changes) != 1 else ''}"
                )
            folded = o.error is None
            lines += [
                "",
                f"<details{'' if folded else ' open'}><summary>{cell(summary)}</summary>",
            ]
            lines += ["", *details, "", "</details>"]
    return "\n".join(lines) + "\n"
