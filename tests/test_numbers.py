"""Every number a client gives is checked: out of range (huge ints, NaN, Infinity, 1e400,
sums past their range) is a `[rule]` error naming the range, and nothing is written.
Through real MCP clients in both protocol eras, and as raw JSON over stdio."""

from __future__ import annotations

import json
import select
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from mcp_helpers import call, call_error
from threadloom.config import Settings
from threadloom.mcp_server import build_server
from threadloom.numbers import MAX_AMOUNT, MAX_COUNT, MAX_SEQ
from threadloom.service import ThreadService
from threadloom.store.base import Store

pytestmark = pytest.mark.anyio

HUGE = 10**30


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=["auto", "legacy"])
async def client(request: pytest.FixtureRequest, store: Store, settings: Settings) -> AsyncIterator[Client]:
    async with Client(build_server(ThreadService(store, settings)), mode=request.param) as c:
        yield c


async def new_thread(client: Client, **kw: Any) -> str:
    return (await call(client, "create_thread", kw))["thread_id"]


async def count(client: Client, tid: str) -> int:
    return (await call(client, "get_thread", {"thread_id": tid}))["event_count"]


async def test_read_events_past_the_largest_seq_is_a_range_error(client: Client) -> None:
    tid = await new_thread(client)
    await call(client, "append_event", {"thread_id": tid, "event": {"role": "user", "text": "hi"}})
    for bad in (2**63, HUGE, -1):
        text = await call_error(client, "read_events", {"thread_id": tid, "after_seq": bad})
        assert "[after_seq_range]" in text and str(MAX_SEQ) in text, text
    page = await call(client, "read_events", {"thread_id": tid, "after_seq": MAX_SEQ})
    assert page["events"] == []
    for bad in (HUGE, 0):
        text = await call_error(client, "read_events", {"thread_id": tid, "limit": bad})
        assert "[limit_range]" in text and "1000" in text


@pytest.mark.parametrize(
    "field,value",
    [
        ("input_tokens", HUGE),
        ("output_tokens", 2**63),
        ("turns", MAX_COUNT + 1),
        ("duration_ms", HUGE),
        ("cost", 1e300),
        ("cost", -1),
    ],
)
async def test_result_numbers_out_of_range_write_nothing(client: Client, field: str, value: Any) -> None:
    tid = await new_thread(client, limits={"tokens": 100})
    before = await count(client, tid)
    text = await call_error(
        client, "append_event", {"thread_id": tid, "event": {"type": "result", field: value}}
    )
    assert "[event_field]" in text and field in text, text
    assert str(MAX_COUNT) in text or "1000000000000000" in text or "greater than or equal to 0" in text
    assert await count(client, tid) == before


async def test_usage_sums_stay_in_range(client: Client) -> None:
    tid = await new_thread(client)
    big = {"type": "result", "output_tokens": MAX_COUNT, "cost": MAX_AMOUNT}
    await call(client, "append_event", {"thread_id": tid, "event": big})
    before = await count(client, tid)
    text = await call_error(client, "append_event", {"thread_id": tid, "event": big})
    assert "[usage_range]" in text and "Nothing was written" in text, text
    # a batch whose own sum leaves the range is refused as a whole
    other = await new_thread(client)
    text = await call_error(
        client, "append_event", {"thread_id": other, "events": [big, big, {"role": "user", "text": "x"}]}
    )
    assert "[usage_range]" in text
    assert await count(client, tid) == before and await count(client, other) == 0
    usage = (await call(client, "get_thread", {"thread_id": tid}))["usage"]
    assert usage["tokens"] == MAX_COUNT and usage["spend"] == MAX_AMOUNT


@pytest.mark.parametrize(
    "args,rule",
    [
        ({"limits": {"tokens": HUGE}}, "argument_range"),
        ({"limits": {"spend": 1e300}}, "argument_range"),
        ({"limits": {"turns": -1}}, "argument_range"),
        ({"budget": {"max_spend": 1e300}}, "argument_range"),
        ({"stale_after": 1e300}, "stale_after_range"),
        ({"stale_after": 0}, "stale_after_range"),
        ({"context_window": HUGE}, "context_window_range"),
        ({"trigger_threshold": 2}, "trigger_threshold_range"),
    ],
)
async def test_create_thread_numbers_out_of_range(client: Client, args: dict[str, Any], rule: str) -> None:
    before = len((await call(client, "list_threads", {}))["threads"])
    text = await call_error(client, "create_thread", args)
    assert f"[{rule}]" in text, text
    assert "Error executing tool create_thread: [" in text
    assert len((await call(client, "list_threads", {}))["threads"]) == before


async def test_update_and_list_numbers_out_of_range(client: Client) -> None:
    tid = await new_thread(client)
    for bad in (1e300, -0.5):
        text = await call_error(client, "update_thread", {"thread_id": tid, "cost": bad})
        assert "[cost_range]" in text and "1e+15" in text, text
    assert (await call(client, "get_thread", {"thread_id": tid}))["cost"] is None
    text = await call_error(client, "list_threads", {"limit": HUGE})
    assert "[limit_range]" in text and "200" in text
    text = await call_error(client, "search_threads", {"query": "x", "limit": HUGE})
    assert "[limit_range]" in text
    text = await call_error(client, "wait_threads", {"thread_ids": [tid], "timeout": 1e300})
    assert "[wait_timeout]" in text


