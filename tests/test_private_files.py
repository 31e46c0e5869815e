"""Files are private: the root 0700, its folders 0700 and its files 0600, even under umask 022."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from cli_helpers import cli, msg, open_root
from integrity_helpers import written_thread


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for p in root.rglob("*"):
        out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return out


async def _populate(root: Path) -> str:
    async with open_root(root) as svc:
        tid = await written_thread(svc, turns=2)
        other = (await svc.create_thread(title="open")).thread_id
        await svc.append(other, [msg("still running")])
        return tid


def test_a_new_root_and_everything_in_it_are_private_under_umask_022(tmp_path: Path, umask_022: None) -> None:
    root = tmp_path / "deep" / "root"
    tid = anyio.run(_populate, root)
    found = modes(root)
    thread = root / "threads" / tid
    assert {"threads.db", f"threads/{tid}/transcript.jsonl", f"threads/{tid}/thread.json"} <= set(found)
    assert (thread / "capabilities.md").exists()
    for name, mode in found.items():
        if name == "keys/ed25519.pub":
            continue  # a public key is meant to be shared
        want = 0o700 if (root / name).is_dir() else 0o600
        assert mode == want, f"{name} is {mode:o}, want {want:o}"


def test_the_wal_and_shm_of_a_live_database_are_private(tmp_path: Path, umask_022: None) -> None:
    root = tmp_path / "root"

    async def body() -> dict[str, int]:
        async with open_root(root) as svc:
            await svc.append((await svc.create_thread()).thread_id, [msg("hi")])
            return {n: stat.S_IMODE((root / n).stat().st_mode) for n in ("threads.db-wal", "threads.db-shm")}

    assert anyio.run(body) == {"threads.db-wal": 0o600, "threads.db-shm": 0o600}


def test_doctor_reports_files_open_to_others_and_fix_closes_them(tmp_path: Path) -> None:
    root = tmp_path / "root"
    tid = anyio.run(_populate, root)
    loose = root / "threads" / tid / "transcript.jsonl"
    os.chmod(loose, 0o644)
    os.chmod(root / "threads", 0o755)
    res = cli(root, "doctor", "--json")
    report = json.loads(res.stdout)
    [check] = [c for c in report["checks"] if c["name"] == "modes"]
    assert check["level"] == "warn" and f"threads/{tid}/transcript.jsonl (644)" in check["detail"]
    assert "threads (755)" in check["detail"] and "doctor --fix" in check["fix"]
    fixed = json.loads(cli(root, "doctor", "--json", "--fix").stdout)
    assert [c["level"] for c in fixed["checks"] if c["name"] == "modes"] == ["ok"]
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "threads").stat().st_mode) == 0o700
