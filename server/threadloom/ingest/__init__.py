"""Ingest of coding-agent sessions (Claude Code, Codex) into threads (docs/ingest.md).

Nothing here touches the store: every write goes through :class:`ThreadService`. The
names below are loaded on first use, so that the Claude Code hook
(:mod:`.hook`) starts without the service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["IDLE_AFTER", "VENDORS", "IngestReport", "Ingester", "Vendor", "vendor"]

_WHERE = {
    "IDLE_AFTER": "runner",
    "IngestReport": "runner",
    "Ingester": "runner",
    "Vendor": "runner",
    "VENDORS": "vendors",
    "vendor": "vendors",
}

if TYPE_CHECKING:
    from .runner import IDLE_AFTER, Ingester, IngestReport, Vendor
    from .vendors import VENDORS, vendor


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'threadloom.ingest' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
