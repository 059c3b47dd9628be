"""Job mutations (run inside the group-commit writer) and job reads.

Mutations take a `WriteTx`, do every check before their first write, and
record one change event per job they change, in the same transaction.
Reads take the database and return protobuf messages; no Peewee object
leaves this module.
"""
from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import grpc
import peewee
from google.protobuf import field_mask_pb2
from ..quotas import exceeded
from ..ids import new_id

from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import resources_pb2 as res

from .. import payloads
from ..convert import set_ts, ts_from_us
from ..errors import ServiceError, clip, illegal_transition, invalid_argument, job_not_found
from .models import models_for
from .writer import PendingEvent, WriteTx

Job = res.Job
State = res.Job.State
TERMINAL = frozenset({Job.SUCCEEDED, Job.FAILED, Job.ABORTED})
ACTIVE = frozenset({Job.RUNNING, Job.ABORTING})
DEFAULT_MAX_ATTEMPTS = 3

BUILT_IN_TYPES: dict[str, str] = {
    "TRANSCODE": "Decode a source and encode one or more renditions.",
    "EXTRACT_MEDIA": "Probe a source and store its media info.",
    "THUMBNAIL": "Extract still images from a source.",
    "IMPORT": "Bring a file into the storage root (ingest).",
    "EXPORT": "Deliver a file from the storage root to a destination.",
    "BULK_UPLOAD": "Process the lines of a CSV bulk upload into entries and jobs.",
    "CONCAT": "Join several sources into one.",
    "LIVE_ENCODE": "Encode a live input into its renditions.",
    "LIVE_CLIP": "Cut a clip of a live job's past content into a VOD playlist and an MP4.",
}


def state_name(s: int) -> str:
    return Job.State.Name(s)  # type: ignore[arg-type]


# -- SQL for the hot paths, built once per database (Peewee's query builder
#    costs 100-250 us per statement in Python) --------------------------------


class HotSql:
    def __init__(self, db: peewee.Database) -> None:
        p = db.param
        self.insert_job = (
            "INSERT INTO jobs (id, project, type, state, priority, creator, create_time, update_time, "
            "start_time, end_time, revision, lease_token, lease_owner, lease_expire_time, available_time, data) "
            f"VALUES ({', '.join([p] * 16)})"
        )
        self.update_job = (
            f"UPDATE jobs SET state = {p}, priority = {p}, update_time = {p}, start_time = {p}, end_time = {p}, "
            f"revision = {p}, lease_token = {p}, lease_owner = {p}, lease_expire_time = {p}, "
            f"available_time = {p}, data = {p} WHERE id = {p}"
        )
        self.select_job = f"SELECT data FROM jobs WHERE id = {p} AND project = {p}"
        self.select_job_row = (
            f"SELECT data, lease_token, lease_owner, lease_expire_time FROM jobs WHERE id = {p} AND project = {p}"
        )
        self.insert_event = (
            "INSERT INTO job_events (revision, project, job_id, job_type, state, previous_state, event_time, data) "
            f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})"
        )
        self.insert_meta = f"INSERT INTO job_metadata (job_id, project, key, value) VALUES ({p}, {p}, {p}, {p})"
        self.insert_type = f"INSERT INTO job_types (project, name) VALUES ({p}, {p}) ON CONFLICT DO NOTHING"
        self.select_revision = f"SELECT value FROM store_meta WHERE key = {p}"


_hot: dict[int, HotSql] = {}


def hot(db: peewee.Database) -> HotSql:
    h = _hot.get(id(db))
    if h is None:
        h = _hot[id(db)] = HotSql(db)
    return h


# -- mutations --------------------------------------------------------------


@dataclass
class LeaseColumns:
    token: str = ""
    owner: str = ""
    expire_time: int = 0


def load_job_for_update(tx: WriteTx, job_id: str) -> tuple[Job, LeaseColumns]:
    row = tx.db.execute_sql(hot(tx.db).select_job_row, (job_id, tx.project)).fetchone()
    if row is None:
        raise job_not_found(job_id)
    return Job.FromString(bytes(row[0])), LeaseColumns(row[1], row[2], row[3])


