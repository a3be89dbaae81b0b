"""The polling reconciler: passes on a schedule, backoff, webhook trigger, health, metrics.

``reconciler run`` runs one level-based pass every ``--interval`` seconds (with jitter):
fetch git, load the desired state (an unchanged tree costs no ``cue``), then run only the
environments that are due. Passes never overlap: one APScheduler job with
``max_instances=1`` and ``coalesce`` runs them, and a webhook only moves that job's next
run to "now" (or, when a pass is already running, asks it for one more pass after it).

What "due" means is decided per environment by :class:`Backoff`, a pure state machine:

- ``ok``: due every pass; polling heals drift.
- ``waiting``: refused only because a required environment does not run the release yet;
  due every pass (it costs the reads of an in-sync pass), logged once.
- ``backoff``: a transient error (network, 429, 5xx, a compare-and-swap conflict); due
  again after a full-jitter exponential delay, capped, or at once on a new commit.
- ``stalled``: a person must act (invalid state, a refused verification); due again only
  when the commit or the environment's policy fingerprint changes, or after a long
  safety retry, so that what git cannot announce (a signature pushed later to the
  registry, a hazard fixed by re-tagging) is still picked up eventually.

The git source has a :class:`Backoff` of its own: an invalid commit is loaded (``cue``)
once, then only fetched until a new commit arrives.

Transitions are logged (first failure, a new reason, recovery, an apply), never polls.
SIGTERM/SIGINT stop scheduling, let the running pass finish (a pass writes an apply
record only after its tags are confirmed), stop the HTTP server and exit 0.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.background import BackgroundScheduler

from reconciler.daemon import notify
from reconciler.daemon.backoff import Backoff, BackoffPolicy, Health
from reconciler.daemon.events import EventQueue
from reconciler.daemon.forgereport import ForgeReporter
from reconciler.daemon.lease import Elector, KubeLeases
from reconciler.daemon.logs import configure_logging
from reconciler.daemon.metrics import Metrics
from reconciler.daemon.options import (
    DRIFT_INTERVAL,
    HOOK_PATH,
    JOB_ID,
    SOURCE,
    DaemonConfig,
    is_loopback,
)
from reconciler.daemon.server import _Server
from reconciler.engine.reconcile import EnvOutcome, Mode, Reconciler, Status
from reconciler.errors import ReconcilerError, Stalled, Transient
from reconciler.model import DesiredState
from reconciler.proposals import discover
from reconciler.verify import Disposition, Refused, disposition
from reconciler.verify.inforce import Judgement, PolicyInForce

log = logging.getLogger("reconciler.daemon")  # not __name__: "__main__" under python -m


class Poll(StrEnum):
    """What one poll came to (the label of ``reconciler_passes_total``)."""

    IDLE = "idle"  # nothing was due: no request made
    OK = "ok"
    FAILED = "failed"  # an environment or the git source failed or was refused
    STANDBY = "standby"  # not the active replica


class Why(StrEnum):
    """Why a pass ran (the label of the requests-by-reason metric)."""

    CHANGE = "change"  # the commit or an environment's inputs changed, or a retry was due
    EVENT = "event"  # a registry event named tags
    DRIFT = "drift"  # the environment's turn for a full observation


def env_fingerprint(state: DesiredState, name: str) -> str:
    """What an environment's tags depend on in git: its definition and attribution, its
    desired tags, its policies and the settings. Unchanged, a new commit costs it nothing."""
    release = state.release_of(name)
    parts = [
        repr(state.environments[name]),
        [repr(t) for t in state.tags[name]],
        state.policy_fingerprint(name),
        repr(release),
        repr(state.proposed_settings),  # the daemon fingerprints trusted states only
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


# --------------------------------------------------------------------------- the loop


class Daemon:
    """Runs passes; owns the per-environment backoff, the metrics and the trigger state.

    Only the scheduler's single job calls :meth:`run_pass`; the HTTP threads read
    health and call :meth:`trigger`, nothing else.
    """

    def __init__(
        self,
        reconciler: Reconciler,
        policy: BackoffPolicy,
        only: Sequence[str] | None = None,
        active_file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        drift_interval: float = DRIFT_INTERVAL,
        elector: Elector | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.elector = elector
        self._term: object = None  # the Lease term the environments' state belongs to
        self.drift_interval = drift_interval
        self.events = EventQueue(clock)
        self.clean: dict[str, str] = {}  # env -> its fingerprint when last in sync
        self.next_drift: dict[str, float] = {}  # env -> when its full observation is due
        self.policy = policy
        self.only = list(only) if only else None
        self.active_file = active_file
        self.clock = clock
        self.metrics = Metrics()
        self.source = Backoff(policy)
        self.envs: dict[str, Backoff] = {}
        self.last_finished: float | None = None  # monotonic
        self.scheduler: BackgroundScheduler | None = None
        self._lock = threading.Lock()
        self._running = False
        self._again = False  # a trigger arrived while a pass ran
        self._forced = False  # the next pass may skip the git source's backoff
        self._stopping = threading.Event()
        self._commit = ("", "")
        self._candidate: DesiredState | None = None  # the newest commit's state, as judged
        self._judgement: Judgement | None = None
        self._active: bool | None = None
        self._unknown: frozenset[str] = frozenset()
        self.metrics.set_health(None, Health.OK)
        # Telling people (settings.notify) and proposing branches (discover, follow):
        # reconciler/daemon/notify.py and reconciler/proposals/discover.py; neither can fail a pass.
        self.notifier = notify.Notifier(reconciler.identity, reconciler.source.display)
        self.forge = ForgeReporter(reconciler, clock)  # settings.forge: checks and reports
        self.proposer = discover.Proposer(
            reconciler, drift_interval, self.forge.also(self.notifier.proposed), clock, only
        )

    # -- scheduling

    def job(self) -> None:
        """The scheduler's job: a pass, repeated while triggers arrived during it."""
        with self._lock:
            self._running, self._again = True, False
        try:
            while True:
                self.run_pass()
                with self._lock:
                    if not self._again or self._stopping.is_set():
                        self._running = False
                        return
                    self._again = False
        finally:
            with self._lock:
                self._running = False

    def trigger(self) -> None:
        """A pass as soon as possible, never concurrently with a running one."""
        with self._lock:
            self._forced = True
            if self._running:
                self._again = True
                return
        scheduler = self.scheduler
        if scheduler is not None and not self._stopping.is_set():
            with contextlib.suppress(JobLookupError, SchedulerNotRunningError):  # stopping
                scheduler.modify_job(JOB_ID, next_run_time=datetime.now(UTC))

    def _wake_at(self, until: datetime | None) -> None:
        """A pass when a soak or a freeze window ends (``Waiting.until``), not only at the
        next interval: the rule is re-checked the moment it can be satisfied."""
        scheduler = self.scheduler
        if until is None or scheduler is None or self._stopping.is_set():
            return
        with contextlib.suppress(SchedulerNotRunningError):
            scheduler.add_job(
                self.trigger, "date", run_date=until, id=f"wake-{until.isoformat()}",
                replace_existing=True,
            )  # fmt: skip

    def stop(self) -> None:
        """Stop taking triggers: a running pass finishes and is not repeated (the caller shuts
        the scheduler down)."""
        self._stopping.set()

    def ready(self, window: float) -> bool:
        """A pass finished within ``window`` seconds (``/readyz``): a hung loop turns not ready."""
        finished = self.last_finished
        return finished is not None and self.clock() - finished <= window

    # -- one pass

    def run_pass(self) -> None:
        """One pass: the git source (with its backoff), then each environment that is due, then
        discovery. Never raises: a bug is logged and the next pass tries again. Counted in
        ``reconciler_passes`` by result (ok, failed, idle, standby)."""
        started = self.clock()
        with self._lock:
            forced, self._forced = self._forced, False
        result = Poll.IDLE
        try:
            if not self._is_active():
                result = Poll.STANDBY
            else:
                state = self._load(started, forced)
                if state is None:
                    result = Poll.FAILED if self.source.health is not Health.OK else Poll.IDLE
                else:
                    result = self._environments(state, started)
                    self.proposer.tick(state, started)
                    self.forge.tick()
        except Exception:  # a bug must not kill the loop; the next pass tries again
            log.exception("internal error in a pass")
            result = Poll.FAILED
        finally:
            finished = self.clock()
            self.last_finished = finished
            self.metrics.passes.labels(result).inc()
            self.metrics.last_pass.set(time.time())
            if result in (Poll.OK, Poll.FAILED):
                self.metrics.duration.observe(finished - started)
            log.debug("pass %s in %.2fs", result, finished - started)

    def _is_active(self) -> bool:
        if self.elector is not None:  # it logs its own transitions
            term = self.elector.term()
            if term is not None and term != self._term:
                # A new term starts from scratch: another leader may have applied meanwhile.
                self.clean.clear()
                self.next_drift.clear()
                self.envs.clear()
            self._term = term
            return term is not None
        if self.active_file is None:
            return True
        active = self.active_file.exists()
        if active is not self._active:
            log.info(
                "%s: %s", "active" if active else "standby",
                f"{self.active_file} {'exists' if active else 'is absent'}",
                extra={"event": "active" if active else "standby"},
            )  # fmt: skip
            self._active = active
        return active

    def _load(self, now: float, forced: bool) -> DesiredState | None:
        """Fetch, load and judge the desired state, honouring the git source's backoff.

        Answers the *trusted* state (the newest commit's when it passed the repository's
        judgement, else the commit in force's); notifications are configured from the
        policy in force, never from a commit that is being judged."""
        src = self.source
        if src.health is Health.BACKOFF and not forced and not src.due(now):
            return None
        reconciler = self.reconciler
        try:
            reconciler.source.fetch()
            snap = reconciler.source.snapshot(reconciler.ref, reconciler.path)
        except Transient as exc:
            self._source_failed(src.transient(now, None, exc.message), exc)
            return None
        except Stalled as exc:
            inputs = ("error", exc.message)
            if src.health is Health.STALLED and not src.due(now, inputs):
                return None
            self._source_failed(src.stalled(now, inputs, exc.message), exc)
            return None
        inputs = (snap.commit, snap.tree_id)
        if src.health is Health.STALLED and not src.due(now, inputs):
            return None  # the same invalid commit: no cue call, no registry read
        try:
            state = reconciler.loader.load(snap)
        except Transient as exc:
            self._source_failed(src.transient(now, inputs, exc.message), exc)
            return None
        except Stalled as exc:
            self._source_failed(src.stalled(now, inputs, exc.message), exc)
            return None
        try:
            judgement = reconciler.judge(state, persist=True)
        except Stalled as exc:  # no trust root, an unreadable anchor or policy in force
            self._source_failed(src.stalled(now, inputs, exc.message), exc)
            return None
        if judgement.policy.state is None:
            refusal = judgement.refusal or Stalled("nothing of the state repository is trusted")
            self._source_failed(src.stalled(now, inputs, refusal.message), refusal)
            return None
        self._candidate, self._judgement = state, judgement
        self.notifier.configure(judgement.policy.settings.notify)
        self.forge.configure(judgement.policy.forge)
        if not judgement.passed and judgement.refusal is not None:
            log.warning(
                "commit %s is refused; the commit in force stays %s: %s",
                state.commit[:12], (judgement.policy.commit or "")[:12], judgement.refusal,
                extra={"event": "refused", "commit": state.commit},
            )  # fmt: skip
        state = judgement.policy.state
        self.notifier.source(None, state.commit)
        if src.succeeded():
            log.info("git source recovered", extra={"event": "recovered", "environment": SOURCE})
            self.metrics.set_health(None, Health.OK)
        if (state.commit, state.tree) != self._commit:
            log.info(
                "desired state at commit %s (tree %s)", state.commit[:12], state.tree[:12],
                extra={"event": "commit", "commit": state.commit},
            )  # fmt: skip
            self.metrics.commit.clear()
            self.metrics.commit.labels(state.commit, state.tree).set(1)
            self._commit = (state.commit, state.tree)
        return state

    @property
    def _policy(self) -> PolicyInForce:
        assert self._judgement is not None, "a pass runs only after a judgement"
        return self._judgement.policy

    def _held(self) -> str:
        """The newest commit while it is refused ('' when it is in force): part of every
        environment's inputs, so a refused commit is reported once and a new one is
        judged again."""
        judgement, candidate = self._judgement, self._candidate
        if judgement is None or candidate is None or judgement.passed:
            return ""
        return candidate.commit

    def _source_failed(self, transition: bool, exc: ReconcilerError) -> None:
        self.notifier.source(exc)
        src = self.source
        self.metrics.set_health(None, src.health)
        if transition:
            log.warning(
                "git source %s: %s", src.health.value, exc,
                extra={"event": src.health.value, "environment": SOURCE},
            )  # fmt: skip
        else:
            log.debug("git source still %s: %s", src.health.value, exc.message)

    def _selected(self, state: DesiredState) -> list[str]:
        names = set(state.environments)
        for gone in set(self.envs) - names:
            del self.envs[gone]
            self.metrics.forget(gone)
        if not self.only:
            return sorted(names)
        unknown = frozenset(self.only) - names
        if unknown != self._unknown:
            if unknown:
                log.warning(
                    "--env names no environment of commit %s: %s", state.commit[:12],
                    ", ".join(sorted(unknown)), extra={"event": "unknown-environment"},
                )  # fmt: skip
            self._unknown = unknown
        return sorted(names & set(self.only))

    def _environments(self, state: DesiredState, now: float) -> Poll:
        """Run what is due, each for its own reason; nothing due costs no request.

        - change: an environment whose fingerprint (desired tags, policy, settings) moved
          since it was last in sync, or that is waiting, backing off or stalled and due;
        - event: the tags registry events named, read and corrected, nothing else;
        - drift: a full observation, once per ``drift_interval`` per environment,
          the environments' turns spread over the interval.
        """
        names = self._selected(state)
        held = self._held()
        inputs = {n: (state.commit, held, state.policy_fingerprint(n)) for n in names}
        prints = {n: env_fingerprint(state, n) + held for n in names}
        for i, name in enumerate(names):
            if name not in self.envs:
                self.envs[name] = Backoff(self.policy)
                self.metrics.set_health(name, Health.OK)
            # First scans spread over the interval, not a burst every drift_interval.
            self.next_drift.setdefault(name, now + self.drift_interval * (i + 1) / len(names))
        self.events.manage(state, names)
        changed = [n for n in names if self._changed(n, prints[n], inputs[n], now)]
        events = self.events.take()
        targeted = {n: tags for n, (tags, _) in events.items() if n in names and n not in changed}
        drifted = [
            n for n in names if n not in changed and n not in targeted and now >= self.next_drift[n]
        ]
        if not (changed or targeted or drifted):
            return Poll.IDLE
        self.metrics.requests.stats = self.reconciler.registries(self._policy).stats
        ok = True
        if changed:
            # The first pass (and every pass with nothing held back) runs the whole state.
            whole = not self.only and len(changed) == len(state.environments)
            ok = self._pass(Why.CHANGE, state, None if whole else changed, None, prints, now)
        if targeted:
            ok = self._pass(Why.EVENT, state, sorted(targeted), targeted, prints, now) and ok
            for name, (_, since) in events.items():
                if name in targeted and self.clean.get(name) == prints[name]:
                    self.metrics.event_correction.observe(self.clock() - since)
        if drifted:
            ok = self._pass(Why.DRIFT, state, drifted, None, prints, now) and ok
        return Poll.OK if ok else Poll.FAILED

    def _changed(self, name: str, fingerprint: str, inputs: Hashable, now: float) -> bool:
        backoff = self.envs[name]
        if backoff.health is Health.OK:
            return self.clean.get(name) != fingerprint
        return backoff.due(now, inputs)

    def _pass(
        self,
        reason: Why,
        state: DesiredState,
        envs: list[str] | None,
        only: Mapping[str, frozenset[str]] | None,
        prints: Mapping[str, str],
        now: float,
    ) -> bool:
        stats = self.reconciler.registries(self._policy).stats
        before = stats.total()
        due = envs if envs is not None else sorted(state.environments)
        try:
            result = self.reconciler.run(
                Mode.APPLY, envs, self._candidate, only, judgement=self._judgement
            )
        except ReconcilerError as exc:  # before any environment ran (e.g. registry settings)
            outcomes = [EnvOutcome(n, Status.FAILED, error=exc) for n in due]
        except Exception as exc:
            log.exception("internal error in a pass")
            error = ReconcilerError(f"internal error: {exc.__class__.__name__}: {exc}")
            outcomes = [EnvOutcome(n, Status.FAILED, error=error) for n in due]
        else:
            outcomes = result.outcomes
        self.metrics.requests_by_reason.labels(reason).inc(stats.total() - before)
        ok = True
        for outcome in outcomes:
            name = outcome.environment
            inputs = (state.commit, self._held(), state.policy_fingerprint(name))
            if self._outcome(state, outcome, inputs, now):
                self.clean[name] = prints[name]
                if reason is Why.DRIFT:  # its next turn, keeping its place in the interval
                    turn = self.next_drift[name] + self.drift_interval
                    self.next_drift[name] = turn if turn > now else now + self.drift_interval
            else:
                self.clean.pop(name, None)
                ok = False
            if outcome.status is Status.APPLIED and outcome.plan is not None:
                for change in outcome.plan.changes:
                    if change.to_digest is not None:
                        self.events.wrote(change.repository, change.tag, change.to_digest)
        return ok

    def _outcome(self, state: DesiredState, o: EnvOutcome, inputs: Hashable, now: float) -> bool:
        """Update backoff and metrics from one environment's outcome; log transitions."""
        self.notifier.outcome(state, o)  # queued; sent once per transition
        self.forge.outcome(self._candidate or state, state, o)  # likewise, on the forge
        name, backoff, m = o.environment, self.envs[o.environment], self.metrics
        changes = o.plan.changes if o.plan is not None else ()
        extra: dict[str, Any] = {"environment": name, "commit": state.commit}
        if o.status in (Status.IN_SYNC, Status.APPLIED, Status.SUSPENDED, Status.PENDING):
            m.last_success.labels(name).set(time.time())
            m.drift.labels(name).set(0 if o.status is Status.APPLIED else len(changes))
            if o.status is Status.APPLIED:
                for change in changes:
                    m.corrected.labels(name, change.drift.value).inc()
                env = state.environments[name]
                moved = len(o.applied.moved) if o.applied else 0
                log.info(
                    "%s: applied %s %s at commit %s (%d tags moved)",
                    name, env.catalog, env.release, state.commit[:12], moved,
                    extra={**extra, "event": "applied"},
                )  # fmt: skip
                for warning in o.warnings:
                    log.warning("%s: %s", name, warning, extra={**extra, "event": "warning"})
            if backoff.succeeded():
                log.info("%s: recovered", name, extra={**extra, "event": "recovered"})
            m.set_health(name, Health.OK)
            env = state.environments[name]
            m.release.remove_by_labels({"environment": name})
            m.release.labels(name, env.catalog, env.release).set(1)
            return True
        error = o.error or ReconcilerError(f"{o.status.value} without an error")
        m.drift.labels(name).set(len(changes))
        if isinstance(error, Refused):
            m.refusals.labels(name, error.rule).inc()
        match disposition(error):
            case Disposition.WAIT:
                changed = backoff.waiting(inputs, error.message)
                self._wake_at(getattr(error, "until", None))
            case Disposition.STALL:
                changed = backoff.stalled(now, inputs, error.message)
            case Disposition.RETRY:
                changed = backoff.transient(now, inputs, error.message)
        m.set_health(name, backoff.health)
        if changed:
            level = logging.INFO if backoff.health is Health.WAITING else logging.WARNING
            log.log(
                level, "%s: %s: %s", name, backoff.health.value, error,
                extra={**extra, "event": backoff.health.value},
            )  # fmt: skip
        else:
            log.debug("%s: still %s: %s", name, backoff.health.value, error.message)
        return False


