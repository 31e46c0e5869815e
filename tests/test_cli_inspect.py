"""The operator's read commands (ls, show, tail, search) on a root filled through the service."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from cli_helpers import cli, cli_json, populate, runner
from threadloom.cli import app
from threadloom.service import ThreadService


@pytest.fixture
def run_root(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "root"
    return root, anyio.run(populate, root)


def test_ls_json_lists_every_thread_newest_first_with_context(run_root: tuple[Path, dict[str, str]]) -> None:
    root, ids = run_root
    got = cli_json(root, "ls")
    listed = [t["thread_id"] for t in got["threads"]]
    assert sorted(listed) == sorted(ids.values())
    created = [t["created_at"] for t in got["threads"]]
    assert created == sorted(created, reverse=True)
    by_id = {t["thread_id"]: t for t in got["threads"]}
    assert by_id[ids["b"]]["status"] == "error" and by_id[ids["b"]]["result"] == {"failed": 3}
    assert by_id[ids["a"]]["context"]["used"] == 1200  # the reported input_tokens win over text // 4
    assert got["more"] is False


@pytest.mark.parametrize(
    ("flags", "expect"),
    [
        (["--status", "error"], ["b"]),
        (["--agent", "nobody"], []),
        (["--limit", "1"], ["a2"]),
    ],
)
def test_ls_filters_by_status_agent_and_limit(
    run_root: tuple[Path, dict[str, str]], flags: list[str], expect: list[str]
) -> None:
    root, ids = run_root
    got = cli_json(root, "ls", *flags)
    assert [t["thread_id"] for t in got["threads"]] == [ids[k] for k in expect]


def test_ls_parent_lists_the_children(run_root: tuple[Path, dict[str, str]]) -> None:
    root, ids = run_root
    got = cli_json(root, "ls", "--parent", ids["parent"])
    assert {t["thread_id"] for t in got["threads"]} == {ids["a"], ids["a2"], ids["b"]}


def test_ls_human_output_is_a_table_naming_each_thread(run_root: tuple[Path, dict[str, str]]) -> None:
    root, ids = run_root
    res = cli(root, "ls")
    assert res.exit_code == 0
    for tid in ids.values():
        assert tid in res.stdout
    assert "run the tests" in res.stdout and "error" in res.stdout


def test_show_json_has_manifest_chain_parent_children_and_last_events(
    run_root: tuple[Path, dict[str, str]],
) -> None:
    root, ids = run_root
    got = cli_json(root, "show", ids["a"], "--events", "3")
    assert got["thread"]["thread_id"] == ids["a"] and got["thread"]["status"] == "continued"
    assert [t["thread_id"] for t in got["chain"]] == [ids["a"], ids["a2"]]
    assert got["chain"][0]["continuation_thread_id"] == ids["a2"]
    assert got["parent"]["thread_id"] == ids["parent"]
    assert [e["seq"] for e in got["events"]] == [
        got["thread"]["event_count"] - 2,
        got["thread"]["event_count"] - 1,
        got["thread"]["event_count"],
    ]
    assert (
        got["events"][-1]["type"] == "checkpoint" and got["events"][-2]["type"] == "handoff"
    )  # ended transcripts end signed
    parent = cli_json(root, "show", ids["parent"])
    assert {t["thread_id"] for t in parent["children"]} == {ids["a"], ids["a2"], ids["b"]}


def test_show_human_output_draws_the_chain_with_its_link(run_root: tuple[Path, dict[str, str]]) -> None:
    root, ids = run_root
    res = cli(root, "show", ids["a2"])
    assert res.exit_code == 0
    assert f"handoff from {ids['a']}" in res.stdout
    assert f"parent {ids['parent']}" in res.stdout
    assert "docs deployed" in res.stdout


def test_tail_json_prints_one_event_per_line(run_root: tuple[Path, dict[str, str]]) -> None:
    root, ids = run_root
    res = cli(root, "tail", ids["a"], "--json", "-n", "0")
    assert res.exit_code == 0
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["event"]["seq"] for r in lines] == list(range(1, len(lines) + 1))
    assert {r["thread_id"] for r in lines} == {ids["a"]}
    assert lines[2]["event"] == {**lines[2]["event"], "type": "tool_use", "name": "sh"}
    last2 = [
        json.loads(line)["event"]["seq"]
        for line in cli(root, "tail", ids["a"], "--json", "-n", "2").stdout.splitlines()
    ]
    assert last2 == [len(lines) - 1, len(lines)]


def test_tail_human_output_summarises_each_event(run_root: tuple[Path, dict[str, str]]) -> None:
    root, ids = run_root
    res = cli(root, "tail", ids["a"])
    assert res.exit_code == 0
    assert "user: build the docs" in res.stdout
    assert "sh(" in res.stdout and "make docs" in res.stdout
    assert f"handed off to {ids['a2']}" in res.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "xyz"], "12 lowercase hex digits"),
        (["show", "0123456789ab"], "does not exist"),
        (["tail", "0123456789ab"], "does not exist"),
        (["ls", "--status", "sleeping"], "status must be one of"),
        (["ls", "--parent", "nope"], "12 lowercase hex digits"),
    ],
)
def test_bad_input_is_one_line_and_a_nonzero_exit(
    run_root: tuple[Path, dict[str, str]], args: list[str], message: str
) -> None:
    root, _ = run_root
    res = cli(root, *args)
    assert res.exit_code != 0
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert res.stdout == ""


@pytest.mark.parametrize(
    "command",
    [
        ["ls"],
        ["show", "0123456789ab"],
        ["tail", "0123456789ab"],
        ["gc", "--older-than", "1d"],
        ["export", "--all"],
        ["delete", "0123456789ab", "--yes"],
    ],
)
def test_a_missing_root_is_refused_and_not_created(tmp_path: Path, command: list[str]) -> None:
    root = tmp_path / "nowhere"
    res = cli(root, *command)
    assert res.exit_code == 1
    assert "no threadloom data at" in res.stderr and "--root" in res.stderr
    assert not root.exists()


def test_every_command_has_help_that_names_its_options() -> None:
    from typer.main import get_command

    group = get_command(app)
    commands = group.commands  # type: ignore[attr-defined]
    for name in ("ls", "show", "tail", "search", "export", "import", "gc", "doctor", "delete", "serve"):
        assert name in commands, name
        assert commands[name].help, f"{name} has no help"
        res = cli(Path("."), name, "--help")
        assert res.exit_code == 0, name
        if name != "serve":
            assert "--json" in res.stdout, name
        assert "--root" in res.stdout, name
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    for name in ("Inspect", "Move data", "Maintain", "Serve"):
        assert name in top.stdout


def test_read_commands_do_not_import_mcp(run_root: tuple[Path, dict[str, str]], cli_env: dict) -> None:
    import subprocess

    from conftest import PYTHON

    root, ids = run_root
    code = (
        "import sys; from threadloom.cli import main; "
        f"rc = main(['ls', '--root', {str(root)!r}, '--json']); "
        "assert 'mcp' not in sys.modules, 'mcp was imported'; sys.exit(rc)"
    )
    out = subprocess.run([PYTHON, "-c", code], env=cli_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["threads"]


@pytest.mark.skipif(not hasattr(ThreadService, "search_threads"), reason="this build has no search index")
def test_search_json_finds_a_message_across_threads(run_root: tuple[Path, dict[str, str]]) -> None:
    root, ids = run_root
    got = cli_json(root, "search", "deployed")
    assert got["results"] and got["results"][0]["thread_id"] == ids["a2"]
    chain = cli_json(root, "search", "docs", "--chain", ids["a"])
    assert {r["thread_id"] for r in chain["results"]} <= {ids["a"], ids["a2"]}


def test_search_refuses_regex_without_a_chain(run_root: tuple[Path, dict[str, str]]) -> None:
    root, _ = run_root
    res = cli(root, "search", "a.*b", "--regex")
    assert res.exit_code != 0 and "--chain" in res.stderr
