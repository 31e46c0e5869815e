"""What the Anthropic Messages API and OpenAI chat completions accept, as checks (test helper)."""

from __future__ import annotations

import json
from typing import Any


def check_anthropic(system: str | None, messages: list[dict[str, Any]]) -> None:
    """The Messages API: user first, strict alternation, blocks of known shapes, every
    tool_use answered by a tool_result in the very next user turn (results first in it),
    every tool_result answering a tool_use of the turn before; a call may stay pending
    only in the last turn; no blank text; no trailing whitespace ending the last turn."""
    assert system is None or (isinstance(system, str) and system.strip())
    if not messages:
        return
    assert messages[0]["role"] == "user"
    all_uses = [b["id"] for m in messages for b in m["content"] if b["type"] == "tool_use"]
    assert len(all_uses) == len(set(all_uses)), "tool_use ids are unique in a request"
    for i, m in enumerate(messages):
        assert set(m) == {"role", "content"} and m["role"] in ("user", "assistant")
        if i:
            assert m["role"] != messages[i - 1]["role"], "roles must alternate"
        assert isinstance(m["content"], list) and m["content"], "content must be a non-empty block list"
        seen_other = False
        for b in m["content"]:
            if b["type"] == "text":
                assert set(b) == {"type", "text"} and isinstance(b["text"], str) and b["text"].strip()
                seen_other = True
            elif b["type"] == "tool_use":
                assert m["role"] == "assistant"
                assert set(b) == {"type", "id", "name", "input"} and isinstance(b["input"], dict)
            elif b["type"] == "tool_result":
                assert m["role"] == "user" and not seen_other, "tool_result blocks come first"
                assert {"type", "tool_use_id"} <= set(b) <= {"type", "tool_use_id", "content", "is_error"}
                assert isinstance(b.get("content", ""), str) and isinstance(b.get("is_error", False), bool)
            else:
                raise AssertionError(f"unknown block {b}")
        uses = [b["id"] for b in m["content"] if b["type"] == "tool_use"]
        assert len(uses) == len(set(uses))
        if uses and i + 1 < len(messages):
            answered = [b["tool_use_id"] for b in messages[i + 1]["content"] if b["type"] == "tool_result"]
            assert sorted(answered) == sorted(uses), "every tool_use is answered in the next turn"
        results = [b["tool_use_id"] for b in m["content"] if b["type"] == "tool_result"]
        if results:
            prev = [b["id"] for b in messages[i - 1]["content"] if b["type"] == "tool_use"] if i else []
            assert sorted(results) == sorted(prev), "every tool_result answers the turn before"
    last = messages[-1]
    if last["role"] == "assistant" and last["content"][-1]["type"] == "text":
        assert last["content"][-1]["text"] == last["content"][-1]["text"].rstrip()


def check_openai(messages: list[dict[str, Any]]) -> None:
    """Chat completions: known roles and fields; an assistant's tool_calls are followed by
    one role-tool message per call before anything else (unless it is the last message);
    a tool message answers a pending call."""
    pending: set[str] = set()
    all_calls = [c["id"] for m in messages for c in m.get("tool_calls") or []]
    assert len(all_calls) == len(set(all_calls)), "tool call ids are unique in a request"
    for i, m in enumerate(messages):
        role = m["role"]
        if role != "tool":
            assert not pending, f"tool calls {pending} unanswered before a {role} message"
        if role in ("system", "user"):
            assert set(m) == {"role", "content"} and isinstance(m["content"], str)
        elif role == "assistant":
            assert set(m) <= {"role", "content", "tool_calls"}
            calls = m.get("tool_calls")
            assert m["content"] is not None or calls, "an assistant message needs content or tool_calls"
            assert m["content"] is None or isinstance(m["content"], str)
            if calls is not None:
                assert calls
                for c in calls:
                    assert set(c) == {"id", "type", "function"} and c["type"] == "function"
                    assert set(c["function"]) == {"name", "arguments"}
                    assert isinstance(json.loads(c["function"]["arguments"]), dict)
                ids = [c["id"] for c in calls]
                assert len(ids) == len(set(ids))
                if i + 1 < len(messages):
                    pending = set(ids)
        elif role == "tool":
            assert set(m) == {"role", "tool_call_id", "content"} and isinstance(m["content"], str)
            assert m["tool_call_id"] in pending, "a tool message must answer a pending call"
            pending.discard(m["tool_call_id"])
        else:
            raise AssertionError(f"unknown role {role}")
    assert not pending
