"""SQLite backend: one ``threads.db`` in WAL mode under the root, shared by any number of processes.

One writer thread per process drains every pending commit into one transaction
(group commit, each commit in its own savepoint so one failure spares the others);
reader threads hold their own connections. ``BEGIN IMMEDIATE`` plus a busy timeout
plus bounded retries keep "database is locked" from ever reaching a caller.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ConflictError, IntegrityError, StoreUnavailableError, ThreadloomError
from ..integrity import HashView, Signer, TranscriptHashes, chain_hashes
from ..mirror import Mirror, MirrorBusy
from ..models import Status, StoredEvent, Thread
from ..private import ensure_file, make_dir
from ..provenance import ImportRecord
from ..textquery import Mode, TextQuery
from . import anchors, fts, sqlvectors
from .apply import (
    list_threads_query,
    manifest_doc,
    not_found,
    now_pair,
    row_to_thread,
    wants_checkpoint,
)
from .base import (
    AnchoredSnapshot,
    AppendEvents,
    AppendResult,
    CommitResult,
    CreateThread,
    IdempotencyRecord,
    ImportThread,
    IntegritySnapshot,
    Op,
    PutLease,
    PutThread,
    PutUsage,
    ReindexProgress,
    ReindexStats,
    SearchHit,
    Store,
    VectorRow,
)
from .core import (
    Loaded,
    create_sql,
    created_row,
    import_sql,
    plan_append,
    plan_checkpoint,
    plan_import,
    plan_put_lease,
    plan_put_thread,
    plan_put_usage,
    put_lease_sql,
    put_thread_sql,
    update_sql,
)
from .pending import (
    BackgroundSweep,
    Mark,
    clear_marks,
    ensure_table,
    forget_marks,
    mark_pending,
    new_mark,
    pending_marks,
    sweep_needed,
    write_txn,
)
from .schema import SQLITE_MIGRATIONS, apply_sqlite_migrations
from .sqlrows import event_row, event_ts, hash_hex, stored_accounts
from .textsearch import Finder
from .vectors import VectorCache
from .workers import GiveWay, Job, WorkerPool, resolve

log = logging.getLogger("threadloom.store")
T = TypeVar("T")

BUSY_TIMEOUT_MS = 5000
QUICK_IDS = 20
"""get_threads of at most this many ids runs on the caller's thread (SQLiteStore._read_quick)."""
MAX_BUSY_RETRIES = 12
MAX_GROUP = 256
READERS = 2
WATCH_INTERVAL = 0.005  # seconds between data_version polls while someone waits
DURABILITY = {"full": "FULL", "normal": "NORMAL"}

JOINED_LINES = (
    "SELECT CAST(group_concat(line, char(10)) AS BLOB) FROM"
    " (SELECT line FROM events WHERE thread_id = ? AND seq > ? AND seq <= ? ORDER BY seq)"
)
"""A thread's lines ``after < seq <= upto`` joined by newlines, as one UTF-8 value (SQLite keeps
the subquery's order for group_concat; as a BLOB it skips a decode, 3-5x faster for 1 MB)."""

INSERT_EVENT = "INSERT INTO events (thread_id, seq, ts, type, line, prev_hash) VALUES (?,?,?,?,?,?)"
"""One event row, as :func:`~.sqlrows.event_row` gives its values (migration 0010's layout)."""

PAGE_SIZE = 8192
"""The page size of a new database (SQLite's default is 4096): an events row of a few hundred
bytes wastes less of a larger page (on benchmarks/scale.py's data 0.15 bytes per payload
byte less than at 4096; 16384 saved 0.02 more and cost ~10% more CPU per append,
docs/performance.md). An existing database keeps its page size (WAL mode cannot change it)."""

_THREAD_COLS = (
    "thread_id, doc, status, updated_at, heartbeat_at, event_count, text_chars, input_tokens, version, accounts,"
    " lease_owner, lease_expires, lease_ttl"
)


_row_to_thread = row_to_thread
AFTER_CACHE = 4096
"""Threads whose last parsed manifest the writer keeps (``_thread_after``)."""


def _op_thread(op: Op) -> str | None:
    """The thread an op writes (every op names one)."""
    tid = getattr(op, "thread_id", None)
    return tid if tid is not None else getattr(getattr(op, "thread", None), "thread_id", None)


WAL_CHECKPOINT_PAGES = 1000  # SQLite's default auto-checkpoint
CHECKPOINT_COMMITS = 250
"""Inline commits (a few WAL frames each) after which the writer's idle work checkpoints."""
INLINE_EVENTS = 16
"""A commit appending at most this many events may run on the caller's thread (commit)."""


def _small(ops: Sequence[Op]) -> bool:
    """A commit short enough to run on the event loop: no import, a handful of events."""
    n = 0
    for op in ops:
        if isinstance(op, ImportThread):
            return False
        if isinstance(op, AppendEvents):
            n += len(op.events)
    return n <= INLINE_EVENTS


