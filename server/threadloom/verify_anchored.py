"""Quick verification from an anchor: what handoff and resume check before they rebuild messages.

The full check (:mod:`threadloom.verify`) parses and re-hashes every line in Python: fine
for ``verify_thread``, too slow to sit in every handoff of a long thread. This one proves
the same thing for an intact thread with per-line work only on the lines after an anchor:

- the **anchor** is the running hash this process keeps of a transcript it wrote
  itself (or verified before: ``TranscriptHashes.anchor``), the thread's stored signed
  anchor (store/anchors.py: what survives a restart), or its last signed checkpoint.
  Lines ``1..a`` before it are read as one joined value and hashed in one pass; the hash
  must equal the anchor's (a stored anchor's or checkpoint's signature is checked too). So
  an edit of any earlier row or line is still found, without a Python loop over them;
- every line after the anchor is checked like the full verification does: gapless seqs,
  the line's own seq and type, the hash chain from the anchor on, the chain head, each
  checkpoint's hash and signature;
- the mirror files: ``transcript.jsonl`` must equal the database's lines byte for byte,
  nothing set aside, ``thread.json`` and ``capabilities.md`` signed and current.

It answers only "intact": :func:`verify_anchored` returns None as soon as anything is not
as expected (an edit, a mirror write still in flight, a thread it has no anchor for it
can use), and the caller then runs the full verification, whose report names the problem.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .integrity import GENESIS, Signer
from .models import ENDED
from .store.base import AnchoredSnapshot
from .verify import VerifyReport, _check_capabilities, _check_manifest, _Problems

__all__ = ["Anchored", "verify_anchored"]


@dataclass(frozen=True, slots=True)
class Anchored:
    """A thread found intact: the report, and the running hash of its lines 1..``events``."""

    report: VerifyReport
    events: int
    state: Any


def verify_anchored(snap: AnchoredSnapshot, signer: Signer) -> Anchored | None:
    """The thread of ``snap`` verified from its anchor, or None when it must be checked in full."""
    thread, base, tail = snap.thread, snap.base, snap.tail
    if snap.imported or thread.event_count != base + len(tail):
        return None
    running = hashlib.sha256()
    prefix = snap.prefix + b"\n" if snap.prefix is not None else b""
    if base:
        if snap.prefix is None:
            return None
        running.update(prefix)
        anchored = snap.anchor is not None and snap.anchor[0] == base
        signed = snap.signed is not None and snap.signed.seq == base
        if anchored:
            if snap.anchor[1].hexdigest() != running.hexdigest():  # type: ignore[index]
                return None
        elif signed:  # a stored anchor: the hash it signs, and the root key's signature
            assert snap.signed is not None
            if snap.signed.sha256 != running.hexdigest() or not snap.signed.valid(signer):
                return None
        elif not (tail and tail[0].type == "checkpoint"):  # the checkpoint below proves lines 1..base
            return None
    checkpoints, last_cp = 0, None
    prev = bytes.fromhex(GENESIS) if base == 0 else None
    parts: list[bytes] = []
    for i, ev in enumerate(tail):
        if ev.seq != base + 1 + i or ev.prev_hash is None:
            return None
        raw = ev.line.encode()
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("seq") != ev.seq or data.get("type") != ev.type:
            return None
        if prev is None:
            prev = bytes.fromhex(ev.prev_hash)  # the anchor proved the lines before it, not this hash
        elif ev.prev_hash != prev.hex():
            return None
        if ev.type == "checkpoint":
            recorded, signature = data.get("sha256"), data.get("signature")
            if recorded != running.hexdigest() or not signer.verify(bytes.fromhex(recorded), signature):
                return None
            checkpoints += 1
            last_cp = ev.seq
        running.update(raw)
        running.update(b"\n")
        prev = hashlib.sha256(prev + raw + b"\n").digest()
        parts.append(raw)
    if tail and snap.chain_head is not None and prev is not None and snap.chain_head != prev.hex():
        return None
    if thread.status in ENDED and thread.event_count:
        last = tail[-1].type if tail else _last_type(snap.prefix or b"")
        if last != "checkpoint":
            return None
    if snap.files is not None:
        files = snap.files
        if files.set_aside or files.transcript is None:
            return None
        if files.transcript != prefix + b"".join(p + b"\n" for p in parts):
            return None
        found = _Problems()
        _check_manifest(thread, files.manifest, signer, found)
        _check_capabilities(thread, files.capabilities, signer, found)
        if found.items:
            return None
    report = VerifyReport(
        thread_id=thread.thread_id,
        ok=True,
        problems=[],
        summary="ok",
        events=thread.event_count,
        checkpoints=checkpoints,
        last_checkpoint_seq=last_cp,
        files_checked=snap.files is not None,
        key_id=signer.key_id,
    )
    return Anchored(report, thread.event_count, running)


def _last_type(prefix: bytes) -> Any:
    try:
        data = json.loads(prefix.rsplit(b"\n", 1)[-1])
    except ValueError:
        return None
    return data.get("type") if isinstance(data, dict) else None
