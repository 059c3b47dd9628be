"""Vidispine's Job API under `/API`, so the published `vidispine` client
(PyPI 5.0.4, `vidispine.JobApi`) drives mediajobs unmodified.

Every operation is calls of the public JobService through the gateway's
Upstream; this module only translates names, ids, states and errors:

    POST   /API/job                 create_custom_job    -> CreateJob
    GET    /API/job                 get_jobs             -> ListJobs (pages walked for first/number)
    DELETE /API/job?id=a,b          delete_jobs          -> DeleteJobs
    GET    /API/job/problem         get_all_job_problems -> ListJobProblems
    GET    /API/job/{id}            get_job              -> GetJob
    PUT    /API/job/{id}?priority=  update_job           -> UpdateJob (update_mask priority)
    DELETE /API/job/{id}            abort_job            -> AbortJob
    POST   /API/job/{id}/re-run     create_duplicate_job -> RerunJob
    GET    /API/job/{id}/problem    get_job_problems     -> ListJobProblems(job_id)
    GET    /API/jobtype             get_job_types        -> ListJobTypes

Credentials. Vidispine sends HTTP Basic on every request. The password is
the mediajobs API key (`mjk_...`) and the username is free (the key's name
or id, say); a key given as the username (and no key as the password) works
too, and so does `Authorization: Bearer <key>`. The gateway holds no auth
policy of its own: it forwards the key as `authorization: Bearer <key>` and
the server decides. With `--auth keys` no key or a bad one is 401 with
`WWW-Authenticate: Basic realm="mediajobs"`, a role that may not call the
RPC is 403, and another project's job is 404; with `--auth none` any or no
credentials are accepted (the server ignores keys).

The Vidispine user. Vidispine's `user` (a job's creator, and the
`user=true` default of get_jobs: only the caller's jobs) is the job's
mediajobs creator. It is `key:<KEY ID>` when the credentials carry a
well-formed API key (the creator the server records for a key's jobs
under `--auth keys`; the gateway sends the same creator under `--auth
none`, so both modes agree), else the Basic username, else `anonymous`
(the server's creator for a request without one).

Job ids. A mediajobs job id is a 26-character ULID that starts with a
digit; a Vidispine `jobId` must contain `<letters>-<digits>` (the client
checks it with a regex search), so a job is `VX-<ULID>` here (e.g.
`VX-01J9Z3...`, whose `VX-0` satisfies the client). Paths take `VX-<ULID>`
or the bare ULID; anything else is a job that does not exist (404).

States. The mapping the Job.State comments in resources.proto give:

    PENDING   -> READY          (READY and WAITING select PENDING)
    RUNNING   -> STARTED        (STARTED and the STARTED_* variants select RUNNING)
    ABORTING  -> ABORT_PENDING  (abort is asynchronous: ABORT_PENDING, then ABORTED)
    SUCCEEDED -> FINISHED       (FINISHED and FINISHED_WARNING select SUCCEEDED)
    FAILED    -> FAILED_TOTAL   (FAILED_TOTAL and FAILED_FATAL select FAILED)
    ABORTED   -> ABORTED

NONE, FAILED_RETRY and DISAPPEARED have no mediajobs state: as a `state`
filter they match no job. Priorities are the same five names (LOWEST ..
HIGHEST). A job's `data` [{key, value}] is its metadata (with
`metadata=true`, or `field=` naming the keys wanted); `started` and
`finished` are its start and end times (ISO 8601, UTC); `totalSteps`,
`currentStep` and `log.task` (status, attempts, progress in percent, the
error message) describe the one step a mediajobs job has (always in
get_job, with `step=true` in get_jobs).

Listing. `first` (1-based; 0 means 1 too) and `number` (default 100, at
most 1000) are an offset and a count over ListJobs' keyset pages: the jobs
before `first` are skipped as pages of ids (`first` at most 100,000: narrow
the filters to go further). `sort` takes `jobId`, `type`, `state`,
`startTime`, `priority` (state sorts in mediajobs' lifecycle order); `user`
too, only with `user=true`, where every job has the same user. `idonly=true`
returns the four fields the client requires (jobId, status, type, priority).
`jobmetadata=k=v` filters must all hold. `hits` counts every match.

Problems: a problem's `type` is its reason (e.g. LEASE_EXPIRED), `id` the
128-bit integer of its ULID, `job` the job's jobId, `data` its message,
time, job state and details; at most 1000 per call.

Create: `jobmetadata=k=v` (repeated) and the SimpleMetadataDocument body
(`{"field": [{"key", "value"}]}`, the body's value wins) become the job's
metadata; `notification` and `notificationData` (mediajobs has no
notification placeholders: watch jobs with WatchJobs) are kept in the
job's params under those names for the worker to see. An `Idempotency-Key`
header is the request's request_id on create, re-run, abort and delete.

Errors. The client only looks at the status code: 400 bad input, 401/403
credentials and roles, 404 an unknown job (or another project's), 409 a
change the job's state does not allow (FAILED_PRECONDITION: the job has
finished, or is running and cannot be deleted), 429 with Retry-After over a
quota, 503 the server unavailable. The body is JSON shaped after
Vidispine's ExceptionDocument, e.g. `{"notFound": {"type": "job", "id":
"VX-...", "explanation": "...", "reason": "JOB_NOT_FOUND"}}`, also for the
errors the gateway raises itself under /API (no route, a wrong method, a
body too large, a bug).
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

import grpc
from aiohttp import web
from google.protobuf import field_mask_pb2, json_format, struct_pb2, timestamp_pb2

from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import resources_pb2 as res

from .app import ERROR_FORMS_KEY
from .errors import HTTP_STATUS, code_of, details_of, status_of
from .upstream import Upstream

Job = res.Job

PREFIX = "/API"
JOB_ID_PREFIX = "VX-"
CALL_TIMEOUT_S = 60.0

# Limits on what a request may carry.
MAX_CREATE_BODY_BYTES = 1024 * 1024
MAX_METADATA_PARAMS = 64  # jobmetadata=k=v parameters (the server allows 64 metadata entries)
MAX_FIELDS = 64  # field=a,b,c
MAX_IDS = 1000  # delete_jobs ids (the server's DeleteJobs limit)
MAX_TEXT_CHARS = 4096  # notification, notificationData, reason, sort
MAX_FIRST = 100_000
MAX_NUMBER = 1000
DEFAULT_NUMBER = 100
MAX_PROBLEMS = 1000
MAX_AUTH_HEADER = 4096
MAX_USERNAME_CHARS = 128
MAX_IDEMPOTENCY_KEY = 128
SKIP_PAGE = 1000  # ids per ListJobs call while skipping to `first`

ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
KEY_RE = re.compile(r"^mjk_([0-9a-z]{26})_[\x21-\x7e]+$")
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

STATE_NAMES = {
    Job.PENDING: "READY",
    Job.RUNNING: "STARTED",
    Job.ABORTING: "ABORT_PENDING",
    Job.SUCCEEDED: "FINISHED",
    Job.FAILED: "FAILED_TOTAL",
    Job.ABORTED: "ABORTED",
}
# Vidispine's 16 states as a filter: the mediajobs state each selects, or
# None for the three that have no counterpart.
STATE_FILTER: dict[str, Job.State.ValueType | None] = {
    "NONE": None,
    "READY": Job.PENDING,
    "WAITING": Job.PENDING,
    "STARTED": Job.RUNNING,
    "STARTED_ASYNCHRONOUS": Job.RUNNING,
    "STARTED_PARALLEL": Job.RUNNING,
    "STARTED_PARALLEL_ASYNCHRONOUS": Job.RUNNING,
    "STARTED_SUBTASKS": Job.RUNNING,
    "FINISHED": Job.SUCCEEDED,
    "FINISHED_WARNING": Job.SUCCEEDED,
    "FAILED_RETRY": None,
    "FAILED_FATAL": Job.FAILED,
    "FAILED_TOTAL": Job.FAILED,
    "DISAPPEARED": None,
    "ABORT_PENDING": Job.ABORTING,
    "ABORTED": Job.ABORTED,
}
PRIORITIES = ("LOWEST", "LOW", "MEDIUM", "HIGH", "HIGHEST")
SORT_FIELDS = {"jobid": "id", "type": "type", "state": "state", "starttime": "start_time", "priority": "priority",
               "user": "user"}

# What a listing reads of each job (ListJobs' read_mask), by what it shows.
IDONLY_FIELDS = ["id", "state", "type", "priority"]
LIST_FIELDS = IDONLY_FIELDS + ["creator", "start_time", "end_time"]
STEP_FIELDS = ["update_time", "progress", "progress_message", "attempt_count", "error", "abort_reason"]

# gRPC code -> the ExceptionDocument element its error is reported in.
ERROR_KINDS = {
    grpc.StatusCode.INVALID_ARGUMENT: "invalidInput",
    grpc.StatusCode.OUT_OF_RANGE: "invalidInput",
    grpc.StatusCode.NOT_FOUND: "notFound",
    grpc.StatusCode.UNAUTHENTICATED: "notAuthorized",
    grpc.StatusCode.PERMISSION_DENIED: "forbidden",
    grpc.StatusCode.FAILED_PRECONDITION: "conflict",
    grpc.StatusCode.ALREADY_EXISTS: "conflict",
    grpc.StatusCode.ABORTED: "conflict",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "tooManyRequests",
    grpc.StatusCode.UNIMPLEMENTED: "notYetImplemented",
}
# An illegal state change is a conflict with the job's state, not bad input.
HTTP_OVERRIDES = {grpc.StatusCode.FAILED_PRECONDITION: 409}


# -- errors ---------------------------------------------------------------------------------------------------------

class VidispineError(Exception):
    """A request this dialect refuses itself; `fields` go into the body."""

    def __init__(self, http: int, kind: str, explanation: str, reason: str, **fields: str) -> None:
        super().__init__(explanation)
        self.http, self.kind, self.reason, self.fields = http, kind, reason, fields

    def response(self) -> web.Response:
        return exception_document(self.http, self.kind, str(self), self.reason, self.fields)


def bad_input(context: str, explanation: str, value: str = "") -> VidispineError:
    fields = {"context": context}
    if value:
        fields["value"] = value[:200]
    return VidispineError(400, "invalidInput", explanation, "INVALID_REQUEST", **fields)


def exception_document(http: int, kind: str, explanation: str, reason: str, fields: dict[str, str] | None = None,
                       headers: dict[str, str] | None = None) -> web.Response:
    body = {kind: {**(fields or {}), "explanation": explanation, "reason": reason}}
    out = dict(headers or {})
    if http == 401:
        out["WWW-Authenticate"] = 'Basic realm="mediajobs"'
    return web.Response(status=http, text=json.dumps(body), content_type="application/json", headers=out)


def rpc_error(e: grpc.aio.AioRpcError, job_id: str = "") -> web.Response:
    """A failed call as Vidispine's status and an ExceptionDocument."""
    st = status_of(e)
    code = code_of(st.code)
    http = HTTP_OVERRIDES.get(code, HTTP_STATUS.get(code, 500))
    rich = details_of(st)
    reason = rich.reason
    fields: dict[str, str] = {"context": rich.violations[0].field} if rich.violations else {}
    headers = {"Retry-After": rich.retry_after} if rich.retry_after_s is not None else {}
    message = st.message or code.name
    if reason == "JOB_NOT_FOUND" and job_id:
        fields.update(type="job", id=JOB_ID_PREFIX + job_id)
        message = f"no job {JOB_ID_PREFIX}{job_id} (it may have been deleted)"
    kind = ERROR_KINDS.get(code, "internalServer" if http >= 500 else "invalidInput")
    return exception_document(http, kind, message, reason or code.name, fields, headers)


