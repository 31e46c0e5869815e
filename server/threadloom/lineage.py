"""Chains and families of threads as the operator sees them: pure functions over manifests.

A chain is every thread sharing one ``chain_root_id``; its order is the order of its
forward links (``continuation_thread_id``) from the root, then any member no link
reaches (a damaged chain still shows all of its threads). A cycle never hangs the walk.
"""

from __future__ import annotations

from collections.abc import Iterable

from .models import Thread


def order_chain(members: Iterable[Thread]) -> list[Thread]:
    """The members of one chain in link order from its root, then strays by creation time."""
    by_id = {t.thread_id: t for t in members}
    if not by_id:
        return []
    roots = {t.chain_root_id for t in by_id.values()}
    root_id = roots.pop() if len(roots) == 1 else None
    first = by_id.get(root_id) if root_id else None
    if first is None:  # the root is gone: start from the oldest member nothing links to
        linked = {t.continuation_thread_id for t in by_id.values()}
        heads = [t for t in by_id.values() if t.thread_id not in linked] or list(by_id.values())
        first = min(heads, key=lambda t: (t.created_at, t.thread_id))
    ordered: list[Thread] = []
    seen: set[str] = set()
    cur: Thread | None = first
    while cur is not None and cur.thread_id not in seen:
        ordered.append(cur)
        seen.add(cur.thread_id)
        cur = by_id.get(cur.continuation_thread_id or "")
    strays = sorted(
        (t for t in by_id.values() if t.thread_id not in seen), key=lambda t: (t.created_at, t.thread_id)
    )
    return ordered + strays


def group_chains(threads: Iterable[Thread]) -> dict[str, list[Thread]]:
    """Threads grouped by ``chain_root_id``, each group in chain order."""
    groups: dict[str, list[Thread]] = {}
    for t in threads:
        groups.setdefault(t.chain_root_id, []).append(t)
    return {root: order_chain(members) for root, members in groups.items()}


def chain_end(ordered: list[Thread]) -> Thread:
    """The thread the chain's links end at (the last linked member)."""
    end = ordered[0]
    seen = {end.thread_id}
    by_id = {t.thread_id: t for t in ordered}
    while end.continuation_thread_id in by_id and end.continuation_thread_id not in seen:
        end = by_id[end.continuation_thread_id]
        seen.add(end.thread_id)
    return end
