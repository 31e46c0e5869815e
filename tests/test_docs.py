"""The front door stays true: README names every tool, the CLI explains itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import PYTHON
from threadloom.mcp_server import build_server
from threadloom.service import ThreadService
from threadloom.store import MemoryStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.anyio
async def test_every_tool_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    server = build_server(ThreadService(MemoryStore()))
    tools = await server.list_tools()
    assert tools
    for tool in tools:
        assert f"`{tool.name}(" in readme, f"README lacks a row for {tool.name}"
        assert tool.description


def test_readme_quick_start_has_the_two_commands_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "python3 dev.py serve" in readme and "python3 dev.py test" in readme
    assert "python3 dev.py test" in (ROOT / ".ci" / "run").read_text()


def test_cli_help_reads_well(cli_env: dict) -> None:
    out = subprocess.run(
        [PYTHON, "-m", "threadloom", "--help"], env=cli_env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "serve" in out.stdout
    out = subprocess.run(
        [PYTHON, "-m", "threadloom", "serve", "--help"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "--http" in out.stdout and "--token" in out.stdout
