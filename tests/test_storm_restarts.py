"""No false alarms: servers killed and restarted during a write storm warn about nothing for threads that verify."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from cli_helpers import msg
from threadloom.config import Settings
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import anyio
    from threadloom.config import Settings
    from threadloom.service import ThreadService
    from threadloom.store import SQLiteStore

    async def main(root, ids, tag, durability):
        settings = Settings(root=Path(root), durability=durability)
        async with ThreadService(SQLiteStore(settings.root, durability=durability), settings) as svc:
            i = 0
            while True:
                tid = ids[i % len(ids)]
                await svc.append(tid, [{"type": "message", "role": "user", "text": f"{tag}-{i} " * 20}])
                if i % 5 == 0:
                    await svc.update_thread(tid, title=f"{tag} renamed {i}")
                if i % 9 == 0:
                    await svc.append(tid, [{"type": "result", "cost": 0.001, "input_tokens": 10}])
                print(i, flush=True)
                i += 1

    anyio.run(main, sys.argv[1], sys.argv[2].split(","), sys.argv[3], sys.argv[4])
    """
)


def service(root: Path, durability: str = "full") -> ThreadService:
    settings = Settings(root=root, durability=durability)  # type: ignore[arg-type]
    return ThreadService(SQLiteStore(root, durability=settings.durability), settings)


def start_writers(root: Path, ids: list[str], env: dict, n: int, durability: str) -> list[subprocess.Popen]:
    procs = []
    for w in range(n):
        mine = ",".join(ids[w::2] + ids[:1])  # every writer shares the first thread
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WRITER, str(root), mine, f"w{w}", durability],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        )
    for p in procs:  # each has written at least once
        assert p.stdout is not None
        p.stdout.readline()
    return procs


@pytest.mark.parametrize("durability", ["full", "normal"])
async def test_servers_restarted_during_a_storm_of_killed_writers_raise_no_false_alarms(
    tmp_path: Path, cli_env: dict, caplog: pytest.LogCaptureFixture, durability: str
) -> None:
    root = tmp_path / "root"
    async with service(root, durability) as svc:
        ids = [(await svc.create_thread(title=f"t{i}")).thread_id for i in range(6)]
        for tid in ids:
            await svc.append(tid, [msg("hello")])
    starts = 0
    with caplog.at_level(logging.WARNING, logger="threadloom"):
        for _round in range(4):
            procs = start_writers(root, ids, cli_env, 3, durability)
            deadline = time.monotonic() + 0.6
            while time.monotonic() < deadline:  # servers start while the others write
                async with service(root, durability):
                    starts += 1
            for p in procs:  # kill -9 mid-write, then start again at once
                os.kill(p.pid, signal.SIGKILL)
            for p in procs:
                p.wait()
            async with service(root, durability):
                starts += 1
    alarms = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert starts >= 8
    async with service(root, durability) as svc:
        reports = [await svc.verify_thread(tid) for tid in ids]
        bad = [r.summary for r in reports if not r.ok]
        assert bad == []
        for tid in ids:
            text = await anyio.Path(root / "threads" / tid / "transcript.jsonl").read_text()
            assert text == await svc.transcript(tid)
    assert alarms == []
