"""Retention (``threadloom gc``): which whole chains are old and finished enough to delete.

The unit is the chain, never a thread: a chain qualifies when its end's status is one of
the chosen statuses, every member has ended (none created, running or paused) and every
member was last updated before the cutoff. A chain whose threads have children that do
not go in the same run is kept, so no child is left pointing at a deleted parent.
Deleting goes through the service's ``delete_threads`` (rows, mirrors and index rows), chain
by chain.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .errors import InvalidInputError, InvalidStateError
from .lineage import chain_end, group_chains
from .models import ENDED, TERMINAL, Status, Thread, iso, utc_now
from .numbers import quote
from .service import ThreadService

DEFAULT_GC_STATUSES = frozenset({Status.COMPLETED, Status.ERROR, Status.CANCELLED})
AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s`` as a timedelta.

    Raises:
        InvalidInputError: anything else (a bare number is refused: its unit would be a guess).
    """
    m = AGE_RE.fullmatch(text.lower())
    if not m:
        raise InvalidInputError(
            f"--older-than must be a number with a unit s, m, h, d or w (e.g. 30d, 12h); got {quote(text)}",
            rule="age_format",
        )
    return timedelta(**{AGE_UNITS[m.group(2)]: float(m.group(1))})


def parse_statuses(text: str) -> frozenset[Status]:
    """A comma-separated list of terminal statuses (completed, error, cancelled)."""
    out = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            status = Status(part)
        except ValueError:
            status = None
        if status not in TERMINAL:
            raise InvalidInputError(
                f"--status takes completed, error and/or cancelled (a chain's end status); got {quote(part)}",
                rule="status_value",
            )
        out.add(status)
    if not out:
        raise InvalidInputError("--status is empty", rule="status_value")
    return frozenset(out)


@dataclass
class ChainVerdict:
    """One chain, whether it goes, and why not when it stays."""

    chain_root_id: str
    threads: list[Thread]
    delete: bool
    reason: str = ""

    @property
    def end(self) -> Thread:
        return chain_end(self.threads)

    def as_dict(self) -> dict[str, Any]:
        return {
            "chain_root_id": self.chain_root_id,
            "thread_ids": [t.thread_id for t in self.threads],
            "end_status": self.end.status.value,
            "last_updated": max(t.updated_at for t in self.threads),
            "events": sum(t.event_count for t in self.threads),
            "title": self.threads[0].title,
            "agent_id": self.threads[0].agent_id,
            **({} if self.delete else {"kept_because": self.reason}),
        }


@dataclass
class GcPlan:
    """What a gc run deletes (whole chains) and, for the chains it keeps, why."""

    cutoff: str
    statuses: frozenset[Status]
    doomed: list[ChainVerdict] = field(default_factory=list)
    kept: list[ChainVerdict] = field(default_factory=list)

    @property
    def thread_ids(self) -> list[str]:
        return [t.thread_id for c in self.doomed for t in c.threads]


def _verdict(root: str, members: list[Thread], cutoff: str, statuses: frozenset[Status]) -> ChainVerdict:
    end = chain_end(members)
    if end.status not in statuses:
        return ChainVerdict(root, members, False, f"its end {end.thread_id} is {end.status.value}")
    active = [t for t in members if t.status not in ENDED]
    if active:
        return ChainVerdict(root, members, False, f"thread {active[0].thread_id} is {active[0].status.value}")
    recent = [t for t in members if t.updated_at >= cutoff]
    if recent:
        return ChainVerdict(
            root, members, False, f"thread {recent[0].thread_id} was updated at {recent[0].updated_at}"
        )
    return ChainVerdict(root, members, True)


async def plan_gc(
    service: ThreadService,
    older_than: timedelta,
    statuses: frozenset[Status] = DEFAULT_GC_STATUSES,
    *,
    now: datetime | None = None,
) -> GcPlan:
    """Decide which chains go; nothing is deleted here."""
    cutoff = iso((now or utc_now()) - older_than)
    threads = await service.all_threads()
    chains = group_chains(threads)
    verdicts = {root: _verdict(root, members, cutoff, statuses) for root, members in chains.items()}
    chain_of = {t.thread_id: t.chain_root_id for t in threads}
    children: dict[str, set[str]] = {}  # chain root -> chain roots of its members' children
    for t in threads:
        if t.parent_id and t.parent_id in chain_of and chain_of[t.parent_id] != t.chain_root_id:
            children.setdefault(chain_of[t.parent_id], set()).add(t.chain_root_id)
    changed = True
    while changed:  # a kept child keeps its parent's chain (and so on upwards)
        changed = False
        for root, v in verdicts.items():
            if v.delete:
                kept = [c for c in children.get(root, ()) if not verdicts[c].delete]
                if kept:
                    v.delete, v.reason = False, f"child chain {kept[0]} stays"
                    changed = True
    plan = GcPlan(cutoff, statuses)
    for v in sorted(verdicts.values(), key=lambda v: (v.threads[0].created_at, v.chain_root_id)):
        (plan.doomed if v.delete else plan.kept).append(v)
    return plan


async def run_gc(
    service: ThreadService, plan: GcPlan, *, progress: Callable[[int], None] = lambda n: None
) -> tuple[int, list[str]]:
    """Delete the plan's chains, each in one store call.

    A chain that changed since the plan (a member was added or updated, e.g. resumed) is
    skipped. Returns (threads deleted, chain roots skipped).
    """
    deleted, skipped = 0, []
    for chain in plan.doomed:
        now = await service.chain_members(chain.chain_root_id)
        before = {(t.thread_id, t.updated_at) for t in chain.threads}
        if {(t.thread_id, t.updated_at) for t in now} != before:
            skipped.append(chain.chain_root_id)
        else:
            try:
                outcome = await service.delete_threads([t.thread_id for t in chain.threads], chain=True)
            except InvalidStateError:  # a member started again since the look above
                skipped.append(chain.chain_root_id)
            else:
                deleted += len(outcome.deleted)
        progress(len(chain.threads))
    return deleted, skipped
