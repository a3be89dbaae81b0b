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

import argparse
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from reconciler.daemon import deliveries, notify
from reconciler.daemon.events import EventQueue
from reconciler.daemon.events import parse as parse_events
from reconciler.engine.reconcile import EnvOutcome, Mode, Reconciler, Status
from reconciler.errors import ReconcilerError, Stalled, Transient
from reconciler.model import DesiredState
from reconciler.proposals import discover
from reconciler.receivers import ALLOW_PRIVATE_FLAG
from reconciler.registry import RequestStats
from reconciler.verify import Disposition, Refused, disposition
from reconciler.verify.inforce import Judgement, PolicyInForce

log = logging.getLogger("reconciler.daemon.service")  # not __name__: "__main__" under python -m

DEFAULT_LISTEN = "127.0.0.1:9090"
SECRET_ENV = "RECONCILER_WEBHOOK_SECRET"  # noqa: S105 (a variable name)
HOOK_PATH = "/hooks/git"
REGISTRY_HOOK_PATH = "/hooks/registry"
TOKEN_ENV = "RECONCILER_REGISTRY_WEBHOOK_TOKEN"  # noqa: S105 (a variable name)
DRIFT_INTERVAL = 600.0
MAX_HOOK_BODY = 1 << 20  # push payloads are a few KiB; GitHub caps them at 25 MiB
HTTP_TIMEOUT = 10.0  # seconds a client may take for its whole request, not per read
HTTP_WORKERS = 8  # requests served at once; one more is answered 503 without being read
JOB_ID = "pass"
SOURCE = "(git)"  # the git source's key in logs


# --------------------------------------------------------------------------- backoff


class Health(StrEnum):
    OK = "ok"
    WAITING = "waiting"  # on another environment: retried every pass
    BACKOFF = "backoff"  # transient error: retried after a growing delay
    STALLED = "stalled"  # a person must act: retried on new input or the safety retry


@dataclass(frozen=True)
class BackoffPolicy:
    """Seconds. Transient delays are ``uniform(0, min(cap, base * 2**(failures-1)))``."""

    base: float = 5.0
    cap: float = 300.0
    stalled_retry: float = 900.0

    def __post_init__(self) -> None:
        if not (0 < self.base <= self.cap) or self.stalled_retry <= 0:
            raise Stalled(
                "invalid backoff settings",
                "need 0 < --backoff-base <= --backoff-cap and --stalled-retry > 0",
            )


class Backoff:
    """When one environment (or the git source) is due again, from what it last did.

    Pure: the caller passes ``now`` (a monotonic clock) and the ``inputs`` fingerprint
    (commit and policy), so unit tests drive it with a fake clock. Every method that
    records an outcome returns True when it is a transition worth logging: the first
    failure, a new reason, a change of health, a recovery.
    """

    def __init__(
        self,
        policy: BackoffPolicy,
        rand: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.policy = policy
        self._rand = rand
        self.health = Health.OK
        self.failures = 0  # consecutive transient failures
        self.reason = ""
        self.not_before = 0.0
        self.inputs: Hashable = None

    def due(self, now: float, inputs: Hashable = None) -> bool:
        """Whether to run now. New ``inputs`` (None: unknown yet) end any wait at once."""
        if self.health in (Health.OK, Health.WAITING):
            return True
        if inputs is not None and inputs != self.inputs:
            return True
        return now >= self.not_before

    def succeeded(self) -> bool:
        recovered = self.health is not Health.OK
        self.health, self.failures, self.reason, self.not_before = Health.OK, 0, "", 0.0
        return recovered

    def waiting(self, inputs: Hashable, reason: str) -> bool:
        return self._enter(Health.WAITING, inputs, reason, 0.0)

    def transient(self, now: float, inputs: Hashable, reason: str) -> bool:
        self.failures += 1
        ceiling = min(self.policy.cap, self.policy.base * 2 ** min(self.failures - 1, 60))
        return self._enter(Health.BACKOFF, inputs, reason, now + self._rand(0.0, ceiling))

    def stalled(self, now: float, inputs: Hashable, reason: str) -> bool:
        self.failures = 0
        return self._enter(Health.STALLED, inputs, reason, now + self.policy.stalled_retry)

    def _enter(self, health: Health, inputs: Hashable, reason: str, not_before: float) -> bool:
        # Transient messages carry attempt counts and the like; only the kind matters.
        changed = health is not self.health or (
            health is not Health.BACKOFF and reason != self.reason
        )
        self.health, self.inputs, self.reason, self.not_before = health, inputs, reason, not_before
        return changed


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


# --------------------------------------------------------------------------- webhook


def webhook_authorized(
    secret: bytes, body: bytes, signature: str | None, token: str | None
) -> bool:
    """GitHub's ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``, else
    GitLab's ``X-Gitlab-Token: <secret>``, compared in constant time. No proof: False."""
    if not secret:
        return False
    if signature is not None:
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected.encode(), signature.strip().encode("latin-1"))
    if token is not None:
        return hmac.compare_digest(secret, token.encode("latin-1"))
    return False


