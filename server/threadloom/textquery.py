"""The text-search query language: parsing user input, tokens, FTS5 rendering, matching.

User input is never handed to SQLite as is. It is parsed here into clauses (a word,
a ``"quoted phrase"``, a ``prefix*``, each optionally negated with a leading ``-``)
made of tokens folded exactly like the index's ``unicode61 remove_diacritics 2``
tokenizer folds them; the FTS5 expression is then rendered from those tokens, each
inside double quotes. FTS5 operators typed by a user (``AND``, ``OR``, ``NOT``,
``NEAR``, parentheses, ``:``, ``^``, ``+``) are therefore plain words or separators,
and nothing a user types can produce an FTS5 syntax error.

The same tokens drive the Python matcher (the memory store's engine and the snippet
highlighter), so every backend agrees on what a clause matches.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from .errors import InvalidInputError
from .numbers import quote

__all__ = [
    "Clause",
    "TextQuery",
    "Mode",
    "MAX_QUERY_CHARS",
    "MAX_CLAUSES",
    "MIN_PREFIX_CHARS",
    "fold",
    "tokenize",
    "tokens_with_spans",
    "parse_query",
    "render_fts5",
    "clause_positions",
    "clause_holds",
    "STOPWORDS",
]

MAX_QUERY_CHARS = 1000
MAX_CLAUSES = 32
MIN_PREFIX_CHARS = 3
"""A shorter prefix expands to too many index terms to be answered quickly."""

STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself of off on once only or other our ours ourselves out
    over own same she should so some such than that the their theirs them themselves then there
    these they this those through to too under until up very was we were what when where which
    while who whom why will with would you your yours yourself""".split()
)
"""English function words: left out of a query that has other words (a natural-language
question searches by its content words). 'no' and 'not' stay: they matter in error text."""

Mode = Literal["all", "any"]
"""``all``: a match holds every positive clause; ``any``: at least one."""

# unicode61: a token is a run of letters and numbers; everything else separates.
_TOKEN_RE = re.compile(r"[^\W_]+")
_ASCII_TOKEN_RE = re.compile(r"[a-z0-9]+")
"""The same tokens on lower-cased ASCII text (where letters and digits are [a-z0-9])."""
_QUERY_ITEM_RE = re.compile(r'(-?)"([^"]*)("?)|(\S+)')


def fold(token: str) -> str:
    """Fold a token as the index does: lower case, diacritics removed."""
    if token.isascii():
        return token.lower()
    decomposed = unicodedata.normalize("NFD", token)
    return "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn").lower()


def tokenize(text: str) -> list[str]:
    """The folded tokens of ``text``, in order."""
    if text.isascii():  # the common case: folding is lower-casing, done once for the whole text
        return _ASCII_TOKEN_RE.findall(text.lower())
    return [fold(m.group()) for m in _TOKEN_RE.finditer(text)]


def tokens_with_spans(text: str) -> list[tuple[str, int, int]]:
    """``(folded token, start, end)`` for each token of ``text`` (character offsets)."""
    return [(fold(m.group()), m.start(), m.end()) for m in _TOKEN_RE.finditer(text)]


@dataclass(frozen=True, slots=True)
class Clause:
    """A sequence of tokens that must appear consecutively; ``prefix``: the last one is a prefix."""

    tokens: tuple[str, ...]
    prefix: bool = False

    def render(self) -> str:
        """The clause as an FTS5 string (tokens contain only letters and digits: no escaping needed)."""
        return '"' + " ".join(self.tokens) + '"' + (" *" if self.prefix else "")

    def __str__(self) -> str:
        text = " ".join(self.tokens) + ("*" if self.prefix else "")
        return f'"{text}"' if len(self.tokens) > 1 else text


@dataclass(frozen=True, slots=True)
class TextQuery:
    """A parsed query: clauses a match should hold and clauses it must not hold."""

    text: str
    positive: tuple[Clause, ...]
    negative: tuple[Clause, ...] = ()

    def with_positive(self, clauses: Sequence[Clause]) -> TextQuery:
        return TextQuery(self.text, tuple(clauses), self.negative)

    def content_words(self) -> TextQuery:
        """The query without single-word stopword clauses, unless nothing else would remain."""
        kept = [c for c in self.positive if c.prefix or len(c.tokens) > 1 or c.tokens[0] not in STOPWORDS]
        return self.with_positive(kept) if kept and len(kept) < len(self.positive) else self


def _clause(raw: str, *, phrase: bool, where: str) -> Clause | None:
    prefix = False
    body = raw
    if not phrase and raw.endswith("*"):
        body = raw.rstrip("*")
        prefix = True
    tokens = tuple(tokenize(body))
    if not tokens:
        return None
    if prefix:
        # a prefix applies only when the '*' directly follows a token character
        if not _TOKEN_RE.search(body[-1:]):
            prefix = False
        elif len(tokens[-1]) < MIN_PREFIX_CHARS:
            raise InvalidInputError(
                f"query item {quote(where)}: a prefix search needs at least {MIN_PREFIX_CHARS} letters or "
                f"digits before '*' (got {quote(tokens[-1])}); write a longer prefix or the whole word",
                rule="query_prefix_too_short",
            )
    return Clause(tokens, prefix)


