"""Faults between the client and a real registry: bounded, classified, no partial tags."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli.main import main
from reconciler.errors import Stalled, Transient
from reconciler.registry import (
    DigestMismatch,
    HostConfig,
    HttpRegistry,
    RegistryUnavailable,
    RetryPolicy,
    copy_artifact,
)
from tests.support import recordkeys
from tests.support.registry_servers import (
    Fault,
    FaultProxy,
    RegistryFactory,
    RegistryServer,
    build_image,
    build_index,
    push,
)
from tests.support.staterepo import StateRepo

pytestmark = pytest.mark.integration

ATTEMPTS = 3


def fresh(prefix: str = "t") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:10]}"


def config(**overrides: object) -> HostConfig:
    values: dict[str, object] = {
        "plain_http": True,
        "connect_timeout": 1.0,
        "read_timeout": 0.5,
        "retry": RetryPolicy(attempts=ATTEMPTS, base=0.01, cap=0.05, retry_after_cap=2.0),
    }
    values.update(overrides)
    return HostConfig(**values)  # type: ignore[arg-type]


class Sleeps(list[float]):
    """Records the client's back-off sleeps instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def direct(plain_registry: RegistryServer) -> Iterator[HttpRegistry]:
    client = HttpRegistry(plain_registry.host, config())
    yield client
    client.close()


@pytest.fixture
def proxied(fault_proxy: FaultProxy, sleeps: Sleeps) -> Iterator[HttpRegistry]:
    client = HttpRegistry(fault_proxy.host, config(), sleep=sleeps)
    yield client
    client.close()


def test_a_500_is_retried_and_then_succeeds(
    direct: HttpRegistry, proxied: HttpRegistry, fault_proxy: FaultProxy, sleeps: Sleeps
) -> None:
    repo = fresh()
    image = build_image("retry")
    push(direct, repo, image, tag="v1")
    fault_proxy.add(Fault("status", times=2, method="HEAD", path="/manifests/v1"))
    assert proxied.resolve(repo, "v1") == image.digest
    assert fault_proxy.count("HEAD", "/manifests/v1") == 3
    assert len(sleeps) == 2 and all(0 <= s <= 0.05 for s in sleeps)


def test_a_persistent_500_is_a_transient_error_after_bounded_attempts(
    proxied: HttpRegistry, fault_proxy: FaultProxy
) -> None:
    fault_proxy.add(Fault("status", times=-1))
    with pytest.raises(RegistryUnavailable, match=f"HTTP 500 after {ATTEMPTS} attempts") as e:
        proxied.resolve(fresh(), "v1")
    assert isinstance(e.value, Transient)
    assert fault_proxy.count() == ATTEMPTS
    assert proxied.stats.total(status="500") == ATTEMPTS


def test_a_429_honours_retry_after(
    direct: HttpRegistry, proxied: HttpRegistry, fault_proxy: FaultProxy, sleeps: Sleeps
) -> None:
    repo = fresh()
    image = build_image("429")
    push(direct, repo, image, tag="v1")
    fault_proxy.add(Fault("status", status=429, headers={"Retry-After": "1"}))
    assert proxied.resolve(repo, "v1") == image.digest
    assert sleeps == [1.0]


def test_a_huge_retry_after_is_capped(
    proxied: HttpRegistry, fault_proxy: FaultProxy, sleeps: Sleeps
) -> None:
    fault_proxy.add(Fault("status", status=503, headers={"Retry-After": "3600"}, times=-1))
    with pytest.raises(RegistryUnavailable, match="HTTP 503"):
        proxied.list_tags(fresh())
    assert sleeps == [2.0] * (ATTEMPTS - 1)


def test_4xx_is_permanent_and_not_retried(proxied: HttpRegistry, fault_proxy: FaultProxy) -> None:
    fault_proxy.add(Fault("status", status=400, times=-1))
    with pytest.raises(Stalled):
        proxied.resolve(fresh(), "v1")
    assert fault_proxy.count() == 1


def test_a_slow_registry_times_out_within_the_bound(
    proxied: HttpRegistry, fault_proxy: FaultProxy
) -> None:
    fault_proxy.add(Fault("delay", delay=3.0, times=-1))
    with pytest.raises(RegistryUnavailable, match="timed out") as e:
        proxied.resolve(fresh(), "v1")
    assert isinstance(e.value, Transient)
    assert fault_proxy.count() == ATTEMPTS


def test_connection_resets_are_retried_then_reported(
    direct: HttpRegistry, proxied: HttpRegistry, fault_proxy: FaultProxy
) -> None:
    repo = fresh()
    image = build_image("reset")
    push(direct, repo, image, tag="v1")
    fault_proxy.add(Fault("reset", times=1))
    assert proxied.resolve(repo, "v1") == image.digest
    fault_proxy.add(Fault("reset", times=-1))
    with pytest.raises(RegistryUnavailable, match="after 3 attempts"):
        proxied.resolve(repo, "v1")


