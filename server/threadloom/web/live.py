"""Server-Sent Events for the pages, fed by the service's wake hub (never a polling loop).

A thread page's stream sends each batch of newly committed events as rendered HTML
(``event: events``), the thread's status and counters when they change (``event:
thread``), and, once every event of a continued thread was sent, where the chain goes on
(``event: hop``), after which the page opens the next thread. The threads page's stream
sends a row's new HTML whenever one of the watched threads changes (``event: row``).
Commits by other processes on the same root or database arrive through the hub's
external watch, so an append anywhere shows within milliseconds.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio

from ..errors import NotFoundError
from ..models import Thread
from ..scope import current_scope
from ..service import ThreadService

KEEPALIVE = 15.0
"""Seconds of silence after which a comment line is sent (keeps proxies from closing)."""
PAGE = 200


def sse(event: str, data: str, *, id: str | None = None) -> bytes:
    """One SSE message (every line of ``data`` gets its own ``data:`` field)."""
    lines = [f"event: {event}"]
    if id is not None:
        lines.append(f"id: {id}")
    lines += [f"data: {line}" for line in data.split("\n")]
    return ("\n".join(lines) + "\n\n").encode()


class SSEResponse:
    """An ASGI ``text/event-stream`` response that stops as soon as the client goes away."""

    def __init__(self, stream: AsyncIterator[bytes], headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        self.stream = stream
        self.headers = list(headers)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                    (b"x-accel-buffering", b"no"),
                    *self.headers,
                ],
            }
        )
        async with anyio.create_task_group() as tg:

            async def watch_disconnect() -> None:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(watch_disconnect)
            try:
                async for chunk in self.stream:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:
                pass  # the client went away mid-send
            finally:
                tg.cancel_scope.cancel()


async def thread_stream(
    service: ThreadService,
    thread_id: str,
    after_seq: int,
    render_events: Callable[[list[dict[str, Any]]], str],
    thread_info: Callable[[Thread], dict[str, Any]],
) -> AsyncIterator[bytes]:
    """Events of ``thread_id`` after ``after_seq`` as they commit; a ``hop`` ends the stream."""
    sub = service.watch([thread_id])  # registered before the first read: nothing falls between
    try:
        yield b": live\n\n"
        after, last_info = after_seq, None
        while True:
            try:
                thread = await service.get_thread(thread_id)  # first: its count bounds the reads below
            except NotFoundError:
                yield sse("gone", json.dumps({"thread_id": thread_id}))
                return
            while True:
                page = await service.read_events(thread_id, after_seq=after, limit=PAGE)
                if page.events:
                    yield sse("events", render_events(page.events), id=str(page.next_after_seq))
                after = page.next_after_seq
                if not page.has_more:
                    break
            info = thread_info(thread)
            if info != last_info:
                yield sse("thread", json.dumps(info))
                last_info = info
            if after >= thread.event_count and thread.continuation_thread_id:
                yield sse("hop", json.dumps({"thread_id": thread.continuation_thread_id}))
                return
            with anyio.move_on_after(KEEPALIVE) as idle:
                await sub.next()
            if idle.cancelled_caught:
                yield b": ping\n\n"
    finally:
        sub.close()


async def rows_stream(
    service: ThreadService,
    thread_ids: list[str],
    render_row: Callable[[Thread], str],
    parent_id: str | None = None,
) -> AsyncIterator[bytes]:
    """A row's new HTML each time one of ``thread_ids`` changes (and, with ``parent_id``,
    whenever a child of that thread is created or changes: new children get rows too)."""
    sub = service.watch(thread_ids, [f"parent:{parent_id}"] if parent_id else [])
    try:
        yield b": live\n\n"
        while True:
            with anyio.move_on_after(KEEPALIVE) as idle:
                updates = await sub.next()
            if idle.cancelled_caught:
                yield b": ping\n\n"
                continue
            scope = current_scope()  # the token's agents: the hub pushes every watched thread
            for tid, thread in sorted(updates.items()):
                if not scope.allows(thread.agent_id):
                    continue
                row = {"thread_id": tid, "parent_id": thread.parent_id, "html": render_row(thread)}
                yield sse("row", json.dumps(row))
    finally:
        sub.close()
