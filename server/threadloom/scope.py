"""Agent scopes: which agents' threads one caller may list, read, search, wait on and write.

An HTTP bearer token may be limited to a set of ``agent_id``s (docs/security.md). The
transport resolves the token to an :class:`AgentScope`; the MCP layer (and the web
pages) hand it to the service, which enforces it on every call. A thread outside the
scope is reported exactly like a thread that does not exist (``not_found``), so a
scoped client learns nothing about other agents' threads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["AgentScope", "EVERY_AGENT", "NO_AGENT", "acting_as", "current_scope"]


@dataclass(frozen=True, slots=True)
class AgentScope:
    """The agents a caller may act for; ``agents=None`` means every agent (no limit)."""

    agents: frozenset[str] | None = None
    label: str = "unrestricted"
    """How logs name the grant (a token's ``name``), never the token itself."""

    @classmethod
    def of(cls, agents: Iterable[str] | None, label: str = "scoped") -> AgentScope:
        """A scope limited to ``agents`` (None: unrestricted)."""
        if agents is None:
            return EVERY_AGENT
        return cls(frozenset(agents), label)

    @property
    def unrestricted(self) -> bool:
        return self.agents is None

    def allows(self, agent_id: str) -> bool:
        """True when a thread of ``agent_id`` is visible and writable in this scope."""
        return self.agents is None or agent_id in self.agents

    def sorted_agents(self) -> list[str]:
        """The scope's agents in a stable order (empty when unrestricted)."""
        return sorted(self.agents or ())


EVERY_AGENT = AgentScope()
"""The scope of stdio clients, tokens without ``agents`` and operators (the CLI)."""

NO_AGENT = AgentScope(frozenset(), "no agent")
"""The scope of a request that should carry a token's scope but does not: sees nothing."""

_CURRENT: ContextVar[AgentScope] = ContextVar("threadloom_agent_scope", default=EVERY_AGENT)


def current_scope() -> AgentScope:
    """The scope of the caller being served (the service reads it on every call)."""
    return _CURRENT.get()


@contextmanager
def acting_as(scope: AgentScope) -> Iterator[AgentScope]:
    """Serve everything inside the block in ``scope`` (tasks started inside inherit it)."""
    token = _CURRENT.set(scope)
    try:
        yield scope
    finally:
        _CURRENT.reset(token)
