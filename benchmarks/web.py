"""The web inspector: first screen of a 10,000-event thread, and live-tail latency.

    python3 dev.py run python benchmarks/web.py [--rounds N] [--events N]

A root gets a thread of 10,000 events (messages, tool calls with results, a result event
every 20) and a 100-event thread (the baseline); `threadloom ui` serves it. Measured:

- the server: GET /t/{id} until the whole page has arrived (http.client, same machine);
- headless Chromium (Debian's chromium via Playwright): navigation start to first
  contentful paint (else the first frame after parsing) and to DOMContentLoaded of the
  thread page, a new tab each round in one browser context (the stylesheet and script
  cached, as for a reader moving between threads);
- live tail: another process appends (and prints the wall-clock time its append was
  acknowledged); latency to the SSE message at a raw stream reader, and to the event's
  element appearing in an open page (a MutationObserver stamps it with Date.now()).

Prints a table and writes benchmarks/results/web.json with ratios against the 100-event
thread and against the inspector's 404 page (the same stylesheet and script, no data:
the browser's own floor on this machine), both measured in the same run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "server"))

from threadloom.config import Settings  # noqa: E402
from threadloom.service import ThreadService  # noqa: E402
from threadloom.store import SQLiteStore  # noqa: E402

RESULTS = HERE / "results"
WRITER = """
import sys, time, anyio
from pathlib import Path
from threadloom.config import Settings
from threadloom.service import ThreadService
from threadloom.store import SQLiteStore
async def main(root, tid):
    s = Settings(root=Path(root), durability="normal")
    async with ThreadService(SQLiteStore(s.root, durability="normal"), s) as svc:
        print("ready", flush=True)
        for line in sys.stdin:
            out = await svc.append(tid, [{"role": "assistant", "text": line.strip()}], single=True)
            print(out.seq, time.time(), flush=True)
