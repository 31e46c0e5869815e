"""Verification of one thread: signatures, checkpoints, the hash chain and the mirrors.

:func:`verify_snapshot` is pure: it takes what the store read (an
:class:`~threadloom.store.base.IntegritySnapshot`) and the root's key, and returns a
:class:`VerifyReport` whose ``problems`` name the source, the transcript line (= seq)
and what is wrong. Line numbers are 1-based; line n of ``transcript.jsonl`` is event n.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field

from . import capabilities as caps_md
from .drift import compare
from .errors import IntegrityError
from .integrity import GENESIS, SIGNATURE_FIELD, Signer, chain_next, manifest_signature_ok
from .models import ENDED, MANIFEST_FIELDS, StoredEvent, Thread
from .provenance import ImportInfo, ImportRecord, KeyUse, signer_key
from .store.base import IntegritySnapshot
from .trust import PublicKey

Source = Literal["transcript", "database", "thread.json", "capabilities.md"]

VOLATILE_FIELDS = frozenset({"updated_at", "heartbeat_at"})
"""Manifest fields the database moves on every append without a new snapshot version."""


class VerifyProblem(BaseModel):
    """One thing verification found wrong."""

    source: Source = Field(
        description="where: transcript (the JSONL file), database, thread.json, capabilities.md"
    )
    line: int | None = Field(default=None, description="transcript line (= event seq) it concerns, if any")
    rule: str = Field(description="machine-readable name of the failed check")
    message: str


class VerifyReport(BaseModel):
    """The outcome of verifying one thread: ``ok`` when ``problems`` is empty."""

    thread_id: str
    ok: bool
    problems: list[VerifyProblem]
    first_bad_line: int | None = Field(default=None, description="the lowest transcript line with a problem")
    summary: str = Field(description="one line: 'ok' or the first problem")
    events: int = Field(description="events in the database")
    checkpoints: int = Field(description="checkpoint events verified")
    last_checkpoint_seq: int | None = None
    files_checked: bool = Field(description="false when the backend keeps no mirror files (memory)")
    key_id: str = Field(description="the signing key's id (first 16 hex of SHA-256 of the public key)")
    imported: ImportInfo | None = Field(
        default=None, description="for a thread that came in through `threadloom import`: from where"
    )


class VerificationFailed(IntegrityError):
    """A thread failed verification where it must be intact (resume, handoff); ``report`` has why."""

    rule = "integrity_failed"

    def __init__(self, report: VerifyReport) -> None:
        tid = report.thread_id
        super().__init__(
            f"thread {tid} failed verification, so its transcript cannot be trusted to rebuild "
            f"messages: {report.summary}; run verify_thread({tid!r}) for every problem"
        )
        self.report = report


class _Problems:
    def __init__(
        self, imported: ImportRecord | None = None, known: Mapping[str, PublicKey] | None = None
    ) -> None:
        self.items: list[VerifyProblem] = []
        self.good_signatures: set[tuple[str, str]] = set()  # (sha256, signature) already verified
        self.imported = imported
        self.known: Mapping[str, PublicKey] = known or {}
        self.keys: dict[str, PublicKey] = {**(imported.public_keys() if imported else {}), **self.known}
        self.uses: dict[str | None, int] = {}  # imported checkpoints per key that verified them

    def add(self, source: Source, line: int | None, rule: str, message: str) -> None:
        self.items.append(VerifyProblem(source=source, line=line, rule=rule, message=message))

    def check_imported(self, source: Source, n: int, digest: bytes, pair: tuple[str, str]) -> None:
        """An imported checkpoint: the key recorded at import must verify it (or, where none
        did then, any key this root knows now; else it counts as signed by an unknown key)."""
        assert self.imported is not None
        kid = self.imported.key_for(n)
        if kid is not None:
            key = self.keys.get(kid)
            if key is None or not key.verify(digest, pair[1]):
                self.add(
                    source,
                    n,
                    "checkpoint_signature",
                    f"checkpoint at line {n}: the signature does not verify with key {kid}, which "
                    "verified it when the thread was imported (edited since the import)",
                )
                return
        else:
            kid = next((k for k, key in self.known.items() if key.verify(digest, pair[1])), None)
            said = self.imported.declared_for(n)
            if kid is None and said is not None and said in self.keys:
                self.add(
                    source,
                    n,
                    "checkpoint_signature",
                    f"checkpoint at line {n}: the signature does not verify with key {said}, which the "
                    "bundle said signed it (forged or edited before the import)",
                )
                return
        self.good_signatures.add(pair)
        if source == "database":
            self.uses[kid] = self.uses.get(kid, 0) + 1


def verify_snapshot(
    snap: IntegritySnapshot, signer: Signer, trusted: Mapping[str, PublicKey] | None = None
) -> VerifyReport:
    """Check everything DESIGN §8 signs or chains; see the module docstring.

    ``trusted``: other roots' keys this root trusts (trust.py), for imported threads.
    """
    known = {**(trusted or {}), signer.key_id: signer_key(signer)}
    found = _Problems(snap.imported, known)
    thread, events = snap.thread, snap.events
    checkpoints, last_cp = _check_database(thread, events, snap.chain_head, signer, found)
    if snap.files is not None and snap.files.unreadable is not None:
        found.add(
            "transcript",
            None,
            "mirror_unreadable",
            f"{snap.files.unreadable}: its mirror files cannot be checked "
            "(`threadloom doctor --fix` sets what is there aside and writes them again from the database)",
        )
    elif snap.files is not None:
        _check_transcript(events, snap.files.transcript, signer, found)
        _check_set_aside(snap.files.set_aside, found)
        _check_manifest(thread, snap.files.manifest, signer, found)
        _check_capabilities(thread, snap.files.capabilities, signer, found)
    found.items.sort(key=lambda p: (p.line is None, p.line or 0))
    lines = [p.line for p in found.items if p.line is not None]
    first = min(lines) if lines else None
    if found.items:
        top = found.items[0]
        where = f"line {top.line} of {top.source}" if top.line is not None else top.source
        summary = f"{where}: {top.message}"
        if len(found.items) > 1:
            summary += f" (+{len(found.items) - 1} more)"
    else:
        summary = "ok"
    info = _import_info(snap.imported, found) if snap.imported is not None else None
    if info is not None and not found.items:
        summary = f"ok ({info.describe()})"
    return VerifyReport(
        thread_id=thread.thread_id,
        ok=not found.items,
        problems=found.items,
        first_bad_line=first,
        summary=summary,
        events=len(events),
        checkpoints=checkpoints,
        last_checkpoint_seq=last_cp,
        files_checked=snap.files is not None,
        key_id=signer.key_id,
        imported=info,
    )


def _import_info(record: ImportRecord, found: _Problems) -> ImportInfo:
    uses = [
        KeyUse(key_id=kid, known=kid is not None and kid in found.known, checkpoints=n)
        for kid, n in found.uses.items()
    ]
    return ImportInfo(
        imported_at=record.imported_at,
        events=record.events,
        renamed_from=record.renamed_from,
        signed_by=uses,
        countersigned_by=record.countersigned_by,
    )


def lagging(snap: IntegritySnapshot) -> bool:
    """True when the files look like a mirror write still in flight (another process's commit):
    the transcript is behind the database (drift.py), or thread.json is an older version."""
    files = snap.files
    if files is None:
        return False
    if files.transcript is not None:
        if compare(files.transcript, [e.line.encode() for e in snap.events]).kind == "behind":
            return True
    if files.manifest is not None:
        try:
            version = json.loads(files.manifest).get("version")
        except (ValueError, AttributeError):
            return False
        return isinstance(version, int) and version < snap.thread.version
    return False


# ------------------------------------------------------------------- database


def _check_database(
    thread: Thread, events: list[StoredEvent], head: str | None, signer: Signer, found: _Problems
) -> tuple[int, int | None]:
    running = hashlib.sha256()
    prev = GENESIS
    unchained = 0
    checkpoints = 0
    last_cp: int | None = None
    for n, ev in enumerate(events, start=1):
        if ev.seq != n:
            found.add(
                "database", n, "seq_gap", f"the database has no event {n} (the next row is seq {ev.seq})"
            )
            return checkpoints, last_cp
        try:
            data = json.loads(ev.line)
        except ValueError:
            data = None
            found.add("database", n, "line_json", f"event {n} in the database is not valid JSON")
        if isinstance(data, dict) and (data.get("seq") != n or data.get("type") != ev.type):
            found.add(
                "database",
                n,
                "line_fields",
                f"event {n} in the database says seq {data.get('seq')!r}, type {data.get('type')!r} "
                f"(its row is seq {n}, type {ev.type!r})",
            )
        if ev.prev_hash is None:
            unchained += 1
        elif ev.prev_hash != prev:
            if n == 1:
                found.add(
                    "database",
                    1,
                    "hash_chain",
                    "event 1's prev_hash is not the chain's start: it was changed",
                )
            else:
                found.add(
                    "database",
                    n - 1,
                    "hash_chain",
                    f"event {n - 1} no longer hashes to the prev_hash stored with event {n}: "
                    f"event {n - 1} (or that prev_hash) was changed in the database",
                )
            prev = ev.prev_hash  # go on from what is stored, so one edit is reported once
        if isinstance(data, dict) and ev.type == "checkpoint":
            checkpoints += 1
            last_cp = n
            _check_checkpoint("database", n, data, running.hexdigest(), signer, found)
        running.update(ev.line.encode())
        running.update(b"\n")
        prev = chain_next(prev, ev.line)
        if found.imported is not None and n == found.imported.events:
            _check_import_hash(found.imported, n, running.hexdigest(), found)
    imported = found.imported
    if imported is not None:
        _check_countersignature(thread, imported, len(events), signer, found)
    if unchained:
        found.add(
            "database",
            None,
            "hash_chain_missing",
            f"{unchained} event(s) carry no prev_hash (written before the hash chain existed)",
        )
    if head is not None and events and head != prev:
        found.add(
            "database",
            len(events),
            "hash_chain",
            f"the last event ({len(events)}) no longer hashes to the chain head recorded for the thread: it was changed",
        )
    if thread.event_count != len(events):
        found.add(
            "database",
            min(thread.event_count, len(events)) + 1,
            "event_count",
            f"the thread records {thread.event_count} events but the database holds {len(events)}",
        )
    covered = imported is not None and imported.events == len(events)  # the countersignature signs it all
    if thread.status in ENDED and events and events[-1].type != "checkpoint" and not covered:
        found.add(
            "database",
            len(events),
            "unsigned_tail",
            f"the thread is {thread.status.value} but its transcript does not end with a checkpoint "
            f"(last signed line: {last_cp or 'none'}): lines after it were added or the checkpoint was removed",
        )
    return checkpoints, last_cp


def _check_import_hash(record: ImportRecord, n: int, actual: str, found: _Problems) -> None:
    if actual != record.sha256:
        found.add(
            "database",
            None,
            "import_hash",
            f"the first {n} lines no longer hash to what this root countersigned when it imported the "
            "thread: a line was changed, removed or added since the import",
        )


def _check_countersignature(
    thread: Thread, record: ImportRecord, count: int, signer: Signer, found: _Problems
) -> None:
    if (
        record.thread_id != thread.thread_id
        or record.countersigned_by != signer.key_id
        or not signer.verify(record.statement(), record.countersignature)
    ):
        found.add(
            "database",
            None,
            "import_countersignature",
            "the record of this thread's import does not verify with this root's key: it was forged "
            "or edited (only the root that imported a thread signs its record)",
        )
    if count < record.events:
        found.add(
            "database",
            count + 1,
            "import_hash",
            f"the thread came in with {record.events} events but the database holds {count}",
        )


def _check_checkpoint(
    source: Source, n: int, data: dict[str, Any], actual: str, signer: Signer, found: _Problems
) -> None:
    recorded = data.get("sha256")
    imported = found.imported is not None and n <= found.imported.events
    renamed = imported and found.imported is not None and found.imported.renamed_from is not None
    if recorded != actual and not renamed:  # renamed: its ids were rewritten after the source signed
        found.add(
            source,
            n,
            "checkpoint_hash",
            f"checkpoint at line {n} records sha256 {str(recorded)[:16]}... but the {n - 1} lines before it "
            f"hash to {actual[:16]}...: a line before it was changed, removed or added",
        )
    signature = data.get("signature")
    if not isinstance(recorded, str) or len(recorded) != 64 or not _is_hex(recorded):
        found.add(source, n, "checkpoint_signature", f"checkpoint at line {n} has no valid sha256 to check")
    elif isinstance(signature, str) and (recorded, signature) in found.good_signatures:
        pass  # the same pair verified already (the file's copy of a database line)
    elif imported:
        found.check_imported(source, n, bytes.fromhex(recorded), (recorded, str(signature)))
    elif signer.verify(bytes.fromhex(recorded), signature):
        found.good_signatures.add((recorded, signature))  # type: ignore[arg-type]
    else:
        found.add(
            source,
            n,
            "checkpoint_signature",
            f"checkpoint at line {n}: the signature does not verify with this root's key (forged or edited)",
        )


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------ the files


def _check_transcript(
    events: list[StoredEvent], data: bytes | None, signer: Signer, found: _Problems
) -> None:
    if data is None:
        if events:
            found.add(
                "transcript",
                1,
                "transcript_missing",
                f"transcript.jsonl is missing ({len(events)} events in the database)",
            )
        return
    parts = data.split(b"\n")
    complete, torn = parts[:-1], parts[-1]
    running = hashlib.sha256()
    for n, raw in enumerate(complete, start=1):
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and obj.get("type") == "checkpoint":
            _check_checkpoint("transcript", n, obj, running.hexdigest(), signer, found)
        running.update(raw)
        running.update(b"\n")
    db = [e.line.encode() for e in events]
    for n in range(1, max(len(complete), len(db)) + 1):
        have = complete[n - 1] if n <= len(complete) else None
        want = db[n - 1] if n <= len(db) else None
        if have == want:
            continue
        differing = sum(1 for a, b in zip(complete, db) if a != b) + abs(len(complete) - len(db))
        more = f" ({differing} lines differ from the database in all)" if differing > 1 else ""
        if have is None:
            if torn:
                found.add(
                    "transcript",
                    n,
                    "truncated",
                    f"line {n} is cut short: the file ends mid-line (truncated){more}",
                )
            else:
                found.add(
                    "transcript",
                    n,
                    "truncated",
                    f"the file ends after line {n - 1} but the database has {len(db)} events: "
                    f"truncated or last lines deleted{more}",
                )
        elif want is None:
            found.add(
                "transcript",
                n,
                "line_not_in_database",
                f"line {n} is not in the database (it has {len(db)} events): appended by hand or forged{more}",
            )
        else:
            found.add("transcript", n, "line_differs", _describe_difference(n, have, db) + more)
        return
    if torn:
        found.add(
            "transcript",
            len(complete) + 1,
            "torn_line",
            f"the file ends with an incomplete line after line {len(complete)}",
        )


def _check_set_aside(names: tuple[str, ...], found: _Problems) -> None:
    for name in names:
        found.add(
            "transcript",
            None,
            "transcript_set_aside",
            f"{name} beside transcript.jsonl was set aside because it held lines the database lacks "
            "(commits the database lost, or a forged or edited line): `threadloom doctor` compares it, "
            "`threadloom doctor --recover` restores what its signatures prove and marks it reviewed",
        )


def _describe_difference(n: int, have: bytes, db: list[bytes]) -> str:
    try:
        obj = json.loads(have)
    except ValueError:
        return f"line {n} is not valid JSON: it was edited or corrupted"
    seq = obj.get("seq") if isinstance(obj, dict) else None
    if isinstance(seq, int) and seq != n:
        if 1 <= seq <= len(db) and db[seq - 1] == have:
            return (
                f"line {n} holds event {seq} (expected event {n}): lines were deleted, inserted or reordered"
            )
        return f"line {n} says seq {seq} (expected {n}) and matches no database event: lines were moved or forged"
    return f"line {n} differs from database event {n}: its content was edited"


def _check_manifest(thread: Thread, data: bytes | None, signer: Signer, found: _Problems) -> None:
    if data is None:
        found.add("thread.json", None, "manifest_missing", "thread.json is missing")
        return
    try:
        doc = json.loads(data)
    except ValueError:
        found.add(
            "thread.json", None, "manifest_json", "thread.json is not valid JSON: it was edited or corrupted"
        )
        return
    if not isinstance(doc, dict) or SIGNATURE_FIELD not in doc:
        found.add("thread.json", None, "manifest_unsigned", "thread.json carries no _signature")
        return
    if not manifest_signature_ok(doc, signer):
        found.add(
            "thread.json",
            None,
            "manifest_signature",
            "thread.json was changed after it was signed: its _signature does not verify",
        )
        return
    db = thread.model_dump(mode="json")
    version = doc.get("version")
    if isinstance(version, int) and version != thread.version:
        found.add(
            "thread.json",
            None,
            "manifest_stale",
            f"thread.json is a signed snapshot of version {version} but the database is at version {thread.version}",
        )
        return
    unknown = sorted(k for k in doc if k != SIGNATURE_FIELD and k not in Thread.model_fields)
    differs = sorted(k for k in MANIFEST_FIELDS - VOLATILE_FIELDS if k in doc and doc[k] != db[k])
    if unknown or differs:
        names = ", ".join(differs + unknown)
        found.add(
            "thread.json",
            None,
            "manifest_mismatch",
            f"thread.json is validly signed but differs from the database manifest in: {names} "
            "(the database row was changed)",
        )


def _check_capabilities(thread: Thread, data: bytes | None, signer: Signer, found: _Problems) -> None:
    if thread.capabilities is None:
        if data is not None:
            found.add(
                "capabilities.md",
                None,
                "capabilities_unexpected",
                "capabilities.md exists but the thread has no capabilities",
            )
        return
    if data is None:
        found.add("capabilities.md", None, "capabilities_missing", "capabilities.md is missing")
        return
    signed = caps_md.split_signed(data)
    if signed is None:
        found.add(
            "capabilities.md",
            None,
            "capabilities_unsigned",
            "capabilities.md has no signature line (it was edited)",
        )
        return
    body, signature = signed
    if not signer.verify(body, signature):
        found.add(
            "capabilities.md",
            None,
            "capabilities_signature",
            "capabilities.md was changed after it was signed: its signature does not verify",
        )
    elif body != caps_md.render_body(thread.thread_id, thread.capabilities):
        found.add(
            "capabilities.md",
            None,
            "capabilities_mismatch",
            "capabilities.md is validly signed but does not match the thread's capabilities in the database",
        )
