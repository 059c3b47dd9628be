"""A small typed, synchronous client for JobService, MediaService and
BulkUploadService.

    from mediajobs.client import MediaJobsClient

    with MediaJobsClient("127.0.0.1:50051") as c:
        job = c.create_job("TRANSCODE", priority="HIGH", template_id="mp4-h264-360p",
                           params={"source": "incoming/clip.mov"})
        for msg in c.watch_jobs(job_ids=[job.id]):
            ...
        entry = c.create_entry("clip", source_uri="incoming/clip.mov")
        print(c.get_entry(entry.id).state)
        upload = c.upload_bulk_file("catalogue.csv")   # resumes a broken stream by itself
        for u in c.watch_bulk_upload(upload.id):
            print(u.state, u.counts.applied, u.counts.total_records)

Every method raises `MediaJobsError` (with the server's rich status unpacked)
when the call fails.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
from pathlib import Path
import time
import uuid
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import grpc
from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2, timestamp_pb2

from mediajobs.v1 import bulk_resources_pb2 as bres
from mediajobs.v1 import bulk_upload_service_pb2 as bsvc
from mediajobs.v1 import bulk_upload_service_pb2_grpc as bsvc_grpc
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc as svc_grpc
from mediajobs.v1 import live_job_service_pb2 as lsvc
from mediajobs.v1 import live_job_service_pb2_grpc as lsvc_grpc
from mediajobs.v1 import live_resources_pb2 as lres
from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import media_service_pb2 as msvc
from mediajobs.v1 import media_service_pb2_grpc as msvc_grpc
from mediajobs.v1 import resources_pb2 as res

from .errors import MediaJobsError
from .watch import Backoff, JobWatch, OnRetry, RetryInfo, is_retryable

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
Entry = mres.Entry
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


def parse_entry_state(s: mres.Entry.State.ValueType | int | str) -> mres.Entry.State.ValueType:
    """An entry state from its name (any case: PENDING, PROCESSING, READY,
    ERROR) or number."""
    if isinstance(s, str):
        name = s.strip().upper()
        if name not in Entry.State.keys() or name == "STATE_UNSPECIFIED":
            names = ", ".join(n for n in Entry.State.keys() if n != "STATE_UNSPECIFIED")
            raise ValueError(f"unknown entry state {s!r}; use one of {names}")
        return Entry.State.Value(name)
    return Entry.State.ValueType(int(s))


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


# -- bulk uploads: names, the file to send -------------------------------------------

BulkUpload = bres.BulkUpload
BulkUploadResult = bres.BulkUploadResult

# Files up to this size go inline with StartBulkUpload; larger ones are
# streamed with WriteBulkUploadFile (resumable).
BULK_INLINE_MAX_BYTES = 256 * 1024
BULK_CHUNK_BYTES = 1024 * 1024
BULK_TERMINAL_STATES = frozenset({
    BulkUpload.SUCCEEDED, BulkUpload.PARTIALLY_SUCCEEDED, BulkUpload.FAILED, BulkUpload.ABORTED,
    BulkUpload.EXPIRED, BulkUpload.VALIDATED,
})
# A broken write is resumed from the bytes the server stored after these.
_RESUMABLE_WRITE_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
})
# ... and after these reasons (a message that never arrived intact, or a
# write at an offset the server has moved past).
# UPLOAD_NOT_WRITABLE: the file is complete (or the upload aborted); the
# status query then returns the upload as it is.
_RESUMABLE_WRITE_REASONS = frozenset({"WRITE_OFFSET_MISMATCH", "CHUNK_CHECKSUM_MISMATCH", "UPLOAD_NOT_WRITABLE"})
_RERUN_SELECTIONS = {
    "": bsvc.RerunBulkUploadRequest.SELECTION_UNSPECIFIED,
    "failed": bsvc.RerunBulkUploadRequest.FAILED,
    "not_processed": bsvc.RerunBulkUploadRequest.NOT_PROCESSED,
    "failed_and_not_processed": bsvc.RerunBulkUploadRequest.FAILED_AND_NOT_PROCESSED,
    "all": bsvc.RerunBulkUploadRequest.ALL,
}


def _enum_value(enum: Any, s: int | str, what: str) -> int:
    if isinstance(s, str):
        name = s.strip().upper().replace("-", "_")
        names = [n for n in enum.keys() if not n.endswith("_UNSPECIFIED")]
        if name not in names:
            raise ValueError(f"unknown {what} {s!r}; use one of {', '.join(names)}")
        return int(enum.Value(name))
    return int(s)


def parse_bulk_state(s: BulkUpload.State.ValueType | int | str) -> BulkUpload.State.ValueType:
    """A bulk upload state from its name (any case: UPLOADING, QUEUED,
    PROCESSING, ..., VALIDATED) or number."""
    return BulkUpload.State.ValueType(_enum_value(BulkUpload.State, s, "bulk upload state"))


def parse_result_status(s: BulkUploadResult.Status.ValueType | int | str) -> BulkUploadResult.Status.ValueType:
    """A bulk upload result status from its name (OK, ERROR, IN_PROGRESS,
    NOT_PROCESSED; any case) or number."""
    return BulkUploadResult.Status.ValueType(_enum_value(BulkUploadResult.Status, s, "result status"))


def parse_error_policy(p: BulkUpload.ErrorPolicy.ValueType | int | str | None) -> BulkUpload.ErrorPolicy.ValueType:
    """CONTINUE or VALIDATE_FIRST (any case) or a number; None or "" is the
    server's default (CONTINUE)."""
    if p is None or p == "":
        return BulkUpload.ERROR_POLICY_UNSPECIFIED
    return BulkUpload.ErrorPolicy.ValueType(_enum_value(BulkUpload.ErrorPolicy, p, "error policy"))


def parse_csv_header(h: BulkUpload.CsvOptions.Header.ValueType | int | str | None
                     ) -> BulkUpload.CsvOptions.Header.ValueType:
    """AUTO, PRESENT or ABSENT (any case) or a number; None or "" is AUTO."""
    if h is None or h == "":
        return BulkUpload.CsvOptions.HEADER_UNSPECIFIED
    return BulkUpload.CsvOptions.Header.ValueType(_enum_value(BulkUpload.CsvOptions.Header, h, "header mode"))


@dataclass(frozen=True)
class UploadRetry:
    """What `on_retry` of upload_bulk_file is told before each retry."""

    # The failure (a broken stream, a lost reply).
    error: MediaJobsError
    # Seconds about to be waited.
    delay: float
    # Bytes the server had stored when last asked (where the write resumes).
    committed_size: int
    # 0 for the first retry since the last progress, then 1, 2, ...
    attempt: int


