"""Every event type's behaviour in one place: how it counts toward the context estimate,
what text it gives full-text and semantic search, and how it reads as one line.

The fields of each type (and which types clients may append) are its pydantic model in
models.py; everything the rest of the server does differently per type is declared here,
so a new event type is a model there and an :class:`EventKind` here (docs/architecture.md).
Custom ``x-*`` types and unknown ones get :data:`CUSTOM`: no context, not searchable, shown
as their fields. The functions take the event as a plain dict (a payload or a stored line).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .models import Event, canonical_json, event_payload

Fields = tuple[str | None, str | None]
"""``(body, tools)``: the text of an event in the two search columns (docs/search.md)."""
Piece = tuple[str, str]
"""A piece of a one-line rendering: text and a rich style ("" for none)."""
Clip = Callable[[str], str]


def _none(_: Mapping[str, Any]) -> int:
    return 0


def _json(value: Any) -> str:
    return value if isinstance(value, str) else canonical_json(value)


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _text_chars(d: Mapping[str, Any]) -> int:
    return len(d.get("text", ""))


def _text_body(d: Mapping[str, Any]) -> Fields:
    text = d.get("text")
    return (text if isinstance(text, str) else None), None


def _output(d: Mapping[str, Any]) -> str:
    return _json(d.get("output", ""))


@dataclass(frozen=True, slots=True)
class EventKind:
    """What one event type means to the server beyond its fields.

    ``context``: characters it adds to a model's context (DESIGN §7 estimate, before // 4).
    ``search``: its ``(body, tools)`` text for full-text search; None: not indexed.
    ``embed``: its text for semantic search (``tool_results``: the setting that embeds
    tool output too); None: never embedded. ``line``: its one-line summary after the type
    (``clip`` shortens free text); ``style``: the colour of its type name.
    """

    name: str
    context: Callable[[Mapping[str, Any]], int] = _none
    search: Callable[[Mapping[str, Any]], Fields] | None = None
    embed: Callable[[Mapping[str, Any], bool], str | None] | None = None
    line: Callable[[Mapping[str, Any], Clip], list[Piece]] | None = None
    style: str = "yellow"


def _message_embed(d: Mapping[str, Any], _tools: bool) -> str | None:
    return d.get("text") if d.get("role") in ("user", "assistant") else None


def _tool_result_search(d: Mapping[str, Any]) -> Fields:
    return (None, None) if "output" not in d else (None, _output(d))


def _tool_result_embed(d: Mapping[str, Any], tools: bool) -> str | None:
    return _output(d) if tools and "output" in d else None


def _result_line(d: Mapping[str, Any], _c: Clip) -> list[Piece]:
    keys = ("cost", "turns", "input_tokens", "output_tokens", "duration_ms")
    return [(", ".join(f"{k} {d[k]}" for k in keys if k in d) or "-", "")]


def _custom_line(d: Mapping[str, Any], c: Clip) -> list[Piece]:
    return [(c(_compact({k: v for k, v in d.items() if k not in ("seq", "ts", "type")})), "")]


KINDS: dict[str, EventKind] = {
    k.name: k
    for k in (
        EventKind(
            "message",
            context=_text_chars,
            search=_text_body,
            embed=_message_embed,
            line=lambda d, c: [(f"{d.get('role')}: ", "bold"), (c(str(d.get("text", ""))), "")],
            style="bold",
        ),
        EventKind(
            "assistant_text",
            context=_text_chars,
            search=_text_body,
            embed=lambda d, _t: d.get("text"),
            line=lambda d, c: [(c(str(d.get("text", ""))), "")],
            style="",
        ),
        EventKind(
            "tool_use",
            context=lambda d: len(d.get("name", "")) + len(canonical_json(d.get("input", {}))),
            search=lambda d: (None, f"{d.get('name', '')} {canonical_json(d.get('input', {}))}"),
            line=lambda d, c: [
                (str(d.get("name")), "cyan"),
                (c(f"({_compact(d.get('input', {}))})"), ""),
                (f"  id {d.get('id')}", "dim"),
            ],
            style="cyan",
        ),
        EventKind(
            "tool_result",
            context=lambda d: len(_output(d)),
            search=_tool_result_search,
            embed=_tool_result_embed,
            line=lambda d, c: [
                (f"{d.get('tool_use_id')} → ", "dim"),
                (c(_compact(d.get("output", ""))), "red" if d.get("is_error") else ""),
            ],
            style="green",
        ),
        EventKind("result", line=_result_line, style="yellow"),
        EventKind(
            "status",
            line=lambda d, _c: [
                (f"{d.get('from')} → {d.get('to')}" + (f" ({d['reason']})" if d.get("reason") else ""), "")
            ],
            style="magenta",
        ),
        EventKind(
            "handoff",
            line=lambda d, _c: [
                (
                    f"handed off to {d.get('to_thread_id')} ({d.get('reason')}, "
                    f"carried {d.get('trailing_count')})",
                    "",
                )
            ],
            style="blue",
        ),
        EventKind(
            "continued_from",
            line=lambda d, _c: [
                (
                    f"continues {d.get('from_thread_id')} ({d.get('reason')}, "
                    f"carried {d.get('carried_count', 0)})",
                    "",
                )
            ],
            style="blue",
        ),
        EventKind(
            "thread_resumed",
            line=lambda d, c: [
                (f"resumed in {d.get('to_thread_id')}: ", ""),
                (c(str(d.get("message", ""))), ""),
            ],
            style="blue",
        ),
        EventKind(
            "checkpoint",
            line=lambda d, _c: [(f"sha256 {str(d.get('sha256', ''))[:16]}…", "dim")],
            style="dim",
        ),
    )
}
CUSTOM = EventKind("x-*", line=_custom_line)
"""Custom and unknown types: no context, not searchable, shown as their fields."""

INDEXED_TYPES: tuple[str, ...] = tuple(name for name, k in KINDS.items() if k.search is not None)
"""Types with searchable text; every other type (status, checkpoints, x-*) is not indexed."""
EMBEDDED_TYPES: tuple[str, ...] = tuple(name for name, k in KINDS.items() if k.embed is not None)
"""Types that may get a vector (tool results only with ``semantic_tool_results``)."""


def kind_of(etype: Any) -> EventKind:
    return KINDS.get(etype, CUSTOM) if isinstance(etype, str) else CUSTOM


def context_chars(data: Mapping[str, Any]) -> int:
    """Characters the event (a dict) adds to a model's context: the one estimate."""
    return kind_of(data.get("type")).context(data)


def event_text_chars(event: Event) -> int:
    """:func:`context_chars` of a typed event."""
    return context_chars(event_payload(event))


def search_fields(etype: str, payload: Mapping[str, Any]) -> Fields | None:
    """``(body, tools)`` text of an event, or None if its type is not indexed."""
    search = kind_of(etype).search
    return None if search is None else search(payload)


def embed_text(etype: str, payload: Mapping[str, Any], tool_results: bool) -> str | None:
    """The text of an event that gets a vector, or None (nothing to embed)."""
    embed = kind_of(etype).embed
    text = None if embed is None else embed(payload, tool_results)
    return text if isinstance(text, str) and text.strip() else None


def summary_pieces(data: Mapping[str, Any], clip: Clip) -> list[Piece]:
    """The one-line summary of an event after its type name (render.event_summary)."""
    k = kind_of(data.get("type", "?"))
    return (k.line or _custom_line)(data, clip)