def parse_query(text: object) -> TextQuery:
    """Parse user input into a :class:`TextQuery`.

    Syntax: words (``timeout error``), ``"exact phrases"``, prefixes (``connect*``,
    at least 3 characters), and a leading ``-`` to exclude a word or phrase. A word
    made of several tokens (``file.py``, ``foo-bar``, ``ECONNRESET:42``) is searched as
    a phrase. Anything else (``AND``, ``OR``, ``NEAR``, parentheses, ``:``) is a plain
    word or a separator. An unterminated quote ends at the end of the query.

    Raises:
        InvalidInputError: the query is empty, too long, has no words, has only
            exclusions, has too many clauses, or has a prefix that is too short.
    """
    if not isinstance(text, str):
        raise InvalidInputError(f"query must be a string; got {type(text).__name__}", rule="query_type")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidInputError(
            f"query is {len(text)} characters; the limit is {MAX_QUERY_CHARS}", rule="query_length"
        )
    positive: list[Clause] = []
    negative: list[Clause] = []
    for m in _QUERY_ITEM_RE.finditer(text):
        if m.group(4) is not None:
            raw = m.group(4)
            negated = raw.startswith("-") and len(raw) > 1
            if negated:
                raw = raw[1:]
            clause = _clause(raw, phrase=False, where=m.group(4))
        else:
            negated = m.group(1) == "-"
            clause = _clause(m.group(2), phrase=True, where=m.group(0))
        if clause is None:
            continue
        target = negative if negated else positive
        if clause not in target:
            target.append(clause)
    if not positive:
        if negative:
            raise InvalidInputError(
                f"query {quote(text)} only excludes words (leading '-'); add at least one word to search for",
                rule="query_only_negative",
            )
        raise InvalidInputError(
            f"query {quote(text)} has no words to search for (letters or digits); "
            "punctuation and FTS operators are not searched",
            rule="query_empty",
        )
    if len(positive) + len(negative) > MAX_CLAUSES:
        raise InvalidInputError(
            f"query has {len(positive) + len(negative)} words and phrases; the limit is {MAX_CLAUSES}",
            rule="query_too_many_terms",
        )
    return TextQuery(text, tuple(positive), tuple(negative))


def render_fts5(query: TextQuery, mode: Mode, *, columns: Sequence[str], scope: Sequence[str] = ()) -> str:
    """The FTS5 MATCH expression for ``query`` restricted to ``columns``.

    ``scope`` expressions (already valid FTS5, built from trusted tokens) are ANDed in front.
    """
    joiner = " AND " if mode == "all" else " OR "
    expr = "(" + joiner.join(c.render() for c in query.positive) + ")"
    if query.negative:
        expr = f"({expr} NOT (" + " OR ".join(c.render() for c in query.negative) + "))"
    colset = "{" + " ".join(columns) + "}"
    return " AND ".join([*scope, f"{colset} : {expr}"])


def clause_positions(tokens: Sequence[str], clause: Clause) -> Iterator[int]:
    """Start indexes in ``tokens`` where ``clause`` matches."""
    want = clause.tokens
    n = len(want)
    last = n - 1
    for i in range(len(tokens) - n + 1):
        for j in range(n):
            tok = tokens[i + j]
            if j == last and clause.prefix:
                if not tok.startswith(want[j]):
                    break
            elif tok != want[j]:
                break
        else:
            yield i


def _ascii_pattern(clause: Clause) -> re.Pattern[str]:
    # on ASCII text a token is a run of [A-Za-z0-9]; folded, a run of [a-z0-9]
    body = r"[\W_]+".join(re.escape(t) for t in clause.tokens)
    return re.compile(r"(?<![^\W_])" + body + ("" if clause.prefix else r"(?![^\W_])"))


_PATTERNS: dict[Clause, re.Pattern[str]] = {}


def clause_holds(text: str, clause: Clause) -> bool:
    """Whether ``clause`` matches ``text`` (same answer as tokenizing; faster on ASCII)."""
    if text.isascii():
        pattern = _PATTERNS.get(clause)
        if pattern is None:
            if len(_PATTERNS) > 4096:
                _PATTERNS.clear()
            pattern = _PATTERNS[clause] = _ascii_pattern(clause)
        lower = text.lower()
        if not all(t in lower for t in clause.tokens):  # cheap rejection of most texts
            return False
        return pattern.search(lower) is not None
    return next(clause_positions(tokenize(text), clause), None) is not None
