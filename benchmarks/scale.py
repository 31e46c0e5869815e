"""Scale: a store the size a team reaches in months, next to a store of 100 threads.

    python3 dev.py run python benchmarks/scale.py                      # 100,000 threads, 1,000,000 events
    python3 dev.py run python benchmarks/scale.py --threads 10000 --events 100000
    python3 dev.py run python benchmarks/scale.py --store postgres     # $THREADLOOM_BENCH_PG, a fresh schema

Builds both stores through the service's batch path (one create and one append of ten
events per thread, 16 writers; agents, parents and statuses mixed as an orchestrator
leaves them; three 10,000-event threads for the handoff), then measures on each, in the
same run:

- start-up: spawn of ``threadloom serve`` (stdio) to its first tool result, and the
  server's RSS then (median of --startups);
- ``list_threads`` unfiltered and with every combination of agent_id, parent_id and
  status (p50; ratio to unfiltered);
- ``read_events`` (a page of 100 in a 10,000-event thread), ``get_chain``,
  ``search_threads``, ``chain_search`` (p50/p99);
- ``handoff_thread`` of a 10,000-event thread (each of the three once);
- bytes on disk per payload byte, database alone and with the mirrors; on SQLite also where
  the database's bytes go, per table and index (SQLite's ``dbstat``).

"Payload" is the events' JSON as a client appends them, in its compact encoding (no spaces
after ``:`` and ``,``): what the clients sent, not what the server adds (``seq``, ``ts``,
its own ``status`` and ``checkpoint`` events, hashes, manifests, indexes).

Prints a table and writes benchmarks/results/scale.json (scale_postgres.json).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from threadloom.config import Settings  # noqa: E402
from threadloom.service import ThreadService  # noqa: E402
from threadloom.store import make_store  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PG_URL = os.environ.get("THREADLOOM_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
WRITERS = 16
AGENTS = [f"agent-{i}" for i in range(10)]
HANDOFF_EVENTS = 10_000
HANDOFF_THREADS = 3
FILTERS = ("agent_id", "parent_id", "status")
VOCAB = (
    "the a to of and in is it that for on with as was this test file error fix build run "
    "agent thread tool result log trace stack failing passed retry timeout login auth spec "
    "cache index query commit branch merge deploy config schema migration parser token "
    "window handoff budget child parent sweep verify checkpoint mirror transcript flaky"
).split()


WORD_POOL = 1 << 20


class Words:
    """Text of VOCAB words drawn with a Pareto law, cut from one long drawn sequence (drawing
    each word anew cost the build a second of the event loop's time per 2,000 threads, time
    the store's writer thread then waited for)."""

    def __init__(self, seed: int) -> None:
        rnd = random.Random(seed)
        top = len(VOCAB) - 1
        self.words = [VOCAB[min(int(rnd.paretovariate(1.1)) - 1, top)] for _ in range(WORD_POOL)]

    def take(self, rnd: random.Random, n: int) -> str:
        start = rnd.randrange(WORD_POOL - n)
        return " ".join(self.words[start : start + n])


WORDS = Words(7)


def text(rnd: random.Random, words: int) -> str:
    return WORDS.take(rnd, words)


def turn(rnd: random.Random, i: int) -> list[dict[str, Any]]:
    """Ten events of an agent's turn: prompt, two tool round trips, remarks."""
    out: list[dict[str, Any]] = [{"type": "message", "role": "user", "text": text(rnd, 25)}]
    for k in range(2):
        cid = f"c{i}-{k}"
        out += [
            {"type": "assistant_text", "text": text(rnd, 30)},
            {"type": "tool_use", "id": cid, "name": "run", "input": {"cmd": text(rnd, 6)}},
            {"type": "tool_result", "tool_use_id": cid, "output": text(rnd, 260)},
        ]
    out += [
        {"type": "assistant_text", "text": text(rnd, 40)},
        {"type": "message", "role": "user", "text": text(rnd, 10)},
        {"type": "assistant_text", "text": text(rnd, 20)},
    ]
    return out


def payload_bytes(events: list[dict[str, Any]]) -> int:
    """The events' JSON as a client sends them, compact (no spaces after ':' and ',')."""
    return sum(len(json.dumps(e, ensure_ascii=False, separators=(",", ":")).encode()) for e in events)


async def build(svc: ThreadService, threads: int, events: int, seed: int = 7) -> dict[str, Any]:
    """``threads`` threads of ``events / threads`` events (rounded to turns of ten)."""
    per = max(events // threads // 10, 1)
    parents: list[str] = []
    payload = 0
    done = 0
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    for i in range(threads):
        queue.put_nowait(i)
    for _ in range(WRITERS):
        queue.put_nowait(None)
    t0 = time.perf_counter()

    async def writer(w: int) -> None:
        nonlocal payload, done
        rnd = random.Random(seed * 1000 + w)
        while (i := await queue.get()) is not None:
            parent = parents[i % len(parents)] if parents and i % 5 == 0 else None
            t = await svc.create_thread(
                agent_id=None if parent else AGENTS[i % len(AGENTS)],
                parent_id=parent,
                title=f"task {i}",
                context_window=10_000_000,
            )
            if i % 50 == 1 and len(parents) < 200:
                parents.append(t.thread_id)
            if i % 7 != 3:  # some threads never start
                evs = [e for k in range(per) for e in turn(rnd, k)]
                payload += payload_bytes(evs)
                await svc.append(t.thread_id, evs)
                if i % 3 == 0:
                    await svc.update_thread(t.thread_id, status="completed", result="ok")
            done += 1
            if done % 10_000 == 0:
                rate = done / (time.perf_counter() - t0)
                print(f"  built {done:,} / {threads:,} threads ({rate:,.0f}/s)", file=sys.stderr, flush=True)

    await asyncio.gather(*(writer(w) for w in range(WRITERS)))
    # the long threads: handoff candidates and a chain to search
    rnd = random.Random(seed)
    long_ids = []
    for _ in range(HANDOFF_THREADS):
        t = await svc.create_thread(agent_id=AGENTS[0], title="long", context_window=10_000_000)
        for start in range(0, HANDOFF_EVENTS, 1000):
            evs = [e for k in range(100) for e in turn(rnd, start // 10 + k)]
            payload += payload_bytes(evs)
            await svc.append(t.thread_id, evs)
        long_ids.append(t.thread_id)
    return {
        "threads": threads + HANDOFF_THREADS,
        "events_appended": (threads - threads // 7) * per * 10 + HANDOFF_THREADS * HANDOFF_EVENTS,
        "payload_bytes": payload,
        "build_s": time.perf_counter() - t0,
        "long": long_ids,
        "parent": parents[0] if parents else None,
    }


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(int(q * len(xs)), len(xs) - 1)]


async def timed(fn: Any, reps: int) -> dict[str, float]:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": statistics.median(times), "p99_ms": pct(times, 0.99)}


def rpc(proc: subprocess.Popen[bytes], msg: dict[str, Any]) -> dict[str, Any] | None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write((json.dumps(msg) + "\n").encode())
    proc.stdin.flush()
    if "id" not in msg:
        return None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the server closed stdout")
        got = json.loads(line)
        if got.get("id") == msg["id"]:
            return got


def startup(root: Path, store: str) -> tuple[float, int]:
    """Spawn to the first tool result (ms) and the server's RSS then (KiB)."""
    env = {**os.environ, "THREADLOOM_STORE": store} if store != "sqlite" else dict(os.environ)
    cmd = [sys.executable, "-m", "threadloom", "serve", "--root", str(root)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    try:
        rpc(
            proc,
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "bench", "version": "0"},
                },
            },
        )
        rpc(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        got = rpc(
            proc,
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "list_threads", "arguments": {"limit": 1}},
            },
        )
        ms = (time.perf_counter() - t0) * 1000
        assert got is not None and "result" in got and not got["result"].get("isError"), got
        rss = 0
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        return ms, rss
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def breakdown(db: Path) -> dict[str, Any]:
    """Bytes per table and index of the SQLite database (``dbstat``), and per group."""
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = conn.execute(
            "SELECT name, sum(pgsize), sum(unused) FROM dbstat GROUP BY name ORDER BY 2 DESC"
        ).fetchall()
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0] * page
    finally:
        conn.close()

    def group(name: str) -> str:
        if name == "events":
            return "events"
        if name == "sqlite_autoindex_events_1":
            return "events (thread_id, seq) index"
        if name.startswith("search_index"):
            return "full-text index"
        if name == "threads":
            return "threads"
        if name.startswith("threads_") or name == "sqlite_autoindex_threads_1":
            return "threads' indexes"
        return "other"

    groups: dict[str, int] = {}
    for name, size, _unused in rows:
        groups[group(name)] = groups.get(group(name), 0) + size
    groups["free pages"] = free
    return {
        "page_size": page,
        "groups": groups,
        "objects": {name: {"bytes": size, "unused": unused} for name, size, unused in rows},
    }


