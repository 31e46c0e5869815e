"""The store contract through the service, run against every backend."""

from __future__ import annotations

import itertools

import anyio
import pytest

from threadloom.errors import (
    ConflictError,
    InvalidInputError,
    InvalidStateError,
    NotFoundError,
    ThreadContinuedError,
)
from threadloom.models import TRANSITIONS, Status
from threadloom.service import ThreadService
from threadloom.store.base import AppendEvents, NewEvent, PutThread

pytestmark = pytest.mark.anyio

USER = {"type": "message", "role": "user", "text": "hello"}


def msg(text: str, role: str = "user") -> dict:
    return {"type": "message", "role": role, "text": text}


async def test_create_and_get_round_trip(service: ThreadService) -> None:
    t = await service.create_thread(agent_id="a1", title="T", directive="do it", metadata={"k": 1})
    got = await service.get_thread(t.thread_id)
    assert got.thread_id == t.thread_id
    assert (got.agent_id, got.title, got.directive, got.metadata) == ("a1", "T", "do it", {"k": 1})
    assert got.status == Status.CREATED
    assert got.event_count == 0
    assert got.chain_root_id == t.thread_id
    assert got.created_at.endswith("Z")


async def test_seqs_are_gapless_from_one_and_ordered(service: ThreadService) -> None:
    t = await service.create_thread()
    first = await service.append(t.thread_id, [msg("a")], single=True)
    assert first.seq == 2  # seq 1 is the created -> running status event
    batch = await service.append(t.thread_id, [msg("b"), msg("c", "assistant")])
    assert batch.seqs == [3, 4]
    page = await service.read_events(t.thread_id)
    assert [e["seq"] for e in page.events] == [1, 2, 3, 4]
    assert page.events[0]["type"] == "status" and page.events[0]["to"] == "running"
    assert [e.get("text") for e in page.events[1:]] == ["a", "b", "c"]
    assert all(e["ts"].endswith("Z") for e in page.events)


async def test_first_append_moves_created_to_running(service: ThreadService) -> None:
    t = await service.create_thread()
    out = await service.append(t.thread_id, [USER], single=True)
    assert out.status == Status.RUNNING
    assert (await service.get_thread(t.thread_id)).status == Status.RUNNING


async def test_read_events_pages_by_seq(service: ThreadService) -> None:
    t = await service.create_thread()
    await service.append(t.thread_id, [msg(str(i)) for i in range(25)])
    seen, after = [], 0
    while True:
        page = await service.read_events(t.thread_id, after_seq=after, limit=10)
        seen += [e["seq"] for e in page.events]
        after = page.next_after_seq
        if not page.has_more:
            break
    assert seen == list(range(1, 27))
    assert page.event_count == 26


async def test_list_threads_filters_and_pages_newest_first(service: ThreadService) -> None:
    parent = await service.create_thread(agent_id="orch")
    kids = [await service.create_thread(parent_id=parent.thread_id) for _ in range(3)]
    others = [await service.create_thread(agent_id="other") for _ in range(4)]
    assert all(k.agent_id == "orch" for k in kids)  # children inherit the agent
    page = await service.list_threads(parent_id=parent.thread_id)
    assert [t.thread_id for t in page.threads] == [k.thread_id for k in reversed(kids)]
    ids, cursor = [], None
    while True:
        page = await service.list_threads(agent_id="other", limit=3, cursor=cursor)
        ids += [t.thread_id for t in page.threads]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert ids == [t.thread_id for t in reversed(others)]
    await service.update_thread(others[0].thread_id, status="cancelled")
    page = await service.list_threads(status="cancelled")
    assert [t.thread_id for t in page.threads] == [others[0].thread_id]


async def test_idempotent_retry_returns_original_seqs(service: ThreadService) -> None:
    t = await service.create_thread()
    a = await service.append(t.thread_id, [msg("x"), msg("y")], idempotency_key="req-1")
    b = await service.append(t.thread_id, [msg("x"), msg("y")], idempotency_key="req-1")
    assert a.seqs == b.seqs == [2, 3]
    assert b.replayed and not a.replayed
    assert (await service.get_thread(t.thread_id)).event_count == 3


async def test_concurrent_retries_with_one_key_write_once(service: ThreadService) -> None:
    t = await service.create_thread()
    await service.append(t.thread_id, [msg("start")])
    results = []

    async def go() -> None:
        results.append(await service.append(t.thread_id, [msg("once")], idempotency_key="k"))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(go)
    assert {tuple(r.seqs or []) for r in results} == {(3,)}
    assert (await service.get_thread(t.thread_id)).event_count == 3


