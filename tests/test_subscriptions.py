"""Resource subscriptions through a real client, in both protocol eras, in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from conftest import PYTHON
from mcp_helpers import call
from subscription_helpers import Subscriber, Updates, legacy_subscribe, subscriber
from threadloom.config import Settings
from threadloom.mcp_server import build_server
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore

pytestmark = pytest.mark.anyio
MODES = ["auto", "legacy"]
USER = {"role": "user", "text": "hello"}
WRITER = str(Path(__file__).with_name("proc_writer.py"))


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def sqlite_service(tmp_path: Path) -> AsyncIterator[ThreadService]:
    root = tmp_path / "root"
    async with ThreadService(SQLiteStore(root, durability="normal"), Settings(root=root)) as svc:
        yield svc


@pytest.fixture
async def session(
    sqlite_service: ThreadService, mode: str
) -> AsyncIterator[tuple[Client, Subscriber, Updates]]:
    updates = Updates()
    server = build_server(sqlite_service)
    async with Client(server, mode=mode, message_handler=updates.handler_for(mode)) as client:
        async with subscriber(client, mode, updates) as sub:
            yield client, sub, updates


async def new_thread(client: Client, **args: object) -> str:
    return (await call(client, "create_thread", dict(args)))["thread_id"]


async def append(client: Client, tid: str, text: str = "hello") -> None:
    await call(client, "append_event", {"thread_id": tid, "event": {"role": "user", "text": text}})


async def test_the_subscribe_capability_is_declared(sqlite_service: ThreadService, mode: str) -> None:
    async with Client(build_server(sqlite_service), mode=mode) as client:
        caps = client.session.server_capabilities
        assert caps is not None and caps.resources is not None and caps.resources.subscribe is True


@pytest.mark.parametrize("resource", ["transcript", "thread.json", "messages"])
async def test_an_append_sends_an_update_for_the_threads_resources(
    session: tuple[Client, Subscriber, Updates], resource: str
) -> None:
    client, sub, updates = session
    tid = await new_thread(client)
    uri = f"thread://{tid}/{resource}"
    await sub.subscribe(uri)
    await append(client, tid)
    assert await updates.next() == uri
    res = await client.read_resource(uri)
    assert "hello" in res.contents[0].text or resource == "thread.json"


async def test_a_manifest_change_updates_thread_json_but_not_the_transcript(
    session: tuple[Client, Subscriber, Updates],
) -> None:
    client, sub, updates = session
    tid = await new_thread(client)
    await append(client, tid)
    manifest, transcript = f"thread://{tid}/thread.json", f"thread://{tid}/transcript"
    await sub.subscribe(transcript)
    await sub.subscribe(manifest)
    await call(client, "update_thread", {"thread_id": tid, "title": "renamed"})
    assert await updates.next() == manifest
    await append(client, tid, "more")
    got = {await updates.next(), await updates.next()}
    assert got == {manifest, transcript}
    assert updates.pending() == []


async def test_unsubscribe_stops_the_updates(session: tuple[Client, Subscriber, Updates]) -> None:
    client, sub, updates = session
    a, b = await new_thread(client), await new_thread(client)
    ua, ub = f"thread://{a}/transcript", f"thread://{b}/transcript"
    await sub.subscribe(ua)
    await sub.subscribe(ub)
    await append(client, a)
    assert await updates.next() == ua
    await sub.unsubscribe(ua)
    await append(client, a, "after unsubscribe")
    await append(client, b, "still subscribed")
    # notifications go out in commit order: a's would have come before b's
    assert await updates.until(ub) == [ub]


async def test_children_resource_updates_when_a_child_is_created_or_moves(
    session: tuple[Client, Subscriber, Updates],
) -> None:
    client, sub, updates = session
    parent = await new_thread(client)
    uri = f"thread://{parent}/children"
    await sub.subscribe(uri)
    child = await new_thread(client, parent_id=parent)
    assert await updates.next() == uri
    await append(client, child)
    assert await updates.next() == uri
    other = await new_thread(client)  # not a child: no update
    await append(client, other)
    await call(client, "update_thread", {"thread_id": child, "status": "completed", "result": "done"})
    assert await updates.next() == uri
    assert updates.pending() == []


async def test_chain_resource_updates_when_the_chain_grows(
    session: tuple[Client, Subscriber, Updates],
) -> None:
    client, sub, updates = session
    tid = await new_thread(client)
    await append(client, tid)
    uri = f"chain://{tid}"
    await sub.subscribe(uri)
    handed = await call(client, "handoff_thread", {"thread_id": tid, "summary": "so far"})
    assert await updates.next() == uri
    updates.pending()
    await append(client, handed["thread_id"], "in the continuation")  # a member that joined later
    assert await updates.next() == uri


@pytest.mark.parametrize(
    "uri, rule",
    [
        ("thread://000000000000/transcript", "thread_not_found"),
        ("chain://000000000000", "thread_not_found"),
        ("thread://000000000000/children", "thread_not_found"),
        ("thread://NOT-AN-ID/transcript", "thread_id_format"),
        ("thread://../etc/transcript", "resource_uri"),
        ("file:///etc/passwd", "resource_uri"),
    ],
)
async def test_subscribing_to_a_missing_thread_or_an_unknown_uri_is_refused(
    sqlite_service: ThreadService, mode: str, uri: str, rule: str
) -> None:
    async with Client(build_server(sqlite_service), mode=mode) as client:
        with pytest.raises(MCPError) as err:
            if mode == "legacy":
                await legacy_subscribe(client, uri)
            else:
                async with client.listen(resource_subscriptions=[uri]):
                    pass
        assert f"[{rule}]" in str(err.value)
        await new_thread(client)  # the session stays alive


@pytest.mark.slow
async def test_an_append_by_another_process_sends_an_update(
    sqlite_service: ThreadService, mode: str, tmp_path: Path, cli_env: dict
) -> None:
    import subprocess

    import anyio

    updates = Updates()
    async with Client(
        build_server(sqlite_service), mode=mode, message_handler=updates.handler_for(mode)
    ) as client:
        async with subscriber(client, mode, updates) as sub:
            tid = await new_thread(client)
            uri = f"thread://{tid}/transcript"
            await sub.subscribe(uri)
            proc = await anyio.to_thread.run_sync(
                lambda: subprocess.run(
                    [PYTHON, WRITER, str(tmp_path / "root"), tid, "1", "other"],
                    env=cli_env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
            )
            assert proc.returncode == 0, proc.stderr
            assert await updates.next() == uri
            text = (await client.read_resource(uri)).contents[0].text
            assert "other-0" in text