def disk(root: Path) -> tuple[int, int]:
    """Bytes of the database files, and of everything under the root."""
    db = sum(p.stat().st_size for p in root.glob("threads.db*"))
    everything = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return db, everything


async def measure(svc: ThreadService, built: dict[str, Any], reps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    values = {"agent_id": AGENTS[1], "parent_id": built["parent"], "status": "running"}
    base = await timed(lambda: svc.list_threads(limit=50), reps)
    out["list_threads"] = {"unfiltered": base}
    for n in range(1, 4):
        for combo in itertools.combinations(FILTERS, n):
            args = {f: values[f] for f in combo if values[f] is not None}
            got = await timed(lambda args=args: svc.list_threads(limit=50, **args), reps)
            got["ratio"] = got["p50_ms"] / base["p50_ms"]
            out["list_threads"]["+".join(combo)] = got
    long = built["long"][0]
    out["read_events"] = await timed(
        lambda: svc.read_events(long, after_seq=HANDOFF_EVENTS // 2, limit=100), reps
    )
    out["get_chain"] = await timed(lambda: svc.get_chain(long), reps)
    words = iter(
        itertools.cycle(["flaky login", "stack trace", "migration schema", "timeout retry", "handoff"])
    )
    out["search_threads"] = await timed(lambda: svc.search_threads(next(words), limit=5), reps)
    out["chain_search"] = await timed(lambda: svc.chain_search(long, next(words), limit=10), reps)
    handoffs = []
    for tid in built["long"]:
        t = time.perf_counter()
        await svc.handoff(tid, summary="benchmark handoff")
        handoffs.append((time.perf_counter() - t) * 1000)
    out["handoff_ms"] = {"median": statistics.median(handoffs), "max": max(handoffs), "all": handoffs}
    return out


async def one_store(
    kind: str, label: str, threads: int, events: int, args: argparse.Namespace
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"threadloom-scale-{label}-"))
    schema = None
    store = "sqlite"
    if kind == "postgres":
        import psycopg

        schema = f"bench_scale_{label}_{os.getpid()}"
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.execute(f"CREATE SCHEMA {schema}")
        store = f"{PG_URL}?options=-csearch_path%3D{schema}"
    try:
        settings = Settings(root=root, store=store, durability="normal")
        print(f"building {label}: {threads:,} threads, ~{events:,} events", file=sys.stderr, flush=True)
        async with ThreadService(make_store(settings), settings) as svc:
            built = await build(svc, threads, events)
        async with ThreadService(make_store(settings), settings) as svc:
            result = await measure(svc, built, args.reps)
        result["build"] = {k: v for k, v in built.items() if k not in ("long", "parent")}
        starts = [startup(root, store) for _ in range(args.startups)]
        result["startup_ms"] = statistics.median(s[0] for s in starts)
        result["startup_all_ms"] = [s[0] for s in starts]
        result["rss_kib"] = statistics.median(s[1] for s in starts)
        if kind == "sqlite":
            db, everything = disk(root)
            result["db_bytes"], result["root_bytes"] = db, everything
            result["db_per_payload_byte"] = db / built["payload_bytes"]
            result["root_per_payload_byte"] = everything / built["payload_bytes"]
            result["breakdown"] = breakdown(root / "threads.db")
        else:
            import psycopg

            with psycopg.connect(PG_URL) as conn:
                size = conn.execute(
                    "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n"
                    " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind IN ('r', 'm')",
                    (schema,),
                ).fetchone()[0]
            result["db_bytes"] = int(size)
            result["db_per_payload_byte"] = int(size) / built["payload_bytes"]
        return result
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        if schema is not None and not args.keep:
            import psycopg

            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def table(small: dict[str, Any], big: dict[str, Any], sizes: tuple[int, int]) -> str:
    rows = [f"{'':42} {'100 threads':>14} {f'{sizes[0]:,} threads':>18} {'big / small':>12}"]

    def row(name: str, a: float, b: float, unit: str = "ms") -> None:
        rows.append(
            f"{name:42} {a:>11.2f} {unit:2} {b:>15.2f} {unit:2} {b / a if a else float('nan'):>11.2f}x"
        )

    row("start-up, spawn to first result", small["startup_ms"], big["startup_ms"])
    row("server RSS", small["rss_kib"] / 1024, big["rss_kib"] / 1024, "MB")
    for key, got in big["list_threads"].items():
        row(f"list_threads {key}", small["list_threads"][key]["p50_ms"], got["p50_ms"])
    for key in ("read_events", "get_chain", "search_threads", "chain_search"):
        row(f"{key} p50", small[key]["p50_ms"], big[key]["p50_ms"])
    row("handoff, 10,000-event thread", small["handoff_ms"]["median"], big["handoff_ms"]["median"])
    row("database bytes / payload byte", small["db_per_payload_byte"], big["db_per_payload_byte"], "")
    if "root_per_payload_byte" in big:
        row("with mirrors", small["root_per_payload_byte"], big["root_per_payload_byte"], "")
    if "breakdown" in big:
        rows.append("")
        rows.append(
            f"where the database's bytes go, per payload byte (page size {big['breakdown']['page_size']}):"
        )
        pay = (small["build"]["payload_bytes"], big["build"]["payload_bytes"])
        for name, size in big["breakdown"]["groups"].items():
            a = small["breakdown"]["groups"].get(name, 0) / pay[0]
            rows.append(f"  {name:40} {a:>11.3f}    {size / pay[1]:>15.3f}")
    rows.append("")
    rows.append("filtered list_threads / unfiltered, big store (goal <= 3x):")
    rows.append(
        "  "
        + ", ".join(f"{k} {v['ratio']:.2f}x" for k, v in big["list_threads"].items() if k != "unfiltered")
    )
    return "\n".join(rows)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--reps", type=int, default=50, help="repetitions of each timed read")
    ap.add_argument("--startups", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the roots (and schemas)")
    args = ap.parse_args()
    small = await one_store(args.store, "small", 100, 1000, args)
    big = await one_store(args.store, "big", args.threads, args.events, args)
    print(f"\nscale ({args.store}, durability normal; {platform.node()}, {os.cpu_count()} CPUs)")
    print(table(small, big, (args.threads, args.events)))
    goal = big["startup_ms"] / small["startup_ms"]
    print(
        f"start-up big / small: {goal:.2f}x (goal <= 1.2x); handoff {big['handoff_ms']['median']:.1f} ms (goal < 50)"
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("scale.json" if args.store == "sqlite" else "scale_postgres.json")
    out.write_text(
        json.dumps(
            {
                "store": args.store,
                "threads": args.threads,
                "events": args.events,
                "small": small,
                "big": big,
                "startup_ratio": goal,
                "machine": {
                    "node": platform.node(),
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                },
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
