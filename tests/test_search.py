"""Search: chain_search and search_threads over every backend, and through MCP."""

from __future__ import annotations

import sqlite3

import anyio
import pytest
from mcp import Client

from threadloom.errors import InvalidInputError, NotFoundError
from threadloom.mcp_server import build_server
from threadloom.models import Status, Thread, iso, new_thread_id, utc_now
from threadloom.service import ThreadService
from threadloom.store import MemoryStore, SQLiteStore, fts
from threadloom.store.base import CreateThread, PutThread
from threadloom.store.textsearch import event_document
from threadloom.textquery import parse_query

pytestmark = pytest.mark.anyio


def msg(text: str, role: str = "user") -> dict:
    return {"type": "message", "role": role, "text": text}


async def thread_with(service: ThreadService, texts: list[str], **kwargs) -> Thread:
    t = await service.create_thread(**kwargs)
    await service.append(
        t.thread_id, [msg(x, "user" if i % 2 == 0 else "assistant") for i, x in enumerate(texts)]
    )
    return t


async def continue_chain(service: ThreadService, previous: Thread) -> Thread:
    """Link a continuation thread after ``previous`` with store ops (as a handoff does)."""
    prev = await service.store.get_thread(previous.thread_id)
    now = iso(utc_now())
    nxt = prev.model_copy(
        update={
            "thread_id": new_thread_id(),
            "status": Status.CREATED,
            "continuation_of": prev.thread_id,
            "continuation_thread_id": None,
            "link_reason": "handoff",
            "chain_root_id": prev.chain_root_id,
            "created_at": now,
            "updated_at": now,
            "heartbeat_at": now,
        }
    )
    await service.store.commit(
        [
            CreateThread(nxt),
            PutThread(
                prev.model_copy(update={"status": Status.CONTINUED, "continuation_thread_id": nxt.thread_id}),
                expect_version=prev.version,
            ),
        ]
    )
    return nxt


# ------------------------------------------------------------------ text search


async def test_a_message_is_searchable_as_soon_as_its_append_returns(service: ThreadService) -> None:
    t = await service.create_thread()
    for i in range(5):
        out = await service.append(t.thread_id, [msg(f"step {i} reached checkpoint zebra{i}")], single=True)
        found = await service.chain_search(t.thread_id, f"zebra{i}")
        assert [(r.thread_id, r.seq) for r in found.results] == [(t.thread_id, out.seq)]


async def test_a_message_with_every_word_ranks_above_one_with_a_single_word(service: ThreadService) -> None:
    t = await thread_with(
        service,
        [
            "timeout",
            "the database connection failed with a timeout error after retrying",
            "error",
            "timeout timeout timeout",
            "nothing relevant here",
        ],
    )
    res = await service.chain_search(t.thread_id, "database timeout error")
    assert res.results[0].seq == 3  # the only message holding all three words
    assert {r.seq for r in res.results} == {2, 3, 4, 5}  # messages with some words follow
    assert res.results[0].score is not None and res.results[0].score > 0
    assert "**timeout error**" in res.results[0].snippet and "**database**" in res.results[0].snippet


async def test_phrase_prefix_and_exclusion_queries(service: ThreadService) -> None:
    t = await thread_with(
        service,
        [
            "connection reset by peer",
            "the peer reset the connection",
            "reconnecting after the reset",
            "connections pooled",
        ],
    )

    async def seqs(q: str) -> set[int]:
        return {r.seq for r in (await service.chain_search(t.thread_id, q)).results}

    assert await seqs('"connection reset"') == {2}
    assert await seqs("connect*") == {2, 3, 5}
    assert await seqs("reset -peer") == {4}
    assert await seqs('reset -"reset by"') == {3, 4}


