"""A WatchJobs stream that survives dropped connections and server restarts.

The server gives every committed change a dense, strictly increasing store
revision, and every message it streams (events and progress bookmarks)
carries one. `JobWatch` remembers the last revision it received and, when the
stream breaks, re-opens it with `start_revision = last + 1` after a jittered
exponential back-off (never shorter than a RetryInfo delay the server sent
with the failure), so the caller sees every change exactly once and in
order, across any number of reconnects.
"""
from __future__ import annotations

import random
import re
import threading
from dataclasses import dataclass
from typing import Callable, Generator, Iterator, Sequence

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc as svc_grpc
from mediajobs.v1 import resources_pb2 as res

from .errors import MediaJobsError

# Codes after which the stream is re-opened from the last revision. CANCELLED
# includes calls gRPC core refuses before the server sees them (its queue of
# calls not yet picked up by the server is full: a bare CANCELLED).
RETRYABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
# INTERNAL / UNKNOWN are retried only when they come from the transport (a
# reset stream or connection), never when the server itself reported them.
_TRANSPORT_RESET = re.compile(
    r"rst_stream|stream removed|connection reset|socket closed|goaway|broken pipe|connection aborted|"
    r"end of stream|stream terminated|transport closed",
    re.IGNORECASE,
)


def is_retryable(err: grpc.RpcError) -> bool:
    """Whether a broken WatchJobs call should be re-opened.

    UNAVAILABLE, CANCELLED and RESOURCE_EXHAUSTED are; INTERNAL (or UNKNOWN)
    only when it is a transport reset without a server status; OUT_OF_RANGE
    (history compacted), INVALID_ARGUMENT and everything else are not.
    """
    e = MediaJobsError.from_rpc_error(err)
    if e.code in RETRYABLE_CODES:
        return True
    if e.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        return not e.reason and bool(_TRANSPORT_RESET.search(e.message))
    return False


# A server's RetryInfo is honoured up to this many seconds.
MAX_RETRY_INFO_DELAY = 300.0


