"""The stdio transport: newline-delimited JSON-RPC on stdin/stdout, where every line gets an answer.

The SDK's own stdio reader drops a line it cannot parse without a word, so a client
waits for its own timeout. Here a bad line is answered on stdout and its reason logged
to stderr: a non-JSON line, invalid UTF-8, a lone surrogate or nesting too deep is a
parse error (-32700); valid JSON that is no JSON-RPC message, or a line over
``max_request_bytes``, is an invalid request (-32600). The error carries the request's
id when the line parses far enough to tell it, ``null`` otherwise (JSON-RPC 2.0 §5).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any, BinaryIO

import anyio
import mcp_types as types
import pydantic_core
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

log = logging.getLogger("threadloom.stdio")

QUOTE = 200
_SURROGATE = range(0xD800, 0xE000)


def _quote(raw: bytes) -> str:
    text = raw[:QUOTE].decode("utf-8", errors="backslashreplace")
    return repr(text) + ("..." if len(raw) > QUOTE else "")


def _usable_id(data: Any) -> types.RequestId | None:
    """The request id of a parsed message when it is one JSON-RPC allows (a string or an integer)."""
    if isinstance(data, dict):
        rid = data.get("id")
        if isinstance(rid, str) or (isinstance(rid, int) and not isinstance(rid, bool)):
            return rid
    return None


def _lone_surrogate(value: Any, depth: int = 0) -> bool:
    """True when a string anywhere in ``value`` holds a surrogate code point (not valid Unicode)."""
    if depth > 1000:
        return False
    if isinstance(value, str):
        return any(ord(c) in _SURROGATE for c in value)
    if isinstance(value, dict):
        return any(_lone_surrogate(k, depth + 1) or _lone_surrogate(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return any(_lone_surrogate(v, depth + 1) for v in value)
    return False


def diagnose(line: bytes, exc: ValidationError) -> types.JSONRPCError:
    """The error answer for a line the SDK's message model refused, naming why."""
    json_invalid = any(e["type"] == "json_invalid" for e in exc.errors())
    if json_invalid:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as ue:
            return _error(
                None,
                types.PARSE_ERROR,
                f"Parse error: [utf8] byte 0x{line[ue.start]:02x} at offset {ue.start} is not valid UTF-8",
            )
        try:
            data = json.loads(text)
        except RecursionError:
            return _error(
                None, types.PARSE_ERROR, "Parse error: [json_depth] the message is nested too deeply"
            )
        except ValueError as je:
            return _error(None, types.PARSE_ERROR, f"Parse error: [json_syntax] not JSON: {je}")
        rid = _usable_id(data)
        if _lone_surrogate(data):
            return _error(
                rid,
                types.PARSE_ERROR,
                "Parse error: [json_surrogate] a string holds a lone surrogate escape (\\ud800-\\udfff "
                "without its pair), which is not Unicode text",
            )
        reason = next((e["msg"] for e in exc.errors() if e["type"] == "json_invalid"), "invalid JSON")
        if "recursion" in reason:
            return _error(
                rid,
                types.PARSE_ERROR,
                "Parse error: [json_depth] the message is nested deeper than the parser's limit "
                "(about 200 levels)",
            )
        return _error(rid, types.PARSE_ERROR, f"Parse error: [json_syntax] {reason}")
    try:
        data = pydantic_core.from_json(line)
    except ValueError:
        data = None
    if isinstance(data, list):
        detail = "a JSON array (a batch) is not accepted: send one message per line"
    elif isinstance(data, dict):
        first = exc.errors()[0]
        detail = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    else:
        detail = f"a JSON {type(data).__name__} is not a message"
    return _error(
        _usable_id(data),
        types.INVALID_REQUEST,
        f"Invalid Request: [jsonrpc_shape] not a JSON-RPC 2.0 request, notification or response ({detail})",
    )


def _bad_id(line: bytes) -> types.JSONRPCError | None:
    """An invalid-request answer for a "notification" that carries an id JSON-RPC does not allow
    (true, 1.5, null, an object): the SDK reads it as a notification, which gets no answer."""
    data = pydantic_core.from_json(line)
    if isinstance(data, dict) and "id" in data:
        return _error(
            None,
            types.INVALID_REQUEST,
            f"Invalid Request: [jsonrpc_id] id must be a string or an integer; got {json.dumps(data['id'])[:QUOTE]}",
        )
    return None


