"""One-call appends on PostgreSQL: the common append in a single round trip.

A plain append (no usage to account, no checkpoint, nothing else in the commit) is
sent as one ``SELECT * FROM threadloom_append(...)`` in autocommit mode: the function
locks the thread's row, checks every guard, and inserts the events, the search rows
(store/pgsearch.py) and the idempotency record in the one implicit transaction. Its
common path is one guarded ``UPDATE`` and the inserts; only when the ``UPDATE`` matched
nothing does it read the row to say which guard refused. The transcript lines and
their hash chain are rendered in Python (one renderer for every backend) from the
thread's tail as this process last saw it, ``(event_count, chain_head)``; when another
writer moved the tail, the function writes nothing and returns the tail it found, and
the append is rendered again on it.

Appends that wait at the same moment share one transaction (:class:`GroupCommit`):
one pipelined round trip of ``BEGIN; SELECT threadloom_append(...) x N; COMMIT`` and one
WAL flush for all of them, as the SQLite writer's group commit does. The function
reports a failed guard as a result instead of raising, so one refused append does not
undo the others; rows are locked in thread-id order, so groups of different servers
cannot deadlock each other.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..models import ENDED, StoredEvent
from .apply import counters_after, now_pair, rendered_events
from .base import AppendEvents

__all__ = ["FUNCTION_SQL", "CALL", "Tails", "Rendered", "render", "fits", "GroupCommit"]

FUNCTION_SQL = """
CREATE OR REPLACE FUNCTION threadloom_append(
    p_thread TEXT, p_base BIGINT, p_head TEXT, p_ts TEXT, p_epoch DOUBLE PRECISION,
    p_statuses TEXT[], p_expect BIGINT, p_idem TEXT, p_request_hash TEXT, p_idem_seqs TEXT,
    p_types TEXT[], p_lines TEXT[], p_prevs TEXT[], p_new_head TEXT, p_nbytes BIGINT,
    p_text_delta BIGINT, p_input_tokens BIGINT,
    p_doc_seqs BIGINT[], p_doc_tsvs TEXT[],
    p_lease_check BOOLEAN, p_owner TEXT
) RETURNS TABLE (
    r_outcome TEXT, r_thread_id TEXT, r_doc TEXT, r_status TEXT, r_updated_at TEXT,
    r_heartbeat_at TEXT, r_event_count BIGINT, r_text_chars BIGINT, r_input_tokens BIGINT,
    r_version BIGINT, r_accounts TEXT, r_chain_head TEXT, r_idem_hash TEXT, r_idem_seqs TEXT,
    r_lease_owner TEXT, r_lease_expires DOUBLE PRECISION, r_lease_ttl DOUBLE PRECISION
) LANGUAGE plpgsql AS $fn$
BEGIN
    IF p_idem IS NOT NULL THEN
        -- under the row lock, so concurrent retries of one key serialize
        PERFORM 1 FROM threads WHERE thread_id = p_thread FOR UPDATE;
        SELECT request_hash, seqs INTO r_idem_hash, r_idem_seqs
            FROM idempotency WHERE thread_id = p_thread AND key = p_idem;
        IF FOUND THEN
            r_outcome := 'idempotent';
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;
    -- the common case in one statement: every guard is in the WHERE clause
    UPDATE threads SET event_count = event_count + cardinality(p_lines),
        text_chars = text_chars + p_text_delta, input_tokens = COALESCE(p_input_tokens, input_tokens),
        updated_at = p_ts, heartbeat_at = p_ts, heartbeat_epoch = p_epoch,
        transcript_bytes = transcript_bytes + p_nbytes, chain_head = p_new_head,
        -- the holder's write renews its lease (the run lease, docs/live.md)
        lease_expires = CASE WHEN p_lease_check AND lease_owner = p_owner AND lease_expires > p_epoch
                             THEN p_epoch + lease_ttl ELSE lease_expires END
        WHERE thread_id = p_thread AND event_count = p_base AND chain_head IS NOT DISTINCT FROM p_head
          AND (p_statuses IS NULL OR status = ANY (p_statuses))
          AND (p_expect IS NULL OR event_count = p_expect)
          AND (NOT p_lease_check OR lease_owner IS NULL OR lease_expires <= p_epoch
               OR lease_owner = p_owner)
        RETURNING thread_id, doc, status, updated_at, heartbeat_at, event_count, text_chars,
                  input_tokens, version, accounts, chain_head, lease_owner, lease_expires, lease_ttl
        INTO r_thread_id, r_doc, r_status, r_updated_at, r_heartbeat_at, r_event_count,
             r_text_chars, r_input_tokens, r_version, r_accounts, r_chain_head,
             r_lease_owner, r_lease_expires, r_lease_ttl;
    IF NOT FOUND THEN
        -- nothing written: say why (any later state is as good an answer as the one it met)
        SELECT thread_id, status, event_count, chain_head, lease_owner, lease_expires
            INTO r_thread_id, r_status, r_event_count, r_chain_head, r_lease_owner, r_lease_expires
            FROM threads WHERE thread_id = p_thread;
        IF NOT FOUND THEN
            r_outcome := 'not_found';
        ELSIF p_lease_check AND r_lease_owner IS NOT NULL AND r_lease_expires > p_epoch
              AND r_lease_owner IS DISTINCT FROM p_owner THEN
            r_outcome := 'leased';
        ELSIF p_statuses IS NOT NULL AND NOT (r_status = ANY (p_statuses)) THEN
            r_outcome := 'status_guard';
        ELSIF p_expect IS NOT NULL AND r_event_count <> p_expect THEN
            r_outcome := 'count_guard';
        ELSE
            r_outcome := 'stale';
        END IF;
        RETURN NEXT;
        RETURN;
    END IF;
    INSERT INTO events (thread_id, seq, ts, type, line, prev_hash)
        SELECT p_thread, p_base + u.i, p_ts, u.ty, u.li, u.pr
        FROM unnest(p_types, p_lines, p_prevs) WITH ORDINALITY AS u(ty, li, pr, i);
    IF cardinality(p_doc_seqs) > 0 THEN
        INSERT INTO search_docs (thread_id, seq, tsv)
            SELECT p_thread, d.s, d.v::tsvector
            FROM unnest(p_doc_seqs, p_doc_tsvs) AS d(s, v)
            ON CONFLICT (thread_id, seq) DO UPDATE SET tsv = EXCLUDED.tsv;
    END IF;
    IF p_idem IS NOT NULL THEN
        INSERT INTO idempotency (thread_id, key, request_hash, seqs, created_at)
            VALUES (p_thread, p_idem, p_request_hash, p_idem_seqs, p_ts);
    END IF;
    r_outcome := 'ok';
    RETURN NEXT;
