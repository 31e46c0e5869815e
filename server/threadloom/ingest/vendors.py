"""The tools ingest knows: where their session files are and how they relate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import claude_code, codex
from .runner import Vendor


def _claude_parent(path: Path, facts: dict[str, Any]) -> str | None:
    return claude_code.parent_session_of(path, {"sessionId": facts.get("source_session_id")})


def _claude_parent_file(path: Path, parent: str) -> Path | None:
    return claude_code.parent_file(path, parent)


CLAUDE_CODE = Vendor(
    name=claude_code.VENDOR,
    reader=claude_code.ClaudeCodeReader,
    discover=claude_code.discover,
    default_paths=claude_code.default_paths,
    session_key=lambda path, facts: claude_code.session_of(path),
    parent_session=_claude_parent,
    parent_file=_claude_parent_file,
    resumed_from=claude_code.resumed_from,
)

CODEX = Vendor(
    name=codex.VENDOR,
    reader=codex.CodexReader,
    discover=codex.discover,
    default_paths=codex.default_paths,
    session_key=lambda path, facts: facts.get("source_session_id") or codex.session_from_name(path),
    parent_session=lambda path, facts: facts.get("parent_session_id"),
    parent_file=codex.parent_file,
    pattern="rollout-*.jsonl",
)

VENDORS: dict[str, Vendor] = {CLAUDE_CODE.name: CLAUDE_CODE, CODEX.name: CODEX}


def vendor(name: str) -> Vendor:
    """The vendor called ``name`` (``claude-code`` or ``codex``)."""
    from ..errors import InvalidInputError

    try:
        return VENDORS[name]
    except KeyError:
        raise InvalidInputError(
            f"ingest knows {', '.join(VENDORS)}; got {name!r:.100}", rule="ingest_vendor"
        ) from None
