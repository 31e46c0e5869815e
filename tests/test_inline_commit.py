"""Small commits on the event loop's thread while the SQLite writer is idle (issue 16).

With durability normal (no fsync at commit) an append that no other commit waits beside
runs on the caller's thread: the hop to the writer thread and back cost more CPU than the
commit. It must never make the loop wait: a database another connection holds gives the
commit back to the writer thread, and the WAL checkpoint stays on the writer thread's idle
work. See docs/decisions.md.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import anyio
import pytest

from threadloom.service import ThreadService
from threadloom.store import SQLiteStore

pytestmark = pytest.mark.anyio

MSG = {"type": "message", "role": "user", "text": "inline " * 40}


def _insert_threads(store: SQLiteStore) -> list[str]:
    """Names of the threads that ran the writer connection's event inserts."""
    seen: list[str] = []
    conn = store._wconn
    assert conn is not None
    conn.set_trace_callback(
        lambda sql: (
            seen.append(threading.current_thread().name) if sql.startswith("INSERT INTO events") else None
        )
    )
    return seen


@pytest.mark.parametrize("durability", ["normal", "full"])
async def test_an_idle_writer_lets_the_caller_commit_with_durability_normal(
    tmp_path: Path, durability: str
) -> None:
    store = SQLiteStore(tmp_path / "root", durability=durability)
    async with ThreadService(store) as svc:
        t = await svc.create_thread(title="inline")
        await svc.append(t.thread_id, [MSG])
        seen = _insert_threads(store)
        for _ in range(5):
            await svc.append(t.thread_id, [MSG])
        here = threading.current_thread().name
        if durability == "normal":  # (one may meet the writer thread's idle work and queue)
            assert len(seen) == 5 and seen.count(here) >= 3
        else:  # an fsync per commit never blocks the loop
            assert seen and here not in seen
        assert (await svc.get_thread(t.thread_id)).event_count == 7  # status, 6 messages


async def test_a_busy_database_hands_the_commit_to_the_writer_and_the_loop_runs_on(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "root", durability="normal")
    async with ThreadService(store) as svc:
        t = await svc.create_thread(title="busy")
        await svc.append(t.thread_id, [MSG])
        seen = _insert_threads(store)
        other = sqlite3.connect(store.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        ticks = 0
        done = anyio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await anyio.sleep(0.01)

        async def release() -> None:
            await anyio.sleep(0.3)
            other.execute("COMMIT")

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            tg.start_soon(release)
            out = await svc.append(t.thread_id, [MSG])
            done.set()
        other.close()
        assert out.seqs == [3]
        assert ticks >= 10  # the loop kept running while the commit waited for the lock
        assert seen and threading.current_thread().name not in seen  # the writer thread waited
        for _ in range(3):  # idle again: back on the caller's thread
            await svc.append(t.thread_id, [MSG])
        assert threading.current_thread().name in seen[-3:]
    async with ThreadService(SQLiteStore(tmp_path / "root", durability="normal")) as svc:
        assert (await svc.get_thread(t.thread_id)).event_count == 6


async def test_inline_commits_leave_the_wal_checkpointed_by_the_writer_thread(tmp_path: Path) -> None:
    """Inline commits turn SQLite's auto-checkpoint (an fsync on the loop) off; the writer
    thread's idle work checkpoints instead (and its own commits as SQLite always does), so
    the WAL does not grow without bound: unchecked, these commits leave ~8,000 frames."""
    store = SQLiteStore(tmp_path / "root", durability="normal")
    wal = store.path.with_name(store.path.name + "-wal")
    async with ThreadService(store) as svc:
        # ten threads of 150 lines: none reaches a stored anchor (a writer-thread commit, which
        # checkpoints as SQLite always does)
        tids = [(await svc.create_thread(title=f"wal {i}")).thread_id for i in range(10)]
        page = store._wconn.execute("PRAGMA page_size").fetchone()[0]  # type: ignore[union-attr]
        seen = _insert_threads(store)
        for i in range(1500):
            await svc.append(tids[i % 10], [MSG])
        assert seen.count(threading.current_thread().name) > 1000  # most ran inline
        # unchecked, 1,500 commits of a few frames each would leave several thousand frames
        assert wal.stat().st_size < 4500 * (page + 24), wal.stat().st_size


async def test_a_mirror_another_process_holds_is_written_by_the_writer_thread(tmp_path: Path) -> None:
    """The loop never waits for a mirror's lock either: the commit stands, the writer thread
    waits for the lock and writes the line, and only then does the append answer."""
    import asyncio
    import fcntl

    # debug mode: answering a job from another thread without waking the loop raises
    asyncio.get_running_loop().set_debug(True)
    store = SQLiteStore(tmp_path / "root", durability="normal")
    async with ThreadService(store) as svc:
        t = await svc.create_thread(title="held")
        await svc.append(t.thread_id, [MSG])
        transcript = tmp_path / "root" / "threads" / t.thread_id / "transcript.jsonl"
        assert transcript.exists()
        held = open(transcript, "rb")  # noqa: SIM115  # another open file: flock conflicts
        fcntl.flock(held, fcntl.LOCK_EX)
        ticks = 0
        answered = anyio.Event()

        async def ticker() -> None:  # for 0.2 s: then the loop has nothing to do but wait
            nonlocal ticks
            for _ in range(20):
                ticks += 1
                await anyio.sleep(0.01)

        early: list[bool] = []
        released: list[float] = []

        def release() -> None:  # a thread: were the loop stuck in flock, the test still ends
            early.append(answered.is_set())  # an answer before its line is in the file?
            released.append(time.monotonic())
            fcntl.flock(held, fcntl.LOCK_UN)
            held.close()

        timer = threading.Timer(0.4, release)
        timer.start()
        with anyio.fail_after(3):  # the loop's only timer: an answer that never wakes it waits for this
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker)
                out = await svc.append(t.thread_id, [MSG])
                answered.set()
        answered_at = time.monotonic()
        timer.join()
        assert early == [False]
        assert answered_at - released[0] < 1.5  # the writer thread's answer woke the loop
        assert out.seqs == [3]
        assert ticks >= 10  # the loop ran on while the lock was held
        lines = transcript.read_bytes().splitlines()
        assert len(lines) == 3 and b'"seq":3' in lines[-1]
