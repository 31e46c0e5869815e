"""Claude Code sessions: ``~/.claude/projects/<encoded cwd>/<session id>.jsonl``.

Each line is one JSON object with a ``type``. Conversation lines are ``user`` and
``assistant``, whose ``message`` is the Anthropic API message: ``content`` is a string
or a list of ``text``, ``thinking``, ``tool_use``, ``tool_result`` (with ``is_error``)
and ``image`` blocks. One API response is written over several lines that share
``message.id`` (one content block each, the same ``usage`` on every line), so usage is
counted once per message id. ``isMeta`` lines are injected context (kept, marked),
``isCompactSummary`` lines carry the summary that opens the conversation after a
compaction, which a ``system`` line of subtype ``compact_boundary`` announces.

Mapping: text → ``message``; ``tool_use``/``tool_result`` → the same threadloom events;
``thinking`` → ``x-thinking``; images → ``x-image`` (the media type, not the bytes);
usage → ``result``; ``summary`` and other ``system`` lines → ``x-summary``/``x-system``;
a compaction boundary → a continuation link. ``file-history-snapshot``, ``progress``,
``queue-operation`` and any other line kind are counted as skipped, by kind.

Subagents: ``<session id>/subagents/agent-*.jsonl`` (and, in older versions,
``agent-*.jsonl`` beside the sessions) become child threads of the session's thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .mapping import Reader, custom_type, image_kind, text_of_blocks

VENDOR = "claude-code"
SKIPPED_KINDS = ("file-history-snapshot", "progress", "queue-operation")
NOT_PROMPTS = (
    "<command-name>",
    "<command-message>",
    "<command-args>",
    "<local-command-stdout>",
    "<local-command-stderr>",
    "<local-command-caveat>",
    "<user-prompt-submit-hook>",
    "<system-reminder>",
    "Caveat:",
    "[Request interrupted",
)
"""Text in a user line that Claude Code wrote itself, not the person (never a title)."""
FACTS = {"sessionId": "source_session_id", "cwd": "cwd", "gitBranch": "git_branch", "version": "cli_version"}


def default_paths(home: Path | None = None) -> list[Path]:
    """``$CLAUDE_CONFIG_DIR/projects`` when set, else ``~/.claude/projects``."""
    import os

    base = os.environ.get("CLAUDE_CONFIG_DIR")
    root = Path(base) if base else (home or Path.home()) / ".claude"
    return [root / "projects"]


def is_subagent_file(path: Path) -> bool:
    return path.name.startswith("agent-")


def session_of(path: Path) -> str:
    """The session id a file stands for (a subagent file: ``<parent>/agent-<id>``)."""
    if is_subagent_file(path) and path.parent.name == "subagents":
        return f"{path.parent.parent.name}/{path.stem}"
    return path.stem


def parent_session_of(path: Path, first_line: dict[str, Any] | None) -> str | None:
    """The session a subagent file belongs to (its folder, or the lines' ``sessionId``)."""
    if not is_subagent_file(path):
        return None
    if path.parent.name == "subagents":
        return path.parent.parent.name
    if first_line and isinstance(first_line.get("sessionId"), str):
        return first_line["sessionId"]
    return None


def parent_file(path: Path, parent_session: str) -> Path:
    """Where the parent session's own transcript lies, beside the subagent's folder."""
    if path.parent.name == "subagents":
        return path.parent.parent.parent / f"{parent_session}.jsonl"
    return path.parent / f"{parent_session}.jsonl"


def discover(paths: list[Path]) -> list[Path]:
    """Session files under ``paths`` (files or folders): sessions first, in the order they
    were last written to (a resumed session after the one it resumes), then subagents."""
    found: set[Path] = set()
    for p in paths:
        if p.is_file():
            found.add(p)
        elif p.is_dir():
            found.update(q for q in p.rglob("*.jsonl") if q.is_file())
    return sorted(found, key=lambda q: (is_subagent_file(q), last_written(q), str(q)))


def last_written(path: Path, tail: int = 65536) -> str:
    """The timestamp of the file's last line that has one (its mtime if none does)."""
    import json
    from datetime import UTC, datetime

    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - tail))
            lines = f.read().splitlines()
        for raw in reversed(lines):
            try:
                ts = json.loads(raw).get("timestamp")
            except (ValueError, AttributeError):
                continue
            if isinstance(ts, str) and ts:
                return ts
        return datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    except OSError:
        return ""


