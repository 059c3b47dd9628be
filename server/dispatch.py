"""Waking workers that wait in AcquireJobs (long-poll without polling).

A waiter registers a future under its project and each job type it can run
(a worker leases only its own project's jobs, so only those wake it). When
a batch of changes makes jobs of a type leasable (a job created, released, retried, or
reset), the dispatcher wakes as many waiters of that type as there are such
jobs; a job that becomes leasable later (retry backoff) wakes them when its
time comes. `seq` counts such wake-ups so a caller that found nothing can tell,
without an await in between, whether something arrived while it looked.
"""
from __future__ import annotations

import asyncio
import collections
from typing import Callable, Iterable

from mediajobs.v1 import resources_pb2 as res

from .store import PendingEvent

PENDING = res.Job.PENDING


class Dispatcher:
    def __init__(self, clock_us: Callable[[], int]) -> None:
        self.clock_us = clock_us
        self.seq = 0
        # Keyed by (project, job type).
        self._waiters: dict[tuple[str, str], collections.deque[asyncio.Future[None]]] = {}
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._count_waiters: list[tuple[int, asyncio.Future[None]]] = []

    def on_publish(self, events: list[PendingEvent]) -> None:
        ready: collections.Counter[tuple[str, str]] = collections.Counter()
        now = self.clock_us()
        for ev in events:
            if ev.state != PENDING:
                continue
            if ev.available_time > now:
                self._wake_later((ev.project, ev.job_type), ev.available_time - now)
            else:
                ready[(ev.project, ev.job_type)] += 1
        for key, n in ready.items():
            self.wake(key, n)

    def wake(self, key: tuple[str, str], n: int) -> None:
        """Wake up to n waiters of (project, job type)."""
        self.seq += 1
        q = self._waiters.get(key)
        while q and n > 0:
            fut = q.popleft()
            if not fut.done():
                fut.set_result(None)
                n -= 1
        if q is not None and not q:
            del self._waiters[key]

    def _wake_later(self, key: tuple[str, str], delay_us: int) -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + delay_us / 1e6
        old = self._timers.get(key)
        if old is not None and old.when() <= when:
            return  # an earlier wake-up for this type is already due
        if old is not None:
            old.cancel()

        def fire() -> None:
            self._timers.pop(key, None)
            self.wake(key, 1 << 30)

        self._timers[key] = loop.call_at(when, fire)

    async def wait(self, project: str, job_types: Iterable[str], timeout: float) -> None:
        """Wait until a job of `project` of one of the types may be leasable,
        or timeout."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        types = [(project, t) for t in job_types]
        for t in types:
            self._waiters.setdefault(t, collections.deque()).append(fut)
        self._notify_count()
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            if not fut.done():
                fut.cancel()
            for t in types:
                q = self._waiters.get(t)
                if q is not None:
                    try:
                        q.remove(fut)
                    except ValueError:
                        pass
                    if not q:
                        del self._waiters[t]

    def close(self) -> None:
        for t in self._timers.values():
            t.cancel()
        self._timers.clear()
        for q in self._waiters.values():
            for fut in q:
                if not fut.done():
                    fut.set_result(None)
        self._waiters.clear()

    def waiting(self) -> int:
        return len({id(f) for q in self._waiters.values() for f in q if not f.done()})

    def _notify_count(self) -> None:
        if self._count_waiters:
            n = self.waiting()
            for want, fut in self._count_waiters:
                if n >= want and not fut.done():
                    fut.set_result(None)
            self._count_waiters = [(w, f) for w, f in self._count_waiters if not f.done()]

    async def wait_for_waiting(self, n: int) -> None:
        """Return once at least n AcquireJobs calls are parked (tests, benchmarks)."""
        if self.waiting() >= n:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._count_waiters.append((n, fut))
        await fut
