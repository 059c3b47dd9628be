"""A small typed, synchronous client for JobService and MediaService.

    from mediajobs.client import MediaJobsClient

    with MediaJobsClient("127.0.0.1:50051") as c:
        job = c.create_job("TRANSCODE", priority="HIGH", template_id="mp4-h264-360p",
                           params={"source": "incoming/clip.mov"})
        for msg in c.watch_jobs(job_ids=[job.id]):
            ...
        entry = c.create_entry("clip", source_uri="incoming/clip.mov")
        print(c.get_entry(entry.id).state)

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
from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import media_service_pb2 as msvc
from mediajobs.v1 import media_service_pb2_grpc as msvc_grpc
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
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._owns_channel = channel is None
        self.channel: grpc.Channel = (
            channel if channel is not None
            else grpc.insecure_channel(target, options=list(options if options is not None else DEFAULT_CHANNEL_OPTIONS))
        )
        self.stub = svc_grpc.JobServiceStub(self.channel)
        self.media_stub = msvc_grpc.MediaServiceStub(self.channel)

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
