"""Fan-out of committed job changes to WatchJobs streams (etcd-style).

Every committed change has a dense, strictly increasing revision and a row in
the job_events log. The hub keeps the newest events in a ring buffer and an
index of watchers by job id and type, so a change wakes only the watchers it
concerns. A watcher is either *synced* (the hub pushes matching events into
its bounded queue) or *unsynced* (it reads the log from its cursor until it
reaches the hub's revision, then joins live delivery without an await in
between, so nothing can slip through). A watcher whose queue overflows
because its client reads slowly is switched back to unsynced and catches up
from the log: it is never silently skipped.

Several server processes may share one PostgreSQL database. Revisions are
dense and commit in order across processes (see store/writer.py), so the hub
tracks completeness by contiguity: `revision` is the highest revision R such
that every event (of every project) at or below R has been offered to the synced
watchers (and, from `buffer[0]` on, is in the buffer). A commit of this
process that arrives after a gap proves the missing revisions were committed
by another process: it is held back until the hub has read the gap from the
log and offered it, so watchers always get events in revision order with no
hole, and progress bookmarks (which use `revision`) never pass an event a
watcher has not received. `known` is the newest revision known to be
committed anywhere; `tail_log` raises it periodically on PostgreSQL so other
processes' events arrive live too.
"""
from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import grpc

from .errors import ServiceError
from .payloads import encode_varint
from .store import PendingEvent, Store
from .store.db import is_postgres
from .store.events import EventFilter, committed_revision, read_all_events, read_events

log = logging.getLogger("mediajobs.watch")

BUFFER_SIZE = 8192
QUEUE_LIMIT = 1024
LOG_PAGE = 512
MAX_EVENTS_PER_MESSAGE = 256
# A busy stream sends at most one message per this many seconds; events that
# arrive in between go out together. Sending a message costs gRPC far more
# than adding an event to one, so under load this trades a few ms of latency
# for a large cut in messages. A stream that was quiet sends at once.
MIN_MESSAGE_INTERVAL = 0.05
# A message holds events of at most this many bytes in all, unless a single
# event is larger (then it goes alone): far below gRPC's default 4 MiB limit.
MAX_MESSAGE_BYTES = 1 << 20
# How often tail_log() asks the database for its revision (PostgreSQL).
TAIL_INTERVAL = 0.25
# Back-off between failed reads of a revision gap from the log.
FILL_RETRY_MIN = 0.05
FILL_RETRY_MAX = 2.0


def frame_events(revision: int, events: list[bytes]) -> bytes:
    """A serialized WatchJobsResponse{revision, events} built from the events'
    own serialized bytes (field 1 varint, field 2 length-delimited)."""
    parts = [b"\x08", encode_varint(revision)]
    for data in events:
        parts += [b"\x12", encode_varint(len(data)), data]
    return b"".join(parts)


def _expire(fut: "asyncio.Future[bool]") -> None:
    if not fut.done():
        fut.set_result(False)


def frame_progress(revision: int, snapshot_complete: bool = False) -> bytes:
    """A serialized WatchJobsResponse{revision, progress}."""
    body = b"\x08\x01" if snapshot_complete else b""
    return b"\x08" + encode_varint(revision) + b"\x1a" + encode_varint(len(body)) + body


def chunk_events(events: list[PendingEvent]) -> list[list[PendingEvent]]:
    """Consecutive runs of `events` for one message each: at most
    MAX_EVENTS_PER_MESSAGE events and MAX_MESSAGE_BYTES of event data, or a
    single event when it is larger by itself."""
    chunks: list[list[PendingEvent]] = []
    chunk: list[PendingEvent] = []
    size = 0
    for ev in events:
        n = len(ev.data)
        if chunk and (len(chunk) >= MAX_EVENTS_PER_MESSAGE or size + n > MAX_MESSAGE_BYTES):
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(ev)
        size += n
    if chunk:
        chunks.append(chunk)
    return chunks


