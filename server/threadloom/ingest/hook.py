"""``threadloom hook claude-code``: live capture from Claude Code's hooks.

Claude Code runs the command on its session, prompt, tool, stop, subagent-stop and
pre-compact events with a JSON object on stdin (``session_id``, ``transcript_path``,
``hook_event_name``, ``cwd``, and for subagents ``agent_transcript_path``). The hook
ingests the lines of that transcript that are new since the last call, then exits.

It must never get in the way of the session: it prints nothing on stdout (Claude Code
would show it to the model for some events), it reads its input and then leaves the
ingest to a detached child process (so the session waits only for the interpreter to
start), it imports neither the MCP SDK nor the CLI's libraries, and whatever goes wrong
is written to ``<root>/ingest/hook.log`` while the exit code stays 0.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

MAX_INPUT = 1_048_576
"""Most bytes of hook JSON read from stdin."""
LOCK_WAIT = 2.0
BACKGROUND_LOCK_WAIT = 30.0
"""A detached ingest makes nobody wait, so it waits longer for another one to finish."""
FOREGROUND_ENV = "THREADLOOM_HOOK_FOREGROUND"
FLUSH_EVENTS = frozenset({"Stop", "SubagentStop", "PreCompact", "SessionEnd"})
"""Events after which a held-back usage is written (a turn, or the session, ended)."""
LOG_NAME = "hook.log"
LOG_MAX = 1_048_576
"""The log is set aside (``hook.log.1``) once it grows past this many bytes."""
USAGE = (
    "usage: threadloom hook claude-code [--root DIR] [--foreground]  (reads Claude Code's hook JSON on stdin)"
)


def _root_from(argv: list[str]) -> Path:
    for i, arg in enumerate(argv):
        if arg == "--root" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--root="):
            return Path(arg.split("=", 1)[1])
    from ..config import DEFAULT_ROOT

    return Path(os.environ.get("THREADLOOM_HOME") or DEFAULT_ROOT)


def log(root: Path, message: str) -> None:
    """Append one entry to ``<root>/ingest/hook.log`` (0600); never raises."""
    try:
        folder = Path(root) / "ingest"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = folder / LOG_NAME
        try:
            if path.stat().st_size > LOG_MAX:
                os.replace(path, folder / (LOG_NAME + ".1"))
        except FileNotFoundError:
            pass
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            f.write(f"{stamp} {message.rstrip()}\n")
    except Exception:  # the log is the last resort: nothing more to do
        pass


def read_input(stream: Any) -> dict[str, Any]:
    """The hook's JSON object from ``stream``; ValueError when it is not one."""
    if stream is None or (hasattr(stream, "isatty") and stream.isatty()):
        raise ValueError("no hook JSON on stdin (it is a terminal)")
    raw = stream.buffer.read(MAX_INPUT + 1) if hasattr(stream, "buffer") else stream.read(MAX_INPUT + 1)
    if isinstance(raw, str):
        raw = raw.encode()
    if len(raw) > MAX_INPUT:
        raise ValueError(f"hook JSON is over {MAX_INPUT} bytes")
    data = json.loads(raw or b"null")
    if not isinstance(data, dict):
        raise ValueError(f"hook JSON must be an object; got {type(data).__name__}")
    return data


def check_input(data: dict[str, Any]) -> None:
    """Refuse hook JSON without a readable ``transcript_path`` before anything is detached."""
    path = data.get("transcript_path")
    if not isinstance(path, str) or not path:
        raise ValueError(f"hook JSON has no transcript_path (event {data.get('hook_event_name') or '?'})")
    if not Path(path).expanduser().is_file():
        raise ValueError(f"{path}: no such transcript (event {data.get('hook_event_name') or '?'})")


