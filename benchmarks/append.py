"""Append throughput and latency, next to raw sqlite3 in the same run.

    python3 dev.py run python benchmarks/append.py [--events N] [--stdio-calls N] [--store both]

Measures events/s of ``ThreadService.append`` on the SQLite store (durability full and
normal; single appends and batches of 100; 1 and 4 concurrent writers), next to raw
``sqlite3`` inserting the same rows one transaction each (1 and 4 threads), and the
per-call latency of ``append_event`` over a real stdio MCP session next to the
no-op tool on the same server; with ``--store both``, 1/4/8 concurrent writers on SQLite
and PostgreSQL side by side, both as tasks of one server process and as separate server
processes sharing the store (what a team running several servers does).
``--compare-only`` runs just that comparison. Prints a table and writes
benchmarks/results/append.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from threadloom.config import Settings  # noqa: E402
from threadloom.integrity import Signer  # noqa: E402
from threadloom.models import canonical_json  # noqa: E402
from threadloom.service import ThreadService  # noqa: E402
from threadloom.store import SQLiteStore  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PG_URL = os.environ.get("THREADLOOM_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
TEXT = "The quick brown fox jumps over the lazy dog while the agent reads the logs. " * 6  # ~450 B


def event(i: int) -> dict[str, Any]:
    return {"type": "message", "role": "user" if i % 2 else "assistant", "text": f"{i} {TEXT}"}


def raw_sqlite(durability: str, n: int, writers: int) -> float:
    """Events/s of plain sqlite3: one INSERT per transaction, ``writers`` threads."""
    d = tempfile.mkdtemp()
    path = os.path.join(d, "raw.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, thread_id TEXT, seq INTEGER, ts TEXT, type TEXT, line TEXT, UNIQUE(thread_id, seq))"
    )
    conn.close()
    per = n // writers

    def work(w: int) -> None:
        c = sqlite3.connect(path, isolation_level=None, timeout=30)
        c.execute(f"PRAGMA synchronous={durability.upper()}")
        for i in range(per):
            line = canonical_json({**event(i), "seq": i + 1, "ts": "2026-01-01T00:00:00.000000Z"})
            c.execute("BEGIN IMMEDIATE")
            c.execute(
                "INSERT INTO events (thread_id, seq, ts, type, line) VALUES (?,?,?,?,?)",
                (f"t{w}", i + 1, "ts", "message", line),
            )
            c.execute("COMMIT")
        c.close()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per * writers / (time.perf_counter() - t0)


def make_store(kind: str, durability: str, root: Path, dsn: str | None = None, pool_size: int = 16) -> Any:
    if kind == "sqlite":
        return SQLiteStore(root, durability=durability)
    from threadloom.store.postgres import PostgresStore

    return PostgresStore(
        dsn or fresh_pg_schema(), durability=durability, pool_size=pool_size, signer=Signer.for_root(root)
    )


def fresh_pg_schema() -> str:
    """A new schema in the benchmark database; returns a DSN pointing at it."""
    import uuid

    import psycopg

    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    return f"{PG_URL}?options=-csearch_path%3D{name}"


async def store_append(
    durability: str, n: int, writers: int, batch: int, same_thread: bool, kind: str = "sqlite"
) -> float:
    """Events/s of ThreadService.append on a fresh store (SQLite root or PostgreSQL schema)."""
    root = Path(tempfile.mkdtemp())
    settings = Settings(root=root, durability=durability)
    async with ThreadService(make_store(kind, durability, root), settings) as svc:
        # a window large enough that no handoff interrupts the measurement
        tids = [
            (await svc.create_thread(context_window=10_000_000)).thread_id
            for _ in range(1 if same_thread else writers)
        ]
        for tid in tids:
            await svc.append(tid, [event(0)])
        per = n // writers // batch

        async def work(w: int) -> None:
            tid = tids[0 if same_thread else w]
            for i in range(per):
                await svc.append(tid, [event(i * batch + j) for j in range(batch)])

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for w in range(writers):
                tg.start_soon(work, w)
        return per * batch * writers / (time.perf_counter() - t0)


async def append_cpu(durability: str, n: int, reps: int = 3) -> float:
    """CPU ms per single-event ``ThreadService.append`` (all of the process's threads: the
    event loop and the writer), median of ``reps`` fresh stores."""
    samples = []
    for _ in range(reps):
        root = Path(tempfile.mkdtemp())
        async with ThreadService(SQLiteStore(root, durability=durability), Settings(root=root)) as svc:
            tid = (await svc.create_thread(context_window=10_000_000)).thread_id
            for i in range(50):  # warm up
                await svc.append(tid, [event(i)])
            c0 = time.process_time()
            for i in range(n):
                await svc.append(tid, [event(i)])
            samples.append((time.process_time() - c0) / n * 1000)
    return sorted(samples)[len(samples) // 2]


def _writer_process(kind: str, root: str, dsn: str | None, per: int, start: Any, ends: Any) -> None:
    """One server process: its own store on the shared root / database, one thread, ``per`` appends."""

    async def run() -> None:
        settings = Settings(root=Path(root), durability="full")
        async with ThreadService(make_store(kind, "full", Path(root), dsn, pool_size=2), settings) as svc:
            tid = (await svc.create_thread(context_window=10_000_000)).thread_id
            await svc.append(tid, [event(0)])
            start.wait()
            for i in range(per):
                await svc.append(tid, [event(i)])
        ends.put(time.perf_counter())

    anyio.run(run)


def process_append(kind: str, n: int, writers: int) -> float:
    """Events/s of ``writers`` server processes appending at once to one shared store."""
    root = tempfile.mkdtemp()
    dsn = fresh_pg_schema() if kind == "postgres" else None
    if kind == "sqlite":
        anyio.run(_prepare_sqlite, root)
    else:
        anyio.run(_prepare_pg, root, dsn)  # migrations and the key, before the race
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(writers + 1)
    ends = ctx.Queue()
    per = n // writers
    procs = [
        ctx.Process(target=_writer_process, args=(kind, root, dsn, per, start, ends)) for _ in range(writers)
    ]
    for p in procs:
        p.start()
    start.wait()
    t0 = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
    last = max(ends.get(timeout=600) for _ in procs)
    for p in procs:
        p.join()
    return per * writers / (last - t0)


async def _prepare_sqlite(root: str) -> None:
    async with SQLiteStore(Path(root), durability="full"):
        pass


async def _prepare_pg(root: str, dsn: str) -> None:
    async with make_store("postgres", "full", Path(root), dsn, pool_size=1):
        pass


async def stdio_latency(calls: int, durability: str) -> dict[str, float]:
    """p50/p99 per-call latency over a real stdio session: a no-op tool, append_event, get_thread."""
    from mcp import Client, StdioServerParameters

    root = tempfile.mkdtemp()
    script = str(Path(__file__).resolve().with_name("stdio_server.py"))
    params = StdioServerParameters(
        command=sys.executable, args=[script, root, durability], env=dict(os.environ)
    )
    samples: dict[str, list[float]] = {"noop": [], "append_event": [], "get_thread": []}
    async with Client(params, mode="legacy") as client:
        tid = (await client.call_tool("create_thread", {})).structured_content["thread_id"]
        for i in range(calls):
            for name, args in (
                ("noop", {}),
                ("append_event", {"thread_id": tid, "event": event(i)}),
                ("get_thread", {"thread_id": tid}),
            ):
                t0 = time.perf_counter()
                r = await client.call_tool(name, args)
                samples[name].append(time.perf_counter() - t0)
                assert not r.is_error, r.content

    def pct(xs: list[float], p: float) -> float:
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000

    out: dict[str, float] = {}
    for name, xs in samples.items():
        out[f"{name}_p50_ms"] = pct(xs, 0.5)
        out[f"{name}_p99_ms"] = pct(xs, 0.99)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=4000, help="events per single-append measurement")
    ap.add_argument("--stdio-calls", type=int, default=500)
    ap.add_argument(
        "--store",
        choices=["sqlite", "postgres", "both"],
        default="sqlite",
        help="also compare concurrent writers on PostgreSQL ($THREADLOOM_BENCH_PG) next to SQLite",
    )
    ap.add_argument("--compare-only", action="store_true", help="only the SQLite / PostgreSQL comparison")
    args = ap.parse_args()
    if args.compare_only and args.store == "sqlite":
        args.store = "both"
    n = args.events
    rows: list[dict[str, Any]] = []
    for durability in ("full", "normal") if not args.compare_only else ():
        raw1 = raw_sqlite(durability, n, 1)
        raw4 = raw_sqlite(durability, n, 4)
        cases = [
            ("single, 1 writer", 1, 1, True, raw1),
            ("single, 4 writers, 4 threads", 4, 1, False, raw4),
            ("single, 4 writers, 1 thread", 4, 1, True, raw4),
            ("batch 100, 1 writer", 1, 100, True, raw1),
            ("batch 100, 4 writers", 4, 100, False, raw4),
        ]
        rows.append(
            {
                "durability": durability,
                "case": "raw sqlite3, 1 txn/event, 1 writer",
                "events_per_s": raw1,
                "ratio": 1.0,
            }
        )
        rows.append(
            {
                "durability": durability,
                "case": "raw sqlite3, 1 txn/event, 4 writers",
                "events_per_s": raw4,
                "ratio": 1.0,
            }
        )
        for name, writers, batch, same, base in cases:
            count = n * (10 if batch > 1 else 1)
            eps = await store_append(durability, count, writers, batch, same)
            rows.append(
                {
                    "durability": durability,
                    "case": f"threadloom {name}",
                    "events_per_s": eps,
                    "ratio": eps / base,
                }
            )
    cpu = {} if args.compare_only else {d: await append_cpu(d, min(n, 2000)) for d in ("full", "normal")}
    latency = (
        {} if args.compare_only else {d: await stdio_latency(args.stdio_calls, d) for d in ("full", "normal")}
    )
    compare: list[dict[str, Any]] = []
    if args.store != "sqlite":
        kinds = ["sqlite", "postgres"] if args.store == "both" else ["postgres"]
        for writers in (1, 4, 8):
            for kind in kinds:
                eps = await store_append("full", n, writers, 1, False, kind)
                compare.append(
                    {"store": kind, "how": "tasks of one process", "writers": writers, "events_per_s": eps}
                )
        for writers in (4, 8):
            for kind in kinds:
                eps = await anyio.to_thread.run_sync(process_append, kind, n, writers)
                compare.append(
                    {"store": kind, "how": "separate processes", "writers": writers, "events_per_s": eps}
                )

    print(f"{'durability':<10} {'case':<42} {'events/s':>10} {'vs raw':>8}")
    for r in rows:
        print(f"{r['durability']:<10} {r['case']:<42} {r['events_per_s']:>10,.0f} {r['ratio']:>7.2f}x")
    for d, ms in cpu.items():
        print(f"CPU per single append, durability {d}: {ms:.3f} ms (median of 3; goal for normal <= 0.3 ms)")
    if latency:
        print()
        print(f"{'stdio, per call':<26} {'no-op tool':>18} {'append_event':>18} {'get_thread':>18}")
    for d, lat in latency.items():
        cells = [
            f"{lat[f'{n}_p50_ms']:.2f} / {lat[f'{n}_p99_ms']:.2f} ms"
            for n in ("noop", "append_event", "get_thread")
        ]
        print(f"{'durability ' + d + ' p50/p99':<26} {cells[0]:>18} {cells[1]:>18} {cells[2]:>18}")
    if compare:
        print()
        print(
            f"{'durability full, single appends':<22} {'writers':<22} {'sqlite ev/s':>12} {'postgres ev/s':>14} {'pg/sqlite':>10}"
        )
        for how in ("tasks of one process", "separate processes"):
            for writers in (1, 4, 8):
                got = {
                    r["store"]: r["events_per_s"]
                    for r in compare
                    if r["how"] == how and r["writers"] == writers
                }
                if not got:
                    continue
                sq, pg = got.get("sqlite"), got.get("postgres")
                ratio = f"{pg / sq:.2f}x" if sq and pg else "-"
                print(
                    f"{'':<22} {f'{writers} {how}':<22} {f'{sq:,.0f}' if sq else '-':>12}"
                    f" {f'{pg:,.0f}' if pg else '-':>14} {ratio:>10}"
                )
    RESULTS.mkdir(exist_ok=True)
    out = {
        "store_compare": compare,
        "machine": {
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "cpus": os.cpu_count(),
        },
        "events": n,
        "throughput": rows,
        "stdio_latency": latency,
        "cpu_ms_per_append": cpu,
    }
    path = RESULTS / ("append-compare.json" if args.compare_only else "append.json")
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    anyio.run(main)
