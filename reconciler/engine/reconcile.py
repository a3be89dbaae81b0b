"""One reconcile pass: judge the commit, then for each environment observe -> plan ->
verify -> apply -> record.

The commit is judged first, for the whole repository, with nothing but git: the pass
then uses only the trusted state the judgement hands out (the candidate's when it passed,
else the last judged commit's, towards which drift is still corrected). Nothing of an
unjudged commit reaches the registry layer.

Environments are isolated: an error in one is caught, classified and reported, and
the others still converge. They run in promotion order (an environment after those it
``requires``) so that one pass can carry a release through a chain. Each pass is
level-based: it re-reads git and the registry and depends on nothing remembered.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime

from reconciler import __version__
from reconciler.desired import Loader
from reconciler.engine.environment import Pass
from reconciler.engine.outcomes import EnvOutcome, Mode, PassResult, Status
from reconciler.errors import Stalled
from reconciler.evidence import records
from reconciler.evidence.anchor import Anchors
from reconciler.evidence.signing import SigningKey
from reconciler.fencing import UNFENCED, Fence
from reconciler.git import GitSource
from reconciler.git.history import History
from reconciler.model import DesiredState
from reconciler.registry import (
    HostConfig,
    Registries,
    RegistrySettings,
)
from reconciler.verify import Refused, Rule
from reconciler.verify.governance import GovernanceJudge
from reconciler.verify.inforce import Judge, Judgement, PolicyInForce
from reconciler.verify.root import TrustRoot, no_trust_root

__all__ = [
    "EnvOutcome",
    "Mode",
    "PassResult",
    "Reconciler",
    "Status",
    "promotion_levels",
    "promotion_order",
    "registry_settings",
]

log = logging.getLogger(__name__)


STATES_KEPT = 16  # earlier commits' desired states kept (the policies in force)
ENV_WORKERS = 8  # environments in flight at once; each host's own limit bounds requests


def registry_settings(policy: PolicyInForce) -> RegistrySettings:
    """The registry layer's settings from ``settings.registries`` of the policy in force.

    ``caFile`` arrives as the bytes read from the commit's tree (``ca_data``), never as
    a path on this machine; unset values take the registry layer's defaults.
    """
    base = HostConfig()
    hosts = {
        host: HostConfig(
            plain_http=r.plain_http,
            ca_pem=r.ca_data,
            concurrency=r.concurrency or base.concurrency,
            requests_per_second=r.requests_per_second,
            connect_timeout=r.connect_timeout or base.connect_timeout,
            read_timeout=r.read_timeout or base.read_timeout,
            retry=replace(base.retry, attempts=r.attempts or base.retry.attempts),
        )
        for host, r in policy.settings.registries.items()
    }
    return RegistrySettings(hosts=hosts)


def utc_now() -> datetime:
    """The real clock: what every deployment uses (tests pass their own to Reconciler)."""
    return datetime.now(UTC)


def reconciler_identity() -> str:
    """Who wrote a record when the deployment does not say: ``reconciler/VERSION@HOSTNAME``."""
    return f"reconciler/{__version__}@{socket.gethostname()}"


class Reconciler:
    """Runs passes against one state repository; holds the caches between passes.

    ``clock`` is the one source of "now" (soak, freeze windows, record times); only a
    caller constructing the Reconciler in-process can replace it: no flag, variable or
    setting of the state repository can, so nobody can move a deployment out of a freeze.
    """

    def __init__(
        self,
        source: GitSource,
        loader: Loader,
        ref: str = "main",
        path: str = "",
        registries: Registries | None = None,
        identity: str | None = None,
        record_key: SigningKey | None = None,
        anchors: Anchors | None = None,
        trust_root: TrustRoot | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.source, self.loader, self.ref, self.path = source, loader, ref, path
        self.clock = clock
        self._registries = registries
        self._owns_registries = registries is None
        self.identity = identity or reconciler_identity()
        self.record_key = record_key
        self._states: dict[str, DesiredState] = {}
        self._states_lock = threading.Lock()
        self.anchors = anchors if anchors is not None else Anchors(source.cache_dir)
        self.record_cache = records.RecordCache(source.cache_dir)
        self.trust_root = trust_root
        self._judge: Judge | None = None
        self._trails: dict[str, tuple[tuple[str, str], ...]] = {}
        self._governance: GovernanceJudge | None = None
        # Asked before every tag move and record write: the daemon's Lease election
        # replaces it (engine never imports daemon).
        self.fence: Fence = UNFENCED

    @property
    def repository(self) -> str:
        """The state repository as anchored: its location and directory."""
        return f"{self.source.display}#{self.path.strip('/')}"

    def judge(self, candidate: DesiredState, persist: bool = False) -> Judgement:
        """Judge ``candidate`` from the policy in force (the local anchor, else the trust
        root); ``persist`` (apply, the daemon) moves the anchor to the new policy.

        Raises:
            TrustRootProblem: nothing judged yet and no trust root (nor first use asked).
            Refused: the anchor or the policy in force cannot be read.
        """
        try:
            base = self.anchors.policy(self.repository)
        except OSError as exc:
            raise Refused(
                Rule.COMMITS, str(exc), "repair or remove it (docs/trust.md, 'Recovery')"
            ) from None
        if base is None and self.trust_root is None:
            raise no_trust_root(self.source.display)
        if self._judge is None:
            root = self.trust_root or TrustRoot("none given (this host's local anchor)")
            self._judge = Judge(self.history, root, self.state_at, self.path)
        judge = self._judge
        judgement = judge.judge(judge.policy(base), candidate)
        commit = judgement.policy.commit
        if commit is not None and judgement.judged:
            self._trails[commit] = judgement.judged
            while len(self._trails) > STATES_KEPT:  # receipts of the recent commits only
                self._trails.pop(next(iter(self._trails)))
        if persist and commit is not None and commit != base:
            self.anchors.set_policy(self.repository, commit)
        return judgement

    def in_force(self, candidate: DesiredState | None = None) -> PolicyInForce:
        """The policy in force after judging ``candidate`` (default: the ref's newest
        commit), without persisting anything: what read-only commands and proposals use.
        """
        return self.judge(candidate or self.load()).policy

    def trail_of(self, judgement: Judgement) -> tuple[tuple[str, str], ...]:
        """How the commit in force came to be: the trail judged now or earlier here."""
        commit = judgement.policy.commit
        return judgement.judged or (self._trails.get(commit, ()) if commit else ())

    def load(self) -> DesiredState:
        """The desired state of the ref's newest commit, fetched first. Not yet judged: only
        :meth:`judge` says whether it may be used.

        Raises:
            GitUnreachable: the remote did not answer.
            GitSourceError: the ref or ``path`` does not exist.
            InvalidState: the commit's desired state does not validate.
        """
        self.source.fetch()
        return self.loader.load(self.source.snapshot(self.ref, self.path))

    def state_at(self, commit: str) -> DesiredState:
        """The desired state of an earlier commit: a commit's state never changes, so the
        few recent ones (the last applied commits the gate judges by) are kept."""
        with self._states_lock:  # held while loading: environments ask at once
            state = self._states.get(commit)
            if state is None:
                state = self.loader.load(self.source.snapshot(commit, self.path))
                self._states[commit] = state
                while len(self._states) > STATES_KEPT:
                    self._states.pop(next(iter(self._states)))
        return state

    @property
    def governance(self) -> GovernanceJudge:
        """The judge of environments' governance, kept with its caches between passes."""
        if self._governance is None:
            self._governance = GovernanceJudge(self.history, self.state_at)
        return self._governance

    @property
    def history(self) -> History:
        """The state repository's commit graph, for the gate's history step and the judge."""
        return History(self.source.repo)

    def registries(self, policy: PolicyInForce) -> Registries:
        """Registry clients for the settings in force; rebuilt when they change."""
        wanted = registry_settings(policy)
        if self._registries is not None and (
            not self._owns_registries or self._registries.settings == wanted
        ):
            return self._registries
        if self._registries is not None:
            self._registries.close()
        self._registries = Registries(wanted)
        return self._registries

    def run(
        self,
        mode: Mode,
        envs: Sequence[str] | None = None,
        state: DesiredState | None = None,
        only_tags: Mapping[str, Collection[str]] | None = None,
        judgement: Judgement | None = None,
    ) -> PassResult:
        """One pass over ``envs`` (default all) in promotion order.

        ``state`` is the candidate (default: the ref's newest commit), judged first
        unless ``judgement`` (of that candidate) is given. Only ``apply`` persists the
        judgement. When the candidate is refused, every environment says so, and drift is
        corrected towards the commit in force.

        ``only_tags`` narrows the observation of the environments it names to those
        tags (a registry event said they changed): the others are taken to be as
        desired, and nothing is pruned. The gate still runs in full before any move.
        """
        candidate = state or self.load()
        if judgement is None or judgement.candidate != candidate.commit:
            judgement = self.judge(candidate, persist=mode is Mode.APPLY)
        if judgement.policy.state is None:  # first contact refused: nothing is trusted
            refused = judgement.refusal or Refused(Rule.COMMITS, "nothing is in force")
            names = promotion_order(candidate, envs)
            nothing = [EnvOutcome(n, Status.REFUSED, error=refused) for n in names]
            return PassResult(candidate, nothing, judgement, candidate)
        trusted = judgement.policy.state
        names, unjudged = _selection(trusted, candidate, envs)
        run = Pass(self, trusted, judgement, mode, only_tags or {})
        outcomes: dict[str, EnvOutcome] = {}
        with (
            ThreadPoolExecutor(max_workers=16, thread_name_prefix="observe") as pool,
            ThreadPoolExecutor(max_workers=ENV_WORKERS, thread_name_prefix="env") as envs_pool,
        ):
            run.pool = pool
            # Environments of one level require nothing of each other: run them together;
            # a level starts when the ones it may require have finished.
            for level in promotion_levels(trusted, names):
                outcomes.update(zip(level, envs_pool.map(run.environment, level), strict=True))
        result = [outcomes[name] for name in names]
        if not judgement.passed:
            refusal = judgement.refusal or Refused(Rule.COMMITS, "the commit is not in force")
            result = [_held_back(o, refusal, judgement) for o in result]
            result += [EnvOutcome(n, Status.REFUSED, error=refusal) for n in unjudged]
        proposed = None if judgement.passed else candidate
        return PassResult(trusted, result, judgement, proposed)

    def close(self) -> None:
        """Close the registry clients this reconciler made (a caller's are the caller's)."""
        if self._registries is not None and self._owns_registries:
            self._registries.close()


