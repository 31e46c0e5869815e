"""Resource subscriptions against real servers: stdio and HTTP subprocesses, SQLite and PostgreSQL.

An update must arrive after an append through the same server and after one committed by
another process (this test process writing to the same root, or a second server on the
same PostgreSQL database); unsubscribing stops them.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from conftest import PYTHON, pg_schema, pg_unreachable
from mcp_helpers import call
from subscription_helpers import Updates, subscriber
from test_transports import free_port, wait_port
from threadloom.config import Settings
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
MODES = ["auto", "legacy"]


def serve_http(root: Path, env: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [PYTHON, "-m", "threadloom", "serve", "--http", "--port", str(port), "--root", str(root)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_port(port, proc)
    return proc, f"http://127.0.0.1:{port}/mcp"


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@asynccontextmanager
async def http_client(url: str, mode: str, updates: Updates) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(timeout=60) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode, message_handler=updates.handler_for(mode)) as client:
            yield client


async def exercise(client: Client, mode: str, updates: Updates, other: ThreadService | Client) -> None:
    """Subscribe to a thread's transcript; append here, then elsewhere; unsubscribe."""
    async with subscriber(client, mode, updates) as sub:
        tid = (await call(client, "create_thread", {"title": "watched"}))["thread_id"]
        quiet = (await call(client, "create_thread", {"title": "control"}))["thread_id"]
        uri, quiet_uri = f"thread://{tid}/transcript", f"thread://{quiet}/transcript"
        await sub.subscribe(uri)
        await sub.subscribe(quiet_uri)
        await call(client, "append_event", {"thread_id": tid, "event": {"role": "user", "text": "here"}})
        assert await updates.until(uri) == [uri]

        async def append_elsewhere(thread_id: str, text: str) -> None:
            event = {"role": "user", "text": text}
            if isinstance(other, ThreadService):
                await other.append(thread_id, [event], single=True)
            else:
                await call(other, "append_event", {"thread_id": thread_id, "event": event})

        await append_elsewhere(tid, "from another process")
        assert await updates.until(uri) == [uri]
        assert "from another process" in (await client.read_resource(uri)).contents[0].text
        await sub.unsubscribe(uri)
        await append_elsewhere(tid, "nobody listens")
        await append_elsewhere(quiet, "the control thread")
        assert await updates.until(quiet_uri) == [quiet_uri]  # nothing for the unsubscribed uri before it


@pytest.fixture
async def other_process(tmp_path: Path) -> AsyncIterator[ThreadService]:
    """This test process, writing to the server's root: another process as far as the server knows."""
    root = tmp_path / "root"
    async with ThreadService(SQLiteStore(root, durability="normal"), Settings(root=root)) as svc:
        yield svc


@pytest.mark.parametrize("mode", MODES)
async def test_stdio_server_sends_updates(
    tmp_path: Path, cli_env: dict, mode: str, other_process: ThreadService
) -> None:
    params = StdioServerParameters(
        command=PYTHON, args=["-m", "threadloom", "serve", "--root", str(tmp_path / "root")], env=cli_env
    )
    updates = Updates()
    async with Client(params, mode=mode, message_handler=updates.handler_for(mode)) as client:
        await exercise(client, mode, updates, other_process)


@pytest.mark.parametrize("mode", MODES)
async def test_http_server_sends_updates(
    tmp_path: Path, cli_env: dict, mode: str, other_process: ThreadService
) -> None:
    proc, url = serve_http(tmp_path / "root", cli_env)
    try:
        updates = Updates()
        async with http_client(url, mode, updates) as client:
            await exercise(client, mode, updates, other_process)
    finally:
        stop(proc)


@pytest.fixture
def pg_servers(tmp_path: Path, cli_env: dict) -> Iterator[list[str]]:
    problem = pg_unreachable()
    if problem:
        pytest.skip(problem)
    with pg_schema() as dsn:
        procs = []
        try:
            for i in range(2):
                procs.append(serve_http(tmp_path / f"r{i}", dict(cli_env, THREADLOOM_STORE=dsn)))
            yield [url for _, url in procs]
        finally:
            for proc, _ in procs:
                stop(proc)


@pytest.mark.parametrize("mode", MODES)
async def test_postgres_update_from_another_server(pg_servers: list[str], mode: str) -> None:
    updates = Updates()
    async with http_client(pg_servers[0], mode, updates) as client:
        async with http_client(pg_servers[1], "auto", Updates()) as other:
            await exercise(client, mode, updates, other)
