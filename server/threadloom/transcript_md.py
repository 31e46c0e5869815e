"""Readable Markdown transcripts of a thread or a whole chain.

One renderer serves ``threadloom export --format md``, the resource
``thread://{id}/transcript.md`` and the web inspector's download, so all three give
the same bytes for the same thread. A transcript opens with a header of its manifest
(ids, agent, status, model, links, counters, cost) and the SHA-256 of the JSONL
transcript it was rendered from, so a reader can check it against the signed original
(``threadloom verify``); then every event in seq order: messages as their Markdown text,
tool calls and results as fenced blocks, accounting, status changes and chain markers as
short lines.

The text of a transcript is untrusted: this module writes it as Markdown, and whatever
shows that Markdown as HTML must escape it (the web inspector does).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

from .models import StoredEvent, Thread
from .service import ThreadService

__all__ = ["chain_markdown", "render_chain", "render_thread", "thread_markdown"]

_FENCE_RUN = re.compile(r"`{3,}")


def fence(text: str, lang: str = "") -> str:
    """``text`` in a fenced code block whose fence is longer than any backtick run inside."""
    longest = max((len(m) for m in _FENCE_RUN.findall(text)), default=2)
    bar = "`" * max(3, longest + 1)
    return f"{bar}{lang}\n{text.rstrip(chr(10))}\n{bar}"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True)


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _cost(cost: float | None) -> str:
    return "-" if cost is None else f"{cost:.6f}".rstrip("0").rstrip(".") or "0"


def _header(thread: Thread, sha256: str, level: int) -> list[str]:
    h = "#" * level
    title = _one_line(thread.title) or f"thread {thread.thread_id}"
    ctx = thread.context()
    rows: list[tuple[str, str]] = [
        ("thread_id", f"`{thread.thread_id}`"),
        ("agent_id", f"`{thread.agent_id}`"),
        (
            "status",
            thread.status.value + (f" ({_one_line(thread.status_reason)})" if thread.status_reason else ""),
        ),
        ("model", _one_line(thread.model) or "-"),
        ("parent_id", f"`{thread.parent_id}`" if thread.parent_id else "-"),
        ("chain_root_id", f"`{thread.chain_root_id}`"),
        (
            "continuation_of",
            f"`{thread.continuation_of}` ({thread.link_reason or 'link'})" if thread.continuation_of else "-",
        ),
        (
            "continuation_thread_id",
            f"`{thread.continuation_thread_id}`" if thread.continuation_thread_id else "-",
        ),
    ]
    if thread.forked_from is not None:
        rows.append(("forked_from", f"`{thread.forked_from.thread_id}` at seq {thread.forked_from.seq}"))
    rows += [
        ("created_at", thread.created_at),
        ("updated_at", thread.updated_at),
        ("events", str(thread.event_count)),
        ("context", f"{ctx.used} / {ctx.window} tokens ({ctx.ratio:.1%})"),
        ("cost", _cost(thread.cost)),
        (
            "usage",
            f"{thread.usage.turns} turns, {thread.usage.tokens} tokens, spend {_cost(thread.usage.spend)}",
        ),
        ("transcript_sha256", f"`{sha256}`"),
    ]
    out = [f"{h} {title}", "", "| field | value |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    if thread.directive:
        out += ["", "**Directive**", "", thread.directive.rstrip()]
    if thread.result is not None:
        out += ["", "**Result**", "", fence(_json(thread.result), "json")]
    if thread.outputs is not None:
        out += ["", "**Outputs**", "", fence(_json(thread.outputs), "json")]
    return out


def _output_text(output: Any) -> tuple[str, str]:
    if isinstance(output, str):
        return output, ""
    return _json(output), "json"


def _event(data: dict[str, Any], level: int) -> list[str]:
    h = "#" * level
    seq, ts, kind = data.get("seq"), data.get("ts", ""), data.get("type", "message")
    stamp = f"<sub>{ts}</sub>" if ts else ""
    if kind == "message":
        head = f"{h} {seq} · {data.get('role', 'user')}"
        meta = data.get("metadata") or {}
        if meta.get("from_thread_id"):
            head += f" (from thread `{meta['from_thread_id']}`)"
        return [head, stamp, "", str(data.get("text", "")).rstrip()]
    if kind == "assistant_text":
        return [f"{h} {seq} · assistant (text)", stamp, "", str(data.get("text", "")).rstrip()]
    if kind == "tool_use":
        return [
            f"{h} {seq} · tool call `{_one_line(str(data.get('name')))}` (id `{_one_line(str(data.get('id')))}`)",
            stamp,
            "",
            fence(_json(data.get("input", {})), "json"),
        ]
    if kind == "tool_result":
        text, lang = _output_text(data.get("output", ""))
        err = " **error**" if data.get("is_error") else ""
        return [
            f"{h} {seq} · tool result for `{_one_line(str(data.get('tool_use_id')))}`{err}",
            stamp,
            "",
            fence(text, lang),
        ]
    if kind == "result":
        parts = []
        for key in ("turns", "input_tokens", "output_tokens", "cache_read_tokens", "duration_ms"):
            if data.get(key) is not None:
                parts.append(f"{key.replace('_', ' ')} {data[key]}")
        if data.get("cost") is not None:
            parts.append(f"cost {_cost(data['cost'])}")
        return [f"- {seq} · **result**: {', '.join(parts) or '(no figures)'} {stamp}"]
    if kind == "status":
        reason = f" ({_one_line(data.get('reason'))})" if data.get("reason") else ""
        return [f"- {seq} · status {data.get('from')} → **{data.get('to')}**{reason} {stamp}"]
    if kind == "handoff":
        summary = data.get("summary")
        out = [
            f"- {seq} · **handoff** to thread `{data.get('to_thread_id')}` ({_one_line(data.get('reason'))}, "
            f"{data.get('trailing_count', 0)} messages carried) {stamp}"
        ]
        if summary:
            out += ["", "  Summary:", "", *("  " + line for line in str(summary).splitlines())]
        return out
    if kind == "continued_from":
        return [
            f"- {seq} · **continued from** thread `{data.get('from_thread_id')}` "
            f"({_one_line(data.get('reason'))}, {data.get('carried_count', 0)} messages carried) {stamp}"
        ]
    if kind == "thread_resumed":
        return [f"- {seq} · **resumed** in thread `{data.get('to_thread_id')}` {stamp}"]
    if kind == "checkpoint":
        return [f"- {seq} · checkpoint sha256 `{str(data.get('sha256', ''))[:16]}…` (signed) {stamp}"]
    body = {k: v for k, v in data.items() if k not in ("seq", "ts", "type")}
    return [f"{h} {seq} · `{_one_line(kind)}`", stamp, "", fence(_json(body), "json")]


def transcript_sha256(events: Iterable[StoredEvent]) -> str:
    """SHA-256 of the JSONL transcript (the mirror's bytes) these events make."""
    digest = hashlib.sha256()
    for ev in events:
        digest.update(ev.line.encode() + b"\n")
    return digest.hexdigest()


def render_thread(thread: Thread, events: list[StoredEvent], *, level: int = 1) -> str:
    """One thread as Markdown: its manifest header, then every event."""
    out = _header(thread, transcript_sha256(events), level)
    out += ["", "---", ""]
    for ev in events:
        out += _event(ev.data(), level + 2)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render_chain(threads: list[tuple[Thread, list[StoredEvent]]]) -> str:
    """A continuation chain as Markdown: a summary of its threads, then each thread in link order."""
    first = threads[0][0]
    costs = [t.cost for t, _ in threads if t.cost is not None]
    out = [
        f"# Chain {first.chain_root_id}" + (f": {_one_line(first.title)}" if first.title else ""),
        "",
        f"{len(threads)} thread(s), {sum(t.event_count for t, _ in threads)} events, "
        f"cost {_cost(round(sum(costs), 10) if costs else None)}.",
        "",
        "| # | thread_id | status | link | events | cost |",
        "|---|---|---|---|---|---|",
    ]
    for i, (t, _) in enumerate(threads, 1):
        out.append(
            f"| {i} | `{t.thread_id}` | {t.status.value} | {t.link_reason or '-'} | {t.event_count} | {_cost(t.cost)} |"
        )
    for t, events in threads:
        out += ["", render_thread(t, events, level=2).rstrip()]
    return "\n".join(out).rstrip() + "\n"


async def _events_upto(service: ThreadService, thread: Thread) -> list[StoredEvent]:
    """The events the manifest counts (a consistent moment even while appends go on)."""
    events = await service.all_events(thread.thread_id)
    return events[: thread.event_count]


async def thread_markdown(service: ThreadService, thread_id: str) -> str:
    """The Markdown transcript of one thread (NotFoundError when it does not exist)."""
    thread = await service.get_thread(thread_id)
    return render_thread(thread, await _events_upto(service, thread))


async def chain_markdown(service: ThreadService, thread_id: str) -> str:
    """The Markdown transcript of the whole chain of ``thread_id`` (any member)."""
    members = await service.chain_threads(thread_id)
    return render_chain([(t, await _events_upto(service, t)) for t in members])
