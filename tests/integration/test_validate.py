"""`reconciler validate` on real git repositories with the real cue CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.cli.main import main
from reconciler.desired import Loader
from reconciler.git import GitSource
from reconciler.model import DesiredState
from tests.support.staterepo import ROOT, StateRepo

SEED_CATALOG = (ROOT / "tests/fixtures/seeds/catalog_with_trailing_commas.json").read_text()
D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64


def validate(
    repo: StateRepo, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str, str]:
    code = main(["validate", "--repo", str(repo.path), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def env_cue(name: str, body: str) -> str:
    return f"package reconciler\n\nenvironments: {name}: {{\n{body}\n}}\n"


SHOP = 'catalog: "example.org/acme/shop"'


# --------------------------------------------------------------------------- valid


def test_example_is_valid_and_listed(
    state_repo: StateRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = validate(state_repo, capsys)
    assert code == 0, err
    assert "example.org/acme/shop" in out
    assert "v1.0 (HAZARDS)" in out
    assert "127.0.0.1:5000/acme/shop:prod-web" in out
    assert "127.0.0.1:5000/acme/shop:staging-docs" in out
    assert "prod-docs" not in out  # prod deploys only web and worker
    assert "valid: 1 catalogs, 3 environments" in out


def test_json_output_has_environments_releases_and_tags(
    state_repo: StateRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = validate(state_repo, capsys, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["valid"] is True
    assert doc["commit"] == str(state_repo.repo.head.target)
    assert list(doc["environments"]) == ["dev", "staging", "prod"]  # promotion order
    prod = doc["environments"]["prod"]
    assert prod["release"] == "v1.1" and prod["requires"] == ["staging"]
    assert [t["tag"] for t in prod["tags"]] == ["prod-web", "prod-worker"]
    v11 = doc["catalogs"]["example.org/acme/shop"]["releases"][1]
    assert prod["tags"][0]["digest"] == v11["items"]["web"]
    assert doc["catalogs"]["example.org/acme/shop"]["releases"][2]["hazards"]


def test_json_catalogs_and_environments_load_without_cue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECONCILER_CUE", str(tmp_path / "no-such-cue"))
    repo = StateRepo(tmp_path / "json-state")
    catalog = {
        "name": "example.org/x",
        "source": "oci:/srv/x",
        "releases": [
            {"name": "v1", "items": {"app": D1, "mirror": "registry.local:5000/x/app@" + D2}}
        ],
    }
    repo.commit(
        {
            "catalogs/x.json": json.dumps(catalog),
            "environments/dev.json": json.dumps(
                {
                    "catalog": "example.org/x",
                    "release": "v1",
                    "verify": {"insecureSkipSignatures": True},
                }
            ),
        }
    )
    code, out, err = validate(repo, capsys, "--json")
    assert code == 0, err
    tags = json.loads(out)["environments"]["dev"]["tags"]
    assert (
        tags[1]["source"] == "registry.local:5000/x/app" and tags[1]["repository"] == "oci:/srv/x"
    )
    assert json.loads(out)["environments"]["dev"]["unverified"] is True


def test_validates_a_sub_directory_at_an_older_commit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cue_bin: str
) -> None:
    repo = StateRepo(tmp_path / "mono")
    from tests.support.staterepo import example_files

    first = repo.commit({f"deploy/{k}": v for k, v in example_files().items()})
    repo.commit({"deploy/environments/dev.cue": env_cue("dev", f'{SHOP}\nrelease: "v9"')})
    assert validate(repo, capsys, "--path", "deploy")[0] == 1
    code, out, err = validate(repo, capsys, "--path", "deploy", "--ref", first)
    assert code == 0, err
    assert first[:12] in out


def test_same_commit_twice_runs_cue_once(
    state_repo: StateRepo, tmp_path: Path, cue_bin: str
) -> None:
    calls = tmp_path / "cue-calls"
    wrapper = tmp_path / "counting-cue"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {cue_bin} "$@"\n')
    wrapper.chmod(0o755)
    env = {
        **os.environ,
        "RECONCILER_CUE": str(wrapper),
        "RECONCILER_CACHE_DIR": str(tmp_path / "c"),
    }
    cmd = [sys.executable, "-m", "reconciler", "validate", "--repo", str(state_repo.path), "--json"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert json.loads(first.stdout) == json.loads(second.stdout)
    # One evaluation: one `cue export` and, beside it, the position probe (`cue eval`).
    assert sorted(line.split()[0] for line in calls.read_text().splitlines()) == ["eval", "export"]
    # A new commit with a new tree is evaluated again.
    state_repo.commit({"environments/dev.cue": env_cue("dev", f'{SHOP}\nrelease: "v1.1"')})
    third = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert third.returncode == 0, third.stderr
    assert [line.split()[0] for line in calls.read_text().splitlines()].count("export") == 2


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["validate", "--no-such-flag"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2


def test_common_options_before_or_after_the_command(
    state_repo: StateRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--repo", str(state_repo.path), "--json", "validate"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert main(["validate", "--repo", str(state_repo.path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == before


# --------------------------------------------------------------------------- bad input

BIG = (
    '{"name": "example.org/big", "source": "oci:/x", "releases": [], "pad": "'
    + "x" * (1 << 20)
    + '"}'
)

# id -> (files to write, None deletes; substrings the error must contain)
BAD: dict[str, tuple[dict[str, str | bytes | None], list[str]]] = {
    "json-trailing-commas-seed-catalog": (
        {"catalogs/project.json": SEED_CATALOG},
        ["catalogs/project.json:18", "invalid JSON", "trailing comma", "end of line 17"],
    ),
    "json-not-an-object": (
        {"environments/qa.json": "[1, 2]"},
        ["environments/qa.json", "expected a JSON object"],
    ),
    "json-duplicate-key": (
        {
            "environments/qa.json": '{"catalog": "example.org/acme/shop", "release": "v1.1", "release": "v1.2"}'
        },
        ["environments/qa.json:1", "release", "appears twice"],
    ),
    "json-catalog-without-name": (
        {"catalogs/other.json": '{"source": "oci:/x", "releases": []}'},
        ["catalogs/other.json", "name", "non-empty string 'name'"],
    ),
    "json-unknown-field": (
        {"environments/qa.json": '{"catalog": "example.org/acme/shop", "relase": "v1.1"}'},
        [
            "environments/qa.json",
            "environments.qa",
            "unknown field 'relase'",
            "'release' is required",
        ],
    ),
    "json-wrong-type": (
        {"environments/qa.json": '{"catalog": "example.org/acme/shop", "release": 1.1}'},
        ["environments/qa.json", "environments.qa.release", "expected string, found 1.1"],
    ),
    "json-and-cue-define-one-environment": (
        {"environments/dev.json": '{"catalog": "example.org/acme/shop", "release": "v1.1"}'},
        ["environments/dev.json", "environment 'dev' is also defined in environments/dev.cue"],
    ),
    "settings-in-json-and-cue": (
        {"reconciler.json": '{"verify": {"insecureSkipSignatures": true}}'},
        ["reconciler.json", "settings", "also defined in CUE"],
    ),
    "cue-syntax-error": (
        {"environments/dev.cue": 'package reconciler\nenvironments: dev: {\n  release: "v1.2"\n'},
        ["environments/dev.cue:3", "expected '}'"],
    ),
    "cue-bad-digest": (
        {
            "catalogs/extra.cue": 'package reconciler\ncatalogs: "example.org/x": {\n  source: "oci:/x"\n'
            '  releases: [{name: "v1", items: {app: "sha256:abc"}}]\n}\n'
        },
        ["catalogs/extra.cue:4", 'catalogs."example.org/x".releases.0.items.app', "sha256:abc"],
    ),
    "cue-unknown-field": (
        {"environments/dev.cue": env_cue("dev", f'{SHOP}\nrelease: "v1.2"\nreleas: "v1.1"')},
        ["environments/dev.cue:6", "environments.dev.releas", "unknown field 'releas'"],
    ),
    "cue-conflicting-values": (
        {"environments/dev2.cue": 'package reconciler\nenvironments: dev: release: "v1.1"\n'},
        ["environments/dev", "environments.dev.release", "conflicting values"],
    ),
    "cue-wrong-type": (
        {"environments/dev.cue": env_cue("dev", f'{SHOP}\nrelease: "v1.2"\nallowHazards: "yes"')},
        ["environments/dev.cue:6", "environments.dev.allowHazards", "conflicting values"],
    ),
    "cue-two-packages": (
        {"environments/qa.cue": 'package other\nenvironments: qa: {catalog: "x", release: "y"}\n'},
        ["found packages", "other"],
    ),
    "cue-top-level-typo": (
        {
            "environments/qa.cue": 'package reconciler\nenviroments: qa: {catalog: "x", release: "y"}\n'
        },
        ["environments/qa.cue:2", "unknown field 'enviroments'"],
    ),
    "cue-catalog-name-differs-from-key": (
        {
            "catalogs/extra.cue": 'package reconciler\ncatalogs: "example.org/x": {\n  name: "example.org/y"\n'
            '  source: "oci:/x"\n  releases: []\n}\n'
        },
        ["catalogs/extra.cue:3", 'catalogs."example.org/x".name', "conflicting values"],
    ),
    "unknown-catalog": (
        {
            "environments/dev.cue": env_cue(
                "dev", 'catalog: "example.org/acme/shoop"\nrelease: "v1.2"'
            )
        },
        [
            "environments/dev.cue:4",
            "environments.dev.catalog",
            "unknown catalog 'example.org/acme/shoop'",
            "example.org/acme/shop",
        ],
    ),
    "unknown-release": (
        {"environments/dev.cue": env_cue("dev", f'{SHOP}\nrelease: "v1.3"')},
        [
            "environments/dev.cue:5",
            "environments.dev.release",
            "has no release 'v1.3'",
            "v1.2, v1.1, v1.0",
        ],
    ),
    "unknown-item": (
        {"environments/dev.cue": env_cue("dev", f'{SHOP}\nrelease: "v1.2"\nitems: ["web", "cli"]')},
        [
            "environments/dev.cue",
            "environments.dev.items[1]",
            "has no item 'cli'",
            "web, worker, docs",
        ],
    ),
    "duplicate-release-names": (
        {
            "catalogs/extra.json": json.dumps(
                {
                    "name": "example.org/x",
                    "source": "oci:/x",
                    "releases": [
                        {"name": "v1", "items": {"a": D1}},
                        {"name": "v1", "items": {"a": D2}},
                    ],
                }
            )
        },
        ["catalogs/extra.json", 'catalogs["example.org/x"].releases[1].name', "'v1' appears twice"],
    ),
    "digest-uppercase-hex": (
        {
            "catalogs/extra.json": json.dumps(
                {
                    "name": "example.org/x",
                    "source": "oci:/x",
                    "releases": [{"name": "v1", "items": {"a": "sha256:" + "A" * 64}}],
                }
            )
        },
        ["catalogs/extra.json", "releases[0].items.a", "is not a digest 'sha256:<64 hex>'"],
    ),
    "digest-wrong-algorithm": (
        {
            "catalogs/extra.json": json.dumps(
                {
                    "name": "example.org/x",
                    "source": "oci:/x",
                    "releases": [{"name": "v1", "items": {"a": "sha512:" + "a" * 128}}],
                }
            )
        },
        ["catalogs/extra.json", "items.a", "sha512:", "is not a digest"],
    ),
    "source-not-a-repository": (
        {
            "catalogs/extra.json": json.dumps(
                {"name": "example.org/x", "source": "Registry/Acme App", "releases": []}
            )
        },
        ["catalogs/extra.json", 'catalogs["example.org/x"].source', "is not an OCI repository"],
    ),
    "tag-template-invalid-tag": (
        {
            "environments/dev.cue": env_cue(
                "dev", f'{SHOP}\nrelease: "v1.2"\ntarget: tag: "{{env}}/{{item}}"'
            )
        },
        [
            "environments/dev.cue",
            "environments.dev.target.tag",
            "expands to 'dev/web'",
            "not a valid OCI tag",
        ],
    ),
    "tag-template-unknown-placeholder": (
        {
            "environments/dev.cue": env_cue(
                "dev", f'{SHOP}\nrelease: "v1.2"\ntarget: tag: "{{env}}-{{version}}"'
            )
        },
        ["environments/dev.cue", "target.tag", "unknown placeholder {version}"],
    ),
    "tag-template-too-long": (
        {
            "environments/dev.cue": env_cue(
                "dev", f'{SHOP}\nrelease: "v1.2"\ntarget: tag: "{"x" * 125}-{{item}}"'
            )
        },
        ["environments/dev.cue", "target.tag", "not a valid OCI tag", "1-128 characters"],
    ),
    "two-environments-one-target-tag": (
        {
            "environments/staging.cue": env_cue(
                "staging", f'{SHOP}\nrelease: "v1.1"\ntarget: tag: "dev-{{item}}"'
            )
        },
        [
            "environments/staging.cue",
            "writes 127.0.0.1:5000/acme/shop:dev-web",
            "environment 'dev' also writes",
        ],
    ),
    "requires-unknown-environment": (
        {
            "environments/prod.cue": env_cue(
                "prod", f'{SHOP}\nrelease: "v1.1"\nrequires: ["stagign"]'
            )
        },
        ["environments/prod.cue", "environments.prod.requires[0]", "unknown environment 'stagign'"],
    ),
    "requires-cycle": (
        {"environments/dev.cue": env_cue("dev", f'{SHOP}\nrelease: "v1.2"\nrequires: ["prod"]')},
        ["environments/dev.cue", "cycle: dev -> prod -> staging -> dev"],
    ),
    "requires-itself": (
        {"environments/dev.cue": env_cue("dev", f'{SHOP}\nrelease: "v1.2"\nrequires: ["dev"]')},
        ["environments/dev.cue", "environments.dev.requires[0]", "cannot require itself"],
    ),
    "requires-other-catalog": (
        {
            "catalogs/extra.json": json.dumps(
                {
                    "name": "example.org/x",
                    "source": "oci:/x",
                    "releases": [{"name": "v1", "items": {"a": D1}}],
                }
            ),
            "environments/qa.json": json.dumps(
                {"catalog": "example.org/x", "release": "v1", "requires": ["dev"]}
            ),
        },
        [
            "environments/qa.json",
            "environments.qa.requires[0]",
            "runs catalog 'example.org/acme/shop'",
        ],
    ),
    "no-verify-policy": (
        {
            "reconciler.cue": 'package reconciler\nsettings: registries: "127.0.0.1:5000": plainHTTP: true\n'
        },
        [
            "environments/dev.cue",
            "environments.dev.verify",
            "no signature policy",
            "insecureSkipSignatures",
        ],
    ),
    "empty-verify-policy": (
        {"environments/dev.cue": env_cue("dev", f'{SHOP}\nrelease: "v1.2"\nverify: {{}}')},
        [
            "environments/dev.cue",
            "environments.dev.verify",
            "no signature policy",
            "insecureSkipSignatures",
        ],
    ),
    "key-file-missing": (
        {"reconciler.cue": 'package reconciler\nsettings: verify: keys: ["keys/missing.pub"]\n'},
        ["reconciler.cue:2", "settings.verify.keys[0]", "'keys/missing.pub' is neither a file"],
    ),
    "key-file-not-pem": (
        {"keys/cosign.pub": "not a key\n"},
        ["reconciler.cue", "settings.verify.keys[0]", "keys/cosign.pub: not a PEM public key"],
    ),
    "identity-without-subject": (
        {
            "environments/dev.cue": env_cue(
                "dev",
                f'{SHOP}\nrelease: "v1.2"\n'
                'verify: identities: [{issuer: "https://token.actions.example"}]',
            )
        },
        [
            "environments/dev.cue",
            "environments.dev.verify.identities[0]",
            "exactly one of 'subject'",
        ],
    ),
    "identity-bad-regexp": (
        {
            "environments/dev.cue": env_cue(
                "dev",
                f'{SHOP}\nrelease: "v1.2"\n'
                'verify: identities: [{issuer: "https://i", subjectRegExp: "^(a$"}]',
            )
        },
        ["environments/dev.cue", "identities[0].subjectRegExp", "not a valid regular expression"],
    ),
    "trusted-root-missing": (
        {
            "environments/dev.cue": env_cue(
                "dev",
                f'{SHOP}\nrelease: "v1.2"\n'
                'verify: {identities: [{issuer: "https://i", subject: "me"}], '
                'trustedRoot: "keys/trusted_root.json"}',
            )
        },
        [
            "environments/dev.cue",
            "environments.dev.verify.trustedRoot",
            "not a file in the repository",
        ],
    ),
    "forge-token-not-a-forge-variable": (
        {
            "forge.cue": 'package reconciler\nsettings: forge: {type: "gitea", url: '
            '"https://git.example.org", repository: "a/b", tokenEnv: "RECONCILER_WEBHOOK_SECRET"}\n'
        },
        ["forge.cue", "settings.forge.tokenEnv"],
    ),
    "forge-url-metadata-endpoint": (
        {
            "forge.cue": 'package reconciler\nsettings: forge: {type: "gitea", url: '
            '"http://169.254.169.254", repository: "a/b", tokenEnv: "RECONCILER_FORGE_T"}\n'
        },
        ["forge.cue", "settings.forge.url", "metadata endpoint", "token never goes there"],
    ),
    "registry-concurrency-zero": (
        {
            "reconciler.cue": 'package reconciler\nsettings: {\n  verify: keys: ["keys/cosign.pub"]\n'
            '  registries: "r.example": concurrency: 0\n}\n'
        },
        ["reconciler.cue:4", 'settings.registries."r.example".concurrency', "invalid value 0"],
    ),
    "environment-file-name-not-a-name": (
        {"environments/my env.json": '{"catalog": "example.org/acme/shop", "release": "v1.1"}'},
        ["environments/my env.json", 'environments["my env"]', "is not a name"],
    ),
    "state-file-over-size-limit": (
        {"catalogs/big.json": BIG},
        ["catalogs/big.json", "over the 1,048,576-byte limit"],
    ),
    "non-utf8-bytes": (
        {
            "environments/dev.cue": b'package reconciler\n// caf\xe9\nenvironments: dev: release: "v1.2"\n'
        },
        ["environments/dev.cue:2", "not UTF-8: byte 0xe9"],
    ),
    "cue-missing-required-field": (
        {"environments/qa.cue": 'package reconciler\n\nenvironments: qa: {\n\tcatalog: "x"\n}\n'},
        ["environments/qa.cue:4", "environments.qa.release", "required field 'release' is missing"],
    ),
    "cue-catalog-missing-source": (
        {
            "catalogs/extra.cue": 'package reconciler\ncatalogs: "example.org/x": {\n  releases: []\n}\n'
        },
        ["catalogs/extra.cue:3", '"example.org/x".source', "required field 'source' is missing"],
    ),
    "cue-not-concrete": (
        {"environments/qa.cue": env_cue("qa", f"{SHOP}\nrelease: string")},
        ["environments/qa.cue:5", "environments.qa.release", "not a concrete value"],
    ),
    "cue-undefined-reference": (
        {"environments/qa.cue": env_cue("qa", f"{SHOP}\nrelease: environments.nope.release")},
        ["environments/qa.cue:5", "environments.qa.release", "undefined field"],
    ),
    "cue-nested-unknown-field": (
        {"environments/qa.cue": env_cue("qa", f'{SHOP}\nrelease: "v1.1"\ntarget: digest: "x"')},
        ["environments/qa.cue:6", "environments.qa.target.digest", "unknown field 'digest'"],
    ),
    "cue-conflict-names-both-files": (
        {"environments/zz.cue": 'package reconciler\n\nenvironments: prod: release: "v1.2"\n'},
        [
            "environments/prod.cue:",
            "environments.prod.release",
            "conflicting values",
            "also environments/zz.cue:3",
        ],
    ),
    "environment-name-too-long-for-record-tag": (
        {
            f"environments/{'e' * 111}.json": '{"catalog": "example.org/acme/shop", "release": "v1.1"}'
        },
        [
            f"environments/{'e' * 111}.json",
            "111 characters",
            "apply record tag",
            "at most 110 characters",
        ],
    ),
    "two-environments-one-tag-host-case": (
        {
            "environments/qa.cue": env_cue(
                "qa",
                f'{SHOP}\nrelease: "v1.1"\ntarget: {{repository: "127.0.0.1:5000/acme/shop", '
                'tag: "dev-{item}"}',
            ),
            "environments/dev.cue": env_cue(
                "dev", f'{SHOP}\nrelease: "v1.2"\ntarget: repository: "LOCALHOST.example/acme/shop"'
            ),
            "environments/staging.cue": env_cue(
                "staging",
                f'{SHOP}\nrelease: "v1.1"\nrequires: ["dev"]\n'
                'target: {repository: "localhost.example/acme/shop", tag: "dev-{item}"}',
            ),
        },
        [
            "environments/staging.cue",
            "writes localhost.example/acme/shop:dev-web",
            "'dev' also writes as LOCALHOST.example/acme/shop:dev-web",
        ],
    ),
    "two-environments-one-tag-docker-hub": (
        {
            "environments/dev.cue": env_cue(
                "dev", f'{SHOP}\nrelease: "v1.2"\ntarget: repository: "docker.io/acme/shop"'
            ),
            "environments/staging.cue": env_cue(
                "staging",
                f'{SHOP}\nrelease: "v1.1"\nrequires: ["dev"]\n'
                'target: {repository: "index.docker.io/acme/shop", tag: "dev-{item}"}',
            ),
            "environments/prod.cue": env_cue(
                "prod",
                f'{SHOP}\nrelease: "v1.1"\nrequires: ["staging"]\n'
                'target: {repository: "registry-1.docker.io/acme/shop", tag: "dev-{item}"}',
            ),
        },
        ["environments/prod.cue", "environments/staging.cue", "'dev' also writes as docker.io"],
    ),
    "two-environments-one-tag-oci-layout": (
        {
            "environments/dev.cue": env_cue(
                "dev", f'{SHOP}\nrelease: "v1.2"\ntarget: repository: "oci:/srv/l"'
            ),
            "environments/staging.cue": env_cue(
                "staging",
                f'{SHOP}\nrelease: "v1.1"\nrequires: ["dev"]\n'
                'target: {repository: "oci:/srv/l/.", tag: "dev-{item}"}',
            ),
            "environments/prod.cue": env_cue(
                "prod",
                f'{SHOP}\nrelease: "v1.1"\nrequires: ["staging"]\n'
                'target: {repository: "oci:/srv//l/", tag: "dev-{item}"}',
            ),
        },
        ["environments/prod.cue", "environments/staging.cue", "'dev' also writes as oci:/srv/l:"],
    ),
    "non-utf8-json": (
        {"environments/qa.json": b'{"catalog": "\xff"}'},
        ["environments/qa.json:1", "not UTF-8"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_refused_with_file_and_field(
    case: str, state_repo: StateRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    files, expected = BAD[case]
    state_repo.commit(files, f"break it: {case}")
    code, out, err = validate(state_repo, capsys)
    assert code == 1
    assert out == ""
    assert "Traceback" not in err
    assert err.startswith("error: invalid desired state")
    for text in expected:
        assert text in err, f"{text!r} not in:\n{err}"


def test_bad_input_as_json_lists_each_problem(
    state_repo: StateRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    state_repo.commit(
        {"environments/dev.cue": env_cue("dev", f'{SHOP}\nrelease: "v1.3"\nrequires: ["qa"]')}
    )
    code, out, _ = validate(state_repo, capsys, "--json")
    doc = json.loads(out)
    assert code == 1 and doc["valid"] is False
    fields = {e["field"]: e for e in doc["errors"]}
    assert set(fields) == {"environments.dev.release", "environments.dev.requires[0]"}
    assert fields["environments.dev.release"]["file"] == "environments/dev.cue"
    assert fields["environments.dev.release"]["line"] == 5
    assert "v1.2" in fields["environments.dev.release"]["hint"]


def test_missing_cue_executable_is_a_clear_error(
    state_repo: StateRepo, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECONCILER_CUE", "/nonexistent/bin/cue")
    code, _, err = validate(state_repo, capsys)
    assert code == 1
    assert "the cue executable '/nonexistent/bin/cue' was not found" in err
    assert "RECONCILER_CUE" in err and "Traceback" not in err


# --------------------------------------------------------------------------- attribution


def load(repo: StateRepo, path: str = "") -> DesiredState:
    return Loader(repo.path / ".cache").load(GitSource(str(repo.path)).snapshot("main", path))


def test_objects_are_attributed_to_the_files_cue_says_define_them(state_repo: StateRepo) -> None:
    """An environment named `catalog` (and a catalog named `source`) in a new file belongs
    to that file, not to a file whose text merely mentions the word."""
    state_repo.commit(
        {
            "environments/zz.cue": "package reconciler\n\nenvironments: catalog: {\n\tcatalog: "
            '"example.org/acme/shop"\n\trelease: "v1.1"\n\ttarget: tag: "stable-{item}"\n}\n',
            "catalogs/zz.cue": 'package reconciler\n\ncatalogs: source: {\n\tsource: "oci:/x"\n'
            "\treleases: []\n}\n",
            "environments/more.cue": "package reconciler\n\nenvironments: dev: prune: true\n",
        }
    )
    state = load(state_repo)
    rogue = state.environments["catalog"]
    assert (rogue.file, rogue.files) == ("environments/zz.cue", ("environments/zz.cue",))
    assert state.catalogs["source"].files == ("catalogs/zz.cue",)
    assert state.catalogs["example.org/acme/shop"].files == ("catalogs/shop.cue",)
    dev = state.environments["dev"]
    assert dev.file == "environments/dev.cue"  # it defines `release`: what promote edits
    assert dev.files == ("environments/dev.cue", "environments/more.cue")
    assert state.environments["prod"].files == ("environments/prod.cue",)


def test_release_defined_in_another_file_makes_that_file_primary(state_repo: StateRepo) -> None:
    state_repo.commit(
        {
            "environments/qa.cue": "package reconciler\n\nenvironments: qa: {\n\tcatalog: "
            '"example.org/acme/shop"\n}\n',
            "environments/qa-release.cue": "package reconciler\n\nenvironments: qa: release: "
            '"v1.1"\n',
        }
    )
    qa = load(state_repo).environments["qa"]
    assert qa.file == "environments/qa-release.cue"
    assert qa.files == ("environments/qa-release.cue", "environments/qa.cue")


def test_json_objects_belong_to_their_file(state_repo: StateRepo) -> None:
    state_repo.commit(
        {"environments/qa.json": '{"catalog": "example.org/acme/shop", "release": "v1.1"}'}
    )
    qa = load(state_repo).environments["qa"]
    assert (qa.file, qa.files) == ("environments/qa.json", ("environments/qa.json",))


# --------------------------------------------------------------------------- modules

MODULE = 'module: "acme.example/state@v0"\nlanguage: version: "v0.17.1"\n'
LIB = (
    'package lib\n\nimport "strings"\n\n'
    '#Shop: "example.org/acme/\\(strings.ToLower("SHOP"))"\n'
    '#Release: "v1.1"\n'
)


def module_files() -> dict[str, str | bytes | None]:
    return {
        "cue.mod/module.cue": MODULE,
        "lib/lib.cue": LIB,
        "lib/README": "not cue: never read",
        "unused/unused.cue": "package unused\n\nx: 1\n",
        "environments/qa.cue": 'package reconciler\n\nimport "acme.example/state/lib"\n\n'
        "environments: qa: {\n\tcatalog: lib.#Shop\n\trelease: lib.#Release\n}\n",
    }


def test_a_cue_module_with_imports_validates(
    state_repo: StateRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    state_repo.commit(module_files())
    code, out, err = validate(state_repo, capsys, "--json")
    assert code == 0, err
    qa = json.loads(out)["environments"]["qa"]
    assert (qa["catalog"], qa["release"]) == ("example.org/acme/shop", "v1.1")
    state = load(state_repo)
    # Everything the module evaluation read is an input the commit-signature rule guards.
    assert {"cue.mod/module.cue", "lib/lib.cue", "environments/qa.cue"} <= state.inputs
    assert "unused/unused.cue" not in state.inputs and "lib/README" not in state.inputs
    assert state.environments["qa"].file == "environments/qa.cue"


def test_a_cue_module_under_a_path_validates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cue_bin: str
) -> None:
    from tests.support.staterepo import example_files

    repo = StateRepo(tmp_path / "mono")
    files: dict[str, str | bytes | None] = {f"deploy/{k}": v for k, v in example_files().items()}
    files.update({f"deploy/{k}": v for k, v in module_files().items()})
    repo.commit(files)
    code, out, err = validate(repo, capsys, "--path", "deploy", "--json")
    assert "qa" in json.loads(out)["environments"]
    assert code == 0, err
    state = load(repo, "deploy")
    assert {"deploy/cue.mod/module.cue", "deploy/lib/lib.cue"} <= state.inputs


def test_a_module_import_that_does_not_exist_names_the_file(
    state_repo: StateRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    files = module_files()
    files["environments/qa.cue"] = (
        'package reconciler\n\nimport "acme.example/state/nope"\n\n'
        'environments: qa: {\n\tcatalog: nope.#Shop\n\trelease: "v1.1"\n}\n'
    )
    state_repo.commit(files)
    code, _, err = validate(state_repo, capsys)
    assert code == 1
    assert "environments/qa.cue:3" in err and "acme.example/state/nope" in err, err


def test_a_module_error_in_an_imported_package_names_that_file(
    state_repo: StateRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    files = module_files()
    files["lib/lib.cue"] = LIB + '#Release: "v1.2"\n'
    state_repo.commit(files)
    code, _, err = validate(state_repo, capsys)
    assert code == 1
    assert "lib/lib.cue:" in err and "conflicting values" in err, err
