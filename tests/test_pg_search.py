"""PostgreSQL search: tsvector/tsquery rendering, the GIN index, limits, backfill, RE2-to-ARE regex."""

from __future__ import annotations

import json
import random
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
import re2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from threadloom.config import Settings
from threadloom.errors import InvalidInputError
from threadloom.integrity import Signer
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore, pgsearch
from threadloom.store.base import AppendEvents, NewEvent
from threadloom.store.pgregex import PgRegex, Untranslatable, to_postgres, translate
from threadloom.store.schema import POSTGRES_MIGRATIONS
from threadloom.textquery import clause_holds, parse_query, tokenize

psycopg = pytest.importorskip("psycopg")

pytestmark = pytest.mark.anyio


def msg(text: str, role: str = "user") -> dict:
    return {"type": "message", "role": role, "text": text}


@pytest.fixture
def pg_conn(pg_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
async def svc(pg_dsn: str, tmp_path: Path) -> AsyncIterator[ThreadService]:
    from threadloom.store.postgres import PostgresStore

    async with ThreadService(PostgresStore(pg_dsn, pool_size=4), Settings(root=tmp_path / "root")) as service:
        yield service


async def thread_with(service: ThreadService, texts: list[str], **kwargs) -> str:
    t = await service.create_thread(**kwargs)
    await service.append(t.thread_id, [msg(x) for x in texts])
    return t.thread_id


# ------------------------------------------------------------------- rendering


def test_the_tsvector_holds_the_query_languages_tokens_with_field_weights() -> None:
    assert pgsearch.tsvector_text("Résumé of the RÉSUMÉ", 'grep {"x": 1}') == (
        "'resume':1A,4A 'of':2A 'the':3A 'grep':6B 'x':7B '1':8B"
    )
    assert pgsearch.tsvector_text(None, None) == ""
    assert pgsearch.tsvector_text(None, "naïve_café") == "'naive':2B 'cafe':3B"


def test_the_tsquery_is_rendered_from_tokens_with_phrases_prefixes_negatives_and_weights() -> None:
    q = parse_query('Timeout "connection reset" connect* -flaky -"known ISSUE" file.py naïve')
    assert pgsearch.render_tsquery(q, "all", include_tools=False) == (
        "('timeout':A & ('connection':A <-> 'reset':A) & 'connect':*A & ('file':A <-> 'py':A) & 'naive':A)"
        " & !('flaky':A | ('known':A <-> 'issue':A))"
    )
    assert pgsearch.render_tsquery(parse_query("a-b abc*"), "any", include_tools=True) == (
        "(('a':AB <-> 'b':AB) | 'abc':*AB)"
    )
    assert pgsearch.rank_tsquery(q) == (
        "'timeout' | 'connection' | 'reset' | 'connect':* | 'file' | 'py' | 'naive'"
    )
    # FTS syntax typed by a user stays words
    assert pgsearch.render_tsquery(parse_query("a' | !b & c:*"), "all", include_tools=False) == (
        "('a':A & 'b':A & 'c':A)"
    )


def test_postgres_reads_the_rendered_texts_as_written(pg_conn: psycopg.Connection) -> None:
    tsv = pgsearch.tsvector_text("Résumé of the résumé", "grep x")
    assert pg_conn.execute("SELECT %s::tsvector::text", (tsv,)).fetchone()[0] == (
        "'grep':6B 'of':2A 'resume':1A,4A 'the':3A 'x':7B"
    )
    q = parse_query('"of the" -grep')
    body_only = pgsearch.render_tsquery(q, "all", include_tools=False)
    with_tools = pgsearch.render_tsquery(q, "all", include_tools=True)
    assert pg_conn.execute("SELECT %s::tsvector @@ %s::tsquery", (tsv, body_only)).fetchone()[0] is True
    assert pg_conn.execute("SELECT %s::tsvector @@ %s::tsquery", (tsv, with_tools)).fetchone()[0] is False
    # a phrase never spans the body and tools fields
    across = pgsearch.render_tsquery(parse_query('"resume grep"'), "all", include_tools=True)
    assert pg_conn.execute("SELECT %s::tsvector @@ %s::tsquery", (tsv, across)).fetchone()[0] is False


WORDS = ["alpha", "beta", "gamma", "Délta", "delta", "file.py", "foo-bar", "x1", "αβγ", "the", "a"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    docs=st.lists(
        st.tuples(
            st.lists(st.sampled_from(WORDS), max_size=8).map(" ".join),
            st.lists(st.sampled_from(WORDS), max_size=4).map(" ".join),
        ),
        min_size=1,
        max_size=6,
    ),
    items=st.lists(
        st.tuples(
            st.sampled_from(["", "-"]), st.sampled_from(["word", "phrase", "prefix"]), st.sampled_from(WORDS)
        ),
        min_size=1,
        max_size=4,
    ),
    mode=st.sampled_from(["all", "any"]),
    include_tools=st.booleans(),
)
def test_postgres_matches_exactly_what_the_query_language_matches(
    pg_conn: psycopg.Connection, docs, items, mode, include_tools
) -> None:
    parts = []
    for neg, kind, word in items:
        if kind == "phrase":
            parts.append(f'{neg}"{word} {WORDS[len(word) % len(WORDS)]}"')
        elif kind == "prefix" and len(re.sub(r"\W", "", word)) >= 3:
            parts.append(f"{neg}{word[:3]}*")
        else:
            parts.append(neg + word)
    try:
        q = parse_query(" ".join(parts))
    except InvalidInputError:  # e.g. only exclusions
        return
    tsq = pgsearch.render_tsquery(q, mode, include_tools=include_tools)

    def holds(body: str, tools: str, clause) -> bool:
        return clause_holds(body, clause) or (include_tools and clause_holds(tools, clause))

    need = all if mode == "all" else any
    expected = [
        need(holds(b, t, c) for c in q.positive) and not any(holds(b, t, c) for c in q.negative)
        for b, t in docs
    ]
    got = pg_conn.execute(
        "SELECT v::tsvector @@ %s::tsquery FROM unnest(%s::text[]) WITH ORDINALITY AS x(v, n) ORDER BY n",
        (tsq, [pgsearch.tsvector_text(b, t) for b, t in docs]),
    ).fetchall()
    assert [r[0] for r in got] == expected, (q, tsq)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.text(max_size=80))
