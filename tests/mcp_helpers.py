"""Calling tools through an MCP client in tests: a result's structured content, or an error's text."""

from __future__ import annotations

from typing import Any

from mcp import Client


async def call(client: Client, name: str, args: dict[str, Any]) -> dict[str, Any]:
    """The tool's structured result (the call must succeed)."""
    r = await client.call_tool(name, args)
    assert not r.is_error, r.content
    assert r.structured_content is not None
    return r.structured_content


async def call_error(client: Client, name: str, args: dict[str, Any]) -> str:
    """The text of the tool's error (the call must fail)."""
    r = await client.call_tool(name, args)
    assert r.is_error, r.structured_content
    return r.content[0].text  # type: ignore[union-attr]
