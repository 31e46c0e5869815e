"""Commit in process A -> ``notifications/resources/updated`` at a client of process B.

    python3 dev.py run python benchmarks/subscriptions.py [--rounds N] [--store sqlite|postgres|both]

Process B is a threadloom stdio server (benchmarks/stdio_server.py, which adds a no-op
tool); this process is both A (a ThreadService on the same root or database, committing
appends) and B's client, subscribed to the thread's transcript in each protocol era
(``resources/subscribe`` in the handshake era, ``subscriptions/listen`` in 2026-07-28).
Latency runs from the moment A's append returned (the commit is acknowledged) to the
moment the client has the notification; "from the call" also counts A's commit itself.
The baseline in the same run is one no-op tool call over the same stdio connection (the
SDK's own floor for a message there and back). Prints a table and writes
benchmarks/results/subscriptions.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.types import ResourceUpdatedNotification

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from wake import fresh_pg_schema, make_store, pct  # noqa: E402

from threadloom.config import Settings  # noqa: E402
from threadloom.service import ThreadService  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
HERE = Path(__file__).resolve().parent
USER = {"role": "user", "text": "work"}


async def measure_mode(svc: ThreadService, root: Path, dsn: str, mode: str, rounds: int) -> dict[str, Any]:
    """One server process, one client in ``mode``: notification delays and the no-op floor."""
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "server"))
    args = [str(HERE / "stdio_server.py"), str(root), "normal"] + ([dsn] if dsn else [])
    arrived: dict[str, float] = {}
    got = anyio.Event()

    def note(uri: str) -> None:
        arrived.setdefault(uri, time.perf_counter())
        got.set()

    async def handler(message: Any) -> None:
        if isinstance(message, ResourceUpdatedNotification):
            note(str(message.params.uri))

    params = StdioServerParameters(command=sys.executable, args=args, env=env)
    after_ack: list[float] = []
    from_call: list[float] = []
    noop: list[float] = []
    async with Client(params, mode=mode, message_handler=handler if mode == "legacy" else None) as client:
        tid = (await svc.create_thread(title="bench")).thread_id
        await svc.append(tid, [USER])
        uri = f"thread://{tid}/transcript"
        async with anyio.create_task_group() as tg:
            if mode == "legacy":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", MCPDeprecationWarning)
                    await client.subscribe_resource(uri)
            else:
                listen = client.listen(resource_subscriptions=[uri])
                sub = await listen.__aenter__()

                async def pump() -> None:
                    async for event in sub:
                        note(str(event.uri))

                tg.start_soon(pump)
            for _ in range(5):  # warm up: the server's watch, the client's path
                await client.call_tool("noop", {})
            for i in range(rounds + 3):
                await anyio.sleep(random.uniform(0.005, 0.02))  # a random phase against the watch's poll
                arrived.clear()
                got = anyio.Event()
                t0 = time.perf_counter()
                await svc.append(tid, [USER])
                t1 = time.perf_counter()
                with anyio.fail_after(10):
                    await got.wait()
                if i >= 3:
                    after_ack.append(max(0.0, arrived[uri] - t1) * 1000)
                    from_call.append((arrived[uri] - t0) * 1000)
                s = time.perf_counter()
                await client.call_tool("noop", {})
                noop.append((time.perf_counter() - s) * 1000)
            if mode != "legacy":
                await listen.__aexit__(None, None, None)
            tg.cancel_scope.cancel()

    def row(xs: list[float]) -> dict[str, float]:
        return {"p50_ms": pct(xs, 0.5), "p99_ms": pct(xs, 0.99), "n": len(xs)}

    return {"after_ack": row(after_ack), "from_call": row(from_call), "noop_call": row(noop)}


async def measure(kind: str, rounds: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp())
    dsn = fresh_pg_schema() if kind == "postgres" else ""
    async with ThreadService(make_store(root, dsn), Settings(root=root)) as svc:
        return {mode: await measure_mode(svc, root, dsn, mode, rounds) for mode in ("legacy", "auto")}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--store", choices=["sqlite", "postgres", "both"], default="sqlite")
    args = ap.parse_args()
    kinds = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    out: dict[str, Any] = {"rounds": args.rounds}
    for kind in kinds:
        out[kind] = await measure(kind, args.rounds)
    print(f"{'store':<9} {'era':<8} {'measure':<42} {'p50 ms':>8} {'p99 ms':>8} {'n':>5}")
    names = {
        "after_ack": "A's commit acknowledged -> update at B's client",
        "from_call": "A's append called -> update at B's client",
        "noop_call": "baseline: no-op tool call, B over stdio",
    }
    for kind in kinds:
        for mode, res in out[kind].items():
            era = "2025" if mode == "legacy" else "2026"
            for key, name in names.items():
                r = res[key]
                print(f"{kind:<9} {era:<8} {name:<42} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['n']:>5}")
            ratio = res["after_ack"]["p50_ms"] / max(res["noop_call"]["p50_ms"], 1e-6)
            print(f"{kind}: {era} era: notification p50 is {ratio:.1f}x one no-op round trip")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "subscriptions.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS / 'subscriptions.json'}")


if __name__ == "__main__":
    anyio.run(main)
