"""An orchestrator and three worker processes, each with its own MCP stdio session.

    python3 dev.py run python examples/orchestrator.py [--root DIR] [--json PATH]

The parent opens a stdio session to `threadloom serve`, creates its own thread and
three child threads (`create_thread(parent_id=...)`), then starts three worker
**processes**. Each worker opens its own stdio session (its own `threadloom serve`
process on the same root) and works on its child thread:

* `summarise` appends a small tool-using turn and completes with a result;
* `fetch` hits an (imagined) upstream failure and ends its thread in `error`;
* `analyse` works, hands off mid-way with `handoff_thread(thread_id, summary)`,
  goes on in the continuation thread and completes there. When the server has no
  `handoff_thread` tool, the worker says so and completes without a handoff.

Meanwhile the parent waits for all three with one `wait_threads` call: no polling,
each worker's commit (in another process) wakes it, and progress notifications say
how many have finished. It then prints every child's outcome (the handoff child's
outcome is that of the end of its chain, reported under the id the parent knows),
the parent's children counted by status, and completes its own thread.

If a worker process dies before ending its thread (try `--crash fetch`), the parent
ends that thread as `error` itself; that commit wakes the wait like any other.

Exit code 0 when every child ended as its role says and every worker exited cleanly.
`--json PATH` also writes the outcome as JSON (the test reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

ROLES = {
    "summarise": "Summarise yesterday's deploy logs in three bullet points.",
    "fetch": "Fetch the release notes from the upstream tracker.",
    "analyse": "Analyse the flaky-test history and propose fixes.",
}
EXPECTED = {"summarise": "completed", "fetch": "error", "analyse": "completed"}
WAIT_TIMEOUT = 120.0
CRASH_EXIT = 3


class ToolFailed(RuntimeError):
    """A tool call came back with is_error."""


def server_params(root: str) -> StdioServerParameters:
    """`threadloom serve` on ``root``, with this process's environment (so PYTHONPATH and
    the venv carry over: the SDK passes only a minimal environment otherwise)."""
    return StdioServerParameters(
        command=sys.executable, args=["-m", "threadloom", "serve", "--root", root], env=dict(os.environ)
    )


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    """Call a tool; return its structured result or raise ToolFailed with its message."""
    r = await client.call_tool(tool, args)
    if r.is_error:
        raise ToolFailed(f"{tool}: {r.content[0].text if r.content else 'error'}")
    return r.structured_content or {}


# ---------------------------------------------------------------------- worker


def say(tag: str, text: str) -> None:
    print(f"  [{tag}] {text}", flush=True)


async def summarise(client: Client, thread_id: str, tools: set[str], tag: str) -> None:
    """Finish the turn and complete with a result."""
    await call(
        client,
        "append_event",
        thread_id=thread_id,
        events=[
            {"type": "tool_result", "tool_use_id": "call-1", "output": "412 lines of logs"},
            {"type": "message", "role": "assistant", "text": "- deploy ok\n- 2 retries\n- no rollbacks"},
            {"type": "result", "cost": 0.004, "turns": 1, "input_tokens": 900, "output_tokens": 60},
        ],
    )
    result = {"bullets": ["deploy ok", "2 retries", "no rollbacks"]}
    await call(client, "update_thread", thread_id=thread_id, status="completed", result=result, cost=0.004)
    say(tag, "completed")


async def fetch(client: Client, thread_id: str, tools: set[str], tag: str) -> None:
    """The tool call fails upstream: end the thread in ``error`` with the reason."""
    await call(
        client,
        "append_event",
        thread_id=thread_id,
        event={"type": "tool_result", "tool_use_id": "call-1", "output": "HTTP 503", "is_error": True},
    )
    reason = "upstream tracker returned HTTP 503 three times"
    await call(
        client,
        "update_thread",
        thread_id=thread_id,
        status="error",
        reason=reason,
        result={"error": "HTTP 503"},
        cost=0.001,
    )
    say(tag, "failed (status error)")


async def analyse(client: Client, thread_id: str, tools: set[str], tag: str) -> None:
    """Hand off mid-way (when the server can), go on in the continuation, complete there."""
    await call(
        client,
        "append_event",
        thread_id=thread_id,
        events=[
            {"type": "tool_result", "tool_use_id": "call-1", "output": "37 flaky runs in 30 days"},
            {"type": "message", "role": "assistant", "text": "Half the flakes are in test_timeouts.py."},
        ],
    )
    current = thread_id
    if "handoff_thread" in tools:
        summary = "Counted 37 flaky runs; half are in test_timeouts.py. Next: propose fixes."
        current = (await call(client, "handoff_thread", thread_id=thread_id, summary=summary))["thread_id"]
        say(tag, f"handed off to {current}; going on there")
    else:
        say(
            tag,
            "this server has no handoff_thread tool (the handoff work is not in it): "
            "completing without a handoff",
        )
    await call(
        client,
        "append_event",
        thread_id=current,
        events=[
            {"type": "message", "role": "user", "text": "Propose the fixes."},
            {"type": "message", "role": "assistant", "text": "Use fake clocks in test_timeouts.py."},
            {"type": "result", "cost": 0.007, "turns": 2, "input_tokens": 1500, "output_tokens": 120},
        ],
    )
    result = {"fix": "fake clocks in test_timeouts.py", "handed_off": current != thread_id}
    await call(client, "update_thread", thread_id=current, status="completed", result=result, cost=0.007)
    say(tag, "completed" + (" (in the continuation)" if current != thread_id else ""))


ROLE_STEPS = {"summarise": summarise, "fetch": fetch, "analyse": analyse}


async def worker(root: str, thread_id: str, role: str, work_seconds: float, crash: bool = False) -> int:
    """One worker process: its own stdio session (its own server), working on one child thread.

    ``crash``: stop with exit code 3 mid-way, leaving the thread running (what a killed
    worker does); the parent then ends the thread as error, which wakes its wait."""
    tag = f"worker {role} {thread_id}"
    async with Client(server_params(root)) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        child = await call(client, "get_thread", thread_id=thread_id)
        await call(
            client,
            "append_event",
            thread_id=thread_id,
            idempotency_key=f"{thread_id}-start",
            events=[
                {"type": "message", "role": "user", "text": child.get("directive") or ROLES[role]},
                {"type": "tool_use", "id": "call-1", "name": "shell", "input": {"cmd": f"run-{role}"}},
            ],
        )
        say(tag, "started (2 events appended)")
        await anyio.sleep(work_seconds)  # the "work"
        if crash:
            say(tag, "crashing on purpose (exit code 3), thread left running")
            return CRASH_EXIT
        await ROLE_STEPS[role](client, thread_id, tools, tag)
    return 0


# ---------------------------------------------------------------------- parent


async def run_worker(
    client: Client,
    root: str,
    thread_id: str,
    role: str,
    work_seconds: float,
    crash: bool,
    codes: dict[str, int],
) -> None:
    """Run one worker process; if it dies before ending its thread, end the thread as error
    (that commit wakes the parent's wait, so a crashed worker never leaves it hanging)."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "worker",
        "--root",
        root,
        "--thread-id",
        thread_id,
        "--role",
        role,
        "--work-seconds",
        str(work_seconds),
    ] + (["--crash", role] if crash else [])
    async with await anyio.open_process(cmd, stdin=None, stdout=None, stderr=None) as proc:  # our terminal
        codes[role] = await proc.wait()
    if codes[role] != 0:
        reason = f"worker process exited with code {codes[role]}"
        args = {"thread_id": thread_id, "status": "error", "reason": reason}
        r = await client.call_tool("update_thread", args)
        then = f"its thread had ended ({r.content[0].text})" if r.is_error else "marked its thread error"
        print(f"orchestrator: {role} {reason}; {then}", flush=True)


