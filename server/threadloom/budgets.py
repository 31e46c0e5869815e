"""Hierarchical budgets and per-thread limits: the rules, as pure functions (docs/budgets.md).

Accounts of a thread (``Thread.usage`` and ``Thread.budget``) are changed only by
``PutUsage`` ops guarded by ``usage.version``, planned here from fresh reads and
committed together with the append or status change that caused them; a concurrent
change fails the guard and the service plans again. So two children racing for the
last of a budget can never both get it.

- **Reservation.** A child created with ``budget.max_spend = M`` reserves M from its
  nearest budgeted ancestor H (``reserved_from``): refused unless ``H.remaining >= M``;
  then ``H.reserved += M`` and the child's ``held = M``.
- **Spend.** Cost ``x`` reported in a ``result`` event of T adds to T's ``usage.spend``
  and to ``actual_spend`` of T and every ancestor. Each budgeted thread B on that path
  first spends what its holder holds for it: ``take = min(x, B.held)``;
  ``B.held -= take``; ``holder.reserved -= take``.
- **Remaining** is ``max_spend - actual_spend - reserved``. An append that leaves any
  budget on T's path over its ``max_spend`` (and made it grow) is recorded, and T moves
  to ``error`` with reason ``budget_exceeded``; the same for T's ``limits``.
- **Refund.** When B ends, its holder stops holding what B did not spend, except what
  B itself still holds for its own active children:
  ``keep = min(B.held, B.reserved)``; ``holder.reserved -= B.held - keep``; ``B.held = keep``.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import LimitExceededError, NotFoundError
from .models import BudgetState, Event, Exceeded, ResultEvent, Thread, Usage, UsageDelta
from .store.base import Op, PutUsage, Store

EPSILON = 1e-9
"""Slack for float comparisons of money (costs are decimal fractions)."""

Accounts = dict[str, tuple[Usage, BudgetState | None]]
"""thread_id -> (usage, budget) as a plan wants them written."""

__all__ = [
    "usage_delta",
    "participates",
    "plan_reservation",
    "apply_spend",
    "release_on_end",
    "continuation_budget",
    "put_ops",
    "ancestors",
    "end_ops",
]


def _r(x: float) -> float:
    return round(x, 9)


def _remaining(b: BudgetState) -> BudgetState:
    return b.model_copy(update={"remaining": _r(b.max_spend - b.actual_spend - b.reserved)})


def new_budget(max_spend: float, reserved_from: str | None = None) -> BudgetState:
    """The budget of a thread at creation (holding all of ``max_spend`` when reserved)."""
    held = max_spend if reserved_from else 0.0
    return BudgetState(max_spend=max_spend, remaining=max_spend, reserved_from=reserved_from, held=held)


def usage_delta(events: Sequence[Event]) -> UsageDelta | None:
    """What ``events`` add to usage: their ``result`` events' turns (1 each when not given),
    input + output tokens and cost. None when there is no ``result`` event."""
    results = [e for e in events if isinstance(e, ResultEvent)]
    if not results:
        return None
    return UsageDelta(
        turns=sum(1 if e.turns is None else e.turns for e in results),
        tokens=sum((e.input_tokens or 0) + (e.output_tokens or 0) for e in results),
        spend=_r(sum(e.cost or 0.0 for e in results)),
    )


def participates(thread: Thread) -> bool:
    """True when a result on ``thread`` needs a guarded plan (limits, a budget, or ancestors)."""
    return thread.parent_id is not None or thread.budget is not None or thread.limits is not None


# ---------------------------------------------------------------- reservation


def plan_reservation(
    ancestors: Sequence[Thread], max_spend: float
) -> tuple[BudgetState, Accounts, Thread | None]:
    """The new child's budget and the holder's accounts after reserving ``max_spend``.

    ``ancestors``: the child's parent first, then its parent, up to the root.

    Raises:
        LimitExceededError: the nearest budgeted ancestor has less than ``max_spend`` left.
    """
    holder = next((t for t in ancestors if t.budget is not None), None)
    if holder is None:
        return new_budget(max_spend), {}, None
    b = holder.budget
    assert b is not None
    if max_spend > b.remaining + EPSILON:
        raise LimitExceededError(
            f"budget.max_spend {max_spend:g} is more than thread {holder.thread_id} has left to reserve "
            f"(max_spend {b.max_spend:g}, actual_spend {b.actual_spend:g}, reserved {b.reserved:g}, "
            f"remaining {b.remaining:g}); ask for at most {max(b.remaining, 0):g} or create the child without a budget",
            rule="budget_oversubscribed",
        )
    nb = _remaining(b.model_copy(update={"reserved": _r(b.reserved + max_spend)}))
    return new_budget(max_spend, holder.thread_id), {holder.thread_id: (holder.usage, nb)}, holder


# ---------------------------------------------------------------------- spend


def apply_spend(path: Sequence[Thread], delta: UsageDelta) -> tuple[Accounts, Exceeded | None]:
    """Accounts of ``path`` (the appending thread, then its ancestors to the root) after it
    reported ``delta``, and the first budget or limit that this made go over, if any."""
    t = path[0]
    usage: dict[str, Usage] = {n.thread_id: n.usage for n in path}
    budget: dict[str, BudgetState | None] = {n.thread_id: n.budget for n in path}
    before = dict(budget)
    x = delta.spend
    usage[t.thread_id] = usage[t.thread_id].model_copy(
        update={
            "turns": t.usage.turns + delta.turns,
            "tokens": t.usage.tokens + delta.tokens,
            "spend": _r(t.usage.spend + x),
        }
    )
    for n in path:
        tid = n.thread_id
        usage[tid] = usage[tid].model_copy(update={"actual_spend": _r(usage[tid].actual_spend + x)})
        b = budget[tid]
        if b is None:
            continue
        b = b.model_copy(update={"actual_spend": _r(b.actual_spend + x)})
        take = min(x, b.held)
        if take > 0 and b.reserved_from in budget and budget[b.reserved_from] is not None:
            b = b.model_copy(update={"held": _r(b.held - take)})
            h = budget[b.reserved_from]
            assert h is not None
            budget[b.reserved_from] = h.model_copy(update={"reserved": _r(max(h.reserved - take, 0.0))})
        budget[tid] = b
    budget = {tid: (_remaining(b) if b else None) for tid, b in budget.items()}
    accounts: Accounts = {tid: (usage[tid], budget[tid]) for tid in usage}
    return accounts, _first_exceeded(t, path, accounts, before, delta)


def _first_exceeded(
    t: Thread,
    path: Sequence[Thread],
    accounts: Accounts,
    before: dict[str, BudgetState | None],
    delta: UsageDelta,
) -> Exceeded | None:
    usage = accounts[t.thread_id][0]
    lim = t.limits
    if lim is not None:
        for reason, limit, used, grew in (
            ("turns_limit_exceeded", lim.turns, usage.turns, delta.turns > 0),
            ("tokens_limit_exceeded", lim.tokens, usage.tokens, delta.tokens > 0),
            ("spend_limit_exceeded", lim.spend, usage.spend, delta.spend > 0),
        ):
            if limit is not None and grew and used > limit + EPSILON:
                what = reason.split("_")[0]
                return Exceeded(
                    reason=reason,  # type: ignore[arg-type]
                    thread_id=t.thread_id,
                    limit=limit,
                    used=used,
                    message=f"thread {t.thread_id} used {used:g} {what} against its limit of {limit:g}: "
                    "the events were recorded and the thread was moved to error",
                )
    for n in path:
        b, old = accounts[n.thread_id][1], before[n.thread_id]
        if b is None or old is None:
            continue
        committed, was = b.actual_spend + b.reserved, old.actual_spend + old.reserved
        if committed > b.max_spend + EPSILON and committed > was + EPSILON:
            whose = "its" if n.thread_id == t.thread_id else f"ancestor {n.thread_id}'s"
            return Exceeded(
                reason="budget_exceeded",
                thread_id=n.thread_id,
                limit=b.max_spend,
                used=_r(committed),
                message=f"thread {t.thread_id} went over {whose} budget: spent {b.actual_spend:g}"
                f"{f' + reserved {b.reserved:g}' if b.reserved else ''} of max_spend {b.max_spend:g}; "
                "the spend was recorded and the thread was moved to error",
            )
    return None


# -------------------------------------------------------------------- refund


def release_on_end(accounts: Accounts, thread: Thread, holder: Thread) -> Accounts:
    """``accounts`` with ``thread``'s unspent reservation returned to ``holder`` as it ends."""
    t_usage, tb = accounts.get(thread.thread_id, (thread.usage, thread.budget))
    h_usage, hb = accounts.get(holder.thread_id, (holder.usage, holder.budget))
    if tb is None or hb is None or tb.held <= 0:
        return accounts
    keep = min(tb.held, tb.reserved)
    release = tb.held - keep
    out = dict(accounts)
    out[thread.thread_id] = (t_usage, _remaining(tb.model_copy(update={"held": _r(keep)})))
    out[holder.thread_id] = (
        h_usage,
        _remaining(hb.model_copy(update={"reserved": _r(max(hb.reserved - release, 0.0))})),
    )
    return out


