"""Exclusive leases (WorkerService): acquire, heartbeat, finish, release,
and recovery of expired leases. Every function runs inside the group-commit
writer with a WriteTx and checks everything before its first write.

Fencing: `jobs.lease_token` changes with every lease. A call whose token is
not the job's current one, or whose lease has run out, raises LEASE_LOST
(ABORTED) and writes nothing.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
import grpc
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from mediajobs.v1 import resources_pb2 as res

from .. import payloads
from ..convert import set_ts
from ..errors import ServiceError, clip, illegal_transition, invalid_argument
from ..ids import new_id
from .db import is_postgres
from .jobs import LeaseColumns, emit, load_job_for_update, save_job, state_name
from .models import models_for
from .writer import WriteTx

Job = res.Job
MAX_BACKOFF_US = 300 * 1_000_000


@dataclass
class Leased:
    job: Job
    token: str
    expire_time: int


def lease_lost(job_id: str, why: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.ABORTED,
        "LEASE_LOST",
        f"the lease on job {clip(job_id)} is no longer yours ({why}); nothing was written: acquire the job again",
        metadata={"job_id": job_id},
    )


def owner_of(lease: res.JobLease) -> str:
    k = lease.lock_key
    return f"{k.scheduler_id}/{k.worker_id}/{k.batch_index} {lease.identity}".strip()


def backoff_us(attempt: int) -> int:
    """Exponential backoff before the next attempt: 1 s, 2 s, 4 s, ... 5 min."""
    return min(1_000_000 << max(attempt - 1, 0), MAX_BACKOFF_US)


def expiry_backoff_us(attempt: int) -> int:
    """Backoff after a lease expired: none the first time (a crashed worker's
    jobs are leasable again within lease + sweep interval), then 1 s, 2 s, ...
    so a job that keeps killing its workers slows down."""
    return 0 if attempt <= 1 else backoff_us(attempt - 1)


def acquire(
    tx: WriteTx, types: list[str], max_jobs: int, lease_us: int, lock_key: res.LockKey, identity: str,
    all_projects: bool = False, holder: str = "",
) -> list[Leased]:
    """Lease up to max_jobs PENDING jobs of `types`: highest priority, then
    oldest. Only tx.project's jobs (a worker's), or any project's (the
    server's own bulk runners)."""
    db = tx.db
    p = db.param
    scope = "" if all_projects else f"project = {p} AND "
    sql = (
        f"SELECT data FROM jobs WHERE {scope}state = {p} AND type IN ({', '.join([p] * len(types))}) "
        f"AND available_time <= {p} ORDER BY priority DESC, id LIMIT {int(max_jobs)}"
    )
    if is_postgres(db):
        sql += " FOR UPDATE SKIP LOCKED"
    args = (Job.PENDING, *types, tx.now) if all_projects else (tx.project, Job.PENDING, *types, tx.now)
    rows = db.execute_sql(sql, args).fetchall()
    # The reply holds every leased job: stop before it would pass the
    # message budget (at least one job; the rest stay PENDING, untouched).
    reply = payloads.MessageBudget()
    lease_bytes = len(identity.encode()) + lock_key.ByteSize() + 128  # JobLease, token, expiry
    leased: list[Leased] = []
    for (data,) in rows:
        if not reply.admit(len(data) + lease_bytes):
            break
        job = Job.FromString(bytes(data))
        tx.project = job.project  # (the same unless all_projects) its events and hooks are its project's
        leased.append(_lease(tx, job, lease_us, lock_key, identity, holder))
    return leased


def lease_job(tx: WriteTx, job_id: str, lease_us: int, lock_key: res.LockKey, identity: str, holder: str = ""
              ) -> Leased:
    """PENDING -> RUNNING under a new lease with a fresh fencing token."""
    job, _ = load_job_for_update(tx, job_id)
    if job.state != Job.PENDING:
        raise illegal_transition(job_id, state_name(job.state), "lease")
    return _lease(tx, job, lease_us, lock_key, identity, holder)


def _lease(tx: WriteTx, job: Job, lease_us: int, lock_key: res.LockKey, identity: str, holder: str = "") -> Leased:
    token = secrets.token_hex(16)
    expire = tx.now + lease_us
    job.state = Job.RUNNING
    job.attempt_count += 1
    job.progress = 0
    job.progress_message = ""
    job.ClearField("progress_details")
    job.ClearField("available_time")
    if not job.HasField("start_time"):
        set_ts(job.start_time, tx.now)
    job.lease.lock_key.CopyFrom(lock_key)
    job.lease.identity = identity
    if holder:
        job.lease.holder = holder
    set_ts(job.lease.expire_time, expire)
    set_ts(job.lease.last_heartbeat_time, tx.now)
    job.lease.duration.FromMicroseconds(lease_us)
    emit(tx, job, res.JobEvent.UPDATED, Job.PENDING)
    save_job(tx, job, LeaseColumns(token, owner_of(job.lease), expire))
    return Leased(job, token, expire)


