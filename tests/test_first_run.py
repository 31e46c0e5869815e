"""What a new user meets first: dev.py installs only what a command needs and says so, the
repository's mcp.json works from another project, an uncreatable root is named with the way
out, reindex speaks JSON like every other command."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import PYTHON
from threadloom.cli import app

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ dev.py


@pytest.fixture
def devpy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, list[list[str]]]:
    """dev.py loaded with its venv in tmp and pip replaced by a recorder."""
    spec = importlib.util.spec_from_file_location("devpy_under_test", ROOT / "dev.py")
    assert spec and spec.loader
    dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dev)
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    monkeypatch.setattr(dev, "VENV", venv)
    monkeypatch.setattr(dev, "PY", venv / "bin" / "python")
    monkeypatch.setattr(dev, "STAMP", venv / ".threadloom-install")
    calls: list[list[str]] = []

    def pip(cmd: list[str], **kw: Any) -> int:
        assert kw.get("stdout") is sys.stderr  # stdout belongs to the MCP protocol
        calls.append(cmd)
        return 0

    monkeypatch.setattr(dev.subprocess, "call", pip)
    return dev, calls


def test_serve_installs_without_the_test_tools_and_says_so(devpy: Any, capsys: pytest.CaptureFixture) -> None:
    dev, calls = devpy
    dev.ensure_venv("serve")
    (cmd,) = calls
    assert cmd[-2:] == ["-e", str(ROOT)] and "--quiet" not in cmd
    err = capsys.readouterr().err
    assert "installing threadloom into" in err and "installed threadloom" in err
    assert capsys.readouterr().out == ""
    dev.ensure_venv("serve")
    assert len(calls) == 1  # stamped: nothing to do


def test_test_adds_the_test_extra_once_and_then_serve_is_satisfied(devpy: Any) -> None:
    dev, calls = devpy
    dev.ensure_venv("serve")
    dev.ensure_venv("test")
    assert calls[1][-1] == f"{ROOT}[test]"
    dev.ensure_venv("test")
    dev.ensure_venv("serve")
    assert len(calls) == 2


def test_a_changed_pyproject_installs_again_and_old_stamps_count_as_test(devpy: Any) -> None:
    dev, calls = devpy
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    dev.STAMP.write_text(digest)  # written by dev.py before it knew levels: it installed [test]
    dev.ensure_venv("test")
    assert calls == []
    dev.STAMP.write_text("0" * 64 + " test")
    dev.ensure_venv("serve")
    assert len(calls) == 1 and dev.STAMP.read_text() == f"{digest} serve"


def test_a_failed_install_stops_with_its_exit_code(devpy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    dev, _ = devpy
    monkeypatch.setattr(dev.subprocess, "call", lambda cmd, **kw: 3)
    with pytest.raises(SystemExit, match="exit 3"):
        dev.ensure_venv("serve")
    assert not dev.STAMP.exists()


# ------------------------------------------------------------------ mcp.json, root, reindex


def test_the_repository_mcp_json_needs_no_path_of_this_clone() -> None:
    entry = json.loads((ROOT / "mcp.json").read_text())["mcpServers"]["threadloom"]
    assert entry["command"] == "threadloom" and entry["args"][0] == "serve"
    assert not any("dev.py" in a or a.startswith(".") for a in entry["args"])


def test_mcp_json_copied_into_another_project_starts(tmp_path: Path, cli_env: dict[str, str]) -> None:
    bindir = Path(PYTHON).parent
    if not (bindir / "threadloom").exists():
        pytest.skip("the threadloom console script is not installed beside this interpreter")
    project = tmp_path / "project"
    project.mkdir()
    entry = json.loads((ROOT / "mcp.json").read_text())["mcpServers"]["threadloom"]
    env = {k: v for k, v in cli_env.items() if k != "THREADLOOM_HOME"}
    env["PATH"] = f"{bindir}:/usr/bin:/bin"
    hello = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    out = subprocess.run(
        [entry["command"], *entry["args"]],
        input=json.dumps(hello) + "\n",
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(out.stdout.splitlines()[0])["id"] == 1, out.stderr
    assert (project / ".threadloom" / "threads.db").exists()  # the project's own root


@pytest.mark.parametrize("how", ["flag", "default"])
def test_a_root_that_cannot_be_created_is_named_with_the_way_out(
    tmp_path: Path, cli_env: dict[str, str], how: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {k: v for k, v in cli_env.items() if k != "THREADLOOM_HOME"}
    if how == "flag":
        args, cwd, root = ["--root", "a-file/data"], tmp_path, blocker / "data"
    else:  # ./.threadloom where a file of that name is in the way
        (tmp_path / ".threadloom").write_text("")
        args, cwd, root = [], tmp_path, tmp_path / ".threadloom"
    out = subprocess.run(
        [PYTHON, "-m", "threadloom", "serve", *args],
        input="",
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert f"cannot create the data folder {root}" in out.stderr and "--root" in out.stderr
    assert "Traceback" not in out.stderr and "internal error" not in out.stderr


def test_reindex_takes_json(tmp_path: Path) -> None:
    import anyio

    from threadloom.service import ThreadService
    from threadloom.store import SQLiteStore

    root = tmp_path / "root"

    async def seed() -> None:
        async with ThreadService(SQLiteStore(root, durability="normal")) as svc:
            thread = await svc.create_thread(title="t")
            await svc.append(thread.thread_id, [{"type": "message", "role": "user", "text": "hello there"}])

    anyio.run(seed)
    res = CliRunner().invoke(app, ["reindex", "--root", str(root), "--json"])
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["added"] == 0 and data["removed"] == 0 and data["documents"] >= 1
    assert isinstance(data["seconds"], float)
