"""The web inspector's routes through an ASGI client: pages, filters, paging, escaping, auth, 404s."""

from __future__ import annotations

import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from mcp import Client

from conftest import PYTHON
from threadloom.config import Settings
from threadloom.mcp_server import build_server
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore
from threadloom.transcript_md import chain_markdown, thread_markdown
from threadloom.web import timeline
from web_helpers import HOSTILE, Filled, assert_no_markup, client, fill, rows

pytestmark = pytest.mark.anyio
FORM = {"content-type": "application/x-www-form-urlencoded"}
HTML = {"accept": "text/html,application/xhtml+xml"}
TOKEN = "t" * 40


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[ThreadService]:
    settings = Settings(root=tmp_path / "root", durability="normal")
    async with ThreadService(SQLiteStore(settings.root, durability="normal"), settings) as s:
        yield s


@pytest.fixture
async def filled(svc: ThreadService) -> Filled:
    return await fill(svc)


async def test_the_threads_page_lists_newest_first_with_status_events_and_cost(
    svc: ThreadService, filled: Filled
) -> None:
    async with client(svc, svc.settings) as c:
        r = await c.get("/")
    assert r.status_code == 200
    listed = rows(r.text)
    newest = [t.thread_id for t in (await svc.list_threads(limit=50)).threads]
    assert listed == newest and len(listed) == 6
    worker = r.text[r.text.index(f'id="row-{filled.worker}"') :].split("</tr>")[0]
    assert "st-completed" in worker and ">9<" in worker and "0.0123" in worker  # spend from result events


@pytest.mark.parametrize(
    ("query", "expect"),
    [
        ("status=error", ["failing"]),
        ("agent=mallory", ["hostile"]),
        ("parent={parent}", ["failing", "worker"]),
        ("status=continued", ["chain_first"]),
    ],
)
async def test_filters_narrow_the_list(
    svc: ThreadService, filled: Filled, query: str, expect: list[str]
) -> None:
    async with client(svc, svc.settings) as c:
        r = await c.get("/?" + query.format(parent=filled.parent))
    assert r.status_code == 200
    assert sorted(rows(r.text)) == sorted(getattr(filled, name) for name in expect)


async def test_a_bad_filter_is_a_400_naming_the_rule(svc: ThreadService, filled: Filled) -> None:
    async with client(svc, svc.settings) as c:
        bad_status = await c.get("/?status=sleeping")
        bad_parent = await c.get("/?parent=nope")
    assert bad_status.status_code == 400 and "[status_value]" in bad_status.text
    assert bad_parent.status_code == 400 and "[thread_id_format]" in bad_parent.text


async def test_the_list_is_paged_with_an_opaque_cursor(svc: ThreadService) -> None:
    made = [(await svc.create_thread(title=f"t{i}")).thread_id for i in range(55)]
    async with client(svc, svc.settings) as c:
        first = await c.get("/")
        older = re.search(r'class="older" href="([^"]+)"', first.text)
        assert older is not None
        second = await c.get(older.group(1).replace("&amp;", "&"))
    assert len(rows(first.text)) == 50 and len(rows(second.text)) == 5
    assert rows(first.text) + rows(second.text) == list(reversed(made))
    assert 'class="older"' not in second.text and "← Newest" in second.text


async def test_search_highlights_matches_and_keeps_the_words_out_of_the_url(
    svc: ThreadService, filled: Filled
) -> None:
    async with client(svc, svc.settings) as c:
        r = await c.post("/search", content="q=tests", headers=FORM)
        empty = await c.post("/search", content="q=", headers=FORM)
    assert r.status_code == 200
    assert "<mark>" in r.text and f"/t/{filled.worker}#e" in r.text
    assert empty.status_code == 303 and empty.headers["location"] == "/"


def _details(html: str, tool_id: str) -> str:
    """The <details> element of one tool call."""
    at = html.rindex("<details", 0, html.index(f'data-tool-id="{tool_id}"'))
    return html[at:].split("</details>")[0]


