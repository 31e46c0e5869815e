"""PostgreSQL full-text search: the ``search_docs`` table, its tsvectors, queries, regex scans, reindex.

Layout (migration ``0003_search_index``, store/schema.py; since ``0010`` without a copy of
the text): ``search_docs(thread_id, seq, id, tsv)``, one row per event of an indexed type
(textsearch.INDEXED_TYPES), a GIN index on ``tsv`` and a btree on ``id`` (the insertion
order: recency). Agent scope is a join to ``threads``, so moving a thread to another agent
needs no reindex. The text itself is read from the events it indexes (``events.line``):
snippets are cut from the events anyway (search.py), and a regex scan reads the events'
text (see :func:`scan`).

The tsvector is built here from :func:`textquery.tokenize`, not by PostgreSQL's parser, so
its lexemes are exactly the SQLite / memory tokens (folded, diacritics removed): body tokens
weigh ``A`` at positions 1..n, tools tokens ``B`` after a one-position gap (no phrase spans
the two fields). PostgreSQL's limits (positions up to 16,383, 256 positions per lexeme,
lexemes up to 2,047 bytes, 1 MB of lexemes and positions per tsvector) are met like this:

- positions 1..16,381 are real; every later occurrence is recorded once at 16,383 (16,382
  stays empty, so no phrase can match across it): each word stays findable, but a phrase is
  only found within the first 16,381 words and the first 256 occurrences of each word;
- a word longer than 2,047 bytes is indexed (and searched) by its first 2,047 bytes;
- a text whose tsvector would pass the size budget keeps real positions for fewer words,
  then presence only; past ~1 MB of distinct words, its later distinct words are left out.

"""

from __future__ import annotations

import asyncio
import json
import logging
from array import array
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors as pgerrors

from ..models import StoredEvent
from ..textquery import Clause, Mode, TextQuery, tokenize
from .base import SCAN_BATCH, NewEvent, ReindexProgress, ReindexStats, SearchHit
from .pgregex import PgRegex, translate
from .textsearch import INDEXED_TYPES, TOOLS_WEIGHT, Finder, document_fields, scan_documents

__all__ = [
    "DocRow",
    "doc_rows",
    "stored_doc_rows",
    "insert_docs",
    "delete_docs",
    "tsvector_text",
    "render_tsquery",
    "rank_tsquery",
    "search_sql",
    "search",
    "scan",
    "reindex",
    "backfill",
]

log = logging.getLogger("threadloom.store")

TABLE = "search_docs"
LAST_POSITION = 16_381
"""The last real token position; 16,382 stays empty and 16,383 holds every later occurrence."""
OVERFLOW_POSITION = 16_383
MAX_POSITIONS = 256
"""PostgreSQL keeps at most 256 positions per lexeme."""
MAX_LEXEME_BYTES = 2047
TSV_BUDGET = 1_000_000
"""Bytes of lexemes and positions allowed per tsvector (PostgreSQL refuses more than 1,048,575)."""
RANK_WINDOW = 1000
"""A query is ranked among its RANK_WINDOW newest matches (by ``id``), as SQLite does (fts.py)."""
RANK_NORMALIZATION = 1
"""ts_rank divides by log2(1 + document length): of two texts using a word as often, the shorter wins."""
MIN_SCORE = 1e-20
"""Scores are > 0 (ts_rank gives 0 when only zero-weighted positions count)."""
REGEX_TIMEOUT_MS = 2000
"""statement_timeout of each query of a server-side regex scan; when it fires, the scan goes on in Python."""
REGEX_PAGE = 500
"""Candidate rows fetched per query of a server-side regex scan."""
REINDEX_BATCH = 2000
INSERT_CHUNK = 1000
_BODY, _TOOLS = 2, 1
"""Weight flags: a position of weight A (body) also satisfies ``:AB`` queries, B only ``:AB``."""
_NUL_ESCAPE = "\\u0000"
"""How a NUL is written in a line's JSON (PostgreSQL's ``->>`` cannot give it as text)."""


