"""The commit core: what an append means, computed once from the row a backend loaded.

Every backend reads the thread's row its own way (a SELECT on SQLite, a row lock on
PostgreSQL, a dict on the memory store) into :class:`Loaded`, calls :func:`plan_append`,
and writes the resulting :class:`AppendWrite` in its own SQL. The rules live here and in
apply.py (the guards): the lease check and renewal, starting a created thread, the status
and count guards, the idempotency check, seq assignment, the rendered lines and the hash
chain, the counters, the accounts of an unguarded append and the idempotency record; and
the signed checkpoint that may follow (:func:`plan_checkpoint`).
PostgreSQL's one-call append (pgappend.py) is the one place that repeats them, in SQL, for
speed; the conformance suite and tests/test_pg_append.py (guards, gapless seqs, the hash
chain, the transcript bytes) check it against the same rules.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..integrity import Signer, chain_next
from ..models import Status, StoredEvent, render_line
from .apply import (
    LeaseColumns,
    add_usage_doc,
    check_count_guard,
    check_idempotency,
    check_lease,
    check_status_guard,
    checkpoint_event,
    counters_after,
    rendered_events,
    start_event,
    started_doc,
)
from .base import AppendEvents, IdempotencyRecord


@dataclass(frozen=True, slots=True)
class Loaded:
    """A thread as a commit finds it: the columns the append rules read."""

    thread_id: str
    status: Status
    event_count: int
    text_chars: int
    input_tokens: int | None
    version: int
    accounts: str | None
    lease: LeaseColumns
    head: str | None
    doc: str | None = None
    """The stored manifest document, where the backend keeps one (it changes when the
    append starts a created thread)."""

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Loaded:
        """From a SQL row of ``thread_id, doc, status, updated_at, heartbeat_at, event_count,
        text_chars, input_tokens, version, accounts, lease_owner, lease_expires, lease_ttl,
        chain_head`` (the SQLite and PostgreSQL stores' thread columns and the chain head)."""
        tid, doc, status, _u, _h, count, chars, tokens, version, accounts, owner, expires, ttl, head = row
        return cls(
            tid, Status(status), count, chars, tokens, version, accounts, (owner, expires, ttl), head, doc
        )


@dataclass(frozen=True, slots=True)
class AppendWrite:
    """What one append writes, and the thread's columns after it."""

    stored: list[StoredEvent]
    """The rows to insert, hash chain included (a starting ``status`` event first)."""
    lines: list[str]
    seqs: list[int]
    """The seqs of the op's own events (what the caller is told)."""
    head: str
    nbytes: int
    """Transcript bytes the rows add (lines and their newlines)."""
    event_count: int
    text_chars: int
    input_tokens: int | None
    accounts: str | None
    renew: float | None
    """The lease's new expiry when the append renews it, else None."""
    started: bool
    """The append moved a created thread to running (status, version and doc below moved)."""
    status: Status
    version: int
    doc: str | None
    idempotency: tuple[str, str, str] | None
    """(key, request hash, seqs as JSON) to record, when the op has a key."""

    def columns(self, ts: str, epoch: float, *, start: bool) -> tuple[Any, ...]:
        """The values of the thread row's update, in the order of :data:`UPDATE_COLUMNS`
        (and, with ``start``, of :data:`START_COLUMNS` after them)."""
        values = (
            self.event_count,
            self.text_chars,
            self.input_tokens,
            ts,
            ts,
            epoch,
            self.nbytes,
            self.head,
            self.accounts,
            self.renew,
        )
        return (*values, self.status.value, self.doc, self.version) if start else values

    def row_after(self, row: Loaded, ts: str) -> tuple[Any, ...]:
        """The thread's row as the append leaves it, in ``apply.row_to_thread``'s column order
        (thread_id, doc, status, updated_at, heartbeat_at, counters, version, accounts, lease):
        the result needs no read after the commit."""
        owner, expires, ttl = row.lease
        return (
            row.thread_id,
            self.doc,
            self.status.value,
            ts,
            ts,
            self.event_count,
            self.text_chars,
            self.input_tokens,
            self.version,
            self.accounts,
            owner,
            self.renew if self.renew is not None else expires,
            ttl,
        )


UPDATE_COLUMNS = (
    "event_count = {p}, text_chars = {p}, input_tokens = {p}, updated_at = {p}, heartbeat_at = {p},"
    " heartbeat_epoch = {p}, transcript_bytes = transcript_bytes + {p}, chain_head = {p}, accounts = {p},"
    " lease_expires = COALESCE({p}, lease_expires)"
)
"""What an append sets on the thread's row (``{p}``: the driver's placeholder)."""
START_COLUMNS = ", status = {p}, doc = {p}, version = {p}"
"""And what it sets when it starts a created thread."""


@functools.lru_cache(maxsize=8)
def update_sql(placeholder: str, *, start: bool) -> str:
    """The append's UPDATE of the thread's row, for a driver whose placeholder is ``placeholder``."""
    sets = UPDATE_COLUMNS + (START_COLUMNS if start else "")
    return f"UPDATE threads SET {sets.format(p=placeholder)} WHERE thread_id = {placeholder}"


def plan_append(
    op: AppendEvents, row: Loaded, idem: IdempotencyRecord | None, ts: str, epoch: float
) -> AppendWrite:
    """The append of ``op`` to the thread as ``row`` holds it, or the error that refuses it
    (ConflictError: lease, status or count guard, idempotency; IdempotentReplay). ``idem``:
    the record of ``op.idempotency_key`` on this thread, when the op has one."""
    renew = check_lease(op.thread_id, op.lease, row.lease, epoch)
    status, version, doc = row.status, row.version, row.doc
    events = op.events
    started = start_event(op, status)
    if started is not None:  # the first append starts the thread in the same commit
        assert op.start_reason is not None
        status, version = Status.RUNNING, version + 1
        doc = started_doc(doc, op.start_reason) if doc is not None else None
        events = (started, *op.events)
    check_status_guard(op, status)
    check_count_guard(op, row.event_count)
    if op.idempotency_key is not None:
        check_idempotency(op, idem)
    lines, stored, head = rendered_events(op.thread_id, events, row.event_count, row.head, ts)
    text_chars, input_tokens = counters_after(events, row.text_chars, row.input_tokens)
    seqs = [e.seq for e in stored[1 if started is not None else 0 :]]
    return AppendWrite(
        stored=stored,
        lines=lines,
        seqs=seqs,
        head=head,
        nbytes=sum(len(line.encode()) + 1 for line in lines),
        event_count=row.event_count + len(stored),
        text_chars=text_chars,
        input_tokens=input_tokens,
        accounts=add_usage_doc(row.accounts, op.usage) if op.usage is not None else row.accounts,
        renew=renew,
        started=started is not None,
        status=status,
        version=version,
        doc=doc,
        idempotency=(
            (op.idempotency_key, op.request_hash or "", json.dumps(seqs))
            if op.idempotency_key is not None
            else None
        ),
    )


@dataclass(frozen=True, slots=True)
class CheckpointWrite:
    """The signed checkpoint after a thread's last event, and the thread's columns after it."""

    event: StoredEvent
    head: str
    nbytes: int


def plan_checkpoint(
    signer: Signer, thread_id: str, count: int, head: str, ts: str, digest: str
) -> CheckpointWrite:
    """The checkpoint that follows line ``count`` (``head`` its chain head) over a transcript
    prefix of SHA-256 ``digest``: seq ``count + 1``, signed by ``signer``."""
    event = checkpoint_event(signer, digest)
    seq = count + 1
    line = render_line(seq, ts, event.payload)
    return CheckpointWrite(
        StoredEvent(thread_id, seq, ts, event.type, line, head),
        chain_next(head, line),
        len(line.encode()) + 1,
    )