def read_secret(args: argparse.Namespace) -> bytes | None:
    """The webhook secret from ``--webhook-secret-file`` or the environment; never logged."""
    path: Path | None = args.webhook_secret_file
    if path is not None:
        try:
            secret = path.read_bytes().strip()
        except OSError as exc:
            raise Stalled(
                f"cannot read the webhook secret file {path}: {exc.strerror}",
                "mount the secret (e.g. a Kubernetes Secret) at that path",
            ) from None
        where = str(path)
    elif os.environ.get(SECRET_ENV) is not None:
        secret, where = os.environ[SECRET_ENV].strip().encode(), SECRET_ENV
    else:
        return None
    if not secret:
        raise Stalled(f"the webhook secret in {where} is empty", "use a long random value")
    if len(secret) < 16:
        log.warning("the webhook secret in %s is short; use at least 16 random bytes", where)
    return secret


# --------------------------------------------------------------------------- options


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; the host must be an IP address or ``localhost``."""
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{value!r}: the host must be an IP address (e.g. 127.0.0.1, 0.0.0.0) or localhost"
            ) from None
    return host, int(port)


def is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: must be > 0")
    return number


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"{value!r}: must be between 0 and 1")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``reconciler run`` (the common ones come from the CLI)."""
    parser.add_argument(
        "--interval", type=_positive, default=60.0, metavar="S", help="seconds between passes"
    )
    parser.add_argument(
        "--jitter",
        type=_fraction,
        default=0.1,
        metavar="F",
        help="add up to F * interval of random delay to each pass (default 0.1)",
    )
    parser.add_argument(
        "--listen",
        type=parse_listen,
        default=parse_listen(DEFAULT_LISTEN),
        metavar="ADDR",
        help=f"HTTP address for /healthz, /readyz, /metrics, {HOOK_PATH} "
        f"(default {DEFAULT_LISTEN}; another interface only when given explicitly)",
    )
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--webhook-secret-file",
        type=Path,
        metavar="PATH",
        help=f"shared webhook secret (else ${SECRET_ENV}); without one {HOOK_PATH} is disabled",
    )
    parser.add_argument(
        "--backoff-base", type=_positive, default=BackoffPolicy.base, metavar="S",
        help="first transient retry delay ceiling (default %(default)s s)",
    )  # fmt: skip
    parser.add_argument(
        "--backoff-cap", type=_positive, default=BackoffPolicy.cap, metavar="S",
        help="longest transient retry delay (default %(default)s s)",
    )  # fmt: skip
    parser.add_argument(
        "--stalled-retry", type=_positive, default=BackoffPolicy.stalled_retry, metavar="S",
        help="re-check a stalled environment with no new commit after S (default %(default)s s)",
    )  # fmt: skip
    parser.add_argument(
        "--drift-interval",
        type=_positive,
        default=DRIFT_INTERVAL,
        metavar="S",
        help="observe every managed tag once per S seconds, spread over the interval "
        "(default %(default)s s); between scans only changes and registry events cost "
        "requests",
    )
    parser.add_argument(
        ALLOW_PRIVATE_FLAG,
        action="store_true",
        help="let settings.notify receivers be on loopback or private addresses (RFC 1918, "
        "fc00::/7); link-local and metadata addresses stay refused",
    )
    parser.add_argument(
        "--active-file",
        type=Path,
        metavar="PATH",
        help="run passes only while PATH exists (set by a leader-election sidecar)",
    )


