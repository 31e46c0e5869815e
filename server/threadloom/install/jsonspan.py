"""Text-level edits of one member of a JSON object, so the rest of the file keeps its bytes.

Re-serialising a parsed file would re-flow what the user laid out by hand (an inline
``"args": ["-y", "pkg"]`` becomes five lines). Instead the member is inserted, replaced or
cut in the text itself, indented like its neighbours. The caller checks that the result
parses to exactly the data it wants and otherwise falls back to re-serialising.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from json.decoder import scanstring
from typing import Any

_WS = re.compile(r"[ \t\r\n]*")
_SCALAR = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null")


@dataclass
class Member:
    key: str
    key_start: int
    value_start: int
    value_end: int


@dataclass
class Obj:
    start: int  # the "{"
    end: int  # one past the "}"
    members: list[Member]


def _ws(text: str, i: int) -> int:
    return _WS.match(text, i).end()  # type: ignore[union-attr]


def _value_end(text: str, i: int) -> int:
    c = text[i]
    if c == "{":
        return _object(text, i).end
    if c == "[":
        i = _ws(text, i + 1)
        if text[i] == "]":
            return i + 1
        while True:
            i = _ws(text, _value_end(text, i))
            if text[i] == "]":
                return i + 1
            if text[i] != ",":
                raise ValueError(f"expected , or ] at {i}")
            i = _ws(text, i + 1)
    if c == '"':
        return scanstring(text, i + 1)[1]
    m = _SCALAR.match(text, i)
    if not m:
        raise ValueError(f"unexpected {c!r} at {i}")
    return m.end()


def _object(text: str, i: int) -> Obj:
    if text[i] != "{":
        raise ValueError(f"expected an object at {i}")
    start, members = i, []
    i = _ws(text, i + 1)
    if text[i] == "}":
        return Obj(start, i + 1, members)
    while True:
        if text[i] != '"':
            raise ValueError(f"expected a key at {i}")
        key, after = scanstring(text, i + 1)
        colon = _ws(text, after)
        if text[colon] != ":":
            raise ValueError(f"expected : at {colon}")
        vstart = _ws(text, colon + 1)
        vend = _value_end(text, vstart)
        members.append(Member(key, i, vstart, vend))
        i = _ws(text, vend)
        if text[i] == "}":
            return Obj(start, i + 1, members)
        if text[i] != ",":
            raise ValueError(f"expected , or }} at {i}")
        i = _ws(text, i + 1)


def _line_indent(text: str, pos: int) -> str:
    """The whitespace that starts the line holding ``pos``."""
    line_start = text.rfind("\n", 0, pos) + 1
    return _WS.match(text, line_start).group(0).replace("\r", "").replace("\n", "")  # type: ignore[union-attr]


def _on_own_line(text: str, pos: int) -> bool:
    return text[text.rfind("\n", 0, pos) + 1 : pos].strip() == ""


def _dump(value: Any, indent: str | None, base: str, nl: str) -> str:
    if indent is None:
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, indent=indent).replace("\n", nl + base)


def set_member(text: str, path: list[str], key: str, value: Any, indent: str | None) -> str:
    """``text`` with ``key`` set to ``value`` in the object at ``path`` (created as needed)."""
    nl = "\r\n" if "\r\n" in text else "\n"
    obj = _object(text, _ws(text, 0))
    for depth, name in enumerate(path):
        found = next((m for m in obj.members if m.key == name), None)
        if found is None:  # the rest of the path becomes one new member
            nested: Any = {key: value}
            for inner in reversed(path[depth + 1 :]):
                nested = {inner: nested}
            return _insert(text, obj, name, nested, indent, nl)
        obj = _object(text, found.value_start)
    current = next((m for m in obj.members if m.key == key), None)
    if current is None:
        return _insert(text, obj, key, value, indent, nl)
    own_line = _on_own_line(text, current.key_start)
    base = _line_indent(text, current.key_start) if own_line else ""
    dumped = _dump(value, indent if own_line else None, base, nl)
    return text[: current.value_start] + dumped + text[current.value_end :]


def _insert(text: str, obj: Obj, key: str, value: Any, indent: str | None, nl: str) -> str:
    if obj.members:
        last = obj.members[-1]
        if _on_own_line(text, last.key_start):
            base = _line_indent(text, last.key_start)
            member = json.dumps(key) + ": " + _dump(value, indent, base, nl)
            return text[: last.value_end] + "," + nl + base + member + text[last.value_end :]
        member = json.dumps(key) + ": " + json.dumps(value, ensure_ascii=False)
        return text[: last.value_end] + ", " + member + text[last.value_end :]
    if indent is None:
        body = "{" + json.dumps(key) + ": " + json.dumps(value, ensure_ascii=False) + "}"
    else:
        outer = _line_indent(text, obj.start)
        inner = outer + indent
        body = "{" + nl + inner + json.dumps(key) + ": " + _dump(value, indent, inner, nl) + nl + outer + "}"
    return text[: obj.start] + body + text[obj.end :]


def remove_member(text: str, path: list[str], key: str) -> str:
    """``text`` without ``key`` in the object at ``path`` (unchanged if it is not there)."""
    obj = _object(text, _ws(text, 0))
    for name in path:
        found = next((m for m in obj.members if m.key == name), None)
        if found is None:
            return text
        obj = _object(text, found.value_start)
    index = next((i for i, m in enumerate(obj.members) if m.key == key), None)
    if index is None:
        return text
    if len(obj.members) == 1:
        return text[: obj.start] + "{}" + text[obj.end :]
    if index > 0:
        prev, this = obj.members[index - 1], obj.members[index]
        return text[: prev.value_end] + text[this.value_end :]
    this, following = obj.members[0], obj.members[1]
    return text[: this.key_start] + text[following.key_start :]