async def test_tool_inputs_and_outputs_are_searched_only_with_include_tools(service: ThreadService) -> None:
    t = await service.create_thread()
    await service.append(
        t.thread_id,
        [
            msg("run the migration"),
            {"type": "tool_use", "id": "t1", "name": "bash", "input": {"command": "alembic upgrade head"}},
            {"type": "tool_result", "tool_use_id": "t1", "output": "FAILED: relation widgets already exists"},
        ],
    )
    plain = await service.chain_search(t.thread_id, "widgets")
    assert plain.results == []
    tools = await service.chain_search(t.thread_id, "widgets", include_tools=True)
    assert [(r.seq, r.type, r.role) for r in tools.results] == [(4, "tool_result", "tool")]
    assert "**widgets**" in tools.results[0].snippet
    assert [
        r.type for r in (await service.chain_search(t.thread_id, "alembic", include_tools=True)).results
    ] == ["tool_use"]


@pytest.mark.parametrize(
    ("query", "seqs"),
    [
        ('"timeout', [2]),
        ("timeout)", [2]),
        ("(timeout", [2]),
        ("timeout AND", [2]),
        ("OR timeout", [2]),
        ("timeout NOT", [2]),
        ("NEAR(timeout retry)", []),  # 'NEAR(timeout' is the phrase "near timeout"
        ("body:timeout", []),  # the phrase "body timeout"
        ("{body tools}: timeout", [2]),
        ("^timeout", [2]),
        ("+timeout", [2]),
        ("'timeout'", [2]),
        ("timeout^2", []),
        ("time-out", []),
        ("timeout* *", [2]),
        ('timeout "" "', [2]),
        ("timeout -", [2]),
        ("timeout; DROP TABLE events", [2]),
        ("a-timeout", [2]),
    ],
)
async def test_fts_syntax_in_user_input_is_searched_as_words(
    service: ThreadService, query: str, seqs: list[int]
) -> None:
    t = await thread_with(service, ["a timeout happened", "all good"])
    res = await service.chain_search(t.thread_id, query)
    assert [r.seq for r in res.results] == seqs


@pytest.mark.parametrize(
    ("query", "rule"),
    [
        ("", "query_empty"),
        ('"" ( ) * -', "query_empty"),
        ("-timeout", "query_only_negative"),
        ("ti*", "query_prefix_too_short"),
        ("x" * 1001, "query_length"),
        (" ".join(f"w{i}" for i in range(40)), "query_too_many_terms"),
    ],
)
async def test_unusable_text_queries_are_refused_with_the_rule(
    service: ThreadService, query: str, rule: str
) -> None:
    t = await thread_with(service, ["a timeout happened"])
    with pytest.raises(InvalidInputError) as err:
        await service.chain_search(t.thread_id, query)
    assert err.value.rule == rule


async def test_search_arguments_are_validated(service: ThreadService) -> None:
    t = await thread_with(service, ["hello"])
    for kwargs, rule in [
        ({"search_type": "fuzzy"}, "search_type"),
        ({"limit": 0}, "limit_range"),
        ({"limit": 101}, "limit_range"),
        ({"context": -1}, "context_range"),
        ({"context": 11}, "context_range"),
    ]:
        with pytest.raises(InvalidInputError) as err:
            await service.chain_search(t.thread_id, "hello", **kwargs)
        assert err.value.rule == rule
    with pytest.raises(InvalidInputError):
        await service.chain_search("nothex", "hello")
    with pytest.raises(NotFoundError):
        await service.chain_search("abcdefabcdef", "hello")
    with pytest.raises(InvalidInputError) as err:
        await service.search_threads("hello", agent_id="bad agent!")
    assert err.value.rule == "agent_id_format"


# ------------------------------------------------------------------- context


async def test_context_windows_are_cut_at_the_start_and_end_of_a_thread(service: ThreadService) -> None:
    texts = ["alpha first", "two", "three", "four", "five", "six", "omega last"]
    t = await thread_with(service, texts)
    first = (await service.chain_search(t.thread_id, "alpha", context=3)).results[0]
    assert first.seq == 2
    assert first.before == []  # seq 1 is the status event, not a message
    assert [c.text for c in first.after] == ["two", "three", "four"]
    last = (await service.chain_search(t.thread_id, "omega", context=3)).results[0]
    assert [c.text for c in last.before] == ["four", "five", "six"]
    assert last.after == []
    middle = (await service.chain_search(t.thread_id, "four", context=1)).results[0]
    assert ([c.seq for c in middle.before], [c.seq for c in middle.after]) == ([4], [6])
    assert [c.role for c in middle.before + middle.after] == ["user", "user"]
    none = (await service.chain_search(t.thread_id, "four", context=0)).results[0]
    assert none.before == [] and none.after == []