def gateway_error_form(request: web.Request, code: grpc.StatusCode, message: str, reason: str, http: int
                       ) -> web.StreamResponse:
    """The errors the gateway raises itself under /API, in this dialect's form."""
    kind = {400: "invalidInput", 404: "notFound", 405: "notAllowed", 413: "invalidInput"}.get(http, "internalServer")
    headers = {"Allow": message.rpartition("allowed: ")[2]} if http == 405 else None
    if http == 404:
        message = (f"no route {request.method} {request.path[:200]}: this server has Vidispine's JobApi "
                   f"({PREFIX}/job, {PREFIX}/job/{{job-id}}, {PREFIX}/jobtype)")
    return exception_document(http, kind, message, reason, headers=headers)


# -- credentials ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Credentials:
    api_key: str  # "" = none (forwarded as is: the server decides)
    user: str  # the Vidispine user: key:<KEY ID>, the Basic username, or anonymous

    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.api_key}")] if self.api_key else []


def credentials(request: web.Request) -> Credentials:
    """The request's Basic (or Bearer) credentials as a key and a user (see
    the module docstring). Malformed credentials count as none."""
    header = request.headers.get("Authorization", "")
    if len(header) > MAX_AUTH_HEADER:
        raise bad_input("Authorization", f"the Authorization header is longer than {MAX_AUTH_HEADER} characters")
    scheme, _, value = header.strip().partition(" ")
    username, key = "", ""
    if scheme.lower() == "basic":
        try:
            username, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            username, password = "", ""
        # The key is the password; a key in the username field works too.
        key = username if KEY_RE.match(username) and not KEY_RE.match(password) else password
    elif scheme.lower() == "bearer":
        key = value.strip()
    if not key.isascii() or not key.isprintable():
        key = ""  # not something gRPC metadata can carry, nor a key
    m = KEY_RE.match(key)
    if m:
        user = f"key:{m.group(1).upper()}"
    elif username:
        if len(username) > MAX_USERNAME_CHARS:
            raise bad_input("username", f"the Basic username is longer than {MAX_USERNAME_CHARS} characters")
        user = username
    else:
        user = "anonymous"
    return Credentials(key, user)


