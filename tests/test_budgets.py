"""Hierarchical budgets: reservation, cascade, refund, races and overspend, on every backend."""

from __future__ import annotations

import time

import anyio
import pytest
from mcp import Client

from threadloom.errors import LimitExceededError
from threadloom.mcp_server import build_server
from threadloom.models import Status, Thread
from threadloom.service import ThreadService

pytestmark = pytest.mark.anyio


def spend(cost: float) -> list[dict]:
    return [{"type": "result", "cost": cost}]


def position(t: Thread) -> tuple[float, float, float, float]:
    assert t.budget is not None
    b = t.budget
    return (b.max_spend, round(b.reserved, 6), round(b.actual_spend, 6), round(b.remaining, 6))


async def get(service: ThreadService, tid: str) -> Thread:
    return await service.get_thread(tid)


# ----------------------------------------------------------------- reservation


async def test_a_childs_budget_is_reserved_from_its_parent(service: ThreadService) -> None:
    parent = await service.create_thread(budget={"max_spend": 10})
    assert position(parent) == (10, 0, 0, 10)
    child = await service.create_thread(parent_id=parent.thread_id, budget={"max_spend": 4})
    assert position(await get(service, parent.thread_id)) == (10, 4, 0, 6)
    assert child.budget is not None
    assert (child.budget.reserved_from, child.budget.held) == (parent.thread_id, 4)
    assert position(child) == (4, 0, 0, 4)


async def test_oversubscribing_a_parent_is_refused_and_writes_nothing(service: ThreadService) -> None:
    parent = await service.create_thread(budget={"max_spend": 10})
    await service.create_thread(parent_id=parent.thread_id, budget={"max_spend": 7})
    with pytest.raises(LimitExceededError) as err:
        await service.create_thread(parent_id=parent.thread_id, budget={"max_spend": 4})
    assert err.value.rule == "budget_oversubscribed"
    assert "remaining 3" in err.value.message and "at most 3" in err.value.message
    assert len((await service.list_threads(parent_id=parent.thread_id)).threads) == 1
    assert position(await get(service, parent.thread_id)) == (10, 7, 0, 3)
    await service.create_thread(parent_id=parent.thread_id, budget={"max_spend": 3})  # exactly what is left
    assert position(await get(service, parent.thread_id)) == (10, 10, 0, 0)


async def test_the_nearest_budgeted_ancestor_holds_the_reservation(service: ThreadService) -> None:
    root = await service.create_thread(budget={"max_spend": 10})
    middle = await service.create_thread(parent_id=root.thread_id)  # no budget of its own
    leaf = await service.create_thread(parent_id=middle.thread_id, budget={"max_spend": 3})
    assert leaf.budget is not None and leaf.budget.reserved_from == root.thread_id
    assert position(await get(service, root.thread_id)) == (10, 3, 0, 7)
    assert (await get(service, middle.thread_id)).budget is None


async def test_a_child_without_budget_reserves_nothing(service: ThreadService) -> None:
    parent = await service.create_thread(budget={"max_spend": 1})
    child = await service.create_thread(parent_id=parent.thread_id)
    assert child.budget is None
    assert position(await get(service, parent.thread_id)) == (1, 0, 0, 1)


# ---------------------------------------------------------------------- cascade


async def test_spend_cascades_over_three_levels(service: ThreadService) -> None:
    root = await service.create_thread(budget={"max_spend": 10})
    mid = await service.create_thread(parent_id=root.thread_id, budget={"max_spend": 6})
    leaf = await service.create_thread(parent_id=mid.thread_id, budget={"max_spend": 2})
    out = await service.append(leaf.thread_id, spend(1.5))
    assert out.exceeded is None and out.status == Status.RUNNING
    assert position(await get(service, leaf.thread_id)) == (2, 0, 1.5, 0.5)
    assert position(await get(service, mid.thread_id)) == (6, 0.5, 1.5, 4)
    assert position(await get(service, root.thread_id)) == (10, 4.5, 1.5, 4)
    await service.append(mid.thread_id, spend(1))  # the middle thread's own spend
    assert position(await get(service, mid.thread_id)) == (6, 0.5, 2.5, 3)
    assert position(await get(service, root.thread_id)) == (10, 3.5, 2.5, 4)
    usage = {t: (await get(service, t)).usage for t in (root.thread_id, mid.thread_id, leaf.thread_id)}
    assert [(u.spend, u.actual_spend) for u in usage.values()] == [(0, 2.5), (1, 2.5), (1.5, 1.5)]