def test_the_fast_tsvector_path_equals_the_general_one(body: str, tools: str) -> None:
    fields = [(pgsearch._BODY, tokenize(body)), (pgsearch._TOOLS, tokenize(tools))]
    general = pgsearch._lexemes(fields, pgsearch.LAST_POSITION)
    rendered = " ".join(f"'{k}':{','.join(e.positions)}" for k, e in general.items())
    assert pgsearch.tsvector_text(body, tools) == rendered


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=120), st.text(max_size=60))
def test_any_text_gives_a_tsvector_holding_each_of_its_tokens(
    pg_conn: psycopg.Connection, body: str, tools: str
) -> None:
    tsv = pgsearch.tsvector_text(body, tools)
    probes = [(t, "A") for t in tokenize(body)] + [(t, "B") for t in tokenize(tools)]
    for token, weight in probes:
        q = f"'{token}':{weight}"
        assert pg_conn.execute("SELECT %s::tsvector @@ %s::tsquery", (tsv, q)).fetchone()[0], (tsv, q)


# ------------------------------------------------------------------ the index


async def test_a_rare_word_is_found_through_the_gin_index(
    svc: ThreadService, pg_conn: psycopg.Connection
) -> None:
    # 50,000 rows of common words (written straight in SQL: quick), then one rare word
    pg_conn.execute(
        "INSERT INTO search_docs (thread_id, seq, tsv) SELECT 'ffffffffffff', g,"
        " format('w%s:1A common:2A', g % 300)::tsvector FROM generate_series(1, 50000) AS g"
    )
    needle = await thread_with(svc, ["the zanzibar incident"])
    pg_conn.execute("ANALYZE")
    pg_conn.execute("SET enable_seqscan = off")
    for scope in ({"thread_ids": None, "agent_id": None}, {"thread_ids": None, "agent_id": "default"}):
        sql, args = pgsearch.search_sql(
            parse_query("zanzibar"), mode="all", include_tools=False, limit=5, best_per_thread=True, **scope
        )
        plan = "\n".join(r[0] for r in pg_conn.execute("EXPLAIN " + sql, args))
        assert "Bitmap Index Scan on search_docs_tsv" in plan, plan
    hits = await svc.store.search_text(parse_query("zanzibar"), best_per_thread=True)
    assert [(h.thread_id, h.seq) for h in hits] == [(needle, 2)]
    # a word in every row: the planner walks the newest rows instead (RANK_WINDOW of them)
    sql, args = pgsearch.search_sql(
        parse_query("common"),
        mode="all",
        thread_ids=None,
        agent_id=None,
        include_tools=False,
        limit=5,
        best_per_thread=False,
    )
    plan = "\n".join(r[0] for r in pg_conn.execute("EXPLAIN " + sql, args))
    assert "Index Scan Backward using search_docs_id" in plan, plan


