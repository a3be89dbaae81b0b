"""Notifications: tell people what happened, once per transition, never slowing a pass.

``settings.notify`` lists receivers: a URL (or ``urlEnv``, the variable holding a URL
that is itself a secret), the events it wants and a format. Events:

- ``applied``: an environment's tags were moved to a (new) release;
- ``drift``: tags differed from what git says while the release did not change (moved
  by hand, deleted, tampered with) and were put back (or, in a scan that does not
  apply, were found so);
- ``refused``: verification refused a change (a person must act); ``failed``: an
  error (invalid state, registry down); ``recovered``: back to normal after either;
- ``proposed``: the daemon opened a branch (a discovered release, ``follow: latest``).

A refusal or failure is sent when it starts or its reason changes, not every pass;
``recovered`` only after one was sent. Deliveries are JSON POSTs from one background
thread, retried with exponential backoff and jitter (connection errors, 408, 429 with
``Retry-After``, 5xx); a pass only queues them. Every delivery carries
``X-Reconciler-Timestamp`` (unix seconds) and ``X-Reconciler-Delivery`` (the event's
id). With ``secretEnv`` it also carries ``X-Reconciler-Signature-256: sha256=<hex
HMAC-SHA256(secret, timestamp + "." + body)>`` (Stripe's scheme): the signature covers
when it was sent, so a receiver refuses an old one (:func:`verify`), and it is never a
valid GitHub-style signature of the body, so a captured notification cannot pass for a
git webhook. A named secret that is not set stops that receiver (fail closed) rather
than sending unsigned, and ``secretEnv``/``urlEnv`` must start with
``RECONCILER_NOTIFY_``. Receivers are checked where they resolve
(:mod:`reconciler.receivers`): link-local, metadata and the like never, loopback and
private addresses only with ``allow_private``. Logs name a receiver by its scheme and
host only: paths, query strings and credentials are never logged.

Formats: ``generic`` (the event object), ``slack`` (``{"text": …}`` for an incoming
webhook) and ``cloudevents`` (CloudEvents 1.0, structured mode).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from reconciler import __version__, receivers
from reconciler.engine.reconcile import EnvOutcome, Status
from reconciler.errors import ReconcilerError, Transient
from reconciler.model import NOTIFY_ENV_HINT, NOTIFY_ENV_RE, DesiredState, Drift, NotifyTarget
from reconciler.verify import Refused, Waiting

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Reconciler-Signature-256"
EVENT_HEADER = "X-Reconciler-Event"
DELIVERY_HEADER = "X-Reconciler-Delivery"
TIMESTAMP_HEADER = "X-Reconciler-Timestamp"
TOLERANCE = 300.0  # seconds a receiver accepts a signed timestamp away from its clock
SOURCE = "(git)"  # the git source, as an "environment" of failed / recovered events


@dataclass(frozen=True)
class Event:
    """One thing that happened, as every format reports it."""

    kind: str  # applied | drift | refused | failed | recovered | proposed
    summary: str  # one line for people
    environment: str | None = None
    catalog: str | None = None
    release: str | None = None
    commit: str | None = None
    reason: str | None = None
    rule: str | None = None
    branch: str | None = None
    changes: tuple[Mapping[str, object], ...] = ()
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    def document(self, reconciler: str, repository: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "event": self.kind,
            "time": self.time,
            "summary": self.summary,
            "environment": self.environment,
            "catalog": self.catalog,
            "release": self.release,
            "commit": self.commit,
            "reason": self.reason,
            "rule": self.rule,
            "branch": self.branch,
            "changes": [dict(c) for c in self.changes],
            "repository": repository,
            "reconciler": reconciler,
        }


_SLACK_MARK = {
    "applied": ":white_check_mark:",
    "drift": ":warning:",
    "refused": ":no_entry:",
    "failed": ":x:",
    "recovered": ":large_green_circle:",
    "proposed": ":inbox_tray:",
}


def render(event: Event, fmt: str, reconciler: str, repository: str) -> tuple[bytes, str]:
    """(body, content type) of ``event`` in ``fmt``."""
    doc = event.document(reconciler, repository)
    if fmt == "slack":
        text = f"{_SLACK_MARK.get(event.kind, '')} {event.summary}".strip()
        if event.reason and event.reason not in event.summary:
            text += f"\n> {event.reason.splitlines()[0]}"
        return json.dumps({"text": text}).encode(), "application/json"
    if fmt == "cloudevents":
        envelope = {
            "specversion": "1.0",
            "id": event.id,
            "source": repository or "reconciler",
            "type": f"dev.reconciler.{event.kind}",
            "subject": event.environment or event.catalog,
            "time": event.time,
            "datacontenttype": "application/json",
            "data": doc,
        }
        return json.dumps(envelope).encode(), "application/cloudevents+json"
    return json.dumps(doc).encode(), "application/json"


def sign(secret: bytes, body: bytes, timestamp: str) -> str:
    """The signature header's value: ``sha256=<hex HMAC-SHA256(secret, timestamp.body)>``."""
    signed = timestamp.encode("ascii") + b"." + body
    return "sha256=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()


