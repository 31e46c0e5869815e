"""What checkpoint signing costs the append path, measured against itself in the same run.

    python benchmarks/integrity.py [--events N] [--rounds R] [--durability normal|full] [--full]

Workload: an agent's turns, 9 ``message`` appends then 1 ``result`` append (one event per
call, the usual agent loop), so one checkpoint per 10 events. Three arms on the SQLite
store, interleaved round by round on fresh roots:

- ``messages``: 10 message appends per turn (no result, so no accounting, no checkpoint);
- ``turns, no checkpoints``: the turn workload on a store built with ``checkpoints=False``;
- ``turns, checkpoints``: the same workload as shipped (a signed checkpoint per result).

The checkpoint cost is ``turns, checkpoints`` against ``turns, no checkpoints`` (the goal is
under 10%); the accounting + checkpoint cost is against ``messages``. The same three arms
run again with each turn appended as one batch of 10. Finally ``verify_thread`` speed on
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


async def run_arm(root: Path, durability: str, turns: int, *, with_result: bool, checkpoints: bool, batch: bool) -> tuple[float, str]:
    settings = Settings(root=root, durability=durability)
    store = SQLiteStore(root, durability=durability, checkpoints=checkpoints)
    async with ThreadService(store, settings) as svc:
        t = await svc.create_thread(title="bench")
        await svc.append(t.thread_id, [message(0)])  # created -> running outside the clock
        start = time.perf_counter()
        for i in range(turns):
            evs = turn_events(i, with_result)
            if batch:
                await svc.append(t.thread_id, evs)
            else:
                for ev in evs:
                    await svc.append(t.thread_id, [ev])
        elapsed = time.perf_counter() - start
    return turns * 10 / elapsed, t.thread_id


ARMS = [
    ("messages", dict(with_result=False, checkpoints=True)),
    ("turns, no checkpoints", dict(with_result=True, checkpoints=False)),
    ("turns, checkpoints", dict(with_result=True, checkpoints=True)),
]


async def measure(durability: str, events: int, rounds: int, batch: bool) -> dict[str, Any]:
    turns = max(events // 10, 1)
    rates: dict[str, list[float]] = {name: [] for name, _ in ARMS}
    for r in range(rounds):
        order = ARMS if r % 2 == 0 else list(reversed(ARMS))  # alternate to cancel drift
        for name, kw in order:
            with tempfile.TemporaryDirectory() as d:
                rate, _ = await run_arm(Path(d), durability, turns, batch=batch, **kw)  # type: ignore[arg-type]
            rates[name].append(rate)
    med = {name: statistics.median(v) for name, v in rates.items()}
    return {
        "mode": "batch of 10" if batch else "one event per append",
        "events_per_arm": turns * 10,
        "events_per_s": med,
        "all_rounds": rates,
        "checkpoint_cost": 1 - med["turns, checkpoints"] / med["turns, no checkpoints"],
        "accounting_and_checkpoint_cost": 1 - med["turns, checkpoints"] / med["messages"],
    }


async def measure_verify(durability: str, events: int) -> dict[str, Any]:
    turns = max(events // 10, 1)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        _, tid = await run_arm(root, durability, turns, with_result=True, checkpoints=True, batch=True)
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
    ap.add_argument("--events", type=int, default=2000, help="events per arm and round (default 2000)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    ap.add_argument("--durability", choices=["normal", "full"], default="normal")
    ap.add_argument("--full", action="store_true", help="full size: 20000 events per arm, 5 rounds")
    args = ap.parse_args()
    if args.full:
        args.events, args.rounds = 20000, 5
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
    print(f"checkpoint cost on appends (SQLite, durability={args.durability}, medians of {args.rounds} rounds)")
    print(f"{'mode':<22} {'arm':<24} {'events/s':>10} {'vs no checkpoints':>18} {'vs messages':>12}")
    for res in (single, batched):
        med = res["events_per_s"]
        for name, _ in ARMS:
            r1 = med[name] / med["turns, no checkpoints"]
            r2 = med[name] / med["messages"]
            print(f"{res['mode']:<22} {name:<24} {med[name]:>10.0f} {r1:>17.3f}x {r2:>11.3f}x")
        print(
            f"{'':<22} checkpoint cost {res['checkpoint_cost'] * 100:5.1f}%   "
            f"accounting + checkpoint cost {res['accounting_and_checkpoint_cost'] * 100:5.1f}%"
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
