"""Where an imported thread came from, and this root's countersignature of its import (issue 14.9).

A thread exported from root A and imported into root B keeps A's checkpoint events, whose
signatures only A's key verifies. On import, B records an :class:`ImportRecord` beside the
thread: which key verified each run of checkpoints (``spans``, with the public keys the
bundle carried), the SHA-256 of the lines that came in, when, and under which id they were
exported (``renamed_from``); B then **countersigns** the record with its own key. Verification
(verify.py) checks imported checkpoints with the key that signed them and the record with
B's key, and says "imported, signed by key K (known / unknown)": known when K is B's own key
or one B trusts (trust.py), unknown otherwise. The countersignature is what proves that
nothing changed since the import; a trusted K also proves where the lines came from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, Field

from .errors import InvalidInputError
from .integrity import Signer
from .models import StoredEvent, canonical_json
from .trust import PublicKey, parse_public_key

__all__ = ["SignedSpan", "ImportRecord", "KeyUse", "ImportInfo", "build_record", "parse_spans", "signer_key"]


class SignedSpan(BaseModel):
    """The checkpoints up to line ``upto`` (after the previous span's) verified with ``key_id``
    at import; None when no key at hand verified them (the bundle carried none)."""

    upto: int
    key_id: str | None


class ImportRecord(BaseModel):
    """What this root recorded when it imported a thread, countersigned with its key."""

    thread_id: str
    imported_at: str
    events: int = Field(description="lines 1..events came in through the import")
    sha256: str = Field(description="SHA-256 of those lines (the transcript bytes)")
    spans: list[SignedSpan] = Field(default_factory=list)
    declared: list[SignedSpan] = Field(
        default_factory=list, description="which key the bundle said signed them (its signed_by)"
    )
    keys: dict[str, str] = Field(default_factory=dict, description="key id -> public key PEM")
    renamed_from: str | None = None
    countersigned_by: str
    countersignature: str = ""

    def statement(self) -> bytes:
        """The bytes the countersignature signs: the record without it, canonical JSON."""
        return canonical_json(self.model_dump(mode="json", exclude={"countersignature"})).encode()

    def key_for(self, line: int) -> str | None:
        """The key id recorded for the checkpoint at ``line`` (None when none verified it)."""
        return _span_key(self.spans, line)

    def declared_for(self, line: int) -> str | None:
        """The key the bundle said signed the checkpoint at ``line``, if it said."""
        return _span_key(self.declared, line)

    def public_keys(self) -> dict[str, PublicKey]:
        out = {}
        for kid, pem in self.keys.items():
            try:
                out[kid] = parse_public_key(pem)
            except InvalidInputError:
                continue
        return out

    def to_json(self) -> str:
        return canonical_json(self.model_dump(mode="json"))

    @classmethod
    def from_json(cls, text: str) -> ImportRecord:
        return cls.model_validate(json.loads(text))


class KeyUse(BaseModel):
    """How many of an imported thread's checkpoints a key signed, and whether this root knows it."""

    key_id: str | None = Field(description="None: signed by a key neither the bundle nor this root has")
    known: bool = Field(description="this root's own key, or one it trusts (`threadloom trust`)")
    checkpoints: int


class ImportInfo(BaseModel):
    """What ``verify`` reports about an imported thread's provenance."""

    imported_at: str
    events: int
    renamed_from: str | None = None
    signed_by: list[KeyUse] = Field(default_factory=list)
    countersigned_by: str

    def describe(self) -> str:
        """'imported <when>, signed by key K (known)' and so on, for a summary line."""
        signers = (
            ", ".join(
                f"key {u.key_id} ({'known' if u.known else 'unknown'})"
                if u.key_id
                else "a key this root has never seen (unknown)"
                for u in self.signed_by
            )
            or "no checkpoints"
        )
        renamed = f" as {self.renamed_from} (renamed)" if self.renamed_from else ""
        return (
            f"imported{renamed} {self.imported_at}, {self.events} events, signed by {signers}; "
            f"countersigned by this root's key {self.countersigned_by}"
        )


def _span_key(spans: Sequence[SignedSpan], line: int) -> str | None:
    for span in spans:
        if line <= span.upto:
            return span.key_id
    return None


def parse_spans(raw: object) -> list[SignedSpan]:
    """A bundle's ``signed_by`` as spans (ascending ``upto``); anything malformed is ignored."""
    out: list[SignedSpan] = []
    if not isinstance(raw, list):
        return out
    for item in raw[:10_000]:
        try:
            span = SignedSpan.model_validate(item)
        except ValueError:
            return []
        if out and span.upto <= out[-1].upto:
            return []
        out.append(span)
    return out


def signer_key(signer: Signer) -> PublicKey:
    return PublicKey(signer.public_key)


def build_record(
    thread_id: str,
    events: Sequence[StoredEvent],
    candidates: Mapping[str, PublicKey],
    signer: Signer,
    *,
    imported_at: str,
    renamed_from: str | None = None,
    declared: Sequence[SignedSpan] = (),
) -> ImportRecord:
    """The countersigned record of importing ``events`` (as they will be stored).

    Each checkpoint's signature is tried with the key that verified the previous one, then
    with every candidate (the bundle's keys, this root's own and trusted keys).
    """
    running = hashlib.sha256()
    spans: list[SignedSpan] = []
    used: dict[str, PublicKey] = {}
    order = list(candidates.values())
    last: PublicKey | None = None
    for n, ev in enumerate(events, start=1):
        if ev.type == "checkpoint":
            kid = None
            try:
                data = json.loads(ev.line)
                digest = bytes.fromhex(data.get("sha256", ""))
                signature = data.get("signature")
            except (ValueError, AttributeError, TypeError):
                digest, signature = b"", None
            if digest:
                for key in ([last] if last else []) + [k for k in order if k is not last]:
                    if key.verify(digest, signature):
                        kid, last = key.key_id, key
                        used[kid] = key
                        break
            if spans and spans[-1].key_id == kid:
                spans[-1].upto = n
            else:
                spans.append(SignedSpan(upto=n, key_id=kid))
        running.update(ev.line.encode())
        running.update(b"\n")
    record = ImportRecord(
        thread_id=thread_id,
        imported_at=imported_at,
        events=len(events),
        sha256=running.hexdigest(),
        spans=spans,
        declared=list(declared),
        keys={
            kid: key.pem
            for kid, key in candidates.items()
            if kid in used or any(d.key_id == kid for d in declared)
        },
        renamed_from=renamed_from,
        countersigned_by=signer.key_id,
    )
    record.countersignature = signer.sign(record.statement())
    return record
