"""`threadloom install` / `uninstall` into a temporary HOME (and project) for every client:
other servers, settings and comments survive, a second run changes nothing, --dry-run writes
nothing, a backup is kept, a malformed file is refused; the written command then starts from
another directory and answers tools/list over stdio."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from threadloom.cli import app

runner = CliRunner()
CLIENTS = ["claude-code", "claude-desktop", "codex", "cursor", "vscode", "gemini-cli"]
OTHER = {"type": "stdio", "command": "other-server", "args": ["--flag"], "env": {"KEY": "v"}}
CODEX_SEED = """# my Codex settings
model = "o3"  # the model I like

[mcp_servers.other]
# a server of mine
command = "other-server"
args = ["--flag"]

[profiles.fast]
model = "o4-mini"
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "CODEX_HOME", "CLAUDE_CONFIG_DIR", "APPDATA"):
        monkeypatch.delenv(var, raising=False)
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    return home


def user_config(home: Path, client: str) -> Path:
    return {
        "claude-code": home / ".claude.json",
        "claude-desktop": home / ".config" / "Claude" / "claude_desktop_config.json",
        "codex": home / ".codex" / "config.toml",
        "cursor": home / ".cursor" / "mcp.json",
        "vscode": home / ".config" / "Code" / "User" / "mcp.json",
        "gemini-cli": home / ".gemini" / "settings.json",
    }[client]


