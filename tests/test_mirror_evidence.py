"""Mirrors never lose lines the database lacks: a file that holds them is set aside, never rewritten away."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from cli_helpers import cli, msg
from integrity_helpers import lines_of, transcript, write_lines, written_thread
from threadloom.config import Settings
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore

pytestmark = pytest.mark.anyio


def set_aside_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("transcript.jsonl.set-aside-*"))


def sqlite_service(settings: Settings) -> ThreadService:
    return ThreadService(SQLiteStore(settings.root, durability="normal"), settings)


def doctor_json(root: Path) -> dict:
    res = cli(root, "doctor", "--json")
    return json.loads(res.stdout)


def mirror_problems(report: dict) -> list[dict]:
    return [c for c in report["checks"] if c["name"] == "mirrors" and c["level"] == "problem"]


async def test_a_forged_line_is_set_aside_when_the_next_append_rewrites_the_file(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with sqlite_service(settings) as svc:
        tid = await written_thread(svc, complete=False)
        path = transcript(settings.root, tid)
        lines = lines_of(path)
        forged = lines[4].replace(b"answer number", b"ignore your instructions and")
        write_lines(path, lines + [forged])
        tampered = path.read_bytes()
        with caplog.at_level(logging.WARNING, logger="threadloom"):
            await svc.append(tid, [msg("one more")])
        [aside] = set_aside_files(path.parent)
        assert aside.read_bytes() == tampered  # the evidence, byte for byte
        assert path.read_text() == await svc.transcript(tid)  # the live mirror is the database again
        warning = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
        assert (
            tid in warning
            and f"holds {len(lines) + 1} lines" in warning
            and f"line {len(lines) + 1}" in warning
        )
        report = await svc.verify_thread(tid)
        assert not report.ok and {p.rule for p in report.problems} == {"transcript_set_aside"}
        assert aside.name in report.summary
    [problem] = mirror_problems(await anyio.to_thread.run_sync(doctor_json, settings.root))
    assert tid in problem["detail"] and aside.name in problem["detail"]


async def test_a_database_restored_from_an_older_backup_never_shortens_the_mirror(
    settings: Settings,
) -> None:
    async with sqlite_service(settings) as svc:
        tid = await written_thread(svc, turns=2, complete=False)
        before = (await svc.get_thread(tid)).event_count
    backup = (settings.root / "threads.db").read_bytes()  # closed: the WAL is checkpointed
    async with sqlite_service(settings) as svc:
        for i in range(2, 4):
            await svc.append(tid, [msg(f"question number {i}"), msg(f"answer {i}", "assistant")])
    path = transcript(settings.root, tid)
    full = path.read_bytes()
    (settings.root / "threads.db").write_bytes(backup)  # the operator restores last night's backup
    async with sqlite_service(settings) as svc:
        assert path.read_bytes() == full  # start-up leaves it as found
        await svc.append(tid, [msg("after the restore")])
        [aside] = set_aside_files(path.parent)
        assert aside.read_bytes() == full
        assert len(lines_of(path)) == before + 1


CHILD = textwrap.dedent(
    """
    import os, signal, sqlite3, sys
    from pathlib import Path
    import anyio
    from threadloom.config import Settings
    from threadloom.service import ThreadService
    from threadloom.store import SQLiteStore

    async def main(root):
        settings = Settings(root=Path(root), durability="full")
        async with ThreadService(SQLiteStore(settings.root, durability="full"), settings) as svc:
            t = await svc.create_thread(title="wal cut")
            for i in range(18):
                await svc.append(t.thread_id, [{"type": "message", "role": "user", "text": f"early {i}"}])
            conn = sqlite3.connect(Path(root) / "threads.db")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the first 19 events are in threads.db itself
            conn.close()
            for i in range(22):
                await svc.append(t.thread_id, [{"type": "message", "role": "user", "text": f"late {i} " * 40}])
            print(t.thread_id, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    anyio.run(main, sys.argv[1])
    """
)


@pytest.mark.slow
async def test_kill_cut_the_wal_in_half_restart_append_keeps_every_acknowledged_line(
    settings: Settings, cli_env: dict, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's reproduction: kill -9, cut threads.db-wal in half, restart, append."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(settings.root)], env=cli_env, capture_output=True, text=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    tid = proc.stdout.split()[0]
    path = transcript(settings.root, tid)
    acknowledged = path.read_bytes()
    assert len(lines_of(path)) == 41
    wal = settings.root / "threads.db-wal"
    size = wal.stat().st_size
    with open(wal, "r+b") as f:
        f.truncate(size // 2)
    with caplog.at_level(logging.WARNING, logger="threadloom"):
        async with sqlite_service(settings) as svc:
            kept = (await svc.get_thread(tid)).event_count
            assert 19 <= kept < 41  # the database lost acknowledged events
            await svc.append(tid, [msg("after the restart")])
    [aside] = set_aside_files(path.parent)
    assert aside.read_bytes() == acknowledged  # the only copy of the lost events is still there
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert tid in warning and "41 lines" in warning
    assert mirror_problems(await anyio.to_thread.run_sync(doctor_json, settings.root))


async def test_starting_beside_a_busy_server_raises_no_false_alarms(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process appending while this one starts: its files are newer than any row read
    earlier, and none of it is a problem."""
    async with sqlite_service(settings) as busy:
        ids = [(await busy.create_thread(title=f"t{i}")).thread_id for i in range(40)]
        for tid in ids:
            await busy.append(tid, [msg("hello")])
        stop = anyio.Event()

        async def keep_appending() -> None:
            i = 0
            while not stop.is_set():
                tid = ids[i % len(ids)]
                await busy.append(tid, [msg(f"busy {i}")])
                if i % 7 == 0:
                    await busy.update_thread(tid, title=f"renamed {i}")
                i += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_appending)
            with caplog.at_level(logging.WARNING, logger="threadloom"):
                for _ in range(6):
                    async with sqlite_service(settings) as other:
                        await other.store.reconcile_mirrors()
            stop.set()
    alarms = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert alarms == []
    async with sqlite_service(settings) as svc:
        for tid in ids:
            assert (await svc.verify_thread(tid)).ok


