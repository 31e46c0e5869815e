"""`threadloom ingest ... --watch` follows live sessions written by another process."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cli_helpers import open_root
from conftest import PYTHON
from ingest_helpers import source_events

pytestmark = pytest.mark.anyio
WAIT = 60.0  # a generous bound for a loaded machine; the watcher reacts within a second


def line(kind: str, uuid: str, text: str, session: str) -> str:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    base = {"sessionId": session, "cwd": "/w", "version": "2.0.14", "timestamp": ts, "uuid": uuid}
    if kind == "user":
        return json.dumps({**base, "type": "user", "message": {"role": "user", "content": text}}) + "\n"
    message = {
        "id": f"msg_{uuid}",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": text}],
    }
    return json.dumps({**base, "type": "assistant", "message": message}) + "\n"


def next_report(lines: queue.Queue, proc: subprocess.Popen) -> dict:
    try:
        return json.loads(lines.get(timeout=WAIT))
    except queue.Empty:
        proc.kill()
        raise AssertionError(
            f"no report from the watcher: {proc.stderr.read() if proc.stderr else ''}"
        ) from None


async def test_watch_picks_up_new_sessions_and_lines_from_another_process(
    tmp_path: Path, cli_env: dict
) -> None:
    projects = tmp_path / "projects" / "-w"
    projects.mkdir(parents=True)
    root = tmp_path / "root"
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "threadloom",
            "ingest",
            "claude-code",
            str(tmp_path / "projects"),
            "--watch",
            "--json",
            "--root",
            str(root),
        ],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    try:
        assert next_report(lines, proc)["files"] == 0  # the first pass: nothing yet
        session = projects / "aaaa1111-0000-4000-8000-000000000001.jsonl"
        session.write_text(line("user", "u1", "Watch me write this prompt", "aaaa1111"))
        report = next_report(lines, proc)
        assert report["events"] == 1 and len(report["threads_created"]) == 1
        with open(session, "a") as f:
            f.write(line("assistant", "a1", "An answer written while the watcher ran", "aaaa1111"))
        assert next_report(lines, proc)["events"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    async with open_root(root) as svc:
        (thread,) = await svc.all_threads()
        texts = [e.get("text") for e in await source_events(svc, thread.thread_id)]
        assert texts == ["Watch me write this prompt", "An answer written while the watcher ran"]
        assert thread.status == "running"
