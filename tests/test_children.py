"""thread://{id}/children (issue 18 item 5): one entry per child chain, kept true across a
child's handoffs, and its subscribers told when a child hands off."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mcp import Client

from mcp_helpers import call
from subscription_helpers import Updates, subscriber
from threadloom.mcp_server import build_server
from threadloom.models import Status
from threadloom.service import ThreadService

pytestmark = pytest.mark.anyio


def msg(text: str, role: str = "user") -> dict[str, Any]:
    return {"type": "message", "role": role, "text": text}


async def test_children_view_follows_each_child_chain_to_its_end(service: ThreadService) -> None:
    parent = await service.create_thread(title="orchestrator")
    a = await service.create_thread(parent_id=parent.thread_id, title="worker a")
    await service.append(a.thread_id, [msg("step 1")])
    first = await service.handoff(a.thread_id, summary="half way")
    await service.update_thread(a.thread_id, cost=0.25)  # a cost reported on an earlier member
    await service.append(first.thread_id, [msg("step 2")])
    second = await service.handoff(first.thread_id, summary="nearly")
    b = await service.create_thread(parent_id=parent.thread_id, title="worker b")
    await service.append(b.thread_id, [msg("quick one")])
    await service.update_thread(b.thread_id, status="completed", result={"answer": 42}, cost=1.5)
    c = await service.create_thread(parent_id=parent.thread_id)
    other = await service.create_thread()  # not a child

    view = await service.children(parent.thread_id)
    assert [k.thread_id for k in view.children] == [a.thread_id, b.thread_id, c.thread_id]
    ka, kb, kc = view.children
    assert (ka.end_thread_id, ka.threads, ka.status, ka.title) == (
        second.thread_id,
        3,
        Status.RUNNING,
        "worker a",
    )
    assert ka.cost == 0.25
    end = await service.get_thread(second.thread_id)
    times = [(await service.get_thread(t)).updated_at for t in (a.thread_id, first.thread_id, end.thread_id)]
    assert ka.last_activity == max(times)
    assert (kb.status, kb.end_thread_id, kb.result, kb.cost) == (
        Status.COMPLETED,
        b.thread_id,
        {"answer": 42},
        1.5,
    )
    assert (kc.status, kc.threads) == (Status.CREATED, 1)
    assert view.open == 2
    assert other.thread_id not in {k.thread_id for k in view.children}
    assert (await service.children(c.thread_id)).children == []


async def test_children_resource_updates_after_a_childs_handoffs(service: ThreadService) -> None:
    updates = Updates()
    async with Client(build_server(service), mode="legacy", message_handler=updates.handler) as client:
        parent = (await call(client, "create_thread", {}))["thread_id"]
        child = (await call(client, "create_thread", {"parent_id": parent}))["thread_id"]
        await call(client, "append_event", {"thread_id": child, "event": msg("working")})
        uri = f"thread://{parent}/children"
        async with subscriber(client, "legacy", updates) as sub:
            await sub.subscribe(uri)
            end = child
            for i in range(2):
                handed = await call(client, "handoff_thread", {"thread_id": end, "summary": f"part {i}"})
                end = handed["thread_id"]
                assert await updates.until(uri)
                updates.pending()
                body = await client.read_resource(uri)
                view = json.loads(body.contents[0].text)  # type: ignore[union-attr]
                assert [(k["thread_id"], k["end_thread_id"], k["threads"]) for k in view["children"]] == [
                    (child, end, i + 2)
                ]
            await call(client, "update_thread", {"thread_id": end, "status": "completed", "result": "done"})
            assert await updates.until(uri)
            body = await client.read_resource(uri)
            view = json.loads(body.contents[0].text)  # type: ignore[union-attr]
            assert view["children"][0]["status"] == "completed" and view["children"][0]["result"] == "done"
            assert view["open"] == 0