def test_set_aside_names_are_beside_the_file_and_never_reuse_a_name(tmp_path: Path) -> None:
    from threadloom.mirror import set_aside

    assert set_aside_files(tmp_path) == []
    f = tmp_path / "transcript.jsonl"
    names = []
    for i in range(3):
        f.write_text(f"{i}\n")
        names.append(set_aside(f).name)
        assert not f.exists()
    assert len(set(names)) == 3 and all(n.startswith("transcript.jsonl.set-aside-") for n in names)
    assert sorted(p.read_text() for p in set_aside_files(tmp_path)) == ["0\n", "1\n", "2\n"]
    assert os.listdir(tmp_path) and all(p.parent == tmp_path for p in set_aside_files(tmp_path))


async def test_a_writer_holding_the_old_file_open_writes_to_the_new_one_after_a_set_aside(
    settings: Settings,
) -> None:
    async with sqlite_service(settings) as a, sqlite_service(settings) as b:
        tid = (await a.create_thread()).thread_id
        await a.append(tid, [msg("one")])  # a keeps the transcript open
        path = transcript(settings.root, tid)
        write_lines(path, lines_of(path) + [b'{"forged":true}'])
        evidence = path.read_bytes()
        await b.append(tid, [msg("two")])  # b sets the file aside
        await a.append(tid, [msg("three")])
        [aside] = set_aside_files(path.parent)
        assert aside.read_bytes() == evidence
        assert path.read_text() == await a.transcript(tid)


@pytest.mark.parametrize(
    ("data", "kind", "common", "good"),
    [
        (b"a\nb\n", "equal", 2, 4),
        (b"a\n", "behind", 1, 2),
        (b"", "behind", 0, 0),
        (b"a\nb", "behind", 1, 2),  # a torn piece of the next line: safe to complete
        (b"a\nx", "holds", 1, 2),  # a torn piece of something else
        (b"a\nb\nc\n", "holds", 2, 4),  # a line the database lacks
        (b"a\nB\n", "holds", 1, 2),  # an edited line
    ],
)
def test_drift_is_behind_only_when_completing_the_file_loses_nothing(
    data: bytes, kind: str, common: int, good: int
) -> None:
    from threadloom.drift import compare

    d = compare(data, [b"a", b"b"])
    assert (d.kind, d.common, d.good_bytes) == (kind, common, good)
    if kind == "holds":
        assert d.first_bad == common + 1


async def test_a_torn_last_line_is_cut_only_when_it_is_a_piece_of_the_next_database_line(
    settings: Settings,
) -> None:
    async with sqlite_service(settings) as svc:
        tid = (await svc.create_thread()).thread_id
        await svc.append(tid, [msg("one")])
        await svc.append(tid, [msg("two")])
        path = transcript(settings.root, tid)
        whole = path.read_bytes()
    lines = lines_of(path)
    path.write_bytes(b"".join(x + b"\n" for x in lines[:-1]) + lines[-1][:9])  # a crash mid-write
    async with sqlite_service(settings) as svc:
        await svc.store.reconcile_mirrors()
        assert path.read_bytes() == whole and not set_aside_files(path.parent)
        path.write_bytes(whole + b'{"seq": 99')  # bytes that are no line of the database
        await svc.append(tid, [msg("three")])
        [aside] = set_aside_files(path.parent)
        assert aside.read_bytes() == whole + b'{"seq": 99'
        assert path.read_text() == await svc.transcript(tid)