def is_prompt(text: str) -> bool:
    return bool(text.strip()) and not text.lstrip().startswith(NOT_PROMPTS)


class ClaudeCodeReader(Reader):
    vendor = VENDOR

    def feed(self, obj: dict[str, Any], line: int) -> None:
        kind = obj.get("type")
        if self.copied and obj.get("uuid") in self.copied:
            self.skip("copied from the resumed session")
            return
        self._facts(obj)
        if kind == "user":
            self._user(obj)
        elif kind == "assistant":
            self._assistant(obj)
        elif kind == "summary":
            self.emit(
                {
                    "type": "x-summary",
                    "summary": str(obj.get("summary", "")),
                    "leaf_uuid": obj.get("leafUuid"),
                }
            )
        elif kind == "system":
            self._system(obj)
        else:
            self.skip(str(kind) if kind else "(no type)")

    def _facts(self, obj: dict[str, Any]) -> None:
        facts = self.state.setdefault("facts", {})
        new = {}
        for src, dst in FACTS.items():
            value = obj.get(src)
            if isinstance(value, str) and value and dst not in facts:
                facts[dst] = new[dst] = value
        if obj.get("isSidechain") and "sidechain" not in facts:
            facts["sidechain"] = new["sidechain"] = True
        if isinstance(obj.get("agentId"), str) and "subagent_id" not in facts:
            facts["subagent_id"] = new["subagent_id"] = obj["agentId"]
        if new:
            self.meta(**new)

    def _system(self, obj: dict[str, Any]) -> None:
        subtype = obj.get("subtype")
        if subtype == "compact_boundary":
            info = obj.get("compactMetadata") or {}
            self.compaction(
                reason="compaction",
                trigger=info.get("trigger") if isinstance(info, dict) else None,
                pre_tokens=info.get("preTokens") if isinstance(info, dict) else None,
            )
            return
        event: dict[str, Any] = {"type": "x-system", "subtype": subtype}
        if obj.get("content") is not None:
            event["content"] = text_of_blocks(obj.get("content"))
        if obj.get("level"):
            event["level"] = obj["level"]
        self.emit({k: v for k, v in event.items() if v is not None})

    def _text(self, role: str, text: str, obj: dict[str, Any], key: str | None = None) -> None:
        meta: dict[str, Any] = {}
        if obj.get("isCompactSummary"):
            meta["compact_summary"] = True
        elif obj.get("isMeta"):
            meta["meta"] = True
        elif role == "user" and is_prompt(text):
            self.user_prompt(text)
        event: dict[str, Any] = {"type": "message", "role": role, "text": text}
        if meta:
            event["metadata"] = meta
        self.emit(event, key=key)

    def _user(self, obj: dict[str, Any]) -> None:
        message = obj.get("message") if isinstance(obj.get("message"), dict) else {}
        content = message.get("content")
        if isinstance(content, str):
            self._text("user", content, obj)
            return
        if not isinstance(content, list):
            self.skip("user (no content)")
            return
        for block in content:
            if not isinstance(block, dict):
                self._text("user", str(block), obj)
                continue
            btype = block.get("type")
            if btype == "tool_result":
                self.emit(
                    {
                        "type": "tool_result",
                        "tool_use_id": str(block.get("tool_use_id") or "unknown"),
                        "output": text_of_blocks(block.get("content")),
                        "is_error": bool(block.get("is_error", False)),
                    }
                )
            elif btype == "text":
                self._text("user", str(block.get("text", "")), obj)
            elif btype == "image":
                self.emit({"type": "x-image", "role": "user", "media_type": image_kind(block)})
            else:
                self.emit({"type": custom_type(f"user-{btype}"), "block": _small(block)})

    def _assistant(self, obj: dict[str, Any]) -> None:
        message = obj.get("message") if isinstance(obj.get("message"), dict) else {}
        key = str(message.get("id") or obj.get("requestId") or obj.get("uuid") or "")
        model = message.get("model")
        facts = self.state.setdefault("facts", {})
        if isinstance(model, str) and model and not model.startswith("<") and "model" not in facts:
            facts["model"] = model
            self.meta(model=model)
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        for block in content if isinstance(content, list) else []:
            if not isinstance(block, dict):
                continue
            btype = block.get("type")
            if btype == "text":
                self._text("assistant", str(block.get("text", "")), obj, key)
            elif btype == "thinking":
                self.emit({"type": "x-thinking", "text": str(block.get("thinking", ""))}, key=key)
            elif btype == "redacted_thinking":
                self.emit({"type": "x-thinking", "redacted": True}, key=key)
            elif btype == "tool_use":
                tool_input = block.get("input")
                self.emit(
                    {
                        "type": "tool_use",
                        "id": str(block.get("id") or f"missing-{key}")[:200],
                        "name": str(block.get("name") or "unknown")[:200],
                        "input": tool_input if isinstance(tool_input, dict) else {"value": tool_input},
                    },
                    key=key,
                )
            elif btype == "image":
                self.emit({"type": "x-image", "role": "assistant", "media_type": image_kind(block)}, key=key)
            else:
                self.emit({"type": custom_type(str(btype)), "block": _small(block)}, key=key)
        usage = message.get("usage")
        if isinstance(usage, dict) and key:
            self.hold_usage(_result(usage, obj.get("costUSD")), key)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _result(usage: dict[str, Any], cost: Any) -> dict[str, Any]:
    cache_read = _count(usage.get("cache_read_input_tokens"))
    event: dict[str, Any] = {
        "type": "result",
        # the whole prompt: Anthropic's input_tokens leaves out what was read from or written to the cache
        "input_tokens": _count(usage.get("input_tokens"))
        + cache_read
        + _count(usage.get("cache_creation_input_tokens")),
        "output_tokens": _count(usage.get("output_tokens")),
        "cache_read_tokens": cache_read,
    }
    if isinstance(cost, (int, float)) and cost >= 0:
        event["cost"] = float(cost)
    return event