async def test_scores_are_positive_best_first_and_ties_are_ordered(svc: ThreadService) -> None:
    tid = await thread_with(svc, ["kiwi", "kiwi", "kiwi kiwi kiwi in a long sentence about kiwi", "banana"])
    hits = await svc.store.search_text(parse_query("kiwi"), limit=10)
    assert all(h.score is not None and h.score > 0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert [h.seq for h in hits if h.score == hits[0].score] == sorted(
        h.seq for h in hits if h.score == hits[0].score
    )
    tools_only = await svc.create_thread()
    await svc.append(
        tools_only.thread_id,
        [{"type": "tool_result", "tool_use_id": "t", "output": "kiwi"}],
    )
    hits = await svc.store.search_text(
        parse_query("kiwi"), include_tools=True, thread_ids=[tools_only.thread_id]
    )
    assert len(hits) == 1 and hits[0].score > 0
    assert tid not in {h.thread_id for h in hits}


async def test_only_the_newest_matches_are_ranked(
    svc: ThreadService, monkeypatch: pytest.MonkeyPatch
) -> None:
    tid = await thread_with(svc, [f"report {i}" for i in range(10)])
    monkeypatch.setattr(pgsearch, "RANK_WINDOW", 3)
    hits = await svc.store.search_text(parse_query("report"), thread_ids=[tid], limit=20)
    assert sorted(h.seq for h in hits) == [9, 10, 11]


async def test_long_texts_are_indexed_without_error_and_every_word_stays_findable(svc: ThreadService) -> None:
    long_text = "opening phrase here " + " ".join(["filler"] * 20_000 + ["tail", "word"]) + " omega"
    rng = random.Random(1)
    blob = " ".join("".join(rng.choices("bcdfghjklmnpqrstvwxz", k=6)) for _ in range(200_000))  # ~1.4 MB
    huge_word = "ж" * 1100  # 2,200 bytes: longer than a PostgreSQL lexeme
    t = await svc.create_thread()
    await svc.append(t.thread_id, [msg(long_text), msg(f"see {huge_word} there")])
    output = NewEvent("tool_result", {"type": "tool_result", "tool_use_id": "x", "output": blob})
    await svc.store.commit([AppendEvents(t.thread_id, (output,))])  # past max_event_bytes: straight in

    async def seqs(query: str, **kw) -> list[int]:
        hits = await svc.store.search_text(parse_query(query), thread_ids=[t.thread_id], **kw)
        return [h.seq for h in hits]

    assert await seqs("omega") == [2]  # past position 16,383
    assert await seqs('"opening phrase"') == [2]
    assert await seqs('"tail word"') == []  # phrases are only found within the first 16,381 words
    assert await seqs("filler") == [2]
    assert await seqs("ж" * 999 + "*") == [3]
    first = blob.split()[0]
    assert await seqs(first, include_tools=True) == [4]
    assert await seqs(first) == []


def test_a_tsvector_never_passes_postgres_limits(pg_conn: psycopg.Connection) -> None:
    rng = random.Random(2)
    distinct = " ".join("".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=5)) for _ in range(250_000))
    repeated = " ".join(f"w{i % 3000}" for i in range(60_000))
    for body, tools in [(distinct, None), (repeated, distinct[:500_000]), ("x " * 40_000, "x y")]:
        tsv = pgsearch.tsvector_text(body, tools)
        n = pg_conn.execute("SELECT length(%s::tsvector)", (tsv,)).fetchone()[0]
        assert n > 0
    # repeated words keep 256 positions; the tools word past the cap is kept at the overflow position
    tsv = pgsearch.tsvector_text("x " * 40_000, "x y")
    assert tsv.startswith("'x':1A,2A,") and tsv.endswith("'y':16383B")
    assert tsv.split()[0].count(",") == 255


