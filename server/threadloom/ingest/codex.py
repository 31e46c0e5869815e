"""Codex sessions: ``$CODEX_HOME/sessions/YYYY/MM/DD/rollout-<time>-<id>.jsonl``.

Each line is ``{"timestamp", "type", "payload"}``:

* ``session_meta``: the session's id, cwd, git (branch), cli_version, originator and
  ``source``; a session spawned by another one names its parent there
  (``source.subagent.thread_spawn.parent_thread_id``) and becomes a child thread;
* ``turn_context``: the model (and cwd, policies) of the next turn;
* ``response_item``: what the model saw and said: ``message`` (``input_text``,
  ``output_text``, ``input_image`` content), ``reasoning``, ``function_call`` /
  ``function_call_output``, ``custom_tool_call`` / ``custom_tool_call_output``,
  ``local_shell_call``, ``web_search_call`` and others;
* ``event_msg``: the UI's events; ``token_count`` carries the usage (mapped to a
  ``result`` event); ``user_message``, ``agent_message`` and ``agent_reasoning`` repeat
  response items and are counted as skipped, like the other UI events;
* ``compacted``: the summary that replaced the history: a continuation link.

Mapping: messages → ``message`` (developer/system → system; injected context such as
``<environment_context>`` is kept with ``metadata.meta``); calls and outputs →
``tool_use`` / ``tool_result`` (``is_error`` when the output says the call failed);
reasoning → ``x-reasoning``; other response items → ``x-<type>``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..models import canonical_json
from .mapping import Reader, custom_type, image_kind, text_of_blocks

VENDOR = "codex"
CONTEXT_PREFIXES = (
    "<environment_context>",
    "<user_instructions>",
    "<INSTRUCTIONS>",
    "# AGENTS.md instructions",
    "<user_shell_command>",
    "<turn_aborted>",
)
"""User-role text that Codex injects itself (never a title)."""
RESPONSE_ITEMS = {
    "message",
    "reasoning",
    "function_call",
    "function_call_output",
    "custom_tool_call",
    "custom_tool_call_output",
    "local_shell_call",
    "web_search_call",
}
"""Item types that older rollouts (before the ``{type, payload}`` envelope) wrote bare."""
KEPT_EVENTS = {
    "error",
    "turn_aborted",
    "warning",
    "stream_error",
    "entered_review_mode",
    "exited_review_mode",
}
"""``event_msg`` kinds kept as custom events; the others are counted as skipped."""


def sessions_dir(home: Path | None = None) -> Path:
    base = os.environ.get("CODEX_HOME")
    return (Path(base) if base else (home or Path.home()) / ".codex") / "sessions"


def default_paths() -> list[Path]:
    """``$CODEX_HOME/sessions``, else ``~/.codex/sessions``."""
    return [sessions_dir()]


def discover(paths: list[Path]) -> list[Path]:
    """Rollout files under ``paths`` (files or folders), oldest first (parents before children)."""
    found: set[Path] = set()
    for p in paths:
        if p.is_file():
            found.add(p)
        elif p.is_dir():
            found.update(q for q in p.rglob("rollout-*.jsonl") if q.is_file())
    return sorted(found, key=lambda q: (q.name, str(q)))


def session_from_name(path: Path) -> str:
    """The session id in ``rollout-YYYY-MM-DDTHH-MM-SS-<uuid>.jsonl`` (the stem if none)."""
    parts = path.stem.split("-")
    return "-".join(parts[-5:]) if len(parts) >= 11 else path.stem


def parent_file(path: Path, parent: str) -> Path | None:
    """The parent session's rollout: searched from the sessions folder the file is in."""
    roots = [sessions_dir()]
    if len(path.parents) > 3:
        roots.insert(0, path.parents[3])
    for root in roots:
        if root.is_dir():
            for hit in sorted(root.rglob(f"rollout-*{parent}.jsonl")):
                return hit
    return None