def _leased(tx: WriteTx, job_id: str, token: str) -> tuple[Job, LeaseColumns]:
    job, lease = load_job_for_update(tx, job_id)
    _check_lease(tx, job_id, token, job, lease)
    return job, lease


def _check_lease(tx: WriteTx, job_id: str, token: str, job: Job, lease: LeaseColumns) -> None:
    if not token or not secrets.compare_digest(lease.token, token):
        raise lease_lost(job_id, "another worker holds it, or it was never yours")
    if job.state not in (Job.RUNNING, Job.ABORTING):
        raise lease_lost(job_id, f"the job is {state_name(job.state)}")
    if lease.expire_time <= tx.now:
        raise lease_lost(job_id, "the lease expired")


def heartbeat(
    tx: WriteTx, job_id: str, token: str, progress: int, message: str, details: struct_pb2.Struct | None,
    lease_us: int,
) -> tuple[Job, int]:
    """Extend the lease (by lease_us, or 0 for the granted length) and record
    progress; an event is written only when the progress, message or details
    change (a bare lease extension is not a change)."""
    job, lease = _leased(tx, job_id, token)
    changed = False
    if progress > job.progress:
        job.progress = progress
        changed = True
    if message and message != job.progress_message:
        job.progress_message = message
        changed = True
    if details is not None and details != job.progress_details:
        job.progress_details.CopyFrom(details)
        changed = True
    if not lease_us:
        lease_us = job.lease.duration.ToMicroseconds() or 60_000_000
    lease.expire_time = tx.now + lease_us
    set_ts(job.lease.expire_time, lease.expire_time)
    set_ts(job.lease.last_heartbeat_time, tx.now)
    if changed:
        emit(tx, job, res.JobEvent.UPDATED, job.state)
    save_job(tx, job, lease)
    return job, lease.expire_time


def _finish(tx: WriteTx, job: Job, state: int, lease: LeaseColumns) -> None:
    prev = job.state
    job.state = state  # type: ignore[assignment]
    set_ts(job.end_time, tx.now)
    job.ClearField("lease")
    _resolve_problems(tx, job)
    emit(tx, job, res.JobEvent.UPDATED, prev)
    # Keep the token: a retried completion of the same attempt is recognised.
    save_job(tx, job, LeaseColumns(lease.token, "", 0))


def _resolve_problems(tx: WriteTx, job: Job) -> None:
    if job.problems:
        m = models_for(tx.db)
        m.JobProblemRow.update(resolved=True).where(m.JobProblemRow.job_id == job.id).execute()
        job.ClearField("problems")


def complete(tx: WriteTx, job_id: str, token: str, result: struct_pb2.Struct | None) -> Job:
    job, lease = load_job_for_update(tx, job_id)
    if job.state in (Job.SUCCEEDED, Job.ABORTED) and token and lease.token == token:
        return job  # the same attempt's completion, retried
    _check_lease(tx, job_id, token, job, lease)
    if job.state == Job.ABORTING:
        _finish(tx, job, Job.ABORTED, lease)
        return job
    if result is not None:
        job.result.CopyFrom(result)
    job.progress = 100
    _finish(tx, job, Job.SUCCEEDED, lease)
    return job


def fail(
    tx: WriteTx, job_id: str, token: str, error: status_pb2.Status, retryable: bool, retry_delay_us: int
) -> Job:
    job, lease = _leased(tx, job_id, token)
    if job.state == Job.ABORTING:
        _finish(tx, job, Job.ABORTED, lease)
        return job
    if retryable and job.attempt_count < job.max_attempts:
        delay = retry_delay_us or backoff_us(job.attempt_count)
        retrying = f"attempt {job.attempt_count} failed, retrying: {error.message}"
        _requeue(tx, job, tx.now + delay, payloads.cut(retrying, payloads.MAX_PROGRESS_MESSAGE_CHARS))
        return job
    job.error.CopyFrom(error)
    if not job.error.code:
        job.error.code = code_pb2.UNKNOWN
    _finish(tx, job, Job.FAILED, lease)
    return job


def _requeue(tx: WriteTx, job: Job, available_us: int, message: str) -> None:
    prev = job.state
    job.state = Job.PENDING
    job.progress_message = message
    job.ClearField("lease")
    set_ts(job.available_time, available_us)
    emit(tx, job, res.JobEvent.UPDATED, prev)
    save_job(tx, job, LeaseColumns())


