"""Web inspector test helpers: a root filled like an orchestrator run, an ASGI client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx2

from threadloom.config import Settings
from threadloom.http import guard_app
from threadloom.service import ThreadService
from threadloom.web import build_web_app

HOSTILE = (
    '<script>window.__pwned = 1; document.title = "pwned"</script><img src=x onerror="window.__pwned=2">'
)
LOCAL = {"Host": "127.0.0.1:8765"}


@dataclass
class Filled:
    parent: str
    worker: str
    failing: str
    hostile: str
    chain_first: str
    chain_next: str


async def fill(svc: ThreadService) -> Filled:
    """An orchestrator with children: tool calls and results, an error, costs, a handoff."""
    parent = await svc.create_thread(
        agent_id="orchestrator", title="Ship the release", directive="Plan and ship"
    )
    await svc.append(
        parent.thread_id,
        [
            {"role": "user", "text": "Ship **v2** today."},
            {"role": "assistant", "text": "Plan: run the suite, then deploy to staging."},
            {"type": "result", "cost": 0.42, "input_tokens": 88_000, "output_tokens": 2_100, "turns": 3},
        ],
    )
    worker = await svc.create_thread(parent_id=parent.thread_id, title="Run the test suite", model="claude-x")
    await svc.append(
        worker.thread_id,
        [
            {"role": "user", "text": "Run the tests and report.\n\n- unit\n- integration"},
            {"type": "tool_use", "id": "call-1", "name": "bash", "input": {"cmd": "pytest -q"}},
            {"type": "tool_result", "tool_use_id": "call-1", "output": "412 passed in 9.1s"},
            {"role": "assistant", "text": "All **412** tests pass."},
            {"type": "result", "cost": 0.0123, "input_tokens": 1500, "output_tokens": 320, "turns": 1},
        ],
    )
    failing = await svc.create_thread(
        parent_id=parent.thread_id, title="Deploy to staging", agent_id="deployer"
    )
    await svc.append(
        failing.thread_id,
        [
            {"role": "user", "text": "Deploy the build."},
            {"type": "tool_use", "id": "call-9", "name": "deploy", "input": {"env": "staging"}},
            {"type": "tool_result", "tool_use_id": "call-9", "output": "permission denied", "is_error": True},
        ],
    )
    await svc.update_thread(failing.thread_id, status="error", reason="deploy failed")
    hostile = await svc.create_thread(title="Hostile <b>title</b>", agent_id="mallory")
    await svc.append(hostile.thread_id, [{"role": "user", "text": HOSTILE}])
    first = await svc.create_thread(title="Long analysis", agent_id="analyst")
    await svc.append(first.thread_id, [{"role": "user", "text": "Analyse the logs."}])
    hop = await svc.handoff(first.thread_id, summary="Half of the logs read.")
    await svc.update_thread(worker.thread_id, status="completed", result={"passed": 412})
    return Filled(
        parent.thread_id,
        worker.thread_id,
        failing.thread_id,
        hostile.thread_id,
        first.thread_id,
        hop.thread_id,
    )


def client(service: ThreadService, settings: Settings) -> httpx2.AsyncClient:
    """An async client calling the inspector in process, behind the real guards."""
    app = guard_app(build_web_app(service, settings), settings)
    return httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app), base_url="http://127.0.0.1:8765", headers=LOCAL
    )


def rows(html: str) -> list[str]:
    """Thread ids of the rows of a threads page, in order."""
    import re

    return re.findall(r'<tr id="row-([a-f0-9]{12})"', html)


def assert_no_markup(html: str) -> None:
    assert "<script>window.__pwned" not in html
    assert "<img src=x" not in html
    assert "&lt;script&gt;" in html


__all__: list[Any] = ["HOSTILE", "Filled", "assert_no_markup", "client", "fill", "rows"]