# ------------------------------------------------------------------ tsvector


def _lexeme(token: str) -> str:
    """The lexeme for a folded token: cut to PostgreSQL's 2,047 bytes (at a character boundary)."""
    if len(token) * 4 <= MAX_LEXEME_BYTES:
        return token
    raw = token.encode()
    return token if len(raw) <= MAX_LEXEME_BYTES else raw[:MAX_LEXEME_BYTES].decode("utf-8", "ignore")


@dataclass(slots=True)
class _Lexeme:
    """One lexeme's positions (as ``"12A"``), the weights they cover and those they miss."""

    positions: list[str] = field(default_factory=list)
    covered: int = 0
    missed: int = 0

    def finish(self) -> None:
        """Record occurrences left out (past the cap, past 256) once, at the overflow position."""
        need = 0
        if self.missed & _BODY and not self.covered & _BODY:
            need = _BODY
        elif self.missed & _TOOLS and not self.covered:
            need = _TOOLS
        if need:
            if len(self.positions) >= MAX_POSITIONS:
                del self.positions[MAX_POSITIONS - 1 :]
            self.positions.append(f"{OVERFLOW_POSITION}{'A' if need == _BODY else 'B'}")

    def size(self, lexeme: str) -> int:
        return len(lexeme.encode()) + 3 + 2 * len(self.positions)  # bytes, alignment, count, positions


def _lexemes(fields: Sequence[tuple[int, list[str]]], cap: int) -> dict[str, _Lexeme]:
    out: dict[str, _Lexeme] = {}
    pos = 0
    for flag, tokens in fields:
        letter = "A" if flag == _BODY else "B"
        for token in tokens:
            pos += 1
            entry = out.get(token)
            if entry is None:
                entry = out[token] = _Lexeme()
            if pos <= cap and len(entry.positions) < MAX_POSITIONS:
                entry.positions.append(f"{pos}{letter}")
                entry.covered |= flag
            else:
                entry.missed |= flag
        pos += 1  # the gap between body and tools
    for entry in out.values():
        entry.finish()
    return out


def _affordable_cap(fields: Sequence[tuple[int, list[str]]]) -> int:
    """The largest position cap whose tsvector fits the budget, by an estimate that never
    falls short (each lexeme: its bytes, alignment and count, a first and an overflow position;
    then 2 bytes per further position kept). 0 when even presence alone does not fit."""
    counts: dict[str, int] = {}
    for _, tokens in fields:
        for token in tokens:
            counts[token] = counts.get(token, 0) + 1
    room = TSV_BUDGET - sum(len(t.encode()) + 7 for t in counts)
    if room < 0:
        return 0
    seen: dict[str, int] = {}
    pos = 0
    for _, tokens in fields:
        for token in tokens:
            pos += 1
            n = seen[token] = seen.get(token, 0) + 1
            if 1 < n <= MAX_POSITIONS:
                room -= 2
                if room < 0:
                    return min(pos - 1, LAST_POSITION)
        pos += 1
    return LAST_POSITION


def _plain(fields: Sequence[tuple[int, list[str]]]) -> dict[str, list[str]] | None:
    """Positions of a text that needs no limit (the common case, ~3x faster than
    :func:`_lexemes`); None if one applies (too many positions, a word past 256)."""
    out: dict[str, list[str]] = {}
    pos = 0
    for flag, tokens in fields:
        letter = "A" if flag == _BODY else "B"
        at: dict[str, list[int]] = {}
        for i, token in enumerate(tokens, pos + 1):  # ints here, text once per word below
            at.setdefault(token, []).append(i)
        pos += len(tokens) + 1
        joiner = letter + ","
        for token, positions in at.items():
            kept = out.setdefault(token, [])
            if len(kept) + len(positions) > MAX_POSITIONS:
                return None
            kept.append(joiner.join(map(str, positions)) + letter)
    return out if pos - 1 <= LAST_POSITION else None


