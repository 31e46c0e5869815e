"""Commit-to-wake latency of wait_threads, next to the reference system's 500 ms poll.

Latency runs from the start of the call that commits (it includes the commit itself)
to the moment the waiting task runs again.

    python3 dev.py run python benchmarks/wake.py [--rounds N] [--store sqlite|postgres|both]

In one run: p50/p99 latency from a commit that ends a thread to the waiter waking,
in-process and across processes (another process commits), the same for a waiter
that polls every 500 ms, and the database reads per commit with 1 and 1,000 waiters.
On PostgreSQL ($THREADLOOM_BENCH_PG) the other process is a second server on the same
database: its commit reaches this one by NOTIFY on the LISTEN connection.
Prints a table and writes benchmarks/results/wake.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from threadloom.config import Settings  # noqa: E402
from threadloom.integrity import Signer  # noqa: E402
from threadloom.service import ThreadService  # noqa: E402
from threadloom.store import SQLiteStore  # noqa: E402
from threadloom.store.base import Store  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
USER = {"role": "user", "text": "work"}
PG_URL = os.environ.get("THREADLOOM_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
WATCH = {"sqlite": "data_version", "postgres": "LISTEN/NOTIFY"}


def make_store(root: Path, dsn: str) -> Store:
    """SQLite on ``root`` when ``dsn`` is empty, else PostgreSQL (keys shared through ``root``)."""
    if not dsn:
        return SQLiteStore(root, durability="normal")
    from threadloom.store.postgres import PostgresStore

    return PostgresStore(dsn, durability="normal", signer=Signer.for_root(root))


def fresh_pg_schema() -> str:
    import uuid

    import psycopg

    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    return f"{PG_URL}?options=-csearch_path%3D{name}"


COMMITTER = """
import sys, time, anyio
from pathlib import Path
sys.path.insert(0, sys.argv[2])
sys.path.insert(0, sys.argv[3])
from threadloom.config import Settings
from threadloom.service import ThreadService
from wake import make_store
async def main(root, dsn):
    async with ThreadService(make_store(Path(root), dsn), Settings(root=Path(root))) as svc:
        print("ready", flush=True)
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline)
            if not line.strip():
                return
            started = time.time()
            await svc.update_thread(line.strip(), status="completed")
            print(started, flush=True)
anyio.run(main, sys.argv[1], sys.argv[4])
"""


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


async def running(svc: ThreadService) -> str:
    tid = (await svc.create_thread()).thread_id
    await svc.append(tid, [USER])
    return tid


async def in_process(svc: ThreadService, rounds: int) -> list[float]:
    lat = []
    for _ in range(rounds):
        tid = await running(svc)
        woke: list[float] = []

        async def waiter() -> None:
            await svc.wait_threads([tid], timeout=30)
            woke.append(time.perf_counter())

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            while svc.hub.waiters == 0:
                await anyio.sleep(0.001)
            await anyio.sleep(0.005)
            t0 = time.perf_counter()
            await svc.update_thread(tid, status="completed")
        lat.append((woke[0] - t0) * 1000)
    return lat


async def cross_process(
    svc: ThreadService, root: Path, dsn: str, rounds: int, poll: float | None
) -> list[float]:
    """Another process commits; we wait (push) or poll get_thread every ``poll`` seconds."""
    server_dir = str(Path(__file__).resolve().parents[1] / "server")
    here = str(Path(__file__).resolve().parent)
    proc = subprocess.Popen(
        [sys.executable, "-c", COMMITTER, str(root), server_dir, here, dsn],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin and proc.stdout
    assert proc.stdout.readline().strip() == "ready"
    lat = []
    try:
        for _ in range(rounds):
            tid = await running(svc)
            woke: list[float] = []

            async def waiter() -> None:
                if poll is None:
                    await svc.wait_threads([tid], timeout=30)
                else:
                    while (await svc.get_thread(tid)).status.value != "completed":
                        await anyio.sleep(poll)
                woke.append(time.time())

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.sleep(0.05 if poll is None else random.uniform(0.01, poll))  # random poll phase
                proc.stdin.write(tid + "\n")
                proc.stdin.flush()
                committed = float(await anyio.to_thread.run_sync(proc.stdout.readline))
            lat.append((woke[0] - committed) * 1000)
    finally:
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=30)
    return lat


async def reads_per_commit(svc: ThreadService, waiters: int) -> float:
    """Hub reads caused by one commit that wakes ``waiters`` waiters of one thread."""
    tid = await running(svc)
    async with anyio.create_task_group() as tg:
        for _ in range(waiters):
            tg.start_soon(lambda: svc.wait_threads([tid], timeout=60))
        while svc.hub.waiters < waiters:
            await anyio.sleep(0.005)
        await anyio.sleep(0.05)
        before = svc.hub.queries
        await svc.update_thread(tid, status="completed")
    return float(svc.hub.queries - before)


async def measure(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement on one store kind."""
    root = Path(tempfile.mkdtemp())
    dsn = fresh_pg_schema() if kind == "postgres" else ""
    out: dict[str, Any] = {}
    async with ThreadService(make_store(root, dsn), Settings(root=root)) as svc:
        out["in-process, push"] = await in_process(svc, args.rounds)
        out[f"cross-process, push ({WATCH[kind]})"] = await cross_process(svc, root, dsn, args.rounds, None)
        out["cross-process, poll every 500 ms"] = await cross_process(svc, root, dsn, args.poll_rounds, 0.5)
        reads = {n: await reads_per_commit(svc, n) for n in (1, 1000)}
    summary: dict[str, Any] = {
        name: {"p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "n": len(lat)} for name, lat in out.items()
    }
    summary["reads_per_commit"] = reads
    return summary


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--poll-rounds", type=int, default=20)
    ap.add_argument("--store", choices=["sqlite", "postgres", "both"], default="sqlite")
    args = ap.parse_args()
    kinds = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    out: dict[str, Any] = {"rounds": args.rounds}
    for kind in kinds:
        out[kind] = await measure(kind, args)
    print(f"{'store':<9} {'commit -> wake':<40} {'p50 ms':>9} {'p99 ms':>9} {'n':>5}")
    for kind in kinds:
        res = out[kind]
        for name, row in res.items():
            if name != "reads_per_commit":
                print(f"{kind:<9} {name:<40} {row['p50_ms']:>9.2f} {row['p99_ms']:>9.2f} {row['n']:>5}")
    for kind in kinds:
        res = out[kind]
        push, poll = res[f"cross-process, push ({WATCH[kind]})"], res["cross-process, poll every 500 ms"]
        print(
            f"{kind}: cross-process p50: push is {poll['p50_ms'] / max(push['p50_ms'], 1e-6):.0f}x faster than the 500 ms poll"
        )
        for n, q in res["reads_per_commit"].items():
            print(f"{kind}: database reads per commit with {n:>4} waiter(s): {q:.0f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "wake.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS / 'wake.json'}")
    os._exit(0)


if __name__ == "__main__":
    anyio.run(main)
