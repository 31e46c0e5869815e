"""SQLite full-text search: an FTS5 index over the searchable text of events.

Layout (migration ``0002_search_index``):

- ``search_docs``: a view over ``events`` (joined to ``threads``) with one row per
  event of an indexed type: ``id`` (the event's rowid), ``tid``, ``seq``, ``type``,
  ``body`` (message / assistant_text text), ``tools`` (tool_use name + input,
  tool_result output) and ``agent`` (the hex of the thread's agent_id).
- ``search_index``: an FTS5 table keyed by the event rowid, columns ``body, tools,
  tid, agent``. ``tid`` and ``agent`` hold one token each so a query can be scoped to
  a chain or an agent inside the index. Since migration ``0005`` it is an
  *external-content* table over ``search_docs``: it keeps no copy of the text (the
  copy was a third of the database, issue 17), FTS5 reads a row's values from the view
  when it needs them (the view turns escaped NULs into spaces first: ``json_extract``
  cuts a string at a NUL), and a regex scan or a candidate check parses the events'
  lines in Python. Rows are removed while their events still exist (thread
  deletion removes its rows first); a row whose values changed (a thread whose agent
  moved) is removed with FTS5's ``delete`` command and its old values. Rows left
  behind by edits made behind the store's back cannot be removed one by one without
  their old text, so ``reindex`` rebuilds the whole index when it finds any.

Appends do not index their events in their own commit (FTS5 writes a segment at every
commit: about 40% of a single append's CPU). The index covers the events up to its
highest rowid; the *tail* past it is indexed by a *fold*, one insert from the view in
one transaction: before any search that finds a tail (so what an append acknowledged is
found at once, by this or any other process, ranked as before), when the writer has been
idle for :data:`FOLD_IDLE`, after :data:`FOLD_ROWS` indexable events of its own, and at
close. Deleting a thread deletes its indexed rows before its events.

Ranking: FTS5's BM25 must visit every match of a query to rank it (a few µs each), and
walks each term's whole posting list to count its documents for the IDF. So:

- a query that matches more than :data:`RANK_WINDOW` events is ranked among its
  :data:`RANK_WINDOW` most recent matches;
- a *common* clause (a word, or a phrase with a word, held by :data:`COMMON_DOCS` events
  or more) is left out of the ranking: in ``all`` mode it is still required, checked on
  the ranked candidates' stored text; in ``any`` mode it is dropped. Its IDF is low and
  its posting list the longest. A query made only of common clauses is answered
  newest first (score 0).
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from ..models import THREAD_ID_RE
from ..textquery import Clause, Mode, TextQuery, clause_holds, render_fts5
from .base import SCAN_BATCH, AppendEvents, CommitResult, Op, PutThread, SearchHit
from .textsearch import BODY_WEIGHT, INDEXED_TYPES, TOOLS_WEIGHT, Finder, document_fields, scan_documents

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
"""FTS5's per-row sizes (columns id, sz): one row per indexed event."""
TOKENIZE = "unicode61 remove_diacritics 2"

AUTOMERGE = 16
CRISISMERGE = 64
"""FTS5 merge settings (defaults 4 and 16): merging 16 segments of a level at a time, with
room for 64 before a forced merge, cuts the index's share of an append's CPU by ~30% and
its worst commit stall from ~120 ms to ~20 ms (measured: benchmarks/search.py, docs/search.md)."""

