"""ASGI layers in front of every HTTP path (``/mcp`` and the web pages alike).

Outermost first: :class:`HostOriginGuard` (DNS-rebinding protection: a Host this server
was not bound as gets 421, a foreign Origin 403), :class:`BearerGuard` (401 without a
configured token; the token's agent scope goes into the ASGI scope for the layers
below), :class:`BodyGuard` (the body must arrive whole within a deadline and a size).
Every refusal is a small JSON body ``{"error": rule, "message": ...}``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio

from .scope import EVERY_AGENT, AgentScope, acting_as
from .tokens import TokenTable

log = logging.getLogger("threadloom.http")

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SCOPE_KEY = "threadloom.agent_scope"
"""Where :class:`BearerGuard` leaves the request's :class:`AgentScope` in the ASGI scope."""
MAX_QUOTE = 200

Scope = dict[str, Any]


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    """True for the bind-everything addresses (0.0.0.0, ::, and the empty host)."""
    if host in ("", "*"):
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def agent_scope_of(scope: Scope) -> AgentScope:
    """The agent scope :class:`BearerGuard` granted this request (unrestricted without tokens)."""
    got = scope.get(SCOPE_KEY)
    return got if isinstance(got, AgentScope) else EVERY_AGENT


def _quote(value: str) -> str:
    return repr(value if len(value) <= MAX_QUOTE else value[:MAX_QUOTE] + "...")


def _host_name(value: str) -> str | None:
    """The host part of a Host header (``name``, ``name:port``, ``[v6]:port``), lower-cased."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1 :] if end > 0 else None
        if rest is None or (rest and not (rest.startswith(":") and _is_port(rest[1:]))):
            return None
        return value[1:end]
    name, sep, port = value.rpartition(":")
    if sep and _is_port(port) and ":" not in name:
        return name
    return value if ":" not in value else None


def _is_port(text: str) -> bool:
    return text.isdigit() and len(text) <= 5


def _bracket(name: str) -> str:
    return f"[{name}]" if ":" in name else name


@dataclass(frozen=True)
class HostPolicy:
    """The Host names and Origins one bind answers to (docs/security.md)."""

    names: frozenset[str]
    """Host names and addresses, lower-case, without port (any port is accepted)."""
    origins: frozenset[str]
    """Extra allowed origins, ``scheme://host[:port]`` lower-case; ``:*`` at the end: any port."""

    @classmethod
    def for_bind(
        cls, bind_host: str, extra_hosts: Iterable[str] = (), extra_origins: Iterable[str] = ()
    ) -> HostPolicy:
        """Names derived from the bind address, plus the configured ``allowed_hosts``/``origins``.

        Loopback binds answer to 127.0.0.1, localhost and ::1 (a browser may use any of
        them); another address answers to itself; a wildcard bind (0.0.0.0, ::) to the
        loopback names, this machine's host names and the addresses they resolve to.
        """
        bind = bind_host.strip().lower().strip("[]")
        names: set[str] = set()
        if bind in ("127.0.0.1", "localhost", "::1"):
            names |= LOOPBACK_NAMES
        elif is_wildcard(bind):
            names |= LOOPBACK_NAMES | _machine_names()
        else:
            names.add(bind)
        for h in extra_hosts:
            name = _host_name(h)
            if name:
                names.add(name)
        origins = {o.strip().lower().rstrip("/") for o in extra_origins if o.strip()}
        return cls(frozenset(names), frozenset(origins))

    def host_ok(self, host: str | None) -> bool:
        if not host:
            return False
        name = _host_name(host)
        return name is not None and name in self.names

    def origin_ok(self, origin: str | None) -> bool:
        """An absent Origin is a same-origin or non-browser request; a present one must match."""
        if origin is None:
            return True
        o = origin.strip().lower().rstrip("/")
        if o in self.origins:
            return True
        try:
            parts = urlsplit(o)
            host = parts.hostname
        except ValueError:
            return False
        if parts.scheme in ("http", "https") and host in self.names:
            return True
        base = f"{parts.scheme}://{_bracket(host)}" if host else None
        return base is not None and f"{base}:*" in self.origins

    def sdk_settings(self) -> Any:
        """The same policy as the MCP SDK's TransportSecuritySettings (checked again inside /mcp)."""
        from mcp.server.transport_security import TransportSecuritySettings

        hosts = sorted({f"{_bracket(n)}{p}" for n in self.names for p in ("", ":*")})
        origins = {
            f"{s}://{_bracket(n)}{p}" for n in self.names for s in ("http", "https") for p in ("", ":*")
        }
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=hosts,
            allowed_origins=sorted(origins | self.origins),
        )


def _machine_names() -> set[str]:
    """This machine's host names and the addresses they resolve to (for a wildcard bind)."""
    names: set[str] = set()
    for name in {socket.gethostname(), socket.getfqdn()}:
        if not name:
            continue
        names.add(name.lower())
        try:
            for info in socket.getaddrinfo(name, None):
                names.add(str(info[4][0]).lower())
        except OSError:
            pass
    return names