# Called by emit() for every change of a job's state (including CREATED), in
# the same transaction and before the job row is written: hook(tx, job,
# event_type, previous_state). store/entries.py keeps entries in step with
# their processing jobs this way.
STATE_HOOKS: list[Callable[[WriteTx, Job, int, int], None]] = []


def emit(tx: WriteTx, job: Job, etype: int, prev_state: int) -> None:
    """Give `job` the next revision and record its change event."""
    if job.state != prev_state:
        for hook in STATE_HOOKS:
            hook(tx, job, etype, prev_state)
    rev = tx.next_revision()
    job.revision = rev
    set_ts(job.update_time, tx.now)
    ev = res.JobEvent(revision=rev, type=etype, job=job, previous_state=prev_state)  # type: ignore[arg-type]
    set_ts(ev.event_time, tx.now)
    data = ev.SerializeToString()
    tx.db.execute_sql(
        hot(tx.db).insert_event, (rev, tx.project, job.id, job.type, job.state, prev_state, tx.now, data)
    )
    tx.events.append(PendingEvent(rev, job.id, job.type, job.state, prev_state, data, _us(job.available_time),
                                  tx.project))


def _us(ts: Any) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000 if ts.seconds or ts.nanos else 0


def save_job(tx: WriteTx, job: Job, lease: LeaseColumns | None = None) -> None:
    lease = lease or LeaseColumns()
    tx.db.execute_sql(
        hot(tx.db).update_job,
        (
            job.state, job.priority, _us(job.update_time), _us(job.start_time), _us(job.end_time),
            job.revision, lease.token, lease.owner, lease.expire_time, _us(job.available_time),
            job.SerializeToString(), job.id,
        ),
    )


_known_types: set[tuple[int, str, str]] = set()


def insert_job(tx: WriteTx, job: Job) -> None:
    h = hot(tx.db)
    tx.db.execute_sql(
        h.insert_job,
        (
            job.id, job.project, job.type, job.state, job.priority, job.creator, _us(job.create_time),
            _us(job.update_time), 0, 0, job.revision, "", "", 0, _us(job.available_time), job.SerializeToString(),
        ),
    )
    for k, v in job.metadata.items():
        tx.db.execute_sql(h.insert_meta, (job.id, job.project, k, v))
    key = (id(tx.db), tx.project, job.type)
    if job.type not in BUILT_IN_TYPES and key not in _known_types:
        if tx.db.execute_sql(h.insert_type, (tx.project, job.type)).rowcount == 1:
            _check_custom_type_count(tx)
        tx.after_commit.append(lambda: _known_types.add(key))


# Custom job types a project may use: ListJobTypes returns them all in one
# reply, which must stay readable with gRPC's default 4 MiB limit (10,000
# names of at most 64 characters are under 1 MiB).
MAX_CUSTOM_JOB_TYPES = 10_000


def _check_custom_type_count(tx: WriteTx) -> None:
    n = tx.db.execute_sql(f"SELECT COUNT(*) FROM job_types WHERE project = {tx.db.param}", (tx.project,)).fetchone()[0]
    if n > MAX_CUSTOM_JOB_TYPES:
        raise ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_JOB_TYPES",
            f"the project already uses {MAX_CUSTOM_JOB_TYPES} custom job types, the limit; "
            "use one of them (see ListJobTypes) or a built-in type",
            metadata={"limit": str(MAX_CUSTOM_JOB_TYPES)},
        )


def new_job(tx: WriteTx, req: svc.CreateJobRequest, rerun_of: str = "", template_id: str = "") -> Job:
    job = build_job(req, tx.project, tx.now, template_id or req.template_id)
    job.rerun_of = rerun_of
    if req.template_id:
        from .templates import get_file_template, outputs_as_params

        outputs = get_file_template(tx.db, tx.project, req.template_id).outputs  # NOT_FOUND if unknown
        if "outputs" not in job.params.fields:
            job.params.get_or_create_list("outputs").extend(outputs_as_params(outputs))  # type: ignore[arg-type]
    emit(tx, job, res.JobEvent.CREATED, Job.STATE_UNSPECIFIED)
    insert_job(tx, job)
    return job


