"""Translate an RE2 pattern into a PostgreSQL regex that matches at least what RE2 matches.

Used to pre-filter a regex scan inside PostgreSQL (store/pgsearch.py): the database
returns candidate rows, RE2 confirms each one, so the translation may match MORE than
RE2 (never less). Only a safe subset is translated — literals, ``.``, classes,
``\\d \\w \\s`` (and negations), quantifiers, alternation, groups, ``^ $ \\A \\z \\b \\B``,
leading flags ``(?i)``, ``(?m)``, ``(?s)``, ``(?U)``; anything else raises
:class:`Untranslatable` and the caller scans in Python instead.

The translation assumes the regex runs on text under ``COLLATE "C"`` in a UTF-8 database:
PostgreSQL's classes, word boundaries and case folding are then ASCII-only, like RE2's
``\\w``, ``\\b`` and ``\\d``. Differences handled here:

- groups become non-capturing ``(?:...)`` (PostgreSQL then matches with its DFA alone:
  no backtracking), non-greedy quantifiers become greedy (same yes/no answer);
- ``\\b``/``\\B`` are ``\\y``/``\\Y`` (``\\b`` is a backspace in PostgreSQL), ``\\z`` is ``\\Z``;
- ``\\w \\d \\s`` are spelled out as RE2's ASCII sets (``\\s`` has no ``\\v`` in RE2);
- ``(?i)`` is PostgreSQL's ``~*``, which folds ASCII only under ``COLLATE "C"``; RE2 also
  folds ``k`` with KELVIN SIGN and ``s`` with LONG S, so those are added to positive sets,
  and a case-insensitive pattern naming non-ASCII characters is not translated;
- ``(?m)`` is PostgreSQL's ``(?w)`` (``^``/``$`` at line ends); ``.`` and ``[^x]`` already
  match a newline in PostgreSQL, a superset of RE2's default;
- PostgreSQL repeats at most 255 times (``{n,m}``: RE2 allows 1,000);
- stored text has NUL replaced by U+FFFD (PostgreSQL text cannot hold NUL): a set that
  could match NUL must also match U+FFFD, and patterns naming NUL or U+FFFD are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["PgRegex", "Untranslatable", "to_postgres", "translate", "MAX_REPEAT"]

MAX_REPEAT = 255
"""PostgreSQL's largest repetition count (RE2 allows 1,000)."""
KELVIN = 0x212A
LONG_S = 0x17F
NUL = 0
REPLACEMENT = 0xFFFD
"""What NUL is stored as (store/pgsearch.py)."""

Ranges = list[tuple[int, int]]