async def spawn_children(client: Client) -> tuple[str, dict[str, str]]:
    """The parent's own thread and one child thread per role (role -> thread id)."""
    parent = await call(
        client,
        "create_thread",
        agent_id="orchestrator-demo",
        title="release prep",
        directive="Prepare the release: logs, notes, flaky tests.",
    )
    pid = parent["thread_id"]
    await call(
        client,
        "append_event",
        thread_id=pid,
        event={"type": "message", "role": "assistant", "text": "Spawning three workers."},
    )
    children = {}
    for role, directive in ROLES.items():
        child = await call(client, "create_thread", parent_id=pid, title=role, directive=directive)
        children[role] = child["thread_id"]
    return pid, children


def print_outcomes(
    children: dict[str, str], waited: dict[str, Any], codes: dict[str, int]
) -> list[dict[str, Any]]:
    """Print one line per child; return the rows (role, worker exit code and the wait item)."""
    by_id = {item["thread_id"]: item for item in waited["threads"]}
    print("\nchild outcomes (a handed-off child reports the end of its chain):")
    print(f"  {'role':<10} {'thread':<13} {'resolved':<13} {'status':<10} {'cost':>6}  result / reason")
    rows = []
    for role, tid in children.items():
        item = by_id[tid]
        detail = item.get("result") if item["status"] == "completed" else item.get("status_reason")
        cost = "-" if item.get("cost") is None else item["cost"]
        print(
            f"  {role:<10} {tid:<13} {item['resolved_thread_id']:<13} {item['status']:<10} {cost:>6}  "
            f"{json.dumps(detail)}"
        )
        rows.append({"role": role, "worker_exit": codes.get(role), **item})
    return rows


