"""Human output of the operator CLI: rich tables, trees and one-line event summaries.

Only presentation lives here; the data comes from the service. Machine output
(``--json``) never passes through this module.
"""

from __future__ import annotations

import json
from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from .event_types import kind_of, summary_pieces
from .models import Status, Thread

STATUS_STYLE = {
    Status.CREATED: "cyan",
    Status.RUNNING: "bold green",
    Status.PAUSED: "yellow",
    Status.COMPLETED: "green",
    Status.ERROR: "bold red",
    Status.CANCELLED: "magenta",
    Status.CONTINUED: "blue",
}


def ts_short(ts: str | None) -> str:
    """``2026-01-02T03:04:05.123456Z`` as ``2026-01-02 03:04:05``."""
    return ts[:19].replace("T", " ") if ts else "-"


def status_text(status: Status | str) -> Text:
    s = Status(status)
    return Text(s.value, style=STATUS_STYLE.get(s, ""))


def cost_text(cost: float | None) -> str:
    return "-" if cost is None else f"{cost:.4f}".rstrip("0").rstrip(".") if cost else "0"


def ratio_text(thread: Thread) -> str:
    return f"{thread.context().ratio * 100:.0f}%"


def clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def threads_table(threads: list[Thread], *, title: str | None = None, width: int = 160) -> Table:
    """Threads as a table; the agent and link columns appear when ``width`` leaves room."""
    from rich import box

    wide = width >= 120
    table = Table(
        title=title,
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        title_justify="left",
    )
    table.add_column("thread", style="bold", no_wrap=True, min_width=12)
    table.add_column("status", no_wrap=True, min_width=9)
    if wide:
        table.add_column("agent", no_wrap=True, max_width=16, overflow="ellipsis")
    table.add_column("title", max_width=40, overflow="ellipsis", no_wrap=True)
    table.add_column("events", justify="right", no_wrap=True)
    table.add_column("ctx", justify="right", no_wrap=True)
    table.add_column("cost", justify="right", no_wrap=True)
    table.add_column("updated", no_wrap=True, min_width=11)
    if wide:
        table.add_column("links", no_wrap=True, style="dim", overflow="ellipsis")
    for t in threads:
        links = []
        if t.parent_id:
            links.append(f"child of {t.parent_id}")
        if t.continuation_of:
            links.append(f"← {t.continuation_of}")
        if t.continuation_thread_id:
            links.append(f"→ {t.continuation_thread_id}")
        row: list[Any] = [t.thread_id, status_text(t.status)]
        if wide:
            row.append(t.agent_id)
        row += [
            escape(t.title or ""),
            str(t.event_count),
            ratio_text(t),
            cost_text(t.cost),
            ts_short(t.updated_at)[5:16] if not wide else ts_short(t.updated_at)[:16],
        ]
        if wide:
            row.append(" ".join(links))
        table.add_row(*row)
    return table


def manifest_table(t: Thread) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    ctx = t.context()
    rows: list[tuple[str, Any]] = [
        ("thread", t.thread_id),
        ("title", escape(t.title or "-")),
        ("agent", t.agent_id),
        (
            "status",
            Text.assemble(
                status_text(t.status), (f"  ({t.status_reason})" if t.status_reason else "", "dim")
            ),
        ),
        ("directive", escape(clip(t.directive, 300)) if t.directive else "-"),
        ("model", t.model or "-"),
        ("events", str(t.event_count)),
        ("context", f"{ctx.used} of {ctx.window} tokens ({ctx.ratio * 100:.1f}%)"),
        ("cost", cost_text(t.cost)),
        ("created", ts_short(t.created_at)),
        ("updated", ts_short(t.updated_at)),
        ("heartbeat", ts_short(t.heartbeat_at)),
    ]
    if t.budget is not None or t.limits is not None:
        parts = []
        if t.budget is not None:
            parts.append(f"max_spend {t.budget.max_spend}")
        if t.limits is not None:
            parts += [f"{k} {v}" for k, v in t.limits.model_dump(exclude_none=True).items()]
        rows.append(("budget", ", ".join(parts) or "-"))
    if t.forked_from is not None:
        rows.append(("forked from", f"{t.forked_from.thread_id} at seq {t.forked_from.seq}"))
    if t.lease is not None:
        rows.append(("lease", f"{escape(t.lease.owner)} until {ts_short(t.lease.expires_at)}"))
    if t.result is not None:
        rows.append(("result", escape(clip(_compact(t.result), 300))))
    if t.outputs is not None:
        rows.append(("outputs", escape(clip(_compact(t.outputs), 300))))
    if t.metadata:
        rows.append(("metadata", escape(clip(_compact(t.metadata), 300))))
    for k, v in rows:
        table.add_row(k, v)
    return table