def check_pending_quota(tx: WriteTx, limit: int, adding: int) -> None:
    """RESOURCE_EXHAUSTED (QUOTA_EXCEEDED) when `adding` more PENDING jobs
    would pass the project's quota (0: none; nothing is counted then)."""
    if not limit:
        return
    p = tx.db.param
    pending = int(tx.db.execute_sql(f"SELECT COUNT(*) FROM jobs WHERE project = {p} AND state = {p}",
                                    (tx.project, Job.PENDING)).fetchone()[0])
    if pending + adding > limit:
        raise exceeded("pending_jobs", limit, "PENDING jobs in the project (workers take them, or abort some)")


def build_job(req: svc.CreateJobRequest, project: str, now_us: int, template_id: str = "", job_id: str = "") -> Job:
    """A new PENDING job from a request, not yet written and without a
    revision: new_job completes it (template outputs, event)."""
    job = pending_job(req.type, project, now_us, req.priority, req.creator, template_id, job_id, req.max_attempts)
    job.metadata.update(req.metadata)
    if req.HasField("params"):
        job.params.CopyFrom(req.params)
    return job


def pending_job(job_type: str, project: str, now_us: int, priority: int, creator: str, template_id: str = "",
                job_id: str = "", max_attempts: int = 0) -> Job:
    """The fields every new job has (build_job; entries make their jobs with
    it directly, metadata and params set in place, and bulk uploads do so
    outside the writer: insert_created writes them)."""
    job = Job(
        id=job_id or new_id(), type=job_type, state=Job.PENDING, priority=priority or Job.MEDIUM,  # type: ignore[arg-type]
        creator=creator or "anonymous", project=project,
        max_attempts=max_attempts or DEFAULT_MAX_ATTEMPTS, template_id=template_id,
    )
    set_ts(job.create_time, now_us)
    return job


def insert_created(tx: WriteTx, jobs: list[Job]) -> None:
    """Write new jobs of built-in types (build_job) with their CREATED
    events, running the state hooks first as emit() does; one executemany
    per table."""
    if not jobs:
        return
    h = hot(tx.db)
    job_rows: list[tuple[Any, ...]] = []
    event_rows: list[tuple[Any, ...]] = []
    meta_rows: list[tuple[Any, ...]] = []
    now = ts_from_us(tx.now)
    # A CREATED JobEvent is its revision, its type, the job and its time: the
    # job's bytes go in as they are, not serialized a second time.
    revision_tag = payloads.encode_varint(1 << 3)
    job_tag = payloads.encode_varint(3 << 3 | 2)
    created_type = payloads.encode_varint(2 << 3) + payloads.encode_varint(res.JobEvent.CREATED)
    event_time = payloads.length_delimited(5, now.SerializeToString())
    varint = payloads.encode_varint
    for job in jobs:
        for hook in STATE_HOOKS:
            hook(tx, job, res.JobEvent.CREATED, Job.STATE_UNSPECIFIED)
        rev = tx.next_revision()
        job.revision = rev
        job.update_time.CopyFrom(now)
        job_bytes = job.SerializeToString()
        data = b"".join((revision_tag, varint(rev), created_type, job_tag, varint(len(job_bytes)), job_bytes,
                         event_time))
        event_rows.append((rev, tx.project, job.id, job.type, job.state, Job.STATE_UNSPECIFIED, tx.now, data))
        tx.events.append(PendingEvent(rev, job.id, job.type, job.state, Job.STATE_UNSPECIFIED, data, 0, tx.project))
        job_rows.append((job.id, job.project, job.type, job.state, job.priority, job.creator, _us(job.create_time),
                         tx.now, 0, 0, job.revision, "", "", 0, 0, job_bytes))
        meta_rows.extend((job.id, job.project, k, v) for k, v in job.metadata.items())
    cursor = tx.db.cursor()
    cursor.executemany(h.insert_event, event_rows)
    cursor.executemany(h.insert_job, job_rows)
    if meta_rows:
        cursor.executemany(h.insert_meta, meta_rows)