def tsvector_text(body: str | None, tools: str | None) -> str:
    """The tsvector (as text for ``::tsvector``) of an event's body and tools fields."""
    fields = [(_BODY, tokenize(body) if body else []), (_TOOLS, tokenize(tools) if tools else [])]
    chars = 0
    for _, tokens in fields:
        chars += sum(map(len, tokens))
        if tokens and max(map(len, tokens)) * 4 > MAX_LEXEME_BYTES:
            tokens[:] = [_lexeme(t) for t in tokens]
    # at most 4 bytes a character, 7 bytes of overhead a token: most texts cannot pass the budget
    small = 4 * chars + 7 * sum(len(tokens) for _, tokens in fields) <= TSV_BUDGET
    if small and (plain := _plain(fields)) is not None:
        return " ".join(f"'{k}':{','.join(v)}" for k, v in plain.items())
    lexemes = _lexemes(fields, LAST_POSITION if small else _affordable_cap(fields))
    if not small and sum(e.size(k) for k, e in lexemes.items()) > TSV_BUDGET:
        total, kept = 0, {}
        for k, e in lexemes.items():  # presence alone is too big: keep the words that come first
            total += e.size(k)
            if total > TSV_BUDGET:
                break
            kept[k] = e
        lexemes = kept
    # tokens are letters and digits only: quoting needs no escaping
    return " ".join(f"'{k}':{','.join(e.positions)}" for k, e in lexemes.items())


# ---------------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class DocRow:
    """One ``search_docs`` row of a thread: the event's seq and its tsvector text (the text
    itself stays in the event's line)."""

    seq: int
    tsv: str


def _row(seq: int, fields: tuple[str | None, str | None]) -> DocRow:
    body, tools = fields
    return DocRow(seq, tsvector_text(body, tools))


def doc_rows(events: Sequence[NewEvent], seqs: Sequence[int]) -> list[DocRow]:
    """The rows to index for appended ``events`` stored at ``seqs`` (unindexed types are skipped)."""
    rows = []
    for event, seq in zip(events, seqs):
        if event.type in INDEXED_TYPES:
            fields = document_fields(event.type, event.payload)
            if fields is not None:
                rows.append(_row(seq, fields))
    return rows


def stored_doc_rows(events: Sequence[StoredEvent]) -> list[DocRow]:
    """The rows to index for stored events (imports, reindex)."""
    rows = []
    for event in events:
        if event.type in INDEXED_TYPES:
            fields = document_fields(event.type, event.data())
            if fields is not None:
                rows.append(_row(event.seq, fields))
    return rows


async def _insert(
    conn: psycopg.AsyncConnection, items: Sequence[tuple[str, DocRow]], *, replace: bool, count: bool
) -> int:
    """Insert rows (in order: ``id`` follows it); ``replace`` overwrites a row of the same event."""
    conflict = " DO UPDATE SET tsv = EXCLUDED.tsv" if replace else " DO NOTHING"
    done = 0
    for i in range(0, len(items), INSERT_CHUNK):
        part = items[i : i + INSERT_CHUNK]
        cur = await conn.execute(  # binary arrays, not a VALUES list: one short query, no escaping
            f"INSERT INTO {TABLE} (thread_id, seq, tsv) SELECT t, s, v::tsvector"
            " FROM unnest(%b::text[], %b::bigint[], %b::text[]) WITH ORDINALITY AS u(t, s, v, n)"
            " ORDER BY n ON CONFLICT (thread_id, seq)" + conflict,
            ([tid for tid, _ in part], [r.seq for _, r in part], [r.tsv for _, r in part]),
        )
        if count:
            done += max(cur.rowcount, 0)
    return done


async def insert_docs(conn: psycopg.AsyncConnection, thread_id: str, rows: Sequence[DocRow]) -> None:
    """Index a thread's rows inside the caller's transaction (works inside a pipeline)."""
    if rows:
        await _insert(conn, [(thread_id, r) for r in rows], replace=True, count=False)


