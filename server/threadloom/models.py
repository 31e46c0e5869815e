"""Data types shared by every layer: ids, status machine, events, the thread manifest.

Events are validated here into typed pydantic models (a union keyed on ``type``);
the error messages name the rule that failed and the offending value, because an
LLM reads them and must be able to correct its call in one step.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InvalidInputError, InvalidStateError
from .numbers import MAX_AMOUNT, MAX_COUNT, quote

# --------------------------------------------------------------------------- ids

THREAD_ID_RE = re.compile(r"^[a-f0-9]{12}$")
AGENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}$")
CUSTOM_TYPE_RE = re.compile(r"^x-[a-z0-9][a-z0-9_.-]{0,63}$")
IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,200}$")
DEFAULT_AGENT_ID = "default"


def new_thread_id() -> str:
    """A random 12-hex-digit thread id (48 bits)."""
    return secrets.token_hex(6)


def check_thread_id(value: object, *, field: str = "thread_id") -> str:
    """Return ``value`` if it is a valid thread id; refuse anything else before it nears a path."""
    if not isinstance(value, str) or not THREAD_ID_RE.fullmatch(value):
        raise InvalidInputError(
            f"{field} must be 12 lowercase hex digits (rule ^[a-f0-9]{{12}}$); got {quote(value)}",
            rule="thread_id_format",
        )
    return value


def check_agent_id(value: object) -> str:
    """Return ``value`` if it is a valid agent id (letters, digits, _ . : @ / -; max 128)."""
    if not isinstance(value, str) or not AGENT_ID_RE.fullmatch(value):
        raise InvalidInputError(
            "agent_id must be 1-128 characters of letters, digits and _ . : @ / - "
            f"starting with a letter or digit; got {quote(value)}",
            rule="agent_id_format",
        )
    return value


def check_idempotency_key(value: object) -> str:
    """Return ``value`` if it is 1-200 printable ASCII characters without spaces."""
    if not isinstance(value, str) or not IDEMPOTENCY_KEY_RE.fullmatch(value):
        raise InvalidInputError(
            f"idempotency_key must be 1-200 printable ASCII characters without spaces; got {quote(value)}",
            rule="idempotency_key_format",
        )
    return value


# ------------------------------------------------------------------------- time


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    """UTC ISO 8601 with microseconds and a ``Z`` suffix (sorts as text)."""
    utc = dt if dt.tzinfo is UTC else dt.astimezone(UTC)
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# ----------------------------------------------------------------------- json


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(obj: Any) -> str:
    """Canonical JSON: sorted keys, no insignificant whitespace, UTF-8 text kept as is."""
    return _CANONICAL.encode(obj)  # one shared encoder: json.dumps with options builds one per call


# ----------------------------------------------------------------------- status


class Status(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ERROR = "error"
    CANCELLED = "cancelled"
    CONTINUED = "continued"


TERMINAL = frozenset({Status.COMPLETED, Status.ERROR, Status.CANCELLED})
"""Statuses a thread never leaves; the one definition used everywhere (waits, resume, sweeper)."""

ENDED = TERMINAL | {Status.CONTINUED}
"""Statuses after which nothing more is appended to the thread itself."""

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.CREATED: frozenset({Status.RUNNING, *TERMINAL}),
    Status.RUNNING: frozenset({Status.PAUSED, Status.CONTINUED, *TERMINAL}),
    Status.PAUSED: frozenset({Status.RUNNING, *TERMINAL}),
    Status.COMPLETED: frozenset(),
    Status.ERROR: frozenset(),
    Status.CANCELLED: frozenset(),
    Status.CONTINUED: frozenset(),
}


def check_transition(thread_id: str, old: Status, new: Status) -> None:
    """Raise InvalidStateError naming the transition unless DESIGN §3 allows it."""
    if new not in TRANSITIONS[old]:
        allowed = ", ".join(sorted(TRANSITIONS[old])) or "none (it is final)"
        raise InvalidStateError(
            f"status transition {old.value} -> {new.value} is not allowed for thread {thread_id} "
            f"(allowed from {old.value}: {allowed})",
            rule="status_transition",
        )


# ----------------------------------------------------------------------- events


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class MessageEvent(_Event):
    """A conversational message (the unit that handoff carries and search indexes)."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system"]
    text: str
    metadata: dict[str, Any] | None = None
    """Free-form; ``from_thread_id`` names the thread that sent the message (a parent steering
    a running child), checked to be a thread id."""

    @field_validator("metadata")
    @classmethod
    def _sender(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and "from_thread_id" in value:
            sender = value["from_thread_id"]
            if not isinstance(sender, str) or not THREAD_ID_RE.fullmatch(sender):
                raise ValueError(
                    f"metadata.from_thread_id must be a thread id (12 lowercase hex digits); got {sender!r:.80}"
                )
        return value


class ToolUseEvent(_Event):
    """The assistant asked for a tool call."""

    type: Literal["tool_use"] = "tool_use"
    id: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=200)
    input: dict[str, Any] = Field(default_factory=dict)


