"""Helpers shared by backends: the guards and counter updates every commit applies.

Written once here so that each backend only moves bytes; the rules of a commit
(status guard, version guard, counters, seq assignment) cannot drift apart.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from ..errors import ConflictError, InvalidInputError, NotFoundError
from ..models import MANIFEST_FIELDS, Status, Thread, canonical_json, iso, utc_now
from .base import AppendEvents, IdempotencyRecord, IdempotentReplay, ImportThread, NewEvent, PutThread

COUNTER_FIELDS = ("event_count", "text_chars", "input_tokens", "version")


def now_pair() -> tuple[str, float]:
    """(ISO timestamp, epoch seconds) of the same instant."""
    dt = utc_now()
    return iso(dt), dt.timestamp()


def manifest_doc(thread: Thread) -> str:
    """The stored JSON document of a manifest (every field but the counters)."""
    return canonical_json(thread.model_dump(mode="json", include=set(MANIFEST_FIELDS)))


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


def counters_after(events: tuple[NewEvent, ...], text_chars: int, input_tokens: int | None) -> tuple[int, int | None]:
    """Context counters after appending ``events``."""
    for ev in events:
        text_chars += ev.text_chars
        if ev.input_tokens is not None:
            input_tokens = ev.input_tokens
    return text_chars, input_tokens


def epoch() -> float:
    return time.time()


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
