"""`threadloom ingest claude-code`: sessions become threads, chains and children, incrementally."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from cli_helpers import cli, open_root
from ingest_helpers import CLAUDE_SESSION, all_threads, copy_fixtures, ingest, snapshot, source_events
from provider_shapes import check_anthropic, check_openai
from threadloom.ingest.state import StateStore

pytestmark = pytest.mark.anyio


def session_file(base: Path) -> Path:
    return base / "projects" / "-home-dev-demo" / f"{CLAUDE_SESSION}.jsonl"


async def test_a_session_becomes_a_chain_with_children(tmp_path: Path) -> None:
    src = copy_fixtures("claude-code", tmp_path)
    report = await ingest(tmp_path / "root", [src])
    threads = await all_threads(tmp_path / "root")
    main = [t for t in threads if t.parent_id is None]
    kids = [t for t in threads if t.parent_id is not None]
    assert len(main) == 2 and len(kids) == 2
    first, second = main
    assert first.status == "continued" and first.continuation_thread_id == second.thread_id
    assert second.continuation_of == first.thread_id and second.status == "completed"
    assert {k.parent_id for k in kids} == {first.thread_id}
    assert {k.metadata["subagent_id"] for k in kids} == {"a1b2c3", "0ld4g3nt"}
    for t in threads:
        assert t.agent_id == "claude-code"
        assert t.metadata["source"] == "claude-code" and t.metadata["source_file"].endswith(".jsonl")
    assert first.title == "Find why the flaky parser test fails and fix it"
    meta = first.metadata
    assert meta["source_session_id"] == CLAUDE_SESSION
    assert (meta["cwd"], meta["git_branch"], meta["cli_version"]) == ("/home/dev/demo", "main", "2.0.14")
    assert meta["model"] == first.model == "claude-sonnet-4-5-20250929"
    # every line kind is mapped, kept as a custom event, or counted as skipped
    assert report.skipped == {
        "file-history-snapshot": 1,
        "progress": 1,
        "queue-operation": 1,
        "custom-title": 1,
    }
    assert set(report.custom) == {"x-thinking", "x-image", "x-system", "x-summary"}
    assert report.malformed == [
        {"file": str(session_file(src).resolve()), "line": 15, "error": report.malformed[0]["error"]}
    ]
    assert report.continuations == 1 and report.children == 2


async def test_tool_calls_sit_next_to_their_results_and_usage_is_counted_once(tmp_path: Path) -> None:
    src = copy_fixtures("claude-code", tmp_path)
    await ingest(tmp_path / "root", [src])
    async with open_root(tmp_path / "root") as svc:
        first = next(t for t in await svc.all_threads() if t.parent_id is None and t.status == "continued")
        events = await source_events(svc, first.thread_id)
        types = [e["type"] for e in events]
        for i, e in enumerate(events):
            if e["type"] == "tool_use":
                assert events[i + 1] == {**events[i + 1], "type": "tool_result", "tool_use_id": e["id"]}
        errors = [e for e in events if e["type"] == "tool_result" and e["is_error"]]
        assert [e["tool_use_id"] for e in errors] == ["toolu_02"]
        # msg_01 spans three lines (thinking, text, tool_use) with the same usage: one result event
        assert types[:6] == ["message", "x-thinking", "message", "tool_use", "tool_result", "result"]
        results = [e for e in events if e["type"] == "result"]
        assert results[0]["input_tokens"] == 12 + 3000 + 9000 and results[0]["output_tokens"] == 250
        assert results[0]["cache_read_tokens"] == 9000
        thread = await svc.get_thread(first.thread_id)
        assert thread.usage.tokens == sum(r["input_tokens"] + r["output_tokens"] for r in results)
        assert thread.input_tokens == results[-1]["input_tokens"]  # context accounting sees the last prompt


async def test_ingest_twice_equals_ingest_once(tmp_path: Path) -> None:
    src = copy_fixtures("claude-code", tmp_path)
    await ingest(tmp_path / "root", [src])
    once = await snapshot(tmp_path / "root")
    again = await ingest(tmp_path / "root", [src])
    assert again.events == 0 and again.threads_created == [] and again.rewritten == []
    assert await snapshot(tmp_path / "root") == once


async def test_appended_lines_add_exactly_the_new_events(tmp_path: Path) -> None:
    src = copy_fixtures("claude-code", tmp_path)
    path = session_file(src)
    lines = path.read_bytes().splitlines(keepends=True)
    whole = tmp_path / "whole"
    whole.mkdir()
    (whole / path.name).write_bytes(b"".join(lines))
    await ingest(tmp_path / "one-go", [whole / path.name], idle_after=float("inf"))
    path.write_bytes(b"".join(lines[:7]))
    await ingest(tmp_path / "root", [path], idle_after=float("inf"))
    with open(path, "ab") as f:
        f.write(b"".join(lines[7:]))
    second = await ingest(tmp_path / "root", [path], idle_after=float("inf"))
    assert second.lines == len(lines) - 7 and second.threads_created == []

    async def chain_events(root: Path) -> list[dict]:
        async with open_root(root) as svc:
            out = []
            for t in sorted(await svc.all_threads(), key=lambda t: t.created_at):
                out += await source_events(svc, t.thread_id)
            text = re.sub(r"\b[a-f0-9]{12}\b", "ID", json.dumps(out))
            # the continuation message counts the server's own events too (a checkpoint per append)
            return json.loads(re.sub(r"its other \d+ events", "its other N events", text))

    assert await chain_events(tmp_path / "root") == await chain_events(tmp_path / "one-go")


async def test_a_partly_written_last_line_waits_for_its_end(tmp_path: Path) -> None:
    src = copy_fixtures("claude-code", tmp_path)
    path = session_file(src)
    data = path.read_bytes()
    second_end = data.index(b"\n", data.index(b"\n") + 1)
    path.write_bytes(data[: second_end + 30])  # two lines and 30 bytes of the third
    first = await ingest(tmp_path / "root", [path], idle_after=float("inf"))
    assert first.lines == 2 and first.malformed == []
    path.write_bytes(data)
    await ingest(tmp_path / "root", [path], idle_after=float("inf"))
    async with open_root(tmp_path / "root") as svc:
        thread = (await svc.all_threads())[-1]
        events = await source_events(svc, thread.thread_id)
        assert events[0] == {"type": "message", "role": "user", "text": thread.title}
        assert events[1] == {"type": "x-thinking", "text": "The parser test probably races on a temp file."}


@pytest.mark.parametrize("change", ["truncate", "rewrite"])
async def test_a_changed_file_is_reported_and_never_ingested_twice(tmp_path: Path, change: str) -> None:
    src = copy_fixtures("claude-code", tmp_path)
    path = session_file(src)
    await ingest(tmp_path / "root", [src])
    before = await snapshot(tmp_path / "root")
    data = path.read_bytes()
    if change == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(data.replace(b"flaky", b"FLAKY"))
    report = await ingest(tmp_path / "root", [src])
    assert [r["file"] for r in report.rewritten] == [str(path.resolve())]
    assert report.rewritten[0]["reason"].startswith("truncated" if change == "truncate" else "rewritten")
    assert await snapshot(tmp_path / "root") == before
    path.write_bytes(data)  # even put back, the file is not read again
    third = await ingest(tmp_path / "root", [src])
    assert third.events == 0 and third.rewritten[0]["noticed_before"] is True
    assert await snapshot(tmp_path / "root") == before


async def test_a_run_that_died_after_committing_replays_instead_of_duplicating(tmp_path: Path) -> None:
    src = copy_fixtures("claude-code", tmp_path)
    path = session_file(src)
    await ingest(tmp_path / "root", [path])
    before = await snapshot(tmp_path / "root")
    states = StateStore(tmp_path / "root")
    st = states.load(path, "claude-code")
    # as if the process died right after the commits, before it saved where it stopped
    root_thread = st.root_thread_id
    st.thread_id, st.offset, st.line, st.parser, st.completed = root_thread, 0, 0, {}, False
    st.pending = {"start": 0, "end": path.stat().st_size}
    states.save(st)
    again = await ingest(tmp_path / "root", [path])
    assert again.events == 0 and again.threads_created == []
    assert await snapshot(tmp_path / "root") == before


async def test_search_finds_ingested_text(tmp_path: Path) -> None:
    src = copy_fixtures("claude-code", tmp_path)
    await ingest(tmp_path / "root", [src])
    async with open_root(tmp_path / "root") as svc:
        found = await svc.search_threads("tokenizer quotes", agent_id="claude-code")
        assert found.results
        hit = found.results[0]
        chain = await svc.chain_search(hit.thread_id, "quoted comma")
        assert chain.results


async def test_a_claude_code_session_resumes_in_the_openai_shape(tmp_path: Path) -> None:
    src = copy_fixtures("claude-code", tmp_path)
    await ingest(tmp_path / "root", [src])
    async with open_root(tmp_path / "root") as svc:
        first = next(t for t in await svc.all_threads() if t.parent_id is None and t.continuation_of is None)
        chain = await svc.get_chain(first.thread_id)
        assert len(chain.threads) == 2
        out = await svc.resume(first.thread_id, "Now add a regression test", format="openai")
        check_openai(out.messages)
        assert out.messages[-1] == {"role": "user", "content": "Now add a regression test"}
        assert any(m.get("tool_calls") for m in out.messages) or out.trimmed
        child = next(t for t in await svc.all_threads() if t.metadata.get("subagent_id") == "a1b2c3")
        again = await svc.resume(child.thread_id, "Check the reader too", format="anthropic")
        check_anthropic(again.system, again.messages)


def test_the_command_reports_in_json_and_reads_the_default_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    src = copy_fixtures("claude-code", home)
    (home / ".claude").mkdir()
    os.rename(src / "projects", home / ".claude" / "projects")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CLAUDE_CONFIG_DIR", raising=False)
    res = cli(tmp_path / "root", "ingest", "claude-code", "--json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["files"] == 3 and len(data["threads_created"]) == 3 and data["malformed_count"] == 1
    res2 = cli(tmp_path / "root", "ingest", "claude-code", str(home / ".claude" / "projects"))
    assert res2.exit_code == 0 and "0 event(s) appended" in res2.stderr
    bad = cli(tmp_path / "root", "ingest", "claude-code", "--since", "yesterday-ish")
    assert bad.exit_code == 2 and "--since" in bad.stderr


def _session_lines(session: str, rows: list[tuple[str, str, str, str]]) -> str:
    out = []
    for uuid, kind, text, ts in rows:
        base = {
            "sessionId": session,
            "cwd": "/w",
            "version": "1.0.65",
            "timestamp": ts,
            "uuid": uuid,
            "type": kind,
        }
        if kind == "user":
            base["message"] = {"role": "user", "content": text}
        else:
            base["message"] = {
                "id": f"msg_{uuid}",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [{"type": "text", "text": text}],
            }
        out.append(json.dumps(base))
    return "\n".join(out) + "\n"


async def test_a_session_resumed_into_a_new_file_continues_the_chain(tmp_path: Path) -> None:
    folder = tmp_path / "projects" / "-w"
    folder.mkdir(parents=True)
    old_rows = [
        ("u1", "user", "what is 4 + 4 * 4?", "2025-08-01T13:46:00Z"),
        ("a1", "assistant", "20", "2025-08-01T13:46:05Z"),
    ]
    new_rows = [
        ("u2", "user", "remove 10 from it", "2025-08-01T13:47:00Z"),
        ("a2", "assistant", "10", "2025-08-01T13:47:04Z"),
    ]
    # claude --resume (1.0.x) starts a new file that repeats the old conversation first
    (folder / "ffff0000-0000-4000-8000-00000000000b.jsonl").write_text(
        _session_lines("ffff0000-0000-4000-8000-00000000000b", old_rows + new_rows)
    )
    (folder / "00000000-0000-4000-8000-00000000000a.jsonl").write_text(
        _session_lines("00000000-0000-4000-8000-00000000000a", old_rows)
    )
    report = await ingest(tmp_path / "root", [tmp_path / "projects"])
    assert report.skipped["copied from the resumed session"] == 2
    async with open_root(tmp_path / "root") as svc:
        threads = sorted(await svc.all_threads(), key=lambda t: t.created_at)
        assert len(threads) == 2
        old, new = threads
        assert new.continuation_of == old.thread_id and new.link_reason == "resume"
        assert new.metadata["source_session_id"] == "ffff0000-0000-4000-8000-00000000000b"
        assert new.metadata["resumed_from_session_id"] == "00000000-0000-4000-8000-00000000000a"
        texts = [e.get("text") for e in await source_events(svc, new.thread_id) if e["type"] == "message"]
        assert texts.count("what is 4 + 4 * 4?") == 1  # carried once by the resume, not copied again
        assert texts[-2:] == ["remove 10 from it", "10"]
        chain = await svc.get_chain(old.thread_id)
        assert [t.thread_id for t in chain.threads] == [old.thread_id, new.thread_id]


def test_since_takes_a_date_or_an_age(tmp_path: Path) -> None:
    from threadloom.ingest.command import parse_since

    assert parse_since("2025-06-01") == parse_since("2025-06-01T00:00:00Z")
    assert parse_since("7d", now=1_000_000.0) == 1_000_000.0 - 7 * 86400
    src = copy_fixtures("claude-code", tmp_path)
    for f in src.rglob("*"):  # copytree keeps the checkout's times: a checkout an hour old is older than 1h
        if f.is_file():
            os.utime(f)
    res = cli(tmp_path / "root", "ingest", "claude-code", str(src), "--since", "1h", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["files"] == 3  # copied just now
    future = cli(tmp_path / "root2", "ingest", "claude-code", str(src), "--since", "2999-01-01", "--json")
    assert future.exit_code == 0 and json.loads(future.stdout)["files"] == 0
