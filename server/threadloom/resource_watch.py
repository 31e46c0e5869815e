"""Resource subscriptions for MCP clients, fed by the service's wake hub.

Both protocol eras the SDK speaks: ``resources/subscribe`` / ``resources/unsubscribe``
(handshake era; notifications go out on the connection's standalone stream) and
``subscriptions/listen`` (2026-07-28; the SDK's listen handler filters by URI, this
registry only learns which URIs are listened to). One hub subscription per server
watches every subscribed thread, so a commit by any process on the same root or
database (the hub's external watch) sends ``notifications/resources/updated``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from mcp.server.subscriptions import ResourceUpdated, SubscriptionBus
from mcp.shared.exceptions import MCPError
from mcp.types import (
    INVALID_PARAMS,
    EmptyResult,
    SubscribeRequestParams,
    SubscriptionsListenRequestParams,
    UnsubscribeRequestParams,
)

from .errors import InvalidInputError, NotFoundError, ThreadloomError
from .models import Thread, check_thread_id
from .service import ThreadService
from .wake import Subscription

log = logging.getLogger("threadloom.subscriptions")

Kind = Literal["manifest", "events", "children", "chain"]
_THREAD_URI = re.compile(r"^thread://([^/?#]*)/(thread\.json|transcript|transcript\.md|messages|children)$")
_CHAIN_URI = re.compile(r"^chain://([^/?#]*)$")
_KINDS: dict[str, Kind] = {
    "thread.json": "manifest",
    "transcript": "events",
    "transcript.md": "events",
    "messages": "events",
    "children": "children",
}
SUBSCRIBABLE = (
    "thread://{id}/transcript, thread://{id}/thread.json, thread://{id}/messages, "
    "thread://{id}/children, chain://{id}"
)


@dataclass(frozen=True, slots=True)
class Target:
    """What a subscribed URI is made of: one thread (``manifest``, ``events``), a thread's
    children, or the chain of a thread."""

    uri: str
    kind: Kind
    thread_id: str


def parse_uri(uri: str) -> Target:
    """The target of a subscribable resource URI.

    Raises:
        InvalidInputError: ``resource_uri`` for a URI that is not subscribable, or
            ``thread_id_format`` for a malformed id.
    """
    m = _THREAD_URI.match(uri)
    if m:
        return Target(uri, _KINDS[m.group(2)], check_thread_id(m.group(1)))
    m = _CHAIN_URI.match(uri)
    if m:
        return Target(uri, "chain", check_thread_id(m.group(1)))
    raise InvalidInputError(
        f"cannot subscribe to {uri!r:.200}: subscribable resources are {SUBSCRIBABLE}",
        rule="resource_uri",
    )


def _refusal(exc: ThreadloomError) -> MCPError:
    return MCPError(INVALID_PARAMS, f"[{exc.rule}] {exc.message}")


class ResourceWatch:
    """Which URIs are subscribed (per connection, or by listen streams) and their notifications."""

    def __init__(self, service: ThreadService, bus: SubscriptionBus) -> None:
        self._service = service
        self._bus = bus
        self._connections: dict[Any, set[str]] = {}  # SDK Connection -> URIs it subscribed
        self._listened: Counter[str] = Counter()  # URI -> open listen streams naming it
        self._targets: dict[str, Target] = {}
        self._chain_roots: dict[str, str] = {}  # chain URI -> its chain_root_id
        self._chain_members: dict[str, set[str]] = {}  # chain_root_id -> member thread ids
        self._event_counts: dict[str, int] = {}
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self.sent = 0  # notifications sent (for tests and metrics)

    # ---------------------------------------------------------------- requests

    async def check(self, uris: Iterable[str]) -> list[Target]:
        """Parse and check each URI names an existing thread; raise MCPError otherwise."""
        targets = []
        for uri in uris:
            try:
                target = parse_uri(uri)
                thread = await self._service.get_thread(target.thread_id)
            except NotFoundError as exc:
                raise MCPError(
                    INVALID_PARAMS,
                    f"[thread_not_found] cannot subscribe to {uri}: {exc.message}",
                ) from exc
            except ThreadloomError as exc:
                raise _refusal(exc) from exc
            if target.kind == "chain" and uri not in self._chain_roots:
                members = await self._service.chain_threads(target.thread_id)
                self._chain_roots[uri] = thread.chain_root_id
                self._chain_members.setdefault(thread.chain_root_id, set()).update(
                    m.thread_id for m in members
                )
            self._event_counts.setdefault(thread.thread_id, thread.event_count)
            targets.append(target)
        return targets

    async def subscribe(self, connection: Any, uri: str) -> None:
        """``resources/subscribe`` from ``connection`` (handshake era)."""
        (target,) = await self.check([uri])
        if connection not in self._connections:
            self._connections[connection] = set()
            stack = getattr(connection, "exit_stack", None)
            if stack is not None:  # forget the connection's subscriptions when it closes
                stack.callback(self.drop_connection, connection)
        self._connections[connection].add(uri)
        self._targets[uri] = target
        self._sync()

    def unsubscribe(self, connection: Any, uri: str) -> None:
        """``resources/unsubscribe``: idempotent (an unknown URI is not an error)."""
        uris = self._connections.get(connection)
        if uris is not None:
            uris.discard(uri)
        self._sync()

    def drop_connection(self, connection: Any) -> None:
        self._connections.pop(connection, None)
        self._sync()

    async def listen_open(self, uris: list[str]) -> None:
        """A ``subscriptions/listen`` stream naming ``uris`` opens (checked first)."""
        targets = await self.check(uris)
        for t in targets:
            self._listened[t.uri] += 1
            self._targets[t.uri] = t
        self._sync()

    def listen_close(self, uris: list[str]) -> None:
        for uri in uris:
            self._listened[uri] -= 1
            if self._listened[uri] <= 0:
                del self._listened[uri]
        self._sync()

    # ------------------------------------------------------------ the hub watch

    def _subscribed(self) -> set[str]:
        uris = set(self._listened)
        for subscribed in self._connections.values():
            uris |= subscribed
        return uris

    def _sync(self) -> None:
        """Make the hub watch exactly what the subscribed URIs are made of."""
        uris = self._subscribed()
        for uri in [u for u in self._targets if u not in uris]:
            del self._targets[uri]
            self._chain_roots.pop(uri, None)
        roots = set(self._chain_roots.values())
        for root in [r for r in self._chain_members if r not in roots]:
            del self._chain_members[root]
        ids: set[str] = set()
        keys: set[str] = set()
        for t in self._targets.values():
            if t.kind in ("manifest", "events"):
                ids.add(t.thread_id)
            elif t.kind == "children":
                keys.add(f"parent:{t.thread_id}")
        for root, members in self._chain_members.items():
            keys.add(f"chain:{root}")
            keys.update(f"fork:{m}" for m in members)
        for tid in [t for t in self._event_counts if t not in ids]:
            del self._event_counts[tid]
        if not ids and not keys:
            self._stop()
            return
        if self._sub is None:
            self._sub = self._service.watch(ids, keys)
            self._task = asyncio.get_running_loop().create_task(self._pump())
            return
        self._sub.unwatch(self._sub.thread_ids - ids, self._sub.keys - keys)
        self._sub.watch(ids - self._sub.thread_ids, keys - self._sub.keys)

    def _stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            sub.close()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    def close(self) -> None:
        self._connections.clear()
        self._listened.clear()
        self._targets.clear()
        self._stop()

    async def _pump(self) -> None:
        sub = self._sub
        assert sub is not None
        while True:
            updates = await sub.next()
            missed, sub.missed = sub.missed, False
            for uri in self._affected(updates, missed):
                await self._send(uri)

    def _affected(self, updates: dict[str, Thread], missed: bool) -> list[str]:
        """The subscribed URIs whose content these changed threads may have changed."""
        grown: set[str] = set()
        for tid, thread in updates.items():
            if tid in self._event_counts and self._event_counts[tid] != thread.event_count:
                self._event_counts[tid] = thread.event_count
                grown.add(tid)
            members = self._chain_members.get(thread.chain_root_id)
            if members is not None and tid not in members:  # a new thread of a watched chain
                members.add(tid)
                if self._sub is not None:
                    self._sub.watch(keys=[f"fork:{tid}"])
        out = []
        for uri, t in self._targets.items():
            if t.kind == "manifest":
                hit = t.thread_id in updates
            elif t.kind == "events":
                hit = t.thread_id in grown
            elif t.kind == "children":
                hit = missed or any(u.parent_id == t.thread_id for u in updates.values())
            else:
                root = self._chain_roots.get(uri)
                members = self._chain_members.get(root or "", set())
                hit = missed or any(
                    u.chain_root_id == root
                    or (u.forked_from is not None and u.forked_from.thread_id in members)
                    for u in updates.values()
                )
            if hit:
                out.append(uri)
        return out

    async def _send(self, uri: str) -> None:
        for connection, uris in list(self._connections.items()):
            if uri not in uris:
                continue
            try:
                await connection.send_resource_updated(uri)
                self.sent += 1
            except Exception as exc:  # a closed stream: the client went away
                log.debug("dropping the subscriptions of a closed connection: %s", exc)
                self.drop_connection(connection)
        if self._listened.get(uri):
            await self._bus.publish(ResourceUpdated(uri=uri))
            self.sent += 1


def serve_subscriptions(server: Any, watch: ResourceWatch) -> None:
    """Register ``resources/subscribe`` / ``unsubscribe`` on an MCPServer (which has none, so the
    ``subscribe`` capability is declared in the handshake era) and wrap its
    ``subscriptions/listen`` handler so the watch learns the URIs of each stream."""
    low = server._lowlevel_server  # MCPServer offers no public way to add these handlers

    async def on_subscribe(ctx: Any, params: SubscribeRequestParams) -> EmptyResult:
        await watch.subscribe(
            ctx.session._connection, str(params.uri)
        )  # the connection, not the per-request proxy
        return EmptyResult()

    async def on_unsubscribe(ctx: Any, params: UnsubscribeRequestParams) -> EmptyResult:
        watch.unsubscribe(ctx.session._connection, str(params.uri))
        return EmptyResult()

    low.add_request_handler("resources/subscribe", SubscribeRequestParams, on_subscribe)
    low.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, on_unsubscribe)
    entry = low.get_request_handler("subscriptions/listen")
    if entry is None:
        return
    inner = entry.handler

    async def on_listen(ctx: Any, params: SubscriptionsListenRequestParams) -> Any:
        uris = [str(u) for u in params.notifications.resource_subscriptions or ()]
        await watch.listen_open(uris)
        try:
            return await inner(ctx, params)
        finally:
            watch.listen_close(uris)

    low.add_request_handler("subscriptions/listen", SubscriptionsListenRequestParams, on_listen)