def _error(rid: types.RequestId | None, code: int, message: str) -> types.JSONRPCError:
    return types.JSONRPCError(jsonrpc="2.0", id=rid, error=types.ErrorData(code=code, message=message))


def _read_line(stream: BinaryIO, limit: int) -> tuple[bytes, int]:
    """One line (without its newline) and its full length; beyond ``limit`` bytes the rest of
    the line is read and dropped, so an oversize line never sits in memory whole."""
    line = stream.readline(limit + 1)
    if not line:
        return b"", -1
    if line.endswith(b"\n") or len(line) <= limit:
        body = line.rstrip(b"\n")
        return body.rstrip(b"\r"), len(body)
    size = len(line)
    while not line.endswith(b"\n"):
        line = stream.readline(1 << 20)
        if not line:
            break
        size += len(line)
    return line[:0], size - (1 if line.endswith(b"\n") else 0)


@asynccontextmanager
async def _claimed_std() -> AsyncIterator[tuple[BinaryIO, BinaryIO]]:
    """Private duplicates of fd 0/1 for the protocol; fd 0 reads /dev/null and fd 1 writes to
    stderr meanwhile, so stray reads and prints stay off the wire (as the SDK does)."""
    try:
        in_fd, out_fd = os.dup(0), os.dup(1)
    except OSError:
        yield sys.stdin.buffer, sys.stdout.buffer
        return
    null = os.open(os.devnull, os.O_RDONLY)
    saved_in, saved_out = os.dup(0), os.dup(1)
    os.dup2(null, 0)
    os.dup2(2, 1)
    os.close(null)
    try:
        with os.fdopen(in_fd, "rb", closefd=False) as rin, os.fdopen(out_fd, "wb", closefd=False) as wout:
            yield rin, wout
    finally:
        with suppress(OSError):
            os.dup2(saved_in, 0)
            os.dup2(saved_out, 1)
        for fd in (saved_in, saved_out):
            with suppress(OSError):
                os.close(fd)
        # in_fd/out_fd stay open: a worker thread may still block reading in_fd (closefd=False, as the SDK)


@asynccontextmanager
async def stdio_streams(
    max_line_bytes: int,
) -> AsyncIterator[tuple[MemoryObjectReceiveStream[Any], MemoryObjectSendStream[SessionMessage]]]:
    """Read and write streams for ``Server.run`` over this process's stdin/stdout."""
    read_send, read_recv = anyio.create_memory_object_stream[Any](0)
    write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](0)
    answers = write_send.clone()

    async with _claimed_std() as (rin, wout):

        async def reader() -> None:
            async with read_send, answers:
                while True:
                    line, size = await anyio.to_thread.run_sync(
                        _read_line, rin, max_line_bytes, abandon_on_cancel=True
                    )
                    if size < 0:
                        return  # EOF: the client closed stdin
                    if size > max_line_bytes:
                        err = _error(
                            None,
                            types.INVALID_REQUEST,
                            f"Invalid Request: [request_size] the message is {size} bytes; the limit "
                            f"(max_request_bytes) is {max_line_bytes}",
                        )
                    elif not line.strip():
                        continue
                    else:
                        try:
                            message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                        except ValidationError as exc:
                            err = diagnose(line, exc)
                        else:
                            err = _bad_id(line) if isinstance(message, types.JSONRPCNotification) else None
                            if err is None:
                                await read_send.send(SessionMessage(message))
                                continue
                    log.warning(
                        "stdio: answered a bad message with %s: %s (line %s)",
                        err.error.code,
                        err.error.message,
                        _quote(line),
                    )
                    await answers.send(SessionMessage(err))

        async def writer() -> None:
            async with write_recv:
                async for msg in write_recv:
                    data = msg.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"
                    await anyio.to_thread.run_sync(_write, wout, data)

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            tg.start_soon(writer)
            try:
                yield read_recv, write_send
            finally:
                tg.cancel_scope.cancel()


def _write(out: BinaryIO, data: bytes) -> None:
    out.write(data)
    out.flush()


async def run_stdio(server: Any, max_line_bytes: int) -> None:
    """Serve an MCPServer over stdio until the client closes stdin."""
    low = server._lowlevel_server
    async with stdio_streams(max_line_bytes) as (read_stream, write_stream):
        await low.run(read_stream, write_stream, low.create_initialization_options())
