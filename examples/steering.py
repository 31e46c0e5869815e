"""A parent steering a running child: one user message, seen through read_events(wait).

    python3 dev.py run python examples/steering.py [--root DIR] [--json PATH]

The parent opens a stdio session to `threadloom serve`, creates its thread and a child
thread, and starts a worker **process** with its own stdio session (its own server on
the same root). The worker works in steps: after each step it appends its progress and
calls `read_events(thread_id, after_seq=<its own last seq>, wait=...)`, which returns as
soon as anyone appends to its thread (woken by the commit, in whichever process it
happened), or empty at the timeout.

The parent watches the child the same way (`read_events(wait=...)` on the child's
thread) until the first progress message, then steers it: it appends a `message`
(role user) to the **child's** thread with `metadata.from_thread_id` set to its own
thread. The worker sees it on its next long-poll, acknowledges it, follows it and
completes with a result that quotes it. The parent's `wait_threads` returns that result.

Exit code 0 when the child followed the parent's instruction. `--json PATH` writes the
outcome (the test reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

INSTRUCTION = "Stop exploring: write up what you found in two sentences."
STEP_WAIT = 2.0  # seconds the worker listens for instructions between steps
MAX_STEPS = 30


def server_params(root: str) -> StdioServerParameters:
    """`threadloom serve` on ``root`` with this process's environment (PYTHONPATH, venv)."""
    return StdioServerParameters(
        command=sys.executable, args=["-m", "threadloom", "serve", "--root", root], env=dict(os.environ)
    )


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    r = await client.call_tool(tool, args)
    if r.is_error:
        raise RuntimeError(f"{tool}: {r.content[0].text if r.content else 'error'}")
    return r.structured_content or {}


# ---------------------------------------------------------------------- worker


async def worker(root: str, thread_id: str) -> None:
    """Work step by step; between steps, listen for a message from the parent."""
    async with Client(server_params(root)) as client:
        for step in range(1, MAX_STEPS + 1):
            mine = await call(
                client,
                "append_event",
                thread_id=thread_id,
                event={"role": "assistant", "text": f"step {step}: looked at another part of the code"},
            )
            page = await call(
                client, "read_events", thread_id=thread_id, after_seq=mine["seq"], wait=STEP_WAIT
            )
            for ev in page["events"]:
                sender = (ev.get("metadata") or {}).get("from_thread_id")
                if ev.get("type") == "message" and ev.get("role") == "user" and sender:
                    print(f"  [worker] step {step}: message from thread {sender}: {ev['text']!r}", flush=True)
                    await call(
                        client,
                        "append_event",
                        thread_id=thread_id,
                        event={"role": "assistant", "text": "Understood: writing it up now."},
                    )
                    await call(
                        client,
                        "update_thread",
                        thread_id=thread_id,
                        status="completed",
                        result={"steps": step, "instruction": ev["text"], "steered_by": sender},
                    )
                    return
        await call(
            client, "update_thread", thread_id=thread_id, status="completed", result={"steps": MAX_STEPS}
        )


# ---------------------------------------------------------------------- parent


async def parent(root: str, json_path: str | None) -> int:
    async with Client(server_params(root)) as client:
        me = (await call(client, "create_thread", title="steering parent"))["thread_id"]
        await call(client, "append_event", thread_id=me, event={"role": "user", "text": "Explore the repo."})
        child = (await call(client, "create_thread", parent_id=me, title="explorer", directive="Explore."))[
            "thread_id"
        ]
        print(f"parent {me}, child {child}", flush=True)
        cmd = [sys.executable, __file__, "--root", root, "--worker", child]
        async with await anyio.open_process(cmd, stdout=None, stderr=None) as proc:
            seen = 0
            while True:  # watch the child's thread until its first progress message
                page = await call(client, "read_events", thread_id=child, after_seq=seen, wait=60)
                seen = page["next_after_seq"]
                if any(e.get("role") == "assistant" for e in page["events"]):
                    break
            print(f"parent: the child is at work (event {seen}); sending it an instruction", flush=True)
            steer = {"role": "user", "text": INSTRUCTION, "metadata": {"from_thread_id": me}}
            await call(client, "append_event", thread_id=child, event=steer)
            waited = await call(client, "wait_threads", thread_ids=[child], timeout=120)
            code = await proc.wait()
        outcome = waited["threads"][0]
        print(f"parent: child {outcome['status']}: {json.dumps(outcome['result'])}", flush=True)
        followed = (
            outcome["status"] == "completed"
            and (outcome["result"] or {}).get("instruction") == INSTRUCTION
            and outcome["result"].get("steered_by") == me
        )
        await call(client, "update_thread", thread_id=me, status="completed", result=outcome["result"])
        if json_path:
            with open(json_path, "w") as f:
                json.dump({"parent": me, "child": child, "outcome": outcome, "worker_exit": code}, f)
        return 0 if followed and code == 0 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", help="threadloom root (default: a fresh temporary directory)")
    ap.add_argument("--json", help="write the outcome as JSON to this file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run as the worker of this thread
    args = ap.parse_args()
    root = args.root or tempfile.mkdtemp(prefix="threadloom-steering-")
    if args.worker:
        anyio.run(worker, root, args.worker)
        return 0
    return anyio.run(parent, root, args.json)


if __name__ == "__main__":
    sys.exit(main())
