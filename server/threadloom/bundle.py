"""Export and import: self-contained JSONL bundles, and legacy single-thread JSONL files.

A bundle is one JSON object per line (docs/operator-cli.md has the full layout)::

    {"kind": "threadloom-bundle", "format": 1, "threadloom": "0.1.0", "exported_at": ..., "threads": N, "events": M}
    {"kind": "chain", "chain_root_id": R, "thread_ids": [...]}          # link order
    {"kind": "thread", "thread": {...manifest and counters...}}
    {"kind": "event", "thread_id": T, "event": {...the transcript line...}}
    ...
    {"kind": "end", "threads": N, "events": M}

Export writes whole chains (and, when asked, every descendant's chain); import keeps ids,
seqs, timestamps and counters, so an export imported into an empty root gives the same
threads byte for byte. A legacy file is one thread: a manifest line (``agentId``,
``createdAt``, ``updatedAt``, ``title``, ``taskId``, ...) and then its events, where a
line without ``type`` is a message.

Import is planned before anything is written: every file is parsed and checked, each
chain is then decided (new, already imported, conflicting) and committed in one
transaction, so a chain is imported whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from . import __version__
from .config import DEFAULT_CONTEXT_WINDOW, DEFAULT_STALE_AFTER
from .errors import InvalidInputError, ThreadloomError
from .event_types import event_text_chars
from .lineage import group_chains
from .models import (
    COUNTER_FIELDS,
    MANIFEST_FIELDS,
    THREAD_ID_RE,
    ResultEvent,
    Status,
    StoredEvent,
    Thread,
    canonical_json,
    check_agent_id,
    event_payload,
    iso,
    new_thread_id,
    parse_event,
    parse_iso,
    render_line,
    utc_now,
)
from .numbers import quote
from .provenance import ImportRecord, SignedSpan, parse_spans
from .service import MAX_LIST, ThreadService

BUNDLE_KIND = "threadloom-bundle"
BUNDLE_FORMAT = 1
PAGE = 1000
EXPORT_FIELDS = MANIFEST_FIELDS | set(COUNTER_FIELDS)
"""What a bundle holds of a thread: the stored manifest and its counters (no derived views)."""
LINK_FIELDS = ("thread_id", "parent_id", "continuation_of", "continuation_thread_id", "chain_root_id")
EVENT_LINK_FIELDS = {
    "handoff": "to_thread_id",
    "continued_from": "from_thread_id",
    "thread_resumed": "to_thread_id",
}
LEGACY_TS_FIELDS = ("ts", "timestamp", "createdAt", "created_at")

Progress = Callable[[int], None]


def _noop(_: int) -> None:
    return None


# ------------------------------------------------------------------- export


@dataclass
class ExportSummary:
    """What an export wrote."""

    threads: int = 0
    events: int = 0
    chains: int = 0
    thread_ids: list[str] = field(default_factory=list)


async def collect_chains(
    service: ThreadService, thread_ids: Iterable[str], *, children: bool = False
) -> dict[str, list[Thread]]:
    """The whole chain of every id (and of every descendant with ``children``), by chain root."""
    chains: dict[str, list[Thread]] = {}
    todo = [await service.get_thread(t) for t in thread_ids]
    while todo:
        thread = todo.pop()
        if thread.chain_root_id in chains:
            continue
        members = await service.chain_members(thread.chain_root_id) or [thread]
        chains[thread.chain_root_id] = members
        if children:
            for m in members:
                cursor = None
                while True:
                    page = await service.list_threads(parent_id=m.thread_id, limit=MAX_LIST, cursor=cursor)
                    todo.extend(k for k in page.threads if k.chain_root_id not in chains)
                    if page.next_cursor is None:
                        break
                    cursor = page.next_cursor
    return chains


async def export_bundle(
    service: ThreadService, chains: dict[str, list[Thread]], out: IO[str], *, progress: Progress = _noop
) -> ExportSummary:
    """Write ``chains`` (from :func:`collect_chains`) as a bundle to ``out``."""
    summary = ExportSummary(chains=len(chains))
    threads = [t for members in chains.values() for t in members]
    summary.threads = len(threads)
    total_events = sum(t.event_count for t in threads)
    signer = service.signer
    records = await service.import_records([t.thread_id for t in threads])
    keys = {signer.key_id: signer.public_pem.decode("ascii")}
    for record in records.values():
        keys.update(record.keys)
    header = {
        "kind": BUNDLE_KIND,
        "format": BUNDLE_FORMAT,
        "threadloom": __version__,
        "exported_at": iso(utc_now()),
        "threads": len(threads),
        "events": total_events,
        "keys": keys,
    }
    out.write(canonical_json(header) + "\n")
    for root in sorted(chains, key=lambda r: (chains[r][0].created_at, r)):
        # the chain as it is now (a handoff may have added a thread since it was listed)
        members = await service.chain_members(root) or chains[root]
        out.write(
            canonical_json(
                {"kind": "chain", "chain_root_id": root, "thread_ids": [t.thread_id for t in members]}
            )
            + "\n"
        )
        for listed in members:
            # the manifest first, then exactly the events it counts: one consistent moment
            thread = (await service.get_threads([listed.thread_id])).get(listed.thread_id, listed)
            events = await _all_events(service, thread.thread_id, upto=thread.event_count)
            rec = {"kind": "thread", "thread": thread.model_dump(mode="json", include=EXPORT_FIELDS)}
            rec["signed_by"] = _signed_by(records.get(thread.thread_id), signer.key_id, thread.event_count)
            out.write(canonical_json(rec) + "\n")
            for ev in events:
                out.write('{"event":' + ev.line + ',"kind":"event","thread_id":"' + ev.thread_id + '"}\n')
            summary.events += len(events)
            summary.thread_ids.append(thread.thread_id)
            progress(1)
    summary.threads = len(summary.thread_ids)  # as written (a chain may have grown since it was listed)
    out.write(canonical_json({"kind": "end", "threads": summary.threads, "events": summary.events}) + "\n")
    return summary


def _signed_by(record: ImportRecord | None, own: str, count: int) -> list[dict[str, Any]]:
    """Which key signed the thread's checkpoints, as spans (provenance.SignedSpan): the ones
    recorded when it was imported here, then this root's own key for what it signed since."""
    spans = [s.model_dump(mode="json") for s in record.spans] if record is not None else []
    if record is None or count > record.events:
        spans.append({"upto": count, "key_id": own})
    return spans


