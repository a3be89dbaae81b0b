"""A state repository that is a CUE module (cue.mod/module.cue) with imports of its own
packages and the standard library: it validates, plans and applies like any other."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.registry_servers import RegistryServer
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