END
$fn$
"""
"""Migration statement: the append function (its arguments are rendered by :func:`render`).

Migration 4 created it; migration 9 (leases) replaced it with one that also checks and
renews the run lease; migration 10 with this text, which indexes the events without a copy
of their text (search_docs keeps only the tsvector). The columns it names need not be as it
expects when it is created (PL/pgSQL resolves them when it runs), so a new database runs
this same text in all three migrations."""

OLD_SIGNATURE = (
    "threadloom_append(TEXT, BIGINT, TEXT, TEXT, DOUBLE PRECISION, TEXT[], BIGINT, TEXT, TEXT, TEXT,"
    " TEXT[], TEXT[], TEXT[], TEXT, BIGINT, BIGINT, BIGINT, BIGINT[], TEXT[], TEXT[], TEXT[])"
)
"""The function's arguments before leases (migration 4 of a database made before them)."""

LEASE_SIGNATURE = (
    "threadloom_append(TEXT, BIGINT, TEXT, TEXT, DOUBLE PRECISION, TEXT[], BIGINT, TEXT, TEXT, TEXT,"
    " TEXT[], TEXT[], TEXT[], TEXT, BIGINT, BIGINT, BIGINT, BIGINT[], TEXT[], TEXT[], TEXT[], BOOLEAN, TEXT)"
)
"""The function's arguments from migration 9 on, before search_docs dropped its text (migration 10)."""

CALL = "SELECT * FROM threadloom_append(" + ",".join(["%b"] * 21) + ")"
"""Binary parameters: text arrays need no quoting (in text format psycopg escapes every element)."""

MAX_GROUP = 64
"""Most appends sharing one transaction."""
FLUSHERS = 4
"""Groups in flight at once (each on its own pooled connection)."""
TAIL_CACHE = 10_000
"""Threads whose tail this process remembers (the least recently used are forgotten)."""


class Tails:
    """``(event_count, chain_head)`` of threads as this process last saw them commit."""

    def __init__(self, size: int = TAIL_CACHE) -> None:
        self._size = size
        self._tails: OrderedDict[str, tuple[int, str | None]] = OrderedDict()

    def get(self, thread_id: str) -> tuple[int, str | None] | None:
        tail = self._tails.get(thread_id)
        if tail is not None:
            self._tails.move_to_end(thread_id)
        return tail

    def put(self, thread_id: str, count: int, head: str | None) -> None:
        self._tails[thread_id] = (count, head)
        self._tails.move_to_end(thread_id)
        if len(self._tails) > self._size:
            self._tails.popitem(last=False)

    def forget(self, thread_id: str) -> None:
        self._tails.pop(thread_id, None)


@dataclass(frozen=True, slots=True)
class Rendered:
    """An append rendered on an assumed tail: the stored events and the function's arguments."""

    stored: list[StoredEvent]
    lines: list[str]
    head: str
    args: tuple[object, ...]


