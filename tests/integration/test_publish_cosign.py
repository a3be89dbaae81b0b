"""The README's walk, with the real `cosign`: sign a new build, add it as a release, merge,
promote, merge, apply. Nobody types a digest."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.publish import CATALOG, CATALOG_FILE, Origin, push_build
from tests.support.registry_servers import RegistryServer, require_tool
from tests.support.world import build_world, desired_only


def run(*args: str, cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.parametrize("bundle", [True, False], ids=["bundle", "legacy-sig"])
def test_cosign_sign_to_applied_promotion_without_a_digest_typed(
    bundle: bool,
    plain_registry: RegistryServer,
    tmp_path: Path,
    cue_bin: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cosign = require_tool("cosign")
    env = {**os.environ, "COSIGN_PASSWORD": "", "COSIGN_YES": "true", "HOME": str(tmp_path)}
    run(cosign, "generate-key-pair", cwd=tmp_path, env=env)
    world = build_world(plain_registry.host, tmp_path)
    catalog = (world.repo.path / CATALOG_FILE).read_text()
    world.repo.commit(
        {
            CATALOG_FILE: catalog.replace(
                "\treleases: [", '\tsigners: keys: ["keys/cosign.pub"]\n\treleases: [', 1
            ),
            "keys/cosign.pub": (tmp_path / "cosign.pub").read_text(),
        },
        "the shop's builds are signed with keys/cosign.pub",
    )
    origin = Origin(world, tmp_path / "origin.git")

    # CI builds and pushes v1.3 (tags v1.3-web, v1.3-worker) and signs it
    built = push_build(world, "v1.3", None)
    for item in built:
        run(
            cosign, "sign", "--key", str(tmp_path / "cosign.key"),
            f"--new-bundle-format={str(bundle).lower()}", "--use-signing-config=false",
            "--tlog-upload=false", "--allow-insecure-registry", "--allow-http-registry",
            f"{world.host}/{world.source}:v1.3-{item}",
            cwd=tmp_path, env=env,
        )  # fmt: skip

    code, release = origin.run(
        capsys, "release", "add", CATALOG, "v1.3", "web=v1.3-web", "worker=v1.3-worker", "--push"
    )
    assert code == 0, release
    origin.merge(release["branch"])
    code, promotion = origin.run(capsys, "promote", "dev", "v1.3", "--push")
    assert code == 0, promotion
    origin.merge(promotion["branch"])
    code, applied = origin.run(capsys, "apply", "--env", "dev")
    assert code == 0, applied
    [dev] = applied["environments"]
    assert dev["transition"] == "dev first applied at v1.3"
    signers = {s["signer"] for a in dev["receipt"]["artifacts"] for s in a["signatures"]}
    assert len(signers) == 1 and next(iter(signers)).startswith("key sha256:")
    tags = desired_only(world.tags())
    assert (tags["dev-web"], tags["dev-worker"]) == (built["web"], built["worker"])
