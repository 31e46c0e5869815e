"""The service: every rule of threadloom, over any store.

Plain async Python with no MCP in sight: the MCP tools and the CLI are thin layers
over one :class:`ThreadService`. It validates input, enforces the status machine,
plans store operations with guards, and retries a plan when a concurrent change
won the race (the store re-checks each guard inside its transaction).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio

from .config import Settings
from .errors import (
    ConflictError,
    InvalidInputError,
    InvalidStateError,
    NotFoundError,
    ThreadContinuedError,
)
from .models import (
    DEFAULT_AGENT_ID,
    TERMINAL,
    Budget,
    Event,
    Limits,
    ResultEvent,
    Status,
    StatusEvent,
    StoredEvent,
    Thread,
    canonical_json,
    check_agent_id,
    check_idempotency_key,
    check_thread_id,
    check_transition,
    event_payload,
    event_text_chars,
    iso,
    new_thread_id,
    parse_event,
    utc_now,
)
from .messages import rebuild_messages
from .results import AppendOutcome, EventPage, ThreadPage
from .search import ChainSearchResults, ThreadSearchResults, chain_search, search_threads
from .store.apply import request_hash
from .store.base import (
    AppendEvents,
    CreateThread,
    IdempotentReplay,
    NewEvent,
    Op,
    PutThread,
    ReindexProgress,
    ReindexStats,
    Store,
)

log = logging.getLogger("threadloom.service")
T = TypeVar("T")

MAX_TITLE = 500
MAX_DIRECTIVE = 200_000
MAX_METADATA_BYTES = 65_536
MAX_PAGE = 1000
MAX_LIST = 200
PLAN_RETRIES = 8
_UNSET: Any = object()


def _check_len(name: str, value: str | None, limit: int) -> None:
    if value is not None and len(value) > limit:
        raise InvalidInputError(
            f"{name} is {len(value)} characters; the limit is {limit}", rule=f"{name}_length"
        )


def _check_json_object(name: str, value: Any, limit: int = MAX_METADATA_BYTES) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInputError(f"{name} must be a JSON object; got {type(value).__name__}", rule=f"{name}_shape")
    try:
        size = len(canonical_json(value).encode())
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} must be plain JSON: {exc}", rule=f"{name}_shape") from None
    if size > limit:
        raise InvalidInputError(f"{name} is {size} bytes of JSON; the limit is {limit}", rule=f"{name}_size")
    return value


def encode_cursor(thread: Thread) -> str:
    raw = json.dumps([thread.created_at, thread.thread_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, thread_id = json.loads(raw)
        check_thread_id(thread_id)
        return str(created_at), thread_id
    except Exception:
        raise InvalidInputError(
            f"cursor {cursor!r:.80} is not a cursor returned by list_threads", rule="cursor_format"
        ) from None


class ThreadService:
    """Owns the rules (validation, status machine, idempotency, sweeping) over one store."""

    def __init__(self, store: Store, settings: Settings | None = None) -> None:
        self.store = store
        self.settings = settings or Settings()

    async def open(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        await self.store.close()

    async def __aenter__(self) -> ThreadService:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ helpers

    async def _retrying(self, plan: Callable[[], Awaitable[T]]) -> T:
        """Run ``plan`` again when a guard reports a concurrent change (bounded)."""
        for attempt in range(PLAN_RETRIES):
            try:
                return await plan()
            except ConflictError as exc:
                if exc.rule not in ("status_guard", "version_guard") or attempt == PLAN_RETRIES - 1:
                    raise
                await anyio.sleep(0.001 * attempt)
        raise AssertionError("unreachable")

    async def get_thread(self, thread_id: str) -> Thread:
        """The thread's manifest and counters. Raises NotFoundError."""
        return await self.store.get_thread(check_thread_id(thread_id))

    async def chain_end(self, thread: Thread) -> Thread:
        """Follow continuation links to the chain's newest thread (a cycle stops the walk)."""
        seen = {thread.thread_id}
        while thread.continuation_thread_id and thread.continuation_thread_id not in seen:
            try:
                nxt = await self.store.get_thread(thread.continuation_thread_id)
            except NotFoundError:
                break
            seen.add(nxt.thread_id)
            thread = nxt
        return thread

    @staticmethod
    def status_ops(thread: Thread, new: Status, reason: str | None, **changes: Any) -> list[Op]:
        """Operations that move ``thread`` to ``new`` and log the ``status`` event."""
        updated = thread.model_copy(update={"status": new, "status_reason": reason, **changes})
        ev = StatusEvent(**{"from": thread.status, "to": new, "reason": reason})
        return [
            PutThread(updated, expect_version=thread.version),
            AppendEvents(thread.thread_id, (NewEvent("status", event_payload(ev)),)),
        ]

    # ------------------------------------------------------------------ threads

    async def create_thread(
        self,
        *,
        agent_id: str | None = None,
        directive: str | None = None,
        title: str | None = None,
        parent_id: str | None = None,
        model: str | None = None,
        context_window: int | None = None,
        trigger_threshold: float | None = None,
        stale_after: float | None = None,
        limits: Limits | dict[str, Any] | None = None,
        capabilities: dict[str, Any] | None = None,
        budget: Budget | dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Thread:
        """Create a thread in status ``created``; a child (``parent_id``) inherits the parent's agent."""
        parent: Thread | None = None
        if parent_id is not None:
            parent = await self.store.get_thread(check_thread_id(parent_id, field="parent_id"))
        if agent_id is None:
            agent_id = parent.agent_id if parent else DEFAULT_AGENT_ID
        check_agent_id(agent_id)
        _check_len("title", title, MAX_TITLE)
        _check_len("directive", directive, MAX_DIRECTIVE)
        _check_len("model", model, 200)
        if context_window is not None and not (1000 <= context_window <= 10_000_000):
            raise InvalidInputError(
                f"context_window must be between 1000 and 10000000 tokens; got {context_window}",
                rule="context_window_range",
            )
        if trigger_threshold is not None and not (0 < trigger_threshold <= 1):
            raise InvalidInputError(
                f"trigger_threshold must be in (0, 1]; got {trigger_threshold}", rule="trigger_threshold_range"
            )
        if stale_after is not None and not (stale_after > 0):
            raise InvalidInputError(f"stale_after must be > 0 seconds; got {stale_after}", rule="stale_after_range")
        if metadata is not None:
            _check_json_object("metadata", metadata)
        if capabilities is not None:
            _check_json_object("capabilities", capabilities, limit=1_048_576)
        try:
            limits_m = Limits.model_validate(limits) if isinstance(limits, dict) else limits
            budget_m = Budget.model_validate(budget) if isinstance(budget, dict) else budget
        except Exception as exc:
            raise InvalidInputError(f"limits/budget: {exc}", rule="limits_shape") from None
        now = iso(utc_now())
        tid = new_thread_id()
        thread = Thread(
            thread_id=tid,
            agent_id=agent_id,
            title=title,
            directive=directive,
            parent_id=parent_id,
            model=model,
            context_window=context_window or self.settings.context_window,
            trigger_threshold=trigger_threshold,
            stale_after=stale_after or self.settings.stale_after,
            limits=limits_m,
            capabilities=capabilities,
            budget=budget_m,
            metadata=metadata or {},
            chain_root_id=tid,
            created_at=now,
            updated_at=now,
            heartbeat_at=now,
        )
        result = await self.store.commit([CreateThread(thread)])
        return result.threads[tid]

    async def list_threads(
        self,
        *,
        agent_id: str | None = None,
        parent_id: str | None = None,
        status: Status | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> ThreadPage:
        """Threads newest first, filtered; ``cursor`` continues a previous page."""
        if agent_id is not None:
            check_agent_id(agent_id)
        if parent_id is not None:
            check_thread_id(parent_id, field="parent_id")
        if status is not None:
            try:
                status = Status(status)
            except ValueError:
                raise InvalidInputError(
                    f"status must be one of {', '.join(s.value for s in Status)}; got {status!r}",
                    rule="status_value",
                ) from None
        if not (1 <= limit <= MAX_LIST):
            raise InvalidInputError(f"limit must be between 1 and {MAX_LIST}; got {limit}", rule="limit_range")
        before = decode_cursor(cursor) if cursor else None
        rows = await self.store.list_threads(
            agent_id=agent_id, parent_id=parent_id, status=status, limit=limit + 1, before=before
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return ThreadPage(threads=rows, next_cursor=encode_cursor(rows[-1]) if more else None)

    async def update_thread(
        self,
        thread_id: str,
        *,
        status: Status | str | None = None,
        reason: str | None = None,
        result: Any = _UNSET,
        outputs: Any = _UNSET,
        cost: float | None = None,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Thread:
        """Change status (DESIGN §3 transitions only), result, outputs, cost, title or metadata.

        ``metadata`` is merged into the existing metadata; a key set to null is removed.
        """
        check_thread_id(thread_id)
        new_status: Status | None = None
        if status is not None:
            try:
                new_status = Status(status)
            except ValueError:
                raise InvalidInputError(
                    f"status must be one of {', '.join(s.value for s in Status)}; got {status!r}",
                    rule="status_value",
                ) from None
            if new_status == Status.CONTINUED:
                raise InvalidInputError(
                    "status 'continued' is set only by a handoff, never directly", rule="status_continued_reserved"
                )
        _check_len("title", title, MAX_TITLE)
        _check_len("reason", reason, 2000)
        if cost is not None and (not isinstance(cost, (int, float)) or cost < 0):
            raise InvalidInputError(f"cost must be a number >= 0; got {cost!r}", rule="cost_range")
        if metadata is not None:
            _check_json_object("metadata", metadata)
        for name, value in (("result", result), ("outputs", outputs)):
            if value is not _UNSET:
                try:
                    size = len(canonical_json(value).encode())
                except (TypeError, ValueError) as exc:
                    raise InvalidInputError(f"{name} must be plain JSON: {exc}", rule=f"{name}_shape") from None
                if size > self.settings.max_event_bytes:
                    raise InvalidInputError(
                        f"{name} is {size} bytes of JSON; the limit (max_event_bytes) is "
                        f"{self.settings.max_event_bytes}",
                        rule=f"{name}_size",
                    )

        async def plan() -> Thread:
            thread = await self.store.get_thread(thread_id)
            changes: dict[str, Any] = {}
            if result is not _UNSET:
                changes["result"] = result
            if outputs is not _UNSET:
                changes["outputs"] = outputs
            if cost is not None:
                changes["cost"] = float(cost)
            if title is not None:
                changes["title"] = title
            if metadata is not None:
                merged = dict(thread.metadata)
                for k, v in metadata.items():
                    if v is None:
                        merged.pop(k, None)
                    else:
                        merged[k] = v
                _check_json_object("metadata", merged)
                changes["metadata"] = merged
            if new_status is not None and new_status != thread.status:
                check_transition(thread_id, thread.status, new_status)
                ops = self.status_ops(thread, new_status, reason, **changes)
            elif new_status is not None and reason is None and not changes:
                return thread  # already in that status: nothing to do
            else:
                if new_status is not None or reason is not None:
                    changes["status_reason"] = reason if reason is not None else thread.status_reason
                ops = [PutThread(thread.model_copy(update=changes), expect_version=thread.version)]
            res = await self.store.commit(ops)
            return res.threads[thread_id]

        return await self._retrying(plan)

    # ------------------------------------------------------------------- events

    def _validate_events(self, events: Sequence[Any]) -> list[tuple[Event, NewEvent]]:
        if not isinstance(events, (list, tuple)) or not events:
            raise InvalidInputError("events must be a non-empty list of event objects", rule="events_empty")
        if len(events) > self.settings.max_batch_events:
            raise InvalidInputError(
                f"a batch holds at most {self.settings.max_batch_events} events (max_batch_events); "
                f"got {len(events)}",
                rule="batch_size",
            )
        out = []
        for i, raw in enumerate(events):
            where = "event" if len(events) == 1 else f"events[{i}]"
            ev = parse_event(raw, where=where)
            payload = event_payload(ev)
            size = len(canonical_json(payload).encode())
            if size > self.settings.max_event_bytes:
                raise InvalidInputError(
                    f"{where} is {size} bytes of JSON; the limit (max_event_bytes) is "
                    f"{self.settings.max_event_bytes}",
                    rule="event_size",
                )
            tokens = ev.input_tokens if isinstance(ev, ResultEvent) else None
            out.append((ev, NewEvent(payload["type"], payload, event_text_chars(ev), tokens)))
        return out

    async def _refuse_if_ended(self, thread: Thread) -> None:
        if thread.status == Status.CONTINUED:
            end = await self.chain_end(thread)
            raise ThreadContinuedError(
                f"thread {thread.thread_id} was continued and takes no more events; "
                f"append to thread {end.thread_id} (the current end of its chain, status {end.status.value})",
                current_thread_id=end.thread_id,
            )
        if thread.status in TERMINAL:
            raise InvalidStateError(
                f"thread {thread.thread_id} is {thread.status.value} and takes no more events; "
                "use resume_thread to continue the work in a new thread",
                rule="append_to_ended",
            )
        if thread.status == Status.PAUSED:
            raise InvalidStateError(
                f"thread {thread.thread_id} is paused; set its status to running (update_thread) before appending",
                rule="append_to_paused",
            )

    async def append(
        self, thread_id: str, events: Sequence[Any], *, idempotency_key: str | None = None, single: bool = False
    ) -> AppendOutcome:
        """Append events in one transaction; the first append moves a created thread to running.

        With ``idempotency_key``, a retry of the same append returns the original seqs.
        """
        check_thread_id(thread_id)
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
        validated = self._validate_events(events)
        new_events = tuple(ne for _, ne in validated)
        rhash = request_hash(thread_id, [ne.payload for ne in new_events])

        async def replay(seqs: list[int]) -> AppendOutcome:
            thread = await self.store.get_thread(thread_id)
            return self._outcome(thread, seqs, single, replayed=True)

        if idempotency_key is not None:
            rec = await self.store.find_idempotency(thread_id, idempotency_key)
            if rec is not None:
                if rec.request_hash != rhash:
                    raise ConflictError(
                        f"idempotency_key {idempotency_key!r} was already used on thread {thread_id} "
                        f"for different events (seqs {rec.seqs}); use a new key for new content",
                        rule="idempotency_key_reused",
                    )
                return await replay(rec.seqs)

        async def plan() -> AppendOutcome:
            thread = await self.store.get_thread(thread_id)
            await self._refuse_if_ended(thread)
            ops: list[Op] = []
            if thread.status == Status.CREATED:
                ops += self.status_ops(thread, Status.RUNNING, "first append")
            append_op = AppendEvents(
                thread_id,
                new_events,
                idempotency_key=idempotency_key,
                request_hash=rhash,
                allowed_statuses=frozenset({Status.RUNNING}),
            )
            ops.append(append_op)
            try:
                res = await self.store.commit(ops)
            except IdempotentReplay as rep:
                return await replay(rep.record.seqs)
            return self._outcome(res.threads[thread_id], res.appends[-1].seqs, single)

        return await self._retrying(plan)

    @staticmethod
    def _outcome(thread: Thread, seqs: list[int], single: bool, *, replayed: bool = False) -> AppendOutcome:
        return AppendOutcome(
            thread_id=thread.thread_id,
            seq=seqs[0] if single else None,
            seqs=None if single else seqs,
            replayed=replayed,
            status=thread.status,
            context=thread.context(),
        )

    async def read_events(self, thread_id: str, *, after_seq: int = 0, limit: int = 100) -> EventPage:
        """Events with seq > after_seq, oldest first, at most ``limit`` (1-1000)."""
        check_thread_id(thread_id)
        if after_seq < 0:
            raise InvalidInputError(f"after_seq must be >= 0; got {after_seq}", rule="after_seq_range")
        if not (1 <= limit <= MAX_PAGE):
            raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE}; got {limit}", rule="limit_range")
        events = await self.store.read_events(thread_id, after_seq=after_seq, limit=limit + 1)
        more = len(events) > limit
        events = events[:limit]
        thread = await self.store.get_thread(thread_id)
        return EventPage(
            thread_id=thread_id,
            events=[e.data() for e in events],
            next_after_seq=events[-1].seq if events else after_seq,
            has_more=more,
            event_count=thread.event_count,
        )

    async def all_events(self, thread_id: str) -> list[StoredEvent]:
        """Every event of the thread in seq order."""
        return await self.store.read_events(check_thread_id(thread_id))

    async def transcript(self, thread_id: str) -> str:
        """The thread's JSONL transcript, rendered from the database (same bytes as the mirror)."""
        return "".join(e.line + "\n" for e in await self.all_events(thread_id))

    async def messages(self, thread_id: str) -> list[dict[str, Any]]:
        """The thread's conversation rebuilt from its events (neutral content-block form)."""
        return rebuild_messages(await self.all_events(thread_id))

    # ------------------------------------------------------------------- search

    async def chain_search(
        self,
        thread_id: str,
        query: str,
        *,
        search_type: str = "text",
        limit: int = 20,
        context: int = 3,
        include_tools: bool = False,
    ) -> ChainSearchResults:
        """Search every thread of ``thread_id``'s continuation chain.

        ``text``: the full-text index, best BM25 first; ``regex``: RE2 over the chain's
        events in order. Each hit has a snippet and ``context`` events either side.
        """
        return await chain_search(
            self.store,
            thread_id,
            query,
            search_type=search_type,
            limit=limit,
            context=context,
            include_tools=include_tools,
        )

    async def search_threads(
        self, query: str, *, agent_id: str | None = None, limit: int = 5, context: int = 3
    ) -> ThreadSearchResults:
        """The threads (of ``agent_id`` when given) that best match ``query``, one hit each."""
        return await search_threads(self.store, query, agent_id=agent_id, limit=limit, context=context)

    async def reindex(self, *, progress: ReindexProgress | None = None) -> ReindexStats:
        """Bring the search index up to date with the events (idempotent, incremental)."""
        return await self.store.reindex(progress=progress)

    # ------------------------------------------------------------------ sweeper

    async def sweep_stale(self, now: float | None = None) -> list[str]:
        """Move running threads whose heartbeat is older than ``stale_after`` to error/timeout."""
        now = time.time() if now is None else now
        moved = []
        for thread in await self.store.list_stale(now):
            ops = self.status_ops(thread, Status.ERROR, "timeout")
            put = ops[0]
            assert isinstance(put, PutThread)
            ops[0] = PutThread(put.thread, put.expect_version, expect_heartbeat_before=now - thread.stale_after)
            try:
                await self.store.commit(ops)
            except ConflictError:
                continue  # it moved, or another process swept it first
            moved.append(thread.thread_id)
            log.info("thread %s had no heartbeat for %.0fs: moved to error (timeout)", thread.thread_id, thread.stale_after)
        return moved

    async def run_sweeper(self, interval: float | None = None) -> None:
        """Sweep forever (until cancelled), every ``interval`` seconds."""
        interval = interval or self.settings.sweep_interval
        while True:
            try:
                await self.sweep_stale()
            except Exception:
                log.exception("sweeper pass failed")
            await anyio.sleep(interval)

