"""What `reconciler run` takes: its flags, the listen address, the webhook secret,
and the limits of its HTTP server.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.daemon.backoff import BackoffPolicy
from reconciler.daemon.lease import LeaseConfig, default_identity, default_namespace
from reconciler.daemon.messages import hmac_sha256
from reconciler.errors import Stalled
from reconciler.receivers import ALLOW_PRIVATE_FLAG

log = logging.getLogger("reconciler.daemon")  # not __name__: "__main__" under python -m


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


# --------------------------------------------------------------------------- webhook


def webhook_authorized(
    secret: bytes,
    body: bytes,
    signature: str | None,
    token: str | None,
    gitea: str | None = None,
) -> bool:
    """GitHub's ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``, else
    Gitea's ``X-Gitea-Signature: <the same hex, bare>``, else GitLab's ``X-Gitlab-Token:
    <secret>``, compared in constant time. No proof: False."""
    if not secret:
        return False
    if signature is not None:
        expected = hmac_sha256(secret, body)
        return hmac.compare_digest(expected.encode(), signature.strip().encode("latin-1"))
    if gitea is not None:
        bare = hmac_sha256(secret, body).removeprefix("sha256=")
        return hmac.compare_digest(bare.encode(), gitea.strip().encode("latin-1"))
    if token is not None:
        return hmac.compare_digest(secret, token.encode("latin-1"))
    return False


def read_secret(path: Path | None) -> bytes | None:
    """The webhook secret from ``--webhook-secret-file`` or the environment; never logged."""
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
    """``--listen`` reachable only from this host: otherwise the daemon warns that its
    metrics and readiness are reachable from the network."""
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def number(low: float, high: float | None = None, *, above: bool = False) -> Callable[[str], float]:
    """An argparse type: a number >= ``low`` (> with ``above``) and <= ``high``."""

    def parse(value: str) -> float:
        try:
            found = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
        if found < low or (above and found == low) or (high is not None and found > high):
            bound = f"> {low:g}" if above else f">= {low:g}"
            if high is not None:
                bound = f"between {low:g} and {high:g}"
            raise argparse.ArgumentTypeError(f"{value!r}: must be {bound}")
        return found

    return parse


_positive = number(0, above=True)
_fraction = number(0, 1)


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
    election = parser.add_argument_group(
        "leader election", "one active replica per Lease (docs/daemon.md, 'More than one machine')"
    )
    election.add_argument(
        "--leader-elect", action="store_true",
        help="apply only while holding a coordination.k8s.io Lease; stand by otherwise",
    )  # fmt: skip
    election.add_argument(
        "--lease-name", default=LeaseConfig.name, metavar="NAME",
        help="the Lease (one per shard, e.g. reconciler-prod; default %(default)s)",
    )  # fmt: skip
    election.add_argument(
        "--lease-namespace", metavar="NS",
        help="the Lease's namespace (default: the pod's namespace, else default)",
    )  # fmt: skip
    election.add_argument(
        "--identity", metavar="ID", help="this replica's name in the Lease (default HOST_PID)"
    )
    for flag, default, what in (
        ("--lease-duration", LeaseConfig.lease_duration, "others wait this long to take over"),
        ("--renew-deadline", LeaseConfig.renew_deadline, "the leader stops writing after this"),
        ("--retry-period", LeaseConfig.retry_period, "between tries to acquire or renew"),
    ):
        election.add_argument(
            flag, type=_positive, default=default, metavar="S",
            help=f"{what} (default %(default)s s, as client-go)",
        )  # fmt: skip
    election.add_argument(
        "--kubeconfig", type=Path, metavar="PATH",
        help="a kubeconfig for the API server (default: the in-cluster service account)",
    )  # fmt: skip


@dataclass(frozen=True)
class DaemonConfig:
    """Everything ``reconciler run`` was told, parsed and read once at start: the daemon
    reads nothing else (no argparse Namespace past this point)."""

    interval: float
    jitter: float
    listen: tuple[str, int]
    drift_interval: float
    backoff: BackoffPolicy
    envs: tuple[str, ...] | None = None
    active_file: Path | None = None
    discover_interval: float | None = None  # None: the drift interval
    secret: bytes | None = field(default=None, repr=False)  # /hooks/git; never logged
    registry_token: bytes | None = field(default=None, repr=False)  # /hooks/registry
    log_format: str = "text"
    verbose: bool = False
    notify_allow_private: bool = False
    lease: LeaseConfig | None = None  # --leader-elect

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DaemonConfig:
        """Raises: Stalled when the webhook secret file cannot be read."""
        return cls(
            interval=args.interval,
            jitter=args.jitter,
            listen=args.listen,
            drift_interval=args.drift_interval,
            backoff=BackoffPolicy(args.backoff_base, args.backoff_cap, args.stalled_retry),
            envs=tuple(args.env) if args.env else None,
            active_file=args.active_file,
            discover_interval=getattr(args, "discover_interval", None),
            secret=read_secret(args.webhook_secret_file),
            registry_token=os.environ.get(TOKEN_ENV, "").strip().encode() or None,
            log_format=args.log_format,
            verbose=bool(getattr(args, "verbose", False)),
            notify_allow_private=bool(getattr(args, "notify_allow_private", False)),
            lease=lease_config(args),
        )


def lease_config(args: argparse.Namespace) -> LeaseConfig | None:
    """The election's settings when ``--leader-elect`` is given.

    Raises: Stalled when the durations are out of client-go's order."""
    if not getattr(args, "leader_elect", False):
        return None
    config = LeaseConfig(
        name=args.lease_name,
        namespace=args.lease_namespace or default_namespace(),
        identity=args.identity or default_identity(),
        lease_duration=args.lease_duration,
        renew_deadline=args.renew_deadline,
        retry_period=args.retry_period,
        kubeconfig=args.kubeconfig,
        environments=tuple(sorted(set(args.env))) if args.env else None,
    )
    config.check()
    return config
