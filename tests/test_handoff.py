"""Automatic and explicit handoff (DESIGN §7) through the service, on every backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from chain_helpers import (
    CEILING,
    WINDOW,
    conversation_events,
    fill_to,
    filler,
    msg,
    result,
    small,
    snapshot,
    use,
)
from threadloom import chain
from threadloom.config import Settings
from threadloom.errors import (
    ConflictError,
    InvalidInputError,
    InvalidStateError,
    LimitExceededError,
    NotFoundError,
    StoreUnavailableError,
    ThreadContinuedError,
)
from threadloom.models import Status
from threadloom.service import ThreadService
from threadloom.store.base import AppendEvents, CreateThread, NewEvent, Store

pytestmark = pytest.mark.anyio


@pytest.fixture
async def svc(store: Store, settings: Settings) -> AsyncIterator[ThreadService]:
    yield ThreadService(store, small(settings))


async def started(svc: ThreadService, **kw: Any) -> str:
    t = await svc.create_thread(directive="sort the socks", **kw)
    await svc.append(t.thread_id, [msg("please sort the socks")])
    return t.thread_id


# ------------------------------------------------------------------ triggering


async def test_crossing_the_threshold_by_characters_hands_off(svc: ThreadService) -> None:
    tid = await started(svc)
    await fill_to(svc, tid, 0.85)
    below = await svc.append(tid, [msg("still below", "assistant")])
    assert below.handoff is None and below.context.ratio < 0.9
    out = await svc.append(tid, [msg("y" * 300, "assistant"), msg("now past the threshold")])
    assert out.context.ratio >= 0.9
    assert out.handoff is not None and out.status == Status.CONTINUED
    new = await svc.get_thread(out.handoff.thread_id)
    old = await svc.get_thread(tid)
    assert old.status == Status.CONTINUED and old.continuation_thread_id == new.thread_id
    assert new.status == Status.RUNNING and new.continuation_of == tid and new.chain_root_id == tid
    assert new.link_reason == "handoff" and out.handoff.reason == "threshold"
    assert out.handoff.previous_thread_id == tid
    assert out.handoff.context is not None and out.handoff.context.ratio < 0.9
    assert new.context().ratio < 0.9


async def test_crossing_the_threshold_by_reported_input_tokens_hands_off(svc: ThreadService) -> None:
    tid = await started(svc)
    small_turn = await svc.append(tid, [{"type": "result", "input_tokens": 500, "cost": 0.01}])
    assert small_turn.handoff is None and small_turn.context.used == 500
    out = await svc.append(tid, [{"type": "result", "input_tokens": 950, "cost": 0.02}])
    assert out.context.used == 950 and out.handoff is not None
    new = await svc.get_thread(out.handoff.thread_id)
    assert new.input_tokens is None and new.context().ratio < 0.5  # the estimate starts afresh


async def test_the_per_thread_threshold_overrides_the_setting(svc: ThreadService) -> None:
    tid = await started(svc, trigger_threshold=0.5)
    out = await svc.append(tid, [{"type": "result", "input_tokens": 520}])
    assert out.handoff is not None
    new = await svc.get_thread(out.handoff.thread_id)
    assert new.trigger_threshold == 0.5 and new.context_window == WINDOW


async def test_the_continuation_is_a_sibling_with_the_same_settings(svc: ThreadService) -> None:
    parent = await svc.create_thread(agent_id="orch")
    t = await svc.create_thread(
        parent_id=parent.thread_id,
        directive="sort",
        title="socks",
        model="m-1",
        limits={"turns": 9},
        capabilities={"tools": [{"name": "ls"}]},
        metadata={"k": 1},
    )
    await svc.append(t.thread_id, [msg("go")])
    out = await svc.append(t.thread_id, [{"type": "result", "input_tokens": 990}])
    assert out.handoff is not None
    new = await svc.get_thread(out.handoff.thread_id)
    same = (
        "agent_id",
        "parent_id",
        "directive",
        "title",
        "model",
        "limits",
        "capabilities",
        "context_window",
        "metadata",
    )
    assert {f: getattr(new, f) for f in same} == {f: getattr(t, f) for f in same}
    assert new.parent_id == parent.thread_id and new.agent_id == "orch"


# ----------------------------------------------------------------- what is carried


async def test_the_new_thread_is_seeded_with_continued_from_the_message_and_the_tail(
    svc: ThreadService,
) -> None:
    tid = await started(svc)
    await fill_to(svc, tid, 0.88)
    out = await svc.append(tid, [msg("the last question"), msg("y" * 200, "assistant")])
    assert out.handoff is not None
    events = [e.data() for e in await svc.all_events(out.handoff.thread_id)]
    assert events[0]["type"] == "continued_from" and events[0]["from_thread_id"] == tid
    assert events[0]["carried_count"] == out.handoff.carried_messages
    seed = events[1]
    assert seed["type"] == "message" and seed["role"] == "user"
    assert tid in seed["text"] and "sort the socks" in seed["text"]
    carried = events[2:]
    assert len(carried) == out.handoff.carried_messages >= 2
    assert carried[-1]["text"] == "y" * 200 and carried[-2]["text"] == "the last question"
    old_tail = (await conversation_events(svc, tid))[-len(carried) :]

    def strip(e):
        return {k: v for k, v in e.items() if k not in ("seq", "ts")}

    assert [strip(e) for e in carried] == [strip(e) for e in old_tail]
    old_events = [e.data() for e in await svc.all_events(tid)]
    assert old_events[-1]["type"] == "checkpoint"  # a continued transcript ends signed
    last_old = [e for e in old_events if e["type"] != "checkpoint"][-2:]
    assert last_old[0]["type"] == "status" and (last_old[0]["from"], last_old[0]["to"]) == (
        "running",
        "continued",
    )
    assert last_old[1]["type"] == "handoff" and last_old[1]["to_thread_id"] == out.handoff.thread_id
    assert last_old[1]["trailing_count"] == len(carried)


async def test_the_carry_fits_the_ceiling_and_starts_with_a_user_message(svc: ThreadService) -> None:
    tid = await started(svc)
    await fill_to(svc, tid, 0.85)
    # 60-char messages: the ceiling (400 chars) holds 6 of them; the oldest that fits is assistant
    tail = [msg(f"{i:02d}" + "m" * 58, "user" if i % 2 else "assistant") for i in range(20)]
    out = await svc.append(tid, [*tail, msg("z" * 400, "assistant")])
    # the 400-char reply alone fills the ceiling: the newest event always comes first
    assert out.handoff is not None and out.handoff.carried_messages == 0
    tid2 = out.handoff.thread_id
    await svc.append(tid2, [{"type": "result", "input_tokens": 0}])
    await fill_to(svc, tid2, 0.85)
    out2 = await svc.append(tid2, tail)
    assert out2.handoff is not None
    carried = (await conversation_events(svc, out2.handoff.thread_id))[1:]
    assert sum(len(e["text"]) for e in carried) <= CEILING * 4
    assert carried[0]["role"] == "user"
    # 6 fit (oldest of them is an assistant message, trimmed) -> 5, ending with the newest
    assert [e["text"][:2] for e in carried] == ["15", "16", "17", "18", "19"]


async def test_a_tool_use_is_never_carried_without_its_result_nor_the_reverse(svc: ThreadService) -> None:
    tid = await started(svc)
    await fill_to(svc, tid, 0.85)
    # newest first the ceiling reaches into the middle of the c1 pair: its result fits, its use does not
    events = [
        msg("look at the drawer"),
        use("c1", "open", path="x" * 300),
        result("c1", "r" * 150),
        msg("and the basket"),
        use("c2", "open", path="basket"),
        result("c2", "two socks"),
        msg("done?", "assistant"),
    ]
    out = await svc.append(tid, events)
    assert out.handoff is not None
    carried = (await conversation_events(svc, out.handoff.thread_id))[1:]
    types = [(e["type"], e.get("id") or e.get("tool_use_id") or e.get("text")) for e in carried]
    assert types == [
        ("message", "and the basket"),
        ("tool_use", "c2"),
        ("tool_result", "c2"),
        ("message", "done?"),
    ]


async def test_a_pending_tool_use_is_carried_and_its_result_goes_to_the_new_thread(
    svc: ThreadService,
) -> None:
    tid = await started(svc)
    await fill_to(svc, tid, 0.88)
    out = await svc.append(tid, [msg("list the drawer"), use("c9", "ls", path="/drawer" + "d" * 200)])
    assert out.handoff is not None
    new = out.handoff.thread_id
    carried = (await conversation_events(svc, new))[1:]
    assert carried[-1]["type"] == "tool_use" and carried[-1]["id"] == "c9"
    await svc.append(new, [result("c9", "3 socks")])
    msgs = await svc.messages(new)
    assert msgs[-2]["content"][-1]["type"] == "tool_use" and msgs[-1]["content"][0]["tool_use_id"] == "c9"


async def test_a_single_message_larger_than_the_ceiling_is_not_carried_but_pointed_to(
    svc: ThreadService,
) -> None:
    tid = await started(svc)
    await fill_to(svc, tid, 0.8)
    huge = msg("H" * (CEILING * 4 + 500))
    out = await svc.append(tid, [huge])
    assert out.handoff is not None
    assert out.handoff.carried_messages == 0
    events = [e.data() for e in await svc.all_events(out.handoff.thread_id)]
    assert [e["type"] for e in events] == ["continued_from", "message"]
    assert "last 0 messages" in events[1]["text"] and tid in events[1]["text"]
    assert (await svc.get_thread(out.handoff.thread_id)).context().ratio < 0.9
    # nothing is lost: the message is still in the previous thread
    assert (await conversation_events(svc, tid))[-1]["text"] == huge["text"]


async def test_a_handoff_with_no_room_below_the_threshold_is_not_made_and_says_so(
    store: Store, settings: Settings
) -> None:
    svc = ThreadService(store, small(settings))
    t = await svc.create_thread(directive="D" * 3700)  # the seed alone would be past 900 tokens
    out = await svc.append(t.thread_id, [msg("go"), {"type": "result", "input_tokens": 950}])
    assert out.context.ratio >= 0.9
    assert out.handoff is None and out.status == Status.RUNNING
    assert out.warning is not None and "stays armed" in out.warning and "continuation message" in out.warning
    assert (await svc.get_chain(t.thread_id)).threads[0].status == Status.RUNNING
    with pytest.raises(LimitExceededError, match="cannot start below its threshold"):
        await svc.handoff(t.thread_id)
    again = await svc.append(t.thread_id, [msg("more")])
    assert again.warning is not None  # re-armed: tried again, and said so again


# -------------------------------------------------------------------- explicit


async def test_explicit_handoff_carries_the_client_summary(svc: ThreadService) -> None:
    tid = await started(svc)
    await svc.append(tid, [msg("found 3 pairs", "assistant")])
    info = await svc.handoff(tid, summary="3 pairs sorted; 2 odd socks left", reason="phase 2")
    assert info.reason == "phase 2" and info.previous_thread_id == tid
    events = [e.data() for e in await svc.all_events(info.thread_id)]
    assert "3 pairs sorted; 2 odd socks left" in events[1]["text"]
    assert [e["text"] for e in events[2:]] == ["please sort the socks", "found 3 pairs"]
    handoff = [e.data() for e in await svc.all_events(tid) if e.type != "checkpoint"][-1]
    assert handoff["summary"] == "3 pairs sorted; 2 odd socks left" and handoff["reason"] == "phase 2"
    assert (await svc.get_thread(tid)).status_reason == "phase 2"


async def test_explicit_handoff_needs_a_running_thread(svc: ThreadService) -> None:
    t = await svc.create_thread()
    with pytest.raises(InvalidStateError, match="created: a handoff needs a running thread"):
        await svc.handoff(t.thread_id)
    await svc.append(t.thread_id, [msg("a")])
    info = await svc.handoff(t.thread_id)
    with pytest.raises(ThreadContinuedError, match=info.thread_id):
        await svc.handoff(t.thread_id)
    await svc.update_thread(info.thread_id, status="completed")
    with pytest.raises(InvalidStateError, match="resume_thread"):
        await svc.handoff(info.thread_id)


@pytest.mark.parametrize(
    ("kwargs", "pattern"), [({"reason": ""}, "reason must be"), ({"summary": "s" * 50_001}, "summary")]
)
async def test_explicit_handoff_checks_its_arguments(svc: ThreadService, kwargs: dict, pattern: str) -> None:
    tid = await started(svc)
    with pytest.raises(InvalidInputError, match=pattern):
        await svc.handoff(tid, **kwargs)
    assert (await svc.get_thread(tid)).status == Status.RUNNING


# ------------------------------------------------------------ after the handoff


async def test_appending_to_a_continued_thread_names_the_chain_end(svc: ThreadService) -> None:
    tid = await started(svc)
    b = (await svc.handoff(tid)).thread_id
    c = (await svc.handoff(b)).thread_id
    for old in (tid, b):
        with pytest.raises(ThreadContinuedError, match=f"append to thread {c}") as info:
            await svc.append(old, [msg("late")])
        assert info.value.current_thread_id == c
    assert (await svc.append(c, [msg("here")])).status == Status.RUNNING


async def test_a_retried_append_reports_the_handoff_it_caused(svc: ThreadService) -> None:
    tid = await started(svc)
    first = await svc.append(tid, [{"type": "result", "input_tokens": 999}], idempotency_key="k1")
    assert first.handoff is not None
    again = await svc.append(tid, [{"type": "result", "input_tokens": 999}], idempotency_key="k1")
    assert again.replayed and again.seq == first.seq
    assert again.handoff is not None and again.handoff.thread_id == first.handoff.thread_id


async def test_concurrent_appends_past_the_threshold_hand_off_once_and_lose_nothing(
    svc: ThreadService,
) -> None:
    tid = await started(svc)
    await fill_to(svc, tid, 0.88)
    outs: dict[int, Any] = {}

    refused: dict[int, str] = {}

    async def one(i: int) -> None:
        try:
            outs[i] = await svc.append(tid, [msg(f"racer {i} " + "r" * 60)])
        except ThreadContinuedError as exc:  # came after the handoff: told where to go
            refused[i] = exc.current_thread_id

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(one, i)
    new_ids = {o.handoff.thread_id for o in outs.values() if o.handoff}
    assert len(new_ids) == 1 and set(refused.values()) <= new_ids
    assert all(o.handoff for o in outs.values() if o.context.ratio >= 0.9)
    chain_view = await svc.get_chain(tid)
    assert [t.thread_id for t in chain_view.threads] == [tid, *new_ids]
    carried = [e["text"] for e in (await conversation_events(svc, new_ids.pop()))[1:]]
    racers = [e["text"] for e in await conversation_events(svc, tid) if e["text"].startswith("racer")]
    assert carried[-len(racers) :] == racers  # every racer's event reached the carried tail


# ------------------------------------------------------------------- atomicity


def poison(kind: str) -> Any:
    if kind == "missing":
        return AppendEvents("ffffffffffff", (NewEvent("x-poison", {"type": "x-poison"}),))
    return "dup"  # replaced by a CreateThread of an existing id


async def _plan(svc: ThreadService, tid: str) -> chain.ContinuationPlan:
    thread = await svc.get_thread(tid)
    return await chain.plan_handoff(
        svc.store,
        thread,
        reason="explicit",
        summary="s",
        template=svc.settings.continuation_template,
        ceiling_tokens=CEILING,
        threshold=0.9,
    )


@pytest.mark.parametrize("kind", ["missing", "dup"])
async def test_a_fault_at_any_step_of_the_commit_leaves_db_and_mirrors_unchanged(
    svc: ThreadService, kind: str
) -> None:
    tid = await started(svc)
    await svc.append(tid, [msg("a", "assistant"), use("c1"), result("c1"), msg("b")])
    plan = await _plan(svc, tid)
    before = snapshot(svc.store)
    for step in range(len(plan.ops) + 1):
        bad = poison(kind)
        if bad == "dup":
            existing = (await svc.get_thread(tid)).model_copy()
            bad = CreateThread(existing)
        ops = [*plan.ops[:step], bad, *plan.ops[step:]]
        with pytest.raises((NotFoundError, ConflictError)):
            await svc.store.commit(ops)
        assert snapshot(svc.store) == before, f"fault after step {step} left a change"
    await svc.store.commit(plan.ops)  # the same plan, unpoisoned, commits
    assert (await svc.get_thread(tid)).status == Status.CONTINUED
    assert snapshot(svc.store) != before


async def test_a_fault_while_reading_the_tail_or_committing_changes_nothing(
    svc: ThreadService, monkeypatch: pytest.MonkeyPatch
) -> None:
    tid = await started(svc)
    await svc.append(tid, [msg("a", "assistant")])
    before = snapshot(svc.store)
    real_read, real_commit = svc.store.read_events, svc.store.commit

    async def broken_read(*a: Any, **k: Any) -> Any:
        raise StoreUnavailableError("disk on fire")

    monkeypatch.setattr(svc.store, "read_events", broken_read)
    with pytest.raises(StoreUnavailableError):
        await svc.handoff(tid)
    assert snapshot(svc.store) == before
    monkeypatch.setattr(svc.store, "read_events", real_read)

    async def failing_handoff_commit(ops: Any) -> Any:
        if any(isinstance(op, CreateThread) for op in ops):
            return await real_commit([*ops, poison("missing")])
        return await real_commit(ops)

    monkeypatch.setattr(svc.store, "commit", failing_handoff_commit)
    with pytest.raises(NotFoundError):
        await svc.handoff(tid)
    assert snapshot(svc.store) == before
    # at the threshold the append stands, the handoff is not half-made, and the result says so
    out = await svc.append(tid, [{"type": "result", "input_tokens": 990}])
    assert out.handoff is None and out.status == Status.RUNNING
    assert out.warning is not None and "handoff failed" in out.warning
    assert (await svc.get_chain(tid)).threads[0].event_count == out.seqs[-1] + 1  # + the turn's checkpoint
    monkeypatch.setattr(svc.store, "commit", real_commit)
    retry = await svc.append(tid, [msg("next")])
    assert retry.handoff is not None  # the trigger stayed armed


async def test_an_append_that_slips_in_while_a_handoff_plans_is_carried_too(
    svc: ThreadService, monkeypatch: pytest.MonkeyPatch
) -> None:
    tid = await started(svc)
    await svc.append(tid, [msg("before", "assistant")])
    real_read = svc.store.read_events
    reads = []

    async def read_then_race(thread_id: str, **kw: Any) -> Any:
        page = await real_read(thread_id, **kw)
        reads.append(thread_id)
        if len(reads) == 1:  # another process appends after the tail was read
            ev = msg("slipped in", "assistant")
            await svc.store.commit([AppendEvents(tid, (NewEvent("message", ev, len(ev["text"])),))])
        return page

    monkeypatch.setattr(svc.store, "read_events", read_then_race)
    info = await svc.handoff(tid)
    assert len(reads) >= 2  # the count guard made the handoff re-plan
    carried = [e["text"] for e in (await conversation_events(svc, info.thread_id))[1:]]
    assert carried[-2:] == ["before", "slipped in"]


async def test_the_count_guard_refuses_an_append_when_events_slipped_in(store: Store) -> None:
    svc = ThreadService(store)
    t = await svc.create_thread()
    await svc.append(t.thread_id, [msg("a")])
    with pytest.raises(ConflictError) as info:
        await store.commit(
            [AppendEvents(t.thread_id, (NewEvent("x-a", {"type": "x-a"}),), expect_event_count=1)]
        )
    assert info.value.rule == "count_guard"
    await store.commit([AppendEvents(t.thread_id, (NewEvent("x-a", {"type": "x-a"}),), expect_event_count=2)])
    assert (await store.get_thread(t.thread_id)).event_count == 3


async def test_filler_helper_is_sized_as_documented() -> None:
    assert all(len(e["text"]) == 90 for e in filler(3))
