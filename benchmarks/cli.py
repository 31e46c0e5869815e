"""Operator CLI costs, each next to a baseline measured in the same run.

    python3 dev.py run python benchmarks/cli.py [--threads N] [--events N] [--samples N] [--full]

- start-up: wall time of ``threadloom ls --json`` against ``python -c pass`` and against
  ``python -c "import mcp"`` (what every command would pay if it imported the SDK);
- ``tail -f`` wake latency across processes: from an append's acknowledgement in this
  process to the event's line arriving from a ``threadloom tail -f --json`` subprocess,
  against a reader polling the database every 500 ms (the reference system's wait);
- export and import: events/s of a whole-root bundle round trip against SQLite's own
  backup API copying the same database (a floor for moving the data).

Prints a table and writes benchmarks/results/cli.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio

SERVER = Path(__file__).resolve().parents[1] / "server"
sys.path.insert(0, str(SERVER))

from threadloom.config import Settings  # noqa: E402
from threadloom.service import ThreadService  # noqa: E402
from threadloom.store import SQLiteStore  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TEXT = "The agent read the build log and found the failing include in the docs step. " * 3
POLL_INTERVAL = 0.5


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(SERVER) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def service(root: Path) -> ThreadService:
    return ThreadService(SQLiteStore(root, durability="normal"), Settings(root=root, durability="normal"))


async def fill(root: Path, threads: int, events: int) -> None:
    async with service(root) as svc:
        for i in range(threads):
            tid = (await svc.create_thread(title=f"thread {i}", agent_id=f"agent{i % 5}")).thread_id
            batch = [
                {"type": "message", "role": "user" if j % 2 else "assistant", "text": f"{j} {TEXT}"}
                for j in range(events)
            ]
            await svc.append(tid, batch)
            await svc.update_thread(tid, status="completed")


def wall(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env(), check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def tail_latency(root: Path, samples: int) -> list[float]:
    """ms from append acknowledged (here) to the line printed by a ``tail -f`` subprocess."""

    async def new_thread() -> str:
        async with service(root) as svc:
            tid = (await svc.create_thread(title="followed")).thread_id
            await svc.append(tid, [{"type": "message", "role": "user", "text": "start"}])
            return tid

    tid = anyio.run(new_thread)
    proc = subprocess.Popen(
        [sys.executable, "-m", "threadloom", "tail", tid, "-f", "--json", "-n", "0", "--root", str(root)],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        bufsize=1,
    )
    lines: queue.Queue[tuple[float, str]] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put((time.perf_counter(), line))

    threading.Thread(target=pump, daemon=True).start()
    for _ in range(2):
        lines.get(timeout=60)  # the existing events: the follower is up
    out = []

    async def run() -> None:
        async with service(root) as svc:
            for i in range(samples):
                await svc.append(tid, [{"type": "message", "role": "assistant", "text": f"sample {i}"}])
                acked = time.perf_counter()
                got, _ = lines.get(timeout=30)
                out.append((got - acked) * 1000)
                await anyio.sleep(0.02)

    try:
        anyio.run(run)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return out


def poll_latency(root: Path, samples: int) -> list[float]:
    """The same measure for a reader that polls the database every 500 ms."""

    async def new_thread() -> str:
        async with service(root) as svc:
            return (await svc.create_thread(title="polled")).thread_id

    tid = anyio.run(new_thread)
    seen: queue.Queue[float] = queue.Queue()
    stop = threading.Event()

    def poller() -> None:
        conn = sqlite3.connect(root / "threads.db")
        last = 0
        while not stop.is_set():
            n = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM events WHERE thread_id = ?", (tid,)
            ).fetchone()[0]
            if n > last:
                for _ in range(n - last):
                    seen.put(time.perf_counter())
                last = n
            time.sleep(POLL_INTERVAL)
        conn.close()

    out = []

    async def run() -> None:
        async with service(root) as svc:
            await svc.append(tid, [{"type": "message", "role": "user", "text": "start"}])
            for _ in range(2):
                seen.get(timeout=10)
            for i in range(samples):
                await svc.append(tid, [{"type": "message", "role": "assistant", "text": f"sample {i}"}])
                acked = time.perf_counter()
                out.append((seen.get(timeout=10) - acked) * 1000)
                await anyio.sleep(0.137 * (i % 4))  # spread the phase against the poll

    t = threading.Thread(target=poller, daemon=True)
    t.start()
    try:
        anyio.run(run)
    finally:
        stop.set()
        t.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=200)
    ap.add_argument("--events", type=int, default=50, help="events per thread")
    ap.add_argument("--samples", type=int, default=40, help="wake-latency samples")
    ap.add_argument("--runs", type=int, default=5, help="start-up runs per command")
    ap.add_argument("--full", action="store_true", help="2000 threads x 50 events, 200 samples")
    args = ap.parse_args()
    if args.full:
        args.threads, args.samples = 2000, 200
    rows: list[tuple[str, str, str, str]] = []
    result: dict[str, Any] = {
        "machine": platform.platform(),
        "python": sys.version.split()[0],
        "args": vars(args),
    }
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "src", Path(d) / "dst"
        anyio.run(fill, src, args.threads, args.events)
        total = args.threads * (args.events + 3)

        py = [sys.executable]
        base = wall(py + ["-c", "pass"], args.runs)
        with_mcp = wall(py + ["-c", "import mcp"], args.runs)
        ls = wall(py + ["-m", "threadloom", "ls", "--json", "--root", str(src)], args.runs)
        result["startup_s"] = {"python": base, "import_mcp": with_mcp, "ls_json": ls}
        rows += [
            ("start-up", "python -c pass", f"{base * 1000:.0f} ms", "baseline"),
            ("start-up", "python -c 'import mcp'", f"{with_mcp * 1000:.0f} ms", f"{with_mcp / base:.1f}x"),
            (
                "start-up",
                f"threadloom ls --json ({args.threads} threads)",
                f"{ls * 1000:.0f} ms",
                f"{ls / base:.1f}x",
            ),
        ]

        tail = tail_latency(src, args.samples)
        poll = poll_latency(src, max(10, args.samples // 4))
        result["wake_ms"] = {
            "tail_f": {"p50": pct(tail, 50), "p99": pct(tail, 99), "n": len(tail)},
            "poll_500ms": {"p50": pct(poll, 50), "p99": pct(poll, 99), "n": len(poll)},
        }
        rows += [
            (
                "wake",
                "poll every 500 ms: p50 / p99",
                f"{pct(poll, 50):.1f} / {pct(poll, 99):.1f} ms",
                "baseline",
            ),
            (
                "wake",
                "tail -f across processes: p50 / p99",
                f"{pct(tail, 50):.1f} / {pct(tail, 99):.1f} ms",
                f"{pct(poll, 50) / max(pct(tail, 50), 1e-3):.0f}x faster (p50)",
            ),
        ]

        bundle = Path(d) / "all.jsonl"
        t0 = time.perf_counter()
        subprocess.run(
            py + ["-m", "threadloom", "export", "--all", "-o", str(bundle), "--root", str(src)],
            env=env(),
            check=True,
            capture_output=True,
        )
        t_export = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run(
            py + ["-m", "threadloom", "import", str(bundle), "--root", str(dst)],
            env=env(),
            check=True,
            capture_output=True,
        )
        t_import = time.perf_counter() - t0
        t0 = time.perf_counter()
        a = sqlite3.connect(src / "threads.db")
        b = sqlite3.connect(Path(d) / "copy.db")
        a.backup(b)
        a.close()
        b.close()
        t_backup = time.perf_counter() - t0
        result["transfer"] = {
            "events": total,
            "export_s": t_export,
            "import_s": t_import,
            "sqlite_backup_s": t_backup,
            "bundle_bytes": bundle.stat().st_size,
        }
        rows += [
            ("transfer", f"sqlite3 backup API ({total} events)", f"{total / t_backup:,.0f} ev/s", "baseline"),
            (
                "transfer",
                "threadloom export --all (incl. start-up)",
                f"{total / t_export:,.0f} ev/s",
                f"{t_export / t_backup:.1f}x the time",
            ),
            (
                "transfer",
                "threadloom import (incl. start-up, mirrors)",
                f"{total / t_import:,.0f} ev/s",
                f"{t_import / t_backup:.1f}x the time",
            ),
        ]

    width = max(len(r[1]) for r in rows)
    print(f"{'what':<9} {'measure':<{width}}  {'value':>22}  vs baseline")
    for what, name, value, ratio in rows:
        print(f"{what:<9} {name:<{width}}  {value:>22}  {ratio}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cli.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / 'cli.json'}")


if __name__ == "__main__":
    main()
