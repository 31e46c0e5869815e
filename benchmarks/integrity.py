"""What checkpoint signing costs the append path, measured against itself in the same run.

    python benchmarks/integrity.py [--events N] [--rounds R] [--durability normal|full] [--full]

Workload: an agent's turns, 9 ``message`` appends then 1 ``result`` append (one event per
call, the usual agent loop), so one checkpoint per 10 events. Three arms rotate turn by
turn on one SQLite store and thread (so load, file sizes and caches are shared), each
round on a fresh root:

- ``messages``: 10 message appends per turn (no result, so no accounting, no checkpoint);
- ``turns, no checkpoints``: the turn workload on a store built with ``checkpoints=False``;
- ``turns, checkpoints``: the same workload as shipped (a signed checkpoint per result).

The checkpoint cost is ``turns, checkpoints`` against ``turns, no checkpoints`` (the goal is
under 10%); the accounting + checkpoint cost is against ``messages``. The same three arms
run again with each turn appended as one batch of 10. The writer time of each checkpoint is
also timed inside the store (digest, signature, row), to compare with any append path.
Finally ``verify_thread`` speed on
the longest thread, next to reading that thread's events. Prints a table and writes
benchmarks/results/integrity.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
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

RESULTS = Path(__file__).resolve().parent / "results"
TEXT = "The quick brown fox jumps over the lazy dog while the agent reads the logs. " * 6  # ~450 B


def message(i: int) -> dict[str, Any]:
    return {"type": "message", "role": "user" if i % 2 else "assistant", "text": f"{i} {TEXT}"}


RESULT = {"type": "result", "cost": 0.001, "turns": 1, "input_tokens": 1200, "output_tokens": 80}


def turn_events(i: int, with_result: bool) -> list[dict[str, Any]]:
    evs = [message(i * 10 + k) for k in range(9)]
    evs.append(RESULT if with_result else message(i * 10 + 9))
    return evs


ARMS = ["messages", "turns, no checkpoints", "turns, checkpoints"]


CHECKPOINT_TIMES: list[float] = []
"""Writer time of each checkpoint (digest, signature, row), measured inside the store."""


def _time_checkpoints() -> None:
    from threadloom.store import sqlite as sqlite_store

    inner = sqlite_store.SQLiteStore._checkpoint

    def timed(self: Any, *args: Any) -> None:
        start = time.perf_counter()
        inner(self, *args)
        CHECKPOINT_TIMES.append(time.perf_counter() - start)

    sqlite_store.SQLiteStore._checkpoint = timed  # type: ignore[method-assign]


BIG_WINDOW = 10_000_000
"""The largest context window a thread may have: the benchmark's threads must never hand
off (at the default window they crossed the threshold and the next append was refused)."""


async def measure(durability: str, events: int, rounds: int, batch: bool) -> dict[str, Any]:
    """Rotate the three arms turn by turn on one store and one thread (same file sizes, same
    cache, same machine load), ``rounds`` times on fresh roots; time every turn."""
    turns = max(events // 10 // len(ARMS), 1)
    times: dict[str, list[float]] = {name: [] for name in ARMS}
    CHECKPOINT_TIMES.clear()
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            store = SQLiteStore(root, durability=durability)
            async with ThreadService(store, Settings(root=root, durability=durability)) as svc:
                t = await svc.create_thread(title="bench", context_window=BIG_WINDOW)
                await svc.append(t.thread_id, [message(0)])  # created -> running outside the clock
                for i in range(turns * len(ARMS)):
                    name = ARMS[i % len(ARMS)]
                    store.checkpoints = name != "turns, no checkpoints"
                    evs = turn_events(i, with_result=name != "messages")
                    start = time.perf_counter()
                    if batch:
                        await svc.append(t.thread_id, evs)
                    else:
                        for ev in evs:
                            await svc.append(t.thread_id, [ev])
                    times[name].append(time.perf_counter() - start)
    rate = {name: 10 * len(v) / sum(v) for name, v in times.items()}
    median_turn_us = {name: statistics.median(v) * 1e6 for name, v in times.items()}
    return {
        "mode": "batch of 10" if batch else "one event per append",
        "events_per_arm": 10 * len(times["messages"]),
        "events_per_s": rate,
        "median_turn_us": median_turn_us,
        "checkpoint_cost": 1 - rate["turns, checkpoints"] / rate["turns, no checkpoints"],
        "checkpoint_cost_median": median_turn_us["turns, checkpoints"]
        / median_turn_us["turns, no checkpoints"]
        - 1,
        "accounting_and_checkpoint_cost": 1 - rate["turns, checkpoints"] / rate["messages"],
        "checkpoint_writer_us_median": statistics.median(CHECKPOINT_TIMES) * 1e6,
        "checkpoints": len(CHECKPOINT_TIMES),
    }


async def write_thread(root: Path, durability: str, turns: int) -> str:
    async with ThreadService(SQLiteStore(root, durability=durability), Settings(root=root)) as svc:
        t = await svc.create_thread(title="bench", context_window=BIG_WINDOW)
        for i in range(turns):
            await svc.append(t.thread_id, turn_events(i, with_result=True))
        return t.thread_id


async def measure_verify(durability: str, events: int) -> dict[str, Any]:
    turns = max(events // 10, 1)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        tid = await write_thread(root, durability, turns)
        async with ThreadService(SQLiteStore(root, durability=durability), Settings(root=root)) as svc:
            start = time.perf_counter()
            evs = await svc.all_events(tid)
            read_s = time.perf_counter() - start
            start = time.perf_counter()
            report = await svc.verify_thread(tid)
            verify_s = time.perf_counter() - start
            assert report.ok, report.summary
    return {
        "events": len(evs),
        "checkpoints": report.checkpoints,
        "read_events_ms": read_s * 1000,
        "verify_ms": verify_s * 1000,
        "verify_events_per_s": len(evs) / verify_s,
    }


def measure_sign(n: int = 2000) -> dict[str, float]:
    s = Signer.ephemeral()
    digest = bytes(32)
    start = time.perf_counter()
    for _ in range(n):
        sig = s.sign(digest)
    sign_us = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for _ in range(n):
        s.verify(digest, sig)
    verify_us = (time.perf_counter() - start) / n * 1e6
    return {"sign_us": sign_us, "verify_us": verify_us}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--events", type=int, default=3000, help="events per round, shared by the three arms (default 3000)"
    )
    ap.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    ap.add_argument("--durability", choices=["normal", "full"], default="normal")
    ap.add_argument("--full", action="store_true", help="full size: 30000 events per round, 5 rounds")
    args = ap.parse_args()
    if args.full:
        args.events, args.rounds = 30000, 5
    _time_checkpoints()
    single = await measure(args.durability, args.events, args.rounds, batch=False)
    batched = await measure(args.durability, args.events * 2, args.rounds, batch=True)
    verify = await measure_verify(args.durability, max(args.events * 5, 10000))
    sign = measure_sign()
    out = {
        "benchmark": "integrity",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "durability": args.durability,
        "rounds": args.rounds,
        "append": [single, batched],
        "verify": verify,
        "ed25519": sign,
    }
    print(
        f"checkpoint cost on appends (SQLite, durability={args.durability}, medians of {args.rounds} rounds)"
    )
    print(
        f"{'mode':<22} {'arm':<24} {'events/s':>10} {'median turn':>12} {'vs no checkpoints':>18} {'vs messages':>12}"
    )
    for res in (single, batched):
        med = res["events_per_s"]
        for name in ARMS:
            r1 = med[name] / med["turns, no checkpoints"]
            r2 = med[name] / med["messages"]
            turn_us = res["median_turn_us"][name]
            print(
                f"{res['mode']:<22} {name:<24} {med[name]:>10.0f} {turn_us:>10.0f}us {r1:>17.3f}x {r2:>11.3f}x"
            )
        print(
            f"{'':<22} checkpoint cost {res['checkpoint_cost'] * 100:5.1f}% (on medians "
            f"{res['checkpoint_cost_median'] * 100:.1f}%); accounting + checkpoint cost "
            f"{res['accounting_and_checkpoint_cost'] * 100:5.1f}%; one checkpoint costs the writer "
            f"{res['checkpoint_writer_us_median']:.0f} us (median of {res['checkpoints']})"
        )
    print(
        f"verify_thread: {verify['events']} events, {verify['checkpoints']} checkpoints in {verify['verify_ms']:.0f} ms "
        f"({verify['verify_events_per_s']:.0f} events/s; reading the events alone {verify['read_events_ms']:.0f} ms)"
    )
    print(f"ed25519: sign {sign['sign_us']:.0f} us, verify {sign['verify_us']:.0f} us")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "integrity.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS / 'integrity.json'}")


if __name__ == "__main__":
    anyio.run(main)
