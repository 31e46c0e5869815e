"""PostgreSQL's handoff path (issue 17.4): the one-statement anchored read, the commit that
writes the new thread while the verification runs, and the joined event rows.

The commit of a handoff starts before the old thread is verified (``Store.commit_after``);
these tests check that it still commits nothing when the verification fails, that it holds
no lock on the old thread while it waits, and that a pool too small to wait does not
deadlock. The one-statement ``read_anchored`` must read what the step-by-step reads do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from conftest import pg_test_schema
from threadloom.config import Settings
from threadloom.errors import IntegrityError
from threadloom.integrity import Signer
from threadloom.models import Status, StoredEvent
from threadloom.service import ThreadService
from threadloom.store.base import AppendEvents, CreateThread, NewEvent

pytestmark = pytest.mark.anyio


def msgs(start: int, n: int) -> list[dict[str, str]]:
    return [
        {"type": "message", "role": "user" if i % 2 else "assistant", "text": f"line {i} of the log"}
        for i in range(start, start + n)
    ]


def pg_service(dsn: str, root: Path, pool_size: int = 4) -> ThreadService:
    from threadloom.store.postgres import PostgresStore

    settings = Settings(root=root, durability="normal", context_window=10_000_000)
    return ThreadService(PostgresStore(dsn, pool_size=pool_size, signer=Signer.for_root(root)), settings)


async def grown(svc: ThreadService, events: int, *, turns: bool = False) -> str:
    t = await svc.create_thread(context_window=10_000_000)
    for start in range(0, events, 100):
        batch: list[dict[str, Any]] = msgs(start, min(100, events - start))
        if turns:  # a result ends the turn: the store adds a signed checkpoint
            batch.append({"type": "result", "input_tokens": 10})
        await svc.append(t.thread_id, batch)
    return t.thread_id


def same(a: Any, b: Any) -> None:
    assert (a.thread, a.chain_head, a.base, a.prefix, a.tail, a.imported) == (
        b.thread,
        b.chain_head,
        b.base,
        b.prefix,
        b.tail,
        b.imported,
    )
    assert (a.anchor is None) == (b.anchor is None) and (a.anchor is None or a.anchor[0] == b.anchor[0])
    assert a.signed == b.signed


async def test_the_one_statement_anchored_read_equals_the_step_by_step_one(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with pg_test_schema() as dsn:
        async with pg_service(dsn, root) as svc:
            plain = await grown(svc, 1_230)  # stored anchors at 500 and 1,000 (and at the close)
            turns = await grown(svc, 740, turns=True)  # checkpoints after the anchor
            empty = (await svc.create_thread()).thread_id
            for tid in (plain, turns, empty):  # this process's running hashes
                same(await svc.store.read_anchored(tid), await svc.store._read_anchored_stepwise(tid))
        with psycopg.connect(dsn, autocommit=True) as conn:  # an anchor past the end is not used
            conn.execute("UPDATE anchors SET seq = 99999 WHERE thread_id = %s", (turns,))
        async with pg_service(dsn, root) as svc:  # a new process: stored anchors, checkpoints
            await svc.append(plain, msgs(0, 40))  # lines after the anchor the close stored
            for tid in (plain, turns, empty):
                snap = await svc.store.read_anchored(tid)
                same(snap, await svc.store._read_anchored_stepwise(tid))
                assert snap.anchor is None
            snap = await svc.store.read_anchored(plain)
            assert snap.signed is not None and snap.base == snap.signed.seq == snap.thread.event_count - 40
            assert [e.seq for e in snap.tail] == list(range(snap.base + 1, snap.base + 41))
            assert (await svc.ensure_verified(plain)).ok and (await svc.ensure_verified(turns)).ok


async def test_a_failed_verification_commits_nothing_and_the_wait_locks_nothing(tmp_path: Path) -> None:
    """The commit writes the new thread while the check runs, then the check fails: nothing
    of the handoff exists, and an append to the old thread went through while it waited."""
    from threadloom.store.postgres import PostgresStore

    root = tmp_path / "root"
    with pg_test_schema() as dsn:
        async with pg_service(dsn, root) as svc:
            tid = await grown(svc, 300)
            threads_before = len(await svc.store.list_threads(limit=100))
            count_before = (await svc.store.get_thread(tid)).event_count
            checking, appended, new_written = anyio.Event(), anyio.Event(), anyio.Event()
            applied: list[str] = []
            real_apply = PostgresStore._apply

            async def spy_apply(self: Any, conn: Any, op: Any, *a: Any, **k: Any) -> Any:
                mine = not (
                    isinstance(op, AppendEvents) and op.thread_id == tid and op.expect_event_count is None
                )  # not the one below
                new = isinstance(op, CreateThread) or getattr(op, "thread_id", tid) != tid
                if mine:
                    applied.append(f"{type(op).__name__}:{'new' if new else 'old'}")
                out = await real_apply(self, conn, op, *a, **k)
                if mine and new and isinstance(op, AppendEvents):
                    new_written.set()
                return out

            async def failing_check(thread_id: str, *, force: bool = False) -> Any:
                checking.set()
                await appended.wait()  # meanwhile the commit writes the new thread
                raise IntegrityError(f"thread {thread_id} line 7 was edited", rule="integrity_failed")

            async def append_meanwhile() -> None:
                await checking.wait()
                await new_written.wait()
                await anyio.sleep(0.05)  # the commit waits at its gate now
                with anyio.fail_after(10):  # and holds no lock of the old thread
                    await svc.store.commit([AppendEvents(tid, (NewEvent("message", msgs(0, 1)[0], 10),))])
                appended.set()

            svc.ensure_verified = failing_check  # type: ignore[method-assign]
            PostgresStore._apply = spy_apply  # type: ignore[method-assign]
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(append_meanwhile)
                    with pytest.raises(IntegrityError, match="line 7 was edited"):
                        await svc.handoff(tid)
            finally:
                PostgresStore._apply = real_apply  # type: ignore[method-assign]
            assert applied == ["CreateThread:new", "AppendEvents:new"]  # the old thread untouched
            assert len(await svc.store.list_threads(limit=100)) == threads_before
            old = await svc.store.get_thread(tid)
            assert (
                old.status == Status.RUNNING
                and old.continuation_thread_id is None
                and old.event_count == count_before + 1
            )


async def test_a_pool_of_one_hands_off_without_waiting_for_itself(tmp_path: Path) -> None:
    with pg_test_schema() as dsn:
        async with pg_service(dsn, tmp_path / "root", pool_size=1) as svc:
            tid = await grown(svc, 300)
        async with pg_service(dsn, tmp_path / "root", pool_size=1) as svc:  # a new process
            with anyio.fail_after(20):
                info = await svc.handoff(tid, summary="go on")
            assert (await svc.get_thread(info.thread_id)).status == Status.RUNNING
            assert (await svc.verify_thread(tid)).ok and (await svc.verify_thread(info.thread_id)).ok


def test_event_rows_go_in_joined_only_when_they_split_back_exactly() -> None:
    from threadloom.store.postgres import INSERT_EVENTS, INSERT_EVENTS_JOINED, _insert_events

    def ev(seq: int, line: str = '{"a":1}', prev: str | None = "ab") -> StoredEvent:
        return StoredEvent("t1", seq, "2026-01-01T00:00:00Z", "message", line, prev)

    q, args = _insert_events([ev(4), ev(5), ev(6)])
    assert q == INSERT_EVENTS_JOINED and args[:2] == ("t1", 3) and args[4] == '{"a":1}\n{"a":1}\n{"a":1}'
    for rows in (
        [ev(4), ev(5, '{"a":"x\ny"}')],  # a newline inside a value
        [ev(4), ev(6)],  # not consecutive
        [ev(4), ev(5, prev=None)],  # a NULL
        [ev(4, "")],  # an empty value splits into no element at all
        [ev(4), StoredEvent("t2", 5, "2026-01-01T00:00:00Z", "message", "{}", "ab")],  # two threads
    ):
        assert _insert_events(rows)[0] == INSERT_EVENTS
