"""Property tests: any mix of valid and invalid batches keeps seqs gapless and mirrors exact."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from threadloom.config import Settings
from threadloom.errors import InvalidInputError
from threadloom.models import canonical_json, parse_event
from threadloom.service import ThreadService
from threadloom.store import MemoryStore, SQLiteStore

text = st.text(min_size=0, max_size=40)
good_event = st.one_of(
    st.builds(
        lambda r, t: {"type": "message", "role": r, "text": t},
        st.sampled_from(["user", "assistant", "system"]),
        text,
    ),
    st.builds(
        lambda i, n: {"type": "tool_use", "id": "t" + i, "name": "n" + n, "input": {"q": n}}, text, text
    ),
    st.builds(
        lambda i, o, e: {"type": "tool_result", "tool_use_id": "t" + i, "output": o, "is_error": e},
        text,
        text,
        st.booleans(),
    ),
    st.builds(lambda t: {"type": "assistant_text", "text": t}, text),
    st.builds(
        lambda c, n: {"type": "result", "cost": c, "input_tokens": n}, st.floats(0, 10), st.integers(0, 1000)
    ),
    st.builds(lambda v: {"type": "x-custom", "value": v}, st.integers()),
)
BAD = [
    {"type": "nope"},
    {"type": "message", "role": "robot", "text": "x"},
    {"type": "status", "from": "running", "to": "completed"},
]
bad_event = st.sampled_from(BAD)
batch = st.lists(st.one_of(good_event, good_event, good_event, bad_event), min_size=1, max_size=6)


@given(st.lists(batch, min_size=1, max_size=8))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_batches_are_atomic_and_seqs_gapless(batches: list[list[dict]]) -> None:
    async def run() -> None:
        root = Path(tempfile.mkdtemp())
        for store in (MemoryStore(), SQLiteStore(root, durability="normal")):
            async with ThreadService(store, Settings(root=root)) as svc:
                tid = (await svc.create_thread()).thread_id
                expected: list[dict] = []
                for b in batches:
                    if any(e in BAD for e in b):
                        with pytest.raises(InvalidInputError):
                            await svc.append(tid, b)
                    else:
                        await svc.append(tid, b)
                        expected += b
                events = (await svc.read_events(tid, limit=1000)).events
                assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
                client = [e for e in events if e["type"] not in ("status", "checkpoint")]
                assert len(client) == len(expected)
                for got, want in zip(client, expected):
                    want_fields = parse_event(want).model_dump(by_alias=True, exclude_none=True, mode="json")
                    assert {k: v for k, v in got.items() if k not in ("seq", "ts")} == want_fields
                if isinstance(store, SQLiteStore):
                    assert (root / "threads" / tid / "transcript.jsonl").read_text() == await svc.transcript(
                        tid
                    )

    anyio.run(run)


@given(good_event)
def test_stored_lines_are_canonical_and_round_trip(event: dict) -> None:
    parsed = parse_event(event)
    payload = parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
    line = canonical_json(payload)
    assert parse_event(json.loads(line)) == parsed