async def _all_events(
    service: ThreadService, thread_id: str, *, upto: int | None = None
) -> list[StoredEvent]:
    """The thread's events in seq order (only seqs up to ``upto`` when given), a page at a time."""
    events: list[StoredEvent] = []
    while upto is None or len(events) < upto:
        want = PAGE if upto is None else min(PAGE, upto - len(events))
        page = await service.stored_events(thread_id, after_seq=len(events), limit=want)
        events.extend(page)
        if len(page) < want:
            break
    return events


# ------------------------------------------------------------------- import


@dataclass
class Candidate:
    """One thread read from a file, ready to import, or the first reason it cannot be."""

    thread: Thread | None
    events: list[StoredEvent]
    where: str  # file:line of its manifest
    error: str | None = None  # the first problem found ...
    error_at: str | None = None  # ... and the file:line it is on
    raw_id: str = "?"
    keys: dict[str, str] = field(default_factory=dict)  # the bundle's public keys (PEM by key id)
    signed_by: list[SignedSpan] = field(default_factory=list)  # which key the bundle says signed what

    def fail(self, where: str, message: str) -> None:
        if self.error is None:
            self.error, self.error_at = message, where

    def refusal(self) -> dict[str, str]:
        return _refusal(self.raw_id, self.error_at or self.where, self.error or "unreadable")


