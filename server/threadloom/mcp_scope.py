"""The agent scope of each MCP request, handed to the service.

Over HTTP, :class:`~threadloom.http_guard.BearerGuard` leaves the scope of the request's
token in the ASGI scope; the SDK hands the request to its handlers on
``ctx.request``. This middleware (on every request and notification, tools, resources
and subscriptions alike) serves the request inside
:func:`~threadloom.scope.acting_as` that scope, so the service enforces it on every
call. Without an HTTP request (stdio, in-process clients) the caller is unrestricted.
"""

from __future__ import annotations

from typing import Any

from .http_guard import SCOPE_KEY
from .scope import EVERY_AGENT, NO_AGENT, AgentScope, acting_as

__all__ = ["AgentScopeMiddleware", "install_scope_middleware"]


class AgentScopeMiddleware:
    """Serve each MCP request in the agent scope its HTTP request was granted."""

    def __init__(self) -> None:
        self.tokens_required = False
        """Set when every HTTP request must carry a token's scope: one without it sees nothing."""

    def scope_of(self, ctx: Any) -> AgentScope:
        asgi = getattr(getattr(ctx, "request", None), "scope", None)
        if not isinstance(asgi, dict):
            return EVERY_AGENT  # no HTTP request: stdio or an in-process client
        granted = asgi.get(SCOPE_KEY)
        if isinstance(granted, AgentScope):
            return granted
        return NO_AGENT if self.tokens_required else EVERY_AGENT

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        with acting_as(self.scope_of(ctx)):
            return await call_next(ctx)


def install_scope_middleware(server: Any) -> AgentScopeMiddleware:
    """Add the middleware to an MCPServer (innermost, after the SDK's own) and return it."""
    middleware = AgentScopeMiddleware()
    server._lowlevel_server.middleware.append(middleware)
    server.threadloom_scope = middleware
    return middleware