async def orchestrate(
    root: str, json_path: str | None, work_seconds: float, timeout: float, crash: str | None = None
) -> int:
    started = time.monotonic()
    print(f"orchestrator: root {root}", flush=True)
    async with Client(server_params(root)) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        if "wait_threads" not in tools:
            print(
                "orchestrator: this threadloom server has no wait_threads tool; "
                "it is too old for this example",
                file=sys.stderr,
            )
            return 2
        pid, children = await spawn_children(client)
        print(
            f"orchestrator: parent thread {pid}; children "
            + ", ".join(f"{role}={tid}" for role, tid in children.items()),
            flush=True,
        )

        progress_seen: list[tuple[float, float | None]] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress_seen.append((done, total))
            note = f" ({message})" if message else ""
            print(f"orchestrator: progress {done:g}/{total:g}{note}", flush=True)

        codes: dict[str, int] = {}
        async with anyio.create_task_group() as tg:  # also waits for the worker processes to exit
            for role, tid in children.items():
                tg.start_soon(run_worker, client, root, tid, role, work_seconds, role == crash, codes)
            print(f"orchestrator: waiting for {len(children)} children (wait_threads, mode=all)", flush=True)
            r = await client.call_tool(
                "wait_threads",
                {"thread_ids": list(children.values()), "mode": "all", "timeout": timeout},
                progress_callback=on_progress,
            )
            if r.is_error:
                raise ToolFailed(f"wait_threads: {r.content[0].text}")
            waited = r.structured_content or {}

        rows = print_outcomes(children, waited, codes)
        ok = waited["settled"] and all(
            row["status"] == EXPECTED[row["role"]] and row["worker_exit"] == 0 for row in rows
        )
        counts = (await call(client, "get_thread", thread_id=pid)).get("children")
        print(f"\nparent {pid}: children by status {counts}")
        cost = round(sum(row.get("cost") or 0 for row in rows), 6)
        summary = {s: sum(1 for row in rows if row["status"] == s) for s in ("completed", "error")}
        outputs = {row["role"]: row["resolved_thread_id"] for row in rows}
        final = await call(
            client,
            "update_thread",
            thread_id=pid,
            status="completed",
            result=summary,
            outputs=outputs,
            cost=cost,
        )
        print(
            f"parent {pid}: {final['status']} with result {json.dumps(summary)}, cost {cost}; waited "
            f"{waited.get('waited_ms')} ms in wait_threads, {time.monotonic() - started:.1f} s in all"
        )

    if json_path:
        outcome = {
            "root": root,
            "parent_thread_id": pid,
            "settled": waited["settled"],
            "timed_out": waited["timed_out"],
            "children": rows,
            "children_counts": counts,
            "progress": progress_seen,
            "handoff_available": "handoff_thread" in tools,
            "parent_status": final["status"],
            "parent_result": final["result"],
        }
        with open(json_path, "w") as f:
            json.dump(outcome, f, indent=2)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", nargs="?", default="parent", choices=["parent", "worker"])
    ap.add_argument("--root", help="threadloom root (default: a new temporary folder)")
    ap.add_argument("--json", help="also write the outcome as JSON to this path")
    ap.add_argument("--work-seconds", type=float, default=0.5, help="how long each worker 'works'")
    ap.add_argument("--timeout", type=float, default=WAIT_TIMEOUT, help="wait_threads timeout in seconds")
    ap.add_argument("--crash", choices=list(ROLES), help="this worker exits mid-way, its thread left open")
    ap.add_argument("--thread-id", help=argparse.SUPPRESS)
    ap.add_argument("--role", choices=list(ROLES), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.mode == "worker":
        if not (args.root and args.thread_id and args.role):
            ap.error("worker needs --root, --thread-id and --role")
        crash = args.crash == args.role
        return anyio.run(worker, args.root, args.thread_id, args.role, args.work_seconds, crash)
    root = args.root or tempfile.mkdtemp(prefix="threadloom-orchestrator-")
    return anyio.run(orchestrate, root, args.json, args.work_seconds, args.timeout, args.crash)


if __name__ == "__main__":
    sys.exit(main())
