"""The web inspector in real headless Chromium (Debian's `chromium`, driven by Playwright).

`threadloom ui` serves a root filled like an orchestrator run; other processes append and
hand off while pages are open. With THREADLOOM_SCREENSHOTS=1 the tests save one screenshot
per page in docs/screenshots/ (otherwise in the test's tmp folder).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from conftest import PYTHON
from http_helpers import free_port, wait_port
from threadloom.config import Settings
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore
from web_helpers import Filled, fill

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent
SHOTS = HERE.parent / "docs" / "screenshots"
LIVE_WITHIN_MS = 1000


def _browser_problem() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if shutil.which("chromium") is None:
        return "Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)"
    return None


PROBLEM = _browser_problem()
if PROBLEM:
    pytestmark = [pytest.mark.slow, pytest.mark.skip(reason=PROBLEM)]


class Site:
    def __init__(
        self, root: Path, port: int, filled: Filled, env: dict[str, str], running: list[str], long: str
    ) -> None:
        self.root, self.port, self.filled, self.env, self.running = root, port, filled, env, running
        self.long = long

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def other_process(self, *args: str) -> str:
        """Run web_proc.py (another process on the root); its acknowledgement line."""
        out = subprocess.run(
            [PYTHON, str(HERE / "web_proc.py"), str(self.root), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()


async def _fill(root: Path) -> tuple[Filled, list[str], str]:
    settings = Settings(root=root, durability="normal")
    async with ThreadService(SQLiteStore(root, durability="normal"), settings) as svc:
        filled = await fill(svc)
        running = []
        for i in range(3):  # one fresh running thread per live test
            t = await svc.create_thread(title=f"Live worker {i}", agent_id="worker")
            await svc.append(t.thread_id, [{"role": "user", "text": f"Watch me work ({i})."}])
            running.append(t.thread_id)
        long = await svc.create_thread(title="A long run", agent_id="worker")
        batch: list[dict[str, Any]] = []
        for i in range(80):  # 160 events: calls and results, some split by the tail's first page
            batch.append({"type": "tool_use", "id": f"s{i}", "name": "step", "input": {"i": i}})
            batch.append({"type": "tool_result", "tool_use_id": f"s{i}", "output": f"step {i} done"})
        await svc.append(long.thread_id, batch)
        return filled, running, long.thread_id


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("web")
    root = tmp / "root"
    filled, running, long = anyio.run(_fill, root)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(HERE.parent / "server") + os.pathsep + env.get("PYTHONPATH", "")
    port = free_port()
    proc = subprocess.Popen(
        [PYTHON, "-m", "threadloom", "ui", "--root", str(root), "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_port("127.0.0.1", port, proc)
        yield Site(root, port, filled, env, running, long)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, errors


def shot(pg: Any, name: str, tmp_path: Path) -> None:
    """Save a screenshot: docs/screenshots/NAME.png with THREADLOOM_SCREENSHOTS=1."""
    folder = SHOTS if os.environ.get("THREADLOOM_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(folder / f"{name}.png"), full_page=False)


def test_the_threads_page_lists_and_filters(site: Site, page: Any, tmp_path: Path) -> None:
    page.goto(site.url("/"))
    rows = page.locator("table.threads tbody tr.row")
    assert rows.count() == 10  # 6 of the orchestrator run, 3 live workers, the long run
    assert page.locator(f"#row-{site.filled.worker} .badge").inner_text() == "completed"
    shot(page, "threads", tmp_path)
    page.select_option("select[name=status]", "error")
    page.click(".filters button[type=submit]")
    page.wait_for_url("**/?status=error*")
    assert rows.count() == 1
    assert "Deploy to staging" in rows.first.inner_text()
    page.fill("input[name=agent]", "worker")
    page.select_option("select[name=status]", "running")
    page.click(".filters button[type=submit]")
    page.wait_for_url("**agent=worker*")
    assert rows.count() == 4
    page.goto(site.url("/"))
    page.fill(".search input[name=q]", "tests")
    page.click(".search button")
    page.wait_for_selector(".hits .hit mark")
    assert "Run the test suite" in page.locator(".hits").inner_text()
    assert "tests" not in page.url  # the words went in the body
    shot(page, "search", tmp_path)


def test_a_thread_page_shows_a_tool_call_with_its_result(site: Site, page: Any, tmp_path: Path) -> None:
    page.goto(site.url(f"/t/{site.filled.worker}"))
    call = page.locator('details.tool[data-tool-id="call-1"]')
    assert not call.locator("pre").first.is_visible()  # collapsed
    call.locator("summary").click()
    assert call.locator(".in pre").inner_text().find("pytest -q") >= 0
    assert call.locator(".out pre").inner_text() == "412 passed in 9.1s"
    assert call.locator(".tool-state").inner_text() == "ok"
    page.wait_for_selector("#verify .verify.ok")
    shot(page, "thread", tmp_path)
    page.goto(site.url(f"/t/{site.filled.failing}"))
    failed = page.locator('details.tool[data-tool-id="call-9"]')
    assert failed.locator(".tool-state").inner_text() == "error"
    page.set_viewport_size({"width": 390, "height": 844})
    failed.locator("summary").click()
    shot(page, "thread-phone", tmp_path)


def test_an_append_from_another_process_appears_within_a_second(site: Site, page: Any) -> None:
    tid = site.running[0]
    page.goto(site.url(f"/t/{tid}"))
    page.wait_for_selector("#live-state.on")
    seq = site.other_process("append", tid, "Progress from another process <b>bold?</b>")
    page.wait_for_selector(f"#e{seq}", timeout=LIVE_WITHIN_MS)  # counted from the acknowledgement
    text = page.locator(f"#e{seq} .md").inner_text()
    assert text == "Progress from another process <b>bold?</b>"
    assert page.locator("#event-count").inner_text() == str(seq)


def test_a_handoff_is_followed_to_the_next_thread(site: Site, page: Any, tmp_path: Path) -> None:
    tid = site.running[1]
    page.goto(site.url(f"/t/{tid}"))
    page.wait_for_selector("#live-state.on")
    new = site.other_process("handoff", tid)
    page.wait_for_url(f"**/t/{new}", timeout=5000)
    page.wait_for_selector(".marker.hop >> text=continued from")
    assert tid in page.locator(".marker.hop").first.inner_text()
    seq = site.other_process("append", new, "Carrying on after the handoff")
    page.wait_for_selector(f"#e{seq} >> text=Carrying on after the handoff", timeout=LIVE_WITHIN_MS)
    shot(page, "handoff", tmp_path)


def test_a_script_in_a_message_does_not_run(site: Site, page: Any) -> None:
    page.goto(site.url(f"/t/{site.filled.hostile}"))
    page.wait_for_selector("#live-state.on")
    assert page.evaluate("window.__pwned === undefined")
    assert page.title() != "pwned"
    body = page.locator(".msg .md").first.inner_text()
    assert "<script>window.__pwned = 1;" in body and "<img src=x" in body
    assert page.locator(".msg .md script, .msg .md img").count() == 0
    assert page.locator("h1").inner_text().endswith("Hostile <b>title</b>")


def test_the_markdown_export_downloads(site: Site, page: Any, tmp_path: Path) -> None:
    page.goto(site.url(f"/t/{site.filled.worker}"))
    with page.expect_download() as got:
        page.click("a[href$='/export/thread.md']")
    download = got.value
    assert download.suggested_filename == f"thread-{site.filled.worker}.md"
    target = tmp_path / download.suggested_filename
    download.save_as(str(target))
    text = target.read_text()
    assert text.startswith("# Run the test suite\n")
    assert "tool call `bash`" in text and "412 passed in 9.1s" in text and "| status | completed |" in text


def test_a_running_threads_row_updates_live(site: Site, page: Any) -> None:
    tid = site.running[2]
    page.goto(site.url("/?agent=worker"))
    row = page.locator(f"#row-{tid} td.c-num").first
    before = int(row.inner_text())
    page.wait_for_timeout(300)  # the rows stream is open once the page has loaded
    site.other_process("append", tid, "one more step")
    page.wait_for_function(
        f"() => document.querySelector('#row-{tid} td.c-num').textContent.trim() === '{before + 1}'",
        timeout=LIVE_WITHIN_MS * 3,
    )


def test_a_long_thread_opens_at_its_latest_events_and_loads_back(site: Site, page: Any) -> None:
    page.goto(site.url(f"/t/{site.long}"))
    page.click(".tl-head .jump")  # "latest"
    page.wait_for_url(f"**/t/{site.long}?at=end")
    assert page.locator("#e160").count() == 1 and page.locator("#e2").count() == 0  # the last call
    page.click("#earlier")
    page.wait_for_selector("#e2")
    calls = page.locator("details.tool")
    assert calls.count() == 80
    assert page.locator(".tool-result").count() == 0  # every result beside its call
    assert page.locator("details.tool.pending").count() == 0
    assert page.locator("#earlier").count() == 0


def test_a_new_child_appears_on_its_parents_page(site: Site, page: Any) -> None:
    parent = site.running[2]
    page.goto(site.url(f"/t/{parent}"))
    page.wait_for_selector("#live-state.on")
    assert not page.locator("section.children").is_visible()
    page.goto(site.url(f"/t/{site.filled.parent}"))  # an orchestrator with children
    page.wait_for_selector("section.children tr.row")
    page.goto(site.url(f"/t/{parent}"))
    page.wait_for_selector("#live-state.on")
    child = site.other_process("child", parent, "Spawned while you watched")
    page.wait_for_selector(
        f"section.children #row-{child} >> text=Spawned while you watched", timeout=LIVE_WITHIN_MS * 3
    )