RANK_WINDOW = 1000
"""A query with more matches is ranked among its most recent RANK_WINDOW matches (BM25 costs ~3-6 µs a row)."""
COMMON_DOCS = 20_000
"""A word held by this many events is 'common': too costly to rank by (see the module docstring)."""
COMMON_TTL = 300.0
"""Seconds a word's common/rare verdict is cached."""
MAX_SCOPE_TERMS = 200
"""Up to this many thread ids are matched inside the index; more are filtered after it."""
AGENT_TERM_MAX_SHARE = 0.1
"""An agent owning at most this share of the threads is matched inside the index."""
SMALL_STORE_THREADS = 1000
"""Below this many threads an agent is always matched inside the index."""
RESOLVE_CHUNKS = (25, 100, 400)
"""Ranked candidates are resolved (and checked) in growing chunks: most searches need few."""
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
  tokenize='unicode61 remove_diacritics 2'
);
INSERT INTO {TABLE}({TABLE}, rank) VALUES ('automerge', {AUTOMERGE});
INSERT INTO {TABLE}({TABLE}, rank) VALUES ('crisismerge', {CRISISMERGE});
INSERT INTO {TABLE}(rowid, body, tools, tid, agent) SELECT id, body, tools, tid, agent FROM {VIEW}
"""
"""Migration 0003 as it first shipped: an FTS5 table with its own copy of the text
(statements separated by ';', none contains one). Migration 0005 replaces it."""

_NUL_SAFE_LINE = "replace(e.line, '\\u0000', '\\u0020')"
"""The line with every escaped NUL turned into a space before json_extract, which would
cut the text at the NUL (the tokenizer splits words at both alike)."""

VIEW_SQL = f"""
CREATE VIEW {VIEW} AS
SELECT e.id AS id, e.thread_id AS tid, e.seq AS seq, e.type AS type,
  CASE WHEN e.type IN ('message', 'assistant_text') THEN json_extract({_NUL_SAFE_LINE}, '$.text') END AS body,
  CASE e.type
    WHEN 'tool_use' THEN
      json_extract({_NUL_SAFE_LINE}, '$.name') || ' ' || COALESCE(json_extract({_NUL_SAFE_LINE}, '$.input'), '{{}}')
    WHEN 'tool_result' THEN
      CASE json_type(e.line, '$.output')
        WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' WHEN 'null' THEN 'null'
        ELSE json_extract({_NUL_SAFE_LINE}, '$.output')
      END
  END AS tools,
  hex(t.agent_id) AS agent
