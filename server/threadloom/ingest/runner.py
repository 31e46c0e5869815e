"""Ingest session files into threads, incrementally and idempotently, through the service.

For each source file: take its lock, load its state, check that the bytes read before
are unchanged (a truncated or rewritten file is reported and left alone, never read
twice), read the complete new lines, let the vendor's reader turn them into steps, and
carry the steps out with the service:

* events are appended in chunks, each under an idempotency key made of the source file
  and the byte offset where the run started; that range is written to the state first
  (``pending``), so a run that died after a commit replays the same chunks and the
  service answers with the original seqs instead of writing them twice;
* a compaction hands the thread off (reason ``compaction``): the session goes on in the
  next thread of its chain;
* a session whose last line is older than ``idle_after`` (or that the hook reports
  ended) is marked ``completed``, so it can be resumed; when it goes on later, it is
  continued by ``resume`` in a new thread of the same chain;
* a subagent or spawned session becomes a child thread of its parent session's thread.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import (
    InvalidStateError,
    LimitExceededError,
    NotFoundError,
    ThreadContinuedError,
    ThreadloomError,
)
from ..models import TERMINAL, Status, canonical_json, parse_event
from ..service import ThreadService
from .mapping import Reader, Step, fit_event
from .state import LOCK_WAIT, SourceState, StateStore, source_key, window_hashes

IDLE_AFTER = 1800.0
"""Seconds after its last line at which a session counts as finished (``completed``)."""
CHUNK_EVENTS = 200
CHUNK_BYTES = 2_000_000
RESUMED_TEXT = (
    "[threadloom ingest: this {vendor} session went on after it had been idle; "
    "what follows was read from its source file]"
)
DEFAULT_WINDOW = 200_000
LARGE_WINDOW = 1_000_000
MAX_REPORTED = 200
"""Most malformed lines listed in a report (the count is always whole)."""


@dataclass
class Vendor:
    """How one tool's session files are found and related."""

    name: str
    reader: type[Reader]
    discover: Callable[[list[Path]], list[Path]]
    default_paths: Callable[[], list[Path]]
    session_key: Callable[[Path, dict[str, Any]], str]
    parent_session: Callable[[Path, dict[str, Any]], str | None]
    parent_file: Callable[[Path, str], Path | None]
    pattern: str = "*.jsonl"
    """The names of its session files (for --watch)."""
    resumed_from: Callable[[Path, list[dict[str, Any]], StateStore], Any] | None = None
    """(index entry, uuids copied) when a new file begins with a copy of an older session."""


@dataclass
class IngestReport:
    """What a run did, for ``--json`` and the summary line."""

    vendor: str
    files: int = 0
    files_changed: int = 0
    lines: int = 0
    events: int = 0
    threads_created: list[str] = field(default_factory=list)
    continuations: int = 0
    children: int = 0
    completed: int = 0
    truncated_events: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    custom: Counter[str] = field(default_factory=Counter)
    malformed: list[dict[str, Any]] = field(default_factory=list)
    malformed_count: int = 0
    rewritten: list[dict[str, Any]] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "vendor": self.vendor,
            "files": self.files,
            "files_changed": self.files_changed,
            "lines": self.lines,
            "events": self.events,
            "threads_created": self.threads_created,
            "continuations": self.continuations,
            "children": self.children,
            "completed": self.completed,
            "truncated_events": self.truncated_events,
            "skipped": dict(sorted(self.skipped.items())),
            "custom_events": dict(sorted(self.custom.items())),
            "malformed": self.malformed,
            "malformed_count": self.malformed_count,
            "rewritten": self.rewritten,
            "busy": self.busy,
            "problems": self.problems,
        }


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _split_lines(data: bytes) -> tuple[list[bytes], int]:
    """Complete lines of ``data`` and the bytes they span; a last line without a newline
    counts only when it already parses (otherwise it is still being written)."""
    lines = data.split(b"\n")
    tail = lines.pop()
    used = len(data) - len(tail)
    if tail.strip():
        try:
            json.loads(tail)
        except ValueError:
            return lines, used
        lines.append(tail)
        used = len(data)
    return lines, used


