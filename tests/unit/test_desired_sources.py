"""The source map, JSON documents and the files of a snapshot (module imports)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.desired.files import _local_imports, read_state_files
from reconciler.desired.sources import Position, SourceMap, merge
from reconciler.errors import InvalidState, Problem
from reconciler.git import GitSource
from tests.support.staterepo import StateRepo


def test_locate_prefers_the_field_then_the_object_then_the_ancestor() -> None:
    sources = SourceMap(
        {
            ("environments", "dev", "release"): (Position("e/dev.cue", 5),),
            ("environments", "dev", "catalog"): (Position("e/dev.cue", 4),),
        }
    )
    assert sources.locate(("environments", "dev", "release")) == Position("e/dev.cue", 5)
    assert sources.locate(("environments", "dev", "items", 1)) == Position("e/dev.cue", 4)
    assert sources.locate(("environments", "qa")) == Position("e/dev.cue", 4)
    assert sources.where(("settings",)) == ("(state)", None)
    assert sources.primary("environments", "dev") == "e/dev.cue"


def test_a_json_file_owns_its_object_and_lines_come_from_its_text() -> None:
    from reconciler.desired.files import StateFiles

    files = StateFiles(json={"environments/qa.json": '{\n  "catalog": "c",\n  "release": 1\n}'})
    sources = SourceMap({})
    doc = merge(files, {}, sources)
    assert doc["environments"]["qa"] == {"catalog": "c", "release": 1}
    assert sources.files(("environments", "qa")) == ("environments/qa.json",)
    assert sources.locate(("environments", "qa", "release")) == Position("environments/qa.json", 3)


def test_a_json_object_also_defined_in_cue_names_the_cue_files() -> None:
    from reconciler.desired.files import StateFiles

    files = StateFiles(json={"environments/dev.json": '{"catalog": "c", "release": "r"}'})
    sources = SourceMap({("environments", "dev", "release"): (Position("environments/x.cue", 3),)})
    with pytest.raises(InvalidState) as exc:
        merge(files, {"environments": {"dev": {"catalog": "c", "release": "r"}}}, sources)
    [problem] = exc.value.problems
    assert problem == Problem(
        "environments/dev.json",
        "",
        "environment 'dev' is also defined in environments/x.cue",
        "each catalog and environment is defined once",
    )


def test_local_imports_of_a_module() -> None:
    text = (
        'package x\n\nimport "strings"\nimport lib "acme.example/state/lib:lib"\n'
        'import (\n\t"list"\n\tb "acme.example/state/deep/b"\n\t"acme.example/other/c"\n)\n'
    )
    assert _local_imports(text, "acme.example/state") == {"lib", "deep/b"}


def test_module_files_are_read_through_the_snapshot(tmp_path: Path) -> None:
    repo = StateRepo(tmp_path / "s")
    repo.commit(
        {
            "cue.mod/module.cue": 'module: "acme.example/state@v0"\n',
            "cue.mod/pkg/vendored/v.cue": "package v\n",
            "deep/b/b.cue": 'package b\nimport "acme.example/state/lib"\nx: lib.y\n',
            "lib/lib.cue": "package lib\ny: 1\n",
            "other/o.cue": "package o\n",
            "environments/e.cue": 'package r\nimport "acme.example/state/deep/b"\nz: b.x\n',
        }
    )
    snap = GitSource(str(repo.path)).snapshot("main")
    files = read_state_files(snap)
    assert files.module == "acme.example/state"
    assert sorted(files.support) == [
        "cue.mod/module.cue",
        "cue.mod/pkg/vendored/v.cue",
        "deep/b/b.cue",
        "lib/lib.cue",
    ]
    assert set(files.support) | {"environments/e.cue"} <= snap.consulted
    assert "other/o.cue" not in snap.consulted


def test_a_module_without_a_module_path_is_refused(tmp_path: Path) -> None:
    repo = StateRepo(tmp_path / "s")
    repo.commit({"cue.mod/module.cue": 'language: version: "v0.17.1"\n'})
    files = read_state_files(GitSource(str(repo.path)).snapshot("main"))
    assert [p.file for p in files.problems] == ["cue.mod/module.cue"]
