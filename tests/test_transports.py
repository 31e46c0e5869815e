"""The real server: ``threadloom serve`` over stdio and over streamable HTTP with a token."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from conftest import PYTHON

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TOKEN = "s3cret-token"


async def exercise(client: Client) -> None:
    tools = {t.name for t in (await client.list_tools()).tools}
    assert {
        "create_thread",
        "append_event",
        "get_thread",
        "list_threads",
        "read_events",
        "update_thread",
    } <= tools
    t = await client.call_tool("create_thread", {"title": "over the wire"})
    assert not t.is_error
    tid = t.structured_content["thread_id"]
    r = await client.call_tool("append_event", {"thread_id": tid, "event": {"role": "user", "text": "ping"}})
    assert r.structured_content["seq"] == 2
    bad = await client.call_tool(
        "append_event", {"thread_id": "../etc", "event": {"role": "user", "text": "x"}}
    )
    assert bad.is_error and "thread_id_format" in bad.content[0].text
    res = await client.read_resource(f"thread://{tid}/transcript")
    assert '"text":"ping"' in res.contents[0].text
    done = await client.call_tool("update_thread", {"thread_id": tid, "status": "completed"})
    assert done.structured_content["status"] == "completed"


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_stdio_subprocess_serves_every_tool(tmp_path: Path, cli_env: dict, mode: str) -> None:
    params = StdioServerParameters(
        command=PYTHON, args=["-m", "threadloom", "serve", "--root", str(tmp_path / "root")], env=cli_env
    )
    async with Client(params, mode=mode) as client:
        await exercise(client)
    assert (tmp_path / "root" / "threads.db").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} never opened")


@pytest.fixture
def http_server(tmp_path: Path, cli_env: dict) -> Iterator[str]:
    port = free_port()
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
            str(tmp_path / "root"),
            "--token",
            TOKEN,
        ],
        env=cli_env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_port(port, proc)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_http_with_the_token_serves_every_tool(http_server: str, mode: str) -> None:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as http:
        async with Client(streamable_http_client(http_server, http_client=http), mode=mode) as client:
            await exercise(client)


@pytest.mark.parametrize("auth", [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN])
async def test_http_without_or_with_a_wrong_token_gets_401(http_server: str, auth: str | None) -> None:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if auth:
        headers["Authorization"] = auth
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    async with httpx2.AsyncClient(timeout=10) as http:
        r = await http.post(http_server, json=body, headers=headers)
    assert r.status_code == 401
    assert "bearer token" in r.json()["message"]


def test_http_refuses_a_public_bind_without_a_token(tmp_path: Path, cli_env: dict) -> None:
    env = {k: v for k, v in cli_env.items() if k != "THREADLOOM_TOKEN"}
    proc = subprocess.run(
        [
            PYTHON,
            "-m",
            "threadloom",
            "serve",
            "--http",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
            "--root",
            str(tmp_path / "r"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "requires a bearer token" in proc.stderr and "0.0.0.0" in proc.stderr
    assert proc.stdout == ""


def test_invalid_settings_fail_at_start_up(tmp_path: Path, cli_env: dict) -> None:
    env = dict(cli_env, THREADLOOM_DURABILITY="sometimes")
    proc = subprocess.run(
        [PYTHON, "-m", "threadloom", "serve", "--root", str(tmp_path / "r")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert (
        "durability" in proc.stderr and "sometimes" in proc.stderr and "THREADLOOM_DURABILITY" in proc.stderr
    )
