"""Rebuild a conversation from a thread's events.

The neutral form is a list of ``{"role", "content": [blocks]}`` with blocks of type
``text``, ``tool_use`` and ``tool_result``; consecutive blocks of one role merge into
one message. Server and accounting events carry no conversation and are skipped.
"""

from __future__ import annotations

from typing import Any

from .models import StoredEvent


def event_blocks(data: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The (role, content block) an event contributes to the conversation, if any."""
    etype = data.get("type")
    if etype == "message":
        return data["role"], {"type": "text", "text": data["text"]}
    if etype == "assistant_text":
        return "assistant", {"type": "text", "text": data["text"]}
    if etype == "tool_use":
        return "assistant", {"type": "tool_use", "id": data["id"], "name": data["name"], "input": data.get("input", {})}
    if etype == "tool_result":
        return "user", {
            "type": "tool_result",
            "tool_use_id": data["tool_use_id"],
            "output": data.get("output", ""),
            "is_error": bool(data.get("is_error", False)),
        }
    return None


def rebuild_messages(events: list[StoredEvent]) -> list[dict[str, Any]]:
    """The neutral conversation of ``events`` (in seq order)."""
    out: list[dict[str, Any]] = []
    for ev in events:
        got = event_blocks(ev.data())
        if got is None:
            continue
        role, block = got
        if out and out[-1]["role"] == role:
            out[-1]["content"].append(block)
        else:
            out.append({"role": role, "content": [block]})
    return out