def update_priority(tx: WriteTx, job_id: str, priority: int) -> Job:
    job, lease = load_job_for_update(tx, job_id)
    if job.state in TERMINAL:
        raise illegal_transition(job_id, state_name(job.state), "change the priority of", reason="JOB_FINISHED")
    if job.priority == priority:
        return job
    job.priority = priority  # type: ignore[assignment]
    emit(tx, job, res.JobEvent.UPDATED, job.state)
    save_job(tx, job, lease)
    return job


def abort_job(tx: WriteTx, job_id: str, reason: str, skip_cleanup: bool) -> Job:
    job, lease = load_job_for_update(tx, job_id)
    prev = job.state
    if prev in (Job.ABORTING, Job.ABORTED):
        return job
    if prev in (Job.SUCCEEDED, Job.FAILED):
        raise illegal_transition(job_id, state_name(prev), "abort", reason="JOB_FINISHED")
    job.abort_reason = reason
    job.abort_skip_cleanup = skip_cleanup
    if prev == Job.PENDING:
        job.state = Job.ABORTED
        set_ts(job.end_time, tx.now)
        lease = LeaseColumns()
    else:  # RUNNING: the worker learns it on its next heartbeat
        job.state = Job.ABORTING
    emit(tx, job, res.JobEvent.UPDATED, prev)
    save_job(tx, job, lease)
    return job


def rerun_job(tx: WriteTx, job_id: str, priority: int) -> Job:
    old, _ = load_job_for_update(tx, job_id)
    req = svc.CreateJobRequest(
        type=old.type,
        priority=priority or old.priority,  # type: ignore[arg-type]
        metadata=dict(old.metadata),
        creator=old.creator,
        max_attempts=old.max_attempts,
    )
    if old.HasField("params"):
        req.params.CopyFrom(old.params)
    return new_job(tx, req, rerun_of=old.id)


def delete_jobs(tx: WriteTx, ids: Iterable[str], allow_missing: bool, force: bool) -> list[str]:
    m = models_for(tx.db)
    ids = list(dict.fromkeys(ids))
    rows = list(
        m.JobRow.select(m.JobRow.id, m.JobRow.data).where((m.JobRow.project == tx.project) & (m.JobRow.id.in_(ids))).tuples()
    )
    found = {r[0]: Job.FromString(bytes(r[1])) for r in rows}
    missing = [i for i in ids if i not in found]
    if missing and not allow_missing:
        err = job_not_found(missing[0])
        err.message = f"no job with id {', '.join(map(clip, missing[:5]))}; nothing was deleted (set allow_missing to skip unknown ids)"
        raise err
    busy = [j for j in found.values() if j.state in ACTIVE]
    if busy and not force:
        j = busy[0]
        err = illegal_transition(j.id, state_name(j.state), "delete")
        err.reason = "JOB_ACTIVE"
        err.message = f"job {clip(j.id)} is {state_name(j.state)}; abort it first or set force; nothing was deleted"
        raise err
    deleted = [i for i in ids if i in found]
    if not deleted:
        return []
    # Past events of these jobs become tombstones: revision and state only.
    for rev, data in m.JobEventRow.select(m.JobEventRow.revision, m.JobEventRow.data).where(
        m.JobEventRow.job_id.in_(deleted)
    ).tuples():
        ev = res.JobEvent.FromString(bytes(data))
        _strip(ev.job)
        m.JobEventRow.update(data=ev.SerializeToString()).where(m.JobEventRow.revision == rev).execute()
    m.JobMetadataRow.delete().where(m.JobMetadataRow.job_id.in_(deleted)).execute()
    m.JobProblemRow.delete().where(m.JobProblemRow.job_id.in_(deleted)).execute()
    m.JobRow.delete().where(m.JobRow.id.in_(deleted)).execute()
    for i in deleted:
        job = found[i]
        _strip(job)
        emit(tx, job, res.JobEvent.DELETED, job.state)
    return deleted


