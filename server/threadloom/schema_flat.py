"""Make published JSON schemas cheap for clients to validate.

Pydantic emits ``$defs``/``$ref`` for nested models and ``anyOf [X, null]`` for optional
fields. Clients validate every structured tool result against the output schema, and
reference resolution dominates that cost in common validators (jsonschema). The
flattened schema accepts exactly the same documents.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any


def flatten_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Inline local ``$ref``s and fold ``anyOf [simple, {type: null}]`` into a type list."""
    defs = schema.get("$defs", {})

    def walk(node: Any, depth: int = 0) -> Any:
        if isinstance(node, list):
            return [walk(x, depth) for x in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and depth < 20:
            target = copy.deepcopy(defs[ref.split("/")[-1]])
            extra = {k: v for k, v in node.items() if k != "$ref"}
            return walk({**target, **extra}, depth + 1)
        out = {k: walk(v, depth) for k, v in node.items() if k != "$defs"}
        any_of = out.get("anyOf")
        if isinstance(any_of, list) and len(any_of) == 2 and {"type": "null"} in any_of:
            other = next(x for x in any_of if x != {"type": "null"})
            simple_type = other.get("type")
            if isinstance(simple_type, str) and "enum" not in other and "const" not in other:
                merged = {k: v for k, v in out.items() if k != "anyOf"}
                merged.update(other)
                merged["type"] = [simple_type, "null"]
                return merged
        return out

    return walk(schema)


def flatten_tool_schemas(server: Any) -> None:
    """Flatten the output schema and dedent the description of every tool on an MCPServer."""
    for tool in server._tool_manager.list_tools():
        if tool.description:
            tool.description = inspect.cleandoc(tool.description)
        meta = tool.fn_metadata
        if meta.output_schema is not None:
            meta.output_schema = flatten_schema(meta.output_schema)
