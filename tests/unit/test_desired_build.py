"""The pure builder: cross-checks on a document, with an in-memory state reader."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.desired.build import Builder
from reconciler.desired.sources import Position, SourceMap
from reconciler.errors import InvalidState
from reconciler.registry import canonical_repository

D = "sha256:" + "a" * 64


class Reader:
    """A StateReader over a dict; records what was consulted, like a Snapshot."""

    commit, tree_id = "c" * 40, "t" * 40

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.data = files or {}
        self.consulted: set[str] = set()

    def read(self, relpath: str) -> bytes:
        self.consulted.add(relpath)
        return self.data[relpath]

    def exists(self, relpath: str) -> bool:
        self.consulted.add(relpath)
        return relpath in self.data

    def files(self, directory: str = "") -> Iterator[tuple[str, int]]:
        return iter(())

    def display(self, relpath: str) -> str:
        return relpath

    def inputs(self) -> frozenset[str]:
        return frozenset(self.consulted)


def document(**envs: dict[str, Any]) -> dict[str, Any]:
    return {
        "settings": {"verify": {"insecureSkipSignatures": True}},
        "catalogs": {
            "shop": {
                "name": "shop",
                "source": "r.example/acme/shop",
                "releases": [{"name": "v1", "items": {"web": D}}],
            }
        },
        "environments": {
            name: {"catalog": "shop", "release": "v1", **extra} for name, extra in envs.items()
        },
    }


def positions(doc: dict[str, Any]) -> SourceMap:
    where = {("catalogs", "shop", "releases"): (Position("catalogs/shop.cue", 3),)}
    for name in doc["environments"]:
        where[("environments", name, "release")] = (Position(f"environments/{name}.cue", 4),)
    return SourceMap(where)


def build(doc: dict[str, Any], reader: Reader | None = None) -> Any:
    return Builder(reader or Reader(), doc, positions(doc)).build()


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("REGISTRY.example.org/acme/shop", "registry.example.org/acme/shop"),
        ("docker.io/acme/shop", "index.docker.io/acme/shop"),
        ("registry-1.docker.io/acme/shop", "acme/shop"),
        ("docker.io/ubuntu", "index.docker.io/library/ubuntu"),
        ("oci:/srv/l", "oci:/srv/l/."),
        ("oci:/srv/l/", "oci:/srv//l"),
        ("oci:/srv/x/../l", "oci:/srv/l"),
    ],
)
def test_canonical_repository_spells_one_repository_one_way(a: str, b: str) -> None:
    assert canonical_repository(a) == canonical_repository(b)


def test_canonical_repository_keeps_different_repositories_apart() -> None:
    assert canonical_repository("r.example/a") != canonical_repository("r.example/A/../a")
    assert canonical_repository("oci:/srv/l") != canonical_repository("oci:/srv/m")
    assert canonical_repository("r.example:5000/a") != canonical_repository("r.example/a")


def test_two_environments_writing_one_canonical_tag_are_refused() -> None:
    doc = document(
        dev={"target": {"repository": "docker.io/acme/shop", "tag": "x-{item}"}},
        qa={"target": {"repository": "index.docker.io/acme/shop", "tag": "x-{item}"}},
    )
    with pytest.raises(InvalidState) as exc:
        build(doc)
    [problem] = exc.value.problems
    assert problem.file == "environments/qa.cue" and problem.field == "environments.qa.target.tag"
    assert "also writes as docker.io/acme/shop:x-web" in problem.message


@pytest.mark.parametrize(("length", "ok"), [(110, True), (111, False), (120, False)])
def test_environment_names_must_leave_room_for_the_record_tag(length: int, ok: bool) -> None:
    name = "e" * length
    if ok:
        assert name in build(document(**{name: {}})).environments
        return
    with pytest.raises(InvalidState) as exc:
        build(document(**{name: {}}))
    [problem] = exc.value.problems
    assert problem.file == f"environments/{name}.cue" and f"{length} characters" in problem.message
    assert "at most 110 characters" in problem.hint


def test_key_files_are_read_through_the_reader_so_they_are_inputs() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    doc = document(dev={})
    doc["settings"] = {"verify": {"keys": ["keys/a.pub"]}, "git": {"allowedSigners": "signers"}}
    reader = Reader({"keys/a.pub": pem, "signers": b"x"})
    state = build(doc, reader)
    assert {"keys/a.pub", "signers"} <= state.inputs
    assert state.proposed_settings.allowed_signers_data == b"x"


def test_an_object_cue_gives_no_position_for_is_refused() -> None:
    doc = document(dev={})
    with pytest.raises(InvalidState) as exc:
        Builder(Reader(), doc, SourceMap({})).build()
    assert any("no position" in p.message for p in exc.value.problems)


def test_primary_and_all_files_of_an_environment() -> None:
    doc = document(dev={"prune": True})
    where = {
        ("catalogs", "shop", "releases"): (Position("catalogs/shop.cue", 3),),
        ("environments", "dev", "release"): (Position("environments/z.cue", 2),),
        ("environments", "dev", "catalog"): (Position("environments/a.cue", 2),),
        ("environments", "dev", "prune"): (
            Position("environments/a.cue", 3),
            Position("environments/m.cue", 1),
        ),
    }
    dev = Builder(Reader(), doc, SourceMap(where)).build().environments["dev"]
    assert dev.file == "environments/z.cue"
    assert dev.files == ("environments/a.cue", "environments/m.cue", "environments/z.cue")
