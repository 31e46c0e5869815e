"""Shared helpers for the integrity tests: a thread with a few turns, and file paths."""

from __future__ import annotations

from pathlib import Path

from threadloom.service import ThreadService

CAPS = {
    "tools": [
        {"name": "read_file", "description": "read a file", "input_schema": {"type": "object"}},
        {"name": "search", "description": "search the web", "input_schema": {"type": "object"}},
    ],
    "tree": {"fs": {"read": {}}, "net": ["search"]},
}


def turn(i: int) -> list[dict]:
    """One agent turn: a question, a tool call and its result, an answer, and the accounting."""
    return [
        {"type": "message", "role": "user", "text": f"question number {i}"},
        {"type": "tool_use", "id": f"tu{i}", "name": "read_file", "input": {"path": f"/tmp/{i}"}},
        {"type": "tool_result", "tool_use_id": f"tu{i}", "output": f"contents {i}"},
        {"type": "message", "role": "assistant", "text": f"answer number {i}"},
        {"type": "result", "cost": 0.01, "turns": 1, "input_tokens": 100, "output_tokens": 20},
    ]


async def written_thread(service: ThreadService, turns: int = 3, *, complete: bool = True) -> str:
    """A thread the server wrote: ``turns`` turns (one append per event), then completed."""
    t = await service.create_thread(title="tamper me", capabilities=CAPS)
    for i in range(turns):
        for ev in turn(i):
            await service.append(t.thread_id, [ev])
    if complete:
        await service.update_thread(t.thread_id, status="completed", result="done")
    return t.thread_id


def thread_dir(root: Path, tid: str) -> Path:
    return root / "threads" / tid


def transcript(root: Path, tid: str) -> Path:
    return thread_dir(root, tid) / "transcript.jsonl"


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