def _is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class SQLiteStore(Store):
    """The default store: ``<root>/threads.db`` plus file mirrors under ``<root>/threads``."""

    name = "sqlite"

    def __init__(
        self,
        root: Path,
        *,
        durability: str = "full",
        mirrors: bool = True,
        signer: Signer | None = None,
        checkpoints: bool = True,
        reconcile: bool = True,
    ) -> None:
        """``signer`` defaults to the root's key (``<root>/keys``), loaded by :meth:`open`;
        ``checkpoints=False`` writes no checkpoint events (benchmarks and bulk imports only);
        ``reconcile=False`` skips the start-up mirror repair (operator commands that only
        read, and ``doctor``, which must see drift before anything repairs it)."""
        super().__init__()
        self.reconcile_on_open = reconcile
        if durability not in DURABILITY:
            raise ValueError(f"durability must be 'full' or 'normal'; got {durability!r}")
        self.root = Path(root)
        self.path = self.root / "threads.db"
        self.durability = durability
        self.signer = signer or Signer.for_root(self.root)
        self.checkpoints = checkpoints
        self._hashes = TranscriptHashes()
        self._mirrored: list[Mark] = []  # mirrors written since their commit: marks to clear
        self._sweep: BackgroundSweep | None = None
        self.startup_repair: tuple[int, int] | None = None
        """(threads checked, threads repaired) by the last start-up repair (pending marks only)."""
        self._txn_views: list[HashView] = []
        try:
            make_dir(self.root)
            self.mirror = Mirror(self.root, self.signer) if mirrors else None
        except OSError as exc:
            why = exc.strerror or str(exc)
            if isinstance(exc, (FileExistsError, NotADirectoryError)):
                why = f"{Path(exc.filename or self.root).absolute()} is a file, not a folder"
            elif exc.filename and Path(exc.filename) != self.root:
                why = f"{Path(exc.filename).absolute()}: {why}"
            raise StoreUnavailableError(
                f"[root] cannot create the data folder {self.root.absolute()} ({why}); "
                "give --root DIR (or set THREADLOOM_HOME) to a folder you can write",
                rule="root",
            ) from None
        self._writer: WorkerPool | None = None
        self._readers: WorkerPool | None = None
        self._quick_conn: sqlite3.Connection | None = None  # _read_quick's, on the callers' thread
        self._quick_lock = threading.Lock()
        self._wconn: sqlite3.Connection | None = None
        self._wconn_waits = True  # busy timeout and auto-checkpoint on (off while commits run inline)
        self._commits_waiting = 0  # commits submitted and not answered yet (this process)
        self._inline_since_check = 0  # inline commits since the writer thread last looked at the WAL
        self._inline_seen = 0  # ... as the writer thread's last idle moment saw it
        self._local = threading.local()
        self._rconns: list[sqlite3.Connection] = []
        self._rlock = threading.Lock()
        self._search = fts.SearchEngine()
        self._vectors = VectorCache()
        self._after_cache: dict[str, tuple[tuple[Any, ...], Thread]] = {}
        self._anchor_book = anchors.AnchorBook(self.signer, self._hashes, self._store_anchors)

    # ----------------------------------------------------------- connections

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute(f"PRAGMA synchronous={DURABILITY[self.durability]}")
        return conn

    def _reader_conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._rlock:
                self._rconns.append(conn)
        return conn

    async def open(self) -> None:
        if self._writer is not None:
            return
        make_dir(self.root)
        try:
            ensure_file(self.path)  # 0600 before SQLite creates it (its -wal and -shm take its mode)
            conn = self._connect()
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # a new database only
            conn.execute("PRAGMA journal_mode=WAL")
            _retry_busy(lambda: apply_sqlite_migrations(conn, SQLITE_MIGRATIONS))
            _retry_busy(lambda: ensure_table(conn))
            _retry_busy(lambda: anchors.ensure_anchors(conn))
            has_threads = conn.execute("SELECT EXISTS (SELECT 1 FROM threads)").fetchone()[0]
            row = conn.execute("SELECT value FROM meta WHERE key = 'signing_key_id'").fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailableError(f"cannot open {self.path}: {exc}") from exc
        try:
            self._load_key(conn, bool(has_threads), row[0] if row else None)
        except BaseException:
            conn.close()
            raise
        self._wconn = conn
        self._unfolded = 0
        self._writer = WorkerPool(
            "threadloom-writer",
            1,
            self._handle_writes,
            max_batch=MAX_GROUP,
            idle=lambda: fts.FOLD_IDLE if self._unfolded or self._inline_since_check else None,
            on_idle=lambda: self._idle_work(conn),
            translate=self._driver_error,
            inline=self._inline_writes,
        )
        self._readers = WorkerPool(
            "threadloom-reader", READERS, self._handle_reads, translate=self._driver_error
        )
        quick = self._connect()
        quick.execute("PRAGMA busy_timeout=0")  # never wait on the event loop: busy goes to the pool
        quick.execute("PRAGMA query_only=ON")
        self._quick_conn = quick
        if self.reconcile_on_open:
            await self._repair_pending()

    def _load_key(self, conn: sqlite3.Connection, has_threads: bool, recorded: str | None) -> None:
        """Load the root's key; a new one only when nothing in this database was signed yet
        (no threads, or threads from before signing existed: no key id recorded)."""
        signed = has_threads and recorded is not None
        self.signer.load(allow_create=not signed)
        if recorded == self.signer.key_id:
            return
        if signed:
            raise IntegrityError(
                f"the key in {self.signer.keys_dir} (id {self.signer.key_id}) is not the key the threads "
                f"of {self.path} were signed with (id {recorded}): restore that root's keys/ from a backup",
                rule="signing_key_mismatch",
            )
        _retry_busy(
            lambda: conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('signing_key_id', ?)", (self.signer.key_id,)
            )
        )

    async def close(self) -> None:
        if self._writer is None:
            return
        await self._anchor_book.drain()  # anchors on their way to the writer: before it stops
        due = self._anchor_book.due()  # what this process wrote or verified: the next one checks little
        if due:
            await self._store_anchors(due)
        try:  # leave the index whole for the next opener (it would fold the tail anyway)
            await self._writer.submit(self._fold)
        except Exception:
            log.warning("could not fold the search index's tail at close", exc_info=True)
        self._writer.stop()
        assert self._readers is not None
        self._readers.stop()
        self._writer = self._readers = None
        if self.mirror is not None:
            self.mirror.close()
        await self._close_marks()
        if self._wconn is not None:
            self._wconn.close()
            self._wconn = None
        with self._rlock:
            for c in self._rconns:
                c.close()
            self._rconns.clear()
        with self._quick_lock:
            if self._quick_conn is not None:
                self._quick_conn.close()
                self._quick_conn = None

    def _driver_error(self, exc: BaseException) -> BaseException:
        """What a caller gets for what a job raised: the one point where this backend's driver
        errors become the error tree (both worker pools: reads, commits and maintenance; and
        the point reads that run on the caller's thread, :meth:`_read_quick`)."""
        if isinstance(exc, sqlite3.IntegrityError):
            return _translate(exc)
        if isinstance(exc, sqlite3.Error):
            return StoreUnavailableError(f"SQLite failed on {self.path}: {exc}")
        return exc

    # ----------------------------------------------------------------- reads

    def _handle_reads(self, batch: list[Job]) -> None:
        for job in batch:
            try:
                resolve(job, _retry_busy(lambda: job.payload(self._reader_conn())))
            except BaseException as exc:  # a driver error is translated by the pool (_driver_error)
                resolve(job, error=exc)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._readers is None:
            raise StoreUnavailableError("the store is not open")
        return await self._readers.submit(fn)

    async def _read_quick(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A point read (a row by key, a bounded page) run on the caller's thread: waking a
        reader thread and the event loop again costs ~0.1 ms in an idle server, several
        times the read. Busy (a checkpoint, a recovery) or a second caller meanwhile: the pool."""
        conn = self._quick_conn
        if conn is None or not self._quick_lock.acquire(blocking=False):
            return await self._read(fn)
        try:
            return fn(conn)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise self._driver_error(exc) from None
        except sqlite3.Error as exc:
            raise self._driver_error(exc) from None
        finally:
            self._quick_lock.release()
        return await self._read(fn)

    async def get_thread(self, thread_id: str) -> Thread:
        return await self._read_quick(lambda c: _get_thread(c, thread_id))

    async def get_threads(self, thread_ids: Sequence[str]) -> dict[str, Thread]:
        ids = list(dict.fromkeys(thread_ids))

        def fn(c: sqlite3.Connection) -> dict[str, Thread]:
            out: dict[str, Thread] = {}
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                q = f"SELECT {_THREAD_COLS} FROM threads WHERE thread_id IN ({','.join('?' * len(part))})"
                for row in c.execute(q, part):
                    out[row[0]] = _row_to_thread(row)
            return out

        return await (self._read_quick if len(ids) <= QUICK_IDS else self._read)(fn)

    async def list_threads(
        self,
        *,
        agent_id: str | None = None,
        parent_id: str | None = None,
        status: Status | None = None,
        limit: int = 50,
        before: tuple[str, str] | None = None,
    ) -> list[Thread]:
        q, args = list_threads_query(
            _THREAD_COLS,
            agent_id=agent_id,
            parent_id=parent_id,
            status=status,
            limit=limit,
            before=before,
            mark="?",
        )
        return await self._read(lambda c: [_row_to_thread(r) for r in c.execute(q, args)])

    async def read_events(
        self, thread_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        def fn(c: sqlite3.Connection) -> list[StoredEvent]:
            events = _read_events(c, thread_id, after_seq, limit)
            if (
                not events
                and c.execute("SELECT 1 FROM threads WHERE thread_id = ?", (thread_id,)).fetchone() is None
            ):
                raise not_found(thread_id)
            return events

        return await self._read(fn)

    async def find_idempotency(self, thread_id: str, key: str) -> IdempotencyRecord | None:
        return await self._read_quick(lambda c: _find_idem(c, thread_id, key))

    async def read_integrity(self, thread_id: str) -> IntegritySnapshot:
        def db(c: sqlite3.Connection) -> IntegritySnapshot:
            c.execute("BEGIN")  # one snapshot for the row and the events
            try:
                row = c.execute(
                    f"SELECT {_THREAD_COLS}, chain_head FROM threads WHERE thread_id = ?", (thread_id,)
                ).fetchone()
                if row is None:
                    raise not_found(thread_id)
                events = _read_events(c, thread_id, 0, None)
                record = _import_record(c, thread_id)
                return IntegritySnapshot(_row_to_thread(row[:-1]), events, row[-1], None, record)
            finally:
                c.execute("COMMIT")

        def fn(c: sqlite3.Connection) -> IntegritySnapshot:
            if self.mirror is None:
                return db(c)
            snap, files = self.mirror.read_files(thread_id, lambda: db(c))
            return dc_replace(snap, files=files)

        return await self._read(fn)

    async def import_records(self, thread_ids: Sequence[str]) -> dict[str, ImportRecord]:
        ids = list(dict.fromkeys(thread_ids))

        def fn(c: sqlite3.Connection) -> dict[str, ImportRecord]:
            out: dict[str, ImportRecord] = {}
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                q = f"SELECT thread_id, record FROM thread_imports WHERE thread_id IN ({','.join('?' * len(part))})"
                for tid, text in c.execute(q, part):
                    out[tid] = ImportRecord.from_json(text)
            return out

        return await self._read(fn)

    async def read_anchored(self, thread_id: str) -> AnchoredSnapshot:
        def db(c: sqlite3.Connection) -> AnchoredSnapshot:
            anchor = self._hashes.anchor(thread_id)  # before the snapshot: what it covers is committed
            c.execute("BEGIN")
            try:
                row = c.execute(
                    f"SELECT {_THREAD_COLS}, chain_head FROM threads WHERE thread_id = ?", (thread_id,)
                ).fetchone()
                if row is None:
                    raise not_found(thread_id)
                thread = _row_to_thread(row[:-1])
                if anchor is not None and anchor[0] > thread.event_count:
                    anchor = None
                signed = self._anchor_book.usable(
                    anchors.read_anchor(c, thread_id), thread.event_count, anchor
                )
                m = signed.seq if signed is not None else anchor[0] if anchor is not None else 0
                cp = c.execute(
                    "SELECT seq FROM events WHERE thread_id = ? AND seq > ? AND type = 'checkpoint'"
                    " ORDER BY seq DESC LIMIT 1",
                    (thread_id, m),
                ).fetchone()
                base = max(m, cp[0] - 1 if cp else 0)
                prefix = c.execute(JOINED_LINES, (thread_id, 0, base)).fetchone()[0] if base else None
                tail = _read_events(c, thread_id, base, None)
                imported = _import_record(c, thread_id) is not None
            finally:
                c.execute("COMMIT")
            if signed is not None and base != signed.seq:
                signed = None  # a checkpoint after it is the base
            return AnchoredSnapshot(thread, row[-1], anchor, base, prefix, tail, None, imported, signed)

        def fn(c: sqlite3.Connection) -> AnchoredSnapshot:
            if self.mirror is None:
                return db(c)
            snap, files = self.mirror.read_files(thread_id, lambda: db(c))
            return dc_replace(snap, files=files)

        return await self._read(fn)

    def trust_verified(self, thread_id: str, seq: int, state: Any) -> None:
        """Keep the verified hash as this process's anchor and, past a long unanchored tail,
        store it as a signed anchor (anchors.py) so that the next process checks little."""
        super().trust_verified(thread_id, seq, state)
        if self._writer is not None:
            self._anchor_book.verified(thread_id, seq, state)

    async def _store_anchors(self, signed: list[anchors.SignedAnchor]) -> None:
        def work(conn: sqlite3.Connection) -> None:
            write_txn(conn, lambda: anchors.put_anchors(conn, signed), _retry_busy)

        try:
            if self._writer is not None:
                await self._writer.submit(work)
        except (sqlite3.Error, ThreadloomError) as exc:  # only a later check is slower
            log.warning("could not store %d transcript anchor(s): %s", len(signed), exc)
            return
        for a in signed:
            self._anchor_book.note(a.thread_id, a.seq)

    async def list_stale(self, now: float, *, limit: int = 100) -> list[Thread]:
        q = (
            f"SELECT {_THREAD_COLS} FROM threads WHERE status = 'running' "
            "AND heartbeat_epoch + stale_after < ? LIMIT ?"
        )
        return await self._read(lambda c: [_row_to_thread(r) for r in c.execute(q, (now, limit))])

    async def changed_since(self, since: str, *, limit: int = 500) -> list[Thread]:
        q = f"SELECT {_THREAD_COLS} FROM threads WHERE updated_at >= ? ORDER BY updated_at LIMIT ?"
        return await self._read(lambda c: [_row_to_thread(r) for r in c.execute(q, (since, limit))])

    async def child_counts(self, parent_id: str) -> dict[str, int]:
        q = "SELECT status, COUNT(*) FROM threads WHERE parent_id = ? GROUP BY status"
        return await self._read_quick(lambda c: {status: n for status, n in c.execute(q, (parent_id,))})

    async def list_chain(self, chain_root_id: str) -> list[Thread]:
        q = f"SELECT {_THREAD_COLS} FROM threads WHERE chain_root_id = ? ORDER BY created_at, thread_id"
        return await self._read(lambda c: [_row_to_thread(r) for r in c.execute(q, (chain_root_id,))])

    async def list_forks(self, thread_ids: Sequence[str]) -> list[Thread]:
        ids = list(dict.fromkeys(thread_ids))

        def fn(c: sqlite3.Connection) -> list[Thread]:
            rows: list[Thread] = []
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                q = f"SELECT {_THREAD_COLS} FROM threads WHERE fork_of IN ({','.join('?' * len(part))})"
                rows += [_row_to_thread(r) for r in c.execute(q, part)]
            return sorted(rows, key=lambda t: (t.created_at, t.thread_id))

        return await self._read(fn)

    async def delete_threads(self, thread_ids: Sequence[str]) -> int:
        if self._writer is None:
            raise StoreUnavailableError("the store is not open")
        ids = list(dict.fromkeys(thread_ids))
        mirror = self.mirror

        def work(conn: sqlite3.Connection) -> list[str]:
            def txn() -> list[str]:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    gone = []
                    forget_marks(conn, ids)
                    for tid in ids:
                        fts.delete_thread_docs(conn, tid)
                        sqlvectors.delete_thread_vectors(conn, tid)
                        if conn.execute("DELETE FROM threads WHERE thread_id = ?", (tid,)).rowcount:
                            gone.append(tid)
                        conn.execute("DELETE FROM events WHERE thread_id = ?", (tid,))
                        conn.execute("DELETE FROM idempotency WHERE thread_id = ?", (tid,))
                        conn.execute("DELETE FROM thread_imports WHERE thread_id = ?", (tid,))
                        anchors.delete_anchor(conn, tid)
                    conn.execute("COMMIT")
                    return gone
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise

            gone = _retry_busy(txn)
            for tid in ids:
                self._hashes.forget(tid)
                self._anchor_book.forget(tid)
            if mirror is not None:
                for tid in ids:
                    mirror.remove(tid)
            return gone

        gone: list[str] = await self._writer.submit(work)
        if gone:
            self._notify(frozenset(gone))
        return len(gone)

    # ---------------------------------------------------------------- writes

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        if self._writer is None:
            raise StoreUnavailableError("the store is not open")
        inline = self.durability == "normal" and self._commits_waiting == 0 and _small(ops)
        self._commits_waiting += 1
        try:
            result: CommitResult = await self._writer.submit(list(ops), inline=inline)
        finally:
            self._commits_waiting -= 1
        self._notify(frozenset(result.threads))
        return result

    def _inline_writes(self, batch: list[Job]) -> None:
        """A small commit (durability normal: no fsync) on the caller's thread while the writer
        is idle and no other commit waits (docs/decisions.md). It never waits on the event
        loop: a busy database gives the job back to the writer thread, and the WAL checkpoint
        (an fsync) is left to the writer thread's idle work."""
        conn = self._wconn
        assert conn is not None
        if self._wconn_waits:
            conn.execute("PRAGMA busy_timeout=0")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._wconn_waits = False
        self._inline_since_check += 1
        self._handle_writes(batch, inline=True)

    def _idle_work(self, conn: sqlite3.Connection) -> None:
        """The writer thread's idle moment: fold the search tail; after inline commits (which
        leave the WAL unchecked), checkpoint once about SQLite's auto-checkpoint worth of them
        has gone by, or when they stopped (none since the last idle moment)."""
        if self._unfolded:
            self._fold(conn)
        n = self._inline_since_check
        if n and (n >= CHECKPOINT_COMMITS or n == self._inline_seen):
            self._inline_since_check = self._inline_seen = 0
            _retry_busy(lambda: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())
        else:
            self._inline_seen = n

    def _handle_writes(self, batch: list[Job], inline: bool = False) -> None:
        conn = self._wconn
        assert conn is not None
        if not inline and not self._wconn_waits:  # the writer thread waits and checkpoints again
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            self._wconn_waits = True
        outcomes: list[tuple[Job, CommitResult | None, BaseException | None]] = []
        for job in [j for j in batch if callable(j.payload)]:  # maintenance that needs the writer
            try:
                resolve(job, job.payload(conn))
            except BaseException as exc:
                resolve(job, error=exc)
        batch = [j for j in batch if not callable(j.payload)]
        if not batch:
            return
        flush = list(self._mirrored) if self.mirror is not None else []
        # a thread this batch marks again needs no delete first: its new mark replaces the old
        touched = {_op_thread(op) for job in batch for op in job.payload}
        clear = [m for m in flush if m[0] not in touched]
        mark = new_mark()
        for attempt in range(MAX_BUSY_RETRIES + 1):
            outcomes = []
            self._txn_views = []  # running hashes of this transaction's jobs, published on COMMIT
            try:
                conn.execute("BEGIN IMMEDIATE")
                clear_marks(conn, clear)  # the previous commits' mirrors are written
                ts, epoch = now_pair()
                alone = len(batch) == 1  # no savepoint needed: the transaction is the job
                plan = fts.IndexPlan()
                for job in batch:
                    if not alone:
                        conn.execute("SAVEPOINT job")
                    try:
                        moved = fts.agent_moves(conn, job.payload)
                        res = self._apply(conn, job.payload, ts, epoch)
                        if self.mirror is not None:  # these mirrors are behind until written below
                            mark_pending(conn, res.threads, mark)
                        if not alone:
                            conn.execute("RELEASE job")
                        outcomes.append((job, res, None))
                        plan.add(job.payload, res, moved)
                    except sqlite3.OperationalError:
                        raise  # busy or I/O: retry or fail the whole batch below
                    except Exception as exc:  # this job fails alone; a bug must not leave a txn open
                        if not isinstance(exc, (ThreadloomError, sqlite3.IntegrityError)):
                            log.exception("commit job failed unexpectedly")
                        conn.execute("ROLLBACK" if alone else "ROLLBACK TO job")
                        if not alone:
                            conn.execute("RELEASE job")
                        outcomes.append((job, None, _translate(exc)))
                if conn.in_transaction:
                    plan.apply(conn)  # agent moves only: appended events wait for the next fold
                    conn.execute("COMMIT")
                    del self._mirrored[: len(flush)]
                    for view in self._txn_views:
                        view.publish()
                    for _job, res, _err in outcomes:
                        for tid, seq in res.anchored if res is not None else ():
                            self._anchor_book.note(tid, seq)
                    self._unfolded += plan.appended
                break
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if inline and _is_busy(exc):
                    raise GiveWay from exc  # nothing written: the writer thread waits instead
                if _is_busy(exc) and attempt < MAX_BUSY_RETRIES:
                    time.sleep(min(0.002 * 2**attempt, 0.5))
                    continue
                err = StoreUnavailableError(f"commit failed on {self.path} after {attempt + 1} tries: {exc}")
                for job in batch:
                    resolve(job, error=err)
                return
        fresh: dict[str, Thread] = {}
        appended: dict[str, list[StoredEvent]] = {}
        for _job, res, _err in outcomes:
            if res is not None:
                for tid, known in res.threads.items():
                    if known is None or fresh.get(tid) is not None:  # created, put, or touched twice
                        known = _get_thread(conn, tid)
                    fresh[tid] = res.threads[tid] = known
                for a in res.appends:
                    appended.setdefault(a.thread_id, []).extend(a.events)
        if self.mirror is not None:
            tids = sorted(fresh)
            for i, tid in enumerate(tids):
                try:
                    if self._sync_mirror(conn, tid, fresh[tid], appended.get(tid), wait=not inline):
                        self._mirrored.append((tid, mark))
                except MirrorBusy:  # inline, and another process writes this mirror: no waiting here
                    self._finish_on_writer(tids[i:], fresh, appended, mark, outcomes)
                    return
        for job, res, err in outcomes:
            resolve(job, res, err)
        if self._unfolded >= fts.FOLD_ROWS and not inline:  # after the acknowledgements
            try:
                self._fold(conn)
            except sqlite3.Error as exc:  # the next search or idle moment folds instead
                log.warning("search index fold failed: %s", exc)

    def _finish_on_writer(
        self,
        tids: list[str],
        fresh: dict[str, Thread],
        appended: dict[str, list[StoredEvent]],
        mark: int,
        outcomes: list[tuple[Job, CommitResult | None, BaseException | None]],
    ) -> None:
        """An inline commit whose mirror another process holds: the writer thread waits for the
        lock, writes the mirrors left and only then answers, as a queued commit would."""

        def finish(conn: sqlite3.Connection) -> None:
            try:
                for tid in tids:
                    if self._sync_mirror(conn, tid, fresh[tid], appended.get(tid)):
                        self._mirrored.append((tid, mark))
            finally:  # the commit stands whatever the files did: its callers get its outcome
                for job, res, err in outcomes:
                    job.here = False  # answered from this thread now: wake the loop
                    resolve(job, res, err)

        assert self._writer is not None
        loop = outcomes[0][0].loop
        self._writer.put(Job(finish, loop.create_future(), loop))

    def _sync_mirror(
        self,
        conn: sqlite3.Connection,
        tid: str,
        known: Thread,
        appended: list[StoredEvent] | None,
        *,
        wait: bool = True,
    ) -> bool:
        """Write the thread's files after its commit; False when that failed (its mark stays).
        ``wait=False`` raises MirrorBusy, having written nothing, if another process holds them."""
        assert self.mirror is not None
        try:
            self.mirror.sync(
                tid,
                lambda after: _read_events(conn, tid, after, None),
                lambda: _get_thread(conn, tid),
                appended=sorted(appended, key=lambda e: e.seq) if appended else None,
                known=known,
                fetch_version=lambda: conn.execute(
                    "SELECT version FROM threads WHERE thread_id = ?", (tid,)
                ).fetchone()[0],
                wait=wait,
            )
        except (OSError, ThreadloomError, sqlite3.Error) as exc:
            # the commit stands; its mark (store/pending.py) has the files repaired
            log.error("mirror write failed for thread %s: %s", tid, exc)
            return False
        return True

    async def _close_marks(self) -> None:
        """At close (the writer stopped): stop the background sweep and clear this process's
        marks of mirrors it wrote, so a clean shutdown leaves nothing for the next start-up."""
        if self._sweep is not None:
            await asyncio.to_thread(self._sweep.stop)
            self._sweep = None
        conn = self._wconn
        if not self._mirrored or conn is None:
            return
        done = list(self._mirrored)
        try:
            write_txn(conn, lambda: clear_marks(conn, done), _retry_busy)
        except sqlite3.Error as exc:  # the marks stay: the next start-up checks those threads again
            log.warning("cannot clear the mirror marks on close: %s", exc)
        self._mirrored.clear()

    def _apply(self, conn: sqlite3.Connection, ops: list[Op], ts: str, epoch: float) -> CommitResult:
        result = CommitResult()
        view = self._hashes.view(self._txn_views)
        appended: dict[str, _Appended] = {}  # what a checkpoint needs to know, per thread appended to
        for op in ops:
            if isinstance(op, CreateThread):
                t = op.thread
                conn.execute(create_sql("?"), created_row(t, epoch, stored_accounts(t.usage, t.budget)))
                result.threads[t.thread_id] = None  # type: ignore[assignment]  # read after commit
                view.start(t.thread_id)
            elif isinstance(op, AppendEvents):
                res, state, after = self._append(conn, op, ts, epoch, view)
                result.appends.append(res)
                asked = op.checkpoint or (op.thread_id in appended and appended[op.thread_id].asked)
                first = appended[op.thread_id].first if op.thread_id in appended else res.seqs[0]
                appended[op.thread_id] = _Appended(asked, *state, res, first)
                # known now unless another op of this job touched the thread (then read after commit)
                once = op.thread_id not in result.threads and not asked
                result.threads[op.thread_id] = self._thread_after(after) if once else None  # type: ignore[assignment]
            elif isinstance(op, PutUsage):
                row = conn.execute(
                    "SELECT accounts FROM threads WHERE thread_id = ?", (op.thread_id,)
                ).fetchone()
                if row is None:
                    raise not_found(op.thread_id)
                usage = plan_put_usage(op, row[0])
                conn.execute(
                    "UPDATE threads SET accounts = ? WHERE thread_id = ?",
                    (stored_accounts(usage, op.budget), op.thread_id),
                )
                result.threads[op.thread_id] = None  # type: ignore[assignment]
            elif isinstance(op, PutLease):
                row = conn.execute(
                    "SELECT lease_owner, lease_expires, lease_ttl FROM threads WHERE thread_id = ?",
                    (op.thread_id,),
                ).fetchone()
                if row is None:
                    raise not_found(op.thread_id)
                cols = plan_put_lease(op, (row[0], row[1], row[2]), epoch)
                if cols is not None:
                    conn.execute(put_lease_sql("?"), (*cols, ts, op.thread_id))
                result.threads[op.thread_id] = None  # type: ignore[assignment]
            elif isinstance(op, PutThread):
                t = op.thread
                row = conn.execute(
                    "SELECT version, heartbeat_epoch, lease_owner, lease_expires, lease_ttl FROM threads"
                    " WHERE thread_id = ?",
                    (t.thread_id,),
                ).fetchone()
                if row is None:
                    raise not_found(t.thread_id)
                conn.execute(
                    put_thread_sql("?"),
                    plan_put_thread(op, row[0], row[1], (row[2], row[3], row[4]), ts, epoch),
                )
                result.threads[t.thread_id] = None  # type: ignore[assignment]
                if t.thread_id in appended:
                    appended[t.thread_id].status = t.status
            elif isinstance(op, ImportThread):
                t = op.thread
                exists = conn.execute("SELECT 1 FROM threads WHERE thread_id = ?", (t.thread_id,)).fetchone()
                w = plan_import(op, exists is not None, stored_accounts(t.usage, t.budget))
                conn.execute(import_sql("?"), w.row)
                self._hashes.forget(t.thread_id)  # a state left from a deleted thread of that id is stale
                conn.executemany(
                    INSERT_EVENT,
                    [event_row(e.thread_id, e.seq, e.ts, e.type, e.line, e.prev_hash) for e in w.events],
                )
                if op.record is not None:
                    conn.execute(
                        "INSERT INTO thread_imports (thread_id, record) VALUES (?, ?)",
                        (t.thread_id, op.record.to_json()),
                    )
                result.threads[t.thread_id] = None  # type: ignore[assignment]  # read after commit
        if self.checkpoints:
            for tid, state in appended.items():
                if wants_checkpoint(state.asked, state.status):
                    self._checkpoint(conn, tid, state, ts, epoch, view)
                    result.threads[tid] = None  # type: ignore[assignment]  # read after commit
            signed = []
            for tid, state in appended.items():
                known = view.trusted(tid)  # only lines this process wrote or verified are signed
                if known is not None and anchors.crossed(state.first - 1, known[0]):
                    signed.append(anchors.sign_anchor(self.signer, tid, *known))
            if signed:
                anchors.put_anchors(conn, signed)
                result.anchored = [(a.thread_id, a.seq) for a in signed]
        self._txn_views.append(view)
        return result

    # ------------------------------------------------------------------ watch

    def watch_external(self, on_change: Callable[[], None]) -> Callable[[], None]:
        """Poll ``PRAGMA data_version`` every few ms on a dedicated connection in its own
        thread: it moves when any other connection (another process, or this process's
        writer) commits. A few ms median wake for ~1-2% of a core, only while someone waits."""
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        path = self.path

        def run() -> None:
            try:
                conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5)
            except sqlite3.Error as exc:
                log.error("cannot watch %s for changes: %s", path, exc)
                return
            try:
                last = conn.execute("PRAGMA data_version").fetchone()[0]
                while not stop.wait(WATCH_INTERVAL):
                    try:
                        version = conn.execute("PRAGMA data_version").fetchone()[0]
                    except sqlite3.Error:
                        continue
                    if version != last:
                        last = version
                        try:
                            loop.call_soon_threadsafe(on_change)
                        except RuntimeError:  # the loop closed
                            return
            finally:
                conn.close()

        threading.Thread(target=run, name="threadloom-watch", daemon=True).start()
        return stop.set

    def _append(
        self, conn: sqlite3.Connection, op: AppendEvents, ts: str, epoch: float, view: HashView
    ) -> tuple[AppendResult, tuple[Status, int, str], tuple[Any, ...]]:
        """Load the thread's row, plan the append (store/core.py) and write it; return the
        result, the thread's (status, event count, chain head) and its row as the append left
        it (so the commit needs no read afterwards)."""
        row = conn.execute(
            f"SELECT {_THREAD_COLS}, chain_head FROM threads WHERE thread_id = ?", (op.thread_id,)
        ).fetchone()
        if row is None:
            raise not_found(op.thread_id)
        loaded = Loaded.from_row(row)
        idem = _find_idem(conn, op.thread_id, op.idempotency_key) if op.idempotency_key is not None else None
        w = plan_append(op, loaded, idem, ts, epoch)
        view.extend(op.thread_id, loaded.event_count, w.lines)
        conn.executemany(
            INSERT_EVENT, [event_row(e.thread_id, e.seq, e.ts, e.type, e.line, e.prev_hash) for e in w.stored]
        )
        conn.execute(update_sql("?", start=w.started), (*w.columns(ts, epoch, start=w.started), op.thread_id))
        if w.idempotency is not None:
            conn.execute(
                "INSERT INTO idempotency (thread_id, key, request_hash, seqs, created_at) VALUES (?,?,?,?,?)",
                (op.thread_id, *w.idempotency, ts),
            )
        after = w.row_after(loaded, ts)
        return AppendResult(op.thread_id, w.seqs, w.stored), (w.status, w.event_count, w.head), after

    def _thread_after(self, after: tuple[Any, ...]) -> Thread:
        """The Thread of a row as an append left it (``_append``'s ``after``). Parsing the
        document and validating the model is most of the cost, and an append changes only
        counters and times: a thread whose document, status, version and accounts are the
        ones parsed last time is that Thread with those fields replaced (writer thread only)."""
        tid, doc, status, updated_at, heartbeat_at, count, text_chars, input_tokens, version = after[:9]
        key = (doc, status, version, after[9])
        if after[10] is None:  # a lease shows only until it expires: not cached
            hit = self._after_cache.get(tid)
            if hit is not None and hit[0] == key:
                return hit[1].model_copy(
                    update={
                        "updated_at": updated_at,
                        "heartbeat_at": heartbeat_at,
                        "event_count": count,
                        "text_chars": text_chars,
                        "input_tokens": input_tokens,
                    }
                )
        thread = _row_to_thread(after)
        if after[10] is None:
            if len(self._after_cache) >= AFTER_CACHE:
                self._after_cache.clear()
            self._after_cache[tid] = (key, thread)
        return thread

    def _checkpoint(
        self, conn: sqlite3.Connection, tid: str, state: _Appended, ts: str, epoch: float, view: HashView
    ) -> None:
        """Append the signed checkpoint after the thread's last event in this transaction."""

        def fetch(after: int, upto: int) -> list[str]:  # one joined string: no row objects
            (text,) = conn.execute(JOINED_LINES, (tid, after, upto)).fetchone()
            return [] if text is None else [text]

        cp = plan_checkpoint(
            self.signer, tid, state.count, state.head, ts, view.digest(tid, state.count, fetch)
        )
        ev = cp.event
        conn.execute(INSERT_EVENT, event_row(tid, ev.seq, ts, ev.type, ev.line, ev.prev_hash))
        conn.execute(
            "UPDATE threads SET event_count = ?, transcript_bytes = transcript_bytes + ?, chain_head = ?"
            " WHERE thread_id = ?",
            (ev.seq, cp.nbytes, cp.head, tid),
        )
        view.extend(tid, state.count, [ev.line])
        state.last.events.append(ev)

    # ----------------------------------------------------------------- search

    def _fold(self, conn: sqlite3.Connection) -> int:
        """Fold the search index's tail in a transaction of its own (on the writer thread)."""

        def txn() -> int:
            conn.execute("BEGIN IMMEDIATE")
            try:
                n = fts.fold(conn)
                conn.execute("COMMIT")
                return n
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        n = _retry_busy(txn)
        self._unfolded = 0
        return n

    async def _folded(self) -> None:
        """Make every acknowledged event searchable (a fold on the writer, when there is a tail)."""
        if self._writer is None:
            raise StoreUnavailableError("the store is not open")
        await self._writer.submit(self._fold)

    async def search_text(
        self,
        query: TextQuery,
        *,
        mode: Mode = "all",
        thread_ids: Sequence[str] | None = None,
        agent_id: str | None = None,
        include_tools: bool = False,
        limit: int = 20,
        best_per_thread: bool = False,
    ) -> list[SearchHit]:
        def search(c: sqlite3.Connection, first: bool) -> list[SearchHit] | None:
            if first and fts.has_tail(c):
                return None  # fold first: what an append acknowledged must be found
            return self._search.search(
                c,
                query,
                mode=mode,
                thread_ids=thread_ids,
                agent_id=agent_id,
                include_tools=include_tools,
                limit=limit,
                best_per_thread=best_per_thread,
            )

        hits = await self._read(lambda c: search(c, True))
        if hits is None:
            await self._folded()
            hits = await self._read(lambda c: search(c, False))
        assert hits is not None
        return hits

    async def scan_text(
        self,
        thread_ids: Sequence[str],
        find: Finder,
        *,
        include_tools: bool = False,
        limit: int = 20,
        pattern: str | None = None,
    ) -> list[SearchHit]:
        ids = list(thread_ids)  # ``pattern`` is not needed: RE2 scans the events' text
        return await self._read(
            lambda c: fts.SearchEngine.scan(c, ids, find, include_tools=include_tools, limit=limit)
        )

    async def reindex(self, *, progress: ReindexProgress | None = None) -> ReindexStats:
        """Indexes missing events in batches of one transaction each (appends interleave
        with them). Rows the events no longer back (edits behind the store's back) cannot
        be removed one by one from an external-content index, so when there are any the
        whole index is rebuilt in one transaction instead. Last, a database that is a
        quarter or more free pages (after a layout migration) is compacted."""
        if self._writer is None:
            raise StoreUnavailableError("the store is not open")
        writer = self._writer

        def in_txn(work: Callable[[sqlite3.Connection], int]) -> Callable[[sqlite3.Connection], int]:
            def run(conn: sqlite3.Connection) -> int:
                def txn() -> int:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        n = work(conn)
                        conn.execute("COMMIT")
                        return n
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise

                return _retry_busy(txn)

            return run

        await self._folded()  # the tail is not missing: it waits for a fold
        stale: fts.Staleness = await self._read(fts.stale_rows)
        if stale:
            if progress is not None:
                progress(0, 1)

            def rebuild(conn: sqlite3.Connection) -> int:
                missing = len(fts.missing_ids(conn))
                fts.rebuild(conn)
                return missing

            missing = await writer.submit(in_txn(rebuild))
            if progress is not None:
                progress(1, 1)
            counts = {"removed": len(stale), "added": missing + len(stale.moved)}
        else:
            ids: list[int] = await self._read(fts.missing_ids)
            if progress is not None:
                progress(0, len(ids))
            counts = {"removed": 0, "added": 0}
            for i in range(0, len(ids), fts.REINDEX_BATCH):
                part = ids[i : i + fts.REINDEX_BATCH]
                counts["added"] += await writer.submit(in_txn(lambda c, part=part: fts.index_ids(c, part)))
                if progress is not None:
                    progress(i + len(part), len(ids))
        documents = await self._read(fts.count_documents)
        reclaimed = await writer.submit(_compact_if_sparse)
        return ReindexStats(
            added=counts["added"], removed=counts["removed"], documents=documents, reclaimed=reclaimed
        )

    # ---------------------------------------------------------------- vectors

    async def _write(self, fn: Callable[[sqlite3.Connection], T], *, derived: bool = False) -> T:
        """Run ``fn`` in its own write transaction on the writer thread.

        ``derived``: the rows can be rebuilt from the events (vectors), so the commit does not
        wait for the disk (``synchronous=NORMAL`` in WAL: durable at the next checkpoint; a power
        cut may lose it, never corrupt the file). It keeps the writer free for appends."""
        if self._writer is None:
            raise StoreUnavailableError("the store is not open")
        level = DURABILITY[self.durability]

        def run(conn: sqlite3.Connection) -> T:
            if derived and level != "NORMAL":
                conn.execute("PRAGMA synchronous=NORMAL")
                try:
                    return unsynced(conn)
                finally:
                    conn.execute(f"PRAGMA synchronous={level}")
            return unsynced(conn)

        def unsynced(conn: sqlite3.Connection) -> T:
            def txn() -> T:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(conn)
                    conn.execute("COMMIT")
                    return out
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise

            return _retry_busy(txn)

        return await self._writer.submit(run)

    async def missing_vectors(
        self,
        model: str,
        types: Sequence[str],
        *,
        thread_id: str | None = None,
        after: tuple[str, int] | None = None,
        limit: int = 256,
    ) -> list[StoredEvent]:
        return await self._read(lambda c: sqlvectors.missing(c, model, types, thread_id, after, limit))

    async def count_missing_vectors(self, model: str, types: Sequence[str]) -> int:
        return await self._read(lambda c: sqlvectors.count_missing(c, model, types))

    async def put_vectors(self, model: str, rows: Sequence[VectorRow]) -> int:
        rows = list(rows)
        return await self._write(lambda c: sqlvectors.put(c, model, rows), derived=True) if rows else 0

    async def clean_vectors(self, model: str, types: Sequence[str]) -> int:
        ids: list[int] = await self._read(lambda c: sqlvectors.stale_ids(c, model, types))
        removed = 0
        for i in range(0, len(ids), sqlvectors.BATCH):
            part = ids[i : i + sqlvectors.BATCH]
            removed += await self._write(lambda c: sqlvectors.remove(c, part))
        return removed

    async def count_vectors(self, model: str) -> int:
        return await self._read(lambda c: sqlvectors.count(c, model))

    async def search_vectors(
        self,
        model: str,
        query: bytes,
        *,
        thread_ids: Sequence[str] | None = None,
        agent_id: str | None = None,
        limit: int = 20,
        best_per_thread: bool = False,
    ) -> list[SearchHit]:
        return await self._read(
            lambda c: sqlvectors.search(
                c,
                self._vectors,
                model,
                query,
                thread_ids=thread_ids,
                agent_id=agent_id,
                limit=limit,
                best_per_thread=best_per_thread,
            )
        )

    # ------------------------------------------------------------ maintenance

    async def reconcile_mirrors(self, thread_ids: Sequence[str] | None = None) -> int:
        """Complete the mirrors of ``thread_ids`` (default: every thread) from the database;
        returns how many threads had a file written. What holds lines the database lacks is
        left as found and logged once (mirror.py)."""
        if self.mirror is None or self._writer is None:
            return 0

        def work(conn: sqlite3.Connection) -> int:
            ids = thread_ids
            if ids is None:
                ids = [tid for (tid,) in conn.execute("SELECT thread_id FROM threads")]
            fixed = sum(self._repair_one(conn, tid) for tid in ids)
            if fixed:
                log.info("repaired the mirrors of %d thread(s)", fixed)
            return fixed

        return await self._writer.submit(work)

    def _repair_one(self, conn: sqlite3.Connection, tid: str) -> bool:
        """Complete one thread's mirror from the database (mirror.py); True when a file was written."""
        assert self.mirror is not None
        try:
            done = self.mirror.repair(
                tid,
                lambda: _thread_and_bytes(conn, tid),
                lambda after: _read_events(conn, tid, after, None),
            )
        except ThreadloomError:
            return False  # deleted meanwhile
        except OSError as exc:
            log.error("cannot repair the mirror of thread %s: %s", tid, exc)
            return False
        if done.changed:
            log.info("thread %s: mirror repaired (%s)", tid, "; ".join(done.changed))
        for problem in done.problems:
            log.warning(
                "thread %s: %s; left as found for `threadloom verify %s` (and `threadloom doctor`)",
                tid,
                problem,
                tid,
            )
        return bool(done.changed)

    async def _repair_pending(self) -> None:
        """Start-up: repair the mirrors the database marks as possibly behind (a crash between a
        commit and its mirror write), clear those marks, and schedule the one full sweep a
        migrated database needs in the background."""
        if self.mirror is None or self._writer is None:
            return

        def work(conn: sqlite3.Connection) -> tuple[int, int, bool]:
            marks = pending_marks(conn)
            fixed = sum(self._repair_one(conn, tid) for tid, _ in marks)
            write_txn(conn, lambda: clear_marks(conn, marks), _retry_busy)
            return len(marks), fixed, sweep_needed(conn)

        checked, fixed, sweep = await self._writer.submit(work)
        self.startup_repair = (checked, fixed)
        if fixed:
            log.info("repaired the mirrors of %d of %d thread(s) written last", fixed, checked)
        if sweep:
            self._sweep = BackgroundSweep(self._connect, self._repair_one, _retry_busy)
            self._sweep.start()

    async def recover_tail(self, thread: Thread, events: Sequence[StoredEvent], expect_count: int) -> None:
        """Append events recovered from a mirror (``doctor --recover``) with their seq, ts and line
        bytes as the mirror holds them, continuing the hash chain, if the thread still holds
        exactly ``expect_count`` events (``count_guard`` otherwise); ``thread`` gives the manifest
        and counters after them. The search index catches up through :meth:`reindex`."""
        if self._writer is None:
            raise StoreUnavailableError("the store is not open")
        tid = thread.thread_id
        lines = [e.line for e in events]
        mark = new_mark()

        def work(conn: sqlite3.Connection) -> None:
            def txn() -> None:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    row = conn.execute(
                        "SELECT event_count, chain_head FROM threads WHERE thread_id = ?", (tid,)
                    ).fetchone()
                    if row is None:
                        raise not_found(tid)
                    if row[0] != expect_count:
                        raise ConflictError(
                            f"thread {tid} holds {row[0]} events now, not the {expect_count} the recovery "
                            "was planned on: run `threadloom doctor --recover` again",
                            rule="count_guard",
                        )
                    prevs, head = chain_hashes(row[1], lines)
                    conn.executemany(
                        INSERT_EVENT,
                        [event_row(tid, e.seq, e.ts, e.type, e.line, p) for e, p in zip(events, prevs)],
                    )
                    conn.execute(
                        "UPDATE threads SET status = ?, updated_at = ?, heartbeat_at = ?, event_count = ?,"
                        " text_chars = ?, input_tokens = ?, transcript_bytes = transcript_bytes + ?,"
                        " chain_head = ?, version = ?, doc = ? WHERE thread_id = ?",
                        (
                            thread.status.value,
                            thread.updated_at,
                            thread.heartbeat_at,
                            thread.event_count,
                            thread.text_chars,
                            thread.input_tokens,
                            sum(len(line.encode()) + 1 for line in lines),
                            head,
                            thread.version,
                            manifest_doc(thread),
                            tid,
                        ),
                    )
                    if self.mirror is not None:
                        mark_pending(conn, [tid], mark)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise

            _retry_busy(txn)
            self._hashes.forget(tid)
            if self.mirror is not None:
                fresh = _get_thread(conn, tid)
                if self._sync_mirror(conn, tid, fresh, None):
                    self._mirrored.append((tid, mark))

        await self._writer.submit(work)
        self._notify(frozenset([tid]))

    async def backup(self, folder: Path) -> None:
        """Copy the database to ``folder``/threads.db with SQLite's backup API (a consistent
        copy while other connections write; ``doctor --recover`` rehearses on one)."""
        dest = Path(folder) / self.path.name

        def work(conn: sqlite3.Connection) -> None:
            dst = sqlite3.connect(dest)
            try:
                conn.backup(dst)
            finally:
                dst.close()

        await self._read(work)

    async def vacuum(self) -> None:
        if self._writer is None:
            raise StoreUnavailableError("the store is not open")

        def work(conn: sqlite3.Connection) -> None:
            _retry_busy(lambda: conn.execute("VACUUM"))
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        await self._writer.submit(work)