# -- parameters -----------------------------------------------------------------------------------------------------

class Query:
    """A request's query parameters, each read once; what is left unread is
    refused by `done()`, so a typo is an error instead of being ignored."""

    def __init__(self, request: web.Request) -> None:
        self.q = request.query
        self.unread = set(self.q.keys())

    def text(self, name: str, limit: int = MAX_TEXT_CHARS) -> str | None:
        self.unread.discard(name)
        if name not in self.q:
            return None
        value = self.q.getall(name)[-1]
        if len(value) > limit:
            raise bad_input(name, f"{name} is longer than {limit} characters")
        return value

    def many(self, name: str, limit: int, csv: bool) -> list[str]:
        """A list: repeated parameters (multi), each also split on commas if csv."""
        self.unread.discard(name)
        items = [v for raw in self.q.getall(name, []) for v in (raw.split(",") if csv else [raw])]
        items = [v.strip() for v in items if v.strip()]
        if len(items) > limit:
            raise bad_input(name, f"at most {limit} values of {name}, got {len(items)}")
        return items

    def boolean(self, name: str, default: bool) -> bool:
        value = self.text(name, 16)
        if value is None or value == "":
            return default
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise bad_input(name, f"{name} must be true or false", value)

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        value = self.text(name, 16)
        if value is None or value == "":
            return default
        try:
            n = int(value)
        except ValueError:
            raise bad_input(name, f"{name} must be an integer", value) from None
        if not lo <= n <= hi:
            raise bad_input(name, f"{name} must be between {lo} and {hi}", value)
        return n

    def time(self, name: str) -> timestamp_pb2.Timestamp | None:
        value = self.text(name, 64)
        if not value:
            return None
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            raise bad_input(name, f"{name} must be an ISO 8601 timestamp such as 2024-05-01T12:00:00Z",
                            value) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        ts = timestamp_pb2.Timestamp()
        try:
            ts.FromDatetime(when)
        except (ValueError, OverflowError):
            raise bad_input(name, f"{name} is out of range", value) from None
        return ts

    def priority(self, name: str = "priority") -> Job.Priority.ValueType:
        value = self.text(name, 32)
        if not value:
            return Job.PRIORITY_UNSPECIFIED
        if value.upper() not in PRIORITIES:
            raise bad_input(name, f"{name} must be one of {', '.join(PRIORITIES)}", value)
        return Job.Priority.Value(value.upper())

    def done(self) -> None:
        if self.unread:
            name = sorted(self.unread)[0]
            raise bad_input(name, f"unknown parameter {name[:80]!r}")


