"""The policy in force, one per state repository, and how a new commit comes to be in force.

The policy in force is the settings, commit signers and record keys of the last commit
whose trail was judged (whether or not any tag moved), starting from the deployment's
:class:`~reconciler.verify.root.TrustRoot`. It is the only source of settings used for
I/O: registry hosts, TLS, credentials, notification receivers, record keys. A commit's
own settings are *proposed*; they are used once :func:`judge` has put that commit in
force, never before (like TUF's trusted set, which hands out only verified metadata).

Judging a commit H from the commit B in force walks H's first-parent history from B, one
step per mainline commit Q, each judged by the policy of the step before it, so a signed
rotation of signers takes effect (and a removed signer stops counting) exactly where it
lands. A step's trail is every commit reachable from Q and not from the commit in force
(a merge brings its side branch in). With signers in force, each commit of the trail is:

(a) signed by an allowed signer (SSH, ``ssh-keygen -Y verify``, namespace ``git``); or
(b) a merge of two parents whose tree is their clean three-way merge (it adds nothing);
(c) a commit that changes only ``settings.git.unsignedPaths`` of the policy in force; or
(d) undone by content by a later signed commit of the trail that descends from it.

Anything else refuses the step (rule ``commit-signature``) and every step after it until
one whose trail passes as a whole (d). A step whose state does not load, or reads a file
the policy in force lets change unsigned, does not come into force either. The policy in
force advances to the newest step that passed; the commit judged is in force only when
every step to it passed.

First contact (no commit in force yet): with a trust root naming signers, the newest
mainline commit signed by one of them is the start (its signer vouches for its tree),
and the commits after it are judged from there like any trail; without signers pinned
(an empty trust root, or trust on first use) the newest commit's own rule holds, and
first use is said loudly.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from reconciler.errors import GitSourceError, ReconcilerError
from reconciler.git.history import MAX_HISTORY, Entry, History
from reconciler.model import DesiredState, ForgeSettings, PublicKey, Settings, matches_paths
from reconciler.verify.commits import verify_commit
from reconciler.verify.errors import Refused, Rule
from reconciler.verify.root import TrustRoot

log = logging.getLogger(__name__)

SIGNATURES_KEPT = 4096  # (commit, signers) verdicts kept: a refused head is not re-verified
FIRST_CONTACT_DEPTH = 200  # mainline commits searched for one the trust root's signers signed
_UNDO_HINT = (
    "undo it with a signed commit that restores those files (reconciler rollback, "
    "git revert -S), or have an allowed signer re-sign it"
)


@dataclass(frozen=True)
class PolicyInForce:
    """What one state repository's judged history says to trust now.

    ``state`` is the desired state of ``commit``, the last judged commit (None before
    first contact); its settings are the ones in force. Signers and record keys set
    there replace the trust root's (a rotation vouched for by the commit's judges);
    unset, the trust root's hold.
    """

    root: TrustRoot
    commit: str | None = None
    state: DesiredState | None = None
    prefix: str = ""  # --path: the state's directory in the repository

    @property
    def trusted(self) -> DesiredState:
        """The judged commit's desired state: what may be read for I/O and decisions.

        Raises:
            Refused: nothing of the repository has been judged (first contact refused).
        """
        if self.state is None:
            raise Refused(
                Rule.COMMITS,
                "nothing of the state repository is in force yet",
                "sign the newest commit with a key of the trust root (docs/trust.md)",
            )
        return self.state

    @property
    def settings(self) -> Settings:
        """The settings in force (defaults before first contact)."""
        return self.state.proposed_settings if self.state is not None else Settings()

    @property
    def signers(self) -> bytes | None:
        """The allowed-signers text in force; None: commits need no signature."""
        if self.settings.allowed_signers and self.settings.allowed_signers_data is not None:
            return self.settings.allowed_signers_data
        return self.root.allowed_signers

    @property
    def signers_source(self) -> str:
        """Where the signers in force come from, for messages."""
        path = self.settings.allowed_signers
        if path and self.commit:
            full = f"{self.prefix.strip('/')}/{path}" if self.prefix.strip("/") else path
            return f"{full} as of commit {self.commit[:12]}"
        return f"the trust root ({self.root.origin})"

    @property
    def record_keys(self) -> tuple[PublicKey, ...]:
        """Whose apply records count."""
        return self.settings.record_keys or self.root.record_keys

    @property
    def forge(self) -> ForgeSettings | None:
        """``settings.forge`` in force: the only place the forge, and so where its token
        goes, is named (a branch or an unjudged commit cannot redirect it)."""
        return self.settings.forge

    @property
    def unsigned_paths(self) -> tuple[str, ...]:
        """Path globs a commit may change unsigned (``settings.git.unsignedPaths`` in force)."""
        return self.settings.unsigned_paths


@dataclass(frozen=True)
class Judgement:
    """The verdict on one commit: the policy in force after judging, and the refusal
    that keeps the commit out of force (None: it is in force)."""

    candidate: str
    policy: PolicyInForce
    judged: tuple[tuple[str, str], ...] = ()  # (commit, how it passed) up to policy.commit
    refusal: Refused | None = None
    first_contact: str | None = None  # how this host started trusting, when it did now

    @property
    def passed(self) -> bool:
        """The candidate itself is in force (not only some commit before it)."""
        return self.refusal is None and self.policy.commit == self.candidate


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class CommitFacts:
    """One commit of a trail as (a)-(d) need it."""

    id: str
    label: str
    parents: tuple[str, ...]
    changed: Mapping[str, Entry | None]  # path -> its entry in the first parent
    clean_merge: bool
    signer: str | None = None
    problem: str = ""
    hint: str = ""
    # A signed commit's entries at the paths unsigned commits of its trail changed.
    entries: Mapping[str, Entry | None] = field(default_factory=dict)


class Judge:
    """Judges commits of one repository against the policy in force.

    ``load(commit)`` gives a commit's desired state (raising ReconcilerError when it does
    not load); signature checks are cached per (commit, signers) for the life of the
    judge, since neither can change.
    """

    def __init__(
        self,
        history: History,
        root: TrustRoot,
        load: Callable[[str], DesiredState],
        prefix: str = "",
    ) -> None:
        self.history, self.root, self.load, self.prefix = history, root, load, prefix
        self._signed: dict[tuple[str, str], tuple[str | None, str, str]] = {}

    def policy(self, commit: str | None) -> PolicyInForce:
        """The policy of a commit already judged (from the local anchor).

        Raises:
            Refused: its state can no longer be read.
        """
        if commit is None:
            return PolicyInForce(self.root, prefix=self.prefix)
        try:
            return PolicyInForce(self.root, commit, self.load(commit), self.prefix)
        except (GitSourceError, ReconcilerError) as exc:
            raise Refused(
                Rule.COMMITS,
                f"cannot read the policy in force at {commit[:12]}, the last judged commit: "
                f"{exc.message.splitlines()[0]}",
                "restore that commit in the state repository, or start afresh from the trust "
                "root (docs/trust.md, 'Recovery')",
            ) from None

    def judge(self, policy: PolicyInForce, candidate: DesiredState) -> Judgement:
        """The verdict on ``candidate`` from ``policy`` (see the module docstring)."""
        if policy.commit is None:
            return self._first_contact(policy, candidate)
        if policy.commit == candidate.commit:
            return Judgement(candidate.commit, policy)
        if not self.history.descends(candidate.commit, policy.commit):
            return Judgement(
                candidate.commit,
                policy,
                refusal=Refused(
                    Rule.HISTORY,
                    f"commit {candidate.commit[:12]} does not descend from {policy.commit[:12]}, "
                    "the last commit of this repository that was judged",
                    "roll back with a new commit (git revert), not by moving the branch back",
                ),
            )
        judged: list[tuple[str, str]] = []
        refusal: Refused | None = None
        for step in self._steps(policy.commit, candidate.commit):
            try:
                how = self._trail(policy, step)
                state = candidate if step == candidate.commit else self.load(step)
                self._unsigned_inputs(policy, state)
            except Refused as exc:
                refusal = exc
                continue
            except (GitSourceError, ReconcilerError) as exc:
                refusal = Refused(
                    Rule.COMMITS,
                    f"commit {step[:12]} cannot be put in force: its state does not load "
                    f"({exc.message.splitlines()[0]})",
                    "fix the state in a new signed commit",
                )
                continue
            policy = PolicyInForce(self.root, step, state, self.prefix)
            judged += how
            refusal = None
        return Judgement(candidate.commit, policy, tuple(judged), refusal)

    # ------------------------------------------------------------------ steps

    def _steps(self, base: str, tip: str) -> list[str]:
        """The mainline commits after ``base`` up to ``tip``, oldest first; ``[tip]`` when
        ``base`` is not on ``tip``'s first-parent line (a merge fast-forwarded main)."""
        line: list[str] = []
        for commit in self.history.mainline(tip, MAX_HISTORY):
            if commit.id == base:
                return list(reversed(line))
            line.append(commit.id)
        return [tip]

    def _trail(self, policy: PolicyInForce, step: str) -> list[tuple[str, str]]:
        assert policy.commit is not None
        return self.trail(
            policy.commit, step, policy.signers, policy.unsigned_paths, policy.signers_source
        )

    def trail(
        self,
        base: str,
        tip: str,
        signers: bytes | None,
        unsigned: Sequence[str] = (),
        source: str = "the allowed signers in force",
    ) -> list[tuple[str, str]]:
        """(commit, how it passed) for every commit in ``base..tip`` judged by ``signers``
        (None: no rule) and ``unsigned`` paths (rules (a)-(d) of the module docstring).

        Raises:
            Refused: (commit-signature) a commit passes none of the rules, or the history
                cannot be read.
        """
        try:
            ids = self.history.between(base, tip)
            if signers is None:
                return [(c, "no signed-commit rule in force") for c in ids]
            facts = [self._facts(c, signers, unsigned) for c in ids]
            undo = sorted({p for f in facts if f.problem for p in f.changed})
            if undo:
                facts = [
                    replace(f, entries={p: self.history.entry(f.id, p) for p in undo})
                    if f.signer
                    else f
                    for f in facts
                ]
        except GitSourceError as exc:
            raise Refused(Rule.COMMITS, exc.message, exc.hint) from None
        return judge_trail(facts, source)

    def _facts(self, commit: str, signers: bytes, unsigned: Sequence[str]) -> CommitFacts:
        info = self.history.commit(commit)
        found = self.history.changed_files(commit)
        changed = {p: entries[0] if entries else None for p, entries in found.items()}
        clean = self.history.clean_merge(commit)
        facts = CommitFacts(commit, info.label, info.parents, changed, clean)
        if clean or (changed and all(matches_paths(p, unsigned) for p in changed)):
            return facts
        signer, problem, hint = self._signer(commit, signers)
        return CommitFacts(commit, info.label, info.parents, changed, clean, signer, problem, hint)

    def _signer(self, commit: str, signers: bytes) -> tuple[str | None, str, str]:
        key = (commit, hashlib.sha256(signers).hexdigest())
        if key not in self._signed:
            while len(self._signed) >= SIGNATURES_KEPT:  # a long-running daemon: oldest first
                self._signed.pop(next(iter(self._signed)))
            try:
                self._signed[key] = (verify_commit(self.history, commit, signers), "", "")
            except Refused as exc:
                self._signed[key] = (None, exc.reason, exc.hint)
        return self._signed[key]

    def _unsigned_inputs(self, policy: PolicyInForce, state: DesiredState) -> None:
        read = sorted(p for p in state.inputs if matches_paths(p, policy.unsigned_paths))
        if read:
            raise Refused(
                Rule.COMMITS,
                f"commit {state.commit[:12]} builds its state from {', '.join(read[:3])}, which "
                "settings.git.unsignedPaths in force lets any commit change unsigned",
                "keep state files out of the unsigned paths",
            )

    # ------------------------------------------------------------------ first contact

    def _first_contact(self, policy: PolicyInForce, candidate: DesiredState) -> Judgement:
        """Where a host with nothing judged starts: the newest mainline commit signed by a
        signer of the trust root (its signer vouches for its tree), judged forward from
        there to the candidate like any trail. Without pinned signers (trust on first use,
        or a trust root without them), the candidate's own rule is taken as it is."""
        root = self.root
        how = "trust on first use" if root.first_use else f"trust root {root.origin}"
        pinned = root.allowed_signers
        own = candidate.proposed_settings
        signers = pinned or (own.allowed_signers_data if own.allowed_signers else None)
        if signers is None:
            if root.first_use:
                log.warning(
                    "FIRST CONTACT with the state repository (trust on first use): commit %s "
                    "is taken as it is, with no signed-commit rule to judge it by",
                    candidate.commit[:12],
                )
            start = PolicyInForce(root, candidate.commit, candidate, self.prefix)
            return Judgement(candidate.commit, start, ((candidate.commit, how),), None, how)
        source = f"the trust root ({root.origin})" if pinned else "its own allowed signers"
        base, signer, newest = None, None, None
        for commit in self.history.mainline(candidate.commit, FIRST_CONTACT_DEPTH):
            found = self._signer(commit.id, signers)
            newest = newest or found  # why the newest commit does not vouch, if it does not
            if found[0] is not None:
                base, signer = commit.id, found[0]
                break
        if base is None:
            return Judgement(
                candidate.commit,
                policy,
                refusal=Refused(
                    Rule.COMMITS,
                    f"first contact: no commit of the last {FIRST_CONTACT_DEPTH} on the "
                    f"mainline is signed by {source} ({newest[1] if newest else 'no commits'})",
                    (newest[2] if newest else "")
                    or "sign a commit on main with a key of the trust root",
                ),
            )
        if root.first_use:
            log.warning(
                "FIRST CONTACT with the state repository (trust on first use): commit %s, "
                "signed by %s under its own allowed signers, is trusted as it is",
                base[:12],
                signer,
            )
        try:
            state = candidate if base == candidate.commit else self.load(base)
        except (GitSourceError, ReconcilerError) as exc:
            return Judgement(
                candidate.commit,
                policy,
                refusal=Refused(
                    Rule.COMMITS,
                    f"first contact: commit {base[:12]}, signed by {signer}, does not load "
                    f"({exc.message.splitlines()[0]})",
                    "fix the state in a new commit signed by a signer of the trust root",
                ),
            )
        start = PolicyInForce(root, base, state, self.prefix)
        vouched = ((base, f"signed by {signer} ({how})"),)
        if base == candidate.commit:
            return Judgement(candidate.commit, start, vouched, None, how)
        onward = self.judge(start, candidate)
        return replace(onward, judged=vouched + onward.judged, first_contact=how)


