"""wait_threads: all/any, timeouts, chains, wake across processes, cancellation, progress, scale."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from mcp import Client

from conftest import PYTHON
from threadloom.errors import InvalidInputError, NotFoundError
from threadloom.mcp_server import build_server
from threadloom.models import Status, Thread, iso, new_thread_id, utc_now
from threadloom.service import ThreadService
from threadloom.store.base import CreateThread

pytestmark = pytest.mark.anyio
USER = {"role": "user", "text": "working"}


async def running(service: ThreadService, **kw: object) -> str:
    tid = (await service.create_thread(**kw)).thread_id  # type: ignore[arg-type]
    await service.append(tid, [USER])
    return tid


async def finish_later(
    service: ThreadService, tid: str, delay: float, status: str = "completed", result: object = None
) -> None:
    await anyio.sleep(delay)
    await service.update_thread(tid, status=status, result=result)


async def continue_into(service: ThreadService, tid: str) -> str:
    """Link ``tid`` -> a new running continuation by hand (what a handoff commits)."""
    old = await service.store.get_thread(tid)
    now = iso(utc_now())
    new = Thread(
        thread_id=new_thread_id(),
        agent_id=old.agent_id,
        parent_id=old.parent_id,
        context_window=old.context_window,
        stale_after=old.stale_after,
        chain_root_id=old.chain_root_id,
        continuation_of=tid,
        link_reason="handoff",
        created_at=now,
        updated_at=now,
        heartbeat_at=now,
    )
    ops = [
        CreateThread(new),
        *service.status_ops(old, Status.CONTINUED, "handoff", continuation_thread_id=new.thread_id),
    ]
    await service.store.commit(ops)
    await service.append(new.thread_id, [USER])
    return new.thread_id


async def test_all_waits_for_every_thread(service: ThreadService) -> None:
    a, b = await running(service), await running(service)
    async with anyio.create_task_group() as tg:
        tg.start_soon(finish_later, service, a, 0.05, "completed", {"a": 1})
        tg.start_soon(finish_later, service, b, 0.15, "error")
        res = await service.wait_threads([a, b], mode="all", timeout=10)
    assert res.settled and res.timed_out == []
    assert {(i.thread_id, i.status) for i in res.threads} == {(a, Status.COMPLETED), (b, Status.ERROR)}
    assert res.threads[0].result == {"a": 1}


async def test_any_returns_when_the_first_ends(service: ThreadService) -> None:
    a, b = await running(service), await running(service)
    async with anyio.create_task_group() as tg:
        tg.start_soon(finish_later, service, b, 0.05)
        res = await service.wait_threads([a, b], mode="any", timeout=10)
        tg.cancel_scope.cancel()
    assert res.settled and res.done == [b]
    assert [i.done for i in res.threads] == [False, True]


async def test_timeout_returns_partial_results(service: ThreadService) -> None:
    a, b = await running(service), await running(service)
    await service.update_thread(a, status="completed", result="ok")
    res = await service.wait_threads([a, b], timeout=0.1)
    assert not res.settled
    assert res.done == [a] and res.timed_out == [b]
    assert res.threads[1].status == Status.RUNNING


async def test_zero_timeout_polls_without_waiting(service: ThreadService) -> None:
    a = await running(service)
    res = await service.wait_threads([a], timeout=0)
    assert res.timed_out == [a] and not res.settled
    await service.update_thread(a, status="cancelled")
    res = await service.wait_threads([a], timeout=0)
    assert res.settled and res.threads[0].status == Status.CANCELLED


async def test_already_ended_threads_settle_at_once(service: ThreadService) -> None:
    a = await running(service)
    await service.update_thread(a, status="completed")
    res = await service.wait_threads([a], timeout=600)
    assert res.settled and res.timed_out == []


async def test_wait_follows_a_chain_that_hands_off_twice(service: ThreadService) -> None:
    a = await running(service)

    async def chain() -> None:
        await anyio.sleep(0.05)
        b = await continue_into(service, a)
        await anyio.sleep(0.05)
        c = await continue_into(service, b)
        await anyio.sleep(0.05)
        await service.update_thread(c, status="completed", result={"final": True})

    async with anyio.create_task_group() as tg:
        tg.start_soon(chain)
        res = await service.wait_threads([a], timeout=10)
    item = res.threads[0]
    assert item.thread_id == a and item.resolved_thread_id != a
    assert item.status == Status.COMPLETED and item.result == {"final": True}
    chain_end = await service.chain_end(await service.store.get_thread(a))
    assert chain_end.thread_id == item.resolved_thread_id


async def test_unknown_and_bad_ids_fail_before_waiting(service: ThreadService) -> None:
    a = await running(service)
    with pytest.raises(NotFoundError, match="abcdefabcdef"):
        await service.wait_threads([a, "abcdefabcdef"], timeout=600)
    with pytest.raises(InvalidInputError, match="thread_ids"):
        await service.wait_threads([a, "../etc"], timeout=600)
    with pytest.raises(InvalidInputError, match="mode"):
        await service.wait_threads([a], mode="some", timeout=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="timeout"):
        await service.wait_threads([a], timeout=-1)
    with pytest.raises(InvalidInputError, match="non-empty"):
        await service.wait_threads([], timeout=1)
    assert service.hub.waiters == 0


async def test_a_thousand_waiters_wake_on_one_commit_with_one_query(service: ThreadService) -> None:
    a = await running(service)
    # a search folds the append into the full-text index now, so that the store's idle fold (a
    # commit of its own, which the external watch sees like any other) cannot land mid-count
    await service.search_threads("hello")
    results: list[object] = []

    async def waiter() -> None:
        results.append(await service.wait_threads([a], timeout=30))

    async with anyio.create_task_group() as tg:
        for _ in range(1000):
            tg.start_soon(waiter)
        while service.hub.waiters < 1000:
            await anyio.sleep(0.01)
        before = service.hub.queries
        await service.update_thread(a, status="completed")
    assert len(results) == 1000 and all(r.settled for r in results)  # type: ignore[attr-defined]
    # one read per change notice, never one per waiter: the commit itself (a server skips the
    # echo of its own NOTIFY), plus at most the listener's catch-up read -- a constant, not 1000
    assert service.hub.queries - before <= 2
    assert service.hub.waiters == 0


async def test_the_sweeper_wakes_a_waiter(service: ThreadService) -> None:
    a = await running(service, stale_after=0.05)

    async def sweep() -> None:
        await anyio.sleep(0.2)
        await service.sweep_stale()

    async with anyio.create_task_group() as tg:
        tg.start_soon(sweep)
        res = await service.wait_threads([a], timeout=10)
    assert res.settled
    assert (res.threads[0].status, res.threads[0].status_reason) == (Status.ERROR, "timeout")


async def test_children_are_counted_and_left_running_unless_cascade(service: ThreadService) -> None:
    parent = await running(service, agent_id="orch")
    kids = [await running(service, parent_id=parent) for _ in range(3)]
    grandchild = await running(service, parent_id=kids[0])
    await service.update_thread(kids[2], status="completed")
    counts = (await service.get_thread(parent)).children
    assert counts == {"running": 2, "completed": 1}
    assert [(await service.get_thread(k)).agent_id for k in kids] == ["orch"] * 3
    other = await running(service)
    await service.update_thread(other, status="completed")  # no cascade: nothing else moves
    await service.update_thread(parent, status="completed", cascade=True)
    for tid in (kids[0], kids[1], grandchild):
        got = await service.get_thread(tid)
        assert got.status == Status.CANCELLED and parent in (got.status_reason or "")
    assert (await service.get_thread(kids[2])).status == Status.COMPLETED


async def test_parent_ending_without_cascade_leaves_children(service: ThreadService) -> None:
    parent = await running(service)
    kid = await running(service, parent_id=parent)
    await service.update_thread(parent, status="completed")
    assert (await service.get_thread(kid)).status == Status.RUNNING


async def test_progress_notifications_reach_an_sdk_client(service: ThreadService) -> None:
    a, b = await running(service), await running(service)
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with Client(build_server(service)) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(finish_later, service, a, 0.05)
            tg.start_soon(finish_later, service, b, 0.15)
            r = await client.call_tool(
                "wait_threads", {"thread_ids": [a, b], "timeout": 10}, progress_callback=on_progress
            )
    assert not r.is_error and r.structured_content["settled"] is True
    assert [p for p, _t, _m in seen] == [0, 1, 2]
    assert all(t == 2 for _p, t, _m in seen)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_cancelled_wait_stops_at_once_and_leaks_nothing(service: ThreadService, mode: str) -> None:
    a = await running(service)
    async with Client(build_server(service), mode=mode) as client:
        with anyio.move_on_after(0.3):
            await client.call_tool("wait_threads", {"thread_ids": [a], "timeout": 600})
        for _ in range(100):
            if service.hub.waiters == 0:
                break
            await anyio.sleep(0.02)
        assert service.hub.waiters == 0
        r = await client.call_tool("wait_threads", {"thread_ids": [a], "timeout": 0})
        assert r.structured_content["timed_out"] == [a]


async def test_wait_tool_errors(service: ThreadService) -> None:
    async with Client(build_server(service)) as client:
        r = await client.call_tool("wait_threads", {"thread_ids": ["abcdefabcdef"], "timeout": 5})
        assert r.is_error and "abcdefabcdef" in r.content[0].text


CHILD = """
import sys, anyio
from pathlib import Path
from threadloom.config import Settings
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore
async def main(root, tid):
    await anyio.sleep(0.3)
    async with ThreadService(SQLiteStore(Path(root)), Settings(root=Path(root))) as svc:
        await svc.update_thread(tid, status="completed", result={"by": "child process"})
anyio.run(main, sys.argv[1], sys.argv[2])
"""


async def test_a_commit_in_another_process_wakes_the_waiter(tmp_path: Path, cli_env: dict) -> None:
    from threadloom.config import Settings
    from threadloom.store import SQLiteStore

    root = tmp_path / "root"
    async with ThreadService(SQLiteStore(root), Settings(root=root)) as svc:
        tid = await running(svc)
        proc = await anyio.open_process([PYTHON, "-c", CHILD, str(root), tid], env=cli_env)
        try:
            res = await svc.wait_threads([tid], timeout=60)
        finally:
            await proc.wait()
        assert proc.returncode == 0
        assert res.settled and res.threads[0].result == {"by": "child process"}
        assert svc.hub.waiters == 0
