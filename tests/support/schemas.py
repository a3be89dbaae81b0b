"""Judging documents by both schemas: the real cue and JSON Schema must agree.

Each test module keeps its own CASES (``name -> (valid?, document)``); the verdicts of
cue are computed once per module, two at a time, because each is a cue process.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from reconciler.desired import schema_dir

Cases = Mapping[str, tuple[bool, dict[str, Any]]]
CAT: dict[str, Any] = {"name": "example.org/a", "source": "r.example:5000/a/b", "releases": []}
ENV: dict[str, Any] = {"catalog": "example.org/a", "release": "v1"}


def cat(**kw: Any) -> dict[str, Any]:
    return {"catalogs": {"example.org/a": {**CAT, **kw}}}


def env(**kw: Any) -> dict[str, Any]:
    return {"environments": {"dev": {**ENV, **kw}}}


def cue_verdict(cue: str, doc: dict[str, Any], workdir: Path) -> bool:
    (workdir / "case.json").write_text(json.dumps(doc))
    (workdir / "schema.cue").write_text((schema_dir() / "reconciler.cue").read_text())
    proc = subprocess.run(
        [cue, "export", "schema.cue", "case.json"],
        cwd=workdir,
        capture_output=True,
        check=False,
        timeout=120,
    )
    return proc.returncode == 0


def cue_verdicts(cue: str, cases: Cases, factory: pytest.TempPathFactory) -> dict[str, bool]:
    def one(name: str) -> tuple[str, bool]:
        return name, cue_verdict(cue, cases[name][1], factory.mktemp(name))

    factory.getbasetemp()  # made once, before the threads ask for it
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, cases))


def assert_agree(expected: bool, doc: dict[str, Any], cue_says: bool) -> None:
    schema = json.loads((schema_dir() / "reconciler.schema.json").read_text())
    json_ok = jsonschema.Draft202012Validator(schema).is_valid(doc)
    assert json_ok is expected, f"JSON Schema says {json_ok}"
    assert cue_says is expected, f"cue says {cue_says}"
