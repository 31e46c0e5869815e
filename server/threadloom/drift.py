"""How a transcript mirror compares with the database's lines: equal, behind, or holding more.

One pure function decides it for every caller (the mirror writer, start-up repair,
``doctor``, ``verify``), so they agree on the one rule that matters: a mirror that is
*behind* (a line prefix of the database, perhaps ending in a torn piece of the next line)
may be completed from the database, because that loses nothing; a mirror that *holds*
anything the database lacks (an edited, forged or extra line, or lines the database lost)
is evidence, and is never rewritten away (it is set aside, see mirror.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Kind = Literal["equal", "behind", "holds"]


@dataclass(frozen=True, slots=True)
class Drift:
    """The outcome of :func:`compare`.

    ``common``: leading lines equal in both. ``file_lines``: complete lines of the file (a
    torn last piece counts as one more when it is not a prefix of the database's next line).
    ``db_lines``: lines of the database. ``good_bytes``: bytes of the file that are the
    common lines (where a behind mirror is completed from). ``first_bad``: the first line
    (1-based) the file holds that the database does not (kind ``holds`` only).
    """

    kind: Kind
    common: int
    file_lines: int
    db_lines: int
    good_bytes: int
    first_bad: int | None = None

    @property
    def missing(self) -> int:
        """Database lines the file lacks after the common ones."""
        return self.db_lines - self.common


def split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """The complete lines of ``data`` (without their newlines) and the torn rest after the last one."""
    parts = data.split(b"\n")
    return parts[:-1], parts[-1]


def compare(data: bytes, db: Sequence[bytes]) -> Drift:
    """Compare transcript bytes with the database's lines (each without its newline)."""
    complete, torn = split_lines(data)
    common = 0
    good = 0
    for have, want in zip(complete, db):
        if have != want:
            break
        common += 1
        good += len(have) + 1
    if common < len(complete):
        return Drift("holds", common, len(complete) + bool(torn), len(db), good, common + 1)
    if torn:
        if common < len(db) and db[common].startswith(torn):  # a write cut short: a piece of the next line
            return Drift("behind", common, len(complete), len(db), good)
        return Drift("holds", common, len(complete) + 1, len(db), good, common + 1)
    if common == len(db):
        return Drift("equal", common, common, len(db), good)
    return Drift("behind", common, common, len(db), good)


def describe(d: Drift) -> str:
    """A short account of a drift for logs and reports."""
    if d.kind == "equal":
        return f"equal to the database ({d.db_lines} lines)"
    if d.kind == "behind":
        return f"behind the database: {d.file_lines} of {d.db_lines} lines"
    return (
        f"holds {d.file_lines} lines, the database {d.db_lines}; line {d.first_bad} on is not the database's"
    )