def request_id(request: web.Request) -> str:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return ""
    if not key or len(key) > MAX_IDEMPOTENCY_KEY:
        raise bad_input("Idempotency-Key", f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} characters")
    return key


def job_id_of(text: str) -> str:
    """The mediajobs id of a Vidispine job id (`VX-<ULID>` or the ULID);
    any other id is a job that does not exist here."""
    raw = text[len(JOB_ID_PREFIX):] if text[:len(JOB_ID_PREFIX)].upper() == JOB_ID_PREFIX else text
    if not ULID_RE.match(raw.upper()):
        shown = text[:80]
        raise VidispineError(404, "notFound", f"no job {shown!r}: job ids here are {JOB_ID_PREFIX}<26-character ULID>",
                             "JOB_NOT_FOUND", type="job", id=shown)
    return raw.upper()


def metadata_pairs(items: list[str], name: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise bad_input(name, f"{name} takes key=value (the '=' encoded as %3D)", item)
        out[k] = v
    return out


# -- job documents --------------------------------------------------------------------------------------------------

def iso(ts: timestamp_pb2.Timestamp) -> str:
    return ts.ToDatetime(tzinfo=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ulid_int(ulid: str) -> int:
    """A ULID as the 128-bit integer it encodes (a problem's numeric id)."""
    n = 0
    for ch in ulid.upper():
        n = n * 32 + CROCKFORD.index(ch)
    return n


def key_values(pairs: dict[str, str] | Any) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in sorted(pairs.items())]


@dataclass(frozen=True)
class View:
    """What a job document shows."""
    data: bool = False  # metadata as `data`
    data_keys: frozenset[str] = frozenset()  # only these metadata keys (empty: all)
    steps: bool = False  # totalSteps, currentStep, log
    idonly: bool = False  # only the four fields the client requires


def job_document(job: Job, view: View) -> dict[str, Any]:
    status = STATE_NAMES.get(job.state, "NONE")
    doc: dict[str, Any] = {"jobId": JOB_ID_PREFIX + job.id, "status": status, "type": job.type,
                           "priority": Job.Priority.Name(job.priority) if job.priority else "MEDIUM"}
    if view.idonly:
        return doc
    doc["user"] = job.creator
    if job.HasField("start_time"):
        doc["started"] = iso(job.start_time)
    if job.HasField("end_time"):
        doc["finished"] = iso(job.end_time)
    if view.data:
        pairs = {k: v for k, v in job.metadata.items() if not view.data_keys or k in view.data_keys}
        doc["data"] = key_values(pairs)
    if view.steps:
        description = job.progress_message or job.type
        doc["totalSteps"] = 1
        doc["currentStep"] = {"number": 1, "status": status, "description": description}
        task: dict[str, Any] = {
            "step": 1, "status": status, "attempts": job.attempt_count, "description": description,
            "timestamp": iso(job.update_time),
            "progress": {"value": float(job.progress), "total": 100.0, "unit": "percent"},
        }
        if job.state == Job.FAILED and job.error.message:
            task["errorMessage"] = job.error.message
        elif job.state in (Job.ABORTING, Job.ABORTED):
            task["errorMessage"] = f"aborted: {job.abort_reason}" if job.abort_reason else "aborted"
        doc["log"] = {"task": [task]}
    return doc


def json_response(doc: Any) -> web.Response:
    return web.Response(text=json.dumps(doc, separators=(",", ":")), content_type="application/json")


# -- routes ---------------------------------------------------------------------------------------------------------

Handler = Callable[[web.Request, Credentials], Awaitable[web.StreamResponse]]


class JobApi:
    """The routes, over one Upstream's JobService."""

    def __init__(self, upstream: Upstream) -> None:
        self.jobs = upstream.stubs["JobService"]

    def endpoint(self, fn: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """fn behind credentials and the dialect's errors."""

        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                return await fn(request, credentials(request))
            except VidispineError as e:
                return e.response()
            except grpc.aio.AioRpcError as e:
                try:
                    job_id = job_id_of(request.match_info.get("job_id", ""))
                except VidispineError:
                    job_id = ""
                return rpc_error(e, job_id)

        return handle

    async def call(self, rpc: str, req: Any, who: Credentials) -> Any:
        return await getattr(self.jobs, rpc)(req, metadata=who.metadata(), timeout=CALL_TIMEOUT_S)

    # POST /API/job
    async def create_custom_job(self, request: web.Request, who: Credentials) -> web.StreamResponse:
        q = Query(request)
        job_type = q.text("type", 64) or ""
        priority = q.priority()
        metadata = metadata_pairs(q.many("jobmetadata", MAX_METADATA_PARAMS, csv=False), "jobmetadata")
        notification_data = q.text("notificationData")
        notification = q.text("notification")
        q.done()
        if not job_type:
            raise bad_input("type", "type is required: the job type, e.g. TRANSCODE or a custom one")
        metadata.update(await simple_metadata(request))  # the document wins over the query
        req = svc.CreateJobRequest(type=job_type, priority=priority or Job.MEDIUM, metadata=metadata,
                                   creator=who.user, request_id=request_id(request))
        params = {k: v for k, v in (("notification", notification), ("notificationData", notification_data))
                  if v is not None}
        if params:
            req.params.CopyFrom(json_format.ParseDict(params, struct_pb2.Struct()))
        job = await self.call("CreateJob", req, who)
        return json_response(job_document(job, View(data=True)))

    # GET /API/job/{job_id}
    async def get_job(self, request: web.Request, who: Credentials) -> web.StreamResponse:
        q = Query(request)
        fields = q.many("field", MAX_FIELDS, csv=True)
        metadata = q.boolean("metadata", False)
        q.done()
        job_id = job_id_of(request.match_info["job_id"])
        job = await self.call("GetJob", svc.GetJobRequest(id=job_id, include_metadata=True), who)
        view = View(data=metadata or bool(fields), data_keys=frozenset(fields), steps=True)
        return json_response(job_document(job, view))

    # GET /API/job
    async def get_jobs(self, request: web.Request, who: Credentials) -> web.StreamResponse:
        q = Query(request)
        req = svc.ListJobsRequest()
        filters = q.many("jobmetadata", MAX_METADATA_PARAMS, csv=False)
        req.metadata.update(metadata_pairs(filters, "jobmetadata"))
        # Every pair must hold: two values for one key hold for no job.
        selects_nothing = len(set(filters)) > len(req.metadata)
        fields = q.many("field", MAX_FIELDS, csv=True)
        only_mine = q.boolean("user", True)
        first = max(1, q.integer("first", 1, 0, MAX_FIRST))
        number = q.integer("number", DEFAULT_NUMBER, 0, 1_000_000_000)
        number = min(number, MAX_NUMBER)
        types = q.many("type", 1000, csv=True)
        states = q.many("state", len(STATE_FILTER) + 1, csv=True)
        steps = q.boolean("step", False)
        idonly = q.boolean("idonly", False)
        metadata = q.boolean("metadata", False)
        sort = q.text("sort") or ""
        ranges = {"start_time_from": "starttime-from", "start_time_to": "starttime-to",
                  "end_time_from": "finishtime-from", "end_time_to": "finishtime-to"}
        for field_name, param in ranges.items():
            ts = q.time(param)
            if ts is not None:
                getattr(req, field_name).CopyFrom(ts)
        q.done()

        if only_mine:
            req.creator = who.user
        if types and "all" not in (t.lower() for t in types):
            req.types.extend(types)
        if states and "ALL" not in (s.upper() for s in states):
            wanted: set[Job.State.ValueType] = set()
            for s in states:
                if s.upper() not in STATE_FILTER:
                    raise bad_input("state", f"unknown state {s[:40]!r}; Vidispine's states are "
                                             f"{', '.join(STATE_FILTER)} (or all)", s)
                target = STATE_FILTER[s.upper()]
                if target is not None:
                    wanted.add(target)
            req.states.extend(sorted(wanted))
            selects_nothing = selects_nothing or not wanted
        req.order_by = order_by(sort, only_mine)
        view = View(data=metadata or bool(fields), data_keys=frozenset(fields), steps=steps, idonly=idonly)
        paths = IDONLY_FIELDS if idonly else LIST_FIELDS + (STEP_FIELDS if steps else [])
        if view.data and not idonly:
            paths = paths + ["metadata"]

        if selects_nothing:
            # Only states mediajobs never has, or contradicting metadata:
            # still one call, so keys and roles are checked as for any listing.
            req.page_size, req.read_mask.paths[:] = 1, ["id"]
            await self.call("ListJobs", req, who)
            return json_response({"hits": 0, "job": []})

        token, total = await self.skip(req, first - 1, who)
        if token is None:  # `first` is past the last job
            return json_response({"hits": total, "job": []})
        jobs: list[Job] = []
        req.read_mask.CopyFrom(field_mask_pb2.FieldMask(paths=paths))
        req.include_metadata = view.data and not idonly
        while True:
            req.page_token = token
            req.page_size = max(1, number - len(jobs))
            page = await self.call("ListJobs", req, who)
            total = page.total_size
            if number:
                jobs.extend(page.jobs[:number - len(jobs)])
            token = page.next_page_token
            if not token or len(jobs) >= number:
                break
        return json_response({"hits": total, "job": [job_document(j, view) for j in jobs]})

    async def skip(self, req: svc.ListJobsRequest, count: int, who: Credentials) -> tuple[str | None, int]:
        """The page token after the first `count` jobs of the listing ("" for
        none to skip, None when the listing has no more than `count`), read
        as ids SKIP_PAGE at a time, and the number of matching jobs."""
        token, total = "", 0
        probe = svc.ListJobsRequest()
        probe.CopyFrom(req)
        probe.read_mask.paths[:] = ["id"]
        while count > 0:
            probe.page_token = token
            probe.page_size = min(count, SKIP_PAGE)
            page = await self.call("ListJobs", probe, who)
            count -= len(page.jobs)
            token, total = page.next_page_token, page.total_size
            if not token:
                return None, total
        return token, total

    # PUT /API/job/{job_id}
    async def update_job(self, request: web.Request, who: Credentials) -> web.StreamResponse:
        q = Query(request)
        priority = q.priority() or Job.MEDIUM  # Vidispine's default
        q.done()
        job_id = job_id_of(request.match_info["job_id"])
        req = svc.UpdateJobRequest(job=Job(id=job_id, priority=priority),
                                   update_mask=field_mask_pb2.FieldMask(paths=["priority"]))
        job = await self.call("UpdateJob", req, who)
        return json_response(job_document(job, View(steps=True)))

    # DELETE /API/job/{job_id}
    async def abort_job(self, request: web.Request, who: Credentials) -> web.StreamResponse:
        q = Query(request)
        reason = q.text("reason", 1024) or ""
        cleanup = q.boolean("cleanup", True)
        q.done()
        job_id = job_id_of(request.match_info["job_id"])
        job = await self.call("AbortJob", svc.AbortJobRequest(id=job_id, reason=reason, skip_cleanup=not cleanup,
                                                               request_id=request_id(request)), who)
        return json_response(job_document(job, View(steps=True)))

    # POST /API/job/{job_id}/re-run
    async def create_duplicate_job(self, request: web.Request, who: Credentials) -> web.StreamResponse:
        q = Query(request)
        priority = q.priority()  # unspecified: the old job's
        q.done()
        job_id = job_id_of(request.match_info["job_id"])
        job = await self.call("RerunJob", svc.RerunJobRequest(id=job_id, priority=priority,
                                                               request_id=request_id(request)), who)
        return json_response(job_document(job, View(data=True)))

    # DELETE /API/job?id=a,b
    async def delete_jobs(self, request: web.Request, who: Credentials) -> web.StreamResponse:
        q = Query(request)
        ids = q.many("id", MAX_IDS, csv=True)
        q.done()
        if not ids:
            raise bad_input("id", "id is required: the job ids to delete, comma-separated")
        req = svc.DeleteJobsRequest(ids=[job_id_of(i) for i in ids], request_id=request_id(request))
        out = await self.call("DeleteJobs", req, who)
        return json_response({"hits": len(out.deleted_ids), "uri": [JOB_ID_PREFIX + i for i in out.deleted_ids]})

    # GET /API/jobtype
    async def get_job_types(self, request: web.Request, who: Credentials) -> web.StreamResponse:
        Query(request).done()
        out = await self.call("ListJobTypes", svc.ListJobTypesRequest(), who)
        names = [t.name for t in out.job_types]
        return json_response({"hits": len(names), "uri": names})

    # GET /API/job/problem and /API/job/{job_id}/problem
    async def get_job_problems(self, request: web.Request, who: Credentials) -> web.StreamResponse:
        Query(request).done()
        raw_id = request.match_info.get("job_id")
        req = svc.ListJobProblemsRequest(job_id=job_id_of(raw_id) if raw_id is not None else "")
        problems: list[res.JobProblem] = []
        while len(problems) < MAX_PROBLEMS:
            req.page_size = MAX_PROBLEMS - len(problems)
            page = await self.call("ListJobProblems", req, who)
            problems.extend(page.problems)
            req.page_token = page.next_page_token
            if not req.page_token:
                break
        return json_response({"problem": [problem_document(p) for p in problems[:MAX_PROBLEMS]]})


def problem_document(p: res.JobProblem) -> dict[str, Any]:
    data = {**dict(p.details), "message": p.message, "created": iso(p.create_time),
            "jobStatus": STATE_NAMES.get(p.job_state, "NONE")}
    try:
        numeric_id = ulid_int(p.id)
    except ValueError:
        numeric_id = int.from_bytes(p.id.encode()[:16], "big")
    return {"id": numeric_id, "type": p.reason, "job": [JOB_ID_PREFIX + p.job_id], "data": key_values(data)}


async def simple_metadata(request: web.Request) -> dict[str, str]:
    """A SimpleMetadataDocument body (`{"field": [{"key", "value"}]}`) as
    metadata; an empty body is none."""
    if not request.can_read_body:
        return {}
    too_large = VidispineError(413, "invalidInput", f"the body is larger than {MAX_CREATE_BODY_BYTES} bytes, "
                               "the limit", "BODY_TOO_LARGE", context="body")
    if request.content_length is not None and request.content_length > MAX_CREATE_BODY_BYTES:
        raise too_large
    raw = await request.content.read(MAX_CREATE_BODY_BYTES + 1)
    if len(raw) > MAX_CREATE_BODY_BYTES:
        raise too_large
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_input("body", f"the body is not JSON (a SimpleMetadataDocument): {str(e)[:200]}") from None
    if not isinstance(doc, dict):
        raise bad_input("body", 'the body must be a SimpleMetadataDocument: {"field": [{"key": ..., "value": ...}]}')
    unknown = sorted(set(doc) - {"field"})
    if unknown:
        raise bad_input("body", f"unknown SimpleMetadataDocument member {unknown[0][:80]!r}; it has only `field`")
    fields = doc.get("field") or []
    if not isinstance(fields, list):
        raise bad_input("field", "field must be a list of {key, value}")
    out: dict[str, str] = {}
    for i, item in enumerate(fields):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) \
                or not isinstance(item.get("value", ""), str) or set(item) - {"key", "value"}:
            raise bad_input(f"field[{i}]", "each field is {\"key\": string, \"value\": string}")
        out[item["key"]] = item.get("value", "")
    return out


def order_by(sort: str, only_mine: bool) -> str:
    """Vidispine's `field asc|desc, ...` as ListJobs' order_by."""
    parts: list[str] = []
    for part in (p.strip() for p in sort.split(",")):
        if not part:
            continue
        words = part.split()
        name = SORT_FIELDS.get(words[0].lower())
        direction = words[1].lower() if len(words) == 2 else "asc"
        if name is None or len(words) > 2 or direction not in ("asc", "desc"):
            raise bad_input("sort", f"{part[:80]!r} is not `FIELD [asc|desc]` with FIELD one of jobId, type, "
                                    "state, user, startTime, priority", part)
        if name == "user":
            if not only_mine:
                raise bad_input("sort", "sorting by user needs user=true (then every job has the same user); "
                                        "mediajobs does not sort listings by creator", part)
            continue
        parts.append(f"{name} {direction}")
    return ", ".join(parts)


def add_routes(app: web.Application, upstream: Upstream) -> None:
    api = JobApi(upstream)
    e = api.endpoint
    r = app.router
    # /API/job/problem before /API/job/{job_id}, which would take "problem" as an id.
    r.add_get(f"{PREFIX}/job/problem", e(api.get_job_problems), allow_head=False)
    r.add_post(f"{PREFIX}/job", e(api.create_custom_job))
    r.add_get(f"{PREFIX}/job", e(api.get_jobs), allow_head=False)
    r.add_delete(f"{PREFIX}/job", e(api.delete_jobs))
    r.add_get(f"{PREFIX}/job/{{job_id}}", e(api.get_job), allow_head=False)
    r.add_put(f"{PREFIX}/job/{{job_id}}", e(api.update_job))
    r.add_delete(f"{PREFIX}/job/{{job_id}}", e(api.abort_job))
    r.add_post(f"{PREFIX}/job/{{job_id}}/re-run", e(api.create_duplicate_job))
    r.add_get(f"{PREFIX}/job/{{job_id}}/problem", e(api.get_job_problems), allow_head=False)
    r.add_get(f"{PREFIX}/jobtype", e(api.get_job_types), allow_head=False)
    app[ERROR_FORMS_KEY][PREFIX] = gateway_error_form