def _label(t: Thread, focus: str) -> Text:
    label = Text.assemble(
        (t.thread_id, "bold reverse" if t.thread_id == focus else "bold"),
        " ",
        status_text(t.status),
        (f"  {t.event_count} events", "dim"),
        (f"  {clip(t.title, 40)}" if t.title else "", ""),
    )
    return label


def chain_tree(
    chain: list[Thread],
    *,
    focus: str,
    parent: Thread | None,
    parent_id: str | None,
    children: dict[str, list[Thread]],
) -> Tree:
    """The chain as a small tree: the parent on top, the chain's threads in link order with
    the reason of each link, and each member's children under it."""
    if parent is not None:
        root = Tree(Text.assemble(("parent ", "dim"), _label(parent, focus)))
    elif parent_id:
        root = Tree(Text(f"parent {parent_id} (not in this root)", style="dim"))
    else:
        root = Tree(Text(f"chain {chain[0].chain_root_id}", style="dim"))
    for t in chain:
        how = ""
        if t.continuation_of:
            how = f"{t.link_reason or 'continued'} from {t.continuation_of}: "
        node = root.add(Text.assemble((how, "blue"), _label(t, focus)))
        kids = children.get(t.thread_id, [])
        for kid in kids[:20]:
            node.add(Text.assemble(("child ", "dim"), _label(kid, focus)))
        if len(kids) > 20:
            node.add(Text(f"… and {len(kids) - 20} more children", style="dim"))
    return root


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def event_summary(data: dict[str, Any], width: int = 160) -> Text:
    """One event as ``seq  time  type  what`` (the text clipped to ``width`` unless 0)."""
    etype = data.get("type", "?")

    def c(s: str) -> str:
        return s if width <= 0 else clip(s, width)

    body = Text.assemble(*summary_pieces(data, c))
    return Text.assemble(
        (f"{data.get('seq', ''):>5} ", "dim"),
        (ts_short(data.get("ts")) + " ", "dim"),
        (f"{etype:<14}", kind_of(etype).style),
        " ",
        body,
    )


def hop_rule(from_id: str, to_id: str) -> Text:
    return Text(f"── {from_id} continued in {to_id} ──", style="blue")


def _marked(text: str, width: int, mark: str = "**") -> Text:
    """A snippet whose matches sit between ``mark`` pairs, with the matches in bold."""
    out = Text()
    for i, part in enumerate(clip(text, width).split(mark)):
        out.append(part, style="bold yellow" if i % 2 else "")
    return out


def print_search(console: Any, data: dict[str, Any]) -> None:
    """Search hits as blocks: where (thread, seq, role, time, title), the snippet, the context."""
    hits = data.get("results", []) if isinstance(data, dict) else []
    if not hits:
        console.print(Text("no matches", style="dim"))
        return
    for hit in hits:
        if not isinstance(hit, dict):
            console.print(Text(str(hit)))
            continue
        head = Text.assemble(
            (str(hit.get("thread_id", "?")), "bold"),
            (f" #{hit['seq']}" if "seq" in hit else "", "bold"),
            (f"  {hit['role']}" if hit.get("role") else "", ""),
            (f"  {ts_short(hit.get('ts'))}" if hit.get("ts") else "", "dim"),
            (f"  {clip(str(hit['title']), 60)}" if hit.get("title") else "", "italic"),
            (f"  score {hit['score']:.3g}" if isinstance(hit.get("score"), (int, float)) else "", "dim"),
        )
        console.print(head)

        def ctx_lines(items: Any) -> None:
            for ctx in items or []:
                if isinstance(ctx, dict):
                    who = ctx.get("role") or ctx.get("type", "")
                    console.print(
                        Text(
                            f"      {ctx.get('seq', '')} {who}: {clip(str(ctx.get('text', '')), 160)}",
                            style="dim",
                        )
                    )

        ctx_lines(hit.get("before"))
        console.print(Text("   → ") + _marked(str(hit.get("snippet") or hit.get("text") or ""), 300))
        ctx_lines(hit.get("after") or hit.get("context"))
