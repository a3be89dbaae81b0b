"""The daemon on the forge: re-check open merge requests, and report what became of a merge.

With ``settings.forge`` in force (and its token in the daemon's environment):

- **check**: each open merge request whose head the daemon has not checked yet (a new
  push) is checked with the gate apply will run (:func:`mergerequests.check`), which sets
  ``reconciler/verify`` on the head; at most every :data:`CHECK_INTERVAL` seconds;
- **report**: when an environment that a merged commit changed is applied, or refused,
  at that commit, the merge request that made the commit gets one comment (release,
  digests, record and verification summaries; or the rule, the reason and the way out)
  and ``reconciler/apply`` on the merge commit. Once per transition: a comment carries a
  marker, and one already there (say, before a restart) is not written again.

The comments and statuses go out from one background thread, so a slow forge never
slows a pass; forge errors are logged, never raised into a pass.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from reconciler.engine.reconcile import EnvOutcome, Reconciler, Status
from reconciler.errors import ReconcilerError
from reconciler.forge import APPLY, CommitState, Forge, ForgeError, MergeRequest, open_forge
from reconciler.forge import Status as CommitStatus
from reconciler.model import DesiredState, ForgeSettings
from reconciler.proposals import mergerequests
from reconciler.proposals.discover import Finding, FindingKind
from reconciler.verify import Refused

log = logging.getLogger(__name__)
K = TypeVar("K")

CHECK_INTERVAL = 5.0  # seconds between looks at the open merge requests
REMEMBERED = 1000  # transitions and checked heads kept (the forge keeps the rest)


@dataclass(frozen=True)
class Report:
    """One thing to say on a merge request: a comment and the merge commit's status."""

    commit: str
    environment: str
    kind: str  # applied | refused
    marker: str
    comment: str
    status: CommitStatus