class BadSignature(ReconcilerError):
    """A notification whose signature or timestamp does not verify: drop it."""


def verify(
    secret: bytes,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    tolerance: float = TOLERANCE,
    now: float | None = None,
) -> None:
    """What a receiver runs on each notification (docs/daemon.md has it for others).

    (1) both headers are there, (2) the signature is the HMAC of ``timestamp.body``,
    compared in constant time, (3) the timestamp is within ``tolerance`` seconds of
    ``now``. A receiver should also refuse an ``X-Reconciler-Delivery`` it has seen
    within the tolerance: together that refuses every replay.

    Raises:
        BadSignature: any step failed.
    """
    if not secret or timestamp is None or signature is None:
        raise BadSignature("unsigned: no secret, timestamp or signature")
    if not timestamp.isascii() or not timestamp.isdigit():
        raise BadSignature(f"{TIMESTAMP_HEADER} is not unix seconds")
    expected = sign(secret, body, timestamp)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode("utf-8", "replace")):
        raise BadSignature("the signature does not match the body and timestamp")
    age = (time.time() if now is None else now) - int(timestamp)
    if abs(age) > tolerance:
        raise BadSignature(f"signed {age:.0f} s ago: outside the {tolerance:.0f} s window")


def shown(url: str) -> str:
    """A receiver as logs name it: scheme and host, nothing that could be a secret."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an invalid URL)"
    return f"{parts.scheme}://{host}{port}/…"


# --------------------------------------------------------------------------- classification


def _changes(outcome: EnvOutcome) -> tuple[dict[str, object], ...]:
    plan = outcome.plan
    return tuple(
        {
            "tag": f"{c.repository}:{c.tag}",
            "action": c.action.value,
            "from": c.from_digest,
            "to": c.to_digest,
            "drift": c.drift.value,
        }
        for c in (plan.changes if plan else ())
    )


def classify(state: DesiredState, o: EnvOutcome) -> Event | None:
    """The event an outcome is, before de-duplication (None: nothing to tell)."""
    env = state.environments.get(o.environment)
    base: dict[str, Any] = {
        "environment": o.environment,
        "catalog": env.catalog if env else None,
        "release": env.release if env else None,
        "commit": state.commit,
    }
    name, at = o.environment, state.commit[:12]
    changes = _changes(o)
    foreign = o.plan is not None and any(c.drift is Drift.FOREIGN for c in o.plan.changes)
    if o.status is Status.APPLIED:
        same_commit = o.receipt is not None and o.receipt.descends_from == state.commit
        if changes and not o.note and (same_commit or foreign):
            tags = ", ".join(f"{c['tag']} ({c['drift']})" for c in changes)
            summary = f"{name}: corrected drift at commit {at}: {tags}"
            return Event("drift", summary, changes=changes, **base)
        moved = len(o.applied.moved) if o.applied else 0
        what = f"{base['catalog']} {base['release']}"
        summary = f"{name}: applied {what} at commit {at} ({moved} tags moved)"
        if o.note:
            summary += f": {o.note}"
        return Event("applied", summary, changes=changes, **base)
    applied_here = o.record is not None and o.record.commit == state.commit
    if o.status is Status.PENDING and changes and o.receipt is None and (applied_here or foreign):
        tags = ", ".join(f"{c['tag']} ({c['drift']})" for c in changes)
        return Event(
            "drift", f"{name}: drift found at commit {at}: {tags}", changes=changes, **base
        )
    if o.status in (Status.REFUSED, Status.FAILED) and o.error is not None:
        if isinstance(o.error, Waiting):
            return None
        kind = "refused" if isinstance(o.error, Refused) else "failed"
        reason = o.error.message.splitlines()[0]
        rule = str(o.error.rule) if isinstance(o.error, Refused) else None
        return Event(kind, f"{name}: {reason}", reason=o.error.message, rule=rule, **base)
    return None


# --------------------------------------------------------------------------- delivery


class ReceiverRefused(Exception):
    """A receiver's address is not allowed (:func:`reconciler.receivers.refusal`)."""


