"""One unreadable thread (its folder replaced by a file) is a clear problem for that thread; the others are still checked."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from mcp import Client

from cli_helpers import cli, msg
from integrity_helpers import lines_of, transcript, write_lines, written_thread
from threadloom.config import Settings
from threadloom.mcp_server import build_server
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore

pytestmark = pytest.mark.anyio


def service(root: Path) -> ThreadService:
    return ThreadService(SQLiteStore(root, durability="normal"), Settings(root=root, durability="normal"))


async def broken_root(root: Path) -> tuple[str, str, str]:
    """Three threads: one intact, one whose transcript lost its last lines, one whose folder is a file."""
    async with service(root) as svc:
        intact = await written_thread(svc, turns=1)
        behind = await written_thread(svc, turns=1)
        gone = await written_thread(svc, turns=1, complete=False)
    path = transcript(root, behind)
    write_lines(path, lines_of(path)[:-2])
    folder = root / "threads" / gone
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    folder.write_text("not a folder\n")
    return intact, behind, gone


async def test_verify_thread_reports_a_folder_replaced_by_a_file_as_that_threads_problem(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    intact, _behind, gone = await broken_root(root)
    async with service(root) as svc, Client(build_server(svc)) as c:
        r = await c.call_tool("verify_thread", {"thread_id": gone})
        assert not r.is_error, r.content
        out = r.structured_content
        assert out is not None and out["ok"] is False
        [problem] = [p for p in out["problems"] if p["rule"] == "mirror_unreadable"]
        assert f"threads/{gone}" in problem["message"] and "not a folder" in problem["message"]
        ok = await c.call_tool("verify_thread", {"thread_id": intact})
        assert ok.structured_content is not None and ok.structured_content["ok"] is True
        # the thread itself still works: appends are acknowledged (the database is the commit point)
        appended = await c.call_tool("append_event", {"thread_id": gone, "event": msg("still here")})
        assert not appended.is_error, appended.content


async def test_verify_all_goes_on_past_an_unreadable_thread(tmp_path: Path) -> None:
    root = tmp_path / "root"
    intact, behind, gone = await broken_root(root)
    res = await anyio.to_thread.run_sync(lambda: cli(root, "verify", "--all", "--json"))
    assert res.exit_code == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["threads"] == 3
    failed = {r["thread_id"]: r for r in out["reports"] if not r["ok"]}
    assert out["failed"] == 2
    assert set(failed) == {behind, gone}
    assert any(p["rule"] == "mirror_unreadable" for p in failed[gone]["problems"])


async def test_doctor_fix_repairs_the_others_and_sets_the_file_aside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    intact, behind, gone = await broken_root(root)
    report = json.loads((await anyio.to_thread.run_sync(lambda: cli(root, "doctor", "--json"))).stdout)
    [mirrors] = [c for c in report["checks"] if c["name"] == "mirrors" and c["level"] == "problem"]
    assert gone in mirrors["detail"] and behind in mirrors["detail"]
    res = await anyio.to_thread.run_sync(lambda: cli(root, "doctor", "--json", "--fix", "--yes"))
    fixed = json.loads(res.stdout)
    assert [c["level"] for c in fixed["checks"] if c["name"] == "mirrors"] == ["ok"], fixed
    asides = [p for p in (root / "threads").iterdir() if p.name.startswith(f"{gone}.set-aside-")]
    assert len(asides) == 1 and asides[0].read_text() == "not a folder\n"
    async with service(root) as svc:
        for tid in (intact, behind, gone):
            assert (await svc.verify_thread(tid)).ok


async def test_verify_all_reports_a_thread_that_cannot_be_verified_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from threadloom.errors import StoreUnavailableError

    root = tmp_path / "root"
    async with service(root) as svc:
        ids = [await written_thread(svc, turns=1) for _ in range(3)]
    real = ThreadService.verify_thread

    async def flaky(self: ThreadService, thread_id: str):  # type: ignore[no-untyped-def]
        if thread_id == ids[1]:
            raise StoreUnavailableError("read failed: disk I/O error")
        return await real(self, thread_id)

    monkeypatch.setattr(ThreadService, "verify_thread", flaky)
    res = await anyio.to_thread.run_sync(lambda: cli(root, "verify", "--all", "--json"))
    assert res.exit_code == 1 and "Traceback" not in res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["threads"] == 3 and out["failed"] == 1
    [bad] = [r for r in out["reports"] if not r["ok"]]
    assert bad["thread_id"] == ids[1] and bad["problems"][0]["rule"] == "store_unavailable"
