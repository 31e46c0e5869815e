"""Unknown tool arguments are refused (naming them and the tool's arguments), bad ones are
named under a `[rule]`, and no error message quotes more than 200 characters of a value."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from mcp import Client

from mcp_helpers import call, call_error
from threadloom.config import Settings
from threadloom.mcp_server import build_server
from threadloom.service import ThreadService
from threadloom.store.base import Store

pytestmark = pytest.mark.anyio

LONG = "q" * 10_000


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=["auto", "legacy"])
async def client(request: pytest.FixtureRequest, store: Store, settings: Settings) -> AsyncIterator[Client]:
    server = build_server(ThreadService(store, settings), allow_delete=True)
    async with Client(server, mode=request.param) as c:
        yield c


async def threads(client: Client) -> int:
    return len((await call(client, "list_threads", {}))["threads"])


async def test_an_unknown_argument_is_refused_and_nothing_is_written(client: Client) -> None:
    text = await call_error(client, "create_thread", {"title": "t", "bogus_arg": "lost data"})
    assert "[unknown_argument]" in text and "'bogus_arg'" in text, text
    assert "agent_id" in text and "metadata" in text  # the arguments it does take
    assert await threads(client) == 0
    tid = (await call(client, "create_thread", {}))["thread_id"]
    text = await call_error(
        client,
        "append_event",
        {"thread_id": tid, "event": {"role": "user", "text": "x"}, "idempotency": "k1"},
    )
    assert "[unknown_argument]" in text and "idempotency_key" in text
    assert (await call(client, "get_thread", {"thread_id": tid}))["event_count"] == 0


async def test_every_tool_refuses_unknown_arguments(client: Client) -> None:
    tools = (await client.list_tools()).tools
    assert len(tools) >= 12
    for t in tools:
        assert t.input_schema.get("additionalProperties") is False, t.name
        text = await call_error(client, t.name, {"not_an_argument": 1})
        assert "[unknown_argument]" in text and t.name in text, (t.name, text)


async def test_many_or_long_unknown_names_are_cut(client: Client) -> None:
    args = {f"{LONG}{i}": i for i in range(50)}
    text = await call_error(client, "get_thread", args)
    assert "[unknown_argument]" in text and "and 45 more" in text
    assert LONG[:201] not in text and len(text) < 2000


async def test_missing_and_mistyped_arguments_are_named(client: Client) -> None:
    text = await call_error(client, "get_thread", {})
    assert "[argument_missing]" in text and "thread_id" in text, text
    text = await call_error(client, "read_events", {"thread_id": "0" * 12, "after_seq": "abc"})
    assert "[argument_type]" in text and "after_seq" in text and "'abc'" in text, text
    text = await call_error(client, "list_threads", {"status": LONG})
    assert "[argument_type]" in text and "status" in text
    assert LONG[:201] not in text and len(text) < 1000


LONG_VALUES: list[tuple[str, dict[str, Any]]] = [
    ("get_thread", {"thread_id": LONG}),
    ("read_events", {"thread_id": LONG}),
    ("create_thread", {"agent_id": LONG}),
    ("create_thread", {"parent_id": LONG}),
    ("create_thread", {"title": LONG * 10}),
    ("create_thread", {"metadata": {"k": LONG * 10}}),
    ("list_threads", {"agent_id": LONG}),
    ("list_threads", {"cursor": LONG}),
    ("append_event", {"thread_id": "TID", "event": {"type": "x-" + LONG}}),
    ("append_event", {"thread_id": "TID", "event": {"type": LONG}}),
    ("append_event", {"thread_id": "TID", "event": {"role": LONG, "text": "x"}}),
    ("append_event", {"thread_id": "TID", "event": {"role": "user", "text": "x", LONG: 1}}),
    ("append_event", {"thread_id": "TID", "event": LONG}),
    ("append_event", {"thread_id": "TID", "event": {"role": "user", "text": "x"}, "idempotency_key": LONG}),
    ("update_thread", {"thread_id": "TID", "status": LONG}),
    ("update_thread", {"thread_id": "TID", "reason": LONG}),
    ("wait_threads", {"thread_ids": [LONG]}),
    ("wait_threads", {"thread_ids": ["TID"], "mode": LONG}),
    ("handoff_thread", {"thread_id": "TID", "reason": LONG}),
    ("resume_thread", {"thread_id": "TID", "message": "m", "format": LONG}),
    ("chain_search", {"thread_id": "TID", "query": LONG, "search_type": "regex"}),
    ("chain_search", {"thread_id": "TID", "query": "a* " + LONG[:50] + " b*"}),
    ("chain_search", {"thread_id": "TID", "query": "x", "search_type": LONG}),
    ("search_threads", {"query": "-" + LONG}),
    ("search_threads", {"query": "x", "agent_id": LONG}),
    ("verify_thread", {"thread_id": LONG}),
    ("get_chain", {"thread_id": LONG}),
    ("delete_thread", {"thread_id": LONG}),
]


@pytest.mark.parametrize("tool,args", LONG_VALUES, ids=[f"{i}-{t}" for i, (t, _) in enumerate(LONG_VALUES)])
async def test_no_error_quotes_more_than_200_characters_of_a_value(
    client: Client, tool: str, args: dict[str, Any]
) -> None:
    tid = (await call(client, "create_thread", {}))["thread_id"]
    await call(client, "append_event", {"thread_id": tid, "event": {"role": "user", "text": "x"}})
    args = {k: (tid if v == "TID" else [tid] if v == ["TID"] else v) for k, v in args.items()}
    text = await call_error(client, tool, args)
    assert "[" in text and "]" in text, text
    assert "q" * 201 not in text, text[:600]
    assert len(text) < 1500, text[:600]


async def test_an_unknown_tool_or_resource_is_named_in_at_most_200_characters(client: Client) -> None:
    text = await call_error(client, "create_" + LONG, {})
    assert "[unknown_tool]" in text and "create_thread" in text and LONG[:201] not in text
    with pytest.raises(Exception) as err:
        await client.read_resource("thread://" + LONG + "/nothing-here")
    assert "[resource_uri]" in str(err.value) and LONG[:201] not in str(err.value)
    with pytest.raises(Exception) as err:
        await client.read_resource(f"thread://{LONG}/transcript")
    assert "[thread_id_format]" in str(err.value) and LONG[:201] not in str(err.value)