class ToolResultEvent(_Event):
    """The output of a tool call, linked by ``tool_use_id``."""

    type: Literal["tool_result"] = "tool_result"
    tool_use_id: str = Field(min_length=1, max_length=200)
    output: Any = ""
    is_error: bool = False


class AssistantTextEvent(_Event):
    """Assistant text outside a message (e.g. streamed thinking-out-loud)."""

    type: Literal["assistant_text"] = "assistant_text"
    text: str


class ResultEvent(_Event):
    """End-of-turn accounting reported by the client (cost, tokens, turns)."""

    type: Literal["result"] = "result"
    cost: float | None = Field(default=None, ge=0, le=MAX_AMOUNT, allow_inf_nan=False)
    duration_ms: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    turns: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    input_tokens: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    output_tokens: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    cache_read_tokens: int | None = Field(default=None, ge=0, le=MAX_COUNT)


class StatusEvent(_Event):
    """Written by the server on every status change."""

    type: Literal["status"] = "status"
    from_: Status = Field(alias="from")
    to: Status
    reason: str | None = None


class HandoffEvent(_Event):
    """Written by the server in the old thread of a handoff."""

    type: Literal["handoff"] = "handoff"
    to_thread_id: str
    trailing_count: int
    reason: str
    summary: str | None = None


class ContinuedFromEvent(_Event):
    """Written by the server first in a continuation thread."""

    type: Literal["continued_from"] = "continued_from"
    from_thread_id: str
    reason: str
    carried_count: int = 0


class ThreadResumedEvent(_Event):
    """Written by the server in a finished thread that was resumed."""

    type: Literal["thread_resumed"] = "thread_resumed"
    to_thread_id: str
    message: str


class CheckpointEvent(_Event):
    """Written by the server at turn boundaries: hash of the preceding transcript bytes."""

    type: Literal["checkpoint"] = "checkpoint"
    sha256: str
    signature: str