# ---------------------------------------------------------------- maintenance


async def test_a_database_at_schema_version_2_is_indexed_when_migrated(pg_dsn: str, tmp_path: Path) -> None:
    from threadloom.store.postgres import PostgresStore

    settings = Settings(root=tmp_path / "root")
    signer = Signer.for_root(settings.root)  # the reopened store must sign with the same key
    async with ThreadService(PostgresStore(pg_dsn, pool_size=2, signer=signer), settings) as service:
        first = await thread_with(service, ["walrus alpha", "walrus beta"])
        second = await thread_with(service, ["walrus gamma"])
        await service.append(
            second, [{"type": "tool_use", "id": "1", "name": "grep", "input": {"q": "walrus"}}]
        )
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # back to a version-2 database
        conn.execute("DROP TABLE search_docs")
        conn.execute("DROP FUNCTION threadloom_append")
        conn.execute("DROP TABLE vectors")
        conn.execute("DELETE FROM meta WHERE key = 'vectors_generation'")
        conn.execute(  # and what later migrations added (forks, leases)
            "ALTER TABLE threads DROP COLUMN fork_of, DROP COLUMN lease_owner, DROP COLUMN lease_expires,"
            " DROP COLUMN lease_ttl"
        )
        conn.execute("DELETE FROM schema_migrations WHERE version >= 3")
    async with ThreadService(PostgresStore(pg_dsn, pool_size=2, signer=signer), settings) as service:
        res = await service.search_threads("walrus", limit=10)
        assert {r.thread_id for r in res.results} == {first, second}
        tools = await service.chain_search(second, "grep", include_tools=True)
        assert [r.type for r in tools.results] == ["tool_use"]
        stats = await service.reindex()
        assert (stats.added, stats.removed, stats.documents) == (0, 0, 4)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == len(
            POSTGRES_MIGRATIONS
        )
        order = conn.execute(
            "SELECT d.thread_id, d.seq FROM search_docs d JOIN events e USING (thread_id, seq) ORDER BY d.id"
        ).fetchall()
        by_time = conn.execute(
            "SELECT thread_id, seq FROM events WHERE type IN ('message', 'tool_use')"
            " ORDER BY ts, thread_id, seq"
        ).fetchall()
        assert order == by_time  # recency order follows the events' time