def _strip(job: Job) -> None:
    keep = Job(id=job.id, type=job.type, state=job.state, project=job.project, revision=job.revision)
    job.CopyFrom(keep)


def add_problem(tx: WriteTx, job_id: str, reason: str, message: str, details: dict[str, str]) -> res.JobProblem:
    """Record an unresolved problem on a job (it also appears in Job.problems)."""
    m = models_for(tx.db)
    job, lease = load_job_for_update(tx, job_id)
    p = res.JobProblem(id=new_id(), job_id=job_id, reason=reason, message=message, details=details)
    set_ts(p.create_time, tx.now)
    m.JobProblemRow.insert(
        id=p.id, project=tx.project, job_id=job_id, reason=reason, message=message,
        details=json.dumps(details, sort_keys=True), create_time=tx.now,
    ).execute()
    job.problems.append(p)
    payloads.bound_problems(job)  # the newest MAX_JOB_PROBLEMS; ListJobProblems has them all
    emit(tx, job, res.JobEvent.UPDATED, job.state)
    save_job(tx, job, lease)
    return p


# -- idempotency ----------------------------------------------------------------


def request_hash(req: Any) -> str:
    """Hash of a request without its request_id (deterministic serialization)."""
    c = type(req)()
    c.CopyFrom(req)
    c.ClearField("request_id")
    return hashlib.sha256(c.SerializeToString(deterministic=True)).hexdigest()


def idempotent(tx: WriteTx, method: str, req: Any, response_cls: Any, fn: Any) -> Any:
    """Run fn(tx) once per (method, request_id); a retry returns the first
    response, a different request under the same id is ALREADY_EXISTS."""
    rid = req.request_id
    if not rid:
        return fn(tx)
    p = tx.db.param
    h = request_hash(req)
    row = tx.db.execute_sql(
        f"SELECT request_hash, response FROM idempotency_keys WHERE project = {p} AND method = {p} AND request_id = {p}",
        (tx.project, method, rid),
    ).fetchone()
    if row is not None:
        if row[0] != h:
            raise ServiceError(
                grpc.StatusCode.ALREADY_EXISTS,
                "REQUEST_ID_REUSED",
                f"request_id {clip(rid)} was already used for a different {method} request; "
                "use a new request_id for a new request",
                metadata={"request_id": rid, "method": method},
            )
        return response_cls.FromString(bytes(row[1]))
    resp = fn(tx)
    tx.db.execute_sql(
        f"INSERT INTO idempotency_keys (project, method, request_id, request_hash, response, create_time) "
        f"VALUES ({p}, {p}, {p}, {p}, {p}, {p})",
        (tx.project, method, rid, h, resp.SerializeToString(), tx.now),
    )
    return resp


def probe(tx: WriteTx) -> None:
    """The health probe: a real write (so a full disk, a read-only file or a
    lost connection shows) that changes nothing and makes no event."""
    tx.db.execute_sql(f"UPDATE store_meta SET value = value WHERE key = {tx.db.param}", ("probe",))


def expire_request_ids(tx: WriteTx, before_us: int) -> int:
    m = models_for(tx.db)
    return m.IdempotencyRow.delete().where(m.IdempotencyRow.create_time < before_us).execute()


# -- reads ---------------------------------------------------------------------


def get_job(db: peewee.Database, project: str, job_id: str) -> Job:
    row = db.execute_sql(hot(db).select_job, (job_id, project)).fetchone()
    if row is None:
        raise job_not_found(job_id)
    return Job.FromString(bytes(row[0]))


