"""The tool surface (issue 18 item 7): titles, annotations, described parameters, and the
token budgets of tools/list (characters / 4), printed and enforced."""

from __future__ import annotations

import json

import pytest
from mcp import Client

from threadloom.mcp_server import build_server
from threadloom.service import ThreadService
from threadloom.store import MemoryStore
from threadloom.tool_surface import TOOLS

pytestmark = pytest.mark.anyio

MODEL_BUDGET = 4000
"""Tokens of every tool's name, description and input schema together."""
WHOLE_BUDGET = 9000
"""Tokens of the whole tools/list result, output schemas, titles and annotations included."""
NEW_TOOLS = {"fork_thread", "acquire_thread", "release_thread"}


@pytest.fixture(params=["auto", "legacy"])
async def listed(request: pytest.FixtureRequest) -> object:
    async with ThreadService(MemoryStore()) as svc:
        async with Client(build_server(svc, allow_delete=True), mode=request.param) as client:
            yield await client.list_tools()


def tokens(obj: object) -> int:
    """Characters / 4 of ``obj`` as JSON with the default (spaced) separators: a little more
    than the compact wire form, so the budget holds however a client serializes it."""
    return len(json.dumps(obj, ensure_ascii=False)) // 4


async def test_tools_list_stays_within_its_token_budgets(listed: object) -> None:
    tools = listed.tools  # type: ignore[attr-defined]
    names = {t.name for t in tools}
    assert NEW_TOOLS <= names and "delete_thread" in names  # every tool, the optional one too
    model = sum(
        tokens({"name": t.name, "description": t.description, "inputSchema": t.input_schema}) for t in tools
    )
    whole = tokens(listed.model_dump(mode="json", by_alias=True, exclude_none=True))  # type: ignore[attr-defined]
    print(f"\ntools/list: {len(tools)} tools, model-visible {model} tokens (budget {MODEL_BUDGET}), "
          f"whole message {whole} tokens (budget {WHOLE_BUDGET})")  # fmt: skip
    assert model <= MODEL_BUDGET
    assert whole <= WHOLE_BUDGET


async def test_every_tool_has_a_title_annotations_and_described_parameters(listed: object) -> None:
    for tool in listed.tools:  # type: ignore[attr-defined]
        assert tool.name in TOOLS, f"{tool.name} has no entry in tool_surface.TOOLS"
        assert tool.title and tool.title == TOOLS[tool.name][0]
        ann = tool.annotations
        assert ann is not None
        hints = (ann.read_only_hint, ann.destructive_hint, ann.idempotent_hint, ann.open_world_hint)
        assert all(isinstance(h, bool) for h in hints), (tool.name, hints)
        assert ann.open_world_hint is False
        assert not (ann.read_only_hint and ann.destructive_hint)
        assert tool.description and len(tool.description) > 30
        for name, prop in tool.input_schema.get("properties", {}).items():
            assert prop.get("description"), f"{tool.name}.{name} has no description"
            assert "title" not in prop or not isinstance(prop["title"], str)
        assert tool.output_schema is not None and tool.output_schema["type"] == "object"
    by_name = {t.name: t for t in listed.tools}  # type: ignore[attr-defined]
    assert by_name["get_thread"].annotations.read_only_hint is True
    assert by_name["delete_thread"].annotations.destructive_hint is True
    assert by_name["append_event"].annotations.read_only_hint is False
    assert by_name["acquire_thread"].annotations.idempotent_hint is True


async def test_results_still_validate_against_the_lean_output_schemas() -> None:
    """The client validates structured content against each output schema: full results pass."""
    async with ThreadService(MemoryStore()) as svc:
        async with Client(build_server(svc)) as client:
            t = await client.call_tool("create_thread", {"title": "x", "budget": {"max_spend": 1}})
            assert not t.is_error and t.structured_content is not None
            tid = t.structured_content["thread_id"]
            for name, args in (
                ("append_event", {"thread_id": tid, "event": {"role": "user", "text": "hi"}}),
                ("get_thread", {"thread_id": tid}),
                ("get_chain", {"thread_id": tid}),
                ("fork_thread", {"thread_id": tid}),
                ("acquire_thread", {"thread_id": tid, "owner": "w", "ttl": 5}),
                ("release_thread", {"thread_id": tid, "owner": "w"}),
                ("list_threads", {}),
                ("read_events", {"thread_id": tid}),
            ):
                r = await client.call_tool(name, args)
                assert not r.is_error, (name, r.content)