async def test_idempotency_key_reused_for_other_content_is_a_conflict(service: ThreadService) -> None:
    t = await service.create_thread()
    await service.append(t.thread_id, [msg("x")], idempotency_key="k")
    with pytest.raises(ConflictError, match="idempotency_key 'k' was already used"):
        await service.append(t.thread_id, [msg("different")], idempotency_key="k")


async def test_batch_is_all_or_nothing(service: ThreadService) -> None:
    t = await service.create_thread()
    await service.append(t.thread_id, [msg("ok")])
    with pytest.raises(InvalidInputError, match=r"events\[2\]\.role"):
        await service.append(
            t.thread_id, [msg("a"), msg("b"), {"type": "message", "role": "robot", "text": "c"}]
        )
    assert (await service.get_thread(t.thread_id)).event_count == 2


async def test_store_commit_is_atomic_when_a_later_op_fails(service: ThreadService) -> None:
    t = await service.create_thread()
    await service.append(t.thread_id, [msg("ok")])
    thread = await service.get_thread(t.thread_id)
    ops = [
        AppendEvents(t.thread_id, (NewEvent("message", msg("lost")),)),
        PutThread(thread.model_copy(update={"title": "lost"}), expect_version=thread.version + 5),
    ]
    with pytest.raises(ConflictError):
        await service.store.commit(ops)
    after = await service.get_thread(t.thread_id)
    assert after.event_count == 2 and after.title is None
    assert len((await service.read_events(t.thread_id)).events) == 2


async def test_concurrent_appends_to_one_thread_are_serialized(service: ThreadService) -> None:
    t = await service.create_thread()
    await service.append(t.thread_id, [msg("start")])

    async def writer(i: int) -> None:
        for j in range(10):
            await service.append(t.thread_id, [msg(f"{i}-{j}")])

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(writer, i)
    events = (await service.read_events(t.thread_id, limit=1000)).events
    assert [e["seq"] for e in events] == list(range(1, 83))
    texts = [e["text"] for e in events[2:]]
    assert len(set(texts)) == 80
    for i in range(8):  # each writer's own events stay in its order
        mine = [x for x in texts if x.startswith(f"{i}-")]
        assert mine == [f"{i}-{j}" for j in range(10)]


async def test_concurrent_appends_to_different_threads(service: ThreadService) -> None:
    threads = [await service.create_thread() for _ in range(5)]

    async def writer(tid: str) -> None:
        for j in range(10):
            await service.append(tid, [msg(str(j))])

    async with anyio.create_task_group() as tg:
        for t in threads:
            tg.start_soon(writer, t.thread_id)
    for t in threads:
        got = await service.get_thread(t.thread_id)
        assert got.event_count == 11


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (o, n)
        for o, n in itertools.product(Status, Status)
        if n not in TRANSITIONS[o] and n != Status.CONTINUED and o != n
    ],
)
async def test_illegal_transitions_are_refused(service: ThreadService, old: Status, new: Status) -> None:
    t = await service.create_thread()
    await _drive_to(service, t.thread_id, old)
    with pytest.raises((InvalidStateError, InvalidInputError), match=f"{old.value} -> {new.value}"):
        await service.update_thread(t.thread_id, status=new)
    assert (await service.get_thread(t.thread_id)).status == old


@pytest.mark.parametrize(
    ("old", "new"), [(o, n) for o in Status for n in TRANSITIONS[o] if n != Status.CONTINUED]
)
async def test_legal_transitions_log_a_status_event(service: ThreadService, old: Status, new: Status) -> None:
    t = await service.create_thread()
    await _drive_to(service, t.thread_id, old)
    got = await service.update_thread(t.thread_id, status=new, reason="because")
    assert got.status == new and got.status_reason == "because"
    events = (await service.read_events(t.thread_id, limit=1000)).events
    last = [e for e in events if e["type"] != "checkpoint"][-1]  # an ended thread ends with a checkpoint
    assert (last["type"], last["from"], last["to"], last["reason"]) == (
        "status",
        old.value,
        new.value,
        "because",
    )


