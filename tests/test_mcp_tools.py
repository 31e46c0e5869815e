"""Every tool and resource through the SDK's in-memory client, in both protocol eras."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from mcp_helpers import call, call_error
from threadloom.mcp_server import build_server
from threadloom.service import ThreadService

pytestmark = pytest.mark.anyio

TOOLS = {"create_thread", "append_event", "get_thread", "list_threads", "read_events", "update_thread"}


@pytest.fixture(params=["auto", "legacy"])
async def client(request: pytest.FixtureRequest, service: ThreadService) -> AsyncIterator[Client]:
    async with Client(build_server(service), mode=request.param) as c:
        yield c


async def test_every_tool_is_listed_with_a_description_and_schemas(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert TOOLS <= set(tools)
    for name in TOOLS:
        assert tools[name].description and len(tools[name].description) > 40
        assert tools[name].input_schema["type"] == "object"
        assert tools[name].output_schema is not None
    assert tools["get_thread"].annotations.read_only_hint is True


async def test_a_conversation_through_the_tools(client: Client) -> None:
    t = await call(client, "create_thread", {"agent_id": "me", "title": "demo", "directive": "say hi"})
    tid = t["thread_id"]
    assert t["status"] == "created" and t["agent_id"] == "me"
    one = await call(
        client, "append_event", {"thread_id": tid, "event": {"type": "message", "role": "user", "text": "hi"}}
    )
    assert one["seq"] == 2 and one["seqs"] is None and one["status"] == "running"
    assert set(one["context"]) == {"used", "window", "ratio"}
    many = await call(
        client,
        "append_event",
        {
            "thread_id": tid,
            "events": [
                {"type": "tool_use", "id": "t1", "name": "search", "input": {"q": "x"}},
                {"type": "tool_result", "tool_use_id": "t1", "output": "found"},
                {"type": "message", "role": "assistant", "text": "hello"},
            ],
        },
    )
    assert many["seqs"] == [3, 4, 5]
    page = await call(client, "read_events", {"thread_id": tid, "after_seq": 1, "limit": 2})
    assert [e["seq"] for e in page["events"]] == [2, 3] and page["has_more"] is True
    assert page["next_after_seq"] == 3
    done = await call(
        client,
        "update_thread",
        {"thread_id": tid, "status": "completed", "result": {"ok": True}, "cost": 0.01},
    )
    assert done["status"] == "completed" and done["result"] == {"ok": True}
    got = await call(client, "get_thread", {"thread_id": tid})
    assert got["event_count"] == 7 and got["cost"] == 0.01  # 5 appended, status, the closing checkpoint
    listed = await call(client, "list_threads", {"agent_id": "me"})
    assert [x["thread_id"] for x in listed["threads"]] == [tid] and listed["next_cursor"] is None


async def test_idempotent_retry_through_the_tool(client: Client) -> None:
    tid = (await call(client, "create_thread", {}))["thread_id"]
    args = {"thread_id": tid, "event": {"role": "user", "text": "once"}, "idempotency_key": "abc"}
    a = await call(client, "append_event", args)
    b = await call(client, "append_event", args)
    assert a["seq"] == b["seq"] and b["replayed"] is True


@pytest.mark.parametrize(
    ("tool", "args", "pattern"),
    [
        ("get_thread", {"thread_id": "../etc"}, "thread_id_format"),
        ("get_thread", {"thread_id": "ABCDEF123456"}, "12 lowercase hex digits"),
        ("get_thread", {"thread_id": "abcdef12345"}, "abcdef12345"),
        ("get_thread", {"thread_id": "abcdefabcdef"}, "thread_not_found"),
        (
            "append_event",
            {"thread_id": "abcdefabcdef", "event": {"role": "user", "text": "x"}},
            "does not exist",
        ),
        ("read_events", {"thread_id": "abcdefabcdef"}, "does not exist"),
        ("update_thread", {"thread_id": "abcdefabcdef", "title": "x"}, "does not exist"),
        ("create_thread", {"parent_id": "abcdefabcdef"}, "does not exist"),
        ("create_thread", {"agent_id": "no spaces allowed"}, "agent_id_format"),
        ("create_thread", {"context_window": 10}, "context_window_range"),
        ("list_threads", {"limit": 0}, "limit_range"),
        ("list_threads", {"cursor": "nope"}, "cursor_format"),
    ],
)
async def test_tool_errors_name_the_rule_and_value(
    client: Client, tool: str, args: dict, pattern: str
) -> None:
    assert pattern in await call_error(client, tool, args)


async def test_append_errors(client: Client) -> None:
    tid = (await call(client, "create_thread", {}))["thread_id"]
    cases = [
        ({"thread_id": tid}, "exactly one of 'event'"),
        ({"thread_id": tid, "event": {"role": "user", "text": "a"}, "events": []}, "exactly one of 'event'"),
        ({"thread_id": tid, "event": {"type": "bogus"}}, "'bogus' is not a known event type"),
        ({"thread_id": tid, "event": {"role": "robot", "text": "a"}}, "robot"),
        (
            {"thread_id": tid, "event": {"type": "status", "from": "running", "to": "completed"}},
            "server only",
        ),
        ({"thread_id": tid, "event": {"role": "user", "text": "x" * 1_100_000}}, "max_event_bytes"),
        ({"thread_id": tid, "events": [{"role": "user", "text": "ok"}, {"type": "nope"}]}, "events[1]"),
        (
            {"thread_id": tid, "event": {"role": "user", "text": "x"}, "idempotency_key": "has space"},
            "idempotency_key",
        ),
    ]
    for args, pattern in cases:
        assert pattern in await call_error(client, "append_event", args)
    page = await call(client, "read_events", {"thread_id": tid})
    assert page["events"] == []  # nothing was half-written


async def test_status_errors(client: Client) -> None:
    tid = (await call(client, "create_thread", {}))["thread_id"]
    await call(client, "update_thread", {"thread_id": tid, "status": "completed"})
    text = await call_error(client, "update_thread", {"thread_id": tid, "status": "running"})
    assert "completed -> running" in text and "status_transition" in text
    text = await call_error(
        client, "append_event", {"thread_id": tid, "event": {"role": "user", "text": "late"}}
    )
    assert "resume_thread" in text
    text = await call_error(client, "update_thread", {"thread_id": tid, "status": "sleeping"})
    assert "sleeping" in text


async def test_resources_serve_transcript_manifest_and_messages(
    client: Client, service: ThreadService
) -> None:
    tid = (await call(client, "create_thread", {"title": "res"}))["thread_id"]
    await call(
        client,
        "append_event",
        {
            "thread_id": tid,
            "events": [
                {"role": "user", "text": "list files"},
                {"type": "tool_use", "id": "u1", "name": "ls", "input": {}},
                {"type": "tool_result", "tool_use_id": "u1", "output": "a.txt"},
                {"role": "assistant", "text": "one file"},
            ],
        },
    )
    transcript = (await client.read_resource(f"thread://{tid}/transcript")).contents[0].text  # type: ignore[union-attr]
    lines = [json.loads(x) for x in transcript.splitlines()]
    assert [x["seq"] for x in lines] == [1, 2, 3, 4, 5]
    assert transcript == await service.transcript(tid)
    manifest = json.loads((await client.read_resource(f"thread://{tid}/thread.json")).contents[0].text)  # type: ignore[union-attr]
    assert manifest["thread_id"] == tid and manifest["title"] == "res"
    msgs = json.loads((await client.read_resource(f"thread://{tid}/messages")).contents[0].text)  # type: ignore[union-attr]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert msgs[1]["content"][0]["type"] == "tool_use"
    assert msgs[2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": "u1",
        "output": "a.txt",
        "is_error": False,
    }


async def test_resource_errors(client: Client) -> None:
    for uri in ("thread://abcdefabcdef/transcript", "thread://NOTANID/thread.json"):
        with pytest.raises(MCPError):
            await client.read_resource(uri)


async def test_resource_templates_are_listed(client: Client) -> None:
    templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
    assert {
        "thread://{thread_id}/transcript",
        "thread://{thread_id}/thread.json",
        "thread://{thread_id}/messages",
    } <= templates
