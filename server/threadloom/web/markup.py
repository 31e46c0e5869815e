"""Safe HTML out of untrusted transcript text: Markdown with raw HTML off, snippets, JSON.

Every string that reaches a page from a transcript passes through here or through
Jinja2's autoescaping. Markdown is rendered by markdown-it-py with ``html`` disabled, so
``<script>`` in a message is text (``&lt;script&gt;``); links keep only the schemes
markdown-it allows (no ``javascript:``, ``vbscript:``, ``file:``, ``data:``) and get
``rel="nofollow noopener noreferrer"``; images are off (a transcript must not make the
browser fetch anything). The page's Content-Security-Policy is the second wall.
"""

from __future__ import annotations

import json
import re
from typing import Any

from markdown_it import MarkdownIt
from markupsafe import Markup, escape

MAX_MARKDOWN_CHARS = 60_000
"""Longest text rendered as Markdown on a page; the rest is cut (the exports have it whole)."""
MAX_PRE_CHARS = 20_000
"""Longest tool input/output shown on a page."""

_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
_md.enable(["table", "strikethrough"]).disable("image")


def _link_open(tokens: Any, idx: int, options: Any, env: Any) -> str:
    tokens[idx].attrSet("rel", "nofollow noopener noreferrer")
    return _md.renderer.renderToken(tokens, idx, options, env)


_md.add_render_rule("link_open", _link_open)


def clip(text: str, limit: int) -> tuple[str, int]:
    """``text`` cut to ``limit`` characters, and how many were cut."""
    return (text, 0) if len(text) <= limit else (text[:limit], len(text) - limit)


def markdown(text: str) -> Markup:
    """Untrusted Markdown as safe HTML (raw HTML escaped, dangerous links refused)."""
    body, cut = clip(text, MAX_MARKDOWN_CHARS)
    html = _md.render(body)
    if cut:
        html += f'<p class="cut">… {cut:,} more characters (download the transcript for all of it)</p>'
    return Markup(html)


def pretty(value: Any) -> str:
    """A tool input or output as text for a ``<pre>`` (strings as they are, JSON indented)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True)


def pre(value: Any) -> Markup:
    """A value in a ``<pre>``, escaped and cut to MAX_PRE_CHARS."""
    body, cut = clip(pretty(value), MAX_PRE_CHARS)
    note = f'\n<span class="cut">… {cut:,} more characters</span>' if cut else ""
    return Markup(f"<pre>{escape(body)}{note}</pre>")


_MARKED = re.compile(r"\*\*(.+?)\*\*", re.S)


def snippet(text: str) -> Markup:
    """A search snippet with its ``**match**`` markers as ``<mark>`` (everything else escaped)."""
    out: list[str] = []
    pos = 0
    for m in _MARKED.finditer(text):
        out.append(str(escape(text[pos : m.start()])))
        out.append(f"<mark>{escape(m.group(1))}</mark>")
        pos = m.end()
    out.append(str(escape(text[pos:])))
    return Markup("".join(out))
