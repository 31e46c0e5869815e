"""Helpers for the operator CLI tests (not a test module): populated roots and the runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from threadloom.cli import app
from threadloom.config import Settings
from threadloom.models import Status, StatusEvent, Thread, event_payload, iso, new_thread_id, utc_now
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore
from threadloom.store.base import AppendEvents, CreateThread, NewEvent, PutThread

runner = CliRunner()


def cli(root: Path, *args: str, input: str | None = None) -> Any:
    """Run ``threadloom ARGS --root ROOT`` in-process; the result has exit_code, stdout, stderr."""
    return runner.invoke(app, [*args, "--root", str(root)], input=input, catch_exceptions=False)


def cli_json(root: Path, *args: str) -> Any:
    res = cli(root, *args, "--json")
    assert res.exit_code == 0, res.stderr + res.stdout
    return json.loads(res.stdout)


def open_root(root: Path) -> ThreadService:
    return ThreadService(SQLiteStore(root, durability="normal"), Settings(root=root, durability="normal"))


def msg(text: str, role: str = "user") -> dict[str, Any]:
    return {"type": "message", "role": role, "text": text}


async def hand_off(svc: ThreadService, old_id: str, reason: str = "explicit") -> str:
    """Continue ``old_id`` in a new thread, as DESIGN §7 does, in one commit; returns the new id.

    Uses the service's own handoff when this build has one.
    """
    real = getattr(svc, "handoff", None)
    if real is not None:
        return (await real(old_id, summary="carry on", reason=reason)).thread_id
    old = await svc.get_thread(old_id)
    now = iso(utc_now())
    new = Thread(
        **{
            **old.model_dump(
                include={
                    "agent_id",
                    "title",
                    "directive",
                    "parent_id",
                    "model",
                    "context_window",
                    "stale_after",
                    "metadata",
                }
            ),
            "thread_id": new_thread_id(),
            "status": Status.RUNNING,
            "continuation_of": old.thread_id,
            "chain_root_id": old.chain_root_id,
            "link_reason": "handoff",
            "created_at": now,
            "updated_at": now,
            "heartbeat_at": now,
        }
    )
    moved = old.model_copy(update={"status": Status.CONTINUED, "continuation_thread_id": new.thread_id})
    status = StatusEvent(**{"from": old.status, "to": Status.CONTINUED, "reason": "handoff"})
    await svc.store.commit(
        [
            CreateThread(new),
            PutThread(moved, expect_version=old.version),
            AppendEvents(
                old.thread_id,
                (
                    NewEvent("status", event_payload(status)),
                    NewEvent(
                        "handoff",
                        {
                            "type": "handoff",
                            "to_thread_id": new.thread_id,
                            "trailing_count": 1,
                            "reason": reason,
                        },
                    ),
                ),
            ),
            AppendEvents(
                new.thread_id,
                (
                    NewEvent(
                        "continued_from",
                        {
                            "type": "continued_from",
                            "from_thread_id": old.thread_id,
                            "reason": reason,
                            "carried_count": 1,
                        },
                    ),
                    NewEvent("message", msg("carry on"), text_chars=8),
                ),
            ),
        ]
    )
    return new.thread_id


async def populate(root: Path) -> dict[str, str]:
    """A small orchestrator run: a parent, two children (one ends in error), one child
    continued into a second thread (a chain of two), tool calls and results."""
    async with open_root(root) as svc:
        parent = await svc.create_thread(agent_id="orch", title="plan the release", directive="ship 1.0")
        p = parent.thread_id
        await svc.append(p, [msg("ship it"), msg("spawning two workers", "assistant")])
        a = (await svc.create_thread(parent_id=p, title="build docs")).thread_id
        await svc.append(
            a,
            [
                msg("build the docs"),
                {"type": "tool_use", "id": "t1", "name": "sh", "input": {"cmd": "make docs"}},
                {"type": "tool_result", "tool_use_id": "t1", "output": "ok"},
                {"type": "result", "cost": 0.25, "input_tokens": 1200, "output_tokens": 80},
            ],
        )
        b = (await svc.create_thread(parent_id=p, title="run the tests")).thread_id
        await svc.append(b, [msg("run the tests"), {"type": "x-note", "detail": "flaky"}])
        await svc.update_thread(b, status="error", reason="tests failed", result={"failed": 3})
        a2 = await hand_off(svc, a)
        await svc.append(a2, [msg("docs deployed", "assistant")])
        await svc.update_thread(a2, status="completed", result="done", cost=0.5)
        await svc.update_thread(p, status="completed", result="released")
    return {"parent": p, "a": a, "a2": a2, "b": b}
