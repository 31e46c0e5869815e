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
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from . import capabilities as caps_md
from .integrity import Signer, manifest_signature_ok, sign_manifest
from .models import StoredEvent, Thread, canonical_json, check_thread_id

log = logging.getLogger("threadloom.mirror")
T = TypeVar("T")

TRANSCRIPT = "transcript.jsonl"
MANIFEST = "thread.json"
CAPABILITIES = caps_md.CAPABILITIES_FILE


@dataclass(frozen=True, slots=True)
class MirrorFiles:
    """The bytes of one thread's mirror files (None: the file does not exist)."""

    transcript: bytes | None
    manifest: bytes | None
    capabilities: bytes | None


FetchEvents = Callable[[int], list[StoredEvent]]
"""Events of the thread with seq greater than the argument, from the database."""
FetchThread = Callable[[], Thread]


SNAPSHOT_EXCLUDE = frozenset(
    {"event_count", "text_chars", "input_tokens", "updated_at", "heartbeat_at", "children", "usage"}
)
"""Fields left out of thread.json: they move on every append and live in the database;
the snapshot changes (and is rewritten) only when the manifest itself changes."""


def manifest_bytes(thread: Thread, signer: Signer | None = None) -> bytes:
    """The bytes of ``thread.json`` for a manifest (canonical JSON and a newline),
    with ``_signature`` when a signer is given."""
    data = thread.model_dump(mode="json", exclude=set(SNAPSHOT_EXCLUDE))
    if signer is not None:
        data = sign_manifest(data, signer)
    return (canonical_json(data) + "\n").encode()


def transcript_bytes(events: list[StoredEvent]) -> bytes:
    """The bytes of a transcript made of ``events`` (one line each, newline-terminated)."""
    return "".join(e.line + "\n" for e in events).encode()


class Mirror:
    """Writes and repairs the per-thread files under ``<root>/threads``."""

    MAX_OPEN = 128

    def __init__(self, root: Path, signer: Signer | None = None) -> None:
        self.signer = signer
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
        data = manifest_bytes(thread, self.signer)
        tmp = d / f".{MANIFEST}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, d / MANIFEST)
        if thread.capabilities is not None and self.signer is not None and not (d / CAPABILITIES).exists():
            self._write_once(
                d / CAPABILITIES, caps_md.render(thread.thread_id, thread.capabilities, self.signer)
            )

    @staticmethod
    def _write_once(path: Path, data: bytes) -> None:
        """Create ``path`` with ``data`` unless it exists (written once, never replaced)."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)

    # ------------------------------------------------------------------ reading

    def read_files(self, thread_id: str, read_db: Callable[[], T]) -> tuple[T, MirrorFiles]:
        """``read_db()`` and the thread's files, together under a shared lock on the transcript.

        Writers hold the lock exclusively while they write, so the files are whole lines and
        the database read inside the lock is at least as new as what they show.
        """
        d = self.thread_dir(thread_id)
        try:
            fd: int | None = os.open(d / TRANSCRIPT, os.O_RDONLY)
        except FileNotFoundError:
            fd = None
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_SH)
            db = read_db()
            transcript = _read_all(fd) if fd is not None else None
            return db, MirrorFiles(transcript, _read_or_none(d / MANIFEST), _read_or_none(d / CAPABILITIES))
        finally:
            if fd is not None:
                os.close(fd)

    def remove(self, thread_id: str) -> None:
        """Delete a thread's mirror folder (no error if it is already gone)."""
        import shutil

        self._forget(thread_id)
        shutil.rmtree(self.thread_dir(thread_id), ignore_errors=True)

    # ---------------------------------------------------------------- repairing

    def reconcile(self, thread: Thread, expected_bytes: int, fetch_events: FetchEvents) -> bool:
        """Repair what a crash between commit and mirror write left behind; True if fixed.

        Only that: a missing file, a transcript that lacks the tail of the thread's last
        commit (whole lines, perhaps a torn last one), a ``thread.json`` that is validly
        signed but older than the database. Anything else is evidence of tampering and is
        left alone for ``verify_thread`` to report (docs/integrity.md).
        """
        tid = thread.thread_id
        d = self.thread_dir(tid)
        path = d / TRANSCRIPT
        fixed = False
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = -1
        if size == -1:
            self.sync(tid, fetch_events, lambda: thread, rewrite=True)
            return True
        if size != expected_bytes or (size > 0 and _last_line_seq(path) != thread.event_count):
            if self._lags_last_commit(path, thread, fetch_events):
                self.sync(tid, fetch_events, lambda: thread)
                fixed = True
            else:
                log.warning(
                    "the transcript of thread %s differs from the database beyond a lost last write; "
                    "left as found (run `threadloom verify %s`)",
                    tid,
                    tid,
                )
        try:
            have: bytes | None = (d / MANIFEST).read_bytes()
        except FileNotFoundError:
            have = None
        if have != manifest_bytes(thread, self.signer):
            if have is None or self._stale_manifest(have, thread):
                d.mkdir(exist_ok=True)
                self._write_manifest(d, thread)
                fixed = True
            else:
                log.warning(
                    "thread.json of thread %s does not match its signature or the database; left as found",
                    tid,
                )
        if thread.capabilities is not None and self.signer is not None and not (d / CAPABILITIES).exists():
            self._write_once(d / CAPABILITIES, caps_md.render(tid, thread.capabilities, self.signer))
            fixed = True
        return fixed

    @staticmethod
    def _lags_last_commit(path: Path, thread: Thread, fetch_events: FetchEvents) -> bool:
        """True when the file is the database's transcript minus (part of) its last commit."""
        data = path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        have = complete.split(b"\n")[:-1] if complete else []
        events = fetch_events(0)
        if len(have) >= len(events) or not events:
            return False
        last_ts = events[-1].ts
        if any(e.ts != last_ts for e in events[len(have) :]):
            return False  # more than the last commit is missing: not a crash
        return all(line == ev.line.encode() for line, ev in zip(have, events))

    def _stale_manifest(self, have: bytes, thread: Thread) -> bool:
        """True when ``have`` is a validly signed (or pre-signing) older snapshot of ``thread``."""
        try:
            data = json.loads(have)
        except ValueError:
            return False
        if not isinstance(data, dict) or data.get("thread_id") != thread.thread_id:
            return False
        if self.signer is not None and "_signature" in data and not manifest_signature_ok(data, self.signer):
            return False
        version = data.get("version")
        signed_before = "_signature" not in data  # written before signing existed: upgrade it
        return signed_before or (isinstance(version, int) and version <= thread.version)


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _read_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


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