_REPLACE = " ON CONFLICT (thread_id, seq) DO UPDATE SET tsv = EXCLUDED.tsv"
COPY_SOURCES = (
    f"INSERT INTO {TABLE} (thread_id, seq, tsv) SELECT %s, n.seq, d.tsv"
    " FROM unnest(%b::bigint[], %b::text[], %b::bigint[]) WITH ORDINALITY AS n(seq, st, ss, k)"
    f" JOIN {TABLE} AS d ON d.thread_id = n.st AND d.seq = n.ss ORDER BY n.k{_REPLACE} RETURNING seq"
)
"""Copied events' rows take their sources' tsvectors: (new seq, source thread, source seq)."""
_COPY_ONE = (
    f"INSERT INTO {TABLE} (thread_id, seq, tsv) SELECT %s, n.seq, d.tsv"
    " FROM unnest(string_to_array(%s, ',')::bigint[], string_to_array(%s, ',')::bigint[])"
    f" WITH ORDINALITY AS n(seq, ss, k) JOIN {TABLE} AS d ON d.thread_id = %s AND d.seq = n.ss ORDER BY n.k"
)
"""The same from one source thread, the seqs as comma-joined text (no per-element dump)."""
COPY_ONE_SOURCE = f"{_COPY_ONE}{_REPLACE} RETURNING seq"
COPY_INTO_NEW = f"{_COPY_ONE} RETURNING seq"
"""Into a thread created in the same transaction (``new_thread``) without ON CONFLICT: no row
of it can exist yet (its id is new, and deleting a thread deletes its rows in the same
transaction), and the arbiter check costs ~3 ms for a handoff's 900 rows; should one exist
all the same, the unique index refuses the commit (nothing is overwritten silently)."""


async def index_appended(
    conn: psycopg.AsyncConnection,
    thread_id: str,
    events: Sequence[NewEvent],
    seqs: Sequence[int],
    *,
    new_thread: bool = False,
) -> None:
    """Index appended ``events`` stored at ``seqs`` in order. An event that copies a stored
    one unchanged (``copy_of``: a handoff's carried messages) takes that event's tsvector in
    SQL instead of tokenizing its text again in Python; one whose source has no row gets its
    own."""
    runs: list[tuple[bool, list[tuple[NewEvent, int]]]] = []
    for event, seq in zip(events, seqs):
        if event.type not in INDEXED_TYPES:
            continue
        copied = event.copy_of is not None
        if not runs or runs[-1][0] != copied:
            runs.append((copied, []))
        runs[-1][1].append((event, seq))
    for copied, run in runs:
        if not copied:
            await insert_docs(conn, thread_id, doc_rows([e for e, _ in run], [s for _, s in run]))
            continue
        sources = {e.copy_of[0] for e, _ in run}  # type: ignore[index]
        if len(sources) == 1:  # a handoff's: one source thread, the seqs as two joined values
            to_seqs = ",".join(str(s) for _, s in run)
            from_seqs = ",".join(str(e.copy_of[1]) for e, _ in run)  # type: ignore[index]
            q = COPY_INTO_NEW if new_thread else COPY_ONE_SOURCE
            cur = await conn.execute(q, (thread_id, to_seqs, from_seqs, *sources))
        else:
            cur = await conn.execute(
                COPY_SOURCES,
                (
                    thread_id,
                    [s for _, s in run],
                    [e.copy_of[0] for e, _ in run],  # type: ignore[index]
                    [e.copy_of[1] for e, _ in run],  # type: ignore[index]
                ),
            )
        done = {r[0] for r in await cur.fetchall()}
        rest = [(e, s) for e, s in run if s not in done]
        if rest:
            await insert_docs(conn, thread_id, doc_rows([e for e, _ in rest], [s for _, s in rest]))


async def delete_docs(conn: psycopg.AsyncConnection, thread_ids: Sequence[str]) -> None:
    """Remove the threads' rows inside the caller's transaction."""
    await conn.execute(f"DELETE FROM {TABLE} WHERE thread_id = ANY(%s)", (list(thread_ids),))


