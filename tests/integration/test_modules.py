"""A state repository that is a CUE module (cue.mod/module.cue) with imports of its own
packages and the standard library: it validates, plans and applies like any other."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from reconciler.cli.main import main
from tests.support.receiver import receiving
from tests.support.registry_servers import RegistryServer
from tests.support.staterepo import StateRepo
from tests.support.world import build_world, desired_only, expected_tags

MODULE = 'module: "acme.example/state@v0"\nlanguage: version: "v0.17.1"\n'
LIB = """package lib

import "strings"

// One place for what every environment shares.
#Shop: "example.org/acme/\\(strings.ToLower("SHOP"))"
#Env: {
	catalog: #Shop
	target: tag: "{env}-{item}"
	...
}
"""


def env(name: str, release: str, requires: str = "") -> str:
    extra = f"\n\trequires: [{requires!r}]".replace("'", '"') if requires else ""
    return (
        'package reconciler\n\nimport "acme.example/state/lib"\n\n'
        f'environments: {name}: lib.#Env & {{\n\trelease: "{release}"{extra}\n}}\n'
    )


def test_module_state_validates_plans_and_applies(
    plain_registry: RegistryServer,
    tmp_path: Path,
    cue_bin: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    world = build_world(
        plain_registry.host,
        tmp_path,
        extra_files={
            "cue.mod/module.cue": MODULE,
            "lib/lib.cue": LIB,
            "environments/dev.cue": env("dev", "v1.1"),
            "environments/staging.cue": env("staging", "v1.1", "dev"),
            "environments/prod.cue": env("prod", "v1.1", "staging"),
        },
    )
    code, doc = world.cli(capsys, "validate")
    assert code == 0, doc
    assert doc["environments"]["prod"]["catalog"] == "example.org/acme/shop"
    code, plan = world.cli(capsys, "plan", "--detailed-exitcode")
    assert code == 2, plan  # changes pending
    code, result = world.cli(capsys, "apply")
    assert code == 0, result
    want = expected_tags(world, dev="v1.1", staging="v1.1", prod="v1.1")
    assert desired_only(world.tags()) == want
    # Promotion stays a one-line change of the environment file.
    world.repo.commit({"environments/dev.cue": env("dev", "v1.2")}, "promote dev")
    code, result = world.cli(capsys, "apply", "--env", "dev")
    assert code == 0, result
    assert desired_only(world.tags())["dev-web"] == world.digests["v1.2"]["web"]
    code, _ = world.cli(capsys, "plan", "--detailed-exitcode")
    assert code == 0


# --------------------------------------------------------------------------- no network

DEPS = MODULE + 'deps: "evil.example/mods@v0": v: "v0.1.0"\n'
IMPORTS_EVIL = 'package reconciler\n\nimport "evil.example/mods/lib"\n\n_uses: lib.#Anything\n'
VENDORED = "package lib\n\n#Anything: 1\n"


def test_cue_never_fetches_a_module_whatever_the_environment_says(
    state_repo: StateRepo,
    tmp_path: Path,
    cue_bin: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with receiving() as attacker:
        host = attacker.url.removeprefix("http://")
        files = {"cue.mod/module.cue": DEPS, "evil.cue": IMPORTS_EVIL}
        # Control: cue itself, given these files and this environment, asks the registry.
        for rel, text in files.items():
            (tmp_path / "control" / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "control" / rel).write_text(text)
        env = {**os.environ, "CUE_REGISTRY": f"{host}+insecure"}
        env["CUE_CACHE_DIR"] = str(tmp_path / "cache")
        proc = subprocess.run(
            [cue_bin, "export", "evil.cue"], cwd=tmp_path / "control", env=env,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode != 0 and attacker.connections >= 1, proc.stderr
        attacker.connections = 0

        # The attack: the same files in a commit, the same environment (and proxies).
        monkeypatch.setenv("CUE_REGISTRY", f"{host}+insecure")
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "GOPROXY"):
            monkeypatch.setenv(name, attacker.url)
        state_repo.commit(files, "a module from a registry")
        code = main(["validate", "--repo", str(state_repo.path)])
        err = capsys.readouterr().err
        assert code == 1 and "Traceback" not in err
        assert "'evil.example/mods/lib', which is not in the commit" in err, err
        assert "cue.mod/pkg/evil.example/mods/lib/" in err and "CUE_REGISTRY=none" in err
        assert attacker.connections == 0

        # The way out the error names: vendored in the tree, no deps entry: valid, offline.
        state_repo.commit(
            {"cue.mod/module.cue": MODULE, "cue.mod/pkg/evil.example/mods/lib/lib.cue": VENDORED},
            "vendor the module",
        )
        code = main(["validate", "--repo", str(state_repo.path), "--json"])
        assert code == 0, capsys.readouterr().err
        assert attacker.connections == 0
