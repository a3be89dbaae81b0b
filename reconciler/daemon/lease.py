"""Leader election on a Kubernetes Lease, in process, with fencing (``run --leader-elect``).

client-go's ``leaderelection`` rules on a ``coordination.k8s.io/v1`` Lease, every update
conditional on its ``resourceVersion`` (a stale one is a 409: two candidates cannot both
win):

- A candidate tries every ``retry_period`` to acquire the Lease: when it does not exist
  (create), when it has no holder, or when its record has not changed for
  ``leaseDurationSeconds`` as observed on this host's monotonic clock (no clock skew
  between replicas is trusted). Each acquisition adds one to ``leaseTransitions``.
- The leader renews every ``retry_period``. It leads only while its last successful
  renewal started less than ``renew_deadline`` ago; after that it steps down, whether or
  not it can reach the API server. The renew deadline is shorter than the lease
  duration, so the old leader has stopped before any other candidate may take over.

Fencing: :meth:`Elector.check` is the engine's :class:`~reconciler.fencing.Fence`, asked
before every tag move and record write. It answers the term (the Lease, this holder,
and ``leaseTransitions``: the fencing token records carry) or raises
:class:`~reconciler.errors.LeaseLost`, from the clock alone, so a process that was
stopped (SIGSTOP, a long GC pause, a frozen VM) finds out before its next write.

Shards: each replica writes its ``--env`` list into its Lease's annotation
:data:`ENVIRONMENTS`. A starting replica lists the Leases of the namespace and refuses
to start when another Lease's list overlaps its own (no list means every environment);
a candidate checks again before each acquisition.

The ``kubernetes`` client is imported only here, and this module only by ``run
--leader-elect``: the other commands start as fast as before.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from reconciler.errors import LeaseLost, Stalled
from reconciler.fencing import Term

log = logging.getLogger("reconciler.daemon")  # not __name__: "__main__" under python -m

ENVIRONMENTS = "reconciler.dev/environments"  # a Lease's annotation: its shard's --env list
ALL = "*"  # the annotation of a replica without --env
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def default_identity() -> str:
    """client-go's habit: unique per process, readable in ``kubectl get lease``."""
    return f"{socket.gethostname()}_{os.getpid()}"


def default_namespace() -> str:
    """The pod's own namespace (its service account's), else ``default``."""
    try:
        return NAMESPACE_FILE.read_text().strip() or "default"
    except OSError:
        return "default"


@dataclass(frozen=True)
class LeaseConfig:
    """``--lease-*`` and friends, with client-go's defaults (15 s / 10 s / 2 s)."""

    name: str = "reconciler"
    namespace: str = "default"
    identity: str = ""
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    kubeconfig: Path | None = None  # None: in-cluster configuration
    environments: tuple[str, ...] | None = None  # the shard's --env list; None: all

    def check(self) -> None:
        """client-go's own sanity rules; raises Stalled naming the flags to change."""
        if not self.lease_duration > self.renew_deadline > self.retry_period > 0:
            raise Stalled(
                f"--lease-duration ({self.lease_duration:g}) must exceed --renew-deadline "
                f"({self.renew_deadline:g}), which must exceed --retry-period "
                f"({self.retry_period:g})",
                "keep client-go's proportions, e.g. 15 / 10 / 2 seconds",
            )


def _microtime(now: datetime) -> datetime:
    # A MicroTime needs its six fraction digits; isoformat() drops a zero fraction.
    return now if now.microsecond else now.replace(microsecond=1)


class KubeLeases:
    """The Lease API through the official ``kubernetes`` client; every error arrives as
    the client raises it (``ApiException`` with a status, or a connection error)."""

    def __init__(self, config: LeaseConfig) -> None:
        from kubernetes import client
        from kubernetes import config as kubeconfig

        configuration = client.Configuration()
        try:
            load: Callable[..., None] = (
                partial(kubeconfig.load_kube_config, config_file=str(config.kubeconfig))
                if config.kubeconfig is not None
                else kubeconfig.load_incluster_config
            )
            load(client_configuration=configuration)
        except (kubeconfig.ConfigException, OSError) as exc:
            raise Stalled(
                f"cannot configure the Kubernetes client for --leader-elect: {exc}",
                "run in a pod with a service account, or pass --kubeconfig FILE",
            ) from None
        configuration.retries = 0  # the election loop is the retry
        self.client = client
        self.api = client.CoordinationV1Api(client.ApiClient(configuration))
        self.namespace = config.namespace
        self.timeout = max(config.retry_period, 1.0)

    def get(self, name: str) -> Any | None:
        """The Lease, or None when it does not exist."""
        try:
            return self.api.read_namespaced_lease(
                name, self.namespace, _request_timeout=self.timeout
            )
        except self.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, name: str, spec: dict[str, Any], annotations: dict[str, str]) -> Any:
        """Create the Lease (409 when another candidate created it first)."""
        body = self.client.V1Lease(
            metadata=self.client.V1ObjectMeta(name=name, annotations=annotations),
            spec=self.client.V1LeaseSpec(**spec),
        )
        return self.api.create_namespaced_lease(self.namespace, body, _request_timeout=self.timeout)

    def replace(self, lease: Any) -> Any:
        """Update the Lease as read, conditional on its resourceVersion (409 when stale)."""
        return self.api.replace_namespaced_lease(
            lease.metadata.name, self.namespace, lease, _request_timeout=self.timeout
        )

    def shards(self) -> dict[str, tuple[str, ...] | None]:
        """Every Lease of the namespace that a reconciler holds: name -> its environments."""
        leases = self.api.list_namespaced_lease(self.namespace, _request_timeout=self.timeout)
        found: dict[str, tuple[str, ...] | None] = {}
        for lease in leases.items:
            meta = lease.metadata
            value = (meta.annotations or {}).get(ENVIRONMENTS) if meta is not None else None
            if meta is not None and meta.name and value is not None:
                found[meta.name] = parse_environments(value)
        return found