@dataclass
class ImportReport:
    """The outcome of an import: every thread lands in exactly one list."""

    imported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    refused: list[dict[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused and not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "imported": self.imported,
            "skipped": self.skipped,
            "renamed": self.renamed,
            "refused": self.refused,
            "problems": self.problems,
        }


def _norm_ts(value: Any) -> str:
    """A timestamp (ISO 8601 text, or epoch seconds/milliseconds) as threadloom's UTC ISO form."""
    try:
        if isinstance(value, bool):
            raise ValueError("a boolean is not a time")
        if isinstance(value, (int, float)):
            secs = value / 1000 if value > 1e11 else value
            dt = datetime.fromtimestamp(secs, UTC)
        elif isinstance(value, str):
            dt = parse_iso(value.strip())
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
        else:
            raise ValueError(f"{type(value).__name__} is not a time")
    except (ValueError, OverflowError, OSError) as exc:
        raise InvalidInputError(f"{value!r:.80} is not a timestamp ({exc})", rule="import_ts") from None
    return iso(dt)


def _load_line(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(
            f"not valid JSON ({exc.msg} at column {exc.colno})", rule="import_json"
        ) from None
    if not isinstance(data, dict):
        raise InvalidInputError(
            f"a line must be a JSON object; got {type(data).__name__}", rule="import_json"
        )
    return data


def _stored(thread_id: str, seq: int, ts: str, data: dict[str, Any]) -> tuple[StoredEvent, Any]:
    ev = parse_event(data, where="event", allow_server_types=True)
    payload = event_payload(ev)
    return StoredEvent(thread_id, seq, ts, payload["type"], render_line(seq, ts, payload)), ev


def read_source(path: Path) -> list[Candidate]:
    """Parse one file (bundle or legacy) into candidates; a bad line refuses its thread only.

    Raises:
        InvalidInputError: the file cannot be read, or its first line is not a JSON object.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror or exc}", rule="import_file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InvalidInputError(f"{path}:{line}: not UTF-8 text", rule="import_file") from None
    lines = text.splitlines()
    first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if first is None:
        raise InvalidInputError(f"{path}: the file is empty", rule="import_file")
    try:
        head = _load_line(lines[first])
    except InvalidInputError as exc:
        raise InvalidInputError(f"{path}:{first + 1}: {exc.message}", rule="import_file") from None
    if head.get("kind") == BUNDLE_KIND:
        if head.get("format") != BUNDLE_FORMAT:
            raise InvalidInputError(
                f"{path}:{first + 1}: bundle format {quote(head.get('format'))} is not supported by threadloom "
                f"{__version__} (it reads format {BUNDLE_FORMAT})",
                rule="import_format",
            )
        keys = head.get("keys")
        keys = {str(k): v for k, v in keys.items() if isinstance(v, str)} if isinstance(keys, dict) else {}
        cands = _read_bundle(path, lines, first)
        for cand in cands:
            cand.keys = keys
        return cands
    return [_read_legacy(path, lines, first, head)]


class _Bundle:
    """The state of reading one bundle, record by record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.out: list[Candidate] = []
        self.chains: list[tuple[str, list[str], str]] = []
        self.cur: Candidate | None = None
        self.ended = False

    def record(self, rec: dict[str, Any], where: str) -> None:
        kind = rec.get("kind")
        if self.ended:
            raise InvalidInputError("a record after the end record", rule="import_shape")
        if kind == "thread":
            raw = rec.get("thread")
            raw_id = str(raw.get("thread_id", "?")) if isinstance(raw, dict) else "?"
            self.cur = Candidate(None, [], where, raw_id=raw_id)
            self.out.append(self.cur)
            try:
                thread = Thread.model_validate(raw)
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = ".".join(str(p) for p in err["loc"]) or "thread"
                raise InvalidInputError(
                    f"manifest field {loc}: {err['msg']}", rule="import_manifest"
                ) from None
            if not THREAD_ID_RE.fullmatch(thread.thread_id):
                raise InvalidInputError(
                    f"thread_id {quote(raw_id)} is not 12 hex digits", rule="import_manifest"
                )
            self.cur.thread = thread
            self.cur.signed_by = parse_spans(rec.get("signed_by"))
        elif kind == "event":
            cur = self.cur
            if cur is None:
                raise InvalidInputError("an event before any thread record", rule="import_shape")
            if cur.error is not None or cur.thread is None:
                return
            tid = cur.thread.thread_id
            if rec.get("thread_id") != tid:
                raise InvalidInputError(
                    f"event of thread {quote(rec.get('thread_id'))} inside thread {tid}", rule="import_shape"
                )
            data = rec.get("event")
            if not isinstance(data, dict):
                raise InvalidInputError("'event' must be a JSON object", rule="import_shape")
            data = dict(data)
            seq, ts = data.pop("seq", None), data.pop("ts", None)
            if seq != len(cur.events) + 1:
                raise InvalidInputError(
                    f"seq {quote(seq)} where {len(cur.events) + 1} was expected (seqs are gapless from 1)",
                    rule="import_seq",
                )
            if not isinstance(ts, str):
                raise InvalidInputError("the event has no ts", rule="import_ts")
            _norm_ts(ts)
            cur.events.append(_stored(tid, seq, ts, data)[0])
        elif kind == "chain":
            ids = rec.get("thread_ids")
            if not isinstance(ids, list) or not all(isinstance(t, str) for t in ids):
                raise InvalidInputError("'thread_ids' must be a list of thread ids", rule="import_shape")
            self.chains.append((str(rec.get("chain_root_id")), ids, where))
            self.cur = None
        elif kind == "end":
            self.ended = True
            self.cur = None
        else:
            raise InvalidInputError(f"unknown record kind {quote(kind)}", rule="import_shape")


def _read_bundle(path: Path, lines: list[str], first: int) -> list[Candidate]:
    b = _Bundle(path)
    for i in range(first + 1, len(lines)):
        if not lines[i].strip():
            continue
        where = f"{path}:{i + 1}"
        try:
            b.record(_load_line(lines[i]), where)
        except ThreadloomError as exc:
            if b.cur is not None:
                b.cur.fail(where, exc.message)
            else:
                b.out.append(Candidate(None, [], where, error=exc.message, error_at=where))
    for cand in b.out:
        if cand.error is None and cand.thread is not None and len(cand.events) != cand.thread.event_count:
            cand.fail(
                cand.where,
                f"thread {cand.thread.thread_id} has event_count {cand.thread.event_count} but the bundle "
                f"holds {len(cand.events)} of its events (truncated?)",
            )
    present = {c.thread.thread_id for c in b.out if c.thread is not None}
    for root, ids, where in b.chains:
        lost = [t for t in ids if t not in present]
        for cand in b.out:
            if lost and cand.thread is not None and cand.thread.chain_root_id == root:
                cand.fail(
                    where, f"chain {root} lists thread(s) {', '.join(lost)} that the bundle does not hold"
                )
    if not b.ended:
        where = f"{path}:{len(lines)}"
        b.out.append(
            Candidate(None, [], where, error="the bundle has no end record (truncated?)", error_at=where)
        )
    return b.out


def _legacy_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and isinstance(block.get("text"), str):
                parts.append(block["text"])
            else:
                raise InvalidInputError(
                    f"message content holds a non-text block {block!r:.80}; untyped lines are read as text "
                    "messages (give tool calls a 'type')",
                    rule="import_legacy",
                )
        return "\n".join(parts)
    raise InvalidInputError(
        f"message content must be text; got {type(content).__name__}", rule="import_legacy"
    )


def legacy_thread_id(manifest: dict[str, Any]) -> str:
    """The id of a legacy thread: its own if it is a threadloom id, else derived from the
    manifest's identity (agent, creation time, task), so that importing again is a no-op."""
    for key in ("thread_id", "threadId", "id"):
        value = manifest.get(key)
        if isinstance(value, str) and THREAD_ID_RE.fullmatch(value):
            return value
    ident = [manifest.get(k) for k in ("agentId", "agent_id", "createdAt", "created_at", "taskId", "task_id")]
    if all(v is None for v in ident):
        ident = [canonical_json(manifest)]
    return hashlib.sha256(canonical_json(["threadloom-legacy", ident]).encode()).hexdigest()[:12]


_LEGACY_MANIFEST = {
    "agentId": "agent_id",
    "agent_id": "agent_id",
    "createdAt": "created_at",
    "created_at": "created_at",
    "updatedAt": "updated_at",
    "updated_at": "updated_at",
    "title": "title",
    "directive": "directive",
    "model": "model",
    "status": "status",
    "parentId": "parent_id",
    "parent_id": "parent_id",
    "result": "result",
    "outputs": "outputs",
    "cost": "cost",
    "metadata": "metadata",
    "taskId": "task_id",
    "task_id": "task_id",
}


def _legacy_event(data: dict[str, Any], ts: str | None) -> tuple[dict[str, Any], str | None]:
    """One legacy event line as a threadloom event (and its time, else the previous one)."""
    for key in LEGACY_TS_FIELDS:
        if key in data:
            ts = _norm_ts(data[key])
            break
    data = {k: v for k, v in data.items() if k not in LEGACY_TS_FIELDS and k != "seq"}
    if "type" not in data:
        if "content" in data and "text" not in data:
            data["text"] = _legacy_text(data.pop("content"))
        data = {"type": "message", **data}
    return data, ts


def _legacy_manifest(
    tid: str, head: dict[str, Any], events: list[StoredEvent], counters: tuple[int, int | None]
) -> Thread:
    fields: dict[str, Any] = {}
    legacy: dict[str, Any] = {}
    for key, value in head.items():
        name = _LEGACY_MANIFEST.get(key)
        if name is not None:
            fields[name] = value
        elif not (key in ("thread_id", "threadId", "id") and value == tid):
            legacy[key] = value
    agent = fields.get("agent_id", "default")
    check_agent_id(agent)
    if "created_at" in fields:
        created = _norm_ts(fields["created_at"])
    elif events:
        created = events[0].ts
    else:
        raise InvalidInputError("the manifest has no createdAt and the file no events", rule="import_ts")
    updated = (
        _norm_ts(fields["updated_at"]) if "updated_at" in fields else (events[-1].ts if events else created)
    )
    status_raw = fields.get("status")
    try:
        status = Status(status_raw) if status_raw is not None else Status.COMPLETED
    except ValueError:
        status = Status.COMPLETED
    if status_raw is not None and (status.value != status_raw or status == Status.CONTINUED):
        legacy["status"] = status_raw  # unknown, or 'continued' without its link: kept, not applied
        status = Status.COMPLETED
    metadata = dict(fields["metadata"]) if isinstance(fields.get("metadata"), dict) else {}
    if "metadata" in fields and not isinstance(fields["metadata"], dict):
        legacy["metadata"] = fields["metadata"]
    if "task_id" in fields:
        metadata["task_id"] = fields["task_id"]
    parent = fields.get("parent_id")
    if parent is not None and not (isinstance(parent, str) and THREAD_ID_RE.fullmatch(parent)):
        legacy["parentId"] = parent
        parent = None
    cost = fields.get("cost")
    if cost is not None and (isinstance(cost, bool) or not isinstance(cost, (int, float)) or cost < 0):
        legacy["cost"] = cost
        cost = None
    if legacy:
        metadata["legacy"] = legacy
    return Thread(
        thread_id=tid,
        agent_id=agent,
        title=_opt_str(fields.get("title")),
        directive=_opt_str(fields.get("directive")),
        model=_opt_str(fields.get("model")),
        parent_id=parent,
        status=status,
        status_reason="imported",
        context_window=DEFAULT_CONTEXT_WINDOW,
        stale_after=DEFAULT_STALE_AFTER,
        result=fields.get("result"),
        outputs=fields.get("outputs"),
        cost=cost,
        metadata=metadata,
        chain_root_id=tid,
        created_at=created,
        updated_at=updated,
        heartbeat_at=updated,
        event_count=len(events),
        text_chars=counters[0],
        input_tokens=counters[1],
        version=1,
    )


def _read_legacy(path: Path, lines: list[str], first: int, head: dict[str, Any]) -> Candidate:
    tid = legacy_thread_id(head)
    cand = Candidate(None, [], f"{path}:{first + 1}", raw_id=tid)
    ts: str | None = None
    if "createdAt" in head or "created_at" in head:
        try:
            ts = _norm_ts(head.get("createdAt", head.get("created_at")))
        except ThreadloomError as exc:
            cand.fail(cand.where, f"createdAt: {exc.message}")
            return cand
    text_chars = 0
    input_tokens: int | None = None
    for i in range(first + 1, len(lines)):
        if not lines[i].strip():
            continue
        where = f"{path}:{i + 1}"
        try:
            data, ts = _legacy_event(_load_line(lines[i]), ts)
            if ts is None:
                raise InvalidInputError(
                    "the event has no time and the manifest no createdAt", rule="import_ts"
                )
            stored, ev = _stored(tid, len(cand.events) + 1, ts, data)
        except ThreadloomError as exc:
            cand.fail(where, exc.message)
            return cand
        cand.events.append(stored)
        text_chars += event_text_chars(ev)
        if isinstance(ev, ResultEvent) and ev.input_tokens is not None:
            input_tokens = ev.input_tokens
    try:
        cand.thread = _legacy_manifest(tid, head, cand.events, (text_chars, input_tokens))
    except ThreadloomError as exc:
        cand.fail(cand.where, exc.message)
    except ValidationError as exc:
        err = exc.errors()[0]
        cand.fail(cand.where, f"manifest field {'.'.join(str(p) for p in err['loc'])}: {err['msg']}")
    return cand


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _lines(events: list[StoredEvent]) -> list[str]:
    return [e.line for e in events]


def _refusal(thread_id: str, where: str, error: str) -> dict[str, str]:
    return {"thread_id": thread_id, "where": where, "error": error}


def _same(existing: Thread, cand: Thread) -> bool:
    a = existing.model_dump(mode="json", include=EXPORT_FIELDS)
    b = cand.model_dump(mode="json", include=EXPORT_FIELDS)
    b["version"] = max(1, b["version"])
    return a == b


def _rename(
    thread: Thread, events: list[StoredEvent], ids: dict[str, str]
) -> tuple[Thread, list[StoredEvent]]:
    """Rewrite every thread id in ``ids`` inside a manifest and its server events."""
    changes = {f: ids[v] for f in LINK_FIELDS if (v := getattr(thread, f)) in ids}
    thread = thread.model_copy(update=changes)
    out = []
    for ev in events:
        data = ev.data()
        key = EVENT_LINK_FIELDS.get(ev.type)
        if key and data.get(key) in ids:
            data[key] = ids[data[key]]
        seq, ts = data.pop("seq"), data.pop("ts")
        out.append(StoredEvent(thread.thread_id, seq, ts, ev.type, render_line(seq, ts, data)))
    return thread, out


async def import_files(
    service: ThreadService,
    paths: list[Path],
    *,
    rename: bool = False,
    progress: Progress = _noop,
    on_total: Callable[[int], None] = _noop,
) -> ImportReport:
    """Import bundles and legacy files; each chain commits whole or not at all.

    A chain whose threads all exist already with the same content is skipped (import is
    idempotent); one that conflicts with different threads of the same ids is refused,
    or, with ``rename``, imported under new ids (links rewritten).

    Raises:
        InvalidInputError: a file cannot be read at all (nothing is imported then).
    """
    report = ImportReport()
    cands: list[Candidate] = []
    for path in paths:
        cands.extend(read_source(path))
    good: dict[str, Candidate] = {}
    bad_roots: set[str] = set()
    for c in cands:
        if c.error is None and c.thread is not None and c.thread.thread_id in good:
            first = good[c.thread.thread_id]
            assert first.thread is not None
            if not (_same(first.thread, c.thread) and _lines(first.events) == _lines(c.events)):
                c.fail(
                    c.where,
                    f"thread {c.raw_id} appears again with different content (first at {first.where})",
                )
                first.fail(
                    first.where,
                    f"thread {c.raw_id} appears twice with different content (again at {c.where})",
                )
                report.refused.append(first.refusal())
            else:
                continue  # the same thread in two files: import it once
        if c.error is not None or c.thread is None:
            if c.thread is None and c.raw_id == "?":
                report.problems.append(f"{c.error_at or c.where}: {c.error or 'unreadable'}")
            else:
                report.refused.append(c.refusal())
            if c.thread is not None:
                bad_roots.add(c.thread.chain_root_id)
            continue
        good[c.thread.thread_id] = c
    for tid, c in list(good.items()):
        if c.error is not None:  # it turned out to have a twin with other content
            del good[tid]
    groups = group_chains(c.thread for c in good.values() if c.thread is not None)
    on_total(sum(len(m) for m in groups.values()))
    renames: dict[str, str] = {}
    plans: list[list[str]] = []
    for root, members in groups.items():
        ids = [t.thread_id for t in members]
        if root in bad_roots:
            for tid in ids:
                report.refused.append(
                    _refusal(tid, good[tid].where, f"another thread of chain {root} was refused")
                )
            progress(len(ids))
            continue
        existing = await service.get_threads(ids)
        if not existing:
            plans.append(ids)
            continue
        if len(existing) == len(ids) and all(
            [
                _same(existing[t], good[t].thread)
                and _lines(await _all_events(service, t)) == _lines(good[t].events)  # type: ignore[arg-type]
                for t in ids
            ]
        ):
            report.skipped.extend(ids)
            progress(len(ids))
            continue
        if not rename:
            for tid in ids:
                what = (
                    "exists in this root with different content"
                    if tid in existing
                    else f"belongs to chain {root}, part of which exists in this root with different content"
                )
                report.refused.append(
                    _refusal(tid, good[tid].where, f"thread {tid} {what}; import with --rename to keep both")
                )
            progress(len(ids))
            continue
        for tid in ids:
            renames[tid] = new_thread_id()
        plans.append(ids)
    for ids in plans:
        batch = [
            _rename(good[t].thread, good[t].events, renames)
            if renames
            # type: ignore[arg-type]
            else (good[t].thread, good[t].events)
            for t in ids
        ]
        keys: dict[str, str] = {}
        for t in ids:
            keys.update(good[t].keys)
        try:
            await service.import_threads(  # type: ignore[arg-type]
                batch,
                index=False,
                keys=keys,
                renamed={renames[t]: t for t in ids if t in renames},
                declared={renames.get(t, t): good[t].signed_by for t in ids},
            )
        except ThreadloomError as exc:
            for tid in ids:
                report.refused.append(_refusal(tid, good[tid].where, exc.message))
        else:
            for tid in ids:
                report.imported.append(renames.get(tid, tid))
                if tid in renames:
                    report.renamed[tid] = renames[tid]
        progress(len(ids))
    if report.imported:
        await service.index_imported()
    return report


def check_output(path: Path, root: Path, *, force: bool = False) -> None:
    """Refuse an export target inside ``root`` (always) or one that exists (unless ``force``).

    The path is resolved first (symlinks followed), so a link into the root is refused too.

    Raises:
        InvalidInputError: ``export_output_in_root`` or ``export_output_exists``.
    """
    target, home = path.resolve(), Path(root).resolve()
    if target == home or home in target.parents:
        raise InvalidInputError(
            f"{path} is inside the root {home}, beside the live database, keys and mirrors: "
            "write the export outside the root (this is refused even with --force)",
            rule="export_output_in_root",
        )
    if path.is_dir():
        raise InvalidInputError(f"{path} is a folder: give a file name", rule="export_output_exists")
    if (path.exists() or path.is_symlink()) and not force:
        raise InvalidInputError(
            f"{path} exists already: pass --force to replace it, or choose another name "
            "(an export never overwrites a file unasked)",
            rule="export_output_exists",
        )


@contextmanager
def atomic_output(path: Path) -> Iterator[IO[str]]:
    """A text file written beside ``path`` and renamed into place only if the block succeeds."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