async def test_spend_cascades_through_threads_without_a_budget(service: ThreadService) -> None:
    root = await service.create_thread()
    child = await service.create_thread(parent_id=root.thread_id)
    await service.append(child.thread_id, spend(0.25))
    await service.append(root.thread_id, spend(0.5))
    assert (await get(service, root.thread_id)).usage.actual_spend == pytest.approx(0.75)
    assert (await get(service, child.thread_id)).usage.actual_spend == pytest.approx(0.25)


# ----------------------------------------------------------------------- refund


async def test_a_childs_unspent_reservation_returns_when_it_ends(service: ThreadService) -> None:
    root = await service.create_thread(budget={"max_spend": 10})
    mid = await service.create_thread(parent_id=root.thread_id, budget={"max_spend": 6})
    leaf = await service.create_thread(parent_id=mid.thread_id, budget={"max_spend": 2})
    await service.append(leaf.thread_id, spend(1.5))
    await service.update_thread(leaf.thread_id, status="completed")
    assert position(await get(service, mid.thread_id)) == (6, 0, 1.5, 4.5)
    assert position(await get(service, root.thread_id)) == (10, 4.5, 1.5, 4)  # mid still holds its rest
    await service.update_thread(mid.thread_id, status="cancelled")
    assert position(await get(service, root.thread_id)) == (10, 0, 1.5, 8.5)
    ended = await get(service, mid.thread_id)
    assert ended.budget is not None and ended.budget.held == 0


async def test_an_ending_thread_keeps_holding_for_its_active_children(service: ThreadService) -> None:
    root = await service.create_thread(budget={"max_spend": 10})
    mid = await service.create_thread(parent_id=root.thread_id, budget={"max_spend": 6})
    leaf = await service.create_thread(parent_id=mid.thread_id, budget={"max_spend": 2})
    await service.update_thread(mid.thread_id, status="completed")
    assert position(await get(service, root.thread_id)) == (10, 2, 0, 8)  # 4 back, 2 still held for leaf
    await service.append(leaf.thread_id, spend(2))
    assert position(await get(service, root.thread_id)) == (10, 0, 2, 8)
    await service.update_thread(leaf.thread_id, status="completed")
    assert position(await get(service, root.thread_id)) == (10, 0, 2, 8)


async def test_a_stale_child_swept_to_error_returns_its_reservation(service: ThreadService) -> None:
    parent = await service.create_thread(budget={"max_spend": 5})
    child = await service.create_thread(parent_id=parent.thread_id, budget={"max_spend": 5}, stale_after=1)
    await service.append(child.thread_id, spend(1))
    moved = await service.sweep_stale(now=time.time() + 3600)
    assert child.thread_id in moved
    assert position(await get(service, parent.thread_id)) == (5, 0, 1, 4)


# ------------------------------------------------------------------------ races


@pytest.mark.parametrize(("children", "each", "fit"), [(2, 6, 1), (6, 4, 2), (12, 1, 10)])
async def test_children_racing_for_the_last_budget_never_oversubscribe(
    service: ThreadService, children: int, each: float, fit: int
) -> None:
    parent = await service.create_thread(budget={"max_spend": 10})
    made: list[str] = []
    refused: list[str] = []

    async def spawn() -> None:
        try:
            t = await service.create_thread(parent_id=parent.thread_id, budget={"max_spend": each})
            made.append(t.thread_id)
        except LimitExceededError as exc:
            refused.append(exc.rule)

    async with anyio.create_task_group() as tg:
        for _ in range(children):
            tg.start_soon(spawn)
    assert len(made) == fit and refused == ["budget_oversubscribed"] * (children - fit)
    kids = (await service.list_threads(parent_id=parent.thread_id)).threads
    assert sorted(k.thread_id for k in kids) == sorted(made)
    assert sum(k.budget.max_spend for k in kids if k.budget) <= 10
    assert position(await get(service, parent.thread_id))[1] == fit * each


async def test_siblings_spending_at_once_are_all_counted(service: ThreadService) -> None:
    parent = await service.create_thread(budget={"max_spend": 100})
    kids = [
        await service.create_thread(parent_id=parent.thread_id, budget={"max_spend": 10}) for _ in range(5)
    ]

    async def work(tid: str) -> None:
        for _ in range(4):
            await service.append(tid, spend(0.5))

    async with anyio.create_task_group() as tg:
        for k in kids:
            tg.start_soon(work, k.thread_id)
    assert position(await get(service, parent.thread_id)) == (100, 40, 10, 50)