async def test_the_thread_page_shows_a_tool_call_beside_its_result_and_marks_errors(
    svc: ThreadService, filled: Filled
) -> None:
    async with client(svc, svc.settings) as c:
        ok = await c.get(f"/t/{filled.worker}")
        bad = await c.get(f"/t/{filled.failing}")
    call = _details(ok.text, "call-1")
    assert "bash" in call and "412 passed in 9.1s" in call and "st-ok" in call
    assert 'data-for="call-1"' not in ok.text  # the result is not shown a second time
    failed = _details(bad.text, "call-9")
    assert "has-error" in failed and "permission denied" in failed and "st-error" in failed
    assert "1,500</b> in" in ok.text and "cost <b>0.0123</b>" in ok.text  # the result event
    assert "<strong>412</strong>" in ok.text  # Markdown rendered


async def test_hostile_content_is_escaped_everywhere_under_a_strict_csp(
    svc: ThreadService, filled: Filled
) -> None:
    async with client(svc, svc.settings) as c:
        page = await c.get(f"/t/{filled.hostile}")
        listing = await c.get("/")
        frag = await c.get(f"/t/{filled.hostile}/events?after=0")
        md = await c.get(f"/t/{filled.hostile}/export/thread.md")
    assert_no_markup(page.text)
    assert_no_markup(frag.text)
    assert "Hostile &lt;b&gt;title&lt;/b&gt;" in listing.text and "<b>title</b>" not in listing.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert (
        md.headers["content-type"].startswith("text/markdown")
        and "attachment" in md.headers["content-disposition"]
    )
    assert HOSTILE in md.text  # the export is the text itself, served as a download


async def test_missing_and_malformed_ids_are_404(svc: ThreadService, filled: Filled) -> None:
    async with client(svc, svc.settings) as c:
        for path in (
            "/t/000000000000",
            "/t/not-an-id",
            "/t/000000000000/events",
            "/t/000000000000/verify",
            "/t/000000000000/live",
            "/t/000000000000/export/thread.md",
            f"/t/{filled.worker}/export/secrets.txt",
            "/nowhere",
        ):
            r = await c.get(path)
            assert r.status_code == 404, path
            assert "text/html" in r.headers["content-type"]


async def test_a_long_thread_comes_in_pages_and_calls_stay_with_their_results(svc: ThreadService) -> None:
    t = await svc.create_thread(title="long")
    events: list[dict] = []
    for i in range(125):
        events.append({"type": "tool_use", "id": f"c{i}", "name": "step", "input": {"i": i}})
        events.append({"type": "tool_result", "tool_use_id": f"c{i}", "output": f"done {i}"})
    await svc.append(t.thread_id, events)
    async with client(svc, svc.settings) as c:
        page = await c.get(f"/t/{t.thread_id}")
        last = int(re.search(r'data-last-seq="(\d+)"', page.text).group(1))  # type: ignore[union-attr]
        seen = page.text.count('class="ev tool')
        frags = []
        while True:
            f = await c.get(f"/t/{t.thread_id}/events?after={last}")
            frags.append(f.text)
            last = int(f.headers["x-last-seq"])
            if f.headers["x-has-more"] == "0":
                break
    assert 'data-has-more="1"' in page.text and seen == timeline.FIRST_PAGE // 2
    body = page.text + "".join(frags)
    assert body.count('class="ev tool') == 125  # each call once, each with its result
    assert "tool-result" not in body and body.count("done 124") == 1


async def test_the_verify_badge_reports_the_first_bad_line(svc: ThreadService, filled: Filled) -> None:
    async with client(svc, svc.settings) as c:
        ok = await c.get(f"/t/{filled.worker}/verify")
        path = svc.settings.root / "threads" / filled.worker / "transcript.jsonl"
        lines = path.read_bytes().splitlines(keepends=True)
        lines[1] = lines[1].replace(b"Run the tests", b"Skip the tests")
        path.write_bytes(b"".join(lines))
        bad = await c.get(f"/t/{filled.worker}/verify")
    assert "verified" in ok.text
    assert "first bad line 2" in bad.text and "problem" in bad.text


