"""Streamable HTTP sessions (2025-06-18 protocol): an idle deadline and room for new clients.

The SDK's session manager closes a session that had no request in flight (no request
being served, no open GET stream) for ``session_idle_timeout`` seconds, and refuses a new
session with 503 while ``max_sessions`` are open. threadloom sets both from the settings
``http_session_idle_timeout`` and ``http_max_sessions``, and adds one rule: when the cap
is reached, the session that has been idle longest is closed to admit the new one, so a
flood of sessions that are opened and never closed cannot lock other clients out. A
session with a request in flight (or an open stream) is never closed this way; a closed
session's id answers 404 and its client initializes a new one (as the protocol says).
"""

from __future__ import annotations

import logging
import math
from typing import Any

log = logging.getLogger("threadloom.http")

__all__ = ["make_room_for_new_sessions"]


def make_room_for_new_sessions(manager: Any) -> bool:
    """Make ``manager`` (the SDK's StreamableHTTPSessionManager) close its idlest session
    instead of answering 503 at the session cap. Returns False when this SDK's manager does
    not have the parts this needs (then the SDK's own cap and idle deadline apply)."""
    original = getattr(manager, "_admit_session", None)
    if original is None or not isinstance(getattr(manager, "_server_instances", None), dict):
        log.warning("this MCP SDK's session manager cannot be told to close idle sessions at its cap")
        return False

    def admit(requestor: Any) -> Any:
        cap = manager.max_sessions
        if cap is not None and len(manager._server_instances) >= cap:
            _close_idlest(manager)
        return original(requestor)

    manager._admit_session = admit
    return True


def _close_idlest(manager: Any) -> None:
    """Close the session whose idle deadline comes first (none while all are busy)."""
    best: tuple[float, str, Any] | None = None
    for session_id, transport in manager._server_instances.items():
        scope = getattr(transport, "idle_scope", None)
        if scope is None or scope.cancel_called or getattr(transport, "_requests_in_flight", 1):
            continue
        deadline = scope.deadline
        if not math.isfinite(deadline):
            continue  # still opening, or never timed: leave it
        if best is None or deadline < best[0]:
            best = (deadline, session_id, transport)
    if best is None:
        return
    _, session_id, transport = best
    manager._server_instances.pop(session_id, None)
    getattr(manager, "_session_owners", {}).pop(session_id, None)
    transport.idle_scope.cancel()  # its server task ends and terminates the transport
    log.info(
        "closed idle HTTP session %s to admit a new one (http_max_sessions=%s reached)",
        session_id[:64],
        manager.max_sessions,
    )
