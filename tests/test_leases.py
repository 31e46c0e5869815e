"""Run leases (issue 18 item 4): refusals for non-holders, renewal, expiry, release, handoffs,
ranges; over every backend, through MCP, and two processes racing for one lease."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from conftest import PYTHON
from mcp_helpers import call, call_error
from threadloom.config import Settings
from threadloom.errors import ConflictError, InvalidInputError, InvalidStateError
from threadloom.mcp_server import build_server
from threadloom.models import Status
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore

pytestmark = pytest.mark.anyio
RACER = str(Path(__file__).with_name("proc_lease.py"))


def msg(text: str, role: str = "user") -> dict[str, Any]:
    return {"type": "message", "role": role, "text": text}


async def leased(service: ThreadService, owner: str = "w1", ttl: float = 60) -> str:
    t = await service.create_thread()
    await service.acquire_thread(t.thread_id, owner, ttl)
    return t.thread_id


async def test_writes_that_do_not_name_the_holder_are_refused(service: ThreadService) -> None:
    tid = await leased(service)
    before = await service.get_thread(tid)
    assert before.lease is not None and before.lease.owner == "w1"  # the manifest shows it
    for owner in (None, "w2"):
        with pytest.raises(ConflictError) as err:
            await service.append(tid, [msg("sneaky")], owner=owner)
        assert err.value.rule == "thread_leased"
        assert "'w1'" in err.value.message and before.lease.expires_at in err.value.message
        with pytest.raises(ConflictError) as err:
            await service.update_thread(tid, status="cancelled", owner=owner)
        assert err.value.rule == "thread_leased"
        with pytest.raises(ConflictError):
            await service.update_thread(tid, result="not mine", owner=owner)
    after = await service.get_thread(tid)
    assert (after.event_count, after.status, after.result) == (0, Status.CREATED, None)  # nothing written
    out = await service.append(tid, [msg("mine")], owner="w1")
    assert out.status == Status.RUNNING
    await service.append(tid, [{"type": "result", "cost": 0.1}], owner="w1")  # the accounted path too
    with pytest.raises(ConflictError):
        await service.append(tid, [{"type": "result", "cost": 0.1}])
    done = await service.update_thread(tid, status="completed", result="ok", owner="w1")
    assert done.status == Status.COMPLETED


async def test_writes_by_the_holder_renew_the_lease(service: ThreadService) -> None:
    tid = await leased(service, ttl=30)
    first = (await service.get_thread(tid)).lease
    assert first is not None and first.ttl == 30
    await anyio.sleep(0.01)
    await service.append(tid, [msg("step 1")], owner="w1")
    second = (await service.get_thread(tid)).lease
    assert second is not None and second.expires_at > first.expires_at
    await anyio.sleep(0.01)
    await service.append(tid, [msg("step 2")], owner="w1")  # running now: PostgreSQL's one-call path
    fast = (await service.get_thread(tid)).lease
    assert fast is not None and fast.expires_at > second.expires_at
    second = fast
    await anyio.sleep(0.01)
    await service.update_thread(tid, metadata={"step": 2}, owner="w1")
    third = (await service.get_thread(tid)).lease
    assert third is not None and third.expires_at > second.expires_at
    again = await service.acquire_thread(tid, "w1", 120)  # acquiring again renews, with the new ttl
    assert again.lease is not None and again.lease.ttl == 120 and again.lease.expires_at > third.expires_at


async def test_an_expired_lease_is_free(service: ThreadService) -> None:
    tid = await leased(service, ttl=1)
    with pytest.raises(ConflictError):
        await service.acquire_thread(tid, "w2", 60)
    await anyio.sleep(1.1)
    assert (await service.get_thread(tid)).lease is None
    await service.append(tid, [msg("anyone may write now")])
    taken = await service.acquire_thread(tid, "w2", 60)
    assert taken.lease is not None and taken.lease.owner == "w2"
    with pytest.raises(ConflictError):
        await service.append(tid, [msg("w1 came back too late")], owner="w1")


async def test_release_frees_the_thread_and_only_the_holder_may_release(service: ThreadService) -> None:
    tid = await leased(service)
    with pytest.raises(ConflictError) as err:
        await service.release_thread(tid, "w2")
    assert err.value.rule == "thread_leased"
    out = await service.release_thread(tid, "w1")
    assert out.lease is None and "released" in out.message
    assert (await service.get_thread(tid)).lease is None
    again = await service.release_thread(tid, "w1")  # idempotent
    assert again.lease is None and "nothing to release" in again.message
    await service.append(tid, [msg("free again")])
    other = await service.acquire_thread(tid, "w2", 5)
    assert other.lease is not None and other.lease.owner == "w2"


async def test_ranges_and_ended_threads(service: ThreadService) -> None:
    t = await service.create_thread()
    for ttl in (0, 0.5, 3601, -1, True):
        with pytest.raises(InvalidInputError) as err:
            await service.acquire_thread(t.thread_id, "w1", ttl)  # type: ignore[arg-type]
        assert err.value.rule == "ttl_range" and "between 1 and 3600" in err.value.message
    for owner in ("", "has space", "x" * 201):
        with pytest.raises(InvalidInputError) as err:
            await service.acquire_thread(t.thread_id, owner, 10)
        assert err.value.rule == "owner_format"
    with pytest.raises(InvalidInputError):
        await service.append(t.thread_id, [msg("x")], owner="has space")
    await service.update_thread(t.thread_id, status="completed")
    with pytest.raises(InvalidStateError) as serr:
        await service.acquire_thread(t.thread_id, "w1", 10)
    assert serr.value.rule == "lease_ended"


async def test_a_handoff_needs_the_holder_and_carries_the_lease(service: ThreadService) -> None:
    tid = await leased(service)
    await service.append(tid, [msg("working")], owner="w1")
    with pytest.raises(ConflictError):
        await service.handoff(tid, summary="not mine")
    info = await service.handoff(tid, summary="so far", owner="w1")
    new = await service.get_thread(info.thread_id)
    assert new.lease is not None and new.lease.owner == "w1"
    with pytest.raises(ConflictError):
        await service.append(info.thread_id, [msg("intruder")], owner="w2")
    await service.append(info.thread_id, [msg("the run goes on")], owner="w1")


async def test_cascade_leaves_a_leased_child_to_its_runner(service: ThreadService) -> None:
    parent = await service.create_thread()
    child = await service.create_thread(parent_id=parent.thread_id)
    free = await service.create_thread(parent_id=parent.thread_id)
    await service.acquire_thread(child.thread_id, "w1", 60)
    await service.update_thread(parent.thread_id, status="completed", cascade=True)
    assert (await service.get_thread(free.thread_id)).status == Status.CANCELLED
    assert (await service.get_thread(child.thread_id)).status == Status.CREATED


async def test_leases_through_mcp(service: ThreadService) -> None:
    async with Client(build_server(service)) as client:
        tid = (await call(client, "create_thread", {}))["thread_id"]
        got = await call(client, "acquire_thread", {"thread_id": tid, "owner": "w1", "ttl": 60})
        assert got["lease"]["owner"] == "w1" and got["lease"]["expires_at"].endswith("Z")
        text = await call_error(client, "append_event", {"thread_id": tid, "event": msg("x")})
        assert "[thread_leased]" in text and "'w1'" in text
        ok = await call(client, "append_event", {"thread_id": tid, "event": msg("x"), "owner": "w1"})
        assert ok["seq"] == 2
        shown = await call(client, "get_thread", {"thread_id": tid})
        assert shown["lease"]["owner"] == "w1"
        text = await call_error(client, "acquire_thread", {"thread_id": tid, "owner": "w2", "ttl": 60})
        assert "[thread_leased]" in text
        text = await call_error(client, "acquire_thread", {"thread_id": tid, "owner": "w2", "ttl": 99999})
        assert "[ttl_range]" in text
        freed = await call(client, "release_thread", {"thread_id": tid, "owner": "w1"})
        assert freed["lease"] is None


def race(kind: str, where: str, tid: str, tmp: Path, racers: int = 4) -> list[str]:
    """``racers`` processes acquire one thread at the same moment; their answers."""
    go = tmp / "go"
    procs = [
        subprocess.Popen(
            [PYTHON, RACER, kind, where, tid, f"w{i}", str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(racers)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.strip() == "ready", (line, p.stderr.read() if p.stderr else "")
        go.write_text("go")
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            outs.append(out.strip())
        return outs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


async def test_processes_racing_for_one_lease_exactly_one_wins_sqlite(tmp_path: Path) -> None:
    root = tmp_path / "root"
    async with ThreadService(SQLiteStore(root, durability="normal"), Settings(root=root)) as svc:
        tid = (await svc.create_thread()).thread_id
    outs = await anyio.to_thread.run_sync(race, "sqlite", str(root), tid, tmp_path)
    assert sorted(outs) == ["lost thread_leased"] * 3 + ["won"]
    async with ThreadService(SQLiteStore(root, durability="normal"), Settings(root=root)) as svc:
        lease = (await svc.get_thread(tid)).lease
        assert lease is not None and f"w{outs.index('won')}" == lease.owner


async def test_processes_racing_for_one_lease_exactly_one_wins_postgres(pg_dsn: str, tmp_path: Path) -> None:
    from threadloom.store.postgres import PostgresStore

    async with ThreadService(PostgresStore(pg_dsn, pool_size=2), Settings()) as svc:
        tid = (await svc.create_thread()).thread_id
        outs = await anyio.to_thread.run_sync(race, "postgres", pg_dsn, tid, tmp_path)
        assert sorted(outs) == ["lost thread_leased"] * 3 + ["won"]
        lease = (await svc.get_thread(tid)).lease
        assert lease is not None and f"w{outs.index('won')}" == lease.owner
        with pytest.raises(ConflictError):  # the one-call append path checks the lease too
            await svc.append(tid, [msg("not the winner")], owner="nobody")
        await svc.append(tid, [msg("the winner")], owner=lease.owner)