def continuation_budget(old: BudgetState) -> tuple[BudgetState, BudgetState]:
    """(old thread's budget, continuation's budget) for a handoff or resume.

    The continuation takes what the old thread had left, and the holder's reservation
    moves with it (the holder's ``reserved`` does not change); the old thread keeps only
    what it spent and still holds for its own children (its remaining becomes 0).
    """
    keep = min(old.held, old.reserved)
    rest = _r(max(old.max_spend - old.actual_spend - old.reserved, 0.0))
    new = BudgetState(
        max_spend=rest, remaining=rest, reserved_from=old.reserved_from, held=_r(max(old.held - keep, 0.0))
    )
    kept = _remaining(
        old.model_copy(update={"max_spend": _r(old.actual_spend + old.reserved), "held": _r(keep)})
    )
    return kept, new


def put_ops(accounts: Accounts, threads: Sequence[Thread]) -> list[Op]:
    """Guarded PutUsage ops writing ``accounts`` for each of ``threads`` whose accounts changed."""
    ops: list[Op] = []
    for t in threads:
        if t.thread_id not in accounts:
            continue
        usage, budget = accounts[t.thread_id]
        if usage == t.usage and budget == t.budget:
            continue
        ops.append(PutUsage(t.thread_id, usage, budget, expect_version=t.usage.version))
    return ops


# ------------------------------------------------------------------ planning


async def ancestors(store: Store, parent_id: str | None) -> list[Thread]:
    """Fresh reads of ``parent_id`` and its ancestors, nearest first (a cycle stops the walk)."""
    out: list[Thread] = []
    seen: set[str] = set()
    while parent_id is not None and parent_id not in seen:
        seen.add(parent_id)
        try:
            t = await store.get_thread(parent_id)
        except NotFoundError:
            break  # a deleted ancestor: the walk ends there
        out.append(t)
        parent_id = t.parent_id
    return out


async def end_ops(store: Store, thread: Thread, accounts: Accounts | None = None) -> list[Op]:
    """PutUsage ops that return ``thread``'s unspent reservation to its holder as it ends
    (none when it holds nothing); ``accounts`` are changes already planned in the same commit."""
    b = thread.budget
    if b is None or b.reserved_from is None or b.held <= 0:
        return []
    try:
        holder = await store.get_thread(b.reserved_from)
    except NotFoundError:
        return []
    planned = dict(accounts or {})
    released = release_on_end(planned, thread, holder)
    return put_ops(released, [thread, holder])