# ------------------------------------------------------------------- queries


def _operand(token: str, weights: str, prefix: bool = False) -> str:
    marks = ("*" if prefix else "") + weights
    return f"'{_lexeme(token)}'" + (f":{marks}" if marks else "")


def _clause(clause: Clause, weights: str) -> str:
    last = len(clause.tokens) - 1
    parts = [_operand(t, weights, clause.prefix and i == last) for i, t in enumerate(clause.tokens)]
    return parts[0] if len(parts) == 1 else "(" + " <-> ".join(parts) + ")"


def render_tsquery(query: TextQuery, mode: Mode, *, include_tools: bool) -> str:
    """The tsquery (text for ``::tsquery``) matching what SQLite's MATCH expression matches."""
    weights = "AB" if include_tools else "A"
    joiner = " & " if mode == "all" else " | "
    expr = "(" + joiner.join(_clause(c, weights) for c in query.positive) + ")"
    if query.negative:
        expr += " & !(" + " | ".join(_clause(c, weights) for c in query.negative) + ")"
    return expr


def rank_tsquery(query: TextQuery) -> str:
    """The tsquery ts_rank scores with: every positive word, OR-ed (ts_rank then sums how
    often each occurs, like BM25's term frequencies; an AND would make it rank by proximity)."""
    operands: dict[str, None] = {}
    for clause in query.positive:
        last = len(clause.tokens) - 1
        for i, token in enumerate(clause.tokens):
            operands[_operand(token, "", clause.prefix and i == last)] = None
    return " | ".join(operands)


def search_sql(
    query: TextQuery,
    *,
    mode: Mode,
    thread_ids: Sequence[str] | None,
    agent_id: str | None,
    include_tools: bool,
    limit: int,
    best_per_thread: bool,
) -> tuple[str, list[Any]]:
    """The ranked query and its arguments (see :func:`search`)."""
    where = ["d.tsv @@ %s::tsquery"]
    args: list[Any] = [render_tsquery(query, mode, include_tools=include_tools)]
    join = ""
    if thread_ids is not None:
        where.append("d.thread_id = ANY(%s)")
        args.append(list(thread_ids))
    if agent_id is not None:
        join = " JOIN threads AS t ON t.thread_id = d.thread_id"
        where.append("t.agent_id = %s")
        args.append(agent_id)
    args.append(RANK_WINDOW)
    window = (
        f"SELECT d.thread_id, d.seq, d.tsv FROM {TABLE} AS d{join} WHERE {' AND '.join(where)}"
        " ORDER BY d.id DESC LIMIT %s"
    )
    weights = f"{{0,0,{TOOLS_WEIGHT if include_tools else 0},1}}"  # D, C, B (tools), A (body)
    ranked = (
        "SELECT thread_id, seq, GREATEST("
        f"ts_rank(%s::real[], tsv, %s::tsquery, {RANK_NORMALIZATION})::float8, {MIN_SCORE}::float8)"
        f" AS score FROM ({window}) AS m"
    )
    args = [weights, rank_tsquery(query), *args, limit]
    if best_per_thread:
        sql = (
            f"SELECT thread_id, seq, score FROM (SELECT DISTINCT ON (thread_id) thread_id, seq, score"
            f" FROM ({ranked}) AS r ORDER BY thread_id, score DESC, seq) AS b"
            " ORDER BY score DESC, thread_id, seq LIMIT %s"
        )
    else:
        sql = f"{ranked} ORDER BY score DESC, thread_id, seq LIMIT %s"
    return sql, args