class _BulkSource:
    """The file of an upload: a path (read again from any offset when a
    write resumes) or bytes. Its size and sha256 are fixed when it is opened;
    a file that changes afterwards is an error, not a different upload."""

    def __init__(self, source: str | os.PathLike[str] | bytes | bytearray | memoryview) -> None:
        if isinstance(source, (bytes, bytearray, memoryview)):
            self.path: str | None = None
            self.data: bytes | None = bytes(source)
            self.size = len(self.data)
            self.sha256 = hashlib.sha256(self.data).hexdigest()
            self.name = ""
            return
        self.path = os.fspath(source)
        self.data = None
        self.name = os.path.basename(self.path)
        h = hashlib.sha256()
        size = 0
        with open(self.path, "rb") as f:
            while block := f.read(BULK_CHUNK_BYTES):
                h.update(block)
                size += len(block)
        self.size = size
        self.sha256 = h.hexdigest()

    def read_all(self) -> bytes:
        return b"".join(self.chunks(0, BULK_CHUNK_BYTES))

    def chunks(self, offset: int, chunk_size: int) -> Iterator[bytes]:
        """The bytes from `offset` to the size taken at the start."""
        if self.data is not None:
            for at in range(offset, self.size, chunk_size):
                yield self.data[at:min(at + chunk_size, self.size)]
            return
        assert self.path is not None
        with open(self.path, "rb") as f:
            f.seek(offset)
            at = offset
            while at < self.size:
                block = f.read(min(chunk_size, self.size - at))
                if not block:
                    raise OSError(f"{self.path} became shorter while it was uploaded ({at} of {self.size} bytes)")
                at += len(block)
                yield block


class BulkLogStream(Iterator[bytes]):
    """The log of a bulk upload as it streams (bytes, whole rows per piece).
    Once exhausted, `complete` says whether every record had a result when
    the log was read (False while the upload is still processing)."""

    def __init__(self, responses: Iterator[bsvc.ReadBulkUploadLogResponse], cancel: Callable[[], Any]) -> None:
        self._responses = responses
        self._cancel = cancel
        self.complete: bool | None = None

    def __iter__(self) -> "BulkLogStream":
        return self

    def __next__(self) -> bytes:
        while True:
            try:
                msg = next(self._responses)  # StopIteration ends the log
            except grpc.RpcError as e:
                raise MediaJobsError.from_rpc_error(e) from None
            self.complete = msg.complete
            if msg.data:
                return msg.data

    def close(self) -> None:
        self._cancel()


def tls_credentials(ca: str | os.PathLike[str] | None = None, cert: str | os.PathLike[str] | None = None,
                    key: str | os.PathLike[str] | None = None) -> grpc.ChannelCredentials:
    """Channel credentials for a server with TLS: `ca` the PEM CA that signed
    the server's certificate (None: the system's roots); `cert` and `key` a
    client certificate for mutual TLS. Raises MediaJobsError naming a file
    that cannot be read."""
    def read(path: str | os.PathLike[str] | None, what: str) -> bytes | None:
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as e:
            raise MediaJobsError(grpc.StatusCode.INVALID_ARGUMENT, f"{what} {path}: {e.strerror or e}") from None

    if (cert is None) != (key is None):
        raise MediaJobsError(grpc.StatusCode.INVALID_ARGUMENT,
                             "a client certificate and its key go together: give both or neither")
    return grpc.ssl_channel_credentials(root_certificates=read(ca, "TLS CA file"),
                                        private_key=read(key, "TLS client key"),
                                        certificate_chain=read(cert, "TLS client certificate"))