# --------------------------------------------------------------------------- main


def main(config: DaemonConfig, reconciler: Reconciler) -> int:
    """Run until SIGTERM/SIGINT; 0 after a clean stop. Configuration errors raise."""
    configure_logging(config.log_format, config.verbose)
    secret, token = config.secret, config.registry_token
    host, port = config.listen
    if not is_loopback(host):
        log.warning(
            "listening on %s: /metrics and /readyz are reachable from the network%s", host,
            "" if secret else f"; {HOOK_PATH} is disabled (no secret)",
        )  # fmt: skip
    elector = None
    if config.lease is not None:
        elector = Elector(config.lease, KubeLeases(config.lease))
        elector.start()  # refuses an overlapping shard before anything listens
        reconciler.fence = elector
    daemon = Daemon(
        reconciler,
        config.backoff,
        list(config.envs) if config.envs else None,
        config.active_file,
        drift_interval=config.drift_interval,
        elector=elector,
    )
    if elector is not None:
        daemon.metrics.watch_leader(elector.config.name, lambda: elector.term() is not None)
    if config.discover_interval is not None:
        daemon.proposer.interval = config.discover_interval
    daemon.notifier.allow_private = config.notify_allow_private
    window = max(3 * config.interval * (1 + config.jitter), 30.0)
    try:
        server = _Server((host, port), daemon, secret, window, token)
    except OSError as exc:
        raise Stalled(
            f"cannot listen on {host}:{port}: {exc.strerror}", "choose another --listen address"
        ) from None
    http_thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)

    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(1)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        timezone="UTC",
    )
    scheduler.add_listener(_job_crashed, EVENT_JOB_ERROR)
    scheduler.add_job(
        daemon.job, "interval", id=JOB_ID, seconds=config.interval,
        jitter=config.interval * config.jitter or None, next_run_time=datetime.now(UTC),
    )  # fmt: skip
    daemon.scheduler = scheduler

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        log.info(
            "%s: stopping after the running pass", signal.Signals(signum).name,
            extra={"event": "stopping"},
        )  # fmt: skip
        daemon.stop()
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    log.info(
        "reconciling %s @ %s every %gs (drift scans every %gs); http on %s; webhook %s; "
        "registry events %s",
        reconciler.source.display, reconciler.ref, config.interval, config.drift_interval, listen,
        "enabled" if secret else "disabled", "enabled" if token else "disabled",
        extra={"event": "start"},
    )  # fmt: skip
    try:
        http_thread.start()
        scheduler.start()
        while not stop.wait(1.0):
            pass
        scheduler.shutdown(wait=True)  # lets the running pass finish
    finally:
        if elector is not None:
            elector.stop()
        server.shutdown()
        server.server_close()
        daemon.notifier.close()
        daemon.forge.close()
        reconciler.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    log.info("stopped", extra={"event": "stopped"})
    return 0


def _job_crashed(event: JobExecutionEvent) -> None:
    log.error("a pass crashed: %r", event.exception)
