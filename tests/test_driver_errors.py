"""A driver error inside a maintenance job reaches the CLI as one clear line (issue 16, item 3).

The SQLite backend translates ``sqlite3.Error`` into the project's error tree at one point
(its worker pools), maintenance jobs (delete, vacuum, reindex, mirror repair) included, so
an operator never sees a raw driver error or a traceback. The failures are real SQLite
errors: an authorizer on the store's connections refuses one kind of statement, or a
trigger in the database refuses a delete.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from cli_helpers import cli, populate
from threadloom.store import SQLiteStore
from threadloom.store.fts import TABLE as SEARCH_TABLE

Refuse = Callable[[int, str | None, str | None], bool]


def refuse_on_connections(monkeypatch: pytest.MonkeyPatch, refuse: Refuse) -> None:
    """Every connection the SQLite store opens refuses the statements ``refuse`` picks
    (SQLite reports "not authorized" as ``sqlite3.DatabaseError`` when it prepares them)."""
    original = SQLiteStore._connect

    def connect(self: SQLiteStore) -> sqlite3.Connection:
        conn = original(self)

        def authorizer(action: int, arg1: str | None, arg2: str | None, _db: object, _src: object) -> int:
            return sqlite3.SQLITE_DENY if refuse(action, arg1, arg2) else sqlite3.SQLITE_OK

        conn.set_authorizer(authorizer)
        return conn

    monkeypatch.setattr(SQLiteStore, "_connect", connect)


def assert_one_line(res: object, *words: str) -> str:
    stderr = res.stderr  # type: ignore[attr-defined]
    assert res.exit_code != 0, res.stdout  # type: ignore[attr-defined]
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("threadloom: ["), line  # the rule that failed, in brackets
    for word in words:
        assert word in line, line
    return line


def test_a_refused_statement_in_reindex_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    anyio.run(populate, root)
    refuse_on_connections(
        monkeypatch, lambda action, table, _: action == sqlite3.SQLITE_INSERT and table == SEARCH_TABLE
    )
    line = assert_one_line(cli(root, "reindex"), "[store_unavailable]", "not authorized")
    assert str(root / "threads.db") in line  # which database failed


def test_a_failing_vacuum_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    anyio.run(populate, root)
    refuse_on_connections(
        monkeypatch, lambda action, name, _: action == sqlite3.SQLITE_PRAGMA and name == "wal_checkpoint"
    )
    assert_one_line(
        cli(root, "gc", "--older-than", "0s", "--yes", "--vacuum", "--json"),
        "[store_unavailable]",
        "not authorized",
    )


def test_a_refused_delete_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    ids = anyio.run(populate, root)
    refuse_on_connections(
        monkeypatch, lambda action, table, _: action == sqlite3.SQLITE_DELETE and table == "threads"
    )
    assert_one_line(cli(root, "delete", ids["b"], "--yes"), "[store_unavailable]", "not authorized")
    assert cli(root, "show", ids["b"]).exit_code == 0  # nothing went


def test_a_failing_mirror_repair_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    ids = anyio.run(populate, root)
    (root / "threads" / ids["b"] / "transcript.jsonl").unlink()  # drift for --fix to repair
    refuse_on_connections(  # only the mirror repair reads this column
        monkeypatch,
        lambda action, table, column: (
            action == sqlite3.SQLITE_READ and (table, column) == ("threads", "transcript_bytes")
        ),
    )
    line = assert_one_line(cli(root, "doctor", "--fix", "--yes"), "[store_unavailable]", "prohibited")
    assert "transcript_bytes" in line


def test_the_real_cli_reports_a_trigger_that_refuses_a_delete(tmp_path: Path) -> None:
    """The installed command in its own process: a database trigger refuses the delete."""
    root = tmp_path / "root"
    ids = anyio.run(populate, root)
    db = sqlite3.connect(root / "threads.db")
    db.execute(
        "CREATE TRIGGER keep_threads BEFORE DELETE ON threads "
        "BEGIN SELECT RAISE(ABORT, 'threads are kept by policy'); END"
    )
    db.commit()
    db.close()
    env = {**os.environ, "THREADLOOM_HOME": str(root)}
    env.pop("THREADLOOM_DEBUG", None)
    out = subprocess.run(
        [sys.executable, "-m", "threadloom", "delete", ids["b"], "--yes"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("threadloom: [constraint]") and "threads are kept by policy" in lines[0]


def test_a_postgres_trigger_that_refuses_a_delete_is_one_line(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same on PostgreSQL: its one point (the store's job runner) translates psycopg's error."""
    import psycopg

    from threadloom.config import Settings
    from threadloom.service import ThreadService

    root = tmp_path / "root"
    settings = Settings(root=root, store=pg_dsn)

    async def make() -> str:
        async with ThreadService.for_settings(settings) as svc:
            tid = (await svc.create_thread(title="kept")).thread_id
            await svc.update_thread(tid, status="completed")
            return tid

    tid = anyio.run(make)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION keep_threads() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'threads are kept by policy'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER keep_threads BEFORE DELETE ON threads FOR EACH ROW EXECUTE FUNCTION keep_threads()"
        )
    monkeypatch.setenv("THREADLOOM_STORE", pg_dsn)
    line = assert_one_line(
        cli(root, "delete", tid, "--yes"), "[store_unavailable]", "threads are kept by policy"
    )
    assert "PostgreSQL" in line
