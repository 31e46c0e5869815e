"""SQLite full-text search: an FTS5 index over the searchable text of events.

Layout (migration ``0002_search_index``):

- ``search_docs``: a view over ``events`` (joined to ``threads``) with one row per
  event of an indexed type: ``id`` (the event's rowid), ``tid``, ``seq``, ``type``,
  ``body`` (message / assistant_text text), ``tools`` (tool_use name + input,
  tool_result output) and ``agent`` (the hex of the thread's agent_id).
- ``search_index``: an FTS5 table with external content ``search_docs`` keyed by the
  event rowid, columns ``body, tools, tid, agent``. It stores no copy of the text
  (snippets are built from the event itself); ``tid`` and ``agent`` hold one token each
  so a query can be scoped to a chain or an agent inside the index.

The writer indexes the events a group commit appended in the same transaction, after
every job's savepoint is released (FTS5 flushes its pending terms at each savepoint,
so indexing inside them would write one index segment per job). Deleting a thread
removes its rows with FTS5's ``delete`` command before the events go.

Ranking: FTS5's BM25 must visit every match of a query to rank it, which costs
~2.5 µs per match. A query that matches more than :data:`RANK_WINDOW` events is
therefore ranked among its :data:`RANK_WINDOW` most recent matches; and a word held
by more than half of the recent events (with at least :data:`COMMON_MIN_DOCS`
matches) is dropped from a query that has other words, because its BM25 weight is
nil while its cost is the largest (a query of only such words is answered newest first).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from ..models import THREAD_ID_RE
from ..textquery import Clause, Mode, TextQuery, render_fts5
from .base import CommitResult, Op, PutThread, ReindexProgress, SearchHit
from .textsearch import BODY_WEIGHT, TOOLS_WEIGHT

__all__ = [
    "MIGRATION_SQL",
    "IndexPlan",
    "SearchEngine",
    "agent_moves",
    "agent_token",
    "delete_thread_docs",
]

T = TypeVar("T")

TABLE = "search_index"
VIEW = "search_docs"
DOCSIZE = "search_index_docsize"

RANK_WINDOW = 5000
"""A query with more matches is ranked among its most recent RANK_WINDOW matches (~12 ms)."""
COMMON_MIN_DOCS = 1000
"""A word is 'common' only if at least this many events hold it (small corpora never drop words)."""
COMMON_TTL = 300.0
"""Seconds a word's common/rare verdict is cached."""
MAX_SCOPE_TERMS = 200
"""Up to this many thread ids are matched inside the index; more are filtered after it."""
AGENT_TERM_MAX_SHARE = 0.1
"""An agent owning at most this share of the threads is matched inside the index."""
SMALL_STORE_THREADS = 1000
"""Below this many threads an agent is always matched inside the index."""
RESOLVE_CHUNK = 200
REINDEX_BATCH = 2000

MIGRATION_SQL = f"""
CREATE VIEW {VIEW} AS
SELECT e.id AS id, e.thread_id AS tid, e.seq AS seq, e.type AS type,
  CASE WHEN e.type IN ('message', 'assistant_text') THEN json_extract(e.line, '$.text') END AS body,
  CASE e.type
    WHEN 'tool_use' THEN json_extract(e.line, '$.name') || ' ' || COALESCE(json_extract(e.line, '$.input'), '{{}}')
    WHEN 'tool_result' THEN
      CASE json_type(e.line, '$.output')
        WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' WHEN 'null' THEN 'null'
        ELSE json_extract(e.line, '$.output')
      END
  END AS tools,
  hex(t.agent_id) AS agent
FROM events AS e JOIN threads AS t ON t.thread_id = e.thread_id
WHERE e.type IN ('message', 'assistant_text', 'tool_use', 'tool_result');
CREATE VIRTUAL TABLE {TABLE} USING fts5(
  body, tools, tid, agent,
  content='{VIEW}', content_rowid='id',
  tokenize='unicode61 remove_diacritics 2'
);
INSERT INTO {TABLE}({TABLE}) VALUES ('rebuild')
"""
"""Migration 0002 (statements separated by ';', none contains one)."""

