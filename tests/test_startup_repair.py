"""Start-up repairs only the mirrors a crash may have left behind (recorded in the commit), not every thread."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from cli_helpers import cli, msg
from integrity_helpers import lines_of, transcript, write_lines
from threadloom.config import Settings
from threadloom.models import Status, Thread, iso, new_thread_id, utc_now
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore
from threadloom.store.base import CreateThread

pytestmark = pytest.mark.anyio

# Runs ARGV[2:] as the threadloom CLI, or appends to every thread of the root, and dies by
# SIGKILL right at the start of mirror write number ARGV[1]: after that commit, before its files.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from threadloom.mirror import Mirror

    die_at = int(sys.argv[1])
    calls = [0]
    original = Mirror.sync

    def sync(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args, **kwargs)

    Mirror.sync = sync
    if sys.argv[2] == "append":
        import anyio
        from pathlib import Path
        from threadloom.config import Settings
        from threadloom.service import ThreadService
        from threadloom.store import SQLiteStore

        async def main(root, tid):
            settings = Settings(root=Path(root), durability="full")
            async with ThreadService(SQLiteStore(settings.root, durability="full"), settings) as svc:
                for i in range(10):
                    await svc.append(tid, [{"type": "message", "role": "user", "text": f"late {i}"}])

        anyio.run(main, sys.argv[3], sys.argv[4])
    else:
        from threadloom.cli import app
        app(sys.argv[2:])
    """
)


def service(root: Path) -> ThreadService:
    return ThreadService(SQLiteStore(root, durability="normal"), Settings(root=root, durability="normal"))


async def big_root(root: Path, n: int) -> list[str]:
    """``n`` threads with one message each, made in a few large commits."""
    ids = []
    async with service(root) as svc:
        now = iso(utc_now())
        for start in range(0, n, 250):
            batch = [
                Thread(
                    thread_id=(tid := new_thread_id()),
                    chain_root_id=tid,
                    context_window=200_000,
                    agent_id="bulk",
                    title="bulk",  # titled: no automatic title commit between the counted mirror writes
                    status=Status.RUNNING,
                    created_at=now,
                    updated_at=now,
                    heartbeat_at=now,
                    stale_after=86400,
                )
                for _ in range(start, min(n, start + 250))
            ]
            await svc.store.commit([CreateThread(t) for t in batch])
            ids += [t.thread_id for t in batch]
        for tid in ids[:20]:
            await svc.append(tid, [msg(f"hello {tid}")])
    return ids


def run_child(env: dict, die_at: int, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(die_at), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return proc


async def test_a_crash_between_commit_and_mirror_write_is_repaired_without_a_full_sweep(
    tmp_path: Path, cli_env: dict
) -> None:
    root = tmp_path / "root"
    ids = await big_root(root, 1200)
    tid = ids[3]
    run_child(cli_env, 4, "append", str(root), tid)  # three appends mirrored, the fourth killed
    path = transcript(root, tid)
    async with service(root) as svc:
        checked, fixed = svc.store.startup_repair  # type: ignore[misc]
        assert (checked, fixed) == (1, 1)  # only the thread the crash left behind, not 1200
        assert path.read_text() == await svc.transcript(tid)
        assert (await svc.get_thread(tid)).event_count == len(lines_of(path)) == 5
        assert (await svc.verify_thread(tid)).ok
    async with service(root) as svc:  # repaired once: nothing is left for the next start
        assert svc.store.startup_repair == (0, 0)  # type: ignore[attr-defined]


async def test_a_clean_shutdown_leaves_nothing_to_repair(tmp_path: Path) -> None:
    root = tmp_path / "root"
    async with service(root) as svc:
        tids = [(await svc.create_thread()).thread_id for _ in range(5)]
        for t in tids:
            await svc.append(t, [msg("one")])
            await svc.append(t, [msg("two")])
    async with service(root) as svc:
        assert svc.store.startup_repair == (0, 0)  # type: ignore[attr-defined]


async def test_an_import_killed_between_commit_and_mirror_is_completed_at_start_up(
    tmp_path: Path, cli_env: dict
) -> None:
    source = tmp_path / "source"
    async with service(source) as svc:
        for i in range(6):
            t = await svc.create_thread(title=f"imported {i}")
            await svc.append(t.thread_id, [msg(f"question {i}"), msg(f"answer {i}", "assistant")])
            await svc.update_thread(t.thread_id, status="completed", result="done")
    bundle = tmp_path / "bundle.jsonl"
    exported = await anyio.to_thread.run_sync(lambda: cli(source, "export", "--all", "-o", str(bundle)))
    assert exported.exit_code == 0
    root = tmp_path / "root"
    run_child(cli_env, 3, "import", str(bundle), "--root", str(root))
    conn = sqlite3.connect(root / "threads.db")
    committed = [tid for (tid,) in conn.execute("SELECT thread_id FROM threads")]
    conn.close()
    behind = [t for t in committed if not transcript(root, t).exists() or not lines_of(transcript(root, t))]
    assert behind  # the kill left committed threads without their lines
    async with service(root) as svc:
        threads = await svc.all_threads()
        assert len(threads) >= len(behind)
        for t in threads:
            assert transcript(root, t.thread_id).read_text() == await svc.transcript(t.thread_id)
            assert (transcript(root, t.thread_id).parent / "thread.json").exists()
    again = await anyio.to_thread.run_sync(lambda: cli(root, "import", str(bundle), "--json"))
    assert again.exit_code == 0, again.stdout + again.stderr
    assert sorted(json.loads(again.stdout)["skipped"]) == sorted(t.thread_id for t in threads)


async def test_a_database_from_before_the_marks_gets_one_full_sweep_in_the_background(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    async with service(root) as svc:
        tid = (await svc.create_thread()).thread_id
        await svc.append(tid, [msg("one"), msg("two"), msg("three")])
        whole = await svc.transcript(tid)
    path = transcript(root, tid)
    write_lines(path, lines_of(path)[:1])  # behind, with no mark (an older version's crash)
    conn = sqlite3.connect(root / "threads.db")
    conn.executescript(  # the database as the previous version left it
        "DROP TABLE mirror_pending"
    )
    conn.close()
    async with service(root) as svc:
        sweep = svc.store._sweep  # type: ignore[attr-defined]
        assert sweep is not None and svc.store.startup_repair == (0, 0)  # type: ignore[attr-defined]
        assert await anyio.to_thread.run_sync(sweep.done.wait, 30)
        assert path.read_text() == whole and sweep.fixed == 1
    conn = sqlite3.connect(root / "threads.db")
    assert conn.execute("SELECT COUNT(*) FROM meta WHERE key = 'mirror_sweep'").fetchone()[0] == 0
    conn.close()
    async with service(root) as svc:
        assert svc.store._sweep is None  # type: ignore[attr-defined]
