"""A small typed, synchronous client for JobService.

    from mediajobs.client import MediaJobsClient

    with MediaJobsClient("127.0.0.1:50051") as c:
        job = c.create_job("TRANSCODE", priority="HIGH", params={"input": "a.mov"})
        for msg in c.watch_jobs(job_ids=[job.id]):
            ...

Every method raises `MediaJobsError` (with the server's rich status unpacked)
when the call fails.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import grpc
from google.protobuf import field_mask_pb2, struct_pb2, timestamp_pb2

from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc as svc_grpc
from mediajobs.v1 import resources_pb2 as res

from .errors import MediaJobsError
from .watch import Backoff, JobWatch, OnRetry

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 30.0

# Reconnect quickly after a server restart (gRPC's default first back-off is
# 1 s growing to 120 s), and notice dead connections under an idle watch.
# (grpc.min_reconnect_backoff_ms is left alone: it is also the connect
# timeout, 20 s by default.)
DEFAULT_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]

Job = res.Job
TimeLike = dt.datetime | timestamp_pb2.Timestamp | None

_Resp = TypeVar("_Resp")


def parse_priority(p: res.Job.Priority.ValueType | int | str | None) -> res.Job.Priority.ValueType:
    """A priority from its name (any case: LOWEST, LOW, MEDIUM, HIGH, HIGHEST)
    or number; None or "" is PRIORITY_UNSPECIFIED (the server's default)."""
    if p is None or p == "":
        return Job.PRIORITY_UNSPECIFIED
    if isinstance(p, str):
        name = p.strip().upper()
        if name not in Job.Priority.keys() or name == "PRIORITY_UNSPECIFIED":
            raise ValueError(f"unknown priority {p!r}; use LOWEST, LOW, MEDIUM, HIGH or HIGHEST")
        return Job.Priority.Value(name)
    return Job.Priority.ValueType(int(p))


def parse_state(s: res.Job.State.ValueType | int | str) -> res.Job.State.ValueType:
    """A job state from its name (any case) or number."""
    if isinstance(s, str):
        name = s.strip().upper()
        if name not in Job.State.keys() or name == "STATE_UNSPECIFIED":
            names = ", ".join(n for n in Job.State.keys() if n != "STATE_UNSPECIFIED")
            raise ValueError(f"unknown state {s!r}; use one of {names}")
        return Job.State.Value(name)
    return Job.State.ValueType(int(s))


def to_timestamp(t: TimeLike) -> timestamp_pb2.Timestamp | None:
    """A Timestamp from a datetime (naive datetimes are taken as UTC)."""
    if t is None or isinstance(t, timestamp_pb2.Timestamp):
        return t
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(t)
    return ts


def to_struct(params: Mapping[str, Any] | struct_pb2.Struct) -> struct_pb2.Struct:
    if isinstance(params, struct_pb2.Struct):
        return params
    s = struct_pb2.Struct()
    s.update(dict(params))
    return s


def _mask(fields: Sequence[str] | None) -> field_mask_pb2.FieldMask | None:
    if not fields:
        return None
    return field_mask_pb2.FieldMask(paths=[f.strip() for f in fields if f.strip()])


class MediaJobsClient:
    """Synchronous JobService client.

    Pass a `target` ("host:port"; an insecure channel is opened and owned by
    the client) or an existing `channel` (not closed by `close()`). `timeout`
    is the deadline of each unary call in seconds (None: no deadline).
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        channel: grpc.Channel | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        options: Sequence[tuple[str, Any]] | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._owns_channel = channel is None
        self.channel: grpc.Channel = (
            channel if channel is not None
            else grpc.insecure_channel(target, options=list(options if options is not None else DEFAULT_CHANNEL_OPTIONS))
        )
        self.stub = svc_grpc.JobServiceStub(self.channel)

    def close(self) -> None:
        """Close the channel if the client opened it."""
        if self._owns_channel:
            self.channel.close()

    def __enter__(self) -> "MediaJobsClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., _Resp], request: Any) -> _Resp:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise MediaJobsError.from_rpc_error(e) from None

    # -- jobs ----------------------------------------------------------------

    def create_job(
        self,
        type: str,
        *,
        priority: res.Job.Priority.ValueType | int | str | None = None,
        metadata: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | struct_pb2.Struct | None = None,
        creator: str = "",
        max_attempts: int = 0,
        request_id: str = "",
    ) -> res.Job:
        """Create a PENDING job (idempotent on request_id)."""
        req = svc.CreateJobRequest(
            type=type,
            priority=parse_priority(priority),
            metadata=dict(metadata or {}),
            creator=creator,
            max_attempts=max_attempts,
            request_id=request_id,
        )
        if params is not None:
            req.params.CopyFrom(to_struct(params))
        return self._call(self.stub.CreateJob, req)

    def get_job(self, job_id: str, *, fields: Sequence[str] | None = None, include_metadata: bool = False) -> res.Job:
        """One job; `fields` limits the returned fields (a read mask)."""
        req = svc.GetJobRequest(id=job_id, read_mask=_mask(fields), include_metadata=include_metadata)
        return self._call(self.stub.GetJob, req)

    def list_jobs(
        self,
        *,
        states: Sequence[res.Job.State.ValueType | int | str] = (),
        types: Sequence[str] = (),
        metadata: Mapping[str, str] | None = None,
        creator: str = "",
        create_time_from: TimeLike = None,
        create_time_to: TimeLike = None,
        start_time_from: TimeLike = None,
        start_time_to: TimeLike = None,
        end_time_from: TimeLike = None,
        end_time_to: TimeLike = None,
        order_by: str = "",
        fields: Sequence[str] | None = None,
        include_metadata: bool = False,
        page_size: int = 0,
        page_token: str = "",
    ) -> svc.ListJobsResponse:
        """One page of jobs (see iter_jobs / iter_job_pages for all of them)."""
        req = svc.ListJobsRequest(
            page_size=page_size,
            page_token=page_token,
            states=[parse_state(s) for s in states],
            types=list(types),
            metadata=dict(metadata or {}),
            creator=creator,
            create_time_from=to_timestamp(create_time_from),
            create_time_to=to_timestamp(create_time_to),
            start_time_from=to_timestamp(start_time_from),
            start_time_to=to_timestamp(start_time_to),
            end_time_from=to_timestamp(end_time_from),
            end_time_to=to_timestamp(end_time_to),
            order_by=order_by,
            read_mask=_mask(fields),
            include_metadata=include_metadata,
        )
        return self._call(self.stub.ListJobs, req)

    def iter_job_pages(self, **filters: Any) -> Iterator[svc.ListJobsResponse]:
        """Every page of a listing; takes list_jobs' keyword arguments."""
        token = filters.pop("page_token", "")
        while True:
            page = self.list_jobs(page_token=token, **filters)
            yield page
            token = page.next_page_token
            if not token:
                return

    def iter_jobs(self, *, limit: int | None = None, **filters: Any) -> Iterator[res.Job]:
        """Every matching job across pages (at most `limit`); takes
        list_jobs' keyword arguments."""
        if limit is not None and limit <= 0:
            return
        if limit is not None and not filters.get("page_size"):
            filters["page_size"] = min(limit, 1000)
        n = 0
        for page in self.iter_job_pages(**filters):
            for job in page.jobs:
                yield job
                n += 1
                if limit is not None and n >= limit:
                    return

    def update_priority(self, job_id: str, priority: res.Job.Priority.ValueType | int | str) -> res.Job:
        """Change a job's priority."""
        req = svc.UpdateJobRequest(
            job=Job(id=job_id, priority=parse_priority(priority)),
            update_mask=field_mask_pb2.FieldMask(paths=["priority"]),
        )
        return self._call(self.stub.UpdateJob, req)

    def abort_job(self, job_id: str, *, reason: str = "", skip_cleanup: bool = False, request_id: str = "") -> res.Job:
        """Abort a job (PENDING -> ABORTED, RUNNING -> ABORTING)."""
        req = svc.AbortJobRequest(id=job_id, reason=reason, skip_cleanup=skip_cleanup, request_id=request_id)
        return self._call(self.stub.AbortJob, req)

    def rerun_job(
        self, job_id: str, *, priority: res.Job.Priority.ValueType | int | str | None = None, request_id: str = ""
    ) -> res.Job:
        """Create a new PENDING job from an existing job's definition."""
        req = svc.RerunJobRequest(id=job_id, priority=parse_priority(priority), request_id=request_id)
        return self._call(self.stub.RerunJob, req)

    def delete_jobs(
        self, ids: Sequence[str] | str, *, allow_missing: bool = False, force: bool = False, request_id: str = ""
    ) -> list[str]:
        """Delete jobs (all or nothing); returns the deleted ids."""
        id_list = [ids] if isinstance(ids, str) else list(ids)
        req = svc.DeleteJobsRequest(ids=id_list, allow_missing=allow_missing, force=force, request_id=request_id)
        return list(self._call(self.stub.DeleteJobs, req).deleted_ids)

    def list_job_types(self) -> list[res.JobType]:
        """Built-in job types, then custom types in use."""
        return list(self._call(self.stub.ListJobTypes, svc.ListJobTypesRequest()).job_types)

    def list_job_problems(
        self, *, job_id: str = "", include_resolved: bool = False, page_size: int = 0, page_token: str = ""
    ) -> svc.ListJobProblemsResponse:
        """One page of job problems, oldest first."""
        req = svc.ListJobProblemsRequest(
            job_id=job_id, include_resolved=include_resolved, page_size=page_size, page_token=page_token
        )
        return self._call(self.stub.ListJobProblems, req)

    def iter_job_problems(self, *, job_id: str = "", include_resolved: bool = False) -> Iterator[res.JobProblem]:
        """Every job problem across pages."""
        token = ""
        while True:
            page = self.list_job_problems(job_id=job_id, include_resolved=include_resolved, page_token=token)
            yield from page.problems
            token = page.next_page_token
            if not token:
                return

    # -- watch ---------------------------------------------------------------

    def watch_jobs(
        self,
        *,
        job_ids: Sequence[str] = (),
        types: Sequence[str] = (),
        states: Sequence[res.Job.State.ValueType | int | str] = (),
        start_revision: int = 0,
        send_initial_snapshot: bool = False,
        progress_interval: float | None = None,
        include_progress: bool = True,
        backoff: Backoff | None = None,
        on_retry: OnRetry | None = None,
    ) -> JobWatch:
        """Stream job changes, resuming by itself after a lost connection or a
        server restart (see JobWatch). start_revision 0 means "from now"."""
        return JobWatch(
            self.stub,
            job_ids=job_ids,
            types=types,
            states=[parse_state(s) for s in states],
            start_revision=start_revision,
            send_initial_snapshot=send_initial_snapshot,
            progress_interval=progress_interval,
            include_progress=include_progress,
            backoff=backoff,
            on_retry=on_retry,
            timeout=self.timeout,
        )
