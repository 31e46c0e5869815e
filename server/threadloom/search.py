"""Search: ``chain_search`` (one continuation chain) and ``search_threads`` (across threads).

Text search goes to the store's full-text index (BM25). A query is first run
requiring every word (``all``); when that finds fewer hits than asked for, it is run
again accepting any word and the new hits follow, so an event holding every word
always ranks above one holding some of them. Regex search scans the chain's events
in order with RE2, whose matching time is linear in the text: no pattern can stall
the server. Each hit carries a highlighted snippet and the ``context`` conversational
events (messages, assistant text, tool calls and results) before and after it in
its thread.

Semantic search (the ``semantic`` extra, docs/semantic.md) ranks events by the cosine of
their vector to the query's; hybrid merges the BM25 and the vector rankings by reciprocal
rank fusion (each list adds ``1 / (RRF_K + rank)``; search_threads fuses threads, each
thread ranked by its best hit in each list). Every hit says which searches found it.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import anyio
import re2
from pydantic import BaseModel, Field

from .errors import InvalidInputError, NotFoundError
from .models import Status, StoredEvent, check_agent_id, check_thread_id
from .numbers import quote
from .store.base import SearchHit, Store
from .store.textsearch import INDEXED_TYPES, document_fields
from .textquery import TextQuery, clause_positions, parse_query, tokens_with_spans

if TYPE_CHECKING:
    from .semantic import SemanticIndex

__all__ = [
    "ContextMessage",
    "SearchResult",
    "ThreadSearchResult",
    "ChainSearchResults",
    "ThreadSearchResults",
    "chain_search",
    "search_threads",
    "compile_pattern",
    "RegexFinder",
    "text_snippet",
    "rrf",
]

SearchType = Literal["text", "regex", "semantic", "hybrid"]
SearchMode = Literal["hybrid", "text", "semantic"]
MatchKind = Literal["text", "semantic", "regex"]
RRF_K = 60
"""Reciprocal rank fusion constant: a hit at rank r of one list adds 1 / (RRF_K + r)."""
FUSE_DEPTH = 50
"""Hybrid search fuses the best FUSE_DEPTH hits (at least ``limit``) of each ranking."""

MAX_CHAIN_LIMIT = 100
MAX_THREADS_LIMIT = 50
MAX_CONTEXT = 10
MAX_PATTERN_CHARS = 1000
RE2_MAX_MEM = 64 << 20
"""Memory RE2 may use for one compiled pattern; a bigger program is refused as invalid."""
CONTEXT_TEXT_CHARS = 1000
"""Context messages are cut to this many characters (read_events has the whole event)."""
SNIPPET_TOKENS = 24
SNIPPET_MAX_CHARS = 400
REGEX_SNIPPET_SIDE = 80
MARK = "**"
"""Highlight marker around matched text in snippets (Markdown bold)."""
ELLIPSIS = "…"


# -------------------------------------------------------------------- results


class ContextMessage(BaseModel):
    """An event next to a hit: its seq, type, role and (possibly cut) text."""

    seq: int
    type: str
    role: str | None
    ts: str
    text: str


class SearchResult(BaseModel):
    """One matching event with a highlighted snippet and the events around it."""

    thread_id: str
    seq: int
    type: str = Field(description="message, assistant_text, tool_use or tool_result")
    role: str | None = Field(
        description="user/assistant/system; assistant for tool_use, tool for tool_result"
    )
    ts: str
    snippet: str = Field(description=f"the matching text with matches between {MARK} markers")
    score: float | None = Field(
        description="relevance, higher is better (text: BM25, ts_rank on PostgreSQL; semantic: cosine; "
        "hybrid: reciprocal rank fusion); null for regex"
    )
    matched: list[MatchKind] = Field(
        default_factory=list,
        description="which searches found this hit: text, semantic (hybrid: one or both)",
    )
    before: list[ContextMessage] = Field(description="up to `context` events before the hit, oldest first")
    after: list[ContextMessage] = Field(description="up to `context` events after the hit, oldest first")


class ThreadSearchResult(SearchResult):
    """The best hit of one thread, with the thread's title, agent and status."""

    title: str | None
    agent_id: str
    status: Status