async def test_reindex_repairs_rows_changed_behind_the_stores_back(
    svc: ThreadService, pg_conn: psycopg.Connection
) -> None:
    a = await thread_with(svc, [f"walrus {i}" for i in range(5)])
    b = await thread_with(svc, [f"walrus {i}" for i in range(3)])
    pg_conn.execute("DELETE FROM search_docs WHERE thread_id = %s", (a,))
    pg_conn.execute("DELETE FROM events WHERE thread_id = %s AND seq > 2", (b,))
    seen: list[tuple[int, int]] = []
    stats = await svc.reindex(progress=lambda done, total: seen.append((done, total)))
    assert (stats.added, stats.removed, stats.documents) == (5, 2, 6)
    assert seen[-1] == (7, 7) and all(d <= t for d, t in seen)
    again = await svc.reindex()
    assert (again.added, again.removed, again.documents) == (0, 0, 6)
    assert len((await svc.chain_search(a, "walrus", limit=20)).results) == 5


async def test_deleting_and_importing_threads_keeps_the_index_exact(
    svc: ThreadService, pg_conn: psycopg.Connection
) -> None:
    a = await thread_with(svc, ["kept words"])
    b = await thread_with(svc, ["gone words", "more gone words"])
    await svc.store.delete_threads([b])
    assert pg_conn.execute("SELECT DISTINCT thread_id FROM search_docs").fetchall() == [(a,)]
    await svc.update_thread(a, status="completed")  # the checkpoint event is not indexed
    assert pg_conn.execute("SELECT count(*) FROM search_docs").fetchone()[0] == 1


# ---------------------------------------------------------------------- regex


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (r"ECONN\w+", PgRegex(r"ECONN[0-9A-Z\u005fa-z]+")),
        (r"(a+)+$", PgRegex(r"(?:a+)+$")),
        (r"(?P<n>x|y)*?z{2,3}?", PgRegex(r"(?:x|y)*z{2,3}")),
        (r"\bdead\b.*\Block\B", PgRegex(r"\ydead\y.*\Ylock\Y")),
        (r"\Aa\z", PgRegex(r"\Aa\Z")),
        (
            r"\d\s\D\W\S",
            PgRegex(
                r"[0-9][\u0009-\u000a\u000c-\u000d\u0020][^0-9][^0-9A-Z\u005fa-z]"
                r"[^\u0009-\u000a\u000c-\u000d\u0020]"
            ),
        ),
        (r"a.b[^x]", PgRegex(r"a.b[^x]")),
        (r"file\.py \{x\}", PgRegex(r"file\u002epy\u0020\u007bx\u007d")),
        (r"a{,3}", PgRegex(r"a\u007b\u002c3\u007d")),
        (r"[]a-c\d-]", PgRegex(r"[\u005da-c0-9\u002d]")),
        (r"[[:alpha:]_]", PgRegex(r"[A-Za-z\u005f]")),
        (r"\x41\x{e9}\t\Q.*\E", PgRegex("A\\u00e9\\u0009\\u002e\\u002a")),
        (r"é+", PgRegex(r"\u00e9+")),
        (r"(?i)kiss", PgRegex(r"[k\u212a]i[s\u017f][s\u017f]", fold=True)),
        (r"(?i)[a-c]x", PgRegex(r"[a-c]x", fold=True)),
        (r"(?i)[^é]", PgRegex(r"[^\u00e9]", fold=True)),
        (r"(?m)^ab$", PgRegex(r"(?w)^ab$")),
        (r"(?s)(?U)a.+", PgRegex(r"a.+")),
    ],
)
def test_re2_patterns_in_the_safe_subset_are_translated(pattern: str, expected: PgRegex) -> None:
    assert to_postgres(pattern) == expected


