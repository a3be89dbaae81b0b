"""Prometheus metrics of the daemon: health, drift, passes, requests by reason."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from reconciler.daemon.backoff import Health
from reconciler.registry import RequestStats

log = logging.getLogger("reconciler.daemon")  # not __name__: "__main__" under python -m


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

    def watch_leader(self, lease: str, leading: Callable[[], bool]) -> None:
        """``reconciler_leader{lease}``: 1 while this replica holds the Lease, read at scrape
        time (a pass may be an interval away)."""
        gauge = Gauge(
            "reconciler_leader", "1 while this replica holds the Lease (--leader-elect).",
            ["lease"], registry=self.registry,
        )  # fmt: skip
        gauge.labels(lease).set_function(lambda: 1.0 if leading() else 0.0)

    def set_health(self, environment: str | None, health: Health) -> None:
        """One health series at 1 and the others at 0, so that a query selects the current one
        (``environment`` None: the git source)."""
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