def seed(path: Path, client: str) -> str:
    """Write a config with another server and other settings (4-space JSON); return its text."""
    if client == "codex":
        text = CODEX_SEED
    else:
        key = "servers" if client == "vscode" else "mcpServers"
        data: dict[str, Any] = {"theme": "dark", key: {"other": OTHER}, "zlast": [1, 2, "é"]}
        text = json.dumps(data, indent=4, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return text


def servers_of(path: Path, client: str) -> dict[str, Any]:
    """The servers the client would read, parsed independently of threadloom's code."""
    if client == "codex":
        return tomllib.loads(path.read_text())["mcp_servers"]
    return json.loads(path.read_text())["servers" if client == "vscode" else "mcpServers"]


def run(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def backups(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".threadloom-backup-*"))


@pytest.mark.parametrize("client", CLIENTS)
def test_install_merges_keeps_the_rest_and_is_idempotent(home: Path, client: str) -> None:
    path = user_config(home, client)
    original = seed(path, client)

    res = run("install", client, "--json")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["changed"] and report["files"][0]["path"] == str(path)

    servers = servers_of(path, client)
    assert list(servers) == ["other", "threadloom"]  # nothing dropped or reordered
    assert servers["other"] == (
        OTHER if client != "codex" else {"command": "other-server", "args": ["--flag"]}
    )
    ours = servers["threadloom"]
    assert Path(ours["command"]).is_absolute()
    assert ours["args"][-3:] == ["serve", "--root", str(home / ".local" / "share" / "threadloom")]
    if client in {"vscode", "claude-code"}:
        assert ours["type"] == "stdio"
    text = path.read_text()
    if client == "codex":
        for kept in ("# my Codex settings", "# the model I like", "# a server of mine", "[profiles.fast]"):
            assert kept in text
        assert tomllib.loads(text)["profiles"] == {"fast": {"model": "o4-mini"}}
    else:
        data = json.loads(text)
        assert list(data) == ["theme", "servers" if client == "vscode" else "mcpServers", "zlast"]
        assert data["zlast"] == [1, 2, "é"] and "é" in text
        assert '\n    "theme"' in text  # the file's 4-space indentation is kept

    (backup,) = backups(path)
    assert backup.read_text() == original

    again = run("install", client, "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["changed"] is False
    assert path.read_text() == text and len(backups(path)) == 1

    gone = run("uninstall", client)
    assert gone.exit_code == 0, gone.stderr
    assert path.read_text() == original  # only our entry went
    assert run("uninstall", client).exit_code == 0  # a second uninstall is not an error
    assert path.read_text() == original


@pytest.mark.parametrize("client", CLIENTS)
def test_dry_run_prints_the_diff_and_writes_nothing(home: Path, client: str) -> None:
    res = run("install", client, "--dry-run")
    assert res.exit_code == 0, res.stderr
    assert "+++ " in res.stdout and "threadloom" in res.stdout and "serve" in res.stdout
    assert not user_config(home, client).exists()
    assert not any(p.is_file() for p in home.rglob("*"))

    path = user_config(home, client)
    original = seed(path, client)
    res = run("install", client, "--dry-run", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["files"][0]["diff"].startswith("--- ")
    assert path.read_text() == original and not backups(path)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_malformed_config_is_refused_and_left_alone(home: Path, client: str) -> None:
    path = user_config(home, client)
    path.parent.mkdir(parents=True, exist_ok=True)
    broken = (
        '[mcp_servers.other\ncommand = "x"\n'
        if client == "codex"
        else '{"mcpServers": {"other": {"command": "x",}\n'
    )
    path.write_text(broken)
    res = run("install", client)
    assert res.exit_code == 1
    assert str(path) in res.stderr and "[config_malformed]" in res.stderr
    assert ("TOML" if client == "codex" else "JSON") in res.stderr
    assert path.read_text() == broken and not backups(path)
    res = run("uninstall", client)
    assert res.exit_code == 1 and str(path) in res.stderr and path.read_text() == broken


def test_a_hand_formatted_file_keeps_its_layout(home: Path) -> None:
    path = user_config(home, "cursor")
    path.parent.mkdir(parents=True)
    hand = (
        '{\n  "mcpServers": {\n    "github": { "command": "npx", "args": ["-y", "@x/server-github"] }\n  },\n'
        '  "editor.fontSize": 14\n}\n'
    )
    path.write_text(hand)
    assert run("install", "cursor").exit_code == 0
    text = path.read_text()
    assert text.startswith(
        '{\n  "mcpServers": {\n    "github": { "command": "npx", "args": ["-y", "@x/server-github"] },\n'
    )
    assert text.endswith('  },\n  "editor.fontSize": 14\n}\n')
    assert '\n    "threadloom": {\n      "command": ' in text  # indented like its neighbours
    assert list(json.loads(text)["mcpServers"]) == ["github", "threadloom"]
    assert run("uninstall", "cursor").exit_code == 0
    assert path.read_text() == hand


def test_a_config_with_comments_is_refused_with_the_entry_to_add_by_hand(home: Path) -> None:
    path = user_config(home, "vscode")
    path.parent.mkdir(parents=True)
    jsonc = '{\n  // my servers\n  "servers": {},\n}\n'
    path.write_text(jsonc)
    res = run("install", "vscode")
    assert res.exit_code == 1 and "comments" in res.stderr and '"threadloom"' in res.stderr
    assert path.read_text() == jsonc


def test_a_wrong_shape_is_refused(home: Path) -> None:
    path = user_config(home, "cursor")
    path.parent.mkdir(parents=True)
    path.write_text('{"mcpServers": ["not", "an", "object"]}')
    res = run("install", "cursor")
    assert res.exit_code == 1 and "[config_shape]" in res.stderr and str(path) in res.stderr


@pytest.mark.parametrize(
    ("client", "relative"),
    [
        ("claude-code", ".mcp.json"),
        ("codex", ".codex/config.toml"),
        ("cursor", ".cursor/mcp.json"),
        ("vscode", ".vscode/mcp.json"),
        ("gemini-cli", ".gemini/settings.json"),
    ],
)
def test_project_scope_writes_into_the_project(
    home: Path, tmp_path: Path, client: str, relative: str
) -> None:
    root = tmp_path / "data"
    res = run("install", client, "--scope", "project", "--root", str(root))
    assert res.exit_code == 0, res.stderr
    ours = servers_of(tmp_path / "project" / relative, client)["threadloom"]
    assert ours["args"][-3:] == ["serve", "--root", str(root)]
    assert not any(p.is_file() for p in home.rglob("*"))


def test_claude_desktop_has_no_project_scope_and_unknown_clients_are_named(home: Path) -> None:
    res = run("install", "claude-desktop", "--scope", "project")
    assert res.exit_code == 2 and "[scope]" in res.stderr and "user" in res.stderr
    res = run("install", "notepad")
    assert res.exit_code == 2 and "[client]" in res.stderr and "gemini-cli" in res.stderr
    res = run("install", "cursor", "--hooks")
    assert res.exit_code == 2 and "[hooks]" in res.stderr


def test_codex_home_is_respected(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODEX_HOME", str(tmp_path / "codex-home"))
    assert run("install", "codex").exit_code == 0
    assert "threadloom" in servers_of(tmp_path / "codex-home" / "config.toml", "codex")


def test_list_shows_presence_and_configuration(home: Path) -> None:
    seed(user_config(home, "gemini-cli"), "gemini-cli")
    assert run("install", "cursor").exit_code == 0
    res = run("install", "--list", "--json")
    assert res.exit_code == 0
    clients = {c["client"]: c for c in json.loads(res.stdout)["clients"]}
    assert set(clients) == set(CLIENTS)
    assert clients["cursor"]["present"] and clients["cursor"]["configured"]
    assert clients["cursor"]["scopes"]["user"]["configured"]
    assert clients["gemini-cli"]["present"] and not clients["gemini-cli"]["configured"]
    assert not clients["claude-desktop"]["present"]
    human = run("install", "--list")
    assert human.exit_code == 0 and "configured" in human.stdout and "cursor" in human.stdout


def test_install_says_when_the_client_is_not_installed(home: Path) -> None:
    res = run("install", "claude-desktop")
    assert res.exit_code == 0 and "Claude Desktop does not look installed" in res.stderr
    (home / ".gemini").mkdir()
    res = run("install", "gemini-cli")
    assert res.exit_code == 0 and "does not look installed" not in res.stderr


# ------------------------------------------------------------------ Claude Code hooks

HOOK_EVENTS = [
    "SessionStart",
    "UserPromptSubmit",
    "PostToolUse",
    "Stop",
    "SubagentStop",
    "PreCompact",
    "SessionEnd",
]
USER_HOOK = {"type": "command", "command": "echo mine"}


def test_hooks_are_merged_idempotently_and_uninstall_takes_only_ours(home: Path) -> None:
    settings = home / ".claude" / "settings.json"
    settings.parent.mkdir()
    seeded = {
        "model": "opus",
        "hooks": {
            "PostToolUse": [{"matcher": "Bash", "hooks": [USER_HOOK]}],
            "Notification": [{"hooks": [USER_HOOK]}],
        },
    }
    original = json.dumps(seeded, indent=2) + "\n"
    settings.write_text(original)

    res = run("install", "claude-code", "--hooks", "--json")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    command = report["hook_command"]
    assert command.split()[0] == report["command"][0] and command.endswith(
        "hook claude-code --root " + str(home / ".local" / "share" / "threadloom")
    )
    data = json.loads(settings.read_text())
    assert data["model"] == "opus"
    assert list(data["hooks"])[:2] == ["PostToolUse", "Notification"]
    for event in HOOK_EVENTS:
        ours = [h for g in data["hooks"][event] for h in g["hooks"] if h["command"] == command]
        assert ours == [{"type": "command", "command": command}], event
    assert data["hooks"]["PostToolUse"][0] == {"matcher": "Bash", "hooks": [USER_HOOK]}
    assert data["hooks"]["PostToolUse"][1]["matcher"] == "*"
    assert data["hooks"]["Notification"] == [{"hooks": [USER_HOOK]}]
    assert "threadloom" in servers_of(home / ".claude.json", "claude-code")
    assert len(backups(settings)) == 1

    before = settings.read_text()
    again = run("install", "claude-code", "--hooks", "--json")
    assert json.loads(again.stdout)["changed"] is False and settings.read_text() == before

    listed = json.loads(run("install", "--list", "--json").stdout)["clients"][0]
    assert listed["scopes"]["user"]["hooks"] == list(json.loads(before)["hooks"])[:1] + [
        e for e in HOOK_EVENTS if e != "PostToolUse"
    ]

    assert run("uninstall", "claude-code").exit_code == 0
    assert settings.read_text() == original
    assert "threadloom" not in servers_of(home / ".claude.json", "claude-code")


def test_hooks_in_project_settings(home: Path, tmp_path: Path) -> None:
    res = run("install", "claude-code", "--hooks", "--scope", "project")
    assert res.exit_code == 0, res.stderr
    data = json.loads((tmp_path / "project" / ".claude" / "settings.json").read_text())
    assert sorted(data["hooks"]) == sorted(HOOK_EVENTS)
    assert "threadloom" in servers_of(tmp_path / "project" / ".mcp.json", "claude-code")


def test_a_malformed_settings_file_stops_the_install_before_anything_is_written(home: Path) -> None:
    settings = home / ".claude" / "settings.json"
    settings.parent.mkdir()
    settings.write_text("{nope")
    res = run("install", "claude-code", "--hooks")
    assert res.exit_code == 1 and str(settings) in res.stderr
    assert not (home / ".claude.json").exists() and settings.read_text() == "{nope"


# ------------------------------------------------------------------ the written command runs


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("client", CLIENTS)
async def test_the_installed_command_answers_tools_list_from_another_directory(
    home: Path, tmp_path: Path, client: str
) -> None:
    from mcp import Client, StdioServerParameters

    assert run("install", client).exit_code == 0
    entry = servers_of(user_config(home, client), client)["threadloom"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", **entry.get("env", {})}
    if os.name == "nt":
        env["SYSTEMROOT"] = os.environ.get("SYSTEMROOT", "")
    params = StdioServerParameters(command=entry["command"], args=entry["args"], env=env, cwd=str(elsewhere))
    async with Client(params) as mcp_client:
        tools = await mcp_client.list_tools()
    assert "create_thread" in {t.name for t in tools.tools}
    assert (home / ".local" / "share" / "threadloom" / "threads.db").exists()  # the shared per-user root
    assert not (elsewhere / ".threadloom").exists()


# ------------------------------------------------------------------ the launcher


def test_the_launcher_is_this_installation_by_absolute_path(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from threadloom.install.launch import find_launcher, is_threadloom_command

    monkeypatch.delenv("PYTHONPATH", raising=False)
    launcher = find_launcher()
    assert Path(launcher.command).is_absolute() and not launcher.env
    script = Path(sys.executable).parent / "threadloom"
    if script.exists():
        assert launcher.argv == (str(script),)
    else:
        assert launcher.argv == (sys.executable, "-m", "threadloom")
    assert is_threadloom_command(list(launcher.argv))


def test_a_source_checkout_on_pythonpath_is_carried_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import shlex
    import sys

    import threadloom
    from threadloom.install.launch import find_launcher, is_threadloom_command

    source = str(Path(threadloom.__file__).resolve().parent.parent)
    monkeypatch.setenv("PYTHONPATH", source)
    launcher = find_launcher()
    assert launcher.argv == (str(Path(sys.executable).absolute()), "-m", "threadloom")
    assert launcher.env == {"PYTHONPATH": source}
    line = launcher.shell("hook", "claude-code", "--root", "/a b")
    assert line.startswith("PYTHONPATH=") and shlex.split(line)[-1] == "/a b"
    assert is_threadloom_command(shlex.split(line))
    assert not is_threadloom_command(["python", "-m", "other"]) and not is_threadloom_command(["echo"])


@pytest.mark.parametrize(
    "seeded",
    [
        'mcp_servers.foo.command = "x"\nmodel = "o3"\n',  # dotted keys: tomlkit would nest model under ours
        'mcp_servers = { foo = { command = "x" } }\nmodel = "o3"\n',
        '[mcp_servers.foo]\ncommand = "x"\n\n[profiles.p]\nmodel = "m"\n\n[mcp_servers.bar]\ncommand = "y"\n',
    ],
)
def test_codex_layouts_keep_every_other_setting_where_it_was(home: Path, seeded: str) -> None:
    path = user_config(home, "codex")
    path.parent.mkdir(parents=True)
    path.write_text(seeded)
    before = tomllib.loads(seeded)
    assert run("install", "codex").exit_code == 0
    after = tomllib.loads(path.read_text())
    ours = after["mcp_servers"].pop("threadloom")
    assert ours["args"][0] == "serve" and set(ours) == {"command", "args"}
    assert after == before
    assert run("uninstall", "codex").exit_code == 0
    assert tomllib.loads(path.read_text()) == before
