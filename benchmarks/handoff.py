"""Cost of the append that triggers a handoff, next to an ordinary append, on long threads.

    python3 dev.py run python benchmarks/handoff.py [--events 10000] [--repeats 5] [--full]
    python3 dev.py run python benchmarks/handoff.py --store postgres   # $THREADLOOM_BENCH_PG, a fresh schema

For each thread size (1,000 and 10,000 events by default; ``--full`` adds 100,000) it
builds threads on the SQLite store (durability full and normal; events of two sizes) whose next append
crosses the context threshold, and times that append end to end: the append commit,
the tail read (backwards from the end, never a scan), the handoff commit (new thread
seeded with ~16,000 tokens of carried messages, old thread linked) and the mirror
writes. The baseline, measured in the same run on a twin thread of the same size, is
the same append without a handoff. Goal (issues 4 and 17.4): under 50 ms at 10,000 events,
including the verification every handoff now runs first (issue 14.8).

The verification columns time that check alone on a third twin: ``verify`` is the quick
check a handoff runs (verify_anchored.py: one hash over the lines before the anchor,
line-by-line only after it), ``full`` is ``verify_thread``'s line-by-line check of
everything, for scale; ``cold`` is the quick check in a process that did not write the
thread (a new server: its anchor is the stored signed anchor or the last signed checkpoint,
with a line-by-line tail after it), and ``restart`` an explicit handoff as the first call of
yet another new server (the threads hold no checkpoint: their turns have no result event).
Prints a table and writes benchmarks/results/handoff.json.

``--store postgres`` times the same cases on PostgreSQL ($THREADLOOM_BENCH_PG, default
postgresql://postgres@127.0.0.1:5432/test) in a fresh schema per row, dropped afterwards
(durability ``normal`` there is ``synchronous_commit = off``). Its ``restart`` column is
the handoff as the first call of a new *process* (one spawned per twin, timed from its
store being open to the handoff's answer), not only of a new store object; ``open`` is
that process's store opening, for scale. Writes benchmarks/results/handoff_postgres.json.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from threadloom.config import Settings  # noqa: E402
from threadloom.service import ThreadService  # noqa: E402
from threadloom.store import SQLiteStore, make_store  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GOAL_MS = 50.0
PG_URL = os.environ.get("THREADLOOM_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
SENTENCE = "The agent read the log, found the failing test and noted the stack trace. "
SIZES = {"small": 2, "typical": 8}
"""Sentences per tool result: ``small`` turns average ~70 characters per event (a handoff
then carries ~900 events, the worst case for its cost), ``typical`` ~190 (~330 carried)."""
BATCH = 1000


def turn(i: int, sentences: int) -> list[dict[str, Any]]:
    """One scripted agent turn of four events: a call, its result, a remark, a user nudge."""
    return [
        {"type": "tool_use", "id": f"c{i}", "name": "read_file", "input": {"path": f"logs/{i}.txt"}},
        {"type": "tool_result", "tool_use_id": f"c{i}", "output": f"{i} {SENTENCE * sentences}"},
        {"type": "assistant_text", "text": f"file {i}: {SENTENCE[:60]}"},
        {"type": "message", "role": "user", "text": f"next file after {i}"},
    ]


async def build(svc: ThreadService, events: int, window: int, sentences: int = SIZES["small"]) -> str:
    t = await svc.create_thread(directive="summarise every log file", context_window=window)
    batch: list[dict[str, Any]] = []
    for i in range(events // 4):
        batch += turn(i, sentences)
        if len(batch) >= BATCH:
            out = await svc.append(t.thread_id, batch)
            assert out.handoff is None, "the build crossed the threshold early"
            batch = []
    if batch:
        await svc.append(t.thread_id, batch)
    return t.thread_id


def pg_schema(drop: str | None = None) -> str:
    """A new schema in the benchmark database (its name); or, with ``drop``, drop that one."""
    import uuid

    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        if drop is not None:
            conn.execute(f"DROP SCHEMA IF EXISTS {drop} CASCADE")
            return drop
        name = f"bench_handoff_{uuid.uuid4().hex[:10]}"
        conn.execute(f"CREATE SCHEMA {name}")
    return name


def pg_settings(root: Path, schema: str, durability: str) -> Settings:
    return Settings(root=root, durability=durability, store=f"{PG_URL}?options=-csearch_path%3D{schema}")


def restart_child(root: str, schema: str, durability: str, thread_id: str) -> None:
    """``--restart-child``: open the store in this new process, hand ``thread_id`` off as its
    first call, print the two times (ms) as JSON."""

    async def run() -> None:
        settings = pg_settings(Path(root), schema, durability)
        t0 = time.perf_counter()
        async with ThreadService(make_store(settings), settings) as svc:
            t1 = time.perf_counter()
            await svc.handoff(thread_id, summary="carry on after the restart")
            t2 = time.perf_counter()
        print(json.dumps({"open_ms": (t1 - t0) * 1000, "handoff_ms": (t2 - t1) * 1000}))

    anyio.run(run)


def restart_in_new_process(root: Path, schema: str, durability: str, thread_id: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--restart-child", str(root), schema, durability, thread_id],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


async def measure(
    events: int, repeats: int, durability: str, size: str, kind: str = "sqlite"
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="threadloom-bench-handoff-"))
    schema = pg_schema() if kind == "postgres" else ""
    try:
        return await measure_in(root, schema, events, repeats, durability, size, kind)
    finally:
        if schema:
            pg_schema(drop=schema)


async def measure_in(
    root: Path, schema: str, events: int, repeats: int, durability: str, size: str, kind: str
) -> dict[str, Any]:
    if kind == "postgres":
        settings = pg_settings(root, schema, durability)

        def new_store() -> Any:
            return make_store(settings)
    else:
        settings = Settings(root=root, durability=durability)

        def new_store() -> Any:
            return SQLiteStore(root, durability=durability)

    trigger_ms, trigger_cpu_ms, plain_ms, carried, new_events = [], [], [], [], []
    verify_ms, full_ms, cold_ms, twins = [], [], [], []
    async with ThreadService(new_store(), settings) as svc:
        sentences = SIZES[size]
        probe = await build(svc, events, 10_000_000, sentences)
        used = (await svc.get_thread(probe)).context().used
        window = int(used / 0.895)  # just under 0.9: the crossing event below takes it past
        crossing = {
            "type": "message",
            "role": "assistant",
            "text": "z" * (used // 20 + 4000),
        }  # > 0.5% of the window
        for _ in range(repeats):
            hot = await build(svc, events, window, sentences)
            cold = await build(svc, events, 10_000_000, sentences)  # twin: same size, far from its threshold
            t0 = time.perf_counter()
            plain = await svc.append(cold, [crossing])
            plain_ms.append((time.perf_counter() - t0) * 1000)
            assert plain.handoff is None
            c0, t0 = time.process_time(), time.perf_counter()
            out = await svc.append(hot, [crossing])
            trigger_ms.append((time.perf_counter() - t0) * 1000)
            trigger_cpu_ms.append(
                (time.process_time() - c0) * 1000
            )  # all threads: less sensitive to neighbours
            assert out.handoff is not None, out.warning
            carried.append(out.handoff.carried_messages)
            new_events.append((await svc.get_thread(out.handoff.thread_id)).event_count)
            twin = await build(svc, events, 10_000_000, sentences)
            t0 = time.perf_counter()
            assert (await svc.ensure_verified(twin)).ok
            verify_ms.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            assert (await svc.verify_thread(twin)).ok
            full_ms.append((time.perf_counter() - t0) * 1000)
            twins.append(twin)
    async with ThreadService(new_store(), settings) as svc:  # a new process
        for twin in twins:
            t0 = time.perf_counter()
            assert (await svc.ensure_verified(twin)).ok
            cold_ms.append((time.perf_counter() - t0) * 1000)
    restart_ms, open_ms = [], []
    if kind == "postgres":  # each handoff the first call of its own new process
        for twin in twins:
            got = restart_in_new_process(root, schema, durability, twin)
            restart_ms.append(got["handoff_ms"])
            open_ms.append(got["open_ms"])
    else:
        async with ThreadService(new_store(), settings) as svc:  # another one
            for twin in twins:  # an explicit handoff, verification included, as a new server's first call
                t0 = time.perf_counter()
                await svc.handoff(twin, summary="carry on after the restart")
                restart_ms.append((time.perf_counter() - t0) * 1000)
    med_t, med_p = statistics.median(trigger_ms), statistics.median(plain_ms)
    return {
        "events": events,
        "event_size": size,
        "durability": durability,
        "repeats": repeats,
        "handoff_append_ms_median": med_t,
        "handoff_append_ms_max": max(trigger_ms),
        "handoff_append_cpu_ms_median": statistics.median(trigger_cpu_ms),
        "plain_append_ms_median": med_p,
        "ratio": med_t / med_p,
        "verify_ms_median": statistics.median(verify_ms),
        "verify_full_ms_median": statistics.median(full_ms),
        "verify_cold_ms_median": statistics.median(cold_ms),
        "handoff_after_restart_ms_median": statistics.median(restart_ms),
        **(
            {"handoff_after_restart_ms_all": restart_ms, "open_ms_median": statistics.median(open_ms)}
            if open_ms
            else {}
        ),
        "carried_messages": statistics.median(carried),
        "new_thread_events": statistics.median(new_events),
        "goal_ms": GOAL_MS,
        "meets_goal": med_t < GOAL_MS and statistics.median(restart_ms) < GOAL_MS,
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000, help="largest thread size (events)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--full", action="store_true", help="also 100,000-event threads (slow to build)")
    ap.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument(
        "--durability", choices=("full", "normal"), action="append", help="only these (repeatable)"
    )
    ap.add_argument(
        "--size", choices=tuple(SIZES), action="append", help="only these event sizes (repeatable)"
    )
    args = ap.parse_args()
    sizes = sorted({1000, args.events} | ({100_000} if args.full else set()))
    pg = args.store == "postgres"
    rows = []
    for durability in args.durability or ("full", "normal"):
        for size in args.size or SIZES:
            for n in sizes:
                rows.append(await measure(n, args.repeats, durability, size, args.store))
    print(
        f"{'durability':<10} {'events':>8} {'size':<8} {'handoff append':>15} {'max':>8} {'cpu':>8} {'plain append':>13} "
        f"{'ratio':>7} {'carried':>8} {'verify':>8} {'full':>8} {'cold':>8} {'restart':>8}"
        + (f" {'open':>8}" if pg else "")
        + f"  goal <{GOAL_MS:.0f} ms"
    )
    for r in rows:
        print(
            f"{r['durability']:<10} {r['events']:>8,} {r['event_size']:<8} {r['handoff_append_ms_median']:>12.1f} ms "
            f"{r['handoff_append_ms_max']:>5.1f} ms {r['handoff_append_cpu_ms_median']:>5.1f} ms"
            f" {r['plain_append_ms_median']:>10.2f} ms {r['ratio']:>6.1f}x {r['carried_messages']:>8.0f}"
            f" {r['verify_ms_median']:>5.1f} ms {r['verify_full_ms_median']:>5.0f} ms {r['verify_cold_ms_median']:>5.0f} ms"
            f" {r['handoff_after_restart_ms_median']:>5.0f} ms"
            + (f" {r['open_ms_median']:>5.0f} ms" if pg else "")
            + f"  {'yes' if r['meets_goal'] else 'NO'}"
        )
    RESULTS.mkdir(exist_ok=True)
    out = {
        "machine": {
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
        "rows": rows,
    }
    name = "handoff_postgres.json" if pg else "handoff.json"
    (RESULTS / name).write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--restart-child"]:
        restart_child(*sys.argv[2:6])
    else:
        anyio.run(main)
