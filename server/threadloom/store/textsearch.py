"""What the search index holds, and a pure-Python search engine over it.

:func:`document_fields` says which text of an event is searchable: the ``body``
(message text of any role, ``assistant_text``) and the ``tools`` field (a
``tool_use``'s name and input, a ``tool_result``'s output). The SQLite backend
computes the same fields in SQL (the ``search_docs`` view, store/fts.py); a test
keeps the two in step.

:class:`PythonIndex` is the reference engine used by stores without a full-text
engine of their own (the memory store): the same clause matching as the query
language and FTS5's BM25 formula (k1=1.2, b=0.75, IDF clamped to 1e-6), so that
rankings agree with SQLite on small corpora.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from ..event_types import INDEXED_TYPES, search_fields
from ..models import StoredEvent
from ..textquery import Clause, Mode, TextQuery, clause_positions, tokenize

__all__ = [
    "Finder",
    "scan_documents",
    "INDEXED_TYPES",
    "BODY_WEIGHT",
    "TOOLS_WEIGHT",
    "document_fields",
    "event_document",
    "Document",
    "PythonIndex",
]

BODY_WEIGHT = 1.0
TOOLS_WEIGHT = 0.5
"""BM25 column weights: a word in a message counts twice as much as one in tool input/output."""

K1 = 1.2
B = 0.75
SCOPE_TOKENS = 2
"""Each indexed row also holds its thread id and agent as one token each (they count in its length)."""


document_fields = search_fields
"""``(body, tools)`` text of an event, or None if its type is not indexed (event_types.py)."""


def event_document(event: StoredEvent) -> tuple[str | None, str | None] | None:
    """:func:`document_fields` of a stored event."""
    if event.type not in INDEXED_TYPES:
        return None
    return document_fields(event.type, event.data())


Finder = Callable[[Sequence[str]], Iterable[int]]
"""Given a batch of texts, yields the indexes of those that match, in increasing order."""


def scan_documents(
    docs: Iterable[tuple[int, object, object]], find: Finder, include_tools: bool
) -> Iterator[int]:
    """The seqs of ``(seq, body, tools)`` documents whose body (or tools, with
    ``include_tools``) ``find`` accepts, in order."""
    texts: list[str] = []
    owners: list[int] = []
    for seq, body, tools in docs:
        texts.append(body if isinstance(body, str) else "" if body is None else str(body))
        owners.append(seq)
        if include_tools:
            texts.append(tools if isinstance(tools, str) else "" if tools is None else str(tools))
            owners.append(seq)
    last = None
    for i in find(texts):
        if owners[i] != last:
            last = owners[i]
            yield last


@dataclass(slots=True)
class Document:
    """One indexed event: its place and its folded tokens per field."""

    thread_id: str
    seq: int
    body: list[str]
    tools: list[str]

    @property
    def length(self) -> int:
        return len(self.body) + len(self.tools) + SCOPE_TOKENS


def _count(tokens: Sequence[str], clause: Clause) -> int:
    return sum(1 for _ in clause_positions(tokens, clause))


@dataclass(slots=True)
class PythonIndex:
    """An in-memory corpus of documents with BM25 ranking (the reference engine)."""

    docs: list[Document] = field(default_factory=list)

    @classmethod
    def from_events(cls, events: Iterable[StoredEvent]) -> PythonIndex:
        index = cls()
        for ev in events:
            fields = event_document(ev)
            if fields is not None:
                body, tools = fields
                index.docs.append(Document(ev.thread_id, ev.seq, tokenize(body or ""), tokenize(tools or "")))
        return index

    def _freq(self, doc: Document, clause: Clause, include_tools: bool) -> float:
        f = BODY_WEIGHT * _count(doc.body, clause)
        if include_tools:
            f += TOOLS_WEIGHT * _count(doc.tools, clause)
        return f

    def _holds(self, doc: Document, clause: Clause, include_tools: bool) -> bool:
        if next(clause_positions(doc.body, clause), None) is not None:
            return True
        return include_tools and next(clause_positions(doc.tools, clause), None) is not None

    def search(
        self,
        query: TextQuery,
        mode: Mode,
        *,
        include_tools: bool,
        keep: Callable[[Document], bool] | None = None,
    ) -> list[tuple[float, Document]]:
        """Matching documents that ``keep`` accepts, best BM25 score first."""
        n = len(self.docs)
        if n == 0:
            return []
        avgdl = sum(d.length for d in self.docs) / n
        idf = []
        for clause in query.positive:
            df = sum(1 for d in self.docs if self._holds(d, clause, include_tools))
            value = math.log((n - df + 0.5) / (df + 0.5))
            idf.append(value if value > 0 else 1e-6)
        need = all if mode == "all" else any
        out: list[tuple[float, Document]] = []
        for doc in self.docs:
            if keep is not None and not keep(doc):
                continue
            if not need(self._holds(doc, c, include_tools) for c in query.positive):
                continue
            if any(self._holds(doc, c, include_tools) for c in query.negative):
                continue
            score = 0.0
            norm = K1 * (1 - B + B * doc.length / avgdl)
            for clause, w in zip(query.positive, idf):
                f = self._freq(doc, clause, include_tools)
                score += w * (f * (K1 + 1)) / (f + norm)
            out.append((score, doc))
        out.sort(key=lambda item: (-item[0], item[1].thread_id, item[1].seq))
        return out
