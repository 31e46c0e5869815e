"""``export -o FILE`` never overwrites: an existing file needs --force, a path inside the root is always refused."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from cli_helpers import cli, populate


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    anyio.run(populate, r)
    return r


def test_exporting_onto_the_live_database_is_refused_and_changes_nothing(root: Path) -> None:
    db = root / "threads.db"
    before = db.read_bytes()
    for force in ([], ["--force"]):
        res = cli(root, "export", "--all", "-o", str(db), *force)
        assert res.exit_code != 0
        assert "[export_output_in_root]" in res.stderr and str(root.resolve()) in res.stderr
        assert db.read_bytes() == before
    assert cli(root, "ls", "--json").exit_code == 0  # the root still works


@pytest.mark.parametrize("where", ["threads/new.jsonl", "backup.jsonl", "keys/ed25519.key"])
def test_any_path_inside_the_root_is_refused_even_with_force(root: Path, where: str) -> None:
    target = root / where
    existed = target.read_bytes() if target.exists() else None
    res = cli(root, "export", "--all", "-o", str(target), "--force")
    assert res.exit_code != 0 and "[export_output_in_root]" in res.stderr
    assert (target.read_bytes() if target.exists() else None) == existed


def test_a_symlink_pointing_into_the_root_is_refused(root: Path, tmp_path: Path) -> None:
    link = tmp_path / "innocent.jsonl"
    link.symlink_to(root / "threads.db")
    before = (root / "threads.db").read_bytes()
    res = cli(root, "export", "--all", "-o", str(link), "--force")
    assert res.exit_code != 0 and "[export_output_in_root]" in res.stderr
    assert (root / "threads.db").read_bytes() == before


def test_an_existing_file_is_refused_unless_force(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("my notes\n")
    res = cli(root, "export", "--all", "-o", str(out))
    assert res.exit_code != 0 and "[export_output_exists]" in res.stderr and "--force" in res.stderr
    assert out.read_text() == "my notes\n"
    res = cli(root, "export", "--all", "-o", str(out), "--force")
    assert res.exit_code == 0, res.stderr
    assert json.loads(out.read_text().splitlines()[0])["kind"] == "threadloom-bundle"


def test_a_new_file_outside_the_root_is_written(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "backup.jsonl"
    assert cli(root, "export", "--all", "-o", str(out)).exit_code == 0
    assert out.exists()