async def _drive_to(service: ThreadService, tid: str, status: Status) -> None:
    if status == Status.CREATED:
        return
    if status == Status.CONTINUED:
        thread = await service.get_thread(tid)
        await service.update_thread(tid, status="running")
        thread = await service.get_thread(tid)
        await service.store.commit(service.status_ops(thread, Status.CONTINUED, "handoff"))
        return
    await service.update_thread(tid, status="running")
    if status != Status.RUNNING:
        await service.update_thread(tid, status=status)


async def test_continued_status_cannot_be_set_directly(service: ThreadService) -> None:
    t = await service.create_thread()
    with pytest.raises(InvalidInputError, match="continued"):
        await service.update_thread(t.thread_id, status="continued")


@pytest.mark.parametrize(
    "bad", ["../etc", "ABCDEF123456", "abcdef12345", "abcdef1234567", "", "zzzzzzzzzzzz"]
)
async def test_bad_thread_ids_are_refused_naming_the_rule(service: ThreadService, bad: str) -> None:
    for call in (
        service.get_thread(bad),
        service.append(bad, [USER]),
        service.read_events(bad),
        service.update_thread(bad, title="x"),
    ):
        with pytest.raises(
            InvalidInputError, match=r"12 lowercase hex digits.*" + repr(bad).replace("'", "")[:3]
        ):
            await call


async def test_unknown_thread_is_not_found(service: ThreadService) -> None:
    with pytest.raises(NotFoundError, match="abcdefabcdef"):
        await service.get_thread("abcdefabcdef")
    with pytest.raises(NotFoundError):
        await service.append("abcdefabcdef", [USER])
    with pytest.raises(NotFoundError, match="abcdefabcdef"):
        await service.create_thread(parent_id="abcdefabcdef")


@pytest.mark.parametrize(
    ("event", "pattern"),
    [
        ({"type": "telepathy", "text": "x"}, "'telepathy' is not a known event type"),
        ({"type": "message", "role": "robot", "text": "x"}, "role.*robot"),
        ({"type": "message", "role": "user"}, "text: required field is missing"),
        ({"type": "message", "role": "user", "text": "x", "extra": 1}, "extra: unknown field"),
        ({"type": "status", "from": "created", "to": "running"}, "written by the server only"),
        ({"type": "checkpoint", "sha256": "x", "signature": "y"}, "written by the server only"),
        ({"type": "x-BAD", "a": 1}, "not a valid custom type"),
        ({"type": "tool_use", "id": "", "name": "ls"}, "event.id"),
        ({"type": "result", "cost": -1}, "event.cost"),
        ("just a string", "must be a JSON object"),
    ],
)
async def test_invalid_events_are_refused_with_the_rule(
    service: ThreadService, event: object, pattern: str
) -> None:
    t = await service.create_thread()
    with pytest.raises(InvalidInputError, match=pattern):
        await service.append(t.thread_id, [event])
    assert (await service.get_thread(t.thread_id)).event_count == 0


async def test_custom_and_legacy_events_are_accepted(service: ThreadService) -> None:
    t = await service.create_thread()
    out = await service.append(
        t.thread_id, [{"type": "x-note", "anything": [1, 2]}, {"role": "user", "text": "legacy"}]
    )
    events = (await service.read_events(t.thread_id, after_seq=1)).events
    assert out.seqs == [2, 3]
    assert events[0]["type"] == "x-note" and events[0]["anything"] == [1, 2]
    assert events[1]["type"] == "message" and events[1]["text"] == "legacy"


async def test_oversized_event_is_refused(service: ThreadService) -> None:
    t = await service.create_thread()
    big = "x" * (service.settings.max_event_bytes + 1)
    with pytest.raises(InvalidInputError, match="max_event_bytes"):
        await service.append(t.thread_id, [msg(big)])
    assert (await service.get_thread(t.thread_id)).event_count == 0


async def test_appends_after_the_end_are_refused(service: ThreadService) -> None:
    t = await service.create_thread()
    await service.append(t.thread_id, [USER])
    await service.update_thread(t.thread_id, status="paused")
    with pytest.raises(InvalidStateError, match="paused"):
        await service.append(t.thread_id, [USER])
    await service.update_thread(t.thread_id, status="completed", result={"answer": 42}, cost=0.5)
    with pytest.raises(InvalidStateError, match="completed.*resume_thread"):
        await service.append(t.thread_id, [USER])
    got = await service.get_thread(t.thread_id)
    assert got.result == {"answer": 42} and got.cost == 0.5