class Ingester:
    """Ingests one vendor's session files into the service's store."""

    def __init__(
        self,
        service: ThreadService,
        vendor: Vendor,
        *,
        idle_after: float = IDLE_AFTER,
        clock: Callable[[], float] = time.time,
        lock_wait: float = LOCK_WAIT,
    ) -> None:
        self.svc = service
        self.vendor = vendor
        self.states = StateStore(service.settings.root)
        self.idle_after = idle_after
        self.clock = clock
        self.lock_wait = lock_wait
        self.limit = service.settings.max_event_bytes
        self._active: set[Path] = set()

    async def ingest_paths(
        self,
        paths: list[Path] | None = None,
        *,
        since: float | None = None,
        report: IngestReport | None = None,
        progress: Callable[[int], None] | None = None,
        on_total: Callable[[int], None] | None = None,
    ) -> IngestReport:
        """Ingest every session file under ``paths`` (default: the tool's own folders)."""
        report = report or IngestReport(self.vendor.name)
        files = self.vendor.discover(list(paths) if paths else self.vendor.default_paths())
        if since is not None:
            files = [f for f in files if _mtime(f) >= since]
        if on_total:
            on_total(len(files))
        for f in files:
            try:
                await self.ingest_file(f, report)
            except Exception as exc:  # one bad file never stops the others; the next run retries it
                report.problems.append(f"{f}: not ingested: {type(exc).__name__}: {exc}"[:1000])
            if progress:
                progress(1)
        return report

    async def ingest_file(
        self, path: Path, report: IngestReport, *, finish: bool = False, flush: bool = False
    ) -> None:
        """Ingest what is new in one session file (see the module docstring).

        ``finish``: the session ended (mark it completed); ``flush``: a turn ended (write
        a held-back usage now instead of at the next output).
        """
        path = Path(path).resolve()
        if path in self._active:  # a parent looked up while it is being ingested
            return
        self._active.add(path)
        try:
            with self.states.lock(path, self.lock_wait) as locked:
                if not locked:
                    report.busy.append(str(path))
                    return
                await self._ingest_locked(path, report, finish, flush)
        finally:
            self._active.discard(path)

    async def _ingest_locked(self, path: Path, report: IngestReport, finish: bool, flush: bool) -> None:
        st = self.states.load(path, self.vendor.name)
        report.files += 1
        if st.rewritten:
            report.rewritten.append({"file": str(path), "reason": st.rewritten, "noticed_before": True})
            return
        try:
            f = open(path, "rb")
        except OSError as exc:
            report.problems.append(f"{path}: cannot read: {exc.strerror or exc}")
            return
        with f:
            size = f.seek(0, 2)
            if st.offset:
                reason = None
                if size < st.offset:
                    reason = f"truncated: it has {size} bytes, {st.offset} were read before"
                elif window_hashes(f, st.offset) != (st.head_sha256, st.tail_sha256):
                    reason = "rewritten: the bytes read before have changed"
                if reason:
                    st.rewritten = reason
                    self.states.save(st)
                    report.rewritten.append({"file": str(path), "reason": reason, "noticed_before": False})
                    return
            end = size if st.pending is None else min(size, int(st.pending["end"]))
            f.seek(st.offset)
            data = f.read(max(0, end - st.offset))
            lines, used = _split_lines(data)
            reader = self.vendor.reader(st.parser)
            first_line = st.line
            parsed: list[tuple[int, dict[str, Any]]] = []
            for i, raw in enumerate(lines):
                lineno = first_line + i + 1
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                    if not isinstance(obj, dict):
                        raise ValueError(f"a JSON {type(obj).__name__}, not an object")
                except ValueError as exc:
                    report.malformed_count += 1
                    if len(report.malformed) < MAX_REPORTED:
                        report.malformed.append({"file": str(path), "line": lineno, "error": str(exc)[:200]})
                    continue
                parsed.append((lineno, obj))
            if st.thread_id is None:
                head = next(
                    (
                        o["uuid"]
                        for _, o in parsed
                        if o.get("type") in ("user", "assistant") and isinstance(o.get("uuid"), str)
                    ),
                    None,
                )
                if head and "head_uuid" not in reader.state:
                    reader.state["head_uuid"] = head
            if st.thread_id is None and self.vendor.resumed_from is not None:
                found = self.vendor.resumed_from(path, [o for _, o in parsed], self.states)
                if found is not None:  # a new file that starts with a copy of an older session
                    entry, copied = found
                    reader.state["resumed_from"] = entry
                    reader.copied = copied
            for lineno, obj in parsed:
                ts = _epoch(obj.get("timestamp"))
                if ts is not None:
                    reader.state["last_ts"] = max(ts, reader.state.get("last_ts") or 0.0)
                reader.feed(obj, lineno)
            steps = reader.take()
            last = reader.state.get("last_ts") or _mtime(path)
            idle = self.clock() - last >= self.idle_after
            complete = (finish or idle) and not st.completed
            if complete or flush:
                steps += reader.finish()
            report.lines += len(lines)
            report.skipped.update(reader.skipped)
            report.custom.update(reader.custom)
            if lines:
                report.files_changed += 1
            has_events = any(s.kind == "events" and s.events for s in steps)
            start = st.offset
            if has_events or any(s.kind == "compaction" for s in steps):
                st.pending = {"start": start, "end": start + used}
                self.states.save(st)
                await self._carry_out(path, st, steps, report, reader.state)
            elif any(s.kind == "meta" for s in steps) and st.thread_id:
                await self._apply_meta(st, steps)
            if complete and st.thread_id:
                await self._complete(st, report)
            st.offset = start + used
            st.line = first_line + len(lines)
            st.head_sha256, st.tail_sha256 = window_hashes(f, st.offset)
            st.parser = reader.state
            st.pending = None
            self.states.save(st)

    # ------------------------------------------------------------------ threads

    async def _carry_out(
        self, path: Path, st: SourceState, steps: list[Step], report: IngestReport, rstate: dict[str, Any]
    ) -> None:
        facts = {**(rstate.get("facts") or {}), "head_uuid": rstate.get("head_uuid")}
        prompts = [
            e.get("input_tokens") or 0
            for s in steps
            if s.kind == "events"
            for e in s.events
            if e["type"] == "result"
        ]
        facts["max_prompt"] = max(prompts, default=0)
        for s in steps:
            if s.kind == "meta":
                for k, v in s.data.items():
                    facts.setdefault(k, v)
        if st.thread_id is None:
            await self._create(path, st, facts, report, rstate)
        elif st.completed:
            await self._reopen(st, report)
        prefix = f"ingest-{source_key(path)[:20]}-{st.pending['start'] if st.pending else st.offset}"
        chunk_no = 0
        meta: dict[str, Any] = {}
        for s in steps:
            if s.kind == "meta":
                meta.update(s.data)
            elif s.kind == "compaction":
                await self._compaction(st, s, report)
            elif s.kind == "events":
                for chunk in self._chunks(s.events, report):
                    await self._append(st, chunk, f"{prefix}-{chunk_no}", report)
                    chunk_no += 1
        if meta:
            await self._apply_meta(st, [Step("meta", data=meta)])

    def _chunks(self, events: list[dict[str, Any]], report: IngestReport) -> list[list[dict[str, Any]]]:
        out: list[list[dict[str, Any]]] = [[]]
        size = 0
        for ev in events:
            ev, cut = fit_event(ev, self.limit)
            report.truncated_events += cut
            ev = checked(ev, report)
            n = len(canonical_json(ev).encode())
            if out[-1] and (len(out[-1]) >= CHUNK_EVENTS or size + n > CHUNK_BYTES):
                out.append([])
                size = 0
            out[-1].append(ev)
            size += n
        return [c for c in out if c]

    async def _create(
        self, path: Path, st: SourceState, facts: dict[str, Any], report: IngestReport, rstate: dict[str, Any]
    ) -> None:
        v = self.vendor
        entry = rstate.get("resumed_from")
        if entry and await self._create_resumed(path, st, facts, entry, report):
            return
        parent_id = None
        parent_session = v.parent_session(path, facts)
        if parent_session:
            entry = self.states.session(v.name, parent_session)
            if entry is None:
                pfile = v.parent_file(path, parent_session)
                if pfile is not None and pfile.is_file():
                    await self.ingest_file(pfile, report)
                    entry = self.states.session(v.name, parent_session)
            if entry is not None:
                parent_id = entry["root_thread_id"]
                report.children += 1
            else:
                report.problems.append(
                    f"{path}: its parent session {parent_session} was not found; ingested as a thread of its own"
                )
        metadata = {
            "source": v.name,
            "source_file": str(path),
            **{
                k: facts[k]
                for k in ("source_session_id", "cwd", "git_branch", "model", "cli_version")
                if k in facts
            },
        }
        for k in ("subagent_id", "parent_session_id", "forked_from_session_id", "originator", "sidechain"):
            if k in facts:
                metadata[k] = facts[k]
        if parent_session:
            metadata["parent_session_id"] = parent_session
        thread = await self.svc.create_thread(
            agent_id=v.name,
            title=facts.get("title") or rstate.get("title"),
            parent_id=parent_id,
            model=facts.get("model"),
            context_window=facts.get("context_window") or window_for(facts.get("max_prompt") or 0),
            # the tool manages its own context: hand off only past the window (a misjudged window)
            trigger_threshold=1.0,
            metadata=metadata,
        )
        st.thread_id = st.root_thread_id = thread.thread_id
        st.session_id = v.session_key(path, facts)
        self.states.save(st)
        self._index(path, st, facts)
        report.threads_created.append(thread.thread_id)

    def _index(self, path: Path, st: SourceState, facts: dict[str, Any]) -> None:
        assert st.session_id and st.thread_id
        self.states.set_session(self.vendor.name, st.session_id, st.root_thread_id or st.thread_id, str(path))
        if facts.get("head_uuid"):  # so that a later file resuming this one finds it
            self.states.set_session(self.vendor.name, "uuid:" + facts["head_uuid"], st.thread_id, str(path))

    async def _create_resumed(
        self, path: Path, st: SourceState, facts: dict[str, Any], entry: dict[str, Any], report: IngestReport
    ) -> bool:
        """Continue the older session's chain (a resume) instead of starting a new thread."""
        old = self.states.load(Path(entry["source_file"]), self.vendor.name)
        if not old.thread_id:
            return False
        try:
            end = await self.svc.chain_end(await self.svc.get_thread(old.thread_id))
        except NotFoundError:
            return False
        if end.status not in TERMINAL:
            await self.svc.update_thread(
                end.thread_id, status=Status.COMPLETED, reason=f"the session went on in {path.name}"
            )
        outcome = await self.svc.resume(end.thread_id, RESUMED_TEXT.format(vendor=self.vendor.name))
        new = outcome.thread.thread_id
        own = {"source_file": str(path), "resumed_from_session_id": entry.get("session_id")}
        own.update(
            {k: facts[k] for k in ("source_session_id", "cwd", "git_branch", "cli_version") if k in facts}
        )
        await self.svc.update_thread(new, metadata=own)
        st.thread_id = st.root_thread_id = new
        st.session_id = self.vendor.session_key(path, facts)
        self.states.save(st)
        self._index(path, st, facts)
        report.continuations += 1
        return True

    async def _ours(self, thread_id: str, st: SourceState) -> bool:
        thread = await self.svc.get_thread(thread_id)
        return thread.metadata.get("source_file") == st.source_file

    async def _reopen(self, st: SourceState, report: IngestReport) -> None:
        """New lines in a session marked completed: continue it by a resume (a new thread)."""
        assert st.thread_id
        st.completed = False
        if await self._next_hop(st):
            return  # an earlier run resumed it already and died before saving
        text = RESUMED_TEXT.format(vendor=self.vendor.name)
        try:
            outcome = await self.svc.resume(st.thread_id, text)
        except (InvalidStateError, LimitExceededError) as exc:
            report.problems.append(f"{st.source_file}: could not continue thread {st.thread_id}: {exc}")
            raise
        st.thread_id = outcome.thread.thread_id
        report.continuations += 1
        self.states.save(st)

    async def _next_hop(self, st: SourceState) -> bool:
        """Move to the thread that continues the current one, if this ingest made it.

        One link at a time: a run that replays after a crash finds each chunk on the
        thread it was first written to (idempotency keys are per thread).
        """
        assert st.thread_id
        thread = await self.svc.get_thread(st.thread_id)
        nxt = thread.continuation_thread_id
        if nxt and await self._ours(nxt, st):
            st.thread_id = nxt
            self.states.save(st)
            return True
        return False

    async def _adopt(self, st: SourceState, exc: ThreadContinuedError) -> None:
        if not await self._next_hop(st):
            raise exc

    async def _append(
        self, st: SourceState, chunk: list[dict[str, Any]], key: str, report: IngestReport
    ) -> None:
        assert st.thread_id
        for _ in range(4):
            try:
                outcome = await self.svc.append(st.thread_id, chunk, idempotency_key=key)
            except ThreadContinuedError as exc:
                await self._adopt(st, exc)
                continue
            except InvalidStateError as exc:
                if exc.rule != "append_to_ended":
                    raise
                st.completed = True
                await self._reopen(st, report)
                continue
            if not outcome.replayed:
                report.events += len(chunk)
            if outcome.handoff is not None and not outcome.replayed:  # the threshold was crossed
                st.thread_id = outcome.handoff.thread_id
                report.continuations += 1
                self.states.save(st)
            return
        raise InvalidStateError(
            f"{st.source_file}: could not find the thread to append to", rule="ingest_target"
        )

    async def _compaction(self, st: SourceState, step: Step, report: IngestReport) -> None:
        assert st.thread_id
        thread = await self.svc.get_thread(st.thread_id)
        if thread.status == Status.CONTINUED and await self._next_hop(st):
            return  # replaying: this compaction was linked already
        if thread.status != Status.RUNNING:
            return  # nothing appended yet: nothing to continue from
        trigger = step.data.get("trigger")
        summary = f"compacted by {self.vendor.name}" + (f" ({trigger})" if trigger else "")
        try:
            info = await self.svc.handoff(st.thread_id, summary=summary, reason="compaction")
        except ThreadContinuedError as exc:
            await self._adopt(st, exc)
            return
        except LimitExceededError as exc:
            report.problems.append(f"{st.source_file}: compaction not linked (thread {st.thread_id}): {exc}")
            return
        st.thread_id = info.thread_id
        report.continuations += 1
        self.states.save(st)

    async def _apply_meta(self, st: SourceState, steps: list[Step]) -> None:
        if not st.thread_id:
            return
        data: dict[str, Any] = {}
        for s in steps:
            if s.kind == "meta":
                data.update(s.data)
        title = data.pop("title", None)
        thread = await self.svc.get_thread(st.thread_id)
        new_meta = {k: v for k, v in data.items() if k not in thread.metadata and _plain(v)}
        new_title = title if title and not thread.title else None
        if new_meta or new_title:
            await self.svc.update_thread(st.thread_id, metadata=new_meta or None, title=new_title)

    async def _complete(self, st: SourceState, report: IngestReport) -> None:
        assert st.thread_id
        try:
            thread = await self.svc.get_thread(st.thread_id)
        except NotFoundError:
            return
        if thread.status in (Status.RUNNING, Status.CREATED, Status.PAUSED):
            await self.svc.update_thread(
                st.thread_id,
                status=Status.COMPLETED,
                reason=f"the {self.vendor.name} session ended or went idle",
            )
            report.completed += 1
        st.completed = True


def checked(event: dict[str, Any], report: IngestReport) -> dict[str, Any]:
    """``event`` if the service will take it; else an ``x-unmapped`` event saying why."""
    try:
        parse_event(event)
        canonical_json(event)
        return event
    except (ThreadloomError, ValueError, TypeError) as exc:
        report.custom["x-unmapped"] += 1
        reason = exc.message if isinstance(exc, ThreadloomError) else str(exc)
        return {"type": "x-unmapped", "source_type": str(event.get("type"))[:100], "error": reason[:500]}


def window_for(max_prompt: int) -> int:
    """A context window that holds the largest prompt seen: the usual 200k tokens, or the
    1M-token window when a prompt already went past what 200k allows."""
    return DEFAULT_WINDOW if max_prompt <= DEFAULT_WINDOW * 0.9 else LARGE_WINDOW


def _plain(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
