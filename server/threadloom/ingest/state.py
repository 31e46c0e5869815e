"""What ingest remembers between runs: one small JSON state file per source file.

``<root>/ingest/state/<key>.json`` (0600, folder 0700) holds where the last run stopped
in the source file (byte offset and line number), hashes of the first and of the last
bytes read up to there (so a rewritten or truncated file is noticed), the threads the
session went to, and the parser's carry-over (a usage not yet written, the title found).
``<root>/ingest/sessions/<vendor>-<session id>.json`` names the thread of each session,
so that a subagent or spawned session finds its parent's thread.

A per-source lock (``fcntl.flock`` on ``<key>.lock``) keeps two ingests of one file (a
hook and ``--watch``, say) from reading the same lines twice. Files are replaced
atomically (write a temporary file, then rename), never edited in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_VERSION = 1
WINDOW = 4096
"""Bytes hashed at the head and at the tail of what was read (see :func:`window_hashes`)."""
LOCK_WAIT = 5.0
"""Seconds to wait for another process ingesting the same file before giving up."""


def ingest_dir(root: Path) -> Path:
    path = Path(root) / "ingest"
    for sub in (path, path / "state", path / "sessions"):
        sub.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def source_key(path: Path) -> str:
    return hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:32]


def window_hashes(f: Any, offset: int) -> tuple[str, str]:
    """SHA-256 of bytes [0, min(WINDOW, offset)) and of [max(0, offset - WINDOW), offset) of ``f``."""
    f.seek(0)
    head = hashlib.sha256(f.read(min(WINDOW, offset))).hexdigest()
    start = max(0, offset - WINDOW)
    f.seek(start)
    tail = hashlib.sha256(f.read(offset - start)).hexdigest()
    return head, tail


@dataclass
class SourceState:
    """The ingest position of one source file and the session's threads."""

    source_file: str
    vendor: str
    offset: int = 0
    line: int = 0
    head_sha256: str = ""
    tail_sha256: str = ""
    session_id: str | None = None
    thread_id: str | None = None
    """The thread new lines go to (the current end of the session's chain)."""
    root_thread_id: str | None = None
    """The session's first thread (children of the session hang under it)."""
    parser: dict[str, Any] = field(default_factory=dict)
    pending: dict[str, Any] | None = None
    """Lines [start, end) being appended right now (written first, so a crash replays them
    under the same idempotency key instead of writing them twice)."""
    rewritten: str | None = None
    """Set when the file no longer matches what was read: the reason; never ingested again."""
    completed: bool = False
    version: int = STATE_VERSION
    updated_at: float = 0.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SourceState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class StateStore:
    """State and session index files under ``<root>/ingest``."""

    def __init__(self, root: Path) -> None:
        self.dir = ingest_dir(root)

    def load(self, source: Path, vendor: str) -> SourceState:
        data = _read_json(self.dir / "state" / f"{source_key(source)}.json")
        if data is None:
            return SourceState(source_file=str(Path(source).resolve()), vendor=vendor)
        return SourceState.from_json(data)

    def save(self, state: SourceState) -> None:
        state.updated_at = time.time()
        _write_json(self.dir / "state" / f"{source_key(Path(state.source_file))}.json", asdict(state))

    @contextlib.contextmanager
    def lock(self, source: Path, wait: float = LOCK_WAIT) -> Iterator[bool]:
        """Hold the source's lock; yields False when another process kept it for ``wait`` s."""
        import fcntl

        path = self.dir / "state" / f"{source_key(source)}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(0.02)
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _session_path(self, vendor: str, session_id: str) -> Path:
        safe = hashlib.sha256(session_id.encode()).hexdigest()[:32]
        return self.dir / "sessions" / f"{vendor}-{safe}.json"

    def session(self, vendor: str, session_id: str) -> dict[str, Any] | None:
        """The index entry of a session: ``root_thread_id``, ``source_file``; None if unknown."""
        return _read_json(self._session_path(vendor, session_id))

    def set_session(self, vendor: str, session_id: str, root_thread_id: str, source_file: str) -> None:
        _write_json(
            self._session_path(vendor, session_id),
            {"session_id": session_id, "root_thread_id": root_thread_id, "source_file": source_file},
        )
