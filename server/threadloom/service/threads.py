"""Thread rules: create, list, update and cancel threads, their chains and children, forks and run leases."""

from __future__ import annotations

from typing import Any

from .. import budgets, chain, fork, visibility
from .. import capabilities as caps_md
from ..errors import (
    ConflictError,
    InvalidInputError,
    InvalidStateError,
)
from ..lineage import chain_end, order_chain
from ..models import (
    ENDED,
    TERMINAL,
    Budget,
    Limits,
    Status,
    Thread,
    canonical_json,
    check_agent_id,
    check_owner,
    check_thread_id,
    check_transition,
    iso,
    new_thread_id,
    utc_now,
)
from ..numbers import (
    MAX_STALE_AFTER,
    check_amount,
    check_count,
    quote,
)
from ..results import (
    ChainLink,
    ChainView,
    ChildChain,
    ChildrenView,
    ForkLink,
    LeaseOutcome,
    ThreadPage,
)
from ..store.base import (
    AppendEvents,
    CreateThread,
    Op,
    PutLease,
    PutThread,
)
from .base import (
    _UNSET,
    ACCOUNT_PLAN_RETRIES,
    MAX_DIRECTIVE,
    MAX_LEASE_TTL,
    MAX_LIST,
    MAX_TITLE,
    MIN_LEASE_TTL,
    PLAN_RETRIES,
    ServiceBase,
    _check_json_object,
    _check_len,
    _lease_check,
    decode_cursor,
    encode_cursor,
    log,
)


class ThreadRules(ServiceBase):
    """Thread rules: create, list, update and cancel threads, their chains and children, forks and run leases."""

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
