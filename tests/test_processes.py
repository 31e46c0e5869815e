"""Restart, SIGKILL crash recovery and several processes on one root (SQLite), at both
durabilities: with normal, small commits run on the event loop (store/sqlite.py)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import PYTHON
from threadloom.config import Settings
from threadloom.mirror import manifest_bytes
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
WRITER = str(Path(__file__).with_name("proc_writer.py"))


@pytest.fixture(params=["full", "normal"])
def durability(request: pytest.FixtureRequest) -> str:
    return request.param


def open_service(root: Path, durability: str = "full") -> ThreadService:
    settings = Settings(root=root, durability=durability)  # type: ignore[arg-type]
    return ThreadService(SQLiteStore(root, durability=settings.durability), settings)


def writer(root: Path, tid: str, count: int, tag: str, durability: str, *more: str) -> list[str]:
    return [
        PYTHON,
        WRITER,
        str(root),
        tid,
        str(count),
        tag,
        *more,
        *(["--normal"] if durability == "normal" else []),
    ]


async def check_mirror_equals_db(svc: ThreadService, root: Path, tid: str) -> None:
    on_disk = (root / "threads" / tid / "transcript.jsonl").read_text()
    assert on_disk == await svc.transcript(tid)
    manifest = (root / "threads" / tid / "thread.json").read_bytes()
    assert manifest == manifest_bytes(await svc.store.get_thread(tid), svc.store.signer)


async def test_data_written_by_one_process_is_read_by_the_next(
    tmp_path: Path, cli_env: dict, durability: str
) -> None:
    root = tmp_path / "root"
    async with open_service(root, durability) as svc:
        tid = (await svc.create_thread(title="persist")).thread_id
    proc = subprocess.run(
        writer(root, tid, 20, "p1", durability), env=cli_env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    async with open_service(root, durability) as svc:
        thread = await svc.get_thread(tid)
        assert thread.title == "persist" and thread.event_count == 21
        texts = [e.get("text") for e in (await svc.read_events(tid)).events[1:]]
        assert texts == [f"p1-{i}" for i in range(20)]
        await check_mirror_equals_db(svc, root, tid)


async def test_sigkill_loses_no_acknowledged_append(tmp_path: Path, cli_env: dict, durability: str) -> None:
    root = tmp_path / "root"
    async with open_service(root, durability) as svc:
        tid = (await svc.create_thread()).thread_id
    proc = subprocess.Popen(
        writer(root, tid, 0, "crash", durability, "--forever"),
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acked: list[int] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            acked.append(int(line.split()[0]))
            if len(acked) >= 150:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(acked) >= 150, proc.stderr.read() if proc.stderr else ""
    # simulate a torn last line on top of whatever the kill left: half of the last line is lost
    transcript = root / "threads" / tid / "transcript.jsonl"
    data = transcript.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    transcript.write_bytes(data[: last_start + (len(data) - last_start) // 2])
    async with open_service(root, durability) as svc:  # opening reconciles the mirrors
        events = (await svc.read_events(tid, limit=1000)).events
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(1, len(seqs) + 1))  # gapless
        assert set(acked) <= set(seqs)  # every acknowledged append survived
        await check_mirror_equals_db(svc, root, tid)


async def test_four_processes_append_to_one_root_without_errors(
    tmp_path: Path, cli_env: dict, durability: str
) -> None:
    root = tmp_path / "root"
    async with open_service(root, durability) as svc:
        shared = (await svc.create_thread(title="shared")).thread_id
        own = [(await svc.create_thread()).thread_id for _ in range(4)]
    n = 40
    procs = []
    for i in range(4):
        for tid in (shared, own[i]):
            procs.append(
                subprocess.Popen(
                    writer(root, tid, n, f"w{i}", durability),
                    env=cli_env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "locked" not in err
    async with open_service(root, durability) as svc:
        events = (await svc.read_events(shared, limit=1000)).events
        assert [e["seq"] for e in events] == list(range(1, 4 * n + 2))
        texts = [e["text"] for e in events[1:]]
        assert sorted(texts) == sorted(f"w{i}-{j}" for i in range(4) for j in range(n))
        for i in range(4):  # each process's events keep their order
            mine = [t for t in texts if t.startswith(f"w{i}-")]
            assert mine == [f"w{i}-{j}" for j in range(n)]
        for tid in own:
            assert (await svc.get_thread(tid)).event_count == n + 1
        for tid in [shared, *own]:
            await check_mirror_equals_db(svc, root, tid)
        # every seq a writer was acknowledged holds exactly the event it wrote
        by_text = {e["text"]: e["seq"] for e in events[1:]}
        for k, (out, _err) in enumerate(outs):
            if k % 2 == 0:  # the writers of the shared thread
                for line in out.splitlines():
                    seq, text = line.split()
                    assert by_text[text] == int(seq)
