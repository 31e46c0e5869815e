"""The search query language, FTS5 rendering, snippets and regex compilation (no store)."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from threadloom.errors import InvalidInputError
from threadloom.search import RegexFinder, compile_pattern, regex_snippet, text_snippet
from threadloom.textquery import Clause, fold, parse_query, render_fts5, tokenize


def test_words_phrases_prefixes_and_exclusions_parse_into_clauses() -> None:
    q = parse_query('Timeout "connection reset" connect* -flaky -"known issue" file.py')
    assert q.positive == (
        Clause(("timeout",)),
        Clause(("connection", "reset")),
        Clause(("connect",), prefix=True),
        Clause(("file", "py")),
    )
    assert q.negative == (Clause(("flaky",)), Clause(("known", "issue")))


def test_tokens_are_folded_like_the_index_tokenizer() -> None:
    assert tokenize("Résumé_final ÉCOLE naïve-42") == ["resume", "final", "ecole", "naive", "42"]
    assert fold("Straße") == "straße"


@given(st.text(alphabet=st.characters(max_codepoint=0x17F), max_size=120))
def test_the_ascii_shortcut_tokenizes_like_folding_each_token(text: str) -> None:
    import re

    slow = [fold(m.group()) for m in re.finditer(r"[^\W_]+", text)]
    assert tokenize(text) == slow
    assert tokenize(text.encode("ascii", "ignore").decode()) == [
        fold(m.group()) for m in re.finditer(r"[^\W_]+", text.encode("ascii", "ignore").decode())
    ]


def test_repeated_clauses_count_once() -> None:
    assert parse_query("error Error ERROR").positive == (Clause(("error",)),)


def test_a_star_after_punctuation_is_not_a_prefix() -> None:
    assert parse_query("foo.*").positive == (Clause(("foo",)),)


def test_the_rendered_expression_quotes_every_token() -> None:
    q = parse_query('a-b "c d" efg* -h')
    assert render_fts5(q, "all", columns=["body"]) == '{body} : (("a b" AND "c d" AND "efg" *) NOT ("h"))'
    assert render_fts5(q, "any", columns=["body", "tools"], scope=['tid : ("x")']) == (
        'tid : ("x") AND {body tools} : (("a b" OR "c d" OR "efg" *) NOT ("h"))'
    )


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_user_input_either_parses_into_valid_fts5_or_is_refused_cleanly(text: str) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE f USING fts5(body, tools, tokenize='unicode61 remove_diacritics 2')")
    conn.execute("INSERT INTO f VALUES ('some text', 'tool text')")
    try:
        q = parse_query(text)
    except InvalidInputError as exc:
        assert exc.rule.startswith("query_")
        return
    for mode in ("all", "any"):
        conn.execute(
            "SELECT rowid FROM f WHERE f MATCH ?", (render_fts5(q, mode, columns=["body"]),)
        ).fetchall()


def test_snippets_highlight_matches_inside_a_window() -> None:
    text = (
        " ".join(f"w{i}" for i in range(100))
        + " the Timeout Error here "
        + " ".join(f"v{i}" for i in range(50))
    )
    s = text_snippet(text, parse_query("timeout error"))
    assert s is not None
    assert "**Timeout Error**" in s
    assert s.startswith("…") and s.endswith("…")
    assert len(s.split()) <= 26
    assert text_snippet("nothing to see", parse_query("timeout")) is None


def test_snippets_prefer_the_window_with_most_distinct_words() -> None:
    text = "alpha " + "x " * 40 + "alpha beta gamma " + "y " * 40
    s = text_snippet(text, parse_query("alpha beta gamma"))
    assert s is not None and "**alpha beta gamma**" in s


def test_snippets_highlight_prefixes_and_phrases() -> None:
    s = text_snippet("Connecting to the db; connection reset by peer", parse_query('connect* "reset by"'))
    assert s == "**Connecting** to the db; **connection reset by** peer"


def test_regex_snippets_show_the_first_match_with_surroundings() -> None:
    pattern = compile_pattern(r"E\d{3}")
    text = "x" * 200 + " failed with E042 then E043 " + "y" * 200
    s = regex_snippet(text, pattern)
    assert s is not None and "**E042**" in s and "E043" in s
    assert s.startswith("…") and s.endswith("…")
    assert regex_snippet("ok", pattern) is None
    assert regex_snippet("abc", compile_pattern("x*")) == "abc"  # an empty match marks nothing


@pytest.mark.parametrize("pattern", ["(a+)+$", r"(?i)error\s+\d+", r"\bword\b", "[[:alpha:]]+", "é+"])
def test_valid_re2_patterns_compile(pattern: str) -> None:
    compile_pattern(pattern)


def test_oversized_regex_programs_are_refused() -> None:
    with pytest.raises(InvalidInputError) as err:
        compile_pattern("((((a{100}){100}){100}){100})")
    assert err.value.rule == "regex_invalid"
    with pytest.raises(InvalidInputError) as err:
        compile_pattern("a" * 1001)
    assert err.value.rule == "regex_length"


JOIN_PATTERNS = [
    "^abc",
    "abc$",
    r"\bfoo\b",
    "a[^x]*b",
    "x*",
    r"\A",
    r"foo\z",
    "(?-m)^b",
    "(?s)a.*b",
    r"\n",
    "^$",
    "b\nc",
    "(?i)FOO",
    "é",
    r"\s+",
    "^a$",
    ".",
]


@pytest.mark.parametrize("pattern", JOIN_PATTERNS)
def test_the_joined_regex_scan_finds_exactly_the_texts_that_match_alone(pattern: str) -> None:
    texts = ["abc", "xabc", "abc\nfoo", "foo bar", "a", "b", "", "a\nb", "zzz", "b\nc", "foo", "é!", "  "]
    finder = RegexFinder(pattern)
    assert list(finder(texts)) == [i for i, t in enumerate(texts) if finder.compiled.search(t)]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text(alphabet="ab\n é", max_size=8), max_size=12),
    st.sampled_from(JOIN_PATTERNS + ["a+b", "^b+$", "ab|ba"]),
)
def test_the_joined_regex_scan_agrees_with_searching_each_text(texts: list[str], pattern: str) -> None:
    finder = RegexFinder(pattern)
    assert list(finder(texts)) == [i for i, t in enumerate(texts) if finder.compiled.search(t)]


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet="ab c-_.Éé1\n", max_size=30),
    st.sampled_from(["a", "ab", "b c", "abc*", "a abc*", "c_1", "é", "1 a", "abc"]),
)
def test_the_fast_clause_check_agrees_with_tokenizing(text: str, query: str) -> None:
    from threadloom.textquery import clause_holds, clause_positions

    for clause in parse_query(query).positive:
        assert clause_holds(text, clause) == (
            next(clause_positions(tokenize(text), clause), None) is not None
        )
