"""In-memory store for tests and ephemeral servers: same contract, nothing on disk."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConflictError
from ..models import Status, StoredEvent, Thread, parse_iso, render_line
from .apply import (
    check_idempotency,
    check_import,
    check_status_guard,
    check_version_guard,
    counters_after,
    not_found,
    now_pair,
)
from .base import (
    AppendEvents,
    AppendResult,
    CommitResult,
    CreateThread,
    IdempotencyRecord,
    ImportThread,
    Op,
    PutThread,
    Store,
)


class MemoryStore(Store):
    """Dicts guarded by the event loop: each commit runs without an await, so it is atomic."""

    name = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._threads: dict[str, Thread] = {}
        self._events: dict[str, list[StoredEvent]] = {}
        self._idem: dict[tuple[str, str], IdempotencyRecord] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        ts, now = now_pair()
        threads: dict[str, Thread] = {}
        new_events: dict[str, list[StoredEvent]] = {}
        new_idem: dict[tuple[str, str], IdempotencyRecord] = {}
        result = CommitResult()

        def current(tid: str) -> Thread:
            if tid in threads:
                return threads[tid]
            if tid not in self._threads:
                raise not_found(tid)
            return self._threads[tid]

        for op in ops:
            if isinstance(op, CreateThread):
                tid = op.thread.thread_id
                if tid in self._threads or tid in threads:
                    raise ConflictError(f"thread {tid} exists already", rule="thread_exists")
                threads[tid] = op.thread.model_copy(
                    update={"event_count": 0, "text_chars": 0, "input_tokens": None, "version": 1}
                )
            elif isinstance(op, AppendEvents):
                t = current(op.thread_id)
                check_status_guard(op, t.status)
                if op.idempotency_key is not None:
                    key = (op.thread_id, op.idempotency_key)
                    check_idempotency(op, new_idem.get(key) or self._idem.get(key))
                stored = []
                for i, ev in enumerate(op.events):
                    seq = t.event_count + 1 + i
                    stored.append(StoredEvent(op.thread_id, seq, ts, ev.type, render_line(seq, ts, ev.payload)))
                text_chars, input_tokens = counters_after(op.events, t.text_chars, t.input_tokens)
                threads[op.thread_id] = t.model_copy(
                    update={
                        "event_count": t.event_count + len(op.events),
                        "text_chars": text_chars,
                        "input_tokens": input_tokens,
                        "updated_at": ts,
                        "heartbeat_at": ts,
                    }
                )
                new_events.setdefault(op.thread_id, []).extend(stored)
                seqs = [e.seq for e in stored]
                if op.idempotency_key is not None:
                    new_idem[(op.thread_id, op.idempotency_key)] = IdempotencyRecord(
                        op.thread_id, op.idempotency_key, op.request_hash or "", seqs
                    )
                result.appends.append(AppendResult(op.thread_id, seqs, stored))
            elif isinstance(op, PutThread):
                t = current(op.thread.thread_id)
                check_version_guard(op, t.version, parse_iso(t.heartbeat_at).timestamp())
                threads[t.thread_id] = op.thread.model_copy(
                    update={
                        "event_count": t.event_count,
                        "text_chars": t.text_chars,
                        "input_tokens": t.input_tokens,
                        "version": t.version + 1,
                        "updated_at": ts,
                        "heartbeat_at": ts,
                        "created_at": t.created_at,
                    }
                )
            elif isinstance(op, ImportThread):
                tid = op.thread.thread_id
                check_import(op)
                if tid in self._threads or tid in threads:
                    raise ConflictError(f"thread {tid} exists already", rule="thread_exists")
                threads[tid] = op.thread.model_copy(update={"version": max(1, op.thread.version)})
                new_events[tid] = list(op.events)
        # every check passed: publish at once
        self._threads.update(threads)
        for tid, evs in new_events.items():
            self._events.setdefault(tid, []).extend(evs)
        for tid in threads:
            self._events.setdefault(tid, [])
        self._idem.update(new_idem)
        result.threads = dict(threads)
        self._notify(frozenset(threads))
        return result

    async def get_thread(self, thread_id: str) -> Thread:
        try:
            return self._threads[thread_id]
        except KeyError:
            raise not_found(thread_id) from None

    async def get_threads(self, thread_ids: Sequence[str]) -> dict[str, Thread]:
        return {t: self._threads[t] for t in thread_ids if t in self._threads}

    async def list_threads(
        self,
        *,
        agent_id: str | None = None,
        parent_id: str | None = None,
        status: Status | None = None,
        limit: int = 50,
        before: tuple[str, str] | None = None,
    ) -> list[Thread]:
        rows = [
            t
            for t in self._threads.values()
            if (agent_id is None or t.agent_id == agent_id)
            and (parent_id is None or t.parent_id == parent_id)
            and (status is None or t.status == status)
            and (before is None or (t.created_at, t.thread_id) < before)
        ]
        rows.sort(key=lambda t: (t.created_at, t.thread_id), reverse=True)
        return rows[:limit]

    async def read_events(
        self, thread_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        if thread_id not in self._threads:
            raise not_found(thread_id)
        events = self._events.get(thread_id, [])[after_seq:]
        return events if limit is None else events[:limit]

    async def find_idempotency(self, thread_id: str, key: str) -> IdempotencyRecord | None:
        return self._idem.get((thread_id, key))

    async def list_chain(self, chain_root_id: str) -> list[Thread]:
        rows = [t for t in self._threads.values() if t.chain_root_id == chain_root_id]
        return sorted(rows, key=lambda t: (t.created_at, t.thread_id))

    async def delete_threads(self, thread_ids: Sequence[str]) -> int:
        gone = [t for t in dict.fromkeys(thread_ids) if t in self._threads]
        for tid in gone:
            del self._threads[tid]
            self._events.pop(tid, None)
        for key in [k for k in self._idem if k[0] in gone]:
            del self._idem[key]
        if gone:
            self._notify(frozenset(gone))
        return len(gone)

    async def list_stale(self, now: float, *, limit: int = 100) -> list[Thread]:
        stale = [
            t
            for t in self._threads.values()
            if t.status == Status.RUNNING and parse_iso(t.heartbeat_at).timestamp() + t.stale_after < now
        ]
        return stale[:limit]