def current_revision(db: peewee.Database) -> int:
    return db.execute_sql(hot(db).select_revision, ("revision",)).fetchone()[0]


def compact_revision(db: peewee.Database) -> int:
    return db.execute_sql(hot(db).select_revision, ("compact_revision",)).fetchone()[0]


JOB_FIELDS = frozenset(f.name for f in Job.DESCRIPTOR.fields)


def check_read_mask(mask: field_mask_pb2.FieldMask, field_name: str = "read_mask") -> None:
    bad = [p for p in mask.paths if p.split(".")[0] not in JOB_FIELDS]
    if not bad and not mask.IsValidForDescriptor(Job.DESCRIPTOR):
        raise invalid_argument(
            [(field_name, f"{clip(', '.join(mask.paths))} names a sub-field that Job does not have; "
                          "use top-level fields such as id,state,progress (or message fields like lease.expire_time)")]
        )
    if bad:
        raise invalid_argument(
            [(field_name, f"unknown Job field {clip(p)}; valid fields: {', '.join(sorted(JOB_FIELDS))}") for p in bad]
        )


def shape_job(job: Job, mask: field_mask_pb2.FieldMask, include_metadata: bool) -> Job:
    """Apply a read mask and the metadata switch to a job (in place if no mask)."""
    if mask.paths:
        out = Job()
        mask.MergeMessage(job, out)
        if "metadata" not in mask.paths and not include_metadata:
            out.ClearField("metadata")
        return out
    if not include_metadata:
        job.ClearField("metadata")
    return job


ORDER_FIELDS = ("id", "type", "state", "priority", "create_time", "start_time", "end_time")
MAX_PAGE = 1000
DEFAULT_PAGE = 100


def parse_order_by(order_by: str) -> list[tuple[str, bool]]:
    """`priority desc, create_time` -> [("priority", True), ("create_time", False), ("id", False)]."""
    out: list[tuple[str, bool]] = []
    for part in [p.strip() for p in order_by.split(",") if p.strip()]:
        words = part.split()
        name = words[0]
        if name not in ORDER_FIELDS or len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
            raise invalid_argument(
                [("order_by", f"{clip(part)} is not `FIELD [asc|desc]` with FIELD one of {', '.join(ORDER_FIELDS)}")]
            )
        if any(n == name for n, _ in out):
            raise invalid_argument([("order_by", f"{clip(name)} appears twice")])
        out.append((name, len(words) == 2 and words[1].lower() == "desc"))
    if not any(n == "id" for n, _ in out):
        out.append(("id", out[-1][1] if out else False))
    return out


def page_size(requested: int, field_name: str = "page_size", default: int = DEFAULT_PAGE, maximum: int = MAX_PAGE) -> int:
    """AIP-158: 0 gives the default, larger than the maximum is coerced, negative is refused."""
    if requested < 0:
        raise invalid_argument([(field_name, f"must not be negative (0 means the default of {default}, at most {maximum})")])
    return min(requested or default, maximum)


def encode_token(values: list[Any], fingerprint: str) -> str:
    raw = json.dumps({"k": values, "f": fingerprint}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, fingerprint: str, field_name: str = "page_token") -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        obj = json.loads(raw)
        values, fp = obj["k"], obj["f"]
        assert isinstance(values, list)
    except Exception:
        raise invalid_argument([(field_name, "not a page token this server issued; start again without one")])
    if fp != fingerprint:
        raise invalid_argument(
            [(field_name, "the page token was issued for different filters or order_by; send the same ones, or no token")]
        )
    return values


def list_fingerprint(req: Any) -> str:
    c = type(req)()
    c.CopyFrom(req)
    for f in ("page_token", "page_size", "read_mask", "include_metadata"):
        if f in c.DESCRIPTOR.fields_by_name:
            c.ClearField(f)
    return hashlib.sha256(c.SerializeToString(deterministic=True)).hexdigest()[:16]


