"""The environments/ template validates together with a catalog that names its releases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.cli.main import main
from tests.support.staterepo import ROOT, StateRepo


def test_environment_template_is_valid(
    tmp_path: Path, cue_bin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    files: dict[str, str | bytes | None] = {
        f"environments/{p.name}": p.read_bytes() for p in (ROOT / "environments").glob("*.cue")
    }
    files["catalogs/app.json"] = json.dumps(
        {
            "name": "example.org/team/app",
            "source": "registry.example:5000/team/app",
            "releases": [{"name": "v1.0", "items": {"app": "sha256:" + "e" * 64}}],
        }
    )
    files["reconciler.json"] = json.dumps({"verify": {"insecureSkipSignatures": True}})
    repo = StateRepo(tmp_path / "state")
    repo.commit(files)
    assert main(["validate", "--repo", str(repo.path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc["environments"]) == ["dev", "staging", "prod"]
    assert doc["environments"]["prod"]["prune"] is True
    assert doc["environments"]["prod"]["tags"][0]["tag"] == "prod-app"
