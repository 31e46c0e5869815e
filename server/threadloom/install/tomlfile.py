"""Editing Codex's ``config.toml`` with tomlkit, which keeps comments, order and layout."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.container import OutOfOrderTableProxy
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import InlineTable, Table
from tomlkit.toml_document import TOMLDocument

from ..errors import InvalidInputError

TABLE = "mcp_servers"


def parse_toml(text: str | None, path: Path) -> TOMLDocument:
    if text is None or not text.strip():
        return tomlkit.document()
    try:
        return tomlkit.parse(text)
    except TOMLKitError as exc:
        raise InvalidInputError(
            f"[config_malformed] {path} is not valid TOML: {exc}; fix the file (or move it aside) and run "
            "the command again; threadloom did not change it",
            rule="config_malformed",
        ) from None


def _servers(doc: TOMLDocument, path: Path, *, create: bool) -> Any:
    servers = doc.get(TABLE)
    if servers is None:
        if not create:
            return None
        servers = tomlkit.table(is_super_table=True)
        doc.add(TABLE, servers)
        return doc[TABLE]  # type: ignore[return-value]
    if not isinstance(servers, (Table, InlineTable, OutOfOrderTableProxy)):
        raise InvalidInputError(
            f"[config_shape] {path}: {TABLE} is a {type(servers).__name__}, expected a table; "
            "threadloom did not change the file",
            rule="config_shape",
        )
    return servers


def get_server(doc: TOMLDocument, name: str, path: Path) -> dict[str, Any] | None:
    servers = _servers(doc, path, create=False)
    if servers is None or name not in servers:
        return None
    value = servers[name]
    return value.unwrap() if hasattr(value, "unwrap") else dict(value)


def set_server(doc: TOMLDocument, name: str, entry: dict[str, Any], path: Path) -> None:
    """Add ``[mcp_servers.NAME]``, or update the keys of ``entry`` in an existing one (others stay)."""
    servers = _servers(doc, path, create=True)
    assert servers is not None
    current = servers.get(name)
    if current is None:
        if isinstance(servers, InlineTable):
            table: Any = tomlkit.inline_table()
        else:
            table = tomlkit.table()
        for key, value in entry.items():
            table[key] = _item(key, value)
        if isinstance(table, Table):
            table.add(tomlkit.nl())  # a blank line before whatever table follows
        servers[name] = table
        return
    if not isinstance(current, (Table, InlineTable)):
        raise InvalidInputError(
            f"[config_shape] {path}: {TABLE}.{name} is a {type(current).__name__}, expected a table; "
            "threadloom did not change the file",
            rule="config_shape",
        )
    for key, value in entry.items():
        if key == "env" and isinstance(current.get("env"), (Table, InlineTable)):
            for k, v in value.items():
                current["env"][k] = v
        elif current.get(key) != value:
            current[key] = _item(key, value)


def _item(key: str, value: Any) -> Any:
    if isinstance(value, dict):
        inline = tomlkit.inline_table()
        inline.update(value)
        return inline
    return value


def remove_server(doc: TOMLDocument, name: str, path: Path) -> bool:
    servers = _servers(doc, path, create=False)
    if servers is None or name not in servers:
        return False
    del servers[name]
    return True


def _wanted(before: str, name: str, entry: dict[str, Any] | None) -> dict[str, Any]:
    data = tomllib.loads(before)
    servers = data.setdefault(TABLE, {})
    current = servers.get(name)
    if entry is None:
        servers.pop(name, None)
    elif isinstance(current, dict):
        merged = copy.deepcopy(current)
        for key, value in entry.items():
            merged[key] = (
                {**merged["env"], **value} if key == "env" and isinstance(merged.get("env"), dict) else value
            )
        servers[name] = merged
    else:
        servers[name] = entry
    if not servers:
        del data[TABLE]
    return data


def _read(text: str) -> dict[str, Any] | None:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None
    if data.get(TABLE) == {}:
        del data[TABLE]
    return data


def checked(
    before: str, after: str, entry: dict[str, Any] | None, path: Path, name: str = "threadloom"
) -> str:
    """``after`` if it means exactly ``before`` with the one server changed; else a plain
    ``[mcp_servers.NAME]`` section appended to ``before``, if that does; else a refusal
    (tomlkit can misplace a new table after top-level dotted keys)."""
    want = _wanted(before, name, entry)
    if _read(after) == want:
        return after
    if entry is not None and name not in (tomllib.loads(before).get(TABLE) or {}):
        lines = [f"[{TABLE}.{name}]"] + [f"{k} = {tomlkit.item(v).as_string()}" for k, v in entry.items()]
        appended = before.rstrip("\n") + ("\n\n" if before.strip() else "") + "\n".join(lines) + "\n"
        if _read(appended) == want:
            return appended
    snippet = tomlkit.dumps({TABLE: {name: entry}}) if entry is not None else f"(delete [{TABLE}.{name}])"
    raise InvalidInputError(
        f"[config_layout] {path}: threadloom cannot change its entry here without moving other settings; "
        f"threadloom did not change the file. Edit it by hand: {snippet.strip()}",
        rule="config_layout",
    )