def _time_range(where: list[Any], col: Any, lo: Any, hi: Any) -> None:
    a, b = _us(lo), _us(hi)
    if a:
        where.append(col >= a)
    if b:
        where.append(col <= b)
        if col.name != "create_time":
            where.append(col > 0)


LIST_BATCH_ROWS = 128  # rows read per query while filling a ListJobs page


def list_jobs(db: peewee.Database, project: str, req: svc.ListJobsRequest) -> svc.ListJobsResponse:
    m = models_for(db)
    order = parse_order_by(req.order_by)
    size = page_size(req.page_size)
    check_read_mask(req.read_mask)
    fp = list_fingerprint(req)
    bad_states = [s for s in req.states if s not in Job.State.values() or s == Job.STATE_UNSPECIFIED]
    if bad_states:
        raise invalid_argument([("states", f"unknown state {bad_states[0]}")])

    where: list[Any] = [m.JobRow.project == project]
    if req.states:
        where.append(m.JobRow.state.in_(list(set(req.states))) if len(set(req.states)) > 1 else m.JobRow.state == req.states[0])
    if req.types:
        where.append(m.JobRow.type.in_(list(set(req.types))) if len(set(req.types)) > 1 else m.JobRow.type == req.types[0])
    if req.creator:
        where.append(m.JobRow.creator == req.creator)
    for k, v in sorted(req.metadata.items()):
        sub = m.JobMetadataRow.select(m.JobMetadataRow.job_id).where(
            (m.JobMetadataRow.project == project) & (m.JobMetadataRow.key == k) & (m.JobMetadataRow.value == v)
        )
        where.append(m.JobRow.id.in_(sub))
    _time_range(where, m.JobRow.create_time, req.create_time_from, req.create_time_to)
    _time_range(where, m.JobRow.start_time, req.start_time_from, req.start_time_to)
    _time_range(where, m.JobRow.end_time, req.end_time_from, req.end_time_to)

    cols = [getattr(m.JobRow, n) for n, _ in order]
    page_where = list(where)
    if req.page_token:
        values = decode_token(req.page_token, fp)
        if len(values) != len(cols):
            raise invalid_argument([("page_token", "malformed page token; start again without one")])
        page_where.append(_after(cols, [d for _, d in order], values))

    # A page ends at `size` jobs or when the next would take it past the
    # message budget (payloads.MESSAGE_BUDGET_BYTES), whichever comes first;
    # the token continues after the last job returned. Rows are read in
    # batches, so a page of large jobs is never all in memory at once.
    descending = [d for _, d in order]
    ordering = [c.desc() if d else c.asc() for c, d in zip(cols, descending)]
    resp = svc.ListJobsResponse()
    page = payloads.MessageBudget()
    last_key: list[Any] = []
    more = False
    with db.atomic():
        revision = current_revision(db)
        batch_where = page_where
        while not more:
            want = min(size + 1 - len(resp.jobs), LIST_BATCH_ROWS)
            rows = list(m.JobRow.select(m.JobRow.data, *cols).where(*batch_where).order_by(*ordering).limit(want).tuples())
            for r in rows:
                if len(resp.jobs) == size:
                    more = True
                    break
                job = shape_job(Job.FromString(bytes(r[0])), req.read_mask, req.include_metadata)
                if not page.admit(job.ByteSize()):
                    more = True
                    break
                resp.jobs.append(job)
                last_key = list(r[1:])
            if len(rows) < want:
                break
            batch_where = [*where, _after(cols, descending, last_key)]
        total = m.JobRow.select(peewee.fn.COUNT(m.JobRow.id)).where(*where).scalar()
    resp.total_size = total
    resp.revision = revision
    if more:
        resp.next_page_token = encode_token(last_key, fp)
    return resp


def _after(cols: list[Any], desc: list[bool], values: list[Any]) -> Any:
    """Keyset condition: rows strictly after `values` in the given order."""
    if all(d == desc[0] for d in desc):
        lhs, rhs = peewee.Tuple(*cols), peewee.Tuple(*values)
        return lhs < rhs if desc[0] else lhs > rhs
    ors = []
    for i in range(len(cols)):
        conj = [cols[j] == values[j] for j in range(i)]
        conj.append(cols[i] < values[i] if desc[i] else cols[i] > values[i])
        ors.append(_and(conj))
    return _or(ors)