def _selection(
    trusted: DesiredState, candidate: DesiredState, envs: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    """(the environments to run, of the commit in force, in promotion order; those only
    the newest commit names, which are refused with it). Unknown to both: Stalled."""
    known = set(trusted.environments) | set(candidate.environments)
    _known(envs or (), known)
    wanted = set(envs) if envs else known
    names = [n for n in promotion_order(trusted) if n in wanted]
    return names, sorted(n for n in wanted if n not in trusted.environments)


def _held_back(outcome: EnvOutcome, refusal: Refused, judgement: Judgement) -> EnvOutcome:
    """An environment's outcome of a pass towards the commit in force, while the newest
    commit is refused: the refusal (what a person acts on), and what happened at the
    commit in force meanwhile (drift corrected, or that environment's own problem)."""
    commit = (judgement.policy.commit or "")[:12]
    moved = outcome.applied.moved if outcome.applied else ()
    if moved:
        meanwhile = f"drift corrected towards commit {commit}, the commit in force"
        meanwhile += f" ({len(moved)} tags moved)"
    elif outcome.error is not None:
        meanwhile = f"at the commit in force {commit}: {outcome.error.message}"
    else:
        meanwhile = f"the commit in force stays {commit}"
    outcome.note = f"commit {judgement.candidate[:12]} is refused; {meanwhile}"
    if outcome.status is not Status.FAILED:  # a failure is retried, with its own error
        outcome.status, outcome.error = Status.REFUSED, refusal
    return outcome


def promotion_order(state: DesiredState, only: Sequence[str] | None = None) -> list[str]:
    """Environments after the ones they require (the graph is acyclic: validated)."""
    done: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        for required in state.environments[name].requires:
            visit(required)
        done.append(name)

    for name in sorted(state.environments):
        visit(name)
    if only:
        _known(only, state.environments)
        return [n for n in done if n in only]
    return done


def _known(names: Iterable[str], known: Collection[str]) -> None:
    """Raises: Stalled naming the environments of ``names`` that are not ``known``."""
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise Stalled(
            f"unknown environment{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}",
            f"--env takes one of: {', '.join(sorted(known))}",
        )


def promotion_levels(state: DesiredState, names: Sequence[str]) -> list[list[str]]:
    """``names`` grouped by depth in the ``requires`` graph, shallowest first."""
    depth: dict[str, int] = {}

    def of(name: str) -> int:
        if name not in depth:
            required = state.environments[name].requires
            depth[name] = 1 + max((of(r) for r in required), default=-1)
        return depth[name]

    levels: dict[int, list[str]] = {}
    for name in names:
        levels.setdefault(of(name), []).append(name)
    return [levels[d] for d in sorted(levels)]
