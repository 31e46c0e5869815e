"""`threadloom ingest codex`: rollouts become threads, spawned sessions children, compactions links."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_helpers import open_root
from ingest_helpers import all_threads, copy_fixtures, ingest, snapshot, source_events
from provider_shapes import check_anthropic

pytestmark = pytest.mark.anyio

PARENT = "0197a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
CHILD = "0197a1b2-0000-7000-8000-00000000c0de"


async def test_a_rollout_becomes_a_chain_and_a_spawned_session_a_child(tmp_path: Path) -> None:
    src = copy_fixtures("codex", tmp_path)
    report = await ingest(tmp_path / "root", [src], "codex")
    threads = await all_threads(tmp_path / "root")
    main = [t for t in threads if t.metadata["source_session_id"] == PARENT]
    (child,) = [t for t in threads if t.metadata["source_session_id"] == CHILD]
    first, second = main
    assert first.status == "continued" and first.continuation_thread_id == second.thread_id
    assert second.status == "completed" and child.status == "completed"
    assert child.parent_id == first.thread_id and child.metadata["parent_session_id"] == PARENT
    assert child.title == "Review the --verbose change for missing tests"
    assert first.agent_id == child.agent_id == "codex"
    assert first.title == "Add a --verbose flag to the CLI"  # not the injected environment context
    m = first.metadata
    assert (m["cwd"], m["git_branch"], m["cli_version"], m["model"]) == (
        "/home/dev/tool",
        "feature/verbose",
        "0.46.0",
        "gpt-5-codex",
    )
    assert m["source_file"].endswith(f"{PARENT}.jsonl") and first.model == "gpt-5-codex"
    assert first.context_window == 272000  # from token_count's model_context_window
    assert report.skipped["event_msg:user_message"] == 1 and report.skipped["some_future_kind"] == 1
    assert report.skipped["event_msg:token_count (repeated)"] == 1
    assert set(report.custom) == {"x-reasoning", "x-web_search_call"}
    assert [(mm["line"], Path(mm["file"]).name) for mm in report.malformed] == [
        (20, f"rollout-2025-06-02T09-00-00-{PARENT}.jsonl")
    ]


async def test_calls_pair_with_outputs_and_failures_are_errors(tmp_path: Path) -> None:
    src = copy_fixtures("codex", tmp_path)
    await ingest(tmp_path / "root", [src], "codex")
    async with open_root(tmp_path / "root") as svc:
        first = next(t for t in await svc.all_threads() if t.status == "continued")
        events = await source_events(svc, first.thread_id)
        calls = [e for e in events if e["type"] == "tool_use"]
        assert [c["name"] for c in calls] == ["shell", "apply_patch", "local_shell"]
        assert calls[0]["input"] == {"command": ["rg", "--files"], "workdir": "/home/dev/tool"}
        for i, e in enumerate(events):
            if e["type"] == "tool_use":
                assert events[i + 1]["type"] == "tool_result" and events[i + 1]["tool_use_id"] == e["id"]
        results = {e["tool_use_id"]: e for e in events if e["type"] == "tool_result"}
        assert results["call_1"]["output"] == "cli.py\nREADME.md\n" and not results["call_1"]["is_error"]
        assert results["call_2"]["is_error"] and results["call_2"]["output"] == "error: patch did not apply"
        usage = [e for e in events if e["type"] == "result"]
        assert [(u["input_tokens"], u["output_tokens"], u["cache_read_tokens"]) for u in usage] == [
            (5200, 120, 4000),
            (6100, 300, 5000),
        ]
        assert (await svc.get_thread(first.thread_id)).input_tokens == 6100


async def test_ingest_twice_equals_ingest_once(tmp_path: Path) -> None:
    src = copy_fixtures("codex", tmp_path)
    await ingest(tmp_path / "root", [src], "codex")
    once = await snapshot(tmp_path / "root")
    again = await ingest(tmp_path / "root", [src], "codex")
    assert again.events == 0 and again.threads_created == []
    assert await snapshot(tmp_path / "root") == once


async def test_a_codex_session_resumes_in_the_anthropic_shape(tmp_path: Path) -> None:
    src = copy_fixtures("codex", tmp_path)
    await ingest(tmp_path / "root", [src], "codex")
    async with open_root(tmp_path / "root") as svc:
        found = await svc.search_threads("verbose flag README", agent_id="codex")
        assert found.results
        first = next(t for t in await svc.all_threads() if t.status == "continued")
        assert (await svc.chain_search(first.thread_id, "patch did not apply", include_tools=True)).results
        out = await svc.resume(first.thread_id, "Also add a test for --verbose", format="anthropic")
        check_anthropic(out.system, out.messages)
        assert out.messages[-1]["role"] == "user"
        assert out.messages[-1]["content"][-1] == {"type": "text", "text": "Also add a test for --verbose"}
        tools = [b for m in out.messages for b in m["content"] if b["type"] in ("tool_use", "tool_result")]
        assert tools or out.trimmed


async def test_the_codex_home_folder_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = copy_fixtures("codex", tmp_path / "codexhome")
    monkeypatch.setenv("CODEX_HOME", str(src))
    report = await ingest(tmp_path / "root", [], "codex")
    assert report.files == 2 and len(report.threads_created) == 2


async def test_older_rollouts_without_the_envelope_are_read_too(tmp_path: Path) -> None:
    src = copy_fixtures("codex-legacy", tmp_path)
    report = await ingest(tmp_path / "root", [src], "codex")
    assert report.skipped["record_type:state"] == 2 and not report.problems
    async with open_root(tmp_path / "root") as svc:
        (thread,) = await svc.all_threads()
        assert thread.title == "Rename the helper to parse_row"
        assert thread.metadata["source_session_id"] == "0196a0b0-1111-7222-8333-444455556666"
        assert thread.metadata["git_branch"] == "main"
        events = await source_events(svc, thread.thread_id)
        assert [e["type"] for e in events] == [
            "message",
            "x-reasoning",
            "tool_use",
            "tool_result",
            "message",
            "x-unmapped",  # a call whose input is not plain JSON (NaN) is kept as a note, not refused
        ]
        assert events[3]["output"] == "util.py:3:def helper(row):\n"
        assert events[-1]["source_type"] == "tool_use"


async def test_appended_lines_add_exactly_the_new_events(tmp_path: Path) -> None:
    import json
    import re

    src = copy_fixtures("codex", tmp_path)
    (path,) = src.rglob(f"rollout-*{PARENT}.jsonl")
    lines = path.read_bytes().splitlines(keepends=True)
    whole = tmp_path / "whole" / path.name
    whole.parent.mkdir()
    whole.write_bytes(b"".join(lines))
    await ingest(tmp_path / "one-go", [whole], "codex", idle_after=float("inf"))
    for cut in (9, 13, 23):  # mid-turn, between a call and its output, after the compaction
        path.write_bytes(b"".join(lines[:cut]))
        await ingest(tmp_path / "root", [path], "codex", idle_after=float("inf"))
    path.write_bytes(b"".join(lines))
    last = await ingest(tmp_path / "root", [path], "codex", idle_after=float("inf"))
    assert last.lines == len(lines) - 23

    async def chain_events(root: Path) -> list:
        async with open_root(root) as svc:
            out = []
            for t in sorted(await svc.all_threads(), key=lambda t: t.created_at):
                out += await source_events(svc, t.thread_id)
            text = re.sub(r"\b[a-f0-9]{12}\b", "ID", json.dumps(out))
            # the continuation message counts the server's own events too (a checkpoint per append)
            return json.loads(re.sub(r"its other \d+ events", "its other N events", text))

    assert await chain_events(tmp_path / "root") == await chain_events(tmp_path / "one-go")
