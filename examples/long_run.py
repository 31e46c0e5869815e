"""A long agent run across a continuation chain, over stdio, with scripted turns (no model).

    python3 dev.py run python examples/long_run.py

Spawns `threadloom serve` (SQLite under a temporary root). The "agent" reads log files
one turn at a time (tool_use, tool_result, assistant_text, then the orchestrator's next
instruction) into a thread with a small context window, so the server hands the work
off twice: A -> B -> C. After each handoff the agent switches to the thread the server
named, exactly as a real agent loop would. It then completes, shows get_chain and the
end thread's messages in the Anthropic shape, and resumes the finished chain with a new
instruction. Prints each step.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

WINDOW = 2000  # tokens; a real agent keeps the default 200000
CEILING = 300  # tokens of recent messages each handoff carries


def log_text(n: int) -> str:
    lines = [f"[build {n}] step {i}: compiled module_{n}_{i}.py in {0.1 * i:.1f}s" for i in range(4)]
    if n % 3 == 0:
        lines.append(f"[build {n}] ERROR: test_{n} failed: expected 4, got 5")
    return "\n".join(lines)


def scripted_turn(n: int) -> list[dict[str, Any]]:
    """What a model and its tools would produce for one file."""
    status = "has an error" if n % 3 == 0 else "is clean"
    return [
        {
            "type": "tool_use",
            "id": f"read-{n}",
            "name": "read_file",
            "input": {"path": f"logs/build-{n}.log"},
        },
        {"type": "tool_result", "tool_use_id": f"read-{n}", "output": log_text(n)},
        {"type": "assistant_text", "text": f"build-{n}.log {status}."},
        {"type": "message", "role": "user", "text": f"Good. Next: logs/build-{n + 1}.log"},
    ]


async def call(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    r = await client.call_tool(tool, args)
    if r.is_error:
        raise RuntimeError(r.content[0].text)  # type: ignore[union-attr]
    assert r.structured_content is not None
    return r.structured_content


def show_chain(view: dict[str, Any]) -> None:
    print(
        f"chain of {view['chain_root_id']}: {len(view['threads'])} threads, {view['total_events']} events, "
        f"end {view['end_thread_id']} ({view['end_status']})"
    )
    for t in view["threads"]:
        ctx = t["context"]
        print(
            f"  {t['thread_id']}  {t['status']:<10} {t['link_reason'] or 'root':<8} events {t['event_count']:>3}  "
            f"context {ctx['used']:>4}/{ctx['window']} ({ctx['ratio']:.0%})  cost {t['cost']}"
        )


async def main() -> None:
    root = tempfile.mkdtemp(prefix="threadloom-long-run-")
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "threadloom", "serve", "--root", root, "--resume-ceiling-tokens", str(CEILING)],
        env={
            **os.environ,
            "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "server"),
        },  # this checkout's code
    )
    async with Client(server) as client:
        t = await call(
            client,
            "create_thread",
            {
                "title": "build log review",
                "directive": "Read every build log and say which builds failed.",
                "context_window": WINDOW,
            },
        )
        thread_id = t["thread_id"]
        chain_ids = [thread_id]
        print(f"1. created thread {thread_id} (window {WINDOW} tokens, handoff at 90%)")
        await call(
            client,
            "append_event",
            {
                "thread_id": thread_id,
                "event": {
                    "type": "message",
                    "role": "user",
                    "text": "Read every build log and say which builds failed. Start with logs/build-1.log",
                },
            },
        )

        print("2. the agent works; the server hands off when the context fills up")
        turn = 0
        while len(chain_ids) < 3 or turn % 3:  # two handoffs, then finish the current batch of files
            turn += 1
            out = await call(
                client,
                "append_event",
                {"thread_id": thread_id, "events": scripted_turn(turn), "idempotency_key": f"turn-{turn}"},
            )
            ctx = out["context"]
            print(
                f"   turn {turn:>2}: thread {thread_id} seqs {out['seqs'][0]}-{out['seqs'][-1]}, "
                f"context {ctx['used']}/{ctx['window']} ({ctx['ratio']:.0%})"
            )
            if out["handoff"]:
                h = out["handoff"]
                print(f"   -> handoff: {h['message']}")
                old, thread_id = thread_id, h["thread_id"]
                chain_ids.append(thread_id)
                late = await client.call_tool(
                    "append_event",
                    {"thread_id": old, "event": {"type": "message", "role": "user", "text": "late"}},
                )
                print(f"   (appending to {old} now fails: {late.content[0].text[:110]}...)")  # type: ignore[union-attr]

        failed = [n for n in range(1, turn + 1) if n % 3 == 0]
        await call(
            client,
            "append_event",
            {
                "thread_id": thread_id,
                "events": [
                    {"type": "message", "role": "assistant", "text": f"Done: builds {failed} failed."},
                    {
                        "type": "result",
                        "cost": 0.042,
                        "turns": turn,
                        "input_tokens": 480,
                        "output_tokens": 900,
                    },
                ],
            },
        )
        done = await call(
            client,
            "update_thread",
            {"thread_id": thread_id, "status": "completed", "result": {"failed": failed}, "cost": 0.042},
        )
        print(f"3. thread {thread_id} is {done['status']} with result {json.dumps(done['result'])}")

        print("4. get_chain, asked with the first thread's id:")
        show_chain(await call(client, "get_chain", {"thread_id": chain_ids[0]}))

        body = json.loads(
            (await client.read_resource(f"thread://{thread_id}/messages?format=anthropic")).contents[0].text
        )  # type: ignore[union-attr]
        roles = " ".join(m["role"][0] for m in body["messages"])
        print(
            f"5. messages of {thread_id} in the Anthropic shape: {len(body['messages'])} turns ({roles}); first:"
        )
        print("   " + body["messages"][0]["content"][0]["text"].replace("\n\n", "\n").replace("\n", "\n   "))

        print("6. resume the finished chain with a new instruction:")
        r = await call(
            client,
            "resume_thread",
            {"thread_id": chain_ids[0], "format": "openai", "message": "Now list the failing tests by name."},
        )
        print(f"   {r['message']}")
        print(
            f"   new thread {r['thread']['thread_id']}: {len(r['messages'])} OpenAI messages, "
            f"last: {json.dumps(r['messages'][-1])}"
        )
        show_chain(await call(client, "get_chain", {"thread_id": chain_ids[1]}))
    print(f"data kept under {root}")


if __name__ == "__main__":
    anyio.run(main)