async def test_context_skips_server_bookkeeping_events(service: ThreadService) -> None:
    t = await thread_with(service, ["before the pause"])
    await service.update_thread(t.thread_id, status="paused")
    await service.update_thread(t.thread_id, status="running")
    await service.append(t.thread_id, [msg("needle here"), msg("after it")])
    hit = (await service.chain_search(t.thread_id, "needle", context=2)).results[0]
    assert [c.text for c in hit.before] == ["before the pause"]
    assert [c.text for c in hit.after] == ["after it"]


# --------------------------------------------------------------------- chains


async def test_chain_search_finds_hits_on_both_sides_of_a_handoff(service: ThreadService) -> None:
    a = await thread_with(service, ["setup done", "first ECONNREFUSED seen on port 5432"])
    b = await continue_chain(service, a)
    await service.append(b.thread_id, [msg("carrying on"), msg("ECONNREFUSED again after restart")])
    c = await continue_chain(service, b)
    await service.append(c.thread_id, [msg("finally fixed")])
    outsider = await thread_with(service, ["ECONNREFUSED in another run"])

    for start in (a, b, c):
        res = await service.chain_search(start.thread_id, "econnrefused")
        assert res.chain_root_id == a.thread_id
        assert res.threads == [a.thread_id, b.thread_id, c.thread_id]
        assert {r.thread_id for r in res.results} == {a.thread_id, b.thread_id}
        assert outsider.thread_id not in {r.thread_id for r in res.results}

    regex = await service.chain_search(c.thread_id, r"ECONN\w+", search_type="regex")
    assert [(r.thread_id, r.seq) for r in regex.results] == [(a.thread_id, 3), (b.thread_id, 3)]
    assert regex.results[0].score is None
    assert "**ECONNREFUSED**" in regex.results[0].snippet


# ---------------------------------------------------------------------- regex


async def test_regex_search_returns_hits_in_chain_order_up_to_the_limit(service: ThreadService) -> None:
    t = await thread_with(service, [f"line {i} code E{i:03d}" for i in range(10)])
    res = await service.chain_search(t.thread_id, r"E00[2-8]", search_type="regex", limit=3)
    assert [r.seq for r in res.results] == [4, 5, 6]
    case = await service.chain_search(t.thread_id, r"(?i)LINE 9 CODE", search_type="regex")
    assert [r.seq for r in case.results] == [11]


async def test_a_catastrophic_regex_returns_promptly(service: ThreadService) -> None:
    t = await thread_with(service, ["a" * 5000 + "!", "x" * 3000 + "y", "aaaa"])
    with anyio.fail_after(30):  # a backtracking engine would take longer than the universe's age
        res = await service.chain_search(t.thread_id, r"^(a+)+$", search_type="regex")
        assert [r.seq for r in res.results] == [4]
        res = await service.chain_search(t.thread_id, r"(x+x+)+y", search_type="regex")
        assert [r.seq for r in res.results] == [3]


@pytest.mark.parametrize("pattern", [r"(a)\1", r"(?=x)", "[", "a{2,1}", "(?P<n>x)(?P=n)", ""])
async def test_invalid_regex_patterns_are_refused_with_the_reason(
    service: ThreadService, pattern: str
) -> None:
    t = await thread_with(service, ["text"])
    with pytest.raises(InvalidInputError) as err:
        await service.chain_search(t.thread_id, pattern, search_type="regex")
    assert err.value.rule in ("regex_invalid", "regex_empty")
    if pattern:
        assert repr(pattern)[:20] in err.value.message


# ------------------------------------------------------------ search_threads


