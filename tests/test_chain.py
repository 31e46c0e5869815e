"""get_chain and chain resolution: every member sees the same chain; a cycle never hangs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chain_helpers import msg, result, small, use
from threadloom import chain
from threadloom.config import Settings
from threadloom.errors import IntegrityError, NotFoundError, ThreadContinuedError
from threadloom.models import Status
from threadloom.service import ThreadService
from threadloom.store.base import PutThread, Store

pytestmark = pytest.mark.anyio


@pytest.fixture
async def svc(store: Store, settings: Settings) -> AsyncIterator[ThreadService]:
    yield ThreadService(store, small(settings))


async def three_link_chain(svc: ThreadService) -> list[str]:
    """A -> B (threshold handoff) -> C (explicit handoff) -> D (resume), D completed."""
    a = (await svc.create_thread(directive="d")).thread_id
    await svc.append(a, [msg("go")])
    out = await svc.append(a, [{"type": "result", "input_tokens": 950, "cost": 0.5}])
    assert out.handoff is not None
    b = out.handoff.thread_id
    await svc.update_thread(a, cost=0.5)
    await svc.append(b, [msg("on", "assistant")])
    await svc.update_thread(b, cost=0.25)
    c = (await svc.handoff(b, summary="half way")).thread_id
    await svc.update_thread(c, status="completed", result="done", cost=1.0)
    d = (await svc.resume(a, "one more thing")).thread.thread_id
    return [a, b, c, d]


async def test_a_chain_of_four_reads_the_same_from_every_member(svc: ThreadService) -> None:
    ids = await three_link_chain(svc)
    views = [await svc.get_chain(t) for t in ids]
    for asked, view in zip(ids, views):
        assert view.thread_id == asked
        assert [t.thread_id for t in view.threads] == ids
        assert view.chain_root_id == ids[0]
        assert view.end_thread_id == ids[3] and view.end_status == Status.RUNNING
        assert view.problems == []
    v = views[0]
    assert [t.status for t in v.threads] == [
        Status.CONTINUED,
        Status.CONTINUED,
        Status.COMPLETED,
        Status.RUNNING,
    ]
    assert [t.link_reason for t in v.threads] == [None, "handoff", "handoff", "resume"]
    assert [t.continuation_of for t in v.threads] == [None, *ids[:3]]
    assert [t.continuation_thread_id for t in v.threads] == [*ids[1:], None]
    assert v.total_cost == 1.75 and v.total_events == sum(t.event_count for t in v.threads)
    assert all(t.context.window == 1000 and t.created_at and t.updated_at for t in v.threads)


async def test_a_lone_thread_is_a_chain_of_one(svc: ThreadService) -> None:
    t = await svc.create_thread()
    view = await svc.get_chain(t.thread_id)
    assert [x.thread_id for x in view.threads] == [t.thread_id] and view.end_thread_id == t.thread_id
    assert view.total_cost is None and view.problems == []


async def test_get_chain_of_an_unknown_thread_is_not_found(svc: ThreadService) -> None:
    with pytest.raises(NotFoundError):
        await svc.get_chain("0123456789ab")


async def _link(store: Store, tid: str, **changes: object) -> None:
    t = await store.get_thread(tid)
    await store.commit([PutThread(t.model_copy(update=changes), expect_version=t.version)])


async def test_a_cycle_written_into_the_db_ends_resolution_instead_of_hanging(svc: ThreadService) -> None:
    a, b, c = [(await svc.create_thread()).thread_id for _ in range(3)]
    for t in (a, b, c):
        await svc.append(t, [msg("x")])
    await _link(svc.store, a, continuation_thread_id=b, status=Status.CONTINUED)
    await _link(
        svc.store, b, continuation_thread_id=c, continuation_of=a, chain_root_id=a, status=Status.CONTINUED
    )
    await _link(
        svc.store, c, continuation_thread_id=a, continuation_of=b, chain_root_id=a, status=Status.CONTINUED
    )
    for t in (a, b, c):
        view = await svc.get_chain(t)
        assert [x.thread_id for x in view.threads] == [a, b, c]
        assert any("cycle" in p for p in view.problems)
    end, problem = await chain.resolve_end(svc.store, await svc.get_thread(b))
    assert end.thread_id == a and problem is not None and "cycle" in problem
    with pytest.raises(ThreadContinuedError):  # append still answers, naming where the walk stopped
        await svc.append(a, [msg("late")])
    with pytest.raises(IntegrityError, match="cycle"):
        await svc.resume(a, "again")


async def test_a_link_to_a_missing_thread_is_reported(svc: ThreadService) -> None:
    a = (await svc.create_thread()).thread_id
    await svc.append(a, [msg("x")])
    await _link(svc.store, a, continuation_thread_id="00000000abcd", status=Status.CONTINUED)
    view = await svc.get_chain(a)
    assert view.end_thread_id == a and any("missing thread 00000000abcd" in p for p in view.problems)


async def test_a_stray_member_is_listed_after_the_linked_ones(svc: ThreadService) -> None:
    a = (await svc.create_thread()).thread_id
    await svc.append(a, [msg("x")])
    b = (await svc.handoff(a)).thread_id
    stray = (await svc.create_thread()).thread_id
    await _link(svc.store, stray, chain_root_id=a)
    view = await svc.get_chain(b)
    assert [t.thread_id for t in view.threads] == [a, b, stray]
    assert view.end_thread_id == b and any(stray in p for p in view.problems)


# ------------------------------------------------------------------ trim rules


def carried(*specs: tuple[str, str]) -> list[chain.Carried]:
    out = []
    for i, (kind, arg) in enumerate(specs, start=1):
        if kind in ("user", "assistant"):
            payload = msg(arg, kind)
        elif kind == "use":
            payload = use(arg)
        else:
            payload = result(arg)
        out.append(chain.Carried(i, payload["type"], payload, chain.conversation_chars(payload)))
    return out


@pytest.mark.parametrize(
    ("specs", "kept"),
    [
        ([("assistant", "a"), ("user", "u"), ("assistant", "b")], [2, 3]),
        ([("result", "c1"), ("user", "u"), ("use", "c2"), ("result", "c2")], [2, 3, 4]),
        ([("user", "u"), ("result", "c0"), ("user", "v")], [3]),  # an orphan result mid-way cuts after it
        ([("user", "u"), ("use", "c1"), ("user", "interjection"), ("result", "c1")], [1, 2, 3, 4]),
        ([("assistant", "a"), ("use", "c1"), ("result", "c1")], []),  # no user message: nothing
        ([("user", "u"), ("use", "c1")], [1, 2]),  # a pending call is kept
        ([], []),
    ],
)
def test_trim_keeps_a_user_first_run_without_split_tool_pairs(specs: list, kept: list[int]) -> None:
    assert [c.seq for c in chain.trim_carry(carried(*specs))] == kept


def test_conversation_chars_matches_the_context_estimate() -> None:
    from threadloom.event_types import event_text_chars
    from threadloom.models import parse_event

    for data in (
        msg("héllo"),
        use("c1", "grep", pattern="x", n=3),
        result("c1", {"hits": [1, 2]}),
        result("c", "out"),
        {"type": "assistant_text", "text": "hmm"},
        {"type": "result", "input_tokens": 5},
    ):
        assert chain.conversation_chars(data) == event_text_chars(parse_event(data))


@pytest.mark.parametrize(("window", "threshold"), [(1000, 0.9), (200_000, 0.9), (1000, 0.333), (7919, 1.0)])
def test_max_tokens_below_is_the_last_count_under_the_threshold(window: int, threshold: float) -> None:
    n = chain.max_tokens_below(window, threshold)
    assert chain.context_of(n * 4, window).ratio < threshold <= chain.context_of((n + 1) * 4, window).ratio