async def search(
    conn: psycopg.AsyncConnection,
    query: TextQuery,
    *,
    mode: Mode,
    thread_ids: Sequence[str] | None,
    agent_id: str | None,
    include_tools: bool,
    limit: int,
    best_per_thread: bool,
) -> list[SearchHit]:
    """Events matching ``query`` ranked by ts_rank among the RANK_WINDOW newest matches, best
    first (ties: thread_id, seq); with ``best_per_thread`` the best hit of each thread."""
    if thread_ids is not None and not thread_ids:
        return []
    sql, args = search_sql(
        query,
        mode=mode,
        thread_ids=thread_ids,
        agent_id=agent_id,
        include_tools=include_tools,
        limit=limit,
        best_per_thread=best_per_thread,
    )
    # never a prepared statement: a generic plan cannot see the words, so it would walk the id
    # index for every query (right for common words, a full scan for rare ones)
    cur = await conn.execute(sql, args, prepare=False)
    return [SearchHit(tid, seq, score) for tid, seq, score in await cur.fetchall()]


# ---------------------------------------------------------------------- scan


@dataclass(slots=True)
class _ScanState:
    """How far a scan got: the thread being scanned (index), its last seq examined, the hits."""

    thread: int = 0
    after: int = 0
    hits: list[SearchHit] = field(default_factory=list)


async def regex_in_database(conn: psycopg.AsyncConnection) -> bool:
    """Whether regex pre-filtering may run in this database (it assumes UTF-8 text)."""
    cur = await conn.execute("SELECT current_setting('server_encoding')")
    row = await cur.fetchone()
    return row is not None and row[0] == "UTF8"


def _documents(rows: Sequence[tuple[int, str, str]]) -> list[tuple[int, str | None, str | None]]:
    """``(seq, body, tools)`` of ``(seq, type, line)`` event rows (:func:`document_fields`; a
    line that is not a JSON object has no text to match)."""
    out: list[tuple[int, str | None, str | None]] = []
    for seq, etype, line in rows:
        try:
            data = json.loads(line)
        except ValueError:
            data = None
        fields = document_fields(etype, data) if isinstance(data, dict) else None
        body, tools = fields if fields is not None else (None, None)
        out.append((seq, body, tools))
    return out


def _candidate_sql(operator: str, include_tools: bool) -> tuple[str, int]:
    """The condition a regex pre-filter puts on an event row, and how many times it takes
    the pattern (after the NUL escape). It holds for every row RE2 could match (a
    superset): the text of a message and of a string tool output is taken from the line
    exactly (``->>``); a field an event lacks is the empty text, as in the scan
    (textsearch.scan_documents), so a pattern that matches it makes every row a candidate;
    a line holding an escaped NUL (which ``->>`` cannot give as text), a tool call's input
    and a tool output that is not a string are always candidates."""

    def test(key: str) -> str:
        return f"COALESCE(line::json->>'{key}', '') COLLATE \"C\" {operator} %s"

    head = f"CASE WHEN strpos(line, %s) > 0 OR '' COLLATE \"C\" {operator} %s THEN TRUE"
    body = f"WHEN type IN ('message', 'assistant_text') THEN {test('text')}"
    if not include_tools:
        return f"{head} {body} ELSE FALSE END", 2
    output = (
        "WHEN type = 'tool_result' THEN CASE WHEN json_typeof(line::json->'output') = 'string'"
        f" THEN {test('output')} ELSE TRUE END"
    )
    return f"{head} {body} {output} ELSE TRUE END", 3


