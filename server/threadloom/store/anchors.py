"""Signed anchors: a verified point in a long transcript that survives a restart.

A quick verification (verify_anchored.py) hashes the lines before its anchor in one pass
and checks only the lines after it one by one. In the process that wrote a thread the
anchor is the running hash it keeps; a new process has only the thread's last signed
checkpoint, and a thread of messages alone has none, so its first handoff after a restart
checked every line (issue 17.4: 85-120 ms at 10,000 events).

So the writer also records ``anchors(thread_id, seq, sha256, signature)``: the SHA-256 of
lines 1..seq and the root key's Ed25519 signature over :func:`anchor_message`. It is written
only from a **trusted** running hash (every line it covers went through this process, or
verification proved them), in the commit whose append crossed a multiple of
:data:`ANCHOR_EVERY` lines, after a verification that left a long unanchored tail, and at
close. A later quick check hashes lines 1..seq, compares, and checks the signature: an edit
of any of those lines, or of the anchor row, makes it fall back to the full check.

PostgreSQL keeps the same table (created beside the migrations, under their lock), written
in the background after the commit that crossed (the one-call append has no room for it)
and read in the one statement of ``read_anchored``.

Kept out of the numbered migrations, like ``mirror_pending``: an anchor is derived data that
any version may add beside the schema (and drop: without it verification is only slower).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..integrity import Signer, TranscriptHashes

ANCHOR_EVERY = 500
"""Lines between anchors written by appends: a new process's quick check reads at most this
many lines one by one (plus what came after the last anchor)."""
ANCHOR_MIN_TAIL = 100
"""A verification or a close writes an anchor only past this many unanchored lines."""

TABLE_SQL = """
CREATE TABLE IF NOT EXISTS anchors (
    thread_id TEXT PRIMARY KEY,
    seq       INTEGER NOT NULL,
    sha256    TEXT NOT NULL,
    signature TEXT NOT NULL
) WITHOUT ROWID
"""
PG_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS anchors (
    thread_id TEXT PRIMARY KEY,
    seq       BIGINT NOT NULL,
    sha256    TEXT NOT NULL,
    signature TEXT NOT NULL
)
"""
PG_UPSERT_SQL = (
    "INSERT INTO anchors (thread_id, seq, sha256, signature) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT (thread_id) DO UPDATE SET seq = EXCLUDED.seq, sha256 = EXCLUDED.sha256,"
    " signature = EXCLUDED.signature WHERE anchors.seq < EXCLUDED.seq"
)
PG_READ_SQL = "SELECT seq, sha256, signature FROM anchors WHERE thread_id = %s"
UPSERT_SQL = "INSERT OR REPLACE INTO anchors (thread_id, seq, sha256, signature) VALUES (?, ?, ?, ?)"
READ_SQL = "SELECT seq, sha256, signature FROM anchors WHERE thread_id = ?"


@dataclass(frozen=True, slots=True)
class SignedAnchor:
    """Lines 1..``seq`` of thread ``thread_id`` hash to ``sha256`` (hex), signed by the root key."""

    thread_id: str
    seq: int
    sha256: str
    signature: str

    def valid(self, signer: Signer) -> bool:
        """True when the signature is the root key's over this anchor's statement."""
        return signer.verify(anchor_message(self.thread_id, self.seq, self.sha256), self.signature)


def anchor_message(thread_id: str, seq: int, sha256: str) -> bytes:
    """The bytes an anchor's signature covers (distinct from every other signed thing)."""
    return f"threadloom-anchor\n{thread_id}\n{seq}\n{sha256}".encode()


def sign_anchor(signer: Signer, thread_id: str, seq: int, sha256: str) -> SignedAnchor:
    return SignedAnchor(thread_id, seq, sha256, signer.sign(anchor_message(thread_id, seq, sha256)))


def crossed(before: int, after: int) -> bool:
    """Did an append from ``before`` to ``after`` lines pass a multiple of :data:`ANCHOR_EVERY`?"""
    return after // ANCHOR_EVERY > before // ANCHOR_EVERY


def ensure_anchors(conn: sqlite3.Connection) -> None:
    """Create the table when the database has none yet (outside any transaction)."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'anchors'").fetchone():
        conn.execute(TABLE_SQL)


def read_anchor(conn: sqlite3.Connection, thread_id: str) -> SignedAnchor | None:
    row = conn.execute(READ_SQL, (thread_id,)).fetchone()
    return None if row is None else SignedAnchor(thread_id, int(row[0]), str(row[1]), str(row[2]))


def put_anchors(conn: sqlite3.Connection, anchors: Iterable[SignedAnchor]) -> None:
    conn.executemany(UPSERT_SQL, [(a.thread_id, a.seq, a.sha256, a.signature) for a in anchors])


def delete_anchor(conn: sqlite3.Connection, thread_id: str) -> None:
    conn.execute("DELETE FROM anchors WHERE thread_id = ?", (thread_id,))


class AnchorBook:
    """One process's bookkeeping of stored anchors, shared by the SQLite and PostgreSQL
    stores: which seq each thread's stored anchor has (as far as this process knows), which
    anchors are due (after a verification, at close), which stored row a quick check may use,
    and the writes still on their way. ``store(anchors)`` writes rows (the backend's I/O)."""

    def __init__(
        self, signer: Signer, hashes: TranscriptHashes, store: Callable[[list[SignedAnchor]], Awaitable[None]]
    ) -> None:
        self._signer = signer
        self._hashes = hashes
        self._store = store
        self._seqs: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def note(self, thread_id: str, seq: int) -> None:
        """A stored anchor of ``thread_id`` covers lines 1..``seq`` (written or read)."""
        self._seqs[thread_id] = max(seq, self._seqs.get(thread_id, 0))

    def forget(self, thread_id: str) -> None:
        self._seqs.pop(thread_id, None)

    def usable(
        self, found: SignedAnchor | None, event_count: int, running: tuple[int, Any] | None
    ) -> SignedAnchor | None:
        """The stored anchor a quick check may start from: None when there is none, it covers
        more lines than the thread holds, or this process's running hash goes as far."""
        if found is None:
            return None
        self.note(found.thread_id, found.seq)
        if found.seq > event_count or (running is not None and running[0] >= found.seq):
            return None
        return found

    def verified(self, thread_id: str, seq: int, state: Any) -> None:
        """Verification proved lines 1..``seq``: past a long unanchored tail, store that as a
        signed anchor in the background (outside an event loop, the close stores it)."""
        if seq - self._seqs.get(thread_id, 0) < ANCHOR_MIN_TAIL:
            return
        try:
            asyncio.get_running_loop()  # outside an event loop the close stores it
        except RuntimeError:
            return
        self._seqs[thread_id] = seq
        self.later([sign_anchor(self._signer, thread_id, seq, state.hexdigest())])

    def later(self, signed: list[SignedAnchor]) -> None:
        """Store ``signed`` in the background (in an event loop); :meth:`drain` waits for it."""
        task = asyncio.get_running_loop().create_task(self._store(signed))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def due(self) -> list[SignedAnchor]:
        """Anchors for every thread whose trusted running hash is ANCHOR_MIN_TAIL lines or more
        past its stored anchor (what a close stores)."""
        return [
            sign_anchor(self._signer, tid, seq, sha)
            for tid, seq, sha in self._hashes.trusted_states()
            if seq - self._seqs.get(tid, 0) >= ANCHOR_MIN_TAIL
        ]

    async def drain(self) -> None:
        """Wait for the anchors on their way (before the store stops writing)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
