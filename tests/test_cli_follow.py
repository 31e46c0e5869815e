"""``threadloom tail -f``: live events from other processes, across handoffs, Ctrl-C exits cleanly."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from cli_helpers import hand_off, msg, open_root
from conftest import PYTHON
from threadloom.follow import follow
from threadloom.models import StoredEvent, Thread
from threadloom.service import ThreadService

LINE_TIMEOUT = 30.0


class Lines:
    """The stdout of a process, line by line, with a timeout (never a hung test)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.q: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout

        def pump() -> None:
            for line in stdout:
                self.q.put(line)
            self.q.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def next(self) -> dict[str, Any]:
        line = self.q.get(timeout=LINE_TIMEOUT)
        assert line is not None, "the follower exited early"
        return json.loads(line)


def start_tail(root: Path, tid: str, env: dict, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PYTHON, "-m", "threadloom", "tail", tid, "-f", "--json", "--root", str(root), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_tail_follow_sees_events_from_another_process_and_the_next_thread_after_a_handoff(
    tmp_path: Path, cli_env: dict
) -> None:
    root = tmp_path / "root"

    async def setup() -> str:
        async with open_root(root) as svc:
            tid = (await svc.create_thread(title="live")).thread_id
            await svc.append(tid, [msg("first")])
            return tid

    tid = anyio.run(setup)
    proc = start_tail(root, tid, cli_env)
    try:
        lines = Lines(proc)
        assert lines.next()["event"]["type"] == "status"
        assert lines.next()["event"]["text"] == "first"

        async def writer() -> str:  # this test process is the other process
            async with open_root(root) as svc:
                await svc.append(tid, [msg("second", "assistant")])
                return ""

        anyio.run(writer)
        got = lines.next()
        assert (got["thread_id"], got["event"]["seq"], got["event"]["text"]) == (tid, 3, "second")

        async def handoff() -> str:
            async with open_root(root) as svc:
                new = await hand_off(svc, tid)
                await svc.append(new, [msg("in the next thread", "assistant")])
                return new

        new = anyio.run(handoff)
        seen = [lines.next()]
        while "continued_in" not in seen[-1] and len(seen) < 10:  # status, handoff, checkpoint, then the hop
            seen.append(lines.next())
        hop = seen[-1]
        assert hop == {"thread_id": tid, "continued_in": new, "link": "handoff"}
        texts = []
        while "in the next thread" not in texts:
            r = lines.next()
            if r.get("thread_id") == new:
                texts.append(r["event"].get("text"))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None and proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_tail_until_done_returns_when_the_chain_ends(tmp_path: Path, cli_env: dict) -> None:
    root = tmp_path / "root"

    async def setup() -> str:
        async with open_root(root) as svc:
            tid = (await svc.create_thread()).thread_id
            await svc.append(tid, [msg("go")])
            return tid

    tid = anyio.run(setup)
    proc = start_tail(root, tid, cli_env, "--until-done")
    try:
        lines = Lines(proc)
        assert lines.next()["event"]["seq"] == 1

        async def finish() -> None:
            async with open_root(root) as svc:
                await svc.update_thread(tid, status="completed", result="ok")

        anyio.run(finish)
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None and proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.anyio
async def test_follow_is_woken_by_a_commit_in_this_process(service: ThreadService) -> None:
    tid = (await service.create_thread()).thread_id
    await service.append(tid, [msg("one")])
    got: list[StoredEvent] = []
    hops: list[tuple[str, str]] = []
    arrived = anyio.Event()

    def on_event(ev: StoredEvent) -> None:
        got.append(ev)
        if ev.data().get("text") == "three":
            arrived.set()

    def on_hop(old: Thread, new_id: str) -> None:
        hops.append((old.thread_id, new_id))

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: follow(service, tid, on_event, on_hop, after_seq=1))
        await anyio.sleep(0.05)
        await service.append(tid, [msg("two"), msg("three")])
        with anyio.fail_after(10):
            await arrived.wait()
        tg.cancel_scope.cancel()
    assert [e.data().get("text") for e in got] == ["one", "two", "three"]
    assert hops == []


@pytest.mark.anyio
async def test_follow_until_done_crosses_a_handoff_and_stops_at_the_end(service: ThreadService) -> None:
    tid = (await service.create_thread()).thread_id
    await service.append(tid, [msg("one")])
    new = await hand_off(service, tid)
    await service.update_thread(new, status="completed")
    got: list[tuple[str, int]] = []
    hops: list[tuple[str, str]] = []
    with anyio.fail_after(10):
        await follow(
            service,
            tid,
            lambda e: got.append((e.thread_id, e.seq)),
            lambda o, n: hops.append((o.thread_id, n)),
            until_done=True,
        )
    assert hops == [(tid, new)]
    assert got[0] == (tid, 1) and got[-1][0] == new
    assert [s for t, s in got if t == new] == list(range(1, (await service.get_thread(new)).event_count + 1))