# ------------------------------------------------------------------ helpers


@dataclass(slots=True)
class _Appended:
    """A thread appended to in one commit: was a checkpoint asked for, where it stands, its last result."""

    asked: bool
    status: Status
    count: int
    head: str
    last: AppendResult
    first: int
    """The first seq this commit appended to the thread."""


def _get_thread(conn: sqlite3.Connection, thread_id: str) -> Thread:
    row = conn.execute(f"SELECT {_THREAD_COLS} FROM threads WHERE thread_id = ?", (thread_id,)).fetchone()
    if row is None:
        raise not_found(thread_id)
    return _row_to_thread(row)


def _thread_and_bytes(conn: sqlite3.Connection, thread_id: str) -> tuple[Thread, int]:
    row = conn.execute(
        f"SELECT {_THREAD_COLS}, transcript_bytes FROM threads WHERE thread_id = ?", (thread_id,)
    ).fetchone()
    if row is None:
        raise not_found(thread_id)
    return _row_to_thread(row[:-1]), row[-1]


def _read_events(
    conn: sqlite3.Connection, thread_id: str, after_seq: int, limit: int | None
) -> list[StoredEvent]:
    rows = conn.execute(
        "SELECT seq, ts, type, line, prev_hash FROM events WHERE thread_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        (thread_id, after_seq, -1 if limit is None else limit),
    )
    return [
        StoredEvent(thread_id, seq, event_ts(ts, line), typ, line, hash_hex(prev))
        for seq, ts, typ, line, prev in rows
    ]


