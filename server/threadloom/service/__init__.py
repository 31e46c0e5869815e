"""The service: every rule of threadloom, over any store.

Plain async Python with no MCP in sight: the MCP tools and the CLI are thin layers
over one :class:`ThreadService`. It validates input, enforces the status machine,
plans store operations with guards, and retries a plan when a concurrent change
won the race (the store re-checks each guard inside its transaction).

Where each rule lives: base.py (retries, limits, shared helpers), threads.py (create,
update, list, chains, children, forks, leases), events.py (append, read, search),
handoff.py (the handoff policy and resume), integrity.py (verification), operator.py
(delete, import, reindex, sweep) and waiting.py (wait_threads, read_events' wait).
"""

from __future__ import annotations

from .base import (
    ACCOUNT_PLAN_RETRIES,
    ANCHORED_INLINE_LINES,
    MAX_DIRECTIVE,
    MAX_LEASE_TTL,
    MAX_LIST,
    MAX_METADATA_BYTES,
    MAX_PAGE,
    MAX_REASON,
    MAX_SUMMARY,
    MAX_TITLE,
    MIN_LEASE_TTL,
    PLAN_RETRIES,
    RACE_RULES,
    RESOURCE_PAGE,
    VERIFY_LAG_RETRIES,
    decode_cursor,
    encode_cursor,
)
from .events import EventRules
from .handoff import HandoffPolicy
from .integrity import IntegrityChecks
from .operator import OperatorJobs
from .threads import ThreadRules
from .waiting import MAX_READ_WAIT, MAX_WAIT_IDS, MAX_WAIT_TIMEOUT, Waiting, wait_for_events, wait_threads


class ThreadService(ThreadRules, EventRules, HandoffPolicy, IntegrityChecks, OperatorJobs, Waiting):
    """Owns the rules (validation, status machine, idempotency, sweeping) over one store."""


__all__ = [
    "ThreadService",
    "MAX_READ_WAIT",
    "MAX_WAIT_IDS",
    "MAX_WAIT_TIMEOUT",
    "wait_for_events",
    "wait_threads",
    "MAX_TITLE",
    "MAX_DIRECTIVE",
    "MAX_METADATA_BYTES",
    "MAX_PAGE",
    "MAX_LIST",
    "PLAN_RETRIES",
    "MAX_SUMMARY",
    "MAX_REASON",
    "RACE_RULES",
    "ACCOUNT_PLAN_RETRIES",
    "VERIFY_LAG_RETRIES",
    "RESOURCE_PAGE",
    "ANCHORED_INLINE_LINES",
    "MIN_LEASE_TTL",
    "MAX_LEASE_TTL",
    "encode_cursor",
    "decode_cursor",
]
