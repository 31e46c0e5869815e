"""Rebuild a conversation from a thread's events, and shape it for a provider's API.

The neutral form is a list of ``{"role", "content": [blocks]}`` with blocks of type
``text``, ``tool_use`` and ``tool_result``; consecutive blocks of one role merge into
one message. Server and accounting events carry no conversation and are skipped.

``format_messages`` turns it into exactly what the Anthropic Messages API or OpenAI
chat completions accept (see docs/chains.md for the rules and why).
"""

from __future__ import annotations

from typing import Any

from .errors import InvalidInputError
from .models import StoredEvent, canonical_json
from .numbers import quote


def event_blocks(data: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The (role, content block) an event contributes to the conversation, if any."""
    etype = data.get("type")
    if etype == "message":
        return data["role"], {"type": "text", "text": data["text"]}
    if etype == "assistant_text":
        return "assistant", {"type": "text", "text": data["text"]}
    if etype == "tool_use":
        return "assistant", {
            "type": "tool_use",
            "id": data["id"],
            "name": data["name"],
            "input": data.get("input", {}),
        }
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


# ------------------------------------------------------------------ provider formats

FORMATS = ("neutral", "anthropic", "openai")
"""``neutral``: the rebuilt form above. ``anthropic``: the Messages API (``system`` apart,
content blocks text / tool_use / tool_result). ``openai``: chat completions (``tool_calls``
on assistant messages, ``role: tool`` results)."""

FIRST_USER_TEXT = "(the conversation begins with an assistant turn)"
"""Anthropic requires the first message to be a user turn; used only when the thread's
conversation starts with the assistant."""


def check_format(fmt: object) -> str:
    """Return ``fmt`` if it is one of :data:`FORMATS`; refuse anything else, naming it."""
    if fmt not in FORMATS:
        raise InvalidInputError(
            f"format must be one of {', '.join(FORMATS)}; got {quote(fmt)}", rule="messages_format"
        )
    return str(fmt)


def _output_text(output: Any) -> str:
    return output if isinstance(output, str) else canonical_json(output)


def _as_text(block: dict[str, Any]) -> dict[str, Any]:
    """An orphaned tool block kept as text, so that no provider rejects the conversation."""
    if block["type"] == "tool_use":
        text = (
            f"[tool call {block['name']} (id {block['id']}) with input {canonical_json(block.get('input', {}))}; "
            "no result was recorded right after it]"
        )
    else:
        err = " (error)" if block.get("is_error") else ""
        text = f"[result of tool call {block['tool_use_id']}{err}: {_output_text(block.get('output', ''))}]"
    return {"type": "text", "text": text}


def _merge(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        if not m["content"]:
            continue
        if out and out[-1]["role"] == m["role"]:
            out[-1]["content"].extend(m["content"])
        else:
            out.append({"role": m["role"], "content": list(m["content"])})
    return out


def provider_turns(
    neutral: list[dict[str, Any]], *, lift_system: bool
) -> tuple[str | None, list[dict[str, Any]]]:
    """Neutral messages made acceptable to the provider APIs, still as neutral blocks.

    Blank text is dropped, turns of one role are merged, a tool_use counts as answered
    only when its tool_result is in the very next (user) turn, orphans on either side
    become text, and tool_result blocks lead their user turn. With ``lift_system`` the
    system messages are taken out and returned joined (Anthropic's ``system``).
    """
    system: list[str] = []
    kept: list[dict[str, Any]] = []
    for m in neutral:
        blocks = [b for b in m["content"] if b["type"] != "text" or b["text"].strip()]
        if m["role"] == "system" and lift_system:
            system += [b["text"] for b in blocks if b["type"] == "text"]
            continue
        kept.append({"role": m["role"], "content": blocks})
    turns = _merge(kept)
    called: set[str] = set()  # tool_use ids must be unique across the whole conversation
    for i, m in enumerate(turns):
        nxt = turns[i + 1] if i + 1 < len(turns) else None
        prev = turns[i - 1] if i > 0 else None
        if m["role"] == "assistant":
            results = (
                {b["tool_use_id"] for b in nxt["content"] if b["type"] == "tool_result"}
                if nxt and nxt["role"] == "user"
                else set()
            )
            blocks = []
            for b in m["content"]:
                if b["type"] == "tool_use":
                    pending = nxt is None  # the last turn: the client appends the result next
                    if b["id"] in called or (b["id"] not in results and not pending):
                        b = _as_text(b)
                    else:
                        called.add(b["id"])
                blocks.append(b)
            m["content"] = blocks
        elif m["role"] == "user":
            uses = (
                {b["id"] for b in prev["content"] if b["type"] == "tool_use"}
                if prev and prev["role"] == "assistant"
                else set()
            )
            answered: set[str] = set()
            results, others = [], []
            for b in m["content"]:
                if b["type"] == "tool_result":
                    if b["tool_use_id"] in uses and b["tool_use_id"] not in answered:
                        answered.add(b["tool_use_id"])
                        results.append(b)
                    else:
                        others.append(_as_text(b))
                else:
                    others.append(b)
            m["content"] = results + others
    return ("\n\n".join(system) if system else None), turns


def to_anthropic(neutral: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """(system, messages) in the shape of the Anthropic Messages API."""
    system, turns = provider_turns(neutral, lift_system=True)
    out: list[dict[str, Any]] = []
    for m in turns:
        content = []
        for b in m["content"]:
            if b["type"] == "text":
                content.append({"type": "text", "text": b["text"]})
            elif b["type"] == "tool_use":
                content.append(
                    {"type": "tool_use", "id": b["id"], "name": b["name"], "input": b.get("input", {})}
                )
            else:
                block: dict[str, Any] = {"type": "tool_result", "tool_use_id": b["tool_use_id"]}
                text = _output_text(b.get("output", ""))
                if text:
                    block["content"] = text
                if b.get("is_error"):
                    block["is_error"] = True
                content.append(block)
        out.append({"role": m["role"], "content": content})
    if out and out[0]["role"] != "user":
        out.insert(0, {"role": "user", "content": [{"type": "text", "text": FIRST_USER_TEXT}]})
    if out and out[-1]["role"] == "assistant" and out[-1]["content"][-1]["type"] == "text":
        last = out[-1]["content"][-1]  # the API refuses a final assistant turn ending in whitespace
        last["text"] = last["text"].rstrip()
    return system, out


def to_openai(neutral: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages in the shape of OpenAI chat completions (system inline, tools as role tool)."""
    _, turns = provider_turns(neutral, lift_system=False)
    out: list[dict[str, Any]] = []
    for m in turns:
        texts = [b["text"] for b in m["content"] if b["type"] == "text"]
        if m["role"] == "assistant":
            calls = [
                {
                    "id": b["id"],
                    "type": "function",
                    "function": {"name": b["name"], "arguments": canonical_json(b.get("input", {}))},
                }
                for b in m["content"]
                if b["type"] == "tool_use"
            ]
            msg: dict[str, Any] = {"role": "assistant", "content": "\n\n".join(texts) if texts else None}
            if calls:
                msg["tool_calls"] = calls
            out.append(msg)
            continue
        for b in m["content"]:
            if b["type"] == "tool_result":
                text = _output_text(b.get("output", ""))
                out.append(
                    {
                        "role": "tool",
                        "tool_call_id": b["tool_use_id"],
                        "content": f"[error] {text}" if b.get("is_error") else text,
                    }
                )
        if texts:
            out.append({"role": m["role"], "content": "\n\n".join(texts)})
    return out


def format_messages(neutral: list[dict[str, Any]], fmt: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(system, messages) of a neutral conversation in ``fmt`` (system is None but for anthropic)."""
    check_format(fmt)
    if fmt == "anthropic":
        return to_anthropic(neutral)
    if fmt == "openai":
        return None, to_openai(neutral)
    return None, neutral


def request_body(neutral: list[dict[str, Any]], fmt: str) -> Any:
    """What a client sends on: the neutral list, or the provider's request fields
    (``{"system"?, "messages"}`` for anthropic, ``{"messages"}`` for openai)."""
    system, messages = format_messages(neutral, fmt)
    if fmt == "neutral":
        return messages
    body: dict[str, Any] = {"messages": messages}
    if system is not None:
        body["system"] = system
    return body
