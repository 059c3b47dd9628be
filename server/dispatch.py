"""Waking workers that wait in AcquireJobs (long-poll without polling).

A waiter registers a future under each job type it can run. When a batch of
changes makes jobs of a type leasable (a job created, released, retried, or
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
        self._waiters: dict[str, collections.deque[asyncio.Future[None]]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._count_waiters: list[tuple[int, asyncio.Future[None]]] = []

    def on_publish(self, events: list[PendingEvent]) -> None:
        ready: collections.Counter[str] = collections.Counter()
        now = self.clock_us()
        for ev in events:
            if ev.state != PENDING:
                continue
            if ev.available_time > now:
                self._wake_later(ev.job_type, ev.available_time - now)
            else:
                ready[ev.job_type] += 1
        for job_type, n in ready.items():
            self.wake(job_type, n)

    def wake(self, job_type: str, n: int) -> None:
        self.seq += 1
        q = self._waiters.get(job_type)
        while q and n > 0:
            fut = q.popleft()
            if not fut.done():
                fut.set_result(None)
                n -= 1
        if q is not None and not q:
            del self._waiters[job_type]

    def _wake_later(self, job_type: str, delay_us: int) -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + delay_us / 1e6
        old = self._timers.get(job_type)
        if old is not None and old.when() <= when:
            return  # an earlier wake-up for this type is already due
        if old is not None:
            old.cancel()

        def fire() -> None:
            self._timers.pop(job_type, None)
            self.wake(job_type, 1 << 30)

        self._timers[job_type] = loop.call_at(when, fire)

    async def wait(self, job_types: Iterable[str], timeout: float) -> None:
        """Wait until a job of one of the types may be leasable, or timeout."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        types = list(job_types)
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
