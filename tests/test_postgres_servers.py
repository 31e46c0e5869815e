"""Two `threadloom serve --http` processes on one PostgreSQL database."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import PYTHON, pg_schema, pg_unreachable
from mcp_helpers import call
from test_transports import free_port, wait_port

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def two_servers(tmp_path: Path, cli_env: dict) -> Iterator[list[str]]:
    problem = pg_unreachable()
    if problem:
        pytest.skip(problem)
    with pg_schema() as dsn:
        procs, urls = [], []
        try:
            for i in range(2):
                port = free_port()
                env = dict(cli_env, THREADLOOM_STORE=dsn)
                proc = subprocess.Popen(
                    [
                        PYTHON,
                        "-m",
                        "threadloom",
                        "serve",
                        "--http",
                        "--port",
                        str(port),
                        "--root",
                        str(tmp_path / f"r{i}"),
                    ],
                    env=env,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                procs.append(proc)
                wait_port(port, proc)
                urls.append(f"http://127.0.0.1:{port}/mcp")
            yield urls
        finally:
            for proc in procs:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()


@asynccontextmanager
async def connect(url: str):  # type: ignore[no-untyped-def]
    async with httpx2.AsyncClient(timeout=60) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            yield client


async def test_appends_through_two_servers_keep_seqs_gapless(two_servers: list[str]) -> None:
    async with connect(two_servers[0]) as a, connect(two_servers[1]) as b:
        tid = (await call(a, "create_thread", {"title": "shared"}))["thread_id"]
        await call(a, "append_event", {"thread_id": tid, "event": {"role": "user", "text": "start"}})
        acked: dict[str, int] = {}

        async def writer(client: Client, name: str) -> None:
            for i in range(25):
                text = f"{name}-{i}"
                acked[text] = (
                    await call(
                        client, "append_event", {"thread_id": tid, "event": {"role": "user", "text": text}}
                    )
                )["seq"]

        async with anyio.create_task_group() as tg:
            for name, client in (("a", a), ("b", b), ("a2", a), ("b2", b)):
                tg.start_soon(writer, client, name)
        page = await call(b, "read_events", {"thread_id": tid, "limit": 1000})
        seqs = [e["seq"] for e in page["events"]]
        assert seqs == list(range(1, 103))
        by_text = {e.get("text"): e["seq"] for e in page["events"]}
        assert all(by_text[t] == s for t, s in acked.items())


async def test_an_idempotent_retry_through_the_other_server_returns_the_original_seq(
    two_servers: list[str],
) -> None:
    async with connect(two_servers[0]) as a, connect(two_servers[1]) as b:
        tid = (await call(a, "create_thread", {}))["thread_id"]
        args = {"thread_id": tid, "event": {"role": "user", "text": "once"}, "idempotency_key": "retry-1"}
        first = await call(a, "append_event", args)
        again = await call(b, "append_event", args)
        assert again["seq"] == first["seq"] and again["replayed"] is True
        assert (await call(b, "get_thread", {"thread_id": tid}))["event_count"] == 2


async def test_a_wait_in_one_server_is_woken_by_a_completion_through_the_other(
    two_servers: list[str],
) -> None:
    async with connect(two_servers[0]) as a, connect(two_servers[1]) as b:
        tid = (await call(a, "create_thread", {}))["thread_id"]
        await call(a, "append_event", {"thread_id": tid, "event": {"role": "user", "text": "go"}})
        result: dict[str, Any] = {}

        async def waiter() -> None:
            result.update(await call(a, "wait_threads", {"thread_ids": [tid], "timeout": 60}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.5)
            await call(b, "update_thread", {"thread_id": tid, "status": "completed", "result": {"via": "b"}})
        assert result["settled"] is True
        assert result["threads"][0]["result"] == {"via": "b"}


async def test_a_thread_finished_through_one_server_verifies_and_resumes_through_the_other(
    two_servers: list[str],
) -> None:
    """The servers have their own roots (their own keys folders): the database's shared key
    makes each one's checkpoints verify on the other, so resume (which verifies) works."""
    async with connect(two_servers[0]) as a, connect(two_servers[1]) as b:
        tid = (await call(a, "create_thread", {"title": "signed by a"}))["thread_id"]
        await call(a, "append_event", {"thread_id": tid, "event": {"role": "user", "text": "question"}})
        await call(a, "append_event", {"thread_id": tid, "event": {"role": "assistant", "text": "answer"}})
        await call(a, "update_thread", {"thread_id": tid, "status": "completed", "result": "done"})
        report = await call(b, "verify_thread", {"thread_id": tid})
        assert report["ok"] is True and report["checkpoints"] >= 1, report["summary"]
        resumed = await call(b, "resume_thread", {"thread_id": tid, "message": "and one more thing"})
        new_id = resumed["thread"]["thread_id"]
        assert (await call(a, "verify_thread", {"thread_id": new_id}))["ok"] is True
