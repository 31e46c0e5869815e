"""The neutral, Anthropic and OpenAI message formats, checked against what each API accepts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chain_helpers import msg, result, use
from provider_shapes import check_anthropic, check_openai
from threadloom.errors import InvalidInputError
from threadloom.messages import FIRST_USER_TEXT, check_format, format_messages, rebuild_messages, request_body
from threadloom.models import StoredEvent, canonical_json, parse_event, render_line


def stored(events: list[dict[str, Any]]) -> list[StoredEvent]:
    out = []
    for i, e in enumerate(events, start=1):
        payload = parse_event(e).model_dump(by_alias=True, exclude_none=True, mode="json")
        out.append(StoredEvent("abcdefabcdef", i, "t", payload["type"], render_line(i, "t", payload)))
    return out


# ----------------------------------------------------------------------- examples

LOOP = [
    {"type": "message", "role": "system", "text": "You sort socks."},
    msg("sort the drawer"),
    {"type": "assistant_text", "text": "Let me look."},
    use("c1", "open", drawer=1),
    use("c2", "count"),
    result("c1", "5 socks"),
    result("c2", {"n": 5}),
    msg("2 pairs, 1 odd", "assistant"),
    msg("thanks"),
    use("c3", "open", drawer=2),
    result("c3", "stuck", is_error=True),
]


def test_an_agent_loop_has_the_exact_anthropic_shape() -> None:
    system, messages = format_messages(rebuild_messages(stored(LOOP)), "anthropic")
    assert system == "You sort socks."
    assert messages == [
        {"role": "user", "content": [{"type": "text", "text": "sort the drawer"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "c1", "name": "open", "input": {"drawer": 1}},
                {"type": "tool_use", "id": "c2", "name": "count", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "5 socks"},
                {"type": "tool_result", "tool_use_id": "c2", "content": '{"n":5}'},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "2 pairs, 1 odd"}]},
        {"role": "user", "content": [{"type": "text", "text": "thanks"}]},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "c3", "name": "open", "input": {"drawer": 2}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "c3", "content": "stuck", "is_error": True}],
        },
    ]
    check_anthropic(system, messages)


def test_an_agent_loop_has_the_exact_openai_shape() -> None:
    system, messages = format_messages(rebuild_messages(stored(LOOP)), "openai")
    assert system is None
    assert messages == [
        {"role": "system", "content": "You sort socks."},
        {"role": "user", "content": "sort the drawer"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "open", "arguments": '{"drawer":1}'}},
                {"id": "c2", "type": "function", "function": {"name": "count", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "5 socks"},
        {"role": "tool", "tool_call_id": "c2", "content": '{"n":5}'},
        {"role": "assistant", "content": "2 pairs, 1 odd"},
        {"role": "user", "content": "thanks"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c3", "type": "function", "function": {"name": "open", "arguments": '{"drawer":2}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c3", "content": "[error] stuck"},
    ]
    check_openai(messages)


def test_orphans_and_interleavings_become_text_instead_of_an_invalid_request() -> None:
    events = [
        {"type": "assistant_text", "text": "I start."},  # anthropic needs a user turn first
        result("ghost", "no call made this"),
        use("c1", "ls"),
        msg("wait, also check the basket"),  # interrupts the c1 pair
        result("c1", "late result"),
        msg("   "),  # blank
        use("c2", "ls"),  # pending at the very end: kept as a call
    ]
    neutral = rebuild_messages(stored(events))
    system, anth = format_messages(neutral, "anthropic")
    check_anthropic(system, anth)
    assert anth[0] == {"role": "user", "content": [{"type": "text", "text": FIRST_USER_TEXT}]}
    flat = json.dumps(anth)
    assert "no call made this" in flat and "late result" in flat and "check the basket" in flat
    assert anth[-1]["content"][-1] == {"type": "tool_use", "id": "c2", "name": "ls", "input": {}}
    _, oai = format_messages(neutral, "openai")
    check_openai(oai)
    assert oai[-1]["tool_calls"][0]["id"] == "c2"


def test_request_body_is_ready_to_send() -> None:
    neutral = rebuild_messages(stored(LOOP))
    body = request_body(neutral, "anthropic")
    assert set(body) == {"system", "messages"}
    assert set(request_body(rebuild_messages(stored(LOOP[1:])), "anthropic")) == {"messages"}
    assert set(request_body(neutral, "openai")) == {"messages"}
    assert request_body(neutral, "neutral") == neutral


def test_an_unknown_format_is_refused_naming_the_choices() -> None:
    with pytest.raises(InvalidInputError, match="neutral, anthropic, openai; got 'gemini'"):
        check_format("gemini")


# --------------------------------------------------------------------- properties

IDS = st.sampled_from(["c1", "c2", "c3"])
TEXT = st.sampled_from(["", " ", "hi", "look ", "a\nb", "ünï"])
EVENT = st.one_of(
    st.builds(lambda r, t: msg(t, r), st.sampled_from(["user", "assistant", "system"]), TEXT),
    st.builds(lambda t: {"type": "assistant_text", "text": t}, TEXT),
    st.builds(lambda i: use(i, "tool", q=i), IDS),
    st.builds(lambda i, o, e: result(i, o, e), IDS, st.one_of(TEXT, st.just({"k": [1]})), st.booleans()),
    st.just({"type": "result", "input_tokens": 3}),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(EVENT, max_size=14))
def test_any_event_sequence_formats_into_requests_both_apis_accept(events: list[dict[str, Any]]) -> None:
    neutral = rebuild_messages(stored(events))
    system, anth = format_messages(neutral, "anthropic")
    check_anthropic(system, anth)
    _, oai = format_messages(neutral, "openai")
    check_openai(oai)
    # nothing said is lost: every non-blank text and every tool output survives in both
    flat_a, flat_o = canonical_json([system, anth]), canonical_json(oai)
    for e in events:
        said = e.get("text") or (e.get("output") if isinstance(e.get("output"), str) else None)
        if said and said.strip():
            assert canonical_json(said.rstrip())[1:-1] in flat_a
            assert canonical_json(said)[1:-1] in flat_o
