"""Inserting a release into a catalog file keeps every other byte; release names order
as versions."""

from __future__ import annotations

import json

import pytest

from reconciler.proposals.releases import CannotEdit, Entry, insert_release, version_key
from reconciler.proposals.workflows import WorkflowRefused, check_name, one_line

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
NEW = Entry("v1.3", {"web": D1, "linux-amd64": "r.example/acme/x@" + D2}, {"semver": "1.3"})


def inserted(before: str, after: str) -> str:
    """The text added at one place (the start of a line, or inline), every byte of
    ``before`` kept around it; fails when there is no such place."""
    n = len(after) - len(before)
    first = next(
        (i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b), len(before)
    )
    places = [
        i for i in range(first, -1, -1) if after[:i] == before[:i] and after[i + n :] == before[i:]
    ]
    assert places, "bytes around the insert changed"
    at = next((i for i in places if i == 0 or before[i - 1] == "\n"), places[0])
    return after[at : at + n]


def test_cue_one_field_per_line_like_the_quickstart() -> None:
    before = (
        "package reconciler\n\n"
        "// The shop catalog.\n"
        'catalogs: "example.org/acme/shop": {\n'
        '\tsource: "127.0.0.1:5000/acme/shop"\n'
        "\treleases: [ // newest first\n"
        "\t\t// v1.2: the big one\n"
        "\t\t{\n"
        '\t\t\tname: "v1.2"\n'
        "\t\t\titems: {\n"
        f'\t\t\t\tweb: "{D1}"\n'
        "\t\t\t}\n"
        "\t\t},\n"
        "\t]\n"
        "}\n"
    )
    after = insert_release(before, "example.org/acme/shop", NEW, json_file=False)
    assert inserted(before, after) == (
        "\t\t{\n"
        '\t\t\tname: "v1.3"\n'
        "\t\t\titems: {\n"
        f'\t\t\t\tweb:           "{D1}"\n'
        f'\t\t\t\t"linux-amd64": "r.example/acme/x@{D2}"\n'
        "\t\t\t}\n"
        '\t\t\tmetadata: {semver: "1.3"}\n'
        "\t\t},\n"
    )
    # inserted after the line that opens the list: the comment stays with v1.2
    assert '// newest first\n\t\t{\n\t\t\tname: "v1.3"' in after
    assert after.index("// v1.2: the big one") > after.index('"v1.3"')


def test_cue_one_line_per_release_and_several_catalogs_in_one_file() -> None:
    before = (
        "package reconciler\n\n"
        'catalogs: "example.org/other": {source: "r.example/o", releases: [\n'
        '\t{name: "v9", items: {}},\n'
        "]}\n"
        'catalogs: "example.org/acme/shop": {\n'
        '\tsource: "r.example/acme/shop"\n'
        "\treleases: [\n"
        f'\t\t{{name: "v1.0", items: {{web: "{D1}"}}, hazards: {{"CVE-1": "broken"}}}},\n'
        "\t]\n"
        "}\n"
    )
    entry = Entry("v1.1", {"web": D2}, hazards={"CVE-2": 'quote " and \\ stay'})
    after = insert_release(before, "example.org/acme/shop", entry, json_file=False)
    added = inserted(before, after)
    assert added == (
        f'\t\t{{name: "v1.1", items: {{web: "{D2}"}}, '
        'hazards: {"CVE-2": "quote \\" and \\\\ stay"}},\n'
    )
    assert after.index(added) > after.index('"example.org/acme/shop"')


def test_cue_empty_list_and_keys_that_need_quotes() -> None:
    before = 'package reconciler\n\ncatalogs: "a": {\n\tsource: "r.example/a"\n\treleases: []\n}\n'
    entry = Entry("v1", {"if": D1, "_hidden": D2, "#def": D1})
    after = insert_release(before, "a", entry, json_file=False)
    assert after == (
        'package reconciler\n\ncatalogs: "a": {\n\tsource: "r.example/a"\n\treleases: [\n'
        '\t\t{\n\t\t\tname: "v1"\n\t\t\titems: {\n'
        f'\t\t\t\t"if":      "{D1}"\n\t\t\t\t"_hidden": "{D2}"\n\t\t\t\t"#def":    "{D1}"\n'
        "\t\t\t}\n\t\t},\n\t]\n}\n"
    )


