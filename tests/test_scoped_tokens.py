"""Agent-scoped tokens over real HTTP (a `threadloom serve --http` subprocess, real MCP
clients in both protocol eras): a token limited to some agents lists, reads, searches,
waits on, subscribes to and writes only their threads; every other thread answers
exactly like one that does not exist, through every tool and resource."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from http_helpers import serve_http
from mcp_helpers import call, call_error
from subscription_helpers import legacy_subscribe

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ADMIN = "a" * 43
ALICE = "b" * 43
PAIR = "c" * 43
NOBODY = "000000000000"
CAPS = {"tools": [{"name": "grep", "description": "search files", "input_schema": {"type": "object"}}]}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import os

    root = tmp_path_factory.mktemp("scoped") / "root"
    env = dict(os.environ)
    env["PYTHONPATH"] = (
        str(Path(__file__).resolve().parents[1] / "server") + os.pathsep + env.get("PYTHONPATH", "")
    )
    env["THREADLOOM_TOKENS"] = json.dumps(
        [
            {"token": ADMIN, "name": "admin"},
            {"token": ALICE, "agents": ["alice"], "name": "alice"},
            {"token": PAIR, "agents": ["alice", "carol"], "name": "pair"},
        ]
    )
    with serve_http(root, env, "--allow-delete") as port:
        yield f"http://127.0.0.1:{port}/mcp"


@asynccontextmanager
async def connect(url: str, token: str, mode: str) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            yield client


def same_refusal(text: str, tid: str, missing_text: str) -> None:
    """``text`` (about ``tid``) says exactly what the refusal for a thread that does not exist says."""
    assert "thread_not_found" in text, text
    assert text.replace(tid, "X") == missing_text.replace(NOBODY, "X"), (text, missing_text)


async def setup(url: str, mode: str) -> dict[str, str]:
    """As admin: alice's thread (with a child and capabilities), bob's thread, and bob's child of alice's."""
    async with connect(url, ADMIN, mode) as admin:
        a = (
            await call(
                admin, "create_thread", {"agent_id": "alice", "title": "alice work", "capabilities": CAPS}
            )
        )["thread_id"]
        a_child = (await call(admin, "create_thread", {"parent_id": a}))["thread_id"]
        b = (
            await call(admin, "create_thread", {"agent_id": "bob", "title": "bob work", "capabilities": CAPS})
        )["thread_id"]
        b_child = (await call(admin, "create_thread", {"parent_id": a, "agent_id": "bob"}))["thread_id"]
        for tid, word in ((a, "alicesecret"), (b, "bobsecret"), (b_child, "bobsecret")):
            await call(
                admin, "append_event", {"thread_id": tid, "event": {"role": "user", "text": f"{word} plan"}}
            )
            await call(
                admin, "append_event", {"thread_id": tid, "event": {"role": "assistant", "text": "done"}}
            )
        done = (await call(admin, "create_thread", {"agent_id": "bob"}))["thread_id"]
        await call(admin, "update_thread", {"thread_id": done, "status": "completed", "result": "ok"})
    return {"a": a, "a_child": a_child, "b": b, "b_child": b_child, "b_done": done}


def tool_probes(t: dict[str, str], target: str) -> list[tuple[str, dict[str, Any]]]:
    """Every tool that takes a thread id, aimed at ``target``."""
    return [
        ("get_thread", {"thread_id": target}),
        ("read_events", {"thread_id": target}),
        ("read_events", {"thread_id": target, "wait": 0.1}),
        ("append_event", {"thread_id": target, "event": {"role": "user", "text": "injected"}}),
        ("append_event", {"thread_id": target, "events": [{"role": "user", "text": "injected"}]}),
        ("update_thread", {"thread_id": target, "status": "cancelled"}),
        ("update_thread", {"thread_id": target, "title": "renamed"}),
        ("verify_thread", {"thread_id": target}),
        ("handoff_thread", {"thread_id": target, "summary": "s"}),
        ("get_chain", {"thread_id": target}),
        ("resume_thread", {"thread_id": target, "message": "go on"}),
        ("chain_search", {"thread_id": target, "query": "bobsecret"}),
        ("chain_search", {"thread_id": target, "query": "bob.*", "search_type": "regex"}),
        ("wait_threads", {"thread_ids": [target], "timeout": 0}),
        ("wait_threads", {"thread_ids": [t["a"], target], "timeout": 0}),
        ("create_thread", {"parent_id": target}),
    ]


RESOURCES = [
    "thread://{}/transcript",
    "thread://{}/thread.json",
    "thread://{}/capabilities.md",
    "thread://{}/messages",
    "thread://{}/messages?format=openai",
    "chain://{}",
]


async def resource_error(client: Client, uri: str) -> str:
    try:
        got = await client.read_resource(uri)
    except Exception as exc:  # the SDK raises the JSON-RPC error
        return str(exc)
    raise AssertionError(f"{uri} was readable: {str(got)[:300]}")


async def subscribe_error(client: Client, mode: str, uri: str) -> str:
    try:
        if mode == "legacy":
            await legacy_subscribe(client, uri)
        else:
            async with client.listen(resource_subscriptions=[uri]):
                pass
    except Exception as exc:
        return str(exc)
    raise AssertionError(f"subscribed to {uri}")


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_scoped_token_sees_nothing_of_other_agents(server: str, mode: str) -> None:
    t = await setup(server, mode)
    bob_threads = [t["b"], t["b_child"], t["b_done"]]
    async with connect(server, ALICE, mode) as alice:
        # lists and searches hold alice's threads only
        listed = {x["thread_id"] for x in (await call(alice, "list_threads", {"limit": 200}))["threads"]}
        assert {t["a"], t["a_child"]} <= listed and not listed & set(bob_threads)
        assert (await call(alice, "list_threads", {"agent_id": "bob"}))["threads"] == []
        children = (await call(alice, "list_threads", {"parent_id": t["a"]}))["threads"]
        assert [c["thread_id"] for c in children] == [t["a_child"]]
        mine = await call(alice, "get_thread", {"thread_id": t["a"]})
        assert sum(mine["children"].values()) == 1  # bob's child of alice's thread is not counted
        found = await call(alice, "search_threads", {"query": "bobsecret"})
        assert found["results"] == []
        assert (await call(alice, "search_threads", {"query": "bobsecret", "agent_id": "bob"}))[
            "results"
        ] == []
        hits = (await call(alice, "search_threads", {"query": "alicesecret", "limit": 50}))["results"]
        assert t["a"] in {r["thread_id"] for r in hits} and {r["agent_id"] for r in hits} == {"alice"}

        # every tool: another agent's thread is refused exactly like a thread that does not exist
        for (name, args), (_, missing_args) in zip(
            tool_probes(t, t["b"]), tool_probes(t, NOBODY), strict=True
        ):
            missing = await call_error(alice, name, missing_args)
            for target in bob_threads:
                aimed = json.loads(json.dumps(args).replace(t["b"], target))
                same_refusal(await call_error(alice, name, aimed), target, missing)

        for target in bob_threads:  # deleting a thread that "does not exist" is not an error
            out = await call(alice, "delete_thread", {"thread_id": target})
            assert out == {"deleted": [], "missing": [target]}

        # every resource, and every subscription
        for pattern in RESOURCES:
            missing = await resource_error(alice, pattern.format(NOBODY))
            for target in bob_threads:
                same_refusal(await resource_error(alice, pattern.format(target)), target, missing)
        for pattern in (
            "thread://{}/transcript",
            "thread://{}/thread.json",
            "thread://{}/messages",
            "chain://{}",
        ):
            missing = await subscribe_error(alice, mode, pattern.format(NOBODY))
            same_refusal(await subscribe_error(alice, mode, pattern.format(t["b"])), t["b"], missing)

        # writing under another agent is refused; alice's own work goes on
        text = await call_error(alice, "create_thread", {"agent_id": "bob"})
        assert "[agent_scope]" in text and "alice" in text
        made = await call(alice, "create_thread", {"title": "new"})
        assert made["agent_id"] == "alice"
        await call(
            alice, "append_event", {"thread_id": made["thread_id"], "event": {"role": "user", "text": "hi"}}
        )
        page = await call(alice, "read_events", {"thread_id": t["a"]})
        assert "alicesecret" in json.dumps(page["events"])
        text = (await alice.read_resource(f"thread://{t['a']}/transcript")).contents[0].text  # type: ignore[union-attr]
        assert "alicesecret" in text
        chain = json.loads((await alice.read_resource(f"chain://{t['a']}")).contents[0].text)  # type: ignore[union-attr]
        assert chain["end_thread_id"] == t["a"]

    # nothing of bob's changed
    async with connect(server, ADMIN, mode) as admin:
        for target in bob_threads:
            thread = await call(admin, "get_thread", {"thread_id": target})
            assert thread["status"] in ("running", "completed") and thread["title"] != "renamed"
            events = (await call(admin, "read_events", {"thread_id": target}))["events"]
            assert not any("injected" in json.dumps(e) for e in events)
        seen = {x["agent_id"] for x in (await call(admin, "list_threads", {"limit": 200}))["threads"]}
        assert {"alice", "bob"} <= seen


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_token_for_several_agents_sees_all_of_them(server: str, mode: str) -> None:
    async with connect(server, ADMIN, mode) as admin:
        carol = (await call(admin, "create_thread", {"agent_id": "carol", "title": "c"}))["thread_id"]
        await call(
            admin, "append_event", {"thread_id": carol, "event": {"role": "user", "text": "pairsecret c"}}
        )
        alice = (await call(admin, "create_thread", {"agent_id": "alice", "title": "a"}))["thread_id"]
        await call(
            admin, "append_event", {"thread_id": alice, "event": {"role": "user", "text": "pairsecret a"}}
        )
        bob = (await call(admin, "create_thread", {"agent_id": "bob"}))["thread_id"]
        await call(
            admin, "append_event", {"thread_id": bob, "event": {"role": "user", "text": "pairsecret b"}}
        )
    async with connect(server, PAIR, mode) as pair:
        # paging through a merged list: newest first, no thread twice, none of bob's
        seen: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = await call(pair, "list_threads", {"limit": 2, **({"cursor": cursor} if cursor else {})})
            seen += page["threads"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        ids = [x["thread_id"] for x in seen]
        assert len(ids) == len(set(ids)) and {carol, alice} <= set(ids) and bob not in ids
        assert {x["agent_id"] for x in seen} <= {"alice", "carol"}
        keys = [(x["created_at"], x["thread_id"]) for x in seen]
        assert keys == sorted(keys, reverse=True)
        found = (await call(pair, "search_threads", {"query": "pairsecret", "limit": 50}))["results"]
        hits = {r["thread_id"] for r in found}
        assert {carol, alice} <= hits and bob not in hits, (found, carol, alice)
        assert {r["agent_id"] for r in found} == {"alice", "carol"}
        text = await call_error(pair, "create_thread", {})
        assert "[agent_scope]" in text and "give agent_id" in text
        assert (await call(pair, "create_thread", {"agent_id": "carol"}))["agent_id"] == "carol"
        waited = await call(pair, "wait_threads", {"thread_ids": [carol, alice], "timeout": 0})
        assert set(waited["timed_out"]) == {carol, alice}


async def test_a_scoped_token_is_accepted_at_start_up(server: str) -> None:
    # the module's server runs with scoped tokens (it used to refuse to start: http_token_scope)
    async with httpx2.AsyncClient(timeout=10) as http:
        r = await http.post(server, json={}, headers={"Authorization": f"Bearer {ALICE}"})
    assert r.status_code != 401
    assert re.match(r"http://127\.0\.0\.1:\d+/mcp", server)


async def test_the_web_pages_beside_mcp_keep_to_the_tokens_agents(server: str) -> None:
    t = await setup(server, "auto")
    base = server.removesuffix("/mcp")
    pages = ["/t/{}", "/t/{}/events", "/t/{}/verify", "/t/{}/export/transcript.jsonl"]
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {ALICE}"}, timeout=30) as http:
        home = await http.get(base + "/", headers={"Accept": "text/html"})
        assert home.status_code == 200 and t["a"] in home.text
        assert t["b"] not in home.text and t["b_child"] not in home.text
        mine = await http.get(base + f"/t/{t['a']}", headers={"Accept": "text/html"})
        assert mine.status_code == 200 and t["b_child"] not in mine.text
        for page in pages:
            missing = await http.get(base + page.format(NOBODY))
            assert missing.status_code == 404, page
            for target in (t["b"], t["b_child"]):
                got = await http.get(base + page.format(target))
                assert got.status_code == 404, (page, got.status_code)
                assert "bobsecret" not in got.text


async def test_a_session_answers_only_the_token_that_opened_it(server: str) -> None:
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    base = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(timeout=30) as http:
        opened = await http.post(server, json=init, headers={**base, "Authorization": f"Bearer {ALICE}"})
        sid = opened.headers["mcp-session-id"]
        ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
        session = {**base, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"}
        for token, status in ((PAIR, 404), (ADMIN, 404), (ALICE, 200)):
            r = await http.post(server, json=ping, headers={**session, "Authorization": f"Bearer {token}"})
            assert r.status_code == status, (token[:1], r.status_code, r.text[:200])