async def _scan_pages(
    conn: psycopg.AsyncConnection,
    thread_ids: Sequence[str],
    find: Finder,
    *,
    include_tools: bool,
    limit: int,
    regex: PgRegex | None,
    state: _ScanState,
) -> None:
    """Scan from ``state`` on, in thread then seq order, over the events' own text; with
    ``regex`` PostgreSQL returns only candidate rows (a superset of the matches:
    :func:`_candidate_sql`); ``find`` (RE2) decides every hit."""
    args: list[Any] = [list(INDEXED_TYPES)]
    cond = ""
    if regex is not None:
        test, n = _candidate_sql(regex.operator, include_tools)
        cond = f" AND {test}"
        args += [_NUL_ESCAPE, *[regex.pattern] * n]
    page = REGEX_PAGE if regex is not None else SCAN_BATCH
    sql = (
        "SELECT seq, type, line FROM events WHERE thread_id = %s AND seq > %s AND type = ANY(%s)"
        f"{cond} ORDER BY seq LIMIT %s"
    )
    while state.thread < len(thread_ids):
        tid = thread_ids[state.thread]
        cur = await conn.execute(sql, [tid, state.after, *args, page])
        found = await cur.fetchall()
        rows = _documents(found)
        if rows:
            matched = await asyncio.to_thread(lambda: list(scan_documents(rows, find, include_tools)))
            for seq in matched:
                state.hits.append(SearchHit(tid, seq))
                if len(state.hits) >= limit:
                    return
        if len(rows) < page:
            state.thread, state.after = state.thread + 1, 0
        else:
            state.after = rows[-1][0]


async def scan(
    conn: psycopg.AsyncConnection,
    thread_ids: Sequence[str],
    find: Finder,
    *,
    include_tools: bool,
    limit: int,
    pattern: str | None,
    regex_ok: bool,
) -> list[SearchHit]:
    """The first ``limit`` events, in ``thread_ids`` order then seq, that ``find`` accepts.

    When ``pattern`` (the RE2 source of ``find``) translates into a PostgreSQL regex
    (store/pgregex.py) and ``regex_ok``, PostgreSQL pre-filters the rows under a
    statement_timeout of REGEX_TIMEOUT_MS; if that fires (or PostgreSQL refuses the
    regex), the scan goes on in Python from where it stopped. Hits are the same either way.
    """
    ids = list(thread_ids)
    state = _ScanState()
    regex = translate(pattern) if pattern is not None and regex_ok else None
    if regex is not None:
        try:
            async with conn.transaction():  # a savepoint: a cancelled query leaves the transaction usable
                await conn.execute(
                    "SELECT set_config('statement_timeout', %s, true)", (str(REGEX_TIMEOUT_MS),)
                )
                await _scan_pages(
                    conn, ids, find, include_tools=include_tools, limit=limit, regex=regex, state=state
                )
            return state.hits
        except (pgerrors.QueryCanceled, pgerrors.ProgramLimitExceeded, psycopg.DataError) as exc:
            log.info("regex scan continues in Python (%s: %s)", type(exc).__name__, str(exc).strip()[:200])
    await _scan_pages(conn, ids, find, include_tools=include_tools, limit=limit, regex=None, state=state)
    return state.hits


# ---------------------------------------------------------------- maintenance


