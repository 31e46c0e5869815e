"""Semantic and hybrid search figures (run through ``benchmarks/search.py --semantic``).

- quality: recall@5 and MRR@10 of text, semantic and hybrid ``search_threads`` on the
  labelled paraphrase set (benchmarks/data/paraphrases.json): 30 past threads, each
  asked for in other words, among generated filler threads;
- indexing: messages/s of ``reindex --embeddings`` (embed + store) on 100,000 messages;
- latency p50/p99 at 100,000 messages: ``search_vectors`` alone, and ``search_threads``
  in semantic, hybrid and text modes (context=3), on SQLite (and PostgreSQL with
  ``--store postgres``);
- appends/s with the background indexer running next to the same store without it
  (ThreadService.append, one message per call, several concurrent writers, alternating
  repetitions).

The model is the one ``benchmarks/build_model.py`` distills from all-MiniLM-L6-v2, or
``--model DIR``.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from threadloom.config import Settings
from threadloom.service import ThreadService
from threadloom.store.base import AppendEvents, CreateThread, NewEvent, Store
from threadloom.store.sqlite import SQLiteStore

DATA = Path(__file__).resolve().parent / "data" / "paraphrases.json"
MODES = ("text", "semantic", "hybrid")


def pct(xs: list[float], p: float) -> float:
    ys = sorted(xs)
    return ys[min(len(ys) - 1, int(round(p / 100 * (len(ys) - 1))))]


def summary(xs: list[float]) -> dict[str, float]:
    return {"p50_ms": round(pct(xs, 50) * 1000, 2), "p99_ms": round(pct(xs, 99) * 1000, 2), "n": len(xs)}


def message(text: str, i: int) -> NewEvent:
    payload = {"type": "message", "role": "user" if i % 2 == 0 else "assistant", "text": text}
    return NewEvent("message", payload, text_chars=len(text))


def items() -> list[dict[str, Any]]:
    return json.loads(DATA.read_text())["items"]


async def fill(store: Store, corpus: Any, messages: int, threads: int, new_thread: Any) -> dict[str, str]:
    """``threads`` filler threads holding ``messages`` generated messages, plus one thread per
    labelled item (its own messages); returns item id -> thread id."""
    labelled = {}
    for item in items():
        t = new_thread()
        await store.commit([CreateThread(t)])
        await store.commit(
            [AppendEvents(t.thread_id, tuple(message(x, i) for i, x in enumerate(item["messages"])))]
        )
        labelled[item["id"]] = t.thread_id
    others = [new_thread() for _ in range(threads)]
    for part in range(0, len(others), 500):
        await store.commit([CreateThread(t) for t in others[part : part + 500]])
    per = max(1, messages // threads)
    done = 0
    t0 = time.perf_counter()
    for start in range(0, per, 200):
        for t in others:
            k = min(200, per - start)
            await store.commit(
                [AppendEvents(t.thread_id, tuple(message(corpus.message(), start + i) for i in range(k)))]
            )
            done += k
        print(
            f"  filled {done:,} / {per * threads:,} messages ({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
        )
    return labelled


async def quality(service: ThreadService, labelled: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    per_item: dict[str, dict[str, int | None]] = {}
    for mode in MODES:
        recall = rr = 0.0
        for item in items():
            res = await service.search_threads(item["query"], mode=mode, limit=10, context=0)
            ranked = [r.thread_id for r in res.results]
            want = labelled[item["id"]]
            rank = ranked.index(want) + 1 if want in ranked else None
            per_item.setdefault(item["id"], {})[mode] = rank
            recall += 1 if rank is not None and rank <= 5 else 0
            rr += 1 / rank if rank is not None else 0
        n = len(items())
        out[mode] = {"recall_at_5": round(recall / n, 3), "mrr_at_10": round(rr / n, 3)}
    out["per_item"] = per_item
    return out


async def latency(service: ThreadService, reps: int) -> dict[str, Any]:
    queries = [item["query"] for item in items()]
    semantic = service.semantic
    model = semantic.model_id
    vectors = [await semantic.encode_query(q) for q in queries]
    out: dict[str, Any] = {}
    times: list[float] = []
    for _ in range(reps):
        for v in vectors:
            t0 = time.perf_counter()
            await service.store.search_vectors(model, v, limit=50, best_per_thread=True)
            times.append(time.perf_counter() - t0)
    out["store search_vectors (limit 50, per thread)"] = summary(times)
    cache = getattr(service.store, "_vectors", None)
    matrix = cache.get(model) if hasattr(cache, "get") else getattr(cache, "cache", None)
    if matrix is not None and not hasattr(matrix, "mat"):
        matrix = matrix.get(model)
    if matrix is not None and matrix.count:
        import numpy as np

        full = []
        for _ in range(reps):
            for v in vectors:
                q = np.frombuffer(v, dtype="<f4")
                t0 = time.perf_counter()
                scores = matrix.mat[: matrix.count] @ q
                np.argpartition(scores, matrix.count - 50)
                full.append(time.perf_counter() - t0)
        out["baseline: bare numpy matvec + top 50 (same matrix)"] = summary(full)
    times = []
    for q in queries * reps:
        t0 = time.perf_counter()
        await semantic.encode_query(q)
        times.append(time.perf_counter() - t0)
    out["embed one query"] = summary(times)
    for mode in ("semantic", "hybrid", "text"):
        times = []
        for q in queries * reps:
            t0 = time.perf_counter()
            await service.search_threads(q, mode=mode, limit=5, context=3)
            times.append(time.perf_counter() - t0)
        out[f"search_threads mode={mode} (limit 5, context 3)"] = summary(times)
    return out


async def append_rate(root: Path, model: str | None, n: int, writers: int) -> tuple[float, float]:
    """(appends/s, process CPU ms per append, the indexer's work included)."""
    settings = Settings(root=root, semantic_model=model)
    async with ThreadService(SQLiteStore(root, durability="full"), settings) as service:
        threads = [(await service.create_thread()).thread_id for _ in range(writers)]
        texts = [
            "the deploy failed because the auth token expired",
            "retry the migration after the lock is released",
            "postgres replica lag is climbing again",
            "we fixed the flaky spec by waiting for the port",
        ]
        async with anyio.create_task_group() as tg:
            if model is not None:
                tg.start_soon(service.run_indexer)
                await anyio.sleep(0.2)  # let it start (model load, catch-up)

            async def writer(tid: str) -> None:
                for i in range(n // writers):
                    await service.append(
                        tid, [{"type": "message", "role": "user", "text": f"{texts[i % 4]} #{i}"}]
                    )

            t0, c0 = time.perf_counter(), time.process_time()
            async with anyio.create_task_group() as inner:
                for tid in threads:
                    inner.start_soon(writer, tid)
            seconds = time.perf_counter() - t0
            if model is not None:  # the indexer must have kept up (it runs after each commit)
                with anyio.fail_after(60):
                    while await service.store.count_missing_vectors(
                        service.semantic.model_id, service.semantic.types
                    ):
                        await anyio.sleep(0.05)
            cpu = time.process_time() - c0
            tg.cancel_scope.cancel()
    done = (n // writers) * writers
    return done / seconds, 1000 * cpu / done


async def appends(model: str, n: int, reps: int, writers: int) -> dict[str, Any]:
    rates: dict[str, list[float]] = {"without indexer": [], "with indexer": []}
    cpu: dict[str, list[float]] = {"without indexer": [], "with indexer": []}
    with tempfile.TemporaryDirectory(prefix="tl-sem-append-") as tmp:
        for r in range(reps):
            for case in (
                ["without indexer", "with indexer"] if r % 2 == 0 else ["with indexer", "without indexer"]
            ):
                root = Path(tmp) / f"{case.replace(' ', '-')}-{r}"
                rate, ms = await append_rate(root, model if case == "with indexer" else None, n, writers)
                rates[case].append(rate)
                cpu[case].append(ms)
                print(f"  appends {case}: {rate:,.0f}/s, {ms:.2f} CPU ms each", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "events_per_call": 1,
        "writers": writers,
        "events_per_rep": n,
        "reps": reps,
        "rates": {k: [round(x) for x in v] for k, v in rates.items()},
        "median_per_s": {k: round(v) for k, v in med.items()},
        "ratio_with_over_without": round(med["with indexer"] / med["without indexer"], 3),
        "cpu_ms_per_append": {k: round(statistics.median(v), 3) for k, v in cpu.items()},
        "cpu_ratio_with_over_without": round(
            statistics.median(cpu["with indexer"]) / statistics.median(cpu["without indexer"]), 3
        ),
    }


def model_choice(model: str) -> dict[str, Any]:
    """The static model next to the transformer it was distilled from, on the labelled set
    alone (60 messages, 30 queries: thread score = best message cosine): recall@5, MRR@10 and
    messages embedded per second."""
    import numpy as np
    from build_model import Transformer

    from threadloom.embedding import load_embedder

    labelled = items()
    texts = [m for it in labelled for m in it["messages"]]
    owner = [i for i, it in enumerate(labelled) for _ in it["messages"]]
    queries = [it["query"] for it in labelled]
    out: dict[str, Any] = {}
    static = load_embedder(model)
    for name, encode in (
        ("model2vec static (this model)", static.encode),
        ("all-MiniLM-L6-v2 (ONNX Runtime, int8)", None),
    ):
        if encode is None:
            try:
                encode = Transformer().encode
            except SystemExit as exc:
                out[name] = {"skipped": str(exc)}
                continue
        t0 = time.perf_counter()
        docs = encode(texts * 4)[: len(texts)]
        rate = 4 * len(texts) / (time.perf_counter() - t0)
        qv = encode(queries)
        recall = rr = 0.0
        for qi, q in enumerate(qv):
            best = np.full(len(labelled), -np.inf)
            for di, s in enumerate(docs @ q):
                best[owner[di]] = max(best[owner[di]], s)
            rank = int((best > best[qi]).sum()) + 1
            recall += rank <= 5
            rr += 1 / rank if rank <= 10 else 0
        out[name] = {
            "recall_at_5": round(recall / len(queries), 3),
            "mrr_at_10": round(rr / len(queries), 3),
            "messages_per_s": round(rate),
        }
    return out


async def run(
    *,
    make_store: Any,
    corpus: Any,
    new_thread: Any,
    model: str,
    messages: int,
    threads: int,
    reps: int,
    append_events: int,
    writers: int,
    skip_append: bool,
    label: str,
    append_only: bool = False,
) -> dict[str, Any]:
    result: dict[str, Any] = {"store": label, "model": model, "messages": messages, "threads": threads}
    if label == "sqlite" and not append_only:
        result["model_choice"] = await anyio.to_thread.run_sync(model_choice, model)
    if append_only:
        result["appends"] = await appends(model, append_events, reps, writers)
        return result
    # quality on a small store: 30 labelled threads among 500 filler threads (3,000 messages)
    small = make_store("quality")
    await small.open()
    labelled = await fill(small, corpus, 3000, 500, new_thread)
    await small.close()
    async with ThreadService(make_store("quality"), Settings(semantic_model=model)) as service:
        await service.reindex_embeddings()
        result["vector_index"] = service.store.vector_index
        result["quality"] = await quality(service, labelled)
    # 100,000 messages: indexing throughput and latency
    big = make_store("big")
    await big.open()
    labelled_big = await fill(big, corpus, messages, threads, new_thread)
    await big.close()
    async with ThreadService(make_store("big"), Settings(semantic_model=model)) as service:
        await anyio.to_thread.run_sync(service.semantic.embedder)
        t0 = time.perf_counter()
        stats = await service.reindex_embeddings()
        seconds = time.perf_counter() - t0
        result["indexing"] = {
            "embedded": stats.embedded,
            "seconds": round(seconds, 1),
            "messages_per_s": round(stats.embedded / seconds),
        }
        print(f"  embedded {stats.embedded:,} in {seconds:.1f} s", file=sys.stderr)
        await service.search_threads("warm up", mode="hybrid")
        result["latency"] = await latency(service, reps=max(1, 300 // len(items())))
        big_quality = await quality(service, labelled_big)
        big_quality.pop("per_item")
        result["quality_big"] = big_quality
    if not skip_append and label == "sqlite":
        result["appends"] = await appends(model, append_events, reps, writers)
    return result


def print_result(r: dict[str, Any]) -> None:
    print(f"\nsemantic search ({r['store']}, vector_index={r.get('vector_index')}, model {r['model']})")
    if "quality" not in r:
        print_appends(r["appends"])
        return
    if r.get("model_choice"):
        print("\nmodel choice: the labelled set alone (30 threads, 60 messages, 30 queries)")
        for name, m in r["model_choice"].items():
            if "skipped" in m:
                print(f"  {name:34} skipped: {m['skipped']}")
            else:
                print(
                    f"  {name:34} recall@5 {m['recall_at_5']:.3f}  MRR@10 {m['mrr_at_10']:.3f}  "
                    f"{m['messages_per_s']:,} messages/s"
                )
    print("\nretrieval quality on benchmarks/data/paraphrases.json (30 queries, 530 threads)")
    print(f"  {'mode':10} {'recall@5':>9} {'MRR@10':>8}")
    for mode in MODES:
        q = r["quality"][mode]
        print(f"  {mode:10} {q['recall_at_5']:9.3f} {q['mrr_at_10']:8.3f}")
    print(f"\nthe same 30 queries among {r['threads']:,} filler threads ({r['messages']:,} messages)")
    for mode in MODES:
        q = r["quality_big"][mode]
        print(f"  {mode:10} {q['recall_at_5']:9.3f} {q['mrr_at_10']:8.3f}")
    ix = r["indexing"]
    print(
        f"\nindexing: {ix['embedded']:,} messages in {ix['seconds']} s = {ix['messages_per_s']:,} messages/s"
    )
    print(f"\nquery latency at {r['messages']:,} messages")
    for name, s in r["latency"].items():
        print(f"  {name:50} p50 {s['p50_ms']:7.2f} ms   p99 {s['p99_ms']:7.2f} ms")
    if r.get("appends"):
        print_appends(r["appends"])


def print_appends(a: dict[str, Any]) -> None:
    m = a["median_per_s"]
    print(
        f"\nappends/s ({a['writers']} writers, 1 message per call, median of {a['reps']}): without indexer "
        f"{m['without indexer']:,}, with indexer {m['with indexer']:,} -> ratio {a['ratio_with_over_without']}"
    )
    c = a["cpu_ms_per_append"]
    print(
        f"process CPU per append (indexer included): without {c['without indexer']} ms, with "
        f"{c['with indexer']} ms -> ratio {a['cpu_ratio_with_over_without']}"
    )
