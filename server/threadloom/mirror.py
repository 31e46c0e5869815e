"""File mirrors of the database: ``threads/<id>/transcript.jsonl`` and ``thread.json``.

The database is the commit point; these files are written after each commit and
repaired from the database on start-up. Several processes may share a root, so
every write happens under an exclusive ``flock`` on the thread's transcript and
re-reads the database inside the lock: whoever writes last writes the newest state,
and transcript lines are appended strictly in seq order.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from .models import StoredEvent, Thread, canonical_json, check_thread_id

log = logging.getLogger("threadloom.mirror")

TRANSCRIPT = "transcript.jsonl"
MANIFEST = "thread.json"

FetchEvents = Callable[[int], list[StoredEvent]]
"""Events of the thread with seq greater than the argument, from the database."""
FetchThread = Callable[[], Thread]


SNAPSHOT_EXCLUDE = frozenset({"event_count", "text_chars", "input_tokens", "updated_at", "heartbeat_at", "children"})
"""Fields left out of thread.json: they move on every append and live in the database;
the snapshot changes (and is rewritten) only when the manifest itself changes."""


def manifest_bytes(thread: Thread) -> bytes:
    """The bytes of ``thread.json`` for a manifest (canonical JSON and a newline)."""
    return (canonical_json(thread.model_dump(mode="json", exclude=set(SNAPSHOT_EXCLUDE))) + "\n").encode()


def transcript_bytes(events: list[StoredEvent]) -> bytes:
    """The bytes of a transcript made of ``events`` (one line each, newline-terminated)."""
    return "".join(e.line + "\n" for e in events).encode()


class Mirror:
    """Writes and repairs the per-thread files under ``<root>/threads``."""

    MAX_OPEN = 128

    def __init__(self, root: Path) -> None:
        self.root = root / "threads"
        self.root.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, tuple[int, int]] = {}  # thread_id -> (file size, last seq)
        self._versions: dict[str, int] = {}  # thread_id -> manifest version this process wrote
        self._fds: dict[str, int] = {}  # open transcript descriptors, least recently used first

    def _open(self, thread_id: str) -> int:
        fd = self._fds.pop(thread_id, None)
        if fd is not None and os.fstat(fd).st_nlink == 0:  # deleted under us: start afresh
            os.close(fd)
            fd = None
            self._cache.pop(thread_id, None)
        if fd is None:
            d = self.thread_dir(thread_id)
            d.mkdir(exist_ok=True)
            fd = os.open(d / TRANSCRIPT, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            while len(self._fds) >= self.MAX_OPEN:
                os.close(self._fds.pop(next(iter(self._fds))))
        self._fds[thread_id] = fd
        return fd

    def _forget(self, thread_id: str) -> None:
        fd = self._fds.pop(thread_id, None)
        if fd is not None:
            os.close(fd)
        self._cache.pop(thread_id, None)
        self._versions.pop(thread_id, None)

    def close(self) -> None:
        """Close every cached descriptor."""
        for tid in list(self._fds):
            self._forget(tid)

    def thread_dir(self, thread_id: str) -> Path:
        return self.root / check_thread_id(thread_id)

    def transcript_path(self, thread_id: str) -> Path:
        return self.thread_dir(thread_id) / TRANSCRIPT

    def manifest_path(self, thread_id: str) -> Path:
        return self.thread_dir(thread_id) / MANIFEST

    # ------------------------------------------------------------------ writing

    def sync(
        self,
        thread_id: str,
        fetch_events: FetchEvents,
        fetch_thread: FetchThread,
        *,
        rewrite: bool = False,
        appended: list[StoredEvent] | None = None,
        known: Thread | None = None,
        fetch_version: Callable[[], int] | None = None,
    ) -> None:
        """Bring both files of one thread up to the database's state.

        ``appended`` (events this process just committed) and ``known`` (the manifest it just
        read) spare queries when the file and the database have not moved since; the
        database is consulted inside the lock otherwise. ``rewrite`` rebuilds from scratch.
        """
        fd = self._open(thread_id)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            thread = known
            if thread is not None and fetch_version is not None and fetch_version() != thread.version:
                thread = None  # another process changed the manifest since: read it again
            if rewrite:
                thread = thread or fetch_thread()
                self._rewrite(thread_id, fd, fetch_events(0))
            elif not self._append_known(thread_id, fd, appended):
                thread = thread or fetch_thread()
                self._sync_transcript(thread_id, fd, fetch_events, thread.event_count)
            if thread is None and self._versions.get(thread_id) is None:
                thread = fetch_thread()
            if thread is not None and (rewrite or self._versions.get(thread_id) != thread.version):
                self._write_manifest(self.thread_dir(thread_id), thread)
        except BaseException:
            self._forget(thread_id)
            raise
        finally:
            if thread_id in self._fds:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _append_known(self, thread_id: str, fd: int, appended: list[StoredEvent] | None) -> bool:
        """Append ``appended`` straight from memory when the file ends just before them."""
        cached = self._cache.get(thread_id)
        if not appended or cached is None or cached[1] + 1 != appended[0].seq:
            return False
        if os.fstat(fd).st_size != cached[0]:
            return False
        data = transcript_bytes(appended)
        os.write(fd, data)
        self._cache[thread_id] = (cached[0] + len(data), appended[-1].seq)
        return True

    def _sync_transcript(self, thread_id: str, fd: int, fetch_events: FetchEvents, count: int) -> None:
        size = os.fstat(fd).st_size
        cached = self._cache.get(thread_id)
        if cached is not None and cached[0] == size:
            last = cached[1]
        else:
            size, last = _repair_tail(fd, size)
        if last > count:  # the file claims events the DB does not have
            self._rewrite(thread_id, fd, fetch_events(0))
            return
        events = fetch_events(last)
        expected = last + 1
        for ev in events:
            if ev.seq != expected:  # the file holds something the DB does not: rewrite it
                self._rewrite(thread_id, fd, fetch_events(0))
                return
            expected += 1
        if events:
            data = transcript_bytes(events)
            os.write(fd, data)
            size += len(data)
            last = events[-1].seq
        self._cache[thread_id] = (size, last)

    def _rewrite(self, thread_id: str, fd: int, events: list[StoredEvent]) -> None:
        data = transcript_bytes(events)
        os.ftruncate(fd, 0)
        os.write(fd, data)
        self._cache[thread_id] = (len(data), events[-1].seq if events else 0)

    def _write_manifest(self, d: Path, thread: Thread) -> None:
        self._versions[thread.thread_id] = thread.version
        data = manifest_bytes(thread)
        tmp = d / f".{MANIFEST}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, d / MANIFEST)

    def remove(self, thread_id: str) -> None:
        """Delete a thread's mirror folder (no error if it is already gone)."""
        import shutil

        self._forget(thread_id)
        shutil.rmtree(self.thread_dir(thread_id), ignore_errors=True)

    # ---------------------------------------------------------------- repairing

    def reconcile(self, thread: Thread, expected_bytes: int, fetch_events: FetchEvents) -> bool:
        """Repair one thread's files from the database; True if anything was fixed."""
        d = self.thread_dir(thread.thread_id)
        path = d / TRANSCRIPT
        fixed = False
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = -1
        if size != expected_bytes or (size > 0 and _last_line_seq(path) != thread.event_count):
            # shorter: append what is missing; anything else: rewrite from the DB
            self.sync(thread.thread_id, fetch_events, lambda: thread, rewrite=size > expected_bytes or size == expected_bytes)
            fixed = True
        want = manifest_bytes(thread)
        try:
            have = (d / MANIFEST).read_bytes()
        except FileNotFoundError:
            have = b""
        if have != want:
            d.mkdir(exist_ok=True)
            self._write_manifest(d, thread)
            fixed = True
        return fixed


