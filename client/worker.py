"""The worker SDK: run Python functions as mediajobs job handlers.

    from mediajobs.client import Worker, RetryableError

    worker = Worker("127.0.0.1:50051", concurrency=8)

    @worker.handler("WATERMARK")            # a custom job type (TRANSCODE is the media worker's)
    def watermark(ctx):
        for pct in range(0, 100, 10):
            ctx.check_cancelled()           # raises JobCancelled after an abort
            ...                             # do a slice of the work
            ctx.report_progress(pct, "stamping")
        return {"output": ctx.params["source"] + ".marked.mp4"}

    worker.run_sync()                       # until SIGTERM/SIGINT or worker.stop()

Handlers take one `JobContext` and may be plain functions (run in a thread
pool sized to `concurrency`) or `async def` coroutines (run on the worker's
event loop, no thread hop). What a handler does decides how the job ends:

- returns a dict (or None)          -> CompleteJob with it as the result
- raises RetryableError             -> FailJob(retryable=True): PENDING again
                                       while attempts are left
- raises any other exception        -> FailJob: FAILED with
                                       "ExceptionType: message" (code UNKNOWN)
- raises JobCancelled after an abort-> the job ends ABORTED

Inside, everything is asyncio + grpc.aio on one event loop: one long-poll
AcquireJobs at a time asks for as many jobs as there are free slots (up to
100 per call); completions are queued and sent with CompleteJobs, up to 500
per call, each flush starting as soon as the previous one returned; a job
gets Heartbeat calls (every lease/3, extending the lease, carrying the latest
progress report) only while it runs longer than that. Transient failures
(UNAVAILABLE, a server restart) are retried with jittered exponential
back-off, without dropping results that are waiting to be sent.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import functools
import inspect
import itertools
import logging
import math
import os
import signal
import socket
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence, TypeVar, Union

import grpc
from google.protobuf import duration_pb2, json_format, struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from mediajobs.v1 import resources_pb2 as res
from mediajobs.v1 import worker_service_pb2 as wsvc
from mediajobs.server import payloads  # the server's own payload rules, checked before sending
from mediajobs.v1 import worker_service_pb2_grpc as wsvc_grpc

from .client import DEFAULT_CHANNEL_OPTIONS, DEFAULT_TARGET
from .errors import MediaJobsError
from .watch import Backoff

log = logging.getLogger("mediajobs.worker")
# One line per finished job at INFO (the CLI shows them with -v).
job_log = logging.getLogger("mediajobs.worker.jobs")

Job = res.Job
Handler = Callable[["JobContext"], Any]
_F = TypeVar("_F", bound=Handler)

MAX_ACQUIRE = 100  # the server's AcquireJobs max_jobs
MAX_COMPLETIONS = 500  # the server's CompleteJobs limit
MAX_ERROR_MESSAGE = 4000
# On stop, how long an AcquireJobs call in flight may still return by itself.
ACQUIRE_STOP_GRACE = 0.25
MAX_TRACEBACK = 16_000

# Failures that retrying cannot fix: the worker stops with the error.
_FATAL_CODES = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
})
# Failures after which a Heartbeat/Complete/Fail/Release is retried.
_TRANSIENT_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
})

_instance_ids = itertools.count()


# -- errors -------------------------------------------------------------------------


class JobCancelled(Exception):
    """Raised by `JobContext.check_cancelled()` once the job was aborted, its
    lease was lost, or the worker is stopping. Let it propagate: after an
    abort the job ends ABORTED; otherwise nothing more is sent for it."""

    def __init__(self, reason: str = "cancelled") -> None:
        super().__init__(reason)
        self.reason = reason


class RetryableError(Exception):
    """Raise from a handler for a failure another attempt may not have: the
    job goes back to PENDING (while it has attempts left) and is leased again
    after `retry_delay` seconds (None or 0: the server's exponential backoff,
    1 s, 2 s, 4 s, ...)."""

    def __init__(self, message: str = "", retry_delay: float | dt.timedelta | None = None) -> None:
        super().__init__(message)
        if isinstance(retry_delay, dt.timedelta):
            retry_delay = retry_delay.total_seconds()
        if retry_delay is not None and retry_delay < 0:
            raise ValueError("retry_delay must not be negative")
        self.retry_delay = retry_delay


# -- the handler's view of a job ---------------------------------------------------------


class JobContext:
    """What a handler gets: the leased job, its parameters, progress
    reporting and cancellation.

    `report_progress`, `cancelled`, `check_cancelled` and `wait_cancelled` are
    safe to call from the handler's thread (sync handlers) or from the event
    loop (async handlers).
    """

    def __init__(self, job: res.Job, lease_token: str, worker: "Worker", held: "_Held", storage_area: str = ""
                 ) -> None:
        self.job = job
        self.lease_token = lease_token
        #: The job's project's area of the storage root (relative; "" = the
        #: root itself): the job's paths are relative to it (see area_root).
        self.storage_area = storage_area
        self._worker = worker
        self._held = held
        self._lock = threading.Lock()
        self._pending: tuple[int, str, struct_pb2.Struct | None] | None = None
        self._wake_armed = False
        self._cancel = threading.Event()
        self._cancel_async: asyncio.Event | None = None
        #: Why the job was cancelled ("aborted", "lease lost", "worker stopping"), or "".
        self.cancel_reason = ""
        #: Whether the abort asked to skip cleanup steps.
        self.skip_cleanup = False

    def area_root(self, storage_root: Path) -> Path:
        """The directory under `storage_root` this job's paths are relative
        to: its project's area. A server hands out only plain relative
        areas; anything else is refused rather than followed."""
        area = self.storage_area
        if not area:
            return storage_root
        parts = area.split("/")
        if area.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"the server gave an unusable storage area {area[:80]!r}")
        return storage_root.joinpath(*parts)

    def __repr__(self) -> str:
        return f"<JobContext {self.job.type} {self.job.id} attempt {self.attempt}>"

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def job_type(self) -> str:
        return self.job.type

    @property
    def attempt(self) -> int:
        """Which attempt this is (1 for the first lease)."""
        return self.job.attempt_count

    @property
    def stub(self) -> wsvc_grpc.WorkerServiceAsyncStub:
        """The worker's WorkerService stub (its own channel), for async
        handlers that make worker calls of their own with `lease_token`
        (the live worker's AuthorizePublish and ReportLiveStatus)."""
        return self._worker._stub

    @functools.cached_property
    def params(self) -> dict[str, Any]:
        """The job's params as plain Python values (JSON numbers are floats)."""
        return json_format.MessageToDict(self.job.params) if self.job.HasField("params") else {}

    @functools.cached_property
    def metadata(self) -> dict[str, str]:
        return dict(self.job.metadata)

    # -- progress ----------------------------------------------------------------

    def report_progress(self, percent: float, message: str = "", details: Mapping[str, Any] | None = None) -> None:
        """Report progress (0-100; the server keeps the highest value of the
        attempt). Reports are coalesced: only the latest is sent, at once when
        none was sent in the last `progress_interval` seconds, else with the
        next heartbeat."""
        pct = max(0, min(100, int(percent)))
        st: struct_pb2.Struct | None = None
        if details is not None:
            st = struct_pb2.Struct()
            st.update(dict(details))
            _check_payload(st, "details", payloads.MAX_PROGRESS_DETAILS_BYTES)
        with self._lock:
            self._pending = (pct, message[:1024], st)
            wake = not self._wake_armed
            self._wake_armed = True
        if wake:
            self._worker._progress_reported_threadsafe(self._held)

    def _take_progress(self) -> tuple[int, str, struct_pb2.Struct | None] | None:
        with self._lock:
            p, self._pending = self._pending, None
            self._wake_armed = False
            return p

    def _put_back_progress(self, p: tuple[int, str, struct_pb2.Struct | None]) -> None:
        with self._lock:
            if self._pending is None:
                self._pending = p

    @property
    def has_pending_progress(self) -> bool:
        return self._pending is not None

    # -- cancellation ---------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """True once the job was aborted (seen by a heartbeat), its lease was
        lost, or the worker is stopping without waiting for it."""
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        """Raise JobCancelled if `cancelled`."""
        if self._cancel.is_set():
            raise JobCancelled(self.cancel_reason or "cancelled")

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block (a sync handler) until cancelled or `timeout` seconds pass;
        returns `cancelled`. Use it instead of time.sleep."""
        return self._cancel.wait(timeout)

    async def wait_cancelled_async(self, timeout: float | None = None) -> bool:
        """Await (an async handler) until cancelled or `timeout` seconds pass;
        returns `cancelled`."""
        if self._cancel.is_set():
            return True
        if self._cancel_async is None:
            self._cancel_async = asyncio.Event()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._cancel_async.wait(), timeout)
        return self._cancel.is_set()

    def _set_cancelled(self, reason: str) -> None:  # event loop only
        if self._cancel.is_set():
            return
        self.cancel_reason = reason
        self._cancel.set()
        if self._cancel_async is not None:
            self._cancel_async.set()


