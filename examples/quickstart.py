"""Quick start: talk to threadloom over stdio with the MCP SDK client.

    python3 dev.py run python examples/quickstart.py

Spawns `threadloom serve` (embedded SQLite under a temporary root), creates a thread,
appends a small conversation with a tool call, ends it, and reads the transcript
resource back. Prints each step.
"""

from __future__ import annotations

import json
import sys
import tempfile

import anyio
from mcp import Client, StdioServerParameters


async def main() -> None:
    root = tempfile.mkdtemp(prefix="threadloom-quickstart-")
    server = StdioServerParameters(command=sys.executable, args=["-m", "threadloom", "serve", "--root", root])
    async with Client(server) as client:
        tools = [t.name for t in (await client.list_tools()).tools]
        print(f"connected; tools: {', '.join(tools)}")

        thread = (
            await client.call_tool("create_thread", {"title": "quickstart", "directive": "Count files"})
        ).structured_content
        tid = thread["thread_id"]
        print(f"created thread {tid} (status {thread['status']})")

        events = [
            {"type": "message", "role": "user", "text": "How many files are in the folder?"},
            {"type": "tool_use", "id": "call-1", "name": "list_files", "input": {"path": "."}},
            {"type": "tool_result", "tool_use_id": "call-1", "output": "README.md\nsetup.py"},
            {"type": "message", "role": "assistant", "text": "There are 2 files."},
            {"type": "result", "cost": 0.0021, "input_tokens": 512, "output_tokens": 40, "turns": 1},
        ]
        out = (
            await client.call_tool(
                "append_event", {"thread_id": tid, "events": events, "idempotency_key": "turn-1"}
            )
        ).structured_content
        print(
            f"appended seqs {out['seqs']}; context {out['context']['used']}/{out['context']['window']} tokens"
        )

        again = (
            await client.call_tool(
                "append_event", {"thread_id": tid, "events": events, "idempotency_key": "turn-1"}
            )
        ).structured_content
        print(
            f"retried the same append: seqs {again['seqs']}, replayed={again['replayed']} (nothing written twice)"
        )

        bad = await client.call_tool(
            "append_event", {"thread_id": tid, "event": {"type": "message", "role": "robot", "text": "?"}}
        )
        print(f"a bad event is refused: {bad.content[0].text}")

        done = (
            await client.call_tool(
                "update_thread",
                {"thread_id": tid, "status": "completed", "result": {"files": 2}, "cost": 0.0021},
            )
        ).structured_content
        print(f"thread {tid} is {done['status']} with result {json.dumps(done['result'])}")

        transcript = (await client.read_resource(f"thread://{tid}/transcript")).contents[0].text
        print(f"transcript resource ({len(transcript.splitlines())} lines):")
        for line in transcript.splitlines():
            print("  " + line)
    print(f"data kept under {root}")


if __name__ == "__main__":
    anyio.run(main)
