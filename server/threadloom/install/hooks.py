"""Claude Code hook entries that run ``threadloom hook claude-code`` (live capture).

Claude Code's settings take ``{"hooks": {EVENT: [{"matcher": ..., "hooks": [{"type":
"command", "command": ...}]}]}}``; a matcher applies to tool events only, so the other
events get a group without one. Ours are told apart from the user's by their command: a
threadloom launcher followed by ``hook claude-code``. Adding is idempotent (an existing
entry of ours is updated in place); removing takes only ours and the groups it emptied.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from .launch import is_threadloom_command

HOOK_EVENTS: dict[str, str | None] = {
    "SessionStart": None,
    "UserPromptSubmit": None,
    "PostToolUse": "*",
    "Stop": None,
    "SubagentStop": None,
    "PreCompact": None,
    "SessionEnd": None,
}
"""Each event threadloom listens to, with the matcher of its group (None: no matcher)."""


def is_ours(hook: Any) -> bool:
    if (
        not isinstance(hook, dict)
        or hook.get("type") != "command"
        or not isinstance(hook.get("command"), str)
    ):
        return False
    try:
        words = shlex.split(hook["command"])
    except ValueError:
        words = hook["command"].split()
    if not is_threadloom_command(words):
        return False
    return any(a == "hook" and b == "claude-code" for a, b in zip(words, words[1:]))


def _events(settings: dict[str, Any], path: Path, *, create: bool) -> dict[str, Any] | None:
    hooks = settings.get("hooks")
    if hooks is None:
        if not create:
            return None
        hooks = settings["hooks"] = {}
    if not isinstance(hooks, dict):
        raise _shape(path, "hooks", hooks, "an object")
    return hooks


def _groups(events: dict[str, Any], event: str, path: Path) -> list[Any]:
    groups = events.get(event)
    if not isinstance(groups, list):
        raise _shape(path, f"hooks.{event}", groups, "a list")
    for group in groups:
        if isinstance(group, dict) and not isinstance(group.get("hooks", []), list):
            raise _shape(path, f"hooks.{event}[].hooks", group["hooks"], "a list")
    return groups


def _shape(path: Path, where: str, value: Any, want: str) -> InvalidInputError:
    return InvalidInputError(
        f"[config_shape] {path}: {where} is a {type(value).__name__}, expected {want}; "
        "threadloom did not change the file",
        rule="config_shape",
    )


def add_hooks(settings: dict[str, Any], command: str, path: Path) -> None:
    """Make every event of HOOK_EVENTS run ``command`` once (settings edited in place)."""
    events = _events(settings, path, create=True)
    assert events is not None
    for event, matcher in HOOK_EVENTS.items():
        if event not in events:
            events[event] = []
        groups = _groups(events, event, path)
        found = False
        for group in groups:
            if not isinstance(group, dict):
                continue
            for hook in group.get("hooks", []):
                if is_ours(hook):
                    if found:
                        continue
                    found = True
                    if hook["command"] != command:
                        hook["command"] = command
        if not found:
            group = {"matcher": matcher} if matcher is not None else {}
            group["hooks"] = [{"type": "command", "command": command}]
            groups.append(group)


def remove_hooks(settings: dict[str, Any], path: Path) -> None:
    """Remove our hook entries, the groups they leave empty and the events left without groups."""
    events = _events(settings, path, create=False)
    if events is None:
        return
    for event in list(events):
        groups = events[event]
        if not isinstance(groups, list) or not any(
            isinstance(g, dict) and any(is_ours(h) for h in g.get("hooks", []) or []) for g in groups
        ):
            continue
        kept = []
        for group in _groups(events, event, path):
            if isinstance(group, dict) and any(is_ours(h) for h in group.get("hooks", [])):
                group["hooks"] = [h for h in group["hooks"] if not is_ours(h)]
                if not group["hooks"]:
                    continue
            kept.append(group)
        if kept:
            events[event] = kept
        else:
            del events[event]


def hooked_events(settings: dict[str, Any]) -> list[str]:
    """The events that run a threadloom hook."""
    events = settings.get("hooks")
    if not isinstance(events, dict):
        return []
    return [
        event
        for event, groups in events.items()
        if isinstance(groups, list)
        and any(isinstance(g, dict) and any(is_ours(h) for h in g.get("hooks", []) or []) for g in groups)
    ]
