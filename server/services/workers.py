"""WorkerService: exclusive leases with fencing, long-poll acquisition,
progress, completion, release, expiry recovery, and file checks."""
from __future__ import annotations

import asyncio
import re
import stat
from pathlib import Path
from typing import Any, Callable

import grpc
from google.protobuf import duration_pb2
from google.rpc import status_pb2

from mediajobs.v1 import resources_pb2 as res
from mediajobs.v1 import worker_service_pb2 as wsvc
from mediajobs.v1 import worker_service_pb2_grpc as wsvc_grpc

from ..convert import set_ts
from ..dispatch import Dispatcher
from .. import payloads
from ..admission import Admission, unlimited
from ..errors import ServiceError, clip, handle_errors, invalid_argument
from ..principal import caller
from ..storage import area_root, project_area, resolve_inside
from ..store import Store
from ..store import leases
from ..store import live_jobs as store_live
from .jobs import TYPE_RE, _check_job_id

CHILD_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")

Job = res.Job
DEFAULT_LEASE_S = 60.0
MIN_LEASE_S = 1.0
MAX_LEASE_S = 600.0
MAX_WAIT_S = 60.0
MAX_JOBS = 100
MAX_COMPLETIONS = 500
MAX_LOCK_KEY_CHARS = 256
DEADLINE_MARGIN_S = 0.5
# Leases are handed out only while at least this much of the caller's
# deadline is left: a reply sent later would likely arrive after the caller
# gave up, leaving the jobs leased to nobody until the lease ran out.
REPLY_MARGIN_S = 0.05


def _seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromMicroseconds(int(seconds * 1e6))
    return d


def _lease_seconds(req_field: duration_pb2.Duration, present: bool, field: str) -> float:
    if not present:
        return DEFAULT_LEASE_S
    s = _seconds(req_field)
    if s < 0:
        raise invalid_argument([(field, "must not be negative")])
    if s == 0:
        return DEFAULT_LEASE_S
    return min(max(s, MIN_LEASE_S), MAX_LEASE_S)


def _check_token(token: str) -> None:
    if not token:
        raise invalid_argument([("lease_token", "required: the token AcquireJobs returned with the job")])
    if len(token) > 64:
        raise invalid_argument([("lease_token", "not a lease token (at most 64 characters)")])


def _completions_reply(outcomes: list[Job | ServiceError]) -> wsvc.CompleteJobsResponse:
    """One result per completion. Jobs come without params, metadata and
    progress_details (payloads.COMPLETION_OMITS: the worker has them, GetJob
    returns them), so the reply holds little more than the results the
    worker just sent. Should it still pass payloads.MAX_REPLY_BYTES (hundreds
    of large results), every job comes as payloads.summary_view (id, type,
    state, counters, times): the completions happened either way."""

    def reply(view: Callable[[Job], Job]) -> wsvc.CompleteJobsResponse:
        resp = wsvc.CompleteJobsResponse()
        for out in outcomes:
            if isinstance(out, ServiceError):
                resp.results.add(error=out.to_status())
            else:
                resp.results.add(job=view(out))
        return resp

    resp = reply(payloads.completion_view)
    if resp.ByteSize() > payloads.MAX_REPLY_BYTES:
        resp = reply(payloads.summary_view)
    return resp