async def test_search_threads_returns_each_thread_once_with_its_best_hit(service: ThreadService) -> None:
    busy = await thread_with(
        service,
        ["flaky test", "the flaky test again", "flaky test in ci keeps failing: flaky test"],
        title="busy",
    )
    other = await thread_with(service, ["one flaky test"], title="other")
    await thread_with(service, ["unrelated"], title="none")
    res = await service.search_threads("flaky test", limit=5)
    assert sorted(r.thread_id for r in res.results) == sorted([busy.thread_id, other.thread_id])
    assert len({r.thread_id for r in res.results}) == len(res.results)
    assert [r.score for r in res.results] == sorted((r.score for r in res.results), reverse=True)
    best = next(r for r in res.results if r.thread_id == busy.thread_id)
    own_best = (await service.chain_search(busy.thread_id, "flaky test", limit=1)).results[0]
    assert (best.seq, best.score) == (own_best.seq, own_best.score)
    assert best.title == "busy" and best.status == Status.RUNNING
    assert best.agent_id == "default"
    one = await service.search_threads("flaky test", limit=1)
    assert len(one.results) == 1


async def test_search_threads_sees_only_the_given_agents_threads(service: ThreadService) -> None:
    mine = await thread_with(service, ["deploy to staging failed"], agent_id="alice")
    child = await service.create_thread(parent_id=mine.thread_id)
    await service.append(child.thread_id, [msg("staging deploy retried")])
    theirs = await thread_with(service, ["deploy to staging failed badly"], agent_id="bob")
    res = await service.search_threads("staging deploy", agent_id="alice")
    assert {r.thread_id for r in res.results} == {mine.thread_id, child.thread_id}
    assert all(r.agent_id == "alice" for r in res.results)
    res = await service.search_threads("staging deploy", agent_id="bob")
    assert [r.thread_id for r in res.results] == [theirs.thread_id]
    assert (await service.search_threads("staging", agent_id="carol")).results == []
    everyone = await service.search_threads("staging deploy", limit=10)
    assert len(everyone.results) == 3


async def test_a_thread_moved_to_another_agent_is_found_under_its_new_agent(service: ThreadService) -> None:
    t = await thread_with(service, ["quarterly report numbers"], agent_id="alice")
    cur = await service.store.get_thread(t.thread_id)
    await service.store.commit(
        [PutThread(cur.model_copy(update={"agent_id": "bob"}), expect_version=cur.version)]
    )
    assert (await service.search_threads("quarterly", agent_id="alice")).results == []
    assert [r.thread_id for r in (await service.search_threads("quarterly", agent_id="bob")).results] == [
        t.thread_id
    ]


# ------------------------------------------------------------- maintenance


async def test_deleted_threads_vanish_from_results(service: ThreadService) -> None:
    gone = await thread_with(service, ["secret plan alpha", "more of the secret plan"])
    kept = await thread_with(service, ["the secret plan stays"])
    assert len((await service.search_threads("secret plan")).results) == 2
    assert await service.store.delete_threads([gone.thread_id]) == 1
    res = await service.search_threads("secret plan")
    assert [r.thread_id for r in res.results] == [kept.thread_id]
    assert (await service.chain_search(kept.thread_id, "alpha")).results == []
    # new events after the delete are indexed correctly (no stale rows reused)
    fresh = await thread_with(service, ["brand new alpha"])
    assert [r.thread_id for r in (await service.search_threads("alpha")).results] == [fresh.thread_id]
    if isinstance(service.store, SQLiteStore):
        assert_index_intact(service.store)


async def test_reindex_is_idempotent(service: ThreadService) -> None:
    t = await thread_with(service, ["index me once", "and me too"])
    before = await service.chain_search(t.thread_id, "me")
    first = await service.reindex()
    second = await service.reindex()
    assert (first.added, first.removed) == (0, 0)
    assert (second.added, second.removed) == (0, 0)
    assert second.documents == 2
    assert (await service.chain_search(t.thread_id, "me")) == before


