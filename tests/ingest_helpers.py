"""Helpers for the ingest tests (not a test module): fixture copies, runs, event views."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from cli_helpers import open_root
from threadloom.ingest import Ingester, IngestReport, vendor
from threadloom.service import ThreadService

FIXTURES = Path(__file__).parent / "fixtures"
CLAUDE_SESSION = "5f0c2d1e-aaaa-4bbb-8ccc-000000000001"
CONVERSATION = {"message", "tool_use", "tool_result", "assistant_text", "result"}


def copy_fixtures(kind: str, dest: Path) -> Path:
    """A private copy of ``tests/fixtures/<kind>`` (tests change files in place)."""
    target = dest / kind
    shutil.copytree(FIXTURES / kind, target)
    return target


async def ingest(root: Path, paths: list[Path], name: str = "claude-code", **kw: Any) -> IngestReport:
    async with open_root(root) as svc:
        return await Ingester(svc, vendor(name), **kw).ingest_paths(paths)


async def all_threads(root: Path) -> list[Any]:
    async with open_root(root) as svc:
        return sorted(await svc.all_threads(), key=lambda t: t.created_at)


async def source_events(svc: ThreadService, thread_id: str) -> list[dict[str, Any]]:
    """The thread's events that came from the source (no status, checkpoint, link events)."""
    out = []
    for e in await svc.all_events(thread_id):
        data = e.data()
        if data["type"] in CONVERSATION or data["type"].startswith("x-"):
            out.append({k: v for k, v in data.items() if k not in ("seq", "ts")})
    return out


async def snapshot(root: Path) -> dict[str, Any]:
    """Every thread's manifest essentials and events (no ids, times or signatures)."""
    async with open_root(root) as svc:
        threads = sorted(
            await svc.all_threads(), key=lambda t: (t.metadata.get("source_file", ""), t.created_at)
        )
        view = []
        for t in threads:
            events = [
                {
                    k: v
                    for k, v in e.data().items()
                    if k not in ("seq", "ts", "sha256", "signature", "to_thread_id")
                }
                for e in await svc.all_events(t.thread_id)
            ]
            view.append(
                {
                    "title": t.title,
                    "status": t.status,
                    "source": t.metadata.get("source_file"),
                    "events": events,
                }
            )
        return {"threads": view}
