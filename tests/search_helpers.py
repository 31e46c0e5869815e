"""What the storage-layout tests compare before and after a migration: every search answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from threadloom.service import ThreadService

WORDS = "walrus kelp tide harbour lantern gravel orchid copper falcon meadow".split()
QUERIES = ["walrus", "kelp tide", '"harbour lantern"', "orch*", "copper OR falcon", "meadow -gravel"]


async def search_answers(svc: ThreadService, ids: list[str], queries: Sequence[str] = QUERIES) -> list[Any]:
    """Both searches for each query (text and regex over the chain of ``ids[1]``), as dumps."""
    out: list[Any] = []
    for q in queries:
        out.append((await svc.search_threads(q, limit=10, context=1)).model_dump())
        out.append((await svc.search_threads(q, agent_id="agent1", limit=10)).model_dump())
        for search_type in ("text", "regex"):
            pattern = q if search_type == "text" else "w[a-z]+s"
            res = await svc.chain_search(
                ids[1], pattern, search_type=search_type, include_tools=True, limit=50
            )
            out.append(res.model_dump())
    return out
