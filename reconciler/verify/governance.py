"""Promotion governance: who may change an environment, four eyes, soak time, freeze.

Each rule is decided from signed commits and signed records alone, so the proof that it
held travels with the audit trail (the receipt in the apply record and the VSA):

(G1) signers: a commit that changes what an environment applies (its tags, its
     declaration, its policy) or its governance is signed by one of the environment's
     ``signers`` (an SSH allowed-signers file), besides the repository's rule.
(G2) four eyes (``approvals: 2``): each such commit is approved by a later commit of
     the same change, signed by *another* of the environment's signers, that adds
     nothing of its own: a merge commit that brings it in, or an empty commit
     (``git commit --allow-empty -S``). By content, never by message.
(G3) soak (``requires: [{environment, soak}]``): signed records of the required
     environment show it ran exactly these digests for that long, without a rollback
     ending the run (:func:`soaked`).
(G4) freeze (``freeze``, ``settings.freeze``): no change inside a window; a rollback
     passes unless the window says ``allowRollback: false``; ``overrideFreeze`` passes
     only a change that had four eyes (:func:`check_freeze`).

Which rules are in force (the attack this guards against: a commit adding its own
signer to ``keys/prod_signers``): an environment's change is the window from its last
applied commit to the commit in force, walked one mainline step at a time. Each step
that changes the environment is judged by the governance of the last step that passed
(starting at the last applied commit), never by its own; a step that does not pass keeps
the old rules in force for every later step, until a step restores the environment as it
was (a revert). So changing ``signers`` or ``approvals`` is itself a change that must
satisfy the rules it replaces.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from reconciler.errors import GitSourceError, ReconcilerError
from reconciler.git.history import MAX_HISTORY, History
from reconciler.model import DesiredState, FreezeWindow, Governance, Record
from reconciler.verify.commits import verify_commit
from reconciler.verify.errors import Refused, Rule, Waiting

VIEWS_KEPT = 4096  # (commit, environment) views kept: a commit's state never changes
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SHORT = 10


@dataclass(frozen=True)
class View:
    """What governance needs of one commit for one environment: a fingerprint of what it
    applies and how it is governed ("" = absent), and its governance as stated there."""

    fingerprint: str
    governance: Governance
    loaded: bool = True  # False: the state does not load; its governance is unknown


def view(state: DesiredState, env: str) -> View:
    """``env`` as ``state`` declares it (governance included, the signers file by hash)."""
    e = state.environments.get(env)
    if e is None:
        return View("", Governance())
    doc: dict[str, Any] = {
        "tags": sorted((t.repository, t.tag, t.digest) for t in state.tags.get(env, ())),
        "declared": [e.catalog, e.release, e.items, e.target_repository, e.tag_template],
        "rules": [e.requires, e.allow_hazards, e.suspend, e.prune, repr(e.verify)],
        "policy": state.policy_fingerprint(env) if env in state.policies else "",
        "governance": e.governance.to_json(),
        "freeze": [repr(w) for w in state.proposed_settings.freeze],
    }
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
    return View(digest, e.governance)


@dataclass(frozen=True)
class Verdict:
    """How an environment's change passed (G1) and (G2): stored in the receipt."""

    environment: str
    base: str | None  # the last applied commit: where the change starts
    governance: Governance = field(default_factory=Governance)  # the rules in force now
    changes: tuple[tuple[str, str], ...] = ()  # (commit, its signer among the env's signers)
    approvals: tuple[tuple[str, str, str], ...] = ()  # (change, approving commit, approver)
    notes: tuple[str, ...] = ()  # which rules applied and why, for people

    @property
    def four_eyes(self) -> bool:
        """Every change of the window was approved by a second of the environment's signers."""
        approved = {c for c, _, _ in self.approvals}
        return bool(self.changes) and all(c in approved for c, _ in self.changes)

    def to_json(self) -> dict[str, Any]:
        """As the receipt stores it (``governance``)."""
        return {
            "base": self.base,
            "signers": self.governance.signers,
            "approvals": self.governance.approvals,
            "changes": [{"commit": c, "signer": s} for c, s in self.changes],
            "approved": [{"commit": c, "by": a, "approver": s} for c, a, s in self.approvals],
            "fourEyes": self.four_eyes,
            "notes": list(self.notes),
        }


