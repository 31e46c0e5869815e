"""The store interface: the whole persistence contract, documented once.

A store persists thread manifests and their events. Every write goes through
:meth:`Store.commit`, which applies a list of operations in one transaction: all of
them or none. The service plans operations (it owns the rules); the store assigns
``seq`` and ``ts``, enforces the guards carried by each operation inside the
transaction (so a race can never slip past a rule), maintains the counters, and
tells listeners what committed.

Backends: ``memory`` (tests), ``sqlite`` (default, one file per root), and later
``postgres``. Each translates its driver's errors into :mod:`threadloom.errors`.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import NotFoundError, StoreUnavailableError, ThreadloomError
from ..integrity import Signer
from ..mirror import MirrorFiles
from ..models import BudgetState, Status, StoredEvent, Thread, Usage, UsageDelta
from ..provenance import ImportRecord
from ..results import ReindexProgress as ReindexProgress  # shared with the layers above: results.py
from ..results import ReindexStats as ReindexStats
from ..textquery import Mode, TextQuery
from .anchors import SignedAnchor
from .textsearch import Finder, PythonIndex, event_document, scan_documents

__all__ = [
    "NewEvent",
    "CreateThread",
    "AppendEvents",
    "PutThread",
    "PutUsage",
    "PutLease",
    "LeaseCheck",
    "ImportThread",
    "Op",
    "IntegritySnapshot",
    "AnchoredSnapshot",
    "AppendResult",
    "CommitResult",
    "IdempotencyRecord",
    "IdempotentReplay",
    "Store",
    "CommitListener",
    "SearchHit",
    "ReindexStats",
    "ReindexProgress",
    "VectorRow",
]


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append: its stored fields plus what it adds to the context counters."""

    type: str
    payload: dict[str, Any]
    text_chars: int = 0
    input_tokens: int | None = None
    copy_of: tuple[str, int] | None = None
    """(thread id, seq) of the stored event this one copies with its payload unchanged (a
    handoff's, resume's or fork's carried events): a backend may reuse what it derived from
    that event, such as its search row."""


@dataclass(frozen=True, slots=True)
class LeaseCheck:
    """A write that must respect the thread's run lease (docs/live.md): refused with
    ConflictError ``thread_leased`` while another ``owner`` (or, for ``owner`` None, anyone)
    holds an unexpired lease; a write by the holder moves the lease's expiry ttl seconds on."""

    owner: str | None = None


@dataclass(frozen=True, slots=True)
class CreateThread:
    """Insert a new thread (its id must be unused). Counters start at zero."""

    thread: Thread


@dataclass(frozen=True, slots=True)
class AppendEvents:
    """Append events to one thread with consecutive seqs.

    ``allowed_statuses``: refuse (ConflictError with ``rule='status_guard'``) unless the
    thread's status at commit time is one of these. ``idempotency_key``: if the key was
    already used on this thread the whole commit is abandoned with :class:`IdempotentReplay`
    (same ``request_hash``) or ConflictError (different content). ``expect_event_count``:
    refuse (ConflictError with ``rule='count_guard'``) unless the thread holds exactly that
    many events at commit time (a handoff carries the tail it read, and nothing newer may
    slip in between; appends do not move ``version``).

    ``usage``: added to the thread's :class:`Usage` (turns, tokens, spend and actual_spend;
    its version moves), unguarded, for threads with no budget, limits or parent.
    ``checkpoint``: ask for a signed ``checkpoint`` event after the last event this commit
    appends to the thread (see :meth:`Store.commit`).
    """

    thread_id: str
    events: tuple[NewEvent, ...]
    idempotency_key: str | None = None
    request_hash: str | None = None
    allowed_statuses: frozenset[Status] | None = None
    expect_event_count: int | None = None
    usage: UsageDelta | None = None
    checkpoint: bool = False
    lease: LeaseCheck | None = None
    """Check the thread's lease (None: a server write that leases do not stop)."""
    start_reason: str | None = None
    """When the thread is ``created`` at commit time, first move it to ``running`` with this
    reason, in the same commit: its ``status`` event goes before the events (not in the
    result's ``seqs``) and its version moves, as a status change does (core.plan_append).
    A backend that refused with ``status_guard`` instead would only cost the service a
    second plan (it then moves the status itself)."""


