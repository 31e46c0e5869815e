"""Bearer tokens of the HTTP transport: the configured grants, their rules, and the lookup.

A grant is a token plus, optionally, the agents it is limited to. Grants come from the
``token``/``token_agents`` settings (one token) and the ``tokens`` list (several, each
with its own scope); see docs/security.md. Tokens are secrets: no message quotes one.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import InvalidInputError
from .models import check_agent_id
from .scope import EVERY_AGENT, AgentScope

MIN_TOKEN_CHARS = 32
"""Shortest token accepted off loopback (``threadloom token`` makes 43 characters)."""
MAX_TOKEN_CHARS = 1024
NEW_TOKEN_BYTES = 32


def new_token() -> str:
    """A fresh random token: 32 bytes from the OS's CSPRNG, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(NEW_TOKEN_BYTES)


class TokenGrant(BaseModel):
    """One accepted bearer token and the agents it may act for (``agents`` absent: all)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token: str = Field(repr=False, max_length=MAX_TOKEN_CHARS)
    agents: list[str] | None = Field(default=None, min_length=1, max_length=10_000)
    name: str | None = Field(default=None, max_length=100, description="a label for logs")

    @field_validator("agents")
    @classmethod
    def _agent_ids(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for agent in value:
                check_agent_id(agent)
        return value

    def scope(self, index: int) -> AgentScope:
        """The scope this grant gives (labelled by its name, else its position)."""
        if self.agents is None:
            return EVERY_AGENT
        return AgentScope.of(self.agents, self.name or f"token #{index + 1}")


def check_grants(grants: Sequence[TokenGrant], *, loopback: bool) -> None:
    """Refuse blank, duplicated and (off loopback) short tokens; never quoting a token.

    Raises:
        InvalidInputError: ``http_token_blank``, ``http_token_short`` or ``http_token_duplicate``.
    """
    seen: set[str] = set()
    for i, grant in enumerate(grants):
        which = (
            f"token {grant.name!r}"
            if grant.name
            else ("the token" if len(grants) == 1 else f"token #{i + 1}")
        )
        if not grant.token.strip():
            raise InvalidInputError(
                f"{which} is blank: give a real secret (`threadloom token` prints a fresh one)",
                rule="http_token_blank",
            )
        if grant.token != grant.token.strip() or any(c.isspace() for c in grant.token):
            raise InvalidInputError(
                f"{which} contains whitespace, which no Authorization header can carry: "
                "`threadloom token` prints a usable one",
                rule="http_token_blank",
            )
        if not loopback and len(grant.token) < MIN_TOKEN_CHARS:
            raise InvalidInputError(
                f"{which} is {len(grant.token)} characters; off loopback a token needs at least "
                f"{MIN_TOKEN_CHARS}: `threadloom token` prints a fresh random one",
                rule="http_token_short",
            )
        if grant.token in seen:
            raise InvalidInputError(
                f"{which} is configured twice; each token has one scope", rule="http_token_duplicate"
            )
        seen.add(grant.token)


class TokenTable:
    """Constant-time lookup of a presented bearer token among the configured grants."""

    def __init__(self, grants: Sequence[TokenGrant]) -> None:
        self._entries = [(g.token.encode(), g.scope(i)) for i, g in enumerate(grants)]

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, authorization: bytes | None) -> AgentScope | None:
        """The scope of the token in an ``Authorization`` header value, or None.

        The scheme ``Bearer`` is matched case-insensitively (RFC 9110 §11.1); every
        configured token is compared, so the time taken does not tell which one matched.
        """
        found = self.lookup_grant(authorization)
        return None if found is None else found[1]

    def lookup_grant(self, authorization: bytes | None) -> tuple[int, AgentScope] | None:
        """:meth:`lookup`, with the position of the matching grant (which names the
        principal an HTTP session belongs to, never the token itself)."""
        presented = bearer_credentials(authorization)
        if presented is None:
            return None
        found: tuple[int, AgentScope] | None = None
        for i, (token, scope) in enumerate(self._entries):
            if hmac.compare_digest(presented, token) and found is None:
                found = (i, scope)
        return found


def bearer_credentials(authorization: bytes | None) -> bytes | None:
    """The credentials of a ``Bearer`` Authorization header value, or None for any other."""
    if not authorization:
        return None
    parts = authorization.split(None, 1)
    if len(parts) != 2 or parts[0].lower() != b"bearer":
        return None
    return parts[1].strip() or None