class GovernanceJudge:
    """Judges an environment's change under the rules in force (see the module docstring).

    ``load(commit)`` gives a commit's desired state; views and signature verdicts are kept
    for the judge's life (neither can change for a given commit and signers file).
    """

    def __init__(
        self,
        history: History,
        load: Callable[[str], DesiredState],
        verify: Callable[[History, str, bytes], str] = verify_commit,
    ) -> None:
        self.history, self.load, self.verify = history, load, verify
        self._views: dict[tuple[str, str], View] = {}
        self._signed: dict[tuple[str, bytes], tuple[str | None, str]] = {}
        self._lock = threading.Lock()  # environments are judged in threads at once

    def view_at(self, commit: str | None, env: str) -> View:
        """``env`` at ``commit`` (None: before history); a state that does not load is a
        change of its own (fail closed), its governance the default."""
        if commit is None:
            return View("", Governance())
        key = (commit, env)
        found = self._views.get(key)
        if found is None:
            try:
                found = view(self.load(commit), env)
            except (GitSourceError, ReconcilerError):
                found = View(f"unloadable {commit}", Governance(), loaded=False)
            _keep(self._views, key, found, self._lock)
        return found

    def judge(self, env: str, base: str | None, tip: str) -> Verdict:
        """(G1) and (G2) for ``env``'s change from ``base`` (its last applied commit; None:
        never applied, judged from the start of history) to ``tip`` (the commit in force).

        Raises:
            Refused: (environment-signers) a change is not signed by one of the
                environment's signers in force; (four-eyes) a change is not approved by
                another of them.
        """
        current, last = self.view_at(base, env), base
        if not current.loaded:
            raise Refused(
                Rule.SIGNERS,
                f"the state of {_short(base)}, the last commit applied to {env}, no longer "
                "loads: the governance rules in force for its next change are unknown",
                "make that commit's state load again (the cue version it was written for, "
                "the files it reads): its rules govern what may change next",
            )
        changes: list[tuple[str, str]] = []
        approvals: list[tuple[str, str, str]] = []
        refusal: Refused | None = None
        judged_by: dict[str, Governance] = {}  # change -> the rules it was judged by
        try:
            steps = self._steps(base, tip)
            for step in steps:
                seen = self.view_at(step, env)
                if seen.fingerprint == current.fingerprint:  # unchanged, or undone
                    last, refusal = step, None
                    continue
                try:
                    found, approved = self._change(env, current.governance, last, step)
                except Refused as exc:
                    refusal = exc
                    continue
                changes += found
                approvals += approved
                judged_by.update(dict.fromkeys((c for c, _ in found), current.governance))
                # A step that does not load keeps the rules it was judged by.
                current = seen if seen.loaded else View(seen.fingerprint, current.governance)
                last, refusal = step, None
            if refusal is not None:
                raise refusal
            approvals += self._late_approvals(env, base, tip, changes, approvals, judged_by)
        except GitSourceError as exc:
            raise Refused(Rule.SIGNERS, exc.message, exc.hint) from None
        return Verdict(
            env, base, current.governance, tuple(changes), tuple(approvals),
            _notes(env, current.governance, changes, approvals),
        )  # fmt: skip

    def _late_approvals(
        self,
        env: str,
        base: str | None,
        tip: str,
        changes: Sequence[tuple[str, str]],
        approvals: Sequence[tuple[str, str, str]],
        judged_by: dict[str, Governance],
    ) -> list[tuple[str, str, str]]:
        """Approvals that came in a later step than their change (one that passed with
        ``approvals: 1``): what a freeze override's four eyes may rest on."""
        done = {c for c, _, _ in approvals}
        late: list[tuple[str, str, str]] = []
        window: list[str] | None = None
        for commit, signer in changes:
            signers = judged_by[commit].signers_data
            if commit in done or signers is None:
                continue
            window = window if window is not None else self.history.between(base, tip)
            found = self._approval(env, commit, signer, window, signers)
            if found is not None:
                late.append((commit, *found))
        return late

    def _steps(self, base: str | None, tip: str) -> list[str]:
        """Mainline commits after ``base`` up to ``tip``, oldest first (``[tip]`` when
        ``base`` is not on the first-parent line)."""
        line: list[str] = []
        for commit in self.history.mainline(tip, MAX_HISTORY):
            if commit.id == base:
                return list(reversed(line))
            line.append(commit.id)
        return list(reversed(line)) if base is None else [tip]

    def _change(
        self, env: str, rules: Governance, last: str | None, step: str
    ) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
        """The commits of ``last..step`` that change ``env``, each checked under ``rules``."""
        if not rules.governed or rules.signers_data is None:
            return [], []
        ids = self.history.between(last, step)
        authors: list[tuple[str, str]] = []
        for commit in reversed(ids):  # oldest first
            if not self._changes_env(commit, env):
                continue
            signer, problem = self._signer(commit, rules.signers_data)
            if signer is None:
                raise Refused(
                    Rule.SIGNERS,
                    f"{self._label(commit)} changes what {env} applies or how it is governed, "
                    f"but is not signed by one of {env}'s signers ({rules.signers} as in force "
                    f"at {_short(last)}): {problem}",
                    f"have one of {env}'s signers sign the change (git commit -S), or revert "
                    f"it; a change to {rules.signers} itself must be signed by a signer it "
                    "already lists",
                )
            authors.append((commit, signer))
        approved = [
            (commit, *found)
            for commit, signer in authors
            if (found := self._approval(env, commit, signer, ids, rules.signers_data)) is not None
        ]
        if rules.approvals > 1:
            done = {c for c, _, _ in approved}
            for commit, signer in authors:
                if commit not in done:
                    raise self._unapproved(env, rules, commit, signer, ids)
        return authors, approved

    def _changes_env(self, commit: str, env: str) -> bool:
        """The commit's view differs from its parent's; a merge's from *every* parent's
        (it made a combination no parent's author signed, clean or not)."""
        info = self.history.commit(commit)
        mine = self.view_at(commit, env).fingerprint
        parents = info.parents or (None,)
        return all(mine != self.view_at(p, env).fingerprint for p in parents)

    def _approval(
        self, env: str, change: str, author: str, ids: Sequence[str], signers: bytes
    ) -> tuple[str, str] | None:
        """(approving commit, approver): a later commit of ``ids`` that descends from
        ``change``, adds nothing of its own, and is signed by another of the signers."""
        for commit in reversed(ids):
            if commit == change or not self._adds_nothing(commit, env):
                continue
            if not self.history.descends(commit, change):
                continue
            signer, _ = self._signer(commit, signers)
            if signer is not None and signer != author:
                return commit, signer
        return None

    def _adds_nothing(self, commit: str, env: str) -> bool:
        """A merge that makes no combination of its own for ``env``, or an empty commit
        (its tree is its parent's)."""
        info = self.history.commit(commit)
        if len(info.parents) > 1:
            return not self._changes_env(commit, env)
        return bool(info.parents) and self.history.entry(commit, "") == self.history.entry(
            info.parents[0], ""
        )

    def _unapproved(
        self, env: str, rules: Governance, change: str, author: str, ids: Sequence[str]
    ) -> Refused:
        assert rules.signers_data is not None
        selves = [
            c
            for c in ids
            if c != change
            and self._adds_nothing(c, env)
            and self.history.descends(c, change)
            and self._signer(c, rules.signers_data)[0] == author
        ]
        also = (
            f"; {self._label(selves[0])} approves it, but is signed by {author} too: "
            "self-approval does not count"
            if selves
            else ""
        )
        return Refused(
            Rule.APPROVALS,
            f"{env} needs two of its signers (approvals: 2): {self._label(change)} is signed "
            f"by {author}, and no merge or empty approval commit after it is signed by "
            f"another of {env}'s signers ({rules.signers}){also}",
            f"have another of {env}'s signers merge the change with a signed merge commit, "
            "or add an empty signed commit (git commit --allow-empty -S -m 'Approved-by: …')",
        )

    def _signer(self, commit: str, signers: bytes) -> tuple[str | None, str]:
        key = (commit, hashlib.sha256(signers).digest())
        found = self._signed.get(key)
        if found is None:
            try:
                found = (self.verify(self.history, commit, signers), "")
            except Refused as exc:
                found = (None, exc.reason)
            _keep(self._signed, key, found, self._lock)
        return found

    def _label(self, commit: str) -> str:
        try:
            return self.history.commit(commit).label
        except GitSourceError:
            return f"commit {commit[:SHORT]}"


