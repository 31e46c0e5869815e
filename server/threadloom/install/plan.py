"""`threadloom install` / `uninstall`: what changes in which file, then (unless a dry run) the change.

Every file involved is read and edited in memory first; a malformed one stops the whole
command before anything is written. A file whose content would not change is not touched
(no backup, no rewrite), so running the command again is a no-op.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit

from ..errors import InvalidInputError
from . import hooks as hook_edit
from . import jsonspan, tomlfile
from .clients import CLIENTS, SERVER_NAME, Client, Scope, claude_settings_path, get_client
from .files import diff, read_text, real_path, replace_file
from .jsonfile import object_at, parse_json
from .launch import Launcher, default_root, find_launcher


@dataclass
class FileChange:
    path: Path
    what: str
    """``mcp server`` or ``hooks``."""
    before: str | None
    after: str
    backup: Path | None = None

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def diff(self) -> str:
        return diff(self.path, self.before, self.after) if self.changed else ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "what": self.what,
            "changed": self.changed,
            "created": self.before is None and self.changed,
            "backup": str(self.backup) if self.backup else None,
            "diff": self.diff(),
        }


@dataclass
class Plan:
    action: str
    client: Client
    scope: Scope
    changes: list[FileChange] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    root: Path | None = None
    hook_command: str | None = None

    @property
    def changed(self) -> bool:
        return any(c.changed for c in self.changes)

    def apply(self) -> None:
        for change in self.changes:
            if change.changed:
                change.backup = replace_file(change.path, change.after, existed=change.before is not None)

    def as_dict(self, *, dry_run: bool) -> dict[str, Any]:
        return {
            "action": self.action,
            "client": self.client.name,
            "scope": self.scope,
            "dry_run": dry_run,
            "changed": self.changed,
            "command": self.command,
            "env": self.env,
            "root": str(self.root) if self.root else None,
            "hook_command": self.hook_command,
            "files": [c.as_dict() for c in self.changes],
        }


def server_args(root: Path) -> list[str]:
    return ["serve", "--root", str(root)]


def plan_install(
    client_name: str,
    *,
    scope: Scope = "user",
    root: Path | None = None,
    project: Path | None = None,
    hooks: bool = False,
    launcher: Launcher | None = None,
) -> Plan:
    client = get_client(client_name)
    if hooks and client.name != "claude-code":
        raise InvalidInputError(
            f"[hooks] --hooks is for claude-code only (it has command hooks); {client.name} has none",
            rule="hooks",
        )
    project = (project or Path.cwd()).absolute()
    root = (root.expanduser() if root else default_root()).absolute()
    launcher = launcher or find_launcher()
    path = client.config_path(scope, project)
    entry = client.entry(launcher.command, launcher.args(*server_args(root)), launcher.env)
    plan = Plan(
        "install", client, scope, command=[launcher.command, *entry["args"]], env=launcher.env, root=root
    )  # type: ignore[list-item]
    plan.changes.append(_edit_server(client, path, entry))
    if hooks:
        plan.hook_command = launcher.shell("hook", "claude-code", "--root", str(root))
        settings = claude_settings_path(scope, project)
        plan.changes.append(_edit_hooks(settings, plan.hook_command))
    return plan


def plan_uninstall(client_name: str, *, scope: Scope = "user", project: Path | None = None) -> Plan:
    client = get_client(client_name)
    project = (project or Path.cwd()).absolute()
    plan = Plan("uninstall", client, scope)
    path = client.config_path(scope, project)
    if read_text(real_path(path)) is not None:
        plan.changes.append(_edit_server(client, path, None))
    if client.name == "claude-code":
        settings = claude_settings_path(scope, project)
        if read_text(real_path(settings)) is not None:
            plan.changes.append(_edit_hooks(settings, None))
    return plan


def _snippet(client: Client, entry: dict[str, Any]) -> str:
    return json.dumps({client.shape: {SERVER_NAME: entry}}, ensure_ascii=False)


def _edit_server(client: Client, path: Path, entry: dict[str, Any] | None) -> FileChange:
    before = read_text(real_path(path))
    if client.shape == "toml":
        doc = tomlfile.parse_toml(before, path)
        if entry is None:
            if not tomlfile.remove_server(doc, SERVER_NAME, path):
                return FileChange(path, "mcp server", before, before or "")
        else:
            tomlfile.set_server(doc, SERVER_NAME, entry, path)
        old = before or ""
        after = tomlkit.dumps(doc).rstrip("\n")
        if not old.strip():
            after = after.lstrip("\n")
        if after:  # end as the file ended (tomlkit leaves blank lines where a table came or went)
            after += "\n" * max(1, len(old) - len(old.rstrip("\n")))
        return FileChange(path, "mcp server", before, tomlfile.checked(old, after, entry, path))
    parsed = parse_json(before, path, snippet=_snippet(client, entry) if entry else "")
    if entry is None:
        servers = parsed.data.get(client.shape)
        if isinstance(servers, dict) and SERVER_NAME in servers:
            del servers[SERVER_NAME]
            text = _in_place(
                before, parsed.data, lambda t: jsonspan.remove_member(t, [client.shape], SERVER_NAME)
            )
            return FileChange(path, "mcp server", before, text or parsed.dump())
        return FileChange(path, "mcp server", before, before or "")
    servers = object_at(parsed.data, client.shape, path)
    current = servers.get(SERVER_NAME)
    if isinstance(current, dict):
        merged = dict(current)
        for key, value in entry.items():
            if key == "env" and isinstance(merged.get("env"), dict):
                merged["env"] = {**merged["env"], **value}
            else:
                merged[key] = value
        if merged == current:
            return FileChange(path, "mcp server", before, before or "")
        servers[SERVER_NAME] = merged
    else:
        servers[SERVER_NAME] = entry
    value = servers[SERVER_NAME]
    text = _in_place(
        before,
        parsed.data,
        lambda t: jsonspan.set_member(t, [client.shape], SERVER_NAME, value, parsed.indent),
    )
    return FileChange(path, "mcp server", before, text or parsed.dump())


def _in_place(before: str | None, want: dict[str, Any], edit: Any) -> str | None:
    """``edit(before)`` when it yields exactly ``want`` (same keys in the same order), else None."""
    if before is None or not before.strip():
        return None
    try:
        text = edit(before)
        same = json.dumps(json.loads(text), ensure_ascii=False) == json.dumps(want, ensure_ascii=False)
    except (ValueError, IndexError, RecursionError):
        return None
    return text if same else None


def _edit_hooks(path: Path, command: str | None) -> FileChange:
    before = read_text(real_path(path))
    parsed = parse_json(before, path)
    original = json.dumps(parsed.data)
    if command is None:
        hook_edit.remove_hooks(parsed.data, path)
    else:
        hook_edit.add_hooks(parsed.data, command, path)
    if json.dumps(parsed.data) == original and before is not None:
        return FileChange(path, "hooks", before, before)
    return FileChange(path, "hooks", before, parsed.dump())


@dataclass
class ClientStatus:
    client: Client
    present: bool
    scopes: dict[str, dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "client": self.client.name,
            "label": self.client.label,
            "present": self.present,
            "configured": any(s.get("configured") for s in self.scopes.values()),
            "scopes": self.scopes,
        }


def client_status(project: Path | None = None) -> list[ClientStatus]:
    """For each client: whether it looks installed and, per scope, whether threadloom is configured."""
    project = (project or Path.cwd()).absolute()
    out = []
    for client in CLIENTS.values():
        scopes: dict[str, dict[str, Any]] = {}
        for scope in client.scopes:
            path = client.config_path(scope, project)
            info: dict[str, Any] = {"path": str(path), "exists": path.exists(), "configured": False}
            try:
                entry = read_entry(client, path)
                info["configured"] = entry is not None
                if entry is not None:
                    info["command"] = [entry.get("command"), *(entry.get("args") or [])]
                if client.name == "claude-code":
                    settings = claude_settings_path(scope, project)
                    text = read_text(real_path(settings))
                    info["hooks"] = hook_edit.hooked_events(parse_json(text, settings).data) if text else []
            except InvalidInputError as exc:
                info["error"] = exc.message
            scopes[scope] = info
        out.append(ClientStatus(client, client.present(), scopes))
    return out


def read_entry(client: Client, path: Path) -> dict[str, Any] | None:
    """threadloom's server entry in a client's config file, or None."""
    text = read_text(real_path(path))
    if text is None:
        return None
    if client.shape == "toml":
        return tomlfile.get_server(tomlfile.parse_toml(text, path), SERVER_NAME, path)
    servers = parse_json(text, path).data.get(client.shape)
    entry = servers.get(SERVER_NAME) if isinstance(servers, dict) else None
    return entry if isinstance(entry, dict) else None
