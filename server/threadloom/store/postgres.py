"""PostgreSQL backend: the same contract on a database shared by several servers.

psycopg 3 async with a pool of autocommit connections. Each commit is one transaction;
appends lock their thread's row (``UPDATE ... RETURNING``) so seqs stay gapless under
any concurrency, and a plain append is a single call of a SQL function
(store/pgappend.py). After commits, a batched ``NOTIFY threadloom`` wakes every
server's one listening connection. Serialization failures and deadlocks are retried a
bounded number of times; a write whose connection failed is not (it may have committed).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from ..errors import ConflictError, IntegrityError, StoreUnavailableError, ThreadloomError
from ..integrity import HashView, Signer, TranscriptHashes
from ..models import Status, StoredEvent, Thread
from ..provenance import ImportRecord
from ..textquery import Mode, TextQuery
from . import anchors, pgappend, pgsearch, pgvectors
from .apply import (
    accounts_doc,
    check_count_guard,
    check_idempotency,
    check_status_guard,
    leased_error,
    list_threads_query,
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
from .schema import POSTGRES_MIGRATIONS, POSTGRES_SEARCH_VERSION, SchemaTooNew
from .textsearch import Finder

log = logging.getLogger("threadloom.store")
T = TypeVar("T")

CHANNEL = "threadloom"
MAX_RETRIES = 8
FAST_TRIES = 3
"""One-call append attempts before taking the general path (each retry follows a tail
another writer moved; the general path locks the row first, so it cannot be overtaken)."""
APPEND_NOTICE_DELAY = 0.02
"""Seconds a plain append's NOTIFY may wait to be sent with later ones (see ``_announce``)."""
CONNECT_TIMEOUT = 10
"""Seconds to reach the database at start-up before giving up with its error."""
_THREAD_COLS = (
    "thread_id, doc, status, updated_at, heartbeat_at, event_count, text_chars, input_tokens, version, accounts,"
    " lease_owner, lease_expires, lease_ttl"
)
MIGRATION_LOCK = 0x7468726561646C6F  # "threadlo": one advisory lock for every server
WARM_CONNECTIONS = 3
"""Connections the pool keeps open (at most its size), opened and warmed (:data:`WARM_SQL`)
while ``open`` checks the migrations on its own connection, so that a new server's first
calls (a handoff reads on two at once, then commits) need not connect first."""
WARM_SQL = (
    f"SELECT {_THREAD_COLS}, chain_head FROM threads WHERE thread_id = ''",
    "SELECT seq, ts, type, line, prev_hash FROM events WHERE thread_id = '' AND seq > 0 ORDER BY seq LIMIT 1",
    "SELECT seq, sha256, signature FROM anchors WHERE thread_id = ''",
    "SELECT record FROM thread_imports WHERE thread_id = ''",
    "SELECT request_hash, seqs FROM idempotency WHERE thread_id = '' AND key = ''",
    "EXPLAIN INSERT INTO events (thread_id, seq, ts, type, line, prev_hash) VALUES ('', 0, '', '', '', NULL)",
    "EXPLAIN INSERT INTO search_docs (thread_id, seq, tsv) VALUES ('', 0, ''::tsvector)",
    "EXPLAIN UPDATE threads SET version = version + 1 WHERE thread_id = ''",
)
"""Statements a new connection runs before the pool hands it out: each is cheap, but the
first statement on a table in a new PostgreSQL backend loads that table's catalog entries
(a few ms each, 15 ms for the first); the writes only as EXPLAIN (planned, not run). One
at a time (each its own transaction, so none waits for a lock while holding one), and only
once ``open`` has migrated: run in one pipeline (one implicit transaction) beside the
migrations, they deadlocked with an ``ALTER TABLE``."""
_RETRYABLE = (
    pgerrors.SerializationFailure,
    pgerrors.DeadlockDetected,
    psycopg.OperationalError,
)


@dataclass(slots=True)
class _Appended:
    """What a checkpoint needs about a thread appended to in this commit."""

    asked: bool
    status: Status
    count: int
    head: str
    last: AppendResult


_row_to_thread = row_to_thread