async def test_append_to_continued_thread_names_the_chain_end(service: ThreadService) -> None:
    a = await service.create_thread()
    b = await service.create_thread()
    await service.append(a.thread_id, [USER])
    thread = await service.get_thread(a.thread_id)
    await service.store.commit(
        service.status_ops(thread, Status.CONTINUED, "handoff", continuation_thread_id=b.thread_id)
    )
    with pytest.raises(ThreadContinuedError, match=b.thread_id) as info:
        await service.append(a.thread_id, [USER])
    assert info.value.current_thread_id == b.thread_id


async def test_update_merges_metadata_and_sets_fields(service: ThreadService) -> None:
    t = await service.create_thread(metadata={"a": 1, "b": 2})
    got = await service.update_thread(
        t.thread_id, title="new", metadata={"b": None, "c": 3}, outputs={"o": 1}
    )
    assert got.metadata == {"a": 1, "c": 3}
    assert got.title == "new" and got.outputs == {"o": 1}


async def test_updated_at_and_heartbeat_move_on_append(service: ThreadService) -> None:
    t = await service.create_thread()
    await anyio.sleep(0.002)
    await service.append(t.thread_id, [USER])
    got = await service.get_thread(t.thread_id)
    assert got.updated_at > t.updated_at and got.heartbeat_at > t.heartbeat_at


async def test_sweeper_times_out_stale_running_threads_only(service: ThreadService) -> None:
    stale = await service.create_thread(stale_after=0.05)
    fresh = await service.create_thread(stale_after=3600)
    idle = await service.create_thread(stale_after=0.05)  # created, never ran
    for t in (stale, fresh):
        await service.append(t.thread_id, [USER])
    await anyio.sleep(0.1)
    moved = await service.sweep_stale()
    assert moved == [stale.thread_id]
    got = await service.get_thread(stale.thread_id)
    assert (got.status, got.status_reason) == (Status.ERROR, "timeout")
    assert (await service.get_thread(fresh.thread_id)).status == Status.RUNNING
    assert (await service.get_thread(idle.thread_id)).status == Status.CREATED
    assert await service.sweep_stale() == []  # safe to run again


async def test_validation_of_create_arguments(service: ThreadService) -> None:
    with pytest.raises(InvalidInputError, match="agent_id"):
        await service.create_thread(agent_id="bad agent!")
    with pytest.raises(InvalidInputError, match="context_window"):
        await service.create_thread(context_window=5)
    with pytest.raises(InvalidInputError, match="trigger_threshold"):
        await service.create_thread(trigger_threshold=1.5)
    with pytest.raises(InvalidInputError, match="title"):
        await service.create_thread(title="x" * 501)
    with pytest.raises(InvalidInputError, match="metadata"):
        await service.create_thread(metadata=["not", "an", "object"])  # type: ignore[arg-type]
    assert (await service.list_threads()).threads == []


async def test_bad_paging_arguments(service: ThreadService) -> None:
    t = await service.create_thread()
    with pytest.raises(InvalidInputError, match="limit"):
        await service.read_events(t.thread_id, limit=0)
    with pytest.raises(InvalidInputError, match="after_seq"):
        await service.read_events(t.thread_id, after_seq=-1)
    with pytest.raises(InvalidInputError, match="cursor"):
        await service.list_threads(cursor="garbage")
    with pytest.raises(InvalidInputError, match="status"):
        await service.list_threads(status="sleeping")


async def test_list_chain_and_delete(service: ThreadService) -> None:
    a = await service.create_thread()
    b = await service.create_thread()
    await service.append(a.thread_id, [USER])
    chain = await service.store.list_chain(a.thread_id)
    assert [t.thread_id for t in chain] == [a.thread_id]
    assert await service.store.delete_threads([a.thread_id, "abcdefabcdef"]) == 1
    assert await service.store.delete_threads([a.thread_id]) == 0  # idempotent
    with pytest.raises(NotFoundError):
        await service.get_thread(a.thread_id)
    with pytest.raises(NotFoundError):
        await service.read_events(a.thread_id)
    assert [t.thread_id for t in (await service.list_threads()).threads] == [b.thread_id]


async def test_a_failing_commit_leaves_the_store_usable(service: ThreadService) -> None:
    t = await service.create_thread()
    await service.append(t.thread_id, [USER])

    bad = AppendEvents(
        t.thread_id, (NewEvent("message", {"type": "message", "role": "user", "text": object()}),)
    )  # type: ignore[dict-item]
    with pytest.raises(Exception):
        await service.store.commit([bad])
    out = await service.append(t.thread_id, [USER], single=True)
    assert out.seq == 3
