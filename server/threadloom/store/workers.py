"""Threads that own SQLite connections and answer asyncio futures.

One hop through a ``queue.SimpleQueue`` and ``call_soon_threadsafe`` costs ~55 µs
here, against ~115-145 µs for ``anyio.to_thread`` (PERF-NOTES), and a single writer
thread lets concurrent appends share one commit (group commit).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("threadloom.store")

_STOP = object()
_WAKE = object()  # no work: the thread asks ``idle()`` again (after work done on the caller's thread)


class GiveWay(Exception):
    """Raised by an ``inline`` handler that cannot finish without waiting (the database is
    busy): nothing was written, and the job goes to the pool's threads instead."""


@dataclass(slots=True)
class Job:
    """A unit of work for a worker thread and the future that receives its outcome."""

    payload: Any
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    here: bool = False
    """Handled on the loop's own thread (inline): resolving it needs no wake-up of the loop."""


def resolve(job: Job, result: Any = None, error: BaseException | None = None) -> None:
    """Hand a result or an error back to the job's event loop (ignored if it gave up)."""

    def _set() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    try:
        if job.here:
            job.loop.call_soon(_set)  # still a turn of the loop: the caller yields once
        else:
            job.loop.call_soon_threadsafe(_set)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


class WorkerPool:
    """``n`` threads consuming one queue; ``handle(batch)`` processes the jobs it drained.

    ``translate`` turns what a job raised into the error its caller gets: the backend's one
    point where driver errors (``sqlite3.Error``) become the project's error tree
    (errors.py), for every job of the pool, maintenance included.
    """

    def __init__(
        self,
        name: str,
        n: int,
        handle: Callable[[list[Job]], None],
        *,
        max_batch: int = 1,
        idle: Callable[[], float | None] | None = None,
        on_idle: Callable[[], None] | None = None,
        translate: Callable[[BaseException], BaseException] | None = None,
        inline: Callable[[list[Job]], None] | None = None,
    ) -> None:
        """``idle()`` says how long a thread may wait for work before it calls ``on_idle()``
        (None: wait for ever); it is asked again after every batch. ``inline`` handles a job
        on the caller's thread when the pool is idle (``submit(..., inline=True)``)."""
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._handle = handle
        self._inline = inline
        self._busy = threading.Lock()  # held while a thread or an inline caller does work
        self._untimed = False  # the thread waits for work with no idle timer
        self._max_batch = max_batch
        self._idle = idle
        self._on_idle = on_idle
        self._translate = translate
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(n)
        ]
        for t in self._threads:
            t.start()

    async def submit(self, payload: Any, *, inline: bool = False) -> Any:
        """Run ``payload`` on a pool thread and wait for its outcome. With ``inline`` and no
        thread at work, the ``inline`` handler runs it on the caller's thread instead: the
        two thread wake-ups of a hop cost more than a small job. (A job queued meanwhile
        comes from another caller, so either order is one the callers could have seen.)"""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        job = Job(payload, fut, loop)
        if not (inline and self._run_inline(job)):
            self._queue.put(job)
        try:
            return await fut
        except Exception as exc:
            err = exc if self._translate is None else self._translate(exc)
            if err is exc:
                raise
            raise err from exc

    def put(self, job: Job) -> None:
        """Queue a job whose future nobody awaits (work handed on from an inline job)."""
        self._queue.put(job)

    def _run_inline(self, job: Job) -> bool:
        """Handle ``job`` here if the pool is idle; False when it must be queued."""
        if self._inline is None or not self._busy.acquire(blocking=False):
            return False
        job.here = True
        try:
            self._inline([job])
        except GiveWay:
            job.here = False
            return False
        except BaseException as exc:
            log.exception("inline work failed")
            resolve(job, error=exc)
        finally:
            self._busy.release()
        if self._untimed and self._idle is not None and self._idle() is not None:
            self._queue.put(_WAKE)  # the work left something for the idle timer (a fold)
        return True

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(_STOP)
        for t in self._threads:
            t.join(timeout=30)

    def _run(self) -> None:
        while True:
            timeout = self._idle() if self._idle is not None else None
            self._untimed = timeout is None
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                try:
                    if self._on_idle is not None:
                        with self._busy:
                            self._on_idle()
                except BaseException:  # idle work must never kill the worker
                    log.exception("idle work failed")
                continue
            self._untimed = False
            if item is _STOP:
                return
            if item is _WAKE:
                continue
            batch = [item]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                if nxt is not _WAKE:
                    batch.append(nxt)
            try:
                with self._busy:
                    self._handle(batch)
            except BaseException as exc:  # never let a worker die silently
                log.exception("worker failed")
                for job in batch:
                    resolve(job, error=exc)
            if stop:
                return
