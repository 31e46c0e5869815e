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


def test_readme_cli_list_names_every_command() -> None:
    import re

    import typer

    from threadloom.cli import app

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Operator CLI", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    listed = set(re.findall(r"^threadloom ([a-z][a-z-]*)", block, re.M))
    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    missing = sorted(commands - listed)
    assert not missing, (
        f"README's Operator CLI list lacks {missing}: add a `threadloom COMMAND ...` line for each "
        "to the code block under '## Operator CLI'"
    )
    assert not listed - commands, f"README lists commands that do not exist: {sorted(listed - commands)}"
