from __future__ import annotations

import pytest

from reconciler.errors import Problem, redact_url
from reconciler.model import TAG_RE, ItemRef, Policy, PublicKey, expand_tag

D = "sha256:" + "d" * 64


def test_expand_tag_fills_env_item_and_release() -> None:
    assert expand_tag("{env}-{item}", "prod", "web", "v1.2") == "prod-web"
    assert expand_tag("{release}_{item}", "prod", "web", "v1.2") == "v1.2_web"
    assert expand_tag("latest", "prod", "web", "v1.2") == "latest"


@pytest.mark.parametrize("template", ["{version}", "{0}", "{env.__class__}", "{}"])
def test_expand_tag_refuses_other_placeholders(template: str) -> None:
    with pytest.raises(ValueError, match="unknown placeholder"):
        expand_tag(template, "prod", "web", "v1")


@pytest.mark.parametrize(
    ("tag", "valid"),
    [
        ("prod-web", True),
        ("_x", True),
        ("v1.2", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("-x", False),
        (".x", False),
        ("a/b", False),
        ("a b", False),
        ("", False),
    ],
)
def test_oci_tag_grammar(tag: str, valid: bool) -> None:
    assert bool(TAG_RE.match(tag)) is valid


def test_item_ref_in_source_or_elsewhere() -> None:
    assert ItemRef.parse(D) == ItemRef(D, None)
    other = ItemRef.parse(f"registry.local:5000/team/app@{D}")
    assert other == ItemRef(D, "registry.local:5000/team/app")
    assert str(other) == f"registry.local:5000/team/app@{D}"


def test_policy_emptiness_and_description() -> None:
    assert Policy().empty
    assert not Policy(insecure_skip_signatures=True).empty
    assert Policy(insecure_skip_signatures=True).describe().startswith("UNVERIFIED")
    assert Policy(keys=(PublicKey("keys/a.pub", "pem"),)).describe() == "1 key"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://alice:s3cret@git.example/state.git?token=t0k#frag",
            "https://git.example/state.git",
        ),
        ("https://git.example:8443/state.git", "https://git.example:8443/state.git"),
        ("ssh://git@git.example/state.git", "ssh://git.example/state.git"),
        ("git@git.example:team/state.git", "git@git.example:team/state.git"),
    ],
)
def test_redact_url_drops_userinfo_and_query(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_problem_renders_file_line_field_and_hint() -> None:
    p = Problem(
        "environments/prod.cue", "environments.prod.release", "no such release", "use v1", 4
    )
    assert (
        str(p)
        == "environments/prod.cue:4: environments.prod.release: no such release\n  hint: use v1"
    )