def _guarded_pools(check: Callable[[str], None]) -> dict[str, type[HTTPConnectionPool]]:
    """Connection pools whose connections run ``check`` on the address actually
    connected to, before a byte is sent: DNS may answer differently than when the
    receiver's name was checked (rebinding)."""

    def guarded(sock: socket.socket) -> socket.socket:
        try:
            check(sock.getpeername()[0])
        except BaseException:
            sock.close()
            raise
        return sock

    class Http(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return guarded(super()._new_conn())

    class Https(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return guarded(super()._new_conn())

    class HttpPool(HTTPConnectionPool):
        ConnectionCls = Http

    class HttpsPool(HTTPSConnectionPool):
        ConnectionCls = Https

    return {"http": HttpPool, "https": HttpsPool}


class _ReceiverAdapter(HTTPAdapter):
    """requests' adapter with :func:`_guarded_pools` (through a proxy, the proxy is
    what is connected to; the receiver's name is still checked where it resolves)."""

    def __init__(self, check: Callable[[str], None]) -> None:
        self._check = check  # before super().__init__, which makes the pool manager
        super().__init__()

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = _guarded_pools(self._check)


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    target: NotifyTarget = field(compare=False)
    url: str = field(compare=False)
    body: bytes = field(compare=False, repr=False)
    headers: dict[str, str] = field(compare=False, repr=False)
    kind: str = field(compare=False)
    attempt: int = field(default=0, compare=False)
    secret: bytes | None = field(default=None, compare=False, repr=False)  # signs each try


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # 1 + 5 retries: about a minute in all with the defaults
    base: float = 1.0
    cap: float = 30.0
    timeout: float = 5.0  # per request (connect and read)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(self.cap, max(0.0, retry_after))
        ceiling: float = min(self.cap, self.base * 2.0 ** min(attempt - 1, 30))
        return random.uniform(0.5, 1.0) * ceiling


class Notifier:
    """Queues events for every receiver that wants them; one thread delivers.

    ``outcome`` / ``source`` / ``proposed`` are what the daemon calls; each returns the
    event it queued (None: nothing new to tell). Nothing here raises into a pass.
    ``allow_private``: receivers on loopback and private addresses are allowed (the
    operator's ``--notify-allow-private``); never link-local or metadata ones.
    """

    def __init__(
        self,
        reconciler: str = "",
        repository: str = "",
        retry: RetryPolicy | None = None,
        environ: Mapping[str, str] | None = None,
        max_pending: int = 1000,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
        allow_private: bool = False,
    ) -> None:
        self.reconciler = reconciler or f"reconciler/{__version__}"
        self.repository = repository
        self.retry = retry or RetryPolicy()
        self.environ = environ if environ is not None else os.environ
        self.max_pending = max_pending
        self.clock = clock
        self.allow_private = allow_private
        self.targets: tuple[NotifyTarget, ...] = ()
        self.sent = 0  # deliveries answered 2xx
        self.dropped = 0  # deliveries given up
        self._session = session or requests.Session()
        self._session.headers["User-Agent"] = f"reconciler/{__version__}"
        adapter = _ReceiverAdapter(self._check_address)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._last: dict[str, tuple[str, str]] = {}  # environment -> (kind, reason) told
        self._warned: set[tuple[str, str]] = set()
        self._heap: list[_Delivery] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._busy = 0
        self._closing = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ what to tell

    def configure(self, targets: Sequence[NotifyTarget]) -> None:
        self.targets = tuple(targets)

    def outcome(self, state: DesiredState, o: EnvOutcome) -> Event | None:
        """One environment's outcome of a pass; an event when it is a transition."""
        try:
            return self._outcome(state, o)
        except Exception:  # telling must never fail a pass
            log.exception("notifications: internal error")
            return None

    def _outcome(self, state: DesiredState, o: EnvOutcome) -> Event | None:
        event = classify(state, o)
        if event is None:
            if o.status in (Status.IN_SYNC, Status.APPLIED, Status.SUSPENDED, Status.PENDING):
                return self._recovered(o.environment, state.commit)
            return None
        if event.kind in ("refused", "failed"):
            if not self._changed(o.environment, event.kind, event.reason or "", o.transient):
                return None
        else:
            self._recovered(o.environment, state.commit)
        self._last[o.environment] = (event.kind, event.reason or "")
        self.send(event)
        return event

    def source(self, error: ReconcilerError | None, commit: str = "") -> Event | None:
        """The git source: ``error`` (fetch or load failed) or None (it works again)."""
        try:
            return self._source(error, commit)
        except Exception:
            log.exception("notifications: internal error")
            return None

    def _source(self, error: ReconcilerError | None, commit: str) -> Event | None:
        if error is None:
            return self._recovered(SOURCE, commit)
        transient = isinstance(error, Transient)
        if not self._changed(SOURCE, "failed", error.message, transient):
            return None
        self._last[SOURCE] = ("failed", error.message)
        reason = error.message.splitlines()[0]
        event = Event("failed", f"git source: {reason}", SOURCE, reason=error.message)
        self.send(event)
        return event

    def proposed(self, finding: Any) -> Event | None:
        """A branch the daemon opened (a :class:`reconciler.proposals.discover.Finding`)."""
        try:
            return self._proposed(finding)
        except Exception:
            log.exception("notifications: internal error")
            return None

    def _proposed(self, finding: Any) -> Event | None:
        if finding.kind == "release":
            summary = f"proposed release {finding.release} of {finding.catalog}"
        else:
            summary = f"proposed promoting {finding.environment} to {finding.release}"
        proposal = finding.proposal
        event = Event(
            "proposed",
            f"{summary} on branch {finding.branch}",
            environment=finding.environment,
            catalog=finding.catalog,
            release=finding.release,
            commit=proposal.commit if proposal is not None else None,
            branch=finding.branch,
        )
        self.send(event)
        return event

    def _changed(self, key: str, kind: str, reason: str, transient: bool) -> bool:
        last = self._last.get(key)
        if last is None or last[0] != kind:
            return True
        return not transient and last[1] != reason  # transient reasons carry counts

    def _recovered(self, key: str, commit: str) -> Event | None:
        last = self._last.pop(key, None)
        if last is None or last[0] not in ("refused", "failed"):
            return None
        what = "git source" if key == SOURCE else key
        event = Event(
            "recovered",
            f"{what}: recovered",
            environment=key,
            commit=commit or None,
            reason=f"after: {last[1].splitlines()[0] if last[1] else last[0]}",
        )
        self.send(event)
        return event

    # ------------------------------------------------------------------ sending

    def send(self, event: Event) -> int:
        """Queue ``event`` for every receiver that wants it; how many were queued."""
        queued = 0
        for target in self.targets:
            if event.kind not in target.events:
                continue
            name = target.url or f"${target.url_env}"
            named = [v for v in (target.url_env, target.secret_env) if v is not None]
            if any(not NOTIFY_ENV_RE.match(v) for v in named):  # the schemas refuse it too
                self._warn_once(name, f"notifications naming {named} skipped: {NOTIFY_ENV_HINT}")
                continue
            url = target.url or self.environ.get(target.url_env or "", "")
            if not url:
                self._warn_once(name, f"notifications to ${target.url_env} skipped: it is unset")
                continue
            body, content_type = render(event, target.format, self.reconciler, self.repository)
            headers = {
                "Content-Type": content_type,
                EVENT_HEADER: event.kind,
                DELIVERY_HEADER: event.id,
            }
            secret: bytes | None = None
            if target.secret_env:
                secret = self.environ.get(target.secret_env, "").strip().encode() or None
                if secret is None:
                    self._warn_once(
                        name,
                        f"notifications to {shown(url)} skipped: ${target.secret_env}, the "
                        "secret that signs them, is unset",
                    )
                    continue
            delivery = _Delivery(self.clock(), 0, target, url, body, headers, event.kind)
            delivery.secret = secret
            self._put(delivery)
            queued += 1
        return queued

    def _warn_once(self, name: str, message: str) -> None:
        if (name, message) not in self._warned:
            self._warned.add((name, message))
            log.warning("%s", message)

    def _put(self, delivery: _Delivery) -> None:
        with self._cond:
            if self._closing:
                return
            if len(self._heap) >= self.max_pending:
                dropped = heapq.heappop(self._heap)
                self.dropped += 1
                log.warning(
                    "notification queue full: dropped a %s event to %s",
                    dropped.kind, shown(dropped.url),
                )  # fmt: skip
            delivery.seq = next(self._seq)
            heapq.heappush(self._heap, delivery)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._heap:
                        if self._closing:
                            return
                        self._cond.wait()
                        continue
                    wait = self._heap[0].due - self.clock()
                    if wait <= 0:
                        delivery = heapq.heappop(self._heap)
                        self._busy += 1
                        break
                    if self._closing:  # shutting down: what is not due now is not sent
                        return
                    self._cond.wait(wait)
            try:
                again = self._deliver(delivery)
            except Exception:  # never let the thread die
                log.exception("notification to %s: internal error", shown(delivery.url))
                again = None
            with self._cond:
                self._busy -= 1
                if again is not None:
                    delivery.due, delivery.seq = self.clock() + again, next(self._seq)
                    heapq.heappush(self._heap, delivery)
                self._cond.notify_all()

    def _check_address(self, address: str) -> None:
        why = receivers.refusal(address, self.allow_private)
        if why is not None:
            raise ReceiverRefused(why)

    def _check_receiver(self, url: str) -> None:
        """Every address the receiver's host resolves to must be allowed.

        Raises:
            ReceiverRefused: one is not (or the URL names no host).
            OSError: the name does not resolve (retried like a connection error).
        """
        parts = urlsplit(url)
        if not parts.hostname:
            raise ReceiverRefused("the URL names no host")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        for *_, address in socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM):
            self._check_address(str(address[0]))

    def _deliver(self, d: _Delivery) -> float | None:
        """POST once; the delay before the next attempt, or None when done or given up."""
        d.attempt += 1
        retry_after: float | None = None
        headers = dict(d.headers)
        headers[TIMESTAMP_HEADER] = str(int(time.time()))  # each attempt signs its own time
        if d.secret is not None:
            headers[SIGNATURE_HEADER] = sign(d.secret, d.body, headers[TIMESTAMP_HEADER])
        try:
            self._check_receiver(d.url)
            response = self._session.post(
                d.url,
                data=d.body,
                headers=headers,
                timeout=self.retry.timeout,
                allow_redirects=False,
            )
        except ReceiverRefused as exc:
            self.dropped += 1
            self._warn_once(
                shown(d.url), f"notifications to {shown(d.url)} refused: {exc}; not sent"
            )
            return None
        except (requests.RequestException, OSError) as exc:
            why = exc.__class__.__name__  # its text may quote the URL: never logged
        else:
            status = response.status_code
            response.close()
            if 200 <= status < 300:
                self.sent += 1
                log.debug("notification %s delivered to %s", d.kind, shown(d.url))
                return None
            why = f"HTTP {status}"
            if status not in (408, 429) and status < 500:
                self.dropped += 1
                log.warning(
                    "notification %s to %s refused (%s); not retried",
                    d.kind, shown(d.url), why,
                )  # fmt: skip
                return None
            header = response.headers.get("Retry-After", "")
            retry_after = float(header) if header.isdigit() else None
        if d.attempt >= self.retry.attempts:
            self.dropped += 1
            log.warning(
                "notification %s to %s failed %d times (%s); given up",
                d.kind, shown(d.url), d.attempt, why,
            )  # fmt: skip
            return None
        delay = self.retry.delay(d.attempt, retry_after)
        log.debug("notification %s to %s: %s; retrying in %.1fs", d.kind, shown(d.url), why, delay)
        return delay

    # ------------------------------------------------------------------ stopping

    def flush(self, timeout: float) -> bool:
        """Wait until nothing is queued or being sent (True), at most ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._heap or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is due within ``timeout`` seconds, then stop (the rest is dropped)."""
        self.flush(timeout)
        with self._cond:
            self._closing = True
            left = len(self._heap)
            self._cond.notify_all()
        if left:
            log.warning("stopping with %d notification(s) undelivered", left)
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        self._session.close()