class MediaJobsClient:
    """Synchronous JobService and MediaService client.

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
        credentials: grpc.ChannelCredentials | None = None,
        api_key: str | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        # An API key (servers with --auth keys): sent with every call.
        self.api_key = api_key
        # TLS (tls_credentials(...)); None: plaintext. Workers started from
        # this client's settings (the CLI's) use the same.
        self.credentials = credentials
        self._owns_channel = channel is None
        opts = list(options if options is not None else DEFAULT_CHANNEL_OPTIONS)
        self.channel: grpc.Channel = (
            channel if channel is not None
            else grpc.secure_channel(target, credentials, options=opts) if credentials is not None
            else grpc.insecure_channel(target, options=opts)
        )
        if api_key:
            from .auth import KeyInterceptor

            self.channel = grpc.intercept_channel(self.channel, KeyInterceptor(api_key))
        self.stub = svc_grpc.JobServiceStub(self.channel)
        self.media_stub = msvc_grpc.MediaServiceStub(self.channel)
        self.bulk_stub = bsvc_grpc.BulkUploadServiceStub(self.channel)
        self.live_stub = lsvc_grpc.LiveJobServiceStub(self.channel)

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
        template_id: str = "",
    ) -> res.Job:
        """Create a PENDING job (idempotent on request_id). With a
        `template_id`, the server copies the template's outputs into
        `params.outputs`."""
        req = svc.CreateJobRequest(
            type=type,
            priority=parse_priority(priority),
            metadata=dict(metadata or {}),
            creator=creator,
            max_attempts=max_attempts,
            request_id=request_id,
            template_id=template_id,
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

    # -- media entries (MediaService) --------------------------------------------

    def create_entry(
        self,
        name: str,
        *,
        source_uri: str = "",
        template_id: str = "",
        description: str = "",
        tags: Sequence[str] = (),
        reference_id: str = "",
        labels: Mapping[str, str] | None = None,
        creator: str = "",
        priority: res.Job.Priority.ValueType | int | str | None = None,
        request_id: str = "",
    ) -> mres.Entry:
        """Create an entry (idempotent on request_id). With a `source_uri` (a
        path relative to the server's storage root, or a `file://` URL of an
        absolute path inside it) its processing is queued: an EXTRACT_MEDIA
        job, then one TRANSCODE job per output of the template."""
        req = msvc.CreateEntryRequest(
            entry=mres.Entry(
                name=name,
                source_uri=source_uri,
                template_id=template_id,
                description=description,
                tags=list(tags),
                reference_id=reference_id,
                labels=dict(labels or {}),
            ),
            creator=creator,
            priority=parse_priority(priority),
            request_id=request_id,
        )
        return self._call(self.media_stub.CreateEntry, req)

    def get_entry(self, entry_id: str) -> mres.Entry:
        """One entry."""
        return self._call(self.media_stub.GetEntry, msvc.GetEntryRequest(id=entry_id))

    def list_entries(
        self,
        *,
        states: Sequence[mres.Entry.State.ValueType | int | str] = (),
        tag: str = "",
        reference_id: str = "",
        template_id: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> msvc.ListEntriesResponse:
        """One page of entries, newest first (see iter_entries for all)."""
        req = msvc.ListEntriesRequest(
            states=[parse_entry_state(s) for s in states],
            tag=tag,
            reference_id=reference_id,
            template_id=template_id,
            page_size=page_size,
            page_token=page_token,
        )
        return self._call(self.media_stub.ListEntries, req)

    def iter_entries(self, *, limit: int | None = None, **filters: Any) -> Iterator[mres.Entry]:
        """Every matching entry across pages (at most `limit`); takes
        list_entries' keyword arguments."""
        if limit is not None and limit <= 0:
            return
        if limit is not None and not filters.get("page_size"):
            filters["page_size"] = min(limit, 1000)
        token = filters.pop("page_token", "")
        n = 0
        while True:
            page = self.list_entries(page_token=token, **filters)
            for entry in page.entries:
                yield entry
                n += 1
                if limit is not None and n >= limit:
                    return
            token = page.next_page_token
            if not token:
                return

    def delete_entry(self, entry_id: str, *, allow_missing: bool = False) -> None:
        """Delete an entry with its media info and cue points; its unfinished
        processing jobs are aborted. Files in the storage root stay."""
        self._call(self.media_stub.DeleteEntry, msvc.DeleteEntryRequest(id=entry_id, allow_missing=allow_missing))

    def check_entry_is_done(self, job_id: str) -> msvc.CheckEntryIsDoneResponse:
        """Whether every processing job of `job_id`'s entry succeeded (marks
        the entry READY if so)."""
        return self._call(self.media_stub.CheckEntryIsDone, msvc.CheckEntryIsDoneRequest(job_id=job_id))

    # -- media info --------------------------------------------------------------

    def add_media_info(self, media_info: mres.MediaInfo, *, request_id: str = "") -> mres.MediaInfo:
        """Store a media-info record for an entry's source or one of its
        flavor assets (idempotent on request_id)."""
        req = msvc.AddMediaInfoRequest(media_info=media_info, request_id=request_id)
        return self._call(self.media_stub.AddMediaInfo, req)

    def get_media_info(self, media_info_id: str) -> mres.MediaInfo:
        """One media-info record."""
        return self._call(self.media_stub.GetMediaInfo, msvc.GetMediaInfoRequest(id=media_info_id))

    def list_media_infos(
        self, entry_id: str, *, flavor_asset_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> msvc.ListMediaInfosResponse:
        """One page of an entry's media-info records, oldest first;
        `flavor_asset_id` limits them to one flavor asset (`source`: the
        source's)."""
        req = msvc.ListMediaInfosRequest(
            entry_id=entry_id, flavor_asset_id=flavor_asset_id, page_size=page_size, page_token=page_token
        )
        return self._call(self.media_stub.ListMediaInfos, req)

    def iter_media_infos(self, entry_id: str, *, flavor_asset_id: str = "") -> Iterator[mres.MediaInfo]:
        """Every media-info record of an entry across pages, oldest first."""
        token = ""
        while True:
            page = self.list_media_infos(entry_id, flavor_asset_id=flavor_asset_id, page_token=token)
            yield from page.media_infos
            token = page.next_page_token
            if not token:
                return

    # -- job templates -------------------------------------------------------------

    def create_job_template(self, template_id: str, template: mres.JobTemplate) -> mres.JobTemplate:
        """Create a job template named `template_id`."""
        req = msvc.CreateJobTemplateRequest(job_template=template, job_template_id=template_id)
        return self._call(self.media_stub.CreateJobTemplate, req)

    def get_job_template(self, template_id: str) -> mres.JobTemplate:
        """One job template."""
        return self._call(self.media_stub.GetJobTemplate, msvc.GetJobTemplateRequest(id=template_id))

    def list_job_templates(self, *, page_size: int = 0, page_token: str = "") -> msvc.ListJobTemplatesResponse:
        """One page of job templates: built-ins first, then the others by id."""
        req = msvc.ListJobTemplatesRequest(page_size=page_size, page_token=page_token)
        return self._call(self.media_stub.ListJobTemplates, req)

    def iter_job_templates(self) -> Iterator[mres.JobTemplate]:
        """Every job template across pages."""
        token = ""
        while True:
            page = self.list_job_templates(page_token=token)
            yield from page.job_templates
            token = page.next_page_token
            if not token:
                return

    def update_job_template(self, template: mres.JobTemplate, fields: Sequence[str]) -> mres.JobTemplate:
        """Change the `fields` (display_name, description, outputs, labels) of
        the template `template.id` to the values in `template`."""
        req = msvc.UpdateJobTemplateRequest(job_template=template, update_mask=_mask(fields))
        return self._call(self.media_stub.UpdateJobTemplate, req)

    def delete_job_template(self, template_id: str, *, allow_missing: bool = False) -> None:
        """Delete a job template (built-in templates cannot be deleted)."""
        req = msvc.DeleteJobTemplateRequest(id=template_id, allow_missing=allow_missing)
        self._call(self.media_stub.DeleteJobTemplate, req)

    # -- cue points ----------------------------------------------------------------

    def import_cue_points(self, xml: bytes | str) -> msvc.ImportCuePointsResponse:
        """Create cue points from an XML document (the format
        export_cue_points writes); invalid items are listed in `errors`."""
        data = xml.encode("utf-8") if isinstance(xml, str) else xml
        return self._call(self.media_stub.ImportCuePoints, msvc.ImportCuePointsRequest(xml=data))

    def export_cue_points(
        self,
        *,
        entry_ids: Sequence[str] = (),
        types: Sequence[mres.CuePoint.Type.ValueType | int] = (),
        start_time_from_ms: int = 0,
        start_time_to_ms: int = 0,
        tags: Sequence[str] = (),
        page_size: int = 0,
        page_token: str = "",
    ) -> msvc.ExportCuePointsResponse:
        """One page of matching cue points as an XML document."""
        req = msvc.ExportCuePointsRequest(
            entry_ids=list(entry_ids),
            types=[mres.CuePoint.Type.ValueType(int(t)) for t in types],
            start_time_from_ms=start_time_from_ms,
            start_time_to_ms=start_time_to_ms,
            tags=list(tags),
            page_size=page_size,
            page_token=page_token,
        )
        return self._call(self.media_stub.ExportCuePoints, req)

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

    # -- bulk uploads (BulkUploadService) ---------------------------------------------

    def start_bulk_upload(
        self,
        *,
        content: bytes = b"",
        file_name: str = "",
        template_id: str = "",
        validate_only: bool = False,
        error_policy: BulkUpload.ErrorPolicy.ValueType | int | str | None = None,
        max_errors: int = 0,
        delimiter: str = "",
        encoding: str = "",
        header: BulkUpload.CsvOptions.Header.ValueType | int | str | None = None,
        ignore_unknown_columns: bool = False,
        uploaded_by: str = "",
        description: str = "",
        priority: res.Job.Priority.ValueType | int | str | None = None,
        labels: Mapping[str, str] | None = None,
        file_size_bytes: int = 0,
        sha256: str = "",
        request_id: str = "",
    ) -> BulkUpload:
        """Create a bulk upload (idempotent on request_id). With `content`
        (at most 3 MiB) the file is complete at once and the upload QUEUED;
        without, it is UPLOADING and its bytes follow (upload_bulk_file does
        both, choosing by size)."""
        spec = BulkUpload(
            file_name=file_name,
            template_id=template_id,
            validate_only=validate_only,
            error_policy=parse_error_policy(error_policy),
            max_errors=max_errors,
            csv=BulkUpload.CsvOptions(delimiter=delimiter, encoding=encoding, header=parse_csv_header(header)),
            ignore_unknown_columns=ignore_unknown_columns,
            uploaded_by=uploaded_by,
            description=description,
            priority=parse_priority(priority),
            labels=dict(labels or {}),
            file_size_bytes=file_size_bytes,
            sha256=sha256,
        )
        req = bsvc.StartBulkUploadRequest(bulk_upload=spec, content=content, request_id=request_id)
        return self._call(self.bulk_stub.StartBulkUpload, req)

    def upload_bulk_file(
        self,
        source: str | os.PathLike[str] | bytes | bytearray | memoryview,
        *,
        template_id: str = "",
        validate_only: bool = False,
        error_policy: BulkUpload.ErrorPolicy.ValueType | int | str | None = None,
        max_errors: int = 0,
        delimiter: str = "",
        encoding: str = "",
        header: BulkUpload.CsvOptions.Header.ValueType | int | str | None = None,
        ignore_unknown_columns: bool = False,
        file_name: str | None = None,
        uploaded_by: str = "",
        description: str = "",
        priority: res.Job.Priority.ValueType | int | str | None = None,
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
        chunk_size: int = BULK_CHUNK_BYTES,
        on_progress: Callable[[int, int], None] | None = None,
        on_start: Callable[[BulkUpload], None] | None = None,
        on_retry: Callable[[UploadRetry], None] | None = None,
        max_retries: int = 8,
        backoff: Backoff | None = None,
    ) -> BulkUpload:
        """Upload a CSV file (a path or bytes) and return the upload once its
        file is complete (QUEUED, or FAILED/SUCCEEDED for a refused or empty
        file); follow it with watch_bulk_upload.

        The size and sha256 are computed first and sent with the start, so the
        server checks the file it stored. A file of at most 256 KiB goes
        inline; a larger one is streamed in `chunk_size` messages (each with
        its crc32). A broken stream (UNAVAILABLE, DEADLINE_EXCEEDED,
        CANCELLED, INTERNAL, a lost message) resumes from the bytes the server
        stored (QueryBulkUploadWriteStatus): stored bytes are never sent
        again. Up to `max_retries` retries in a row without progress, with a
        jittered back-off; a lost start is retried with the same
        `request_id` (default: a new uuid4), which returns the same upload.

        `on_start(upload)` is called once the upload exists, `on_progress(sent,
        total)` as bytes are handed to the stream (from gRPC's sending
        thread; `sent` goes back to the stored size after a resume) and
        `on_retry(UploadRetry)` before each retry. A file refused as a whole
        raises MediaJobsError INVALID_ARGUMENT (reason UNKNOWN_COLUMNS, ...).
        """
        if not 1 <= chunk_size <= 2 * 1024 * 1024:
            raise ValueError("chunk_size must be 1 byte to 2 MiB")
        src = _BulkSource(source)
        inline = 0 < src.size <= BULK_INLINE_MAX_BYTES
        backoff = backoff or Backoff(initial=0.2, maximum=5.0)
        name = file_name if file_name is not None else src.name
        content = src.read_all() if inline else b""
        rid = request_id or str(uuid.uuid4())
        attempt = 0
        while True:
            try:
                upload = self.start_bulk_upload(
                    content=content, file_name=name, template_id=template_id, validate_only=validate_only,
                    error_policy=error_policy, max_errors=max_errors, delimiter=delimiter, encoding=encoding,
                    header=header, ignore_unknown_columns=ignore_unknown_columns, uploaded_by=uploaded_by,
                    description=description, priority=priority, labels=labels, file_size_bytes=src.size,
                    sha256=src.sha256, request_id=rid)
                break
            except MediaJobsError as e:
                # The same request_id makes a retried start return the same upload.
                if e.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) \
                        or attempt >= max_retries:
                    raise
                delay = backoff.delay(attempt)
                if on_retry is not None:
                    on_retry(UploadRetry(e, delay, 0, attempt))
                time.sleep(delay)
                attempt += 1
        if on_start is not None:
            on_start(upload)
        if upload.state != BulkUpload.UPLOADING:
            if on_progress is not None:
                on_progress(src.size, src.size)
            return upload
        return self._write_bulk_file(upload.id, src, upload.uploaded_bytes, chunk_size=chunk_size,
                                     on_progress=on_progress, on_retry=on_retry, max_retries=max_retries,
                                     backoff=backoff,
                                     # A given request_id may repeat an earlier run: its start replays the
                                     # reply of then, so ask what is stored now.
                                     query_first=upload.uploaded_bytes > 0 or bool(request_id))

    def continue_bulk_upload(
        self,
        upload_id: str,
        source: str | os.PathLike[str] | bytes | bytearray | memoryview,
        *,
        chunk_size: int = BULK_CHUNK_BYTES,
        on_progress: Callable[[int, int], None] | None = None,
        on_retry: Callable[[UploadRetry], None] | None = None,
        max_retries: int = 8,
        backoff: Backoff | None = None,
    ) -> BulkUpload:
        """Finish writing an UPLOADING upload (say, after the process that
        started it died) from the bytes the server has stored; `source` must
        be the same file. An upload whose file is complete is returned as it
        is."""
        src = _BulkSource(source)
        return self._write_bulk_file(upload_id, src, 0, chunk_size=chunk_size, on_progress=on_progress,
                                     on_retry=on_retry, max_retries=max_retries,
                                     backoff=backoff or Backoff(initial=0.2, maximum=5.0), query_first=True)

    def _write_bulk_file(
        self,
        upload_id: str,
        src: _BulkSource,
        offset: int,
        *,
        chunk_size: int,
        on_progress: Callable[[int, int], None] | None,
        on_retry: Callable[[UploadRetry], None] | None,
        max_retries: int,
        backoff: Backoff,
        query_first: bool,
    ) -> BulkUpload:
        """Write `src` from `offset`, resuming from the stored size until the
        file is complete. After a failure the server is asked what it stored:
        when that grew, the write goes on at once; when not, after a back-off
        (at most `max_retries` in a row)."""
        attempt = 0
        best = offset  # the most bytes known stored
        need_status = query_first
        pending: MediaJobsError | None = None  # the failure to recover from
        while True:
            if need_status:
                try:
                    status = self._call(self.bulk_stub.QueryBulkUploadWriteStatus,
                                        bsvc.QueryBulkUploadWriteStatusRequest(upload_id=upload_id))
                except MediaJobsError as e:
                    if e.code not in _RESUMABLE_WRITE_CODES or attempt >= max_retries:
                        raise
                    attempt = self._upload_retry(e, best, attempt, backoff, on_retry)
                    continue
                if status.complete:  # finished (a lost reply to the finishing message)
                    return self.get_bulk_upload(upload_id)
                offset = status.committed_size
                if offset > src.size:
                    raise MediaJobsError(grpc.StatusCode.FAILED_PRECONDITION,
                                         f"bulk upload {upload_id} already has {offset} bytes stored, more than the "
                                         f"file's {src.size}: it is not this file's upload")
                if pending is not None:
                    if offset > best:  # the broken stream got somewhere: go on at once
                        attempt = 0
                        if on_retry is not None:
                            on_retry(UploadRetry(pending, 0.0, offset, 0))
                    elif attempt >= max_retries:
                        raise pending
                    else:
                        attempt = self._upload_retry(pending, offset, attempt, backoff, on_retry)
                best = max(best, offset)
                need_status, pending = False, None
            failures: list[BaseException] = []
            requests = self._write_requests(upload_id, src, offset, chunk_size, on_progress, failures)
            timeout = None if self.timeout is None else self.timeout + (src.size - offset) / (256 * 1024)
            try:
                resp = self.bulk_stub.WriteBulkUploadFile(requests, timeout=timeout)
            except grpc.RpcError as e:
                pending = MediaJobsError.from_rpc_error(e)
            if failures:  # reading the file (or a progress callback) failed: not something to retry
                raise failures[0]
            if pending is None:
                if resp.bulk_upload.state != BulkUpload.UPLOADING:
                    return resp.bulk_upload
                # The stream ended before the last message got through (a proxy cut it): resume.
                pending = MediaJobsError(grpc.StatusCode.UNAVAILABLE,
                                         f"the write ended at {resp.committed_size} of {src.size} bytes")
            elif not (pending.code in _RESUMABLE_WRITE_CODES or pending.reason in _RESUMABLE_WRITE_REASONS):
                raise pending
            need_status = True

    @staticmethod
    def _upload_retry(error: MediaJobsError, committed: int, attempt: int, backoff: Backoff,
                      on_retry: Callable[[UploadRetry], None] | None) -> int:
        delay = backoff.delay(attempt)
        if on_retry is not None:
            on_retry(UploadRetry(error, delay, committed, attempt))
        time.sleep(delay)
        return attempt + 1

    @staticmethod
    def _write_requests(upload_id: str, src: _BulkSource, offset: int, chunk_size: int,
                        on_progress: Callable[[int, int], None] | None,
                        failures: list[BaseException]) -> Iterator[bsvc.WriteBulkUploadFileRequest]:
        """The messages of one WriteBulkUploadFile stream from `offset`: the
        first names the upload and the offset, the last finishes the file.
        gRPC drains this in its own thread, where an exception would only
        cancel the call: it is kept in `failures` for the caller instead."""
        try:
            at = offset
            first = True
            if on_progress is not None:
                on_progress(offset, src.size)
            for data in src.chunks(offset, chunk_size):
                msg = bsvc.WriteBulkUploadFileRequest(data=data, crc32=zlib.crc32(data))
                if first:
                    msg.upload_id, msg.write_offset, first = upload_id, offset, False
                at += len(data)
                if at == src.size:
                    msg.finish_write, msg.sha256 = True, src.sha256
                yield msg
                if on_progress is not None:
                    on_progress(at, src.size)
            if first:  # nothing left to send (an empty file, or every byte stored): just finish
                yield bsvc.WriteBulkUploadFileRequest(upload_id=upload_id, write_offset=offset, finish_write=True,
                                                      sha256=src.sha256)
        except Exception as e:  # noqa: BLE001 - handed to the caller
            failures.append(e)

    def get_bulk_upload(self, upload_id: str) -> BulkUpload:
        """One bulk upload with its counts."""
        return self._call(self.bulk_stub.GetBulkUpload, bsvc.GetBulkUploadRequest(id=upload_id))

    def list_bulk_uploads(
        self,
        *,
        states: Sequence[BulkUpload.State.ValueType | int | str] = (),
        uploaded_by: str = "",
        create_time_from: TimeLike = None,
        create_time_to: TimeLike = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> bsvc.ListBulkUploadsResponse:
        """One page of bulk uploads, newest first (see iter_bulk_uploads)."""
        req = bsvc.ListBulkUploadsRequest(
            states=[parse_bulk_state(s) for s in states],
            uploaded_by=uploaded_by,
            create_time_from=to_timestamp(create_time_from),
            create_time_to=to_timestamp(create_time_to),
            page_size=page_size,
            page_token=page_token,
        )
        return self._call(self.bulk_stub.ListBulkUploads, req)

    def iter_bulk_uploads(self, *, limit: int | None = None, **filters: Any) -> Iterator[BulkUpload]:
        """Every matching bulk upload across pages (at most `limit`); takes
        list_bulk_uploads' keyword arguments."""
        if limit is not None and limit <= 0:
            return
        if limit is not None and not filters.get("page_size"):
            filters["page_size"] = min(limit, 1000)
        token = filters.pop("page_token", "")
        n = 0
        while True:
            page = self.list_bulk_uploads(page_token=token, **filters)
            for upload in page.bulk_uploads:
                yield upload
                n += 1
                if limit is not None and n >= limit:
                    return
            token = page.next_page_token
            if not token:
                return

    def watch_bulk_upload(
        self,
        upload_id: str,
        *,
        backoff: Backoff | None = None,
        on_retry: OnRetry | None = None,
        max_retries: int | None = None,
    ) -> Iterator[BulkUpload]:
        """The upload now, then on every change of state or counts (at most 4
        a second), ending after a terminal state. A broken stream is opened
        again after a jittered back-off (each message is complete, so
        nothing is lost), at most `max_retries` times in a row (None: no
        limit); `on_retry` is told before each (RetryInfo, next_revision
        None)."""
        backoff = backoff or Backoff()
        attempt = 0
        while True:
            call = self.bulk_stub.WatchBulkUpload(bsvc.WatchBulkUploadRequest(id=upload_id))
            error: MediaJobsError | None = None
            try:
                for upload in call:
                    attempt = 0
                    yield upload
                    if upload.state in BULK_TERMINAL_STATES:
                        return
            except grpc.RpcError as e:
                if not is_retryable(e) or (max_retries is not None and attempt >= max_retries):
                    raise MediaJobsError.from_rpc_error(e) from None
                error = MediaJobsError.from_rpc_error(e)
            finally:
                call.cancel()
            delay = backoff.delay(attempt)
            if on_retry is not None:
                on_retry(RetryInfo(error=error, delay=delay, next_revision=None, attempt=attempt))
            time.sleep(delay)
            attempt += 1

    def abort_bulk_upload(self, upload_id: str, *, reason: str = "", keep_child_jobs: bool = False,
                          request_id: str = "") -> BulkUpload:
        """Abort an upload: UPLOADING or QUEUED -> ABORTED at once, a
        processing one stops at its next batch (ABORTING, then ABORTED).
        The unfinished processing jobs of its entries are aborted unless
        `keep_child_jobs`."""
        req = bsvc.AbortBulkUploadRequest(id=upload_id, reason=reason, keep_child_jobs=keep_child_jobs,
                                          request_id=request_id)
        return self._call(self.bulk_stub.AbortBulkUpload, req)

    def rerun_bulk_upload(self, upload_id: str, *, selection: str | int = "", request_id: str = "") -> BulkUpload:
        """Apply again, in place, the failed records of a terminal upload:
        `selection` "failed", "not_processed", "failed_and_not_processed"
        (the default) or "all" (a VALIDATED upload)."""
        if isinstance(selection, str):
            key = selection.strip().lower().replace("-", "_")
            if key not in _RERUN_SELECTIONS:
                raise ValueError(f"unknown selection {selection!r}; use failed, not_processed, "
                                 "failed_and_not_processed or all")
            value = _RERUN_SELECTIONS[key]
        else:
            value = bsvc.RerunBulkUploadRequest.Selection.ValueType(int(selection))
        req = bsvc.RerunBulkUploadRequest(id=upload_id, selection=value, request_id=request_id)
        return self._call(self.bulk_stub.RerunBulkUpload, req)

    def read_bulk_upload_file(self, upload_id: str, *, failed_only: bool = False, offset: int = 0,
                              limit: int = 0, max_retries: int = 8, backoff: Backoff | None = None
                              ) -> Iterator[bytes]:
        """The upload's file, byte-exact, as pieces of at most 1 MiB (each
        checked against its crc32: DATA_LOSS if one does not match). With
        `failed_only`, the header and the ERROR and NOT_PROCESSED records
        only, ready to fix and upload again. `offset`/`limit` (the original
        only) read a part. A broken read of the original resumes after the
        bytes received."""
        if failed_only and (offset or limit):
            raise ValueError("offset and limit apply to the original file only")
        selection = (bsvc.ReadBulkUploadFileRequest.FAILED_RECORDS if failed_only
                     else bsvc.ReadBulkUploadFileRequest.ORIGINAL)
        backoff = backoff or Backoff(initial=0.2, maximum=5.0)
        at, attempt = offset, 0
        while True:
            left = limit - (at - offset) if limit else 0
            call = self.bulk_stub.ReadBulkUploadFile(bsvc.ReadBulkUploadFileRequest(
                id=upload_id, selection=selection, read_offset=at, read_limit=left))
            try:
                for msg in call:
                    if zlib.crc32(msg.data) != msg.crc32:
                        raise MediaJobsError(
                            grpc.StatusCode.DATA_LOSS,
                            f"the piece of bulk upload {upload_id}'s file at byte {at} has crc32 "
                            f"{zlib.crc32(msg.data)}, not the {msg.crc32} the server sent",
                            reason="CHUNK_CHECKSUM_MISMATCH")
                    if msg.data:
                        attempt = 0
                        at += len(msg.data)
                        yield msg.data
                return
            except grpc.RpcError as e:
                err = MediaJobsError.from_rpc_error(e)
                if failed_only or not is_retryable(e) or attempt >= max_retries:
                    raise err from None
            finally:
                call.cancel()
            time.sleep(backoff.delay(attempt))
            attempt += 1

    def read_bulk_upload_log(
        self,
        upload_id: str,
        *,
        format: str = "csv",
        statuses: Sequence[BulkUploadResult.Status.ValueType | int | str] = (),
    ) -> BulkLogStream:
        """The log, one row per record with its result: `format` "csv" (the
        original columns, then line, record, result_status, object_id, ...;
        formula cells neutralised) or "jsonl" (one BulkUploadResult per
        line, with row_data). `statuses` keeps those results only. Returns
        an iterator of bytes; its `complete` says, once exhausted, whether
        every record had a result."""
        formats = {"csv": bsvc.ReadBulkUploadLogRequest.CSV, "jsonl": bsvc.ReadBulkUploadLogRequest.JSONL}
        if format.lower() not in formats:
            raise ValueError(f"unknown log format {format!r}; use csv or jsonl")
        req = bsvc.ReadBulkUploadLogRequest(id=upload_id, format=formats[format.lower()],
                                            statuses=[parse_result_status(s) for s in statuses])
        call = self.bulk_stub.ReadBulkUploadLog(req)
        return BulkLogStream(call, call.cancel)

    def list_bulk_upload_results(
        self,
        upload_id: str,
        *,
        statuses: Sequence[BulkUploadResult.Status.ValueType | int | str] = (),
        full: bool = False,
        page_size: int = 0,
        page_token: str = "",
    ) -> bsvc.ListBulkUploadResultsResponse:
        """One page of results by record index; `full` adds each record's
        `row_data` (read from the stored file)."""
        req = bsvc.ListBulkUploadResultsRequest(
            id=upload_id,
            statuses=[parse_result_status(s) for s in statuses],
            page_size=page_size,
            page_token=page_token,
            view=bsvc.ListBulkUploadResultsRequest.FULL if full else bsvc.ListBulkUploadResultsRequest.BASIC,
        )
        return self._call(self.bulk_stub.ListBulkUploadResults, req)

    def iter_bulk_upload_results(self, upload_id: str, *, limit: int | None = None,
                                 **filters: Any) -> Iterator[BulkUploadResult]:
        """Every matching result across pages (at most `limit`); takes
        list_bulk_upload_results' keyword arguments."""
        if limit is not None and limit <= 0:
            return
        if limit is not None and not filters.get("page_size"):
            filters["page_size"] = min(limit, 1000)
        token = filters.pop("page_token", "")
        n = 0
        while True:
            page = self.list_bulk_upload_results(upload_id, page_token=token, **filters)
            for r in page.results:
                yield r
                n += 1
                if limit is not None and n >= limit:
                    return
            token = page.next_page_token
            if not token:
                return

    def count_bulk_upload_results(self, upload_id: str) -> bsvc.CountBulkUploadResultsResponse:
        """Results by status (Kaltura `batch.countBulkUploadEntries`: created
        = not ERROR, error)."""
        return self._call(self.bulk_stub.CountBulkUploadResults, bsvc.CountBulkUploadResultsRequest(id=upload_id))

    def get_bulk_upload_last_result(self, upload_id: str) -> BulkUploadResult | None:
        """The result with the highest record index, None before the first."""
        resp = self._call(self.bulk_stub.GetBulkUploadLastResult, bsvc.GetBulkUploadLastResultRequest(id=upload_id))
        return resp.result if resp.HasField("result") else None

    def update_bulk_upload_results(self, upload_id: str) -> bsvc.UpdateBulkUploadResultsResponse:
        """Re-derive every IN_PROGRESS result from its entry and settle the
        upload when none is left open."""
        return self._call(self.bulk_stub.UpdateBulkUploadResults, bsvc.UpdateBulkUploadResultsRequest(id=upload_id))

    # -- live jobs (LiveJobService) ----------------------------------------------------

    def list_live_jobs(
        self,
        *,
        search: str = "",
        states: Sequence[lres.LiveJob.State.ValueType | int | str] = (),
        page_size: int = 0,
        page_token: str = "",
        page_index: int = 0,
        include_stream_key: bool = False,
    ) -> lsvc.ListLiveJobsResponse:
        """One page of live jobs, newest first: by `page_token` (keyset) or by
        1-based `page_index` (the seed's offset pages, with `page_info`), not
        both. `search` is a case-insensitive substring of the name,
        description, destination or input file path; `states` are names (any
        case: OFFLINE, STARTING, LIVE, ...) or numbers. The stream keys (and
        ingest URLs) are left out unless `include_stream_key`."""
        req = lsvc.ListLiveJobsRequest(
            search=search,
            states=[lres.LiveJob.State.ValueType(_enum_value(lres.LiveJob.State, s, "live job state"))
                    for s in states],
            page_size=page_size,
            page_token=page_token,
            page_index=page_index,
            include_stream_key=include_stream_key,
        )
        return self._call(self.live_stub.ListLiveJobs, req)

    def iter_live_jobs(self, *, limit: int | None = None, **filters: Any) -> Iterator[lres.LiveJob]:
        """Every matching live job across pages (at most `limit`); takes
        list_live_jobs' keyword arguments except page_index."""
        if limit is not None and limit <= 0:
            return
        if limit is not None and not filters.get("page_size"):
            filters["page_size"] = min(limit, 100)
        token = filters.pop("page_token", "")
        n = 0
        while True:
            page = self.list_live_jobs(page_token=token, **filters)
            for live in page.live_jobs:
                yield live
                n += 1
                if limit is not None and n >= limit:
                    return
            token = page.next_page_token
            if not token:
                return

    def create_live_job(
        self,
        bucket: str,
        destination: str,
        *,
        template_id: str = "",
        description: str = "",
        server_type: lres.LiveInput.ServerType.ValueType | int | str = "RTMP",
        input_class: lres.LiveInput.InputClass.ValueType | int | str = "SINGLE",
        file_path: str = "",
        callback_url: str = "",
        reconnect_window: float | dt.timedelta | None = None,
        max_duration: float | dt.timedelta | None = None,
        cdn_distribution: bool = False,
        labels: Mapping[str, str] | None = None,
        creator: str = "",
        request_id: str = "",
    ) -> lres.LiveJob:
        """Create a live job in OFFLINE (idempotent on request_id): the server
        assigns its name and stream key and computes the ingest URL (shown
        with the key), the master playlist and one media playlist per
        rendition of the live template (default `hls-live-360p-240p`).
        `server_type` is RTMP (default), SRT or HLS (then `file_path` is the
        playlist to pull); `input_class` SINGLE (default) or STANDARD (a
        backup ingest with its own key, for failover); `reconnect_window` and `max_duration` are seconds
        or timedeltas (None: the server's defaults, 60 s and 12 h)."""
        live = lres.LiveJob(
            bucket=bucket,
            destination=destination,
            job_template_id=template_id,
            description=description,
            cdn_distribution=cdn_distribution,
            labels=dict(labels or {}),
            creator=creator,
            input=lres.LiveInput(
                server_type=lres.LiveInput.ServerType.ValueType(
                    _enum_value(lres.LiveInput.ServerType, server_type, "server type")),
                input_class=lres.LiveInput.InputClass.ValueType(
                    _enum_value(lres.LiveInput.InputClass, input_class, "input class")),
                file_path=file_path,
                callback_url=callback_url,
            ),
        )
        for name, value in (("reconnect_window", reconnect_window), ("max_duration", max_duration)):
            if value is not None:
                d = duration_pb2.Duration()
                if isinstance(value, dt.timedelta):
                    d.FromTimedelta(value)
                else:
                    d.FromNanoseconds(round(value * 1e9))
                getattr(live, name).CopyFrom(d)
        req = lsvc.CreateLiveJobRequest(live_job=live, request_id=request_id)
        return self._call(self.live_stub.CreateLiveJob, req)

    def get_live_job(self, live_job_id: str) -> lres.LiveJob:
        """One live job, by id (ULID) or name (UUID), with its stream key,
        statistics, manifests and current session."""
        return self._call(self.live_stub.GetLiveJob, lsvc.GetLiveJobRequest(id=live_job_id))

    def list_live_outputs(self, live_job_id: str, *, page_size: int = 0, page_token: str = "",
                          page_index: int = 0) -> lsvc.ListLiveOutputsResponse:
        """One page of a live job's renditions (default 100 a page) with their
        status, progress, segment counter and encoder."""
        req = lsvc.ListLiveOutputsRequest(live_job_id=live_job_id, page_size=page_size, page_token=page_token,
                                          page_index=page_index)
        return self._call(self.live_stub.ListLiveOutputs, req)

    def iter_live_outputs(self, live_job_id: str) -> Iterator[lres.LiveOutput]:
        """Every rendition of a live job, in template order."""
        token = ""
        while True:
            page = self.list_live_outputs(live_job_id, page_token=token)
            yield from page.outputs
            token = page.next_page_token
            if not token:
                return

    def set_live_encoding(
        self,
        stream_key: str,
        online: bool,
        *,
        start_time: TimeLike = None,
        finish_time: TimeLike = None,
        request_id: str = "",
    ) -> lsvc.SetLiveEncodingResponse:
        """Start (`online`) or stop a live job's encoding, by its stream key.
        Starting begins a session (STARTING), which no worker takes before
        `start_time` and which stops by itself at `finish_time`; stopping
        goes STARTING -> STOPPED at once, or to STOPPING while a worker has
        the session."""
        req = lsvc.SetLiveEncodingRequest(
            stream_key=stream_key,
            online=online,
            start_time=to_timestamp(start_time),
            finish_time=to_timestamp(finish_time),
            request_id=request_id,
        )
        return self._call(self.live_stub.SetLiveEncoding, req)

    def start_live_job(self, live_job_id: str, *, start_time: TimeLike = None, finish_time: TimeLike = None,
                       request_id: str = "") -> lsvc.SetLiveEncodingResponse:
        """set_live_encoding(online=True) for a live job given by id or name
        (its stream key is read with GetLiveJob)."""
        key = self.get_live_job(live_job_id).stream_key
        return self.set_live_encoding(key, True, start_time=start_time, finish_time=finish_time,
                                      request_id=request_id)

    def stop_live_job(self, live_job_id: str, *, request_id: str = "") -> lsvc.SetLiveEncodingResponse:
        """set_live_encoding(online=False) for a live job given by id or name."""
        key = self.get_live_job(live_job_id).stream_key
        return self.set_live_encoding(key, False, request_id=request_id)

    def list_live_timings(self, live_job_id: str, *, output_id: int = 0, page_size: int = 0, page_token: str = "",
                          page_index: int = 0) -> lsvc.ListLiveTimingsResponse:
        """One page (default 50) of a live job's status log, oldest first;
        `output_id` keeps that output's entries and the live job's own."""
        req = lsvc.ListLiveTimingsRequest(live_job_id=live_job_id, output_id=output_id, page_size=page_size,
                                          page_token=page_token, page_index=page_index)
        return self._call(self.live_stub.ListLiveTimings, req)

    def iter_live_timings(self, live_job_id: str, *, output_id: int = 0) -> Iterator[lres.LiveTiming]:
        """A live job's whole status log, oldest first."""
        token = ""
        while True:
            page = self.list_live_timings(live_job_id, output_id=output_id, page_size=100, page_token=token)
            yield from page.timings
            token = page.next_page_token
            if not token:
                return

    def get_live_statistics(self, live_job_id: str) -> lres.LiveStatistics:
        """The last statistics of a live job's incoming stream (empty before
        a publisher was connected)."""
        return self._call(self.live_stub.GetLiveStatistics, lsvc.GetLiveStatisticsRequest(live_job_id=live_job_id))

    def reset_stream_key(self, live_job_id: str, *, force: bool = False) -> lres.LiveJob:
        """Give a live job a new stream key (the old one is refused from then
        on); while a publisher is connected (LIVE) only with `force`, which
        drops it. Returns the live job with the new key and ingest URL."""
        req = lsvc.ResetStreamKeyRequest(live_job_id=live_job_id, force=force)
        return self._call(self.live_stub.ResetStreamKey, req)

    def create_live_clip(self, live_job_id: str, start_time: TimeLike, end_time: TimeLike, *, rendition: str = "",
                         create_entry: bool = False, entry_name: str = "", request_id: str = "") -> lres.LiveClip:
        """Cut [start_time, end_time) of a live job's past content (wall-clock
        times of the stream) into a VOD playlist and an MP4, and with
        `create_entry` a media entry; returns the clip, PENDING until a live
        worker ran its LIVE_CLIP job (wait_live_clip waits for it)."""
        clip = lres.LiveClip(start_time=to_timestamp(start_time), end_time=to_timestamp(end_time),
                             rendition=rendition, create_entry=create_entry, entry_name=entry_name)
        req = lsvc.CreateLiveClipRequest(live_job_id=live_job_id, clip=clip, request_id=request_id)
        return self._call(self.live_stub.CreateLiveClip, req)

    def get_live_clip(self, clip_id: str) -> lres.LiveClip:
        return self._call(self.live_stub.GetLiveClip, lsvc.GetLiveClipRequest(id=clip_id))

    def list_live_clips(self, live_job_id: str, *, page_size: int = 0, page_token: str = ""
                        ) -> lsvc.ListLiveClipsResponse:
        """One page of a live job's clips, newest first."""
        req = lsvc.ListLiveClipsRequest(live_job_id=live_job_id, page_size=page_size, page_token=page_token)
        return self._call(self.live_stub.ListLiveClips, req)

    def wait_live_clip(self, clip_id: str, timeout: float | None = None) -> lres.LiveClip:
        """The clip once it SUCCEEDED or FAILED: follows its LIVE_CLIP job
        with WatchJobs (no polling)."""
        done = (lres.LiveClip.SUCCEEDED, lres.LiveClip.FAILED)
        clip = self.get_live_clip(clip_id)
        if clip.state in done:
            return clip
        finished = (res.Job.SUCCEEDED, res.Job.FAILED, res.Job.ABORTED)
        # A snapshot first: a job that finished since the clip was read ends the wait at once.
        watch = self.watch_jobs(job_ids=[clip.job_id], send_initial_snapshot=True, include_progress=False)
        timer = threading.Timer(timeout, watch.cancel) if timeout is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            for msg in watch:
                if any(ev.job.state in finished or ev.type == res.JobEvent.DELETED for ev in msg.events):
                    break
        finally:
            if timer is not None:
                timer.cancel()
            watch.close()
        return self.get_live_clip(clip_id)

    def delete_live_job(self, live_job_id: str, *, force: bool = False, allow_missing: bool = False) -> None:
        """Delete a live job with its outputs and timings (its files are
        kept); while a session runs only with `force` (it is aborted).
        `allow_missing`: a missing live job is not an error."""
        req = lsvc.DeleteLiveJobRequest(id=live_job_id, force=force, allow_missing=allow_missing)
        self._call(self.live_stub.DeleteLiveJob, req)