async def test_exports_give_the_same_markdown_as_the_cli_and_the_resource(
    svc: ThreadService, filled: Filled, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    tid = filled.chain_next
    async with client(svc, svc.settings) as c:
        thread_md = (await c.get(f"/t/{tid}/export/thread.md")).text
        chain_md = (await c.get(f"/t/{tid}/export/chain.md")).text
        bundle = (await c.get(f"/t/{tid}/export/bundle.jsonl")).text
        transcript = (await c.get(f"/t/{tid}/export/transcript.jsonl")).text
    assert thread_md == await thread_markdown(svc, tid)
    assert chain_md == await chain_markdown(svc, tid)
    assert chain_md.index(filled.chain_first) < chain_md.index(
        f"## Long analysis\n\n| field | value |\n|---|---|\n| thread_id | `{tid}`"
    )
    async with Client(build_server(svc)) as mcp:
        res = (await mcp.read_resource(f"thread://{tid}/transcript.md")).contents[0].text  # type: ignore[union-attr]
    assert res == thread_md

    def export(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [
            PYTHON,
            "-m",
            "threadloom",
            "export",
            "--root",
            str(svc.settings.root),
            "--format",
            "md",
            *args,
        ]
        return subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=60)

    out = export(tid)
    assert out.returncode == 0, out.stderr
    assert out.stdout == thread_md
    out = export("--chain", tid, "-o", str(tmp_path / "c.md"))
    assert out.returncode == 0 and (tmp_path / "c.md").read_text() == chain_md
    head = bundle.splitlines()[0]
    assert '"kind":"threadloom-bundle"' in head and bundle.count('"kind":"thread"') == 2
    assert transcript == await svc.transcript(tid)


async def test_without_a_token_no_login_is_needed(svc: ThreadService, filled: Filled) -> None:
    async with client(svc, svc.settings) as c:
        assert (await c.get("/", headers=HTML)).status_code == 200
        assert (await c.get("/login")).status_code == 303


async def test_with_a_token_pages_ask_once_and_keep_it_in_a_strict_cookie(
    svc: ThreadService, filled: Filled
) -> None:
    settings = svc.settings.model_copy(update={"token": TOKEN})
    async with client(svc, settings) as c:
        page = await c.get(f"/t/{filled.worker}", headers=HTML)
        assert page.status_code == 303 and page.headers["location"] == f"/login?next=/t/{filled.worker}"
        assert (await c.get("/t/" + filled.worker)).status_code == 401  # not a browser: a JSON 401
        form = await c.get("/login")
        assert form.status_code == 200 and 'type="password"' in form.text
        assert (await c.get("/static/app.css")).status_code == 200
        wrong = await c.post("/login", content=f"token=nope&next=/t/{filled.worker}", headers=FORM)
        assert wrong.status_code == 401 and "not a token" in wrong.text and "set-cookie" not in wrong.headers
        ok = await c.post("/login", content=f"token={TOKEN}&next=/t/{filled.worker}", headers=FORM)
        assert ok.status_code == 303 and ok.headers["location"] == f"/t/{filled.worker}"
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert (await c.get(f"/t/{filled.worker}", headers=HTML)).status_code == 200  # the client keeps it
        assert (await c.get(f"/t/{filled.worker}/export/thread.md")).status_code == 200
        mcp = await c.post("/mcp", content=b"{}", headers={"content-type": "application/json"})
        assert mcp.status_code == 401  # the cookie counts for the web paths only
        away = await c.post("/login", content=f"token={TOKEN}&next=//evil.example/x", headers=FORM)
        assert away.headers["location"] == "/"
        out = await c.post("/logout")
        assert out.status_code == 303 and 'threadloom_token_8765=""' in out.headers["set-cookie"]
    async with client(svc, settings) as fresh:
        bearer = await fresh.get("/", headers={"authorization": f"Bearer {TOKEN}"})
        assert bearer.status_code == 200


async def test_host_and_origin_are_checked_on_the_pages(svc: ThreadService, filled: Filled) -> None:
    async with client(svc, svc.settings) as c:
        assert (await c.get("/", headers={"Host": "evil.example"})).status_code == 421
        assert (await c.get("/", headers={"Origin": "http://evil.example"})).status_code == 403
        assert (await c.get("/", headers={"Origin": "http://127.0.0.1:8765"})).status_code == 200
        same = await c.post("/search", content="q=tests", headers={**FORM, "Origin": "http://127.0.0.1:8765"})
        assert same.status_code == 200
    # a browser sends Origin: null on a form post under Referrer-Policy: no-referrer
    assert same.headers["referrer-policy"] == "same-origin"


async def test_the_latest_events_open_first_on_request_and_earlier_ones_load_back(svc: ThreadService) -> None:
    t = await svc.create_thread(title="tail")
    await svc.append(t.thread_id, [{"role": "user", "text": f"m{i}"} for i in range(300)])
    first_shown = 301 - timeline.FIRST_PAGE + 1  # 301 events: a status change, then 300 messages
    async with client(svc, svc.settings) as c:
        start = await c.get(f"/t/{t.thread_id}")
        end = await c.get(f"/t/{t.thread_id}?at=end")
        back = await c.get(f"/t/{t.thread_id}/events?before={first_shown}")
        first = await c.get(f"/t/{t.thread_id}/events?before=2")
    assert f'href="/t/{t.thread_id}?at=end"' in start.text and 'id="earlier"' not in start.text
    assert f'data-first-seq="{first_shown}"' in end.text and 'id="e301"' in end.text
    assert f'id="e{first_shown - 1}"' not in end.text
    assert f"Load {first_shown - 1} earlier event(s)" in end.text
    lowest = max(1, first_shown - timeline.NEXT_PAGE)
    assert back.headers["x-first-seq"] == str(lowest) and f'id="e{first_shown - 1}"' in back.text
    assert f'id="e{first_shown}"' not in back.text
    assert first.headers["x-first-seq"] == "1" and first.text.count('data-seq="') == 1


@pytest.mark.skipif(not hasattr(ThreadService, "fork_thread"), reason="this build has no fork_thread yet")
async def test_forks_are_listed_on_the_thread_page(svc: ThreadService, filled: Filled) -> None:
    fork = await svc.fork_thread(filled.worker, at_seq=2, title="Try another runner")  # type: ignore[attr-defined]
    async with client(svc, svc.settings) as c:
        source = await c.get(f"/t/{filled.worker}")
        forked = await c.get(f"/t/{fork.thread_id}")
    assert 'class="card forks"' in source.text and f"/t/{fork.thread_id}" in source.text
    assert "Try another runner" in source.text and "from this thread at #2" in source.text
    assert f'href="/t/{filled.worker}#e2"' in forked.text  # the fork point in its manifest


async def test_live_rows_keep_to_the_tokens_agents(svc: ThreadService, filled: Filled) -> None:
    from threadloom.scope import EVERY_AGENT, AgentScope, acting_as
    from threadloom.web import live

    rows_seen: list[str] = []
    with acting_as(AgentScope.of(["orchestrator"])):
        stream = live.rows_stream(svc, [filled.hostile, filled.parent], lambda t: t.thread_id)
        assert await anext(stream) == b": live\n\n"
        with acting_as(EVERY_AGENT):  # someone else writes both
            await svc.append(filled.hostile, [{"role": "user", "text": "not for orchestrator eyes"}])
            await svc.append(filled.parent, [{"role": "user", "text": "mine"}])
        with anyio.fail_after(5):
            while filled.parent not in rows_seen:
                rows_seen.append((await anext(stream)).decode())
                rows_seen[-1] = rows_seen[-1].split('"thread_id": "')[1][:12]
        await stream.aclose()
    assert filled.hostile not in rows_seen
