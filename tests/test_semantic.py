"""Semantic and hybrid search: the model loader on a tiny model built here, vectors in every
backend (stored, searched, deleted with their thread, backfilled after an interrupted run),
rank fusion, and the refusals without the extra or the model."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client

from semantic_helpers import DIM, build_model
from threadloom import embedding
from threadloom.config import Settings
from threadloom.embedding import SemanticUnavailableError, load_embedder, resolve_model_dir
from threadloom.mcp_server import build_server
from threadloom.search import rrf
from threadloom.service import ThreadService
from threadloom.store.base import SearchHit, Store, VectorRow

pytestmark = pytest.mark.anyio

PYTHON = sys.executable


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture
async def sem(store: Store, settings: Settings, tiny_model: Path):
    settings = settings.model_copy(update={"semantic_model": str(tiny_model), "semantic_batch": 3})
    async with ThreadService(store, settings) as service:
        yield service


def msg(text: str, role: str = "user") -> dict:
    return {"type": "message", "role": role, "text": text}


async def thread_with(service: ThreadService, texts: list[str], **kwargs) -> str:
    t = await service.create_thread(**kwargs)
    await service.append(
        t.thread_id, [msg(x, "user" if i % 2 == 0 else "assistant") for i, x in enumerate(texts)]
    )
    return t.thread_id


async def corpus(service: ThreadService) -> dict[str, str]:
    return {
        "auth": await thread_with(
            service, ["the intermittent auth spec failure is back", "it was a race in the session cache"]
        ),
        "db": await thread_with(service, ["postgres tables are sluggish", "add an index to the sql"]),
        "pasta": await thread_with(service, ["a pasta recipe with tomato sauce", "dinner is served"]),
    }


# ---------------------------------------------------------------- the model


def test_a_model_built_on_disk_loads_through_the_real_loader(tiny_model: Path) -> None:
    embedder = load_embedder(str(tiny_model))
    assert embedder.dim == DIM and embedder.model_id == f"{tiny_model}#{DIM}"
    a, b, c = embedder.encode(
        ["how did we fix the flaky login test", "intermittent auth spec failure", "pasta recipe"]
    )
    assert float(a @ b) > 0.6 > 0.1 > float(a @ c)
    assert embedder.encode_bytes(["zzz qqq"]) == [b""]  # no known token: nothing to keep


def test_a_missing_model_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(SemanticUnavailableError) as exc:
        resolve_model_dir("minishlab/potion-base-8M")
    assert exc.value.rule == "semantic_model_missing"
    text = exc.value.message
    assert "not in the local Hugging Face cache" in text and "never downloads" in text
    assert "huggingface-cli download minishlab/potion-base-8M" in text
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(SemanticUnavailableError, match=r"missing: model\.safetensors, tokenizer\.json"):
        resolve_model_dir(str(tmp_path / "half"))
    with pytest.raises(SemanticUnavailableError, match="neither an existing folder nor a model id"):
        resolve_model_dir(str(tmp_path / "nowhere"))


def test_a_cached_hub_model_is_found_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    import shutil

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    snap = tmp_path / "hub" / "models--someone--tiny" / "snapshots" / "abc123"
    shutil.copytree(tiny_model, snap)
    assert resolve_model_dir("someone/tiny") == snap


# ---------------------------------------------------------------- fusion


def test_rrf_orders_by_fused_rank_and_says_which_lists_matched() -> None:
    text = [SearchHit("a", 1, 9.0), SearchHit("b", 1, 8.0), SearchHit("c", 1, 7.0)]
    vec = [SearchHit("c", 2, 0.9), SearchHit("d", 1, 0.8), SearchHit("b", 4, 0.7)]
    fused = rrf([("text", text), ("semantic", vec)], by_thread=True, limit=10)
    # b: 1/62 + 1/63, c: 1/63 + 1/61 (c is first: it ranks 1st somewhere), a: 1/61, d: 1/62
    assert [(h.thread_id, h.seq, kinds) for h, kinds in fused] == [
        ("c", 2, ["text", "semantic"]),
        ("b", 1, ["text", "semantic"]),
        ("a", 1, ["text"]),
        ("d", 1, ["semantic"]),
    ]
    assert fused[0][0].score == pytest.approx(1 / 63 + 1 / 61, abs=1e-6)
    # per event, b's two hits are different events: each counts alone
    events = rrf([("text", text), ("semantic", vec)], by_thread=False, limit=2)
    assert [(h.thread_id, h.seq) for h, _ in events] == [("a", 1), ("c", 2)]


# ---------------------------------------------------------------- every backend


async def test_vectors_are_stored_searched_and_deleted_with_their_thread(sem: ThreadService) -> None:
    ids = await corpus(sem)
    other = await thread_with(sem, ["unrelated words only"])
    await sem.semantic.embed_pending()
    model = sem.semantic.model_id
    assert await sem.store.count_vectors(model) == 7
    assert await sem.store.count_missing_vectors(model, sem.semantic.types) == 0
    assert sem.store.vector_index == "exact"

    query = "how did we fix the flaky login test"
    text = await sem.search_threads(query, mode="text")
    assert ids["auth"] not in [r.thread_id for r in text.results]  # no shared word but stopwords
    semantic = await sem.search_threads(query, mode="semantic", limit=2)
    assert semantic.mode == "semantic"
    assert semantic.results[0].thread_id == ids["auth"]
    assert semantic.results[0].matched == ["semantic"]
    assert semantic.results[0].snippet == "the intermittent auth spec failure is back"
    hybrid = await sem.search_threads(query)  # hybrid is the default with a model
    assert hybrid.mode == "hybrid" and hybrid.results[0].thread_id == ids["auth"]
    both = await sem.search_threads("postgres performance", limit=1)
    assert both.results[0].thread_id == ids["db"] and both.results[0].matched == ["text", "semantic"]
    assert "**postgres**" in both.results[0].snippet and both.results[0].after[0].text.startswith("add")

    agent = await sem.create_thread(agent_id="cook")
    await sem.append(agent.thread_id, [msg("tomato sauce recipe")])
    await sem.semantic.embed_pending([agent.thread_id])
    scoped = await sem.search_threads("pasta dinner", mode="semantic", agent_id="cook")
    assert [r.thread_id for r in scoped.results] == [agent.thread_id]

    for tid in (ids["auth"], other):
        await sem.update_thread(tid, status="completed")
    await sem.delete_threads([ids["auth"], other])
    assert await sem.store.count_vectors(model) == 5  # 2 + 1 of the deleted threads went with them
    after = await sem.search_threads(query, mode="semantic", limit=5)
    assert ids["auth"] not in [r.thread_id for r in after.results]
    assert (await sem.reindex_embeddings()).cleaned == 0  # nothing orphaned


async def test_chain_search_semantic_and_hybrid(sem: ThreadService) -> None:
    tid = await thread_with(
        sem, ["deploy the release", "the auth spec is unreliable", "pasta for dinner", "db is slow"]
    )
    await sem.semantic.embed_pending()
    res = await sem.chain_search(tid, "flaky login test", search_type="semantic", limit=2, context=1)
    assert res.search_type == "semantic" and res.results[0].snippet == "the auth spec is unreliable"
    assert [m.text for m in res.results[0].before] == ["deploy the release"]
    assert [m.text for m in res.results[0].after] == ["pasta for dinner"]
    hybrid = await sem.chain_search(tid, "slow db", limit=2)
    assert hybrid.search_type == "hybrid"
    assert hybrid.results[0].snippet == "**db** is **slow**"
    assert hybrid.results[0].matched == ["text", "semantic"]
    regex = await sem.chain_search(tid, "pas+ta", search_type="regex")
    assert [(r.snippet, r.matched) for r in regex.results] == [("**pasta** for dinner", ["regex"])]


async def test_only_user_and_assistant_messages_get_vectors_unless_tool_results_are_asked_for(
    store: Store, settings: Settings, tiny_model: Path
) -> None:
    events = [
        msg("system prompt about login", "system"),
        msg("login test fails"),
        {"type": "tool_use", "id": "1", "name": "grep", "input": {"q": "auth"}},
        {"type": "tool_result", "tool_use_id": "1", "output": "auth spec broken"},
        {"type": "assistant_text", "text": "the login is fixed"},
    ]
    base = settings.model_copy(update={"semantic_model": str(tiny_model)})
    async with ThreadService(store, base) as service:
        t = await service.create_thread()
        await service.append(t.thread_id, events)
        await service.semantic.embed_pending()
        hits = await service.store.search_vectors(
            service.semantic.model_id, await service.semantic.encode_query("auth")
        )
        assert sorted(h.seq for h in hits) == [3, 6]  # the system message keeps an empty vector
    tools = base.model_copy(update={"semantic_tool_results": True})
    async with ThreadService(store, tools) as service:
        stats = await service.reindex_embeddings()
        assert (stats.embedded, stats.cleaned) == (1, 0)
        hits = await service.store.search_vectors(
            service.semantic.model_id, await service.semantic.encode_query("auth")
        )
        assert sorted(h.seq for h in hits) == [3, 5, 6]
    async with ThreadService(store, base) as service:  # tool results off again: theirs are orphans
        assert (await service.reindex_embeddings()).cleaned == 1


async def test_backfill_resumes_after_an_interrupted_run_and_cleans_orphans(sem: ThreadService) -> None:
    ids = await corpus(sem)
    model = sem.semantic.model_id
    await sem.store.put_vectors("another-model#4", [VectorRow(ids["db"], 1, b"\0" * 16)])
    seen: list[tuple[int, int]] = []

    def kill_after_first_batch(done: int, total: int) -> None:
        seen.append((done, total))
        if done > 0:
            raise KeyboardInterrupt  # as a kill would: mid-run, after one committed batch

    with pytest.raises(KeyboardInterrupt):
        await sem.reindex_embeddings(progress=kill_after_first_batch)
    assert seen == [(0, 6), (3, 6)]
    assert await sem.store.count_vectors(model) == 3  # the committed batch stays
    resumed = await sem.reindex_embeddings()
    assert (resumed.embedded, resumed.cleaned, resumed.vectors) == (3, 0, 6)  # only what was missing
    again = await sem.reindex_embeddings()
    assert (again.embedded, again.cleaned, again.vectors) == (0, 0, 6)
    assert await sem.store.count_vectors("another-model#4") == 0  # cleaned by the first run


async def test_the_background_indexer_embeds_new_messages(sem: ThreadService) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(sem.run_indexer)
        ids = await corpus(sem)
        model = sem.semantic.model_id
        with anyio.fail_after(20):
            while await sem.store.count_vectors(model) < 6:
                await anyio.sleep(0.02)
        res = await sem.search_threads("flaky login", mode="semantic", limit=1)
        assert res.results[0].thread_id == ids["auth"]
        tg.cancel_scope.cancel()


async def test_the_indexer_embeds_what_another_process_appends(
    tmp_path: Path, settings: Settings, tiny_model: Path
) -> None:
    from threadloom.store import SQLiteStore

    root = tmp_path / "shared"
    settings = Settings(root=root, semantic_model=str(tiny_model))
    async with (
        ThreadService(SQLiteStore(root), settings) as server,
        ThreadService(SQLiteStore(root)) as other,
    ):
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.run_indexer)
            await anyio.sleep(0.1)
            tid = await thread_with(other, ["the intermittent auth spec failure", "a race in the cache"])
            with anyio.fail_after(20):
                while await server.store.count_vectors(server.semantic.model_id) < 2:
                    await anyio.sleep(0.02)
            res = await server.search_threads("flaky login", mode="semantic", limit=1)
            assert res.results[0].thread_id == tid
            tg.cancel_scope.cancel()


# ---------------------------------------------------------------- without the extra


@pytest.fixture
def no_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "model2vec", None)  # import model2vec now raises ImportError
    monkeypatch.setattr(embedding, "_cache", {})


async def test_without_the_extra_text_search_is_as_before_and_other_modes_are_refused(
    no_extra: None, store: Store, settings: Settings, tiny_model: Path
) -> None:
    settings = settings.model_copy(update={"semantic_model": str(tiny_model)})
    async with ThreadService(store, settings) as service:
        ids = await corpus(service)
        assert service.semantic.default_mode() == "text" and not service.semantic.enabled
        res = await service.search_threads("postgres")
        assert res.mode == "text" and [r.thread_id for r in res.results] == [ids["db"]]
        assert res.results[0].matched == ["text"]
        for mode in ("hybrid", "semantic"):
            with pytest.raises(SemanticUnavailableError) as exc:
                await service.search_threads("postgres", mode=mode)
            assert "pip install 'threadloom[semantic]'" in exc.value.message
            assert "model2vec is not installed" in exc.value.message
        with pytest.raises(SemanticUnavailableError, match=r"threadloom\[semantic\]"):
            await service.chain_search(ids["db"], "postgres", search_type="hybrid")
        with pytest.raises(SemanticUnavailableError, match=r"threadloom\[semantic\]"):
            await service.reindex_embeddings()
        server = build_server(service)
        async with Client(server) as client:
            out = await client.call_tool("search_threads", {"query": "postgres", "mode": "semantic"})
            assert out.is_error and "[semantic_unavailable]" in out.content[0].text
            ok = await client.call_tool("search_threads", {"query": "postgres"})
            assert not ok.is_error and ok.structured_content["mode"] == "text"


async def test_with_the_extra_but_no_model_semantic_modes_name_the_setting(service: ThreadService) -> None:
    assert service.semantic.default_mode() == "text"
    with pytest.raises(SemanticUnavailableError) as exc:
        await service.search_threads("anything", mode="semantic")
    assert exc.value.rule == "semantic_model_unset" and "semantic_model" in exc.value.message
    with pytest.raises(Exception, match="mode must be one of 'hybrid', 'text', 'semantic'"):
        await service.search_threads("anything", mode="fuzzy")


async def test_deleting_vectors_works_without_the_extra(
    store: Store, settings: Settings, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings.model_copy(update={"semantic_model": str(tiny_model)})
    async with ThreadService(store, settings) as service:
        ids = await corpus(service)
        await service.semantic.embed_pending()
        model = service.semantic.model_id
        monkeypatch.setitem(sys.modules, "model2vec", None)
        monkeypatch.setitem(sys.modules, "numpy", None)
        await service.update_thread(ids["pasta"], status="completed")
        await service.delete_threads([ids["pasta"]])
        monkeypatch.undo()
        assert await service.store.count_vectors(model) == 4


# ---------------------------------------------------------------- PostgreSQL and CLI


def test_pgvector_where_installed(pg_dsn: str) -> None:
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone()
    if row is None:
        pytest.skip(
            "this PostgreSQL has no pgvector extension (pg_available_extensions lacks 'vector'): the store "
            "uses the exact scan over its bytea column, tested by every [postgres] test above"
        )
    from threadloom.store.postgres import PostgresStore

    assert PostgresStore(pg_dsn).vector_index == "exact"  # pgvector is not used yet (docs/semantic.md)


async def test_reindex_embeddings_command(tmp_path: Path, cli_env: dict[str, str], tiny_model: Path) -> None:
    from threadloom.store import SQLiteStore

    root = tmp_path / "root"
    async with ThreadService(SQLiteStore(root, durability="normal")) as service:
        await corpus(service)
    env = {**cli_env, "THREADLOOM_SEMANTIC_MODEL": str(tiny_model)}
    cmd = [PYTHON, "-m", "threadloom", "reindex", "--embeddings", "--root", str(root)]
    first = await anyio.run_process(cmd, env=env, check=False)
    assert first.returncode == 0, first.stderr.decode()
    assert first.stdout.decode().startswith("embeddings: 6 embedded, 0 cleaned; 6 vectors")
    assert b"embedded 6/6" in first.stderr
    second = await anyio.run_process([*cmd, "--json"], env=env, check=False)
    report = json.loads(second.stdout)
    assert (report["embedded"], report["cleaned"], report["vectors"]) == (0, 0, 6)
    with sqlite3.connect(root / "threads.db") as conn:
        assert conn.execute("SELECT count(*) FROM vectors").fetchone()[0] == 6
    missing = {**cli_env, "THREADLOOM_SEMANTIC_MODEL": str(tmp_path / "no-model")}
    bad = await anyio.run_process(cmd, env=missing, check=False)
    assert bad.returncode == 2 and b"[semantic_model_missing]" in bad.stderr
    search = [PYTHON, "-m", "threadloom", "search", "flaky login", "--mode", "semantic", "--json"]
    found = await anyio.run_process([*search, "--root", str(root)], env=env, check=False)
    assert found.returncode == 0, found.stderr.decode()
    assert b"the intermittent auth spec failure is back" in found.stdout


async def test_doctor_says_which_vector_path_is_used_and_what_is_missing(
    tmp_path: Path, tiny_model: Path
) -> None:
    from threadloom.doctor import run_doctor
    from threadloom.store import SQLiteStore

    root = tmp_path / "root"
    settings = Settings(root=root, semantic_model=str(tiny_model))
    async with ThreadService(SQLiteStore(root), settings) as service:
        await corpus(service)
    check = next(c for c in (await run_doctor(settings)).checks if c.name == "semantic")
    assert check.level == "warn" and "6 message(s) have no vector yet" in check.detail
    assert check.fix == "run `threadloom reindex --embeddings`"
    async with ThreadService(SQLiteStore(root), settings) as service:
        await service.reindex_embeddings()
    check = next(c for c in (await run_doctor(settings)).checks if c.name == "semantic")
    assert check.level == "ok" and "vector index exact, 6 vectors, default mode hybrid" in check.detail
    off = next(c for c in (await run_doctor(Settings(root=root))).checks if c.name == "semantic")
    assert off.level == "ok" and "semantic search is off" in off.detail
    gone = Settings(root=root, semantic_model=str(tmp_path / "gone"))
    bad = next(c for c in (await run_doctor(gone)).checks if c.name == "semantic")
    assert bad.level == "problem" and "neither an existing folder nor a model id" in bad.detail


@pytest.mark.parametrize("dim", [16, 256])
def test_the_vector_scan_returns_the_exact_nearest_rows(dim: int) -> None:
    import numpy as np

    from threadloom.store.vectors import Matrix

    rng = np.random.default_rng(3)
    n = 5000
    scale = np.linspace(1.0, 0.05, dim)
    vecs = (rng.normal(size=(n, dim)) * scale).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    tids = [f"{i % 700:012x}" for i in range(n)]
    matrix = Matrix()
    matrix.extend((i + 1, tids[i], i + 1, vecs[i].astype("<f4").tobytes()) for i in range(n))
    for trial in range(20):
        q = (rng.normal(size=dim) * scale).astype(np.float32)
        q /= np.linalg.norm(q)
        exact = vecs @ q
        allowed = {f"{t:012x}" for t in rng.choice(700, 50, replace=False)} if trial % 3 == 0 else None
        for per_thread in (False, True):
            limit = int(rng.integers(1, 60))
            got = matrix.search(q.tobytes(), allowed=allowed, limit=limit, best_per_thread=per_thread)
            order = np.argsort(-exact, kind="stable")
            want, seen = [], set()
            for i in order:
                if allowed is not None and tids[i] not in allowed:
                    continue
                if per_thread and tids[i] in seen:
                    continue
                seen.add(tids[i])
                want.append((tids[i], i + 1))
                if len(want) == limit:
                    break
            assert [(h.thread_id, h.seq) for h in got] == want
            assert [h.score for h in got] == pytest.approx([float(exact[s - 1]) for _, s in want], abs=1e-5)


async def test_a_scoped_caller_finds_only_its_agents_threads_by_meaning(sem: ThreadService) -> None:
    from threadloom.scope import AgentScope, acting_as

    mine = await thread_with(sem, ["the intermittent auth spec failure"], agent_id="alice")
    theirs = await thread_with(sem, ["the sporadic auth spec failure"], agent_id="bob")
    await sem.semantic.embed_pending()
    with acting_as(AgentScope.of(["alice"], "alice")):
        for mode in ("semantic", "hybrid"):
            res = await sem.search_threads("flaky login test", mode=mode)
            assert [r.thread_id for r in res.results] == [mine], mode
    everyone = await sem.search_threads("flaky login test", mode="semantic")
    assert {r.thread_id for r in everyone.results} == {mine, theirs}
