"""The pure parts of governance (issue 25): soak from signed records, freeze windows,
durations. History-based rules (signers, four eyes) are tested with real git in
tests/integration/test_governance.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from reconciler.daemon.backoff import Backoff
from reconciler.engine.outcomes import EnvOutcome, Status
from reconciler.errors import InvalidState
from reconciler.model import FreezeWindow, Governance, Record, frozen_map, parse_duration
from reconciler.verify import Rule, Waiting
from reconciler.verify.governance import Verdict, active_until, check_freeze, soaked
from tests.unit.test_daemon_schedule import daemon, state
from tests.unit.test_desired_build import Reader, build, document

NEW, OLD = "sha256:" + "1" * 64, "sha256:" + "0" * 64
CATALOG = "example.org/acme/shop"
FRIDAY = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
DAY = 86400


def record(digest: str, at: datetime, note: str = "", n: int = 0) -> Record:
    return Record(
        environment="staging",
        commit=f"{n:040x}",
        tree="t" * 40,
        catalog=CATALOG,
        release="v",
        repository="r.example/shop",
        tags=frozen_map({"staging-web": digest}),
        owned=frozen_map({}),
        verified=frozen_map({}),
        time=at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        reconciler="test",
        digest=f"sha256:{n:064x}",
        note=note,
    )


def test_durations() -> None:
    assert parse_duration("24h") == DAY
    assert parse_duration("1d12h30m5s") == DAY + 12 * 3600 + 30 * 60 + 5
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("24 hours")


def test_soak_counts_a_run_still_going_from_its_first_record() -> None:
    started = FRIDAY - timedelta(hours=30)
    chain = [record(NEW, FRIDAY - timedelta(hours=1), n=3), record(NEW, started, n=2)]
    chain.append(record(OLD, started - timedelta(days=3), n=1))
    assert soaked("staging", chain, CATALOG, {NEW}, DAY, FRIDAY) == chain[1].digest


def test_soak_waits_with_the_time_it_will_be_satisfied() -> None:
    chain = [record(NEW, FRIDAY - timedelta(hours=2), n=2), record(OLD, FRIDAY - timedelta(days=9))]
    with pytest.raises(Waiting) as exc:
        soaked("staging", chain, CATALOG, {NEW}, DAY, FRIDAY)
    assert exc.value.rule is Rule.SOAK and exc.value.until == FRIDAY + timedelta(hours=22)


def test_soak_a_run_ended_by_a_promotion_counts_one_ended_by_a_rollback_does_not() -> None:
    t = FRIDAY - timedelta(days=5)
    ran = [record(NEW, t, n=1)]
    promoted = [record(OLD, t + timedelta(days=2), "staging promoted from v2 to v3", n=2), *ran]
    assert soaked("staging", promoted, CATALOG, {NEW}, DAY, FRIDAY) == ran[0].digest
    rolled = [record(OLD, t + timedelta(days=2), "staging rolled back from v2 to v1", n=2), *ran]
    with pytest.raises(Waiting, match="without a rollback") as exc:
        soaked("staging", rolled, CATALOG, {NEW}, DAY, FRIDAY)
    assert exc.value.until is None
    # A rollback in the middle restarts the clock: only the run after it counts.
    again = [record(NEW, FRIDAY - timedelta(hours=1), n=3), *rolled]
    with pytest.raises(Waiting) as exc:
        soaked("staging", again, CATALOG, {NEW}, DAY, FRIDAY)
    assert exc.value.until == FRIDAY + timedelta(hours=23)


FIXED = FreezeWindow("release day", "2026-12-04T09:00:00Z", "2026-12-04T12:00:00+00:00")
WEEKEND = FreezeWindow("weekend", "18:00", "08:00", ("fri",), "Europe/Berlin")
WEEKEND_RAW = {"days": ["fri"], "from": "18:00", "until": "08:00", "timeZone": "Europe/Berlin",
               "reason": "weekend"}  # fmt: skip


def test_fixed_and_recurring_windows() -> None:
    assert active_until(FIXED, FRIDAY) == datetime(2026, 12, 4, 12, tzinfo=UTC)
    assert active_until(FIXED, FRIDAY + timedelta(hours=2)) is None
    assert active_until(WEEKEND, FRIDAY) is None  # 11:00 in Berlin
    friday_night = datetime(2026, 12, 4, 20, 0, tzinfo=UTC)
    saturday_8_berlin = datetime(2026, 12, 5, 7, 0, tzinfo=UTC)
    assert active_until(WEEKEND, friday_night) == saturday_8_berlin
    assert active_until(WEEKEND, saturday_8_berlin - timedelta(minutes=1)) == saturday_8_berlin
    assert active_until(WEEKEND, saturday_8_berlin) is None
    assert active_until(WEEKEND, friday_night - timedelta(days=1)) is None  # a Thursday


def verdict(four_eyes: bool, override: str | None = "INC-7") -> Verdict:
    rules = Governance(signers="keys/prod", approvals=2, override_freeze=override)
    changes = (("c" * 40, "alice"),)
    approvals = (("c" * 40, "m" * 40, "bob"),) if four_eyes else ()
    return Verdict("prod", None, rules, changes, approvals)


def test_freeze_refuses_a_promotion_and_lets_a_rollback_through_unless_the_window_says() -> None:
    with pytest.raises(Waiting, match="release day") as exc:
        check_freeze("prod", [FIXED], FRIDAY, False, verdict(False, None))
    assert exc.value.rule is Rule.FREEZE and exc.value.until == active_until(FIXED, FRIDAY)
    assert "allowed" in check_freeze("prod", [FIXED], FRIDAY, True, verdict(False, None))
    strict = FreezeWindow("audit", FIXED.start, FIXED.until, allow_rollback=False)
    with pytest.raises(Waiting, match="audit"):
        check_freeze("prod", [FIXED, strict], FRIDAY, True, verdict(False, None))
    assert check_freeze("prod", [FIXED], FRIDAY + timedelta(hours=3), False, verdict(False)) == ""


def test_a_freeze_override_needs_four_eyes() -> None:
    with pytest.raises(Waiting, match="not approved by a second"):
        check_freeze("prod", [FIXED], FRIDAY, False, verdict(False))
    said = check_freeze("prod", [FIXED], FRIDAY, False, verdict(True))
    assert "overridden: INC-7" in said and "bob" in said


def test_the_daemon_runs_a_pass_when_a_waiting_rule_will_be_satisfied() -> None:
    d, _, _ = daemon()
    d.scheduler = BackgroundScheduler(timezone=UTC)  # not started: jobs wait to be run
    d.envs["a"] = Backoff(d.policy)
    until = datetime(2030, 1, 1, 13, 0, tzinfo=UTC)
    error = Waiting(Rule.FREEZE, "a is frozen", until=until)
    d._outcome(state(), EnvOutcome("a", Status.REFUSED, error=error), ("c",), 0.0)
    (job,) = d.scheduler.get_jobs()
    assert job.trigger.run_date == until and job.func == d.trigger


def test_governance_is_parsed_with_its_signers_file_as_an_input() -> None:
    signers = b"alice@example.org ssh-ed25519 AAAA\n"
    reader = Reader({"keys/prod_signers": signers})
    doc = document(
        staging={},
        prod={
            "requires": [{"environment": "staging", "soak": "1d12h"}],
            "signers": "keys/prod_signers",
            "approvals": 2,
            "freeze": [WEEKEND_RAW],
            "overrideFreeze": "INC-7",
        },
    )
    state = build(doc, reader)
    prod = state.environments["prod"]
    assert prod.requires == ("staging",)
    assert prod.governance.soak == {"staging": 36 * 3600}
    assert prod.governance.signers_data == signers and prod.governance.approvals == 2
    assert prod.governance.freeze == (WEEKEND,) and prod.governance.override_freeze == "INC-7"
    assert "keys/prod_signers" in state.inputs


@pytest.mark.parametrize(
    ("prod", "where", "says"),
    [
        ({"approvals": 2}, "approvals", "needs the environment's signers"),
        ({"signers": "keys/nobody"}, "signers", "is not a file"),
        ({"freeze": [{**WEEKEND_RAW, "timeZone": "Mars/Olympus"}]}, "timeZone", "unknown time"),
        (
            {
                "freeze": [
                    {"from": "2026-12-05T00:00:00Z", "until": "2026-12-04T00:00:00Z", "reason": "r"}
                ]
            },
            "until",
            "ends before it starts",
        ),
    ],
)
def test_governance_problems_name_the_field(prod: dict[str, object], where: str, says: str) -> None:
    with pytest.raises(InvalidState) as exc:
        build(document(prod=prod))
    assert any(where in p.field and says in p.message for p in exc.value.problems), exc.value