def _last_line_seq(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return _repair_tail(fd, os.fstat(fd).st_size, repair=False)[1]
    finally:
        os.close(fd)


def _repair_tail(fd: int, size: int, *, repair: bool = True) -> tuple[int, int]:
    """Find the last complete line's seq; cut a torn (unterminated) last line off.

    Returns (size after repair, seq of the last complete line or 0).
    """
    if size == 0:
        return 0, 0
    chunk = 65536
    end = size
    buf = b""
    while True:
        start = max(0, end - chunk)
        buf = os.pread(fd, end - start, start) + buf
        end = start
        # a complete last line ends at the last b"\n"
        last_nl = buf.rfind(b"\n")
        if last_nl != -1:
            prev_nl = buf.rfind(b"\n", 0, last_nl)
            if prev_nl != -1 or start == 0:
                break
        elif start == 0:
            break
    last_nl = buf.rfind(b"\n")
    base = size - len(buf)
    if last_nl == -1:
        good_size = 0
        line = b""
    else:
        good_size = base + last_nl + 1
        prev_nl = buf.rfind(b"\n", 0, last_nl)
        line = buf[prev_nl + 1 : last_nl]
    if good_size != size and repair:
        log.warning("repairing a torn last line in a transcript (%d -> %d bytes)", size, good_size)
        os.ftruncate(fd, good_size)
    if not line:
        return good_size, 0
    try:
        return good_size, int(json.loads(line)["seq"])
    except (ValueError, KeyError, TypeError):
        return good_size, -1  # unreadable: the caller rewrites from the DB