_COLUMNS = "body, tools, tid, agent"
_INSERT = f"INSERT INTO {TABLE}(rowid, {_COLUMNS}) SELECT id, {_COLUMNS} FROM {VIEW}"
_INDEXED = f"EXISTS (SELECT 1 FROM {DOCSIZE} AS d WHERE d.id = {VIEW}.id)"


def agent_token(agent_id: str) -> str:
    """The single index token for an agent id (its UTF-8 bytes in hex, as SQL ``hex()`` folded)."""
    return agent_id.encode().hex()


def _rank_spec(include_tools: bool) -> str:
    return f"bm25({BODY_WEIGHT}, {TOOLS_WEIGHT if include_tools else 0.0}, 0.0, 0.0)"


def _chunks(items: Iterable[T], n: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# -------------------------------------------------------------------- writes


@dataclass(slots=True)
class IndexPlan:
    """What a group commit must index before it commits: appended seq ranges per thread,
    and threads whose agent changed (their rows carry the old agent token)."""

    ranges: list[tuple[str, int, int]] = field(default_factory=list)
    moved: dict[str, str] = field(default_factory=dict)

    def add(self, result: CommitResult, moved: dict[str, str]) -> None:
        for append in result.appends:
            if append.seqs:
                self.ranges.append((append.thread_id, append.seqs[0], append.seqs[-1]))
        for tid, old in moved.items():
            self.moved.setdefault(tid, old)

    def apply(self, conn: sqlite3.Connection) -> None:
        """Index everything planned, inside the caller's transaction."""
        for tid, old_agent in self.moved.items():
            delete_thread_docs(conn, tid, agent_hex=old_agent)
            conn.execute(f"{_INSERT} WHERE tid = ?", (tid,))
        for tid, first, last in self.ranges:
            if tid not in self.moved:
                conn.execute(f"{_INSERT} WHERE tid = ? AND seq BETWEEN ? AND ?", (tid, first, last))


def agent_moves(conn: sqlite3.Connection, ops: Sequence[Op]) -> dict[str, str]:
    """Threads whose agent_id the ops change, with the hex of their agent before."""
    moved: dict[str, str] = {}
    for op in ops:
        if isinstance(op, PutThread):
            row = conn.execute(
                "SELECT hex(agent_id), agent_id FROM threads WHERE thread_id = ?", (op.thread.thread_id,)
            ).fetchone()
            if row is not None and row[1] != op.thread.agent_id:
                moved.setdefault(op.thread.thread_id, row[0])
    return moved


def delete_thread_docs(conn: sqlite3.Connection, thread_id: str, *, agent_hex: str | None = None) -> int:
    """Remove a thread's rows from the index (before its events or agent change)."""
    agent = "agent" if agent_hex is None else "?"
    args: tuple[str, ...] = (thread_id,) if agent_hex is None else (agent_hex, thread_id)
    cur = conn.execute(
        f"INSERT INTO {TABLE}({TABLE}, rowid, body, tools, tid, agent)"
        f" SELECT 'delete', id, body, tools, tid, {agent} FROM {VIEW} WHERE tid = ? AND {_INDEXED}",
        args,
    )
    return cur.rowcount



# --------------------------------------------------------------------- reads


class SearchEngine:
    """Queries over the index; holds small caches shared by the reader threads."""

    def __init__(self) -> None:
        self._common: dict[tuple[str, str], tuple[bool, float]] = {}
        self._lock = threading.Lock()

    # -------------------------------------------------------------- planning

    def _is_common(self, conn: sqlite3.Connection, colset: str, clause: Clause) -> bool:
        if len(clause.tokens) != 1 or clause.prefix:
            return False  # phrases and prefixes are selective enough
        key = (colset, clause.tokens[0])
        now = time.monotonic()
        with self._lock:
            cached = self._common.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        row = conn.execute(
            f"SELECT rowid FROM {TABLE} WHERE {TABLE} MATCH ? ORDER BY rowid DESC LIMIT 1 OFFSET ?",
            (f"{colset} : {clause.render()}", COMMON_MIN_DOCS - 1),
        ).fetchone()
        common = False
        if row is not None:
            recent = conn.execute(
                f"SELECT count(*) FROM (SELECT 1 FROM {DOCSIZE} WHERE id >= ? LIMIT ?)",
                (row[0], 2 * COMMON_MIN_DOCS),
            ).fetchone()[0]
            common = recent < 2 * COMMON_MIN_DOCS
        with self._lock:
            if len(self._common) > 10_000:
                self._common.clear()
            self._common[key] = (common, now + COMMON_TTL)
        return common

    @staticmethod
    def _agent_in_index(conn: sqlite3.Connection, agent_id: str) -> bool:
        total = conn.execute("SELECT count(*) FROM threads").fetchone()[0]
        if total < SMALL_STORE_THREADS:
            return True
        mine = conn.execute("SELECT count(*) FROM threads WHERE agent_id = ?", (agent_id,)).fetchone()[0]
        return mine <= AGENT_TERM_MAX_SHARE * total

    # ------------------------------------------------------------------ text

    def search(
        self,
        conn: sqlite3.Connection,
        query: TextQuery,
        *,
        mode: Mode,
        thread_ids: Sequence[str] | None,
        agent_id: str | None,
        include_tools: bool,
        limit: int,
        best_per_thread: bool,
    ) -> list[SearchHit]:
        columns = ("body", "tools") if include_tools else ("body",)
        colset = "{" + " ".join(columns) + "}"
        rare = [c for c in query.positive if not self._is_common(conn, colset, c)]
        newest_first = not rare
        q = query if newest_first else query.with_positive(rare)

        scope: list[str] = []
        only_threads: set[str] | None = None
        only_agent: str | None = None
        if thread_ids is not None:
            ids = [t for t in dict.fromkeys(thread_ids) if THREAD_ID_RE.fullmatch(t)]
            if not ids:
                return []
            if len(ids) <= MAX_SCOPE_TERMS:
                scope.append("tid : (" + " OR ".join(f'"{t}"' for t in ids) + ")")
            else:
                only_threads = set(ids)
        if agent_id is not None:
            if self._agent_in_index(conn, agent_id):
                scope.append(f'agent : "{agent_token(agent_id)}"')
            else:
                only_agent = agent_id
        expr = render_fts5(q, mode, columns=columns, scope=scope)
        filtered = best_per_thread or only_threads is not None or only_agent is not None

        window = conn.execute(
            f"SELECT rowid FROM {TABLE} WHERE {TABLE} MATCH ? ORDER BY rowid DESC LIMIT ?",
            (expr, RANK_WINDOW),
        ).fetchall()
        if not window:
            return []
        ranked: Iterable[tuple[int, float]]
        if newest_first:
            ranked = ((r[0], 0.0) for r in window)
        else:
            sql = f"SELECT rowid, rank FROM {TABLE} WHERE {TABLE} MATCH ? AND rank MATCH ?"
            args: list[object] = [expr, _rank_spec(include_tools)]
            if len(window) == RANK_WINDOW:
                sql += " AND rowid >= ?"
                args.append(window[-1][0])
            sql += " ORDER BY rank"
            if not filtered:
                sql += " LIMIT ?"
                args.append(limit)
            ranked = ((rowid, -rank) for rowid, rank in conn.execute(sql, args))

        agents: dict[str, str] = {}
        hits: list[SearchHit] = []
        seen: set[str] = set()
        for chunk in _chunks(ranked, RESOLVE_CHUNK):
            marks = ",".join("?" * len(chunk))
            places = {
                rid: (tid, seq)
                for rid, tid, seq in conn.execute(
                    f"SELECT id, thread_id, seq FROM events WHERE id IN ({marks})", [r for r, _ in chunk]
                )
            }
            if only_agent is not None:
                unknown = list({p[0] for p in places.values()} - agents.keys())
                if unknown:
                    agents.update(
                        conn.execute(
                            "SELECT thread_id, agent_id FROM threads WHERE thread_id IN"
                            f" ({','.join('?' * len(unknown))})",
                            unknown,
                        ).fetchall()
                    )
            for rowid, score in chunk:
                place = places.get(rowid)
                if place is None:
                    continue
                tid, seq = place
                if only_threads is not None and tid not in only_threads:
                    continue
                if only_agent is not None and agents.get(tid) != only_agent:
                    continue
                if best_per_thread:
                    if tid in seen:
                        continue
                    seen.add(tid)
                hits.append(SearchHit(tid, seq, score))
                if len(hits) >= limit:
                    return hits
        return hits

    # ------------------------------------------------------------------ scan

    @staticmethod
    def scan(
        conn: sqlite3.Connection,
        thread_ids: Sequence[str],
        match: Callable[[str], bool],
        *,
        include_tools: bool,
        limit: int,
    ) -> list[SearchHit]:
        hits: list[SearchHit] = []
        sql = f"SELECT seq, body, {'tools' if include_tools else 'NULL'} FROM {VIEW} WHERE tid = ? ORDER BY seq"
        for tid in thread_ids:
            for seq, body, tools in conn.execute(sql, (tid,)):
                if (body and match(body)) or (tools and match(str(tools))):
                    hits.append(SearchHit(tid, seq))
                    if len(hits) >= limit:
                        return hits
        return hits


# ---------------------------------------------------------------- maintenance


def count_documents(conn: sqlite3.Connection) -> int:
    return conn.execute(f"SELECT count(*) FROM {DOCSIZE}").fetchone()[0]


def count_orphans(conn: sqlite3.Connection) -> int:
    """Index rows whose event is gone or no longer indexable (only a rebuild removes them:
    an external-content FTS5 row can be deleted only with the text it was indexed with)."""
    return conn.execute(
        f"SELECT count(*) FROM {DOCSIZE} AS d WHERE NOT EXISTS (SELECT 1 FROM {VIEW} AS s WHERE s.id = d.id)"
    ).fetchone()[0]


def missing_ids(conn: sqlite3.Connection) -> list[int]:
    """Rowids of indexable events that the index lacks, in order."""
    return [
        r[0] for r in conn.execute(f"SELECT id FROM {VIEW} WHERE NOT {_INDEXED} ORDER BY id")
    ]


def index_ids(conn: sqlite3.Connection, ids: Sequence[int]) -> int:
    """Index these events if they are still unindexed (inside the caller's transaction)."""
    cur = conn.execute(
        f"{_INSERT} WHERE id IN ({','.join('?' * len(ids))}) AND NOT {_INDEXED}", list(ids)
    )
    return cur.rowcount


def rebuild(conn: sqlite3.Connection, progress: ReindexProgress | None) -> int:
    """Empty the index and index every event again, inside the caller's transaction.
    Returns how many events it indexed."""
    total = conn.execute(f"SELECT count(*) FROM {VIEW}").fetchone()[0]
    conn.execute(f"INSERT INTO {TABLE}({TABLE}) VALUES ('delete-all')")
    done, last = 0, 0
    if progress is not None:
        progress(0, total)
    while True:
        ids = [r[0] for r in conn.execute(f"SELECT id FROM {VIEW} WHERE id > ? ORDER BY id LIMIT ?", (last, REINDEX_BATCH))]
        if not ids:
            break
        conn.execute(f"{_INSERT} WHERE id BETWEEN ? AND ?", (ids[0], ids[-1]))
        done += len(ids)
        last = ids[-1]
        if progress is not None:
            progress(done, total)
    return done
