"""Bounded requests: one append call carries at most max_append_bytes (`[request_size]`,
nothing written), and a resource read of a thread too big for one answer is refused with
a pointer to read_events instead of being built whole."""

from __future__ import annotations

import pytest
from mcp import Client

from mcp_helpers import call, call_error
from threadloom.config import Settings
from threadloom.mcp_server import build_server
from threadloom.service import ThreadService
from threadloom.store.base import Store

pytestmark = pytest.mark.anyio

MIB = 1_048_576


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=["auto", "legacy"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


def client_for(store: Store, settings: Settings, mode: str, **changes: object) -> Client:
    return Client(build_server(ThreadService(store, settings.model_copy(update=changes))), mode=mode)


async def count(client: Client, tid: str) -> int:
    return (await call(client, "get_thread", {"thread_id": tid}))["event_count"]


def big(n: int) -> dict[str, str]:
    return {"role": "user", "text": "x" * n}


async def test_one_append_call_is_capped_by_default_at_16_mib(
    store: Store, settings: Settings, mode: str
) -> None:
    assert Settings().max_append_bytes == 16 * MIB
    async with client_for(store, settings, mode) as client:
        tid = (await call(client, "create_thread", {}))["thread_id"]
        # 17 events of about 1 MB each: every one under max_event_bytes, together over 16 MiB
        text = await call_error(client, "append_event", {"thread_id": tid, "events": [big(1_000_000)] * 17})
        assert "[request_size]" in text and str(16 * MIB) in text and "Nothing was written" in text, text[
            :300
        ]
        assert await count(client, tid) == 0
        out = await call(client, "append_event", {"thread_id": tid, "events": [big(1_000_000)] * 3})
        assert out["seqs"] == [2, 3, 4]  # seq 1: the status event of the first append


async def test_the_append_cap_is_a_setting(store: Store, settings: Settings, mode: str) -> None:
    async with client_for(store, settings, mode, max_append_bytes=100_000) as client:
        tid = (await call(client, "create_thread", {}))["thread_id"]
        text = await call_error(client, "append_event", {"thread_id": tid, "events": [big(30_000)] * 4})
        assert "[request_size]" in text and "max_append_bytes" in text and "events[3]" in text
        text = await call_error(client, "append_event", {"thread_id": tid, "event": big(200_000)})
        assert "[request_size]" in text
        assert await count(client, tid) == 0
        await call(client, "append_event", {"thread_id": tid, "events": [big(30_000)] * 3})


async def test_a_resource_too_big_for_one_read_points_to_read_events(
    store: Store, settings: Settings, mode: str
) -> None:
    async with client_for(store, settings, mode, max_resource_bytes=65_536) as client:
        small = (await call(client, "create_thread", {}))["thread_id"]
        await call(client, "append_event", {"thread_id": small, "event": big(100)})
        huge = (await call(client, "create_thread", {}))["thread_id"]
        for _ in range(4):
            await call(client, "append_event", {"thread_id": huge, "events": [big(1000)] * 30})
        for uri in (
            f"thread://{huge}/transcript",
            f"thread://{huge}/messages",
            f"thread://{huge}/messages?format=anthropic",
        ):
            with pytest.raises(Exception) as err:
                await client.read_resource(uri)
            assert "[resource_size]" in str(err.value) and "read_events" in str(err.value), uri
        # the thread reads fine a page at a time, and small threads read whole
        page = await call(client, "read_events", {"thread_id": huge, "limit": 1000})
        assert len(page["events"]) == 121 and not page["has_more"]
        got = await client.read_resource(f"thread://{small}/transcript")
        assert got.contents[0].text.count("\n") == 2  # type: ignore[union-attr]
