"""Which threads' mirrors may be behind the database: recorded in the commit, so start-up repairs only those.

Every commit that touches a thread also writes ``mirror_pending(thread_id, mark)`` in the
same transaction (``mark`` is random per transaction). Once this process has written the
thread's files, it deletes its own mark in its next transaction (or when it closes), and
only if the mark is still its own: a later commit by another process replaces the mark,
and that process clears it. So after a crash between commit and mirror write, the rows
left name exactly the threads whose files may be behind, and start-up repairs those and
nothing else (O(what changed), not O(threads)).

A database from a version without this table (``meta.mirror_sweep``) gets one full sweep, in a background thread after the server has started answering; ``doctor``
always checks every thread.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence

log = logging.getLogger("threadloom.store")

TABLE_SQL = """
CREATE TABLE IF NOT EXISTS mirror_pending (
    thread_id TEXT PRIMARY KEY,
    mark      INTEGER NOT NULL
) WITHOUT ROWID
"""
SWEEP_KEY = "mirror_sweep"
SWEEP_DELAY = 1.0
"""Seconds the background sweep waits after start-up, so the first requests are answered first."""
SWEEP_PAGE = 500

Mark = tuple[str, int]


def ensure_table(conn: sqlite3.Connection) -> None:
    """Create ``mirror_pending`` when the database has none yet; a database that already holds
    threads then needs one full sweep (``meta.mirror_sweep``): its marks were never written.

    Kept out of the numbered migrations on purpose: the table is an index of work, which
    any version may add beside the schema."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'mirror_pending'").fetchone():
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(TABLE_SQL)
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) SELECT ?, 'needed' WHERE EXISTS (SELECT 1 FROM threads)",
            (SWEEP_KEY,),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def new_mark() -> int:
    return random.getrandbits(62)


def mark_pending(conn: sqlite3.Connection, thread_ids: Iterable[str], value: int) -> None:
    """Record, inside the caller's transaction, that these threads' mirrors are not written yet."""
    conn.executemany(
        "INSERT OR REPLACE INTO mirror_pending (thread_id, mark) VALUES (?, ?)",
        [(tid, value) for tid in thread_ids],
    )


def clear_marks(conn: sqlite3.Connection, marks: Sequence[Mark]) -> None:
    """Delete these marks, inside the caller's transaction, where they are still the same."""
    if marks:
        conn.executemany("DELETE FROM mirror_pending WHERE thread_id = ? AND mark = ?", marks)


def forget_marks(conn: sqlite3.Connection, thread_ids: Iterable[str]) -> None:
    """Delete the marks of deleted threads (inside the caller's transaction)."""
    conn.executemany("DELETE FROM mirror_pending WHERE thread_id = ?", [(t,) for t in thread_ids])


def pending_marks(conn: sqlite3.Connection) -> list[Mark]:
    return [(tid, m) for tid, m in conn.execute("SELECT thread_id, mark FROM mirror_pending")]


def sweep_needed(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM meta WHERE key = ?", (SWEEP_KEY,)).fetchone() is not None


def write_txn(
    conn: sqlite3.Connection, work: Callable[[], None], retry: Callable[[Callable[[], None]], None]
) -> None:
    """Run ``work`` in its own write transaction (busy retried by ``retry``)."""

    def txn() -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            work()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    retry(txn)


class BackgroundSweep:
    """Repairs every thread's mirror in a thread of its own, page by page, then clears the flag."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        repair: Callable[[sqlite3.Connection, str], bool],
        retry: Callable[[Callable[[], None]], None],
    ) -> None:
        self._connect = connect
        self._repair = repair
        self._retry = retry
        self._stop = threading.Event()
        self.fixed = 0
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="threadloom-mirror-sweep", daemon=True)

    def start(self, delay: float = SWEEP_DELAY) -> None:
        self._delay = delay
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            if self._stop.wait(self._delay):
                return
            conn = self._connect()
        except Exception as exc:  # never take the server down for a sweep
            log.error("background mirror sweep could not start: %s", exc)
            return
        try:
            after = ""
            while not self._stop.is_set():
                page = [
                    tid
                    for (tid,) in conn.execute(
                        "SELECT thread_id FROM threads WHERE thread_id > ? ORDER BY thread_id LIMIT ?",
                        (after, SWEEP_PAGE),
                    )
                ]
                if not page:
                    break
                for tid in page:
                    if self._stop.is_set():
                        return
                    self.fixed += self._repair(conn, tid)
                after = page[-1]
            if self._stop.is_set():
                return
            write_txn(conn, lambda: conn.execute("DELETE FROM meta WHERE key = ?", (SWEEP_KEY,)), self._retry)
            log.info("background mirror sweep done: %d thread(s) repaired", self.fixed)
            self.done.set()
        except Exception:
            log.exception("background mirror sweep failed (the next start-up tries again)")
        finally:
            conn.close()
