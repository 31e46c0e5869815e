"""Server start-up against the size of the store: spawn to first tool result, big root vs empty root.

    python3 dev.py run python benchmarks/startup.py [--threads 100000] [--events 10] [--samples 5]
        [--keep DIR] [--crashed N] [--store sqlite|postgres]

Builds a root of ``--threads`` threads with ``--events`` events each (through the store's
commit path in large batches: manifests, events, checkpoints, search index and mirror files,
as the server writes them), then spawns ``threadloom serve`` (stdio) on it and on an empty
root, alternately, and times from spawn to the answer of the first ``tools/call``
(``list_threads`` with ``limit=1``, after ``initialize``). The goal (issue 17): the big root
takes at most 1.2x the empty root. ``--crashed N`` leaves N threads marked as written by a
commit whose mirror write never happened (a crash), so start-up has that much to repair.

``--keep DIR`` builds the big root in DIR once and reuses it on later runs. ``--store
postgres`` builds into fresh schemas of ``$THREADLOOM_BENCH_PG`` (dropped at the end) and
serves with ``THREADLOOM_STORE`` set to them. Prints a table and writes
benchmarks/results/startup[-postgres].json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

SERVER = Path(__file__).resolve().parents[1] / "server"
sys.path.insert(0, str(SERVER))

from threadloom.models import Status, Thread, iso, new_thread_id, utc_now  # noqa: E402
from threadloom.store import SQLiteStore  # noqa: E402
from threadloom.store.base import AppendEvents, CreateThread, NewEvent, Store  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PG_URL = os.environ.get("THREADLOOM_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
TEXT = "The agent read the build log and found the failing include in the docs step."
PER_COMMIT = 250
GOAL = 1.2
INIT = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "b", "version": "1"},
    },
}
CALL = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "list_threads", "arguments": {"limit": 1}},
}


def env(dsn: str | None = None) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(SERVER) + os.pathsep + e.get("PYTHONPATH", "")
    if dsn:
        e["THREADLOOM_STORE"] = dsn
    return e


def pg_schema(name: str) -> str:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {name}")
    return f"{PG_URL}?options=-csearch_path%3D{name}"


def drop_pg_schema(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def open_store(root: Path, dsn: str | None) -> Store:
    if dsn is None:
        return SQLiteStore(root, durability="normal")
    from threadloom.integrity import Signer
    from threadloom.store.postgres import PostgresStore

    return PostgresStore(dsn, durability="normal", signer=Signer.for_root(root))


async def build(root: Path, threads: int, events: int, dsn: str | None = None) -> None:
    """``threads`` completed threads of ``events`` events each (the last a signed checkpoint)."""
    store = open_store(root, dsn)
    await store.open()
    try:
        now = iso(utc_now())
        made = 0
        while made < threads:
            ops: list[Any] = []
            for i in range(made, min(threads, made + PER_COMMIT)):
                tid = new_thread_id()
                thread = Thread(
                    thread_id=tid,
                    chain_root_id=tid,
                    agent_id=f"agent{i % 7}",
                    title=f"thread {i}",
                    status=Status.COMPLETED,
                    context_window=200_000,
                    stale_after=600,
                    created_at=now,
                    updated_at=now,
                    heartbeat_at=now,
                )
                body = [
                    NewEvent(
                        "message",
                        {
                            "type": "message",
                            "role": "user" if j % 2 == 0 else "assistant",
                            "text": f"{j} {TEXT}",
                        },
                        text_chars=len(TEXT) + 3,
                    )
                    for j in range(max(0, events - 1))
                ]
                ops += [CreateThread(thread), AppendEvents(tid, tuple(body), checkpoint=True)]
            await store.commit(ops)
            made = min(threads, made + PER_COMMIT)
            print(f"\r  built {made}/{threads} threads", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
    finally:
        await store.close()


def mark_crashed(root: Path, n: int) -> None:
    """Leave ``n`` threads as a crash between commit and mirror write would: marked, files behind."""
    conn = sqlite3.connect(root / "threads.db")
    ids = [tid for (tid,) in conn.execute("SELECT thread_id FROM threads ORDER BY random() LIMIT ?", (n,))]
    conn.executemany(
        "INSERT OR REPLACE INTO mirror_pending (thread_id, mark) VALUES (?, 1)", [(t,) for t in ids]
    )
    conn.commit()
    conn.close()
    for tid in ids:
        path = root / "threads" / tid / "transcript.jsonl"
        lines = path.read_bytes().split(b"\n")[:-1]
        path.write_bytes(b"".join(line + b"\n" for line in lines[:-1]))  # the last line never written


def first_result(root: Path, dsn: str | None = None) -> float:
    """Seconds from spawning ``threadloom serve`` on ``root`` to the first tools/call answer."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "threadloom", "serve", "--root", str(root)],
        env=env(dsn),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write((json.dumps(INIT) + "\n").encode())
        proc.stdin.flush()
        reply = json.loads(proc.stdout.readline())
        assert "result" in reply, reply
        proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        proc.stdin.write((json.dumps(CALL) + "\n").encode())
        proc.stdin.flush()
        while True:
            msg = json.loads(proc.stdout.readline())
            if msg.get("id") == 1:
                break
        elapsed = time.perf_counter() - t0
        assert "result" in msg and not msg["result"].get("isError"), msg
        return elapsed
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def counts(root: Path, dsn: str | None) -> tuple[int, int]:
    if dsn is not None:
        import psycopg

        with psycopg.connect(dsn) as pg:
            threads = pg.execute("SELECT COUNT(*) FROM threads").fetchone()[0]  # type: ignore[index]
            events = pg.execute("SELECT COUNT(*) FROM events").fetchone()[0]  # type: ignore[index]
            return threads, events
    conn = sqlite3.connect(f"file:{root / 'threads.db'}?mode=ro", uri=True)
    try:
        threads = conn.execute("SELECT COUNT(*) FROM threads").fetchone()[0]
        events = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        return threads, events
    finally:
        conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=10, help="events per thread (the last is a checkpoint)")
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--keep", type=Path, help="build the big root here once and reuse it")
    ap.add_argument(
        "--crashed", type=int, default=0, help="threads left behind by a simulated crash (SQLite)"
    )
    ap.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    args = ap.parse_args()
    pg = args.store == "postgres"
    tag = os.urandom(4).hex()
    big_dsn = pg_schema(f"bench_startup_big_{tag}") if pg else None
    empty_dsn = pg_schema(f"bench_startup_empty_{tag}") if pg else None

    try:
        with tempfile.TemporaryDirectory(prefix="tl-startup-") as tmp:
            big = args.keep or Path(tmp) / "big"
            if pg or not (big / "threads.db").exists():
                t0 = time.perf_counter()
                anyio.run(build, big, args.threads, args.events, big_dsn)
                print(f"built {args.threads} threads in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            threads, events = counts(big, big_dsn)
            empty = Path(tmp) / "empty"
            first_result(empty, empty_dsn)  # creates the empty root (and its key), warms the caches
            first_result(big, big_dsn)
            empty_s, big_s, crashed_s = [], [], []
            for _ in range(args.samples):
                empty_s.append(first_result(empty, empty_dsn))
                big_s.append(first_result(big, big_dsn))
                if args.crashed and not pg:
                    mark_crashed(big, args.crashed)
                    crashed_s.append(first_result(big))
    finally:
        if pg:
            drop_pg_schema(f"bench_startup_big_{tag}")
            drop_pg_schema(f"bench_startup_empty_{tag}")
    rows = [("empty root", 0, 0, empty_s), (f"{threads} threads", threads, events, big_s)]
    if crashed_s:
        rows.append((f"{threads} threads, {args.crashed} behind", threads, events, crashed_s))
    base = statistics.median(empty_s)
    out: dict[str, Any] = {
        "store": args.store,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "samples": args.samples,
        "goal_ratio": GOAL,
        "cases": [],
    }
    print(f"{'root':<34} {'threads':>8} {'events':>9} {'p50 s':>7} {'max s':>7} {'x empty':>8}")
    for name, n_threads, n_events, xs in rows:
        p50 = statistics.median(xs)
        print(f"{name:<34} {n_threads:>8} {n_events:>9} {p50:>7.3f} {max(xs):>7.3f} {p50 / base:>8.2f}")
        out["cases"].append(
            {
                "root": name,
                "threads": n_threads,
                "events": n_events,
                "p50_s": round(p50, 4),
                "max_s": round(max(xs), 4),
                "ratio_to_empty": round(p50 / base, 3),
            }
        )
    ratio = statistics.median(big_s) / base
    out["ratio"] = round(ratio, 3)
    out["goal_met"] = ratio <= GOAL
    print(f"spawn to first result: {ratio:.2f}x the empty root (goal <= {GOAL}x)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ("startup-postgres.json" if pg else "startup.json")).write_text(
        json.dumps(out, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
