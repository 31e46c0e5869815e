"""Search: index build, index size, append cost of indexing, query latency, next to naive scans.

    PYTHONPATH=server python benchmarks/search.py            # 100,000 messages / 1,000 threads
    PYTHONPATH=server python benchmarks/search.py --full     # 1,000,000 messages / 10,000 threads
    PYTHONPATH=server python benchmarks/search.py --store postgres   # PostgreSQL (50,000 messages)
    PYTHONPATH=server python benchmarks/search.py --store both       # one after the other

Generates agent-transcript-like messages (Zipf-distributed words: English function
words, engineering terms, identifiers, numbers, error lines) into a SQLite store (or a
fresh schema of a PostgreSQL database, ``--pg-dsn``), one 5-thread continuation chain of
10,000 messages among them, then measures:

- build: events/s of bulk appends (batches of 200, index maintained in each commit);
- index size (pages of the FTS5 tables) next to the events table;
- append cost of indexing: events/s with the index maintained vs. the same store with
  indexing switched off, for single-event commits (no mirrors / mirrors / full
  durability / 16 concurrent writers), batches of 100, and ThreadService.append end to end;
- query latency p50/p99: text search across all threads (store and search_threads with
  context), chain_search text and regex on the chain, next to ``LIKE '%word%'`` and a
  Python ``re`` scan of the same rows.

Prints a table and writes benchmarks/results/search.json (search_postgres.json). On
PostgreSQL the append cases are the ones that apply there (no mirrors or durability modes).

    PYTHONPATH=server python benchmarks/search.py --semantic [--store postgres] [--model DIR]

measures semantic and hybrid search instead (benchmarks/semantic_bench.py: retrieval
quality on a labelled paraphrase set, embedding throughput, query latency at 100,000
messages, appends/s with the background indexer next to without it) and writes
benchmarks/results/semantic.json (semantic_postgres.json).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import random
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from threadloom.config import Settings  # noqa: E402
from threadloom.models import Status, Thread, iso, new_thread_id, utc_now  # noqa: E402
from threadloom.service import ThreadService  # noqa: E402
from threadloom.store import SQLiteStore, fts, pgsearch  # noqa: E402
from threadloom.store.base import AppendEvents, CreateThread, NewEvent, Store  # noqa: E402
from threadloom.textquery import parse_query  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CHAIN_THREADS = 5
CHAIN_MESSAGES = 10_000
BUILD_BATCH = 200

# ---------------------------------------------------------------------- corpus

COMMON = """the to and a of i is in it that for you this with on be not are as we can have if
file do will at from or so error but an use by run test all there need what now let me check
should my was has code new one which then here line function no just add fix see value data
more like when also out get up its your would make set work these using return call first only
our same into after before because been any other than some them they their were how why""".split()
TECH = """timeout exception traceback database postgres sqlite docker container kubernetes pod
deploy staging production pytest assertion config yaml json http request response status
header token auth cache redis queue worker thread async await import module package version
dependency install build compile lint format commit branch merge rebase pull push refactor
migration schema index query select insert update delete table column row null string integer
float list dict array object class method variable parameter argument loop iterator generator
decorator fixture mock patch stub api endpoint client server socket port connection refused
reset memory leak cpu latency throughput benchmark profile trace log warning debug critical
retry backoff circuit breaker handler middleware router session cookie cors proxy nginx tls
certificate permission denied path directory symlink environment variable secret key hash
signature encrypt decrypt upload download stream buffer chunk encoding utf8 unicode regex parse
serialize deserialize validate payload webhook cron scheduler lock mutex deadlock race
condition transaction rollback isolation replica shard partition vacuum analyze explain plan
latency spike outage incident rollout canary feature flag metric dashboard alert pager oncall
ticket review approve reject comment diff patchset typescript python rust golang java node npm
pip poetry cargo gradle maven makefile cmake linker segfault panic stacktrace coredump oom
killed sigterm sigkill exit code zero nonzero flaky intermittent reproduce bisect regression""".split()
SYLLABLES = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"] + ["ex", "ion", "ter", "con", "sta", "pro"]
ERRORS = [
    "TimeoutError: connection to {ip}:{port} timed out after {n}s",
    "ECONNREFUSED {ip}:{port}",
    "AssertionError: expected {n} but got {m}",
    "psycopg.OperationalError: server closed the connection unexpectedly (code E{code})",
    "KeyError: '{word}'",
    "HTTP {status} from /api/v1/{word}/{n}",
]


class Corpus:
    """Deterministic transcript-like text with a Zipf word distribution."""

    def __init__(self, seed: int = 7, synthetic: int = 40_000) -> None:
        self.rng = random.Random(seed)
        names: set[str] = set()
        while len(names) < synthetic:
            names.add("".join(self.rng.choices(SYLLABLES, k=self.rng.randint(2, 4))))
        numbers = [str(i) for i in range(2000)]
        rest = sorted(names | set(numbers))
        self.rng.shuffle(rest)
        self.vocab = COMMON + [w for w in TECH if w not in COMMON] + rest
        self.cum = list(itertools.accumulate(1 / (r + 1) ** 1.05 for r in range(len(self.vocab))))
        self.rank = {w: i for i, w in enumerate(self.vocab)}

    def words(self, k: int) -> list[str]:
        return self.rng.choices(self.vocab, cum_weights=self.cum, k=k)

    def message(self) -> str:
        n = max(3, min(400, int(self.rng.lognormvariate(3.2, 0.8))))
        words = self.words(n)
        if self.rng.random() < 0.04:
            r = self.rng
            err = r.choice(ERRORS).format(
                ip=f"10.0.{r.randint(0, 9)}.{r.randint(1, 250)}",
                port=r.choice([5432, 6379, 443, 8080]),
                n=r.randint(1, 120),
                m=r.randint(1, 120),
                code=r.randint(1000, 1999),
                word=r.choice(self.vocab[200:3000]),
                status=r.choice([404, 500, 502, 503]),
            )
            words.insert(r.randint(0, len(words)), err)
        return " ".join(words)


def events_for(texts: list[str], start: int) -> tuple[NewEvent, ...]:
    out = []
    for i, text in enumerate(texts):
        payload = {"type": "message", "role": "user" if (start + i) % 2 == 0 else "assistant", "text": text}
        out.append(NewEvent("message", payload, len(text)))
    return tuple(out)


def new_thread(chain_root: str | None = None, previous: str | None = None) -> Thread:
    now = iso(utc_now())
    tid = new_thread_id()
    return Thread(
        thread_id=tid,
        agent_id=f"agent{random.randint(0, 49)}",
        title=f"task {tid}",
        context_window=200_000,
        stale_after=3600.0,
        status=Status.RUNNING,
        chain_root_id=chain_root or tid,
        continuation_of=previous,
        created_at=now,
        updated_at=now,
        heartbeat_at=now,
    )


# ------------------------------------------------------------------- helpers


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p * (len(xs) - 1)))]


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    t0 = time.perf_counter()
    await fn()
    return (time.perf_counter() - t0) * 1000


class NoIndex:
    """Switch index maintenance off for the baseline (the same store code otherwise)."""

    def __enter__(self) -> None:
        self.saved = fts.IndexPlan.apply, pgsearch.insert_docs
        fts.IndexPlan.apply = lambda self, conn: None  # type: ignore[method-assign]

        async def no_docs(conn: Any, thread_id: str, rows: Any) -> None:
            return None

        pgsearch.insert_docs = no_docs  # type: ignore[assignment]

    def __exit__(self, *exc: object) -> None:
        fts.IndexPlan.apply, pgsearch.insert_docs = self.saved  # type: ignore[method-assign]


class Bench:
    """One backend under test: how to open its store, measure its index, run the naive scans."""

    name = "sqlite"

    def __init__(self, root: Path) -> None:
        self.root = root

    def store(self) -> Store:
        return SQLiteStore(self.root, durability="normal", mirrors=False)

    def index_size(self) -> dict[str, float]:
        return index_size(self.root / "threads.db")

    def like_scan(self, word: str, thread_ids: list[str] | None) -> int:
        conn = sqlite3.connect(self.root / "threads.db")
        try:
            return like_scan(conn, word, thread_ids)
        finally:
            conn.close()

    def python_re_scan(self, pattern: str, thread_ids: list[str] | None) -> int:
        conn = sqlite3.connect(self.root / "threads.db")
        try:
            return python_re_scan(conn, pattern, thread_ids)
        finally:
            conn.close()

    def append_store(self, root: Path, durability: str, mirrors: bool) -> Store:
        return SQLiteStore(root, durability=durability, mirrors=mirrors)

    def drop(self) -> None:
        return None


class PgBench(Bench):
    """PostgreSQL: the corpus lives in its own schema of ``dsn``'s database (dropped at the end)."""

    name = "postgres"

    def __init__(self, root: Path, dsn: str) -> None:
        super().__init__(root)
        import psycopg

        self.psycopg = psycopg
        self.base_dsn = dsn
        self.schemas: list[str] = []
        self.dsn = self.new_schema()

    def new_schema(self) -> str:
        name = f"tl_bench_{uuid.uuid4().hex[:10]}"
        with self.psycopg.connect(self.base_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        self.schemas.append(name)
        sep = "&" if "?" in self.base_dsn else "?"
        return f"{self.base_dsn}{sep}options=-csearch_path%3D{name}"

    def store(self) -> Store:
        from threadloom.integrity import Signer
        from threadloom.store.postgres import PostgresStore

        return PostgresStore(self.dsn, durability="normal", pool_size=4, signer=Signer.for_root(self.root))

    def index_size(self) -> dict[str, float]:
        with self.psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE search_docs")
            conn.execute("VACUUM ANALYZE events")
            docs, events, gin = conn.execute(
                "SELECT pg_total_relation_size('search_docs'), pg_total_relation_size('events'),"
                " pg_relation_size('search_docs_tsv')"
            ).fetchone()
        return {
            "index_mb": docs / 1e6,
            "gin_mb": gin / 1e6,
            "events_mb": events / 1e6,
            "index_vs_events": docs / max(1, events),
            "file_mb": (docs + events) / 1e6,
        }

    def like_scan(self, word: str, thread_ids: list[str] | None) -> int:
        with self.psycopg.connect(self.dsn, autocommit=True) as conn:
            sql = "SELECT thread_id, seq FROM events WHERE line LIKE %s"
            args: list[Any] = [f"%{word}%"]
            if thread_ids:
                sql += " AND thread_id = ANY(%s)"
                args.append(thread_ids)
            return len(conn.execute(sql, args).fetchall())

    def python_re_scan(self, pattern: str, thread_ids: list[str] | None) -> int:
        rx = re.compile(pattern)
        with self.psycopg.connect(self.dsn, autocommit=True) as conn:
            sql = "SELECT line FROM events" + (" WHERE thread_id = ANY(%s)" if thread_ids else "")
            return sum(
                1
                for (line,) in conn.execute(sql, [thread_ids] if thread_ids else [])
                if rx.search(json.loads(line).get("text", ""))
            )

    def append_store(self, root: Path, durability: str, mirrors: bool) -> Store:
        from threadloom.store.postgres import PostgresStore

        return PostgresStore(self.new_schema(), durability=durability, pool_size=17)

    def drop(self) -> None:
        with self.psycopg.connect(self.base_dsn, autocommit=True) as conn:
            for name in self.schemas:
                conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        self.schemas.clear()


# --------------------------------------------------------------------- build


async def build(bench: Bench, corpus: Corpus, messages: int, threads: int) -> dict[str, Any]:
    """Fill a store; return the chain ids, a sample of texts (for queries) and timings."""
    store = bench.store()
    await store.open()
    chain: list[Thread] = []
    root_thread = new_thread()
    chain.append(root_thread)
    for _ in range(CHAIN_THREADS - 1):
        chain.append(new_thread(root_thread.thread_id, chain[-1].thread_id))
    others = [new_thread() for _ in range(threads - CHAIN_THREADS)]
    for part in range(0, len(chain + others), 500):
        await store.commit([CreateThread(t) for t in (chain + others)[part : part + 500]])
    per_chain = CHAIN_MESSAGES // CHAIN_THREADS
    other_total = messages - CHAIN_MESSAGES
    plan: list[tuple[str, int]] = [(t.thread_id, per_chain) for t in chain]
    base, extra = divmod(other_total, len(others))
    plan += [(t.thread_id, base + (1 if i < extra else 0)) for i, t in enumerate(others)]
    # interleave threads so rowids of a thread spread over the table, as in real use
    cursors = {tid: 0 for tid, _ in plan}
    remaining = dict(plan)
    sample: list[str] = []
    chain_texts: list[str] = []
    done = 0
    t0 = time.perf_counter()
    order = [tid for tid, _ in plan]
    chain_ids = {t.thread_id for t in chain}
    while order:
        next_order = []
        for tid in order:
            k = min(BUILD_BATCH, remaining[tid])
            texts = [corpus.message() for _ in range(k)]
            if len(sample) < 2000 and corpus.rng.random() < 0.3:
                sample.append(corpus.rng.choice(texts))
            if tid in chain_ids and len(chain_texts) < 500:
                chain_texts.extend(texts[:5])
            await store.commit([AppendEvents(tid, events_for(texts, cursors[tid]))])
            cursors[tid] += k
            remaining[tid] -= k
            done += k
            if remaining[tid]:
                next_order.append(tid)
        order = next_order
        print(f"  built {done:,} / {messages:,} messages ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    seconds = time.perf_counter() - t0
    await store.close()
    return {
        "chain": [t.thread_id for t in chain],
        "sample": sample,
        "chain_texts": chain_texts,
        "build_seconds": seconds,
        "build_events_per_s": messages / seconds,
    }


def index_size(path: Path) -> dict[str, float]:
    conn = sqlite3.connect(path)
    try:
        rows = dict(conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall())
    finally:
        conn.close()
    fts_bytes = sum(v for k, v in rows.items() if k.startswith(fts.TABLE))
    events_bytes = rows.get("events", 0) + rows.get("sqlite_autoindex_events_1", 0)
    return {
        "index_mb": fts_bytes / 1e6,
        "events_mb": events_bytes / 1e6,
        "index_vs_events": fts_bytes / max(1, events_bytes),
        "file_mb": path.stat().st_size / 1e6,
    }


# ------------------------------------------------------------ append cost


async def append_rate(bench: Bench, case: str, corpus: Corpus, n: int) -> tuple[float, float]:
    """(events/s, process CPU µs per event) of one append case on a fresh root preloaded
    with 5,000 messages. CPU time is steadier than wall time on a shared machine."""
    root = Path(tempfile.mkdtemp(prefix="tl-search-append-"))
    try:
        return await _append_rate(bench, root, case, corpus, n)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _append_rate(bench: Bench, root: Path, case: str, corpus: Corpus, n: int) -> tuple[float, float]:
    durability = "full" if case == "single, mirrors, full" else "normal"
    mirrors = "no mirrors" not in case
    store = bench.append_store(root, durability, mirrors)
    async with ThreadService(store, Settings(root=root, durability=durability)) as svc:
        writers = 16 if "16 writers" in case else 1
        # a context window the preloaded messages cannot fill: no handoff in the middle of a measurement
        tids = [(await svc.create_thread(context_window=10_000_000)).thread_id for _ in range(writers)]
        for tid in tids:
            await svc.append(tid, [{"type": "message", "role": "user", "text": "start"}])
        pre = [corpus.message() for _ in range(5000)]
        for i in range(0, 5000, 500):
            await store.commit([AppendEvents(tids[0], events_for(pre[i : i + 500], i))])
        texts = [corpus.message() for _ in range(n)]
        batch = 100 if "batch" in case else 1
        per_writer = n // writers // batch

        async def work(w: int) -> None:
            for i in range(per_writer):
                chunk = texts[(w * per_writer + i) * batch : (w * per_writer + i + 1) * batch]
                if case == "service.append":
                    await svc.append(tids[w], [{"type": "message", "role": "user", "text": t} for t in chunk])
                else:
                    evs = events_for(chunk, i)
                    await store.commit([AppendEvents(tids[w], evs)])

        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(work(w) for w in range(writers)))
        count = per_writer * writers * batch
        return count / (time.perf_counter() - t0), (time.process_time() - c0) / count * 1e6


APPEND_CASES = [
    "single, no mirrors",
    "single, mirrors",
    "single, mirrors, full",
    "single, mirrors, 16 writers",
    "batch 100, no mirrors",
    "service.append",
]
PG_APPEND_CASES = [
    "single, no mirrors",
    "single, no mirrors, 16 writers",
    "batch 100, no mirrors",
    "service.append",
]


async def append_costs(bench: Bench, corpus: Corpus, n: int, reps: int) -> list[dict[str, Any]]:
    rows = []
    for case in PG_APPEND_CASES if isinstance(bench, PgBench) else APPEND_CASES:
        count = n * 20 if "batch" in case else n
        with_idx, without = [], []
        for _ in range(reps):  # alternate to spread the shared machine's noise evenly
            with_idx.append(await append_rate(bench, case, corpus, count))
            with NoIndex():
                without.append(await append_rate(bench, case, corpus, count))
        w, wo = statistics.median(x[0] for x in with_idx), statistics.median(x[0] for x in without)
        cw, cwo = statistics.median(x[1] for x in with_idx), statistics.median(x[1] for x in without)
        rows.append(
            {
                "case": case,
                "indexed_per_s": w,
                "unindexed_per_s": wo,
                "ratio": w / wo,
                "cost": 1 - w / wo,
                "indexed_cpu_us": cw,
                "unindexed_cpu_us": cwo,
                "cpu_ratio": cwo / cw,
                "cpu_cost": 1 - cwo / cw,
            }
        )
        print(
            f"  append {case}: {w:,.0f} vs {wo:,.0f} ev/s; {cw:.0f} vs {cwo:.0f} CPU µs/event",
            file=sys.stderr,
        )
    return rows


# ------------------------------------------------------------------ queries


def text_queries(corpus: Corpus, sample: list[str], n: int, rng: random.Random) -> list[tuple[str, str]]:
    """(class, query) pairs: words from real messages, plus common/rare/phrase/prefix classes."""
    out: list[tuple[str, str]] = []
    content = [w for w in corpus.vocab[60:] if not w.isdigit()]
    for i in range(n):
        kind = ("from-message", "from-message", "common", "rare", "phrase", "prefix", "two-words")[i % 7]
        text = rng.choice(sample).split()
        if kind == "from-message":
            words = [w for w in text if corpus.rank.get(w, 10**6) > 40] or text
            out.append((kind, " ".join(rng.sample(words, min(len(words), rng.randint(1, 3))))))
        elif kind == "common":
            out.append((kind, rng.choice(corpus.vocab[:40])))
        elif kind == "rare":
            out.append((kind, rng.choice(content[5000:])))
        elif kind == "phrase":  # two neighbouring words, at least one of them not a function word
            pairs = [text[j : j + 2] for j in range(len(text) - 1)]
            pairs = (
                [p for p in pairs if max(corpus.rank.get(w, 10**6) for w in p) > 100] or pairs or [text * 2]
            )
            out.append((kind, '"' + " ".join(rng.choice(pairs)) + '"'))
        elif kind == "prefix":  # the stem of an engineering word or of a name
            w = rng.choice([w for w in TECH if len(w) >= 6] + [w for w in content[100:3000] if len(w) >= 6])
            out.append((kind, w[: max(4, len(w) - 3)] + "*"))
        else:
            out.append((kind, " ".join(rng.sample(corpus.vocab[40:400], 2))))
    return out


REGEXES = [
    r"TimeoutError: connection to [\d.]+:\d+",
    r"E1[0-9]{3}\)",
    r"(?i)econnrefused 10\.0\.\d\.\d+",
    r"HTTP 50[23] from /api/v1/\w+",
    r"\bdeadlock\b.*\brollback\b",
    r"(retry|backoff) \w+ (timeout|latency)",
    r"no such text anywhere \d{5}",
    r"(a+)+$",
]


def like_scan(conn: sqlite3.Connection, word: str, thread_ids: list[str] | None) -> int:
    where = "line LIKE ?"
    args: list[Any] = [f"%{word}%"]
    if thread_ids:
        where += f" AND thread_id IN ({','.join('?' * len(thread_ids))})"
        args += thread_ids
    return len(conn.execute(f"SELECT thread_id, seq FROM events WHERE {where}", args).fetchall())


def python_re_scan(conn: sqlite3.Connection, pattern: str, thread_ids: list[str] | None) -> int:
    rx = re.compile(pattern)
    sql = "SELECT line FROM events" + (
        f" WHERE thread_id IN ({','.join('?' * len(thread_ids))})" if thread_ids else ""
    )
    hits = 0
    for (line,) in conn.execute(sql, thread_ids or []):
        if rx.search(json.loads(line).get("text", "")):
            hits += 1
    return hits


def summary(xs: list[float]) -> dict[str, float]:
    return {"p50_ms": pct(xs, 0.5), "p99_ms": pct(xs, 0.99), "max_ms": max(xs), "n": len(xs)}


async def query_latency(
    bench: Bench, corpus: Corpus, built: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    rng = random.Random(11)
    store = bench.store()
    out: dict[str, Any] = {}
    async with ThreadService(store) as svc:
        queries = text_queries(corpus, built["sample"], args.queries, rng)
        for _, q in queries[:10]:  # warm the page cache once
            await store.search_text(parse_query(q), limit=5, best_per_thread=True)
        by_class: dict[str, list[float]] = {}
        store_ms, service_ms = [], []
        slowest: list[tuple[float, str, str]] = []
        for kind, q in queries:
            parsed = parse_query(q)
            ms = await timed(lambda parsed=parsed: store.search_text(parsed, limit=5, best_per_thread=True))
            store_ms.append(ms)
            by_class.setdefault(kind, []).append(ms)
            slowest = sorted([*slowest, (ms, kind, q)], reverse=True)[:10]
            service_ms.append(await timed(lambda q=q: svc.search_threads(q, limit=5, context=3)))
        out["global_text_store"] = summary(store_ms)
        out["global_text_search_threads"] = summary(service_ms)
        out["global_text_by_class"] = {k: summary(v) for k, v in by_class.items()}
        out["global_text_slowest"] = [{"ms": ms, "class": k, "query": q} for ms, k, q in slowest]

        chain = built["chain"]
        chain_queries = text_queries(corpus, built["chain_texts"], max(50, args.queries // 2), rng)
        text_ms = [
            await timed(lambda q=q: svc.chain_search(chain[-1], q, limit=20, context=3))
            for _, q in chain_queries
        ]
        out["chain_text"] = summary(text_ms)
        regex_ms: dict[str, list[float]] = {p: [] for p in REGEXES}
        for _ in range(args.regex_reps):
            for p in REGEXES:
                regex_ms[p].append(
                    await timed(
                        lambda p=p: svc.chain_search(chain[-1], p, search_type="regex", limit=20, context=3)
                    )
                )
        out["chain_regex"] = summary([x for xs in regex_ms.values() for x in xs])
        out["chain_regex_by_pattern"] = {p: statistics.median(v) for p, v in regex_ms.items()}

    words = [q for _, q in chain_queries if " " not in q and "*" not in q and '"' not in q][:20]
    like_chain = []
    for w in words:
        t0 = time.perf_counter()
        bench.like_scan(w, chain)
        like_chain.append((time.perf_counter() - t0) * 1000)
    out["chain_like_baseline"] = summary(like_chain)
    re_chain = []
    for p in REGEXES[:-1]:  # Python re never returns on the catastrophic pattern
        t0 = time.perf_counter()
        bench.python_re_scan(p, chain)
        re_chain.append((time.perf_counter() - t0) * 1000)
    out["chain_python_re_baseline"] = summary(re_chain)
    like_global = []
    for w in words[: args.global_scans]:
        t0 = time.perf_counter()
        bench.like_scan(w, None)
        like_global.append((time.perf_counter() - t0) * 1000)
    out["global_like_baseline"] = summary(like_global)
    re_global = []
    for p in REGEXES[:2][: max(1, args.global_scans // 4)]:
        t0 = time.perf_counter()
        bench.python_re_scan(p, None)
        re_global.append((time.perf_counter() - t0) * 1000)
    out["global_python_re_baseline"] = summary(re_global)
    return out


# ---------------------------------------------------------------------- main


def print_appends(rows: list[dict[str, Any]]) -> None:
    print()
    print(
        f"{'append cost of indexing':<30} {'indexed ev/s':>12} {'unindexed':>10} {'ratio':>6} {'cost':>6}"
        f" {'CPU µs/ev idx':>14} {'unidx':>6} {'ratio':>6} {'cost':>6}"
    )
    for r in rows:
        print(
            f"{r['case']:<30} {r['indexed_per_s']:>12,.0f} {r['unindexed_per_s']:>10,.0f} {r['ratio']:>6.2f}"
            f" {r['cost']:>6.0%} {r['indexed_cpu_us']:>14,.0f} {r['unindexed_cpu_us']:>6,.0f}"
            f" {r['cpu_ratio']:>6.2f} {r['cpu_cost']:>6.0%}"
        )


def chunks(xs: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(xs), n):
        yield xs[i : i + n]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="1,000,000 messages over 10,000 threads")
    ap.add_argument("--store", choices=["sqlite", "postgres", "both"], default="sqlite")
    ap.add_argument(
        "--pg-dsn",
        default=os.environ.get("THREADLOOM_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test"),
        help="database for --store postgres (a schema is created in it and dropped afterwards)",
    )
    ap.add_argument("--messages", type=int, default=None, help="default 100,000; 50,000 on PostgreSQL")
    ap.add_argument("--threads", type=int, default=None, help="default 1,000 (SQLite), 500 (PostgreSQL)")
    ap.add_argument("--queries", type=int, default=None, help="text queries across all threads")
    ap.add_argument("--append-events", type=int, default=1500, help="events per single-append measurement")
    ap.add_argument("--reps", type=int, default=3, help="alternating repetitions of each append case")
    ap.add_argument("--regex-reps", type=int, default=10)
    ap.add_argument("--global-scans", type=int, default=None, help="naive scans over all messages (slow)")
    ap.add_argument("--root", type=Path, default=None, help="reuse/keep the SQLite corpus here")
    ap.add_argument("--skip-append", action="store_true")
    ap.add_argument("--append-only", action="store_true", help="only the append cost of indexing")
    ap.add_argument("--semantic", action="store_true", help="semantic/hybrid figures (semantic_bench.py)")
    ap.add_argument(
        "--model", type=Path, default=None, help="--semantic: model folder (default: build_model.py's)"
    )
    ap.add_argument(
        "--writers", type=int, default=4, help="--semantic: concurrent writers of the append case"
    )
    args = ap.parse_args()
    if args.semantic:
        await semantic(args)
        return
    args.queries = args.queries or (700 if args.full else 350)
    args.global_scans = args.global_scans if args.global_scans is not None else (4 if args.full else 8)
    for kind in ["sqlite", "postgres"] if args.store == "both" else [args.store]:
        pg = kind == "postgres"
        messages = args.messages or (1_000_000 if args.full else 50_000 if pg else 100_000)
        threads = args.threads or (10_000 if args.full else 500 if pg else 1_000)
        if messages < CHAIN_MESSAGES * 2 or threads <= CHAIN_THREADS:
            ap.error("need at least 20,000 messages and 6 threads")
        root = (None if pg else args.root) or Path(tempfile.mkdtemp(prefix="tl-search-"))
        bench = PgBench(root, args.pg_dsn) if pg else Bench(root)
        try:
            if args.append_only:
                print(f"{kind}:")
                print_appends(await append_costs(bench, Corpus(seed=3), args.append_events, args.reps))
            else:
                await run(args, Corpus(), bench, messages, threads)
        finally:
            bench.drop()
            if pg or args.root is None:
                shutil.rmtree(root, ignore_errors=True)


async def semantic(args: argparse.Namespace) -> None:
    import semantic_bench
    from build_model import ensure_model

    model = str(args.model or ensure_model())
    for kind in ["sqlite", "postgres"] if args.store == "both" else [args.store]:
        pg = kind == "postgres"
        root = Path(tempfile.mkdtemp(prefix="tl-semantic-"))
        bench = PgBench(root, args.pg_dsn) if pg else Bench(root)
        dsns: dict[str, str] = {}

        def make_store(name: str, pg: bool = pg, bench: Bench = bench, root: Path = root) -> Store:
            if pg:
                from threadloom.integrity import Signer
                from threadloom.store.postgres import PostgresStore

                assert isinstance(bench, PgBench)
                dsn = dsns.setdefault(name, bench.new_schema())
                return PostgresStore(dsn, durability="normal", pool_size=4, signer=Signer.for_root(root))
            return SQLiteStore(root / name, durability="normal", mirrors=False)

        try:
            result = await semantic_bench.run(
                make_store=make_store,
                corpus=Corpus(),
                new_thread=new_thread,
                model=model,
                messages=args.messages or 100_000,
                threads=args.threads or 1_000,
                reps=args.reps,
                append_events=args.append_events,
                writers=args.writers,
                skip_append=args.skip_append,
                label=kind,
                append_only=args.append_only,
            )
        finally:
            bench.drop()
            shutil.rmtree(root, ignore_errors=True)
        result["machine"] = {
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "cpus": os.cpu_count(),
        }
        semantic_bench.print_result(result)
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / (
            ("semantic_postgres" if pg else "semantic") + ("_append" if args.append_only else "") + ".json"
        )
        out.write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")


async def run(args: argparse.Namespace, corpus: Corpus, bench: Bench, messages: int, threads: int) -> None:
    meta = bench.root / "bench-meta.json"
    if meta.exists():
        built = json.loads(meta.read_text())
        print(f"reusing the corpus in {bench.root}", file=sys.stderr)
    else:
        print(f"building {messages:,} messages over {threads:,} threads ({bench.name})", file=sys.stderr)
        built = await build(bench, corpus, messages, threads)
        built["messages"], built["threads"] = messages, threads
        meta.write_text(json.dumps(built))
    size = bench.index_size()
    print("measuring queries", file=sys.stderr)
    latency = await query_latency(bench, corpus, built, args)
    appends = []
    if not args.skip_append:
        appends = await append_costs(bench, Corpus(seed=3), args.append_events, args.reps)

    print()
    print(f"store: {bench.name}")
    print(
        f"corpus: {built['messages']:,} messages, {built['threads']:,} threads; chain {CHAIN_THREADS} threads / {CHAIN_MESSAGES:,} messages"
    )
    print(
        f"build (batches of {BUILD_BATCH}, indexed in each commit): {built['build_seconds']:.1f} s = {built['build_events_per_s']:,.0f} ev/s"
    )
    print(
        f"index size: {size['index_mb']:.1f} MB (events table {size['events_mb']:.1f} MB; ratio {size['index_vs_events']:.2f}); file {size['file_mb']:.1f} MB"
    )
    print()
    print(f"{'query latency':<44} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} {'n':>5}")
    rows = [
        ("text, all threads (store, best per thread)", "global_text_store"),
        ("text, all threads (search_threads, context)", "global_text_search_threads"),
        ("  naive LIKE '%word%' over all messages", "global_like_baseline"),
        ("  Python re over all messages", "global_python_re_baseline"),
        ("chain_search text (5 threads, 10k msgs)", "chain_text"),
        ("chain_search regex (RE2)", "chain_regex"),
        ("  naive LIKE '%word%' over the chain", "chain_like_baseline"),
        ("  Python re over the chain", "chain_python_re_baseline"),
    ]
    for label, key in rows:
        s = latency[key]
        print(f"{label:<44} {s['p50_ms']:>9.2f} {s['p99_ms']:>9.2f} {s['max_ms']:>9.2f} {s['n']:>5}")
    print()
    print(f"{'text query class (store)':<44} {'p50 ms':>9} {'p99 ms':>9}")
    for kind, s in latency["global_text_by_class"].items():
        print(f"  {kind:<42} {s['p50_ms']:>9.2f} {s['p99_ms']:>9.2f}")
    print(
        "slowest text queries: "
        + "; ".join(
            f"{x['query']} ({x['class']}) {x['ms']:.0f} ms" for x in latency["global_text_slowest"][:5]
        )
    )
    g, like, rx = (
        latency["global_text_store"],
        latency["global_like_baseline"],
        latency["global_python_re_baseline"],
    )
    c, cl, cr = latency["chain_regex"], latency["chain_like_baseline"], latency["chain_python_re_baseline"]
    print(
        f"ratios (p50): index vs LIKE all threads {like['p50_ms'] / g['p50_ms']:.0f}x faster, vs Python re "
        f"{rx['p50_ms'] / g['p50_ms']:.0f}x; chain regex vs LIKE {c['p50_ms'] / cl['p50_ms']:.2f}x the time, "
        f"vs Python re {c['p50_ms'] / cr['p50_ms']:.2f}x the time"
    )
    if appends:
        print_appends(appends)
    RESULTS.mkdir(exist_ok=True)
    out = {
        "machine": {
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "cpus": os.cpu_count(),
        },
        "messages": built["messages"],
        "threads": built["threads"],
        "chain": {"threads": CHAIN_THREADS, "messages": CHAIN_MESSAGES},
        "build_seconds": built["build_seconds"],
        "build_events_per_s": built["build_events_per_s"],
        "index_size": size,
        "latency": latency,
        "append": appends,
        "settings": (
            {"rank_window": pgsearch.RANK_WINDOW, "regex_timeout_ms": pgsearch.REGEX_TIMEOUT_MS}
            if isinstance(bench, PgBench)
            else {"rank_window": fts.RANK_WINDOW, "common_docs": fts.COMMON_DOCS}
        ),
    }
    stem = "search_postgres" if isinstance(bench, PgBench) else "search"
    name = stem + ("_full" if args.full else "") + ".json"
    (RESULTS / name).write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    asyncio.run(main())
