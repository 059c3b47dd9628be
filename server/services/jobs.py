"""JobService: thin servicer. Validate -> call the store -> shape the reply."""
from __future__ import annotations

import re
from typing import Any, AsyncIterator

import grpc

from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc as svc_grpc
from mediajobs.v1 import resources_pb2 as res

from ..admission import Admission, unlimited
from .. import payloads
from ..principal import caller, creator
from ..errors import ServiceError, clip, handle_errors, invalid_argument, job_not_found
from ..store import Store
from ..store import jobs as store_jobs
from ..store import templates as store_templates
from ..watch import Watcher, WatchHub, frame_progress

Job = res.Job
TYPE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
ID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
MAX_DELETE = 1000
MAX_BATCH_CREATE = 1000
MAX_SNAPSHOT = 10_000
SNAPSHOT_CHUNK = 100


def check_ulid(value: str, field: str, noun: str) -> None:
    """A resource id field (jobs, entries, media info): required, a ULID."""
    if not value:
        raise invalid_argument([(field, f"required: the {noun} id (a 26-character ULID)")])
    if not ID_RE.match(value.upper()):
        article = "an" if noun[0] in "aeiou" else "a"
        raise invalid_argument(
            [(field, f"{clip(value)} is not {article} {noun} id (a 26-character ULID such as 01HA255YE6H6DEETJ5M6595ZDA)")]
        )


def _check_job_id(job_id: str, field: str = "id") -> None:
    check_ulid(job_id, field, "job")


def _check_priority(p: int, field: str = "priority") -> None:
    if p not in Job.Priority.values():
        raise invalid_argument([(field, f"unknown priority {p}; use LOWEST, LOW, MEDIUM, HIGH or HIGHEST")])


def _check_request_id(rid: str) -> None:
    if len(rid) > 128:
        raise invalid_argument([("request_id", "at most 128 characters (a UUID4 is recommended)")])


def validate_create(req: svc.CreateJobRequest) -> None:
    """What CreateJob (and each item of BatchCreateJobs) checks before the
    store; metadata and params go through server/payloads.py."""
    v: list[tuple[str, str]] = []
    if not req.type:
        v.append(("type", "required: a job type such as TRANSCODE (see ListJobTypes) or a custom one"))
    elif not TYPE_RE.match(req.type):
        v.append(("type", f"{clip(req.type)} is not a job type: use 1-64 letters, digits, '_', '-' or '.'"))
    if req.priority not in Job.Priority.values():
        v.append(("priority", f"unknown priority {req.priority}; use LOWEST, LOW, MEDIUM, HIGH or HIGHEST"))
    v += payloads.metadata_violations(req.metadata)
    if req.HasField("params"):
        v += payloads.struct_violations(req.params, "params", payloads.MAX_PARAMS_BYTES)
    if len(req.creator) > 128:
        v.append(("creator", "at most 128 characters"))
    if req.template_id and not store_templates.ID_RE.match(req.template_id):
        v.append(("template_id", f"{clip(req.template_id)} is not a template id (see MediaService.ListJobTemplates)"))
    if not 0 <= req.max_attempts <= 100:
        v.append(("max_attempts", "must be between 1 and 100 (0 means the default of 3)"))
    if v:
        raise invalid_argument(v)
    _check_request_id(req.request_id)


def _batch_reply_too_large(count: int, reply_bytes: int, limit: int) -> ServiceError:
    return invalid_argument([(
        "requests",
        f"the {count} jobs would make a reply of about {reply_bytes} bytes; at most {limit} so that a client "
        f"with gRPC's default 4 MiB receive limit can read it: send fewer (or smaller) jobs per call",
    )])


