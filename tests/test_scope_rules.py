"""Agent scopes in the service (in-process, every backend): what a scoped caller sees,
and a request that lost its token's scope sees nothing (fail closed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from threadloom.errors import InvalidInputError, NotFoundError
from threadloom.http_guard import SCOPE_KEY
from threadloom.mcp_scope import AgentScopeMiddleware
from threadloom.scope import EVERY_AGENT, NO_AGENT, AgentScope, acting_as
from threadloom.service import ThreadService

pytestmark = pytest.mark.anyio

ALICE = AgentScope.of(["alice"], "alice")
PAIR = AgentScope.of(["alice", "carol"], "pair")


async def test_lists_merge_several_agents_in_order_with_cursors(service: ThreadService) -> None:
    made = {a: [] for a in ("alice", "bob", "carol")}
    for i in range(7):
        for a in made:
            made[a].append((await service.create_thread(agent_id=a, title=f"{a}{i}")).thread_id)
    with acting_as(PAIR):
        seen, cursor = [], None
        while True:
            page = await service.list_threads(limit=3, cursor=cursor)
            seen += page.threads
            cursor = page.next_cursor
            if cursor is None:
                break
    assert {t.thread_id for t in seen} == set(made["alice"] + made["carol"])
    assert len(seen) == 14
    keys = [(t.created_at, t.thread_id) for t in seen]
    assert keys == sorted(keys, reverse=True)
    with acting_as(ALICE):
        assert (await service.list_threads(agent_id="bob")).threads == []
        assert {t.agent_id for t in (await service.list_threads(limit=200)).threads} == {"alice"}


async def test_another_agents_thread_is_missing_and_cannot_be_a_parent(service: ThreadService) -> None:
    bob = await service.create_thread(agent_id="bob")
    with acting_as(ALICE):
        with pytest.raises(NotFoundError) as err:
            await service.get_thread(bob.thread_id)
        assert err.value.rule == "thread_not_found"
        with pytest.raises(NotFoundError):
            await service.create_thread(parent_id=bob.thread_id)
        with pytest.raises(InvalidInputError) as bad:
            await service.create_thread(agent_id="bob")
        assert bad.value.rule == "agent_scope"
        assert (await service.create_thread()).agent_id == "alice"
    with acting_as(PAIR), pytest.raises(InvalidInputError) as bad:
        await service.create_thread()
    assert bad.value.rule == "agent_scope" and "give agent_id" in bad.value.message


async def test_a_request_without_its_tokens_scope_sees_nothing(service: ThreadService) -> None:
    t = await service.create_thread(agent_id="alice")
    await service.append(t.thread_id, [{"role": "user", "text": "hello there"}])
    with acting_as(NO_AGENT):
        assert (await service.list_threads()).threads == []
        assert (await service.search_threads("hello")).results == []
        with pytest.raises(NotFoundError):
            await service.read_events(t.thread_id)
        with pytest.raises(InvalidInputError):
            await service.create_thread()
    with acting_as(EVERY_AGENT):
        assert len((await service.list_threads()).threads) == 1


def test_the_middleware_takes_the_scope_from_the_http_request() -> None:
    mw = AgentScopeMiddleware()
    over_http = SimpleNamespace(request=SimpleNamespace(scope={SCOPE_KEY: ALICE}))
    bare_http = SimpleNamespace(request=SimpleNamespace(scope={"type": "http"}))
    stdio = SimpleNamespace(request=None)
    assert mw.scope_of(over_http) is ALICE
    assert mw.scope_of(bare_http) is EVERY_AGENT and mw.scope_of(stdio) is EVERY_AGENT
    mw.tokens_required = True  # tokens configured: an HTTP request without a scope sees nothing
    assert mw.scope_of(bare_http) is NO_AGENT
    assert mw.scope_of(stdio) is EVERY_AGENT
