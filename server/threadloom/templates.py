"""The continuation message template: the first words a continuation thread starts with.

A setting (``continuation_template``) in ``str.format`` syntax; it is checked when the
settings load, so a typo in a placeholder fails at start-up, not at the first handoff.
"""

from __future__ import annotations

import string

__all__ = ["DEFAULT_CONTINUATION_TEMPLATE", "TEMPLATE_FIELDS", "check_template", "render_continuation"]

TEMPLATE_FIELDS = ("directive", "previous_thread_id", "summary", "reason", "carried_count", "omitted_count")
"""Placeholders a continuation template may use (``str.format`` syntax)."""

DEFAULT_CONTINUATION_TEMPLATE = (
    "[threadloom] This thread continues thread {previous_thread_id} (reason: {reason}); "
    "the work goes on here.\n\n"
    "Directive: {directive}\n\n"
    "Summary so far: {summary}\n\n"
    "The last {carried_count} messages of thread {previous_thread_id} follow; its other "
    "{omitted_count} events stay there (read_events, chain_search)."
)

NO_DIRECTIVE = "(none given)"
NO_SUMMARY = "(none given: the recent messages below carry the context)"


def check_template(template: str) -> str:
    """Return ``template`` if it formats with the known placeholders only.

    Raises:
        ValueError: naming the unknown placeholder or the syntax error (the settings
            loader reports it with the setting's source).
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"continuation_template is not a valid format string: {exc}") from None
    for _literal, name, _spec, _conv in parsed:
        if name is not None and name not in TEMPLATE_FIELDS:
            raise ValueError(
                f"continuation_template uses placeholder {{{name}}}; allowed: "
                + ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
                + " (write {{ and }} for literal braces)"
            )
    try:
        _render(template, "x", "0" * 12, "s", "r", 1, 2)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise ValueError(f"continuation_template does not render: {exc}") from None
    return template


def _render(
    template: str, directive: str, previous: str, summary: str, reason: str, carried: int, omitted: int
) -> str:
    return template.format(
        directive=directive,
        previous_thread_id=previous,
        summary=summary,
        reason=reason,
        carried_count=carried,
        omitted_count=omitted,
    )


def render_continuation(
    template: str,
    *,
    directive: str | None,
    previous_thread_id: str,
    summary: str | None,
    reason: str,
    carried_count: int,
    omitted_count: int,
) -> str:
    """The continuation message that opens a continuation thread."""
    return _render(
        template,
        directive if directive else NO_DIRECTIVE,
        previous_thread_id,
        summary if summary else NO_SUMMARY,
        reason,
        carried_count,
        omitted_count,
    )
