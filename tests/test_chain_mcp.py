"""Continuation chains through the MCP client, in both protocol eras."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from chain_helpers import CEILING, filler, msg, result, small, snapshot, use
from mcp_helpers import call, call_error
from provider_shapes import check_anthropic, check_openai
from threadloom.config import Settings
from threadloom.mcp_server import build_server
from threadloom.models import Status
from threadloom.service import ThreadService
from threadloom.store.base import AppendEvents, CreateThread, NewEvent, PutThread, Store

pytestmark = pytest.mark.anyio

CHAIN_TOOLS = {"handoff_thread", "get_chain", "resume_thread"}


@pytest.fixture(params=["auto", "legacy"])
async def client(request: pytest.FixtureRequest, store: Store, settings: Settings) -> AsyncIterator[Client]:
    async with Client(build_server(ThreadService(store, small(settings))), mode=request.param) as c:
        yield c


async def read(client: Client, uri: str) -> Any:
    return json.loads((await client.read_resource(uri)).contents[0].text)  # type: ignore[union-attr]


async def run_until_handoff(client: Client, tid: str) -> dict[str, Any]:
    """Append scripted turns one at a time until the server hands off; return that result."""
    for i, ev in enumerate(filler(200)):
        out = await call(client, "append_event", {"thread_id": tid, "event": ev})
        if out["handoff"]:
            return out
        assert out["context"]["ratio"] < 0.9, f"turn {i} crossed the threshold without a handoff"
    raise AssertionError("no handoff")


async def test_the_chain_tools_are_listed_with_descriptions_and_schemas(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert CHAIN_TOOLS <= set(tools)
    for name in CHAIN_TOOLS:
        assert len(tools[name].description or "") > 80 and tools[name].output_schema is not None
    assert tools["get_chain"].annotations.read_only_hint is True
    assert tools["resume_thread"].input_schema["required"] == ["thread_id", "message"]
    assert "handoff" in (tools["append_event"].description or "")


async def test_an_agent_crosses_the_threshold_and_continues_where_it_is_told(client: Client) -> None:
    a = (await call(client, "create_thread", {"directive": "count sheep"}))["thread_id"]
    out = await run_until_handoff(client, a)
    h = out["handoff"]
    b = h["thread_id"]
    assert out["status"] == "continued" and out["context"]["ratio"] >= 0.9
    assert h["previous_thread_id"] == a and h["reason"] == "threshold" and h["carried_messages"] >= 1
    assert h["context"]["ratio"] < 0.9 and b in h["message"]
    refused = await call_error(client, "append_event", {"thread_id": a, "event": msg("late")})
    assert refused.count("[thread_continued]") == 1 and f"append to thread {b}" in refused
    nxt = await call(client, "append_event", {"thread_id": b, "event": msg("on we go")})
    assert nxt["status"] == "running" and nxt["handoff"] is None
    neutral = await read(client, f"thread://{b}/messages")
    assert neutral[0]["role"] == "user" and "count sheep" in neutral[0]["content"][0]["text"]
    assert neutral[-1]["content"][-1]["text"] == "on we go"
    chain_ = await call(client, "get_chain", {"thread_id": b})
    assert [t["thread_id"] for t in chain_["threads"]] == [a, b] and chain_["end_thread_id"] == b
    assert await read(client, f"chain://{a}") == {**chain_, "thread_id": a}


async def test_explicit_handoff_with_a_summary_through_the_tool(client: Client) -> None:
    a = (await call(client, "create_thread", {"directive": "d"}))["thread_id"]
    await call(
        client,
        "append_event",
        {"thread_id": a, "events": [msg("q"), use("c1"), result("c1"), msg("a", "assistant")]},
    )
    h = await call(client, "handoff_thread", {"thread_id": a, "summary": "asked q, got a"})
    assert h["reason"] == "explicit" and h["carried_messages"] == 4
    msgs = await read(client, f"thread://{h['thread_id']}/messages?format=anthropic")
    check_anthropic(msgs.get("system"), msgs["messages"])
    assert "asked q, got a" in msgs["messages"][0]["content"][0]["text"]
    again = await call_error(client, "handoff_thread", {"thread_id": a})
    assert again.count("[thread_continued]") == 1 and h["thread_id"] in again
    fresh = (await call(client, "create_thread", {}))["thread_id"]
    assert "[handoff_not_running]" in await call_error(client, "handoff_thread", {"thread_id": fresh})


async def test_resume_through_the_tool_returns_the_thread_and_ready_messages(client: Client) -> None:
    a = (await call(client, "create_thread", {"directive": "d"}))["thread_id"]
    await call(
        client,
        "append_event",
        {"thread_id": a, "events": [msg("q"), use("c1"), result("c1", {"x": 1}), msg("a", "assistant")]},
    )
    running = await call_error(client, "resume_thread", {"thread_id": a, "message": "more"})
    assert running.count("[resume_not_finished]") == 1 and "running" in running
    await call(client, "update_thread", {"thread_id": a, "status": "completed"})
    out = await call(client, "resume_thread", {"thread_id": a, "message": "and now?", "format": "openai"})
    new = out["thread"]["thread_id"]
    assert out["thread"]["continuation_of"] == a and out["thread"]["link_reason"] == "resume"
    assert out["format"] == "openai" and not out["trimmed"]
    check_openai(out["messages"])
    assert out["messages"][-1] == {"role": "user", "content": "and now?"}
    assert out["messages"][1]["tool_calls"][0]["id"] == "c1"
    assert (await read(client, f"thread://{new}/messages?format=openai"))["messages"] == out["messages"]
    chain_ = await call(client, "get_chain", {"thread_id": new})
    assert [t["link_reason"] for t in chain_["threads"]] == [None, "resume"]
    bad = await client.call_tool("resume_thread", {"thread_id": a, "message": "x", "format": "yaml"})
    assert bad.is_error


async def test_a_long_chain_resumed_when_huge_carries_only_its_tail(client: Client) -> None:
    a = (await call(client, "create_thread", {"directive": "d"}))["thread_id"]
    h1 = (await run_until_handoff(client, a))["handoff"]["thread_id"]
    h2 = (await run_until_handoff(client, h1))["handoff"]["thread_id"]
    used = (await call(client, "get_thread", {"thread_id": h2}))["text_chars"]
    more = await call(client, "append_event", {"thread_id": h2, "events": filler((3560 - used) // 90)})
    assert more["handoff"] is None  # just under the threshold
    await call(client, "update_thread", {"thread_id": h2, "status": "error", "reason": "crashed"})
    out = await call(
        client, "resume_thread", {"thread_id": h1, "message": "try again " * 20, "format": "anthropic"}
    )
    assert out["previous_thread_id"] == h2 and out["context"]["ratio"] < 0.9 and out["trimmed"]
    assert out["carried_messages"] * 90 <= CEILING * 4
    check_anthropic(out["system"], out["messages"])
    view = await call(client, "get_chain", {"thread_id": a})
    assert [t["status"] for t in view["threads"]] == ["continued", "continued", "error", "running"]
    assert view["end_thread_id"] == out["thread"]["thread_id"]


async def test_bad_arguments_are_tool_errors_naming_the_rule(client: Client) -> None:
    assert "[thread_id_format]" in await call_error(client, "get_chain", {"thread_id": "nope"})
    assert "[thread_not_found]" in await call_error(client, "get_chain", {"thread_id": "0123456789ab"})
    t = (await call(client, "create_thread", {}))["thread_id"]
    with pytest.raises(MCPError, match="format"):
        await client.read_resource(f"thread://{t}/messages?format=yaml")
    with pytest.raises(MCPError, match="0123456789ab"):
        await client.read_resource("chain://0123456789ab")


# ------------------------------------------------- the rules, through MCP


@pytest.fixture
async def pair(store: Store, settings: Settings) -> AsyncIterator[tuple[Client, ThreadService]]:
    svc = ThreadService(store, small(settings))
    async with Client(build_server(svc), mode="legacy") as c:
        yield c, svc


async def started(client: Client) -> str:
    tid = (await call(client, "create_thread", {"directive": "sort socks"}))["thread_id"]
    await call(client, "append_event", {"thread_id": tid, "event": msg("please sort the socks")})
    return tid


async def test_reported_input_tokens_cross_the_threshold_over_mcp(client: Client) -> None:
    tid = await started(client)
    out = await call(
        client, "append_event", {"thread_id": tid, "event": {"type": "result", "input_tokens": 930}}
    )
    assert out["context"]["used"] == 930 and out["handoff"]["thread_id"]


async def test_the_carry_over_mcp_is_user_first_within_the_ceiling_with_whole_tool_pairs(
    client: Client,
) -> None:
    tid = await started(client)
    await call(client, "append_event", {"thread_id": tid, "events": filler(35)})
    tail = [  # newest first, the ceiling (400 chars) takes c1's result but not its 315-char call
        msg("m" * 40, "assistant"),
        msg("check the drawer"),
        use("c1", "open", path="p" * 300),
        result("c1", "r" * 100),
        msg("and the basket"),
        use("c2", "open", path="basket"),
        result("c2", "two"),
        msg("done", "assistant"),
    ]
    out = await call(client, "append_event", {"thread_id": tid, "events": tail})
    new = out["handoff"]["thread_id"]
    body = await read(client, f"thread://{new}/messages?format=anthropic")
    check_anthropic(body.get("system"), body["messages"])
    first = body["messages"][0]["content"]
    assert (
        first[0]["text"].startswith("[threadloom]") and first[1]["text"] == "and the basket"
    )  # no half c1 pair
    neutral = await read(client, f"thread://{new}/messages")
    carried_chars = sum(
        len(b.get("text", "")) + len(json.dumps(b.get("input", "")))
        for m in neutral[1:]
        for b in m["content"]
    )
    assert carried_chars <= CEILING * 4 and out["handoff"]["carried_messages"] == 4


async def test_a_message_larger_than_the_ceiling_over_mcp(client: Client) -> None:
    tid = await started(client)
    out = await call(client, "append_event", {"thread_id": tid, "event": msg("H" * 3700)})
    assert out["handoff"]["carried_messages"] == 0 and out["handoff"]["context"]["ratio"] < 0.9
    assert len(await read(client, f"thread://{out['handoff']['thread_id']}/messages")) == 1


async def test_a_failed_handoff_over_mcp_changes_nothing_and_says_so(
    pair: tuple[Client, ThreadService], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, svc = pair
    tid = await started(client)
    real = svc.store.commit

    async def faulty(ops: Any) -> Any:
        if any(isinstance(op, CreateThread) for op in ops):  # the handoff's commit: fail at its last step
            return await real(
                [*ops, AppendEvents("ffffffffffff", (NewEvent("x-poison", {"type": "x-poison"}),))]
            )
        return await real(ops)

    monkeypatch.setattr(svc.store, "commit", faulty)
    before = snapshot(svc.store)
    assert "[thread_not_found]" in await call_error(client, "handoff_thread", {"thread_id": tid})
    assert snapshot(svc.store) == before
    out = await call(
        client, "append_event", {"thread_id": tid, "event": {"type": "result", "input_tokens": 950}}
    )
    assert out["handoff"] is None and "handoff failed" in out["warning"] and out["status"] == "running"
    view = await call(client, "get_chain", {"thread_id": tid})
    assert len(view["threads"]) == 1


async def test_a_cycle_over_mcp_ends_resolution(pair: tuple[Client, ThreadService]) -> None:
    client, svc = pair
    a, b = await started(client), await started(client)
    for tid, nxt in ((a, b), (b, a)):
        t = await svc.store.get_thread(tid)
        await svc.store.commit(
            [
                PutThread(
                    t.model_copy(
                        update={"continuation_thread_id": nxt, "chain_root_id": a, "status": Status.COMPLETED}
                    ),
                    expect_version=t.version,
                )
            ]
        )
    view = await call(client, "get_chain", {"thread_id": b})
    assert [t["thread_id"] for t in view["threads"]] == [a, b] and "cycle" in view["problems"][0]
    assert "[chain_broken]" in await call_error(client, "resume_thread", {"thread_id": a, "message": "go"})


@pytest.mark.parametrize("status", ["completed", "error", "cancelled", "created", "running", "paused"])
async def test_resume_over_mcp_from_each_status(client: Client, status: str) -> None:
    tid = (await call(client, "create_thread", {}))["thread_id"]
    if status != "created":
        await call(client, "append_event", {"thread_id": tid, "event": msg("hi")})
    if status not in ("created", "running"):
        await call(client, "update_thread", {"thread_id": tid, "status": status})
    args = {"thread_id": tid, "message": "again"}
    if status in ("completed", "error", "cancelled"):
        out = await call(client, "resume_thread", args)
        assert out["previous_thread_id"] == tid and out["thread"]["status"] == "running"
        events = await call(client, "read_events", {"thread_id": tid, "after_seq": 0})
        logged = [e for e in events["events"] if e["type"] != "checkpoint"]  # an ended transcript ends signed
        assert logged[-1]["type"] == "thread_resumed"
        assert events["events"][-1]["type"] == "checkpoint"
    else:
        text = await call_error(client, "resume_thread", args)
        assert "[resume_not_finished]" in text and f"which is {status}" in text


async def test_a_chain_of_four_over_mcp_reads_the_same_from_every_member(client: Client) -> None:
    ids = [await started(client)]
    for _ in range(2):
        ids.append((await call(client, "handoff_thread", {"thread_id": ids[-1]}))["thread_id"])
    await call(client, "update_thread", {"thread_id": ids[-1], "status": "completed"})
    ids.append(
        (await call(client, "resume_thread", {"thread_id": ids[0], "message": "more"}))["thread"]["thread_id"]
    )
    for tid in ids:
        view = await call(client, "get_chain", {"thread_id": tid})
        assert [t["thread_id"] for t in view["threads"]] == ids and view["end_thread_id"] == ids[-1]
        assert await read(client, f"chain://{tid}") == view
