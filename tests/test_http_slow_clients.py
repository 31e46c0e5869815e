"""Slow and oversize HTTP clients: headers and bodies that trickle in are cut off with 408,
bodies over max_request_bytes get 413 before the app reads them (raw sockets)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from http_helpers import Echo, post, serve_http
from threadloom.http_guard import BodyGuard


def read_all(sock: socket.socket, limit: float) -> bytes:
    """Everything the server sends until it closes the connection (or ``limit`` seconds pass)."""
    sock.settimeout(0.2)
    data = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the server still held the connection after {limit} s (got {data[:200]!r})")


def trickle(sock: socket.socket, first: bytes, every: float, limit: float) -> bytes:
    """Send ``first``, then one more header byte every ``every`` s until the server answers and closes."""
    sock.sendall(first)
    sock.settimeout(every)
    data = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
        except TimeoutError:
            try:
                sock.sendall(b"X")
            except OSError:
                return data
    raise AssertionError(f"the server still held the connection after {limit} s (got {data[:200]!r})")


@pytest.mark.slow
def test_trickling_headers_and_bodies_are_cut_off(tmp_path: Path, cli_env: dict) -> None:
    env = dict(cli_env, THREADLOOM_HTTP_HEADER_TIMEOUT="1", THREADLOOM_HTTP_BODY_TIMEOUT="1")
    with serve_http(tmp_path / "root", env) as port:
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        try:
            # half a request line, then a byte now and then: the header deadline still holds
            for s in socks[:10]:
                s.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            answers = [trickle(s, b"", 0.3, 10) for s in socks[:10]]
            # whole headers, then a body that never finishes
            head = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
            for s in socks[10:]:
                s.sendall(head + b'{"jsonrpc":')
            answers += [read_all(s, 10) for s in socks[10:]]
        finally:
            for s in socks:
                s.close()
        for got in answers:
            assert got.startswith(b"HTTP/1.1 408"), got[:200]
            assert b"request_timeout" in got
        # a connection that says nothing at all is closed as well
        with socket.create_connection(("127.0.0.1", port)) as idle:
            assert read_all(idle, 10).startswith(b"HTTP/1.1 408")
        # and the server still serves ordinary requests
        status, body = post("127.0.0.1", port, {})
        assert status == 200 and "serverInfo" in body


@pytest.mark.slow
def test_a_body_over_the_limit_gets_413_before_it_is_read(tmp_path: Path, cli_env: dict) -> None:
    env = dict(cli_env, THREADLOOM_MAX_REQUEST_BYTES="65536")
    with serve_http(tmp_path / "root", env) as port:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(
                b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1073741824\r\n\r\n"
            )
            got = read_all(s, 10)
        assert got.startswith(b"HTTP/1.1 413") and b"request_size" in got and b"65536" in got


async def run_guard(guard: BodyGuard, chunks: list[bytes], declared: int | None = None) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []
    queue = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(m: dict[str, Any]) -> None:
        sent.append(m)

    headers = [(b"content-length", str(declared).encode())] if declared is not None else []
    await guard({"type": "http", "method": "POST", "path": "/mcp", "headers": headers}, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.mark.anyio
async def test_the_body_guard_hands_the_app_the_whole_body_or_refuses_it() -> None:
    guard = BodyGuard(Echo(), max_bytes=100, timeout=5)
    assert await run_guard(guard, [b"a" * 40, b"b" * 60]) == (200, b"a" * 40 + b"b" * 60)
    status, body = await run_guard(guard, [b"a" * 60, b"b" * 60])  # chunked, no length given
    assert status == 413 and json.loads(body)["error"] == "request_size"
    status, body = await run_guard(guard, [b""], declared=101)
    assert status == 413 and "101 bytes" in json.loads(body)["message"]