def test_a_corrupted_manifest_is_refused_as_a_digest_mismatch(
    direct: HttpRegistry, proxied: HttpRegistry, fault_proxy: FaultProxy
) -> None:
    repo = fresh()
    image = build_image("corrupt")
    push(direct, repo, image, tag="v1")
    fault_proxy.add(Fault("corrupt", method="GET", path="/manifests/"))
    with pytest.raises(DigestMismatch) as e:
        proxied.get_manifest(repo, image.digest)
    assert isinstance(e.value, Stalled)


def test_errors_and_logs_carry_no_query_string(
    proxied: HttpRegistry, fault_proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="reconciler")
    image = build_image("query")
    data = next(iter(image.blobs.values()))
    fault_proxy.add(Fault("status", times=-1, method="PUT", path="/blobs/uploads/"))
    with pytest.raises(RegistryUnavailable) as e:
        proxied.put_blob(fresh(), next(iter(image.blobs)), len(data), [data])
    for text in (str(e.value), caplog.text):
        assert "_state" not in text and "digest=" not in text
    assert "/blobs/uploads/" in str(e.value)


def test_a_failing_tag_put_leaves_no_tag(
    direct: HttpRegistry, proxied: HttpRegistry, fault_proxy: FaultProxy
) -> None:
    source, target = fresh(), fresh()
    index = build_index("no-partial")
    push(direct, source, index, tag="v1")
    fault_proxy.add(Fault("status", times=-1, method="PUT", path="/manifests/v1$"))
    with pytest.raises(RegistryUnavailable):
        copy_artifact(direct, source, index.digest, proxied, target, tag="v1")
    assert direct.resolve(target, "v1") is None
    assert direct.manifest_exists(target, index.digest)  # the content is there, untagged


def test_a_failing_blob_upload_leaves_no_manifest_and_no_tag(
    direct: HttpRegistry, proxied: HttpRegistry, fault_proxy: FaultProxy
) -> None:
    source, target = fresh(), fresh()
    index = build_index("no-partial-blob")
    push(direct, source, index, tag="v1")
    fault_proxy.add(Fault("status", times=-1, method="POST", path="/blobs/uploads/"))
    with pytest.raises(RegistryUnavailable):
        copy_artifact(direct, source, index.digest, proxied, target, tag="v1")
    assert direct.resolve(target, "v1") is None
    assert direct.list_tags(target) == []
    assert not direct.manifest_exists(target, index.digest)


def test_registry_stopped_mid_copy_fails_bounded_and_the_next_copy_finishes(
    registry_factory: RegistryFactory, direct: HttpRegistry, sleeps: Sleeps
) -> None:
    server = registry_factory.plain()
    proxy = FaultProxy(server.host)
    try:
        source, target = fresh(), fresh()
        index = build_index("stopped", ("linux/amd64", "linux/arm64", "linux/s390x"))
        push(direct, source, index, tag="v1")
        proxy.add(Fault("hook", method="PUT", path="/blobs/uploads/", action=server.stop))
        dst = HttpRegistry(proxy.host, config(), sleep=sleeps)
        with pytest.raises(RegistryUnavailable) as e:
            copy_artifact(direct, source, index.digest, dst, target, tag="v1")
        assert isinstance(e.value, Transient)
        server.start()  # same port, same storage
        again = HttpRegistry(server.host, config())
        assert again.resolve(target, "v1") is None
        result = copy_artifact(direct, source, index.digest, again, target, tag="v1")
        assert result.tags == ["v1"]
        assert again.resolve(target, "v1") == index.digest
    finally:
        proxy.close()
        server.stop()


def test_per_host_concurrency_is_limited(
    direct: HttpRegistry, fault_proxy: FaultProxy, sleeps: Sleeps
) -> None:
    repo = fresh()
    image = build_image("limit")
    push(direct, repo, image, tag="v1")
    fault_proxy.add(Fault("delay", delay=0.05, times=-1))
    limited = HttpRegistry(fault_proxy.host, config(concurrency=2), sleep=sleeps)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: limited.resolve(repo, "v1"), range(16)))
    assert results == [image.digest] * 16
    assert fault_proxy.max_in_flight == 2


# --------------------------------------------------------------------------- whole apply

ENVS = 20
ITEMS = 10


