"""Automatic titles (issue 18 item 6): a short title made from a thread's first user messages.

No model call: the words of the first user message, and of the second when the first is
short, cut at a word boundary. The service sets it once, when a thread without a title
has its second user message, and only while the title is still unset: a title a user or
an agent set always wins and is never overwritten.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_CHARS = 60
"""Longest automatic title, in characters (an ellipsis marks a cut)."""
SHORT = 40
"""A first message shorter than this is followed by the second."""
USER_MESSAGES = 2
"""The title is made after this many user messages."""

_MARKUP = re.compile(r"[`*_#>\[\]]+")
_SPACE = re.compile(r"\s+")


def clean(text: str) -> str:
    """One line of plain words: markup characters and runs of white space collapsed."""
    return _SPACE.sub(" ", _MARKUP.sub(" ", text)).strip()


def title_from(texts: Iterable[str]) -> str | None:
    """A title from the first user messages' texts (oldest first), or None if they hold no words."""
    parts = [p for p in (clean(t) for t in texts) if p][:USER_MESSAGES]
    if not parts:
        return None
    title = parts[0]
    if len(title) < SHORT and len(parts) > 1:
        title = f"{title} / {parts[1]}"
    if len(title) <= MAX_CHARS:
        return title
    cut = title[: MAX_CHARS - 1]
    if " " in cut[MAX_CHARS // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" /,.;:-") + "…"
