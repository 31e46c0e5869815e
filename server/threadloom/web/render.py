"""Jinja2 environment of the inspector: autoescaping everywhere, formatting filters."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from ..models import ENDED, Status, Thread, parse_iso
from . import markup

LIVE_STATUSES = frozenset(s for s in Status if s not in ENDED)
"""Statuses whose rows and badges the pages keep up to date."""


def ago(ts: str | None, now: datetime | None = None) -> str:
    """``ts`` as a short age ("12 s ago", "3 min ago", "5 h ago", "2 d ago")."""
    if not ts:
        return "-"
    try:
        then = parse_iso(ts)
    except ValueError:
        return ts
    secs = max(0.0, ((now or datetime.now(UTC)) - then).total_seconds())
    if secs < 60:
        return f"{secs:.0f} s ago"
    if secs < 3600:
        return f"{secs // 60:.0f} min ago"
    if secs < 86400:
        return f"{secs // 3600:.0f} h ago"
    return f"{secs // 86400:.0f} d ago"


def short_ts(ts: str | None) -> str:
    return ts[:19].replace("T", " ") if ts else "-"


def cost(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}".rstrip("0").rstrip(".") if value else "0"


def spent(thread: Thread) -> float | None:
    """The thread's cost as reported at its end, else what its result events add up to."""
    if thread.cost is not None:
        return thread.cost
    return thread.usage.actual_spend or None


def pct(ratio: float) -> str:
    return f"{ratio * 100:.0f}%" if ratio >= 0.01 or ratio == 0 else "<1%"


def num(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def title_of(thread: Any) -> str:
    """The thread's title, else the first line of its directive, else its id."""
    title = getattr(thread, "title", None)
    if title:
        return str(title)
    directive = (getattr(thread, "directive", None) or "").strip()
    if directive:
        return directive.splitlines()[0][:120]
    return str(thread.thread_id)


def pretty_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True)


def asset_version() -> str:
    """A short hash of the shipped CSS and JS: their URLs change whenever they do."""
    import hashlib
    from pathlib import Path

    digest = hashlib.sha256()
    for name in ("app.css", "app.js"):
        digest.update((Path(__file__).parent / "static" / name).read_bytes())
    return digest.hexdigest()[:10]


def make_env() -> Environment:
    env = Environment(
        loader=PackageLoader("threadloom.web", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        md=markup.markdown,
        pre=markup.pre,
        snippet=markup.snippet,
        ago=ago,
        short_ts=short_ts,
        cost=cost,
        spent=spent,
        pct=pct,
        num=num,
        title_of=title_of,
        pretty_json=pretty_json,
    )
    env.globals.update(
        LIVE_STATUSES=LIVE_STATUSES, statuses=[s.value for s in Status], version=asset_version()
    )
    return env
