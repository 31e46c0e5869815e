"""How an SQLite row holds an event and a manifest: nothing the row can rebuild (issue 17 item 3).

Since migration ``0010_lean_events``:

- ``events.prev_hash`` is the 32 bytes of the hash, a BLOB, not its 64 hex digits. A
  value that is not a lowercase hex SHA-256 (an edit behind the store's back) is kept as
  the text it is, so verification still reports it as it was written.
- ``events.ts`` is NULL when the line carries the same time: every line the server renders
  ends ``"ts":"…","type":"…"}`` (sorted keys), and :func:`line_ts` reads it back from there.
  A line where that reading gives another value (a recovered or imported line, a custom
  event with keys after ``type``) keeps its ``ts`` in the column, so what is read back is
  always what was written.
- ``threads.accounts`` is NULL while the thread has used nothing and has no budget (the
  defaults :func:`~.apply.accounts_from_doc` gives for NULL).
- the manifest document leaves out what the row holds in columns that win over it
  (``thread_id``, ``status``, ``updated_at``, ``heartbeat_at``) and the fields that are None
  and default to None (:func:`~.apply.manifest_doc`, on every backend);
  :func:`~.apply.row_to_thread` reads both forms.

The migration converts the rows with the same functions, registered on its connection
(:func:`register_functions`): SQLite 3.40 has no ``unhex()``.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ..models import BudgetState, Usage, canonical_json
from .apply import accounts_doc, lean_manifest_fields

__all__ = [
    "DEFAULT_ACCOUNTS",
    "event_row",
    "event_ts",
    "hash_hex",
    "hash_value",
    "lean_manifest",
    "line_ts",
    "register_functions",
    "stored_accounts",
    "stored_ts",
]

_TS_KEY = '"ts":"'


def line_ts(line: str) -> str | None:
    """The value of the last ``"ts":"`` in ``line`` (the top-level ``ts`` of a rendered line:
    its keys are sorted and only ``type`` follows ``ts``); None when there is none."""
    i = line.rfind(_TS_KEY)
    if i < 0:
        return None
    j = line.find('"', i + len(_TS_KEY))
    return None if j < 0 else line[i + len(_TS_KEY) : j]


def stored_ts(ts: str, line: str) -> str | None:
    """The ``ts`` column for an event: None when :func:`line_ts` gives ``ts`` back."""
    return None if line_ts(line) == ts else ts


def event_ts(column: str | None, line: str) -> str:
    """An event's ``ts`` from its row: the column when set, else the line's."""
    if column is not None:
        return column
    return line_ts(line) or ""


def hash_value(prev_hash: str | None) -> bytes | str | None:
    """The ``prev_hash`` column for a hash in hex: its 32 bytes when it is a lowercase
    SHA-256 in hex (what the store writes), else the value unchanged."""
    if prev_hash is None or len(prev_hash) != 64:
        return prev_hash
    try:
        raw = bytes.fromhex(prev_hash)
    except ValueError:
        return prev_hash
    return raw if raw.hex() == prev_hash else prev_hash


def hash_hex(column: bytes | str | None) -> str | None:
    """A ``prev_hash`` column read back as the hex the store's callers use."""
    if isinstance(column, bytes):
        return column.hex()
    return column


def event_row(
    thread_id: str, seq: int, ts: str, type_: str, line: str, prev_hash: str | None
) -> tuple[str, int, str | None, str, str, bytes | str | None]:
    """The values of ``INSERT INTO events (thread_id, seq, ts, type, line, prev_hash)``."""
    return (thread_id, seq, stored_ts(ts, line), type_, line, hash_value(prev_hash))


DEFAULT_ACCOUNTS = accounts_doc(Usage(), None)
"""The accounts of a thread that has used nothing and has no budget: stored as NULL."""


def stored_accounts(usage: Usage, budget: BudgetState | None) -> str | None:
    """The ``accounts`` column: None for :data:`DEFAULT_ACCOUNTS`."""
    doc = accounts_doc(usage, budget)
    return None if doc == DEFAULT_ACCOUNTS else doc


def lean_manifest(doc: str) -> str:
    """A stored manifest document of an earlier layout in the form
    :func:`~.apply.manifest_doc` writes now."""
    data: dict[str, Any] = json.loads(doc)
    return canonical_json(lean_manifest_fields(data))


def _lean_manifest_or_same(doc: Any) -> Any:
    try:
        return lean_manifest(doc)
    except (TypeError, ValueError, AttributeError):
        return doc  # not a JSON object: left as it is, for doctor to report


def register_functions(conn: sqlite3.Connection) -> None:
    """The functions migration 0010 converts rows with (``tl_hash_value``, ``tl_stored_ts``,
    ``tl_lean_manifest``), registered on ``conn``."""
    conn.create_function("tl_hash_value", 1, hash_value, deterministic=True)
    conn.create_function(
        "tl_stored_ts",
        2,
        lambda ts, line: stored_ts(ts, line) if isinstance(line, str) else ts,
        deterministic=True,
    )
    conn.create_function("tl_lean_manifest", 1, _lean_manifest_or_same, deterministic=True)
