"""Helpers shared by backends: the guards and counter updates every commit applies.

Written once here so that each backend only moves bytes; the rules of a commit
(status guard, version guard, counters, seq assignment) cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ..errors import ConflictError, InvalidInputError, NotFoundError
from ..integrity import Signer, chain_hashes, checkpoint_payload
from ..models import COUNTER_FIELDS as COUNTER_FIELDS  # re-exported: defined here before models.py
from ..models import (
    ENDED,
    MANIFEST_FIELDS,
    BudgetState,
    Lease,
    Status,
    StatusEvent,
    StoredEvent,
    Thread,
    Usage,
    UsageDelta,
    canonical_json,
    event_payload,
    iso,
    render_line,
    utc_now,
)
from .base import (
    AppendEvents,
    IdempotencyRecord,
    IdempotentReplay,
    ImportThread,
    LeaseCheck,
    NewEvent,
    PutThread,
    PutUsage,
)


def now_pair() -> tuple[str, float]:
    """(ISO timestamp, epoch seconds) of the same instant."""
    dt = utc_now()
    return iso(dt), dt.timestamp()


COLUMN_OVERRIDES = ("thread_id", "status", "updated_at", "heartbeat_at")
"""Manifest fields a threads row keeps in columns that win over its document."""

_NONE_DEFAULTS = frozenset(
    name for name, f in Thread.model_fields.items() if not f.is_required() and f.default is None
)


def lean_manifest_fields(data: dict[str, Any]) -> dict[str, Any]:
    """A manifest's fields as its stored document keeps them: without
    :data:`COLUMN_OVERRIDES` (the row's columns give them) and without the fields that are
    None and default to None (about 60% of a typical document, issue 17 item 3)."""
    return {
        k: v for k, v in data.items() if k not in COLUMN_OVERRIDES and not (v is None and k in _NONE_DEFAULTS)
    }


def manifest_doc(thread: Thread) -> str:
    """The stored JSON document of a manifest (every field but the counters and what the
    row's columns hold: :func:`lean_manifest_fields`; :func:`row_to_thread` reads it)."""
    return canonical_json(lean_manifest_fields(thread.model_dump(mode="json", include=set(MANIFEST_FIELDS))))


def request_hash(thread_id: str, payloads: list[dict[str, Any]]) -> str:
    """Hash identifying an append's content, to tell a retry from a key reused for other data."""
    return hashlib.sha256(canonical_json([thread_id, payloads]).encode()).hexdigest()


def not_found(thread_id: str) -> NotFoundError:
    return NotFoundError(f"thread {thread_id!r} does not exist", rule="thread_not_found")


def check_status_guard(op: AppendEvents, status: Status) -> None:
    if op.allowed_statuses is not None and status not in op.allowed_statuses:
        raise ConflictError(
            f"thread {op.thread_id} changed to status {status.value} before the append committed",
            rule="status_guard",
        )


def start_event(op: AppendEvents, status: Status) -> NewEvent | None:
    """The ``status`` event that starts a created thread in this append (``op.start_reason``),
    or None when the op does not ask for it or the thread is not ``created``."""
    if op.start_reason is None or status != Status.CREATED:
        return None
    ev = StatusEvent(**{"from": Status.CREATED, "to": Status.RUNNING, "reason": op.start_reason})
    return NewEvent("status", event_payload(ev))


def started_doc(doc: str, reason: str) -> str:
    """A stored manifest document after :func:`start_event`: status running, with its reason."""
    data = json.loads(doc)
    data.update(status=Status.RUNNING.value, status_reason=reason)
    return canonical_json(lean_manifest_fields(data))  # status is a column: not kept twice


def check_count_guard(op: AppendEvents, event_count: int) -> None:
    if op.expect_event_count is not None and event_count != op.expect_event_count:
        raise ConflictError(
            f"thread {op.thread_id} holds {event_count} events, not {op.expect_event_count}: "
            "another append committed first; retry",
            rule="count_guard",
        )


def check_version_guard(op: PutThread, version: int, heartbeat_epoch: float) -> None:
    if version != op.expect_version:
        raise ConflictError(
            f"thread {op.thread.thread_id} was changed concurrently (version {version}, "
            f"expected {op.expect_version}); retry",
            rule="version_guard",
        )
    if op.expect_heartbeat_before is not None and heartbeat_epoch >= op.expect_heartbeat_before:
        raise ConflictError(
            f"thread {op.thread.thread_id} had a heartbeat since the check", rule="version_guard"
        )


LeaseColumns = tuple[str | None, float | None, float | None]
"""A thread's stored lease: (owner, expires epoch, ttl); all None when it never had one."""


def lease_of(cols: LeaseColumns, now: float | None = None) -> Lease | None:
    """The lease the columns hold, or None when there is none or it expired by ``now``."""
    owner, expires, ttl = cols
    if owner is None or expires is None or ttl is None:
        return None
    if expires <= (time.time() if now is None else now):
        return None
    return Lease(owner=owner, expires_at=iso(datetime.fromtimestamp(expires, UTC)), ttl=ttl)


def leased_error(thread_id: str, holder: str, expires: float, now: float, wants: str | None) -> ConflictError:
    who = f"owner {wants!r:.200}" if wants is not None else "a write that names no owner"
    until = iso(datetime.fromtimestamp(expires, UTC))
    return ConflictError(
        f"thread {thread_id} is leased to {holder!r} until {until} (in {max(0.0, expires - now):.1f} s): "
        f"{who} may not write to it; pass owner={holder!r} if you are its runner, or wait until the "
        "lease expires or is released (release_thread)",
        rule="thread_leased",
    )


def check_lease(thread_id: str, check: LeaseCheck | None, cols: LeaseColumns, now: float) -> float | None:
    """Enforce a write's lease check against the stored lease; return the new expiry when
    the write renews it (the holder wrote), else None.

    Raises:
        ConflictError: ``thread_leased`` when someone else holds an unexpired lease.
    """
    owner, expires, ttl = cols
    if check is None or owner is None or expires is None or expires <= now:
        return None
    if check.owner != owner:
        raise leased_error(thread_id, owner, expires, now, check.owner)
    return now + (ttl or 0.0)


def lease_after(
    thread_id: str, owner: str, ttl: float | None, cols: LeaseColumns, now: float
) -> LeaseColumns:
    """The stored lease after acquiring (``ttl``) or releasing (``ttl`` None) for ``owner``.

    Raises:
        ConflictError: ``thread_leased`` while someone else holds an unexpired lease.
    """
    holder, expires, _ = cols
    live = holder is not None and expires is not None and expires > now
    if live and holder != owner:
        assert holder is not None and expires is not None
        raise leased_error(thread_id, holder, expires, now, owner)
    if ttl is not None:
        return owner, now + ttl, ttl
    if holder == owner:
        return None, None, None
    return cols  # free or someone else's expired lease: nothing to release


def lease_columns(lease: Lease | None) -> LeaseColumns:
    """The stored columns of a lease a new thread starts with (a continuation's)."""
    if lease is None:
        return None, None, None
    return lease.owner, lease.expires_epoch, lease.ttl


def check_idempotency(op: AppendEvents, record: IdempotencyRecord | None) -> None:
    if record is None:
        return
    if record.request_hash == op.request_hash:
        raise IdempotentReplay(record)
    raise ConflictError(
        f"idempotency_key {op.idempotency_key!r} was already used on thread {op.thread_id} "
        f"for different events (seqs {record.seqs}); use a new key for new content",
        rule="idempotency_key_reused",
    )


def rendered_events(
    thread_id: str, events: Sequence[NewEvent], base: int, head: str | None, ts: str
) -> tuple[list[str], list[StoredEvent], str]:
    """Events appended after seq ``base`` and chain head ``head``: their transcript lines,
    the stored events (with ``prev_hash``) and the new chain head. One renderer for every
    backend, so the same events are the same bytes everywhere."""
    lines = [render_line(base + 1 + i, ts, ev.payload) for i, ev in enumerate(events)]
    prevs, new_head = chain_hashes(head, lines)
    stored = [
        StoredEvent(thread_id, base + 1 + i, ts, ev.type, line, prev)
        for i, (ev, line, prev) in enumerate(zip(events, lines, prevs))
    ]
    return lines, stored, new_head


def counters_after(
    events: tuple[NewEvent, ...], text_chars: int, input_tokens: int | None
) -> tuple[int, int | None]:
    """Context counters after appending ``events``."""
    for ev in events:
        text_chars += ev.text_chars
        if ev.input_tokens is not None:
            input_tokens = ev.input_tokens
    return text_chars, input_tokens


def epoch() -> float:
    return time.time()


# ------------------------------------------------------------- integrity


def wants_checkpoint(requested: bool, status: Status) -> bool:
    """A commit that appended to a thread ends with a checkpoint when asked to, or when it
    leaves the thread ended (terminal or continued): an ended transcript ends signed."""
    return requested or status in ENDED


def checkpoint_event(signer: Signer, digest_hex: str) -> NewEvent:
    """The server's ``checkpoint`` event over a transcript prefix with SHA-256 ``digest_hex``."""
    return NewEvent("checkpoint", checkpoint_payload(signer, digest_hex))


# ---------------------------------------------------------------- accounts


def add_usage(usage: Usage, delta: UsageDelta) -> Usage:
    """``usage`` after an unguarded append added ``delta`` (its version moves)."""
    return Usage(
        turns=usage.turns + delta.turns,
        tokens=usage.tokens + delta.tokens,
        spend=round(usage.spend + delta.spend, 9),
        actual_spend=round(usage.actual_spend + delta.spend, 9),
        version=usage.version + 1,
    )


def check_usage_guard(op: PutUsage, version: int) -> None:
    if version != op.expect_version:
        raise ConflictError(
            f"the accounts of thread {op.thread_id} changed concurrently (usage version {version}, "
            f"expected {op.expect_version}); retry",
            rule="version_guard",
        )


def accounts_doc(usage: Usage, budget: BudgetState | None) -> str:
    """The stored JSON of a thread's accounts."""
    return canonical_json(
        {"usage": usage.model_dump(mode="json"), "budget": budget.model_dump(mode="json") if budget else None}
    )


def accounts_from_doc(doc: str | None) -> dict[str, object]:
    """Model fields ``usage`` and ``budget`` from the stored JSON (defaults when absent)."""
    if not doc:
        return {}
    data = json.loads(doc)
    return {"usage": data.get("usage") or {}, "budget": data.get("budget")}


def add_usage_doc(doc: str | None, delta: UsageDelta) -> str:
    """The stored accounts JSON after an unguarded append added ``delta`` to its usage."""
    data = json.loads(doc) if doc else {}
    u = data.get("usage") or {}
    usage = {  # plain dicts on the append path: the same arithmetic as add_usage, without validation
        "turns": u.get("turns", 0) + delta.turns,
        "tokens": u.get("tokens", 0) + delta.tokens,
        "spend": round(u.get("spend", 0.0) + delta.spend, 9),
        "actual_spend": round(u.get("actual_spend", 0.0) + delta.spend, 9),
        "version": u.get("version", 0) + 1,
    }
    return canonical_json({"usage": usage, "budget": data.get("budget")})


def check_import(op: ImportThread) -> None:
    """Refuse an import whose events are not numbered 1..n or disagree with the event count."""
    tid = op.thread.thread_id
    for i, ev in enumerate(op.events, start=1):
        if ev.seq != i or ev.thread_id != tid:
            raise InvalidInputError(
                f"imported events of thread {tid} must be numbered 1..n in order; event #{i} has "
                f"seq {ev.seq} (thread {ev.thread_id})",
                rule="import_seq",
            )
    if op.thread.event_count != len(op.events):
        raise InvalidInputError(
            f"imported thread {tid} says event_count {op.thread.event_count} but carries "
            f"{len(op.events)} events",
            rule="import_seq",
        )


def row_to_thread(row: Sequence[Any]) -> Thread:
    """A Thread from a stored row: (thread_id, doc, status, updated_at, heartbeat_at,
    event_count, text_chars, input_tokens, version[, accounts[, lease_owner, lease_expires,
    lease_ttl]]); columns win over the doc, which may leave out what they hold and the
    fields that are None (:func:`manifest_doc`). An expired lease is not shown."""
    tid, doc, status, updated_at, heartbeat_at, event_count, text_chars, input_tokens, version = row[:9]
    data = json.loads(doc)
    data["thread_id"] = tid
    data.pop("budget", None)  # a pre-accounts document kept the asked-for budget here
    data.pop("lease", None)
    data.update(accounts_from_doc(row[9] if len(row) > 9 else None))
    if len(row) > 12:
        lease = lease_of((row[10], row[11], row[12]))
        if lease is not None:
            data["lease"] = lease
    data.update(
        status=status,
        updated_at=updated_at,
        heartbeat_at=heartbeat_at,
        event_count=event_count,
        text_chars=text_chars,
        input_tokens=input_tokens,
        version=version,
    )
    return Thread.model_validate(data)


def list_threads_query(
    columns: str,
    *,
    agent_id: str | None,
    parent_id: str | None,
    status: Status | None,
    limit: int,
    before: tuple[str, str] | None,
    mark: str,
) -> tuple[str, list[object]]:
    """The SQL and arguments of ``Store.list_threads`` (``mark``: the driver's placeholder)."""
    where: list[str] = []
    args: list[object] = []
    for col, val in (("agent_id", agent_id), ("parent_id", parent_id), ("status", status)):
        if val is not None:
            where.append(f"{col} = {mark}")
            args.append(str(val))
    if before is not None:
        where.append(f"(created_at, thread_id) < ({mark}, {mark})")
        args.extend(before)
    q = f"SELECT {columns} FROM threads"
    if where:
        q += " WHERE " + " AND ".join(where)
    q += f" ORDER BY created_at DESC, thread_id DESC LIMIT {mark}"
    args.append(limit)
    return q, args