def _keep(cache: dict[Any, Any], key: Any, value: Any, lock: threading.Lock) -> None:
    """Store a verdict that cannot change, dropping the oldest past :data:`VIEWS_KEPT`."""
    with lock:
        while len(cache) >= VIEWS_KEPT:
            cache.pop(next(iter(cache)))
        cache[key] = value


def _short(commit: str | None) -> str:
    return commit[:12] if commit else "the start of history"


def _notes(
    env: str,
    rules: Governance,
    changes: Sequence[tuple[str, str]],
    approvals: Sequence[tuple[str, str, str]],
) -> tuple[str, ...]:
    if not rules.governed and not changes:
        return ()
    notes = [
        f"{c[:SHORT]} signed by {s}, one of {env}'s signers ({rules.signers})" for c, s in changes
    ]
    notes += [f"{c[:SHORT]} approved by {s} in {a[:SHORT]}" for c, a, s in approvals]
    return tuple(notes)


def explain(env: str, rules: Governance, every: Sequence[FreezeWindow] = ()) -> list[str]:
    """The governance rules of ``env`` for people (``promote`` shows them on its proposal)."""
    said = []
    if rules.signers:
        lines = (rules.signers_data or b"").decode("utf-8", "replace").splitlines()
        who = [ln.split()[0] for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        said.append(f"signers: a change to {env} is signed by one of {rules.signers} "
                    f"({', '.join(who) or 'nobody'})")  # fmt: skip
    if rules.approvals > 1:
        said.append(
            f"four eyes: another of {env}'s signers merges it with a signed merge commit, or "
            "approves it with an empty signed commit (git commit --allow-empty -S)"
        )
    for required, seconds in sorted(rules.soak.items()):
        said.append(f"soak: {required} runs the same digests for {_duration(seconds)} first")
    for w in (*rules.freeze, *every):
        when = f"{','.join(w.days)} {w.start}-{w.until} {w.time_zone}" if w.days else (
            f"{w.start} to {w.until}")  # fmt: skip
        rollback = "" if w.allow_rollback else ", rollbacks too"
        said.append(f"freeze: {when} ({w.reason}{rollback})")
    return said


# --------------------------------------------------------------------------- soak (G3)


def soaked(
    required: str,
    records: Iterable[Record],
    catalog: str,
    wanted: set[str],
    soak: int,
    now: datetime,
) -> str:
    """The digest of the record that starts a run of ``required`` on exactly ``wanted``
    lasting ``soak`` seconds: consecutive signed records that all show the digests, ended
    by now (still running) or by a promotion, never by a rollback.

    Raises:
        Waiting: (soak) no run is long enough yet; ``until`` when the current one will be.
    """
    runs: list[tuple[Record, datetime, Record | None]] = []  # (oldest, end, ended by)
    oldest: Record | None = None
    end: datetime = now
    ender: Record | None = None
    for record in records:  # newest first
        if record.catalog == catalog and wanted <= set(record.tags.values()):
            oldest = record
            continue
        if oldest is not None:
            runs.append((oldest, end, ender))
            oldest = None
        end, ender = _when(record) or now, record
    if oldest is not None:
        runs.append((oldest, end, ender))
    ongoing: datetime | None = None
    for first, ends, by in runs:
        start = _when(first)
        if start is None or (by is not None and "rolled back" in by.note):
            continue
        if ends - start >= timedelta(seconds=soak):
            return first.digest
        if by is None:
            ongoing = start + timedelta(seconds=soak)
    wait = _duration(soak)
    if ongoing is not None:
        raise Waiting(
            Rule.SOAK,
            f"{required} has run these digests since {_at(ongoing - timedelta(seconds=soak))}, "
            f"less than the soak time of {wait}: satisfied at {_at(ongoing)}",
            "wait; the reconciler checks again then",
            until=ongoing,
        )
    raise Waiting(
        Rule.SOAK,
        f"{required} never ran these digests for {wait} without a rollback (signed records)",
        f"apply them to {required} and let them run for {wait}",
    )


def _at(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ") if when.utcoffset() == timedelta(0) else str(when)


def _when(record: Record) -> datetime | None:
    try:
        when = datetime.fromisoformat(record.time)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def _duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if rest else f"{hours}h"


# --------------------------------------------------------------------------- freeze (G4)


def active_until(window: FreezeWindow, now: datetime) -> datetime | None:
    """When ``window`` ends, if it is open at ``now``; else None."""
    if not window.days:
        start, until = datetime.fromisoformat(window.start), datetime.fromisoformat(window.until)
        return until if start <= now < until else None
    zone = ZoneInfo(window.time_zone)
    local = now.astimezone(zone)
    starts, ends = time.fromisoformat(window.start), time.fromisoformat(window.until)
    for back in (0, 1):  # a window that opened yesterday may run past midnight
        day = local.date() - timedelta(days=back)
        if DAYS[day.weekday()] not in window.days:
            continue
        opened = datetime.combine(day, starts, zone)
        closes = datetime.combine(day, ends, zone)
        if closes <= opened:
            closes += timedelta(days=1)
        if opened <= now < closes:
            return closes
    return None


def check_freeze(
    env: str,
    windows: Sequence[FreezeWindow],
    now: datetime,
    rollback: bool,
    verdict: Verdict,
) -> str:
    """(G4): what the freeze windows in force say about this change ("" when none is open).

    Raises:
        Waiting: (freeze) a window is open; ``until`` is when the last open one ends.
    """
    open_ = [(w, end) for w in windows if (end := active_until(w, now)) is not None]
    if not open_:
        return ""
    holding = [(w, end) for w, end in open_ if not (rollback and w.allow_rollback)]
    reasons = "; ".join(w.reason for w, _ in (holding or open_))
    if not holding:
        return f"rollback during a freeze ({reasons}): allowed"
    override = verdict.governance.override_freeze
    if override and verdict.four_eyes:
        approvers = ", ".join(sorted({s for _, _, s in verdict.approvals}))
        return f"freeze ({reasons}) overridden: {override} (four eyes: approved by {approvers})"
    until = max(end for _, end in holding)
    why = (
        f"; overrideFreeze is set but the change was not approved by a second of {env}'s "
        "signers (four eyes)"
        if override
        else ""
    )
    raise Waiting(
        Rule.FREEZE,
        f"{env} is frozen until {_at(until)} ({reasons}){why}",
        "wait for the window to end (the reconciler applies then), roll back instead, or "
        f"set overrideFreeze in {env}'s declaration with a change two of its signers sign "
        "(four eyes)",
        until=until,
    )