@dataclass(frozen=True, slots=True)
class PutThread:
    """Replace a thread's manifest fields if its ``version`` is still ``expect_version``.

    Counters in ``thread`` are ignored. ``expect_heartbeat_before`` (epoch seconds) also
    requires that no heartbeat happened since (used by the stale-thread sweeper).
    A failed guard raises ConflictError with ``rule='version_guard'``.
    """

    thread: Thread
    expect_version: int
    expect_heartbeat_before: float | None = None
    lease: LeaseCheck | None = None
    """Check the thread's lease (None: a server write that leases do not stop). The stored
    lease is never replaced by a PutThread (``thread.lease`` is ignored)."""


@dataclass(frozen=True, slots=True)
class PutUsage:
    """Replace a thread's accounts (usage and budget position) if ``usage.version`` is still
    ``expect_version``; the stored version becomes ``expect_version + 1``.

    Leaves the manifest, its ``version`` and ``updated_at`` alone. A failed guard raises
    ConflictError with ``rule='version_guard'`` (the service re-plans).
    """

    thread_id: str
    usage: Usage
    budget: BudgetState | None
    expect_version: int


@dataclass(frozen=True, slots=True)
class PutLease:
    """Acquire (``ttl`` seconds) or, with ``ttl`` None, release the run lease of a thread.

    Acquiring succeeds when the lease is free, expired, or already ``owner``'s (its expiry
    moves to now + ttl); releasing clears ``owner``'s lease (a free or expired one is left
    as it is). Either is refused with ConflictError ``thread_leased`` while someone else
    holds an unexpired lease. A change moves the manifest's ``version`` and ``updated_at``.
    """

    thread_id: str
    owner: str
    ttl: float | None


@dataclass(frozen=True, slots=True)
class IntegritySnapshot:
    """What verification reads, as of one moment: the thread, every event with its
    ``prev_hash``, the chain head the database records (None if the backend keeps none),
    and the mirror files (None when the backend writes no files)."""

    thread: Thread
    events: list[StoredEvent]
    chain_head: str | None
    files: MirrorFiles | None
    imported: ImportRecord | None = None
    """The record of the thread's import (provenance.py), when it came in through one."""


@dataclass(frozen=True, slots=True)
class AnchoredSnapshot:
    """What a quick verification reads (verify_anchored.py), as of one moment.

    ``anchor``: (m, hash of lines 1..m) this process trusts, if any. ``base`` is the larger
    of m and (the seq of the last checkpoint after m) - 1; ``prefix`` holds lines 1..base
    joined by newlines, UTF-8 (None when base is 0) and ``tail`` the events after it, with their
    ``prev_hash``. ``files`` as in :class:`IntegritySnapshot`. ``imported``: the thread came
    in through ``threadloom import`` (its signatures are another key's: checked in full).
    ``signed``: the thread's stored signed anchor (anchors.py), when it is the base's anchor
    (m is its seq): it stands in for ``anchor`` in a process that did not write the thread.
    """

    thread: Thread
    chain_head: str | None
    anchor: tuple[int, Any] | None
    base: int
    prefix: bytes | None
    tail: list[StoredEvent]
    files: MirrorFiles | None
    imported: bool = False
    signed: SignedAnchor | None = None


@dataclass(frozen=True, slots=True)
class ImportThread:
    """Insert a thread exactly as it was exported: manifest, counters and events as given.

    Only ``threadloom import`` uses this (never the tools): events keep their ``seq``,
    ``ts`` and line bytes; the manifest keeps ``created_at``, ``updated_at``,
    ``heartbeat_at``, ``version`` and the counters of ``thread``. ``events`` must be
    numbered 1..n in order with ``n == thread.event_count`` (InvalidInputError
    ``import_seq`` otherwise) and the id must be unused (ConflictError ``thread_exists``).
    No status change is made and no other event is written. The caller (the service)
    validates the events and decides about conflicts.
    """

    thread: Thread
    events: tuple[StoredEvent, ...]
    record: ImportRecord | None = None
    """The countersigned record of this import (provenance.py), stored beside the thread."""