@dataclass(eq=False)
class Watcher:
    project: str  # only this project's events, whatever the filters say
    job_ids: frozenset[str]
    types: frozenset[str]
    states: frozenset[int]
    next_rev: int
    queue: collections.deque[PendingEvent] = field(default_factory=collections.deque)
    synced: bool = False
    # Set while the stream waits for something to send; offer() resolves it.
    waiter: "asyncio.Future[bool] | None" = None
    desyncs: int = 0
    closed: bool = False
    key_id: str = ""  # the API key the stream was opened with (--auth keys)
    # Why the stream was ended by the server other than by shutdown (its
    # key was revoked, its project deleted).
    ended: ServiceError | None = None

    def matches(self, ev: PendingEvent) -> bool:
        if ev.project != self.project:
            return False
        if self.job_ids and ev.job_id not in self.job_ids:
            return False
        if self.types and ev.job_type not in self.types:
            return False
        if self.states and ev.state not in self.states and ev.previous_state not in self.states:
            return False
        return True

    def offer(self, ev: PendingEvent) -> None:
        if ev.revision < self.next_rev or not self.matches(ev):
            return
        if len(self.queue) >= QUEUE_LIMIT:
            # The client is slower than the changes: drop the queue and
            # catch up from the log, starting at the first undelivered event.
            self.queue.clear()
            self.synced = False
            self.desyncs += 1
        else:
            self.queue.append(ev)
        self.wake()

    def wake(self) -> None:
        fut = self.waiter
        if fut is not None and not fut.done():
            fut.set_result(True)