def judge_trail(facts: Sequence[CommitFacts], signers_source: str) -> list[tuple[str, str]]:
    """(commit, how it passed) for each commit of a trail (newest first); Refused at the
    newest commit that is neither signed, a clean merge, limited to unsigned paths, nor
    undone by a later signed commit (by content, whatever the messages say)."""
    ancestors = _ancestors(facts)
    judged: list[tuple[str, str]] = []
    for fact in facts:
        if fact.clean_merge:
            judged.append((fact.id, "clean merge (adds nothing)"))
        elif fact.signer is not None:
            judged.append((fact.id, f"signed by {fact.signer}"))
        elif not fact.problem:
            judged.append((fact.id, "changes only unsigned paths"))
        else:
            undo = next((s for s in facts if _undoes(s, fact, ancestors)), None)
            if undo is None:
                changed = ", ".join(sorted(fact.changed)[:5]) + (
                    ", …" if len(fact.changed) > 5 else ""
                )
                raise Refused(
                    Rule.COMMITS,
                    f"{fact.problem} (it changes {changed or 'nothing'}; the signers in force "
                    f"are {signers_source})",
                    (fact.hint + "; or " if fact.hint else "") + _UNDO_HINT,
                )
            judged.append((fact.id, f"undone by {undo.id[:10]}"))
    return judged


def _ancestors(facts: Sequence[CommitFacts]) -> dict[str, set[str]]:
    """Each commit's ancestors among ``facts`` (newest first, so walk them reversed)."""
    known: dict[str, set[str]] = {}
    for fact in reversed(facts):
        mine: set[str] = set()
        for parent in fact.parents:
            if parent in known:
                mine |= {parent} | known[parent]
        known[fact.id] = mine
    return known


def _undoes(later: CommitFacts, earlier: CommitFacts, ancestors: Mapping[str, set[str]]) -> bool:
    """``later`` is signed, descends from ``earlier``, and holds at every path ``earlier``
    changed what ``earlier``'s first parent held."""
    return (
        later.signer is not None
        and earlier.id in ancestors.get(later.id, set())
        and all(later.entries.get(p, _MISSING) == before for p, before in earlier.changed.items())
    )


_MISSING = Entry("", -1)