Op = CreateThread | AppendEvents | PutThread | PutUsage | PutLease | ImportThread


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What one AppendEvents committed."""

    thread_id: str
    seqs: list[int]
    events: list[StoredEvent]


@dataclass(slots=True)
class CommitResult:
    """Results of a commit: one AppendResult per AppendEvents op (in op order) and the
    post-commit state of every thread the commit touched."""

    appends: list[AppendResult] = field(default_factory=list)
    threads: dict[str, Thread] = field(default_factory=dict)
    anchored: list[tuple[str, int]] = field(default_factory=list)
    """(thread id, seq) of each signed anchor the commit stored (store/anchors.py)."""


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """The seqs an earlier append with this key produced, and the hash of its request."""

    thread_id: str
    key: str
    request_hash: str
    seqs: list[int]


class IdempotentReplay(ThreadloomError):
    """Raised by commit when an append's key was used before with the same content."""

    rule = "idempotent_replay"

    def __init__(self, record: IdempotencyRecord) -> None:
        super().__init__(f"idempotency_key {record.key!r} already applied")
        self.record = record


SCAN_BATCH = 2000
"""Events handed to a scan's ``find`` at a time."""

CommitListener = Callable[[frozenset[str]], None]
"""Called on the event loop after a commit, with the ids of the threads it touched."""


@dataclass(frozen=True, slots=True)
class SearchHit:
    """An event that matched a search: where it is and how well it matched.

    ``score`` is the relevance (higher is better; BM25, or ts_rank on PostgreSQL) for text
    search, None for scans.
    """

    thread_id: str
    seq: int
    score: float | None = None


@dataclass(frozen=True, slots=True)
class VectorRow:
    """The vector of one event under one model: unit-length float32 little-endian bytes,
    or ``b""`` for an event with nothing to embed (so it is not offered again)."""

    thread_id: str
    seq: int
    vector: bytes