# -------------------------------------------------------------------- exceeding


async def test_spend_over_the_budget_is_recorded_and_moves_the_thread_to_error(
    service: ThreadService,
) -> None:
    parent = await service.create_thread(budget={"max_spend": 10})
    child = await service.create_thread(parent_id=parent.thread_id, budget={"max_spend": 2})
    await service.append(child.thread_id, spend(1.5))
    out = await service.append(child.thread_id, spend(1.0), single=True)
    assert out.status == Status.ERROR
    assert out.exceeded is not None and out.exceeded.reason == "budget_exceeded"
    assert out.exceeded.thread_id == child.thread_id and out.exceeded.used == pytest.approx(2.5)
    events = (await service.read_events(child.thread_id)).events
    assert any(e["type"] == "result" and e["cost"] == 1.0 and e["seq"] == out.seq for e in events)
    assert [e for e in events if e["type"] == "status"][-1]["reason"] == "budget_exceeded"
    t = await get(service, child.thread_id)
    assert (t.status, t.status_reason) == (Status.ERROR, "budget_exceeded")
    assert position(await get(service, parent.thread_id)) == (10, 0, 2.5, 7.5)
    assert (await service.verify_thread(child.thread_id)).ok
    with pytest.raises(Exception, match="resume_thread"):
        await service.append(child.thread_id, spend(0.1))


async def test_an_unbudgeted_child_is_stopped_by_its_ancestors_budget(service: ThreadService) -> None:
    root = await service.create_thread(budget={"max_spend": 1})
    child = await service.create_thread(parent_id=root.thread_id)
    await service.append(child.thread_id, spend(0.6))
    out = await service.append(child.thread_id, spend(0.6))
    assert out.exceeded is not None and out.exceeded.thread_id == root.thread_id
    assert "ancestor" in out.exceeded.message
    assert (await get(service, child.thread_id)).status == Status.ERROR
    assert (await get(service, root.thread_id)).status == Status.CREATED  # the ancestor itself goes on


async def test_a_budget_already_over_is_not_blamed_on_an_append_that_spends_nothing(
    service: ThreadService,
) -> None:
    root = await service.create_thread(budget={"max_spend": 1})
    a = await service.create_thread(parent_id=root.thread_id)
    b = await service.create_thread(parent_id=root.thread_id)
    assert (await service.append(a.thread_id, spend(1.5))).exceeded is not None
    free = await service.append(b.thread_id, [{"type": "result", "cost": 0, "turns": 1}])
    assert free.exceeded is None and free.status == Status.RUNNING
    paid = await service.append(b.thread_id, spend(0.1))
    assert paid.exceeded is not None and paid.exceeded.thread_id == root.thread_id


async def test_a_root_thread_over_its_own_budget_moves_to_error(service: ThreadService) -> None:
    t = await service.create_thread(budget={"max_spend": 0.5})
    out = await service.append(t.thread_id, [{"type": "message", "role": "user", "text": "go"}, *spend(0.75)])
    assert out.exceeded is not None and out.status == Status.ERROR
    assert out.seqs == [2, 3]
    assert position(await get(service, t.thread_id)) == (0.5, 0, 0.75, -0.25)


async def test_get_thread_over_mcp_shows_the_budget_position(service: ThreadService) -> None:
    async with Client(build_server(service)) as c:
        parent = (await c.call_tool("create_thread", {"budget": {"max_spend": 5}})).structured_content
        assert parent is not None
        pid = parent["thread_id"]
        child = await c.call_tool("create_thread", {"parent_id": pid, "budget": {"max_spend": 2}})
        cid = child.structured_content["thread_id"]  # type: ignore[index]
        over = await c.call_tool("create_thread", {"parent_id": pid, "budget": {"max_spend": 4}})
        assert over.is_error and "budget_oversubscribed" in over.content[0].text  # type: ignore[union-attr]
        r = await c.call_tool("append_event", {"thread_id": cid, "event": {"type": "result", "cost": 3}})
        out = r.structured_content
        assert out is not None and out["status"] == "error"
        assert (
            out["exceeded"]["reason"] == "budget_exceeded" and "moved to error" in out["exceeded"]["message"]
        )
        got = (await c.call_tool("get_thread", {"thread_id": pid})).structured_content
    assert got is not None
    assert got["budget"] == {
        "max_spend": 5.0,
        "reserved": 0.0,
        "actual_spend": 3.0,
        "remaining": 2.0,
        "reserved_from": None,
        "held": 0.0,
    }
