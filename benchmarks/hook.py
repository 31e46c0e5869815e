"""The cost of `threadloom hook claude-code` per Claude Code event, next to same-run baselines.

    python3 dev.py run python benchmarks/hook.py [--samples N]

Each sample is one whole process, as Claude Code starts it: wall time from spawn to exit.

- ``python -c pass``: the interpreter's own start-up (the floor of any hook written in Python);
- ``python -c "import threadloom.service"``: the floor of anything that opens a threadloom store;
- the hook as installed (it reads its input, detaches the ingest and returns): what the
  Claude Code session waits for, after two new lines;
- the same ingest in the foreground (``--foreground``), with nothing new and after two
  new lines (a prompt and an answer): the work the detached process does;
- ``threadloom ls --json``: a CLI command, for scale.

Prints a table and writes benchmarks/results/hook.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "server"
FIXTURE = ROOT / "tests" / "fixtures" / "claude-code" / "projects" / "-home-dev-demo"
SESSION = "5f0c2d1e-aaaa-4bbb-8ccc-000000000001"
RESULTS = Path(__file__).resolve().parent / "results"


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(SERVER) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def timed(cmd: list[str], stdin: str | None = None, extra: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        cmd, input=stdin, env={**env(), **(extra or {})}, check=True, capture_output=True, text=True
    )
    return time.perf_counter() - t0


def caught_up(root: Path, transcript: Path, timeout: float = 120.0) -> None:
    """Wait until the detached ingest has read the whole transcript."""
    deadline = time.monotonic() + timeout
    size = transcript.stat().st_size
    while time.monotonic() < deadline:
        for f in (root / "ingest" / "state").glob("*.json"):
            if json.loads(f.read_text()).get("offset") == size:
                return
        time.sleep(0.05)
    raise SystemExit("the detached hook did not catch up")


def stats(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {
        "median_ms": statistics.median(xs) * 1000,
        "p90_ms": xs[min(len(xs) - 1, round(0.9 * (len(xs) - 1)))] * 1000,
        "samples": len(xs),
    }


def new_lines(n: int) -> str:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    base = {"sessionId": SESSION, "cwd": "/home/dev/demo", "version": "2.0.14", "timestamp": ts}
    user = {**base, "type": "user", "uuid": f"bu{n}", "message": {"role": "user", "content": f"prompt {n}"}}
    answer = {
        **base,
        "type": "assistant",
        "uuid": f"ba{n}",
        "message": {
            "id": f"msg_bench_{n}",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": f"answer {n}"}],
            "usage": {"input_tokens": 10, "output_tokens": 5},
        },
    }
    return json.dumps(user) + "\n" + json.dumps(answer) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=15)
    args = ap.parse_args()
    py = [sys.executable]
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "root"
        transcript = Path(d) / f"{SESSION}.jsonl"
        shutil.copy(FIXTURE / f"{SESSION}.jsonl", transcript)
        hook_json = json.dumps(
            {"session_id": SESSION, "transcript_path": str(transcript), "hook_event_name": "PostToolUse"}
        )
        hook = py + ["-m", "threadloom", "hook", "claude-code", "--root", str(root)]
        fg = {"THREADLOOM_HOOK_FOREGROUND": "1"}
        first = timed(hook, hook_json, fg)  # the first call reads the whole transcript
        keys = ("pass", "import_service", "detached", "idle", "two_lines", "ls")
        runs: dict[str, list[float]] = {k: [] for k in keys}
        for i in range(args.samples):  # interleaved, so that load on the machine hits all alike
            runs["pass"].append(timed(py + ["-c", "pass"]))
            runs["import_service"].append(timed(py + ["-c", "import threadloom.service"]))
            with open(transcript, "a") as f:
                f.write(new_lines(2 * i))
            runs["detached"].append(timed(hook, hook_json))
            caught_up(root, transcript)
            runs["idle"].append(timed(hook, hook_json, fg))
            with open(transcript, "a") as f:
                f.write(new_lines(2 * i + 1))
            runs["two_lines"].append(timed(hook, hook_json, fg))
            runs["ls"].append(timed(py + ["-m", "threadloom", "ls", "--json", "--root", str(root)]))
        log = root / "ingest" / "hook.log"
        errors = log.read_text().count("hook failed") if log.exists() else 0
    s = {k: stats(v) for k, v in runs.items()}
    base = s["pass"]["median_ms"]
    result = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "samples": args.samples,
        "first_call_whole_transcript_ms": first * 1000,
        "hook_errors_logged": errors,
        "runs": s,
        "ratios_vs_python_pass": {k: v["median_ms"] / base for k, v in s.items()},
    }
    names = {
        "pass": "python -c pass (baseline)",
        "import_service": "python -c 'import threadloom.service'",
        "detached": "hook as installed (returns, ingest detached)",
        "idle": "hook --foreground, nothing new",
        "two_lines": "hook --foreground, two new lines",
        "ls": "threadloom ls --json",
    }
    width = max(len(n) for n in names.values())
    print(f"{'measure':<{width}}  {'median':>9}  {'p90':>9}  vs python -c pass")
    for key, name in names.items():
        print(
            f"{name:<{width}}  {s[key]['median_ms']:>7.0f}ms  {s[key]['p90_ms']:>7.0f}ms  "
            f"{s[key]['median_ms'] / base:.1f}x"
        )
    print(f"first call (whole {SESSION}.jsonl): {first * 1000:.0f} ms; hook errors logged: {errors}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hook.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / 'hook.json'}")


if __name__ == "__main__":
    main()
