"""What is particular to PostgreSQL: the one-call append, the shared key, the transcript bytes.

Each store remembers the tail (event count, chain head) of the threads it wrote; these
tests make that memory wrong on purpose (a second store on the same database, many
racing writers, cancelled appends) and check that seqs stay gapless, the hash chain and
checkpoints still verify, and every guard still refuses what it should. Servers with
their own keys folders sign with the database's key; the transcript resource rendered
from PostgreSQL is the SQLite mirror's bytes for the same events.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from conftest import pg_test_schema, pg_unreachable
from threadloom.config import Settings
from threadloom.errors import ConflictError, NotFoundError
from threadloom.integrity import Signer
from threadloom.models import Status
from threadloom.service import ThreadService
from threadloom.store.base import AppendEvents, NewEvent

pytestmark = pytest.mark.anyio


def msg(text: str, role: str = "user") -> dict:
    return {"type": "message", "role": role, "text": text}


@asynccontextmanager
async def two_services(tmp_path: Path) -> AsyncIterator[tuple[ThreadService, ThreadService]]:
    """Two services, each with its own PostgresStore (own pool and tail cache), on one schema
    and one signing key: two servers sharing a database."""
    from threadloom.store.postgres import PostgresStore

    signer = Signer.ephemeral()
    with pg_test_schema() as dsn:
        settings = Settings(root=tmp_path / "root", durability="normal")
        a = ThreadService(PostgresStore(dsn, pool_size=4, signer=signer), settings)
        b = ThreadService(PostgresStore(dsn, pool_size=4, signer=signer), settings)
        async with a, b:
            yield a, b


async def seqs_of(svc: ThreadService, tid: str) -> list[int]:
    return [e.seq for e in await svc.store.read_events(tid)]


async def test_appends_alternating_between_two_servers_stay_gapless_and_verify(tmp_path: Path) -> None:
    async with two_services(tmp_path) as (a, b):
        tid = (await a.create_thread(title="shared")).thread_id
        got = []
        for i in range(6):
            svc = a if i % 2 == 0 else b  # each append finds the tail the other one moved
            got.append((await svc.append(tid, [msg(f"m{i}")], single=True)).seq)
        events = await a.store.read_events(tid)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert got == [e.seq for e in events if e.type == "message"]
        report = await b.verify_thread(tid)
        assert report.ok, report.summary


async def test_racing_writers_on_two_servers_keep_one_gapless_chain(tmp_path: Path) -> None:
    async with two_services(tmp_path) as (a, b):
        tid = (await a.create_thread(title="race")).thread_id
        acked: list[int] = []

        async def writer(svc: ThreadService, w: int) -> None:
            for i in range(15):
                acked.append((await svc.append(tid, [msg(f"w{w} {i}")], single=True)).seq)

        async with anyio.create_task_group() as tg:
            for w in range(8):
                tg.start_soon(writer, a if w % 2 else b, w)
        seqs = await seqs_of(a, tid)
        assert seqs == list(range(1, len(seqs) + 1))
        assert len(acked) == 120 and len(set(acked)) == 120 and set(acked) <= set(seqs)
        thread = await b.get_thread(tid)
        assert thread.event_count == len(seqs)
        assert (await a.verify_thread(tid)).ok


async def test_the_guards_refuse_on_the_one_call_path(tmp_path: Path) -> None:
    async with two_services(tmp_path) as (a, b):
        tid = (await a.create_thread()).thread_id
        await a.append(tid, [msg("first")])
        first = await a.append(tid, [msg("keyed")], idempotency_key="k-1", single=True)
        # an idempotent retry through the other server returns the original seq
        again = await b.append(tid, [msg("keyed")], idempotency_key="k-1", single=True)
        assert again.seq == first.seq
        with pytest.raises(ConflictError) as info:
            await b.append(tid, [msg("other content")], idempotency_key="k-1")
        assert info.value.rule == "idempotency_key_reused"
        # the count guard is checked by the function, before anything is written
        count = (await a.get_thread(tid)).event_count
        op = AppendEvents(tid, (NewEvent("message", msg("late")),), allowed_statuses=frozenset({Status.RUNNING}),
                          expect_event_count=count - 1)  # fmt: skip
        with pytest.raises(ConflictError) as info:
            await b.store.commit([op])
        assert info.value.rule == "count_guard"
        with pytest.raises(NotFoundError):
            await a.store.commit(
                [AppendEvents("nosuchthread", op.events, allowed_statuses=op.allowed_statuses)]
            )
        # the status guard: the thread ended through the other server
        await b.update_thread(tid, status="completed", result="done")
        with pytest.raises(ConflictError) as info:
            await a.store.commit([AppendEvents(tid, op.events, allowed_statuses=op.allowed_statuses)])
        assert info.value.rule == "status_guard"
        seqs = await seqs_of(a, tid)
        assert seqs == list(range(1, len(seqs) + 1))
        assert (await a.verify_thread(tid)).ok


async def test_cancelled_appends_either_commit_whole_or_not_at_all(tmp_path: Path) -> None:
    async with two_services(tmp_path) as (a, _b):
        tid = (await a.create_thread()).thread_id
        await a.append(tid, [msg("start")])
        acked = 0
        for i in range(40):
            with anyio.move_on_after(0.0005 * (i % 8)):  # cancel at varying points of the round trip
                await a.append(tid, [msg(f"maybe {i}")])
                acked += 1
        after = await a.append(tid, [msg("after")], single=True)
        events = await a.store.read_events(tid)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert after.seq == events[-1].seq
        texts = [e.data().get("text") for e in events if e.type == "message"]
        assert sum(t.startswith("maybe") for t in texts) >= acked  # every acknowledged append is there
        assert (await a.verify_thread(tid)).ok


async def test_servers_with_their_own_keys_folders_share_the_database_key(tmp_path: Path) -> None:
    """Servers on different machines have different roots: the first one's key is shared
    through the database, so each verifies and resumes what the other signed."""
    from threadloom.store.postgres import PostgresStore

    with pg_test_schema() as dsn:
        services = [
            ThreadService(
                PostgresStore(dsn, pool_size=2, signer=Signer.for_root(tmp_path / name)),
                Settings(root=tmp_path / name, durability="normal"),
            )
            for name in ("one", "two")
        ]
        async with services[0] as a, services[1] as b:
            assert a.store.signer.key_id == b.store.signer.key_id
            tid = (await a.create_thread(title="signed here")).thread_id
            await a.append(tid, [msg("question")])
            await a.update_thread(tid, status="completed", result="answer")
            report = await b.verify_thread(tid)
            assert report.ok and report.checkpoints >= 1, report.summary
            resumed = await b.resume(tid, "one more thing")  # verifies before rebuilding
            assert (await a.verify_thread(resumed.thread.thread_id)).ok
        # a later server with yet another keys folder adopts the same key
        later = PostgresStore(dsn, pool_size=1, signer=Signer.for_root(tmp_path / "three"))
        async with later:
            assert later.signer.key_id == a.store.signer.key_id
        assert not (tmp_path / "three" / "keys").exists()  # nothing written to its disk


async def test_the_transcript_resource_on_postgres_is_the_sqlite_mirror_byte_for_byte(tmp_path: Path) -> None:
    """The same events (moved with export/import) render as the same transcript bytes."""
    from threadloom.bundle import collect_chains, export_bundle, import_files
    from threadloom.store import SQLiteStore
    from threadloom.store.postgres import PostgresStore

    root = tmp_path / "lite"
    async with ThreadService(SQLiteStore(root, durability="normal"), Settings(root=root)) as lite:
        tid = (await lite.create_thread(title="bytes")).thread_id
        await lite.append(tid, [msg('naïve café — 日本語 "quotes" \\ back\nslash'), msg("ok", "assistant")])
        await lite.append(
            tid, [{"type": "tool_use", "id": "c1", "name": "grep", "input": {"q": "a\tb", "n": 1.5}}]
        )
        await lite.append(
            tid, [{"type": "tool_result", "tool_use_id": "c1", "output": {"z": [1, None, True], "a": "é"}}]
        )
        await lite.update_thread(tid, status="completed", result="done")
        mirror = (root / "threads" / tid / "transcript.jsonl").read_bytes()
        bundle = tmp_path / "b.jsonl"
        with bundle.open("w") as out:
            await export_bundle(lite, await collect_chains(lite, [tid]), out)
    with pg_test_schema() as dsn:
        async with ThreadService(PostgresStore(dsn, pool_size=2), Settings(root=tmp_path / "pg")) as pg:
            await import_files(pg, [bundle])
            assert (await pg.transcript(tid)).encode() == mirror


def test_appends_never_wait_for_a_flusher_that_has_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one flusher allowed, an append queued while the flusher stops must start another
    (a flusher counted as busy until its task's done-callback ran left such appends waiting
    forever). Commits are shielded from cancellation, so the scenario runs on its own event
    loop in a thread, and a hang shows as that thread still running."""
    from threadloom.store import pgappend

    problem = pg_unreachable()
    if problem:
        pytest.skip(problem)
    monkeypatch.setattr(pgappend, "FLUSHERS", 1)
    counts: list[int] = []

    async def scenario() -> None:
        async with two_services(tmp_path) as (a, _b):
            tids = [(await a.create_thread(context_window=10_000_000)).thread_id for _ in range(8)]
            for tid in tids:  # running: from here on every append takes the one-call path
                await a.append(tid, [msg("first")])

            async def writer(tid: str) -> None:
                for i in range(40):
                    await a.append(tid, [msg(f"m{i}")])

            async with anyio.create_task_group() as tg:
                for tid in tids:
                    tg.start_soon(writer, tid)
            counts.extend([(await a.get_thread(tid)).event_count for tid in tids])

    runner = threading.Thread(target=anyio.run, args=(scenario,), daemon=True)
    runner.start()
    runner.join(90)
    assert not runner.is_alive(), "appends were left waiting for a flusher that had stopped"
    assert counts == [42] * 8  # the status event, then 41 messages each
