"""The handoff policy: when a thread hands off (its threshold), explicit handoffs, and resuming a finished chain."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import replace as dc_replace
from datetime import UTC, datetime

import anyio

from .. import chain, visibility
from ..chain import ContinuationPlan
from ..errors import (
    IntegrityError,
    InvalidInputError,
    InvalidStateError,
    LimitExceededError,
    ThreadloomError,
)
from ..messages import check_format, format_messages, rebuild_messages
from ..models import (
    TERMINAL,
    Status,
    Thread,
    canonical_json,
    iso,
)
from ..results import (
    AppendOutcome,
    HandoffInfo,
    ResumeOutcome,
)
from ..store.base import (
    AppendEvents,
    CommitResult,
    CreateThread,
    Op,
)
from .base import (
    MAX_REASON,
    MAX_SUMMARY,
    ServiceBase,
    _check_len,
    _lease_check,
    log,
)


class HandoffPolicy(ServiceBase):
    """The handoff policy: when a thread hands off (its threshold), explicit handoffs, and resuming a finished chain."""

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

            def ops_of(plan: ContinuationPlan) -> list[Op]:
                ops = [
                    dc_replace(op, lease=_lease_check(owner))
                    if isinstance(op, AppendEvents) and op.thread_id == thread_id
                    else op
                    for op in plan.ops
                ]
                if thread.lease is not None and thread.lease.owner == owner:  # the run goes on there
                    carried = thread.lease.model_copy(
                        update={
                            "expires_at": iso(datetime.fromtimestamp(time.time() + thread.lease.ttl, UTC))
                        }
                    )
                    ops = [
                        CreateThread(op.thread.model_copy(update={"lease": carried}))
                        if isinstance(op, CreateThread)
                        else op
                        for op in ops
                    ]
                return ops

            if attempt == 0:  # an edited transcript must not become the new thread's context
                plan, res = await self._verified_commit(thread_id, planning, ops_of, force=force)
            else:
                plan = await planning
                res = await self.store.commit(ops_of(plan))
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

    async def _verified_commit(
        self,
        thread_id: str,
        planning: Awaitable[ContinuationPlan],
        ops_of: Callable[[ContinuationPlan], list[Op]],
        *,
        force: bool,
    ) -> tuple[ContinuationPlan, CommitResult]:
        """Plan and commit once the thread verified (ensure_verified), the check running
        beside both: the plan's reads, and the commit's work up to what the store holds back
        until ``gate`` passes (``Store.commit_after``: PostgreSQL writes the new thread
        meanwhile and touches the old one, and commits, only after it). A failed or
        unfinished verification wins over anything the plan or the commit raised, and
        nothing is committed then."""
        done = anyio.Event()
        outcome: dict[str, BaseException | bool] = {}

        async def verify() -> None:
            try:
                await self.ensure_verified(thread_id, force=force)
                outcome["ok"] = True
            except ThreadloomError as exc:
                outcome["error"] = exc
            finally:
                done.set()

        async def gate() -> None:
            await done.wait()
            if outcome.get("ok") is not True:
                error = outcome.get("error")
                if isinstance(error, BaseException):
                    raise error
                raise IntegrityError(
                    f"thread {thread_id}: the verification before the handoff did not finish",
                    rule="integrity_failed",
                )

        failed: list[ThreadloomError] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(verify)
            try:
                plan = await planning
                res = await self.store.commit_after(ops_of(plan), gate)
            except ThreadloomError as exc:
                failed.append(exc)
        if failed:  # raised outside the task group, which would wrap it
            error = outcome.get("error")
            raise error if isinstance(error, ThreadloomError) else failed[0]
        return plan, res

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