FROM events AS e JOIN threads AS t ON t.thread_id = e.thread_id
WHERE e.type IN ('message', 'assistant_text', 'tool_use', 'tool_result')
"""
"""The view the index reads its values from (migration 0005; made again by 0010, which
rebuilds the events table under it)."""

EXTERNAL_CONTENT_SQL = f"""
DROP TABLE IF EXISTS {TABLE};
DROP VIEW IF EXISTS {VIEW};
{VIEW_SQL.strip()};
CREATE VIRTUAL TABLE {TABLE} USING fts5(
  body, tools, tid, agent,
  content='{VIEW}', content_rowid='id',
  tokenize='{TOKENIZE}'
);
INSERT INTO {TABLE}({TABLE}, rank) VALUES ('automerge', {AUTOMERGE});
INSERT INTO {TABLE}({TABLE}, rank) VALUES ('crisismerge', {CRISISMERGE});
INSERT INTO {TABLE}({TABLE}) VALUES ('rebuild')
"""
"""Migration 0005: the index reads its text from the events (external content); the
rebuild indexes what the database holds. The same statements rebuild it in ``reindex``."""

_COLUMNS = "body, tools, tid, agent"
_INSERT = f"INSERT INTO {TABLE}(rowid, {_COLUMNS}) SELECT id, {_COLUMNS} FROM {VIEW}"
_INDEXED = f"EXISTS (SELECT 1 FROM {DOCSIZE} AS d WHERE d.id = {VIEW}.id)"


def agent_token(agent_id: str) -> str:
    """The single index token for an agent id (its UTF-8 bytes in hex, as SQL ``hex()`` folded)."""
    return agent_id.encode().hex()


def _rank_spec(include_tools: bool) -> str:
    return f"bm25({BODY_WEIGHT}, {TOOLS_WEIGHT if include_tools else 0.0}, 0.0, 0.0)"


def _chunks(items: Iterable[T], sizes: Sequence[int]) -> Iterator[list[T]]:
    """Consecutive chunks of ``items``, sized by ``sizes`` (the last size repeats)."""
    it = iter(items)
    for n in itertools.chain(sizes, itertools.repeat(sizes[-1])):
        chunk = list(itertools.islice(it, n))
        if not chunk:
            return
        yield chunk


_TYPES = ", ".join(f"'{t}'" for t in sorted(INDEXED_TYPES))


def _documents(rows: Iterable[tuple[int, str, str]]) -> list[tuple[int, str | None, str | None]]:
    """``(key, body, tools)`` of ``(key, type, line)`` event rows, as the append indexed them."""
    out: list[tuple[int, str | None, str | None]] = []
    for key, etype, line in rows:
        fields = document_fields(etype, json.loads(line))
        body, tools = fields if fields is not None else (None, None)
        out.append((key, body, tools))
    return out


def _holding(
    conn: sqlite3.Connection, chunk: list[tuple[int, float]], clauses: Sequence[Clause], include_tools: bool
) -> list[tuple[int, float]]:
    """The candidates whose stored text holds every clause (checked with the query
    language's tokenizer: a second FTS query would walk the common words' postings)."""
    rows = _documents(
        conn.execute(
            f"SELECT id, type, line FROM events WHERE id IN ({','.join('?' * len(chunk))})",
            [r for r, _ in chunk],
        )
    )
    ok = set()
    for rid, body, tools in rows:
        fields = [str(body or "")] + ([str(tools or "")] if include_tools else [])
        if all(any(clause_holds(f, c) for f in fields) for c in clauses):
            ok.add(rid)
    return [item for item in chunk if item[0] in ok]


# -------------------------------------------------------------------- writes


FOLD_ROWS = 256
"""The writer folds the unindexed tail into the index once this many indexable events of
its own commits wait (and whenever it is idle, and before any search: see :func:`fold`)."""
FOLD_IDLE = 0.05
"""Seconds the writer waits with an unindexed tail and nothing to do before it folds it."""


@dataclass(slots=True)
class IndexPlan:
    """What a group commit must do to the index before it commits: move the rows of threads
    whose agent changed (their rows carry the agent token). Appended events are not indexed
    here but by the next :func:`fold`; ``appended`` counts the indexable ones."""

    moved: dict[str, str] = field(default_factory=dict)
    """Thread id -> the agent token its rows were indexed with (before this commit moved it)."""
    appended: int = 0

    def add(self, ops: Sequence[Op], result: CommitResult, moved: dict[str, str]) -> None:
        for op in ops:
            if isinstance(op, AppendEvents):
                self.appended += sum(1 for event in op.events if event.type in INDEXED_TYPES)
        for tid, agent in moved.items():
            self.moved.setdefault(tid, agent)  # the first move of a group knows what is indexed

    def apply(self, conn: sqlite3.Connection) -> None:
        """Move the rows planned, inside the caller's transaction (rows past the folded
        tail are left to the fold, which reads the new agent from the view)."""
        if not self.moved:
            return
        upto = folded_upto(conn)
        for tid, old_agent in self.moved.items():
            # the view already shows the new agent: remove the rows with the values they were indexed with
            conn.execute(
                f"INSERT INTO {TABLE}({TABLE}, rowid, {_COLUMNS})"
                f" SELECT 'delete', id, body, tools, tid, ? FROM {VIEW} WHERE tid = ? AND {_INDEXED}",
                (old_agent, tid),
            )
            conn.execute(f"{_INSERT} WHERE tid = ? AND id <= ?", (tid, upto))


def folded_upto(conn: sqlite3.Connection) -> int:
    """The highest event rowid in the index: every indexable event up to it is indexed
    (folds go in rowid order), every one past it waits for the next fold."""
    return conn.execute(f"SELECT COALESCE(max(id), 0) FROM {DOCSIZE}").fetchone()[0]


def has_tail(conn: sqlite3.Connection) -> bool:
    """Whether indexable events wait past the folded part of the index."""
    upto = folded_upto(conn)
    return bool(conn.execute(f"SELECT EXISTS (SELECT 1 FROM {VIEW} WHERE id > ?)", (upto,)).fetchone()[0])


def fold(conn: sqlite3.Connection) -> int:
    """Index the events committed since the last fold, in one index flush (inside the
    caller's transaction); returns how many were indexed.

    Appends do not index their events in their own commit: FTS5 writes a segment at every
    commit, about 40% of a single append's CPU. A search first folds any tail, so what an
    append acknowledged is found, ranked as it always was (docs/decisions.md)."""
    return conn.execute(f"{_INSERT} WHERE id > ?", (folded_upto(conn),)).rowcount


def agent_moves(conn: sqlite3.Connection, ops: Sequence[Op]) -> dict[str, str]:
    """Threads whose agent_id the ops change (their rows must be indexed again), each with
    the agent token its rows hold now."""
    moved: dict[str, str] = {}
    for op in ops:
        if isinstance(op, PutThread):
            row = conn.execute(
                "SELECT agent_id FROM threads WHERE thread_id = ?", (op.thread.thread_id,)
            ).fetchone()
            if row is not None and row[0] != op.thread.agent_id:
                moved.setdefault(op.thread.thread_id, agent_token(row[0]))
    return moved


def delete_thread_docs(conn: sqlite3.Connection, thread_id: str) -> int:
    """Remove a thread's rows from the index (inside the caller's transaction), before its
    events go: FTS5 reads the values to remove from the view."""
    cur = conn.execute(
        f"DELETE FROM {TABLE} WHERE rowid IN (SELECT e.id FROM events AS e WHERE e.thread_id = ?"
        f" AND EXISTS (SELECT 1 FROM {DOCSIZE} AS d WHERE d.id = e.id))",
        (thread_id,),
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
        """A clause is common when one of its whole words is held by COMMON_DOCS events or
        more (a phrase must decode that word's positions in every candidate event)."""
        words = clause.tokens[:-1] if clause.prefix else clause.tokens
        return any(self._common_word(conn, colset, token) for token in words)

    def _common_word(self, conn: sqlite3.Connection, colset: str, token: str) -> bool:
        key = (colset, token)
        now = time.monotonic()
        with self._lock:
            cached = self._common.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        # streams the word's newest postings only: ~1-2 ms even for the most common word
        row = conn.execute(
            f"SELECT rowid FROM {TABLE} WHERE {TABLE} MATCH ? ORDER BY rowid DESC LIMIT 1 OFFSET ?",
            (f'{colset} : "{token}"', COMMON_DOCS - 1),
        ).fetchone()
        common = row is not None
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
        common = [c for c in query.positive if self._is_common(conn, colset, c)]
        rare = [c for c in query.positive if c not in common]
        newest_first = not rare
        q = query if newest_first else query.with_positive(rare)
        # in 'all' mode the common clauses still have to hold: checked on the candidates' text
        must = common if rare and common and mode == "all" else []

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
        filtered = best_per_thread or only_threads is not None or only_agent is not None or bool(must)

        ranked: Iterable[tuple[int, float]]
        if newest_first:
            ranked = conn.execute(
                f"SELECT rowid, 0.0 FROM {TABLE} WHERE {TABLE} MATCH ? ORDER BY rowid DESC", (expr,)
            )
        else:
            # the oldest of the RANK_WINDOW newest matches, if there are that many
            bound = conn.execute(
                f"SELECT rowid FROM {TABLE} WHERE {TABLE} MATCH ? ORDER BY rowid DESC LIMIT 1 OFFSET ?",
                (expr, RANK_WINDOW - 1),
            ).fetchone()
            sql = f"SELECT rowid, -rank FROM {TABLE} WHERE {TABLE} MATCH ? AND rank MATCH ?"
            args: list[object] = [expr, _rank_spec(include_tools)]
            if bound is not None:
                sql += " AND rowid >= ?"
                args.append(bound[0])
            sql += " ORDER BY rank"
            if not filtered:
                sql += " LIMIT ?"
                args.append(limit)
            ranked = conn.execute(sql, args)

        agents: dict[str, str] = {}
        hits: list[SearchHit] = []
        seen: set[str] = set()
        for chunk in _chunks(ranked, RESOLVE_CHUNKS):
            if must:
                chunk = _holding(conn, chunk, must, include_tools)
                if not chunk:
                    continue
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
        find: Finder,
        *,
        include_tools: bool,
        limit: int,
    ) -> list[SearchHit]:
        # the events' own text (json_extract would cut a text at a NUL)
        sql = f"SELECT seq, type, line FROM events WHERE thread_id = ? AND type IN ({_TYPES}) ORDER BY seq"
        hits: list[SearchHit] = []
        for tid in thread_ids:
            cur = conn.execute(sql, (tid,))
            while rows := cur.fetchmany(SCAN_BATCH):
                for seq in scan_documents(_documents(rows), find, include_tools):
                    hits.append(SearchHit(tid, seq))
                    if len(hits) >= limit:
                        return hits
        return hits


