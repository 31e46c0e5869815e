"""The ``threadloom ingest`` command's body: options, the run, and its report."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from .runner import IngestReport

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str | None, now: float | None = None) -> float | None:
    """``--since``: an ISO date or time (UTC unless it says otherwise), or an age like 7d, 12h, 30m."""
    if value is None:
        return None
    text = value.strip()
    now = time.time() if now is None else now
    m = _RELATIVE.match(text)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(
            f"--since takes an ISO date or time (2025-06-01, 2025-06-01T10:00) or an age "
            f"(30m, 12h, 7d, 2w); got {value!r:.100}",
            rule="since_format",
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def summary_lines(report: IngestReport) -> list[str]:
    """The human report: one summary line, then what needs a look."""
    head = (
        f"{report.vendor}: {report.files} file(s), {report.files_changed} with new lines; "
        f"{report.lines} line(s) read, {report.events} event(s) appended, "
        f"{len(report.threads_created)} thread(s) created"
    )
    extra = []
    if report.children:
        extra.append(f"{report.children} as children")
    if report.continuations:
        extra.append(f"{report.continuations} continuation link(s)")
    if report.completed:
        extra.append(f"{report.completed} completed")
    if extra:
        head += " (" + ", ".join(extra) + ")"
    out = [head]
    if report.skipped:
        out.append(
            "skipped lines by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(report.skipped.items()))
        )
    if report.custom:
        out.append(
            "kept as custom events: " + ", ".join(f"{k} {v}" for k, v in sorted(report.custom.items()))
        )
    if report.truncated_events:
        out.append(
            f"{report.truncated_events} event(s) cut to fit max_event_bytes (the source files keep them)"
        )
    for m in report.malformed:
        out.append(f"malformed line {m['file']}:{m['line']}: {m['error']} (skipped; the rest was ingested)")
    if report.malformed_count > len(report.malformed):
        out.append(f"... {report.malformed_count - len(report.malformed)} more malformed line(s)")
    for r in report.rewritten:
        out.append(f"changed since it was ingested: {r['file']}: {r['reason']} (not ingested again)")
    for b in report.busy:
        out.append(f"busy: {b} is being ingested by another process (its lines are picked up there)")
    for p in report.problems:
        out.append(f"problem: {p}")
    return out


def report_json(report: IngestReport) -> dict[str, Any]:
    return report.as_dict()


def expand(paths: list[Path] | None) -> list[Path] | None:
    return [Path(p).expanduser() for p in paths] if paths else None
