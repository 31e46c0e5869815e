"""``capabilities.md``: a thread's tool definitions and capability tree, signed.

The file is rendered deterministically from the manifest's ``capabilities`` field, so
the bytes served as ``thread://{id}/capabilities.md`` and the file under
``threads/<id>/`` are the same (Ed25519 signatures are deterministic):

    # Capabilities of thread 3f9a0c2b7d41

    ## Tools

    ```json
    [ ...the tool definitions, indented, keys sorted... ]
    ```

    ## Capability tree

    ```text
    ...the tree...
    ```

    <!-- threadloom-signature ed25519 BASE64 -->

The signature covers every byte before its line (the body, UTF-8).
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidInputError
from .integrity import Signer
from .numbers import check_finite_json

CAPABILITIES_FILE = "capabilities.md"
MAX_CAPABILITIES_BYTES = 1_048_576
SIGNATURE_RE = re.compile(rb"\n<!-- threadloom-signature ed25519 ([A-Za-z0-9+/=]+) -->\n\Z")


class ToolDefinition(BaseModel):
    """One tool the thread's agent may call: at least a name; any JSON-schema fields beside it."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=200)


class Capabilities(BaseModel):
    """What a thread's agent may do: its tool definitions and a capability tree."""

    model_config = ConfigDict(extra="forbid")
    tools: list[ToolDefinition] = Field(
        default_factory=list, description="tool definitions (name, description, input_schema ...)"
    )
    tree: str | dict[str, Any] | list[Any] | None = Field(
        default=None, description="capability tree: text, or nested objects/lists rendered as a tree"
    )


def check_capabilities(value: object) -> dict[str, Any]:
    """Validate ``capabilities`` into its stored form ({tools, tree}).

    Raises:
        InvalidInputError: naming the field that broke the shape.
    """
    if isinstance(value, Capabilities):
        value = value.model_dump()  # not mode="json": that would turn NaN into null unseen
    if not isinstance(value, dict):
        raise InvalidInputError(
            f"capabilities must be an object {{tools: [...], tree: ...}}; got {type(value).__name__}",
            rule="capabilities_shape",
        )
    check_finite_json("capabilities", value, rule="capabilities_shape")
    try:
        caps = Capabilities.model_validate(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise InvalidInputError(
            f"capabilities.{loc}: {err['msg']} (expected {{tools: [{{name, ...}}], tree: text|object}})",
            rule="capabilities_shape",
        ) from None
    data = caps.model_dump(mode="json", exclude_none=True)
    try:
        size = len(json.dumps(data, ensure_ascii=False, allow_nan=False).encode())
    except ValueError as exc:
        raise InvalidInputError(
            f"capabilities must be plain JSON: {exc}", rule="capabilities_shape"
        ) from None
    if size > MAX_CAPABILITIES_BYTES:
        raise InvalidInputError(
            f"capabilities is {size} bytes of JSON; the limit is {MAX_CAPABILITIES_BYTES}",
            rule="capabilities_size",
        )
    names = [t["name"] for t in data["tools"]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InvalidInputError(
            f"capabilities.tools names must be unique; repeated: {dupes}", rule="capabilities_shape"
        )
    return data


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _tree_lines(node: Any, prefix: str = "") -> list[str]:
    items: list[tuple[str, Any]]
    if isinstance(node, dict):
        items = [(str(k), v) for k, v in node.items()]
    elif isinstance(node, list):
        items = [(v, None) if isinstance(v, str) else ("", v) for v in node]
    else:
        return [prefix + json.dumps(node, ensure_ascii=False)]
    out = []
    for i, (label, child) in enumerate(items):
        last = i == len(items) - 1
        branch, indent = ("└── ", "    ") if last else ("├── ", "│   ")
        if isinstance(child, (dict, list)) and child:
            out.append(prefix + branch + (label or "·"))
            out.extend(_tree_lines(child, prefix + indent))
        elif child is None or child == {} or child == []:
            out.append(prefix + branch + label)
        else:
            out.append(
                prefix + branch + (f"{label}: " if label else "") + json.dumps(child, ensure_ascii=False)
            )
    return out


def render_tree(tree: Any) -> str:
    """The capability tree as text: a string as given, objects and lists drawn as a tree."""
    if tree is None:
        return ""
    if isinstance(tree, str):
        return tree.rstrip("\n")
    return "\n".join(_tree_lines(tree))


def render_body(thread_id: str, capabilities: dict[str, Any]) -> bytes:
    """The signed part of ``capabilities.md`` (everything before the signature line)."""
    tools = json.dumps(capabilities.get("tools", []), ensure_ascii=False, indent=2, sort_keys=True)
    tree = render_tree(capabilities.get("tree"))
    tf, rf = _fence(tools), _fence(tree)
    text = (
        f"# Capabilities of thread {thread_id}\n\n"
        f"## Tools\n\n{tf}json\n{tools}\n{tf}\n\n"
        f"## Capability tree\n\n{rf}text\n{tree}\n{rf}\n"
    )
    return text.encode()


def render(thread_id: str, capabilities: dict[str, Any], signer: Signer) -> bytes:
    """The bytes of ``capabilities.md``: the body and its signature line."""
    body = render_body(thread_id, capabilities)
    return body + f"\n<!-- threadloom-signature ed25519 {signer.sign(body)} -->\n".encode()


def split_signed(data: bytes) -> tuple[bytes, str] | None:
    """(body, signature) of a ``capabilities.md``, or None when it has no signature line."""
    m = SIGNATURE_RE.search(data)
    if m is None:
        return None
    return data[: m.start()], m.group(1).decode()