@pytest.mark.parametrize(
    "pattern",
    [
        r"\pL",
        r"\p{Greek}",
        r"\C",
        r"\101",
        r"a(?i)b",
        r"(?i:a)b",
        r"(?i)é",
        r"(?i)[à-ÿ]",
        r"a{300}",
        r"a{2,256}",
        r"[[:^alpha:]]",
        r"[\D]",
        r"\x00",
        "\ufffd",
        r"[\x00-\x1f]",
        r"[^\x{fffd}]",
    ],
)
def test_patterns_outside_the_safe_subset_are_refused(pattern: str) -> None:
    re2.compile(pattern)  # valid RE2: refusing is the translator's choice, not a syntax error
    with pytest.raises(Untranslatable):
        to_postgres(pattern)
    assert translate(pattern) is None


def candidates(conn: psycopg.Connection, rx: PgRegex, texts: list[str]) -> list[bool]:
    """Whether PostgreSQL's regex accepts each text (as the store's scan runs it)."""
    rows = conn.execute(
        f'SELECT t COLLATE "C" {rx.operator} %s'
        " FROM unnest(%s::text[]) WITH ORDINALITY AS x(t, n) ORDER BY n",
        (rx.pattern, texts),
    ).fetchall()
    return [r[0] for r in rows]


ALPHABET = "aAkKsS\u212a\u017féÉ_09 \n\t.-[]{}\\x\u00e0\x00\ufffdyzb!"
PATTERNS = [
    r"a+",
    r"^a",
    r"a$",
    r"(?m)^x.*$",
    r"\bk\w*",
    r"\Bs",
    r"(?i)k[a-z]*s",
    r"(?i)[^k]",
    r"\W+\d",
    r"[^a-z ]{2}",
    r"\s\S",
    r"x|é{2}",
    r"(a|b|)\.",
    r"\Aa|b\z",
    r"[[:punct:]]+",
    r"a.b",
    r"(?s)a.b",
    r"[\-\]\\]",
    r"\x{212a}",
    r"(?i)\w\b",
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(alphabet=ALPHABET, max_size=12), min_size=1, max_size=30))
def test_postgres_candidates_include_every_re2_match(pg_conn: psycopg.Connection, texts: list[str]) -> None:
    stored = [t.replace("\x00", "\ufffd") for t in texts]  # a line with a NUL is a candidate anyway
    for pattern in PATTERNS:
        rx = to_postgres(pattern)
        for text, candidate in zip(texts, candidates(pg_conn, rx, stored)):
            if re2.search(pattern, text):
                assert candidate, (pattern, rx, text)


PIECES = [
    *("a", "k", "s", "é", ".", " ", "^", "$", "[a-k]", "[^s]", "[[:alpha:]]"),
    *(r"\w", r"\W", r"\d", r"\s", r"\b", r"\B", r"\.", r"\x{17f}"),
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    parts=st.lists(
        st.tuples(st.sampled_from(PIECES), st.sampled_from(["", "*", "+", "?", "{2}", "{1,3}"])),
        min_size=1,
        max_size=5,
    ),
    alt=st.booleans(),
    fold=st.booleans(),
    texts=st.lists(st.text(alphabet=ALPHABET, max_size=10), min_size=1, max_size=20),
)
def test_generated_patterns_never_lose_a_match_in_postgres(
    pg_conn: psycopg.Connection, parts, alt, fold, texts
) -> None:
    body = "".join(f"(?:{p}){q}" if q else p for p, q in parts)
    pattern = ("(?i)" if fold else "") + (f"({body})|x" if alt else body)
    try:
        re2.compile(pattern)
    except re2.error:
        return
    rx = translate(pattern)
    if rx is None:
        return
    stored = [t.replace("\x00", "\ufffd") for t in texts]
    try:
        got = candidates(pg_conn, rx, stored)
    except psycopg.DataError:
        return  # PostgreSQL refuses it: the scan runs in Python
    for text, candidate in zip(texts, got):
        if re2.search(pattern, text):
            assert candidate, (pattern, rx, text)


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Which way each page-scan loop ran: 'server' (PostgreSQL pre-filter) or 'python'."""
    seen: list[str] = []
    real = pgsearch._scan_pages

    async def spy(*args, **kwargs):
        seen.append("python" if kwargs["regex"] is None else "server")
        return await real(*args, **kwargs)

    monkeypatch.setattr(pgsearch, "_scan_pages", spy)
    return seen


async def test_a_catastrophic_pattern_runs_in_postgres_within_its_statement_timeout(
    svc: ThreadService, scans: list[str]
) -> None:
    """Nested quantifiers on long runs: PostgreSQL's regex engine answers them inside the
    statement timeout (a timeout would show as a Python scan in ``scans``), with RE2's hits."""
    tid = await thread_with(svc, ["a" * 20_000 + "!", "x" * 5_000 + "y", "aaaa", "b" * 30_000])
    with anyio.fail_after(120):  # a hang guard only: the timeout is what bounds the statement
        res = await svc.chain_search(tid, r"^(a+)+$", search_type="regex")
        assert [r.seq for r in res.results] == [4]
        res = await svc.chain_search(tid, r"(x+x+)+y", search_type="regex")
        assert [r.seq for r in res.results] == [3]
    assert scans == ["server", "server"]