class EventKeys:
    """``(thread_id, seq)`` keys held compactly (16 bytes each, not a tuple of objects)."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self._index: dict[str, int] = {}
        self._which = array("q")
        self._seqs = array("q")

    def add(self, thread_id: str, seq: int) -> None:
        n = self._index.get(thread_id)
        if n is None:
            n = self._index[thread_id] = len(self.threads)
            self.threads.append(thread_id)
        self._which.append(n)
        self._seqs.append(seq)

    def __len__(self) -> int:
        return len(self._seqs)

    def batches(self, size: int) -> Iterator[tuple[list[str], list[int]]]:
        for i in range(0, len(self._seqs), size):
            yield [self.threads[n] for n in self._which[i : i + size]], list(self._seqs[i : i + size])


async def _keys(conn: psycopg.AsyncConnection, sql: str, args: Sequence[Any]) -> EventKeys:
    keys = EventKeys()
    async with conn.cursor(name="threadloom_search_keys") as cur:  # streamed: a million keys is fine
        await cur.execute(sql, args)
        while rows := await cur.fetchmany(10_000):
            for tid, seq in rows:
                keys.add(tid, seq)
    return keys


async def missing_keys(conn: psycopg.AsyncConnection) -> EventKeys:
    """Indexable events without a row, oldest first (so ``id`` follows time)."""
    return await _keys(
        conn,
        f"SELECT e.thread_id, e.seq FROM events AS e WHERE e.type = ANY(%s) AND NOT EXISTS"
        f" (SELECT 1 FROM {TABLE} AS d WHERE d.thread_id = e.thread_id AND d.seq = e.seq)"
        " ORDER BY e.ts, e.thread_id, e.seq",
        (list(INDEXED_TYPES),),
    )


async def stale_keys(conn: psycopg.AsyncConnection) -> EventKeys:
    """Rows whose event is gone or not of an indexed type."""
    return await _keys(
        conn,
        f"SELECT d.thread_id, d.seq FROM {TABLE} AS d WHERE NOT EXISTS (SELECT 1 FROM events AS e"
        " WHERE e.thread_id = d.thread_id AND e.seq = d.seq AND e.type = ANY(%s)) ORDER BY d.id",
        (list(INDEXED_TYPES),),
    )


async def index_keys(conn: psycopg.AsyncConnection, batch: tuple[list[str], list[int]]) -> int:
    """Index these events if they still exist and lack a row; returns how many were added."""
    cur = await conn.execute(
        "SELECT e.thread_id, e.seq, e.ts, e.type, e.line FROM unnest(%s::text[], %s::bigint[])"
        " WITH ORDINALITY AS k(tid, seq, n) JOIN events AS e ON e.thread_id = k.tid AND e.seq = k.seq"
        " WHERE e.type = ANY(%s) ORDER BY k.n",
        (*batch, list(INDEXED_TYPES)),
    )
    items = [
        (tid, row)
        for tid, seq, ts, etype, line in await cur.fetchall()
        for row in stored_doc_rows([StoredEvent(tid, seq, ts, etype, line)])
    ]
    return await _insert(conn, items, replace=False, count=True)


async def remove_keys(conn: psycopg.AsyncConnection, batch: tuple[list[str], list[int]]) -> int:
    """Delete these rows if their event is still gone or not indexable; returns how many went."""
    cur = await conn.execute(
        f"DELETE FROM {TABLE} AS d USING unnest(%s::text[], %s::bigint[]) AS k(tid, seq)"
        " WHERE d.thread_id = k.tid AND d.seq = k.seq AND NOT EXISTS (SELECT 1 FROM events AS e"
        " WHERE e.thread_id = d.thread_id AND e.seq = d.seq AND e.type = ANY(%s))",
        (*batch, list(INDEXED_TYPES)),
    )
    return max(cur.rowcount, 0)


async def count_docs(conn: psycopg.AsyncConnection) -> int:
    cur = await conn.execute(f"SELECT count(*) FROM {TABLE}")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def backfill(conn: psycopg.AsyncConnection) -> int:
    """Index every indexable event lacking a row, inside the caller's transaction (the
    migration that creates the table runs this, so an older database is searchable at once)."""
    added = 0
    for batch in (await missing_keys(conn)).batches(REINDEX_BATCH):
        added += await index_keys(conn, batch)
    return added


Run = Callable[..., Awaitable[Any]]
"""The store's ``_run(fn, write=...)``: one transaction per call, transient failures retried."""


async def reindex(run: Run, *, progress: ReindexProgress | None = None) -> ReindexStats:
    """Remove stale rows, then index missing events, one transaction per batch (appends
    interleave; every step is idempotent, so a retried batch is harmless)."""
    done = 0
    counts = {"removed": 0, "added": 0}
    phases = (("removed", stale_keys, remove_keys), ("added", missing_keys, index_keys))
    for phase, find, work in phases:
        keys: EventKeys = await run(find, write=False)
        total = done + len(keys)
        if progress is not None:
            progress(done, total)
        for batch in keys.batches(REINDEX_BATCH):
            counts[phase] += await run(lambda conn, b=batch, w=work: w(conn, b), write=False)
            done += len(batch[1])
            if progress is not None:
                progress(done, total)
    documents = await run(count_docs, write=False)
    return ReindexStats(added=counts["added"], removed=counts["removed"], documents=documents)