def fleet_state(
    host: str, proxy: str, tmp_path: Path, items: int = ITEMS, attempts: int | None = None
) -> tuple[StateRepo, str, dict[str, str]]:
    """One catalog of ``items`` images and ENVS environments on it: 200 tags to apply.

    The images are pushed directly; the state names the registry through ``proxy``.
    """
    registry = "plainHTTP: true" + (f", attempts: {attempts}" if attempts else "")
    source = f"f{uuid.uuid4().hex[:8]}/fleet"
    direct = HttpRegistry(host, HostConfig(plain_http=True))
    digests = {f"i{n}": push(direct, source, build_image(f"{source}-{n}")) for n in range(items)}
    items = ", ".join(f'{k}: "{v}"' for k, v in digests.items())
    envs = "\n".join(
        f'environments: e{n:02d}: {{catalog: "example.org/fleet", release: "v1"}}'
        for n in range(ENVS)
    )
    files = {
        "reconciler.cue": "package reconciler\n\nsettings: {\n"
        f'\tregistries: "{proxy}": {{{registry}}}\n'
        f"\tverify: insecureSkipSignatures: true\n\t{recordkeys.SETTINGS}\n}}\n",
        "catalogs/fleet.cue": 'package reconciler\n\ncatalogs: "example.org/fleet": {\n'
        f'\tsource: "{proxy}/{source}"\n\treleases: [{{name: "v1", items: {{{items}}}}}]\n}}\n',
        "environments/all.cue": f"package reconciler\n\n{envs}\n",
        recordkeys.RECORDS_PUB: recordkeys.session_key()[1],
    }
    repo = StateRepo(tmp_path / "state")
    repo.commit(files, "a fleet")
    return repo, source, digests


def apply_process(repo: StateRepo) -> tuple[subprocess.CompletedProcess[str], float]:
    """`reconciler apply --json` as a user runs it; the timeout is a hang guard only."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "apply", "--repo", str(repo.path), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return done, time.monotonic() - started


def applied(repo: StateRepo, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main(["apply", "--repo", str(repo.path), "--json"])
    return code, json.loads(capsys.readouterr().out)


def converged(host: str, source: str, digests: dict[str, str]) -> int:
    """How many of the ENVS x items tags point where they should."""
    direct = HttpRegistry(host, HostConfig(plain_http=True))
    return sum(
        direct.resolve(source, f"e{n:02d}-{item}") == digest
        for n in range(ENVS)
        for item, digest in digests.items()
    )


RUNS = 10
RUN_ITEMS = 3  # 20 environments x 3 items a run: 60 tags, records and VSAs


@pytest.mark.timeout(1200)
def test_one_apply_converges_when_a_third_of_all_requests_answer_503_ten_runs_in_a_row(
    plain_registry: RegistryServer,
    fault_proxy: FaultProxy,
    tmp_path: Path,
    cue_bin: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every third request answered 503 by the proxy: every environment applies in one
    `apply`, run after run (each a fresh fleet: first converge, records and signed
    verification summaries included)."""
    caplog.set_level(logging.WARNING, logger="urllib3")
    for run in range(RUNS):
        fault_proxy.clear()
        repo, source, digests = fleet_state(
            plain_registry.host, fault_proxy.host, tmp_path / f"r{run}", RUN_ITEMS
        )
        fault_proxy.add(Fault("status", status=503, times=-1, every=3))
        started = time.monotonic()
        code, result = applied(repo, capsys)
        elapsed = time.monotonic() - started
        errors = [o.get("error") for o in result["environments"] if o.get("error")]
        assert code == 0, (run, errors)
        assert {o["status"] for o in result["environments"]} == {"applied"}, run
        assert converged(plain_registry.host, source, digests) == ENVS * RUN_ITEMS, run
        injected = fault_proxy.count(outcome="status")
        assert injected > 50  # the faults really were there, a third of everything
        assert injected * 3 <= fault_proxy.count() + 3
        with capsys.disabled():
            print(
                f"\nrun {run}: 60 tags at 33% 503: {elapsed:.1f} s, {fault_proxy.count()} requests"
            )
    assert "Connection pool is full" not in caplog.text


def test_one_apply_converges_when_the_first_requests_answer_429_with_retry_after(
    plain_registry: RegistryServer,
    fault_proxy: FaultProxy,
    tmp_path: Path,
    cue_bin: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The first requests are the shared ones (the tag list, the manifests): their
    failure must not become every environment's."""
    repo, source, digests = fleet_state(plain_registry.host, fault_proxy.host, tmp_path, 2)
    fault_proxy.add(Fault("status", status=429, times=5, headers={"Retry-After": "1"}))
    code, result = applied(repo, capsys)
    assert code == 0, [o.get("error") for o in result["environments"] if o.get("error")]
    assert {o["status"] for o in result["environments"]} == {"applied"}
    assert len(result["environments"]) == ENVS
    assert converged(plain_registry.host, source, digests) == ENVS * 2
    assert fault_proxy.count(outcome="status") == 5


def test_a_retry_after_pauses_every_request_to_the_host(
    direct: HttpRegistry, fault_proxy: FaultProxy
) -> None:
    """Told to wait, the client does not let its other threads hammer the host."""
    repo = fresh()
    image = build_image("pause")
    push(direct, repo, image, tag="v1")
    fault_proxy.add(Fault("status", status=429, times=1, headers={"Retry-After": "1"}))
    client = HttpRegistry(fault_proxy.host, config(read_timeout=5.0))
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(lambda _: (client.resolve(repo, "v1"), time.monotonic()), range(8)))
    assert [d for d, _ in done] == [image.digest] * 8
    # The first answer was a 429: every request that had not started waited for it.
    late = [t - started for _, t in done]
    assert sorted(late)[-1] >= 0.9


