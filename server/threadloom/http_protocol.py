"""uvicorn's h11 protocol with a deadline on request headers (slow-client protection).

uvicorn times out idle keep-alive connections, but a client that sends half a request
line and then a byte now and then holds its connection (and a slot) forever. Here the
headers of every request must be complete within ``header_timeout`` seconds of their
first byte (or of the connection opening); otherwise the client gets 408 and the
connection is closed. The body has its own deadline (:class:`http_guard.BodyGuard`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("threadloom.http")
LINGER_SECONDS = 2.0


def timed_h11_protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """An H11Protocol class whose request headers must arrive within ``header_timeout`` s."""

    class TimedH11Protocol(H11Protocol):
        """H11Protocol plus a header deadline (see the module docstring)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._header_timer: asyncio.TimerHandle | None = None
            self._lingering = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._lingering:
                return  # after a 408: read and drop until the client closes (see _headers_too_slow)
            if self._header_timer is None and self.conn.their_state is h11.IDLE:
                self._arm()  # the first bytes of the next request on a kept-alive connection
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
                return
            log.warning(
                "closed a connection from %s: request headers incomplete after %g s (http_header_timeout)",
                self.client,
                header_timeout,
            )
            body = json.dumps(
                {
                    "error": "request_timeout",
                    "message": f"[request_timeout] the request headers did not arrive within {header_timeout:g} s "
                    "(http_header_timeout)",
                }
            ).encode()
            head = (
                "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            ).encode()
            self.transport.write(head + body)
            # A lingering close (as web servers do): closing with unread bytes in the socket
            # would send a reset that can destroy the 408 before the client reads it. So send
            # FIN after the answer, drop whatever still comes, and close for good shortly.
            self._lingering = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)

    return TimedH11Protocol
