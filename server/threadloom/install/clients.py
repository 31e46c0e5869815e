"""The MCP clients `threadloom install` knows: where each keeps its configuration, in which shape.

Locations (checked against each client's documentation; see docs/install.md):

| client | project scope | user scope | shape |
|---|---|---|---|
| claude-code | ``.mcp.json`` | ``~/.claude.json`` (``$CLAUDE_CONFIG_DIR/.claude.json``) | JSON ``mcpServers`` |
| claude-desktop | (none) | ``claude_desktop_config.json`` in the OS config folder | JSON ``mcpServers`` |
| codex | ``.codex/config.toml`` | ``$CODEX_HOME/config.toml`` (``~/.codex``) | TOML ``[mcp_servers.NAME]`` |
| cursor | ``.cursor/mcp.json`` | ``~/.cursor/mcp.json`` | JSON ``mcpServers`` |
| vscode | ``.vscode/mcp.json`` | ``mcp.json`` in the VS Code user folder | JSON ``servers`` (``type: stdio``) |
| gemini-cli | ``.gemini/settings.json`` | ``~/.gemini/settings.json`` | JSON ``mcpServers`` |

Claude Code hooks live in ``.claude/settings.json`` (project) or ``~/.claude/settings.json`` (user).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import InvalidInputError

Scope = Literal["project", "user"]
Shape = Literal["mcpServers", "servers", "toml"]
SERVER_NAME = "threadloom"


@dataclass(frozen=True)
class Client:
    name: str
    label: str
    shape: Shape
    scopes: tuple[Scope, ...]
    executable: str | None
    """A program on PATH that shows the client is installed."""
    typed: bool = False
    """The entry carries ``"type": "stdio"``."""

    def config_path(self, scope: Scope, project: Path) -> Path:
        if scope not in self.scopes:
            raise InvalidInputError(
                f"[scope] {self.name} has no {scope} configuration; allowed: {', '.join(self.scopes)}",
                rule="scope",
            )
        return _PATHS[self.name](scope, project.absolute())

    def present(self) -> bool:
        """Whether the client looks installed: its user configuration folder exists or its program is on PATH."""
        markers = _MARKERS[self.name]()
        return any(m.exists() for m in markers) or (
            self.executable is not None and shutil.which(self.executable) is not None
        )

    def entry(self, command: str, args: list[str], env: dict[str, str]) -> dict[str, object]:
        """The server entry this client's configuration takes."""
        entry: dict[str, object] = {"type": "stdio"} if self.typed else {}
        entry |= {"command": command, "args": args}
        if env:
            entry["env"] = dict(env)
        return entry


def claude_home() -> Path:
    configured = os.environ.get("CLAUDE_CONFIG_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".claude"


def claude_user_config() -> Path:
    configured = os.environ.get("CLAUDE_CONFIG_DIR")
    return Path(configured).expanduser() / ".claude.json" if configured else Path.home() / ".claude.json"


def claude_settings_path(scope: Scope, project: Path) -> Path:
    """Where Claude Code keeps hooks (settings.json)."""
    return (
        project.absolute() / ".claude" / "settings.json"
        if scope == "project"
        else claude_home() / "settings.json"
    )


def codex_home() -> Path:
    configured = os.environ.get("CODEX_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".codex"


def _os_config_dir(app: str) -> Path:
    """The OS's per-user application config folder: ~/.config/APP, ~/Library/Application Support/APP, %APPDATA%\\APP."""
    import platformdirs

    return Path(platformdirs.user_config_dir(app, appauthor=False, roaming=True))


def vscode_user_dir() -> Path:
    return _os_config_dir("Code") / "User"


_PATHS = {
    "claude-code": lambda s, p: p / ".mcp.json" if s == "project" else claude_user_config(),
    "claude-desktop": lambda s, p: _os_config_dir("Claude") / "claude_desktop_config.json",
    "codex": lambda s, p: p / ".codex" / "config.toml" if s == "project" else codex_home() / "config.toml",
    "cursor": lambda s, p: (
        p / ".cursor" / "mcp.json" if s == "project" else Path.home() / ".cursor" / "mcp.json"
    ),
    "vscode": lambda s, p: p / ".vscode" / "mcp.json" if s == "project" else vscode_user_dir() / "mcp.json",
    "gemini-cli": lambda s, p: (
        p / ".gemini" / "settings.json" if s == "project" else Path.home() / ".gemini" / "settings.json"
    ),
}
_MARKERS = {
    "claude-code": lambda: [claude_user_config(), claude_home()],
    "claude-desktop": lambda: [_os_config_dir("Claude")],
    "codex": lambda: [codex_home()],
    "cursor": lambda: [Path.home() / ".cursor"],
    "vscode": lambda: [vscode_user_dir()],
    "gemini-cli": lambda: [Path.home() / ".gemini"],
}

CLIENTS: dict[str, Client] = {
    c.name: c
    for c in (
        Client("claude-code", "Claude Code", "mcpServers", ("project", "user"), "claude", typed=True),
        Client("claude-desktop", "Claude Desktop", "mcpServers", ("user",), None),
        Client("codex", "Codex CLI", "toml", ("project", "user"), "codex"),
        Client("cursor", "Cursor", "mcpServers", ("project", "user"), "cursor"),
        Client("vscode", "VS Code", "servers", ("project", "user"), "code", typed=True),
        Client("gemini-cli", "Gemini CLI", "mcpServers", ("project", "user"), "gemini"),
    )
}


def get_client(name: str) -> Client:
    try:
        return CLIENTS[name]
    except KeyError:
        shown = name if len(name) <= 200 else name[:200] + "..."
        raise InvalidInputError(
            f"[client] unknown client {shown!r}; allowed: {', '.join(CLIENTS)}", rule="client"
        ) from None