def _find_parent(source: Any) -> str | None:
    """``parent_thread_id`` anywhere inside ``source`` (its nesting differs across versions)."""
    if isinstance(source, dict):
        for k, v in source.items():
            if k in ("parent_thread_id", "parent_session_id", "parent_id") and isinstance(v, str):
                return v
            found = _find_parent(v)
            if found:
                return found
    return None


def _tool_input(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except ValueError:
            return {"arguments": arguments}
        return parsed if isinstance(parsed, dict) else {"arguments": parsed}
    return {"arguments": arguments}


def _output(payload: dict[str, Any]) -> tuple[str, bool]:
    """A call's output text and whether it reports a failure."""
    out = payload.get("output")
    failed = False
    if isinstance(out, dict):  # {"content": ..., "success": bool}
        failed = out.get("success") is False
        out = out.get("content", out)
    text = text_of_blocks(out) if not isinstance(out, str) else out
    if isinstance(out, str) and out.startswith("{"):
        try:
            data = json.loads(out)
        except ValueError:
            data = None
        if isinstance(data, dict):
            meta = data.get("metadata")
            code = meta.get("exit_code") if isinstance(meta, dict) else None
            failed = failed or (isinstance(code, int) and code != 0)
            if isinstance(data.get("output"), str) and set(data) <= {"output", "metadata"}:
                text = data["output"]  # the shell wrapper: the output itself, the exit code decides is_error
    return text, failed


class CodexReader(Reader):
    vendor = VENDOR

    def feed(self, obj: dict[str, Any], line: int) -> None:
        kind = obj.get("type")
        payload = obj.get("payload") if isinstance(obj.get("payload"), dict) else {}
        if "payload" not in obj:  # the older format: a bare session meta, then bare items
            if kind in RESPONSE_ITEMS:
                kind, payload = "response_item", obj
            elif kind is None and "id" in obj and "timestamp" in obj and line <= 1:
                kind, payload = "session_meta", obj
            elif obj.get("record_type"):
                self.skip(f"record_type:{obj['record_type']}")
                return
        if kind == "session_meta":
            self._session_meta(payload)
        elif kind == "turn_context":
            self._turn_context(payload)
        elif kind == "response_item":
            self._response_item(payload, line)
        elif kind == "event_msg":
            self._event_msg(payload, line)
        elif kind == "compacted":
            self.compaction(reason="compaction")
            message = payload.get("message")
            if isinstance(message, str) and message.strip():
                self.emit(
                    {
                        "type": "message",
                        "role": "user",
                        "text": message,
                        "metadata": {"compact_summary": True},
                    }
                )
        else:
            self.skip(str(kind) if kind else "(no type)")

    def _fact(self, **facts: Any) -> None:
        known = self.state.setdefault("facts", {})
        new = {k: v for k, v in facts.items() if v not in (None, "", {}) and k not in known}
        if new:
            known.update(new)
            self.meta(**new)

    def _session_meta(self, p: dict[str, Any]) -> None:
        if self.state.get("facts", {}).get("source_session_id"):
            self.skip("session_meta (again)")
            return
        git = p.get("git") if isinstance(p.get("git"), dict) else {}
        source = p.get("source")
        self._fact(
            source_session_id=p.get("id"),
            cwd=p.get("cwd"),
            cli_version=p.get("cli_version"),
            originator=p.get("originator"),
            git_branch=git.get("branch"),
            parent_session_id=_find_parent(source) or p.get("parent_thread_id"),
            forked_from_session_id=p.get("forked_from_id"),
        )

    def _turn_context(self, p: dict[str, Any]) -> None:
        model = p.get("model")
        if isinstance(model, str):
            self._fact(model=model)

    def _response_item(self, p: dict[str, Any], line: int) -> None:
        itype = p.get("type")
        if itype == "message":
            self._message(p)
        elif itype == "reasoning":
            summary = p.get("summary")
            text = text_of_blocks(
                [{"type": "text", "text": s.get("text", "")} for s in summary if isinstance(s, dict)]
                if isinstance(summary, list)
                else summary
            )
            event: dict[str, Any] = {"type": "x-reasoning", "summary": text}
            content = p.get("content")
            if content:
                event["text"] = text_of_blocks(
                    [{"type": "text", "text": c.get("text", "")} for c in content if isinstance(c, dict)]
                    if isinstance(content, list)
                    else content
                )
            self.emit(event)
        elif itype in ("function_call", "custom_tool_call", "local_shell_call"):
            call_id = str(p.get("call_id") or p.get("id") or f"call-line-{line}")[:200]
            if itype == "function_call":
                name, tool_input = p.get("name"), _tool_input(p.get("arguments"))
            elif itype == "custom_tool_call":
                name, tool_input = p.get("name"), {"input": p.get("input")}
            else:
                action = p.get("action")
                name, tool_input = "local_shell", action if isinstance(action, dict) else {"action": action}
            self.emit(
                {"type": "tool_use", "id": call_id, "name": str(name or itype)[:200], "input": tool_input}
            )
        elif itype in ("function_call_output", "custom_tool_call_output", "local_shell_call_output"):
            text, failed = _output(p)
            self.emit(
                {
                    "type": "tool_result",
                    "tool_use_id": str(p.get("call_id") or "unknown")[:200],
                    "output": text,
                    "is_error": failed,
                }
            )
        else:
            self.emit({"type": custom_type(str(itype or "response-item")), "item": p})

    def _message(self, p: dict[str, Any]) -> None:
        role = p.get("role")
        content = p.get("content")
        blocks = (
            content if isinstance(content, list) else [{"type": "input_text", "text": str(content or "")}]
        )
        texts = []
        for b in blocks:
            if not isinstance(b, dict):
                continue
            if b.get("type") in ("input_text", "output_text", "text"):
                texts.append(str(b.get("text", "")))
            elif b.get("type") in ("input_image", "image"):
                self.emit({"type": "x-image", "role": str(role), "media_type": image_kind(b)})
            else:
                self.emit({"type": custom_type(f"content-{b.get('type')}"), "block": b})
        text = "\n".join(texts)
        if not text.strip():
            return
        if role == "assistant":
            self.emit({"type": "message", "role": "assistant", "text": text})
        elif role == "user":
            if text.lstrip().startswith(CONTEXT_PREFIXES):
                self.emit({"type": "message", "role": "user", "text": text, "metadata": {"meta": True}})
            else:
                self.user_prompt(text)
                self.emit({"type": "message", "role": "user", "text": text})
        else:  # developer, system
            self.emit({"type": "message", "role": "system", "text": text})

    def _event_msg(self, p: dict[str, Any], line: int) -> None:
        etype = str(p.get("type") or "(no type)")
        if etype == "token_count":
            self._usage(p, line)
        elif etype in KEPT_EVENTS:
            self.emit(
                {"type": custom_type(etype), **{k: v for k, v in p.items() if k not in ("type", "seq", "ts")}}
            )
        else:
            self.skip(f"event_msg:{etype}")

    def _usage(self, p: dict[str, Any], line: int) -> None:
        info = p.get("info")
        if not isinstance(info, dict):
            self.skip("event_msg:token_count (no usage)")
            return
        window = info.get("model_context_window")
        if isinstance(window, int) and 1000 <= window <= 10_000_000:
            self._fact(context_window=window)
        total = info.get("total_token_usage")
        if total is not None and canonical_json(total) == self.state.get("last_total"):
            self.skip("event_msg:token_count (repeated)")
            return
        self.state["last_total"] = canonical_json(total) if total is not None else None
        last = info.get("last_token_usage") if isinstance(info.get("last_token_usage"), dict) else total
        if not isinstance(last, dict):
            self.skip("event_msg:token_count (no usage)")
            return

        def n(key: str) -> int:
            v = last.get(key)
            return v if isinstance(v, int) and v >= 0 else 0

        self.hold_usage(
            {
                "type": "result",
                "input_tokens": n("input_tokens"),
                "output_tokens": n("output_tokens"),
                "cache_read_tokens": n("cached_input_tokens"),
            },
            f"token-count-{line}",
        )