class PostgresStore(Store):
    """Threads and events in PostgreSQL; several server processes may share one database."""

    name = "postgres"
    imports_indexed = True

    def __init__(
        self,
        dsn: str,
        *,
        durability: str = "full",
        pool_size: int = 10,
        signer: Signer | None = None,
        checkpoints: bool = True,
    ) -> None:
        """``signer``: the key checkpoints are signed with; every server sharing the database
        must use the same key (copy ``keys/``); an in-memory key when none is given."""
        super().__init__()
        self.dsn = dsn
        self.signer = signer or Signer.ephemeral()
        self.checkpoints = checkpoints
        self._hashes = TranscriptHashes()
        self._anchor_book = anchors.AnchorBook(self.signer, self._hashes, self._store_anchors)
        self.durability = durability
        self._channel = CHANNEL
        self._pool_size = pool_size
        self._pool: AsyncConnectionPool | None = None
        self._to_announce: set[str] = set()
        self._announce_ready = asyncio.Event()
        self._announcer: asyncio.Task[None] | None = None
        self._tails = pgappend.Tails()
        self._closing = False
        self._announce_later: asyncio.TimerHandle | None = None
        self._instance = uuid.uuid4().hex[:16]
        self._group = pgappend.GroupCommit(self._tails, self._call_group)
        self._regex_ok: bool | None = None
        self._vectors = pgvectors.PgVectors()
        self._gate_slots = asyncio.Semaphore(max(1, pool_size - 1))
        self._may_warm = asyncio.Event()
        self._may_warm.set()

    # ------------------------------------------------------------- life cycle

    async def _configure(self, conn: psycopg.AsyncConnection) -> None:
        if self.durability == "normal":  # survives a crash of this process, not of the DB server
            await conn.execute("SET synchronous_commit = off")
        # not beside the migrations: their locks, and the tables may not exist yet
        await self._may_warm.wait()
        try:  # one statement at a time, each its own transaction: waiting for a lock, it holds none
            for q in WARM_SQL:
                await conn.execute(q)
        except psycopg.Error as exc:  # only slower first calls
            log.debug("warming a new connection failed: %s", exc)
        await conn.commit()

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool = AsyncConnectionPool(
            self.dsn,
            min_size=min(WARM_CONNECTIONS, self._pool_size),
            max_size=self._pool_size,
            open=False,
            configure=self._configure,
            timeout=30,
            kwargs={"autocommit": True},
        )
        self._may_warm = asyncio.Event()
        try:
            # one direct connection first: a wrong address, database or password fails now,
            # with the server's own words, instead of as a pool timeout 30 s later
            async with await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT
            ) as conn:
                await pool.open(wait=False)  # its connections come up while this one migrates
                try:
                    await _migrate(conn)
                    await self._load_key(conn)
                    cur = await conn.execute("SELECT current_schema()")
                    schema = (await cur.fetchone())[0]  # type: ignore[index]
                finally:
                    self._may_warm.set()  # and warm once it is done
                # one channel per schema: stores in other schemas of the database are not ours
                self._channel = CHANNEL if schema in (None, "public") else f"{CHANNEL}.{schema}"
            await pool.wait(timeout=30)
        except SchemaTooNew as exc:
            await pool.close()
            raise StoreUnavailableError(str(exc), rule="schema_too_new") from None
        except (psycopg.Error, Exception) as exc:
            await pool.close()
            if isinstance(exc, ThreadloomError):
                raise
            raise StoreUnavailableError(f"cannot open PostgreSQL store: {exc}") from exc
        self._pool = pool

    async def _load_key(self, conn: psycopg.AsyncConnection) -> None:
        """Sign with the database's key, so every server sharing it signs alike.

        The first server to open a database stores its key there (table ``meta``); later
        servers adopt that key whatever their own ``keys/`` hold. A database from before
        the key was shared is refused when this server's key is not the one its threads
        were signed with.
        """
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            cur = await conn.execute(
                "SELECT key, value FROM meta WHERE key IN ('signing_key', 'signing_key_id')"
            )
            meta = dict(await cur.fetchall())
            if "signing_key" in meta:
                if self.signer.loaded and self.signer.key_id != meta.get("signing_key_id"):
                    log.info("signing with the database's shared key, not this server's own")
                self.signer.adopt(meta["signing_key"].encode())
                return
            cur = await conn.execute("SELECT EXISTS (SELECT 1 FROM threads)")
            has_threads = bool((await cur.fetchone())[0])  # type: ignore[index]
            recorded = meta.get("signing_key_id")
            signed = has_threads and recorded is not None
            self.signer.load(allow_create=not signed)
            if signed and recorded != self.signer.key_id:
                raise IntegrityError(
                    f"this server's signing key (id {self.signer.key_id}) is not the key the threads in the "
                    f"database were signed with (id {recorded}): start one server with that key's keys/ "
                    "folder once, and it will share it with the others through the database",
                    rule="signing_key_mismatch",
                )
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ('signing_key_id', %s), ('signing_key', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (self.signer.key_id, self.signer.private_pem.decode()),
            )

    async def close(self) -> None:
        await self._group.drain()
        await self._anchor_book.drain()
        if self._pool is not None and (due := self._anchor_book.due()):  # what this process wrote or verified
            await self._store_anchors(due)
        if self._announcer is not None:
            # let the announcer send what is queued and stop between NOTIFYs: cancelling it
            # mid-statement would only cost a connection
            self._closing = True
            if self._announce_later is not None:
                self._announce_later.cancel()
                self._announce_later = None
            self._announce_ready.set()
            with anyio.move_on_after(2):
                await asyncio.shield(self._announcer)
            self._announcer.cancel()
            self._announcer = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        self._closing = False

    async def _run(
        self, fn: Callable[[psycopg.AsyncConnection], Awaitable[T]], *, write: bool, txn: bool = True
    ) -> T:
        """Run ``fn`` in a transaction (or, ``txn=False``, as autocommit statements: one
        statement is its own transaction); retry transient failures; translate driver errors."""
        if self._pool is None:
            raise StoreUnavailableError("the store is not open")
        for attempt in range(MAX_RETRIES + 1):
            try:
                async with self._pool.connection() as conn:
                    if not txn:
                        return await fn(conn)
                    async with conn.transaction():
                        return await fn(conn)
            except ThreadloomError:
                raise
            except pgerrors.UniqueViolation as exc:
                raise ConflictError(
                    f"the write conflicts with existing data: {exc}", rule="constraint"
                ) from exc
            except _RETRYABLE as exc:
                safe = isinstance(exc, (pgerrors.SerializationFailure, pgerrors.DeadlockDetected))
                if write and not safe:
                    # a connection lost mid-write (perhaps during COMMIT) may have committed:
                    # retrying could append twice, so say so instead (an idempotency_key makes
                    # the client's own retry safe)
                    raise StoreUnavailableError(
                        f"PostgreSQL connection failed during a write; it may or may not have committed: {exc}"
                    ) from exc
                if attempt == MAX_RETRIES:
                    raise StoreUnavailableError(
                        f"PostgreSQL kept failing after {attempt + 1} tries: {exc}"
                    ) from exc
                await asyncio.sleep(min(0.005 * 2**attempt, 0.5))
            except psycopg.Error as exc:
                raise StoreUnavailableError(f"PostgreSQL error: {exc}") from exc
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ writes

    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        gate = _GATE.get()
        if gate is not None:  # commit_after's, for this one commit
            _GATE.set(None)
        return await self._commit_ops(ops, gate)

    async def commit_after(self, ops: Sequence[Op], gate: Callable[[], Awaitable[None]]) -> CommitResult:
        """The transaction writes the threads it creates while ``gate`` runs (a handoff's new
        thread, ~900 carried events and their search rows, while the old one is verified)
        and waits for it before its first op on an existing thread: no row lock is held
        while it waits, so nothing can queue behind it. It holds a connection meanwhile, so
        at most ``pool_size - 1`` commits wait at once (the gate's own reads need one);
        past that, or with a pool of one, it waits for the gate first like any store."""
        if self._pool_size < 2 or self._gate_slots.locked():
            await gate()
            return await self.commit(ops)
        await self._gate_slots.acquire()
        held = [True]

        def release() -> None:
            if held[0]:
                held[0] = False
                self._gate_slots.release()

        async def gated() -> None:
            try:
                await gate()
            finally:
                release()

        token = _GATE.set(gated)
        try:  # through commit(), so that whatever wraps it still sees this commit
            result = await self.commit(ops)
            if _GATE.get() is gated:  # it never reached this store's commit: still say no if the gate does
                await gated()
            return result
        finally:
            _GATE.reset(token)
            release()

    async def _commit_ops(
        self, ops: Sequence[Op], gate: Callable[[], Awaitable[None]] | None
    ) -> CommitResult:
        # a commit that reached the database finishes even if its caller is cancelled, so
        # what committed is also announced (and the tail cache stays true)
        with anyio.CancelScope(shield=True):
            result = None
            op = pgappend.fits(ops, self.checkpoints) if gate is None else None
            if op is not None:
                result = await self._append_one(op)
            if result is None:
                result = await self._commit(ops, gate)
        await self._announce(result.threads, soon=op is None)
        self._notify(frozenset(result.threads))
        self._anchor_crossings(result)
        return result

    def _anchor_crossings(self, result: CommitResult) -> None:
        """Store a signed anchor for each thread whose append passed a multiple of
        ANCHOR_EVERY lines, when this process trusts its running hash (anchors.py): signed
        now, from the hash as this commit left it, and written in the background (derived
        data: the commit's caller need not wait; ``close`` waits for it)."""
        signed = []
        for a in result.appends:
            # most appends cross nothing: skip them before copying the running hash (+1: a
            # checkpoint the store may add after them)
            if not a.events or not anchors.crossed(a.events[0].seq - 1, a.events[-1].seq + 1):
                continue
            known = self._hashes.anchor(a.thread_id)
            if known is not None and anchors.crossed(a.events[0].seq - 1, known[0]):
                signed.append(anchors.sign_anchor(self.signer, a.thread_id, known[0], known[1].hexdigest()))
        if signed:
            self._anchor_book.later(signed)

    async def _store_anchors(self, signed: list[anchors.SignedAnchor]) -> None:
        async def fn(conn: psycopg.AsyncConnection) -> None:
            async with conn.cursor() as cur:
                await cur.executemany(
                    anchors.PG_UPSERT_SQL, [(a.thread_id, a.seq, a.sha256, a.signature) for a in signed]
                )

        try:
            await self._run(fn, write=True)
        except ThreadloomError as exc:  # only a later check is slower
            log.warning("could not store %d transcript anchor(s): %s", len(signed), exc)
            return
        for a in signed:
            self._anchor_book.note(a.thread_id, a.seq)

    def trust_verified(self, thread_id: str, seq: int, state: Any) -> None:
        """Keep the verified hash as this process's anchor and, past a long unanchored tail,
        store it as a signed anchor so that the next process checks little."""
        super().trust_verified(thread_id, seq, state)
        if self._pool is not None:
            self._anchor_book.verified(thread_id, seq, state)

    async def _append_one(self, op: AppendEvents) -> CommitResult | None:
        """A lone append through the group commit (one call of ``threadloom_append``); None
        when the thread's tail kept moving under it (the general path then locks the row first)."""
        for _ in range(FAST_TRIES):
            row, r = await self._group.submit(op)
            outcome = row[0]
            if outcome == "not_found":
                raise not_found(op.thread_id)
            if outcome == "stale":
                continue
            if outcome == "leased":
                raise leased_error(
                    op.thread_id, row[14], row[15], now_pair()[1], op.lease.owner if op.lease else None
                )
            if outcome == "status_guard":
                if op.start_reason is not None and row[3] == Status.CREATED.value:
                    return None  # the general path starts the thread in the same commit (core.py)
                check_status_guard(op, Status(row[3]))
            elif outcome == "count_guard":
                check_count_guard(op, row[6])
            elif outcome == "idempotent":
                record = IdempotencyRecord(
                    op.thread_id, op.idempotency_key or "", row[12], json.loads(row[13])
                )
                check_idempotency(op, record)
            if outcome != "ok":
                raise AssertionError(f"threadloom_append returned {outcome!r}")
            view = self._hashes.view()
            view.extend(op.thread_id, r.stored[0].seq - 1, r.lines)
            view.publish()
            result = CommitResult()
            result.appends.append(AppendResult(op.thread_id, [e.seq for e in r.stored], r.stored))
            result.threads[op.thread_id] = _row_to_thread((*row[1:11], *row[14:17]))
            return result
        return None

    async def _call_group(self, args: list[tuple[object, ...]]) -> list[tuple[Any, ...]]:
        """``threadloom_append`` once per argument tuple, in one transaction and one round trip."""

        async def run(conn: psycopg.AsyncConnection) -> list[tuple[Any, ...]]:
            if len(args) == 1:  # one statement is its own transaction
                cur = await conn.execute(pgappend.CALL, args[0])
                return [await cur.fetchone()]  # type: ignore[list-item]
            async with conn.pipeline():
                async with conn.transaction():
                    cursors = [await conn.execute(pgappend.CALL, a) for a in args]
            return [await cur.fetchone() for cur in cursors]  # type: ignore[misc]

        return await self._run(run, write=True, txn=False)

    async def _commit(
        self, ops: Sequence[Op], gate: Callable[[], Awaitable[None]] | None = None
    ) -> CommitResult:
        """Any commit, as one transaction of statements. ``gate`` (commit_after): awaited
        before the first op on a thread this commit did not create, and before the
        checkpoints (which read the running hash a verification leaves)."""
        views: list[HashView] = []
        tails: dict[str, tuple[int, str | None]] = {}

        async def txn(conn: psycopg.AsyncConnection) -> CommitResult:
            ts, epoch = now_pair()
            result = CommitResult()
            reread: set[str] = set()
            view = self._hashes.view()
            views[:] = [view]
            tails.clear()
            appended: dict[str, _Appended] = {}
            created: set[str] = set()
            waiting = gate
            for op in ops:
                if waiting is not None and not _on_created(op, created):
                    await waiting()
                    waiting = None
                await self._apply(conn, op, ts, epoch, result, reread, view, appended, created)
                if isinstance(op, (CreateThread, ImportThread)):
                    tails[op.thread.thread_id] = (0, None) if isinstance(op, CreateThread) else (-1, None)
                    created.add(op.thread.thread_id)
            if waiting is not None:
                await waiting()
            if self.checkpoints:
                for tid, state in appended.items():
                    status = state.status
                    if tid in reread:  # a PutThread in this commit may have ended it
                        cur = await conn.execute("SELECT status FROM threads WHERE thread_id = %s", (tid,))
                        status = Status((await cur.fetchone())[0])  # type: ignore[index]
                    if wants_checkpoint(state.asked, status):
                        await self._checkpoint(conn, tid, state, ts, view)
                        reread.add(tid)
            if reread:  # one round trip for all of them
                ids = list(reread)
                cur = await conn.execute(
                    f"SELECT {_THREAD_COLS} FROM threads WHERE thread_id = ANY(%s)", (ids,)
                )
                rows = {r[0]: r for r in await cur.fetchall()}
                for tid in ids:
                    if tid not in rows:
                        raise not_found(tid)
                    result.threads[tid] = _row_to_thread(rows[tid])
            for tid, state in appended.items():
                tails[tid] = (state.count, state.head)
            return result

        result = await self._run(txn, write=True)
        for view in views:
            view.publish()
        for tid, (count, head) in tails.items():
            if count < 0:
                self._tails.forget(tid)
            else:
                self._tails.put(tid, count, head)
        return result

    async def _announce(self, thread_ids: Sequence[str], *, soon: bool = True) -> None:
        """Queue a NOTIFY to the other servers, sent after the commit by one background task.

        Inside the commit, NOTIFY would hold PostgreSQL's global notify-queue lock across
        the WAL flush and serialize every concurrent commit; batching also sends one NOTIFY
        for many commits. A plain append (``soon=False``: no status changed, so no waiter
        settles) waits up to :data:`APPEND_NOTICE_DELAY` to share a NOTIFY with the appends
        after it; a status change goes at once. If this process dies before it is sent,
        other servers' waiters see the change at their next wake-up.
        """
        if not thread_ids:
            return
        self._to_announce.update(thread_ids)
        if soon:
            self._announce_ready.set()
        elif self._announce_later is None:

            def due() -> None:
                self._announce_later = None
                self._announce_ready.set()

            self._announce_later = asyncio.get_running_loop().call_later(APPEND_NOTICE_DELAY, due)
        if self._announcer is None or self._announcer.done():
            self._announcer = asyncio.get_running_loop().create_task(self._announce_loop())

    async def _announce_loop(self) -> None:
        while self._pool is not None:
            if not self._closing:
                await self._announce_ready.wait()
            self._announce_ready.clear()
            ids, self._to_announce = self._to_announce, set()
            if not ids:
                if self._closing:
                    return
                continue
            try:
                async with self._pool.connection() as conn:
                    payload = f"{self._instance}|" + ",".join(sorted(ids))
                    await conn.execute("SELECT pg_notify(%s, %s)", (self._channel, payload[:7000]))
            except Exception as exc:  # the commit stands; waiters elsewhere catch up at their next wake
                log.warning("could not NOTIFY other servers: %s", exc)

    async def _apply(
        self,
        conn: psycopg.AsyncConnection,
        op: Op,
        ts: str,
        epoch: float,
        result: CommitResult,
        reread: set[str],
        view: HashView,
        appended: dict[str, _Appended],
        created: frozenset[str] | set[str] = frozenset(),
    ) -> None:
        """``created``: the threads an earlier op of this commit created."""
        if isinstance(op, CreateThread):
            t = op.thread
            await conn.execute(create_sql("%s"), created_row(t, epoch, accounts_doc(t.usage, t.budget)))
            reread.add(t.thread_id)
            result.threads[t.thread_id] = t
            view.start(t.thread_id)
        elif isinstance(op, AppendEvents):
            cur = await conn.execute(  # the row lock: concurrent appends and idempotent retries serialize
                f"SELECT {_THREAD_COLS}, chain_head FROM threads WHERE thread_id = %s FOR UPDATE",
                (op.thread_id,),
            )
            row = await cur.fetchone()
            if row is None:
                raise not_found(op.thread_id)
            loaded = Loaded.from_row(row)
            idem = (
                await _find_idem(conn, op.thread_id, op.idempotency_key)
                if op.idempotency_key is not None
                else None
            )
            w = plan_append(op, loaded, idem, ts, epoch)  # raising rolls back
            view.extend(op.thread_id, loaded.event_count, w.lines)
            async with conn.pipeline():
                await conn.execute(*_insert_events(w.stored))
                await conn.execute(
                    update_sql("%s", start=True), (*w.columns(ts, epoch, start=True), op.thread_id)
                )
                if w.idempotency is not None:
                    await conn.execute(
                        "INSERT INTO idempotency (thread_id, key, request_hash, seqs, created_at)"
                        " VALUES (%s,%s,%s,%s,%s)",
                        (op.thread_id, *w.idempotency, ts),
                    )
                await pgsearch.index_appended(
                    conn, op.thread_id, op.events, w.seqs, new_thread=op.thread_id in created
                )
            res = AppendResult(op.thread_id, w.seqs, w.stored)
            result.appends.append(res)
            prior = appended.get(op.thread_id)
            appended[op.thread_id] = _Appended(
                op.checkpoint or (prior is not None and prior.asked), w.status, w.event_count, w.head, res
            )
            if op.thread_id not in reread:
                after = w.row_after(loaded, ts)
                result.threads[op.thread_id] = _row_to_thread(after)
        elif isinstance(op, PutUsage):
            cur = await conn.execute(
                "SELECT accounts FROM threads WHERE thread_id = %s FOR UPDATE", (op.thread_id,)
            )
            row = await cur.fetchone()
            if row is None:
                raise not_found(op.thread_id)
            usage = plan_put_usage(op, row[0])
            await conn.execute(
                "UPDATE threads SET accounts = %s WHERE thread_id = %s",
                (accounts_doc(usage, op.budget), op.thread_id),
            )
            reread.add(op.thread_id)
        elif isinstance(op, PutLease):
            cur = await conn.execute(
                "SELECT lease_owner, lease_expires, lease_ttl FROM threads WHERE thread_id = %s FOR UPDATE",
                (op.thread_id,),
            )
            row = await cur.fetchone()
            if row is None:
                raise not_found(op.thread_id)
            cols = plan_put_lease(op, (row[0], row[1], row[2]), epoch)
            if cols is not None:
                await conn.execute(put_lease_sql("%s"), (*cols, ts, op.thread_id))
            reread.add(op.thread_id)
        elif isinstance(op, PutThread):
            t = op.thread
            cur = await conn.execute(
                "SELECT version, heartbeat_epoch, lease_owner, lease_expires, lease_ttl FROM threads"
                " WHERE thread_id = %s FOR UPDATE",
                (t.thread_id,),
            )
            row = await cur.fetchone()
            if row is None:
                raise not_found(t.thread_id)
            values = plan_put_thread(op, row[0], row[1], (row[2], row[3], row[4]), ts, epoch)
            await conn.execute(put_thread_sql("%s"), values)
            reread.add(t.thread_id)
            result.threads[t.thread_id] = t
            if t.thread_id in appended:
                appended[t.thread_id].status = t.status
        elif isinstance(op, ImportThread):
            t = op.thread
            cur = await conn.execute("SELECT 1 FROM threads WHERE thread_id = %s", (t.thread_id,))
            w = plan_import(op, await cur.fetchone() is not None, accounts_doc(t.usage, t.budget))
            self._hashes.forget(t.thread_id)  # a state left from a deleted thread of that id is stale
            await conn.execute(import_sql("%s"), w.row)
            if w.events:
                async with conn.pipeline():
                    for i in range(0, len(w.events), 5000):
                        await conn.execute(*_insert_events(w.events[i : i + 5000]))
                    await pgsearch.insert_docs(conn, t.thread_id, pgsearch.stored_doc_rows(op.events))
            if op.record is not None:
                await conn.execute(
                    "INSERT INTO thread_imports (thread_id, record) VALUES (%s, %s)",
                    (t.thread_id, op.record.to_json()),
                )
            reread.add(t.thread_id)
            result.threads[t.thread_id] = t

    async def _checkpoint(
        self, conn: psycopg.AsyncConnection, tid: str, state: _Appended, ts: str, view: HashView
    ) -> None:
        """Append the signed checkpoint after the thread's last event in this transaction."""
        cached = view._lookup(tid)
        after = cached[0] if cached is not None and cached[0] <= state.count else 0
        lines: list[str] = []
        if after < state.count:
            cur = await conn.execute(  # one joined value: no row per line
                "SELECT convert_to(string_agg(line, E'\\n' ORDER BY seq), 'UTF8') FROM events"
                " WHERE thread_id = %s AND seq > %s AND seq <= %s",
                (tid, after, state.count),
            )
            text = (await cur.fetchone())[0]  # type: ignore[index]
            lines = [] if text is None else [bytes(text)]
        digest = view.digest(tid, state.count, lambda _a, _u: lines)
        cp = plan_checkpoint(self.signer, tid, state.count, state.head, ts, digest)
        ev = cp.event
        await conn.execute(
            "INSERT INTO events (thread_id, seq, ts, type, line, prev_hash) VALUES (%s,%s,%s,%s,%s,%s)",
            (tid, ev.seq, ts, ev.type, ev.line, ev.prev_hash),
        )
        await conn.execute(
            "UPDATE threads SET event_count = %s, transcript_bytes = transcript_bytes + %s, chain_head = %s"
            " WHERE thread_id = %s",
            (ev.seq, cp.nbytes, cp.head, tid),
        )
        view.extend(tid, state.count, [ev.line])
        state.last.events.append(ev)
        state.count, state.head = ev.seq, cp.head

    async def read_integrity(self, thread_id: str) -> IntegritySnapshot:
        async def fn(conn: psycopg.AsyncConnection) -> IntegritySnapshot:
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur = await conn.execute(
                f"SELECT {_THREAD_COLS}, chain_head FROM threads WHERE thread_id = %s", (thread_id,)
            )
            row = await cur.fetchone()
            if row is None:
                raise not_found(thread_id)
            cur = await conn.execute(
                "SELECT seq, ts, type, line, prev_hash FROM events WHERE thread_id = %s ORDER BY seq",
                (thread_id,),
            )
            events = [StoredEvent(thread_id, *r) for r in await cur.fetchall()]
            record = await _import_record(conn, thread_id)
            return IntegritySnapshot(_row_to_thread(row[:13]), events, row[13], None, record)

        return await self._run(fn, write=False)

    async def read_anchored(self, thread_id: str) -> AnchoredSnapshot:
        """One statement (one snapshot, one round trip): the base is worked out in SQL as
        below, the prefix comes back as one binary value and the tail as arrays. Python
        works the base out again from what came back; should the two ever differ, the
        step-by-step reads below decide."""
        anchor = self._hashes.anchor(thread_id)  # before the snapshot: what it covers is committed

        async def fn(conn: psycopg.AsyncConnection) -> AnchoredSnapshot | None:
            cur = await conn.execute(
                ANCHORED_SQL, {"tid": thread_id, "run": anchor[0] if anchor is not None else 0}, binary=True
            )
            row = await cur.fetchone()
            if row is None:
                raise not_found(thread_id)
            thread = _row_to_thread(row[:13])
            mine = anchor if anchor is not None and anchor[0] <= thread.event_count else None
            found = row[14]
            signed = self._anchor_book.usable(
                None if found is None else anchors.SignedAnchor(thread_id, int(found), row[15], row[16]),
                thread.event_count,
                mine,
            )
            m = signed.seq if signed is not None else mine[0] if mine is not None else 0
            base = row[18]
            if m != row[17] or base < m:
                return None
            prefix = None if row[19] is None else bytes(row[19])
            tail = (  # arrays: NULL for no rows
                [StoredEvent(thread_id, *r) for r in zip(row[20], row[21], row[22], row[23], row[24])]
                if row[20] is not None
                else []
            )
            if signed is not None and base != signed.seq:
                signed = None  # a checkpoint after it is the base
            return AnchoredSnapshot(thread, row[13], mine, base, prefix, tail, None, bool(row[25]), signed)

        snap = await self._run(fn, write=False, txn=False)
        if snap is None:
            log.warning(
                "thread %s: the one-statement anchored read disagreed; reading step by step", thread_id
            )
            return await self._read_anchored_stepwise(thread_id)
        return snap

    async def _read_anchored_stepwise(self, thread_id: str) -> AnchoredSnapshot:
        async def fn(conn: psycopg.AsyncConnection) -> AnchoredSnapshot:
            anchor = self._hashes.anchor(thread_id)  # before the snapshot: what it covers is committed
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur = await conn.execute(
                f"SELECT {_THREAD_COLS}, chain_head FROM threads WHERE thread_id = %s", (thread_id,)
            )
            row = await cur.fetchone()
            if row is None:
                raise not_found(thread_id)
            thread = _row_to_thread(row[:13])
            if anchor is not None and anchor[0] > thread.event_count:
                anchor = None
            cur = await conn.execute(anchors.PG_READ_SQL, (thread_id,))
            found = await cur.fetchone()
            signed = self._anchor_book.usable(
                None if found is None else anchors.SignedAnchor(thread_id, int(found[0]), found[1], found[2]),
                thread.event_count,
                anchor,
            )
            m = signed.seq if signed is not None else anchor[0] if anchor is not None else 0
            cur = await conn.execute(
                "SELECT seq FROM events WHERE thread_id = %s AND seq > %s AND type = 'checkpoint'"
                " ORDER BY seq DESC LIMIT 1",
                (thread_id, m),
            )
            cp = await cur.fetchone()
            base = max(m, cp[0] - 1 if cp else 0)
            prefix = None
            if base:
                cur = await conn.execute(
                    "SELECT convert_to(string_agg(line, E'\\n' ORDER BY seq), 'UTF8') FROM events"
                    " WHERE thread_id = %s AND seq <= %s",
                    (thread_id, base),
                )
                joined = (await cur.fetchone())[0]  # type: ignore[index]
                prefix = None if joined is None else bytes(joined)
            cur = await conn.execute(
                "SELECT seq, ts, type, line, prev_hash FROM events WHERE thread_id = %s AND seq > %s ORDER BY seq",
                (thread_id, base),
            )
            tail = [StoredEvent(thread_id, *r) for r in await cur.fetchall()]
            imported = await _import_record(conn, thread_id) is not None
            if signed is not None and base != signed.seq:
                signed = None  # a checkpoint after it is the base
            return AnchoredSnapshot(thread, row[13], anchor, base, prefix, tail, None, imported, signed)

        return await self._run(fn, write=False)

    async def import_records(self, thread_ids: Sequence[str]) -> dict[str, ImportRecord]:
        rows = await self._fetch(
            "SELECT thread_id, record FROM thread_imports WHERE thread_id = ANY(%s)", (list(thread_ids),)
        )
        return {tid: ImportRecord.from_json(text) for tid, text in rows}

    async def delete_threads(self, thread_ids: Sequence[str]) -> int:
        ids = list(dict.fromkeys(thread_ids))

        async def txn(conn: psycopg.AsyncConnection) -> list[str]:
            cur = await conn.execute(
                "DELETE FROM threads WHERE thread_id = ANY(%s) RETURNING thread_id", (ids,)
            )
            gone = [r[0] for r in await cur.fetchall()]
            await conn.execute("DELETE FROM events WHERE thread_id = ANY(%s)", (ids,))
            await conn.execute("DELETE FROM idempotency WHERE thread_id = ANY(%s)", (ids,))
            await conn.execute("DELETE FROM thread_imports WHERE thread_id = ANY(%s)", (ids,))
            await conn.execute("DELETE FROM anchors WHERE thread_id = ANY(%s)", (ids,))
            await pgsearch.delete_docs(conn, ids)
            await pgvectors.delete_threads(conn, ids)
            return gone

        gone = await self._run(txn, write=True)
        for tid in ids:
            self._tails.forget(tid)
            self._hashes.forget(tid)
            self._anchor_book.forget(tid)
        if gone:
            await self._announce(gone)
            self._notify(frozenset(gone))
        return len(gone)

    # ------------------------------------------------------------------- reads

    async def _fetch(self, q: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        async def fn(conn: psycopg.AsyncConnection) -> list[tuple[Any, ...]]:
            cur = await conn.execute(q, args)
            return await cur.fetchall()

        return await self._run(fn, write=False, txn=False)

    async def get_thread(self, thread_id: str) -> Thread:
        rows = await self._fetch(f"SELECT {_THREAD_COLS} FROM threads WHERE thread_id = %s", (thread_id,))
        if not rows:
            raise not_found(thread_id)
        return _row_to_thread(rows[0])

    async def get_threads(self, thread_ids: Sequence[str]) -> dict[str, Thread]:
        ids = list(dict.fromkeys(thread_ids))
        rows = await self._fetch(f"SELECT {_THREAD_COLS} FROM threads WHERE thread_id = ANY(%s)", (ids,))
        return {r[0]: _row_to_thread(r) for r in rows}

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
            mark="%s",
        )
        return [_row_to_thread(r) for r in await self._fetch(q, args)]

    async def read_events(
        self, thread_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        async def fn(conn: psycopg.AsyncConnection) -> list[StoredEvent]:
            cur = await conn.execute(
                "SELECT seq, ts, type, line, prev_hash FROM events WHERE thread_id = %s AND seq > %s"
                " ORDER BY seq LIMIT %s",
                (thread_id, after_seq, limit),
            )
            rows = await cur.fetchall()
            if not rows:
                cur = await conn.execute("SELECT 1 FROM threads WHERE thread_id = %s", (thread_id,))
                if await cur.fetchone() is None:
                    raise not_found(thread_id)
            return [StoredEvent(thread_id, *r) for r in rows]

        return await self._run(fn, write=False, txn=False)

    async def find_idempotency(self, thread_id: str, key: str) -> IdempotencyRecord | None:
        async def fn(conn: psycopg.AsyncConnection) -> IdempotencyRecord | None:
            return await _find_idem(conn, thread_id, key)

        return await self._run(fn, write=False, txn=False)

    async def list_stale(self, now: float, *, limit: int = 100) -> list[Thread]:
        q = (
            f"SELECT {_THREAD_COLS} FROM threads WHERE status = 'running' "
            "AND heartbeat_epoch + stale_after < %s LIMIT %s"
        )
        return [_row_to_thread(r) for r in await self._fetch(q, (now, limit))]

    async def changed_since(self, since: str, *, limit: int = 500) -> list[Thread]:
        q = f"SELECT {_THREAD_COLS} FROM threads WHERE updated_at >= %s ORDER BY updated_at LIMIT %s"
        return [_row_to_thread(r) for r in await self._fetch(q, (since, limit))]

    async def child_counts(self, parent_id: str) -> dict[str, int]:
        rows = await self._fetch(
            "SELECT status, COUNT(*) FROM threads WHERE parent_id = %s GROUP BY status", (parent_id,)
        )
        return {status: int(n) for status, n in rows}

    async def list_chain(self, chain_root_id: str) -> list[Thread]:
        q = f"SELECT {_THREAD_COLS} FROM threads WHERE chain_root_id = %s ORDER BY created_at, thread_id"
        return [_row_to_thread(r) for r in await self._fetch(q, (chain_root_id,))]

    async def list_forks(self, thread_ids: Sequence[str]) -> list[Thread]:
        q = f"SELECT {_THREAD_COLS} FROM threads WHERE fork_of = ANY(%s) ORDER BY created_at, thread_id"
        return [_row_to_thread(r) for r in await self._fetch(q, (list(dict.fromkeys(thread_ids)),))]

    # ------------------------------------------------------------------ search
    #
    # PostgreSQL's own full-text search and server-side regex pre-filtering: store/pgsearch.py.

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
        """Ranked by ts_rank among the newest matches (docs/search.md, PostgreSQL)."""

        async def fn(conn: psycopg.AsyncConnection) -> list[SearchHit]:
            return await pgsearch.search(
                conn,
                query,
                mode=mode,
                thread_ids=thread_ids,
                agent_id=agent_id,
                include_tools=include_tools,
                limit=limit,
                best_per_thread=best_per_thread,
            )

        return await self._run(fn, write=False)

    async def scan_text(
        self,
        thread_ids: Sequence[str],
        find: Finder,
        *,
        include_tools: bool = False,
        limit: int = 20,
        pattern: str | None = None,
    ) -> list[SearchHit]:
        """With a translatable RE2 ``pattern``, PostgreSQL pre-filters the rows (bounded by a
        statement timeout); RE2 decides every hit either way."""

        async def fn(conn: psycopg.AsyncConnection) -> list[SearchHit]:
            if self._regex_ok is None:
                self._regex_ok = await pgsearch.regex_in_database(conn)
            return await pgsearch.scan(
                conn,
                thread_ids,
                find,
                include_tools=include_tools,
                limit=limit,
                pattern=pattern,
                regex_ok=self._regex_ok,
            )

        return await self._run(fn, write=False)

    async def reindex(self, *, progress: ReindexProgress | None = None) -> ReindexStats:
        """Removes rows whose event is gone, then indexes events lacking a row, in batches."""
        return await pgsearch.reindex(self._run, progress=progress)

    # ----------------------------------------------------------------- vectors

    async def missing_vectors(
        self,
        model: str,
        types: Sequence[str],
        *,
        thread_id: str | None = None,
        after: tuple[str, int] | None = None,
        limit: int = 256,
    ) -> list[StoredEvent]:
        return await self._run(
            lambda c: pgvectors.missing(c, model, types, thread_id, after, limit), write=False, txn=False
        )

    async def count_missing_vectors(self, model: str, types: Sequence[str]) -> int:
        return await self._run(lambda c: pgvectors.count_missing(c, model, types), write=False, txn=False)

    async def put_vectors(self, model: str, rows: Sequence[VectorRow]) -> int:
        rows = list(rows)
        return await self._run(lambda c: pgvectors.put(c, model, rows), write=True) if rows else 0

    async def clean_vectors(self, model: str, types: Sequence[str]) -> int:
        return await self._run(lambda c: pgvectors.clean(c, model, types), write=True)

    async def count_vectors(self, model: str) -> int:
        return await self._run(lambda c: pgvectors.count(c, model), write=False, txn=False)

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
        return await self._run(
            lambda c: self._vectors.search(
                c,
                model,
                query,
                thread_ids=thread_ids,
                agent_id=agent_id,
                limit=limit,
                best_per_thread=best_per_thread,
            ),
            write=False,
            txn=False,
        )

    # ------------------------------------------------------------------- watch

    def watch_external(self, on_change: Callable[[], None]) -> Callable[[], None]:
        """One LISTEN connection per caller: every commit anywhere NOTIFYs ``threadloom``
        with ``<server instance>|<thread ids>``; this server's own notices are skipped."""
        loop = asyncio.get_running_loop()
        own = f"{self._instance}|"

        async def listen() -> None:
            while True:
                try:
                    conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
                    try:
                        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                        on_change()  # anything missed while (re)connecting
                        async for note in conn.notifies():
                            if not note.payload.startswith(own):  # this process's listeners knew already
                                on_change()
                    finally:
                        await conn.close()
                except asyncio.CancelledError:
                    raise
                except psycopg.Error as exc:
                    log.warning("LISTEN connection lost (%s); reconnecting", exc)
                    await asyncio.sleep(0.5)

        task = loop.create_task(listen())
        return task.cancel


_GATE: contextvars.ContextVar[Callable[[], Awaitable[None]] | None] = contextvars.ContextVar(
    "threadloom_commit_gate", default=None
)
"""The gate commit_after hands to the commit() it calls (per task: no other task's commit
can take it)."""


def _on_created(op: Op, created: set[str]) -> bool:
    """Does ``op`` only create a thread or write to one its commit created (so that no
    other transaction can be waiting for what it locks)?"""
    if isinstance(op, CreateThread):
        return True
    return isinstance(op, AppendEvents) and op.thread_id in created


async def _get_thread(conn: psycopg.AsyncConnection, thread_id: str) -> Thread:
    cur = await conn.execute(f"SELECT {_THREAD_COLS} FROM threads WHERE thread_id = %s", (thread_id,))
    row = await cur.fetchone()
    if row is None:
        raise not_found(thread_id)
    return _row_to_thread(row)


async def _find_idem(conn: psycopg.AsyncConnection, thread_id: str, key: str) -> IdempotencyRecord | None:
    cur = await conn.execute(
        "SELECT request_hash, seqs FROM idempotency WHERE thread_id = %s AND key = %s", (thread_id, key)
    )
    row = await cur.fetchone()
    return None if row is None else IdempotencyRecord(thread_id, key, row[0], json.loads(row[1]))


INSERT_EVENTS = (
    "INSERT INTO events (thread_id, seq, ts, type, line, prev_hash) SELECT * FROM"
    " unnest(%b::text[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[])"
)
"""Event rows as six arrays, not a VALUES list: psycopg parses one short query instead of
one growing with the rows (a handoff's 800 carried events spent ~25 ms in that parse). The
arrays go in binary: in text format psycopg escapes every element with a regex (the quotes
of a JSON line), ~20 ms for a handoff's 900 lines against ~1 ms."""


INSERT_EVENTS_JOINED = (
    "INSERT INTO events (thread_id, seq, ts, type, line, prev_hash) SELECT %s, %s::bigint + u.n, u.ts, u.type,"
    " u.line, u.prev FROM unnest(string_to_array(%s, E'\\n'), string_to_array(%s, E'\\n'),"
    " string_to_array(%s, E'\\n'), string_to_array(%s, E'\\n')) WITH ORDINALITY AS u(ts, type, line, prev, n)"
)
"""Rows of one thread with consecutive seqs, each text column as one newline-joined value
that PostgreSQL splits: psycopg then dumps four strings, not a Python loop over every
element of six arrays (~5 ms for a handoff's 900 events)."""


def _event_arrays(events: Sequence[StoredEvent]) -> tuple[list[Any], ...]:
    return (
        [e.thread_id for e in events],
        [e.seq for e in events],
        [e.ts for e in events],
        [e.type for e in events],
        [e.line for e in events],
        [e.prev_hash for e in events],
    )


def _insert_events(events: Sequence[StoredEvent]) -> tuple[str, tuple[Any, ...]]:
    """The statement and parameters inserting ``events``: joined (INSERT_EVENTS_JOINED)
    when every value splits back exactly (no newline inside, none empty or NULL, one thread,
    consecutive seqs), else as arrays."""
    first = events[0] if events else None
    if first is not None and all(e.seq == first.seq + i for i, e in enumerate(events)):
        tid = first.thread_id
        cols = (
            [e.ts for e in events],
            [e.type for e in events],
            [e.line for e in events],
            [e.prev_hash for e in events],
        )
        if all(e.thread_id == tid for e in events) and all(None not in c and "" not in c for c in cols):
            joined = ["\n".join(c) for c in cols]  # type: ignore[arg-type]
            if all(j.count("\n") == len(events) - 1 for j in joined):
                return INSERT_EVENTS_JOINED, (tid, first.seq - 1, *joined)
    return INSERT_EVENTS, _event_arrays(events)


ANCHORED_SQL = f"""
WITH t AS (SELECT {_THREAD_COLS}, chain_head FROM threads WHERE thread_id = %(tid)s),
a AS (SELECT seq, sha256, signature FROM anchors WHERE thread_id = %(tid)s),
m AS (
    SELECT GREATEST(
        CASE WHEN %(run)s::bigint <= t.event_count THEN %(run)s::bigint ELSE 0 END,
        COALESCE((SELECT a.seq FROM a WHERE a.seq <= t.event_count), 0)
    ) AS m FROM t
),
b AS (
    SELECT m.m, GREATEST(m.m, COALESCE((
        SELECT e.seq - 1 FROM events e WHERE e.thread_id = %(tid)s AND e.seq > m.m AND e.type = 'checkpoint'
        ORDER BY e.seq DESC LIMIT 1
    ), 0)) AS base FROM m
)
SELECT t.*, a.seq, a.sha256, a.signature, b.m, b.base,
    CASE WHEN b.base > 0 THEN (
        SELECT convert_to(string_agg(line, E'\\n' ORDER BY seq), 'UTF8') FROM events
        WHERE thread_id = %(tid)s AND seq <= b.base
    ) END,
    x.seqs, x.ts, x.types, x.lines, x.prevs,
    EXISTS (SELECT 1 FROM thread_imports WHERE thread_id = %(tid)s)
FROM t CROSS JOIN b LEFT JOIN a ON true
LEFT JOIN LATERAL (
    SELECT array_agg(seq ORDER BY seq) AS seqs, array_agg(ts ORDER BY seq) AS ts,
        array_agg(type ORDER BY seq) AS types, array_agg(line ORDER BY seq) AS lines,
        array_agg(prev_hash ORDER BY seq) AS prevs
    FROM events WHERE thread_id = %(tid)s AND seq > b.base
) AS x ON true
"""
"""``read_anchored`` in one statement: the thread row (13 columns and ``chain_head``), its
stored anchor (seq, sha256, signature), m (the larger of the caller's running-hash seq, when
the thread holds that many lines, and the stored anchor's seq, when it does), the base (m,
or the seq before the last checkpoint after m), lines 1..base joined as one UTF-8 value, the
tail after the base as arrays, and whether the thread was imported."""


async def _migrate(conn: psycopg.AsyncConnection) -> int:
    """Apply pending migrations under an advisory lock shared by every server."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        row = await cur.fetchone()
        current = int(row[0]) if row else 0
        if current > len(POSTGRES_MIGRATIONS):
            raise SchemaTooNew(current, len(POSTGRES_MIGRATIONS))
        for version, (name, statements) in enumerate(POSTGRES_MIGRATIONS, start=1):
            if version <= current:
                continue
            for statement in statements:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name)
            )
        if current < POSTGRES_SEARCH_VERSION:  # events written before the index: searchable at once
            await pgsearch.backfill(conn)
        await conn.execute(anchors.PG_TABLE_SQL)  # derived data beside the schema (anchors.py)
    return len(POSTGRES_MIGRATIONS)


async def _import_record(conn: psycopg.AsyncConnection, thread_id: str) -> ImportRecord | None:
    cur = await conn.execute("SELECT record FROM thread_imports WHERE thread_id = %s", (thread_id,))
    row = await cur.fetchone()
    return None if row is None else ImportRecord.from_json(row[0])
