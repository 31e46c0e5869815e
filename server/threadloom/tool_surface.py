"""The tool surface as clients see it (issue 18 item 7): titles, annotations, lean schemas.

An LLM client sends every tool's name, description and input schema with each request,
so they are kept short: input schemas lose what a model does not need (pydantic's
per-field ``title``, ``default: null``, ``anyOf [X, null]`` spelled out, ``$defs``
indirection) and keep every description. Output schemas are for validators, not models:
each becomes one compact shape, its top-level fields and their JSON types, which
accepts every result the full schema accepts (the full models are documented in the
README and returned in the structured content). ``tests/test_tool_surface.py`` holds the
budgets: model-visible part <= 4,000 tokens, whole ``tools/list`` <= 9,000 (chars / 4).
"""

from __future__ import annotations

from typing import Any

from mcp.types import ToolAnnotations

from .schema_flat import flatten_schema

_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions", "patternProperties"})


def _ann(*, read_only: bool, idempotent: bool, destructive: bool = False) -> ToolAnnotations:
    return ToolAnnotations(
        read_only_hint=read_only,
        destructive_hint=destructive,
        idempotent_hint=idempotent,
        open_world_hint=False,  # every tool works on this server's own threads only
    )


READ = _ann(read_only=True, idempotent=True)
WRITE = _ann(read_only=False, idempotent=False)
WRITE_IDEMPOTENT = _ann(read_only=False, idempotent=True)

TOOLS: dict[str, tuple[str, ToolAnnotations]] = {
    "create_thread": ("Create a thread", WRITE),
    "append_event": ("Append events to a thread", WRITE),
    "get_thread": ("Get a thread's manifest", READ),
    "verify_thread": ("Verify a thread's integrity", READ),
    "list_threads": ("List threads", READ),
    "read_events": ("Read a thread's events", READ),
    "update_thread": ("Update a thread (status, result, title...)", WRITE_IDEMPOTENT),
    "wait_threads": ("Wait for threads to end", READ),
    "handoff_thread": ("Hand a thread off to a fresh one", WRITE),
    "get_chain": ("Get a continuation chain", READ),
    "resume_thread": ("Resume a finished chain", WRITE),
    "fork_thread": ("Fork a thread at a seq", WRITE),
    "acquire_thread": ("Lease a thread to one runner", WRITE_IDEMPOTENT),
    "release_thread": ("Release a thread's lease", WRITE_IDEMPOTENT),
    "chain_search": ("Search a continuation chain", READ),
    "search_threads": ("Search past threads", READ),
    "delete_thread": ("Delete a thread for good", _ann(read_only=False, idempotent=True, destructive=True)),
}
"""Each tool's human title and MCP annotations (a tool missing here is a test failure)."""


def lean_input_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The input schema without pydantic's noise; accepts exactly the same arguments."""

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(x) for x in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _SCHEMA_MAPS and isinstance(value, dict):
                out[key] = {name: walk(sub) for name, sub in value.items()}
            elif key == "title" and isinstance(value, str):
                continue  # a label derived from the field name: the name says it already
            elif key == "default" and value is None:
                continue  # optional fields are optional: null adds nothing
            else:
                out[key] = walk(value)
        return out

    defs = {  # a nested model's docstring: the field's own description says what it needs
        name: {k: v for k, v in d.items() if k != "description"}
        for name, d in schema.get("$defs", {}).items()
    }
    return walk(flatten_schema({**schema, "$defs": defs} if defs else schema))


def _json_type(node: dict[str, Any]) -> dict[str, Any]:
    """A property's schema reduced to its JSON type(s); ``{}`` (anything) when it has none."""
    t = node.get("type")
    if t is not None:
        return {"type": t}
    if "const" in node or "enum" in node:
        values = node.get("enum", [node.get("const")])
        kinds = sorted({_kind(v) for v in values})
        return {"type": kinds[0] if len(kinds) == 1 else kinds}
    branches = node.get("anyOf") or node.get("oneOf")
    if isinstance(branches, list):
        types: list[str] = []
        for b in branches:
            bt = _json_type(b).get("type") if isinstance(b, dict) else None
            if bt is None:
                return {}
            types += bt if isinstance(bt, list) else [bt]
        unique = sorted(set(types))
        return {"type": unique[0] if len(unique) == 1 else unique}
    return {}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def lean_output_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The compact shape of a result: top-level fields and their JSON types, required kept."""
    flat = flatten_schema(schema)
    out: dict[str, Any] = {"type": "object"}
    props = flat.get("properties")
    if isinstance(props, dict):
        out["properties"] = {name: _json_type(p) for name, p in props.items()}
    if flat.get("required"):
        out["required"] = flat["required"]
    return out


HOT_TOOLS = frozenset({"append_event"})
"""Tools called on every step of an agent: their output schema names the fields in its
description instead of listing ``properties``, which the client checks on every result
(a 9-property object costs ~42 us of jsonschema per call; no properties ~2 us)."""


def hot_output_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``lean_output_schema`` without per-field checks: the fields and types in a description."""
    props = schema.get("properties") or {}
    fields = ", ".join(f"{name}: {'|'.join(_types(p))}" for name, p in props.items())
    out: dict[str, Any] = {"type": "object", "description": f"fields: {fields}"}
    if schema.get("required"):
        out["required"] = schema["required"]
    return out


def _types(prop: dict[str, Any]) -> list[str]:
    t = prop.get("type", "any")
    return t if isinstance(t, list) else [t]


def apply_tool_surface(server: Any) -> None:
    """Give every tool of an MCPServer its title and annotations and lean schemas."""
    for tool in server._tool_manager.list_tools():
        if tool.name in TOOLS:
            tool.title, tool.annotations = TOOLS[tool.name]
        tool.parameters = lean_input_schema(tool.parameters)
        meta = tool.fn_metadata
        if meta.output_schema is not None:
            meta.output_schema = lean_output_schema(meta.output_schema)
            if tool.name in HOT_TOOLS:
                meta.output_schema = hot_output_schema(meta.output_schema)