anyio.run(main, sys.argv[1], sys.argv[2])
"""


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(pct(values, 50), 2), "p99_ms": round(pct(values, 99), 2), "n": len(values)}


async def build(root: Path, events: int) -> tuple[str, str, str]:
    settings = Settings(root=root, durability="normal")
    async with ThreadService(SQLiteStore(root, durability="normal"), settings) as svc:
        ids = []
        for total in (events, 100):
            t = await svc.create_thread(title=f"{total} events", context_window=10_000_000)
            batch: list[dict[str, Any]] = []
            i = 0
            while i < total - 1:
                k = i % 20
                if k == 19:
                    batch.append({"type": "result", "cost": 0.01, "input_tokens": 900, "output_tokens": 120})
                elif k % 3 == 1:
                    batch.append({"type": "tool_use", "id": f"c{i}", "name": "grep", "input": {"q": f"x{i}"}})
                    batch.append({"type": "tool_result", "tool_use_id": f"c{i}", "output": f"line {i}\n" * 3})
                    i += 1
                else:
                    role = "user" if k % 2 else "assistant"
                    batch.append(
                        {
                            "role": role,
                            "text": f"Step {i}: **checked** the `module` and moved on.\n\n- a\n- b",
                        }
                    )
                i += 1
                if len(batch) >= 500:
                    await svc.append(t.thread_id, batch)
                    batch = []
            if batch:
                await svc.append(t.thread_id, batch)
            ids.append(t.thread_id)
        live = await svc.create_thread(title="live")
        await svc.append(live.thread_id, [{"role": "user", "text": "go"}])
        return ids[0], ids[1], live.thread_id


def get(port: int, path: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    start = time.perf_counter()
    conn.request("GET", path)
    r = conn.getresponse()
    r.read()
    took = (time.perf_counter() - start) * 1000
    conn.close()
    assert r.status == 200, (path, r.status)
    return took


def browser_paint(port: int, path: str, rounds: int) -> tuple[list[float], list[float]]:
    from playwright.sync_api import sync_playwright

    fcp, dcl = [], []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        ctx = b.new_context(viewport={"width": 1280, "height": 860})  # one reader: CSS and JS cached
        for _ in range(rounds + 1):
            pg = ctx.new_page()
            # the first frame after the HTML was parsed: what the reader sees first
            pg.add_init_script(
                "document.addEventListener('DOMContentLoaded', () => requestAnimationFrame(() =>"
                " setTimeout(() => { window.__frame = performance.now(); })))"
            )
            pg.goto(f"http://127.0.0.1:{port}{path}", wait_until="load")
            pg.wait_for_function("() => window.__frame !== undefined")
            got = pg.evaluate(
                """() => ({
                  fcp: (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || window.__frame,
                  dcl: performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd })"""
            )
            pg.close()
            fcp.append(got["fcp"])
            dcl.append(got["dcl"])
        ctx.close()
        b.close()
    return fcp[1:], dcl[1:]  # the first round warms the browser's caches


def live_latency(
    root: Path, port: int, tid: str, rounds: int, env: dict[str, str]
) -> tuple[list[float], list[float]]:
    from playwright.sync_api import sync_playwright

    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), tid],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stdin is not None
    assert writer.stdout.readline().strip() == "ready"
    sse = socket.create_connection(("127.0.0.1", port))
    sse.sendall(
        f"GET /t/{tid}/live HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    sse.settimeout(10)
    buf = b""
    raw, dom = [], []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        pg = b.new_page()
        pg.goto(f"http://127.0.0.1:{port}/t/{tid}")
        pg.wait_for_selector("#live-state.on")
        pg.evaluate(
            """() => { window.seen = {}; new MutationObserver(ms => { for (const m of ms) for (const n of m.addedNodes)
                 if (n.dataset && n.dataset.seq) window.seen[n.dataset.seq] = Date.now(); })
                 .observe(document.getElementById('timeline'), {childList: true}); }"""
        )
        for i in range(rounds):
            writer.stdin.write(f"live {i}\n")
            writer.stdin.flush()
            seq_s, acked = writer.stdout.readline().split()
            while f"id: {seq_s}\n".encode() not in buf:
                buf += sse.recv(65536)
            raw.append((time.time() - float(acked)) * 1000)
            pg.wait_for_function(f"() => window.seen['{seq_s}'] !== undefined", timeout=5000)
            dom.append(pg.evaluate(f"window.seen['{seq_s}']") - float(acked) * 1000)
            time.sleep(0.05)
        b.close()
    sse.close()
    writer.stdin.close()
    writer.wait(timeout=30)
    return raw, dom


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--events", type=int, default=10_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tl-web-bench-"))
    root = tmp / "root"
    big, small, live = anyio.run(build, root, args.events)
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "server"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "threadloom", "ui", "--root", str(root), "--port", str(port)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        for path in (f"/t/{big}", f"/t/{small}"):
            get(port, path)  # warm up
        out: dict[str, Any] = {"events": args.events, "rounds": args.rounds}
        out["server_page_big"] = summary([get(port, f"/t/{big}") for _ in range(args.rounds)])
        out["server_page_small"] = summary([get(port, f"/t/{small}") for _ in range(args.rounds)])
        out["server_static_css"] = summary([get(port, "/static/app.css") for _ in range(args.rounds)])
        fcp_b, dcl_b = browser_paint(port, f"/t/{big}", max(5, args.rounds // 2))
        fcp_s, dcl_s = browser_paint(port, f"/t/{small}", max(5, args.rounds // 2))
        fcp_f, dcl_f = browser_paint(port, "/nowhere", max(5, args.rounds // 2))  # a page with no data
        out["browser_fcp_big"], out["browser_dcl_big"] = summary(fcp_b), summary(dcl_b)
        out["browser_fcp_small"], out["browser_dcl_small"] = summary(fcp_s), summary(dcl_s)
        out["browser_fcp_floor"], out["browser_dcl_floor"] = summary(fcp_f), summary(dcl_f)
        raw, dom = live_latency(root, port, live, args.rounds, env)
        out["live_sse_message"], out["live_page_element"] = summary(raw), summary(dom)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = {
        "page_big_vs_small": round(out["server_page_big"]["p50_ms"] / out["server_page_small"]["p50_ms"], 2),
        "fcp_big_vs_small": round(out["browser_fcp_big"]["p50_ms"] / out["browser_fcp_small"]["p50_ms"], 2),
        "fcp_big_vs_floor": round(out["browser_fcp_big"]["p50_ms"] / out["browser_fcp_floor"]["p50_ms"], 2),
    }
    out["ratios"] = ratios
    print(f"{'measure':<58} {'p50 ms':>8} {'p99 ms':>8} {'n':>4}")
    labels = {
        "server_page_big": f"GET /t/ID, {args.events} events, whole page",
        "server_page_small": "GET /t/ID, 100 events, whole page (baseline)",
        "server_static_css": "GET /static/app.css (floor)",
        "browser_fcp_big": f"Chromium: first paint (FCP, else first frame), {args.events} events",
        "browser_dcl_big": f"Chromium: DOMContentLoaded, {args.events} events",
        "browser_fcp_small": "Chromium: first paint, 100 events (baseline)",
        "browser_dcl_small": "Chromium: DOMContentLoaded, 100 events",
        "browser_fcp_floor": "Chromium: first paint of the 404 page (floor, no data)",
        "browser_dcl_floor": "Chromium: DOMContentLoaded of the 404 page",
        "live_sse_message": "another process's append acked -> SSE message read",
        "live_page_element": "another process's append acked -> element in the page",
    }
    for key, label in labels.items():
        r = out[key]
        print(f"{label:<58} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['n']:>4}")
    print(
        f"ratios (p50): {json.dumps(ratios)}; stdev of FCP big {statistics.pstdev(fcp_b):.1f} ms; load {os.getloadavg()[0]:.1f}"
    )
    out["load_average"] = round(os.getloadavg()[0], 2)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "web.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS / 'web.json'}")


if __name__ == "__main__":
    main()
