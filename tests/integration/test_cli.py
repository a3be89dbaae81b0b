"""The command line as a new user meets it: completion loaded by a real bash, version,
usage errors for options that mean nothing, ``validate --worktree`` on an edited
checkout, the pre-commit hook, ``plan --format markdown``, -q, --progress, --log-level."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reconciler.cli.main import main
from tests.support.registry_servers import RegistryServer
from tests.support.staterepo import ROOT, StateRepo
from tests.support.world import build_world

BIN = Path(sys.executable).parent


def shell(script: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=60, env=env, cwd=cwd
    )


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


# --------------------------------------------------------------------------- completion


def complete(words: str) -> list[str]:
    """What bash completes for the last word of ``words`` (an empty last word: '')."""
    parts = shlex.split(words) + ([""] if words.endswith(" ") else [])
    array = " ".join(shlex.quote(w) for w in parts)
    proc = shell(
        "source <(reconciler completion bash) || exit 9\n"
        f"COMP_WORDS=({array}); COMP_CWORD={len(parts) - 1}; _reconciler\n"
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


def test_bash_loads_the_completion_script() -> None:
    proc = shell("source <(reconciler completion bash) && complete -p reconciler")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "complete -o default -F _reconciler reconciler"
    assert proc.stderr == ""


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("reconciler pro", ["promote"]),
        ("reconciler r", ["rollback", "release", "run"]),
        ("reconciler --repo . release ", ["add"]),
        ("reconciler release add --pu", ["--push"]),
        ("reconciler plan --format ", ["text", "json", "markdown"]),
        ("reconciler --progress p", ["plain"]),
        ("reconciler completion ", ["bash", "zsh", "fish"]),
        ("reconciler validate --work", ["--worktree"]),
        ("reconciler run --discover", ["--discover-interval"]),
        ("reconciler promote --e", []),  # promote has no --env
        ("reconciler --ref ", []),  # a value nobody can guess
    ],
)
def test_bash_completes_commands_options_and_choices(words: str, expected: list[str]) -> None:
    assert complete(words) == expected


def test_zsh_and_fish_scripts_cover_every_command() -> None:
    zsh = cli("completion", "zsh")
    assert zsh.returncode == 0 and zsh.stdout.startswith("#compdef reconciler\n")
    assert "bashcompinit" in zsh.stdout and "complete -o default -F _reconciler" in zsh.stdout
    fish = cli("completion", "fish").stdout
    for command in ("validate", "plan", "apply", "promote", "release", "discover", "version"):
        assert re.search(rf"^complete -c reconciler -n .* -a {command} -d ", fish, re.M), command
    assert "-l progress -x -a 'auto plain none'" in fish
    assert "__fish_seen_subcommand_from release; and __fish_seen_subcommand_from add" in fish


# --------------------------------------------------------------------------- version, usage


def test_version_names_the_tools_it_runs(cue_bin: str) -> None:
    proc = cli("version", "--json")
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert found["reconciler"] == re.search(
        r'__version__ = "(.+)"', (ROOT / "reconciler/__init__.py").read_text()
    ).group(1)  # type: ignore[union-attr]
    assert found["cue"].startswith("v") and Path(found["cuePath"]).name == "cue"
    human = cli("version").stdout
    assert human.startswith(f"reconciler {found['reconciler']}\n") and "cue        v" in human


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["promote", "dev", "v1.2", "--env", "prod"], "promote names its environment as an"),
        (["--env", "prod", "promote", "dev", "v1.2"], "--env means nothing for `promote`"),
        (["rollback", "dev", "--env", "prod"], "--env means nothing for `rollback`"),
        (["validate", "--authfile", "auth.json"], "validate reads no registry"),
        (["keygen", "k", "--repo", "."], "--repo means nothing for `keygen`"),
        (["version", "--repo", "."], "--repo means nothing for `version`"),
        (["run", "--json"], "use --log-format json"),
        (["-v", "-q", "validate"], "-v and -q contradict each other"),
        (["validate", "--worktree", "--ref", "v1"], "not --ref"),
        (["plan", "--json", "--format", "markdown"], "contradict each other"),
        (["completion", "tcsh"], "invalid choice"),
    ],
)
def test_options_that_mean_nothing_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- --worktree


def test_validate_worktree_checks_the_edited_files_and_validate_warns(
    state_repo: StateRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    work = state_repo.path
    prod = work / "environments/prod.cue"
    committed = prod.read_text()
    prod.write_text(committed.replace('release:  "v1.1"', 'release:  "v1.9"'))

    code = main(["validate", "--repo", str(work), "--worktree"])
    out, err = capsys.readouterr()
    assert code == 1
    assert re.search(r"environments/prod.cue:\d+: environments.prod.release: .* 'v1.9'", err)

    code = main(["validate", "--repo", str(work)])  # the commit is still valid ...
    out, err = capsys.readouterr()
    assert code == 0 and "valid:" in out
    assert "warning: validated main" in err and "edits to environments/prod.cue" in err
    assert "pass --worktree" in err  # ... and it says what it did not look at

    # a valid edit, a new file and a deleted one: the work tree as `git add -A` sees it
    prod.write_text(committed.replace('release:  "v1.1"', 'release:  "v1.2"'))
    staging = (work / "environments/staging.cue").read_text()
    (work / "environments/qa.cue").write_text(
        staging.replace("staging:", "qa:").replace('requires: ["dev"]', "")
    )
    (work / "environments/dev.cue").unlink()
    (work / "environments/staging.cue").write_text(staging.replace('requires: ["dev"]', ""))
    code = main(["validate", "--repo", str(work), "--worktree", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert doc["environments"]["prod"]["release"] == "v1.2"
    assert set(doc["environments"]) == {"prod", "qa", "staging"}
    # nothing was committed, staged or checked out
    assert state_repo.repo.status_file("environments/prod.cue") != 0
    assert (work / "environments/qa.cue").exists() and not (work / "environments/dev.cue").exists()
    assert main(["validate", "--repo", str(work), "-q"]) == 0  # the commit: quiet, valid
    assert capsys.readouterr().out == ""


def test_a_clean_checkout_of_the_ref_gets_no_warning(
    state_repo: StateRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", "--repo", str(state_repo.path)]) == 0
    assert capsys.readouterr().err == ""


def test_pre_commit_hook_runs_validate_on_the_work_tree(state_repo: StateRepo) -> None:
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "reconciler-validate" and hook["pass_filenames"] is False
    assert re.search(hook["files"], "environments/prod.cue")
    assert re.search(hook["files"], "deploy/catalogs/shop.json")
    assert not re.search(hook["files"], "README.md")
    entry = shlex.split(hook["entry"])
    assert entry[0] == "reconciler"
    proc = shell(shlex.join(entry), cwd=state_repo.path)
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    prod = state_repo.path / "environments/prod.cue"
    prod.write_text(prod.read_text().replace('"v1.1"', '"v1.9"'))
    proc = shell(shlex.join(entry), cwd=state_repo.path)
    assert proc.returncode == 1 and "has no release 'v1.9'" in proc.stderr


# --------------------------------------------------------------------------- plan, -q, progress


def test_plan_markdown_quiet_apply_progress_and_log_level(
    plain_registry: RegistryServer, tmp_path: Path, cue_bin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    world = build_world(plain_registry.host, tmp_path)
    repo = str(world.repo.path)
    code = main(["apply", "--repo", repo, "-q", "--progress", "plain"])
    out, err = capsys.readouterr()
    assert code == 0 and out == "" and err == ""  # quiet: no report, no progress

    world.repo.commit(
        {
            "environments/dev.cue": world.env("dev", "v1.0"),
            "environments/qa.cue": world.env("qa", "v1.2"),
        },
        "dev to v1.0, a new qa",
    )
    code = main(["plan", "--repo", repo, "--format", "markdown"])
    out = capsys.readouterr().out
    assert code == 1  # dev is refused: v1.0 has hazards
    assert out.startswith("### reconciler plan\n\nCommit `")
    assert "| qa | example.org/acme/shop `v1.2` | 🔄 pending | 2 | ⚠️ UNVERIFIED |" in out
    assert "| prod | example.org/acme/shop `v1.1` | ✅ in-sync | - |" in out
    assert "<details open><summary>dev: refused, 2 changes</summary>" in out
    assert "**refused**: refused (hazards): release v1.0 of example.org/acme/shop" in out
    assert "> hint: " in out
    assert f"| + create | `{world.host}/{world.source}:qa-web` |" in out

    world.promote(dev="v1.2")
    code = main(["apply", "--repo", repo, "--progress", "plain", "--env", "dev"])
    out, err = capsys.readouterr()
    assert code == 0 and "applied: 2 moved" in out
    assert f"  … moved {world.host}/{world.source}:dev-web to " in err
    assert re.search(r"  … apply: done in [0-9.]+s \(2 moved, 1 recorded\)", err)

    world.promote(dev="v1.1")
    proc = cli("apply", "--repo", repo, "--env", "dev", "--log-level", "info")
    assert proc.returncode == 0, proc.stderr
    assert f"INFO reconciler.engine.apply: moved {world.host}/{world.source}:dev-web" in proc.stderr
    assert "DEBUG" not in proc.stderr