# ---------------------------------------------------------------- maintenance


def count_documents(conn: sqlite3.Connection) -> int:
    return conn.execute(f"SELECT count(*) FROM {DOCSIZE}").fetchone()[0]


@dataclass(slots=True)
class Staleness:
    """Index rows that no longer match the events: ``gone`` (the event was deleted or is
    not indexable) and ``moved`` (its thread's agent changed behind the store's back)."""

    gone: list[int]
    moved: list[int]

    def __len__(self) -> int:
        return len(self.gone) + len(self.moved)


def stale_rows(conn: sqlite3.Connection) -> Staleness:
    """The rows of the index that the events no longer back (see :class:`Staleness`).

    A row's agent is checked against the index itself: for each agent the threads have,
    the rows that hold its token are matched (one posting list per agent)."""
    gone = [
        r[0]
        for r in conn.execute(
            f"SELECT d.id FROM {DOCSIZE} AS d WHERE NOT EXISTS (SELECT 1 FROM {VIEW} AS s WHERE s.id = d.id)"
            " ORDER BY d.id"
        )
    ]
    moved: list[int] = []
    for (agent,) in conn.execute("SELECT DISTINCT agent_id FROM threads").fetchall():
        holding = {
            r[0]
            for r in conn.execute(
                f"SELECT rowid FROM {TABLE} WHERE {TABLE} MATCH ?", (f'agent : "{agent_token(agent)}"',)
            )
        }
        rows = conn.execute(
            f"SELECT s.id FROM {VIEW} AS s JOIN threads AS t ON t.thread_id = s.tid"
            f" JOIN {DOCSIZE} AS d ON d.id = s.id WHERE t.agent_id = ?",
            (agent,),
        )
        moved.extend(rid for (rid,) in rows if rid not in holding)
    moved.sort()
    return Staleness(gone, moved)


def rebuild(conn: sqlite3.Connection) -> None:
    """Index again everything the events hold (inside the caller's transaction)."""
    conn.execute(f"INSERT INTO {TABLE}({TABLE}) VALUES ('rebuild')")


def missing_ids(conn: sqlite3.Connection) -> list[int]:
    """Rowids of indexable events that the index lacks, in order."""
    return [r[0] for r in conn.execute(f"SELECT id FROM {VIEW} WHERE NOT {_INDEXED} ORDER BY id")]


def index_ids(conn: sqlite3.Connection, ids: Sequence[int]) -> int:
    """Index these events if they are still unindexed (inside the caller's transaction)."""
    cur = conn.execute(f"{_INSERT} WHERE id IN ({','.join('?' * len(ids))}) AND NOT {_INDEXED}", list(ids))
    return cur.rowcount
