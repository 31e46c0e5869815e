"""`threadloom hook claude-code`: live capture that never gets in the session's way."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from cli_helpers import open_root
from conftest import PYTHON
from ingest_helpers import CLAUDE_SESSION, FIXTURES, copy_fixtures, source_events

pytestmark = pytest.mark.anyio


def hook_input(name: str, home: Path) -> str:
    data = json.loads((FIXTURES / "hooks" / name).read_text())
    data["transcript_path"] = data["transcript_path"].replace("~", str(home))
    return json.dumps(data)


def run_hook(
    env: dict, root: Path, stdin: str, *extra: str, foreground: bool = True
) -> subprocess.CompletedProcess:
    """The hook as Claude Code runs it; ``foreground`` waits for its ingest (a detached
    child does it otherwise)."""
    return subprocess.run(
        [PYTHON, *extra, "-m", "threadloom", "hook", "claude-code", "--root", str(root)],
        input=stdin,
        env={**env, "THREADLOOM_HOOK_FOREGROUND": "1"} if foreground else env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def transcript(home: Path) -> Path:
    return home / ".claude" / "projects" / "-home-dev-demo" / f"{CLAUDE_SESSION}.jsonl"


def setup_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    src = copy_fixtures("claude-code", tmp_path)
    (home / ".claude").mkdir(parents=True)
    (src / "projects").rename(home / ".claude" / "projects")
    return home


async def test_the_hook_ingests_the_session_incrementally_and_quietly(tmp_path: Path, cli_env: dict) -> None:
    home = setup_home(tmp_path)
    path = transcript(home)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:7]))
    root = tmp_path / "root"
    first = run_hook(cli_env, root, hook_input("claude-code-post-tool-use.json", home))
    assert first.returncode == 0 and first.stdout == ""
    async with open_root(root) as svc:
        (thread,) = await svc.all_threads()
        assert thread.status == "running"  # a live session is not finished by its age
        assert [e["type"] for e in await source_events(svc, thread.thread_id)][:5] == [
            "message",
            "x-thinking",
            "message",
            "tool_use",
            "tool_result",
        ]
    with open(path, "ab") as f:
        f.write(b"".join(lines[7:]))
    end = run_hook(cli_env, root, hook_input("claude-code-session-end.json", home))
    assert end.returncode == 0 and end.stdout == ""
    async with open_root(root) as svc:
        threads = {t.thread_id: t for t in await svc.all_threads()}
        assert len([t for t in threads.values() if not t.parent_id]) == 2  # the compaction's link
        last = next(t for t in threads.values() if t.continuation_of)
        assert last.status == "completed"  # SessionEnd ends it
        texts = [e.get("text") for e in await source_events(svc, last.thread_id)]
        assert "Both the parser and the CSV writer handle quoted commas now. " in texts
        kids = [t for t in threads.values() if t.parent_id]
        # the subagent beside the session is picked up and ended with it
        assert [(k.metadata["subagent_id"], k.status) for k in kids] == [("a1b2c3", "completed")]
    log = (root / "ingest" / "hook.log").read_text()
    assert f"{CLAUDE_SESSION}.jsonl:15" in log  # the malformed line is logged with file:line


@pytest.mark.parametrize(
    "stdin",
    [
        "this is not json",
        "[1, 2]",
        '{"hook_event_name": "Stop"}',
        '{"transcript_path": "/nonexistent/x.jsonl"}',
        "",
    ],
)
def test_broken_input_still_exits_0_and_is_logged(tmp_path: Path, cli_env: dict, stdin: str) -> None:
    root = tmp_path / "root"
    for foreground in (True, False):  # bad input is refused before anything is detached
        res = run_hook(cli_env, root, stdin, foreground=foreground)
        assert res.returncode == 0 and res.stdout == ""
    assert len((root / "ingest" / "hook.log").read_text().strip().splitlines()) >= 2


async def test_by_default_the_hook_returns_and_a_detached_process_ingests(
    tmp_path: Path, cli_env: dict
) -> None:
    home = setup_home(tmp_path)
    root = tmp_path / "root"
    res = run_hook(cli_env, root, hook_input("claude-code-session-end.json", home), foreground=False)
    assert res.returncode == 0 and res.stdout == ""
    deadline = time.monotonic() + 120  # a bound for a loaded machine, not a speed check
    while time.monotonic() < deadline:
        state = (
            list((root / "ingest" / "state").glob("*.json")) if (root / "ingest" / "state").is_dir() else []
        )
        if state and json.loads(state[0].read_text()).get("completed"):
            break
        time.sleep(0.2)
    async with open_root(root) as svc:
        threads = await svc.all_threads()
        assert any(t.continuation_of and t.status == "completed" for t in threads)


def test_an_unknown_tool_exits_0_and_is_logged(tmp_path: Path, cli_env: dict) -> None:
    root = tmp_path / "root"
    res = subprocess.run(
        [PYTHON, "-m", "threadloom", "hook", "cursor", "--root", str(root)],
        input="{}",
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and "claude-code only" in (root / "ingest" / "hook.log").read_text()


def test_the_hook_imports_neither_the_mcp_sdk_nor_the_cli_libraries(tmp_path: Path, cli_env: dict) -> None:
    home = setup_home(tmp_path)
    res = run_hook(
        cli_env, tmp_path / "root", hook_input("claude-code-post-tool-use.json", home), "-X", "importtime"
    )
    assert res.returncode == 0
    modules = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if "|" in line}
    assert "threadloom.ingest.hook" in modules and "threadloom.service" in modules
    assert not {m for m in modules if m == "mcp" or m.startswith("mcp.")}
    assert not {m for m in modules if m.split(".")[0] in ("typer", "rich", "uvicorn", "starlette")}
