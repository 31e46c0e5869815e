"""The commit core: what each write op means, computed once from the row a backend loaded.

Every backend reads the thread's row its own way (a SELECT on SQLite, a row lock on
PostgreSQL, a dict on the memory store), calls the plan of the op here and writes what
it returns in its own SQL (the statements' columns are here too, with the driver's
placeholder left open). The rules live here and in apply.py (the guards):

- :func:`plan_append`: the lease check and renewal, starting a created thread, the status
  and count guards, the idempotency check, seq assignment, the rendered lines and the
  hash chain, the counters, the accounts of an unguarded append and the idempotency
  record; :func:`plan_checkpoint`, the signed checkpoint that may follow;
- :func:`created_row` (a new thread's row), :func:`plan_put_thread` (the version guard,
  the lease check and the row's new values), :func:`plan_put_usage` (the usage version
  guard), :func:`plan_put_lease` (acquire, renew, release) and :func:`plan_import` (event
  numbering, an id in use, this store's hash chain, the imported row).

PostgreSQL's one-call append (pgappend.py) is the one place that repeats the append's
rules, in SQL, for speed; the conformance suite and tests/test_pg_append.py (guards,
gapless seqs, the hash chain, the transcript bytes) check it against the same rules.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import replace as dc_replace
from typing import Any

from ..errors import ConflictError
from ..integrity import Signer, chain_hashes, chain_next
from ..models import Status, StoredEvent, Thread, Usage, parse_iso, render_line
from .apply import (
    LeaseColumns,
    accounts_from_doc,
    add_usage_doc,
    check_count_guard,
    check_idempotency,
    check_import,
    check_lease,
    check_status_guard,
    check_usage_guard,
    check_version_guard,
    checkpoint_event,
    counters_after,
    lease_after,
    lease_columns,
    manifest_doc,
    rendered_events,
    start_event,
    started_doc,
)
from .base import AppendEvents, IdempotencyRecord, ImportThread, PutLease, PutThread, PutUsage


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


# ----------------------------------------------------------------- the thread row's ops


def _insert_sql(columns: tuple[str, ...], placeholder: str) -> str:
    return f"INSERT INTO threads ({', '.join(columns)}) VALUES ({', '.join([placeholder] * len(columns))})"


IDENTITY_COLUMNS = (
    "thread_id",
    "agent_id",
    "parent_id",
    "status",
    "created_at",
    "updated_at",
    "heartbeat_at",
    "heartbeat_epoch",
    "stale_after",
    "chain_root_id",
)
"""The columns every new thread's row starts with, created or imported (:func:`_identity`)."""
CREATE_COLUMNS = (
    *IDENTITY_COLUMNS,
    "doc",
    "accounts",
    "fork_of",
    "lease_owner",
    "lease_expires",
    "lease_ttl",
)
"""The columns a created thread's row is inserted with (:func:`created_row` gives the values)."""


@functools.lru_cache(maxsize=8)
def create_sql(placeholder: str) -> str:
    """The INSERT of a created thread's row, for a driver whose placeholder is ``placeholder``."""
    return _insert_sql(CREATE_COLUMNS, placeholder)


def _identity(t: Thread, heartbeat_epoch: float) -> tuple[Any, ...]:
    """The values of :data:`IDENTITY_COLUMNS` for thread ``t``."""
    return (
        t.thread_id,
        t.agent_id,
        t.parent_id,
        t.status.value,
        t.created_at,
        t.updated_at,
        t.heartbeat_at,
        heartbeat_epoch,
        t.stale_after,
        t.chain_root_id,
    )


def created_row(t: Thread, epoch: float, accounts: str | None) -> tuple[Any, ...]:
    """The values of a new thread's row, in :data:`CREATE_COLUMNS` order; ``accounts`` as
    the backend stores the thread's usage and budget."""
    return (
        *_identity(t, epoch),
        manifest_doc(t),
        accounts,
        t.forked_from.thread_id if t.forked_from else None,
        *lease_columns(t.lease),
    )


PUT_THREAD_COLUMNS = (
    "agent_id = {p}, parent_id = {p}, status = {p}, updated_at = {p}, heartbeat_at = {p},"
    " heartbeat_epoch = {p}, stale_after = {p}, chain_root_id = {p}, doc = {p}, version = version + 1,"
    " lease_expires = COALESCE({p}, lease_expires)"
)


@functools.lru_cache(maxsize=8)
def put_thread_sql(placeholder: str) -> str:
    """The UPDATE of a thread's row by :func:`plan_put_thread`'s values (thread id last)."""
    return f"UPDATE threads SET {PUT_THREAD_COLUMNS.format(p=placeholder)} WHERE thread_id = {placeholder}"