class JobService(svc_grpc.JobServiceServicer):
    def __init__(self, store: Store, hub: WatchHub, admission: Admission | None = None) -> None:
        self.store = store
        self.hub = hub
        self.admission = admission or unlimited()

    @handle_errors
    async def CreateJob(self, request: svc.CreateJobRequest, context: grpc.aio.ServicerContext) -> Job:
        validate_create(request)
        request.creator = creator(request.creator)
        quota = self.store.quotas.pending_jobs

        def create(t: Any) -> Job:
            store_jobs.check_pending_quota(t, quota, 1)
            return store_jobs.new_job(t, request)

        return await self.store.write(lambda tx: store_jobs.idempotent(tx, "CreateJob", request, Job, create))

    @handle_errors
    async def BatchCreateJobs(
        self, request: svc.BatchCreateJobsRequest, context: grpc.aio.ServicerContext
    ) -> svc.BatchCreateJobsResponse:
        reqs = list(request.requests)
        if not reqs:
            raise invalid_argument([("requests", "required: at least one CreateJobRequest")])
        if len(reqs) > MAX_BATCH_CREATE:
            raise invalid_argument([("requests", f"at most {MAX_BATCH_CREATE} per call, got {len(reqs)}")])
        violations: list[tuple[str, str]] = []
        for i, r in enumerate(reqs):
            r.creator = creator(r.creator)
            try:
                validate_create(r)
            except ServiceError as e:
                violations += [(f"requests[{i}].{f}", d) for f, d in e.violations]
        if violations:
            raise invalid_argument(violations)
        # The reply echoes every job: refuse a batch whose reply a client with
        # gRPC's default 4 MiB limit could not read.
        reply_bytes = sum(r.ByteSize() + payloads.JOB_CREATED_FIELDS_BYTES for r in reqs)
        if reply_bytes > payloads.MESSAGE_BUDGET_BYTES:
            raise _batch_reply_too_large(len(reqs), reply_bytes, payloads.MESSAGE_BUDGET_BYTES)

        quota = self.store.quotas.pending_jobs

        def create_all(tx):  # type: ignore[no-untyped-def]
            store_jobs.check_pending_quota(tx, quota, len(reqs))
            jobs = [
                store_jobs.idempotent(tx, "CreateJob", r, Job, lambda t, r=r: store_jobs.new_job(t, r)) for r in reqs
            ]
            # Templates add params.outputs: measure the real reply as well
            # (raising here rolls the whole batch back).
            size = sum(j.ByteSize() + payloads.ITEM_FRAMING_BYTES for j in jobs)
            if size > payloads.MAX_REPLY_BYTES:
                raise _batch_reply_too_large(len(reqs), size, payloads.MAX_REPLY_BYTES)
            return jobs

        return svc.BatchCreateJobsResponse(jobs=await self.store.write(create_all))

    @handle_errors
    async def GetJob(self, request: svc.GetJobRequest, context: grpc.aio.ServicerContext) -> Job:
        _check_job_id(request.id)
        store_jobs.check_read_mask(request.read_mask)
        job = await self.store.read_point(store_jobs.get_job, request.id)
        who = caller()
        if who is not None and who.role == "worker" and job.lease.holder != who.name:
            raise job_not_found(request.id)  # a worker key reads only the jobs it holds
        return store_jobs.shape_job(job, request.read_mask, request.include_metadata)

    @handle_errors
    async def ListJobs(self, request: svc.ListJobsRequest, context: grpc.aio.ServicerContext) -> svc.ListJobsResponse:
        return await self.store.read(store_jobs.list_jobs, request)

    @handle_errors
    async def UpdateJob(self, request: svc.UpdateJobRequest, context: grpc.aio.ServicerContext) -> Job:
        _check_job_id(request.job.id, "job.id")
        paths = list(request.update_mask.paths)
        if not paths:
            raise invalid_argument([("update_mask", "required: name the fields to change, e.g. `priority`")])
        bad = [p for p in paths if p != "priority"]
        if bad:
            raise invalid_argument([("update_mask", f"{clip(bad[0])} cannot be updated; only `priority` can")])
        if request.job.priority == Job.PRIORITY_UNSPECIFIED:
            raise invalid_argument([("job.priority", "required with update_mask `priority`: LOWEST..HIGHEST")])
        _check_priority(request.job.priority, "job.priority")
        job_id, prio = request.job.id, request.job.priority
        return await self.store.write(lambda tx: store_jobs.update_priority(tx, job_id, prio))

    @handle_errors
    async def AbortJob(self, request: svc.AbortJobRequest, context: grpc.aio.ServicerContext) -> Job:
        _check_job_id(request.id)
        _check_request_id(request.request_id)
        payloads.refuse(payloads.text_violations(request.reason, "reason", payloads.MAX_ABORT_REASON_CHARS))
        return await self.store.write(
            lambda tx: store_jobs.idempotent(
                tx, "AbortJob", request, Job,
                lambda t: store_jobs.abort_job(t, request.id, request.reason, request.skip_cleanup),
            )
        )

    @handle_errors
    async def RerunJob(self, request: svc.RerunJobRequest, context: grpc.aio.ServicerContext) -> Job:
        _check_job_id(request.id)
        _check_priority(request.priority)
        _check_request_id(request.request_id)
        return await self.store.write(
            lambda tx: store_jobs.idempotent(
                tx, "RerunJob", request, Job, lambda t: store_jobs.rerun_job(t, request.id, request.priority)
            )
        )

    @handle_errors
    async def DeleteJobs(self, request: svc.DeleteJobsRequest, context: grpc.aio.ServicerContext) -> svc.DeleteJobsResponse:
        if not request.ids:
            raise invalid_argument([("ids", "required: at least one job id")])
        if len(request.ids) > MAX_DELETE:
            raise invalid_argument([("ids", f"at most {MAX_DELETE} ids per call, got {len(request.ids)}")])
        for i, job_id in enumerate(request.ids):
            _check_job_id(job_id, f"ids[{i}]")
        _check_request_id(request.request_id)

        def delete(t):  # type: ignore[no-untyped-def]
            ids = store_jobs.delete_jobs(t, request.ids, request.allow_missing, request.force)
            return svc.DeleteJobsResponse(deleted_ids=ids)

        return await self.store.write(
            lambda tx: store_jobs.idempotent(tx, "DeleteJobs", request, svc.DeleteJobsResponse, delete)
        )

    @handle_errors
    async def ListJobTypes(self, request: svc.ListJobTypesRequest, context: grpc.aio.ServicerContext) -> svc.ListJobTypesResponse:
        return svc.ListJobTypesResponse(job_types=await self.store.read(store_jobs.list_job_types))

    @handle_errors
    async def ListJobProblems(
        self, request: svc.ListJobProblemsRequest, context: grpc.aio.ServicerContext
    ) -> svc.ListJobProblemsResponse:
        if request.job_id:
            _check_job_id(request.job_id, "job_id")
        return await self.store.read(store_jobs.list_problems, request)

    @handle_errors
    async def WatchJobs(
        self, request: svc.WatchJobsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[svc.WatchJobsResponse | bytes]:
        """Yields messages or already-serialized WatchJobsResponse bytes (the
        method is registered with a serializer that passes bytes through)."""
        v: list[tuple[str, str]] = []
        if request.start_revision < 0:
            v.append(("start_revision", "must not be negative (0 means from now)"))
        if request.send_initial_snapshot and request.start_revision:
            v.append(("send_initial_snapshot", "only with start_revision = 0"))
        for s in request.states:
            if s not in Job.State.values() or s == Job.STATE_UNSPECIFIED:
                v.append(("states", f"unknown state {s}"))
        for i, job_id in enumerate(request.job_ids):
            if not ID_RE.match(job_id.upper()):
                v.append((f"job_ids[{i}]", f"{clip(job_id)} is not a job id"))
        interval = 10.0
        if request.HasField("progress_interval"):
            interval = request.progress_interval.ToMicroseconds() / 1e6
            if not 0.1 <= interval <= 600:
                v.append(("progress_interval", "must be between 100 ms and 10 min"))
        if v:
            raise invalid_argument(v)

        hub = self.hub
        start = request.start_revision
        if start and start <= hub.compact_revision:
            raise hub.compacted_error(start)
        if start > hub.known + 1:
            # Another server on the same database may have committed it:
            # ask the database (the hub then reads up to there from the log).
            current = await hub.read_revision()
            if start > current + 1:
                raise ServiceError(
                    grpc.StatusCode.OUT_OF_RANGE,
                    "REVISION_IN_FUTURE",
                    f"start_revision {start} is beyond the store's current revision {current}; "
                    f"the database may have been reset or restored: re-list with ListJobs and watch from its revision + 1",
                    metadata={"current_revision": str(current), "start_revision": str(start)},
                )
        who = caller()
        w = Watcher(
            project=self.store.scope(),
            key_id=who.key_id if who is not None else "",
            job_ids=frozenset(request.job_ids),
            types=frozenset(request.types),
            states=frozenset(request.states),
            next_rev=start or hub.revision + 1,
            synced=not start,
        )
        self.admission.open_watch()  # RESOURCE_EXHAUSTED past --max-watch-streams
        hub.register(w)
        try:
            if request.send_initial_snapshot:
                snap_rev, jobs = await self.store.read(
                    store_jobs.snapshot_jobs, list(request.job_ids), list(request.types), list(request.states), MAX_SNAPSHOT
                )
                if len(jobs) > MAX_SNAPSHOT:
                    raise ServiceError(
                        grpc.StatusCode.FAILED_PRECONDITION, "SNAPSHOT_TOO_LARGE",
                        f"more than {MAX_SNAPSHOT} jobs match; narrow the filter, or page with ListJobs and "
                        "watch from its revision + 1",
                    )
                # At most SNAPSHOT_CHUNK jobs and MESSAGE_BUDGET_BYTES per message.
                for chunk in payloads.pack(jobs, Job.ByteSize, SNAPSHOT_CHUNK):
                    yield svc.WatchJobsResponse(
                        revision=max(j.revision for j in chunk),
                        events=[
                            res.JobEvent(revision=j.revision, type=res.JobEvent.SNAPSHOT, job=j, previous_state=j.state)
                            for j in chunk
                        ],
                    )
                # Changes after the snapshot's revision follow from the log.
                w.next_rev = snap_rev + 1
                w.queue.clear()
                w.synced = False
                yield frame_progress(snap_rev, snapshot_complete=True)
            elif not start:
                # Tell a "from now" watcher at once where now is, so it can
                # resume from there even if no change ever arrives.
                yield frame_progress(w.next_rev - 1)
            async for msg in hub.messages(w, interval):
                yield msg
        finally:
            hub.unregister(w)
            self.admission.close_watch()
