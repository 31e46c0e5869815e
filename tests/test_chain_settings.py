"""Handoff settings: threshold, ceiling, window and the continuation template, checked at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from chain_helpers import msg, small
from threadloom import cli
from threadloom.config import Settings, load_settings
from threadloom.errors import InvalidInputError
from threadloom.service import ThreadService
from threadloom.store.base import Store
from threadloom.templates import (
    DEFAULT_CONTINUATION_TEMPLATE,
    TEMPLATE_FIELDS,
    check_template,
    render_continuation,
)


def test_the_default_template_uses_every_placeholder_and_renders() -> None:
    assert check_template(DEFAULT_CONTINUATION_TEMPLATE)
    for name in TEMPLATE_FIELDS:
        assert "{" + name + "}" in DEFAULT_CONTINUATION_TEMPLATE
    text = render_continuation(
        DEFAULT_CONTINUATION_TEMPLATE,
        directive=None,
        previous_thread_id="abcdefabcdef",
        summary=None,
        reason="threshold",
        carried_count=3,
        omitted_count=40,
    )
    assert (
        "abcdefabcdef" in text
        and "(none given)" in text
        and "last 3 messages" in text
        and "40 events" in text
    )


@pytest.mark.parametrize(
    ("template", "pattern"),
    [
        ("go on from {previous}", r"placeholder \{previous\}"),
        ("{directive.upper}", r"placeholder \{directive.upper\}"),
        ("{0}", r"placeholder \{0\}"),
        ("unbalanced { brace", "not a valid format string"),
        ("{summary!x}", "does not render"),
    ],
)
def test_a_bad_template_fails_at_start_up_naming_the_source(
    tmp_path: Path, template: str, pattern: str
) -> None:
    (tmp_path / "config.toml").write_text(f"continuation_template = {template!r}\n".replace("'", '"'))
    with pytest.raises(InvalidInputError, match=pattern) as info:
        load_settings({"root": tmp_path}, env={})
    assert "config.toml" in info.value.message and "continuation_template" in info.value.message


def test_literal_braces_are_allowed_when_doubled() -> None:
    assert check_template("{{json}} {directive}")


@pytest.mark.parametrize(
    ("var", "value", "pattern"),
    [
        ("THREADLOOM_TRIGGER_THRESHOLD", "0", "trigger_threshold='0'"),
        ("THREADLOOM_TRIGGER_THRESHOLD", "1.2", "less than or equal to 1"),
        ("THREADLOOM_RESUME_CEILING_TOKENS", "ten", "resume_ceiling_tokens='ten'"),
        ("THREADLOOM_CONTEXT_WINDOW", "10", "context_window='10'"),
        ("THREADLOOM_WAIT_DEFAULT_TIMEOUT", "-1", "wait_default_timeout='-1'"),
        ("THREADLOOM_CONTINUATION_TEMPLATE", "{nope}", r"\{nope\}"),
    ],
)
def test_invalid_env_settings_fail_naming_the_variable(
    tmp_path: Path, var: str, value: str, pattern: str
) -> None:
    with pytest.raises(InvalidInputError, match=pattern) as info:
        load_settings({"root": tmp_path}, env={var: value})
    assert f"${var}" in info.value.message


def test_settings_come_from_the_file_then_env_then_flags(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        "trigger_threshold = 0.7\nresume_ceiling_tokens = 900\ncontext_window = 50000\n"
    )
    s = load_settings({"root": tmp_path}, env={"THREADLOOM_RESUME_CEILING_TOKENS": "800"})
    assert (s.trigger_threshold, s.resume_ceiling_tokens, s.context_window) == (0.7, 800, 50000)
    s = load_settings({"root": tmp_path, "trigger_threshold": 0.8}, env={})
    assert s.trigger_threshold == 0.8


def test_serve_refuses_a_bad_flag_before_serving(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["serve", "--root", str(tmp_path), "--trigger-threshold", "1.5"])
    assert code == 2
    assert "trigger_threshold=1.5 (from command line)" in capsys.readouterr().err
    code = cli.main(["serve", "--root", str(tmp_path), "--resume-ceiling-tokens", "5"])
    assert code == 2 and "resume_ceiling_tokens" in capsys.readouterr().err


@pytest.mark.anyio
async def test_a_custom_template_opens_the_continuation(store: Store, settings: Settings) -> None:
    template = "Continuing {previous_thread_id}: {directive} / {summary} ({carried_count} carried, {reason})"
    svc = ThreadService(store, small(settings, continuation_template=template))
    t = await svc.create_thread(directive="count")
    await svc.append(t.thread_id, [msg("one")])
    info = await svc.handoff(t.thread_id, summary="at 1")
    seed = [e.data() for e in await svc.all_events(info.thread_id)][1]["text"]
    assert seed == f"Continuing {t.thread_id}: count / at 1 (1 carried, explicit)"
