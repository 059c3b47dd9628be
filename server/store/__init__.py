"""The store: every SQL statement of mediajobs lives in this package.

`Store` opens the database, creates the schema, owns the group-commit writer
and a small thread pool for reads. Callers in the event loop use
`await store.write(fn)` for mutations (fn runs in the writer thread with a
WriteTx) and `await store.read(fn, *args)` for reads (fn runs in a pool thread
with the database).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from typing import Any, Callable, TypeVar

import peewee

from ..convert import now_us
from ..errors import ServiceError
from ..principal import current_project
from .db import DEFAULT_DURABILITY, is_postgres, open_database, redact_url
from .failures import DatabaseFailure, classify, reset_connection
from .models import create_schema
from .sanitize import sanitize_stored_payloads
from ..quotas import Quotas
from .writer import DEFAULT_MAX_QUEUE, GroupCommitWriter, PendingEvent, WriteTx

T = TypeVar("T")

__all__ = ["Store", "WriteTx", "PendingEvent"]


class Store:
    def __init__(
        self,
        url_or_path: str,
        project: str = "default",
        clock: Callable[[], int] = now_us,
        read_threads: int = 4,
        durability: str = DEFAULT_DURABILITY,
        max_write_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        self.url = url_or_path
        # The URL with any password masked: the only form that is logged.
        self.display_url = redact_url(url_or_path)
        self.project = project
        self.clock = clock
        self.quotas = Quotas()  # the server sets its configured quotas
        self.durability = durability
        self.db: peewee.Database = open_database(url_or_path, durability)
        self._on_commit: list[Callable[[list[PendingEvent]], None]] = []
        # Called (in the writer thread) when writes stop or start working.
        self.health_listeners: list[Callable[[DatabaseFailure | None], None]] = []
        self.writer = GroupCommitWriter(
            self.db, project, self._dispatch_commit, clock, max_queue=max_write_queue, on_health=self._health_changed
        )
        self._pool = concurrent.futures.ThreadPoolExecutor(read_threads, thread_name_prefix="mediajobs-read")
        self.inline_point_reads = not is_postgres(self.db)

    def open(self) -> "Store":
        create_schema(self.db, self.project)
        sanitize_stored_payloads(self.db)  # once per database: see store/sanitize.py
        self.db.close()
        self.writer.start()
        return self

    def close(self) -> None:
        self.writer.stop()
        self._pool.shutdown(wait=True)
        # Each pool thread held its own connection; closing from here closes
        # only this thread's, which is all that is left.
        if not self.db.is_closed():
            self.db.close()

    @property
    def failure(self) -> DatabaseFailure | None:
        """Why the database cannot take writes now (None while it can)."""
        return self.writer.failure

    def _health_changed(self, failure: DatabaseFailure | None) -> None:
        for cb in self.health_listeners:
            cb(failure)

    def subscribe(self, cb: Callable[[list[PendingEvent]], None]) -> None:
        """Call cb(events) in the writer thread after each commit that made events."""
        self._on_commit.append(cb)

    def _dispatch_commit(self, events: list[PendingEvent]) -> None:
        for cb in self._on_commit:
            cb(events)

    def scope(self) -> str:
        """The project the calling task acts for (see principal.py): every
        read and write it queues is scoped to it."""
        return current_project() or self.project

    async def write(self, fn: Callable[[WriteTx], T], bounded: bool = True) -> T:
        """Run a mutation in the writer, in the caller's project (tx.project);
        returns after its commit. Client requests are bounded
        (RESOURCE_EXHAUSTED past --max-write-queue); the server's own
        housekeeping passes bounded=False."""
        return await self.writer.submit(fn, bounded, self.scope())

    def submit(self, fn: Callable[[WriteTx], T], bounded: bool = True) -> "asyncio.Future[T]":
        """Queue a mutation; the future resolves after its commit, whether or
        not anyone still awaits it."""
        return self.writer.submit(fn, bounded, self.scope())

    def write_sync(self, fn: Callable[[WriteTx], T]) -> T:
        return self.writer.run_sync(fn, self.scope())  # type: ignore[no-any-return]

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(db, project, *args) on a pool thread, with the caller's
        project (contextvars do not cross into the pool, so it is taken
        here)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(self._run_read, self.scope(), fn, *args))

    def _run_read(self, project: str, fn: Callable[..., T], *args: Any) -> T:
        """Run a read on this thread's connection. A connection the database
        dropped (restart, failover) is replaced and the read tried once more
        (reads are safe to repeat); a database that cannot serve is
        UNAVAILABLE, never INTERNAL."""
        for attempt in (1, 2):
            try:
                return fn(self.db, project, *args)
            except ServiceError:
                raise
            except Exception as e:
                failure = classify(e)
                if failure is None:
                    raise
                if failure.reconnect:
                    reset_connection(self.db)
                    if attempt == 1:
                        continue
                raise failure.error from e
        raise AssertionError("unreachable")

    async def read_point(self, fn: Callable[..., T], *args: Any) -> T:
        """A primary-key read: on SQLite it runs inline on the event loop (a
        few tens of microseconds from the page cache, less than the hop to a
        pool thread costs); on a networked database it goes to the pool."""
        if self.inline_point_reads:
            return self._run_read(self.scope(), fn, *args)
        return await self.read(fn, *args)

    def read_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return self._run_read(self.scope(), fn, *args)