class Store(abc.ABC):
    """Async persistence of threads and events; one instance per process and root."""

    name: str = "abstract"
    signer: Signer
    """The key that signs checkpoints, ``thread.json`` and ``capabilities.md``."""
    imports_indexed: bool = False
    """True when an ``ImportThread`` commit also indexes the events for search (no reindex needed)."""

    def __init__(self) -> None:
        self._listeners: list[CommitListener] = []

    # ---------------------------------------------------------------- life cycle

    @abc.abstractmethod
    async def open(self) -> None:
        """Create or migrate the schema and reconcile mirrors. Idempotent."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and release resources."""

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -------------------------------------------------------------------- writes

    @abc.abstractmethod
    async def commit(self, ops: Sequence[Op]) -> CommitResult:
        """Apply ``ops`` in one transaction, all or nothing.

        Seqs are gapless per thread from 1, in op order. Each event's ``ts`` is the
        commit time (UTC ISO 8601). Appends and PutThread move ``updated_at`` and the
        heartbeat. The commit is durable (per the durability setting) before this
        returns; then commit listeners run.

        Integrity (docs/integrity.md): every event row gets ``prev_hash`` (the hash chain).
        After the last event the commit appends to a thread, the store appends a signed
        ``checkpoint`` event (SHA-256 of all preceding transcript bytes) when an
        AppendEvents op for it asked (``checkpoint=True``) or when the thread ends the commit
        in an ended status (terminal or ``continued``). The checkpoint's event goes into the
        ``events`` of that thread's last AppendResult; ``seqs`` list only the ops' own events.

        Raises:
            NotFoundError: an op names a thread that does not exist.
            ConflictError: a guard failed (``rule`` says which), the thread id exists
                already, or an idempotency key was reused with other content.
            IdempotentReplay: an append's key was already applied with the same content.
            StoreUnavailableError: the backend kept failing after bounded retries.
        """

    async def commit_after(self, ops: Sequence[Op], gate: Callable[[], Awaitable[None]]) -> CommitResult:
        """:meth:`commit` of ``ops`` once ``gate()`` returned; when it raises, nothing is
        committed and its error propagates. This one waits for the gate first; a store may
        instead do the commit's work meanwhile, as long as nothing an existing thread holds
        is touched and nothing commits before the gate passes (PostgreSQL: the threads the
        commit creates are written while a handoff's verification still runs)."""
        await gate()
        return await self.commit(ops)

    # --------------------------------------------------------------------- reads

    @abc.abstractmethod
    async def get_thread(self, thread_id: str) -> Thread:
        """The thread's manifest and counters. Raises NotFoundError."""

    @abc.abstractmethod
    async def get_threads(self, thread_ids: Sequence[str]) -> dict[str, Thread]:
        """The threads that exist among ``thread_ids`` (missing ids are left out)."""

    @abc.abstractmethod
    async def list_threads(
        self,
        *,
        agent_id: str | None = None,
        parent_id: str | None = None,
        status: Status | None = None,
        limit: int = 50,
        before: tuple[str, str] | None = None,
    ) -> list[Thread]:
        """Threads matching every given filter, newest first by (created_at, thread_id).

        ``before`` is the (created_at, thread_id) of the last thread of the previous page.
        """

    @abc.abstractmethod
    async def read_events(
        self, thread_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        """Events with ``seq > after_seq`` in seq order, at most ``limit``. Raises NotFoundError."""

    @abc.abstractmethod
    async def find_idempotency(self, thread_id: str, key: str) -> IdempotencyRecord | None:
        """The record of an earlier append with this key on this thread, if any."""

    @abc.abstractmethod
    async def list_stale(self, now: float, *, limit: int = 100) -> list[Thread]:
        """Running threads whose heartbeat is older than their ``stale_after`` at ``now``."""

    @abc.abstractmethod
    async def changed_since(self, since: str, *, limit: int = 500) -> list[Thread]:
        """Threads whose ``updated_at`` is at or after ``since`` (oldest change first).

        How the wake hub learns what another process changed without reading every
        watched thread; a result of ``limit`` rows means "maybe more".
        """

    @abc.abstractmethod
    async def child_counts(self, parent_id: str) -> dict[str, int]:
        """How many children ``parent_id`` has, by status (statuses with none are left out)."""

    @abc.abstractmethod
    async def list_chain(self, chain_root_id: str) -> list[Thread]:
        """Every thread whose ``chain_root_id`` is the given id, oldest first."""

    async def list_forks(self, thread_ids: Sequence[str]) -> list[Thread]:
        """Threads forked from any of ``thread_ids`` (``forked_from.thread_id``), oldest first.

        This default reads every thread; the SQL backends use an index."""
        wanted = set(thread_ids)
        rows = [t for t in await self._all_threads() if t.forked_from and t.forked_from.thread_id in wanted]
        return sorted(rows, key=lambda t: (t.created_at, t.thread_id))

    @abc.abstractmethod
    async def delete_threads(self, thread_ids: Sequence[str]) -> int:
        """Delete threads with their events, idempotency records and mirrors.

        Idempotent: unknown ids are skipped. Returns how many threads were deleted.
        Callers (the service) decide which threads may go (whole chains only).
        """

    async def read_integrity(self, thread_id: str) -> IntegritySnapshot:
        """The thread, its events with ``prev_hash``, the recorded chain head and the mirror
        files, read consistently (files under the mirror's lock). Raises NotFoundError.

        This default knows no chain head and no files; backends that keep them override it.
        """
        thread = await self.get_thread(thread_id)
        events = await self.read_events(thread_id)
        return IntegritySnapshot(thread, events, None, None)

    async def import_records(self, thread_ids: Sequence[str]) -> dict[str, ImportRecord]:
        """The import records (provenance.py) of those of ``thread_ids`` that were imported."""
        return {}

    async def read_anchored(self, thread_id: str) -> AnchoredSnapshot | None:
        """What :func:`~threadloom.verify_anchored.verify_anchored` needs, read consistently
        like :meth:`read_integrity`; None where the backend offers no quick path (then the
        caller verifies in full). Raises NotFoundError."""
        return None

    def trust_verified(self, thread_id: str, seq: int, state: Any) -> None:
        """Verification proved lines 1..``seq`` of the thread hash to ``state``: keep it as the
        anchor of the next quick verification (where the backend keeps running hashes)."""
        hashes = getattr(self, "_hashes", None)
        if hashes is not None:
            hashes.trust(thread_id, seq, state)

    # -------------------------------------------------------------------- search
    #
    # Text search over the searchable text of events (textsearch.document_fields): the
    # body (messages of every role, assistant_text) and, on request, the tools field
    # (tool_use name and input, tool_result output). These defaults are the reference
    # engine over the read primitives (fine for the memory store and small data); a
    # backend with a full-text engine overrides them and keeps the semantics.

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
        """Events matching ``query``, best score first (BM25; PostgreSQL: ts_rank), at most ``limit``.

        ``mode='all'``: an event must hold every positive clause; ``'any'``: at least one.
        No event may hold a negative clause. Scope: only ``thread_ids`` when given, only
        threads of ``agent_id`` when given. ``include_tools`` also searches the tools
        field (weighted half). ``best_per_thread``: only the best hit of each thread.
        Statistics (IDF, average length) are over the whole index, not the scope. An
        event is searchable as soon as its append committed. A backend may rank only
        the most recent matches of a query that matches very many events (documented
        per backend); very common words may count as matched by every event.
        """
        threads = await self._all_threads()
        agents = {t.thread_id: t.agent_id for t in threads}
        events: list[StoredEvent] = []
        for t in threads:
            events += await self.read_events(t.thread_id)
        allowed = set(thread_ids) if thread_ids is not None else None
        index = PythonIndex.from_events(events)
        ranked = index.search(
            query,
            mode,
            include_tools=include_tools,
            keep=lambda d: (
                (allowed is None or d.thread_id in allowed)
                and (agent_id is None or agents.get(d.thread_id) == agent_id)
            ),
        )
        hits: list[SearchHit] = []
        seen: set[str] = set()
        for score, doc in ranked:
            if best_per_thread:
                if doc.thread_id in seen:
                    continue
                seen.add(doc.thread_id)
            hits.append(SearchHit(doc.thread_id, doc.seq, score))
            if len(hits) >= limit:
                break
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
        """The first ``limit`` events, in the order of ``thread_ids`` then seq, whose body
        (or tools field, with ``include_tools``) ``find`` accepts.

        ``find`` receives the texts of a batch of events and yields the indexes of those
        that match; it may run on a worker thread, so it must be thread-safe and bounded in
        time (e.g. RE2). Unknown thread ids are skipped. ``pattern``: the RE2 source of
        ``find``, when it is one; a backend may use it to pre-filter rows in the database
        (PostgreSQL does), never to decide a hit. Others ignore it.
        """
        hits: list[SearchHit] = []
        for tid in thread_ids:
            try:
                events = await self.read_events(tid)
            except NotFoundError:
                continue
            docs = [(ev.seq, *fields) for ev in events if (fields := event_document(ev)) is not None]
            for i in range(0, len(docs), SCAN_BATCH):
                for seq in scan_documents(docs[i : i + SCAN_BATCH], find, include_tools):
                    hits.append(SearchHit(tid, seq))
                    if len(hits) >= limit:
                        return hits
        return hits

    async def reindex(self, *, progress: ReindexProgress | None = None) -> ReindexStats:
        """Bring the search index up to date with the events: add what is missing, remove
        rows whose event is gone. Idempotent; a second run finds nothing to do.
        A store without a separate index has nothing to do and reports its documents."""
        count = 0
        for t in await self._all_threads():
            count += sum(1 for ev in await self.read_events(t.thread_id) if event_document(ev) is not None)
        if progress is not None:
            progress(0, 0)
        return ReindexStats(documents=count)

    # ------------------------------------------------------------------ vectors
    #
    # Semantic search (docs/semantic.md): the service embeds events and hands the vectors
    # to the store; the store keeps one row per (event, model) and scans them. Deleting a
    # thread deletes its vectors in the same transaction.

    vector_index: str = "exact"
    """How :meth:`search_vectors` finds neighbours here: ``exact`` (a scan of every vector)."""

    @abc.abstractmethod
    async def missing_vectors(
        self,
        model: str,
        types: Sequence[str],
        *,
        thread_id: str | None = None,
        after: tuple[str, int] | None = None,
        limit: int = 256,
    ) -> list[StoredEvent]:
        """Events of ``types`` without a vector of ``model``, in (thread_id, seq) order, at
        most ``limit``: only of ``thread_id`` when given, only past ``after`` (a
        (thread_id, seq) place) when given."""

    @abc.abstractmethod
    async def count_missing_vectors(self, model: str, types: Sequence[str]) -> int:
        """How many events of ``types`` have no vector of ``model``."""

    @abc.abstractmethod
    async def put_vectors(self, model: str, rows: Sequence[VectorRow]) -> int:
        """Keep these vectors (one transaction); rows whose event is gone, or that already
        have a vector of ``model``, are skipped. Returns how many rows were added."""

    @abc.abstractmethod
    async def clean_vectors(self, model: str, types: Sequence[str]) -> int:
        """Remove vectors whose event is gone or not of ``types``, and vectors of any
        other model. Returns how many rows were removed."""

    @abc.abstractmethod
    async def count_vectors(self, model: str) -> int:
        """How many events have a (possibly empty) vector of ``model``."""

    @abc.abstractmethod
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
        """Events whose vector of ``model`` is nearest ``query`` (a unit vector as bytes),
        best cosine first, at most ``limit``; scoped like :meth:`search_text`. Empty vectors
        and vectors of another dimension never match."""

    async def _all_threads(self) -> list[Thread]:
        out: list[Thread] = []
        before: tuple[str, str] | None = None
        while True:
            page = await self.list_threads(limit=500, before=before)
            out += page
            if len(page) < 500:
                return out
            before = (page[-1].created_at, page[-1].thread_id)

    async def reconcile_mirrors(self, thread_ids: Sequence[str] | None = None) -> int:
        """Complete the file mirrors of ``thread_ids`` (default: every thread) from the database,
        never rewriting away what the database lacks; returns how many threads were fixed."""
        return 0

    async def vacuum(self) -> None:
        """Give the space of deleted rows back to the file system (no-op where nothing to do)."""
        return None

    async def recover_tail(self, thread: Thread, events: Sequence[StoredEvent], expect_count: int) -> None:
        """Append events recovered from a mirror with their seq, ts and bytes as found
        (``doctor --recover``; SQLite only: the other stores keep no mirrors to recover from)."""
        raise StoreUnavailableError(
            f"the {self.name} store cannot take events back from mirror files", rule="not_supported"
        )

    async def backup(self, folder: Path) -> None:
        """Copy the database into ``folder`` (a root of its own), consistently, while others
        write (SQLite only: other stores are copied with the database's own tools)."""
        raise StoreUnavailableError(
            f"the {self.name} store is copied with the database's own tools, not by threadloom",
            rule="not_supported",
        )

    # ----------------------------------------------------------------- listeners

    def watch_external(self, on_change: Callable[[], None]) -> Callable[[], None]:
        """Call ``on_change`` (on the running event loop) when another process commits.

        Returns a function that stops the watch. One watch per caller, whatever the
        number of waiters behind it. The default (memory store) has no other process.
        """
        return lambda: None

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Register ``listener`` to run after every commit made through this store."""
        self._listeners.append(listener)

    def remove_commit_listener(self, listener: CommitListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify(self, thread_ids: frozenset[str]) -> None:
        for listener in list(self._listeners):
            listener(thread_ids)
