"""HTTP test helpers: free ports, a `threadloom serve --http` subprocess, raw requests, ASGI calls."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import PYTHON

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} never opened")


@contextmanager
def serve_http(root: Path, env: dict[str, str], *args: str, host: str = "127.0.0.1") -> Iterator[int]:
    """Run `threadloom serve --http --host HOST --port P ARGS` and yield P once it listens."""
    port = free_port("127.0.0.1" if host in ("0.0.0.0", "::") else host)
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "threadloom",
            "serve",
            "--http",
            "--host",
            host,
            "--port",
            str(port),
            "--root",
            str(root),
            *args,
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_port("127.0.0.1" if host in ("0.0.0.0", "::") else host, port, proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def post(
    host: str, port: int, headers: dict[str, str], body: Any = INIT, path: str = "/mcp"
) -> tuple[int, str]:
    """POST ``body`` (JSON) with exactly these extra headers (Host included when given)."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("POST", path, json.dumps(body), headers={**MCP_HEADERS, **headers})
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


async def asgi_call(
    app: Any,
    method: str = "POST",
    path: str = "/mcp",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> tuple[int, dict[str, str], bytes, dict[str, Any] | None]:
    """Call an ASGI app once; returns status, headers, body and the scope the inner app saw."""
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    done = False

    async def receive() -> dict[str, Any]:
        nonlocal done
        if done:
            return {"type": "http.disconnect"}
        done = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    hdrs = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], hdrs, out, getattr(app, "seen", None)


class Echo:
    """An inner ASGI app that answers 200 and remembers the scope it was called with."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.seen = scope
        msg = await receive()
        body = msg.get("body", b"")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
