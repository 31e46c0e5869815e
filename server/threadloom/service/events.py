"""Event rules: validate and append events (accounts, budgets, titles), read them back, and search."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import budgets, titles, visibility
from ..errors import (
    ConflictError,
    InvalidInputError,
    LimitExceededError,
    ThreadloomError,
)
from ..event_types import context_chars
from ..messages import check_format, rebuild_messages, request_body
from ..models import (
    Event,
    Exceeded,
    MessageEvent,
    ResultEvent,
    Status,
    StoredEvent,
    Thread,
    UsageDelta,
    canonical_json,
    check_idempotency_key,
    event_payload,
    parse_event,
)
from ..numbers import (
    MAX_SEQ,
    check_amount,
    check_count,
    check_finite_json,
    check_usage_sums,
    quote,
)
from ..results import (
    AppendOutcome,
    EventPage,
)
from ..search import ChainSearchResults, ThreadSearchResults, chain_search
from ..store.apply import request_hash
from ..store.base import (
    AppendEvents,
    IdempotentReplay,
    NewEvent,
    Op,
    PutThread,
)
from .base import (
    ACCOUNT_PLAN_RETRIES,
    MAX_PAGE,
    PLAN_RETRIES,
    RESOURCE_PAGE,
    ServiceBase,
    _lease_check,
    log,
)
from .waiting import MAX_READ_WAIT, wait_for_events


class EventRules(ServiceBase):
    """Event rules: validate and append events (accounts, budgets, titles), read them back, and search."""

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
            out.append((ev, NewEvent(payload["type"], payload, context_chars(payload), tokens)))
        return out

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
            if fast[0]:  # optimistic: one commit; the store checks "running" (or starts a created thread)
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
                start_reason="first append" if thread is None else None,  # unread: the store starts it
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