# -- bookkeeping of one leased job ---------------------------------------------------------


class _Held:
    __slots__ = ("job_id", "token", "ctx", "lease_s", "started", "timer", "hb_inflight", "last_progress_sent",
                 "handler_done", "lost", "abandoned", "task", "hb_failures")

    def __init__(self, lj: wsvc.LeasedJob, lease_s: float, now: float) -> None:
        self.job_id = lj.job.id
        self.token = lj.lease_token
        self.lease_s = lease_s
        self.started = now
        self.timer: asyncio.TimerHandle | None = None
        self.hb_inflight = False
        self.last_progress_sent = -math.inf
        self.handler_done = False
        self.lost = False  # the lease is gone: nothing more is sent
        self.abandoned = False  # released at stop while the handler still ran
        self.task: asyncio.Future[Any] | None = None
        self.hb_failures = 0
        self.ctx: JobContext


@dataclass(frozen=True)
class _Complete:
    result: struct_pb2.Struct | None


@dataclass(frozen=True)
class _Fail:
    error: status_pb2.Status
    retryable: bool
    retry_delay: float | None


@dataclass(frozen=True)
class _Drop:
    why: str


_Outcome = Union[_Complete, _Fail, _Drop]


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromMicroseconds(int(seconds * 1e6))
    return d


