"""Automatic titles (issue 18 item 6): made from the first user messages after the second one,
never over a title a user or agent set."""

from __future__ import annotations

from typing import Any

import pytest

from threadloom.service import ThreadService
from threadloom.titles import MAX_CHARS, title_from

pytestmark = pytest.mark.anyio


def msg(text: str, role: str = "user") -> dict[str, Any]:
    return {"type": "message", "role": role, "text": text}


async def test_a_thread_gets_a_title_after_its_second_user_message(service: ThreadService) -> None:
    t = await service.create_thread()
    await service.append(t.thread_id, [msg("Fix the login bug")])
    await service.append(t.thread_id, [msg("Looking at auth.py", "assistant")])
    assert (await service.get_thread(t.thread_id)).title is None  # one user message: not yet
    await service.append(t.thread_id, [msg("it only fails with SSO")])
    assert (await service.get_thread(t.thread_id)).title == "Fix the login bug / it only fails with SSO"
    await service.append(t.thread_id, [msg("and on Safari")])
    assert (await service.get_thread(t.thread_id)).title == "Fix the login bug / it only fails with SSO"


async def test_a_set_title_always_wins(service: ThreadService) -> None:
    t = await service.create_thread(title="mine")
    await service.append(t.thread_id, [msg("one"), msg("two")])
    assert (await service.get_thread(t.thread_id)).title == "mine"
    u = await service.create_thread()
    await service.append(u.thread_id, [msg("first question"), msg("second question")])  # one batch
    assert (await service.get_thread(u.thread_id)).title == "first question / second question"
    await service.update_thread(u.thread_id, title="renamed by the agent")
    await service.append(u.thread_id, [msg("third")])
    assert (await service.get_thread(u.thread_id)).title == "renamed by the agent"


def test_title_from_is_short_plain_and_cut_at_a_word() -> None:
    long = "Please refactor the **payment** module so that   every provider\nshares one retry policy"
    title = title_from([long, "second"])
    assert title is not None and len(title) <= MAX_CHARS and title.endswith("…")
    assert "**" not in title and "\n" not in title and "  " not in title
    assert title.startswith("Please refactor the payment module")
    assert not title[:-1].endswith(" ")
    assert title_from(["`#`", "  "]) is None
    assert title_from(["short", ""]) == "short"
