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
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace as dc_replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio

from . import budgets, chain, fork, titles, visibility
from . import capabilities as caps_md
from .config import Settings
from .errors import (
    ConflictError,
    IntegrityError,
    InvalidInputError,
    InvalidStateError,
    LimitExceededError,
    NotFoundError,
    ThreadContinuedError,
    ThreadloomError,
)
from .lineage import chain_end, order_chain
from .messages import check_format, format_messages, rebuild_messages, request_body
from .mirror import manifest_bytes
from .models import (
    ENDED,
    TERMINAL,
    Budget,
    Event,
    Exceeded,
    Limits,
    MessageEvent,
    ResultEvent,
    Status,
    StatusEvent,
    StoredEvent,
    Thread,
    UsageDelta,
    canonical_json,
    check_agent_id,
    check_idempotency_key,
    check_owner,
    check_thread_id,
    check_transition,
    event_payload,
    event_text_chars,
    iso,
    new_thread_id,
    parse_event,
    utc_now,
)
from .numbers import (
    MAX_SEQ,
    MAX_STALE_AFTER,
    check_amount,
    check_count,
    check_finite_json,
    check_usage_sums,
    quote,
)
from .provenance import SignedSpan, build_record, signer_key
from .results import (
    AppendOutcome,
    ChainLink,
    ChainView,
    ChildChain,
    ChildrenView,
    DeleteOutcome,
    EventPage,
    ForkLink,
    HandoffInfo,
    LeaseOutcome,
    ResumeOutcome,
    ThreadPage,
    WaitResult,
)
from .search import ChainSearchResults, ThreadSearchResults, chain_search
from .semantic import EmbedProgress, EmbedStats, SemanticIndex
from .store.apply import request_hash
from .store.base import (
    AppendEvents,
    CreateThread,
    IdempotentReplay,
    ImportThread,
    LeaseCheck,
    NewEvent,
    Op,
    PutLease,
    PutThread,
    ReindexProgress,
    ReindexStats,
    Store,
)
from .trust import PublicKey, parse_public_key, trusted_keys
from .verify import VerificationFailed, VerifyReport, lagging, verify_snapshot
from .verify_anchored import verify_anchored
from .waiting import MAX_READ_WAIT, wait_for_events, wait_threads
from .wake import Subscription, WakeHub

log = logging.getLogger("threadloom.service")
T = TypeVar("T")

MAX_TITLE = 500
MAX_DIRECTIVE = 200_000
MAX_METADATA_BYTES = 65_536
MAX_PAGE = 1000
MAX_LIST = 200
PLAN_RETRIES = 8
MAX_SUMMARY = 50_000
MAX_REASON = 200
RACE_RULES = frozenset({"status_guard", "version_guard", "count_guard"})
"""Guard failures that mean "someone else committed first": re-plan and try again."""
ACCOUNT_PLAN_RETRIES = 64
"""Plans that touch a parent's accounts race with its other children: more, jittered tries."""
VERIFY_LAG_RETRIES = 3
RESOURCE_PAGE = 1000
"""Events read per page when a resource read is capped (max_resource_bytes)."""
ANCHORED_INLINE_LINES = 2000
"""A quick verification with more lines after its anchor than this runs on a worker thread."""
MIN_LEASE_TTL = 1.0
MAX_LEASE_TTL = 3600.0
"""Seconds a run lease lasts without a write by its holder (each write renews it)."""
_UNSET: Any = object()


def _lease_check(owner: str | None) -> LeaseCheck:
    """The lease check of a client's write naming ``owner`` (checked) or no one."""
    return LeaseCheck(None if owner is None else check_owner(owner))


def _check_len(name: str, value: str | None, limit: int) -> None:
    if value is not None and len(value) > limit:
        raise InvalidInputError(
            f"{name} is {len(value)} characters; the limit is {limit}", rule=f"{name}_length"
        )


