"""Group commit: one writer thread runs every mutation of this process.

Concurrent mutations queue up; the writer drains the queue and runs a batch of
them in ONE transaction (each inside its own savepoint, so one failing
mutation leaves the others intact), commits once, and only then resolves the
callers' futures and publishes the batch's change events. A reply therefore
always means "durably committed", the commit cost is shared by the batch, and
no two writers of this process ever contend for the SQLite write lock.

Revisions are allocated here: each batch reads the `revision` counter row
(`FOR UPDATE` on PostgreSQL, under BEGIN IMMEDIATE on SQLite), hands out the
next numbers and writes the counter back, so revisions are strictly
increasing in commit order even with several server processes on one
PostgreSQL.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import peewee

from ..convert import now_us
from ..errors import ServiceError, overloaded
from .db import is_postgres
from .failures import DatabaseFailure, classify, reset_connection

log = logging.getLogger("mediajobs.store.writer")

MAX_BATCH = 256
# Mutations waiting for the writer beyond which new ones are refused with
# RESOURCE_EXHAUSTED (the server's --max-write-queue).
DEFAULT_MAX_QUEUE = 2048


@dataclass(slots=True)
class PendingEvent:
    """A committed change event, as the watch hub fans it out."""

    revision: int
    job_id: str
    job_type: str
    state: int
    previous_state: int
    data: bytes  # serialized JobEvent
    # For a PENDING job: when it may be leased (0 = now); tells waiting workers.
    available_time: int = 0
    # The job's project: watchers and waiting workers see only their own.
    project: str = ""


class WriteTx:
    """What a mutation sees inside the writer: the clock, the revision
    counter and the list of events it produced."""

    def __init__(self, db: peewee.Database, revision: int, now: int, project: str) -> None:
        self.db = db
        self.revision = revision
        self.now = now
        self.project = project
        self.events: list[PendingEvent] = []
        self.after_commit: list[Callable[[], None]] = []
        # Re-entrancy guards of mutation hooks (see store/entries.py).
        self.flags: set[str] = set()

    def next_revision(self) -> int:
        self.revision += 1
        return self.revision

    def mark(self) -> tuple[int, int, int]:
        return self.revision, len(self.events), len(self.after_commit)

    def rollback_to(self, mark: tuple[int, int, int]) -> None:
        self.revision = mark[0]
        del self.events[mark[1]:]
        del self.after_commit[mark[2]:]


@dataclass
class _Op:
    fn: Callable[[WriteTx], Any]
    loop: asyncio.AbstractEventLoop | None
    future: Any  # asyncio.Future or concurrent.futures.Future
    result: Any = None
    error: BaseException | None = None
    events: list[PendingEvent] = field(default_factory=list)
    bounded: bool = False
    project: str = ""


_STOP = object()


class _BatchFailed(Exception):
    """The database could not run a batch at all (disk full, read-only, lost
    connection): every mutation of it fails with the same classified error."""

    def __init__(self, failure: DatabaseFailure, retry_safe: bool) -> None:
        super().__init__(failure.error.message)
        self.failure = failure
        # Nothing reached the database yet (the first statement failed): a
        # retry on a new connection cannot write anything twice.
        self.retry_safe = retry_safe


class GroupCommitWriter:
    def __init__(
        self,
        db: peewee.Database,
        project: str,
        on_commit: Callable[[list[PendingEvent]], None] | None = None,
        clock: Callable[[], int] = now_us,
        max_queue: int = DEFAULT_MAX_QUEUE,
        on_health: Callable[[DatabaseFailure | None], None] | None = None,
    ) -> None:
        self.db = db
        self.project = project
        self.on_commit = on_commit
        self.clock = clock
        self.max_queue = max_queue
        # Called in the writer thread when the database stops or starts
        # serving writes (None = serving again).
        self.on_health = on_health
        self.failure: DatabaseFailure | None = None
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Bounded mutations queued and not yet taken by the writer: each
        # counter has one writing thread (the loop, the writer), so no lock.
        self._submitted = 0
        self._taken = 0
        self._thread = threading.Thread(target=self._run, name="mediajobs-writer", daemon=True)
        self._pg = is_postgres(db)
        self._rev_select = "SELECT value FROM store_meta WHERE key = %s" % db.param + (" FOR UPDATE" if self._pg else "")
        self._rev_update = "UPDATE store_meta SET value = %s WHERE key = %s" % (db.param, db.param)
        self.batches = 0
        self.ops = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._q.put(_STOP)
            self._thread.join()

    def submit(self, fn: Callable[[WriteTx], Any], bounded: bool = True, project: str = "") -> "asyncio.Future[Any]":
        """Queue a mutation; the returned future resolves after its commit.
        A bounded submit (every client request) is refused with
        RESOURCE_EXHAUSTED when max_queue mutations are already waiting;
        the server's own housekeeping is never refused."""
        if bounded:
            if self._submitted - self._taken >= self.max_queue:
                raise overloaded("queued writes", "--max-write-queue", self.max_queue)
            self._submitted += 1
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._q.put(_Op(fn, loop, fut, bounded=bounded, project=project or self.project))
        return fut

    def run_sync(self, fn: Callable[[WriteTx], Any], project: str = "") -> Any:
        """Run a mutation from a non-async thread and wait for its commit."""
        import concurrent.futures

        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._q.put(_Op(fn, None, fut, project=project or self.project))
        return fut.result()

    # -- writer thread -------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _STOP:
                break
            batch = [item]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._taken += sum(1 for op in batch if op.bounded)
            self._run_batch(batch)
            if stop:
                break
        self.db.close()

    def _run_batch(self, batch: list[_Op], retried: bool = False) -> None:
        try:
            self._execute(batch)
        except _BatchFailed as bf:
            # The database itself failed (disk full, read-only, connection
            # lost): nothing of the batch is acknowledged, whatever happened.
            if bf.failure.reconnect:
                reset_connection(self.db)
            else:
                self._rollback_quietly()
            if bf.retry_safe and not retried:
                return self._run_batch(batch, retried=True)  # a stale connection: once more on a new one
            self._set_health(bf.failure)  # the server logs the change of health, once
            log.debug("database cannot take writes: %s (%s)", bf.failure.error.reason,
                      bf.failure.error.metadata.get("cause", ""))
            for op in batch:
                op.error = bf.failure.error
                op.events = []
        except Exception as e:  # the commit itself failed, for another reason
            self._rollback_quietly()
            if len(batch) > 1:
                log.warning("batch of %d failed (%s); retrying one by one", len(batch), e)
                for op in batch:
                    op.error = None
                    op.events = []
                    self._run_batch([op])
                return
            log.exception("mutation failed")
            batch[0].error = e
            batch[0].events = []
        else:
            self._set_health(None)
        self._deliver(batch)

    def _rollback_quietly(self) -> None:
        state = getattr(self.db, "_state")
        try:
            state.transactions.clear()
            if state.conn is not None:
                state.conn.rollback()
        except Exception:
            reset_connection(self.db)

    def _set_health(self, failure: DatabaseFailure | None) -> None:
        was = self.failure
        self.failure = failure
        if (was is None) != (failure is None) and self.on_health is not None:
            self.on_health(failure)

    def _execute(self, batch: list[_Op]) -> None:
        db = self.db
        started = False
        try:
            ctx = db.atomic("IMMEDIATE") if not self._pg else db.atomic()
            with ctx:
                start_rev = db.execute_sql(self._rev_select, ("revision",)).fetchone()[0]
                started = True
                tx = WriteTx(db, start_rev, self.clock(), self.project)
                for op in batch:
                    tx.project = op.project  # each mutation runs in its caller's project
                    mark = tx.mark()
                    try:
                        with db.atomic():  # savepoint
                            op.result = op.fn(tx)
                    except ServiceError as e:
                        tx.rollback_to(mark)
                        op.error = e
                    except Exception as e:  # a bug or a constraint: fail this op only
                        failure = classify(e)
                        if failure is not None:  # the database itself: the whole batch is lost
                            raise _BatchFailed(failure, retry_safe=False) from e
                        log.exception("mutation raised")
                        tx.rollback_to(mark)
                        op.error = e
                    else:
                        op.events = tx.events[mark[1]:]
                if tx.revision != start_rev:
                    db.execute_sql(self._rev_update, (tx.revision, "revision"))
        except _BatchFailed:
            raise
        except Exception as e:
            failure = classify(e)
            if failure is None:
                raise
            raise _BatchFailed(failure, retry_safe=not started) from e
        self.batches += 1
        self.ops += len(batch)
        for cb in tx.after_commit:
            cb()

    def _deliver(self, batch: list[_Op]) -> None:
        events = [e for op in batch if op.error is None for e in op.events]
        by_loop: dict[Any, list[_Op]] = {}
        for op in batch:
            if op.loop is None:
                if op.error is not None:
                    op.future.set_exception(op.error)
                else:
                    op.future.set_result(op.result)
            else:
                by_loop.setdefault(op.loop, []).append(op)
        if self.on_commit is not None and events:
            self.on_commit(events)
        for loop, ops in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, ops)
            except RuntimeError:  # loop closed: nobody is waiting any more
                pass


def _resolve(ops: list[_Op]) -> None:
    for op in ops:
        if op.future.cancelled():
            continue
        if op.error is not None:
            op.future.set_exception(op.error)
        else:
            op.future.set_result(op.result)
