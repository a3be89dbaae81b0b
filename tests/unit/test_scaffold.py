"""`reconciler init` refuses before it writes: each refusal leaves the directory as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.proposals.scaffold import InitOptions, InitRefused, init
from tests.support.signing import new_key


@pytest.fixture
def signer(tmp_path: Path) -> Path:
    path = tmp_path / "cosign.pub"
    path.write_text(new_key()[1])
    return path


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_init_refuses_a_non_empty_directory(tmp_path: Path, signer: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "notes.txt").write_text("mine")
    with pytest.raises(InitRefused, match=r"is not empty \(notes\.txt\)"):
        init(InitOptions(state, signer_key=signer))
    assert listing(state) == ["notes.txt"]


def test_init_refuses_a_record_key_that_would_be_committed(tmp_path: Path, signer: Path) -> None:
    state = tmp_path / "state"
    with pytest.raises(InitRefused, match="where it would be committed"):
        init(InitOptions(state, signer_key=signer, record_key=state / "keys" / "records.key"))
    assert not state.exists()


def test_init_refuses_a_private_key_as_the_signer_key(tmp_path: Path) -> None:
    private = tmp_path / "cosign.key"
    private.write_text("-----BEGIN PRIVATE KEY-----\nMIG...\n-----END PRIVATE KEY-----\n")
    with pytest.raises(InitRefused, match="is not a PEM public key"):
        init(InitOptions(tmp_path / "state", signer_key=private))
    assert not (tmp_path / "state").exists()


def test_init_never_overwrites_a_key(tmp_path: Path, signer: Path) -> None:
    key = tmp_path / "records.key"
    key.write_text("kept")
    with pytest.raises(InitRefused, match="exists"):
        init(InitOptions(tmp_path / "state", signer_key=signer, record_key=key))
    assert key.read_text() == "kept"
