"""Malformed stdio input gets an answer (a real `threadloom serve` subprocess, raw pipes):
a parse error (-32700) or an invalid request (-32600), with the id when it can be told,
the reason on stderr, and the session still alive afterwards."""

from __future__ import annotations

import json
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PYTHON

pytestmark = pytest.mark.slow

INIT = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
DEEP = "[" * 200 + "]" * 200

FRAMES = [
    # raw line, expected code, expected id, a word of the reason
    (b"not json at all", -32700, None, "json_syntax"),
    (b'{"jsonrpc":"2.0","id":5,"method":"tools/list"', -32700, None, "json_syntax"),
    (b'{"jsonrpc":"2.0","id":5,"method":"tools/list"\xff}', -32700, None, "utf8"),
    (b'{"jsonrpc":"2.0","id":6,"method":"tools/list","params":{"x":"\xc3"}}', -32700, None, "utf8"),
    (
        b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"create_thread",'
        b'"arguments":{"title":"\\ud800"}}}',
        -32700,
        7,
        "surrogate",
    ),
    (
        b'{"jsonrpc":"2.0","id":"s8","method":"ping","params":{"a":' + DEEP.encode() + b"}}",
        -32700,
        "s8",
        "depth",
    ),
    (DEEP.encode(), None, None, ""),  # 200 levels of bare arrays: parse error or invalid request, id null
    (b'{"id":9}', -32600, 9, "jsonrpc_shape"),
    (b"[1,2]", -32600, None, "batch"),
    (b'"just a string"', -32600, None, "jsonrpc_shape"),
    (b'{"jsonrpc":"2.0","id":true,"method":"ping"}', -32600, None, "jsonrpc_id"),
    (b'{"jsonrpc":"2.0","id":null,"method":"ping"}', -32600, None, "jsonrpc_id"),
]


@pytest.fixture
def server(tmp_path: Path, cli_env: dict) -> Iterator[subprocess.Popen]:
    env = dict(cli_env, THREADLOOM_MAX_REQUEST_BYTES="65536")
    proc = subprocess.Popen(
        [PYTHON, "-m", "threadloom", "serve", "--root", str(tmp_path / "root")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def send(proc: subprocess.Popen, line: bytes) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + b"\n")
    proc.stdin.flush()


def answer(proc: subprocess.Popen, timeout: float = 20) -> dict:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no answer from the server"
    return json.loads(proc.stdout.readline())


def test_every_malformed_line_gets_an_answer_and_the_session_lives_on(server: subprocess.Popen) -> None:
    send(server, json.dumps(INIT).encode())
    assert answer(server)["id"] == 0
    send(server, b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
    for line, code, rid, word in FRAMES:
        send(server, line)
        got = answer(server)
        assert "error" in got, (line[:80], got)
        assert got["id"] == rid, (line[:80], got)
        if code is None:
            assert got["error"]["code"] in (-32700, -32600)
        else:
            assert got["error"]["code"] == code, (line[:80], got)
        assert word in got["error"]["message"], (line[:80], got)
        assert len(got["error"]["message"]) < 400
    # a line over max_request_bytes is refused without being held whole
    send(server, b'{"jsonrpc":"2.0","id":10,"method":"ping","params":{"pad":"' + b"x" * 100_000 + b'"}}')
    got = answer(server)
    assert got["error"]["code"] == -32600 and "request_size" in got["error"]["message"]
    # the session is alive: a good call still works
    call = {
        "jsonrpc": "2.0",
        "id": 11,
        "method": "tools/call",
        "params": {"name": "create_thread", "arguments": {}},
    }
    send(server, json.dumps(call).encode())
    got = answer(server)
    assert got["id"] == 11 and not got["result"].get("isError")
    assert server.stdin is not None
    server.stdin.close()
    deadline = time.monotonic() + 20
    while server.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.returncode == 0
    assert server.stderr is not None
    log = server.stderr.read().decode()
    for word in ("json_syntax", "utf8", "surrogate", "depth", "jsonrpc_shape", "request_size"):
        assert word in log, word
