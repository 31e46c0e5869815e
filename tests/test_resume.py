"""resume_thread: a finished chain gets a new instruction in a fresh sibling thread."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from chain_helpers import CEILING, conversation_events, filler, msg, result, small, snapshot, use
from threadloom.chain import conversation_chars
from threadloom.config import Settings
from threadloom.errors import InvalidInputError, InvalidStateError, LimitExceededError, ThreadContinuedError
from threadloom.models import Status
from threadloom.service import ThreadService
from threadloom.store.base import AppendEvents, NewEvent, Store

pytestmark = pytest.mark.anyio

CONVERSATION = [
    msg("sort the socks"),
    use("c1", "open", drawer=1),
    result("c1", "5 socks"),
    msg("2 pairs and an odd one", "assistant"),
]


@pytest.fixture
async def svc(store: Store, settings: Settings) -> AsyncIterator[ThreadService]:
    yield ThreadService(store, small(settings))


async def finished(svc: ThreadService, status: str = "completed") -> str:
    t = await svc.create_thread(directive="sort the socks", title="socks")
    await svc.append(t.thread_id, CONVERSATION)
    await svc.update_thread(t.thread_id, status=status, result="2 pairs")
    return t.thread_id


def strip(e: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in e.items() if k not in ("seq", "ts")}


@pytest.mark.parametrize("status", ["completed", "error", "cancelled"])
async def test_a_finished_thread_resumes_into_a_linked_sibling(svc: ThreadService, status: str) -> None:
    old = await finished(svc, status)
    out = await svc.resume(old, "now find the odd sock's pair")
    new = out.thread
    assert out.previous_thread_id == old and not out.trimmed and out.carried_messages == 4
    assert new.status == Status.RUNNING and new.link_reason == "resume"
    assert new.continuation_of == old and new.chain_root_id == old and new.directive == "sort the socks"
    before = await svc.get_thread(old)
    assert before.status == Status(status) and before.continuation_thread_id == new.thread_id
    logged = [e.data() for e in await svc.all_events(old) if e.type != "checkpoint"][-1]
    assert logged["type"] == "thread_resumed" and logged["to_thread_id"] == new.thread_id
    assert logged["message"] == "now find the odd sock's pair"
    events = [e.data() for e in await svc.all_events(new.thread_id)]
    assert events[0]["type"] == "continued_from" and events[0]["reason"] == "resume"
    assert [strip(e) for e in events[1:-1]] == CONVERSATION
    assert strip(events[-1]) == msg("now find the odd sock's pair")
    assert out.messages == await svc.messages(new.thread_id)
    assert out.messages[-1] == {
        "role": "user",
        "content": [{"type": "text", "text": "now find the odd sock's pair"}],
    }
    assert new.event_count == len(events) and (await svc.get_chain(old)).end_thread_id == new.thread_id


@pytest.mark.parametrize("status", ["created", "running", "paused"])
async def test_resume_is_refused_unless_the_end_is_finished(svc: ThreadService, status: str) -> None:
    t = await svc.create_thread()
    if status != "created":
        await svc.append(t.thread_id, [msg("a")])
    if status == "paused":
        await svc.update_thread(t.thread_id, status="paused")
    before = snapshot(svc.store)
    with pytest.raises(InvalidStateError, match=f"ends at thread {t.thread_id}, which is {status}"):
        await svc.resume(t.thread_id, "more")
    assert snapshot(svc.store) == before


async def test_resume_follows_the_chain_to_its_end(svc: ThreadService) -> None:
    a = (await svc.create_thread()).thread_id
    await svc.append(a, [msg("a")])
    b = (await svc.handoff(a)).thread_id
    await svc.append(b, [msg("b", "assistant")])
    await svc.update_thread(b, status="completed")
    out = await svc.resume(a, "and then?")
    assert out.previous_thread_id == b and out.thread.continuation_of == b
    # the resumed chain now ends at a running thread: resuming again is refused, naming it
    with pytest.raises(InvalidStateError, match=f"ends at thread {out.thread.thread_id}, which is running"):
        await svc.resume(a, "again")
    with pytest.raises(ThreadContinuedError, match=f"append to thread {out.thread.thread_id}"):
        await svc.append(b, [msg("late")])


async def test_resume_checks_its_message_and_format(svc: ThreadService) -> None:
    old = await finished(svc)
    with pytest.raises(InvalidInputError, match="non-empty"):
        await svc.resume(old, "  ")
    with pytest.raises(
        InvalidInputError, match="format must be one of neutral, anthropic, openai; got 'xml'"
    ):
        await svc.resume(old, "go", format="xml")


async def test_resume_of_a_huge_thread_carries_the_tail_within_the_ceiling(svc: ThreadService) -> None:
    t = await svc.create_thread(directive="sort the socks")
    tid = t.thread_id
    await svc.append(tid, [msg("start")])
    # an imported, long transcript: far past the window (written below the service's trigger)
    events = filler(10_000)
    for i in range(0, len(events), 1000):
        batch = tuple(NewEvent("message", e, len(e["text"])) for e in events[i : i + 1000])
        await svc.store.commit([AppendEvents(tid, batch)])
    last = [msg("last question"), use("c1", "ls"), result("c1", "a b"), msg("answer", "assistant")]
    await svc.store.commit([AppendEvents(tid, tuple(NewEvent(e["type"], e, 10) for e in last))])
    await svc.update_thread(tid, status="completed")
    assert (await svc.get_thread(tid)).context().ratio > 200
    count_before = (await svc.get_thread(tid)).event_count
    out = await svc.resume(tid, "one more question", format="anthropic")
    assert out.trimmed and out.context.ratio < 0.9
    events_new = [e.data() for e in await svc.all_events(out.thread.thread_id)]
    seed, carried, last = events_new[1], events_new[2:-1], events_new[-1]
    assert seed["role"] == "user" and tid in seed["text"] and "resume" in seed["text"]
    assert [e["type"] for e in carried[-4:]] == ["message", "tool_use", "tool_result", "message"]
    assert carried[0]["role"] == "user" and sum(conversation_chars(e) for e in carried) <= CEILING * 4
    assert 4 < len(carried) < 10
    assert last == {**msg("one more question"), "seq": last["seq"], "ts": last["ts"]}
    assert out.omitted_events == count_before - len(carried)
    roles = [m["role"] for m in out.messages]
    assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
    assert out.messages[-4]["content"] == [{"type": "tool_use", "id": "c1", "name": "ls", "input": {}}]
    assert out.messages[-3]["content"] == [{"type": "tool_result", "tool_use_id": "c1", "content": "a b"}]
    assert out.messages[-1]["content"] == [{"type": "text", "text": "one more question"}]
    assert out.messages[0]["content"][0]["text"].startswith("[threadloom] This thread continues")


async def test_a_resume_message_that_would_cross_the_threshold_trims_the_copy(svc: ThreadService) -> None:
    old = await finished(svc)
    await svc.store.commit([AppendEvents(old, tuple(NewEvent("message", e, 90) for e in filler(38)))])
    out = await svc.resume(old, "q" * 200)
    assert out.trimmed and out.context.ratio < 0.9
    assert (await conversation_events(svc, out.thread.thread_id))[-1]["text"] == "q" * 200


async def test_a_resume_message_too_large_for_the_window_is_refused(svc: ThreadService) -> None:
    old = await finished(svc)
    before = snapshot(svc.store)
    with pytest.raises(LimitExceededError, match="cannot start below its threshold"):
        await svc.resume(old, "q" * 4000)
    assert snapshot(svc.store) == before
