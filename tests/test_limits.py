"""Per-thread limits on turns, tokens and spend: counted from result events, enforced like budgets."""

from __future__ import annotations

import pytest

from threadloom.errors import InvalidInputError
from threadloom.models import Status
from threadloom.service import ThreadService

pytestmark = pytest.mark.anyio


def result(**fields: float) -> list[dict]:
    return [{"type": "result", **fields}]


async def test_usage_is_summed_from_result_events_without_limits(service: ThreadService) -> None:
    t = await service.create_thread()
    await service.append(t.thread_id, result(cost=0.5, turns=2, input_tokens=100, output_tokens=10))
    await service.append(t.thread_id, result(cost=0.25, input_tokens=50, cache_read_tokens=1000))
    u = (await service.get_thread(t.thread_id)).usage
    assert (u.turns, u.tokens, u.spend, u.actual_spend) == (3, 160, 0.75, 0.75)
    assert u.version == 2


async def test_the_turn_limit_stops_the_thread_after_the_turn_that_crosses_it(service: ThreadService) -> None:
    t = await service.create_thread(limits={"turns": 2})
    first = await service.append(t.thread_id, result(turns=1))
    second = await service.append(t.thread_id, result())  # a result without turns counts one
    assert first.exceeded is None and second.exceeded is None and second.status == Status.RUNNING
    third = await service.append(t.thread_id, result(turns=1), single=True)
    assert third.status == Status.ERROR
    assert third.exceeded is not None
    assert (third.exceeded.reason, third.exceeded.limit, third.exceeded.used) == (
        "turns_limit_exceeded",
        2,
        3,
    )
    got = await service.get_thread(t.thread_id)
    assert (got.status_reason, got.usage.turns) == ("turns_limit_exceeded", 3)
    assert got.limits is not None and got.limits.turns == 2
    assert (await service.read_events(t.thread_id)).events[third.seq - 1]["type"] == "result"  # type: ignore[operator]


async def test_the_token_limit_counts_input_and_output_tokens(service: ThreadService) -> None:
    t = await service.create_thread(limits={"tokens": 1000})
    ok = await service.append(t.thread_id, result(input_tokens=600, output_tokens=300))
    assert ok.exceeded is None
    over = await service.append(t.thread_id, result(input_tokens=150, output_tokens=100))
    assert over.exceeded is not None and over.exceeded.reason == "tokens_limit_exceeded"
    assert over.exceeded.used == 1150 and over.status == Status.ERROR
    assert "1150 tokens against its limit of 1000" in over.exceeded.message


async def test_the_spend_limit_counts_the_threads_own_spend(service: ThreadService) -> None:
    parent = await service.create_thread(limits={"spend": 1})
    child = await service.create_thread(parent_id=parent.thread_id)
    await service.append(child.thread_id, result(cost=5))  # a child's spend is not the parent's own
    assert (await service.get_thread(parent.thread_id)).status == Status.CREATED
    out = await service.append(parent.thread_id, result(cost=1.5))
    assert out.exceeded is not None and out.exceeded.reason == "spend_limit_exceeded"
    usage = (await service.get_thread(parent.thread_id)).usage
    assert (usage.spend, usage.actual_spend) == (1.5, 6.5)


async def test_reaching_a_limit_exactly_is_allowed(service: ThreadService) -> None:
    t = await service.create_thread(limits={"turns": 1, "tokens": 10, "spend": 0.3})
    out = await service.append(t.thread_id, result(turns=1, input_tokens=10, cost=0.1 + 0.2))
    assert out.exceeded is None and out.status == Status.RUNNING


async def test_bad_limits_are_refused(service: ThreadService) -> None:
    with pytest.raises(InvalidInputError, match="limits"):
        await service.create_thread(limits={"turns": -1})
    with pytest.raises(InvalidInputError, match="limits"):
        await service.create_thread(limits={"minutes": 5})