@pytest.mark.parametrize(
    ("fault", "answered"),
    [(Fault("status", status=500, times=-1), "HTTP 500"), (Fault("reset", times=-1), "reset")],
    ids=["500", "reset"],
)
def test_apply_against_a_dead_registry_fails_with_one_error_and_moves_nothing(
    fault: Fault,
    answered: str,
    plain_registry: RegistryServer,
    fault_proxy: FaultProxy,
    tmp_path: Path,
    cue_bin: str,
) -> None:
    """Every request answered 500 (or reset): the breaker opens, every environment fails
    with the same error naming the host and what it answered, and `apply` exits 1."""
    repo, source, digests = fleet_state(plain_registry.host, fault_proxy.host, tmp_path)
    fault_proxy.add(fault)
    done, elapsed = apply_process(repo)
    assert done.returncode == 1, done.stderr[-2000:]
    outcomes = json.loads(done.stdout)["environments"]
    assert {o["status"] for o in outcomes} == {"failed"}
    errors = {o["error"]["message"] for o in outcomes}
    assert len(errors) == 1, errors  # one error, not one per request
    (error,) = errors
    assert f"registry {fault_proxy.host} is down" in error and answered in error
    assert {o["error"]["disposition"] for o in outcomes} == {"retry"}
    assert converged(plain_registry.host, source, digests) == 0
    # The breaker stopped the retries: fewer requests than 8 attempts of one per environment.
    assert fault_proxy.count() < ENVS * 8
    print(
        f"\ndead registry ({answered}): exit 1 after {elapsed:.1f} s, {fault_proxy.count()} requests"
    )


def test_a_lost_upload_session_starts_over_from_a_new_one(
    direct: HttpRegistry, proxied: HttpRegistry, fault_proxy: FaultProxy
) -> None:
    """The registry forgets the session between POST and PUT (BLOB_UPLOAD_UNKNOWN): the
    blob is looked for, then uploaded through a new session."""
    repo = fresh()
    blob = uuid.uuid4().bytes * 64
    digest = "sha256:" + __import__("hashlib").sha256(blob).hexdigest()
    fault_proxy.add(Fault("lose-session", times=1, method="PUT", path="/blobs/uploads/"))
    proxied.put_blob(repo, digest, len(blob), [blob])
    assert direct.read_blob(repo, digest, len(blob)) == blob
    assert fault_proxy.count("PUT", "/blobs/uploads/") == 2
    assert fault_proxy.count("POST", "/blobs/uploads/") == 2
    assert fault_proxy.count("HEAD", f"/blobs/{digest}") == 1


def test_a_record_write_that_outlasts_its_requests_retries_is_retried_as_a_step(
    plain_registry: RegistryServer,
    fault_proxy: FaultProxy,
    tmp_path: Path,
    cue_bin: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The record's manifest PUT fails more times than a request's attempts: the tags
    have moved, and the record step runs again until it is written."""
    repo, _, _ = fleet_state(plain_registry.host, fault_proxy.host, tmp_path, items=2, attempts=2)
    fault_proxy.add(
        Fault("status", status=503, times=3, method="PUT", path="/manifests/reconciler-record")
    )
    code, result = applied(repo, capsys)
    assert code == 0, [o.get("error") for o in result["environments"] if o.get("error")]
    assert {o["status"] for o in result["environments"]} == {"applied"}
    assert fault_proxy.count(outcome="status") == 3


def test_tags_that_moved_without_their_record_say_exactly_that(
    plain_registry: RegistryServer,
    fault_proxy: FaultProxy,
    tmp_path: Path,
    cue_bin: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo, source, digests = fleet_state(plain_registry.host, fault_proxy.host, tmp_path, items=2)
    fault_proxy.add(
        Fault("status", status=400, times=-1, method="PUT", path="/manifests/reconciler-record")
    )
    code, result = applied(repo, capsys)
    assert code == 1
    assert converged(plain_registry.host, source, digests) == ENVS * 2
    for outcome in result["environments"]:
        assert outcome["status"] == "failed"
        message = outcome["error"]["message"]
        assert message.startswith(
            "the tags are in place (2 moved, 0 pruned) but the apply record could not be written: "
        ), message
        assert "HTTP 400" in message