SPARSE_SHARE = 0.25
"""``reindex`` compacts the database when at least this share of its pages is free."""


def _compact_if_sparse(conn: sqlite3.Connection) -> int:
    """VACUUM when :data:`SPARSE_SHARE` or more of the file is free pages (a layout migration
    rebuilds the events table and leaves the old one's pages free); the bytes given back."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    if not pages or free < SPARSE_SHARE * pages:
        return 0
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    _retry_busy(lambda: conn.execute("VACUUM"))
    _retry_busy(lambda: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
    return (pages - conn.execute("PRAGMA page_count").fetchone()[0]) * size


def _find_idem(conn: sqlite3.Connection, thread_id: str, key: str) -> IdempotencyRecord | None:
    row = conn.execute(
        "SELECT request_hash, seqs FROM idempotency WHERE thread_id = ? AND key = ?", (thread_id, key)
    ).fetchone()
    return None if row is None else IdempotencyRecord(thread_id, key, row[0], json.loads(row[1]))


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.IntegrityError):
        return ConflictError(f"the write conflicts with existing data: {exc}", rule="constraint")
    return exc


def _retry_busy(fn: Callable[[], T]) -> T:
    for attempt in range(MAX_BUSY_RETRIES + 1):
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or attempt == MAX_BUSY_RETRIES:
                raise
            time.sleep(min(0.002 * 2**attempt, 0.5))
    raise AssertionError("unreachable")


def _import_record(c: sqlite3.Connection, thread_id: str) -> ImportRecord | None:
    row = c.execute("SELECT record FROM thread_imports WHERE thread_id = ?", (thread_id,)).fetchone()
    return None if row is None else ImportRecord.from_json(row[0])