def test_strings_and_comments_that_say_releases_do_not_count() -> None:
    before = (
        "package reconciler\n\n"
        '// releases: [ is not code\nnote: "releases: ["\nraw: #"releases: ["#\n'
        'catalogs: "a": {source: "r.example/a", releases: [\n\t{name: "v0", items: {}},\n]}\n'
    )
    after = insert_release(before, "a", Entry("v1", {}), json_file=False)
    assert inserted(before, after) == '\t{name: "v1", items: {}},\n'


def test_json_keeps_its_indentation_and_every_other_byte() -> None:
    before = (
        '{\n    "name":   "example.org/acme/shop",\n    "source": "r.example/acme/shop",\n'
        '    "releases": [\n        {\n            "name": "v1.0",\n'
        f'            "items": {{"web": "{D1}"}}\n        }}\n    ]\n}}\n'
    )
    after = insert_release(before, "example.org/acme/shop", NEW, json_file=True)
    doc = json.loads(after)
    assert [r["name"] for r in doc["releases"]] == ["v1.3", "v1.0"]
    assert doc["releases"][0] == NEW.document()
    block = (
        '        {\n            "name": "v1.3",\n            "items": {\n'
        f'                "web": "{D1}",\n'
        f'                "linux-amd64": "r.example/acme/x@{D2}"\n            }},\n'
        '            "metadata": {\n                "semver": "1.3"\n            }\n        },\n'
    )
    opening = '    "releases": [\n'
    assert after == before.replace(opening, opening + block, 1)


@pytest.mark.parametrize(
    ("before", "expected"),
    [
        ('{"name": "a", "source": "r.example/a", "releases": []}',
         '{"name": "a", "source": "r.example/a", "releases": [\n  {\n    "name": "v1",\n'
         '    "items": {\n      "web": "' + D1 + '"\n    }\n  }\n]}'),
        ('{"name": "a", "releases": [{"name": "v0", "items": {}}]}',
         '{"name": "a", "releases": [{"name": "v1", "items": {"web": "' + D1 + '"}}, '
         '{"name": "v0", "items": {}}]}'),
    ],
    ids=["empty", "one-line"],
)  # fmt: skip
def test_json_empty_and_one_line_lists(before: str, expected: str) -> None:
    after = insert_release(before, "a", Entry("v1", {"web": D1}), json_file=True)
    assert after == expected
    json.loads(after)


@pytest.mark.parametrize(
    "text",
    [
        'package reconciler\n\ncatalogs: "a": {source: "r.example/a", releases: _all}\n',
        '{"name": "a", "source": "r.example/a"}',
    ],
    ids=["an-expression", "no-releases"],
)
def test_no_list_literal_is_refused(text: str) -> None:
    with pytest.raises(CannotEdit, match="releases"):
        insert_release(text, "a", Entry("v1", {}), json_file=text.startswith("{"))


def test_release_names_sort_as_versions() -> None:
    names = ["v1.10", "v1.9", "v2.0rc1", "v2.0", "v1.2.0", "nightly", "v2.0-rc2", "v0.9"]
    assert sorted(names, key=version_key) == [
        "nightly",
        "v0.9",
        "v1.2.0",
        "v1.9",
        "v1.10",
        "v2.0rc1",
        "v2.0-rc2",
        "v2.0",
    ]
    assert version_key("1.2") == version_key("v1.2.0")
    assert version_key("2026-11-30") > version_key("2026-11-02")


@pytest.mark.parametrize(
    "value", ["a\nb", "a\rb", "a\x85b", "a\u2028b", "a\u2029b", "a\x00b", "a\x1bb", "a\tb"]
)
def test_a_value_with_any_line_break_or_control_character_is_refused(value: str) -> None:
    assert one_line("v1.7 of example.org/acme/shop", "release") == "v1.7 of example.org/acme/shop"
    with pytest.raises(WorkflowRefused, match="line break or a control character"):
        one_line(value, "release")


@pytest.mark.parametrize("name", ["v1.7 ", "", "-x", "a/b", "a:b", "x" * 129, 'v1"}'])
def test_new_names_follow_the_tag_grammar(name: str) -> None:
    assert check_name("v1.7-rc_1", "release name") == "v1.7-rc_1"
    with pytest.raises(WorkflowRefused, match="not a valid name"):
        check_name(name, "release name")
