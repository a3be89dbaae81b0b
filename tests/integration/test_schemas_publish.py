"""The publish fields: catalog ``discover``, environment ``follow``, ``settings.notify``.
cue and JSON Schema agree on each case; the builder names what neither can check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import InvalidState
from reconciler.model import NOTIFY_EVENTS, Discovery, NotifyTarget
from tests.support.schemas import assert_agree, cat, cue_verdicts, env
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
                "secretEnv": "HOOK_SECRET",
            },
            {"urlEnv": "SLACK_URL", "format": "slack", "events": ["refused", "failed"]},
        ),
    ),
    "notify-not-http": (False, notify({"url": "ftp://hooks.example/x"})),
    "notify-space-in-url": (False, notify({"url": "https://hooks.example/a b"})),
    "notify-unknown-event": (False, notify({"url": "https://h.example/", "events": ["deployed"]})),
    "notify-unknown-format": (False, notify({"url": "https://h.example/", "format": "teams"})),
    "notify-unknown-field": (False, notify({"url": "https://h.example/", "secret": "s3cret"})),
    "notify-empty-secret-env": (False, notify({"url": "https://h.example/", "secretEnv": ""})),
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
        {"url": "https://hooks.example/x", "events": ["applied"], "secretEnv": "S"},
        {"urlEnv": "SLACK_URL", "format": "slack"},
    ]
    state = build(doc)
    found = state.catalogs["shop"].discover
    assert found == Discovery(DISCOVER["tag"], DISCOVER["items"])
    assert found.location("web", "r.example/acme/shop") == ("r.example/acme/shop", "web-")
    assert found.location("api", "r.example/acme/shop") == ("r.example/a/api", "rel-")
    assert state.environments["dev"].follow == "latest"
    assert state.proposed_settings.notify == (
        NotifyTarget("https://hooks.example/x", ("applied",), "generic", "S"),
        NotifyTarget(None, NOTIFY_EVENTS, "slack", None, "SLACK_URL"),
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
        ({"url": "https://h.example/", "urlEnv": "U"}, "exactly one of 'url' or 'urlEnv'"),
        ({"url": "https://h.example/x?token=abc"}, "credentials or a query string"),
        ({"url": "https://user:pw@h.example/x"}, "credentials or a query string"),
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