def _small(block: dict[str, Any]) -> dict[str, Any]:
    """A content block without inline binary data (base64 sources are named, not copied)."""
    out = {}
    for k, v in block.items():
        if isinstance(v, dict) and v.get("type") == "base64":
            out[k] = {"type": "base64", "media_type": v.get("media_type")}
        else:
            out[k] = v
    return out


def resumed_from(
    path: Path, objs: list[dict[str, Any]], states: Any
) -> tuple[dict[str, Any], set[str]] | None:
    """The older session a new session file resumes, and the uuids of the lines it copied.

    ``claude --resume`` (in the versions that start a new file) writes the earlier
    conversation again at the head of the new file, keeping each line's ``uuid``; its
    first conversation line is the older session's first line.
    """
    if is_subagent_file(path):
        return None
    first = next(
        (o for o in objs if o.get("type") in ("user", "assistant") and isinstance(o.get("uuid"), str)), None
    )
    if first is None:
        return None
    entry = states.session(VENDOR, "uuid:" + first["uuid"])
    if (
        entry is None
        or Path(entry["source_file"]) == path.resolve()
        or not Path(entry["source_file"]).is_file()
    ):
        return None
    copied: set[str] = set()
    import json

    with open(entry["source_file"], "rb") as f:
        for raw in f:
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("uuid"), str):
                copied.add(obj["uuid"])
    return {**entry, "session_id": session_of(Path(entry["source_file"]))}, copied