async def refuse(
    send: Any, status: int, rule: str, message: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """Answer ``status`` with ``{"error": rule, "message": message}`` and close the connection."""
    body = json.dumps({"error": rule, "message": f"[{rule}] {message}"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


class HostOriginGuard:
    """421 for a Host this bind does not answer to, 403 for a foreign Origin, on every path."""

    def __init__(self, app: Any, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan passes through
            await self.app(scope, receive, send)
            return
        host = _header(scope, b"host")
        origin = _header(scope, b"origin")
        problem = None
        if not self.policy.host_ok(host):
            problem = (
                421,
                "host_not_allowed",
                f"Host {_quote(host or '')} is not a name this server answers to (DNS-rebinding "
                "protection); the operator can add it with --allow-host",
            )
        elif not self.policy.origin_ok(origin):
            problem = (
                403,
                "origin_not_allowed",
                f"Origin {_quote(origin or '')} may not call this server (DNS-rebinding protection); "
                "the operator can add it with --allow-origin",
            )
        if problem is None:
            await self.app(scope, receive, send)
            return
        log.warning("refused %s %s: %s", scope.get("method", "websocket"), scope.get("path"), problem[2])
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await refuse(send, *problem)


def is_mcp_path(path: str) -> bool:
    """``/mcp`` and below: the MCP endpoint, where only the Authorization header counts."""
    return path == "/mcp" or path.startswith("/mcp/")


def is_public_web_path(path: str) -> bool:
    """Web paths served without a token: the token form and the inspector's own CSS/JS."""
    return path == "/login" or path.startswith("/static/")


def cookie_name(scope: Scope) -> str:
    """The inspector's token cookie for this server's port (cookies ignore ports, servers do not)."""
    server = scope.get("server") or (None, None)
    return f"threadloom_token_{server[1]}" if server[1] else "threadloom_token"


def cookie_token(scope: Scope) -> str | None:
    """The token the web inspector's cookie carries on this request, if any."""
    from http.cookies import SimpleCookie
    from urllib.parse import unquote

    raw = _header(scope, b"cookie")
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:
        return None
    morsel = jar.get(cookie_name(scope))
    return unquote(morsel.value) if morsel is not None and morsel.value else None


class BearerGuard:
    """401 unless the request carries a configured bearer token; records the token's scope.

    On the web inspector's paths (everything but ``/mcp``) the token may also come from
    its HttpOnly cookie (``/login`` sets it); ``/login`` and ``/static/`` need none, and a
    browser asking for a page without one is sent to ``/login``.
    """

    def __init__(self, app: Any, tokens: TokenTable) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        auth = next((v for k, v in scope.get("headers", []) if k == b"authorization"), None)
        grant = self.tokens.lookup_grant(auth)
        path = scope.get("path", "")
        if grant is None and not is_mcp_path(path):
            cookie = cookie_token(scope)
            grant = self.tokens.lookup_grant(f"Bearer {cookie}".encode()) if cookie else None
        granted = None if grant is None else grant[1]
        if granted is None and not is_mcp_path(path):
            if granted is None and is_public_web_path(path):
                await self.app(scope, receive, send)
                return
            accept = _header(scope, b"accept") or ""
            if granted is None and scope.get("method") == "GET" and "text/html" in accept:
                await _to_login(send, path)
                return
        if granted is None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await refuse(
                send,
                401,
                "unauthorized",
                "missing or wrong bearer token (Authorization: Bearer <token>)",
                [(b"www-authenticate", b'Bearer realm="threadloom"')],
            )
            return
        assert grant is not None
        inner = {**scope, SCOPE_KEY: granted, "user": _principal(grant[0])}
        with acting_as(granted):  # pages served beside /mcp call the service in this task
            await self.app(inner, receive, send)


def _principal(index: int) -> Any:
    """The SDK's user for grant ``index``: its session manager answers a session only to the
    token that opened it (404 to any other), so one token cannot ride another's session."""
    from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
    from mcp.server.auth.provider import AccessToken

    return AuthenticatedUser(AccessToken(token="", client_id=f"threadloom-token-{index + 1}", scopes=[]))


async def _to_login(send: Any, path: str) -> None:
    """303 to the token form, which comes back to ``path`` (ids only) once the token is given."""
    from urllib.parse import quote

    target = "/login" + (f"?next={quote(path, safe='/')}" if path not in ("", "/") else "")
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [
                (b"location", target.encode()),
                (b"content-length", b"0"),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})


class BodyGuard:
    """Read the whole request body before the app runs: at most ``max_bytes`` (413), within
    ``timeout`` seconds (408), so a slow or huge upload never holds the app or memory."""

    def __init__(self, app: Any, *, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send, f"{int(declared)} bytes")
            return
        body = bytearray()
        with anyio.move_on_after(self.timeout) as deadline:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                body += message.get("body", b"")
                if len(body) > self.max_bytes:
                    await self._too_large(send, f"over {self.max_bytes} bytes")
                    return
                if not message.get("more_body", False):
                    break
        if deadline.cancelled_caught:
            log.warning(
                "request body of %s %s did not arrive within %.0f s",
                scope["method"],
                scope["path"],
                self.timeout,
            )
            await refuse(
                send,
                408,
                "request_timeout",
                f"the request body did not arrive within {self.timeout:g} s (http_body_timeout)",
            )
            return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Any, size: str) -> None:
        await refuse(
            send,
            413,
            "request_size",
            f"the request body is {size}; the limit (max_request_bytes) is {self.max_bytes} bytes",
        )
