"""A one-time check, at start-up, of payloads stored before the limits of
server/payloads.py existed.

Older versions accepted payloads that break clients: params nested 33+
levels deep (every Python watcher replaying the job fails to parse it), a
google.protobuf.Value with no kind or a NaN (no JSON encoder can write the
job), results of many MiB (no client with the default 4 MiB limit can read
the job), error details of types clients cannot resolve. This pass finds
them in

- jobs.data (serialized mediajobs.v1.Job),
- job_events.data (serialized JobEvent: its `job` is a Job),
- idempotency_keys.response (a Job for CreateJob / AbortJob / RerunJob, an
  Entry for CreateEntry),
- entries.data (Entry.error copies a failed job's google.rpc.Status),

and rewrites each bad payload into a readable one: a Struct becomes
`{"unreadable": "<why>"}`, a Status keeps its code and message without its
details; the rest of the job stays as it was. Text the server writes into a
job (progress message, abort reason, problems) is cut to its limit.

A payload nested past the protobuf runtime's own limit cannot be parsed in
Python at all, so the job is taken apart at the wire level (a sequence of
tagged fields: params = 6, error = 17, result = 18, progress_details = 25 in
Job; job = 3 in JobEvent) and only the bad field is replaced.

It runs once per database: the `store_meta` row `payload_check_version`
records that it ran (a new, empty database is marked at once). Rows are read
in batches of SCAN_BATCH_ROWS by primary key, and each rewrite only applies
if the row still holds what was read (another server on the same database
may have changed it meanwhile). A row costs about 30 us to check, so a
database of a million jobs and three million events delays that one start by
about two minutes (logged as it goes).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import peewee
from google.protobuf import message, struct_pb2
from google.rpc import code_pb2, status_pb2

from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import resources_pb2 as res

from .. import payloads
from .models import models_for

log = logging.getLogger("mediajobs.store.sanitize")

Job = res.Job
JobEvent = res.JobEvent
Entry = mres.Entry

PAYLOAD_CHECK_VERSION = 1
MARKER_KEY = "payload_check_version"
SCAN_BATCH_ROWS = 200
LOGGED_ROWS = 20  # rows described one by one in the log; the rest are counted
PROGRESS_ROWS = 100_000  # log progress every this many rows (about 3 s: ~30 us a row)

JOB_STRUCT_FIELDS: dict[int, str] = {Job.DESCRIPTOR.fields_by_name[n].number: n for n in payloads.STORED_STRUCT_LIMITS}
JOB_ERROR_FIELD = Job.DESCRIPTOR.fields_by_name["error"].number
EVENT_JOB_FIELD = JobEvent.DESCRIPTOR.fields_by_name["job"].number
assert JOB_STRUCT_FIELDS == {6: "params", 18: "result", 25: "progress_details"} and JOB_ERROR_FIELD == 17
assert EVENT_JOB_FIELD == 3


@dataclass
class Repair:
    """A stored blob rewritten into a readable one, and what was changed."""

    data: bytes
    changes: list[str]


# -- single payloads -----------------------------------------------------------------------


def unreadable(why: str) -> struct_pb2.Struct:
    """What replaces a Struct clients cannot read."""
    s = struct_pb2.Struct()
    s.fields["unreadable"].string_value = payloads.cut(
        f"{why} (replaced by the server's payload check: clients could not read it)", 1024)
    return s


def struct_problem(data: bytes, name: str, max_bytes: int) -> str | None:
    """Why a serialized Struct stored as `name` cannot stay; None if it can."""
    try:
        value = struct_pb2.Struct.FromString(data)
    except message.DecodeError:
        deep = payloads.locate_too_deep(struct_pb2.Struct.DESCRIPTOR, data)
        if deep is None:
            return f"{name} could not be parsed"
        return f"{payloads.field_path(name, deep[0])}: nested more than {payloads.MAX_PAYLOAD_DEPTH} levels deep"
    found = payloads.struct_violations(value, name, max_bytes)
    return "; ".join(f"{path}: {why}" for path, why in found[:3]) or None


def repaired_status(data: bytes) -> status_pb2.Status | None:
    """A readable replacement for a stored google.rpc.Status, or None if it
    can stay: the code and (cut) message are kept, the details dropped."""
    try:
        status = status_pb2.Status.FromString(data)
    except message.DecodeError:
        return status_pb2.Status(code=code_pb2.UNKNOWN, message="the stored error could not be parsed "
                                                                "(replaced by the server's payload check)")
    found = payloads.status_violations(status, "error", payloads.MAX_ERROR_BYTES)
    if not found:
        return None
    path, why = found[0]
    note = payloads.cut(f" [details removed by the server's payload check: {path}: {why}]", 512)
    return status_pb2.Status(code=status.code or code_pb2.UNKNOWN,
                             message=payloads.cut(status.message, 16 * 1024) + note)


# -- stored messages -----------------------------------------------------------------------


def repair_job(data: bytes) -> Repair | None:
    """A readable version of a stored Job, or None when it is fine."""
    try:
        job: Job | None = Job.FromString(data)
    except message.DecodeError:  # nested past what Python can parse
        job = None
    if job is not None and not payloads.job_payload_violations(job):
        cut = payloads.bound_job_text(job)
        return Repair(job.SerializeToString(), [f"{f} cut to its limit" for f in cut]) if cut else None
    fixed, changes = _repair_job_fields(data)
    job = Job.FromString(fixed)
    changes += [f"{f} cut to its limit" for f in payloads.bound_job_text(job)]
    return Repair(job.SerializeToString(), changes)


def _repair_job_fields(data: bytes) -> tuple[bytes, list[str]]:
    """Replace the bad Struct and Status fields of a serialized Job, field by
    field, without parsing the Job. Repeated occurrences of one field (which
    a parser merges) are checked together and written as one."""
    fields = list(payloads.iter_fields(data))
    out: list[bytes] = []
    changes: list[str] = []
    done: set[int] = set()
    for f in fields:
        is_payload = f.wire_type == payloads.LENGTH_DELIMITED and (f.number in JOB_STRUCT_FIELDS or f.number == JOB_ERROR_FIELD)
        if not is_payload:
            out.append(data[f.start:f.end])
            continue
        if f.number in done:
            continue
        done.add(f.number)
        body = b"".join(data[g.value_start:g.end] for g in fields
                        if g.number == f.number and g.wire_type == payloads.LENGTH_DELIMITED)
        if f.number == JOB_ERROR_FIELD:
            status = repaired_status(body)
            if status is not None:
                body = status.SerializeToString()
                changes.append("error: details removed")
        else:
            name = JOB_STRUCT_FIELDS[f.number]
            why = struct_problem(body, name, payloads.STORED_STRUCT_LIMITS[name])
            if why is not None:
                body = unreadable(why).SerializeToString()
                changes.append(why)
        out.append(payloads.length_delimited(f.number, body))
    return b"".join(out), changes


def repair_event(data: bytes) -> Repair | None:
    """A readable version of a stored JobEvent (its job repaired), or None."""
    try:
        event: JobEvent | None = JobEvent.FromString(data)
    except message.DecodeError:
        event = None
    if event is not None and not payloads.job_payload_violations(event.job):
        cut = payloads.bound_job_text(event.job)
        return Repair(event.SerializeToString(), [f"job.{f} cut to its limit" for f in cut]) if cut else None
    out: list[bytes] = []
    changes: list[str] = []
    for f in payloads.iter_fields(data):
        if f.number == EVENT_JOB_FIELD and f.wire_type == payloads.LENGTH_DELIMITED:
            job = repair_job(data[f.value_start:f.end])
            if job is not None:
                out.append(payloads.length_delimited(EVENT_JOB_FIELD, job.data))
                changes += [f"job.{c}" for c in job.changes]
                continue
        out.append(data[f.start:f.end])
    fixed = b"".join(out)
    JobEvent.FromString(fixed)  # DecodeError if it is still not readable
    return Repair(fixed, changes)


def repair_entry(data: bytes) -> Repair | None:
    """A readable version of a stored Entry (its error's details), or None."""
    entry = Entry.FromString(data)  # an Entry has no Struct: depth is never the problem
    if not entry.HasField("error"):
        return None
    status = repaired_status(entry.error.SerializeToString())
    if status is None:
        return None
    entry.error.CopyFrom(status)
    return Repair(entry.SerializeToString(), ["error: details removed"])


# -- the pass over the database ---------------------------------------------------------------


@dataclass(frozen=True)
class StoredBlobs:
    """One kind of stored message: where it lives and how to repair it."""

    label: str
    table: str
    key: tuple[str, ...]  # the primary key, scanned in order
    column: str
    repair: Callable[[bytes], Repair | None]
    where: str = ""  # which rows hold this kind


JOB_REPLY_METHODS = ("CreateJob", "AbortJob", "RerunJob")

STORED: tuple[StoredBlobs, ...] = (
    StoredBlobs("jobs", "jobs", ("id",), "data", repair_job),
    StoredBlobs("change events", "job_events", ("revision",), "data", repair_event),
    StoredBlobs("job replies", "idempotency_keys", ("project", "method", "request_id"), "response", repair_job,
                where="method IN (" + ", ".join(f"'{m}'" for m in JOB_REPLY_METHODS) + ")"),
    StoredBlobs("entry replies", "idempotency_keys", ("project", "method", "request_id"), "response", repair_entry,
                where="method = 'CreateEntry'"),
    StoredBlobs("entries", "entries", ("id",), "data", repair_entry),
)


def sanitize_stored_payloads(db: peewee.Database) -> dict[str, int] | None:
    """Run the check once per database (see the module docstring). Returns
    how many rows of each kind were rewritten, or None if it ran before."""
    m = models_for(db)
    done = m.MetaRow.select(m.MetaRow.value).where(m.MetaRow.key == MARKER_KEY).scalar()
    if done is not None and done >= PAYLOAD_CHECK_VERSION:
        return None
    started = time.monotonic()
    fixed = {kind.label: _scan(db, kind) for kind in STORED}
    m.MetaRow.insert(key=MARKER_KEY, value=PAYLOAD_CHECK_VERSION).on_conflict(
        conflict_target=[m.MetaRow.key], update={m.MetaRow.value: PAYLOAD_CHECK_VERSION}
    ).execute()
    total = sum(fixed.values())
    summary = ", ".join(f"{n} {label}" for label, n in fixed.items())
    if total:
        log.warning("payload check: rewrote %d stored payloads clients could not read (%s) in %.1f s",
                    total, summary, time.monotonic() - started)
    else:
        log.info("payload check: nothing to rewrite (%.1f s)", time.monotonic() - started)
    return fixed


def _scan(db: peewee.Database, kind: StoredBlobs) -> int:
    """Repair every bad blob of one kind, SCAN_BATCH_ROWS rows at a time."""
    p = db.param
    key = ", ".join(kind.key)
    after: Sequence[object] | None = None
    fixed = scanned = 0
    while True:
        where = [kind.where] if kind.where else []
        if after is not None:
            where.append(f"({key}) > ({', '.join([p] * len(kind.key))})")
        sql = (f"SELECT {key}, {kind.column} FROM {kind.table}"
               + (f" WHERE {' AND '.join(where)}" if where else "")
               + f" ORDER BY {key} LIMIT {SCAN_BATCH_ROWS}")
        rows = db.execute_sql(sql, list(after or ())).fetchall()
        with db.atomic():
            for row in rows:
                row_key, blob = row[:-1], bytes(row[-1])
                try:
                    repair = kind.repair(blob)
                except (message.DecodeError, ValueError, IndexError) as e:
                    log.error("payload check: %s %s cannot be read or repaired (%s); left as it is",
                              kind.label, row_key, e)
                    continue
                if repair is None:
                    continue
                match = " AND ".join(f"{k} = {p}" for k in (*kind.key, kind.column))
                cursor = db.execute_sql(f"UPDATE {kind.table} SET {kind.column} = {p} WHERE {match}",
                                        [repair.data, *row_key, blob])
                if cursor.rowcount:
                    fixed += 1
                    if fixed <= LOGGED_ROWS:
                        log.warning("payload check: %s %s rewritten: %s", kind.label, row_key,
                                    "; ".join(repair.changes)[:500])
        scanned += len(rows)
        if len(rows) < SCAN_BATCH_ROWS:
            return fixed
        if scanned % PROGRESS_ROWS < SCAN_BATCH_ROWS:
            log.info("payload check: %d %s checked, %d rewritten so far", scanned, kind.label, fixed)
        after = rows[-1][:-1]
