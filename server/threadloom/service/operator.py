"""Operator jobs: every thread, delete, import, reindex, embeddings, the stale-thread sweeper,
and the maintenance and exact reads the CLI, export, retention and doctor need (they never
touch the store themselves)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio

from .. import budgets, visibility
from ..config import Settings
from ..errors import (
    ConflictError,
    InvalidInputError,
    InvalidStateError,
)
from ..lineage import order_chain
from ..models import (
    ENDED,
    Status,
    StoredEvent,
    Thread,
    check_thread_id,
    iso,
    utc_now,
)
from ..provenance import ImportRecord, SignedSpan, build_record, signer_key
from ..results import (
    DatabaseHealth,
    DeleteOutcome,
    EngineHealth,
    ReindexProgress,
    ReindexStats,
)
from ..semantic import EmbedProgress, EmbedStats
from ..store.base import (
    ImportThread,
    Op,
    PutThread,
)
from ..trust import parse_public_key
from .base import (
    ServiceBase,
    log,
)


class OperatorJobs(ServiceBase):
    """Operator jobs: every thread, delete, import, reindex, embeddings, the stale-thread
    sweeper, maintenance (vacuum, mirror repair, recovery) and exact reads."""

    # ------------------------------------------------------------------ exact reads

    async def get_threads(self, thread_ids: Sequence[str]) -> dict[str, Thread]:
        """The manifests of those of ``thread_ids`` that exist, by id (no children counts;
        the others are simply absent, no error).

        Raises:
            InvalidInputError: an id is malformed.
        """
        ids = [check_thread_id(t) for t in dict.fromkeys(thread_ids)]
        return visibility.keep_map(await self.store.get_threads(ids))

    async def stored_events(
        self, thread_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        """The thread's events after ``after_seq`` as stored (the transcript's exact lines), in
        seq order, at most ``limit`` (all when None): for tail, export and doctor, which need
        the bytes, not :meth:`read_events`' page of dicts.

        Raises:
            NotFoundError: no such thread.
        """
        await visibility.visible(self.store, thread_id)
        return await self.store.read_events(thread_id, after_seq=after_seq, limit=limit)

    async def chain_members(self, chain_root_id: str) -> list[Thread]:
        """Every thread of the chain rooted at ``chain_root_id``, in link order (empty when
        there is no such chain)."""
        return visibility.keep(order_chain(await self.store.list_chain(check_thread_id(chain_root_id))))

    async def import_records(self, thread_ids: Sequence[str]) -> dict[str, ImportRecord]:
        """How each of ``thread_ids`` that was imported was verified when it came in
        (provenance.py), by id; threads made on this root have none."""
        return await self.store.import_records(list(thread_ids))

    async def stale_threads(self, now: float | None = None) -> list[Thread]:
        """Running threads whose heartbeat is older than their ``stale_after`` (what
        :meth:`sweep_stale` would move to error)."""
        return await self.store.list_stale(time.time() if now is None else now)

    # ------------------------------------------------------------------ maintenance

    async def vacuum(self) -> None:
        """Give the space of deleted rows back to the file system (``gc --vacuum``)."""
        await self.store.vacuum()

    async def reconcile_mirrors(self, thread_ids: Sequence[str] | None = None) -> int:
        """Complete the mirror files of ``thread_ids`` (default: every thread) from the
        database, never rewriting away what it lacks; how many threads had a file written."""
        return await self.store.reconcile_mirrors(None if thread_ids is None else list(thread_ids))

    async def recover_tail(self, thread: Thread, events: Sequence[StoredEvent], expect_count: int) -> None:
        """Append events recovered from a mirror file (``doctor --recover``) exactly as the file
        holds them, if the thread still holds ``expect_count`` events; ``thread`` is its
        manifest and counters after them.

        Raises:
            ConflictError: ``count_guard`` when the thread changed since the plan.
            StoreUnavailableError: ``not_supported`` on a store without mirror files.
        """
        await self.store.recover_tail(thread, events, expect_count)

    async def copy_database(self, folder: Path) -> None:
        """Copy the database into ``folder`` (a scratch root), consistently while others write.

        Raises:
            StoreUnavailableError: ``not_supported`` on a store threadloom does not copy.
        """
        await self.store.backup(folder)

    @staticmethod
    def inspect_database(settings: Settings) -> DatabaseHealth | None:
        """A read-only look at the root's database file before anything opens it (which would
        migrate it): journal mode, schema version, quick check. None for stores without one."""
        from ..store import inspect_database

        return inspect_database(settings)

    @staticmethod
    def engine_health(settings: Settings) -> EngineHealth | None:
        """The database engine this process links for ``settings``' store (SQLite's version
        and FTS5); None for stores whose engine is a server."""
        from ..store import engine_health

        return engine_health(settings)

    # ------------------------------------------------------------------ every thread, delete, import

    async def all_threads(self, *, page: int = 500) -> list[Thread]:
        """Every thread of the store, newest first (read a page at a time)."""
        out: list[Thread] = []
        before: tuple[str, str] | None = None
        while True:
            rows = await self.store.list_threads(limit=page, before=before)
            out.extend(rows)
            if len(rows) < page:
                return out
            before = (rows[-1].created_at, rows[-1].thread_id)

    async def chain_threads(self, thread_id: str) -> list[Thread]:
        """Every thread of the chain of ``thread_id`` (any member), in link order."""
        thread = await self.get_thread(thread_id)
        return visibility.keep(order_chain(await self.store.list_chain(thread.chain_root_id) or [thread]))

    async def delete_threads(
        self, thread_ids: Sequence[str], *, chain: bool = False, force: bool = False, dry_run: bool = False
    ) -> DeleteOutcome:
        """Delete threads with their events and mirrors (docs/operator-cli.md).

        Idempotent: ids that do not exist are reported in ``missing``. A thread that is one
        of several in a chain goes only with its whole chain: unless ``chain`` is true (or
        every member is named) the call is refused, since half a chain cannot be resumed or
        followed. Threads still created/running/paused are refused unless ``force``.
        Nothing is deleted when anything is refused; ``dry_run`` checks and reports only.

        Raises:
            InvalidInputError: an id is malformed.
            InvalidStateError: ``delete_partial_chain`` or ``delete_active``.
        """
        ids = [check_thread_id(t) for t in dict.fromkeys(thread_ids)]
        found = visibility.keep_map(await self.store.get_threads(ids))
        missing = [t for t in ids if t not in found]
        doomed: dict[str, Thread] = {}
        for tid in ids:
            if tid not in found or tid in doomed:
                continue
            members = visibility.keep(
                order_chain(await self.store.list_chain(found[tid].chain_root_id) or [found[tid]])
            )
            rest = [m.thread_id for m in members if m.thread_id not in found]
            if rest and not chain:
                raise InvalidStateError(
                    f"thread {tid} is one of {len(members)} threads of chain {found[tid].chain_root_id} "
                    f"({', '.join(m.thread_id for m in members)}); deleting it alone would break the chain: "
                    "delete the whole chain (chain=true, --chain)",
                    rule="delete_partial_chain",
                )
            for m in members if chain else [found[tid]]:
                doomed[m.thread_id] = m
        active = [t for t in doomed.values() if t.status not in ENDED]
        if active and not force:
            names = ", ".join(f"{t.thread_id} ({t.status.value})" for t in active)
            raise InvalidStateError(
                f"refusing to delete threads that have not ended: {names}; end them first "
                "(update_thread status=cancelled) or, as the operator, pass --force",
                rule="delete_active",
            )
        if not dry_run:
            await self.store.delete_threads(list(doomed))
        return DeleteOutcome(deleted=list(doomed), missing=missing)

    async def import_threads(
        self,
        threads: Sequence[tuple[Thread, Sequence[StoredEvent]]],
        *,
        index: bool = True,
        keys: Mapping[str, str] | None = None,
        renamed: Mapping[str, str] | None = None,
        declared: Mapping[str, Sequence[SignedSpan]] | None = None,
    ) -> list[str]:
        """Insert threads exactly as exported (ids, seqs, timestamps, counters), in one commit.

        The caller (``threadloom import``, see bundle.py) has parsed and validated the events
        and settled id conflicts; the store refuses an id in use (ConflictError
        ``thread_exists``) and events not numbered 1..n. With ``index`` the imported
        messages are then indexed for search (:meth:`index_imported`); a caller importing
        many batches passes ``index=False`` and calls it once at the end.

        Each thread gets a countersigned import record (provenance.py): which key verified
        its checkpoints, among ``keys`` (public key PEMs by id, from the bundle), this
        root's own key and the keys it trusts. ``renamed`` maps a new id to the id the
        thread was exported under; ``declared``, by id, which key the bundle says signed
        what (its ``signed_by``).
        """
        if not threads:
            return []
        candidates = {**self.trusted_keys(), self.store.signer.key_id: signer_key(self.store.signer)}
        for kid, pem in (keys or {}).items():
            try:
                key = parse_public_key(pem, where=f"public key {kid} of the bundle")
            except InvalidInputError:
                continue
            candidates.setdefault(key.key_id, key)
        now = iso(utc_now())
        ops: list[Op] = []
        for thread, events in threads:
            check_thread_id(thread.thread_id)
            record = build_record(
                thread.thread_id,
                events,
                candidates,
                self.store.signer,
                imported_at=now,
                renamed_from=(renamed or {}).get(thread.thread_id),
                declared=(declared or {}).get(thread.thread_id, ()),
            )
            ops.append(ImportThread(thread, tuple(events), record))
        await self.store.commit(ops)
        if index:
            await self.index_imported()
        return [t.thread_id for t, _ in threads]

    async def index_imported(self) -> None:
        """Bring the search index up to date after imports, when this build has one.

        Imports bypass the append path that indexes messages, so the search feature's
        incremental ``reindex`` (only what is missing) is run instead, unless the store
        indexed them in the import's own commit.
        """
        if self.store.imports_indexed:
            return
        reindex = getattr(self, "reindex", None)
        if reindex is not None:
            await reindex()

    async def reindex(self, *, progress: ReindexProgress | None = None) -> ReindexStats:
        """Bring the search index up to date with the events (idempotent, incremental)."""
        return await self.store.reindex(progress=progress)

    async def reindex_embeddings(self, *, progress: EmbedProgress | None = None) -> EmbedStats:
        """Backfill vectors: remove orphans, embed what is missing (idempotent, resumable).

        Raises:
            SemanticUnavailableError: the extra or the model is missing (the message says how to get it).
        """
        return await self.semantic.backfill(progress=progress)

    async def run_indexer(self) -> None:
        """Embed new events in the background after each commit (until cancelled)."""
        await self.semantic.run_indexer()

    async def sweep_stale(self, now: float | None = None) -> list[str]:
        """Move running threads whose heartbeat is older than ``stale_after`` to error/timeout."""
        now = time.time() if now is None else now
        moved = []
        for thread in await self.store.list_stale(now):
            ops = self.status_ops(thread, Status.ERROR, "timeout")
            put = ops[0]
            assert isinstance(put, PutThread)
            ops[0] = PutThread(
                put.thread, put.expect_version, expect_heartbeat_before=now - thread.stale_after
            )
            ops += await budgets.end_ops(self.store, thread)
            try:
                await self.store.commit(ops)
            except ConflictError:
                continue  # it moved, or another process swept it first
            moved.append(thread.thread_id)
            log.info(
                "thread %s had no heartbeat for %.0fs: moved to error (timeout)",
                thread.thread_id,
                thread.stale_after,
            )
        return moved

    async def run_sweeper(self, interval: float | None = None) -> None:
        """Sweep forever (until cancelled), every ``interval`` seconds."""
        interval = interval or self.settings.sweep_interval
        while True:
            try:
                await self.sweep_stale()
            except Exception:
                log.exception("sweeper pass failed")
            await anyio.sleep(interval)
