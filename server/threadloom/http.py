"""Streamable HTTP transport: the MCP app behind an optional bearer-token guard.

Binding anywhere but loopback requires a token (refused at start-up otherwise);
whenever a token is set every request must carry ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from typing import Any

from .errors import InvalidInputError

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve a non-loopback address without a token."""
    if not is_loopback(host) and not token:
        raise InvalidInputError(
            f"binding HTTP to {host!r} (not loopback) requires a bearer token: "
            "set THREADLOOM_TOKEN or pass --token",
            rule="http_token_required",
        )


class BearerTokenMiddleware:
    """Pure ASGI middleware: 401 unless the request carries the expected bearer token."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan and friends pass through
            await self.app(scope, receive, send)
            return
        got = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                got = value
                break
        if not hmac.compare_digest(got, self._expected):
            body = json.dumps(
                {
                    "error": "unauthorized",
                    "message": "missing or wrong bearer token (Authorization: Bearer <token>)",
                }
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"www-authenticate", b'Bearer realm="threadloom"'),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def build_http_app(server: Any, *, host: str, token: str | None, max_request_bytes: int) -> Any:
    """The ASGI app serving MCP at ``/mcp`` (guarded when a token is set)."""
    app = server.streamable_http_app(host=host, max_request_body_size=max_request_bytes)
    return BearerTokenMiddleware(app, token) if token else app


async def serve_http(server: Any, *, host: str, port: int, token: str | None, max_request_bytes: int) -> None:
    """Run uvicorn on ``host:port`` until cancelled."""
    import uvicorn

    check_bind(host, token)
    app = build_http_app(server, host=host, token=token, max_request_bytes=max_request_bytes)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve()