# ---------------------------------------------------------------------- MCP


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_search_tools_over_mcp(service: ThreadService, mode: str) -> None:
    a = await thread_with(service, ["the cache stampede began at noon"], title="cache work", agent_id="ops")
    async with Client(build_server(service), mode=mode) as c:  # type: ignore[arg-type]
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert {"chain_search", "search_threads"} <= tools.keys()
        props = tools["chain_search"].input_schema["properties"]
        assert {"thread_id", "query", "search_type", "limit", "context", "include_tools"} <= props.keys()
        assert {"query", "agent_id", "limit", "context"} <= tools["search_threads"].input_schema[
            "properties"
        ].keys()

        r = await c.call_tool(
            "chain_search", {"thread_id": a.thread_id, "query": "stampede", "context": 1, "limit": 5}
        )
        assert not r.is_error
        hit = r.structured_content["results"][0]
        assert hit["before"] == [] and hit["after"] == []
        assert (hit["thread_id"], hit["seq"], hit["role"]) == (a.thread_id, 2, "user")
        assert "**stampede**" in hit["snippet"] and hit["ts"].endswith("Z")

        r = await c.call_tool(
            "chain_search", {"thread_id": a.thread_id, "query": "sta(mp", "search_type": "regex"}
        )
        assert r.is_error and "[regex_invalid]" in r.content[0].text and "sta(mp" in r.content[0].text

        r = await c.call_tool(
            "search_threads", {"query": "cache noon", "agent_id": "ops", "limit": 3, "context": 0}
        )
        assert not r.is_error
        assert [x["title"] for x in r.structured_content["results"]] == ["cache work"]

        r = await c.call_tool("search_threads", {"query": '"'})
        assert r.is_error and "[query_empty]" in r.content[0].text


# ----------------------------------------------------------- backend agreement


async def test_memory_and_sqlite_rank_alike(tmp_path) -> None:
    corpus = [
        "retry the flaky upload",
        "upload failed with 503 and we retry",
        "unrelated chatter about lunch",
        "upload upload upload",
        "the retry budget is exhausted after the upload storm",
    ]
    results = []
    for store in (MemoryStore(), SQLiteStore(tmp_path / "db", durability="normal")):
        async with ThreadService(store) as svc:
            await thread_with(svc, corpus)
            t2 = await thread_with(svc, corpus[::-1])
            hits = await store.search_text(parse_query("upload retry"), mode="any")
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
            results.append(sorted((h.thread_id == t2.thread_id, h.seq, round(h.score or 0, 9)) for h in hits))
    assert results[0] == results[1]
    assert len(results[0]) == 8


async def test_python_and_sql_agree_on_what_text_is_indexed(tmp_path) -> None:
    events = [
        msg("plain text"),
        msg("système résumé", "system"),
        {"type": "assistant_text", "text": "thinking aloud"},
        {"type": "tool_use", "id": "1", "name": "grep", "input": {"pattern": "x", "n": [1, 2.5, True, None]}},
        {"type": "tool_result", "tool_use_id": "1", "output": "plain"},
        {"type": "tool_result", "tool_use_id": "1", "output": {"rows": [1, "two"], "ok": False}},
        {"type": "tool_result", "tool_use_id": "1", "output": True},
        {"type": "tool_result", "tool_use_id": "1", "output": 42},
        {"type": "tool_result", "tool_use_id": "1", "is_error": True},
        {"type": "result", "cost": 0.5},
        {"type": "x-note", "text": "custom events are not indexed"},
    ]
    store = SQLiteStore(tmp_path / "db", durability="normal")
    async with ThreadService(store) as svc:
        t = await svc.create_thread()
        await svc.append(t.thread_id, events)
        stored = await store.read_events(t.thread_id)
    conn = sqlite3.connect(store.path)
    try:
        sql = {
            seq: (body, None if tools is None else str(tools))
            for seq, body, tools in conn.execute(
                f"SELECT seq, body, tools FROM {fts.VIEW} WHERE tid = ?", (t.thread_id,)
            )
        }
    finally:
        conn.close()
    python = {e.seq: event_document(e) for e in stored if event_document(e) is not None}
    assert python == sql
    assert len(python) == 9


# ---------------------------------------------------------- sqlite specifics


def assert_index_intact(store: SQLiteStore) -> None:
    conn = sqlite3.connect(store.path)
    try:
        conn.execute(f"INSERT INTO {fts.TABLE}({fts.TABLE}, rank) VALUES ('integrity-check', 1)")
    finally:
        conn.close()


