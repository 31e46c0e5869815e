"""The ranges numbers must fall in, and the checks that say so (docs/decisions.md).

JSON can carry integers of any size and, through most parsers, ``1e400`` (read as
infinity); Python reads ``NaN`` and ``Infinity`` too. None of them may reach the store, a
sum or a comparison: every number a client gives is checked against its range here, and
a number out of range is refused with a ``[rule]`` naming the range, before anything is
written.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import InvalidInputError

MAX_COUNT = 2**53 - 1
"""Largest count (tokens, turns, durations, usage sums): exact in every JSON reader."""
MAX_AMOUNT = 1e15
"""Largest cost, spend or budget (and sum of spends), in the client's currency unit."""
MAX_SEQ = 2**63 - 1
"""Largest event sequence number a store can hold."""
MAX_STALE_AFTER = 365 * 86_400.0
"""Longest ``stale_after``: a year."""
MAX_QUOTE = 200


def quote(value: Any, limit: int = MAX_QUOTE) -> str:
    """``repr(value)`` cut to ``limit`` characters, marked with its full length when cut."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return f"<an integer of more than {limit} digits>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_count(name: str, value: Any, *, lo: int = 0, hi: int = MAX_COUNT, rule: str | None = None) -> int:
    """An integer in ``lo..hi``, or InvalidInputError ``{name}_range``."""
    if not isinstance(value, int) or isinstance(value, bool) or not (lo <= value <= hi):
        raise InvalidInputError(
            f"{name} must be an integer from {lo} to {hi}; got {quote(value)}", rule=rule or f"{name}_range"
        )
    return value


def check_amount(
    name: str,
    value: Any,
    *,
    lo: float = 0.0,
    hi: float = MAX_AMOUNT,
    lo_open: bool = False,
    rule: str | None = None,
) -> float:
    """A finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``), or ``{name}_range``."""
    ok = (
        _is_number(value)
        and math.isfinite(value)
        and (value > lo if lo_open else value >= lo)
        and value <= hi
    )
    if not ok:
        span = f"greater than {lo:g} and at most {hi:g}" if lo_open else f"between {lo:g} and {hi:g}"
        raise InvalidInputError(
            f"{name} must be a finite number {span}; got {quote(value)}",
            rule=rule or f"{name}_range",
        )
    return float(value)


def check_usage_sums(thread: Any, delta: Any) -> None:
    """Refuse a ``result`` append whose sums would leave their range (``usage_range``).

    ``thread`` is a Thread (its ``usage``), ``delta`` the UsageDelta the append adds.
    """
    usage = thread.usage
    for name, now, more, hi in (
        ("turns", usage.turns, delta.turns, MAX_COUNT),
        ("tokens", usage.tokens, delta.tokens, MAX_COUNT),
        ("spend", usage.spend, delta.spend, MAX_AMOUNT),
    ):
        total = now + more
        if not (math.isfinite(total) and total <= hi):
            raise InvalidInputError(
                f"this append would bring thread {thread.thread_id}'s {name} to {quote(total)} "
                f"({quote(now)} so far plus {quote(more)}); the most a thread can count is {hi:g}. "
                "Nothing was written",
                rule="usage_range",
            )


_FINITE_JSON = json.JSONEncoder(allow_nan=False, check_circular=False, ensure_ascii=False)


def check_finite_json(where: str, value: Any, *, rule: str = "event_json") -> None:
    """Refuse JSON data holding NaN or an infinity (``1e400`` reads as one), which the
    stored canonical JSON cannot carry and would otherwise be silently written as null."""
    try:
        _FINITE_JSON.encode(value)
    except ValueError:
        raise InvalidInputError(
            f"{where} holds a number JSON cannot carry (NaN, Infinity, beyond 1.8e308, or an "
            "integer of more than 4300 digits); only finite numbers are stored. Nothing was written",
            rule=rule,
        ) from None
    except TypeError as exc:
        raise InvalidInputError(f"{where} must be plain JSON: {exc}", rule=rule) from None
