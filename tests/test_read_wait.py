"""read_events(wait=...): a long-poll woken by commits (this process's or another's), and a
parent steering a running child with a user message."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client

from conftest import PYTHON
from mcp_helpers import call, call_error
from threadloom.config import Settings
from threadloom.mcp_server import build_server
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore

pytestmark = pytest.mark.anyio
WRITER = str(Path(__file__).with_name("proc_writer.py"))


async def running(service: ThreadService, **kw: object) -> str:
    tid = (await service.create_thread(**kw)).thread_id  # type: ignore[arg-type]
    await service.append(tid, [{"role": "user", "text": "start"}])
    return tid


async def test_existing_events_return_at_once(service: ThreadService) -> None:
    tid = await running(service)
    page = await service.read_events(tid, after_seq=1, wait=300)
    assert [e["text"] for e in page.events] == ["start"]


async def test_a_wait_wakes_on_an_append_and_times_out_empty(service: ThreadService) -> None:
    tid = await running(service)
    count = (await service.get_thread(tid)).event_count
    pages = []

    async def reader() -> None:
        pages.append(await service.read_events(tid, after_seq=count, wait=60))

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        while service.hub.waiters == 0:
            await anyio.sleep(0.001)
        await service.append(tid, [{"role": "user", "text": "news"}])
    assert [e["text"] for e in pages[0].events] == ["news"]

    started = time.monotonic()
    empty = await service.read_events(tid, after_seq=count + 1, wait=0.2)
    assert empty.events == [] and empty.next_after_seq == count + 1 and not empty.has_more
    assert time.monotonic() - started >= 0.2
    assert service.hub.waiters == 0  # nothing left registered


@pytest.mark.parametrize("wait", [-1, 301])
async def test_a_wait_out_of_range_is_refused(service: ThreadService, wait: float) -> None:
    tid = await running(service)
    async with Client(build_server(service)) as client:
        text = await call_error(client, "read_events", {"thread_id": tid, "after_seq": 9, "wait": wait})
    assert "[wait_range]" in text and "0 and 300" in text


async def test_a_parent_steers_a_running_child(service: ThreadService) -> None:
    parent = await running(service)
    child = await running(service, parent_id=parent)
    seen = (await service.get_thread(child)).event_count
    async with Client(build_server(service)) as client:
        got: list[dict] = []

        async def child_loop() -> None:
            page = await call(client, "read_events", {"thread_id": child, "after_seq": seen, "wait": 60})
            got.extend(page["events"])

        async with anyio.create_task_group() as tg:
            tg.start_soon(child_loop)
            while service.hub.waiters == 0:
                await anyio.sleep(0.001)
            steer = {"role": "user", "text": "stop and summarise", "metadata": {"from_thread_id": parent}}
            await call(client, "append_event", {"thread_id": child, "event": steer})
        assert got[0]["text"] == "stop and summarise"
        assert got[0]["metadata"] == {"from_thread_id": parent}
        bad = {"role": "user", "text": "x", "metadata": {"from_thread_id": "nope"}}
        text = await call_error(client, "append_event", {"thread_id": child, "event": bad})
        assert "[event_field]" in text and "from_thread_id" in text


@pytest.mark.slow
async def test_a_wait_wakes_on_another_process_append(tmp_path: Path, cli_env: dict) -> None:
    root = tmp_path / "root"
    async with ThreadService(SQLiteStore(root, durability="normal"), Settings(root=root)) as svc:
        tid = await running(svc)
        count = (await svc.get_thread(tid)).event_count
        async with Client(build_server(svc)) as client:
            pages: list[dict] = []

            async def reader() -> None:
                pages.append(
                    await call(client, "read_events", {"thread_id": tid, "after_seq": count, "wait": 120})
                )

            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                while svc.hub.waiters == 0:
                    await anyio.sleep(0.001)
                proc = await anyio.to_thread.run_sync(
                    lambda: subprocess.run(
                        [PYTHON, WRITER, str(root), tid, "1", "elsewhere"],
                        env=cli_env,
                        capture_output=True,
                        text=True,
                        timeout=120,
                    )
                )
                assert proc.returncode == 0, proc.stderr
            assert [e["text"] for e in pages[0]["events"]] == ["elsewhere-0"]