async def test_a_statement_timeout_continues_the_scan_in_python(
    svc: ThreadService, scans: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(9)
    t = await svc.create_thread()
    texts = [" ".join(rng.choices(["lorem", "ipsum", "dolor", "sit", "amet"], k=400)) for _ in range(1500)]
    for i in (40, 700, 1499):
        texts[i] += f" needle-{i}"
    for i in range(0, len(texts), 500):
        events = tuple(NewEvent("message", msg(x)) for x in texts[i : i + 500])
        await svc.store.commit([AppendEvents(t.thread_id, events)])
    expected = [i + 1 for i, x in enumerate(texts) if re2.search(r"needle-\d+", x)]
    assert len(expected) == 3
    monkeypatch.setattr(pgsearch, "REGEX_TIMEOUT_MS", 1)
    monkeypatch.setattr(pgsearch, "REGEX_PAGE", 1)  # one candidate per query: the second query is cancelled
    res = await svc.chain_search(t.thread_id, r"needle-\d+", search_type="regex", limit=10)
    assert [r.seq for r in res.results] == expected
    assert scans[0] == "server" and scans[-1] == "python"


async def test_regex_results_equal_sqlites_for_every_pattern(pg_dsn: str, tmp_path: Path) -> None:
    from threadloom.store.postgres import PostgresStore

    texts = [
        "plain text with ECONNREFUSED 10.0.0.1:5432",
        "a\x00b null inside",
        "Kelvin \u212a and long \u017f here",
        "at 5\u212a the crème went off",
        "ÉCOLE école",
        "multi\nline\ntext",
        "replacement \ufffd char",
        "",
        "dead lock then rollback",
    ]
    tool = {"type": "tool_result", "tool_use_id": "t", "output": "deadlock in tool output"}
    patterns = [
        *(r"ECONN\w+", r"a\x00b", r"a.b", r"(?i)k", r"(?i)école", r"^line$", r"(?m)^line$", r"\pL+é"),
        r"\x{fffd}",
        r"x*",
        r"(?i)5k",
        r"\bme\b",
        r"\bdead\b.*rollback",
        r"dead\s?lock",
        r"[^\x00-\x7f]",
    ]
    results = {}
    for name, store in [
        ("sqlite", SQLiteStore(tmp_path / "sqlite", durability="normal")),
        ("postgres", PostgresStore(pg_dsn, pool_size=2)),
    ]:
        async with ThreadService(store, Settings(root=tmp_path / name)) as service:
            t = await service.create_thread()
            await service.append(t.thread_id, [msg(x) for x in texts] + [tool])
            out = []
            for p in patterns:
                for include_tools in (False, True):
                    res = await service.chain_search(
                        t.thread_id, p, search_type="regex", include_tools=include_tools, limit=50
                    )
                    out.append([(r.seq, r.snippet) for r in res.results])
            results[name] = out
    assert results["postgres"] == results["sqlite"]
    assert any(results["sqlite"])


async def test_text_search_matches_the_same_events_as_sqlite(pg_dsn: str, tmp_path: Path) -> None:
    from threadloom.store.postgres import PostgresStore

    corpus = [
        "the connection reset by peer",
        "Connection résumé: reset the pool",
        "file.py raised KeyError in foo-bar",
        "résumé résumé",
        "nothing to see",
    ]
    tool = {"type": "tool_use", "id": "1", "name": "bash", "input": {"cmd": "cat file.py | grep reset"}}
    queries = ["reset", '"connection reset"', "resume", "conn*", "file.py", "reset -peer", "pool résumé"]
    queries.append("grep")
    found = {}
    for name, store in [
        ("sqlite", SQLiteStore(tmp_path / "sqlite", durability="normal")),
        ("postgres", PostgresStore(pg_dsn, pool_size=2)),
    ]:
        async with ThreadService(store, Settings(root=tmp_path / name)) as service:
            t = await service.create_thread()
            await service.append(t.thread_id, [msg(x) for x in corpus] + [tool])
            out = []
            for q in queries:
                for mode in ("all", "any"):
                    for include_tools in (False, True):
                        hits = await store.search_text(
                            parse_query(q), mode=mode, include_tools=include_tools, limit=50
                        )
                        out.append(sorted(h.seq for h in hits))
            found[name] = out
    assert found["postgres"] == found["sqlite"]


async def test_a_handoffs_carried_events_are_indexed_like_new_ones(
    svc: ThreadService, pg_conn: psycopg.Connection
) -> None:
    """Carried events take their source's tsvector in SQL (pgsearch.index_appended): the rows
    are the ones tokenizing their text would give, and search finds them in the new thread."""
    t = await svc.create_thread(context_window=10_000_000)
    tools = [
        {"type": "tool_use", "id": "c1", "name": "grep", "input": {"pattern": "flaky login"}},
        {"type": "tool_result", "tool_use_id": "c1", "output": "tests/login.py: flaky login retry"},
    ]
    await svc.append(
        t.thread_id, [msg("the flaky login test"), msg("found the retry bug", "assistant"), *tools]
    )
    made: list[object] = []
    real = pgsearch.tsvector_text

    def counted(body, tools):  # type: ignore[no-untyped-def]
        made.append(body)
        return real(body, tools)

    pgsearch.tsvector_text = counted  # type: ignore[assignment]
    try:
        info = await svc.handoff(t.thread_id, summary="carry on with the login bug")
    finally:
        pgsearch.tsvector_text = real  # type: ignore[assignment]
    new = info.thread_id
    assert len(made) <= 1  # the continuation message only: the carried four were copied
    rows = pg_conn.execute(
        "SELECT d.seq, d.tsv::text, e.type, e.line FROM search_docs d JOIN events e"
        " ON e.thread_id = d.thread_id AND e.seq = d.seq WHERE d.thread_id = %s ORDER BY d.seq",
        (new,),
    ).fetchall()
    carried = [r for r in rows if r[2] in ("message", "tool_use", "tool_result")]
    assert len(carried) >= 4
    for _seq, tsv, etype, line in carried:
        fields = pgsearch.document_fields(etype, json.loads(line))
        assert fields is not None
        want = pg_conn.execute("SELECT %s::tsvector::text", (pgsearch.tsvector_text(*fields),)).fetchone()
        assert tsv == want[0]  # type: ignore[index]
    ids = [
        r[0] for r in pg_conn.execute("SELECT seq FROM search_docs WHERE thread_id = %s ORDER BY id", (new,))
    ]
    assert ids == sorted(ids)  # rows in seq order, as appends index them
    hits = await svc.chain_search(new, "retry")
    assert {h.thread_id for h in hits.results} >= {new}
