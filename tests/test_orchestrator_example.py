"""examples/orchestrator.py end to end: a parent and three worker processes over real stdio."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from conftest import PYTHON
from threadloom.config import Settings
from threadloom.mcp_server import build_server
from threadloom.models import Status
from threadloom.service import ThreadService
from threadloom.store import MemoryStore, SQLiteStore

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "orchestrator.py"


async def tool_names() -> set[str]:
    return {t.name for t in await build_server(ThreadService(MemoryStore())).list_tools()}


async def run_example(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], str]:
    """Run the example to the end; return its exit code, its JSON outcome and its output."""
    if "wait_threads" not in await tool_names():
        # This branch was cut before wait_threads landed on main (d224fe1); the example needs it.
        pytest.skip("this checkout's server has no wait_threads tool, which the example drives")
    root, out = tmp_path / "root", tmp_path / "outcome.json"
    cmd = [PYTHON, str(EXAMPLE), "--root", str(root), "--json", str(out), "--work-seconds", "0.2", *args]
    with anyio.fail_after(300):  # seven Python processes on a small machine: a bound, not a timing check
        done = await anyio.run_process(cmd, env=env, check=False)
    log = done.stdout.decode() + done.stderr.decode()
    return done.returncode, json.loads(out.read_text()) if out.exists() else {}, log


async def test_the_orchestrator_waits_for_three_worker_processes(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    code, outcome, log = await run_example(tmp_path, cli_env)
    assert code == 0, log
    tools = await tool_names()
    root = tmp_path / "root"
    assert outcome["settled"] is True and outcome["timed_out"] == []
    rows = {row["role"]: row for row in outcome["children"]}
    assert {role: row["status"] for role, row in rows.items()} == {
        "summarise": "completed",
        "fetch": "error",
        "analyse": "completed",
    }
    assert all(row["worker_exit"] == 0 for row in rows.values())
    assert rows["summarise"]["result"] == {"bullets": ["deploy ok", "2 retries", "no rollbacks"]}
    assert rows["fetch"]["status_reason"].startswith("upstream tracker returned HTTP 503")
    handed_off = outcome["handoff_available"]
    assert handed_off == ("handoff_thread" in tools)
    analyse = rows["analyse"]
    assert analyse["result"]["handed_off"] is handed_off
    assert (analyse["resolved_thread_id"] != analyse["thread_id"]) is handed_off
    # progress notifications reached the parent's SDK client, ending with all done
    assert outcome["progress"][-1] == [3, 3]
    assert [p[0] for p in outcome["progress"]] == sorted(p[0] for p in outcome["progress"])
    assert outcome["parent_status"] == "completed"
    assert outcome["parent_result"] == {"completed": 2, "error": 1}

    # the database agrees with what the parent was told
    async with ThreadService(SQLiteStore(root), Settings(root=root)) as svc:
        parent = await svc.get_thread(outcome["parent_thread_id"])
        assert parent.status == Status.COMPLETED
        kids = (await svc.list_threads(parent_id=parent.thread_id)).threads
        assert len(kids) == (4 if handed_off else 3)  # a continuation is a sibling: same parent
        original = await svc.get_thread(analyse["thread_id"])
        if handed_off:
            assert original.status == Status.CONTINUED
            assert original.continuation_thread_id == analyse["resolved_thread_id"]
        end = await svc.chain_end(original)
        assert (end.thread_id, end.status) == (analyse["resolved_thread_id"], Status.COMPLETED)
    assert outcome["children_counts"] == (
        {"completed": 2, "continued": 1, "error": 1} if handed_off else {"completed": 2, "error": 1}
    )


async def test_a_crashed_worker_is_marked_error_by_the_parent_and_the_wait_ends(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    code, outcome, log = await run_example(tmp_path, cli_env, "--crash", "summarise")
    assert code == 1, log  # a child did not end as its role says: the example reports failure
    assert outcome["settled"] is True, log
    rows = {row["role"]: row for row in outcome["children"]}
    crashed = rows["summarise"]
    assert crashed["worker_exit"] == 3
    assert (crashed["status"], crashed["status_reason"]) == ("error", "worker process exited with code 3")
    assert (rows["fetch"]["status"], rows["analyse"]["status"]) == ("error", "completed")
    assert all(rows[r]["worker_exit"] == 0 for r in ("fetch", "analyse"))