def _and(xs: list[Any]) -> Any:
    out = xs[0]
    for x in xs[1:]:
        out = out & x
    return out


def _or(xs: list[Any]) -> Any:
    out = xs[0]
    for x in xs[1:]:
        out = out | x
    return out


def list_job_types(db: peewee.Database, project: str) -> list[res.JobType]:
    m = models_for(db)
    out = [res.JobType(name=n, description=d, built_in=True) for n, d in BUILT_IN_TYPES.items()]
    for (name,) in (
        m.JobTypeRow.select(m.JobTypeRow.name).where(m.JobTypeRow.project == project).order_by(m.JobTypeRow.name).tuples()
    ):
        out.append(res.JobType(name=name, description="Custom job type in use.", built_in=False))
    return out


def list_problems(db: peewee.Database, project: str, req: svc.ListJobProblemsRequest) -> svc.ListJobProblemsResponse:
    m = models_for(db)
    size = page_size(req.page_size)
    fp = list_fingerprint(req)
    where: list[Any] = [m.JobProblemRow.project == project]
    if req.job_id:
        get_job(db, project, req.job_id)  # NOT_FOUND for an unknown job
        where.append(m.JobProblemRow.job_id == req.job_id)
    if not req.include_resolved:
        where.append(m.JobProblemRow.resolved == False)  # noqa: E712
    if req.page_token:
        (after,) = decode_token(req.page_token, fp)
        where.append(m.JobProblemRow.id > after)
    rows = list(
        m.JobProblemRow.select(m.JobProblemRow, m.JobRow.state)
        .join(m.JobRow, peewee.JOIN.LEFT_OUTER, on=(m.JobRow.id == m.JobProblemRow.job_id))
        .where(*where)
        .order_by(m.JobProblemRow.id)
        .limit(size + 1)
        .dicts()
    )
    # A page ends at `size` problems or at the message budget; messages and
    # details are cut to their limits (rows written before the limits may
    # hold more).
    resp = svc.ListJobProblemsResponse()
    page = payloads.MessageBudget()
    for i, r in enumerate(rows[:size]):
        p = res.JobProblem(
            id=r["id"], job_id=r["job_id"], reason=r["reason"],
            message=payloads.cut(r["message"], payloads.MAX_PROBLEM_MESSAGE_CHARS),
            details=payloads.bound_problem_details(json.loads(r["details"])),
            resolved=r["resolved"], job_state=r["state"] or 0,  # type: ignore[arg-type]
        )
        p.create_time.CopyFrom(ts_from_us(r["create_time"]))
        if not page.admit(p.ByteSize()):
            resp.next_page_token = encode_token([rows[i - 1]["id"]], fp)
            return resp
        resp.problems.append(p)
    if len(rows) > size:
        resp.next_page_token = encode_token([rows[size - 1]["id"]], fp)
    return resp



def snapshot_jobs(
    db: peewee.Database, project: str, job_ids: list[str], types: list[str], states: list[int], limit: int
) -> tuple[int, list[Job]]:
    """The revision now and every job matching the filters (at most limit+1),
    read in one transaction (on SQLite a consistent snapshot at that revision)."""
    m = models_for(db)
    where: list[Any] = [m.JobRow.project == project]
    if job_ids:
        where.append(m.JobRow.id.in_(job_ids))
    if types:
        where.append(m.JobRow.type.in_(types))
    if states:
        where.append(m.JobRow.state.in_(states))
    with db.atomic():
        rev = current_revision(db)
        rows = m.JobRow.select(m.JobRow.data).where(*where).order_by(m.JobRow.id).limit(limit + 1).tuples()
        return rev, [Job.FromString(bytes(r[0])) for r in rows]