class ForgeReporter:
    """What the daemon does on ``settings.forge`` (see the module docstring)."""

    def __init__(self, reconciler: Reconciler, clock: Callable[[], float] = time.monotonic) -> None:
        self.reconciler = reconciler
        self.clock = clock
        self.forge: Forge | None = None
        self.settings: ForgeSettings | None = None
        self._told: dict[str, None] = {}  # markers reported (ordered: oldest first)
        self._checked: dict[tuple[int, str], None] = {}
        self._next_check = 0.0
        self._merged: dict[str, MergeRequest | None] = {}
        self._queue: queue.Queue[Report | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._configured = False

    def configure(self, settings: ForgeSettings | None) -> None:
        """``settings.forge`` of the policy in force, each pass; a change takes effect now."""
        if settings == self.settings and self._configured:
            return  # the environment (the token) does not change while the daemon runs
        self._configured = True
        self.settings, self.forge = settings, None
        if settings is None:
            return
        try:
            self.forge = open_forge(settings)
            log.info("merge requests on %s %s", settings.type, settings.repository)
        except ForgeError as exc:
            log.warning("merge requests are not checked or reported: %s", exc)

    # ------------------------------------------------------------------ checking

    def tick(self) -> None:
        """Check the open merge requests whose head is new (a pass's last step)."""
        forge = self.forge
        if forge is None or self.clock() < self._next_check:
            return
        self._next_check = self.clock() + CHECK_INTERVAL
        try:
            found = forge.list_open()
        except ReconcilerError as exc:
            log.warning("listing merge requests: %s", exc.message)
            return
        for mr in found:
            if (mr.number, mr.head_sha) in self._checked or mr.base_branch != self.reconciler.ref:
                continue
            _remember(self._checked, (mr.number, mr.head_sha))  # tried once per head
            try:
                _, check = mergerequests.check(self.reconciler, forge, mr.number)
            except ReconcilerError as exc:
                log.warning("checking merge request %d: %s", mr.number, exc.message)
                continue
            except Exception:  # the loop must go on
                log.exception("checking merge request %d: internal error", mr.number)
                continue
            log.info(
                "merge request %d at %s: %s", mr.number, mr.head_sha[:12], check.state.value,
                extra={"event": "checked"},
            )  # fmt: skip

    # ------------------------------------------------------------------ proposing

    def also(self, listener: Callable[[Finding], object]) -> Callable[[Finding], object]:
        """``listener`` (the notifier's), then :meth:`proposed`: the daemon's discovery and
        ``follow: latest`` proposals get their merge requests."""

        def both(finding: Finding) -> object:
            told = listener(finding)
            self.proposed(finding)
            return told

        return both

    def proposed(self, finding: Finding) -> None:
        """Open the merge request of a pushed proposal (a branch made by the daemon)."""
        forge, p = self.forge, finding.proposal
        if forge is None or p is None or not p.pushed:
            return
        if finding.kind is FindingKind.RELEASE:
            labels = ("release", finding.catalog)
        else:
            labels = ("promote", finding.environment or "")
        try:
            title = p.message.splitlines()[0]
            mr, check, _ = mergerequests.open_merge_request(
                self.reconciler, forge, p.branch, p.commit, title, labels
            )
            _remember(self._checked, (mr.number, p.commit))
            log.info(
                "opened merge request %d for %s: %s", mr.number, p.branch, check.state.value,
                extra={"event": "mr-opened"},
            )  # fmt: skip
        except ReconcilerError as exc:
            log.warning("opening the merge request of %s: %s", p.branch, exc.message)
        except Exception:
            log.exception("opening a merge request: internal error")

    # ------------------------------------------------------------------ reporting

    def outcome(self, candidate: DesiredState, trusted: DesiredState, o: EnvOutcome) -> None:
        """One environment's outcome of a pass towards ``trusted``, ``candidate`` being the
        newest commit: a report when a merged commit's own change was applied or refused."""
        if self.forge is None or o.status not in (Status.APPLIED, Status.REFUSED):
            return
        try:
            report = self._report(candidate, trusted, o)
        except Exception:
            log.exception("merge request report: internal error")
            return
        if report is not None and report.marker not in self._told:
            _remember(self._told, report.marker)
            self._queue.put(report)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="forge", daemon=True)
                self._thread.start()

    def _report(
        self, candidate: DesiredState, trusted: DesiredState, o: EnvOutcome
    ) -> Report | None:
        name = o.environment
        commit = (trusted if o.status is Status.APPLIED else candidate).commit
        state = trusted if commit == trusted.commit else candidate
        if name not in state.environments or name not in self._changed_by(state):
            return None  # drift, or a refusal this commit did not cause
        env = state.environments[name]
        marker = f"<!-- reconciler:{o.status.value} {name} {commit} -->"
        if o.status is Status.APPLIED:
            if o.note == "" and o.applied is not None and not o.applied.moved:
                return None
            lines = [
                marker,
                f"✅ **Applied**: `{name}` now runs {env.catalog} `{env.release}` "
                f"(commit `{commit[:12]}`).",
                "",
                "| Tag | Digest |",
                "|---|---|",
            ]
            for change in o.plan.changes if o.plan else ():
                lines.append(
                    f"| `{change.repository}:{change.tag}` | `{change.from_digest or '-'}` → "
                    f"`{change.to_digest or '(deleted)'}` |"
                )
            if o.record is not None:
                signed = f", signed by key {o.record.signer}" if o.record.signer else ""
                where = f"`{o.record.digest}` in `{o.record.repository}`"
                lines += ["", f"Apply record: {where}{signed}."]
            if o.verified:
                lines += ["", "Verified:"]
                lines += [f"- `{d[:19]}` {how}" for d, how in sorted(o.verified.items())]
            lines += [
                "",
                "Each digest carries a signed verification summary (SLSA VSA v1) as a referrer.",
            ]
            moved = len(o.applied.moved) if o.applied else 0
            status = CommitStatus(
                APPLY, CommitState.SUCCESS, f"{name}: applied {env.release} ({moved} tags moved)"
            )
            return Report(commit, name, "applied", marker, "\n".join(lines) + "\n", status)
        error = o.error or ReconcilerError("refused")
        rule = error.rule if isinstance(error, Refused) else ""
        first = (error.reason if isinstance(error, Refused) else error.message).splitlines()[0]
        lines = [
            marker,
            f"⛔ **Refused**: `{name}` was not moved to {env.catalog} `{env.release}` "
            f"(commit `{commit[:12]}`); nothing changed in the registry.",
            "",
            f"- rule: `{rule or 'error'}`",
            f"- reason: {error.reason if isinstance(error, Refused) else error.message}",
        ]
        if error.hint:
            lines.append(f"- way out: {error.hint}")
        text = f"{name}: rule {rule}: {first}" if rule else f"{name}: {first}"
        status = CommitStatus(APPLY, CommitState.FAILURE, text[:140])
        return Report(commit, name, "refused", marker, "\n".join(lines) + "\n", status)

    def _changed_by(self, state: DesiredState) -> list[str]:
        """The environments ``state``'s commit changed against its first parent."""
        try:
            parents = self.reconciler.history.commit(state.commit).parents
            before = self.reconciler.state_at(parents[0]) if parents else None
        except ReconcilerError:
            before = None
        return mergerequests.changed_environments(before, state)

    def _run(self) -> None:
        while True:
            report = self._queue.get()
            if report is None:
                self._queue.task_done()
                return
            try:
                self._send(report)
            except ReconcilerError as exc:
                log.warning("merge request report for %s: %s", report.commit[:12], exc.message)
            except Exception:
                log.exception("merge request report: internal error")
            finally:
                self._queue.task_done()

    def _send(self, report: Report) -> None:
        forge = self.forge
        if forge is None:
            return
        forge.set_status(report.commit, report.status)
        mr = self._merged.get(report.commit)
        if report.commit not in self._merged:
            mr = forge.merged_for(report.commit)
            self._merged[report.commit] = mr
        if mr is None:
            log.info("commit %s was not merged through a merge request", report.commit[:12])
            return
        if any(report.marker in body for body in forge.comments(mr.number)):
            return  # told before (another replica, or before a restart)
        forge.comment(mr.number, report.comment)
        log.info(
            "merge request %d: %s %s", mr.number, report.kind, report.environment,
            extra={"event": f"mr-{report.kind}", "environment": report.environment},
        )  # fmt: skip

    def flush(self, timeout: float = 10.0) -> None:
        """Wait up to ``timeout`` seconds for queued reports (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        """Send what is queued (briefly), then stop the thread."""
        self.flush(5.0)
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5.0)


def _remember(seen: dict[K, None], key: K) -> None:
    seen[key] = None
    while len(seen) > REMEMBERED:
        seen.pop(next(iter(seen)))