class CustomEvent(BaseModel):
    """A client-defined event; its ``type`` must start with ``x-``; other fields are free."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str


Event = (
    MessageEvent
    | ToolUseEvent
    | ToolResultEvent
    | AssistantTextEvent
    | ResultEvent
    | StatusEvent
    | HandoffEvent
    | ContinuedFromEvent
    | ThreadResumedEvent
    | CheckpointEvent
    | CustomEvent
)

CLIENT_EVENT_TYPES: dict[str, type[_Event]] = {
    "message": MessageEvent,
    "tool_use": ToolUseEvent,
    "tool_result": ToolResultEvent,
    "assistant_text": AssistantTextEvent,
    "result": ResultEvent,
}
SERVER_EVENT_TYPES: dict[str, type[_Event]] = {
    "status": StatusEvent,
    "handoff": HandoffEvent,
    "continued_from": ContinuedFromEvent,
    "thread_resumed": ThreadResumedEvent,
    "checkpoint": CheckpointEvent,
}
ALL_EVENT_TYPES = {**CLIENT_EVENT_TYPES, **SERVER_EVENT_TYPES}
_KNOWN = ", ".join(ALL_EVENT_TYPES)


def _describe_validation(prefix: str, exc: ValidationError, data: dict[str, Any]) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(event)"
        loc = loc if len(loc) <= 200 else loc[:200] + "..."
        if err["type"] == "extra_forbidden":
            parts.append(f"{prefix}.{loc}: unknown field for type {quote(data.get('type'))}")
        elif err["type"] == "missing":
            parts.append(f"{prefix}.{loc}: required field is missing")
        else:
            parts.append(f"{prefix}.{loc}: {err['msg']} (got {quote(err.get('input'))})")
    return "; ".join(parts)


def parse_event(data: object, *, where: str = "event", allow_server_types: bool = False) -> Event:
    """Validate one event dict into its typed model.

    A dict without ``type`` is a legacy line and is read as ``message``. Server-written
    types are refused unless ``allow_server_types`` (imports, the server itself).

    Raises:
        InvalidInputError: naming the field, the rule and the value.
    """
    if isinstance(data, BaseModel):
        data = data.model_dump(by_alias=True, exclude_none=True)
    if not isinstance(data, dict):
        raise InvalidInputError(
            f"{where} must be a JSON object; got {type(data).__name__} {data!r:.200}", rule="event_shape"
        )
    etype = data.get("type", "message")
    if "type" not in data:
        data = {"type": "message", **data}
    if not isinstance(etype, str):
        raise InvalidInputError(f"{where}.type must be a string; got {etype!r:.100}", rule="event_type")
    if etype.startswith("x-"):
        if not CUSTOM_TYPE_RE.fullmatch(etype):
            raise InvalidInputError(
                f"{where}.type {quote(etype)} is not a valid custom type (rule ^x-[a-z0-9][a-z0-9_.-]{{0,63}}$)",
                rule="event_type",
            )
        reserved = {"seq", "ts"} & data.keys()
        if reserved:
            raise InvalidInputError(
                f"{where} may not set {sorted(reserved)}: seq and ts are assigned by the server",
                rule="event_reserved_field",
            )
        return CustomEvent.model_validate(data)
    model = ALL_EVENT_TYPES.get(etype)
    if model is None:
        raise InvalidInputError(
            f"{where}.type {quote(etype)} is not a known event type (known: {_KNOWN}; "
            "custom types need an 'x-' prefix)",
            rule="event_type",
        )
    if etype in SERVER_EVENT_TYPES and not allow_server_types:
        raise InvalidInputError(
            f"{where}.type {quote(etype)} is written by the server only; clients append "
            f"{', '.join(CLIENT_EVENT_TYPES)} or x-* events (use update_thread to change status)",
            rule="event_type_reserved",
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInputError(_describe_validation(where, exc, data), rule="event_field") from None


def event_payload(event: Event) -> dict[str, Any]:
    """The event's fields as they are stored (aliases applied, unset optionals dropped)."""
    return event.model_dump(by_alias=True, exclude_none=True, mode="json")


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as committed: its number, time and canonical JSON line (the transcript bytes)."""

    thread_id: str
    seq: int
    ts: str
    type: str
    line: str
    prev_hash: str | None = None
    """The database hash chain's h(seq-1) (see integrity.py); None for rows written before it."""

    def data(self) -> dict[str, Any]:
        """The event as a dict (``seq``, ``ts``, ``type`` and its fields)."""
        return json.loads(self.line)


def render_line(seq: int, ts: str, payload: dict[str, Any]) -> str:
    """The canonical transcript line for an event: identical bytes on every backend."""
    return canonical_json({**payload, "seq": seq, "ts": ts})


# ----------------------------------------------------------------------- thread


class Limits(BaseModel):
    """Per-thread limits on the thread's own usage; crossing one moves it to error (docs/budgets.md)."""

    model_config = ConfigDict(extra="forbid")
    turns: int | None = Field(
        default=None, ge=0, le=MAX_COUNT, description="most turns (summed from result events)"
    )
    tokens: int | None = Field(
        default=None, ge=0, le=MAX_COUNT, description="most input + output tokens (from result events)"
    )
    spend: float | None = Field(
        default=None,
        ge=0,
        le=MAX_AMOUNT,
        allow_inf_nan=False,
        description="most this thread itself may spend",
    )


class Budget(BaseModel):
    """A spend budget asked for at creation: ``max_spend`` in the client's currency unit."""

    model_config = ConfigDict(extra="forbid")
    max_spend: float = Field(
        ge=0, le=MAX_AMOUNT, allow_inf_nan=False, description="most this thread and its descendants may spend"
    )


class BudgetState(BaseModel):
    """A thread's budget position, kept by the server (docs/budgets.md).

    ``remaining = max_spend - actual_spend - reserved``; a child's ``max_spend`` is
    reserved from its nearest budgeted ancestor (``reserved_from``), which holds ``held``
    of it until the child spends it or ends.
    """

    model_config = ConfigDict(extra="forbid")
    max_spend: float = Field(description="the budget given at creation")
    reserved: float = Field(default=0.0, description="held for active children (their unspent budgets)")
    actual_spend: float = Field(default=0.0, description="spent by this thread and all its descendants")
    remaining: float = Field(description="max_spend - actual_spend - reserved")
    reserved_from: str | None = Field(default=None, description="the ancestor whose budget holds this one")
    held: float = Field(default=0.0, description="what reserved_from still holds for this thread")


