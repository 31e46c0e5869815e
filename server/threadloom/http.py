"""Streamable HTTP transport: the MCP app (and anything else served beside it) behind guards.

Every bind checks Host and Origin (DNS-rebinding protection, 421/403); binding anywhere
but loopback requires a token of at least 32 characters (refused at start-up otherwise);
whenever tokens are set every request must carry ``Authorization: Bearer <token>``, and
the token's agent scope travels with the request. See docs/security.md.
"""

from __future__ import annotations

from typing import Any

from .config import Settings
from .errors import InvalidInputError
from .http_guard import BearerGuard, BodyGuard, HostOriginGuard, HostPolicy, is_loopback, is_mcp_path
from .http_sessions import make_room_for_new_sessions
from .tokens import TokenTable, check_grants

SHUTDOWN_GRACE = 3.0
"""Seconds open streams (live pages, MCP GET streams) get to end when the server stops."""

__all__ = ["build_http_app", "check_bind", "guard_app", "host_policy", "is_loopback", "serve_http"]


def check_bind(settings: Settings) -> None:
    """Refuse a non-loopback bind without a token, and tokens that break the rules.

    Raises:
        InvalidInputError: ``http_token_required``, or a token rule (tokens.check_grants).
    """
    grants = settings.grants()
    loopback = is_loopback(settings.host)
    if not loopback and not grants:
        raise InvalidInputError(
            f"binding HTTP to {settings.host!r:.200} (not loopback) requires a bearer token: "
            "set THREADLOOM_TOKEN or pass --token (`threadloom token` prints a fresh one)",
            rule="http_token_required",
        )
    check_grants(grants, loopback=loopback)


def host_policy(settings: Settings) -> HostPolicy:
    """The Host names and Origins this bind answers to."""
    return HostPolicy.for_bind(settings.host, settings.allowed_hosts, settings.allowed_origins)


def guard_app(app: Any, settings: Settings, policy: HostPolicy | None = None) -> Any:
    """``app`` behind the Host/Origin, bearer-token and body guards (every path)."""
    grants = settings.grants()
    inner = BodyGuard(app, max_bytes=settings.max_request_bytes, timeout=settings.http_body_timeout)
    if grants:
        inner = BearerGuard(inner, TokenTable(grants))
    return HostOriginGuard(inner, policy or host_policy(settings))


class PathRouter:
    """``/mcp`` (and the lifespan) to the MCP app, every other path to the web inspector."""

    def __init__(self, mcp_app: Any, web_app: Any) -> None:
        self.mcp_app = mcp_app
        self.web_app = web_app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan" or is_mcp_path(scope.get("path", "")):
            await self.mcp_app(scope, receive, send)
        else:
            await self.web_app(scope, receive, send)


def build_http_app(server: Any, settings: Settings, web: Any = None) -> Any:
    """The ASGI app serving MCP at ``/mcp`` (and ``web``, the inspector, at every other path), guarded."""
    policy = host_policy(settings)
    app = server.streamable_http_app(
        host=settings.host,
        max_request_body_size=settings.max_request_bytes,
        session_idle_timeout=settings.http_session_idle_timeout,
        max_sessions=settings.http_max_sessions,
        transport_security=policy.sdk_settings(),
    )
    make_room_for_new_sessions(server.session_manager)
    scope_mw = getattr(server, "threadloom_scope", None)
    if scope_mw is not None and settings.grants():
        scope_mw.tokens_required = True  # a request that lost its token's scope sees nothing
    if web is not None:
        app = PathRouter(app, web)
    return guard_app(app, settings, policy)


async def serve_http(server: Any, settings: Settings, web: Any = None) -> None:
    """Run uvicorn on ``settings.host:port`` until cancelled (``server`` None: ``web`` alone)."""
    import uvicorn

    from .http_protocol import timed_h11_protocol

    check_bind(settings)
    app = build_http_app(server, settings, web) if server is not None else guard_app(web, settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        lifespan="on" if server is not None else "off",
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
        http=timed_h11_protocol(settings.http_header_timeout),
        ws="none",
    )
    await uvicorn.Server(config).serve()
