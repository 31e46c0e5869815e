"""File mirrors of the database: ``threads/<id>/transcript.jsonl`` and ``thread.json``.

The database is the commit point; these files are written after each commit and
repaired from the database on start-up. Several processes may share a root, so
every write happens under an exclusive ``flock`` on the thread's transcript and
re-reads the database inside the lock: whoever writes last writes the newest state,
and transcript lines are appended strictly in seq order.

A mirror is only ever *completed* from the database (drift.py: "behind"). A transcript
that holds anything the database lacks (lines it lost, a forged or edited line) is
evidence: when a commit must write the file anyway, the file is **set aside** (renamed
beside itself with a timestamp, never deleted) and written again from the database, with a
warning naming the thread and the line counts; ``verify_thread`` and ``doctor`` report
every set-aside file until ``doctor --recover`` has reviewed it. Repair at start-up never
moves such a file: it leaves it as found for ``verify_thread``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from . import capabilities as caps_md
from .drift import Drift, compare, describe
from .integrity import Signer, manifest_signature_ok, sign_manifest
from .models import StoredEvent, Thread, canonical_json, check_thread_id
from .private import DIR_MODE, make_dir, write_new
from .private import FILE_MODE as FILE_MODE

log = logging.getLogger("threadloom.mirror")


class MirrorBusy(Exception):
    """Another process holds a thread's mirror lock and the caller chose not to wait
    (not an OSError: nothing failed, and a caller's handler of write errors must not take it)."""


T = TypeVar("T")

TRANSCRIPT = "transcript.jsonl"
MANIFEST = "thread.json"
CAPABILITIES = caps_md.CAPABILITIES_FILE
SET_ASIDE = ".set-aside-"
"""Infix of a set-aside file's name: ``transcript.jsonl.set-aside-20260102T030405.123456Z``."""
REVIEWED = ".reviewed"
"""Suffix ``doctor --recover`` adds to a set-aside file it has dealt with (kept, no longer reported)."""
LOCK_TRIES = 8
PATH_CACHE = 4096
"""Transcript paths kept as strings (thread ids are checked once, not per append)."""


@dataclass(frozen=True, slots=True)
class MirrorFiles:
    """The bytes of one thread's mirror files (None: the file does not exist)."""

    transcript: bytes | None
    manifest: bytes | None
    capabilities: bytes | None
    set_aside: tuple[str, ...] = ()
    """Names of transcripts set aside beside it that ``doctor --recover`` has not reviewed yet."""
    unreadable: str | None = None
    """Why the thread's folder could not be read at all (e.g. a file stands in its place)."""


FetchEvents = Callable[[int], list[StoredEvent]]
"""Events of the thread with seq greater than the argument, from the database."""
FetchThread = Callable[[], Thread]
FetchRow = Callable[[], tuple[Thread, int]]
"""The thread and the transcript bytes the database records for it (read inside the lock)."""


SNAPSHOT_EXCLUDE = frozenset(
    {"event_count", "text_chars", "input_tokens", "updated_at", "heartbeat_at", "children", "usage", "lease"}
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


def set_aside_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")


def set_aside(path: Path, *, replacement: bytes | None = None) -> Path:
    """Rename ``path`` beside itself with a timestamp (never over an existing name); return the new path.

    With ``replacement``, ``path`` then holds those bytes, swapped in atomically: the name
    never points at nothing, and the old bytes stay whole under the set-aside name.
    """
    stamp = set_aside_stamp()
    for n in range(1000):
        target = path.with_name(f"{path.name}{SET_ASIDE}{stamp}" + (f"-{n}" if n else ""))
        try:
            os.link(path, target)  # fails if the name is taken: nothing is ever replaced
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - a thousand set-asides in one microsecond
        raise FileExistsError(f"no free set-aside name beside {path}")
    if replacement is None:
        os.unlink(path)
    else:
        tmp = _tmp_name(path)
        write_new(tmp, replacement)
        os.replace(tmp, path)
    return target


def set_aside_files(folder: Path, name: str = TRANSCRIPT, *, reviewed: bool = False) -> list[Path]:
    """The set-aside copies of ``folder/name``, oldest first (only reviewed ones with ``reviewed``)."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    prefix = name + SET_ASIDE
    return sorted(folder / e for e in entries if e.startswith(prefix) and e.endswith(REVIEWED) == reviewed)


@dataclass(slots=True)
class Repair:
    """What :meth:`Mirror.repair` did to one thread's files, and what it left for ``verify`` to report."""

    thread_id: str
    changed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    drift: Drift | None = None


class Mirror:
    """Writes and repairs the per-thread files under ``<root>/threads``."""

    MAX_OPEN = 128

    def __init__(self, root: Path, signer: Signer | None = None) -> None:
        self.signer = signer
        self.root = root / "threads"
        make_dir(root)
        make_dir(self.root)
        self._cache: dict[str, tuple[int, int]] = {}  # thread_id -> (file size, last seq)
        self._versions: dict[str, int] = {}  # thread_id -> manifest version this process wrote
        self._fds: dict[str, int] = {}  # open transcript descriptors, least recently used first
        self._lock_paths: dict[str, str] = {}  # thread_id -> transcript path, checked and joined once

    def _open(self, thread_id: str) -> int:
        fd = self._fds.pop(thread_id, None)
        if fd is None:
            d = self.thread_dir(thread_id)
            d.mkdir(exist_ok=True, mode=DIR_MODE)
            fd = os.open(d / TRANSCRIPT, os.O_RDWR | os.O_CREAT | os.O_APPEND, FILE_MODE)
            while len(self._fds) >= self.MAX_OPEN:
                os.close(self._fds.pop(next(iter(self._fds))))
        self._fds[thread_id] = fd
        return fd

    def _lock(self, thread_id: str, *, wait: bool = True) -> int:
        """The thread's transcript descriptor, exclusively locked, and still the file at its path.

        A descriptor whose file was set aside, replaced or deleted since it was opened is
        reopened (checked after the lock is held, the usual lock-file protocol). With
        ``wait=False`` a lock another process holds raises :class:`MirrorBusy` instead.
        """
        path = self._lock_paths.get(thread_id)
        if path is None:  # a Path join per append costs more than the lock itself
            if len(self._lock_paths) >= PATH_CACHE:
                self._lock_paths.clear()
            path = self._lock_paths[thread_id] = os.fspath(self.transcript_path(thread_id))
        for _ in range(LOCK_TRIES):
            fd = self._open(thread_id)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise MirrorBusy(f"{path} is locked by another process") from None
            if _same_file(fd, path):
                return fd
            fcntl.flock(fd, fcntl.LOCK_UN)
            self._forget(thread_id)
        raise OSError(f"{path} kept being replaced while waiting for its lock")

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
        wait: bool = True,
    ) -> None:
        """Bring both files of one thread up to the database's state.

        ``appended`` (events this process just committed) and ``known`` (the manifest it just
        read) spare queries when the file and the database have not moved since; the
        database is consulted inside the lock otherwise. ``rewrite`` writes the transcript
        from scratch when it is not the database's already (setting the old one aside).
        ``wait=False``: raise :class:`MirrorBusy`, having written nothing, rather than wait
        for another process's lock (a caller on the event loop).
        """
        fd = self._lock(thread_id, wait=wait)
        try:
            thread = known
            if thread is not None and fetch_version is not None and fetch_version() != thread.version:
                thread = None  # another process changed the manifest since: read it again
            if rewrite:
                thread = thread or fetch_thread()
                fd = self._resolve(thread_id, fd, fetch_events)
            elif not self._append_known(thread_id, fd, appended):
                fd = self._sync_transcript(thread_id, fd, fetch_events)
            if thread is None and self._versions.get(thread_id) is None:
                thread = fetch_thread()
            if thread is not None and (rewrite or self._versions.get(thread_id) != thread.version):
                self._write_manifest(self.thread_dir(thread_id), thread)
        except BaseException:
            self._forget(thread_id)
            raise
        finally:
            if self._fds.get(thread_id) == fd:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _append_known(self, thread_id: str, fd: int, appended: list[StoredEvent] | None) -> bool:
        """Append ``appended`` straight from memory when the file ends just before them."""
        cached = self._cache.get(thread_id)
        if cached is None and appended and appended[0].seq == 1:
            cached = (0, 0)  # a new thread: its file must be empty (checked below)
        if not appended or cached is None or cached[1] + 1 != appended[0].seq:
            return False
        if os.fstat(fd).st_size != cached[0]:
            return False
        data = transcript_bytes(appended)
        os.write(fd, data)
        self._cache[thread_id] = (cached[0] + len(data), appended[-1].seq)
        return True

    def _sync_transcript(self, thread_id: str, fd: int, fetch_events: FetchEvents) -> int:
        """Append what the file lacks; anything unexpected goes to :meth:`_resolve`. Returns the fd."""
        size = os.fstat(fd).st_size
        cached = self._cache.get(thread_id)
        if cached is not None and cached[0] == size:
            last = cached[1]
            events = fetch_events(last)
            ok = not events or events[0].seq == last + 1
        else:  # not the file this process last wrote: check its last line against the database
            end, last, torn, last_line = _scan_tail(fd, size)
            events = fetch_events(max(0, last - 1)) if last > 0 else fetch_events(0)
            if last > 0:
                ok = bool(events) and events[0].seq == last and events[0].line.encode() == last_line
                events = events[1:]
            else:
                ok = last == 0 and end == 0
            ok = ok and not torn and (not events or events[0].seq == last + 1)
            size = end
        if not ok:
            return self._resolve(thread_id, fd, fetch_events)
        if events:
            data = transcript_bytes(events)
            os.write(fd, data)
            size += len(data)
            last = events[-1].seq
        self._cache[thread_id] = (size, last)
        return fd

    def _resolve(self, thread_id: str, fd: int, fetch_events: FetchEvents) -> int:
        """Compare the whole file with the database: complete it when it is behind, set it aside
        and write it again when it holds lines the database lacks. Returns the fd to use."""
        data = _read_all(fd)
        events = fetch_events(0)
        drift = compare(data, [e.line.encode() for e in events])
        if drift.kind == "holds":
            return self._replace(thread_id, fd, events, drift)
        if drift.kind == "behind":
            if drift.good_bytes != len(data):  # only a torn piece of the next line: nothing is lost
                os.ftruncate(fd, drift.good_bytes)
            os.write(fd, transcript_bytes(events[drift.common :]))
        self._cache[thread_id] = (len(transcript_bytes(events)), events[-1].seq if events else 0)
        return fd

    def _replace(self, thread_id: str, fd: int, events: list[StoredEvent], drift: Drift) -> int:
        """Set the transcript aside and write it again from ``events``; the new file's fd (unlocked)."""
        path = self.transcript_path(thread_id)
        data = transcript_bytes(events)
        aside = set_aside(path, replacement=data)
        log.warning(
            "thread %s: transcript.jsonl %s; it was set aside as %s (kept, never deleted) and written "
            "again from the database; `threadloom doctor --recover` restores what its signatures prove",
            thread_id,
            describe(drift),
            aside.name,
        )
        self._forget(thread_id)  # closing the old descriptor releases its lock
        new = self._open(thread_id)
        self._cache[thread_id] = (len(data), events[-1].seq if events else 0)
        return new

    def _write_manifest(self, d: Path, thread: Thread) -> None:
        self._versions[thread.thread_id] = thread.version
        data = manifest_bytes(thread, self.signer)
        tmp = _tmp_name(d / MANIFEST)
        write_new(tmp, data)
        os.replace(tmp, d / MANIFEST)
        if thread.capabilities is not None and self.signer is not None and not (d / CAPABILITIES).exists():
            self._write_once(
                d / CAPABILITIES, caps_md.render(thread.thread_id, thread.capabilities, self.signer)
            )

    @staticmethod
    def _write_once(path: Path, data: bytes) -> None:
        """Create ``path`` with ``data`` unless it exists (written once, never replaced)."""
        tmp = _tmp_name(path)
        write_new(tmp, data)
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
        read: list[T] = []
        try:
            with _shared_lock(d / TRANSCRIPT) as fd:
                read.append(read_db())
                transcript = _read_all(fd) if fd is not None else None
                aside = tuple(p.name for p in set_aside_files(d))
                return read[0], MirrorFiles(
                    transcript, _read_or_none(d / MANIFEST), _read_or_none(d / CAPABILITIES), aside
                )
        except OSError as exc:  # one unreadable thread is that thread's problem, never a crash
            db = read[0] if read else read_db()
            return db, MirrorFiles(None, None, None, (), unreadable=unreadable_reason(d, exc))

    def remove(self, thread_id: str) -> None:
        """Delete a thread's mirror folder (no error if it is already gone)."""
        import shutil

        self._forget(thread_id)
        shutil.rmtree(self.thread_dir(thread_id), ignore_errors=True)

    # ---------------------------------------------------------------- repairing

    def repair(self, thread_id: str, fetch_row: FetchRow, fetch_events: FetchEvents) -> Repair:
        """Complete one thread's files from the database, the way a crash between commit and
        mirror write needs; report (and leave as found) anything else.

        Under the transcript's exclusive lock, with the database read inside it: a file that
        is behind (a line prefix of the database, maybe with a torn piece of the next line) gets
        the missing lines; a missing ``thread.json``, or a validly signed older one, is written
        again; ``capabilities.md`` is written once. A transcript holding lines the database
        lacks, or a ``thread.json`` that fails its signature or is newer than the database, is
        evidence: left as found, named in ``problems``. Uses its own descriptor, so it may run
        beside this process's writer.
        """
        out = Repair(thread_id)
        d = self.thread_dir(thread_id)
        path = d / TRANSCRIPT
        existed = path.exists()
        d.mkdir(exist_ok=True, mode=DIR_MODE)
        fd = _open_locked(path)
        try:
            thread, expected = fetch_row()
            size = os.fstat(fd).st_size
            if size == expected and (size == 0 or _scan_tail(fd, size)[1] == thread.event_count):
                pass  # the usual case: the file ends where the database does
            else:
                data = _read_all(fd)
                events = fetch_events(0)
                out.drift = drift = compare(data, [e.line.encode() for e in events])
                if drift.kind == "behind":
                    if drift.good_bytes != len(data):
                        os.ftruncate(fd, drift.good_bytes)
                    os.write(fd, transcript_bytes(events[drift.common :]))
                    out.changed.append(
                        f"{TRANSCRIPT}: wrote lines {drift.common + 1}-{drift.db_lines}"
                        if existed
                        else f"{TRANSCRIPT}: written ({drift.db_lines} lines)"
                    )
                elif drift.kind == "holds":
                    out.problems.append(f"{TRANSCRIPT} {describe(drift)}")
            self._repair_manifest(d, thread, out)
        finally:
            os.close(fd)
        return out

    def _repair_manifest(self, d: Path, thread: Thread, out: Repair) -> None:
        have = _read_or_none(d / MANIFEST)
        verdict = "missing" if have is None else self._judge_manifest(have, thread)
        if verdict in ("missing", "stale"):
            self._write_manifest(d, thread)
            out.changed.append(f"{MANIFEST}: {'written' if verdict == 'missing' else 'brought up to date'}")
        elif verdict != "current":
            out.problems.append(f"{MANIFEST} {verdict}")
        if thread.capabilities is not None and self.signer is not None and not (d / CAPABILITIES).exists():
            self._write_once(
                d / CAPABILITIES, caps_md.render(thread.thread_id, thread.capabilities, self.signer)
            )
            out.changed.append(f"{CAPABILITIES}: written")

    def _judge_manifest(self, have: bytes, thread: Thread) -> str:
        """'current', 'stale' (safe to write again) or what is wrong with a ``thread.json``."""
        try:
            data = json.loads(have)
        except ValueError:
            return "is not valid JSON"
        if not isinstance(data, dict) or data.get("thread_id") != thread.thread_id:
            return "is not this thread's manifest"
        if "_signature" not in data:
            return "stale"  # written before signing existed: upgrade it
        if self.signer is not None and not manifest_signature_ok(data, self.signer):
            return "does not match its signature"
        version = data.get("version")
        if not isinstance(version, int) or version > thread.version:
            return f"is version {version!r}, newer than the database's {thread.version}"
        return "current" if version == thread.version else "stale"


def unreadable_reason(d: Path, exc: OSError) -> str:
    """Why the mirror folder ``d`` cannot be read, for reports."""
    where = f"threads/{d.name}"
    if d.exists() and not d.is_dir():
        return f"{where} is not a folder (a file stands in its place)"
    return f"{where} cannot be read: {exc.strerror or exc}"


def _same_file(fd: int, path: Path | str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (fst.st_ino, fst.st_dev)


def _open_locked(path: Path) -> int:
    """A fresh descriptor of ``path`` (created if missing), exclusively locked, still at its path."""
    for _ in range(LOCK_TRIES):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, FILE_MODE)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _same_file(fd, path):
            return fd
        os.close(fd)
    raise OSError(f"{path} kept being replaced while waiting for its lock")


@contextmanager
def _shared_lock(path: Path) -> Iterator[int | None]:
    """``path`` open and share-locked (still the file at its path), or None when it does not exist."""
    fd: int | None = None
    try:
        for _ in range(LOCK_TRIES):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                fd = None
                break
            fcntl.flock(fd, fcntl.LOCK_SH)
            if _same_file(fd, path):
                break
            os.close(fd)
            fd = None
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


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


def _scan_tail(fd: int, size: int) -> tuple[int, int, bytes, bytes]:
    """The end of the file's last complete line, that line's seq, the torn bytes after it and the line.

    Reads backwards only as far as the last two newlines. The seq is 0 for an empty file (or
    one without a complete line) and -1 when the last line is not a transcript line.
    """
    if size == 0:
        return 0, 0, b"", b""
    chunk = 65536
    end = size
    buf = b""
    while True:
        start = max(0, end - chunk)
        buf = os.pread(fd, end - start, start) + buf
        end = start
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
        return 0, 0, buf, b""
    good_size = base + last_nl + 1
    prev_nl = buf.rfind(b"\n", 0, last_nl)
    line = buf[prev_nl + 1 : last_nl]
    torn = buf[last_nl + 1 :]
    try:
        return good_size, int(json.loads(line)["seq"]), torn, line
    except (ValueError, KeyError, TypeError):
        return good_size, -1, torn, line
