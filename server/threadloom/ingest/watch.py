"""``threadloom ingest ... --watch``: follow live sessions and ingest new lines as they come.

File-system notifications (``watchfiles``: inotify, FSEvents, ReadDirectoryChangesW)
wake the loop within :data:`DEBOUNCE_MS` of a write; without them the session files are
polled every :data:`POLL_INTERVAL` seconds. Every :data:`SWEEP_INTERVAL` seconds all the
watched files are looked at again, so that sessions that went idle are marked completed.
One loop does all of it, so one file is never ingested twice at the same time.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from .runner import Ingester, IngestReport

DEBOUNCE_MS = 50
POLL_INTERVAL = 0.25
SWEEP_INTERVAL = 60.0


def _watched(ing: Ingester, paths: list[Path] | None) -> tuple[list[Path], set[Path] | None]:
    """(folders to watch, the only files to ingest, or None for every session file in them)."""
    targets = list(paths) if paths else ing.vendor.default_paths()
    files = {p.resolve() for p in targets if p.is_file()}
    dirs = [p for p in targets if p.is_dir()] + sorted({f.parent for f in files})
    return dirs, (files if files and len(files) == len(targets) else None)


def _wanted(ing: Ingester, path: Path, only: set[Path] | None) -> bool:
    if only is not None:
        return path.resolve() in only
    return fnmatch.fnmatch(path.name, ing.vendor.pattern) and path.is_file()


async def _ingest(ing: Ingester, files: set[Path], on_report: Callable[[IngestReport], Any]) -> None:
    if not files:
        return
    report = IngestReport(ing.vendor.name)
    for f in ing.vendor.discover(sorted(files)):
        await ing.ingest_file(f, report)
    if report.lines or report.problems or report.rewritten or report.completed:
        on_report(report)


async def watch_sessions(
    ing: Ingester,
    paths: list[Path] | None,
    *,
    on_report: Callable[[IngestReport], Any],
    stop: anyio.Event | None = None,
) -> None:
    """Ingest new lines of the session files under ``paths`` until ``stop`` is set (or forever)."""
    dirs, only = _watched(ing, paths)
    if not dirs:
        return
    try:
        import watchfiles
    except ImportError:  # pragma: no cover - watchfiles is a dependency; polling is the fallback
        watchfiles = None
    last_sweep = -SWEEP_INTERVAL  # the first wake looks at everything: a write before the watch began counts
    if watchfiles is not None:
        async for changes in watchfiles.awatch(
            *dirs,
            debounce=DEBOUNCE_MS,
            step=10,
            stop_event=stop,
            rust_timeout=1000,
            yield_on_timeout=True,
            recursive=True,
        ):
            files = {Path(p) for _, p in changes if _wanted(ing, Path(p), only)}
            if time.monotonic() - last_sweep >= SWEEP_INTERVAL:
                last_sweep = time.monotonic()
                files |= {f for d in dirs for f in ing.vendor.discover([d]) if _wanted(ing, f, only)}
            await _ingest(ing, files, on_report)
        return
    seen: dict[Path, tuple[int, int]] = {}
    while stop is None or not stop.is_set():
        sweep = time.monotonic() - last_sweep >= SWEEP_INTERVAL
        if sweep:
            last_sweep = time.monotonic()
        files = set()
        for f in (f for d in dirs for f in ing.vendor.discover([d]) if _wanted(ing, f, only)):
            try:
                st = f.stat()
            except OSError:
                continue
            key = (st.st_size, st.st_mtime_ns)
            if seen.get(f) != key or sweep:
                seen[f] = key
                files.add(f)
        await _ingest(ing, files, on_report)
        await anyio.sleep(POLL_INTERVAL)