# --------------------------------------------------------------------------- metrics


class _RequestCollector(Collector):
    """Registry requests by host, method and status, read from the shared counter."""

    def __init__(self) -> None:
        self.stats: RequestStats | None = None

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily(
            "reconciler_registry_requests",
            "Registry HTTP requests by host, method and status ('error': no response).",
            labels=["host", "method", "status"],
        )
        for (host, method, status), count in sorted(
            (self.stats.snapshot() if self.stats else {}).items()
        ):
            family.add_metric([host, method, status], count)
        yield family


class Metrics:
    """Every metric of the daemon, in a registry of its own (not the process-global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.passes = Counter(
            "reconciler_passes", "Passes by result: ok, failed, idle (nothing due), standby.",
            ["result"], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "reconciler_pass_duration_seconds", "Duration of passes that ran.", registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, float("inf")),
        )  # fmt: skip
        self.last_pass = Gauge(
            "reconciler_last_pass_timestamp_seconds", "When the last pass finished.", registry=r
        )
        self.commit = Gauge(
            "reconciler_desired_state_info", "The commit and tree of the desired state.",
            ["commit", "tree"], registry=r,
        )  # fmt: skip
        self.source_health = Gauge(
            "reconciler_source_health", "1 for the git source's health state.", ["state"],
            registry=r,
        )  # fmt: skip
        self.last_success = Gauge(
            "reconciler_environment_last_success_timestamp_seconds",
            "When a pass last left the environment in sync (or applied, or suspended).",
            ["environment"], registry=r,
        )  # fmt: skip
        self.drift = Gauge(
            "reconciler_environment_drift_tags",
            "Tags not as desired at the last observation (0 once applied).",
            ["environment"], registry=r,
        )  # fmt: skip
        self.health = Gauge(
            "reconciler_environment_health", "1 for the environment's health state.",
            ["environment", "state"], registry=r,
        )  # fmt: skip
        self.corrected = Counter(
            "reconciler_drift_corrected", "Tag changes applied, by drift class.",
            ["environment", "drift"], registry=r,
        )  # fmt: skip
        self.refusals = Counter(
            "reconciler_verification_refusals", "Refused verifications, by rule.",
            ["environment", "rule"], registry=r,
        )  # fmt: skip
        self.webhooks = Counter(
            "reconciler_webhook_requests",
            "Webhook requests: accepted, unauthorized, disabled, too_large, bad_request.",
            ["result"], registry=r,
        )  # fmt: skip
        self.requests = _RequestCollector()
        r.register(self.requests)
        self.requests_by_reason = Counter(
            "reconciler_registry_requests_by_reason",
            "Registry requests by what caused them: change (a new commit, a retry), event "
            "(a registry notification), drift (the scan on --drift-interval).",
            ["reason"], registry=r,
        )  # fmt: skip
        self.event_correction = Histogram(
            "reconciler_event_correction_seconds",
            "From a registry event about a managed tag to its correction.", registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, float("inf")),
        )  # fmt: skip
        self.release = Gauge(
            "reconciler_environment_release_info",
            "1 for the catalog and release an environment runs.",
            ["environment", "catalog", "release"], registry=r,
        )  # fmt: skip

    def set_health(self, environment: str | None, health: Health) -> None:
        for state in Health:
            value = 1.0 if state is health else 0.0
            if environment is None:
                self.source_health.labels(state.value).set(value)
            else:
                self.health.labels(environment, state.value).set(value)

    def forget(self, environment: str) -> None:
        """An environment left the desired state: drop its series."""
        for metric in (
            self.last_success, self.drift, self.health, self.corrected, self.refusals,
            self.release,
        ):  # fmt: skip
            metric.remove_by_labels({"environment": environment})


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
    ) -> None:
        self.reconciler = reconciler
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
        self.proposer = discover.Proposer(
            reconciler, drift_interval, self.notifier.proposed, clock, only
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

    def stop(self) -> None:
        self._stopping.set()

    def ready(self, window: float) -> bool:
        finished = self.last_finished
        return finished is not None and self.clock() - finished <= window

    # -- one pass

    def run_pass(self) -> None:
        started = self.clock()
        with self._lock:
            forced, self._forced = self._forced, False
        result = "idle"
        try:
            if not self._is_active():
                result = "standby"
            else:
                state = self._load(started, forced)
                if state is None:
                    result = "failed" if self.source.health is not Health.OK else "idle"
                else:
                    result = self._environments(state, started)
                    self.proposer.tick(state, started)
        except Exception:  # a bug must not kill the loop; the next pass tries again
            log.exception("internal error in a pass")
            result = "failed"
        finally:
            finished = self.clock()
            self.last_finished = finished
            self.metrics.passes.labels(result).inc()
            self.metrics.last_pass.set(time.time())
            if result in ("ok", "failed"):
                self.metrics.duration.observe(finished - started)
            log.debug("pass %s in %.2fs", result, finished - started)

    def _is_active(self) -> bool:
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

    def _environments(self, state: DesiredState, now: float) -> str:
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
            return "idle"
        self.metrics.requests.stats = self.reconciler.registries(self._policy).stats
        ok = True
        if changed:
            # The first pass (and every pass with nothing held back) runs the whole state.
            whole = not self.only and len(changed) == len(state.environments)
            ok = self._pass("change", state, None if whole else changed, None, prints, now)
        if targeted:
            ok = self._pass("event", state, sorted(targeted), targeted, prints, now) and ok
            for name, (_, since) in events.items():
                if name in targeted and self.clean.get(name) == prints[name]:
                    self.metrics.event_correction.observe(self.clock() - since)
        if drifted:
            ok = self._pass("drift", state, drifted, None, prints, now) and ok
        return "ok" if ok else "failed"

    def _changed(self, name: str, fingerprint: str, inputs: Hashable, now: float) -> bool:
        backoff = self.envs[name]
        if backoff.health is Health.OK:
            return self.clean.get(name) != fingerprint
        return backoff.due(now, inputs)

    def _pass(
        self,
        reason: str,
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
                if reason == "drift":  # its next turn, keeping its place in the interval
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


# --------------------------------------------------------------------------- HTTP


class _Server(ThreadingHTTPServer):
    """At most ``workers`` requests at once, each cut off ``request_deadline`` seconds
    after it was accepted: a client trickling bytes cannot hold a thread past it, and
    a crowd of them gets 503s instead of threads."""

    daemon_threads = True
    request_deadline = HTTP_TIMEOUT
    workers = HTTP_WORKERS

    def __init__(
        self,
        address: tuple[str, int],
        daemon: Daemon,
        secret: bytes | None,
        window: float,
        registry_token: bytes | None = None,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.reconciler_daemon, self.secret, self.ready_window = daemon, secret, window
        self.registry_token = registry_token
        self.deliveries = deliveries.Deliveries()  # accepted /hooks/git requests: no replays
        self._busy = threading.BoundedSemaphore(self.workers)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._busy.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._busy.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        deadline = threading.Timer(self.request_deadline, _cut, (request,))
        deadline.daemon = True
        deadline.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            deadline.cancel()
            self._busy.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # a client gone, or cut off at the deadline
            log.debug("http: request from %s ended early: %r", client_address[0], error)
        else:
            log.exception("http: request from %s failed", client_address[0])


_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 5\r\nConnection: close\r\n\r\nbusy\n"
)


def _cut(connection: socket.socket) -> None:
    """The whole-request deadline passed: end the connection, waking the reader."""
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = HTTP_TIMEOUT
    server_version = "reconciler"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass  # request lines may carry query strings: never logged

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        daemon = self.server.reconciler_daemon
        if path == "/healthz":
            self._reply(HTTPStatus.OK, b"ok\n")
        elif path == "/readyz":
            ready = daemon.ready(self.server.ready_window)
            body = b"ready\n" if ready else b"no pass finished recently\n"
            self._reply(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, body)
        elif path == "/metrics":
            self._reply(
                HTTPStatus.OK, generate_latest(daemon.metrics.registry), CONTENT_TYPE_LATEST
            )
        else:
            self._reply(HTTPStatus.NOT_FOUND, b"not found\n")

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] == REGISTRY_HOOK_PATH:
            self._registry_hook()
            return
        if self.path.split("?", 1)[0] != HOOK_PATH:
            self._reply(HTTPStatus.NOT_FOUND, b"not found\n")
            return
        daemon, secret = self.server.reconciler_daemon, self.server.secret
        webhooks = daemon.metrics.webhooks
        if secret is None:  # fail closed: no secret, no endpoint
            webhooks.labels("disabled").inc()
            self._reply(HTTPStatus.NOT_FOUND, b"webhook disabled: no secret configured\n")
            return
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            webhooks.labels("bad_request").inc()
            self._reply(HTTPStatus.LENGTH_REQUIRED, b"Content-Length required\n")
            return
        if int(length) > MAX_HOOK_BODY:
            webhooks.labels("too_large").inc()
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"body too large\n")
            return
        body = self.rfile.read(int(length))
        if len(body) != int(length) or not webhook_authorized(
            secret,
            body,
            self.headers.get("X-Hub-Signature-256"),
            self.headers.get("X-Gitlab-Token"),
        ):
            webhooks.labels("unauthorized").inc()
            log.warning(
                "webhook from %s refused: bad or missing signature", self.client_address[0],
                extra={"event": "webhook-refused"},
            )  # fmt: skip
            self._reply(HTTPStatus.UNAUTHORIZED, b"bad or missing signature\n")
            return
        refused = _replay_refusal(self.headers, body, self.server.deliveries)
        if refused is not None:
            status, result, text = refused
            webhooks.labels(result).inc()
            log.warning(
                "webhook from %s refused: %s", self.client_address[0], text.decode().strip(),
                extra={"event": "webhook-refused"},
            )  # fmt: skip
            self._reply(status, text)
            return
        webhooks.labels("accepted").inc()
        log.info("webhook: pass triggered", extra={"event": "webhook"})
        daemon.trigger()
        self._reply(HTTPStatus.ACCEPTED, b"pass triggered\n")

    def _registry_hook(self) -> None:
        """Distribution notifications: ``Authorization: Bearer <token>``, checked in
        constant time; events about managed tags queue targeted checks."""
        daemon, token = self.server.reconciler_daemon, self.server.registry_token
        webhooks = daemon.metrics.webhooks
        if token is None:
            webhooks.labels("disabled").inc()
            self._reply(HTTPStatus.NOT_FOUND, b"registry webhook disabled: no token\n")
            return
        offered = self.headers.get("Authorization", "").encode("latin-1", "replace")
        if not hmac.compare_digest(b"Bearer " + token, offered):
            webhooks.labels("unauthorized").inc()
            self._reply(HTTPStatus.UNAUTHORIZED, b"bad or missing token\n")
            return
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > MAX_HOOK_BODY:
            webhooks.labels("bad_request" if not length.isdigit() else "too_large").inc()
            self._reply(HTTPStatus.BAD_REQUEST, b"Content-Length up to 1 MiB required\n")
            return
        try:
            events = parse_events(self.rfile.read(int(length)))
        except ValueError:
            webhooks.labels("bad_request").inc()
            self._reply(HTTPStatus.BAD_REQUEST, b"not a notification envelope\n")
            return
        webhooks.labels("accepted").inc()
        if daemon.events.offer(events):
            daemon.trigger()
        self._reply(HTTPStatus.ACCEPTED, b"accepted\n")

    def _reply(self, status: HTTPStatus, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _replay_refusal(
    headers: deliveries.Headers, body: bytes, seen: deliveries.Deliveries
) -> tuple[HTTPStatus, str, bytes] | None:
    """Why an authenticated ``/hooks/git`` request is refused (status, metric, text).

    A forge's delivery id is required and remembered, with the body's digest
    (:mod:`reconciler.daemon.deliveries`). The body must be a JSON object, as every forge's
    push is: whatever else the secret signs (a notification signs ``timestamp.body``)
    is never a git webhook.
    """
    delivery = deliveries.delivery_id(headers)
    if delivery is None:
        names = ", ".join(deliveries.DELIVERY_HEADERS)
        return (
            HTTPStatus.BAD_REQUEST,
            "bad_request",
            f"a delivery id is required ({names})\n".encode(),
        )
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        text = b"the body must be a JSON object (the webhook's content type: application/json)\n"
        return HTTPStatus.BAD_REQUEST, "bad_request", text
    if not seen.first(delivery, body):
        return HTTPStatus.CONFLICT, "replayed", b"already delivered: a replay is refused\n"
    return None


# --------------------------------------------------------------------------- logging


_EXTRA = ("event", "environment", "commit")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the daemon's fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _EXTRA:
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure_logging(args: argparse.Namespace) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if args.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    verbose = bool(getattr(args, "verbose", False))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True
    )
    # It logs every run at INFO and every coalesced tick (a pass longer than the interval)
    # at WARNING: polls, not transitions.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)


# --------------------------------------------------------------------------- main


def main(args: argparse.Namespace, reconciler: Reconciler) -> int:
    """Run until SIGTERM/SIGINT; 0 after a clean stop. Configuration errors raise."""
    configure_logging(args)
    policy = BackoffPolicy(args.backoff_base, args.backoff_cap, args.stalled_retry)
    secret = read_secret(args)
    host, port = args.listen
    if not is_loopback(host):
        log.warning(
            "listening on %s: /metrics and /readyz are reachable from the network%s", host,
            "" if secret else f"; {HOOK_PATH} is disabled (no secret)",
        )  # fmt: skip
    daemon = Daemon(
        reconciler, policy, args.env, args.active_file, drift_interval=args.drift_interval
    )
    if getattr(args, "discover_interval", None) is not None:
        daemon.proposer.interval = args.discover_interval
    daemon.notifier.allow_private = bool(getattr(args, "notify_allow_private", False))
    window = max(3 * args.interval * (1 + args.jitter), 30.0)
    token = os.environ.get(TOKEN_ENV, "").strip().encode() or None
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
        daemon.job, "interval", id=JOB_ID, seconds=args.interval,
        jitter=args.interval * args.jitter or None, next_run_time=datetime.now(UTC),
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
        reconciler.source.display, reconciler.ref, args.interval, args.drift_interval, listen,
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
        server.shutdown()
        server.server_close()
        daemon.notifier.close()
        reconciler.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    log.info("stopped", extra={"event": "stopped"})
    return 0


def _job_crashed(event: JobExecutionEvent) -> None:
    log.error("a pass crashed: %r", event.exception)