def parse_environments(value: str) -> tuple[str, ...] | None:
    """The annotation's value: ``*`` (every environment) or a JSON list of names."""
    if value == ALL:
        return None
    try:
        names = json.loads(value)
    except ValueError:
        return None  # unreadable: assume the widest claim
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return tuple(names)


def overlap(mine: Sequence[str] | None, theirs: Sequence[str] | None) -> list[str]:
    """The environments two shards both claim (``["*"]`` when either claims all)."""
    if mine is None or theirs is None:
        return [ALL]
    return sorted(set(mine) & set(theirs))


class Elector:
    """Holds (or waits for) one Lease in a thread of its own; the engine's fence.

    Transitions are logged here (``leading``, ``standby``, ``lease-lost``); the daemon
    asks :meth:`term` before each pass and the metrics ask it at every scrape.
    """

    def __init__(
        self, config: LeaseConfig, api: KubeLeases, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config, self.api, self.clock = config, api, clock
        self.identity = config.identity or default_identity()
        self._lock = threading.Lock()
        self._term: Term | None = None  # while leading
        self._renewed = 0.0  # monotonic start of the last successful renewal
        self._observed: tuple[object, ...] | None = None  # the Lease record last seen
        self._observed_at = 0.0
        self._holder = ""  # who holds it, as last seen
        self._standby: str | None = None  # the holder last logged as leading elsewhere
        self._unreachable: str | None = None  # the API error while it lasts (logged once)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the fence

    def check(self, before: str) -> Term | None:
        """The term to write under, or LeaseLost: from the clock, never from the network."""
        term = self.term()
        if term is None:
            raise LeaseLost(
                f"this replica ({self.identity}) does not hold the Lease "
                f"{self.config.namespace}/{self.config.name}: stopped before {before}",
                "the leader applies; this pass re-plans when this replica leads again",
            )
        return term

    def term(self) -> Term | None:
        """The current term while leading (renewed within the renew deadline), else None."""
        with self._lock:
            term = self._term
            if term is not None and self.clock() - self._renewed >= self.config.renew_deadline:
                self._lost_locked("no renewal within the renew deadline")
                return None
            return term

    @property
    def holder(self) -> str:
        """Who holds the Lease as last seen ('' when nobody or unknown)."""
        return self._holder

    # -- the loop

    def start(self) -> None:
        """Refuse an overlapping shard, then run the election in a daemon thread.

        Raises:
            Stalled: another reconciler Lease of the namespace names one of our environments.
        """
        try:
            self._check_shards()
        except Stalled:
            raise
        except Exception as exc:  # the API is not there yet: the loop checks again
            if getattr(exc, "status", None) in (401, 403):
                raise Stalled(
                    f"the API server refuses this replica the Leases of namespace "
                    f"{self.config.namespace}: {_describe(exc)}",
                    "bind the Role of examples/kubernetes/rbac.yaml to its service account "
                    "(or user), in the namespace of --lease-namespace",
                ) from None
            log.warning(
                "cannot read the Leases of namespace %s yet (%s); checking before acquiring",
                self.config.namespace, _describe(exc), extra={"event": "lease-unreachable"},
            )  # fmt: skip
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and release the Lease when leading, so another takes over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.config.retry_period + 5)
        term = self.term()
        if term is None:
            return
        with self._lock:
            self._term = None
        try:
            lease = self.api.get(self.config.name)
            if lease is not None and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = None
                lease.spec.renew_time = None
                lease.spec.acquire_time = None
                lease.spec.lease_duration_seconds = 1
                self.api.replace(lease)
                log.info("released the Lease %s", self.config.name, extra={"event": "released"})
        except Exception as exc:  # it expires by itself
            log.info("could not release the Lease %s: %s", self.config.name, _describe(exc))

    def _run(self) -> None:
        while not self._stop.is_set():
            started = self.clock()
            try:
                self._attempt(started)
                if self._unreachable is not None:
                    log.info("the API server answers again", extra={"event": "lease-reachable"})
                    self._unreachable = None
            except Exception as exc:  # the API server is down, slow, or refuses; a shard clash
                said = _describe(exc)
                if said != self._unreachable:
                    clash = isinstance(exc, Stalled)
                    log.log(
                        logging.ERROR if clash else logging.WARNING, "Lease %s: %s",
                        self.config.name, said,
                        extra={"event": "shard-conflict" if clash else "lease-unreachable"},
                    )  # fmt: skip
                    self._unreachable = said
            self.term()  # steps down when the renew deadline passed
            self._stop.wait(max(0.0, self.config.retry_period - (self.clock() - started)))

    def _attempt(self, started: float) -> None:
        """One try to acquire or renew (client-go's ``tryAcquireOrRenew``)."""
        cfg = self.config
        now = _microtime(datetime.now(UTC))
        lease = self.api.get(cfg.name)
        annotations = {ENVIRONMENTS: environments_annotation(cfg.environments)}
        if lease is None:
            self._check_shards()
            spec = {
                "holder_identity": self.identity,
                "lease_duration_seconds": max(1, math.ceil(cfg.lease_duration)),
                "acquire_time": now,
                "renew_time": now,
                "lease_transitions": 0,
            }
            written = self._write(lambda: self.api.create(cfg.name, spec, annotations))
            if written is not None:
                self._won(started, 0, written)
            return
        spec = lease.spec
        holder = spec.holder_identity or ""
        record = (holder, spec.renew_time, spec.acquire_time, spec.lease_transitions)
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()
        self._holder = holder
        leading = self.term() is not None
        duration = spec.lease_duration_seconds or cfg.lease_duration
        if holder and holder != self.identity and self.clock() < self._observed_at + duration:
            if leading:
                self._lost(f"{holder} holds it now")
            if holder != self._standby:
                log.info(
                    "standing by: %s holds the Lease %s/%s", holder, cfg.namespace, cfg.name,
                    extra={"event": "standby"},
                )  # fmt: skip
                self._standby = holder
            return
        if leading and holder == self.identity:
            token = spec.lease_transitions or 0
        else:
            self._check_shards()
            token = (spec.lease_transitions or 0) + 1
            spec.acquire_time = now
        spec.holder_identity = self.identity
        spec.renew_time = now
        spec.lease_duration_seconds = max(1, math.ceil(cfg.lease_duration))
        spec.lease_transitions = token
        lease.metadata.annotations = {**(lease.metadata.annotations or {}), **annotations}
        written = self._write(lambda: self.api.replace(lease))
        if written is not None:
            self._won(started, token, written)
        elif leading:
            self._lost("the Lease changed under this replica (409 Conflict)")

    def _write(self, call: Callable[[], Any]) -> Any | None:
        """The Lease as written; None on 409 (another candidate was first)."""
        from kubernetes.client import ApiException

        try:
            result = call()
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise
        spec = result.spec
        self._observed = (
            spec.holder_identity or "", spec.renew_time, spec.acquire_time, spec.lease_transitions
        )  # fmt: skip
        self._observed_at = self.clock()
        self._holder = self.identity
        return result

    def _won(self, started: float, token: int, lease: Any) -> None:
        uid = str(getattr(lease.metadata, "uid", None) or "")
        with self._lock:
            was = self._term
            self._term = Term(self.config.name, self.identity, token, uid)
            self._renewed = started
        if was is None:
            log.info(
                "leading: acquired the Lease %s/%s as %s (term %d)",
                self.config.namespace, self.config.name, self.identity, token,
                extra={"event": "leading"},
            )  # fmt: skip
            self._standby = None

    def _lost(self, why: str) -> None:
        with self._lock:
            self._lost_locked(why)

    def _lost_locked(self, why: str) -> None:
        if self._term is None:
            return
        token = self._term.token
        self._term = None
        log.warning(
            "lost the Lease %s/%s (term %d): %s; standing by, no further writes",
            self.config.namespace, self.config.name, token, why, extra={"event": "lease-lost"},
        )  # fmt: skip

    def _check_shards(self) -> None:
        """Stalled when another reconciler Lease of the namespace claims one of ours."""
        mine = self.config.environments
        for name, theirs in sorted(self.api.shards().items()):
            if name == self.config.name:
                continue
            if overlap(mine, theirs):
                raise Stalled(
                    f"the Lease {self.config.namespace}/{name} of another shard claims "
                    f"{_claim(theirs)}, and this replica (Lease {self.config.name}) claims "
                    f"{_claim(mine)}: an environment belongs to one shard only",
                    "give each shard a disjoint --env list and its own --lease-name; delete "
                    f"a retired shard's Lease (kubectl delete lease {name})",
                )


def _claim(environments: Sequence[str] | None) -> str:
    return "every environment" if environments is None else ", ".join(environments)


def environments_annotation(environments: Sequence[str] | None) -> str:
    """The annotation a shard writes on its Lease: ``*`` or a sorted JSON list."""
    return ALL if environments is None else json.dumps(sorted(environments))


def _describe(exc: Exception) -> str:
    """An API error in one line: status and reason, never a body or a token."""
    if isinstance(exc, Stalled):
        return exc.message
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status:
        return f"the API server answered {status} {getattr(exc, 'reason', '') or ''}".strip()
    return f"cannot reach the API server ({exc.__class__.__name__})"
