"""``doctor --recover`` rebuilds what the database lost from the mirrors, trusting only signed lines;
plain ``doctor`` reports a lost database; ``doctor --fix`` never moves a mirror that holds more."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest

from cli_helpers import cli, msg
from integrity_helpers import lines_of, transcript, write_lines, written_thread
from threadloom.config import Settings
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore

pytestmark = pytest.mark.anyio

CHILD = textwrap.dedent(
    """
    import os, signal, sqlite3, sys
    from pathlib import Path
    import anyio
    sys.path.insert(0, sys.argv[2])
    from integrity_helpers import turn
    from threadloom.config import Settings
    from threadloom.service import ThreadService
    from threadloom.store import SQLiteStore

    async def main(root, checkpoint_wal):
        settings = Settings(root=Path(root), durability="full")
        async with ThreadService(SQLiteStore(settings.root, durability="full"), settings) as svc:
            kept = (await svc.create_thread(title="kept")).thread_id
            for i in range(2):
                for ev in turn(i):
                    await svc.append(kept, [ev])
            if checkpoint_wal:
                conn = sqlite3.connect(Path(root) / "threads.db")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # what came so far is in threads.db
                conn.close()
            for i in range(2, 5):
                for ev in turn(i):
                    await svc.append(kept, [ev])
            lost = (await svc.create_thread(title="lost entirely")).thread_id
            for i in range(2):
                for ev in turn(i):
                    await svc.append(lost, [ev])
            await svc.append(kept, [{"type": "message", "role": "user", "text": "unsigned tail"}])
            print(kept, lost, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    anyio.run(main, sys.argv[1], sys.argv[3] == "1")
    """
)


def killed_with_wal_cut(root: Path, env: dict, *, checkpoint_wal: bool = True) -> tuple[str, str]:
    tests = str(Path(__file__).resolve().parent)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), tests, "1" if checkpoint_wal else "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    kept, lost = proc.stdout.split()
    with open(root / "threads.db-wal", "r+b") as f:
        f.truncate(0)  # every commit since the checkpoint is gone from the database
    return kept, lost


def doctor(root: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    res = cli(root, "doctor", "--json", *extra)
    return res.exit_code, json.loads(res.stdout)


def checks(report: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [c for c in report["checks"] if c["name"] == name and c["level"] != "ok"]


def service(root: Path) -> ThreadService:
    return ThreadService(SQLiteStore(root, durability="normal", reconcile=False), Settings(root=root))


def last_checkpoint(lines: list[bytes]) -> int:
    return max(n for n, raw in enumerate(lines, start=1) if json.loads(raw)["type"] == "checkpoint")


@pytest.mark.slow
async def test_a_cut_wal_is_reported_left_alone_by_fix_and_rebuilt_by_recover(
    tmp_path: Path, cli_env: dict
) -> None:
    root = tmp_path / "root"
    kept, lost = killed_with_wal_cut(root, cli_env)
    kept_path, lost_path = transcript(root, kept), transcript(root, lost)
    kept_bytes, lost_bytes = kept_path.read_bytes(), lost_path.read_bytes()
    async with service(root) as svc:
        assert (await svc.get_thread(kept)).event_count < len(lines_of(kept_path))
        assert lost not in {t.thread_id for t in await svc.all_threads()}

    code, report = await anyio.to_thread.run_sync(doctor, root)
    assert code == 1
    assert kept in checks(report, "mirrors")[0]["detail"]
    [missing] = checks(report, "lost")
    assert lost in missing["detail"] and "doctor --recover" in missing["fix"]

    code, fixed = await anyio.to_thread.run_sync(lambda: doctor(root, "--fix", "--yes"))
    assert kept_path.read_bytes() == kept_bytes and lost_path.read_bytes() == lost_bytes  # untouched
    assert any(kept in f and "--recover" in f for f in fixed["fixed"])
    assert any(lost in f and "--recover" in f for f in fixed["fixed"])

    code, recovered = await anyio.to_thread.run_sync(lambda: doctor(root, "--recover"))
    [rec] = [c for c in recovered["checks"] if c["name"] == "recover"]
    assert rec["level"] == "warn" and "1 line(s) could not be trusted" in rec["detail"]
    assert any(kept in f and "recovered lines" in f for f in recovered["fixed"])
    assert any(lost in f and "missing from the database" in f for f in recovered["fixed"])
    assert code == 0, recovered
    async with service(root) as svc:
        for tid, original in ((kept, kept_bytes), (lost, lost_bytes)):
            lines = original.split(b"\n")[:-1]
            upto = last_checkpoint(lines)
            assert [e.line.encode() for e in await svc.all_events(tid)] == lines[:upto]
            assert (await svc.verify_thread(tid)).ok
            assert transcript(root, tid).read_text() == await svc.transcript(tid)
        assert (await svc.get_thread(lost)).title == "lost entirely"
        hits = await svc.search_threads("answer number 4")
        assert kept in json.dumps(hits.model_dump(mode="json"))  # recovered events are searchable
    [evidence] = sorted(kept_path.parent.glob("transcript.jsonl.set-aside-*.reviewed"))
    assert evidence.read_bytes() == kept_bytes  # the unsigned tail is kept, never deleted


@pytest.mark.slow
async def test_plain_doctor_reports_an_empty_database_next_to_transcripts(
    tmp_path: Path, cli_env: dict
) -> None:
    root = tmp_path / "root"
    kept, lost = killed_with_wal_cut(root, cli_env, checkpoint_wal=False)
    code, report = await anyio.to_thread.run_sync(doctor, root)
    assert code == 1 and not report["ok"]
    [missing] = checks(report, "lost")
    assert kept in missing["detail"] and lost in missing["detail"]
    code, recovered = await anyio.to_thread.run_sync(lambda: doctor(root, "--recover"))
    async with service(root) as svc:
        assert {kept, lost} <= {t.thread_id for t in await svc.all_threads()}
        for tid in (kept, lost):
            assert (await svc.verify_thread(tid)).ok


async def test_a_forged_line_is_not_recovered_and_is_kept_beside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    async with ThreadService(SQLiteStore(root, durability="normal"), Settings(root=root)) as svc:
        tid = await written_thread(svc, turns=2, complete=False)
        before = await svc.transcript(tid)
    path = transcript(root, tid)
    lines = lines_of(path)
    forged = json.loads(lines[-1])
    forged.update(seq=len(lines) + 1, type="checkpoint", sha256="00" * 32, signature="AAAA")
    write_lines(path, lines + [json.dumps(forged).encode(), msg_line(len(lines) + 2)])
    tampered = path.read_bytes()
    code, report = await anyio.to_thread.run_sync(lambda: doctor(root, "--recover"))
    [rec] = [c for c in report["checks"] if c["name"] == "recover"]
    assert "recovered 0 event(s); 2 line(s) could not be trusted" in rec["detail"]
    assert any("not signed by this root's key" in f or "does not match" in f for f in report["fixed"])
    async with service(root) as svc:
        assert await svc.transcript(tid) == before  # nothing forged entered the database
        assert path.read_text() == before
    [kept] = sorted(path.parent.glob("transcript.jsonl.set-aside-*.reviewed"))
    assert kept.read_bytes() == tampered


def msg_line(seq: int) -> bytes:
    return json.dumps({"seq": seq, "ts": "2026-01-01T00:00:00Z", **msg("forged")}).encode()


def test_trusted_prefix_stops_at_the_last_checkpoint_that_verifies(tmp_path: Path) -> None:
    from threadloom.integrity import Signer, checkpoint_payload
    from threadloom.recover import trusted_prefix

    signer = Signer.ephemeral()
    other = Signer.ephemeral()
    import hashlib

    lines: list[bytes] = []

    def add(obj: dict) -> None:
        lines.append(json.dumps({"seq": len(lines) + 1, **obj}).encode())

    def digest() -> str:
        return hashlib.sha256(b"".join(x + b"\n" for x in lines)).hexdigest()

    add({"type": "message", "text": "a"})
    add({"type": "checkpoint", **checkpoint_payload(signer, digest())})
    add({"type": "message", "text": "b"})
    add({"type": "checkpoint", **checkpoint_payload(signer, digest())})
    add({"type": "message", "text": "c"})
    assert trusted_prefix(lines, 1, signer) == (4, "line 5 comes after the last checkpoint that verifies")
    add({"type": "checkpoint", **checkpoint_payload(other, digest())})  # another root's key
    good, why = trusted_prefix(lines, 1, signer)
    assert good == 4 and "not signed by this root's key" in why
    assert trusted_prefix(lines, 4, other)[0] == 6  # lines the database holds are not proven again


async def test_a_deleted_database_is_reported_and_rebuilt_from_the_signed_mirrors(tmp_path: Path) -> None:
    root = tmp_path / "root"
    async with ThreadService(SQLiteStore(root, durability="normal"), Settings(root=root)) as svc:
        ids = [await written_thread(svc, turns=2) for _ in range(3)]  # completed: each ends signed
        before = {tid: await svc.transcript(tid) for tid in ids}
    for p in root.glob("threads.db*"):
        p.unlink()
    code, report = await anyio.to_thread.run_sync(doctor, root)
    assert code == 1 and all(tid in checks(report, "lost")[0]["detail"] for tid in ids)
    code, recovered = await anyio.to_thread.run_sync(lambda: doctor(root, "--recover"))
    assert code == 0, recovered
    async with service(root) as svc:
        for tid in ids:
            assert await svc.transcript(tid) == before[tid]
            assert (await svc.get_thread(tid)).status.value == "completed"
            assert (await svc.verify_thread(tid)).ok