class WatchHub:
    def __init__(self, store: Store, revision: int, compact_revision: int) -> None:
        self.store = store
        # Every event at or below `revision` has been offered (contiguous).
        self.revision = revision
        # The newest revision known to be committed (by any process).
        self.known = revision
        # This process's commits above a gap, by revision, until it is filled.
        self._pending: dict[int, PendingEvent] = {}
        self._fill_task: asyncio.Task[None] | None = None
        self.compact_revision = compact_revision
        self.buffer: collections.deque[PendingEvent] = collections.deque(maxlen=BUFFER_SIZE)
        self._by_job: dict[str, set[Watcher]] = {}
        self._by_type: dict[str, set[Watcher]] = {}
        self._all: set[Watcher] = set()
        self.watchers = 0
        self._registered: set[Watcher] = set()
        self.closing = False
        self._count_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # Called with every published batch, on the loop (e.g. the dispatcher
        # that wakes workers waiting in AcquireJobs).
        self.listeners: list[Callable[[list[PendingEvent]], None]] = []

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Receive commits from the store's writer thread on `loop`."""
        self._loop = loop

        def on_commit(events: list[PendingEvent]) -> None:
            try:
                loop.call_soon_threadsafe(self.publish, events)
            except RuntimeError:
                pass

        self.store.subscribe(on_commit)

    def set_compact_revision(self, rev: int) -> None:
        self.compact_revision = max(self.compact_revision, rev)

    # -- called on the event loop -------------------------------------------

    def publish(self, events: list[PendingEvent]) -> None:
        """This process's committed events (one writer batch, in order)."""
        if not events:
            return
        for listener in self.listeners:
            listener(events)
        first = events[0].revision
        if first != self.revision + 1 or self._pending or events[-1].revision - first != len(events) - 1:
            self._hold(events)  # another process committed in between (or a repeat)
            return
        self._advance(events)

    def _advance(self, events: list[PendingEvent], upto: int = 0) -> None:
        """Offer `events` (ascending, all above `revision`, and with no event
        missing between them) and move `revision` to the last of them, or to
        `upto` if higher (revisions without an event). Each watcher takes
        only its own project's events (Watcher.matches)."""
        by_job, by_type, everyone = self._by_job, self._by_type, self._all
        buffer = self.buffer
        for ev in events:
            buffer.append(ev)
            for w in everyone:
                if w.synced:
                    w.offer(ev)
            ws = by_job.get(ev.job_id)
            if ws:
                for w in ws:
                    if w.synced:
                        w.offer(ev)
            ws = by_type.get(ev.job_type)
            if ws:
                for w in ws:
                    if w.synced:
                        w.offer(ev)
        if events:
            self.revision = events[-1].revision
        if upto > self.revision:
            self.revision = upto
        if self.revision > self.known:
            self.known = self.revision

    def _hold(self, events: list[PendingEvent]) -> None:
        """Keep events above a gap until the gap is read from the log; drop
        those already offered."""
        pending = self._pending
        for ev in events:
            if ev.revision > self.revision:
                pending[ev.revision] = ev
                if ev.revision > self.known:
                    self.known = ev.revision  # and so everything below it is committed
        self._drain_pending()
        if self.known > self.revision:
            self._ensure_fill()

    def _drain_pending(self) -> None:
        """Offer the held events that now follow `revision` without a gap."""
        pending = self._pending
        if not pending:
            return
        for r in [r for r in pending if r <= self.revision]:
            del pending[r]
        run = []
        r = self.revision + 1
        while r in pending:
            run.append(pending.pop(r))
            r += 1
        if run:
            self._advance(run)

    def observe(self, revision: int) -> None:
        """`revision` is committed in the database: read whatever this hub
        has not seen up to it from the log, and offer it."""
        if revision > self.known:
            self.known = revision
            self._ensure_fill()

    async def read_revision(self) -> int:
        """The newest committed revision, read from the database now (and
        observed, so the hub catches up to it)."""
        rev = await self.store.read(committed_revision)
        self.observe(rev)
        return max(rev, self.known)

    def _ensure_fill(self) -> None:
        if self.closing:
            return
        t = self._fill_task
        if t is None or t.done():
            self._fill_task = asyncio.get_running_loop().create_task(self._fill(), name="mediajobs-watch-fill")

    async def _fill(self) -> None:
        """Read the revisions between `revision` and the next held event (or
        `known`) from the log, oldest first, and offer them: a gap is always
        filled before anything after it reaches a watcher."""
        delay = FILL_RETRY_MIN
        while not self.closing:
            self._drain_pending()
            lo = self.revision + 1
            hi = min(self._pending) - 1 if self._pending else self.known
            if hi < lo:
                return
            try:
                rows, compacted = await self.store.read(read_all_events, lo, hi, LOG_PAGE)
            except Exception:
                if self.closing:
                    return
                log.warning("reading revisions %d..%d from the change log failed; retrying in %.2fs",
                            lo, hi, delay, exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, FILL_RETRY_MAX)
                continue
            delay = FILL_RETRY_MIN
            covered = rows[-1].revision if len(rows) == LOG_PAGE else hi
            floor = self.revision
            if compacted >= lo:
                # Part of the gap was compacted before this hub read it: the
                # buffer cannot be completed, and a synced watcher may lack
                # an event. Each watcher goes back to the log on its own
                # (and gets REVISION_COMPACTED if it needs what is gone).
                self.set_compact_revision(compacted)
                self.buffer.clear()
                for w in self._registered:
                    if w.synced:
                        w.queue.clear()
                        w.synced = False
                        w.wake()
                floor = max(floor, compacted)
            if covered > self.revision:
                self._advance([ev for ev in rows if ev.revision > floor], covered)

    def register(self, w: Watcher) -> None:
        if w.job_ids:
            for j in w.job_ids:
                self._by_job.setdefault(j, set()).add(w)
        elif w.types:
            for t in w.types:
                self._by_type.setdefault(t, set()).add(w)
        else:
            self._all.add(w)
        self._registered.add(w)
        self.watchers += 1
        self._notify_count()

    def unregister(self, w: Watcher) -> None:
        if w.job_ids:
            for j in w.job_ids:
                s = self._by_job.get(j)
                if s is not None:
                    s.discard(w)
                    if not s:
                        del self._by_job[j]
        elif w.types:
            for t in w.types:
                s = self._by_type.get(t)
                if s is not None:
                    s.discard(w)
                    if not s:
                        del self._by_type[t]
        else:
            self._all.discard(w)
        self._registered.discard(w)
        self.watchers -= 1
        self._notify_count()

    def _notify_count(self) -> None:
        if self._count_waiters:
            keep = []
            for n, fut in self._count_waiters:
                if self.watchers == n:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    keep.append((n, fut))
            self._count_waiters = keep

    async def wait_for_watchers(self, n: int) -> None:
        """Return once exactly n watchers are registered (for tests and drain)."""
        if self.watchers == n:
            return
        fut = asyncio.get_running_loop().create_future()
        self._count_waiters.append((n, fut))
        await fut

    def close(self) -> None:
        """End every stream with UNAVAILABLE (server draining); clients resume
        elsewhere or after the restart from their last revision + 1."""
        self.closing = True
        if self._fill_task is not None:
            self._fill_task.cancel()
        for w in list(self._registered):
            w.closed = True
            w.wake()

    def end_watchers(self, key_id: str = "", project: str = "") -> None:
        """A key was revoked (`key_id`) or a project deleted (`project`): end
        the streams opened with it UNAUTHENTICATED; a deleted project's
        events also leave the buffer (a project made later under the same
        name must not see them)."""
        if project:
            self.buffer = collections.deque((ev for ev in self.buffer if ev.project != project), maxlen=BUFFER_SIZE)
        for w in list(self._registered):
            if (key_id and w.key_id == key_id) or (project and w.project == project):
                w.ended = ServiceError(
                    grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED",
                    "the API key this stream was opened with was revoked (or its project deleted); "
                    "open the watch again with a valid key")
                w.closed = True
                w.wake()

    def _closing_error(self, w: Watcher) -> ServiceError:
        if w.ended is not None:
            return w.ended
        return ServiceError(
            grpc.StatusCode.UNAVAILABLE,
            "SERVER_SHUTTING_DOWN",
            f"the server is shutting down; resume with start_revision = {w.next_rev}",
            metadata={"resume_revision": str(w.next_rev)},
        )

    def compacted_error(self, start: int) -> ServiceError:
        oldest = self.compact_revision + 1
        return ServiceError(
            grpc.StatusCode.OUT_OF_RANGE,
            "REVISION_COMPACTED",
            f"revision {start} is older than the retained history; the oldest available revision is {oldest}: "
            "re-list with ListJobs and watch from its revision + 1",
            metadata={"oldest_revision": str(oldest), "compact_revision": str(self.compact_revision),
                      "start_revision": str(start)},
        )

    async def messages(self, w: Watcher, progress_interval: float) -> AsyncIterator[bytes]:
        """Serialized WatchJobsResponse messages for every matching change from
        w.next_rev on (batched), and a progress bookmark when idle. The
        caller registers and unregisters `w`."""
        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        last_batch = 0.0
        while True:
            if w.closed or self.closing:
                raise self._closing_error(w)
            if not w.synced:
                async for msg in self._catch_up(w):
                    last_sent = loop.time()
                    yield msg
                continue
            if w.queue:
                gap = last_batch + MIN_MESSAGE_INTERVAL - loop.time()
                if gap > 0:
                    await asyncio.sleep(gap)  # let more events join this message
                    continue
                batch: list[bytes] = []
                size = 0
                q = w.queue
                while q and len(batch) < MAX_EVENTS_PER_MESSAGE:
                    ev = q[0]
                    if ev.revision >= w.next_rev:
                        n = len(ev.data)
                        if batch and size + n > MAX_MESSAGE_BYTES:
                            break
                        batch.append(ev.data)
                        size += n
                        w.next_rev = ev.revision + 1
                    q.popleft()
                if batch:
                    last_sent = last_batch = loop.time()
                    yield frame_events(w.next_rev - 1, batch)
                continue
            timeout = last_sent + progress_interval - loop.time()
            if timeout > 0:
                # A bare future and a timer: far cheaper per wake-up than
                # asyncio.wait_for, which makes a task each time.
                fut = w.waiter = loop.create_future()
                timer = loop.call_later(timeout, _expire, fut)
                try:
                    await fut
                finally:
                    timer.cancel()
                    w.waiter = None
                if fut.result():
                    continue
            if w.synced and not w.queue:
                last_sent = loop.time()
                rev = max(self.revision, w.next_rev - 1)
                # Everything that matched up to rev has been sent: a resume
                # (or the shutdown hint) may start after it.
                w.next_rev = rev + 1
                yield frame_progress(rev)

    async def _catch_up(self, w: Watcher) -> AsyncIterator[bytes]:
        flt = EventFilter(sorted(w.job_ids), sorted(w.types), sorted(w.states))
        while not w.synced:
            if w.closed:
                raise self._closing_error(w)
            if w.next_rev <= self.compact_revision:
                raise self.compacted_error(w.next_rev)
            target = self.revision
            if w.next_rev > target:
                w.synced = True  # nothing older to read; live from here
                return
            if self.buffer and self.buffer[0].revision <= w.next_rev:
                # The rest is in memory (the buffer holds every event from
                # its first to `revision`): take it and join live delivery in
                # the same step (no await), so no publish can fall between.
                for ev in self.buffer:
                    if ev.revision >= w.next_rev and w.matches(ev):
                        w.queue.append(ev)
                w.synced = True
                return
            start = w.next_rev
            rows, compacted = await self.store.read(read_events, start, target, LOG_PAGE, flt)
            if compacted >= start:
                self.set_compact_revision(compacted)
                raise self.compacted_error(start)
            batch = [ev for ev in rows if w.matches(ev)]
            w.next_rev = rows[-1].revision + 1 if len(rows) == LOG_PAGE else target + 1
            for chunk in chunk_events(batch):
                yield frame_events(chunk[-1].revision, [ev.data for ev in chunk])

    def warm(self, events: list[PendingEvent]) -> None:
        """Fill the buffer with the newest logged events (at server start), so
        watchers resuming after a restart catch up from memory."""
        for ev in events:
            if ev.revision <= self.revision:
                self.buffer.append(ev)


async def tail_log(hub: WatchHub, interval: float | None = None) -> None:
    """Deliver the changes other server processes commit to the same
    PostgreSQL database: every `interval` (default TAIL_INTERVAL) read the
    database's revision and, when it moved past what this hub has seen,
    read the new events from the log and publish them. Returns at once on
    SQLite (one server per file). Runs until cancelled or the hub closes."""
    if not is_postgres(hub.store.db):
        return
    while not hub.closing:
        await asyncio.sleep(interval if interval is not None else TAIL_INTERVAL)
        try:
            rev = await hub.store.read(committed_revision)
        except Exception as e:  # the database is away: try again next round
            log.debug("log tail: reading the revision failed: %s", e)
            continue
        hub.observe(rev)
