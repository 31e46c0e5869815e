"""``wait_threads``: block until threads end, following continuation chains, woken by commits.

Each requested id is resolved along ``continuation_thread_id`` links to the thread that
carries the work now; a wait is over for that id when its resolved thread is terminal
(completed, error, cancelled). Nothing polls: the wake hub pushes fresh manifests.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal

import anyio

from ..errors import InvalidInputError, NotFoundError
from ..models import TERMINAL, Status, Thread, check_thread_id
from ..numbers import quote
from ..results import WaitItem, WaitResult
from ..visibility import keep_map
from .base import ServiceBase

MAX_WAIT_IDS = 1000
MAX_WAIT_TIMEOUT = 86_400.0
MAX_READ_WAIT = 300.0
"""Longest ``read_events(wait=...)`` in seconds: under the request timeouts of common MCP
clients; a caller that wants longer calls again with the same ``after_seq``."""

Progress = Callable[[int, int, str], Awaitable[None]]


def _item(requested: str, thread: Thread) -> WaitItem:
    done = thread.status in TERMINAL
    return WaitItem(
        thread_id=requested,
        resolved_thread_id=thread.thread_id,
        status=thread.status,
        status_reason=thread.status_reason,
        done=done,
        result=thread.result,
        outputs=thread.outputs,
        cost=thread.cost,
    )


async def wait_threads(
    service: ServiceBase,
    thread_ids: Sequence[str],
    *,
    mode: Literal["all", "any"] = "all",
    timeout: float | None = None,
    on_progress: Progress | None = None,
) -> WaitResult:
    """Wait until all (or any) of ``thread_ids`` ended; ``timeout=0`` only looks.

    Raises:
        InvalidInputError: bad ids, mode or timeout (before any waiting).
        NotFoundError: an id names no thread (before any waiting).
    """
    if mode not in ("all", "any"):
        raise InvalidInputError(f"mode must be 'all' or 'any'; got {quote(mode)}", rule="wait_mode")
    if not isinstance(thread_ids, (list, tuple)) or not thread_ids:
        raise InvalidInputError("thread_ids must be a non-empty list of thread ids", rule="wait_ids_empty")
    if len(thread_ids) > MAX_WAIT_IDS:
        raise InvalidInputError(
            f"wait_threads takes at most {MAX_WAIT_IDS} thread ids; got {len(thread_ids)}",
            rule="wait_ids_count",
        )
    timeout = service.settings.wait_default_timeout if timeout is None else timeout
    if not (0 <= timeout <= MAX_WAIT_TIMEOUT):
        raise InvalidInputError(
            f"timeout must be between 0 and {MAX_WAIT_TIMEOUT:.0f} seconds; got {timeout}",
            rule="wait_timeout",
        )
    requested = list(dict.fromkeys(check_thread_id(t, field="thread_ids[]") for t in thread_ids))
    started = time.monotonic()

    async with service.hub.subscribe(requested) as sub:  # registered before the first read: no lost wake
        found = keep_map(await service.store.get_threads(requested))  # another agent's: missing
        missing = [t for t in requested if t not in found]
        if missing:
            raise NotFoundError(
                f"thread_ids name threads that do not exist: {missing}", rule="thread_not_found"
            )
        resolved: dict[str, Thread] = {}
        for rid in requested:
            end = await service.chain_end(found[rid])
            resolved[rid] = end
        sub.watch(t.thread_id for t in resolved.values())
        # read the chain ends again now that they are watched: a change in between is not lost
        again = await service.store.get_threads([t.thread_id for t in resolved.values()])
        resolved = {rid: again.get(t.thread_id, t) for rid, t in resolved.items()}

        def finished() -> int:
            return sum(1 for t in resolved.values() if t.status in TERMINAL)

        def settled() -> bool:
            n = finished()
            return n == len(requested) if mode == "all" else n > 0

        last_reported = -1

        async def report() -> None:
            nonlocal last_reported
            n = finished()
            if on_progress is not None and n != last_reported:
                last_reported = n
                await on_progress(n, len(requested), f"{n} of {len(requested)} threads finished")

        await report()
        if not settled() and timeout > 0:
            with anyio.move_on_after(timeout):
                while not settled():
                    updates = await sub.next()
                    for rid, current in list(resolved.items()):
                        fresh = updates.get(current.thread_id)
                        if fresh is None:
                            continue
                        if fresh.status == Status.CONTINUED:
                            end = await service.chain_end(fresh)
                            sub.watch([end.thread_id])
                            fresh = await service.store.get_thread(end.thread_id)  # after watching
                        resolved[rid] = fresh
                    await report()

    items = [_item(rid, resolved[rid]) for rid in requested]
    is_settled = settled()
    return WaitResult(
        mode=mode,
        settled=is_settled,
        threads=items,
        done=[i.thread_id for i in items if i.done],
        timed_out=[] if is_settled else [i.thread_id for i in items if not i.done],
        waited_ms=round((time.monotonic() - started) * 1000, 1),
    )


async def wait_for_events(service: ServiceBase, thread_id: str, after_seq: int, timeout: float) -> bool:
    """Wait until the thread holds an event past ``after_seq`` (True) or ``timeout`` passed (False).

    Woken by the wake hub (commits of this process and of others), never by polling.

    Raises:
        NotFoundError: the thread does not exist.
    """
    async with service.hub.subscribe([thread_id]) as sub:  # watch first: a commit in between is not lost
        thread = await service.store.get_thread(thread_id)
        if thread.event_count > after_seq:
            return True
        with anyio.move_on_after(timeout):
            while True:
                fresh = (await sub.next()).get(thread_id)
                if fresh is not None and fresh.event_count > after_seq:
                    return True
    return False


class Waiting(ServiceBase):
    """wait_threads as a service method."""

    async def wait_threads(
        self,
        thread_ids: Sequence[str],
        *,
        mode: str = "all",
        timeout: float | None = None,
        on_progress: Callable[[int, int, str], Awaitable[None]] | None = None,
    ) -> WaitResult:
        """Wait until all or any of the threads ended (following chains); see :func:`wait_threads`."""
        return await wait_threads(self, thread_ids, mode=mode, timeout=timeout, on_progress=on_progress)
