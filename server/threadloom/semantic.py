"""Semantic indexing: which events get vectors, the background indexer, and the backfill.

User and assistant messages (``message`` of role user/assistant, ``assistant_text``) are
embedded, and tool results too with ``semantic_tool_results``. Appends never wait for it:
a commit listener notes the threads a commit touched, and the indexer task embeds their
new events a moment later, in batches, on a worker thread, and hands the vectors to the
store (one short write transaction per batch). At start it catches up on whatever is
missing. ``threadloom reindex --embeddings`` (:meth:`SemanticIndex.backfill`) removes
orphaned vectors and embeds what is missing, one committed batch at a time, so a killed
run resumes where it stopped.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import anyio

from . import event_types
from .config import Settings
from .embedding import Embedder, SemanticUnavailableError, extra_missing, load_embedder
from .models import StoredEvent, iso, parse_iso, utc_now
from .store.base import Store, VectorRow
from .textquery import parse_query

__all__ = ["SemanticIndex", "EmbedStats", "embed_text"]

log = logging.getLogger("threadloom.semantic")

MAX_CURSORS = 10_000
"""Threads whose last embedded seq the indexer remembers (older ones are looked up again)."""
INDEX_DELAY = 0.25
"""Seconds the indexer waits after a commit, so that the commits that follow join one batch
(a new message is searchable by meaning about this long after its append)."""
CHANGED_LIMIT = 500
CLOCK_MARGIN = 2.0
"""Another process's commits are found by ``changed_since`` from this many seconds before the
newest change seen (clocks and commit order may disagree a little)."""


def embed_text(event: StoredEvent, tool_results: bool) -> str | None:
    """The text of ``event`` that gets a vector, or None (nothing to embed; event_types.py)."""
    return event_types.embed_text(event.type, event.data(), tool_results)


def query_text(query: str) -> str:
    """The words of a search query without its operators (phrases, prefixes, exclusions)."""
    try:
        parsed = parse_query(query)
    except Exception:
        return query
    words = [t for c in parsed.positive for t in c.tokens]
    return " ".join(words) if words else query


@dataclass(frozen=True, slots=True)
class EmbedStats:
    """What a backfill did: vectors added, vectors removed, vectors kept afterwards."""

    embedded: int = 0
    cleaned: int = 0
    vectors: int = 0
    model: str = ""


EmbedProgress = Callable[[int, int], None]


class SemanticIndex:
    """The service's view of semantic search over one store."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._embedder: Embedder | None = None
        self._pending: set[str] = set()
        self._wake: anyio.Event | None = None
        self._cursors: OrderedDict[str, int] = OrderedDict()
        self._external = False
        self._hwm = ""

    # ------------------------------------------------------------ availability

    @property
    def types(self) -> tuple[str, ...]:
        tools = self.settings.semantic_tool_results
        return tuple(t for t in event_types.EMBEDDED_TYPES if tools or t != "tool_result")

    @property
    def enabled(self) -> bool:
        """The extra is installed and a model is configured (so hybrid is the default mode)."""
        return bool(self.settings.semantic_model) and extra_missing() is None

    def default_mode(self) -> str:
        return "hybrid" if self.enabled else "text"

    def embedder(self) -> Embedder:
        """The loaded model. Raises SemanticUnavailableError (naming the extra or the model)."""
        if self._embedder is None:
            self._embedder = load_embedder(self.settings.semantic_model)
        return self._embedder

    @property
    def model_id(self) -> str:
        return self.embedder().model_id

    def status(self) -> dict[str, Any]:
        """For doctor and capability listings: what semantic search would use here."""
        why = extra_missing()
        return {
            "extra": why is None,
            "extra_missing": why,
            "model": self.settings.semantic_model,
            "default_mode": self.default_mode(),
            "vector_index": self.store.vector_index,
            "tool_results": self.settings.semantic_tool_results,
        }

    async def encode_query(self, query: str) -> bytes:
        embedder = await anyio.to_thread.run_sync(self.embedder)
        vectors = await anyio.to_thread.run_sync(embedder.encode_bytes, [query_text(query)])
        return vectors[0]

    # ---------------------------------------------------------------- indexing

    async def _embed(self, embedder: Embedder, events: Sequence[StoredEvent]) -> int:
        texts = [embed_text(ev, self.settings.semantic_tool_results) for ev in events]
        wanted = [t for t in texts if t is not None]
        vectors = iter(await anyio.to_thread.run_sync(embedder.encode_bytes, wanted) if wanted else [])
        rows = [
            VectorRow(ev.thread_id, ev.seq, b"" if text is None else next(vectors))
            for ev, text in zip(events, texts)
        ]
        return await self.store.put_vectors(embedder.model_id, rows)

    async def embed_pending(
        self,
        thread_ids: Iterable[str] | None = None,
        *,
        progress: EmbedProgress | None = None,
        total: int = 0,
    ) -> int:
        """Embed every event (of ``thread_ids`` when given) that has no vector; returns how
        many vectors were added. Each batch (of up to ``semantic_batch`` events, across
        threads) is committed before the next is read."""
        embedder = await anyio.to_thread.run_sync(self.embedder)
        batch = self.settings.semantic_batch
        model = embedder.model_id
        added = done = 0
        buffer: list[StoredEvent] = []

        async def flush() -> None:
            nonlocal added, done, buffer
            if not buffer:
                return
            added += await self._embed(embedder, buffer)
            done += len(buffer)
            for ev in buffer:  # only once committed: a failed batch is looked up again
                if thread_ids is not None:
                    self._remember(ev.thread_id, ev.seq)
            buffer = []
            if progress is not None:
                progress(done, max(total, done))

        for tid in [None] if thread_ids is None else list(thread_ids):
            after = None if tid is None else (tid, self._cursors.get(tid, 0))
            while True:
                events = await self.store.missing_vectors(
                    model, self.types, thread_id=tid, after=after, limit=batch
                )
                if events:
                    after = (events[-1].thread_id, events[-1].seq)
                buffer += events
                if len(buffer) >= batch:
                    await flush()
                if len(events) < batch:
                    break
        await flush()
        return added

    def _remember(self, thread_id: str, seq: int) -> None:
        self._cursors[thread_id] = seq
        self._cursors.move_to_end(thread_id)
        while len(self._cursors) > MAX_CURSORS:
            self._cursors.popitem(last=False)

    async def backfill(self, *, progress: EmbedProgress | None = None) -> EmbedStats:
        """Remove orphaned vectors (event gone, type no longer embedded, another model), then
        embed what is missing. Idempotent; resumable after a kill (batches are committed)."""
        embedder = await anyio.to_thread.run_sync(self.embedder)
        cleaned = await self.store.clean_vectors(embedder.model_id, self.types)
        total = await self.store.count_missing_vectors(embedder.model_id, self.types)
        if progress is not None:
            progress(0, total)
        embedded = await self.embed_pending(progress=progress, total=total)
        vectors = await self.store.count_vectors(embedder.model_id)
        return EmbedStats(embedded=embedded, cleaned=cleaned, vectors=vectors, model=embedder.model_id)

    # ----------------------------------------------------------------- indexer

    def _on_commit(self, thread_ids: frozenset[str]) -> None:
        self._pending |= thread_ids
        if self._wake is not None:
            self._wake.set()

    def _on_external(self) -> None:
        self._external = True
        if self._wake is not None:
            self._wake.set()

    async def _changed_elsewhere(self) -> set[str] | None:
        """Threads another process changed since the last look (None: too many, look at all)."""
        rows = await self.store.changed_since(self._hwm, limit=CHANGED_LIMIT)
        if rows:
            newest = iso(parse_iso(rows[-1].updated_at) - timedelta(seconds=CLOCK_MARGIN))
            self._hwm = max(self._hwm, newest)
        return None if len(rows) >= CHANGED_LIMIT else {t.thread_id for t in rows}

    async def run_indexer(self, *, delay: float = INDEX_DELAY) -> None:
        """Embed new events after each commit, forever (until cancelled).

        Raises:
            SemanticUnavailableError: the extra or the model is missing (at start).
        """
        await anyio.to_thread.run_sync(self.embedder)
        self._wake = anyio.Event()
        self._hwm = iso(utc_now() - timedelta(seconds=CLOCK_MARGIN))
        self.store.add_commit_listener(self._on_commit)
        stop_watch = self.store.watch_external(self._on_external)  # commits of other processes
        try:
            try:
                await self.embed_pending()
            except Exception:
                log.exception("semantic indexer: catching up failed; new events are still indexed")
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                await anyio.sleep(delay)
                pending, self._pending = self._pending, set()
                try:
                    if self._external:
                        self._external = False
                        elsewhere = await self._changed_elsewhere()
                        if elsewhere is None:
                            await self.embed_pending()
                        else:
                            pending |= elsewhere
                    await self.embed_pending(sorted(pending))
                except SemanticUnavailableError:
                    raise
                except Exception:
                    log.exception(
                        "semantic indexer: a batch failed; `threadloom reindex --embeddings` repairs"
                    )
        finally:
            stop_watch()
            self.store.remove_commit_listener(self._on_commit)
            self._wake = None


async def health(index: SemanticIndex) -> tuple[str, str, str | None]:
    """``(status, detail, fix)`` of semantic search for ``threadloom doctor``: ok, warn or problem."""
    status = index.status()
    if not index.settings.semantic_model:
        return "ok", "semantic search is off (text search only; docs/semantic.md sets it up)", None
    if not status["extra"]:
        return (
            "warn",
            f"semantic_model is set but {status['extra_missing']}: searches are text only",
            "pip install 'threadloom[semantic]'",
        )
    try:
        embedder = await anyio.to_thread.run_sync(index.embedder)
    except SemanticUnavailableError as exc:
        return "problem", exc.message, "get the model as the message says, or unset semantic_model"
    vectors = await index.store.count_vectors(embedder.model_id)
    missing = await index.store.count_missing_vectors(embedder.model_id, index.types)
    detail = (
        f"model {embedder.spec} ({embedder.dim} dimensions), vector index {status['vector_index']}, "
        f"{vectors} vectors, default mode {status['default_mode']}"
    )
    if missing:
        return (
            "warn",
            f"{detail}; {missing} message(s) have no vector yet",
            "run `threadloom reindex --embeddings`",
        )
    return "ok", detail, None
