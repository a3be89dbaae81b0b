"""The publish fields: catalog ``discover``, environment ``follow``, ``settings.notify``.
cue and JSON Schema agree on each case; the builder names what neither can check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.cli.main import main
from reconciler.errors import InvalidState
from reconciler.model import NOTIFY_EVENTS, Discovery, NotifyTarget
from tests.support.schemas import assert_agree, cat, cue_verdicts, env
from tests.support.staterepo import StateRepo
from tests.unit.test_desired_build import build, document

DISCOVER = {"tag": "^(v[0-9.]+)$", "items": {"web": "web-", "api": "r.example/a/api:rel-"}}


def notify(*receivers: dict[str, Any]) -> dict[str, Any]:
    return {"settings": {"notify": list(receivers)}}


CASES: dict[str, tuple[bool, dict[str, Any]]] = {
    "discover": (True, cat(discover=DISCOVER)),
    # as with releases, cue makes a missing struct an empty one; the builder refuses it
    "discover-without-items": (True, cat(discover={"tag": "^(v.*)$"})),
    "discover-empty-tag": (False, cat(discover={"tag": "", "items": {}})),
    "discover-unknown-field": (False, cat(discover={**DISCOVER, "every": "1h"})),
    "discover-item-not-a-string": (False, cat(discover={"tag": "^(v.*)$", "items": {"a": 1}})),
    "follow-latest": (True, env(follow="latest")),
    "follow-other": (False, env(follow="newest")),
    "notify-full": (
        True,
        notify(
            {
                "url": "https://hooks.example/x",
                "events": list(NOTIFY_EVENTS),
                "format": "cloudevents",
                "secretEnv": "RECONCILER_NOTIFY_SECRET",
            },
            {"urlEnv": "RECONCILER_NOTIFY_SLACK", "format": "slack", "events": ["refused"]},
        ),
    ),
    "notify-not-http": (False, notify({"url": "ftp://hooks.example/x"})),
    "notify-space-in-url": (False, notify({"url": "https://hooks.example/a b"})),
    "notify-unknown-event": (False, notify({"url": "https://h.example/", "events": ["deployed"]})),
    "notify-unknown-format": (False, notify({"url": "https://h.example/", "format": "teams"})),
    "notify-unknown-field": (False, notify({"url": "https://h.example/", "secret": "s3cret"})),
    "notify-empty-secret-env": (False, notify({"url": "https://h.example/", "secretEnv": ""})),
    # a commit must never name the daemon's own secrets (issue 20, attack 6)
    "notify-secret-env-webhook-secret": (
        False,
        notify({"url": "https://h.example/", "secretEnv": "RECONCILER_WEBHOOK_SECRET"}),
    ),
    "notify-url-env-other": (False, notify({"urlEnv": "AWS_SECRET_ACCESS_KEY"})),
    "notify-env-prefix-only": (False, notify({"urlEnv": "RECONCILER_NOTIFY_"})),
}


@pytest.fixture(scope="module")
def verdicts(cue_bin: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bool]:
    return cue_verdicts(cue_bin, CASES, tmp_path_factory)


@pytest.mark.parametrize("name", list(CASES))
def test_cue_and_json_schema_agree(name: str, verdicts: dict[str, bool]) -> None:
    expected, doc = CASES[name]
    assert_agree(expected, doc, verdicts[name])


def with_catalog(**extra: Any) -> dict[str, Any]:
    doc = document(dev={"follow": "latest"})
    doc["catalogs"]["shop"].update(extra)
    return doc


def test_the_builder_models_the_fields() -> None:
    doc = with_catalog(discover=DISCOVER)
    doc["settings"]["notify"] = [
        {
            "url": "https://hooks.example/x",
            "events": ["applied"],
            "secretEnv": "RECONCILER_NOTIFY_S",
        },
        {"urlEnv": "RECONCILER_NOTIFY_SLACK", "format": "slack"},
    ]
    state = build(doc)
    found = state.catalogs["shop"].discover
    assert found == Discovery(DISCOVER["tag"], DISCOVER["items"])
    assert found.location("web", "r.example/acme/shop") == ("r.example/acme/shop", "web-")
    assert found.location("api", "r.example/acme/shop") == ("r.example/a/api", "rel-")
    assert state.environments["dev"].follow == "latest"
    assert state.proposed_settings.notify == (
        NotifyTarget("https://hooks.example/x", ("applied",), "generic", "RECONCILER_NOTIFY_S"),
        NotifyTarget(None, NOTIFY_EVENTS, "slack", None, "RECONCILER_NOTIFY_SLACK"),
    )


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        ({"discover": {"tag": "^v.*$", "items": {"web": "web-"}}}, "discover.tag", "no group"),
        ({"discover": {"tag": "^(v[$", "items": {"web": ""}}}, "discover.tag", "not a valid"),
        ({"discover": {"tag": "^(v.*)$", "items": {}}}, "discover.items", "names no item"),
        ({"discover": {"tag": "(v.*)", "items": {"w": "w e"}}}, "discover.items.w", "prefix"),
        ({"discover": {"tag": "(v.*)", "items": {"w": "R.example/A:x"}}}, "items.w", "invalid"),
    ],
)
def test_the_builder_names_a_bad_discover(
    change: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(InvalidState) as exc:
        build(with_catalog(**change))
    [problem] = exc.value.problems
    assert problem.field.endswith(field) and fragment in problem.message


@pytest.mark.parametrize(
    ("receiver", "fragment"),
    [
        ({}, "exactly one of 'url' or 'urlEnv'"),
        ({"url": "https://h.example/", "urlEnv": "RECONCILER_NOTIFY_U"}, "exactly one of"),
        ({"url": "https://h.example/x?token=abc"}, "credentials or a query string"),
        ({"url": "https://user:pw@h.example/x"}, "credentials or a query string"),
        ({"url": "http://169.254.169.254/latest/meta-data/"}, "metadata endpoint: never"),
        ({"url": "http://[fe80::1]:8080/x"}, "link-local: never"),
        ({"url": "http://0.0.0.0:9090/hooks/git"}, "unspecified (this host): never"),
        ({"url": "http://[::ffff:169.254.169.254]/"}, "metadata endpoint: never"),
    ],
)
def test_the_builder_keeps_secrets_out_of_notify_urls(
    receiver: dict[str, Any], fragment: str, tmp_path: Path
) -> None:
    doc = document(dev={})
    doc["settings"]["notify"] = [receiver]
    with pytest.raises(InvalidState) as exc:
        build(doc)
    [problem] = exc.value.problems
    assert problem.field.startswith("settings.notify") and fragment in problem.message


def notify_cue(receiver: str) -> str:
    return f"package reconciler\n\nsettings: notify: [{receiver}]\n"


def test_validate_refuses_a_commit_that_names_the_daemons_secret_or_metadata(
    state_repo: StateRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 20, attack 6: a receiver signed with RECONCILER_WEBHOOK_SECRET, or at the
    metadata endpoint, is refused naming the file, the field and the way out."""
    ok = '{url: "https://hooks.example/reconciler", secretEnv: "RECONCILER_NOTIFY_SECRET"}'
    state_repo.commit({"notify.cue": notify_cue(ok)})
    assert main(["validate", "--repo", str(state_repo.path)]) == 0, capsys.readouterr()
    capsys.readouterr()

    attacks = {
        '{url: "https://evil.example/x", secretEnv: "RECONCILER_WEBHOOK_SECRET"}': (
            "settings.notify.0.secretEnv",
            "starts with RECONCILER_NOTIFY_",
        ),
        '{urlEnv: "AWS_SECRET_ACCESS_KEY"}': ("settings.notify.0.urlEnv", "RECONCILER_NOTIFY_"),
        '{url: "http://169.254.169.254/latest/meta-data/"}': (
            "settings.notify[0].url",
            "169.254.169.254 is a cloud metadata endpoint: never a notification receiver",
        ),
    }
    for receiver, (field, fragment) in attacks.items():
        state_repo.commit({"notify.cue": notify_cue(receiver)})
        assert main(["validate", "--repo", str(state_repo.path)]) == 1
        err = capsys.readouterr().err
        assert f"notify.cue:3: {field}" in err and fragment in err and "hint:" in err, err

    # A literal private address is valid (the operator's flag decides), with a warning.
    state_repo.commit({"notify.cue": notify_cue('{url: "http://10.0.0.7:8080/hook"}')})
    assert main(["validate", "--repo", str(state_repo.path)]) == 0
    err = capsys.readouterr().err
    assert (
        "warning: settings.notify: 10.0.0.7 is private" in err and "--notify-allow-private" in err
    )