class Usage(BaseModel):
    """What a thread used, summed from its ``result`` events (kept by the server)."""

    model_config = ConfigDict(extra="forbid")
    turns: int = Field(default=0, description="sum of result.turns (1 per result event without turns)")
    tokens: int = Field(default=0, description="sum of result.input_tokens + result.output_tokens")
    spend: float = Field(default=0.0, description="sum of result.cost of this thread's own events")
    actual_spend: float = Field(default=0.0, description="spend of this thread plus all its descendants")
    version: int = Field(default=0, description="bumped on every change (a guard for concurrent updates)")


@dataclass(frozen=True, slots=True)
class UsageDelta:
    """What one append adds to a thread's usage (from its ``result`` events)."""

    turns: int = 0
    tokens: int = 0
    spend: float = 0.0


class Exceeded(BaseModel):
    """A budget or limit an append went over: the append stands, the thread is moved to error."""

    reason: Literal[
        "budget_exceeded", "turns_limit_exceeded", "tokens_limit_exceeded", "spend_limit_exceeded"
    ]
    thread_id: str = Field(description="the thread whose budget or limit was exceeded")
    limit: float
    used: float
    message: str


class ContextUsage(BaseModel):
    """Estimated context use of a thread: tokens used, window, and their ratio."""

    used: int
    window: int
    ratio: float


class ForkPoint(BaseModel):
    """Where a fork branched off: the source thread and the last seq it copied."""

    model_config = ConfigDict(extra="forbid")
    thread_id: str
    seq: int


OWNER_RE = re.compile(r"^[\x21-\x7e]{1,200}$")


def check_owner(value: object) -> str:
    """Return ``value`` if it is a lease owner: 1-200 printable ASCII characters without spaces."""
    if not isinstance(value, str) or not OWNER_RE.fullmatch(value):
        raise InvalidInputError(
            f"owner must be 1-200 printable ASCII characters without spaces (e.g. 'worker-1'); got {value!r:.200}",
            rule="owner_format",
        )
    return value


class Lease(BaseModel):
    """Who runs a thread now (acquire_thread): ``owner`` holds it until ``expires_at``."""

    model_config = ConfigDict(extra="forbid")
    owner: str
    expires_at: str = Field(description="UTC ISO 8601; every write by the owner moves it ttl seconds on")
    ttl: float

    @property
    def expires_epoch(self) -> float:
        return parse_iso(self.expires_at).timestamp()


class Thread(BaseModel):
    """The manifest of one thread plus its counters, as every layer sees it."""

    model_config = ConfigDict(extra="forbid")

    thread_id: str
    agent_id: str = DEFAULT_AGENT_ID
    title: str | None = None
    directive: str | None = None
    parent_id: str | None = None
    status: Status = Status.CREATED
    status_reason: str | None = None
    model: str | None = None
    context_window: int
    trigger_threshold: float | None = None
    stale_after: float
    limits: Limits | None = None
    capabilities: dict[str, Any] | None = None
    budget: BudgetState | None = None
    result: Any = None
    outputs: Any = None
    cost: float | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    continuation_of: str | None = None
    continuation_thread_id: str | None = None
    chain_root_id: str
    link_reason: Literal["handoff", "resume"] | None = None
    forked_from: ForkPoint | None = None
    lease: Lease | None = None
    created_at: str
    updated_at: str
    heartbeat_at: str
    # counters kept by the store in the append transaction
    event_count: int = 0
    text_chars: int = 0
    input_tokens: int | None = None
    version: int = 0
    # filled by get_thread only: child threads by status
    children: dict[str, int] | None = None
    # accounting kept by the store beside the manifest (guarded by usage.version)
    usage: Usage = Field(default_factory=Usage)

    def context(self) -> ContextUsage:
        """DESIGN §7: max(text chars // 4, latest reported input_tokens) over the window."""
        used = max(self.text_chars // 4, self.input_tokens or 0)
        return ContextUsage(used=used, window=self.context_window, ratio=round(used / self.context_window, 6))


ACCOUNT_FIELDS = frozenset({"usage", "budget"})
"""Live accounting (usage and budget position), stored beside the manifest and changed by PutUsage."""

COUNTER_FIELDS = ("event_count", "text_chars", "input_tokens", "version")
"""The counters every store maintains beside the manifest (a bundle carries them as stored)."""

MANIFEST_FIELDS = frozenset(Thread.model_fields) - {*COUNTER_FIELDS, "children", "lease"} - ACCOUNT_FIELDS
"""Fields of the stored manifest document; the rest are counters and accounts the store maintains."""