# ----------------------------------------------------------------- raw JSON over stdio

INIT = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


def send(proc: Any, line: bytes) -> None:
    proc.stdin.write(line + b"\n")
    proc.stdin.flush()


def answer(proc: Any, timeout: float = 20) -> dict[str, Any]:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no answer from the server"
    return json.loads(proc.stdout.readline())


@pytest.fixture
def stdio(tmp_path: Path, cli_env: dict) -> Iterator[Any]:
    import subprocess

    from conftest import PYTHON

    proc = subprocess.Popen(
        [PYTHON, "-m", "threadloom", "serve", "--root", str(tmp_path / "root")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env,
    )
    try:
        send(proc, json.dumps(INIT).encode())
        assert answer(proc)["id"] == 0
        send(proc, b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
        yield proc
    finally:
        proc.kill()
        proc.wait()


def tool(proc: Any, rid: int, name: str, raw_args: str) -> dict[str, Any]:
    """Call a tool with arguments given as raw JSON text (so 1e400, NaN and huge ints go as written)."""
    line = f'{{"jsonrpc":"2.0","id":{rid},"method":"tools/call","params":{{"name":"{name}","arguments":{raw_args}}}}}'
    send(proc, line.encode())
    got = answer(proc)
    assert got["id"] == rid, got
    return got["result"]


RAW = [
    ("create_thread", '{"stale_after": 1e400}', "stale_after_range"),
    ("create_thread", '{"stale_after": NaN}', "stale_after_range"),
    ("create_thread", '{"trigger_threshold": NaN}', "trigger_threshold_range"),
    ("create_thread", '{"limits": {"spend": Infinity}}', "argument_range"),
    ("create_thread", '{"limits": {"tokens": 1000000000000000000000000000000}}', "argument_range"),
    ("create_thread", '{"budget": {"max_spend": 1e400}}', "argument_range"),
    ("create_thread", '{"budget": {"max_spend": NaN}}', "argument_range"),
    ("create_thread", '{"metadata": {"x": 1e400}}', "metadata_shape"),
    ("create_thread", '{"metadata": {"x": NaN}}', "metadata_shape"),
    (
        "create_thread",
        '{"capabilities": {"tools": [{"name": "t", "description": "d", "input_schema": {"default": NaN}}]}}',
        "capabilities_shape",
    ),
    ("append_event", '{"thread_id": "TID", "event": {"type": "result", "cost": 1e400}}', "event_field"),
    ("append_event", '{"thread_id": "TID", "event": {"type": "result", "cost": NaN}}', "event_field"),
    (
        "append_event",
        '{"thread_id": "TID", "event": {"type": "result", "input_tokens": 1000000000000000000000000000000}}',
        "event_field",
    ),
    ("append_event", '{"thread_id": "TID", "event": {"type": "x-n", "v": -Infinity}}', "event_json"),
    (
        "append_event",
        '{"thread_id": "TID", "event": {"type": "tool_use", "id": "1", "name": "t", "input": {"v": NaN}}}',
        "event_json",
    ),
    ("update_thread", '{"thread_id": "TID", "cost": 1e400}', "cost_range"),
    ("update_thread", '{"thread_id": "TID", "cost": NaN}', "cost_range"),
    ("update_thread", '{"thread_id": "TID", "result": {"v": 1e400}}', "result_shape"),
    ("read_events", '{"thread_id": "TID", "after_seq": 9223372036854775808}', "after_seq_range"),
    ("read_events", '{"thread_id": "TID", "wait": NaN}', "wait_range"),
    ("wait_threads", '{"thread_ids": ["TID"], "timeout": 1e400}', "wait_timeout"),
    ("wait_threads", '{"thread_ids": ["TID"], "timeout": NaN}', "wait_timeout"),
]


@pytest.mark.slow
def test_raw_json_numbers_out_of_range_are_named_and_write_nothing(stdio: Any) -> None:
    made = tool(stdio, 1, "create_thread", "{}")
    assert not made.get("isError"), made
    tid = made["structuredContent"]["thread_id"]
    tool(stdio, 2, "append_event", f'{{"thread_id": "{tid}", "event": {{"role": "user", "text": "hi"}}}}')
    for i, (name, raw, rule) in enumerate(RAW, start=10):
        got = tool(stdio, i, name, raw.replace("TID", tid))
        text = got["content"][0]["text"]
        assert got.get("isError") and f"[{rule}]" in text, (name, raw, text)
        assert len(text) < 1000
    listed = tool(stdio, 100, "list_threads", "{}")["structuredContent"]["threads"]
    assert [t["thread_id"] for t in listed] == [tid]
    thread = tool(stdio, 101, "get_thread", f'{{"thread_id": "{tid}"}}')["structuredContent"]
    assert thread["event_count"] == 2 and thread["cost"] is None and thread["result"] is None
