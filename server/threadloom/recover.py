"""``threadloom doctor --recover``: rebuild events the database lost from the mirror files.

A transcript (live, or set aside by the mirror writer) that holds the database's lines and
then more is the only copy of commits the database lost (a cut WAL, a database restored
from an older backup). Its extra lines are taken back only as far as a ``checkpoint`` whose
``sha256`` (over every byte before it) and signature verify with this root's key: what the
server signed is what it wrote. Lines after the last such checkpoint, lines that are not the
next event, and files that disagree with the database inside its own lines are reported,
never imported. A thread the database lacks entirely is rebuilt only with a ``thread.json``
whose signature verifies.

Order: plan (read only); rehearse on a copy of the database (SQLite's backup API, so a live
server is no obstacle) and verify every rebuilt thread there; only then apply the same
steps to the real database (each guarded by the event count the plan saw) and rename the
files used ``….reviewed`` (nothing is deleted). If the rehearsal does not verify, nothing
is changed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import Settings
from .drift import compare
from .errors import ThreadloomError
from .event_types import event_text_chars
from .integrity import KEYS_DIR, SIGNATURE_FIELD, Signer, manifest_signature_ok
from .mirror import MANIFEST, REVIEWED, TRANSCRIPT, set_aside, set_aside_files
from .models import THREAD_ID_RE, Thread, parse_event
from .models import StoredEvent as Stored
from .private import make_dir
from .service import ThreadService


@dataclass
class Recovered:
    """What ``--recover`` found for one thread."""

    thread_id: str
    source: str
    database_lines: int
    file_lines: int
    recovered: int = 0
    untrusted: int = 0
    detail: str = ""
    new_thread: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        text = f"thread {self.thread_id}: {self.source} holds {self.file_lines} lines, the database {self.database_lines}"
        if self.recovered:
            first = self.database_lines + 1
            text += f"; recovered lines {first}-{first + self.recovered - 1}"
            if self.new_thread:
                text += " (the thread itself was missing from the database)"
        if self.untrusted:
            text += f"; {self.untrusted} line(s) not trusted"
        return text + (f" ({self.detail})" if self.detail else "")


@dataclass
class RecoveryReport:
    threads: list[Recovered] = field(default_factory=list)
    applied: bool = False
    error: str | None = None
    reviewed: list[str] = field(default_factory=list)

    @property
    def recovered_events(self) -> int:
        return sum(r.recovered for r in self.threads)

    @property
    def untrusted_lines(self) -> int:
        return sum(r.untrusted for r in self.threads)

    def as_dict(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "recovered_events": self.recovered_events,
            "untrusted_lines": self.untrusted_lines,
            "error": self.error,
            "threads": [r.as_dict() for r in self.threads],
            "reviewed": self.reviewed,
        }


@dataclass
class _Plan:
    report: Recovered
    events: list[Stored]
    thread: Thread | None  # the manifest after recovery (None: nothing to apply)
    expect_count: int
    files: list[Path]  # sources to mark reviewed once applied


# ----------------------------------------------------------------- scanning


def trusted_prefix(lines: list[bytes], start: int, signer: Signer) -> tuple[int, str]:
    """How many of ``lines`` (1-based, the first ``start`` already the database's) are proven
    by a checkpoint that verifies, and why the rest is not: (count, reason)."""
    running = hashlib.sha256()
    good = start
    reason = ""
    for n, raw in enumerate(lines, start=1):
        if n > start:
            try:
                obj = json.loads(raw)
            except ValueError:
                obj = None
            if not isinstance(obj, dict) or obj.get("seq") != n:
                reason = f"line {n} is not event {n}"
                break
            if obj.get("type") == "checkpoint":
                sha, sig = obj.get("sha256"), obj.get("signature")
                if sha != running.hexdigest():
                    reason = f"the checkpoint at line {n} does not match the lines before it"
                    break
                try:
                    digest = bytes.fromhex(sha)
                except (TypeError, ValueError):
                    digest = b""
                if not signer.verify(digest, sig):
                    reason = f"the checkpoint at line {n} is not signed by this root's key"
                    break
                good = n
        running.update(raw)
        running.update(b"\n")
    if good < len(lines):
        first = f"lines {good + 1}-{len(lines)}" if good + 1 < len(lines) else f"line {good + 1}"
        verb = "come" if good + 1 < len(lines) else "comes"
        reason = f"{first}: {reason}" if reason else f"{first} {verb} after the last checkpoint that verifies"
    return good, reason


def _stored(tid: str, lines: list[bytes], first: int) -> tuple[list[Stored], int, int | None]:
    """StoredEvents of ``lines`` (seq ``first`` on) and what they add to text_chars / input_tokens."""
    out, chars, tokens = [], 0, None
    for seq, raw in enumerate(lines, start=first):
        obj = json.loads(raw)
        out.append(Stored(tid, seq, str(obj.get("ts", "")), str(obj.get("type", "")), raw.decode()))
        payload = {k: v for k, v in obj.items() if k not in ("seq", "ts")}
        try:
            ev = parse_event(payload, allow_server_types=True)
        except (ThreadloomError, ValueError):
            continue
        chars += event_text_chars(ev)
        if getattr(ev, "input_tokens", None) is not None and obj.get("type") == "result":
            tokens = ev.input_tokens  # type: ignore[attr-defined]
    return out, chars, tokens


def _signed_manifest(folder: Path, signer: Signer, tid: str) -> dict[str, Any] | None:
    try:
        doc = json.loads((folder / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("thread_id") != tid or not manifest_signature_ok(doc, signer):
        return None
    return {k: v for k, v in doc.items() if k != SIGNATURE_FIELD}


def _candidates(folder: Path) -> list[Path]:
    live = folder / TRANSCRIPT
    return ([live] if live.is_file() else []) + set_aside_files(folder)


async def plan_recovery(service: ThreadService, root: Path, signer: Signer) -> list[_Plan]:
    """Every thread folder's transcripts against the database; the events each can give back."""
    plans: list[_Plan] = []
    threads_dir = root / "threads"
    folders = sorted(p for p in threads_dir.iterdir() if p.is_dir()) if threads_dir.is_dir() else []
    for folder in folders:
        tid = folder.name
        if not THREAD_ID_RE.fullmatch(tid):
            continue
        try:
            db_thread: Thread | None = await service.get_thread(tid, children=False)
            db_lines = [e.line.encode() for e in await service.all_events(tid)]
        except ThreadloomError:
            db_thread, db_lines = None, []
        best: _Plan | None = None
        seen: list[Path] = []
        for path in _candidates(folder):
            try:
                data = path.read_bytes()
            except OSError:
                continue
            drift = compare(data, db_lines)
            if drift.kind != "holds":
                if path.name != TRANSCRIPT:
                    seen.append(path)  # a set-aside copy with nothing the database lacks
                continue
            seen.append(path)
            lines = data.split(b"\n")
            complete = lines[:-1]
            rec = Recovered(tid, path.name, len(db_lines), drift.file_lines, new_thread=db_thread is None)
            if drift.common < len(db_lines):
                rec.untrusted = drift.file_lines - drift.common
                rec.detail = (
                    f"line {drift.first_bad} differs from the database's own line: "
                    "the file is kept for the operator, nothing is taken from it"
                )
                plan = _Plan(rec, [], None, len(db_lines), [])
            else:
                good, reason = trusted_prefix(complete, len(db_lines), signer)
                rec.recovered = good - len(db_lines)
                rec.untrusted = drift.file_lines - good
                rec.detail = reason
                plan = _plan_thread(folder, db_thread, complete, good, len(db_lines), rec, signer)
            if best is None or plan.report.recovered > best.report.recovered:
                best = plan
        if best is None and seen:  # set-aside copies that hold nothing the database lacks (now)
            rec = Recovered(
                tid, seen[0].name, len(db_lines), len(db_lines), detail="nothing the database lacks"
            )
            best = _Plan(rec, [], None, len(db_lines), [])
        if best is not None:
            best.files = seen
            plans.append(best)
    return plans


def _plan_thread(
    folder: Path,
    db_thread: Thread | None,
    lines: list[bytes],
    good: int,
    start: int,
    rec: Recovered,
    signer: Signer,
) -> _Plan:
    tid = folder.name
    if good <= start:
        return _Plan(rec, [], None, start, [])
    events, chars, tokens = _stored(tid, lines[start:good], start + 1)
    manifest = _signed_manifest(folder, signer, tid)
    if db_thread is None and manifest is None:
        rec.untrusted += rec.recovered
        rec.recovered = 0
        rec.detail = "its thread is not in the database and thread.json is missing or not validly signed"
        return _Plan(rec, [], None, 0, [])
    base = db_thread.model_dump(mode="json") if db_thread is not None else {}
    if manifest is not None and (db_thread is None or int(manifest.get("version", 0)) > db_thread.version):
        base.update(manifest)  # the newer signed manifest the database lost
    last_ts = events[-1].ts
    base.update(
        event_count=good,
        text_chars=(db_thread.text_chars if db_thread else 0) + chars,
        input_tokens=tokens if tokens is not None else (db_thread.input_tokens if db_thread else None),
        updated_at=last_ts,
        heartbeat_at=last_ts,
    )
    base.pop("children", None)
    try:
        thread = Thread.model_validate(base)
    except ValueError as exc:
        rec.untrusted += rec.recovered
        rec.recovered = 0
        rec.detail = f"its manifest cannot be rebuilt: {str(exc)[:200]}"
        return _Plan(rec, [], None, start, [])
    return _Plan(rec, events, thread, start, [])


# ----------------------------------------------------------------- applying


async def _apply(service: ThreadService, plans: list[_Plan]) -> None:
    for p in plans:
        if p.thread is None:
            continue
        if p.report.new_thread:
            await service.import_threads([(p.thread, p.events)], index=False)
        else:
            await service.recover_tail(p.thread, p.events, p.expect_count)
    await service.reindex()


async def _rehearse(service: ThreadService, settings: Settings, root: Path, plans: list[_Plan]) -> str | None:
    """Apply the plan to a copy of the database and verify every thread it touches; the problem, or None."""
    with tempfile.TemporaryDirectory(prefix=".recover-", dir=root) as tmp:
        copy = Path(tmp)
        make_dir(copy)
        try:
            await service.copy_database(copy)
        except ThreadloomError as exc:
            return f"[{exc.rule}] {exc.message}"
        if (root / KEYS_DIR).is_dir():
            shutil.copytree(root / KEYS_DIR, copy / KEYS_DIR)
        svc = ThreadService.for_settings(
            settings.model_copy(update={"root": copy, "durability": "normal"}), repair=False, mirrors=False
        )
        async with svc:
            try:
                await _apply(svc, plans)
            except ThreadloomError as exc:
                return f"[{exc.rule}] {exc.message}"
            for p in plans:
                if p.thread is None:
                    continue
                report = await svc.verify_thread(p.report.thread_id)
                if not report.ok:
                    return f"thread {p.report.thread_id} does not verify once rebuilt: {report.summary}"
    return None


def _mark_reviewed(folder: Path, files: list[Path], out: list[str]) -> None:
    for path in files:
        if path.name == TRANSCRIPT:
            continue
        if path.exists() and not path.name.endswith(REVIEWED):
            path.rename(path.with_name(path.name + REVIEWED))
            out.append(f"{folder.name}/{path.name}{REVIEWED}")
    for path in set_aside_files(folder):  # set aside by the mirror write right after the recovery
        path.rename(path.with_name(path.name + REVIEWED))
        out.append(f"{folder.name}/{path.name}{REVIEWED}")


async def run_recovery(settings: Settings) -> RecoveryReport:
    """Plan, rehearse on a copy, then apply; see the module docstring."""
    root = Path(settings.root)
    report = RecoveryReport()
    service = ThreadService.for_settings(settings, repair=False)
    async with service:
        plans = await plan_recovery(service, root, service.signer)
        report.threads = [p.report for p in plans]
        todo = [p for p in plans if p.thread is not None]
        if todo:
            problem = await _rehearse(service, settings, root, todo)
            if problem is not None:
                report.error = (
                    f"nothing was changed: the rehearsal on a copy of the database failed: {problem}"
                )
                return report
            try:
                await _apply(service, todo)
            except ThreadloomError as exc:
                report.error = f"[{exc.rule}] {exc.message}"
                return report
            report.applied = True
        for p in plans:
            folder = root / "threads" / p.report.thread_id
            live = folder / TRANSCRIPT
            if p.report.untrusted and live in p.files and live.exists():
                # still holds lines the database lacks: kept beside, the mirror written from the database
                data = b"".join(e.line.encode() + b"\n" for e in await service.all_events(p.report.thread_id))
                if compare(live.read_bytes(), [x for x in data.split(b"\n")[:-1]]).kind == "holds":
                    set_aside(live, replacement=data)
            _mark_reviewed(folder, p.files, report.reviewed)
    return report
