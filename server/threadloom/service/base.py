"""The service's shared ground: its store and settings, retries, limits and the helpers every rule uses.

The rules themselves live beside this module: threads.py, events.py, handoff.py,
integrity.py, operator.py and waiting.py, each a mixin over :class:`ServiceBase`.
"""

from __future__ import annotations

import base64
import json
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

import anyio

from .. import chain, visibility
from ..config import Settings
from ..errors import (
    ConflictError,
    InvalidInputError,
    InvalidStateError,
    ThreadContinuedError,
)
from ..models import (
    TERMINAL,
    Status,
    StatusEvent,
    Thread,
    canonical_json,
    check_owner,
    check_thread_id,
    event_payload,
)
from ..semantic import SemanticIndex
from ..store.base import (
    AppendEvents,
    LeaseCheck,
    NewEvent,
    Op,
    PutThread,
    Store,
)
from ..wake import Subscription, WakeHub

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


class ServiceBase:
    """The store, settings, wake hub and semantic index every rule works over."""

    def __init__(self, store: Store, settings: Settings | None = None) -> None:
        self.store = store
        self.settings = settings or Settings()
        self.hub = WakeHub(store)
        self.semantic = SemanticIndex(store, self.settings)

    @classmethod
    def for_settings(cls, settings: Settings, *, repair: bool = True, mirrors: bool = True) -> Self:
        """The service over the store ``settings`` name (``sqlite`` under the root, ``memory``
        or a ``postgresql://`` URL), to open with ``async with``: the layers above the service
        never build a store themselves.

        ``repair=False`` skips the start-up mirror repair (commands that only look, and
        ``doctor``, which must see drift before anything repairs it); ``mirrors=False`` keeps
        no mirror files (a scratch copy, as ``doctor --recover`` rehearses on).
        """
        from ..store import make_store

        return cls(make_store(settings, repair=repair, mirrors=mirrors), settings)

    @staticmethod
    def database_file(settings: Settings) -> Path | None:
        """The file that holds the data of ``settings``' root (sqlite; None for other stores):
        the CLI refuses a root without one instead of creating it."""
        from ..store import database_file

        return database_file(settings)

    async def open(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        self.hub.close()
        await self.store.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

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

    async def get_thread(self, thread_id: str, *, children: bool = True) -> Thread:
        """The thread's manifest and counters, with its children counted by status
        (``children=False``: without them, one read less)."""
        thread = await self.store.get_thread(check_thread_id(thread_id))
        if not visibility.allows(thread):
            raise visibility.not_found(thread_id)
        if not children:
            return thread
        counts = await visibility.child_counts(self.store, thread_id)
        return thread.model_copy(update={"children": counts})

    def watch(
        self, thread_ids: Sequence[str] | set[str] = (), keys: Sequence[str] | set[str] = ()
    ) -> Subscription:
        """Watch threads (and relation keys, see wake.thread_keys) for commits by any process;
        the caller closes the subscription."""
        return self.hub.open(thread_ids, keys)

    async def chain_end(self, thread: Thread) -> Thread:
        """Follow continuation links to the chain's newest thread (chain.resolve_end: a cycle
        or a missing link stops the walk there)."""
        end, _problem = await chain.resolve_end(self.store, thread)
        return end

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
