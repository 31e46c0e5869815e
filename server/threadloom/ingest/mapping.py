"""What both session readers share: threadloom events built from source lines.

A reader (:mod:`.claude_code`, :mod:`.codex`) turns each parsed JSON line into
:class:`Step` values: events to append, a compaction (a continuation link), or facts
about the session (cwd, model, ...). Its carry-over between lines (a usage not yet
written, the title found) lives in ``self.state``, a plain JSON dict the ingest keeps in
its state file, so a later run continues exactly where the last one stopped.

Token usage becomes a ``result`` event. It is held back until the next model output or
user prompt, so that it never falls between a tool call and the tool's result.
"""

from __future__ import annotations

import abc
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..models import canonical_json

TITLE_CHARS = 120
TRUNCATED = (
    "\n[... {n} characters cut by threadloom ingest to fit max_event_bytes; the source file keeps them]"
)
EVENT_MARGIN = 2048
"""Bytes kept free below max_event_bytes for the fields around a cut text."""


@dataclass
class Step:
    """One thing to do with the service, in source order."""

    kind: str
    """``events``, ``compaction`` (continue the session in a new thread of its chain) or ``meta``."""
    events: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def custom_type(kind: str) -> str:
    """``x-`` plus ``kind`` made to fit the custom type rule (lower case, ``[a-z0-9_.-]``)."""
    name = re.sub(r"[^a-z0-9_.-]+", "-", str(kind).lower()).strip("-_.") or "unknown"
    return f"x-{name}"[:66]


def text_of_blocks(content: Any) -> str:
    """The text of a tool result's content: a string, or text blocks joined (images named)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict):
                btype = block.get("type")
                if btype in ("text", "input_text", "output_text"):
                    parts.append(str(block.get("text", "")))
                elif btype in ("image", "input_image"):
                    parts.append(f"[image: {image_kind(block)}]")
                else:
                    parts.append(canonical_json(block))
            else:
                parts.append(str(block))
        return "\n".join(parts)
    return canonical_json(content)


def image_kind(block: dict[str, Any]) -> str:
    source = block.get("source")
    if isinstance(source, dict):
        return str(source.get("media_type") or source.get("type") or "image")
    url = block.get("image_url")
    if isinstance(url, str) and url.startswith("data:"):
        return url[5:].split(";", 1)[0] or "image"
    return "image"


def title_of(text: str) -> str:
    one = " ".join(text.split())
    return one if len(one) <= TITLE_CHARS else one[: TITLE_CHARS - 1].rstrip() + "…"


def fit_event(event: dict[str, Any], limit: int) -> tuple[dict[str, Any], bool]:
    """``event`` cut to fit ``limit`` bytes of JSON (its largest text shortened, with a note)."""
    try:
        size = len(canonical_json(event).encode())
    except (ValueError, TypeError):
        return event, False  # not plain JSON (NaN, say): the runner's check replaces it
    if size <= limit:
        return event, False
    room = max(256, limit - EVENT_MARGIN)
    out = dict(event)
    for key in ("text", "output", "input", "summary", "content", "message"):
        if key not in out:
            continue
        value = out[key]
        if isinstance(value, str):
            text = value
        else:
            text = canonical_json(value)
        other = len(canonical_json({k: v for k, v in out.items() if k != key}).encode())
        keep = max(0, (room - other) // 4)  # up to 4 bytes per character in UTF-8
        cut = text[:keep] + TRUNCATED.format(n=len(text) - keep)
        out[key] = {"truncated": cut} if key == "input" else cut
        if len(canonical_json(out).encode()) <= limit:
            return out, True
    return {
        "type": out["type"] if str(out.get("type", "")).startswith("x-") else "x-truncated",
        "note": f"an event of {size} bytes did not fit max_event_bytes ({limit})",
    }, True


class Reader(abc.ABC):
    """The common half of a session reader (subclasses implement :meth:`feed`)."""

    vendor = ""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state: dict[str, Any] = dict(state or {})
        self.copied: set[str] = set()
        """uuids of lines copied from the session this file resumes (skipped)."""
        self.skipped: Counter[str] = Counter()
        self.custom: Counter[str] = Counter()
        self.steps: list[Step] = []

    # -- output
    def _events(self) -> list[dict[str, Any]]:
        if not self.steps or self.steps[-1].kind != "events":
            self.steps.append(Step("events"))
        return self.steps[-1].events

    def emit(self, event: dict[str, Any], *, key: str | None = None) -> None:
        """Append ``event``; a held-back usage of another model output is written first."""
        if event["type"] != "tool_result" and self.state.get("usage") and self.state.get("usage_key") != key:
            self.flush_usage()
        if event["type"].startswith("x-"):
            self.custom[event["type"]] += 1
        self._events().append(event)

    def meta(self, **facts: Any) -> None:
        facts = {k: v for k, v in facts.items() if v not in (None, "", {}, [])}
        if facts:
            self.steps.append(Step("meta", data=facts))

    def compaction(self, **data: Any) -> None:
        self.flush_usage()
        self.steps.append(Step("compaction", data=data))

    def skip(self, kind: str) -> None:
        self.skipped[kind] += 1

    # -- usage
    def hold_usage(self, usage: dict[str, Any], key: str) -> None:
        """Keep ``usage`` (a result event) until the next output; one per ``key`` (a message id)."""
        if key == self.state.get("usage_done"):
            return  # a later line of a message whose usage is written already
        if self.state.get("usage") and self.state.get("usage_key") != key:
            self.flush_usage()
        self.state["usage"] = usage
        self.state["usage_key"] = key

    def flush_usage(self) -> None:
        usage = self.state.pop("usage", None)
        key = self.state.pop("usage_key", None)
        if usage:
            if not self.state.get("turn_counted"):
                usage = {**usage, "turns": 1}
                self.state["turn_counted"] = True
            else:
                usage = {**usage, "turns": 0}
            self.state["usage_done"] = key
            self._events().append(usage)

    def user_prompt(self, text: str) -> None:
        """A real prompt from the person: a new turn starts; the first one is the title."""
        self.flush_usage()  # the previous turn's usage belongs to the previous turn
        self.state["turn_counted"] = False
        if not self.state.get("title") and text.strip():
            self.state["title"] = title_of(text)
            self.meta(title=self.state["title"])

    # -- lines
    def take(self) -> list[Step]:
        out, self.steps = self.steps, []
        return out

    def finish(self) -> list[Step]:
        """Write what is held back (the session is over or paused at a turn's end)."""
        self.flush_usage()
        return self.take()

    @abc.abstractmethod
    def feed(self, obj: Any, line: int) -> None:
        """Map one parsed line (``line``: its number in the file) into steps."""
