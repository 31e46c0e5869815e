"""verify_thread over MCP and ``threadloom verify`` on the command line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from mcp import Client

from conftest import PYTHON
from integrity_helpers import lines_of, transcript, write_lines, written_thread
from threadloom.config import Settings
from threadloom.mcp_server import build_server
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_the_tool_reports_ok_for_an_intact_thread(service: ThreadService, mode: str) -> None:
    tid = await written_thread(service, turns=1)
    async with Client(build_server(service), mode=mode) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert tools["verify_thread"].annotations.read_only_hint is True
        r = await c.call_tool("verify_thread", {"thread_id": tid})
    assert not r.is_error, r.content
    out = r.structured_content
    assert out is not None and out["ok"] is True and out["problems"] == []
    assert out["checkpoints"] == 2


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_the_tool_reports_the_first_bad_line_of_a_tampered_thread(
    settings: Settings, mode: str
) -> None:
    async with ThreadService(SQLiteStore(settings.root, durability="normal"), settings) as svc:
        tid = await written_thread(svc)
        path = transcript(settings.root, tid)
        lines = lines_of(path)
        del lines[7]
        write_lines(path, lines)
        async with Client(build_server(svc), mode=mode) as c:
            r = await c.call_tool("verify_thread", {"thread_id": tid})
    out = r.structured_content
    assert out is not None and out["ok"] is False
    assert out["first_bad_line"] == 8
    first = out["problems"][0]
    assert (first["line"], first["source"], first["rule"]) == (8, "transcript", "line_differs")
    assert "line 8" in first["message"]


async def test_the_tool_refuses_a_bad_thread_id(service: ThreadService) -> None:
    async with Client(build_server(service)) as c:
        r = await c.call_tool("verify_thread", {"thread_id": "../etc"})
        missing = await c.call_tool("verify_thread", {"thread_id": "0123456789ab"})
    assert r.is_error and "thread_id_format" in r.content[0].text  # type: ignore[union-attr]
    assert missing.is_error and "does not exist" in missing.content[0].text  # type: ignore[union-attr]


def run_cli(args: list[str], env: dict) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "threadloom", *args], env=env, capture_output=True, text=True, timeout=120
    )


async def _two_threads(root: Path) -> tuple[str, str]:
    async with ThreadService(SQLiteStore(root, durability="normal"), Settings(root=root)) as svc:
        good = await written_thread(svc, turns=1)
        bad = await written_thread(svc, turns=1)
    path = transcript(root, bad)
    write_lines(path, lines_of(path)[:-3])
    return good, bad


async def test_cli_verify_one_thread_prints_json(settings: Settings, cli_env: dict) -> None:
    good, bad = await _two_threads(settings.root)
    ok = run_cli(["verify", good, "--json"], cli_env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    failed = run_cli(["verify", bad, "--json"], cli_env)
    assert failed.returncode == 1
    report = json.loads(failed.stdout)
    assert report["ok"] is False and report["problems"][0]["rule"] == "truncated"


async def test_cli_verify_all_lists_the_broken_threads(settings: Settings, cli_env: dict) -> None:
    good, bad = await _two_threads(settings.root)
    out = run_cli(["verify", "--all"], cli_env)
    assert out.returncode == 1
    assert "2 thread(s) verified: 1 intact, 1 with problems" in out.stdout
    assert f"{bad}: " in out.stdout and "transcript:" in out.stdout
    assert good not in out.stdout
    as_json = json.loads(run_cli(["verify", "--all", "--json"], cli_env).stdout)
    assert (as_json["threads"], as_json["failed"], as_json["ok"]) == (2, 1, False)
    assert {r["thread_id"]: r["ok"] for r in as_json["reports"]} == {good: True, bad: False}


def test_cli_verify_needs_an_id_or_all(tmp_path: Path, cli_env: dict) -> None:
    out = run_cli(["verify"], cli_env)
    assert out.returncode == 2 and "give a thread id or --all" in out.stderr
    assert run_cli(["verify", "--help"], cli_env).returncode == 0