class WorkerService(wsvc_grpc.WorkerServiceServicer):
    def __init__(
        self, store: Store, dispatcher: Dispatcher, storage_root: Path, admission: Admission | None = None
    ) -> None:
        self.admission = admission or unlimited()
        self.store = store
        self.dispatcher = dispatcher
        self.storage_root = storage_root
        self._background: set[asyncio.Future[Any]] = set()

    @handle_errors
    async def AcquireJobs(self, request: wsvc.AcquireJobsRequest, context: grpc.aio.ServicerContext) -> wsvc.AcquireJobsResponse:
        v: list[tuple[str, str]] = []
        types = list(dict.fromkeys(request.job_types))
        if not types:
            v.append(("job_types", "required: the job types this worker runs, e.g. TRANSCODE"))
        for i, t in enumerate(types):
            if not TYPE_RE.match(t):
                v.append((f"job_types[{i}]", f"{clip(t)} is not a job type: use 1-64 letters, digits, '_', '-' or '.'"))
        if len(types) > 64:
            v.append(("job_types", "at most 64 types"))
        if not 0 <= request.max_jobs <= MAX_JOBS:
            v.append(("max_jobs", f"must be between 1 and {MAX_JOBS} (0 means 1)"))
        if len(request.identity) > 200:
            v.append(("identity", "at most 200 characters"))
        for f in ("scheduler_id", "worker_id"):  # stored in Job.lease and in problems
            if len(getattr(request.lock_key, f)) > MAX_LOCK_KEY_CHARS:
                v.append((f"lock_key.{f}", f"at most {MAX_LOCK_KEY_CHARS} characters"))
        if v:
            raise invalid_argument(v)
        lease_s = _lease_seconds(request.lease_duration, request.HasField("lease_duration"), "lease_duration")
        max_jobs = request.max_jobs or 1
        lease_us = int(lease_s * 1e6)
        lock_key, identity = request.lock_key, request.identity

        loop = asyncio.get_running_loop()
        wait_s = MAX_WAIT_S
        if request.HasField("wait_timeout"):
            wait_s = min(max(_seconds(request.wait_timeout), 0.0), MAX_WAIT_S)
        remaining = context.time_remaining()
        if remaining is not None:
            wait_s = min(wait_s, max(remaining - DEADLINE_MARGIN_S, 0.0))
        deadline = loop.time() + wait_s

        while True:
            seq = self.dispatcher.seq
            got = await self._acquire_once(types, max_jobs, lease_us, lock_key, identity)
            if got or request.no_wait:
                break
            if self.dispatcher.seq != seq:
                continue  # something became leasable while we looked
            left = deadline - loop.time()
            if left <= 0:
                break
            self.admission.park()  # RESOURCE_EXHAUSTED past --max-parked-acquires
            try:
                await self.dispatcher.wait(self.store.scope(), types, left)
            finally:
                self.admission.unpark()
        if got:
            remaining = context.time_remaining()
            if context.done() or (remaining is not None and remaining < REPLY_MARGIN_S):
                # The caller is gone, or its deadline passes before the reply
                # could reach it: the jobs go straight back to PENDING.
                self._give_back(got)
                got = []
            else:
                # If the call still ends without delivering (deadline or
                # cancel while the reply is on its way), give them back then.
                leased = got

                def give_back_unless_delivered(ctx: grpc.aio.ServicerContext) -> None:
                    if ctx.cancelled():
                        self._give_back(leased)

                context.add_done_callback(give_back_unless_delivered)  # type: ignore[arg-type]  # stub wants a class
        resp = wsvc.AcquireJobsResponse(lease_duration=_duration(lease_s))
        for item in got:
            lj = resp.jobs.add(job=item.job, lease_token=item.token,
                               storage_area=project_area(item.job.project, self.store.project))
            set_ts(lj.lease_expire_time, item.expire_time)
        return resp

    async def give_backs_done(self) -> None:
        """Wait until every job given back so far is PENDING again (drain, tests)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def _give_back(self, leased: list[leases.Leased]) -> None:
        """Unclaim jobs whose AcquireJobs reply never reached the worker (the
        attempt is not counted), in the background."""
        task = asyncio.ensure_future(self.store.write(lambda tx: leases.unclaim(tx, leased), bounded=False))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _acquire_once(
        self, types: list[str], max_jobs: int, lease_us: int, lock_key: res.LockKey, identity: str
    ) -> list[leases.Leased]:
        who = caller()
        holder = who.name if who is not None else ""
        fut = self.store.submit(lambda tx: leases.acquire(tx, types, max_jobs, lease_us, lock_key, identity,
                                                          holder=holder))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            # The caller went away (deadline, cancel) while the leases were
            # being committed: once they are, give the jobs straight back.
            self._background.add(fut)
            fut.add_done_callback(self._background.discard)
            fut.add_done_callback(self._unclaim_later)
            raise

    def _unclaim_later(self, fut: "asyncio.Future[list[leases.Leased]]") -> None:
        if fut.cancelled() or fut.exception() is not None or not fut.result():
            return
        self._give_back(fut.result())

    @handle_errors
    async def Heartbeat(self, request: wsvc.HeartbeatRequest, context: grpc.aio.ServicerContext) -> wsvc.HeartbeatResponse:
        _check_job_id(request.job_id, "job_id")
        _check_token(request.lease_token)
        if not 0 <= request.progress <= 100:
            raise invalid_argument([("progress", "must be between 0 and 100")])
        v = payloads.text_violations(request.message, "message", payloads.MAX_PROGRESS_MESSAGE_CHARS)
        if request.HasField("details"):
            v += payloads.struct_violations(request.details, "details", payloads.MAX_PROGRESS_DETAILS_BYTES)
        payloads.refuse(v)
        lease_s = 0.0  # the granted length
        if request.HasField("lease_duration") and _seconds(request.lease_duration):
            lease_s = _lease_seconds(request.lease_duration, True, "lease_duration")
        details = request.details if request.HasField("details") else None
        job, expire = await self.store.write(
            lambda tx: leases.heartbeat(
                tx, request.job_id, request.lease_token, request.progress, request.message, details, int(lease_s * 1e6)
            )
        )
        resp = wsvc.HeartbeatResponse(
            cancel_requested=job.state == Job.ABORTING, skip_cleanup=job.abort_skip_cleanup
        )
        set_ts(resp.lease_expire_time, expire)
        return resp

    @handle_errors
    async def CompleteJob(self, request: wsvc.CompleteJobRequest, context: grpc.aio.ServicerContext) -> Job:
        _check_job_id(request.job_id, "job_id")
        _check_token(request.lease_token)
        result = request.result if request.HasField("result") else None
        if result is not None:
            payloads.refuse(payloads.struct_violations(result, "result", payloads.MAX_RESULT_BYTES))
        return await self.store.write(lambda tx: leases.complete(tx, request.job_id, request.lease_token, result))

    @handle_errors
    async def CompleteJobs(self, request: wsvc.CompleteJobsRequest, context: grpc.aio.ServicerContext) -> wsvc.CompleteJobsResponse:
        items = list(request.completions)
        if not items:
            raise invalid_argument([("completions", "required: at least one completion")])
        if len(items) > MAX_COMPLETIONS:
            raise invalid_argument([("completions", f"at most {MAX_COMPLETIONS} per call, got {len(items)}")])
        violations: list[tuple[str, str]] = []
        for i, c in enumerate(items):
            try:
                _check_job_id(c.job_id, "job_id")
                _check_token(c.lease_token)
            except ServiceError as e:
                raise invalid_argument([(f"completions[{i}].{f}", d) for f, d in e.violations])
            if c.HasField("result"):
                violations += payloads.struct_violations(c.result, f"completions[{i}].result", payloads.MAX_RESULT_BYTES)
        payloads.refuse(violations)
        work = [(c.job_id, c.lease_token, c.result if c.HasField("result") else None) for c in items]
        outcomes = await self.store.write(lambda tx: leases.complete_many(tx, work))
        return _completions_reply(outcomes)

    @handle_errors
    async def FailJob(self, request: wsvc.FailJobRequest, context: grpc.aio.ServicerContext) -> Job:
        _check_job_id(request.job_id, "job_id")
        _check_token(request.lease_token)
        if not request.HasField("error") or not request.error.message:
            raise invalid_argument([("error", "required: a google.rpc.Status with at least a message")])
        payloads.refuse(payloads.status_violations(request.error, "error", payloads.MAX_ERROR_BYTES))
        delay_us = 0
        if request.HasField("retry_delay"):
            if _seconds(request.retry_delay) < 0:
                raise invalid_argument([("retry_delay", "must not be negative")])
            delay_us = int(min(_seconds(request.retry_delay), 86400) * 1e6)
        error = status_pb2.Status()
        error.CopyFrom(request.error)
        return await self.store.write(
            lambda tx: leases.fail(tx, request.job_id, request.lease_token, error, request.retryable, delay_us)
        )

    @handle_errors
    async def ReleaseJob(self, request: wsvc.ReleaseJobRequest, context: grpc.aio.ServicerContext) -> Job:
        _check_job_id(request.job_id, "job_id")
        _check_token(request.lease_token)
        return await self.store.write(
            lambda tx: leases.release(
                tx, request.job_id, request.lease_token, request.job_type, request.reset_execution_attempts
            )
        )

    @handle_errors
    async def CleanExpiredLeases(
        self, request: wsvc.CleanExpiredLeasesRequest, context: grpc.aio.ServicerContext
    ) -> wsvc.CleanExpiredLeasesResponse:
        out = await self.store.write(leases.recover_expired)
        return wsvc.CleanExpiredLeasesResponse(
            retried_job_ids=out.retried, failed_job_ids=out.failed, aborted_job_ids=out.aborted
        )

    @handle_errors
    async def AuthorizePublish(self, request: wsvc.AuthorizePublishRequest, context: grpc.aio.ServicerContext
                               ) -> wsvc.AuthorizePublishResponse:
        v: list[tuple[str, str]] = []
        if not request.stream_key or len(request.stream_key) > 256:
            v.append(("stream_key", "required: the key the publisher sent (at most 256 characters)"))
        if not request.leases or len(request.leases) > 100:
            v.append(("leases", "required: the LIVE_ENCODE sessions this worker holds (1-100)"))
        for i, ref in enumerate(request.leases[:100]):
            if not ref.job_id or len(ref.job_id) > 64 or not ref.lease_token or len(ref.lease_token) > 256:
                v.append((f"leases[{i}]", "a job id and its lease token"))
        for name, limit in (("app", 64), ("protocol", 16), ("peer", 128)):
            if len(getattr(request, name)) > limit:
                v.append((name, f"at most {limit} characters"))
        if v:
            raise invalid_argument(v)
        return await self.store.write(lambda tx: store_live.authorize_publish(tx, request))

    @handle_errors
    async def ReportLiveStatus(self, request: wsvc.ReportLiveStatusRequest, context: grpc.aio.ServicerContext
                               ) -> wsvc.ReportLiveStatusResponse:
        _check_job_id(request.job_id, "job_id")
        _check_token(request.lease_token)
        v: list[tuple[str, str]] = []
        if request.live_state and request.live_state not in store_live.WORKER_MOVES:
            v.append(("live_state", "a worker reports AWAITING_INPUT, LIVE, RECONNECTING or STOPPING (or nothing)"))
        if len(request.child_status) > 64 or (request.child_status and not CHILD_RE.match(request.child_status)):
            v.append(("child_status", "UPPER_SNAKE_CASE, at most 64 characters (e.g. CONNECTED)"))
        v += payloads.text_violations(request.message, "message", 1024)
        if len(request.outputs) > 64:
            v.append(("outputs", "at most 64"))
        if request.HasField("statistics") and len(request.statistics.encoder) > 256:
            v.append(("statistics.encoder", "at most 256 characters"))
        for i, o in enumerate(request.outputs[:64]):
            if len(o.encoder_id) > 128:
                v.append((f"outputs[{i}].encoder_id", "at most 128 characters"))
            if o.counter < 0:
                v.append((f"outputs[{i}].counter", "must not be negative"))
        if v:
            raise invalid_argument(v)
        lease_s = 0.0
        if request.HasField("lease_duration") and _seconds(request.lease_duration):
            lease_s = _lease_seconds(request.lease_duration, True, "lease_duration")
        return await self.store.write(lambda tx: store_live.report_status(tx, request, int(lease_s * 1e6)))

    @handle_errors
    async def CheckFileExists(
        self, request: wsvc.CheckFileExistsRequest, context: grpc.aio.ServicerContext
    ) -> wsvc.CheckFileExistsResponse:
        if request.size < -1:
            raise invalid_argument([("size", "must be -1 (any), 0 or a size in bytes")])
        area = area_root(self.storage_root, self.store.scope(), self.store.project)
        path, st = await asyncio.to_thread(resolve_inside, area, request.local_path)
        resp = wsvc.CheckFileExistsResponse()
        if path is not None and st is not None and stat.S_ISREG(st.st_mode):
            resp.exists = True
            resp.actual_size = st.st_size
            resp.size_matches = request.any_size or request.size == -1 or st.st_size == request.size
        return resp