def _status_of(e: BaseException, code: int) -> status_pb2.Status:
    message = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[: MAX_ERROR_MESSAGE - 3] + "..."
    st = status_pb2.Status(code=code, message=message)
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    if len(tb) > MAX_TRACEBACK:
        tb = "...\n" + tb[-MAX_TRACEBACK:]
    st.details.add().Pack(error_details_pb2.DebugInfo(stack_entries=tb.splitlines(), detail=message))
    return st


def _traceback_of(st: status_pb2.Status) -> str:
    for d in st.details:
        info = error_details_pb2.DebugInfo()
        if d.Unpack(info) and info.stack_entries:
            return "\n" + "\n".join(info.stack_entries)
    return ""


def _to_result(value: Any) -> struct_pb2.Struct | None:
    if value is None:
        return None
    if isinstance(value, struct_pb2.Struct):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"a handler must return a dict or None, not {type(value).__name__}")
    st = struct_pb2.Struct()
    st.update(dict(value))
    _check_payload(st, "result", payloads.MAX_RESULT_BYTES)
    return st


class PayloadError(ValueError):
    """A result or progress details the server would refuse (nested too
    deep, NaN or infinite numbers, too large): raised in the handler, so the
    job fails with this message instead of its completion being refused."""


def _check_payload(st: struct_pb2.Struct, field: str, max_bytes: int) -> None:
    # The server's own validator, so the SDK and the server never disagree.
    found = payloads.struct_violations(st, field, max_bytes)
    if found:
        raise PayloadError("; ".join(f"{f}: {d}" for f, d in found[:3]))


def _outcome_of_exception(ctx: JobContext, e: BaseException) -> _Outcome:
    if isinstance(e, JobCancelled):
        if ctx.cancel_reason == "aborted":
            return _Complete(None)  # the server ends an ABORTING job ABORTED
        if ctx.cancelled:
            return _Drop(ctx.cancel_reason)
        return _Fail(_status_of(e, code_pb2.CANCELLED), False, None)
    if isinstance(e, RetryableError):
        return _Fail(_status_of(e, code_pb2.UNAVAILABLE), True, e.retry_delay)
    return _Fail(_status_of(e, code_pb2.UNKNOWN), False, None)


def _rpc_code(e: grpc.RpcError) -> grpc.StatusCode:
    code = e.code() if isinstance(e, grpc.aio.AioRpcError) else None
    return code or grpc.StatusCode.UNKNOWN


def _lease_lost(e: grpc.RpcError) -> bool:
    """ABORTED (LEASE_LOST) or NOT_FOUND (the job was deleted)."""
    return _rpc_code(e) in (grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND)


def _describe(e: grpc.RpcError) -> str:
    err = MediaJobsError.from_rpc_error(e)
    return f"{err.code.name}: {err.message}"


def _parse_lock_key(k: res.LockKey | Sequence[Any] | None, instance: int) -> res.LockKey:
    if isinstance(k, res.LockKey):
        return k
    if k is None:
        wid = str(os.getpid()) + (f".{instance}" if instance else "")
        return res.LockKey(scheduler_id=socket.gethostname()[:64], worker_id=wid, batch_index=0)
    parts = list(k)
    if len(parts) != 3:
        raise ValueError("lock_key is (scheduler_id, worker_id, batch_index) or a LockKey")
    return res.LockKey(scheduler_id=str(parts[0]), worker_id=str(parts[1]), batch_index=int(parts[2]))


# -- the worker ----------------------------------------------------------------------------


