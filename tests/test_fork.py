"""fork_thread (issue 18 item 2): copies up to a seq, refused splits, integrity, search,
forks of forks, chain listing, budgets; over every backend, through MCP and the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from cli_helpers import cli, cli_json, open_root
from mcp_helpers import call, call_error
from subscription_helpers import Updates, subscriber
from threadloom.errors import InvalidInputError
from threadloom.mcp_server import build_server
from threadloom.models import Status
from threadloom.service import ThreadService

pytestmark = pytest.mark.anyio

CONVERSATION = ("message", "assistant_text", "tool_use", "tool_result")


def msg(text: str, role: str = "user") -> dict[str, Any]:
    return {"type": "message", "role": role, "text": text}


async def seeded(service: ThreadService, **create: Any) -> tuple[str, list[dict[str, Any]]]:
    """A thread: status(1) user(2) assistant(3) tool_use(4) tool_result(5) result(6) [checkpoint(7)]
    then user(8) assistant(9); returns its id and events."""
    t = await service.create_thread(title="source", directive="find the bug", **create)
    tid = t.thread_id
    await service.append(
        tid,
        [
            msg("the parser crashes on empty input"),
            msg("let me look at the tokenizer", "assistant"),
            {"type": "tool_use", "id": "call-1", "name": "grep", "input": {"pattern": "tokenize"}},
            {"type": "tool_result", "tool_use_id": "call-1", "output": "tokenizer.py:12"},
        ],
    )
    await service.append(tid, [{"type": "result", "cost": 0.5, "turns": 1}])
    await service.append(tid, [msg("try the zebra approach"), msg("on it", "assistant")])
    events = (await service.read_events(tid)).events
    return tid, events


def conversation(events: list[dict[str, Any]], upto: int | None = None) -> list[dict[str, Any]]:
    """The conversation events without seq/ts (what a fork copies)."""
    return [
        {k: v for k, v in e.items() if k not in ("seq", "ts")}
        for e in events
        if e["type"] in CONVERSATION and (upto is None or e["seq"] <= upto)
    ]


async def test_fork_copies_the_conversation_up_to_each_seq(service: ThreadService) -> None:
    tid, events = await seeded(service)
    last = events[-1]["seq"]
    for at in (0, 2, 3, 5, 6, last, None):
        fork = await service.fork_thread(tid, at_seq=at)
        point = last if at is None else at
        assert fork.status == Status.CREATED
        assert fork.forked_from is not None
        assert (fork.forked_from.thread_id, fork.forked_from.seq) == (tid, point)
        assert fork.chain_root_id == fork.thread_id and fork.thread_id != tid
        got = (await service.read_events(fork.thread_id)).events
        copies = [e for e in got if e["type"] != "checkpoint"]
        assert conversation(copies) == conversation(events, point)
        assert [e["seq"] for e in got] == list(range(1, len(got) + 1))  # its own numbering
        if copies:  # the copied transcript ends signed
            assert got[-1]["type"] == "checkpoint"
        # context accounting counts what it carried
        chars = sum(len(e["text"]) for e in copies if e["type"] == "message")
        assert fork.text_chars >= chars and (fork.text_chars > 0) == bool(copies)
        assert fork.context().used == fork.text_chars // 4
        shown = await service.get_thread(fork.thread_id)
        assert shown.forked_from == fork.forked_from  # get_thread shows the link


async def test_fork_keeps_settings_and_overrides_title_and_directive(service: ThreadService) -> None:
    parent = await service.create_thread(agent_id="orch")
    tid, _ = await seeded(service, parent_id=parent.thread_id, model="m1", metadata={"k": 1})
    same = await service.fork_thread(tid)
    assert (same.title, same.directive, same.agent_id, same.parent_id, same.model, same.metadata) == (
        "source",
        "find the bug",
        "orch",
        parent.thread_id,
        "m1",
        {"k": 1},
    )
    other = await service.fork_thread(tid, title="zebra path", directive="try zebras")
    assert (other.title, other.directive) == ("zebra path", "try zebras")


async def test_a_fork_that_would_split_a_tool_call_is_refused_naming_the_nearest_seqs(
    service: ThreadService,
) -> None:
    tid, events = await seeded(service)
    use = next(e["seq"] for e in events if e["type"] == "tool_use")
    result = next(e["seq"] for e in events if e["type"] == "tool_result")
    assert result == use + 1
    with pytest.raises(InvalidInputError) as err:
        await service.fork_thread(tid, at_seq=use)
    assert err.value.rule == "fork_splits_tool_call"
    assert f"are {use - 1} and {result}" in err.value.message and "'call-1'" in err.value.message
    before = len(await service.all_threads())
    for bad in (-1, events[-1]["seq"] + 1):
        with pytest.raises(InvalidInputError) as err:
            await service.fork_thread(tid, at_seq=bad)
        assert err.value.rule == "at_seq_range"
    assert len(await service.all_threads()) == before  # nothing half-written


async def test_nearest_valid_seqs_span_overlapping_tool_calls(service: ThreadService) -> None:
    t = await service.create_thread()
    await service.append(
        t.thread_id,
        [
            msg("go"),  # 2
            {"type": "tool_use", "id": "a", "name": "x", "input": {}},  # 3
            {"type": "tool_use", "id": "b", "name": "y", "input": {}},  # 4
            {"type": "tool_result", "tool_use_id": "a", "output": "1"},  # 5
            {"type": "tool_result", "tool_use_id": "b", "output": "2"},  # 6
            msg("done", "assistant"),  # 7
        ],
    )
    for at in (3, 4, 5):
        with pytest.raises(InvalidInputError) as err:
            await service.fork_thread(t.thread_id, at_seq=at)
        assert "are 2 and 6" in err.value.message
    ok = await service.fork_thread(t.thread_id, at_seq=6)
    assert ok.forked_from is not None and ok.forked_from.seq == 6


async def test_a_fork_verifies_is_searchable_and_grows_on_its_own(service: ThreadService) -> None:
    tid, _ = await seeded(service)
    fork = await service.fork_thread(tid, at_seq=5)
    report = await service.verify_thread(fork.thread_id)
    assert report.ok, report.problems
    hits = await service.chain_search(fork.thread_id, "tokenizer")
    assert {h.thread_id for h in hits.results} == {fork.thread_id}
    assert not (await service.chain_search(fork.thread_id, "zebra")).results  # after the fork point
    out = await service.append(fork.thread_id, [msg("a different path")], single=True)
    assert out.status == Status.RUNNING
    assert (await service.verify_thread(fork.thread_id)).ok
    assert (await service.verify_thread(tid)).ok  # the source is untouched
    source_events = (await service.read_events(tid)).events
    assert "a different path" not in str(source_events)


async def test_fork_of_a_fork_and_the_chain_lists_its_forks(service: ThreadService) -> None:
    tid, _ = await seeded(service)
    first = await service.fork_thread(tid, at_seq=3)
    await service.append(first.thread_id, [msg("branch one")])
    second = await service.fork_thread(first.thread_id)
    assert second.forked_from is not None and second.forked_from.thread_id == first.thread_id
    texts = [e.get("text") for e in (await service.read_events(second.thread_id)).events]
    assert "the parser crashes on empty input" in texts and "branch one" in texts
    view = await service.get_chain(tid)
    assert [(f.thread_id, f.forked_from.seq) for f in view.forks] == [(first.thread_id, 3)]
    assert [f.thread_id for f in (await service.get_chain(first.thread_id)).forks] == [second.thread_id]
    assert view.end_thread_id == tid  # a fork is not part of the source's chain


async def test_a_fork_gets_a_fresh_budget_reserved_from_the_parent(service: ThreadService) -> None:
    parent = await service.create_thread(budget={"max_spend": 3.0})
    tid, _ = await seeded(service, parent_id=parent.thread_id, budget={"max_spend": 1.0})
    source = await service.get_thread(tid)
    assert source.usage.spend == 0.5
    fork = await service.fork_thread(tid)
    assert fork.budget is not None
    assert (fork.budget.max_spend, fork.budget.actual_spend, fork.usage.spend) == (1.0, 0.0, 0.0)
    assert fork.budget.reserved_from == parent.thread_id
    held = await service.get_thread(parent.thread_id)
    assert held.budget is not None and held.budget.reserved == pytest.approx(1.5)


async def test_fork_through_mcp_and_chain_subscribers_are_told(service: ThreadService) -> None:
    tid, _ = await seeded(service)
    updates = Updates()
    async with Client(build_server(service), mode="legacy", message_handler=updates.handler) as client:
        async with subscriber(client, "legacy", updates) as sub:
            uri = f"chain://{tid}"
            await sub.subscribe(uri)
            fork = await call(client, "fork_thread", {"thread_id": tid, "at_seq": 3, "title": "alt"})
            assert fork["forked_from"] == {"thread_id": tid, "seq": 3}
            assert fork["status"] == "created" and fork["title"] == "alt"
            assert await updates.until(uri)
            chain = await call(client, "get_chain", {"thread_id": tid})
            assert [f["thread_id"] for f in chain["forks"]] == [fork["thread_id"]]
            text = await call_error(client, "fork_thread", {"thread_id": tid, "at_seq": 4})
            assert "[fork_splits_tool_call]" in text and "are 3 and 5" in text
            with anyio.fail_after(5):
                got = await call(client, "get_thread", {"thread_id": fork["thread_id"]})
            assert got["forked_from"]["seq"] == 3


def test_threadloom_fork_cli(tmp_path: Path) -> None:
    root = tmp_path / "root"

    async def seed() -> str:
        async with open_root(root) as svc:
            return (await seeded(svc))[0]

    async def verify(fork_id: str) -> bool:
        async with open_root(root) as svc:
            return (await svc.verify_thread(fork_id)).ok

    tid = anyio.run(seed)
    data = cli_json(root, "fork", tid, "--at-seq", "3", "--title", "from the CLI")
    assert data["forked_from"] == {"thread_id": tid, "seq": 3} and data["title"] == "from the CLI"
    plain = cli(root, "fork", tid)
    assert plain.exit_code == 0 and len(plain.stdout.strip()) == 12
    bad = cli(root, "fork", tid, "--at-seq", "4")
    assert bad.exit_code == 1 and "nearest seqs" in bad.stderr
    shown = cli(root, "show", data["thread_id"])
    assert shown.exit_code == 0 and f"{tid} at seq 3" in shown.stdout
    assert anyio.run(verify, data["thread_id"])
