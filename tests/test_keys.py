"""The root's Ed25519 key: created once, shared by every process, never silently replaced."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from conftest import PYTHON
from threadloom.config import Settings
from threadloom.errors import IntegrityError
from threadloom.integrity import Signer
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore

pytestmark = pytest.mark.anyio

KEY_ID = """
import sys, anyio
from pathlib import Path
from threadloom.store import SQLiteStore

async def main():
    async with SQLiteStore(Path(sys.argv[1]), durability="normal") as s:
        print(s.signer.key_id)

anyio.run(main)
"""


async def make_thread(root: Path) -> str:
    async with ThreadService(SQLiteStore(root, durability="normal"), Settings(root=root)) as svc:
        t = await svc.create_thread(title="signed")
        await svc.append(t.thread_id, [{"type": "result", "cost": 0.1}])
        return t.thread_id


async def test_the_key_is_created_on_first_use_with_private_mode_0600(settings: Settings) -> None:
    await make_thread(settings.root)
    keys = settings.root / "keys"
    assert stat.S_IMODE((keys / "ed25519.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert (keys / "ed25519.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert b"PRIVATE KEY" in (keys / "ed25519.key").read_bytes()
    assert sorted(p.name for p in keys.iterdir()) == ["ed25519.key", "ed25519.pub"]  # no temp files left


async def test_a_reopened_store_signs_with_the_same_key(settings: Settings) -> None:
    tid = await make_thread(settings.root)
    async with ThreadService(SQLiteStore(settings.root, durability="normal"), settings) as svc:
        assert (await svc.verify_thread(tid)).ok


def test_processes_starting_together_on_a_new_root_share_one_key(tmp_path: Path, cli_env: dict) -> None:
    root = tmp_path / "fresh"
    procs = [
        subprocess.Popen(
            [PYTHON, "-c", KEY_ID, str(root)],
            env=cli_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    ids = {o.strip() for o, _ in outs}
    assert len(ids) == 1
    signer = Signer.for_root(root)
    signer.load(allow_create=False)
    assert ids == {signer.key_id}


async def test_a_second_process_verifies_what_the_first_signed(settings: Settings, cli_env: dict) -> None:
    tid = await make_thread(settings.root)
    out = subprocess.run(
        [PYTHON, "-m", "threadloom", "verify", tid, "--root", str(settings.root)],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert f"{tid}: ok" in out.stdout


async def test_a_missing_key_for_a_store_with_threads_is_an_error_not_a_new_key(settings: Settings) -> None:
    await make_thread(settings.root)
    key = settings.root / "keys" / "ed25519.key"
    key.unlink()
    store = SQLiteStore(settings.root, durability="normal")
    with pytest.raises(IntegrityError) as err:
        await store.open()
    assert err.value.rule == "signing_key_missing"
    assert str(key) in err.value.message and "backup" in err.value.message
    assert not key.exists()


async def test_a_missing_keys_folder_for_a_store_with_threads_is_an_error(settings: Settings) -> None:
    await make_thread(settings.root)
    for p in (settings.root / "keys").iterdir():
        p.unlink()
    (settings.root / "keys").rmdir()
    with pytest.raises(IntegrityError, match="is missing"):
        await SQLiteStore(settings.root, durability="normal").open()
    assert not (settings.root / "keys").exists()


async def test_the_cli_reports_a_missing_key_in_one_line(settings: Settings, cli_env: dict) -> None:
    await make_thread(settings.root)
    (settings.root / "keys" / "ed25519.key").unlink()
    out = subprocess.run(
        [PYTHON, "-m", "threadloom", "verify", "--all", "--root", str(settings.root)],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "signing key" in out.stderr and "Traceback" not in out.stderr


async def test_a_store_without_threads_gets_a_key(settings: Settings) -> None:
    async with SQLiteStore(settings.root, durability="normal"):
        pass
    (settings.root / "keys" / "ed25519.key").unlink()
    (settings.root / "keys" / "ed25519.pub").unlink()
    async with SQLiteStore(settings.root, durability="normal") as store:
        assert store.signer.loaded
    assert (settings.root / "keys" / "ed25519.key").exists()


async def test_an_unreadable_key_is_a_clear_error(settings: Settings) -> None:
    await make_thread(settings.root)
    (settings.root / "keys" / "ed25519.key").write_bytes(b"not a key")
    with pytest.raises(IntegrityError) as err:
        await SQLiteStore(settings.root, durability="normal").open()
    assert err.value.rule == "signing_key_unreadable"


async def test_a_public_key_of_another_pair_is_refused(settings: Settings) -> None:
    await make_thread(settings.root)
    other = Signer.ephemeral()
    (settings.root / "keys" / "ed25519.pub").write_bytes(other.public_pem)
    with pytest.raises(IntegrityError) as err:
        await SQLiteStore(settings.root, durability="normal").open()
    assert err.value.rule == "public_key_mismatch"


async def test_a_deleted_public_key_is_derived_again(settings: Settings) -> None:
    await make_thread(settings.root)
    pub = settings.root / "keys" / "ed25519.pub"
    before = pub.read_bytes()
    pub.unlink()
    async with SQLiteStore(settings.root, durability="normal"):
        pass
    assert pub.read_bytes() == before


def test_signatures_verify_only_with_the_signing_key() -> None:
    a, b = Signer.ephemeral(), Signer.ephemeral()
    sig = a.sign(b"data")
    assert a.verify(b"data", sig)
    assert not a.verify(b"datA", sig)
    assert not b.verify(b"data", sig)
    assert not a.verify(b"data", "not base64!")
    assert not a.verify(b"data", None)


async def test_a_key_from_another_root_is_refused(settings: Settings, tmp_path: Path) -> None:
    await make_thread(settings.root)
    other = tmp_path / "other"
    await make_thread(other)
    for name in ("ed25519.key", "ed25519.pub"):
        (settings.root / "keys" / name).write_bytes((other / "keys" / name).read_bytes())
    with pytest.raises(IntegrityError) as err:
        await SQLiteStore(settings.root, durability="normal").open()
    assert err.value.rule == "signing_key_mismatch"


async def test_a_store_from_before_signing_gets_a_key_despite_its_threads(settings: Settings) -> None:
    import sqlite3

    tid = await make_thread(settings.root)
    with sqlite3.connect(settings.root / "threads.db") as conn:
        conn.execute("DELETE FROM meta")  # as a database written before keys existed
    for p in (settings.root / "keys").iterdir():
        p.unlink()
    async with ThreadService(SQLiteStore(settings.root, durability="normal"), settings) as svc:
        report = await svc.verify_thread(tid)
    assert (settings.root / "keys" / "ed25519.key").exists()
    assert not report.ok  # its old checkpoints were signed by a key that is gone: reported, not hidden
