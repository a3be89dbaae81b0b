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

import heapq
import itertools
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from reconciler import __version__, receivers
from reconciler.daemon.messages import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    SOURCE,
    TIMESTAMP_HEADER,
    BadSignature,
    Notification,
    classify,
    render,
    shown,
    sign,
    verify,
)
from reconciler.engine.reconcile import EnvOutcome, Status
from reconciler.errors import ReconcilerError, Transient
from reconciler.model import (
    NOTIFY_ENV_HINT,
    NOTIFY_ENV_RE,
    DesiredState,
    NotificationKind,
    NotifyTarget,
)
from reconciler.proposals.discover import FindingKind

__all__ = [  # what receivers and tests use, from one place
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "BadSignature",
    "Notification",
    "Notifier",
    "RetryPolicy",
    "sign",
    "verify",
]

log = logging.getLogger(__name__)


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
    """How long a notification is retried before it is dropped (seconds)."""

    attempts: int = 6  # 1 + 5 retries: about a minute in all with the defaults
    base: float = 1.0
    cap: float = 30.0
    timeout: float = 5.0  # per request (connect and read)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before the next attempt: the receiver's ``Retry-After`` when it sent one, else
        exponential with jitter; never more than ``cap``."""
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
        self._last: dict[
            str, tuple[NotificationKind, str]
        ] = {}  # environment -> (kind, reason) told
        self._warned: set[tuple[str, str]] = set()
        self._heap: list[_Delivery] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._busy = 0
        self._closing = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ what to tell

    def configure(self, targets: Sequence[NotifyTarget]) -> None:
        """The receivers of the policy in force (``settings.notify``); set every pass, so a
        signed change of receivers takes effect without a restart."""
        self.targets = tuple(targets)

    def outcome(self, state: DesiredState, o: EnvOutcome) -> Notification | None:
        """One environment's outcome of a pass; an event when it is a transition."""
        try:
            return self._outcome(state, o)
        except Exception:  # telling must never fail a pass
            log.exception("notifications: internal error")
            return None

    def _outcome(self, state: DesiredState, o: EnvOutcome) -> Notification | None:
        event = classify(state, o)
        if event is None:
            if o.status in (Status.IN_SYNC, Status.APPLIED, Status.SUSPENDED, Status.PENDING):
                return self._recovered(o.environment, state.commit)
            return None
        if event.kind in (NotificationKind.REFUSED, NotificationKind.FAILED):
            if not self._changed(o.environment, event.kind, event.reason or "", o.transient):
                return None
        else:
            self._recovered(o.environment, state.commit)
        self._last[o.environment] = (event.kind, event.reason or "")
        self.send(event)
        return event

    def source(self, error: ReconcilerError | None, commit: str = "") -> Notification | None:
        """The git source: ``error`` (fetch or load failed) or None (it works again)."""
        try:
            return self._source(error, commit)
        except Exception:
            log.exception("notifications: internal error")
            return None

    def _source(self, error: ReconcilerError | None, commit: str) -> Notification | None:
        if error is None:
            return self._recovered(SOURCE, commit)
        transient = isinstance(error, Transient)
        if not self._changed(SOURCE, NotificationKind.FAILED, error.message, transient):
            return None
        self._last[SOURCE] = (NotificationKind.FAILED, error.message)
        reason = error.message.splitlines()[0]
        event = Notification(
            NotificationKind.FAILED, f"git source: {reason}", SOURCE, reason=error.message
        )
        self.send(event)
        return event

    def proposed(self, finding: Any) -> Notification | None:
        """A branch the daemon opened (a :class:`reconciler.proposals.discover.Finding`)."""
        try:
            return self._proposed(finding)
        except Exception:
            log.exception("notifications: internal error")
            return None

    def _proposed(self, finding: Any) -> Notification | None:
        if finding.kind is FindingKind.RELEASE:
            summary = f"proposed release {finding.release} of {finding.catalog}"
        else:
            summary = f"proposed promoting {finding.environment} to {finding.release}"
        proposal = finding.proposal
        event = Notification(
            NotificationKind.PROPOSED,
            f"{summary} on branch {finding.branch}",
            environment=finding.environment,
            catalog=finding.catalog,
            release=finding.release,
            commit=proposal.commit if proposal is not None else None,
            branch=finding.branch,
        )
        self.send(event)
        return event

    def _changed(self, key: str, kind: NotificationKind, reason: str, transient: bool) -> bool:
        last = self._last.get(key)
        if last is None or last[0] != kind:
            return True
        return not transient and last[1] != reason  # transient reasons carry counts

    def _recovered(self, key: str, commit: str) -> Notification | None:
        last = self._last.pop(key, None)
        if last is None or last[0] not in ("refused", "failed"):
            return None
        what = "git source" if key == SOURCE else key
        event = Notification(
            NotificationKind.RECOVERED,
            f"{what}: recovered",
            environment=key,
            commit=commit or None,
            reason=f"after: {last[1].splitlines()[0] if last[1] else last[0]}",
        )
        self.send(event)
        return event

    # ------------------------------------------------------------------ sending

    def send(self, event: Notification) -> int:
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
