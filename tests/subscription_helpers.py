"""Receiving ``notifications/resources/updated`` through a real client, in either protocol era.

Handshake era (``mode="legacy"``): ``resources/subscribe`` and the client's message handler.
2026-07-28 (the default mode): one ``subscriptions/listen`` stream per subscribed set.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
from mcp import Client
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.types import ResourceUpdatedNotification

WAIT = 20.0  # seconds an expected notification may take at most (a broken build, not a slow one)


class Updates:
    """The URIs of resource-updated notifications, in arrival order."""

    def __init__(self) -> None:
        self._send, self._recv = anyio.create_memory_object_stream[str](1000)

    async def handler(self, message: Any) -> None:
        """A Client ``message_handler`` (handshake era)."""
        if isinstance(message, ResourceUpdatedNotification):
            self._send.send_nowait(str(message.params.uri))

    def handler_for(self, mode: str) -> Any:
        """The message handler to give a client in ``mode``: on 2026-07-28 the listen stream
        delivers the updates (the SDK also tees them to a message handler: not counted twice)."""
        return self.handler if mode == "legacy" else None

    def put(self, uri: str) -> None:
        self._send.send_nowait(uri)

    async def next(self, timeout: float = WAIT) -> str:
        with anyio.fail_after(timeout):
            return await self._recv.receive()

    async def until(self, uri: str, timeout: float = WAIT) -> list[str]:
        """Every URI received up to and including the next ``uri``."""
        seen = []
        with anyio.fail_after(timeout):
            while True:
                got = await self._recv.receive()
                seen.append(got)
                if got == uri:
                    return seen

    def pending(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self._recv.receive_nowait())
            except anyio.WouldBlock:
                return out


async def legacy_subscribe(client: Client, uri: str) -> None:
    """``resources/subscribe`` (the SDK marks it deprecated: it is gone from 2026-07-28 on)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await client.subscribe_resource(uri)


async def legacy_unsubscribe(client: Client, uri: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await client.unsubscribe_resource(uri)


class Subscriber:
    """Subscribe and unsubscribe URIs on one client, whatever its protocol era."""

    def __init__(self, client: Client, mode: str, updates: Updates, tg: anyio.abc.TaskGroup) -> None:
        self.client, self.mode, self.updates, self._tg = client, mode, updates, tg
        self._streams: dict[str, AsyncExitStack] = {}

    async def subscribe(self, uri: str) -> None:
        if self.mode == "legacy":
            await legacy_subscribe(self.client, uri)
            return
        stack = AsyncExitStack()
        sub = await stack.enter_async_context(self.client.listen(resource_subscriptions=[uri]))

        async def pump() -> None:
            async for event in sub:
                self.updates.put(str(event.uri))

        scope = anyio.CancelScope()

        async def run() -> None:
            with scope:
                await pump()

        self._tg.start_soon(run)
        stack.callback(scope.cancel)
        self._streams[uri] = stack

    async def unsubscribe(self, uri: str) -> None:
        if self.mode == "legacy":
            await legacy_unsubscribe(self.client, uri)
            return
        await self._streams.pop(uri).aclose()

    async def close(self) -> None:
        for uri in list(self._streams):
            await self.unsubscribe(uri)


@asynccontextmanager
async def subscriber(client: Client, mode: str, updates: Updates) -> AsyncIterator[Subscriber]:
    async with anyio.create_task_group() as tg:
        sub = Subscriber(client, mode, updates, tg)
        try:
            yield sub
        finally:
            await sub.close()
            tg.cancel_scope.cancel()