def retry_info_delay(err: grpc.RpcError) -> float | None:
    """The retry delay (seconds) of a RetryInfo in the call's rich status, if
    any (an overloaded or draining server says how long to stay away)."""
    try:
        st = rpc_status.from_call(err)  # type: ignore[arg-type]
    except (ValueError, AttributeError, NotImplementedError):
        return None
    if st is None:
        return None
    for detail in st.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return min(MAX_RETRY_INFO_DELAY, max(0.0, info.retry_delay.ToMicroseconds() / 1e6))
    return None


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off with full jitter: before retry n (0-based) wait a
    uniformly random time in [0, min(maximum, initial * multiplier**n)]."""

    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        cap = min(self.maximum, self.initial * self.multiplier ** min(attempt, 64))
        return cap * rand()


@dataclass(frozen=True)
class RetryInfo:
    """What `on_retry` is told before each reconnect."""

    # The failure that broke the stream; None when the server ended it normally.
    error: MediaJobsError | None
    # Seconds about to be waited before re-opening the stream.
    delay: float
    # The start_revision of the next stream (None: the snapshot is restarted).
    next_revision: int | None
    # 0 for the first retry after a working stream, then 1, 2, ...
    attempt: int


OnRetry = Callable[[RetryInfo], None]


class JobWatch(Iterator[svc.WatchJobsResponse]):
    """An iterator of WatchJobsResponse messages (one event each, and progress
    bookmarks unless include_progress is False) that resumes by itself.

    Iterate it in one thread; `cancel()` may be called from any thread (the
    iteration then ends with StopIteration). Use it as a context manager, or
    call `close()` from the iterating thread, to release the stream.

    Resumption: after a retryable failure the stream is re-opened with
    start_revision = `last_revision` + 1, so no change is skipped or repeated.
    The wait before a re-open is the jittered back-off, but at least the
    RetryInfo delay the failure carried (plus up to half of it again, so
    refused clients do not all return at the same moment).
    A watch "from now" (start_revision 0, no snapshot) learns its starting
    revision from the progress message the server sends first; if the
    connection is lost before even that arrives, it starts from "now" again. With `send_initial_snapshot`, if the
    connection drops before the snapshot completes (its progress message with
    snapshot_complete), the snapshot is requested again and its SNAPSHOT
    events are sent again; changes are never repeated.

    Raises MediaJobsError (RevisionCompactedError for OUT_OF_RANGE) for
    failures that a retry cannot fix.
    """

    def __init__(
        self,
        stub: svc_grpc.JobServiceStub,
        *,
        job_ids: Sequence[str] = (),
        types: Sequence[str] = (),
        states: Sequence[res.Job.State.ValueType] = (),
        start_revision: int = 0,
        send_initial_snapshot: bool = False,
        progress_interval: float | None = None,
        include_progress: bool = True,
        backoff: Backoff | None = None,
        on_retry: OnRetry | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        if start_revision < 0:
            raise ValueError("start_revision must not be negative (0 means from now)")
        if send_initial_snapshot and start_revision:
            raise ValueError("send_initial_snapshot works only with start_revision = 0")
        self._stub = stub
        self.job_ids = list(job_ids)
        self.types = list(types)
        self.states = list(states)
        self.progress_interval = progress_interval
        self.include_progress = include_progress
        self.backoff = backoff or Backoff()
        self.on_retry = on_retry
        self.timeout = timeout
        # The last revision received (or implied by start_revision); the next
        # stream starts right after it. None until known.
        self.last_revision: int | None = start_revision - 1 if start_revision > 0 else None
        self.snapshot_pending = send_initial_snapshot
        self.reconnects = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._call: grpc.Call | None = None
        self._gen = self._run()

    # -- iterator protocol ---------------------------------------------------

    def __iter__(self) -> "JobWatch":
        return self

    def __next__(self) -> svc.WatchJobsResponse:
        return next(self._gen)

    def __enter__(self) -> "JobWatch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def next_revision(self) -> int | None:
        """The start_revision a reconnect would use (None: not known yet)."""
        return None if self.last_revision is None else self.last_revision + 1

    def cancel(self) -> None:
        """Stop the watch from any thread; the iteration ends."""
        self._stop.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()

    def close(self) -> None:
        """Stop the watch and release its stream (from the iterating thread)."""
        self.cancel()
        self._gen.close()

    # -- internals -------------------------------------------------------------

    def _request(self) -> svc.WatchJobsRequest:
        req = svc.WatchJobsRequest(job_ids=self.job_ids, types=self.types, states=self.states)
        if self.last_revision is not None:
            req.start_revision = self.last_revision + 1
        else:
            req.send_initial_snapshot = self.snapshot_pending
        if self.progress_interval is not None:
            req.progress_interval.FromNanoseconds(int(self.progress_interval * 1e9))
        return req

    def _stream(self, req: svc.WatchJobsRequest) -> Generator[svc.WatchJobsResponse, None, None]:
        call = self._stub.WatchJobs(req)
        with self._lock:
            self._call = call  # type: ignore[assignment]
        try:
            if self._stop.is_set():
                return
            yield from call
        finally:
            with self._lock:
                self._call = None
            call.cancel()

    @staticmethod
    def _split(resp: svc.WatchJobsResponse) -> list[svc.WatchJobsResponse]:
        """One message per event (the server may batch several)."""
        if len(resp.events) <= 1:
            return [resp]
        return [svc.WatchJobsResponse(revision=ev.revision, events=[ev]) for ev in resp.events]

    def _accept(self, resp: svc.WatchJobsResponse) -> bool:
        """Advance the cursor; False for messages the caller must not see."""
        if resp.events:
            ev = resp.events[0]
            if ev.type == res.JobEvent.SNAPSHOT:
                return self.snapshot_pending
            if self.last_revision is not None and ev.revision <= self.last_revision:
                return False  # already delivered before a reconnect
            self.last_revision = ev.revision
            return True
        if resp.HasField("progress"):
            if resp.progress.snapshot_complete:
                self.snapshot_pending = False
            if self.last_revision is None or resp.revision > self.last_revision:
                self.last_revision = resp.revision
            return self.include_progress
        return False

    def _run(self) -> Generator[svc.WatchJobsResponse, None, None]:
        attempt = 0
        while not self._stop.is_set():
            error: MediaJobsError | None = None
            hint: float | None = None
            try:
                stream = self._stream(self._request())
                try:
                    for batch in stream:
                        attempt = 0
                        for resp in self._split(batch):
                            if self._accept(resp):
                                yield resp
                finally:
                    stream.close()  # cancels the call, also when the caller stops iterating
            except grpc.FutureCancelledError:
                if self._stop.is_set():
                    return
                raise
            except grpc.RpcError as e:
                if self._stop.is_set():
                    return
                if not is_retryable(e):
                    raise MediaJobsError.from_rpc_error(e) from None
                error = MediaJobsError.from_rpc_error(e)
                hint = retry_info_delay(e)
            if self._stop.is_set():
                return
            delay = self.backoff.delay(attempt)
            if hint is not None:
                delay = max(delay, hint * (1.0 + 0.5 * random.random()))
            self.reconnects += 1
            if self.on_retry is not None:
                self.on_retry(RetryInfo(error, delay, self.next_revision, attempt))
            attempt += 1
            if self._stop.wait(delay):
                return