class ChainSearchResults(BaseModel):
    """Hits across every thread of a continuation chain."""

    thread_id: str = Field(description="the thread the search was asked for")
    chain_root_id: str
    threads: list[str] = Field(description="the chain's thread ids searched, oldest first")
    query: str
    search_type: SearchType
    results: list[SearchResult] = Field(
        description="text, semantic, hybrid: best first (text: events holding every word first); "
        "regex: in chain order"
    )


class ThreadSearchResults(BaseModel):
    """The best hit of each matching thread, best first."""

    query: str
    agent_id: str | None
    mode: SearchMode
    results: list[ThreadSearchResult]


# ------------------------------------------------------------------ validation


def _check_range(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (low <= value <= high):
        raise InvalidInputError(
            f"{name} must be an integer from {low} to {high}; got {quote(value)}", rule=f"{name}_range"
        )
    return value


def compile_pattern(pattern: object) -> Any:
    """Compile a regex for RE2 (linear-time matching, bounded memory).

    Raises:
        InvalidInputError: the pattern is empty, too long, or not valid RE2 syntax.
    """
    if not isinstance(pattern, str) or not pattern:
        raise InvalidInputError(f"query must be a non-empty regex; got {quote(pattern)}", rule="regex_empty")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise InvalidInputError(
            f"regex is {len(pattern)} characters; the limit is {MAX_PATTERN_CHARS}", rule="regex_length"
        )
    return _re2(pattern)


def _re2(pattern: str | bytes) -> Any:
    options = re2.Options()
    options.max_mem = RE2_MAX_MEM
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise InvalidInputError(
            f"regex {pattern!r:.200} is not valid RE2 syntax: {reason}. RE2 has no backreferences "
            r"or lookaround; escape literal characters such as ( [ . * with a backslash",
            rule="regex_invalid",
        ) from None


# A pattern that tests the start or end of the whole text, or turns multi-line mode off,
# would see a batch joined by newlines differently from each text alone.
_UNJOINABLE = re.compile(r"\\[Az]|\(\?[a-zA-Z]*-")


class RegexFinder:
    """Which texts of a batch match a pattern, at RE2's DFA speed.

    The batch is joined by newlines and searched with the pattern in multi-line mode
    (so ``^`` and ``$`` hold at each text's edges): a text without a match in the joined
    string has none on its own, so one pass skips every non-matching text. The texts a
    match touches are then checked alone with the pattern itself, and the search goes on
    from the next text, so each text costs at most one extra search.
    """

    def __init__(self, pattern: str) -> None:
        self.compiled = compile_pattern(pattern)
        self._alone = _re2(pattern.encode())
        self._joined = None if _UNJOINABLE.search(pattern) else _re2(("(?m)" + pattern).encode())

    def __call__(self, texts: Sequence[str]) -> Iterator[int]:
        encoded = [t.encode() for t in texts]
        if not encoded:
            return
        if self._joined is None:
            yield from (i for i, b in enumerate(encoded) if self._alone.search(b) is not None)
            return
        starts, pos = [], 0
        for b in encoded:
            starts.append(pos)
            pos += len(b) + 1
        joined = b"\n".join(encoded)
        pos = 0
        while True:
            m = self._joined.search(joined, pos)
            if m is None:
                return
            first = bisect_right(starts, m.start()) - 1
            last = bisect_right(starts, max(m.start(), m.end() - 1)) - 1
            for i in range(first, last + 1):
                if self._alone.search(encoded[i]) is not None:
                    yield i
            if last + 1 >= len(starts):
                return
            pos = starts[last + 1]


# -------------------------------------------------------------------- snippets


def _squash(text: str) -> str:
    return " ".join(text.split())


def text_snippet(text: str, query: TextQuery, *, width: int = SNIPPET_TOKENS) -> str | None:
    """A window of ``width`` tokens of ``text`` holding the most distinct query clauses,
    matched tokens between markers; None if no clause matches."""
    spans = tokens_with_spans(text)
    tokens = [t for t, _, _ in spans]
    owner: dict[int, set[int]] = {}
    for ci, clause in enumerate(query.positive):
        for i in clause_positions(tokens, clause):
            for j in range(i, i + len(clause.tokens)):
                owner.setdefault(j, set()).add(ci)
    if not owner:
        return None
    marked = sorted(owner)
    best, best_key = 0, (-1, -1)
    for m in marked:
        start = max(0, m - width // 4)
        inside = [j for j in marked if start <= j < start + width]
        key = (len(set().union(*(owner[j] for j in inside))), len(inside))
        if key > best_key:
            best, best_key = start, key
    end = min(len(spans), best + width)
    lo = 0 if best == 0 else spans[best][1]
    hi = len(text) if end == len(spans) else spans[end - 1][2]
    parts: list[str] = [ELLIPSIS] if lo > 0 else []
    pos, j = lo, best
    while j < end:
        if j not in owner:
            j += 1
            continue
        k = j
        while k + 1 < end and k + 1 in owner:
            k += 1  # consecutive matched tokens share one highlight
        parts += [text[pos : spans[j][1]], MARK, text[spans[j][1] : spans[k][2]], MARK]
        pos, j = spans[k][2], k + 1
    parts.append(text[pos:hi])
    if hi < len(text):
        parts.append(ELLIPSIS)
    snippet = _squash("".join(parts))
    if len(snippet) > SNIPPET_MAX_CHARS:
        snippet = snippet[: SNIPPET_MAX_CHARS - 1]
        if snippet.count(MARK) % 2:
            snippet += MARK
        snippet += ELLIPSIS
    return snippet


def regex_snippet(text: str, pattern: Any) -> str | None:
    """The first match of ``pattern`` in ``text`` with up to 80 characters either side."""
    m = pattern.search(text)
    if m is None:
        return None
    start, end = m.span()
    end = min(end, start + SNIPPET_MAX_CHARS // 2)
    lo = max(0, start - REGEX_SNIPPET_SIDE)
    hi = min(len(text), end + REGEX_SNIPPET_SIDE)
    hit = text[start:end]
    middle = f"{MARK}{hit}{MARK}" if hit else ""
    snippet = (
        (ELLIPSIS if lo > 0 else "")
        + text[lo:start]
        + middle
        + text[end:hi]
        + (ELLIPSIS if hi < len(text) else "")
    )
    return _squash(snippet)


# ------------------------------------------------------------------- helpers


def _role(event: StoredEvent, data: dict[str, Any]) -> str | None:
    if event.type == "message":
        return data.get("role")
    if event.type in ("assistant_text", "tool_use"):
        return "assistant"
    if event.type == "tool_result":
        return "tool"
    return None


def _fields(event: StoredEvent, data: dict[str, Any]) -> tuple[str | None, str | None]:
    return document_fields(event.type, data) or (None, None)


def _context_message(event: StoredEvent) -> ContextMessage:
    data = event.data()
    body, tools = _fields(event, data)
    text = body if body is not None else (tools or "")
    if len(text) > CONTEXT_TEXT_CHARS:
        text = text[: CONTEXT_TEXT_CHARS - 1] + ELLIPSIS
    return ContextMessage(seq=event.seq, type=event.type, role=_role(event, data), ts=event.ts, text=text)


Window = tuple[StoredEvent, list[StoredEvent], list[StoredEvent]]


async def _window(store: Store, thread_id: str, seq: int, context: int) -> Window | None:
    """The hit event and up to ``context`` conversational events each side of it."""
    span = 2 * context + 4
    while True:
        first = max(0, seq - 1 - span)
        try:
            events = await store.read_events(thread_id, after_seq=first, limit=2 * span + 1)
        except NotFoundError:
            return None  # deleted since the search
        hit = next((e for e in events if e.seq == seq), None)
        if hit is None:
            return None
        talk = [e for e in events if e.type in INDEXED_TYPES]
        before = [e for e in talk if e.seq < seq][-context:] if context else []
        after = [e for e in talk if e.seq > seq][:context]
        short_before = len(before) < context and first > 0
        short_after = len(after) < context and len(events) == 2 * span + 1
        if not (short_before or short_after) or span > 4096:
            return hit, before, after
        span *= 4


async def _present(
    store: Store,
    hits: Sequence[SearchHit],
    context: int,
    snippet: Callable[[str], str | None],
    include_tools: bool,
    kinds: Sequence[list[MatchKind]] | None = None,
) -> list[SearchResult]:
    windows: list[Window | None] = [None] * len(hits)

    async def load(i: int, h: SearchHit) -> None:
        windows[i] = await _window(store, h.thread_id, h.seq, context)

    async with anyio.create_task_group() as tg:  # the store's readers work in parallel
        for i, h in enumerate(hits):
            tg.start_soon(load, i, h)
    out: list[SearchResult] = []
    for i, (h, window) in enumerate(zip(hits, windows)):
        if window is None:
            continue
        event, before, after = window
        data = event.data()
        body, tools = _fields(event, data)
        text = None
        for field in (body, tools if include_tools else None):
            if field:
                text = snippet(field)
                if text is not None:
                    break
        if text is None:  # matched by the index's own tokenizer only: show the start
            text = _squash((body or tools or "")[:SNIPPET_MAX_CHARS])
        out.append(
            SearchResult(
                thread_id=h.thread_id,
                seq=h.seq,
                type=event.type,
                role=_role(event, data),
                ts=event.ts,
                snippet=text,
                score=h.score,
                matched=list(kinds[i]) if kinds is not None else [],
                before=[_context_message(e) for e in before],
                after=[_context_message(e) for e in after],
            )
        )
    return out


async def _ranked(
    store: Store,
    query: TextQuery,
    *,
    limit: int,
    thread_ids: Sequence[str] | None = None,
    agent_id: str | None = None,
    include_tools: bool = False,
    best_per_thread: bool = False,
) -> list[SearchHit]:
    """Hits holding every word first, then (if short of ``limit``) hits holding some.
    Stopwords are left out when the query has other words."""
    query = query.content_words()
    kwargs: dict[str, Any] = {
        "thread_ids": thread_ids,
        "agent_id": agent_id,
        "include_tools": include_tools,
        "best_per_thread": best_per_thread,
    }
    hits = await store.search_text(query, mode="all", limit=limit, **kwargs)
    if len(hits) >= limit or len(query.positive) < 2:
        return hits
    taken = {h.thread_id if best_per_thread else (h.thread_id, h.seq) for h in hits}
    for h in await store.search_text(query, mode="any", limit=limit + len(hits), **kwargs):
        key = h.thread_id if best_per_thread else (h.thread_id, h.seq)
        if key not in taken:
            taken.add(key)
            hits.append(h)
            if len(hits) >= limit:
                break
    return hits


# ---------------------------------------------------------------------- fusion


def rrf(
    rankings: Sequence[tuple[MatchKind, Sequence[SearchHit]]],
    *,
    by_thread: bool,
    limit: int,
    k: int = RRF_K,
) -> list[tuple[SearchHit, list[MatchKind]]]:
    """Reciprocal rank fusion of ``rankings`` (each best first): the best ``limit`` keys by
    the sum over lists of ``1 / (k + rank)``. A key is an event, or with ``by_thread`` a
    thread (ranked by its first hit in each list). Each result is the hit of its key from
    the list that ranked it highest (the first list on a tie), with the fused score and
    the kinds of the lists it appeared in. Ties go to the better single rank, then the key.
    """
    scores: dict[Any, float] = {}
    best: dict[Any, tuple[int, SearchHit]] = {}
    kinds: dict[Any, list[MatchKind]] = {}
    for kind, hits in rankings:
        seen: set[Any] = set()
        rank = 0
        for h in hits:
            key: Any = h.thread_id if by_thread else (h.thread_id, h.seq)
            if key in seen:
                continue
            seen.add(key)
            rank += 1
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
            kinds.setdefault(key, []).append(kind)
            if key not in best or rank < best[key][0]:
                best[key] = (rank, h)
    order = sorted(scores, key=lambda key: (-scores[key], best[key][0], str(key)))
    out = []
    for key in order[:limit]:
        h = best[key][1]
        out.append((SearchHit(h.thread_id, h.seq, round(scores[key], 6)), kinds[key]))
    return out


def _pick_mode(mode: str | None, semantic: SemanticIndex | None, *, name: str, allowed: Sequence[str]) -> str:
    if mode is None:
        return semantic.default_mode() if semantic is not None else "text"
    if mode not in allowed:
        raise InvalidInputError(
            f"{name} must be one of {', '.join(repr(m) for m in allowed)}; got {quote(mode)}", rule=name
        )
    return mode


async def _vector_hits(
    store: Store,
    semantic: SemanticIndex | None,
    query: str,
    *,
    limit: int,
    thread_ids: Sequence[str] | None = None,
    agent_id: str | None = None,
    best_per_thread: bool = False,
) -> list[SearchHit]:
    if semantic is None:
        from .embedding import load_embedder

        load_embedder(None)  # raises, naming the extra or the setting
        raise AssertionError("unreachable")
    vector = await semantic.encode_query(query)
    if not vector:  # no word of the query is known to the model
        return []
    return await store.search_vectors(
        semantic.model_id,
        vector,
        thread_ids=thread_ids,
        agent_id=agent_id,
        limit=limit,
        best_per_thread=best_per_thread,
    )


async def _mode_hits(
    store: Store,
    semantic: SemanticIndex | None,
    mode: str,
    query: str,
    parsed: TextQuery,
    *,
    limit: int,
    thread_ids: Sequence[str] | None = None,
    agent_id: str | None = None,
    include_tools: bool = False,
    best_per_thread: bool = False,
) -> tuple[list[SearchHit], list[list[MatchKind]]]:
    """The hits of a text, semantic or hybrid search, with the kinds that found each."""
    scope: dict[str, Any] = {
        "thread_ids": thread_ids,
        "agent_id": agent_id,
        "best_per_thread": best_per_thread,
    }
    if mode == "text":
        hits = await _ranked(store, parsed, limit=limit, include_tools=include_tools, **scope)
        return hits, [["text"] for _ in hits]
    if mode == "semantic":
        hits = await _vector_hits(store, semantic, query, limit=limit, **scope)
        return hits, [["semantic"] for _ in hits]
    depth = max(FUSE_DEPTH, limit)
    if semantic is None:
        return await _mode_hits(store, semantic, "semantic", query, parsed, limit=limit, **scope)  # refuses
    qvec = await semantic.encode_query(query)  # refuses here, before any search, when unavailable
    lists: dict[str, list[SearchHit]] = {"semantic": []}

    async def vectors() -> None:
        if qvec:
            lists["semantic"] = await store.search_vectors(semantic.model_id, qvec, limit=depth, **scope)

    async def words() -> None:
        lists["text"] = await _ranked(store, parsed, limit=depth, include_tools=include_tools, **scope)

    try:
        async with anyio.create_task_group() as tg:  # on two of the store's readers at once
            tg.start_soon(vectors)
            tg.start_soon(words)
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None
    text, vector = lists["text"], lists["semantic"]
    fused = rrf([("text", text), ("semantic", vector)], by_thread=best_per_thread, limit=limit)
    return [h for h, _ in fused], [k for _, k in fused]


# ---------------------------------------------------------------------- entry points


async def chain_search(
    store: Store,
    thread_id: str,
    query: str,
    *,
    search_type: str | None = None,
    limit: int = 20,
    context: int = 3,
    include_tools: bool = False,
    semantic: SemanticIndex | None = None,
) -> ChainSearchResults:
    """Search every thread of ``thread_id``'s continuation chain (see module docstring).

    ``search_type`` None picks the default: hybrid when semantic search is set up, else text.
    """
    check_thread_id(thread_id)
    search_type = _pick_mode(
        search_type, semantic, name="search_type", allowed=("text", "regex", "semantic", "hybrid")
    )
    _check_range("limit", limit, 1, MAX_CHAIN_LIMIT)
    _check_range("context", context, 0, MAX_CONTEXT)
    if search_type != "regex":
        parsed = parse_query(query).content_words()
        snippet: Callable[[str], str | None] = partial(text_snippet, query=parsed)
    else:
        finder = RegexFinder(query)
        snippet = partial(regex_snippet, pattern=finder.compiled)
    if search_type in ("semantic", "hybrid") and semantic is not None:
        await anyio.to_thread.run_sync(semantic.embedder)  # refuse before any work
    thread = await store.get_thread(thread_id)
    chain = [t.thread_id for t in await store.list_chain(thread.chain_root_id)]
    if thread_id not in chain:
        chain.append(thread_id)
    if search_type == "regex":
        hits = await store.scan_text(chain, finder, include_tools=include_tools, limit=limit, pattern=query)
        kinds: list[list[MatchKind]] = [["regex"] for _ in hits]
    else:
        hits, kinds = await _mode_hits(
            store,
            semantic,
            search_type,
            query,
            parsed,
            limit=limit,
            thread_ids=chain,
            include_tools=include_tools,
        )
    return ChainSearchResults(
        thread_id=thread_id,
        chain_root_id=thread.chain_root_id,
        threads=chain,
        query=query,
        search_type=search_type,  # type: ignore[arg-type]
        results=await _present(store, hits, context, snippet, include_tools, kinds),
    )


async def search_threads(
    store: Store,
    query: str,
    *,
    agent_id: str | None = None,
    limit: int = 5,
    context: int = 3,
    mode: str | None = None,
    semantic: SemanticIndex | None = None,
) -> ThreadSearchResults:
    """The best-matching threads (one hit each, best first), of one agent when given.

    ``mode``: text (BM25), semantic (vectors) or hybrid (both, fused); None picks hybrid
    when semantic search is set up, else text.
    """
    if agent_id is not None:
        check_agent_id(agent_id)
    mode = _pick_mode(mode, semantic, name="mode", allowed=("hybrid", "text", "semantic"))
    _check_range("limit", limit, 1, MAX_THREADS_LIMIT)
    _check_range("context", context, 0, MAX_CONTEXT)
    parsed = parse_query(query).content_words()
    hits, kinds = await _mode_hits(
        store, semantic, mode, query, parsed, limit=limit, agent_id=agent_id, best_per_thread=True
    )
    threads = await store.get_threads([h.thread_id for h in hits])
    results = await _present(store, hits, context, partial(text_snippet, query=parsed), False, kinds)
    return ThreadSearchResults(
        query=query,
        agent_id=agent_id,
        mode=mode,  # type: ignore[arg-type]
        results=[
            ThreadSearchResult(
                **r.model_dump(),
                title=threads[r.thread_id].title,
                agent_id=threads[r.thread_id].agent_id,
                status=threads[r.thread_id].status,
            )
            for r in results
            if r.thread_id in threads
        ],
    )
