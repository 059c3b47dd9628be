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
from .db import is_postgres, open_database
from .models import create_schema
from .writer import GroupCommitWriter, PendingEvent, WriteTx

T = TypeVar("T")

__all__ = ["Store", "WriteTx", "PendingEvent"]


class Store:
    def __init__(
        self,
        url_or_path: str,
        project: str = "default",
        clock: Callable[[], int] = now_us,
        read_threads: int = 4,
    ) -> None:
        self.url = url_or_path
        self.project = project
        self.clock = clock
        self.db: peewee.Database = open_database(url_or_path)
        self._on_commit: list[Callable[[list[PendingEvent]], None]] = []
        self.writer = GroupCommitWriter(self.db, project, self._dispatch_commit, clock)
        self._pool = concurrent.futures.ThreadPoolExecutor(read_threads, thread_name_prefix="mediajobs-read")
        self.inline_point_reads = not is_postgres(self.db)

    def open(self) -> "Store":
        create_schema(self.db)
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

    def subscribe(self, cb: Callable[[list[PendingEvent]], None]) -> None:
        """Call cb(events) in the writer thread after each commit that made events."""
        self._on_commit.append(cb)

    def _dispatch_commit(self, events: list[PendingEvent]) -> None:
        for cb in self._on_commit:
            cb(events)

    async def write(self, fn: Callable[[WriteTx], T]) -> T:
        return await self.writer.submit(fn)

    def submit(self, fn: Callable[[WriteTx], T]) -> "asyncio.Future[T]":
        """Queue a mutation; the future resolves after its commit, whether or
        not anyone still awaits it."""
        return self.writer.submit(fn)

    def write_sync(self, fn: Callable[[WriteTx], T]) -> T:
        return self.writer.run_sync(fn)  # type: ignore[no-any-return]

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, self.db, self.project, *args))

    async def read_point(self, fn: Callable[..., T], *args: Any) -> T:
        """A primary-key read: on SQLite it runs inline on the event loop (a
        few tens of microseconds from the page cache, less than the hop to a
        pool thread costs); on a networked database it goes to the pool."""
        if self.inline_point_reads:
            return fn(self.db, self.project, *args)
        return await self.read(fn, *args)

    def read_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(self.db, self.project, *args)
