"""PostgreSQL's search_docs keeps no copy of the text (issue 17 item 3, migration 0010).

The rows hold the tsvector only; a regex scan reads the events' own lines (PostgreSQL
pre-filters on the text it takes from them) and snippets are cut from the events. A
database in the previous layout (body and tools columns, the append function that filled
them: made here in SQL) converts when opened and answers exactly as before, also after
``reindex``; a regex scan finds what SQLite's finds, tool calls, NULs and non-text outputs
included.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from threadloom.config import Settings
from threadloom.integrity import Signer
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore, pgsearch
from threadloom.store.pgappend import FUNCTION_SQL
from threadloom.store.pgregex import translate
from threadloom.store.schema import POSTGRES_MIGRATIONS
from threadloom.store.textsearch import document_fields

psycopg = pytest.importorskip("psycopg")

pytestmark = pytest.mark.anyio

TEXTS = [
    "walrus kelp and the harbour lantern",
    "a\x00b null inside the walrus",
    "multi\nline\nkelp",
    "ÉCOLE école crème",
    "deadlock then rollback",
]
TOOLS: list[dict[str, Any]] = [
    {"type": "tool_use", "id": "1", "name": "grep", "input": {"q": "walrus deadlock", "n": 3}},
    {"type": "tool_result", "tool_use_id": "1", "output": "deadlock in the tool output"},
    {"type": "tool_use", "id": "2", "name": "stat", "input": {}},
    {"type": "tool_result", "tool_use_id": "2", "output": {"size": 12, "note": "kelp\u0000x"}},
    {"type": "tool_result", "tool_use_id": "2", "output": None},
]
QUERIES = ["walrus", "kelp", '"harbour lantern"', "ecole", "dead*", "walrus -null", "size"]
PATTERNS = [
    r"walrus",
    r"a\x00b",
    r"(?m)^line$",
    r"(?i)école",
    r"dead\s?lock",
    r'"size":12',
    r"kelp\\u0000x",
    r"null",
    r"^$",  # matches the empty field of every event (a message has no tools text)
]


def _events() -> list[dict[str, Any]]:
    return [{"type": "message", "role": "user", "text": t} for t in TEXTS] + TOOLS


@pytest.fixture
def pg(pg_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


def _store(pg_dsn: str, root: Path) -> Any:
    from threadloom.store.postgres import PostgresStore

    return PostgresStore(pg_dsn, pool_size=2, signer=Signer.for_root(root))


async def _answers(svc: ThreadService, ids: list[str]) -> list[Any]:
    out: list[Any] = []
    for q in QUERIES:
        out.append((await svc.search_threads(q, limit=10, context=1)).model_dump())
        for include_tools in (False, True):
            res = await svc.chain_search(ids[0], q, search_type="text", include_tools=include_tools, limit=50)
            out.append(res.model_dump())
    for p in PATTERNS:
        for include_tools in (False, True):
            res = await svc.chain_search(
                ids[0], p, search_type="regex", include_tools=include_tools, limit=50
            )
            out.append(res.model_dump())
    return out


def _columns(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'search_docs'"
        " AND table_schema = current_schema()"
    ).fetchall()
    return {r[0] for r in rows}


def _append_functions(conn: psycopg.Connection) -> list[int]:
    rows = conn.execute(
        "SELECT p.pronargs FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace"
        " WHERE p.proname = 'threadloom_append' AND n.nspname = current_schema()"
    ).fetchall()
    return sorted(r[0] for r in rows)


PREVIOUS_FUNCTION = FUNCTION_SQL.replace(
    "p_doc_seqs BIGINT[], p_doc_tsvs TEXT[],",
    "p_doc_seqs BIGINT[], p_doc_bodies TEXT[], p_doc_tools TEXT[], p_doc_tsvs TEXT[],",
).replace(
    """        INSERT INTO search_docs (thread_id, seq, tsv)
            SELECT p_thread, d.s, d.v::tsvector
            FROM unnest(p_doc_seqs, p_doc_tsvs) AS d(s, v)
            ON CONFLICT (thread_id, seq) DO UPDATE SET tsv = EXCLUDED.tsv;""",
    """        INSERT INTO search_docs (thread_id, seq, body, tools, tsv)
            SELECT p_thread, d.s, d.b, d.t, d.v::tsvector
            FROM unnest(p_doc_seqs, p_doc_bodies, p_doc_tools, p_doc_tsvs) AS d(s, b, t, v)
            ON CONFLICT (thread_id, seq) DO UPDATE
            SET body = EXCLUDED.body, tools = EXCLUDED.tools, tsv = EXCLUDED.tsv;""",
)
"""The append function of migration 9, which filled the text columns."""


def _to_previous_layout(conn: psycopg.Connection) -> None:
    """search_docs with its copy of the text (NUL written as U+FFFD, as the previous build
    stored it), the previous append function, and schema version 9."""
    assert PREVIOUS_FUNCTION != FUNCTION_SQL and "p_doc_bodies" in PREVIOUS_FUNCTION
    conn.execute("ALTER TABLE search_docs ADD COLUMN body TEXT, ADD COLUMN tools TEXT")
    rows = conn.execute(
        "SELECT e.thread_id, e.seq, e.type, e.line FROM events AS e JOIN search_docs AS d USING (thread_id, seq)"
    ).fetchall()
    for tid, seq, etype, line in rows:
        body, tools = document_fields(etype, json.loads(line)) or (None, None)
        body, tools = (v.replace("\x00", "\ufffd") if v is not None else None for v in (body, tools))
        conn.execute(
            "UPDATE search_docs SET body = %s, tools = %s WHERE thread_id = %s AND seq = %s",
            (body, tools, tid, seq),
        )
    conn.execute("DROP FUNCTION threadloom_append")
    conn.execute(PREVIOUS_FUNCTION)
    conn.execute("DELETE FROM schema_migrations WHERE version >= 10")


async def test_search_docs_keep_no_text_and_a_previous_database_converts(
    pg_dsn: str, pg: psycopg.Connection, tmp_path: Path
) -> None:
    settings = Settings(root=tmp_path / "root")
    async with ThreadService(_store(pg_dsn, settings.root), settings) as svc:
        a = await svc.create_thread(agent_id="a")
        await svc.append(a.thread_id, _events())
        b = await svc.create_thread(agent_id="b")
        await svc.append(b.thread_id, [{"type": "message", "role": "user", "text": "walrus walrus kelp"}])
        ids = [a.thread_id, b.thread_id]
        before = await _answers(svc, ids)
    assert _columns(pg) == {"thread_id", "seq", "id", "tsv"}
    assert _append_functions(pg) == [21]
    documents = pg.execute("SELECT count(*) FROM search_docs").fetchone()[0]
    assert documents == len(TEXTS) + len(TOOLS) + 1

    _to_previous_layout(pg)
    assert {"body", "tools"} <= _columns(pg) and _append_functions(pg) == [23]
    assert (
        pg.execute("SELECT count(*) FROM search_docs WHERE body IS NOT NULL").fetchone()[0] == len(TEXTS) + 1
    )

    async with ThreadService(_store(pg_dsn, settings.root), settings) as svc:
        assert pg.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == len(
            POSTGRES_MIGRATIONS
        )
        assert _columns(pg) == {"thread_id", "seq", "id", "tsv"}
        assert _append_functions(pg) == [21]
        assert await _answers(svc, ids) == before
        stats = await svc.reindex()
        assert (stats.added, stats.removed, stats.documents) == (0, 0, documents)
        assert await _answers(svc, ids) == before
        # what an append acknowledges is found at once, through the new function
        await svc.append(b.thread_id, [{"type": "message", "role": "user", "text": "a zeppelin\x00over"}])
        found = await svc.search_threads("zeppelin")
        assert [r.thread_id for r in found.results] == [b.thread_id]
        assert "zeppelin" in found.results[0].snippet
        regex = await svc.chain_search(b.thread_id, r"zeppelin\x00over", search_type="regex")
        assert [r.seq for r in regex.results] == [3]


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = pgsearch._scan_pages

    async def spy(*args: Any, **kwargs: Any) -> None:
        seen.append("python" if kwargs["regex"] is None else "server")
        await real(*args, **kwargs)

    monkeypatch.setattr(pgsearch, "_scan_pages", spy)
    return seen


async def test_a_regex_scan_over_the_events_finds_what_sqlite_finds(
    pg_dsn: str, tmp_path: Path, scans: list[str]
) -> None:
    results = {}
    for name, store in [
        ("sqlite", SQLiteStore(tmp_path / "sqlite", durability="normal")),
        ("postgres", _store(pg_dsn, tmp_path / "postgres")),
    ]:
        async with ThreadService(store, Settings(root=tmp_path / name)) as svc:
            t = await svc.create_thread()
            await svc.append(t.thread_id, _events())
            out = []
            for p in PATTERNS:
                for include_tools in (False, True):
                    res = await svc.chain_search(
                        t.thread_id, p, search_type="regex", include_tools=include_tools, limit=50
                    )
                    out.append([(r.seq, r.type, r.snippet) for r in res.results])
            results[name] = out
    assert results["postgres"] == results["sqlite"]
    # (seq 1 is the status event of the first append)
    # PostgreSQL pre-filtered every pattern it can run (a NUL in a pattern is not one of them)
    assert scans == ["python" if translate(p) is None else "server" for p in PATTERNS for _ in (0, 1)]
    assert scans.count("server") >= 12
    found = dict(zip([(p, t) for p in PATTERNS for t in (False, True)], results["postgres"]))
    assert [s for s, _, _ in found[(r'"size":12', True)]] == [10]  # a non-text output, as JSON
    assert [s for s, _, _ in found[(r"dead\s?lock", True)]] == [6, 7, 8]  # message, tool input, output
    assert [s for s, _, _ in found[(r"dead\s?lock", False)]] == [6]
    # a NUL inside a non-text output: its JSON holds the escape (the line holds it too)
    assert [s for s, _, _ in found[(r"kelp\\u0000x", True)]] == [10]