async def run_hook(root: Path, data: dict[str, Any], lock_wait: float = LOCK_WAIT) -> Any:
    """Ingest the transcript(s) named in ``data``; returns the report."""
    from ..config import load_settings
    from ..service import ThreadService
    from .runner import Ingester, IngestReport
    from .vendors import vendor

    event = str(data.get("hook_event_name") or "")
    main = data.get("transcript_path")
    if not isinstance(main, str) or not main:
        raise ValueError(f"hook JSON has no transcript_path (event {event or '?'})")
    session_file = Path(main).expanduser()
    agents: list[Path] = []
    agent = data.get("agent_transcript_path")
    if isinstance(agent, str) and agent:
        agents.append(Path(agent).expanduser())
    if event in FLUSH_EVENTS:  # a subagent may have finished: its file sits beside the session
        folder = session_file.with_suffix("") / "subagents"
        if folder.is_dir():
            agents += sorted(p for p in folder.glob("agent-*.jsonl") if p not in agents)
    settings = load_settings({"root": root})
    report = IngestReport("claude-code")
    async with ThreadService.for_settings(settings, repair=False) as svc:
        # a live session is never "idle": only SessionEnd (SubagentStop for a subagent) ends it
        ing = Ingester(svc, vendor("claude-code"), idle_after=float("inf"), lock_wait=lock_wait)
        for f, ends in [(session_file, event == "SessionEnd")] + [
            (a, event in ("SubagentStop", "SessionEnd")) for a in agents
        ]:
            if f.is_file():
                await ing.ingest_file(f, report, finish=ends, flush=event in FLUSH_EVENTS)
            else:
                report.problems.append(f"{f}: no such transcript")
    return report


def work(root: Path, data: dict[str, Any], lock_wait: float) -> None:
    """Ingest what ``data`` names and log every problem (raises only on a bug)."""
    import anyio

    report = anyio.run(run_hook, root, data, lock_wait)
    notes = report.problems + [f"{r['file']}: {r['reason']}" for r in report.rewritten]
    notes += [f"{b}: busy (another ingest held its lock for {lock_wait:.0f} s)" for b in report.busy]
    for p in notes:
        log(root, f"{data.get('hook_event_name')}: {p}")
    for m in report.malformed:
        log(root, f"malformed line {m['file']}:{m['line']}: {m['error']}")


def _detach() -> bool:
    """Fork; the parent returns True at once (Claude Code goes on), the child carries on
    in its own session with stdin, stdout and stderr on /dev/null."""
    if not hasattr(os, "fork") or os.environ.get(FOREGROUND_ENV):
        return False
    if os.fork():
        return True
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    return False


def main(argv: list[str] | None = None, stdin: Any = None) -> int:
    """``threadloom hook claude-code``: always exits 0 (problems go to the log).

    The hook's JSON is read and checked in the foreground (nothing but the standard
    library is imported by then); the ingest itself runs in a detached child, so the
    session waits only for a bare interpreter's start-up. ``--foreground`` (or
    ``$THREADLOOM_HOOK_FOREGROUND``) does the ingest before returning.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = argv[1:] if argv and argv[0] == "hook" else argv
    if args[:1] in (["-h"], ["--help"]):
        sys.stderr.write(USAGE + "\n")
        return 0
    if "--foreground" in args:
        os.environ[FOREGROUND_ENV] = "1"
    root = _root_from(args)
    child = False
    try:
        if not args or args[0] != "claude-code":
            raise ValueError(f"hook knows claude-code only; got {args[:1]} ({USAGE})")
        data = read_input(sys.stdin if stdin is None else stdin)
        check_input(data)
        if _detach():
            return 0
        child = not os.environ.get(FOREGROUND_ENV) and hasattr(os, "fork")
        work(root, data, BACKGROUND_LOCK_WAIT if child else LOCK_WAIT)
    except BaseException as exc:  # noqa: BLE001 - a hook must never fail the session
        if not isinstance(exc, KeyboardInterrupt):
            log(root, f"hook failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    if child:
        os._exit(0)  # the detached child never returns into its caller
    return 0