def release(tx: WriteTx, job_id: str, token: str, job_type: str, reset_attempts: bool) -> Job:
    job, lease = load_job_for_update(tx, job_id)
    if job_type and job_type != job.type:
        raise invalid_argument([("job_type", f"job {clip(job_id)} is of type {clip(job.type)}, not {clip(job_type)}")])
    _check_lease(tx, job_id, token, job, lease)
    if job.state == Job.ABORTING:
        _finish(tx, job, Job.ABORTED, lease)
        return job
    # A graceful release gives the attempt back (see ReleaseJob in
    # worker_service.proto), so attempt_count never passes max_attempts.
    job.attempt_count = 0 if reset_attempts else max(job.attempt_count - 1, 0)
    _requeue(tx, job, 0, "released by its worker")
    return job


def complete_many(tx: WriteTx, items: list[tuple[str, str, struct_pb2.Struct | None]]) -> list[Job | ServiceError]:
    """complete() for many jobs in one write; each item succeeds or fails alone."""
    out: list[Job | ServiceError] = []
    for job_id, token, result in items:
        mark = tx.mark()
        try:
            with tx.db.atomic():  # savepoint: a refused item leaves nothing behind
                out.append(complete(tx, job_id, token, result))
        except ServiceError as e:
            tx.rollback_to(mark)
            out.append(e)
    return out


def unclaim(tx: WriteTx, leased: list[Leased]) -> None:
    """Put jobs whose AcquireJobs reply never reached the worker back to
    PENDING, as if the lease had not happened (the attempt is not counted)."""
    for item in leased:
        job, lease = load_job_for_update(tx, item.job.id)
        if job.state != Job.RUNNING or lease.token != item.token:
            continue
        job.attempt_count = max(job.attempt_count - 1, 0)
        _requeue(tx, job, 0, "")


@dataclass
class Recovered:
    retried: list[str]
    failed: list[str]
    aborted: list[str]


def recover_expired(tx: WriteTx, limit: int = 500, all_projects: bool = False) -> Recovered:
    """Jobs whose lease ran out: ABORTING -> ABORTED; RUNNING -> PENDING (at once
    after a first expiry, then with a growing backoff), or FAILED once its
    attempts are used up. Each records a problem. Only tx.project's jobs
    (CleanExclusiveJobs), or every project's (the server's own sweep)."""
    m = models_for(tx.db)
    cond = (m.JobRow.state.in_([Job.RUNNING, Job.ABORTING])) & (m.JobRow.lease_expire_time < tx.now)
    if not all_projects:
        cond &= m.JobRow.project == tx.project
    rows = list(
        m.JobRow.select(m.JobRow.id, m.JobRow.project)
        .where(cond)
        .order_by(m.JobRow.lease_expire_time)
        .limit(limit)
        .tuples()
    )
    out = Recovered([], [], [])
    for job_id, project in rows:
        tx.project = project  # events and hooks of this job belong to its project
        job, lease = load_job_for_update(tx, job_id)
        worker = owner_of(job.lease) or lease.owner
        last_hb = job.lease.last_heartbeat_time.ToJsonString() if job.lease.HasField("last_heartbeat_time") else ""
        details = payloads.bound_problem_details({
            "worker": worker, "last_heartbeat": last_hb, "cause": "lease expired without a heartbeat",
            "attempt": str(job.attempt_count),
        })
        if job.state == Job.ABORTING:
            _finish(tx, job, Job.ABORTED, lease)
            out.aborted.append(job_id)
            continue
        problem = res.JobProblem(
            id=new_id(), job_id=job_id, reason="LEASE_EXPIRED",
            message=f"worker {clip(worker)} stopped heartbeating (last at {last_hb or 'never'}); lease expired",
            details=details,
        )
        set_ts(problem.create_time, tx.now)
        m.JobProblemRow.insert(
            id=problem.id, project=tx.project, job_id=job_id, reason=problem.reason, message=problem.message,
            details=json.dumps(details, sort_keys=True), create_time=tx.now,
        ).execute()
        job.problems.append(problem)
        payloads.bound_problems(job)  # the newest MAX_JOB_PROBLEMS; ListJobProblems has them all
        if job.attempt_count < job.max_attempts:
            _requeue(tx, job, tx.now + expiry_backoff_us(job.attempt_count), problem.message)
            out.retried.append(job_id)
        else:
            job.error.CopyFrom(
                status_pb2.Status(
                    code=code_pb2.DEADLINE_EXCEEDED,
                    message=f"lease expired on attempt {job.attempt_count} of {job.max_attempts}: {problem.message}",
                )
            )
            _finish(tx, job, Job.FAILED, lease)
            out.failed.append(job_id)
    return out

