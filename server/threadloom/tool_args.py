"""Tool arguments (and resource URIs) at the MCP edge: unknown names refused, type and
range errors named.

The SDK ignores an argument a tool does not declare (so a misspelt ``metadta`` loses its
data without a word) and reports a value that fails its type as a raw pydantic dump.
Here every tool's input schema says ``additionalProperties: false``, a call naming an
argument the tool lacks is refused with the tool's argument list, and a validation
failure becomes one ``[rule]`` line per bad argument, quoting at most 200 characters of
the value. Nothing runs (so nothing is written) when the arguments are refused.
"""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from pydantic import ValidationError

from .numbers import quote

MAX_LISTED = 5
"""Most unknown arguments or validation problems one message lists."""

_RANGE = frozenset(
    {
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "finite_number",
        "too_long",
        "too_short",
        "string_too_long",
        "string_too_short",
        "multiple_of",
    }
)


def _cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def rule_of(error_type: str) -> str:
    """The rule a pydantic error type is reported under."""
    if error_type == "missing":
        return "argument_missing"
    if error_type == "extra_forbidden":
        return "unknown_argument"
    if error_type in _RANGE:
        return "argument_range"
    return "argument_type"


def describe_validation(tool: str, exc: ValidationError) -> str:
    """``[rule] tool: argument a.b: what is wrong (got <value>)`` for the first few errors."""
    errors = exc.errors()
    parts = []
    for err in errors[:MAX_LISTED]:
        loc = _cut(".".join(str(p) for p in err["loc"])) or "(arguments)"
        if err["type"] == "missing":
            parts.append(f"argument {loc} is required")
        elif err["type"] == "extra_forbidden":
            parts.append(f"{loc} is not a field here")
        else:
            parts.append(f"argument {loc}: {_cut(err['msg'])} (got {quote(err.get('input'))})")
    more = f"; and {len(errors) - MAX_LISTED} more" if len(errors) > MAX_LISTED else ""
    rule = rule_of(errors[0]["type"]) if errors else "argument_type"
    return f"[{rule}] {tool}: " + "; ".join(parts) + more + ". Nothing was done"


def unknown_arguments(tool: str, given: dict[str, Any], allowed: list[str]) -> str | None:
    """The refusal for arguments ``tool`` does not declare, or None when there are none."""
    unknown = [k for k in given if k not in allowed]
    if not unknown:
        return None
    named = ", ".join(quote(k) for k in unknown[:MAX_LISTED])
    more = f" and {len(unknown) - MAX_LISTED} more" if len(unknown) > MAX_LISTED else ""
    which = "argument" if len(unknown) == 1 else "arguments"
    return (
        f"[unknown_argument] {tool} has no {which} {named}{more}; its arguments are "
        f"{', '.join(allowed) or '(none)'}. Nothing was done"
    )


def guard_tool_arguments(server: Any) -> None:
    """Refuse unknown arguments and name bad ones on every tool of an MCPServer."""
    manager = server._tool_manager
    original = manager.call_tool
    for tool in manager.list_tools():
        tool.parameters["additionalProperties"] = False

    async def call_tool(
        name: str, arguments: dict[str, Any], context: Any, convert_result: bool = False
    ) -> Any:
        tool = manager.get_tool(name)
        if tool is None:
            names = ", ".join(t.name for t in manager.list_tools())
            raise ToolError(f"[unknown_tool] there is no tool {quote(name)}; the tools are {names}")
        problem = unknown_arguments(name, arguments, list(tool.parameters.get("properties", {})))
        if problem is not None:
            raise ToolError(f"Error executing tool {name}: {problem}")
        try:
            return await original(name, arguments, context, convert_result=convert_result)
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(exc, UnexpectedToolError) or not isinstance(cause, ValidationError):
                raise
            raise ToolError(f"Error executing tool {name}: {describe_validation(name, cause)}") from cause

    manager.call_tool = call_tool


def guard_resource_uris(server: Any) -> None:
    """Quote at most 200 characters of a resource URI no resource or template matches."""
    from mcp.server.mcpserver.exceptions import ResourceNotFoundError

    manager = server._resource_manager
    original = manager.get_resource

    async def get_resource(uri: Any, context: Any) -> Any:
        try:
            return await original(uri, context)
        except ResourceNotFoundError as exc:
            if not str(exc).startswith("Unknown resource:"):
                raise
            raise ResourceNotFoundError(
                f"[resource_uri] no resource is named {quote(str(uri))}; resources are "
                "thread://{id}/transcript, thread://{id}/thread.json, thread://{id}/capabilities.md, "
                "thread://{id}/messages[?format=...] and chain://{id}"
            ) from exc

    manager.get_resource = get_resource
