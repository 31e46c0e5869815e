"""In-memory store for tests and ephemeral servers: same contract, nothing on disk."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import anyio.lowlevel

from ..errors import ConflictError
from ..integrity import Signer, TranscriptHashes
from ..models import Lease, Status, StoredEvent, Thread, Usage, iso, parse_iso
from ..provenance import ImportRecord
from .apply import (
    accounts_doc,
    accounts_from_doc,
    add_usage,
    checkpoint_event,
    counters_after,
    lease_of,
    not_found,
    now_pair,
    rendered_events,
    wants_checkpoint,
)
from .base import (
    AnchoredSnapshot,
    AppendEvents,
    AppendResult,
    CommitResult,
    CreateThread,
    IdempotencyRecord,
    ImportThread,
    IntegritySnapshot,
    NewEvent,
    Op,
    PutLease,
    PutThread,
    PutUsage,
    SearchHit,
    Store,
    VectorRow,
)
from .core import Loaded, plan_append, plan_import, plan_put_lease, plan_put_usage, put_thread_check


def _cols(t: Thread) -> tuple[str | None, float | None, float | None]:
    lease = t.lease
    return (lease.owner, lease.expires_epoch, lease.ttl) if lease else (None, None, None)


def _renewed(t: Thread, expires: float | None) -> Lease | None:
    if expires is None or t.lease is None:
        return t.lease
    return t.lease.model_copy(update={"expires_at": iso(datetime.fromtimestamp(expires, UTC))})


def _live(t: Thread) -> Thread:
    """``t`` as a read shows it: an expired lease is not shown."""
    if t.lease is not None and lease_of(_cols(t)) is None:
        return t.model_copy(update={"lease": None})
    return t


class MemoryStore(Store):
    """Dicts guarded by the event loop: each commit runs without an await, so it is atomic."""

    name = "memory"

    def __init__(self, *, signer: Signer | None = None, checkpoints: bool = True) -> None:
        """``signer`` defaults to a key that lives as long as the process (nothing is on disk)."""
        super().__init__()
        self.signer = signer or Signer.ephemeral()
        self.checkpoints = checkpoints
        self._threads: dict[str, Thread] = {}
        self._events: dict[str, list[StoredEvent]] = {}
        self._heads: dict[str, str] = {}
        self._idem: dict[tuple[str, str], IdempotencyRecord] = {}
        self._hashes = TranscriptHashes()
        self._imports: dict[str, ImportRecord] = {}
        self._vectors: dict[str, dict[tuple[str, int], bytes]] = {}

    async def open(self) -> None:
        self.signer.load(allow_create=not self._threads)

    async def close(self) -> None:
        return None

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        ts, now = now_pair()
        threads: dict[str, Thread] = {}
        new_events: dict[str, list[StoredEvent]] = {}
        new_idem: dict[tuple[str, str], IdempotencyRecord] = {}
        heads: dict[str, str] = {}
        records: dict[str, ImportRecord] = {}
        view = self._hashes.view()
        checkpoint: dict[str, bool] = {}
        last_append: dict[str, AppendResult] = {}
        result = CommitResult()

        def current(tid: str) -> Thread:
            if tid in threads:
                return threads[tid]
            if tid not in self._threads:
                raise not_found(tid)
            return self._threads[tid]

        def append(t: Thread, events: tuple[NewEvent, ...], usage: Any) -> list[StoredEvent]:
            tid = t.thread_id
            lines, stored, heads[tid] = rendered_events(
                tid, events, t.event_count, heads.get(tid) or self._heads.get(tid), ts
            )
            view.extend(tid, t.event_count, lines)
            text_chars, input_tokens = counters_after(events, t.text_chars, t.input_tokens)
            threads[tid] = t.model_copy(
                update={
                    "event_count": t.event_count + len(events),
                    "text_chars": text_chars,
                    "input_tokens": input_tokens,
                    "updated_at": ts,
                    "heartbeat_at": ts,
                    "usage": add_usage(t.usage, usage) if usage is not None else t.usage,
                }
            )
            new_events.setdefault(tid, []).extend(stored)
            return stored

        for op in ops:
            if isinstance(op, CreateThread):
                tid = op.thread.thread_id
                if tid in self._threads or tid in threads:
                    raise ConflictError(f"thread {tid} exists already", rule="thread_exists")
                threads[tid] = op.thread.model_copy(
                    update={"event_count": 0, "text_chars": 0, "input_tokens": None, "version": 1}
                )
                view.start(tid)
            elif isinstance(op, AppendEvents):
                t = current(op.thread_id)
                tid = op.thread_id
                key = (tid, op.idempotency_key) if op.idempotency_key is not None else None
                loaded = Loaded(
                    tid,
                    t.status,
                    t.event_count,
                    t.text_chars,
                    t.input_tokens,
                    t.version,
                    accounts_doc(t.usage, t.budget) if op.usage is not None else None,
                    _cols(t),
                    heads.get(tid) or self._heads.get(tid),
                )
                idem = (new_idem.get(key) or self._idem.get(key)) if key is not None else None
                w = plan_append(op, loaded, idem, ts, now)
                view.extend(tid, t.event_count, w.lines)
                update: dict[str, Any] = {
                    "event_count": w.event_count,
                    "text_chars": w.text_chars,
                    "input_tokens": w.input_tokens,
                    "updated_at": ts,
                    "heartbeat_at": ts,
                }
                if w.renew is not None:
                    update["lease"] = _renewed(t, w.renew)
                if w.started:
                    update.update(status=w.status, status_reason=op.start_reason, version=w.version)
                if op.usage is not None:
                    update["usage"] = Usage.model_validate(accounts_from_doc(w.accounts)["usage"])
                threads[tid] = t.model_copy(update=update)
                heads[tid] = w.head
                new_events.setdefault(tid, []).extend(w.stored)
                if key is not None:
                    new_idem[key] = IdempotencyRecord(tid, key[1], op.request_hash or "", w.seqs)
                last_append[tid] = AppendResult(tid, w.seqs, w.stored)
                result.appends.append(last_append[tid])
                checkpoint[tid] = checkpoint.get(tid, False) or op.checkpoint
            elif isinstance(op, PutUsage):
                t = current(op.thread_id)
                usage = plan_put_usage(op, accounts_doc(t.usage, None))
                threads[t.thread_id] = t.model_copy(update={"usage": usage, "budget": op.budget})
            elif isinstance(op, PutLease):
                t = current(op.thread_id)
                cols = plan_put_lease(op, _cols(t), now)
                if cols is not None:
                    owner, expires, ttl = cols
                    lease = None
                    if owner is not None and expires is not None and ttl is not None:
                        lease = Lease(
                            owner=owner, expires_at=iso(datetime.fromtimestamp(expires, UTC)), ttl=ttl
                        )
                    t = t.model_copy(update={"lease": lease, "version": t.version + 1, "updated_at": ts})
                threads[t.thread_id] = t
            elif isinstance(op, PutThread):
                t = current(op.thread.thread_id)
                renew = put_thread_check(op, t.version, parse_iso(t.heartbeat_at).timestamp(), _cols(t), now)
                t = t.model_copy(update={"lease": _renewed(t, renew)})
                threads[t.thread_id] = op.thread.model_copy(
                    update={
                        "event_count": t.event_count,
                        "text_chars": t.text_chars,
                        "input_tokens": t.input_tokens,
                        "version": t.version + 1,
                        "updated_at": ts,
                        "heartbeat_at": ts,
                        "created_at": t.created_at,
                        "usage": t.usage,
                        "budget": t.budget,
                        "lease": t.lease,
                    }
                )
            elif isinstance(op, ImportThread):
                tid = op.thread.thread_id
                w = plan_import(op, tid in self._threads or tid in threads, None)
                threads[tid] = op.thread.model_copy(
                    update={"version": max(1, op.thread.version), "lease": None}
                )
                heads[tid] = w.head
                self._hashes.forget(tid)  # a state left from a deleted thread of that id is stale
                new_events[tid] = w.events
                if op.record is not None:
                    records[tid] = op.record
        if self.checkpoints:
            for tid, asked in checkpoint.items():
                t = current(tid)
                if not wants_checkpoint(asked, t.status):
                    continue

                def fetch(after: int, upto: int, tid: str = tid) -> list[str]:
                    lines = [e.line for e in self._events.get(tid, []) + new_events.get(tid, [])]
                    return lines[after:upto]

                digest = view.digest(tid, t.event_count, fetch)
                last_append[tid].events.extend(append(t, (checkpoint_event(self.signer, digest),), None))
        # every check passed: publish at once
        self._threads.update(threads)
        for tid, evs in new_events.items():
            self._events.setdefault(tid, []).extend(evs)
        for tid in threads:
            self._events.setdefault(tid, [])
        self._heads.update(heads)
        self._imports.update(records)
        self._idem.update(new_idem)
        view.publish()
        result.threads = dict(threads)
        self._notify(frozenset(threads))
        return result

    async def get_thread(self, thread_id: str) -> Thread:
        thread = self._threads.get(thread_id)
        await anyio.lowlevel.checkpoint()  # a read takes time on a real backend: let plans race here too
        if thread is None:
            raise not_found(thread_id)
        return _live(thread)

    async def get_threads(self, thread_ids: Sequence[str]) -> dict[str, Thread]:
        return {t: _live(self._threads[t]) for t in thread_ids if t in self._threads}

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

    async def changed_since(self, since: str, *, limit: int = 500) -> list[Thread]:
        rows = sorted(
            (t for t in self._threads.values() if t.updated_at >= since), key=lambda t: t.updated_at
        )
        return rows[:limit]

    async def child_counts(self, parent_id: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self._threads.values():
            if t.parent_id == parent_id:
                counts[t.status.value] = counts.get(t.status.value, 0) + 1
        return counts

    async def read_integrity(self, thread_id: str) -> IntegritySnapshot:
        thread = self._threads.get(thread_id)  # the row and its events at one instant (no await between)
        if thread is None:
            raise not_found(thread_id)
        return IntegritySnapshot(
            thread,
            list(self._events.get(thread_id, [])),
            self._heads.get(thread_id),
            None,
            self._imports.get(thread_id),
        )

    async def import_records(self, thread_ids: Sequence[str]) -> dict[str, ImportRecord]:
        return {t: self._imports[t] for t in thread_ids if t in self._imports}

    async def read_anchored(self, thread_id: str) -> AnchoredSnapshot:
        thread = self._threads.get(thread_id)  # one instant, as read_integrity
        if thread is None:
            raise not_found(thread_id)
        events = list(self._events.get(thread_id, []))
        anchor = self._hashes.anchor(thread_id)
        if anchor is not None and anchor[0] > len(events):
            anchor = None
        m = anchor[0] if anchor is not None else 0
        cp = next((e.seq for e in reversed(events[m:]) if e.type == "checkpoint"), 0)
        base = max(m, cp - 1)
        prefix = "\n".join(e.line for e in events[:base]).encode() if base else None
        imported = thread_id in self._imports
        return AnchoredSnapshot(
            thread, self._heads.get(thread_id), anchor, base, prefix, events[base:], None, imported
        )

    async def list_chain(self, chain_root_id: str) -> list[Thread]:
        rows = [t for t in self._threads.values() if t.chain_root_id == chain_root_id]
        return sorted(rows, key=lambda t: (t.created_at, t.thread_id))

    async def list_forks(self, thread_ids: Sequence[str]) -> list[Thread]:
        wanted = set(thread_ids)
        rows = [t for t in self._threads.values() if t.forked_from and t.forked_from.thread_id in wanted]
        return sorted(rows, key=lambda t: (t.created_at, t.thread_id))

    async def delete_threads(self, thread_ids: Sequence[str]) -> int:
        gone = [t for t in dict.fromkeys(thread_ids) if t in self._threads]
        for tid in gone:
            del self._threads[tid]
            self._events.pop(tid, None)
            self._heads.pop(tid, None)
            self._imports.pop(tid, None)
            self._hashes.forget(tid)
        for rows in self._vectors.values():
            for key in [k for k in rows if k[0] in gone]:
                del rows[key]
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

    # ---------------------------------------------------------------- vectors

    async def missing_vectors(
        self,
        model: str,
        types: Sequence[str],
        *,
        thread_id: str | None = None,
        after: tuple[str, int] | None = None,
        limit: int = 256,
    ) -> list[StoredEvent]:
        have = self._vectors.get(model, {})
        out: list[StoredEvent] = []
        for tid in sorted(self._events) if thread_id is None else [thread_id]:
            for ev in self._events.get(tid, []):
                if after is not None and (tid, ev.seq) <= after:
                    continue
                if ev.type in types and (tid, ev.seq) not in have:
                    out.append(ev)
                    if len(out) >= limit:
                        return out
        return out

    async def count_missing_vectors(self, model: str, types: Sequence[str]) -> int:
        have = self._vectors.get(model, {})
        return sum(
            1
            for tid, events in self._events.items()
            for ev in events
            if ev.type in types and (tid, ev.seq) not in have
        )

    async def put_vectors(self, model: str, rows: Sequence[VectorRow]) -> int:
        have = self._vectors.setdefault(model, {})
        added = 0
        for r in rows:
            events = self._events.get(r.thread_id, [])
            if (r.thread_id, r.seq) in have or not (1 <= r.seq <= len(events)):
                continue
            have[(r.thread_id, r.seq)] = r.vector
            added += 1
        return added

    async def clean_vectors(self, model: str, types: Sequence[str]) -> int:
        removed = 0
        for name in list(self._vectors):
            rows = self._vectors[name]
            for tid, seq in list(rows):
                events = self._events.get(tid, [])
                gone = not (1 <= seq <= len(events)) or events[seq - 1].type not in types
                if name != model or gone:
                    del rows[(tid, seq)]
                    removed += 1
            if not rows:
                del self._vectors[name]
        return removed

    async def count_vectors(self, model: str) -> int:
        return len(self._vectors.get(model, {}))

    async def search_vectors(
        self,
        model: str,
        query: bytes,
        *,
        thread_ids: Sequence[str] | None = None,
        agent_id: str | None = None,
        limit: int = 20,
        best_per_thread: bool = False,
    ) -> list[SearchHit]:
        from .vectors import Matrix, scope_filter

        agents = None
        if agent_id is not None:
            agents = {t for t, th in self._threads.items() if th.agent_id == agent_id}
        matrix = Matrix()
        matrix.extend(
            (i, tid, seq, vec)
            for i, ((tid, seq), vec) in enumerate(sorted(self._vectors.get(model, {}).items()), start=1)
            if vec
        )
        return matrix.search(
            query, allowed=scope_filter(thread_ids, agents), limit=limit, best_per_thread=best_per_thread
        )