def put_thread_check(
    op: PutThread, version: int, heartbeat_epoch: float, lease: LeaseColumns, now: float
) -> float | None:
    """The guards of a manifest write against the stored row (version, heartbeat, lease):
    the lease's new expiry when the holder wrote, else None.

    Raises:
        ConflictError: ``version_guard`` (the row moved since it was read) or ``thread_leased``.
    """
    check_version_guard(op, version, heartbeat_epoch)
    return check_lease(op.thread.thread_id, op.lease, lease, now)


def plan_put_thread(
    op: PutThread, version: int, heartbeat_epoch: float, lease: LeaseColumns, ts: str, now: float
) -> tuple[Any, ...]:
    """The values of :func:`put_thread_sql` for ``op`` on the row as loaded, or the error
    that refuses it (:func:`put_thread_check`). The counters, usage and lease owner stay the
    row's: a manifest write never moves them."""
    t = op.thread
    renew = put_thread_check(op, version, heartbeat_epoch, lease, now)
    return (
        t.agent_id,
        t.parent_id,
        t.status.value,
        ts,
        ts,
        now,
        t.stale_after,
        t.chain_root_id,
        manifest_doc(t),
        renew,
        t.thread_id,
    )


def plan_put_usage(op: PutUsage, accounts: str | None) -> Usage:
    """The usage ``op`` stores over the thread's stored ``accounts`` document (its version
    one past the one the op expected), or the error that refuses it.

    Raises:
        ConflictError: ``version_guard`` when another write moved the usage first.
    """
    current = Usage.model_validate(accounts_from_doc(accounts).get("usage") or {})
    check_usage_guard(op, current.version)
    return op.usage.model_copy(update={"version": op.expect_version + 1})


@functools.lru_cache(maxsize=8)
def put_lease_sql(placeholder: str) -> str:
    """The UPDATE of a thread's lease columns (owner, expiry, ttl, then updated_at, thread id)."""
    p = placeholder
    return (
        f"UPDATE threads SET lease_owner = {p}, lease_expires = {p}, lease_ttl = {p}, updated_at = {p},"
        f" version = version + 1 WHERE thread_id = {p}"
    )


def plan_put_lease(op: PutLease, lease: LeaseColumns, now: float) -> LeaseColumns | None:
    """The thread's lease columns after ``op`` (acquire or renew with a ttl, release
    without), or None when they stay as they are and nothing is written.

    Raises:
        ConflictError: ``thread_leased`` while someone else holds an unexpired lease.
    """
    after = lease_after(op.thread_id, op.owner, op.ttl, lease, now)
    return None if after == tuple(lease) else after


IMPORT_COLUMNS = (
    *IDENTITY_COLUMNS,
    "event_count",
    "text_chars",
    "input_tokens",
    "transcript_bytes",
    "version",
    "doc",
    "chain_head",
    "accounts",
    "fork_of",
)
"""The columns an imported thread's row is inserted with (:class:`ImportWrite`)."""


@functools.lru_cache(maxsize=8)
def import_sql(placeholder: str) -> str:
    """The INSERT of an imported thread's row, for a driver whose placeholder is ``placeholder``."""
    return _insert_sql(IMPORT_COLUMNS, placeholder)


@dataclass(frozen=True, slots=True)
class ImportWrite:
    """What an import writes: the thread's row and its events, chained by this store."""

    row: tuple[Any, ...]
    """The values of :func:`import_sql`, in :data:`IMPORT_COLUMNS` order."""
    events: list[StoredEvent]
    """The events as imported, each with this store's ``prev_hash``."""
    head: str
    """The chain head after them (the genesis hash for a thread without events)."""


def plan_import(op: ImportThread, exists: bool, accounts: str | None) -> ImportWrite:
    """The import of ``op``'s thread and events, or the error that refuses it.

    The lines keep their bytes; the hash chain is this store's over them. ``exists``: a
    thread of that id is stored already; ``accounts`` as the backend stores the thread's
    usage and budget.

    Raises:
        InvalidInputError: ``import_seq``, events not numbered 1..n or not the event count.
        ConflictError: ``thread_exists``.
    """
    t = op.thread
    check_import(op)
    if exists:
        raise ConflictError(f"thread {t.thread_id} exists already", rule="thread_exists")
    prevs, head = chain_hashes(None, [e.line for e in op.events])
    row = (
        *_identity(t, parse_iso(t.heartbeat_at).timestamp()),
        t.event_count,
        t.text_chars,
        t.input_tokens,
        sum(len(e.line.encode()) + 1 for e in op.events),
        max(1, t.version),
        manifest_doc(t),
        head,
        accounts,
        t.forked_from.thread_id if t.forked_from else None,
    )
    events = [dc_replace(e, prev_hash=p) for e, p in zip(op.events, prevs)]
    return ImportWrite(row, events, head)