class Worker:
    """Leases jobs of the registered types from a mediajobs server and runs
    their handlers, at most `concurrency` at a time.

    `lease_duration` is the requested lease length in seconds (heartbeats
    extend it every third of it while a handler runs); `drain_timeout` is how
    long a graceful stop waits for running handlers; `progress_interval` the
    minimum spacing of progress reports of one job; `poll_timeout` how long
    one AcquireJobs long-poll waits for work. `channel_options` replace the
    client's default grpc channel options.
    """

    _drain_deadline: float | None
    _channel: grpc.aio.Channel
    _stub: wsvc_grpc.WorkerServiceAsyncStub
    _flusher: asyncio.Task[None]
    _acquirer: asyncio.Task[None]
    _acquire_call: Any

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        concurrency: int = 8,
        lease_duration: float = 30.0,
        identity: str | None = None,
        lock_key: res.LockKey | tuple[str, str, int] | None = None,
        channel_options: Sequence[tuple[str, Any]] | None = None,
        drain_timeout: float = 30.0,
        progress_interval: float = 0.5,
        poll_timeout: float = 20.0,
        call_timeout: float = 10.0,
        backoff: Backoff | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        api_key: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if lease_duration < 1:
            raise ValueError("lease_duration must be at least 1 second (the server's minimum)")
        instance = next(_instance_ids)
        self.target = target
        self.concurrency = concurrency
        self.lease_duration = float(lease_duration)
        self.identity = identity if identity is not None else f"{socket.gethostname()}:{os.getpid()}"
        self.lock_key = _parse_lock_key(lock_key, instance)
        self.channel_options = list(channel_options if channel_options is not None else DEFAULT_CHANNEL_OPTIONS)
        self.drain_timeout = drain_timeout
        self.progress_interval = progress_interval
        self.poll_timeout = poll_timeout
        self.call_timeout = call_timeout
        self.backoff = backoff or Backoff(initial=0.1, maximum=5.0)
        self.credentials = credentials  # TLS (mediajobs.client.tls_credentials); None: plaintext
        self.api_key = api_key  # servers with --auth keys: a key of the worker role
        self._handlers: dict[str, Handler] = {}
        self._is_async: dict[str, bool] = {}
        # Per run (see run()):
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._early_stop: float | None = None
        self._running_flag = False
        self._threads_lock = threading.Lock()
        self._threads_busy = 0
        self.stats: collections.Counter[str] = collections.Counter()

    # -- registration ---------------------------------------------------------------

    def handler(self, job_type: str) -> Callable[[_F], _F]:
        """Decorator: `@worker.handler("WATERMARK")` registers the function."""

        def deco(fn: _F) -> _F:
            self.register(job_type, fn)
            return fn

        return deco

    def register(self, job_type: str, fn: Handler) -> None:
        """Run `fn(ctx)` for jobs of `job_type` (a sync function or async def)."""
        if not job_type:
            raise ValueError("job_type must not be empty")
        if not callable(fn):
            raise TypeError(f"handler for {job_type!r} is not callable")
        self._handlers[job_type] = fn
        self._is_async[job_type] = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)
        )

    @property
    def job_types(self) -> list[str]:
        """The registered job types."""
        return list(self._handlers)

    # -- running ----------------------------------------------------------------------

    def run_sync(self, *, types: Iterable[str] | None = None, handle_signals: bool | None = None) -> None:
        """Run the worker in a new event loop until it is stopped (blocks)."""
        asyncio.run(self.run(types=types, handle_signals=handle_signals))

    def stop(self, drain_timeout: float | None = None) -> None:
        """Stop gracefully; callable from any thread (or a signal handler).

        Acquiring stops at once; running handlers get `drain_timeout` seconds
        (default: the worker's `drain_timeout`) to finish; their results are
        sent; jobs whose handlers are still running then are released back to
        the queue (their handlers see `cancelled`, and whatever they return
        later is dropped). Calling it again with a smaller timeout shortens
        the wait; `stop(0)` releases at once. `run()` returns when done."""
        timeout = self.drain_timeout if drain_timeout is None else max(0.0, drain_timeout)
        loop = self._loop
        if loop is None or not self._running_flag:
            self._early_stop = timeout if self._early_stop is None else min(self._early_stop, timeout)
            return
        if threading.get_ident() == self._loop_thread:
            self._request_stop(timeout)
        else:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(self._request_stop, timeout)

    async def run(self, *, types: Iterable[str] | None = None, handle_signals: bool | None = None) -> None:
        """Lease and run jobs until `stop()` (or SIGTERM/SIGINT when
        `handle_signals`, default: when running in the main thread; a second
        signal stops at once). `types` restricts the registered types served.

        Raises MediaJobsError when the server refuses the worker for good
        (e.g. INVALID_ARGUMENT for a bad job type), after a graceful stop."""
        if self._running_flag:
            raise RuntimeError("this Worker is already running")
        served = list(dict.fromkeys(types)) if types is not None else list(self._handlers)
        unknown = [t for t in served if t not in self._handlers]
        if unknown:
            raise ValueError(f"no handler registered for {', '.join(unknown)}")
        if not served:
            raise ValueError("no job types to serve: register a handler first")
        self._setup_run(served)
        loop = asyncio.get_running_loop()
        if handle_signals is None:
            handle_signals = threading.current_thread() is threading.main_thread()
        installed: list[signal.Signals] = []
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, self._on_signal, sig)
                    installed.append(sig)
        interceptors = None
        if self.api_key:
            from .auth import aio_interceptors

            interceptors = aio_interceptors(self.api_key)
        self._channel = grpc.aio.secure_channel(self.target, self.credentials, options=self.channel_options,
                                                interceptors=interceptors) if self.credentials is not None \
            else grpc.aio.insecure_channel(self.target, options=self.channel_options, interceptors=interceptors)
        self._stub = wsvc_grpc.WorkerServiceStub(self._channel)
        self._flusher = loop.create_task(self._flush_loop(), name="mediajobs-worker-flush")
        self._acquirer = loop.create_task(self._acquire_loop(), name="mediajobs-worker-acquire")
        fatal: BaseException | None = None
        try:
            if self._early_stop is not None:
                self._request_stop(self._early_stop)
            stop_wait = loop.create_task(self._stop_event.wait())
            try:
                await asyncio.wait([stop_wait, self._acquirer], return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                # run() itself was cancelled: release what is held, then go.
                stop_wait.cancel()
                self._request_stop(0.0)
                with contextlib.suppress(Exception):
                    await self._shutdown()
                raise
            stop_wait.cancel()
            if self._acquirer.done() and not self._acquirer.cancelled():
                fatal = self._acquirer.exception()
            if fatal is not None and self._drain_deadline is None:
                self._drain_deadline = loop.time() + self.drain_timeout
            await self._shutdown()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self._close()
        if fatal is not None:
            raise fatal

    # -- run state ----------------------------------------------------------------------

    def _setup_run(self, served: list[str]) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._running_flag = True
        self._served = served
        self._held: dict[str, _Held] = {}
        self._running = 0
        self._capacity = asyncio.Event()
        self._outbox: collections.deque[tuple[_Held, wsvc.CompleteJobRequest]] = collections.deque()
        self._outbox_ready = asyncio.Event()
        self._flush_idle = asyncio.Event()
        self._flush_idle.set()
        self._handlers_idle = asyncio.Event()
        self._handlers_idle.set()
        self._stop_event = asyncio.Event()
        self._drain_changed = asyncio.Event()
        self._drain_deadline = None
        self._stopping = False
        self._acquire_call = None
        self._closed = False
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._batch_limit = MAX_COMPLETIONS
        self._sync_futs: set[asyncio.Future[_Outcome]] = set()
        self._executor: ThreadPoolExecutor | None = None
        if not all(self._is_async[t] for t in served):
            self._executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="mediajobs-handler")

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stopping:
            log.warning("%s again: stopping at once, releasing running jobs", sig.name)
            self._request_stop(0.0)
        else:
            log.info("%s: stopping (waiting up to %.0fs for %d running job(s); again to stop at once)",
                     sig.name, self.drain_timeout, self._running)
            self._request_stop(self.drain_timeout)

    def _request_stop(self, timeout: float) -> None:
        if self._closed:
            return
        assert self._loop is not None
        deadline = self._loop.time() + timeout
        if self._drain_deadline is None or deadline < self._drain_deadline:
            self._drain_deadline = deadline
        self._stopping = True
        self._stop_event.set()
        self._drain_changed.set()

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        assert self._loop is not None
        t: asyncio.Task[Any] = self._loop.create_task(coro, name=name)  # type: ignore[arg-type]
        self._side_tasks.add(t)
        t.add_done_callback(self._side_tasks.discard)
        return t

    # -- acquisition ---------------------------------------------------------------------

    async def _acquire_loop(self) -> None:
        assert self._loop is not None
        loop = self._loop
        attempt = 0
        last_warning = -math.inf
        base = wsvc.AcquireJobsRequest(
            job_types=self._served, lock_key=self.lock_key, identity=self.identity[:200],
            lease_duration=_duration(self.lease_duration), wait_timeout=_duration(self.poll_timeout),
        )
        while not self._stopping:
            while self._running >= self.concurrency or len(self._outbox) >= MAX_COMPLETIONS:
                self._capacity.clear()
                await self._capacity.wait()
            req = wsvc.AcquireJobsRequest()
            req.CopyFrom(base)
            req.max_jobs = min(self.concurrency - self._running, MAX_ACQUIRE)
            call = self._acquire_call = self._stub.AcquireJobs(req, timeout=self.poll_timeout + 10.0)
            try:
                resp = await call
            except asyncio.CancelledError:
                if self._stopping and call.cancelled():
                    return  # stop() cancelled the long-poll (see _stop_acquiring)
                raise
            except grpc.aio.AioRpcError as e:
                code = _rpc_code(e)
                if self._stopping and code == grpc.StatusCode.CANCELLED:
                    return
                if code in _FATAL_CODES:
                    log.error("the server refuses this worker: %s", _describe(e))
                    raise MediaJobsError.from_rpc_error(e) from None
                delay = self.backoff.delay(attempt)
                if attempt == 0 or loop.time() - last_warning > 60:
                    last_warning = loop.time()
                    log.warning("acquiring jobs from %s failed (%s); retrying with back-off", self.target, _describe(e))
                else:
                    log.debug("acquire retry %d failed (%s); next in %.2fs", attempt, _describe(e), delay)
                attempt += 1
                await asyncio.sleep(delay)
                continue
            finally:
                self._acquire_call = None
            if attempt:
                log.info("connected to %s again", self.target)
                attempt = 0
            self.stats["acquire_calls"] += 1
            if not resp.jobs:
                continue
            lease_s = resp.lease_duration.ToMicroseconds() / 1e6 or self.lease_duration
            now = loop.time()
            for lj in resp.jobs:
                self._start(lj, lease_s, now)

    def _start(self, lj: wsvc.LeasedJob, lease_s: float, now: float) -> None:
        assert self._loop is not None
        held = _Held(lj, lease_s, now)
        ctx = held.ctx = JobContext(lj.job, lj.lease_token, self, held, lj.storage_area)
        self._held[held.job_id] = held
        self._running += 1
        self._handlers_idle.clear()
        self.stats["acquired"] += 1
        held.timer = self._loop.call_at(now + lease_s / 3, self._heartbeat_due, held)
        fn = self._handlers.get(lj.job.type)
        if fn is None:  # cannot happen: only served types are asked for
            self._handler_done(held, _Fail(status_pb2.Status(code=code_pb2.INTERNAL,
                                                              message=f"no handler for {lj.job.type}"), True, None))
            return
        if self._is_async[lj.job.type]:
            held.task = self._loop.create_task(self._run_async(fn, held))
        else:
            assert self._executor is not None
            fut = self._loop.run_in_executor(self._executor, self._run_sync_handler, fn, ctx)
            held.task = fut
            self._sync_futs.add(fut)
            fut.add_done_callback(self._sync_futs.discard)
            fut.add_done_callback(functools.partial(self._sync_done, held))

    async def _run_async(self, fn: Handler, held: _Held) -> None:
        ctx = held.ctx
        outcome: _Outcome
        try:
            outcome = _Complete(_to_result(await fn(ctx)))
        except asyncio.CancelledError:
            outcome = _Drop("cancelled at stop")
            if not held.abandoned:
                self._handler_done(held, outcome)
                raise
        except BaseException as e:  # noqa: BLE001 - every failure ends the job
            outcome = _outcome_of_exception(ctx, e)
            if not isinstance(e, Exception):
                self._handler_done(held, outcome)
                raise
        self._handler_done(held, outcome)

    def _run_sync_handler(self, fn: Handler, ctx: JobContext) -> _Outcome:
        with self._threads_lock:
            self._threads_busy += 1
        try:
            return _Complete(_to_result(fn(ctx)))
        except Exception as e:  # noqa: BLE001
            return _outcome_of_exception(ctx, e)
        finally:
            with self._threads_lock:
                self._threads_busy -= 1

    def _sync_done(self, held: _Held, fut: asyncio.Future[_Outcome]) -> None:
        if fut.cancelled():
            outcome: _Outcome = _Drop("cancelled at stop")
        elif fut.exception() is not None:
            outcome = _outcome_of_exception(held.ctx, fut.exception())  # type: ignore[arg-type]
        else:
            outcome = fut.result()
        self._handler_done(held, outcome)

    def _handler_done(self, held: _Held, outcome: _Outcome) -> None:
        if held.handler_done:
            return
        held.handler_done = True
        self._running -= 1
        self._capacity.set()
        if self._running == 0:
            self._handlers_idle.set()
        elapsed = (self._loop.time() - held.started) if self._loop is not None else 0.0
        job = held.ctx.job
        if held.lost or held.abandoned or self._closed:
            if held.lost:
                job_log.info("job %s %s: lease lost; its outcome after %.2fs is dropped", job.id, job.type, elapsed)
            else:
                job_log.info("job %s %s: released at stop after %.2fs; its handler's outcome is dropped",
                             job.id, job.type, elapsed)
            self.stats["dropped"] += 1
            self._forget(held)
            return
        if isinstance(outcome, _Complete):
            req = wsvc.CompleteJobRequest(job_id=held.job_id, lease_token=held.token)
            if outcome.result is not None:
                req.result.CopyFrom(outcome.result)
            self._outbox.append((held, req))
            self._outbox_ready.set()
            self._flush_idle.clear()
            if held.ctx.cancel_reason == "aborted":
                job_log.info("job %s %s aborted after %.2fs", job.id, job.type, elapsed)
            else:
                job_log.info("job %s %s done in %.2fs", job.id, job.type, elapsed)
        elif isinstance(outcome, _Fail):
            if outcome.retryable:
                job_log.info("job %s %s attempt %d failed after %.2fs, will retry: %s", job.id, job.type,
                             job.attempt_count, elapsed, outcome.error.message)
            else:
                job_log.warning("job %s %s failed after %.2fs: %s%s", job.id, job.type, elapsed, outcome.error.message,
                                _traceback_of(outcome.error))
            self._spawn(self._fail(held, outcome), f"mediajobs-fail-{held.job_id}")
        else:
            job_log.info("job %s %s stopped after %.2fs (%s); nothing sent", job.id, job.type, elapsed, outcome.why)
            self.stats["dropped"] += 1
            self._forget(held)

    def _forget(self, held: _Held) -> None:
        if self._held.get(held.job_id) is held:
            del self._held[held.job_id]
        if held.timer is not None:
            held.timer.cancel()
            held.timer = None

    # -- completion -----------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        attempt = 0
        while True:
            if not self._outbox:
                self._flush_idle.set()
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
                continue
            n = min(len(self._outbox), self._batch_limit)
            batch = [self._outbox.popleft() for _ in range(n)]
            self._capacity.set()  # the acquirer may wait for the outbox to shrink
            try:
                resp = await self._stub.CompleteJobs(
                    wsvc.CompleteJobsRequest(completions=[r for _, r in batch]), timeout=self.call_timeout
                )
            except grpc.aio.AioRpcError as e:
                code = _rpc_code(e)
                if len(batch) > 1 and (code == grpc.StatusCode.RESOURCE_EXHAUSTED or code not in _TRANSIENT_CODES):
                    # Too big, or refused as a whole: send smaller batches.
                    self._outbox.extendleft(reversed(batch))
                    self._batch_limit = max(1, len(batch) // 2)
                    log.warning("CompleteJobs of %d refused (%s); retrying in batches of %d",
                                len(batch), _describe(e), self._batch_limit)
                    continue
                if code in _TRANSIENT_CODES and code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    self._outbox.extendleft(reversed(batch))
                    delay = self.backoff.delay(attempt)
                    if attempt == 0:
                        log.warning("sending %d completion(s) failed (%s); retrying with back-off", len(batch),
                                    _describe(e))
                    attempt += 1
                    await asyncio.sleep(delay)
                    continue
                held, _ = batch[0]
                log.error("completion of job %s refused (%s); dropped", held.job_id, _describe(e))
                self.stats["completion_errors"] += 1
                self._forget(held)
                continue
            self.stats["complete_calls"] += 1
            if attempt:
                log.info("completions are going through again")
            attempt = 0
            for (held, _), r in zip(batch, resp.results):
                if r.HasField("error"):
                    self.stats["completion_errors"] += 1
                    log.warning("completion of job %s refused: %s", held.job_id, r.error.message)
                else:
                    self.stats["completed"] += 1
                self._forget(held)

    async def _fail(self, held: _Held, f: _Fail) -> None:
        req = wsvc.FailJobRequest(job_id=held.job_id, lease_token=held.token, error=f.error, retryable=f.retryable)
        if f.retry_delay:
            req.retry_delay.CopyFrom(_duration(f.retry_delay))
        try:
            await self._call_with_retry(self._stub.FailJob, req, "FailJob", held)
            self.stats["failed"] += 1
        finally:
            self._forget(held)

    async def _call_with_retry(self, method: Any, req: Any, what: str, held: _Held) -> Any:
        attempt = 0
        while True:
            try:
                return await method(req, timeout=self.call_timeout)
            except grpc.aio.AioRpcError as e:
                code = _rpc_code(e)
                if code in _TRANSIENT_CODES and not self._closed:
                    if attempt == 0:
                        log.warning("%s of job %s failed (%s); retrying", what, held.job_id, _describe(e))
                    await asyncio.sleep(self.backoff.delay(attempt))
                    attempt += 1
                    continue
                level = logging.WARNING if attempt == 0 else logging.INFO
                log.log(level, "%s of job %s refused (%s)%s", what, held.job_id, _describe(e),
                        "; it may have been recorded before the connection dropped" if attempt else "")
                return None

    # -- heartbeats ------------------------------------------------------------------------

    def _heartbeat_due(self, held: _Held) -> None:
        held.timer = None
        if held.hb_inflight or self._held.get(held.job_id) is not held or self._closed:
            return
        held.hb_inflight = True
        self._spawn(self._heartbeat(held), f"mediajobs-heartbeat-{held.job_id}")

    def _arm(self, held: _Held, delay: float) -> None:
        assert self._loop is not None
        if held.timer is not None:
            held.timer.cancel()
        held.timer = self._loop.call_later(max(0.0, delay), self._heartbeat_due, held)

    async def _heartbeat(self, held: _Held) -> None:
        assert self._loop is not None
        loop = self._loop
        ctx = held.ctx
        report = None if held.handler_done else ctx._take_progress()
        req = wsvc.HeartbeatRequest(job_id=held.job_id, lease_token=held.token)
        if report is not None:
            req.progress, req.message = report[0], report[1]
            if report[2] is not None:
                req.details.CopyFrom(report[2])
        sent = loop.time()
        interval = held.lease_s / 3
        try:
            resp = await self._stub.Heartbeat(req, timeout=min(self.call_timeout, interval))
        except grpc.aio.AioRpcError as e:
            held.hb_inflight = False
            if self._closed or self._held.get(held.job_id) is not held:
                return
            if _lease_lost(e):
                self._on_lease_lost(held, _describe(e))
                return
            if report is not None:
                ctx._put_back_progress(report)
            held.hb_failures += 1
            if held.hb_failures == 1:
                log.warning("heartbeat of job %s failed (%s); retrying", held.job_id, _describe(e))
            # Retry well before the lease runs out.
            self._arm(held, min(interval, self.backoff.delay(held.hb_failures - 1) + 0.05))
            return
        held.hb_inflight = False
        held.hb_failures = 0
        self.stats["heartbeats"] += 1
        if report is not None:
            held.last_progress_sent = sent
        if resp.cancel_requested and not ctx.cancelled:
            ctx.skip_cleanup = resp.skip_cleanup
            ctx._set_cancelled("aborted")
            job_log.info("job %s %s: abort requested", held.job_id, ctx.job.type)
        if self._closed or self._held.get(held.job_id) is not held:
            return
        now = loop.time()
        due = sent + interval
        if ctx.has_pending_progress and not held.handler_done:
            due = min(due, max(now, held.last_progress_sent + self.progress_interval))
        self._arm(held, due - now)

    def _progress_reported_threadsafe(self, held: _Held) -> None:
        loop = self._loop
        if loop is None or self._closed:
            return
        if threading.get_ident() == self._loop_thread:
            self._progress_reported(held)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._progress_reported, held)

    def _progress_reported(self, held: _Held) -> None:
        assert self._loop is not None
        if held.hb_inflight or held.handler_done or self._closed or self._held.get(held.job_id) is not held:
            return  # an in-flight heartbeat re-arms for the pending report
        now = self._loop.time()
        due = max(now, held.last_progress_sent + self.progress_interval)
        if held.timer is not None and held.timer.when() <= due:
            return
        self._arm(held, due - now)

    def _on_lease_lost(self, held: _Held, why: str) -> None:
        if held.handler_done:
            return  # its completion is on its way and will tell
        held.lost = True
        self.stats["leases_lost"] += 1
        held.ctx._set_cancelled("lease lost")
        log.warning("lost the lease on job %s (%s); its result will not be sent", held.job_id, why)
        self._forget(held)

    # -- stopping ----------------------------------------------------------------------------

    async def _stop_acquiring(self) -> None:
        """End the acquire loop without losing jobs the server has just leased.

        Cancelling an AcquireJobs call after the server committed its leases
        loses the response, and with it the jobs until their leases expire.
        So a call in flight first gets ACQUIRE_STOP_GRACE seconds to return
        by itself (a call that is leasing returns within milliseconds; one
        parked in the long-poll does not), and is then cancelled as a call,
        not by cancelling the task, so a response that has arrived is still
        taken. Jobs it brings are drained or released like the others."""
        call = self._acquire_call
        if call is not None and not self._acquirer.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._acquirer), ACQUIRE_STOP_GRACE)
            if not self._acquirer.done() and self._acquire_call is not None:
                self._acquire_call.cancel()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._acquirer), 5.0)
        self._acquirer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._acquirer

    async def _shutdown(self) -> None:
        assert self._loop is not None
        loop = self._loop
        self._stopping = True
        await self._stop_acquiring()
        # Let running handlers finish, up to the drain deadline.
        while self._running and self._drain_deadline is not None:
            left = self._drain_deadline - loop.time()
            if left <= 0:
                break
            self._drain_changed.clear()
            idle = loop.create_task(self._handlers_idle.wait())
            changed = loop.create_task(self._drain_changed.wait())
            await asyncio.wait([idle, changed], timeout=None if math.isinf(left) else left,
                               return_when=asyncio.FIRST_COMPLETED)
            idle.cancel()
            changed.cancel()
        # Whatever still runs is released so another worker can take it now.
        abandoned = [h for h in self._held.values() if not h.handler_done]
        for h in abandoned:
            h.abandoned = True
            h.ctx._set_cancelled("worker stopping")
            if isinstance(h.task, asyncio.Task):
                h.task.cancel()
        if abandoned:
            log.info("releasing %d job(s) still running", len(abandoned))

        async def release(h: _Held) -> None:
            await self._call_with_retry(self._stub.ReleaseJob, wsvc.ReleaseJobRequest(
                job_id=h.job_id, lease_token=h.token), "ReleaseJob", h)
            self.stats["released"] += 1
            self._forget(h)

        async def settle() -> None:
            await self._flush_idle.wait()
            while self._side_tasks:
                pending = [t for t in self._side_tasks if not t.get_name().startswith("mediajobs-heartbeat")]
                if not pending:
                    break
                await asyncio.wait(pending)

        try:
            await asyncio.wait_for(asyncio.gather(settle(), *[release(h) for h in abandoned]),
                                   max(5.0, self.call_timeout))
        except asyncio.TimeoutError:
            log.error("stopping: could not send %d completion(s) / release %d job(s) in time; their leases "
                      "will expire", len(self._outbox), len([h for h in abandoned if h.job_id in self._held]))

    async def _close(self) -> None:
        self._closed = True
        for t in (self._flusher, self._acquirer, *self._side_tasks):
            t.cancel()
        for h in list(self._held.values()):
            if h.timer is not None:
                h.timer.cancel()
        waits: list[asyncio.Future[Any]] = [self._flusher, self._acquirer, *self._side_tasks]
        for h in list(self._held.values()):
            if isinstance(h.task, asyncio.Task):
                waits.append(h.task)
        for fut in list(self._sync_futs):
            fut.cancel()  # a sync handler's thread runs on; its result is dropped
        await asyncio.wait(waits, timeout=1.0)
        await self._channel.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._running_flag = False
        self._early_stop = None
        self._loop = None

    @property
    def busy_threads(self) -> int:
        """How many sync handlers are still executing in their threads (also
        after run() returned: a thread cannot be interrupted, only told via
        `ctx.cancelled`; whatever it returns is dropped)."""
        with self._threads_lock:
            return self._threads_busy