def render(op: AppendEvents, base: int, head: str | None, ts: str, epoch: float) -> Rendered:
    """Render ``op`` as if the thread held ``base`` events ending in chain head ``head``."""
    lines, stored, new_head = rendered_events(op.thread_id, op.events, base, head, ts)
    prevs = [e.prev_hash for e in stored]
    text_delta, last_tokens = counters_after(op.events, 0, None)
    seqs = [e.seq for e in stored]
    from .pgsearch import doc_rows  # psycopg is imported only by PostgreSQL stores (schema.py imports us)

    docs = doc_rows(op.events, seqs)
    args = (
        op.thread_id, base, head, ts, epoch,
        None if op.allowed_statuses is None else sorted(s.value for s in op.allowed_statuses),
        op.expect_event_count, op.idempotency_key,
        op.request_hash or "" if op.idempotency_key is not None else None,
        json.dumps(seqs) if op.idempotency_key is not None else None,
        [e.type for e in stored], lines, prevs, new_head,
        sum(len(line.encode()) + 1 for line in lines), text_delta, last_tokens,
        [d.seq for d in docs], [d.tsv for d in docs],
        op.lease is not None, op.lease.owner if op.lease is not None else None,
    )  # fmt: skip
    return Rendered(stored, lines, new_head, args)


def fits(ops: Sequence[object], checkpoints: bool) -> AppendEvents | None:
    """The append of a commit that can take the one-call path, else None: a lone append
    with no usage to account and no checkpoint asked for."""
    if len(ops) != 1 or not isinstance(ops[0], AppendEvents):
        return None
    op = ops[0]
    if op.usage is not None or (checkpoints and op.checkpoint) or not op.events:
        return None
    if op.allowed_statuses is None or op.allowed_statuses & ENDED:
        return None  # an append that may leave an ended thread ends with a checkpoint
    return op


Execute = Callable[[list[tuple[object, ...]]], Awaitable[list[tuple[Any, ...]]]]
"""Runs the function once per argument tuple, all in one transaction; returns the rows in order."""


@dataclass(slots=True)
class _Job:
    op: AppendEvents
    done: asyncio.Future[tuple[tuple[Any, ...], Rendered]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupCommit:
    """Flusher tasks (at most :data:`FLUSHERS` at once) each send the appends waiting at that
    moment in one transaction.

    Each append is rendered at flush time on the tail its thread's previous append leaves:
    the cached tail, or the one predicted by an append still in flight, so concurrent
    appends to one thread also go through without a retry. Results come back per
    append: ``(row, rendered)``.
    """

    def __init__(self, tails: Tails, execute: Execute) -> None:
        self._tails = tails
        self._execute = execute
        self._queue: list[_Job] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self._active = 0  # flushers that may still take jobs (counted down as they stop taking)
        self._predicted: dict[str, tuple[int, str | None]] = {}

    async def submit(self, op: AppendEvents) -> tuple[tuple[Any, ...], Rendered]:
        job = _Job(op)
        self._queue.append(job)
        if self._active < FLUSHERS:
            self._active += 1
            task = asyncio.get_running_loop().create_task(self._flush_all())
            self._flushers.add(task)
            task.add_done_callback(self._flushers.discard)
        return await job.done

    async def drain(self) -> None:
        """Wait for appends already submitted (at close)."""
        while self._flushers:
            await asyncio.wait(set(self._flushers))

    async def _flush_all(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
                await self._flush(batch)
        finally:
            # no await between the empty-queue check and this: a job queued after it
            # finds a free slot and starts a flusher of its own
            self._active -= 1

    async def _flush(self, batch: list[_Job]) -> None:
        batch.sort(key=lambda j: j.op.thread_id)  # one lock order for every server; stable per thread
        ts, epoch = now_pair()
        rendered: list[Rendered] = []
        mine: dict[str, tuple[int, str | None]] = {}
        for job in batch:
            tid = job.op.thread_id
            base, head = self._predicted.get(tid) or self._tails.get(tid) or (-1, None)
            r = render(job.op, base, head, ts, epoch)
            rendered.append(r)
            if base >= 0:
                mine[tid] = self._predicted[tid] = (base + len(job.op.events), r.head)
        try:
            rows = await self._execute([r.args for r in rendered])
        except BaseException as exc:
            self._settle(mine)
            for job in batch:
                if not job.done.done():
                    job.done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for job, r, row in zip(batch, rendered, rows):
            if row[0] == "ok":
                self._tails.put(job.op.thread_id, row[6], r.head)
            elif row[0] == "stale":
                self._tails.put(job.op.thread_id, row[6], row[11])
        self._settle(mine)
        for job, r, row in zip(batch, rendered, rows):
            if not job.done.done():
                job.done.set_result((row, r))

    def _settle(self, mine: dict[str, tuple[int, str | None]]) -> None:
        """Drop this group's predictions that no later group built on."""
        for tid, tail in mine.items():
            if self._predicted.get(tid) == tail:
                del self._predicted[tid]