def _check_json_object(name: str, value: Any, limit: int = MAX_METADATA_BYTES) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInputError(
            f"{name} must be a JSON object; got {type(value).__name__}", rule=f"{name}_shape"
        )
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
        self.hub = WakeHub(store)
        self.semantic = SemanticIndex(store, self.settings)

    async def open(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        self.hub.close()
        await self.store.close()

    async def __aenter__(self) -> ThreadService:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ helpers

    async def _retrying(self, plan: Callable[[], Awaitable[T]], attempts: int = PLAN_RETRIES) -> T:
        """Run ``plan`` again when a guard reports a concurrent change (bounded)."""
        for attempt in range(attempts):
            try:
                return await plan()
            except ConflictError as exc:
                if exc.rule not in RACE_RULES or attempt == attempts - 1:
                    raise
                if attempts > PLAN_RETRIES:  # many racers: jitter so they stop colliding
                    await anyio.sleep(random.uniform(0, 0.001 * min(attempt + 1, 20)))
                else:
                    await anyio.sleep(0.001 * attempt)
        raise AssertionError("unreachable")

    async def get_thread(self, thread_id: str) -> Thread:
        """The thread's manifest and counters, with its children counted by status."""
        thread = await self.store.get_thread(check_thread_id(thread_id))
        if not visibility.allows(thread):
            raise visibility.not_found(thread_id)
        children = await visibility.child_counts(self.store, thread_id)
        return thread.model_copy(update={"children": children})

    def watch(
        self, thread_ids: Sequence[str] | set[str] = (), keys: Sequence[str] | set[str] = ()
    ) -> Subscription:
        """Watch threads (and relation keys, see wake.thread_keys) for commits by any process;
        the caller closes the subscription."""
        return self.hub.open(thread_ids, keys)

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
    def status_ops(
        thread: Thread, new: Status, reason: str | None, *, lease: LeaseCheck | None = None, **changes: Any
    ) -> list[Op]:
        """Operations that move ``thread`` to ``new`` and log the ``status`` event
        (``lease``: the client write's lease check; None for the server's own moves)."""
        updated = thread.model_copy(update={"status": new, "status_reason": reason, **changes})
        ev = StatusEvent(**{"from": thread.status, "to": new, "reason": reason})
        return [
            PutThread(updated, expect_version=thread.version, lease=lease),
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
            if not visibility.allows(parent):
                raise visibility.not_found(parent_id)
        agent_id = visibility.agent_for_new_thread(agent_id, parent)
        _check_len("title", title, MAX_TITLE)
        _check_len("directive", directive, MAX_DIRECTIVE)
        _check_len("model", model, 200)
        if context_window is not None:
            check_count("context_window", context_window, lo=1000, hi=10_000_000)
        if trigger_threshold is not None:
            check_amount("trigger_threshold", trigger_threshold, hi=1.0, lo_open=True)
        if stale_after is not None:
            check_amount("stale_after", stale_after, hi=MAX_STALE_AFTER, lo_open=True)
        if metadata is not None:
            _check_json_object("metadata", metadata)
        if capabilities is not None:
            capabilities = caps_md.check_capabilities(capabilities)
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
            metadata=metadata or {},
            chain_root_id=tid,
            created_at=now,
            updated_at=now,
            heartbeat_at=now,
        )
        if budget_m is None:
            result = await self.store.commit([CreateThread(thread)])
            return result.threads[tid]

        async def plan() -> Thread:
            # reserve from the nearest budgeted ancestor, guarded by its accounts' version
            path = await budgets.ancestors(self.store, parent_id)
            state, accounts, holder = budgets.plan_reservation(path, budget_m.max_spend)
            ops: list[Op] = [CreateThread(thread.model_copy(update={"budget": state}))]
            ops += budgets.put_ops(accounts, [holder] if holder else [])
            result = await self.store.commit(ops)
            return result.threads[tid]

        return await self._retrying(plan, ACCOUNT_PLAN_RETRIES)

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
                    f"status must be one of {', '.join(s.value for s in Status)}; got {quote(status)}",
                    rule="status_value",
                ) from None
        check_count("limit", limit, lo=1, hi=MAX_LIST)
        before = decode_cursor(cursor) if cursor else None
        rows = await visibility.list_threads(
            self.store, agent_id=agent_id, parent_id=parent_id, status=status, limit=limit + 1, before=before
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
        cascade: bool = False,
        owner: str | None = None,
    ) -> Thread:
        """Change status (DESIGN §3 transitions only), result, outputs, cost, title or metadata.

        While the thread is leased (acquire_thread) only its holder, named by ``owner``, may
        change it (ConflictError ``thread_leased`` otherwise); the holder's change renews it.

        ``metadata`` is merged into the existing metadata; a key set to null is removed.
        Ending a thread leaves its open children alone unless ``cascade``: then every open
        descendant (created, running, paused) is cancelled too.
        """
        await visibility.visible(self.store, thread_id)
        lease = _lease_check(owner)
        new_status: Status | None = None
        if status is not None:
            try:
                new_status = Status(status)
            except ValueError:
                raise InvalidInputError(
                    f"status must be one of {', '.join(s.value for s in Status)}; got {quote(status)}",
                    rule="status_value",
                ) from None
            if new_status == Status.CONTINUED:
                raise InvalidInputError(
                    "status 'continued' is set only by a handoff, never directly",
                    rule="status_continued_reserved",
                )
        _check_len("title", title, MAX_TITLE)
        _check_len("reason", reason, 2000)
        if cost is not None:
            check_amount("cost", cost)
        if metadata is not None:
            _check_json_object("metadata", metadata)
        for name, value in (("result", result), ("outputs", outputs)):
            if value is not _UNSET:
                try:
                    size = len(canonical_json(value).encode())
                except (TypeError, ValueError) as exc:
                    raise InvalidInputError(
                        f"{name} must be plain JSON: {exc}", rule=f"{name}_shape"
                    ) from None
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
                ops = self.status_ops(thread, new_status, reason, lease=lease, **changes)
                if new_status in ENDED:
                    ops += await budgets.end_ops(self.store, thread)
            elif new_status is not None and reason is None and not changes:
                return thread  # already in that status: nothing to do
            else:
                if new_status is not None or reason is not None:
                    changes["status_reason"] = reason if reason is not None else thread.status_reason
                ops = [
                    PutThread(thread.model_copy(update=changes), expect_version=thread.version, lease=lease)
                ]
            res = await self.store.commit(ops)
            return res.threads[thread_id]

        updated = await self._retrying(plan, ACCOUNT_PLAN_RETRIES if new_status in ENDED else PLAN_RETRIES)
        if cascade and updated.status in TERMINAL:
            await self.cancel_descendants(
                thread_id, reason=f"parent {thread_id} ended ({updated.status.value})"
            )
        return updated

    async def cancel_descendants(self, thread_id: str, *, reason: str) -> list[str]:
        """Cancel every open descendant of ``thread_id`` (children first found, depth first)."""
        cancelled: list[str] = []
        stack, seen = [thread_id], {thread_id}
        while stack:
            parent = stack.pop()
            cursor = None
            while True:
                page = await self.list_threads(parent_id=parent, limit=MAX_LIST, cursor=cursor)
                for child in page.threads:
                    if child.thread_id in seen:
                        continue
                    seen.add(child.thread_id)
                    stack.append(child.thread_id)
                    if child.status in (Status.CREATED, Status.RUNNING, Status.PAUSED):
                        try:
                            await self.update_thread(child.thread_id, status=Status.CANCELLED, reason=reason)
                            cancelled.append(child.thread_id)
                        except InvalidStateError:
                            pass  # it ended on its own meanwhile
                        except ConflictError as exc:
                            if exc.rule != "thread_leased":
                                raise
                            log.info("not cancelling thread %s: %s", child.thread_id, exc.message)
                cursor = page.next_cursor
                if cursor is None:
                    break
        return cancelled

    async def wait_threads(
        self,
        thread_ids: Sequence[str],
        *,
        mode: str = "all",
        timeout: float | None = None,
        on_progress: Callable[[int, int, str], Awaitable[None]] | None = None,
    ) -> WaitResult:
        """Wait until all or any of the threads ended (following chains); see waiting.py."""
        return await wait_threads(self, thread_ids, mode=mode, timeout=timeout, on_progress=on_progress)  # type: ignore[arg-type]

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
        total = 0
        for i, raw in enumerate(events):
            where = "event" if len(events) == 1 else f"events[{i}]"
            ev = parse_event(raw, where=where)  # typed fields first: their errors name the range
            check_finite_json(where, raw)
            payload = event_payload(ev)
            try:
                size = len(canonical_json(payload).encode())
            except ValueError:
                raise InvalidInputError(
                    f"{where} holds a number JSON cannot carry (NaN, Infinity, beyond 1.8e308, or an "
                    "integer of more than 4300 digits); events take finite numbers only",
                    rule="event_json",
                ) from None
            if size > self.settings.max_event_bytes:
                raise InvalidInputError(
                    f"{where} is {size} bytes of JSON; the limit (max_event_bytes) is "
                    f"{self.settings.max_event_bytes}",
                    rule="event_size",
                )
            total += size
            if total > self.settings.max_append_bytes:
                raise InvalidInputError(
                    f"this append is over {self.settings.max_append_bytes} bytes of JSON by events[{i}] "
                    f"(max_append_bytes; {total} bytes in {i + 1} of {len(events)} events): send the events "
                    "in several calls. Nothing was written",
                    rule="request_size",
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
        if thread.status in TERMINAL and thread.continuation_thread_id:
            end = await self.chain_end(thread)
            raise ThreadContinuedError(
                f"thread {thread.thread_id} is {thread.status.value} and was resumed; "
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
        self,
        thread_id: str,
        events: Sequence[Any],
        *,
        idempotency_key: str | None = None,
        single: bool = False,
        owner: str | None = None,
    ) -> AppendOutcome:
        """Append events in one transaction; the first append moves a created thread to running.

        With ``idempotency_key``, a retry of the same append returns the original seqs.
        While the thread is leased only its holder, named by ``owner``, may append
        (ConflictError ``thread_leased`` otherwise); the holder's append renews the lease.
        """
        await visibility.visible(self.store, thread_id)
        lease = _lease_check(owner)
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
        validated = self._validate_events(events)
        new_events = tuple(ne for _, ne in validated)
        rhash = request_hash(thread_id, [ne.payload for ne in new_events]) if idempotency_key else None

        async def replay(seqs: list[int]) -> AppendOutcome:
            thread = await self.store.get_thread(thread_id)
            outcome = self._outcome(thread, seqs, single, replayed=True)
            if thread.status == Status.RUNNING:  # a handoff that failed after the first try runs now
                return await self._after_append(thread, outcome, owner)
            return outcome.model_copy(update={"handoff": await self._past_handoff(thread)})

        if idempotency_key is not None:
            rec = await self.store.find_idempotency(thread_id, idempotency_key)
            if rec is not None:
                if rec.request_hash != rhash:
                    raise ConflictError(
                        f"idempotency_key {quote(idempotency_key)} was already used on thread {thread_id} "
                        f"for different events (seqs {rec.seqs}); use a new key for new content",
                        rule="idempotency_key_reused",
                    )
                return await replay(rec.seqs)

        # a result event ends a turn: it is accounted (docs/budgets.md) and checkpointed
        delta = budgets.usage_delta([ev for ev, _ in validated])
        fast = [delta is None]  # the one-commit path needs no read: nothing to account
        committed: list[Thread] = []  # the thread as the append left it (not set on a replay)

        async def plan() -> AppendOutcome:
            ops: list[Op] = []
            exceeded = None
            thread: Thread | None = None
            running: Thread | None = None
            if fast[0]:  # optimistic: one commit, the status guard checks "running" in the transaction
                fast[0] = False
            else:
                thread = await self.store.get_thread(thread_id)
                await self._refuse_if_ended(thread)
                if delta is not None:
                    check_usage_sums(thread, delta)
                running = thread
                if thread.status == Status.CREATED:
                    ops += self.status_ops(thread, Status.RUNNING, "first append", lease=lease)
                    running = thread.model_copy(
                        update={
                            "status": Status.RUNNING,
                            "status_reason": "first append",
                            "version": thread.version + 1,
                        }
                    )
            accounted = delta is not None and thread is not None and budgets.participates(thread)
            append_op = AppendEvents(
                thread_id,
                new_events,
                idempotency_key=idempotency_key,
                request_hash=rhash,
                allowed_statuses=frozenset({Status.RUNNING}),
                usage=None if accounted else delta,
                checkpoint=delta is not None,
                lease=lease,
            )
            index = sum(isinstance(op, AppendEvents) for op in ops)
            ops.append(append_op)
            if accounted:
                assert delta is not None
                more, exceeded = await self._spend_ops(running, delta)
                ops += more
            try:
                res = await self.store.commit(ops)
            except IdempotentReplay as rep:
                return await replay(rep.record.seqs)
            committed.append(res.threads[thread_id])
            return self._outcome(res.threads[thread_id], res.appends[index].seqs, single, exceeded=exceeded)

        outcome = await self._retrying(plan, PLAN_RETRIES if delta is None else ACCOUNT_PLAN_RETRIES)
        if not committed:
            return outcome
        if committed[-1].title is None and any(
            isinstance(ev, MessageEvent) and ev.role == "user" for ev, _ in validated
        ):
            await self._auto_title(committed[-1])
        return await self._after_append(committed[-1], outcome, owner)

    async def _auto_title(self, thread: Thread) -> None:
        """Title a thread without one from its first user messages once it has two (titles.py).

        Set only while the title is unset (a title set meanwhile wins: the version guard makes
        the plan look again). The append stands whatever happens here."""
        if thread.continuation_of is not None:  # a continuation opens with the server's seed
            return
        texts: list[str] = []
        after = 0
        try:
            while len(texts) < titles.USER_MESSAGES:
                page = await self.store.read_events(thread.thread_id, after_seq=after, limit=500)
                if not page:
                    break
                for ev in page:
                    if ev.type == "message":
                        data = ev.data()
                        if data.get("role") == "user":
                            texts.append(str(data.get("text", "")))
                after = page[-1].seq
            title = titles.title_from(texts) if len(texts) >= titles.USER_MESSAGES else None
            if title is None:
                return

            async def plan() -> None:
                t = await self.store.get_thread(thread.thread_id)
                if t.title is None:
                    await self.store.commit([PutThread(t.model_copy(update={"title": title}), t.version)])

            await self._retrying(plan)
        except ThreadloomError as exc:
            log.warning("could not title thread %s: %s", thread.thread_id, exc)

    async def _spend_ops(self, thread: Thread, delta: UsageDelta) -> tuple[list[Op], Exceeded | None]:
        """Guarded account updates for ``thread`` reporting ``delta`` and, when that went over a
        budget or limit, the move to error (with its reservation returned)."""
        path = [thread, *await budgets.ancestors(self.store, thread.parent_id)]
        accounts, exceeded = budgets.apply_spend(path, delta)
        ops: list[Op] = []
        if exceeded is not None:
            ops += self.status_ops(thread, Status.ERROR, exceeded.reason)
            holder_id = thread.budget.reserved_from if thread.budget else None
            holder = next((t for t in path if t.thread_id == holder_id), None)
            if holder is not None:
                accounts = budgets.release_on_end(accounts, thread, holder)
            log.info("thread %s: %s", thread.thread_id, exceeded.message)
        ops += budgets.put_ops(accounts, path)
        return ops, exceeded

    @staticmethod
    def _outcome(
        thread: Thread,
        seqs: list[int],
        single: bool,
        *,
        replayed: bool = False,
        exceeded: Exceeded | None = None,
    ) -> AppendOutcome:
        return AppendOutcome(
            thread_id=thread.thread_id,
            seq=seqs[0] if single else None,
            seqs=None if single else seqs,
            replayed=replayed,
            status=thread.status,
            context=thread.context(),
            exceeded=exceeded,
        )

    async def read_events(
        self, thread_id: str, *, after_seq: int = 0, limit: int = 100, wait: float | None = None
    ) -> EventPage:
        """Events with seq > after_seq, oldest first, at most ``limit`` (1-1000).

        ``wait`` (seconds, at most waiting.MAX_READ_WAIT): when there is no such event yet,
        return as soon as one is committed by anyone, or an empty page at the timeout.
        """
        await visibility.visible(self.store, thread_id)
        check_count("after_seq", after_seq, hi=MAX_SEQ)
        check_count("limit", limit, lo=1, hi=MAX_PAGE)
        if wait is not None:
            check_amount("wait", wait, hi=MAX_READ_WAIT)
        events = await self.store.read_events(thread_id, after_seq=after_seq, limit=limit + 1)
        if not events and wait and await wait_for_events(self, thread_id, after_seq, wait):
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

    async def all_events(self, thread_id: str, *, max_bytes: int | None = None) -> list[StoredEvent]:
        """Every event of the thread in seq order.

        ``max_bytes`` (resources read by clients): read a page at a time and stop once the
        transcript lines pass it, raising LimitExceededError (``resource_size``) that points
        to read_events, so a huge thread is never held whole for one read.
        """
        await visibility.visible(self.store, thread_id)
        if max_bytes is None:
            return await self.store.read_events(thread_id)
        out: list[StoredEvent] = []
        size = after = 0
        while True:
            page = await self.store.read_events(thread_id, after_seq=after, limit=RESOURCE_PAGE)
            for e in page:
                size += len(e.line.encode()) + 1
                if size > max_bytes:
                    raise LimitExceededError(
                        f"thread {thread_id} has more than {max_bytes} bytes of events (max_resource_bytes), "
                        "too much for one resource read: read it a page at a time with "
                        f"read_events(thread_id={thread_id!r}, after_seq=..., limit=...)",
                        rule="resource_size",
                    )
            out += page
            if len(page) < RESOURCE_PAGE:
                return out
            after = page[-1].seq

    async def transcript(self, thread_id: str, *, max_bytes: int | None = None) -> str:
        """The thread's JSONL transcript, rendered from the database (same bytes as the mirror)."""
        return "".join(e.line + "\n" for e in await self.all_events(thread_id, max_bytes=max_bytes))

    async def messages(self, thread_id: str, *, max_bytes: int | None = None) -> list[dict[str, Any]]:
        """The thread's conversation rebuilt from its events (neutral content-block form)."""
        return rebuild_messages(await self.all_events(thread_id, max_bytes=max_bytes))

    async def conversation(
        self, thread_id: str, format: str = "neutral", *, max_bytes: int | None = None
    ) -> Any:
        """The conversation in ``format``: the neutral list, or the provider's request fields
        (``{"system"?, "messages"}`` for anthropic, ``{"messages"}`` for openai)."""
        check_format(format)
        return request_body(await self.messages(thread_id, max_bytes=max_bytes), format)

    # ------------------------------------------------------------------- chains
    # Planning lives in chain.py; here: when to hand off, guards, retries, results.

    def _threshold(self, thread: Thread) -> float:
        return chain.threshold_of(thread, self.settings.trigger_threshold)

    async def _after_append(
        self, thread: Thread, outcome: AppendOutcome, owner: str | None = None
    ) -> AppendOutcome:
        """Hand off right after an append that brought the thread to its threshold (DESIGN §7).

        The append stands whatever happens here (it is committed and acknowledged). A
        handoff that cannot bring the context below the threshold, or that fails, is not
        half-done: nothing of it is written, the trigger stays armed for the next append,
        and the result's ``warning`` says so.
        """
        threshold = self._threshold(thread)
        if thread.status != Status.RUNNING or outcome.context.ratio < threshold:
            return outcome
        try:
            info = await self._handoff(
                thread.thread_id, summary=None, reason="threshold", auto=True, first=thread, owner=owner
            )
        except LimitExceededError as exc:
            return outcome.model_copy(
                update={
                    "warning": f"context is at {outcome.context.ratio:.1%} of the window (threshold {threshold:.0%}) "
                    f"but no handoff ran: {exc.message}. The trigger stays armed: the next append tries again."
                }
            )
        except ThreadloomError as exc:
            log.error("handoff of thread %s at the threshold failed: %s", thread.thread_id, exc)
            return outcome.model_copy(
                update={
                    "warning": f"context is at {outcome.context.ratio:.1%} of the window but the handoff failed "
                    f"([{exc.rule}] {exc.message}); nothing of it was written and the next append tries again"
                }
            )
        if info is None:
            return outcome
        return outcome.model_copy(update={"handoff": info, "status": Status.CONTINUED})

    async def handoff(
        self,
        thread_id: str,
        *,
        summary: str | None = None,
        reason: str = "explicit",
        force: bool = False,
        owner: str | None = None,
    ) -> HandoffInfo:
        """Continue a running thread in a fresh sibling now, before the threshold (DESIGN §7).

        ``summary`` (the client's own account of the work so far) goes into the
        continuation message. Returns where to append from now on. The thread is verified
        first, as for a resume; ``force`` (operators only, never an MCP argument) goes on
        when it fails, logging why.

        Raises:
            InvalidStateError: the thread is not running (ThreadContinuedError names the end).
            LimitExceededError: the continuation would not start below the threshold.
            IntegrityError: ``integrity_failed``, the transcript fails verification (the
                message names the first bad line).
        """
        await visibility.visible(self.store, thread_id)
        _lease_check(owner)
        if summary is not None:
            if not isinstance(summary, str):
                raise InvalidInputError(
                    f"summary must be a string; got {type(summary).__name__}", rule="summary_shape"
                )
            _check_len("summary", summary, MAX_SUMMARY)
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
            raise InvalidInputError(
                f"reason must be 1-{MAX_REASON} characters; got {reason!r:.80}", rule="reason_length"
            )
        info = await self._handoff(
            thread_id, summary=summary or None, reason=reason.strip(), auto=False, force=force, owner=owner
        )
        assert info is not None
        return info

    async def _handoff(
        self,
        thread_id: str,
        *,
        summary: str | None,
        reason: str,
        auto: bool,
        first: Thread | None = None,
        force: bool = False,
        owner: str | None = None,
    ) -> HandoffInfo | None:
        """Verify, plan and commit one handoff, re-planning when a guard reports a race.

        ``auto``: only if the thread is (still) at its threshold; a thread that another
        caller handed off already is reported, not handed off twice. A thread that fails
        verification is refused (``integrity_failed``) unless ``force``. A leased thread is
        handed off only by its holder (``owner``), and the continuation starts leased to it.
        """
        tries = [0]

        async def attempt_handoff() -> HandoffInfo | None:
            attempt, tries[0] = tries[0], tries[0] + 1
            thread = first if first is not None and attempt == 0 else await self.store.get_thread(thread_id)
            if thread.status != Status.RUNNING:
                if auto:
                    return await self._past_handoff(thread)
                await self._refuse_if_ended(thread)
                raise InvalidStateError(
                    f"thread {thread_id} is {thread.status.value}: a handoff needs a running thread "
                    "(append an event to start it)",
                    rule="handoff_not_running",
                )
            threshold = self._threshold(thread)
            if auto and thread.context().ratio < threshold:
                return None
            planning = chain.plan_handoff(
                self.store,
                thread,
                reason=reason,
                summary=summary,
                template=self.settings.continuation_template,
                ceiling_tokens=self.settings.resume_ceiling_tokens,
                threshold=threshold,
            )
            if attempt == 0:  # an edited transcript must not become the new thread's context
                plan = await self._verified_then(thread_id, planning, force=force)
            else:
                plan = await planning
            ops = [
                dc_replace(op, lease=_lease_check(owner))
                if isinstance(op, AppendEvents) and op.thread_id == thread_id
                else op
                for op in plan.ops
            ]
            if thread.lease is not None and thread.lease.owner == owner:  # the run goes on there
                carried = thread.lease.model_copy(
                    update={"expires_at": iso(datetime.fromtimestamp(time.time() + thread.lease.ttl, UTC))}
                )
                ops = [
                    CreateThread(op.thread.model_copy(update={"lease": carried}))
                    if isinstance(op, CreateThread)
                    else op
                    for op in ops
                ]
            res = await self.store.commit(ops)
            new = res.threads[plan.new.thread_id]
            ctx = new.context()
            log.info(
                "thread %s handed off to %s (%s, %d carried)",
                thread_id,
                new.thread_id,
                reason,
                len(plan.carried),
            )
            return HandoffInfo(
                thread_id=new.thread_id,
                previous_thread_id=thread_id,
                carried_messages=len(plan.carried),
                reason=reason,
                omitted_events=plan.omitted,
                context=ctx,
                message=(
                    f"thread {thread_id} handed off to thread {new.thread_id} ({reason}; context was "
                    f"{thread.context().ratio:.1%} of the window, now {ctx.ratio:.1%}): append to "
                    f"{new.thread_id} from now on. It starts with a continuation message and the last "
                    f"{len(plan.carried)} messages (read thread://{new.thread_id}/messages)."
                ),
            )

        return await self._retrying(attempt_handoff)

    async def _verified_then(self, thread_id: str, planning: Awaitable[T], *, force: bool) -> T:
        """``planning``'s result once the thread verified (ensure_verified): both read at once
        (the check mostly waits on the database and hashes outside the GIL), and a failed
        verification wins over anything the plan raised, since nothing is committed yet."""
        errors: dict[str, BaseException] = {}
        planned: list[T] = []

        async def verify() -> None:
            try:
                await self.ensure_verified(thread_id, force=force)
            except ThreadloomError as exc:
                errors["verify"] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(verify)
            try:
                planned.append(await planning)
            except ThreadloomError as exc:
                errors["plan"] = exc
        if errors:
            raise errors.get("verify") or errors["plan"]
        return planned[0]

    async def _past_handoff(self, thread: Thread) -> HandoffInfo | None:
        """The handoff a continued thread already made, pointing at its chain's current end."""
        if thread.status != Status.CONTINUED or not thread.continuation_thread_id:
            return None
        tail = await self.store.read_events(thread.thread_id, after_seq=max(0, thread.event_count - 2))
        ev = next((e.data() for e in reversed(tail) if e.type == "handoff"), None)
        end = await self.chain_end(thread)
        reason = ev["reason"] if ev else (thread.status_reason or "handoff")
        carried = int(ev["trailing_count"]) if ev else 0
        return HandoffInfo(
            thread_id=end.thread_id,
            previous_thread_id=thread.thread_id,
            carried_messages=carried,
            reason=reason,
            omitted_events=max(0, thread.event_count - 2 - carried),
            context=end.context(),
            message=(
                f"thread {thread.thread_id} was handed off ({reason}) to thread {thread.continuation_thread_id}; "
                f"append to {end.thread_id}, the current end of the chain (status {end.status.value})"
            ),
        )

    async def resume(
        self, thread_id: str, message: str, *, format: str = "neutral", force: bool = False
    ) -> ResumeOutcome:
        """Give a finished chain a new instruction in a fresh sibling thread (DESIGN §5).

        Resolves the chain of ``thread_id`` to its end, which must be completed, error or
        cancelled; copies its conversation (only the trailing part within the ceiling,
        after a continuation message, when all of it would not fit below the threshold),
        appends ``message`` as a user message, links the chain and logs
        ``thread_resumed`` in the resumed thread; all in one commit.

        Raises:
            InvalidStateError: the chain's end is not finished (the message names it).
            IntegrityError: the chain's links are broken (a cycle or a missing thread), or the
                transcript of its end fails verification (``force``, for operators only, goes on).
            LimitExceededError: the message cannot fit below the threshold.
        """
        await visibility.visible(self.store, thread_id)
        check_format(format)
        if not isinstance(message, str) or not message.strip():
            raise InvalidInputError(
                "message must be a non-empty string: the new instruction", rule="message_empty"
            )
        size = len(canonical_json(message).encode())
        if size > self.settings.max_event_bytes:
            raise InvalidInputError(
                f"message is {size} bytes of JSON; the limit (max_event_bytes) is {self.settings.max_event_bytes}",
                rule="event_size",
            )
        verified = [False]

        async def attempt_resume() -> ResumeOutcome:
            start = await self.store.get_thread(thread_id)
            end, problem = await chain.resolve_end(self.store, start)
            if not visibility.allows(end):
                raise visibility.not_found(thread_id)
            if problem:
                raise IntegrityError(
                    f"cannot resume the chain of thread {thread_id}: its links are broken ({problem}); "
                    "get_chain shows the chain",
                    rule="chain_broken",
                )
            if end.status not in TERMINAL:
                hint = {
                    Status.RUNNING: "it is still working: append to it instead",
                    Status.CREATED: "it has not started: append to it instead",
                    Status.PAUSED: "set it running (update_thread) and append to it, or end it first",
                }.get(end.status, "")
                raise InvalidStateError(
                    f"only a completed, error or cancelled chain end can be resumed; the chain of thread "
                    f"{thread_id} ends at thread {end.thread_id}, which is {end.status.value}"
                    + (f" ({hint})" if hint else ""),
                    rule="resume_not_finished",
                )
            if not verified[0]:  # a transcript edited on disk must not become the new thread's context
                await self.ensure_verified(end.thread_id, force=force)
                verified[0] = True
            plan = await chain.plan_resume(
                self.store,
                end,
                message,
                template=self.settings.continuation_template,
                ceiling_tokens=self.settings.resume_ceiling_tokens,
                threshold=self._threshold(end),
            )
            res = await self.store.commit(plan.ops)
            new = res.threads[plan.new.thread_id]
            system, messages = format_messages(rebuild_messages(res.appends[0].events), format)
            how = (
                f"the last {len(plan.carried)} messages after a continuation message (the whole conversation "
                "would not fit below the threshold)"
                if plan.trimmed
                else f"its whole conversation ({len(plan.carried)} messages)"
            )
            return ResumeOutcome(
                thread=new,
                previous_thread_id=end.thread_id,
                carried_messages=len(plan.carried),
                trimmed=plan.trimmed,
                omitted_events=plan.omitted,
                context=new.context(),
                format=format,
                system=system,
                messages=messages,
                message=(
                    f"resumed thread {end.thread_id} ({end.status.value}) in thread {new.thread_id} with {how} "
                    f"and your message; append to {new.thread_id} from now on"
                ),
            )

        return await self._retrying(attempt_resume)

    async def get_chain(self, thread_id: str) -> ChainView:
        """Every thread of the chain of ``thread_id`` (any member) in link order, and its end."""
        start = await self.store.get_thread(check_thread_id(thread_id))
        if not visibility.allows(start):
            raise visibility.not_found(thread_id)
        walk = await chain.walk_chain(self.store, start)
        members = visibility.keep(walk.threads)
        costs = [t.cost for t in members if t.cost is not None]
        return ChainView(
            thread_id=thread_id,
            chain_root_id=walk.root_id,
            end_thread_id=walk.end.thread_id,
            end_status=walk.end.status,
            threads=[ChainLink.of(t) for t in members],
            total_events=sum(t.event_count for t in members),
            total_cost=round(sum(costs), 10) if costs else None,
            problems=walk.problems,
            forks=[
                ForkLink.of(t)
                for t in visibility.keep(await self.store.list_forks([t.thread_id for t in walk.threads]))
            ],
        )

    async def children(self, thread_id: str) -> ChildrenView:
        """The children of ``thread_id``, one entry per child chain (a child and its
        continuations and resumptions), each with its current end, status, last activity,
        result and cost: what an orchestrator re-reads after its own context was compacted."""
        await visibility.visible(self.store, thread_id)
        await self.store.get_thread(thread_id)
        kids: list[Thread] = []
        before: tuple[str, str] | None = None
        while True:
            page = await self.store.list_threads(parent_id=thread_id, limit=MAX_LIST, before=before)
            kids += visibility.keep(page)
            if len(page) < MAX_LIST:
                break
            before = (page[-1].created_at, page[-1].thread_id)
        groups: dict[str, list[Thread]] = {}
        for t in kids:
            groups.setdefault(t.chain_root_id, []).append(t)
        out: list[ChildChain] = []
        started: dict[str, str] = {}
        for members in groups.values():
            ordered = order_chain(members)
            started[ordered[0].thread_id] = ordered[0].created_at
            end = chain_end(ordered)
            costs = [t.cost for t in ordered if t.cost is not None]
            out.append(
                ChildChain(
                    thread_id=ordered[0].thread_id,
                    title=end.title or ordered[0].title,
                    status=end.status,
                    end_thread_id=end.thread_id,
                    threads=len(ordered),
                    last_activity=max(t.updated_at for t in ordered),
                    result=end.result,
                    cost=round(sum(costs), 10) if costs else None,
                )
            )
        out.sort(key=lambda c: (started[c.thread_id], c.thread_id))
        return ChildrenView(
            thread_id=thread_id,
            children=out,
            open=sum(c.status in (Status.CREATED, Status.RUNNING, Status.PAUSED) for c in out),
        )

    async def fork_thread(
        self,
        thread_id: str,
        *,
        at_seq: int | None = None,
        title: str | None = None,
        directive: str | None = None,
    ) -> Thread:
        """A new thread holding copies of the conversation of ``thread_id`` up to ``at_seq``
        (default: all of it), in status ``created``, with ``forked_from`` set (fork.py).

        It keeps the source's agent, parent, directive, title, model, window, limits,
        capabilities and metadata (``title``/``directive`` override); it has its own chain,
        hash chain and checkpoints, and fresh accounts: a source with a budget gives the fork
        a budget of the same ``max_spend``, reserved anew like a new child's.

        Raises:
            InvalidInputError: ``at_seq_range``, or ``fork_splits_tool_call`` (names the
                nearest valid seqs).
            LimitExceededError: the parent has not enough budget left for the fork's.
        """
        check_thread_id(thread_id)
        _check_len("title", title, MAX_TITLE)
        _check_len("directive", directive, MAX_DIRECTIVE)
        source = await self.store.get_thread(thread_id)
        if not visibility.allows(source):
            raise visibility.not_found(thread_id)
        events = await self.store.read_events(thread_id)
        count = events[-1].seq if events else 0
        seq = count if at_seq is None else at_seq
        fork.check_fork_seq(thread_id, seq, count, events)
        new = fork.fork_thread_model(source, seq, title=title, directive=directive)
        copies = tuple(fork.fork_events(events, seq))
        seed: list[Op] = [AppendEvents(new.thread_id, copies, checkpoint=True)] if copies else []
        if source.budget is None:
            res = await self.store.commit([CreateThread(new), *seed])
            return res.threads[new.thread_id]
        max_spend = source.budget.max_spend

        async def plan() -> Thread:
            path = await budgets.ancestors(self.store, new.parent_id)
            state, accounts, holder = budgets.plan_reservation(path, max_spend)
            ops: list[Op] = [CreateThread(new.model_copy(update={"budget": state})), *seed]
            ops += budgets.put_ops(accounts, [holder] if holder else [])
            res = await self.store.commit(ops)
            return res.threads[new.thread_id]

        return await self._retrying(plan, ACCOUNT_PLAN_RETRIES)

    # ------------------------------------------------------------------- leases

    async def acquire_thread(self, thread_id: str, owner: str, ttl: float) -> LeaseOutcome:
        """Lease ``thread_id`` to ``owner`` for ``ttl`` seconds (docs/live.md): from now on
        appends and changes that do not name ``owner`` are refused (``thread_leased``) until
        the lease expires or is released; each write by ``owner`` renews it. Acquiring a
        lease one holds already renews it (with the new ttl).

        Raises:
            InvalidInputError: ``owner_format`` or ``ttl_range``.
            ConflictError: ``thread_leased`` (someone else holds it; the message says until when).
            InvalidStateError: the thread ended (ThreadContinuedError names the chain's end).
        """
        await visibility.visible(self.store, thread_id)
        check_owner(owner)
        if (
            isinstance(ttl, bool)
            or not isinstance(ttl, (int, float))
            or not (MIN_LEASE_TTL <= ttl <= MAX_LEASE_TTL)
        ):
            raise InvalidInputError(
                f"ttl must be between {MIN_LEASE_TTL:.0f} and {MAX_LEASE_TTL:.0f} seconds; got {ttl!r:.50}",
                rule="ttl_range",
            )
        thread = await self.store.get_thread(thread_id)
        if thread.status in ENDED:
            if thread.status == Status.CONTINUED or thread.continuation_thread_id:
                await self._refuse_if_ended(thread)
            raise InvalidStateError(
                f"thread {thread_id} is {thread.status.value}: nothing more runs in it, so it cannot be leased",
                rule="lease_ended",
            )
        res = await self.store.commit([PutLease(thread_id, owner, float(ttl))])
        lease = res.threads[thread_id].lease
        assert lease is not None
        return LeaseOutcome(
            thread_id=thread_id,
            lease=lease,
            message=f"thread {thread_id} is leased to {owner!r} until {lease.expires_at}; "
            f"pass owner={owner!r} to append_event and update_thread (each renews it), release_thread when done",
        )

    async def release_thread(self, thread_id: str, owner: str) -> LeaseOutcome:
        """Give up ``owner``'s lease of ``thread_id``; idempotent (a free thread stays free).

        Raises:
            ConflictError: ``thread_leased`` when someone else holds it.
        """
        await visibility.visible(self.store, thread_id)
        check_owner(owner)
        before = await self.store.get_thread(thread_id)
        res = await self.store.commit([PutLease(thread_id, owner, None)])
        held = before.lease is not None and before.lease.owner == owner
        return LeaseOutcome(
            thread_id=thread_id,
            lease=res.threads[thread_id].lease,
            message=f"released {owner!r}'s lease of thread {thread_id}"
            if held
            else f"thread {thread_id} was not leased to {owner!r}: nothing to release",
        )

    # ---------------------------------------------------------------- integrity

    async def verify_thread(self, thread_id: str) -> VerifyReport:
        """Verify the thread's signatures, checkpoints, hash chain and mirrors (DESIGN §8).

        A mirror write of another process still in flight looks like a short transcript or
        an older thread.json; that is read again a few times before it is reported.
        """
        await visibility.visible(self.store, thread_id)
        signer = self.store.signer
        for attempt in range(VERIFY_LAG_RETRIES + 1):
            snap = await self.store.read_integrity(thread_id)
            if attempt == VERIFY_LAG_RETRIES or not lagging(snap):
                break
            await anyio.sleep(0.02 * (attempt + 1))
        trusted = self.trusted_keys() if snap.imported is not None else None
        return await anyio.to_thread.run_sync(verify_snapshot, snap, signer, trusted)

    def trusted_keys(self) -> dict[str, PublicKey]:
        """Other roots' public keys this root trusts (trust.py): ``keys/trusted/`` and the
        ``trusted_keys`` setting, read afresh so that `threadloom trust` applies at once."""
        return trusted_keys(self.settings.root, self.settings.trusted_keys)

    async def ensure_verified(self, thread_id: str, *, force: bool = False) -> VerifyReport:
        """Verify before rebuilding messages (resume, handoff): raise unless it is intact.

        ``force`` (operators only, never an MCP tool) logs the problems and goes on.

        Raises:
            VerificationFailed: an IntegrityError (``rule='integrity_failed'``) with the first
                problem in its message and the whole report on ``.report``.
        """
        quick = await self._verify_anchored(thread_id)
        if quick is not None:
            return quick
        report = await self.verify_thread(thread_id)
        if report.ok:
            return report
        if force:
            log.warning("thread %s failed verification, going on (--force): %s", thread_id, report.summary)
            return report
        raise VerificationFailed(report)

    async def _verify_anchored(self, thread_id: str) -> VerifyReport | None:
        """The intact thread's report from the quick check (verify_anchored.py), or None when
        it must be verified in full (a problem, a write in flight, no usable anchor)."""
        snap = await self.store.read_anchored(check_thread_id(thread_id))
        if snap is None:
            return None
        signer = self.store.signer
        if len(snap.tail) > ANCHORED_INLINE_LINES:
            found = await anyio.to_thread.run_sync(verify_anchored, snap, signer)
        else:
            found = verify_anchored(snap, signer)
        if found is None:
            return None
        self.store.trust_verified(thread_id, found.events, found.state)
        return found.report

    async def manifest_json(self, thread_id: str) -> str:
        """The thread's signed ``thread.json`` (the same bytes the mirror writes)."""
        thread = await self.get_thread(thread_id)
        return manifest_bytes(thread, self.store.signer).decode()

    async def capabilities_md(self, thread_id: str) -> str:
        """The thread's signed ``capabilities.md``. Raises NotFoundError when it has none."""
        thread = await self.get_thread(thread_id)
        if thread.capabilities is None:
            raise NotFoundError(
                f"thread {thread_id} has no capabilities (give create_thread(capabilities=...))",
                rule="capabilities_not_found",
            )
        return caps_md.render(thread_id, thread.capabilities, self.store.signer).decode()

    # ----------------------------------------------------------------- operator

    async def all_threads(self, *, page: int = 500) -> list[Thread]:
        """Every thread of the store, newest first (read a page at a time)."""
        out: list[Thread] = []
        before: tuple[str, str] | None = None
        while True:
            rows = await self.store.list_threads(limit=page, before=before)
            out.extend(rows)
            if len(rows) < page:
                return out
            before = (rows[-1].created_at, rows[-1].thread_id)

    async def chain_threads(self, thread_id: str) -> list[Thread]:
        """Every thread of the chain of ``thread_id`` (any member), in link order."""
        thread = await self.get_thread(thread_id)
        return visibility.keep(order_chain(await self.store.list_chain(thread.chain_root_id) or [thread]))

    async def delete_threads(
        self, thread_ids: Sequence[str], *, chain: bool = False, force: bool = False, dry_run: bool = False
    ) -> DeleteOutcome:
        """Delete threads with their events and mirrors (docs/operator-cli.md).

        Idempotent: ids that do not exist are reported in ``missing``. A thread that is one
        of several in a chain goes only with its whole chain: unless ``chain`` is true (or
        every member is named) the call is refused, since half a chain cannot be resumed or
        followed. Threads still created/running/paused are refused unless ``force``.
        Nothing is deleted when anything is refused; ``dry_run`` checks and reports only.

        Raises:
            InvalidInputError: an id is malformed.
            InvalidStateError: ``delete_partial_chain`` or ``delete_active``.
        """
        ids = [check_thread_id(t) for t in dict.fromkeys(thread_ids)]
        found = visibility.keep_map(await self.store.get_threads(ids))
        missing = [t for t in ids if t not in found]
        doomed: dict[str, Thread] = {}
        for tid in ids:
            if tid not in found or tid in doomed:
                continue
            members = visibility.keep(
                order_chain(await self.store.list_chain(found[tid].chain_root_id) or [found[tid]])
            )
            rest = [m.thread_id for m in members if m.thread_id not in found]
            if rest and not chain:
                raise InvalidStateError(
                    f"thread {tid} is one of {len(members)} threads of chain {found[tid].chain_root_id} "
                    f"({', '.join(m.thread_id for m in members)}); deleting it alone would break the chain: "
                    "delete the whole chain (chain=true, --chain)",
                    rule="delete_partial_chain",
                )
            for m in members if chain else [found[tid]]:
                doomed[m.thread_id] = m
        active = [t for t in doomed.values() if t.status not in ENDED]
        if active and not force:
            names = ", ".join(f"{t.thread_id} ({t.status.value})" for t in active)
            raise InvalidStateError(
                f"refusing to delete threads that have not ended: {names}; end them first "
                "(update_thread status=cancelled) or, as the operator, pass --force",
                rule="delete_active",
            )
        if not dry_run:
            await self.store.delete_threads(list(doomed))
        return DeleteOutcome(deleted=list(doomed), missing=missing)

    async def import_threads(
        self,
        threads: Sequence[tuple[Thread, Sequence[StoredEvent]]],
        *,
        index: bool = True,
        keys: Mapping[str, str] | None = None,
        renamed: Mapping[str, str] | None = None,
        declared: Mapping[str, Sequence[SignedSpan]] | None = None,
    ) -> list[str]:
        """Insert threads exactly as exported (ids, seqs, timestamps, counters), in one commit.

        The caller (``threadloom import``, see bundle.py) has parsed and validated the events
        and settled id conflicts; the store refuses an id in use (ConflictError
        ``thread_exists``) and events not numbered 1..n. With ``index`` the imported
        messages are then indexed for search (:meth:`index_imported`); a caller importing
        many batches passes ``index=False`` and calls it once at the end.

        Each thread gets a countersigned import record (provenance.py): which key verified
        its checkpoints, among ``keys`` (public key PEMs by id, from the bundle), this
        root's own key and the keys it trusts. ``renamed`` maps a new id to the id the
        thread was exported under; ``declared``, by id, which key the bundle says signed
        what (its ``signed_by``).
        """
        if not threads:
            return []
        candidates = {**self.trusted_keys(), self.store.signer.key_id: signer_key(self.store.signer)}
        for kid, pem in (keys or {}).items():
            try:
                key = parse_public_key(pem, where=f"public key {kid} of the bundle")
            except InvalidInputError:
                continue
            candidates.setdefault(key.key_id, key)
        now = iso(utc_now())
        ops: list[Op] = []
        for thread, events in threads:
            check_thread_id(thread.thread_id)
            record = build_record(
                thread.thread_id,
                events,
                candidates,
                self.store.signer,
                imported_at=now,
                renamed_from=(renamed or {}).get(thread.thread_id),
                declared=(declared or {}).get(thread.thread_id, ()),
            )
            ops.append(ImportThread(thread, tuple(events), record))
        await self.store.commit(ops)
        if index:
            await self.index_imported()
        return [t.thread_id for t, _ in threads]

    async def index_imported(self) -> None:
        """Bring the search index up to date after imports, when this build has one.

        Imports bypass the append path that indexes messages, so the search feature's
        incremental ``reindex`` (only what is missing) is run instead, unless the store
        indexed them in the import's own commit.
        """
        if self.store.imports_indexed:
            return
        reindex = getattr(self, "reindex", None)
        if reindex is not None:
            await reindex()

    # ------------------------------------------------------------------- search

    async def chain_search(
        self,
        thread_id: str,
        query: str,
        *,
        search_type: str | None = None,
        limit: int = 20,
        context: int = 3,
        include_tools: bool = False,
    ) -> ChainSearchResults:
        """Search every thread of ``thread_id``'s continuation chain.

        ``text``: the full-text index, best BM25 first; ``regex``: RE2 over the chain's
        events in order; ``semantic``: nearest vectors; ``hybrid``: BM25 and vectors fused
        (None: hybrid when semantic search is set up, else text). Each hit has a snippet
        and ``context`` events either side.
        """
        await visibility.visible(self.store, thread_id)
        return await chain_search(
            self.store,
            thread_id,
            query,
            search_type=search_type,
            limit=limit,
            context=context,
            include_tools=include_tools,
            semantic=self.semantic,
        )

    async def search_threads(
        self,
        query: str,
        *,
        agent_id: str | None = None,
        limit: int = 5,
        context: int = 3,
        mode: str | None = None,
    ) -> ThreadSearchResults:
        """The threads (of ``agent_id`` when given) that best match ``query``, one hit each.

        ``mode``: hybrid, text or semantic; None: hybrid when semantic search is set up
        (the extra installed and semantic_model set), else text.
        """
        return await visibility.search_threads(
            self.store,
            query,
            agent_id=agent_id,
            limit=limit,
            context=context,
            mode=mode,
            semantic=self.semantic,
        )

    async def reindex(self, *, progress: ReindexProgress | None = None) -> ReindexStats:
        """Bring the search index up to date with the events (idempotent, incremental)."""
        return await self.store.reindex(progress=progress)

    async def reindex_embeddings(self, *, progress: EmbedProgress | None = None) -> EmbedStats:
        """Backfill vectors: remove orphans, embed what is missing (idempotent, resumable).

        Raises:
            SemanticUnavailableError: the extra or the model is missing (the message says how to get it).
        """
        return await self.semantic.backfill(progress=progress)

    async def run_indexer(self) -> None:
        """Embed new events in the background after each commit (until cancelled)."""
        await self.semantic.run_indexer()

    # ------------------------------------------------------------------ sweeper

    async def sweep_stale(self, now: float | None = None) -> list[str]:
        """Move running threads whose heartbeat is older than ``stale_after`` to error/timeout."""
        now = time.time() if now is None else now
        moved = []
        for thread in await self.store.list_stale(now):
            ops = self.status_ops(thread, Status.ERROR, "timeout")
            put = ops[0]
            assert isinstance(put, PutThread)
            ops[0] = PutThread(
                put.thread, put.expect_version, expect_heartbeat_before=now - thread.stale_after
            )
            ops += await budgets.end_ops(self.store, thread)
            try:
                await self.store.commit(ops)
            except ConflictError:
                continue  # it moved, or another process swept it first
            moved.append(thread.thread_id)
            log.info(
                "thread %s had no heartbeat for %.0fs: moved to error (timeout)",
                thread.thread_id,
                thread.stale_after,
            )
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
