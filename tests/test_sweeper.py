"""The stale-thread sweeper: races with heartbeats, several sweepers on one root, `serve` runs it."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

from conftest import PYTHON
from threadloom.config import Settings
from threadloom.models import Status, Thread
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore

pytestmark = pytest.mark.anyio
USER = {"type": "message", "role": "user", "text": "working"}
STALE_AFTER = 0.05  # seconds; each test sleeps longer than this before sweeping


async def stale_running_thread(service: ThreadService) -> str:
    tid = (await service.create_thread(stale_after=STALE_AFTER)).thread_id
    await service.append(tid, [USER])
    await anyio.sleep(STALE_AFTER * 3)
    return tid


async def status_changes(service: ThreadService, tid: str) -> list[tuple[str, str, str | None]]:
    events = (await service.read_events(tid)).events
    return [(e["from"], e["to"], e.get("reason")) for e in events if e["type"] == "status"]


def hook_list_stale(service: ThreadService, after_listing: Callable[[], Awaitable[None]]) -> None:
    """Run ``after_listing`` between the sweeper's read of stale threads and its commit."""
    original = service.store.list_stale

    async def list_stale(now: float, *, limit: int = 100) -> list[Thread]:
        rows = await original(now, limit=limit)
        await after_listing()
        return rows

    service.store.list_stale = list_stale  # type: ignore[method-assign]


async def test_a_stale_running_thread_moves_to_error_timeout_once(service: ThreadService) -> None:
    tid = await stale_running_thread(service)
    assert await service.sweep_stale() == [tid]
    assert await service.sweep_stale() == []  # nothing left to sweep
    got = await service.get_thread(tid)
    assert (got.status, got.status_reason) == (Status.ERROR, "timeout")
    assert await status_changes(service, tid) == [
        ("created", "running", "first append"),
        ("running", "error", "timeout"),
    ]


async def test_a_heartbeat_between_the_check_and_the_commit_saves_the_thread(service: ThreadService) -> None:
    tid = await stale_running_thread(service)

    async def heartbeat() -> None:  # the agent appends just after the sweeper decided
        await service.append(tid, [USER])

    hook_list_stale(service, heartbeat)
    assert await service.sweep_stale() == []
    assert (await service.get_thread(tid)).status == Status.RUNNING
    assert [c[1] for c in await status_changes(service, tid)] == ["running"]


async def test_two_sweepers_on_one_root_time_a_thread_out_exactly_once(tmp_path: Path) -> None:
    """Two stores on one root (separate connections and writer threads, as two processes
    have) both list the same stale thread before either commits: one wins, one skips."""
    root = tmp_path / "root"
    settings = Settings(root=root, durability="normal")
    async with (
        ThreadService(SQLiteStore(root, durability="normal"), settings) as one,
        ThreadService(SQLiteStore(root, durability="normal"), settings) as two,
    ):
        tid = await stale_running_thread(one)
        listed = 0
        both_listed = anyio.Event()

        async def barrier() -> None:
            nonlocal listed
            listed += 1
            if listed == 2:
                both_listed.set()
            await both_listed.wait()

        hook_list_stale(one, barrier)
        hook_list_stale(two, barrier)
        moved: dict[str, list[str]] = {}

        async def sweep(name: str, svc: ThreadService) -> None:
            moved[name] = await svc.sweep_stale()

        async with anyio.create_task_group() as tg:
            tg.start_soon(sweep, "one", one)
            tg.start_soon(sweep, "two", two)
        assert sorted(moved["one"] + moved["two"]) == [tid]
        for svc in (one, two):
            got = await svc.get_thread(tid)
            assert (got.status, got.status_reason) == (Status.ERROR, "timeout")
        assert [c[1] for c in await status_changes(one, tid)] == ["running", "error"]


@pytest.mark.slow
async def test_two_serve_processes_sweep_a_stale_thread_once(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """`threadloom serve` runs the sweeper in its lifespan; two servers on one root sweep
    every 50 ms, and the stale thread is moved to error/timeout by exactly one of them."""
    env = {**cli_env, "THREADLOOM_SWEEP_INTERVAL": "0.05"}
    root = str(tmp_path / "root")
    params = StdioServerParameters(
        command=PYTHON, args=["-m", "threadloom", "serve", "--root", root], env=env
    )
    async with Client(params) as a, Client(params) as b:
        created = await a.call_tool("create_thread", {"title": "will go stale", "stale_after": 0.3})
        tid = created.structured_content["thread_id"]
        r = await a.call_tool("append_event", {"thread_id": tid, "event": USER})
        assert not r.is_error and r.structured_content["status"] == "running"
        status = "running"
        with anyio.fail_after(60):  # a generous bound, not a timing assertion
            while status == "running":
                await anyio.sleep(0.05)
                status = (await b.call_tool("get_thread", {"thread_id": tid})).structured_content["status"]
        got = (await b.call_tool("get_thread", {"thread_id": tid})).structured_content
        assert (got["status"], got["status_reason"]) == ("error", "timeout")
        await anyio.sleep(0.3)  # several more sweep passes of both servers
        page = (await a.call_tool("read_events", {"thread_id": tid})).structured_content
    changes = [(e["from"], e["to"]) for e in page["events"] if e["type"] == "status"]
    assert changes == [("created", "running"), ("running", "error")]
    assert os.path.exists(os.path.join(root, "threads.db"))
