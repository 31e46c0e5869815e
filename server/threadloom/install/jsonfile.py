"""Editing a JSON configuration file without disturbing what the user wrote.

Keys keep their order (Python dicts do), the file's indentation (spaces or tabs, and how
many), its line endings and whether it ends with a newline are kept; non-ASCII text stays
as it is. A file that is not strict JSON is refused with its path and the parser's message;
one that only has comments or trailing commas (JSONC) is refused too, since rewriting it
would drop the comments, with the entry to add by hand.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError


@dataclass
class JsonText:
    """A parsed JSON object and how its file was laid out."""

    data: dict[str, Any]
    indent: str | None
    crlf: bool
    final_newline: bool

    def dump(self) -> str:
        if self.indent is None:
            text = json.dumps(self.data, ensure_ascii=False)
        else:
            text = json.dumps(self.data, ensure_ascii=False, indent=self.indent)
        if self.final_newline:
            text += "\n"
        return text.replace("\n", "\r\n") if self.crlf else text


def parse_json(text: str | None, path: Path, *, snippet: str = "") -> JsonText:
    """Parse ``text`` (None or blank: a new empty object); raise ``[config_malformed]`` if it is not a JSON object."""
    if text is None or not text.strip():
        return JsonText({}, "  ", crlf=False, final_newline=True)
    body = text.lstrip("\ufeff")
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        lenient = _strip_jsonc(body)
        hint = "fix the file (or move it aside) and run the command again; threadloom did not change it"
        if lenient is not None:
            hint = (
                "it has comments or trailing commas, which rewriting would lose; threadloom did not change it. "
                "Add the entry by hand" + (f": {snippet}" if snippet else "")
            )
        raise InvalidInputError(
            f"[config_malformed] {path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}; {hint}",
            rule="config_malformed",
        ) from None
    if not isinstance(data, dict):
        raise InvalidInputError(
            f"[config_malformed] {path} holds a JSON {type(data).__name__}, not an object; threadloom did not change it",
            rule="config_malformed",
        )
    return JsonText(data, _indent_of(body), crlf="\r\n" in body, final_newline=body.endswith("\n"))


def _indent_of(text: str) -> str | None:
    lines = text.splitlines()
    for line in lines[1:]:
        stripped = line.lstrip(" \t")
        if stripped and stripped != line:
            return line[: len(line) - len(stripped)]
    if len(lines) > 1 or text.strip() in {"{}", ""}:
        return "  "
    return None  # one line with content: stay on one line


def object_at(doc: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    """``doc[key]`` as an object, created when absent; refuse another type."""
    value = doc.setdefault(key, {})
    if not isinstance(value, dict):
        raise InvalidInputError(
            f"[config_shape] {path}: {key!r} is a {type(value).__name__}, expected an object; "
            "threadloom did not change the file",
            rule="config_shape",
        )
    return value


_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/|,(?=\s*[}\]])', re.S)


def _strip_jsonc(text: str) -> Any | None:
    """The value of ``text`` read as JSON with comments and trailing commas, or None."""

    def keep(m: re.Match[str]) -> str:
        token = m.group(0)
        return token if token.startswith('"') else ""

    try:
        return json.loads(_TOKEN.sub(keep, text))
    except json.JSONDecodeError:
        return None
