"""Streamable HTTP sessions (2025-06-18): idle ones are closed after http_session_idle_timeout,
and at http_max_sessions the idlest is closed to admit a new client (never a busy one)."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path

import pytest

from http_helpers import INIT, MCP_HEADERS, serve_http
from threadloom.config import load_settings
from threadloom.errors import InvalidInputError

PING = {"jsonrpc": "2.0", "id": 2, "method": "ping"}


def open_session(port: int) -> tuple[int, str | None]:
    """Initialize a session and never close it; (status, session id)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/mcp", json.dumps(INIT), headers=MCP_HEADERS)
        r = conn.getresponse()
        r.read()
        return r.status, r.getheader("mcp-session-id")
    finally:
        conn.close()


def ping(port: int, session_id: str) -> int:
    """The HTTP status of a ping sent in the session (200 alive, 404 closed)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {**MCP_HEADERS, "mcp-session-id": session_id, "mcp-protocol-version": "2025-06-18"}
        conn.request("POST", "/mcp", json.dumps(PING), headers=headers)
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


@pytest.mark.slow
def test_at_the_session_cap_the_idlest_session_makes_room(tmp_path: Path, cli_env: dict) -> None:
    env = dict(cli_env, THREADLOOM_HTTP_MAX_SESSIONS="3")
    with serve_http(tmp_path / "root", env) as port:
        flood = [open_session(port) for _ in range(3)]
        assert all(status == 200 and sid for status, sid in flood)
        ids = [sid for _, sid in flood]
        assert [ping(port, sid) for sid in ids] == [200, 200, 200]  # type: ignore[arg-type]
        # a fourth client still gets in; the session idle longest (the first) is closed
        status, newest = open_session(port)
        assert status == 200 and newest
        assert ping(port, ids[0]) == 404  # type: ignore[arg-type]
        assert ping(port, newest) == 200
        # many more: every new client gets a session, the cap holds
        more = [open_session(port) for _ in range(10)]
        assert all(status == 200 for status, _ in more)
        alive = [sid for sid in ids[1:] + [newest] + [s for _, s in more] if ping(port, sid) == 200]  # type: ignore[arg-type]
        assert len(alive) == 3


@pytest.mark.slow
def test_a_session_with_an_open_stream_is_never_closed_to_make_room(tmp_path: Path, cli_env: dict) -> None:
    env = dict(cli_env, THREADLOOM_HTTP_MAX_SESSIONS="2")
    with serve_http(tmp_path / "root", env) as port:
        _, busy = open_session(port)
        _, idle = open_session(port)
        assert busy and idle
        stream = socket.create_connection(("127.0.0.1", port))
        try:  # the busy session holds a GET stream open (server-to-client messages)
            stream.sendall(
                f"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
                f"mcp-session-id: {busy}\r\nmcp-protocol-version: 2025-06-18\r\n\r\n".encode()
            )
            assert stream.recv(100).startswith(b"HTTP/1.1 200")
            status, newest = open_session(port)
            assert status == 200 and newest
            assert ping(port, idle) == 404
            assert ping(port, busy) == 200
        finally:
            stream.close()


@pytest.mark.slow
def test_an_idle_session_is_closed_after_the_idle_timeout(tmp_path: Path, cli_env: dict) -> None:
    env = dict(cli_env, THREADLOOM_HTTP_SESSION_IDLE_TIMEOUT="0.5")
    with serve_http(tmp_path / "root", env) as port:
        _, sid = open_session(port)
        assert sid and ping(port, sid) == 200
        time.sleep(2)  # no request in flight for 4 x the idle timeout
        assert ping(port, sid) == 404
        status, again = open_session(port)  # the client initializes a new one
        assert status == 200 and again and ping(port, again) == 200


@pytest.mark.parametrize(
    "name,value",
    [
        ("http_session_idle_timeout", "0"),
        ("http_session_idle_timeout", "nan"),
        ("http_session_idle_timeout", "inf"),
        ("http_max_sessions", "0"),
    ],
)
def test_session_settings_are_checked(name: str, value: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        load_settings(env={f"THREADLOOM_{name.upper()}": value})
    assert err.value.rule == "settings" and name in err.value.message


def test_session_settings_have_sensible_defaults() -> None:
    s = load_settings(env={})
    assert s.http_session_idle_timeout == 1800 and s.http_max_sessions == 10_000