async def test_sqlite_ranks_within_the_most_recent_window_and_sets_common_words_aside(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLiteStore(tmp_path / "db", durability="normal")
    async with ThreadService(store) as svc:
        t = await thread_with(
            svc, [f"the report {i}" for i in range(12)] + ["the rare report", "a rare bird"]
        )
        monkeypatch.setattr(fts, "RANK_WINDOW", 4)
        hits = await store.search_text(parse_query("report"), thread_ids=[t.thread_id], limit=20)
        assert sorted(h.seq for h in hits) == [11, 12, 13, 14]  # the 4 newest matches, ranked
        monkeypatch.setattr(fts, "RANK_WINDOW", 1000)
        monkeypatch.setattr(fts, "COMMON_DOCS", 3)
        svc.store._search = fts.SearchEngine()  # type: ignore[attr-defined]
        # 'the' and 'report' are common: in 'all' mode they are still required, after the index
        assert [h.seq for h in await store.search_text(parse_query("the rare"), limit=20)] == [14]
        assert [h.seq for h in await store.search_text(parse_query("report 5"), limit=20)] == [7]
        # in 'any' mode they are dropped
        hits = await store.search_text(parse_query("the rare"), mode="any", limit=20)
        assert sorted(h.seq for h in hits) == [14, 15]
        # a query of only common words is answered newest first
        hits = await store.search_text(parse_query("the report"), limit=3)
        assert [h.seq for h in hits] == [14, 13, 12] and all(h.score == 0.0 for h in hits)
        # the search module's answer is the same as without the shortcut
        res = await svc.chain_search(t.thread_id, "the rare")
        assert [r.seq for r in res.results] == [14, 15]


async def test_sqlite_filters_a_large_agent_after_the_index(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fts, "SMALL_STORE_THREADS", 0)
    monkeypatch.setattr(fts, "AGENT_TERM_MAX_SHARE", 0.0)
    monkeypatch.setattr(fts, "MAX_SCOPE_TERMS", 1)
    store = SQLiteStore(tmp_path / "db", durability="normal")
    async with ThreadService(store) as svc:
        a = await thread_with(svc, ["kiwi pie"], agent_id="alice")
        b = await thread_with(svc, ["kiwi tart"], agent_id="bob")
        c = await continue_chain(svc, a)
        await svc.append(c.thread_id, [msg("kiwi again")])
        assert [r.thread_id for r in (await svc.search_threads("kiwi", agent_id="bob")).results] == [
            b.thread_id
        ]
        res = await svc.chain_search(a.thread_id, "kiwi")
        assert {r.thread_id for r in res.results} == {a.thread_id, c.thread_id}


TRANSCRIPT = [
    ("user", "Please run the test suite and fix whatever fails."),
    ("assistant", "Running pytest now. I will look at the failures one by one."),
    (
        "assistant",
        "tests/test_db.py::test_pool failed: psycopg.OperationalError: connection timeout after 30s",
    ),
    ("user", "Is the database container up? Check docker ps."),
    ("assistant", "The postgres container was restarting in a loop because its volume was full."),
    ("assistant", "Freed the volume; the connection timeout is gone and test_pool passes."),
    ("user", "Great. Now bump the version and update the changelog."),
    ("assistant", "Bumped the version to 2.4.1 and added a changelog entry for the pool fix."),
]


@pytest.mark.parametrize(
    ("query", "expected_first"),
    [
        ("where did the connection timeout first show up", {4, 7}),  # stopwords left out
        ("OperationalError", {4}),
        ("postgres container restarting", {6}),
        ('"connection timeout" gone', {7}),
        ("changelog entry", {9}),
        ("volume full", {6}),
        ("is the database up", {5}),
        ("the", {8}),  # only stopwords: searched as they are (two "the" in a short message)
    ],
)
async def test_the_expected_message_of_a_transcript_comes_first(
    service: ThreadService, query: str, expected_first: set[int]
) -> None:
    t = await service.create_thread(title="fix the tests")
    await service.append(t.thread_id, [msg(text, role) for role, text in TRANSCRIPT])
    await thread_with(service, ["the version of the docker image", "a timeout in another project"])
    res = await service.chain_search(t.thread_id, query)
    assert res.results[0].seq in expected_first