_DIGIT: Ranges = [(0x30, 0x39)]
_WORD: Ranges = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
_SPACE: Ranges = [(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)]
_PERL = {"d": _DIGIT, "w": _WORD, "s": _SPACE}
_POSIX: dict[str, Ranges] = {
    "alnum": [(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)],
    "alpha": [(0x41, 0x5A), (0x61, 0x7A)],
    "ascii": [(0x00, 0x7F)],
    "blank": [(0x09, 0x09), (0x20, 0x20)],
    "cntrl": [(0x00, 0x1F), (0x7F, 0x7F)],
    "digit": _DIGIT,
    "graph": [(0x21, 0x7E)],
    "lower": [(0x61, 0x7A)],
    "print": [(0x20, 0x7E)],
    "punct": [(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
    "space": [(0x09, 0x0D), (0x20, 0x20)],
    "upper": [(0x41, 0x5A)],
    "word": _WORD,
    "xdigit": [(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
}
_ENTRY = {"a": 0x07, "f": 0x0C, "t": 0x09, "n": 0x0A, "r": 0x0D, "v": 0x0B}
_ASSERT = {"b": r"\y", "B": r"\Y", "A": r"\A", "z": r"\Z"}
_LEADING_FLAGS = re.compile(r"\(\?([imsU]+)\)")
_REPEAT = re.compile(r"\{(\d+)(?:(,)(\d*))?\}")
_POSIX_NAME = re.compile(r"\[:(\^?)([a-z]+):\]")
_HEX = re.compile(r"x(?:\{([0-9A-Fa-f]+)\}|([0-9A-Fa-f]{2}))")


class Untranslatable(ValueError):
    """The pattern uses RE2 syntax outside the translated subset (the message says which)."""


@dataclass(frozen=True, slots=True)
class PgRegex:
    """A PostgreSQL ARE and whether it must run case-insensitively (``~*``)."""

    pattern: str
    fold: bool = False

    @property
    def operator(self) -> str:
        return "~*" if self.fold else "~"


def translate(pattern: str) -> PgRegex | None:
    """The PostgreSQL regex for an RE2 ``pattern`` (already valid RE2), or None if untranslatable."""
    try:
        return to_postgres(pattern)
    except Untranslatable:
        return None


def to_postgres(pattern: str) -> PgRegex:
    """Translate ``pattern`` (valid RE2 syntax); raises :class:`Untranslatable`."""
    return _Translator(pattern).run()


def _char(code: int) -> str:
    """A code point written so that PostgreSQL reads it as that literal character."""
    ch = chr(code)
    if ch.isascii() and ch.isalnum():
        return ch
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _contains(ranges: Ranges, code: int) -> bool:
    return any(lo <= code <= hi for lo, hi in ranges)


class _Translator:
    """One left-to-right pass over a valid RE2 pattern, writing the PostgreSQL pattern."""

    def __init__(self, pattern: str) -> None:
        self.s = pattern
        self.i = 0
        self.out: list[str] = []
        self.fold = False
        self.multiline = False

    def refuse(self, what: str) -> Untranslatable:
        return Untranslatable(f"{what} at offset {self.i} of {self.s!r:.80}")

    def run(self) -> PgRegex:
        while m := _LEADING_FLAGS.match(self.s, self.i):
            self.fold |= "i" in m.group(1)
            self.multiline |= "m" in m.group(1)  # 's' and 'U' change nothing a yes/no match needs
            self.i = m.end()
        while self.i < len(self.s):
            self.item()
        return PgRegex(("(?w)" if self.multiline else "") + "".join(self.out), self.fold)

    # ------------------------------------------------------------------ items

    def item(self) -> None:
        s, c = self.s, self.s[self.i]
        if c == "\\":
            self.escape()
        elif c == "[":
            self.bracket()
        elif c == "(":
            if s.startswith("(?:", self.i):
                self.i += 3
            elif s.startswith(("(?P<", "(?<"), self.i):
                end = s.find(">", self.i)
                if end < 0:
                    raise self.refuse("unterminated group name")
                self.i = end + 1
            elif s.startswith("(?", self.i):
                raise self.refuse("inline flags after the start")
            else:
                self.i += 1
            self.out.append("(?:")
        elif c in ")|.^$":
            self.out.append(c)
            self.i += 1
        elif c in "*+?":
            self.out.append(c)
            self.i += 1
            self.lazy()
        elif c == "{" and (m := _REPEAT.match(s, self.i)):
            low, comma, high = m.group(1), m.group(2), m.group(3)
            if int(low) > MAX_REPEAT or (high and int(high) > MAX_REPEAT):
                raise self.refuse(f"a repetition over {MAX_REPEAT}")
            self.out.append("{" + low + (comma or "") + (high or "") + "}")
            self.i = m.end()
            self.lazy()
        else:
            self.literal(ord(c))
            self.i += 1

    def lazy(self) -> None:
        """Skip a non-greedy marker: greediness never changes whether a text matches."""
        if self.s.startswith("?", self.i):
            self.i += 1

    def escape(self) -> None:
        s = self.s
        if self.i + 1 >= len(s):
            raise self.refuse("a trailing backslash")
        c = s[self.i + 1]
        if c in _ASSERT:
            self.out.append(_ASSERT[c])
            self.i += 2
        elif c in _PERL:
            self.i += 2
            self.emit_set(_PERL[c], negated=False)
        elif c.lower() in _PERL:
            self.i += 2
            self.emit_set(_PERL[c.lower()], negated=True)
        elif c == "Q":
            end = s.find("\\E", self.i + 2)
            text = s[self.i + 2 :] if end < 0 else s[self.i + 2 : end]
            for ch in text:
                self.literal(ord(ch))
            self.i = len(s) if end < 0 else end + 2
        else:
            self.literal(self.escaped_char())

    def escaped_char(self) -> int:
        """The code point of a single-character escape at ``self.i`` (a backslash); advances."""
        c = self.s[self.i + 1]
        if c in _ENTRY:
            self.i += 2
            return _ENTRY[c]
        if m := _HEX.match(self.s, self.i + 1):
            self.i = m.end()
            return int(m.group(1) or m.group(2), 16)
        if c.isascii() and not c.isalnum():
            self.i += 2
            return ord(c)
        raise self.refuse(f"the escape \\{c}")

    def literal(self, code: int) -> None:
        if code in (NUL, REPLACEMENT):
            raise self.refuse("NUL or U+FFFD (NUL is stored as U+FFFD)")
        if self.fold:
            self.emit_set([(code, code)], negated=False)
        else:
            self.out.append(_char(code))

    # ---------------------------------------------------------------- classes

    def bracket(self) -> None:
        s = self.s
        self.i += 1
        negated = s.startswith("^", self.i)
        if negated:
            self.i += 1
        ranges: Ranges = []
        first = True
        while True:
            if self.i >= len(s):
                raise self.refuse("an unterminated class")
            if s[self.i] == "]" and not first:
                self.i += 1
                break
            first = False
            if m := _POSIX_NAME.match(s, self.i):
                if m.group(1) or m.group(2) not in _POSIX:
                    raise self.refuse(f"the class [:{m.group(1)}{m.group(2)}:]")
                ranges += _POSIX[m.group(2)]
                self.i = m.end()
                continue
            if s[self.i] == "\\" and self.i + 1 < len(s) and s[self.i + 1] in _PERL:
                ranges += _PERL[s[self.i + 1]]
                self.i += 2
                continue
            low = self.class_char()
            if s.startswith("-", self.i) and self.i + 1 < len(s) and s[self.i + 1] != "]":
                self.i += 1
                ranges.append((low, self.class_char()))
            else:
                ranges.append((low, low))
        self.emit_set(ranges, negated=negated)

    def class_char(self) -> int:
        if self.s[self.i] == "\\":
            if self.i + 1 >= len(self.s):
                raise self.refuse("a trailing backslash")
            return self.escaped_char()
        code = ord(self.s[self.i])
        self.i += 1
        return code

    def emit_set(self, ranges: Ranges, *, negated: bool) -> None:
        """Write a bracket expression for ``ranges`` (RE2 semantics, see the module docstring)."""
        ranges = list(ranges)
        if negated:
            # matching NUL in RE2 means matching U+FFFD in the stored text
            if _contains(ranges, REPLACEMENT) and not _contains(ranges, NUL):
                raise self.refuse("a negated class excluding U+FFFD")
        else:
            if _contains(ranges, NUL) and not _contains(ranges, REPLACEMENT):
                raise self.refuse("a class matching NUL")
            if self.fold:
                if any(hi > 0x7F for _, hi in ranges):
                    raise self.refuse("non-ASCII characters in a case-insensitive pattern")
                if any(_contains(ranges, ord(c)) for c in "kK"):
                    ranges.append((KELVIN, KELVIN))
                if any(_contains(ranges, ord(c)) for c in "sS"):
                    ranges.append((LONG_S, LONG_S))
        # stored text holds no NUL (U+FFFD stands for it, covered above): leave NUL out
        ranges = [(max(lo, 1), hi) for lo, hi in ranges if hi >= 1]
        if not ranges:
            raise self.refuse("a class of NUL only")
        if not negated and len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
            self.out.append(_char(ranges[0][0]))
            return
        body = "".join(_char(lo) if lo == hi else f"{_char(lo)}-{_char(hi)}" for lo, hi in ranges)
        self.out.append("[" + ("^" if negated else "") + body + "]")
