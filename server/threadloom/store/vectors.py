"""Vectors of events for semantic search: what the stores keep and how they are searched.

Every backend keeps one row per (event, model) in an ordinary table: the event's place,
the model id and the vector as unit-length float32 little-endian bytes (``b""`` marks an
event with nothing to embed, so it is not looked at again). The service embeds; the
stores only keep and scan.

Search is an exact scan (cosine = dot product of unit vectors) over an in-process matrix
that :class:`VectorCache` keeps in step with the table: rows are appended with growing
ids and read incrementally; a delete bumps the table's *generation* (a counter in
``meta``), which makes every process reload. 100,000 vectors of 256 dimensions take
100 MB and ~5 ms to scan with numpy (benchmarks/search.py). numpy is imported only when
vectors are searched, so a store without the semantic extra still deletes vectors.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .base import SearchHit

__all__ = ["VECTOR_INDEX", "GENERATION_KEY", "VectorCache", "Matrix", "unit_vector"]

VECTOR_INDEX = "exact"
"""How the SQLite and PostgreSQL stores search vectors here: an exact scan (no ANN index)."""
GENERATION_KEY = "vectors_generation"
"""The ``meta`` row counting deletes from the vectors table (a cache built before is stale)."""
TOP_FACTOR = 8
"""best_per_thread: candidates looked at per wanted thread before a full sort is needed."""

VectorRowTuple = tuple[int, str, int, bytes]
"""(row id, thread_id, seq, vector bytes) as a backend reads them."""


def unit_vector(data: bytes) -> Any:
    import numpy as np

    return np.frombuffer(data, dtype="<f4")


@dataclass
class Matrix:
    """The vectors of one model, as loaded: growable numpy buffers and where each row is."""

    generation: int = -1
    max_id: int = 0
    count: int = 0
    dim: int = 0
    mat: Any = None
    tids: Any = None
    seqs: Any = None
    names: list[str] | None = None
    index: dict[str, int] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def extend(self, rows: Iterable[VectorRowTuple]) -> None:
        import numpy as np

        batch = [r for r in rows]
        if not batch:
            return
        if self.names is None or self.index is None:
            self.names, self.index = [], {}
        if self.dim == 0:
            self.dim = len(batch[0][3]) // 4
        good = [r for r in batch if len(r[3]) == 4 * self.dim]  # other dimensions: another model
        self.max_id = max(self.max_id, max(r[0] for r in batch))
        need = self.count + len(good)
        if self.mat is None or need > len(self.mat):
            cap = max(1024, need, 2 * (0 if self.mat is None else len(self.mat)))
            mat = np.zeros((cap, self.dim), dtype=np.float32)
            tids = np.zeros(cap, dtype=np.int32)
            seqs = np.zeros(cap, dtype=np.int64)
            if self.mat is not None:
                mat[: self.count] = self.mat[: self.count]
                tids[: self.count] = self.tids[: self.count]
                seqs[: self.count] = self.seqs[: self.count]
            self.mat, self.tids, self.seqs = mat, tids, seqs
        if good:
            block = np.frombuffer(b"".join(r[3] for r in good), dtype="<f4").reshape(len(good), self.dim)
            self.mat[self.count : need] = block
            for i, (_, tid, seq, _) in enumerate(good, start=self.count):
                t = self.index.get(tid)
                if t is None:
                    t = self.index[tid] = len(self.names)
                    self.names.append(tid)
                self.tids[i] = t
                self.seqs[i] = seq
        self.count = need

    def search(
        self,
        query: bytes,
        *,
        allowed: set[str] | None,
        limit: int,
        best_per_thread: bool,
    ) -> list[SearchHit]:
        """The rows nearest ``query`` (cosine, best first), within ``allowed`` threads when given."""
        import numpy as np

        n = self.count
        q = unit_vector(query)
        if n == 0 or len(q) != self.dim or self.names is None or self.index is None:
            return []
        scores = self.mat[:n] @ q
        if allowed is not None:
            keep = [self.index[t] for t in allowed if t in self.index]
            if not keep:
                return []
            scores = np.where(np.isin(self.tids[:n], np.asarray(keep, dtype=np.int32)), scores, -np.inf)
        want = limit * TOP_FACTOR if best_per_thread else limit
        while True:
            k = min(n, want)
            top = np.argpartition(scores, n - k)[n - k :] if k < n else np.arange(n)
            top = top[np.argsort(-scores[top], kind="stable")]
            hits: list[SearchHit] = []
            seen: set[int] = set()
            for i in top:
                s = float(scores[i])
                if s == -np.inf:
                    break
                t = int(self.tids[i])
                if best_per_thread:
                    if t in seen:
                        continue
                    seen.add(t)
                hits.append(SearchHit(self.names[t], int(self.seqs[i]), s))
                if len(hits) >= limit:
                    return hits
            if k >= n:
                return hits
            want *= 4


class VectorCache:
    """One :class:`Matrix` per model, shared by a store's reader threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, Matrix] = {}

    def get(self, model: str) -> Matrix:
        with self._lock:
            m = self._models.get(model)
            if m is None:
                m = self._models[model] = Matrix()
            return m

    def replace(self, model: str, matrix: Matrix) -> None:
        with self._lock:
            self._models[model] = matrix

    @property
    def lock(self) -> threading.Lock:
        return self._lock


def scope_filter(thread_ids: Sequence[str] | None, agent_threads: set[str] | None) -> set[str] | None:
    """The threads a vector search may return: the given ids, those of the agent, or both."""
    if thread_ids is None:
        return agent_threads
    ids = set(thread_ids)
    return ids if agent_threads is None else ids & agent_threads
