"""Live jobs: the rows, the state machine, and how a live job follows the
LIVE_ENCODE job of its current session.

A live job is a row (`live_jobs`) with its outputs (`live_outputs`) and an
append-only status log (`live_timings`). Each SetLiveEncoding(online)
starts a session: an ordinary LIVE_ENCODE job (params: where to write, the
renditions, the input; never the stream key), which a live worker leases.
The worker moves the live job through AWAITING_INPUT, LIVE, RECONNECTING
and STOPPING with ReportLiveStatus; the job's own transitions (completed,
aborted, failed, lease lost) move it to STOPPED, FAILED or RECOVERING
through the jobs' state hook, in the same transaction. Every live state
change is also written into the session job (`progress_details.live_state`,
an UPDATED event), so WatchJobs carries it, and appends a timing.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import grpc
import peewee
from google.rpc import code_pb2, status_pb2

from mediajobs.v1 import live_job_service_pb2 as lsvc
from mediajobs.v1 import live_resources_pb2 as lres
from mediajobs.v1 import resources_pb2 as res
from mediajobs.v1 import worker_service_pb2 as wsvc

from .. import payloads
from ..convert import set_ts
from ..errors import ServiceError, clip, invalid_argument
from ..quotas import exceeded
from ..ids import new_id
from . import jobs as store_jobs
from . import leases
from .templates import LIVE_DEFAULT_TEMPLATE, get_template, is_live, segment_seconds
from .writer import WriteTx

LiveJob = lres.LiveJob
LiveOutput = lres.LiveOutput
LiveTiming = lres.LiveTiming
LiveClip = lres.LiveClip
LiveInput = lres.LiveInput
Job = res.Job
State = LiveJob.State

JOB_TYPE = "LIVE_ENCODE"
CLIP_JOB_TYPE = "LIVE_CLIP"
CLIP_KEY = "live_clip_id"  # a LIVE_CLIP job's metadata key
MAX_CLIP_S = 6 * 3600
LIVE_KEY = "live_job_id"  # the session job's metadata key
LIVE_AREA = "live"  # the folder under the storage root
# A live session survives this many worker losses before it fails.
SESSION_MAX_ATTEMPTS = 10
DEFAULT_RECONNECT_S = 60
MAX_RECONNECT_S = 1800
DEFAULT_MAX_DURATION_S = 12 * 3600
MAX_MAX_DURATION_S = 7 * 24 * 3600
MAX_SEARCH_CHARS = 256
MAX_PAGE = 100
MAX_OFFSET = 10_000
# A refused publisher is written to the timings at most this often per live
# job, so that a publisher retrying a wrong key cannot fill the log.
REJECT_TIMING_INTERVAL_US = 1_000_000

ONLINE_STATES = frozenset({State.STARTING, State.AWAITING_INPUT, State.LIVE, State.RECONNECTING, State.RECOVERING})
IDLE_STATES = frozenset({State.OFFLINE, State.STOPPED, State.FAILED})
# What a worker may report, from what.
WORKER_MOVES: dict[int, frozenset[int]] = {
    State.AWAITING_INPUT: frozenset({State.STARTING, State.RECOVERING, State.RECONNECTING}),
    State.LIVE: frozenset({State.AWAITING_INPUT, State.RECONNECTING}),
    State.RECONNECTING: frozenset({State.LIVE}),
    State.STOPPING: frozenset({State.STARTING, State.AWAITING_INPUT, State.LIVE, State.RECONNECTING,
                               State.RECOVERING}),
}


def state_name(s: int) -> str:
    return State.Name(s) if s in State.values() else str(s)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LiveSettings:
    """What the server knows about its deployment (config)."""

    rtmp_server: str = "rtmp://127.0.0.1:1935/live"
    playback_base_url: str = ""
    cdn_base_url: str = ""
    # SRT ingest: the host publishers reach the live workers' SRT listeners
    # at, and the ports given out to live jobs (none: SRT is not available).
    srt_host: str = ""
    srt_ports: tuple[int, int] = (0, 0)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def live_not_found(what: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.NOT_FOUND, "LIVE_JOB_NOT_FOUND",
        f"live job {clip(what)} does not exist; list them with ListLiveJobs",
        metadata={"live_job_id": what[:64]}, resource=("mediajobs.v1.LiveJob", what[:64]),
    )


def key_not_found() -> ServiceError:
    # Never echo a stream key.
    return ServiceError(grpc.StatusCode.NOT_FOUND, "LIVE_JOB_NOT_FOUND",
                        "no live job has this stream key (was it reset?); GetLiveJob shows the current key")


def wrong_state(live: LiveJob, action: str, reason: str, hint: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION, reason,
        f"cannot {action} live job {live.id}: it is {state_name(live.state)}; {hint}",
        metadata={"live_job_id": live.id, "state": state_name(live.state)},
        precondition=(reason, f"liveJobs/{live.id}", f"the live job is {state_name(live.state)}"),
    )


# -- rows -----------------------------------------------------------------------------------


def _row_by(db: peewee.Database, project: str, column: str, value: str) -> tuple[str, bytes] | None:
    p = db.param
    row = db.execute_sql(f"SELECT id, data FROM live_jobs WHERE project = {p} AND {column} = {p}",
                         (project, value)).fetchone()
    return (str(row[0]), bytes(row[1])) if row is not None else None


def load_live(db: peewee.Database, project: str, id_or_name: str) -> LiveJob:
    """By id (ULID) or name (UUID); NOT_FOUND otherwise."""
    ref = id_or_name.strip()
    row = _row_by(db, project, "id", ref.upper()) if len(ref) == 26 else None
    if row is None and len(ref) == 36:
        row = _row_by(db, project, "name", ref.lower())
    if row is None:
        raise live_not_found(ref)
    return LiveJob.FromString(row[1])


def load_by_key(db: peewee.Database, project: str, stream_key: str) -> LiveJob | None:
    """The live job whose current key (or backup key) this is (the lookup
    goes by the key's hash, and the key itself is compared in constant time)."""
    return find_key(db, project, stream_key)[0]


def find_key(db: peewee.Database, project: str, stream_key: str) -> tuple[LiveJob | None, bool]:
    """(the live job, whether the key is its backup key)."""
    given = stream_key.encode("utf-8", "surrogatepass")
    for column, backup in (("key_hash", False), ("backup_key_hash", True)):
        row = _row_by(db, project, column, key_hash(stream_key))
        if row is None:
            continue
        live = LiveJob.FromString(row[1])
        key = live.backup_stream_key if backup else live.stream_key
        if key and hmac.compare_digest(key.encode(), given):
            return live, backup
    return None, False


def _search_text(live: LiveJob) -> str:
    return "\n".join((live.name, live.description, live.destination, live.input.file_path)).lower()


def _save(tx: WriteTx, live: LiveJob) -> None:
    set_ts(live.update_time, tx.now)
    p = tx.db.param
    tx.db.execute_sql(
        f"UPDATE live_jobs SET state = {p}, key_hash = {p}, backup_key_hash = {p}, search_text = {p}, "
        f"current_job_id = {p}, update_time = {p}, data = {p} WHERE id = {p}",
        (live.state, key_hash(live.stream_key), _backup_hash(live), _search_text(live), live.current_job_id,
         tx.now, live.SerializeToString(), live.id))


def _backup_hash(live: LiveJob) -> str:
    return key_hash(live.backup_stream_key) if live.backup_stream_key else ""


def _next_number(tx: WriteTx) -> int:
    p = tx.db.param
    tx.db.execute_sql(f"UPDATE store_meta SET value = value + 1 WHERE key = {p}", ("live_job_number",))
    return int(tx.db.execute_sql(f"SELECT value FROM store_meta WHERE key = {p}",
                                 ("live_job_number",)).fetchone()[0])


# Called (in the writer thread) after a commit that queued callbacks: the
# server's callback sender registers its wake-up here.
CALLBACK_WAKERS: list[Callable[[], None]] = []


def add_timing(tx: WriteTx, live: LiveJob, child_status: str, message: str = "", output_id: int = 0,
               job_id: str = "") -> LiveTiming:
    """Append to the status log and, with a callback URL, queue its POST
    (same transaction)."""
    t = LiveTiming(status=live.state, child_status=child_status, message_comment=payloads.cut(message, 1024),
                   output_id=output_id, job_id=job_id or live.current_job_id)
    set_ts(t.time, tx.now)
    p = tx.db.param
    tx.db.execute_sql(
        f"INSERT INTO live_timings (live_job_id, output_id, create_time, data) VALUES ({p}, {p}, {p}, {p})",
        (live.id, output_id, tx.now, t.SerializeToString()))
    if live.input.callback_url:
        body = json.dumps({
            "id": new_id(), "type": "live_job.timing", "live_job_id": live.id, "name": live.name,
            "status": state_name(live.state), "child_status": child_status, "message": t.message_comment,
            "time": t.time.ToJsonString(), "job_id": t.job_id, "output_id": output_id,
        }, separators=(",", ":")).encode()
        tx.db.execute_sql(
            f"INSERT INTO live_callbacks (live_job_id, url, due_time, attempts, data) VALUES ({p}, {p}, {p}, 0, {p})",
            (live.id, live.input.callback_url, tx.now, body))
        if "live_callbacks" not in tx.flags:
            tx.flags.add("live_callbacks")
            tx.after_commit.extend(CALLBACK_WAKERS)
    return t


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The Mediajobs-Signature header of a callback body."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


@dataclass
class Callback:
    id: int
    live_job_id: str
    url: str
    attempts: int
    body: bytes
    secret: str


def due_callbacks(db: peewee.Database, project: str, now_us: int, limit: int = 100) -> tuple[list[Callback], int]:
    """Callbacks due now (oldest first), and when the next one falls due (0: none)."""
    p = db.param
    rows = db.execute_sql(
        f"SELECT c.id, c.live_job_id, c.url, c.attempts, c.data, j.data FROM live_callbacks c "
        f"LEFT JOIN live_jobs j ON j.id = c.live_job_id WHERE c.due_time <= {p} AND NOT EXISTS ("
        f"SELECT 1 FROM live_callbacks e WHERE e.live_job_id = c.live_job_id AND e.id < c.id AND e.due_time > {p}) "
        f"ORDER BY c.id LIMIT {limit}",
        (now_us, now_us)).fetchall()
    out = []
    for cid, live_id, url, attempts, body, live_data in rows:
        secret = LiveJob.FromString(bytes(live_data)).input.callback_secret if live_data is not None else ""
        out.append(Callback(int(cid), str(live_id), str(url), int(attempts), bytes(body), secret))
    nxt = db.execute_sql("SELECT MIN(due_time) FROM live_callbacks").fetchone()
    return out, int(nxt[0]) if nxt and nxt[0] is not None else 0


def callback_done(tx: WriteTx, callback_id: int) -> None:
    tx.db.execute_sql(f"DELETE FROM live_callbacks WHERE id = {tx.db.param}", (callback_id,))


def callback_retry(tx: WriteTx, callback_id: int, attempts: int, due_us: int) -> None:
    p = tx.db.param
    tx.db.execute_sql(f"UPDATE live_callbacks SET attempts = {p}, due_time = {p} WHERE id = {p}",
                      (attempts, due_us, callback_id))


def _outputs(db: peewee.Database, live_id: str) -> list[LiveOutput]:
    p = db.param
    return [LiveOutput.FromString(bytes(d)) for (d,) in db.execute_sql(
        f"SELECT data FROM live_outputs WHERE live_job_id = {p} ORDER BY output_id", (live_id,)).fetchall()]


def _save_output(tx: WriteTx, o: LiveOutput) -> None:
    set_ts(o.update_time, tx.now)
    p = tx.db.param
    tx.db.execute_sql(f"UPDATE live_outputs SET data = {p} WHERE live_job_id = {p} AND output_id = {p}",
                      (o.SerializeToString(), o.live_job_id, o.output_id))


def _set_outputs(tx: WriteTx, live: LiveJob, status: int, progress: int | None = None) -> None:
    for o in _outputs(tx.db, live.id):
        if o.status != status or (progress is not None and o.progress != progress):
            o.status = status  # type: ignore[assignment]
            if progress is not None:
                o.progress = progress
            _save_output(tx, o)


# -- create ---------------------------------------------------------------------------------


def _options(enum: Any, chosen: int) -> list[lres.LiveOption]:
    return [lres.LiveOption(id=v, value=n, enabled=v == chosen) for n, v in enum.items() if v]


def _area(live: LiveJob) -> str:
    return f"{LIVE_AREA}/{live.bucket}/{live.destination}"


def _urls(live: LiveJob, settings: LiveSettings, rendition_names: list[str]) -> None:
    area = _area(live)
    live.rtmp_server = settings.rtmp_server
    live.ingest_url = f"{settings.rtmp_server.rstrip('/')}/{live.stream_key}"
    if live.input.server_type == LiveInput.SRT:
        live.rtmp_server = f"srt://{settings.srt_host}:{live.srt_port}"
        live.ingest_url = f"{live.rtmp_server}?passphrase={live.srt_passphrase}&latency=120"
    live.backup_ingest_url = f"{settings.rtmp_server.rstrip('/')}/{live.backup_stream_key}" \
        if live.backup_stream_key else ""
    live.storage_master_file = f"{area}/master.m3u8"
    live.output_manifests.clear()
    for n in rendition_names:
        live.output_manifests[n] = f"{area}/{n}/index.m3u8"
    live.playback_url = f"{settings.playback_base_url.rstrip('/')}/{area}/master.m3u8" \
        if settings.playback_base_url else ""
    live.cdn = f"{settings.cdn_base_url.rstrip('/')}/{area}/master.m3u8" \
        if settings.cdn_base_url and live.cdn_distribution else ""


def _free_srt_port(tx: WriteTx, settings: LiveSettings) -> int:
    """The lowest port of --live-srt-ingest no live job has (ports are the
    deployment's: every project shares the range)."""
    low, high = settings.srt_ports
    if not settings.srt_host or not low:
        raise ServiceError(
            grpc.StatusCode.FAILED_PRECONDITION, "SERVER_TYPE_NOT_AVAILABLE",
            "SRT input is not available on this deployment: the server runs without --live-srt-ingest (and the "
            "live workers need Debian's srt-live-transmit); use server_type RTMP",
            precondition=("SERVER_TYPE_NOT_AVAILABLE", "SRT", "no SRT ingest configured"))
    p = tx.db.param
    used = {int(r[0]) for r in tx.db.execute_sql(
        f"SELECT srt_port FROM live_jobs WHERE srt_port >= {p} AND srt_port <= {p}", (low, high)).fetchall()}
    for port in range(low, high + 1):
        if port not in used:
            return port
    raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, "SRT_PORTS_EXHAUSTED",
                       f"every SRT port of this deployment ({low}-{high}) belongs to a live job; delete one, or "
                       "widen --live-srt-ingest", metadata={"limit": str(high - low + 1)})


def create_live_job(tx: WriteTx, req: lsvc.CreateLiveJobRequest, creator: str, settings: LiveSettings) -> LiveJob:
    spec = req.live_job
    template_id = spec.job_template_id or LIVE_DEFAULT_TEMPLATE
    template = get_template(tx.db, tx.project, template_id)  # NOT_FOUND (TEMPLATE_NOT_FOUND)
    if not is_live(template):
        raise ServiceError(
            grpc.StatusCode.FAILED_PRECONDITION, "TEMPLATE_NOT_LIVE",
            f"job template {clip(template_id)} makes files (mp4), not a live ladder; use a template whose outputs "
            f"are all of container hls, such as {LIVE_DEFAULT_TEMPLATE}",
            metadata={"template_id": template_id},
            precondition=("TEMPLATE_NOT_LIVE", f"jobTemplates/{template_id}", "live jobs need hls outputs"),
        )
    p = tx.db.param
    taken = tx.db.execute_sql(
        f"SELECT id FROM live_jobs WHERE project = {p} AND bucket = {p} AND destination = {p}",
        (tx.project, spec.bucket, spec.destination)).fetchone()
    if taken is not None:
        raise ServiceError(
            grpc.StatusCode.ALREADY_EXISTS, "DESTINATION_IN_USE",
            f"live job {taken[0]} already writes to bucket {clip(spec.bucket)}, destination "
            f"{clip(spec.destination)}; choose another destination (or delete that live job)",
            metadata={"live_job_id": str(taken[0])})
    live = LiveJob()
    live.CopyFrom(spec)
    live.id = new_id()
    live.number = _next_number(tx)
    live.name = str(uuid.uuid4())
    live.stream_key = str(uuid.uuid4())
    live.backup_stream_key = str(uuid.uuid4()) if live.input.input_class == LiveInput.STANDARD else ""
    if live.input.server_type == LiveInput.SRT:
        live.srt_port = _free_srt_port(tx, settings)
        live.srt_passphrase = secrets.token_hex(16)
    live.state = State.OFFLINE
    live.job_template_id = template_id
    live.project = tx.project
    live.creator = spec.creator or creator
    if not live.input.input_class:
        live.input.input_class = LiveInput.SINGLE
    live.input.callback_secret = secrets.token_hex(32) if live.input.callback_url else ""
    live.input.ClearField("server_type_options")
    live.input.server_type_options.extend(_options(LiveInput.ServerType, live.input.server_type))
    live.input.ClearField("input_class_options")
    live.input.input_class_options.extend(_options(LiveInput.InputClass, live.input.input_class))
    if not live.HasField("reconnect_window"):
        live.reconnect_window.seconds = DEFAULT_RECONNECT_S
    if not live.HasField("max_duration"):
        live.max_duration.seconds = DEFAULT_MAX_DURATION_S
    _urls(live, settings, [o.name for o in template.outputs])
    set_ts(live.create_time, tx.now)
    set_ts(live.update_time, tx.now)
    tx.db.execute_sql(
        "INSERT INTO live_jobs (id, project, number, name, key_hash, old_key_hash, backup_key_hash, srt_port, state, "
        "bucket, destination, search_text, current_job_id, create_time, update_time, data) "
        f"VALUES ({', '.join([p] * 16)})",
        (live.id, tx.project, live.number, live.name, key_hash(live.stream_key), "", _backup_hash(live),
         live.srt_port, live.state, live.bucket, live.destination, _search_text(live), "", tx.now, tx.now,
         live.SerializeToString()))
    for i, o in enumerate(template.outputs, start=1):
        out = LiveOutput(live_job_id=live.id, output_id=i, name=o.name, status=LiveOutput.WAITING,
                         manifest=live.output_manifests[o.name])
        set_ts(out.update_time, tx.now)
        tx.db.execute_sql(f"INSERT INTO live_outputs (live_job_id, output_id, data) VALUES ({p}, {p}, {p})",
                          (live.id, i, out.SerializeToString()))
    add_timing(tx, live, "CREATED", f"created by {live.creator}" if live.creator else "created")
    return live


# -- sessions -------------------------------------------------------------------------------


def _renditions(template: Any) -> list[dict[str, Any]]:
    return [{"name": o.name, "width": o.width, "height": o.height,
             "video_kbps": round(o.video_bit_rate_bps / 1000) or 800,
             "audio_kbps": round(o.audio_bit_rate_bps / 1000) or 96} for o in template.outputs]


def _us(ts: Any) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000 if (ts.seconds or ts.nanos) else 0


def _start_session(tx: WriteTx, live: LiveJob, start_us: int, finish_us: int) -> Job:
    template = get_template(tx.db, tx.project, live.job_template_id)
    job = store_jobs.pending_job(JOB_TYPE, tx.project, tx.now, Job.HIGH, live.creator, live.job_template_id,
                                 max_attempts=SESSION_MAX_ATTEMPTS)
    job.metadata[LIVE_KEY] = live.id
    params: dict[str, Any] = {
        "live_job_id": live.id, "output_dir": _area(live), "renditions": _renditions(template),
        "segment_seconds": segment_seconds(template),
        "server_type": LiveInput.ServerType.Name(live.input.server_type),
        "input_class": LiveInput.InputClass.Name(live.input.input_class),
        "file_path": live.input.file_path, "session": live.session_count + 1,
        "continue": live.session_count > 0,
        "reconnect_window_s": live.reconnect_window.seconds,
        "max_duration_s": live.max_duration.seconds,
        "finish_time_us": finish_us,
        "srt_port": live.srt_port,
    }
    job.params.update(params)
    job.progress_details.update({"live_state": "STARTING", "live_job_id": live.id})
    job.progress_message = "live: STARTING"
    if start_us > tx.now:
        set_ts(job.available_time, start_us)
    live.session_count += 1
    live.current_job_id = job.id
    live.state = State.STARTING
    live.resource_name = ""
    live.ClearField("error")
    live.ClearField("end_time")
    set_ts(live.start_time, max(start_us, tx.now))
    if finish_us:
        set_ts(live.finish_time, finish_us)
    else:
        live.ClearField("finish_time")
    store_jobs.emit(tx, job, res.JobEvent.CREATED, Job.STATE_UNSPECIFIED)
    store_jobs.insert_job(tx, job)
    _set_outputs(tx, live, LiveOutput.WAITING, 0)
    return job


def set_encoding(tx: WriteTx, req: lsvc.SetLiveEncodingRequest, settings: LiveSettings,
                 max_online: int = 0) -> lsvc.SetLiveEncodingResponse:
    live = load_by_key(tx.db, tx.project, req.stream_key)
    if live is None:
        raise key_not_found()
    if req.online:
        if live.state == State.STOPPING:
            raise wrong_state(live, "start", "LIVE_JOB_STOPPING",
                              "wait until it is STOPPED (WatchJobs or GetLiveJob), then start it again")
        if live.state in IDLE_STATES:
            if max_online:
                p = tx.db.param
                online = int(tx.db.execute_sql(
                    f"SELECT COUNT(*) FROM live_jobs WHERE project = {p} AND state IN "
                    f"({', '.join([p] * len(ONLINE_STATES))})", (tx.project, *ONLINE_STATES)).fetchone()[0])
                if online >= max_online:
                    raise exceeded("live_jobs_online", max_online, "live jobs online in the project (stop one first)")
            start_us, finish_us = _us(req.start_time), _us(req.finish_time)
            if finish_us and finish_us <= max(start_us, tx.now):
                raise invalid_argument([("finish_time", "must be after start_time and in the future")])
            job = _start_session(tx, live, start_us, finish_us)
            when = "" if start_us <= tx.now else " (scheduled)"
            add_timing(tx, live, "START_REQUESTED", f"session {live.session_count}{when}", job_id=job.id)
            _save(tx, live)
    elif live.state in ONLINE_STATES:
        job, _lease = store_jobs.load_job_for_update(tx, live.current_job_id)
        if job.state == Job.PENDING and live.state in (State.STARTING, State.RECOVERING):
            # No worker holds it: nothing to close. Aborting the queued job ends
            # the session (the hook makes the live job STOPPED).
            add_timing(tx, live, "STOP_REQUESTED", "stopped before a worker took the session")
            store_jobs.abort_job(tx, job.id, "stopped (SetLiveEncoding online=false)", False)
            live = load_live(tx.db, tx.project, live.id)
        else:
            _move(tx, live, State.STOPPING, "STOP_REQUESTED", "SetLiveEncoding online=false", job)
    _urls(live, settings, list(live.output_manifests))
    return lsvc.SetLiveEncodingResponse(online=live.state in ONLINE_STATES,
                                        playback_path_url=live.playback_url or live.storage_master_file,
                                        live_job=live)


def _move(tx: WriteTx, live: LiveJob, state: int, child_status: str, message: str, job: Job | None = None,
          output_id: int = 0) -> None:
    """Change the live job's state: a timing, the row, and (with the session
    job given, RUNNING) the job's live_state with an UPDATED event."""
    live.state = state  # type: ignore[assignment]
    add_timing(tx, live, child_status, message, output_id)
    _save(tx, live)
    if job is not None and job.state in (Job.RUNNING, Job.ABORTING, Job.PENDING):
        _mark_job(job, live, child_status)
        store_jobs.emit(tx, job, res.JobEvent.UPDATED, job.state)
        lease = _lease_columns(tx, job.id)
        store_jobs.save_job(tx, job, lease)


def _lease_columns(tx: WriteTx, job_id: str) -> store_jobs.LeaseColumns:
    _job, lease = store_jobs.load_job_for_update(tx, job_id)
    return lease


def _mark_job(job: Job, live: LiveJob, child_status: str = "") -> None:
    """The session job shows the live state and what last happened (what
    WatchJobs carries)."""
    job.progress_details.update({"live_state": state_name(live.state), "live_job_id": live.id,
                                 "child_status": child_status})
    job.progress_message = f"live: {state_name(live.state)}" + (f" ({child_status})" if child_status else "")


def on_job_state(tx: WriteTx, job: Job, etype: int, prev_state: int) -> None:
    """jobs.STATE_HOOKS member: the live job follows its session job (and a
    clip its LIVE_CLIP job)."""
    if job.type == CLIP_JOB_TYPE and etype != res.JobEvent.CREATED:
        _clip_follows(tx, job)
        return
    if job.type != JOB_TYPE or etype == res.JobEvent.CREATED:
        return
    live_id = job.metadata.get(LIVE_KEY)
    if not live_id:
        return
    row = _row_by(tx.db, tx.project, "id", live_id)
    if row is None:
        return
    live = LiveJob.FromString(row[1])
    if live.current_job_id != job.id:
        return
    s = job.state
    if s == Job.RUNNING and prev_state == Job.PENDING:
        live.resource_name = leases.owner_of(job.lease)
        add_timing(tx, live, "WORKER_LEASED", f"session taken by {live.resource_name} (attempt {job.attempt_count})")
        _save(tx, live)
        return
    if s == Job.PENDING and prev_state in (Job.RUNNING, Job.ABORTING):
        if live.state != State.STOPPING:
            live.state = State.RECOVERING
        add_timing(tx, live, "WORKER_LOST", f"the worker {live.resource_name} let the session go; it is queued for "
                                            "another worker, which continues the same playlists")
        live.resource_name = ""
    elif s == Job.ABORTING:
        live.state = State.STOPPING
        add_timing(tx, live, "ABORT_REQUESTED", job.abort_reason)
    elif s in (Job.SUCCEEDED, Job.ABORTED):
        live.state = State.STOPPED
        set_ts(live.end_time, tx.now)
        add_timing(tx, live, "STOPPED" if s == Job.SUCCEEDED else "ABORTED",
                   job.abort_reason if s == Job.ABORTED else _ended_message(job))
        _set_outputs(tx, live, LiveOutput.STOPPED, 100)
    elif s == Job.FAILED:
        live.state = State.FAILED
        set_ts(live.end_time, tx.now)
        live.error.CopyFrom(status_pb2.Status(
            code=job.error.code or code_pb2.UNKNOWN,
            message=payloads.cut(f"session job {job.id} failed: {job.error.message}", 1024)))
        add_timing(tx, live, "FAILED", live.error.message)
        _set_outputs(tx, live, LiveOutput.FAILED)
    else:
        return
    _save(tx, live)
    _mark_job(job, live)


def _ended_message(job: Job) -> str:
    f = job.result.fields
    if "duration_s" in f:
        return f"session ended: {f['duration_s'].number_value:.1f} s of media"
    return "session ended"


# -- the worker's side ----------------------------------------------------------------------


def report_status(tx: WriteTx, req: wsvc.ReportLiveStatusRequest, lease_us: int) -> wsvc.ReportLiveStatusResponse:
    job, expire = leases.heartbeat(tx, req.job_id, req.lease_token, 0, "", None, lease_us)  # fenced; extends
    live_id = job.metadata.get(LIVE_KEY, "")
    row = _row_by(tx.db, tx.project, "id", live_id) if live_id else None
    if row is None:
        raise ServiceError(grpc.StatusCode.NOT_FOUND, "LIVE_JOB_NOT_FOUND",
                           f"job {job.id} is not the session of a live job (it was deleted?); complete the job")
    live = LiveJob.FromString(row[1])
    if live.current_job_id != job.id:
        raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, "NOT_CURRENT_SESSION",
                           f"job {job.id} is no longer the session of live job {live.id}; complete it",
                           metadata={"live_job_id": live.id})
    target = req.live_state
    if target and target != live.state:
        allowed = WORKER_MOVES.get(target, frozenset())
        if live.state not in allowed:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION, "ILLEGAL_LIVE_TRANSITION",
                f"live job {live.id} cannot go from {state_name(live.state)} to {state_name(target)}"
                + ("; close the playlists and complete the job" if live.state == State.STOPPING else ""),
                metadata={"live_job_id": live.id, "state": state_name(live.state), "to": state_name(target)})
        _move(tx, live, target, req.child_status or _default_child(live.state, target), req.message, job)
        if target == State.LIVE:
            _set_outputs(tx, live, LiveOutput.ENCODING)
    elif req.child_status:
        add_timing(tx, live, req.child_status, req.message)
        _mark_job(job, live, req.child_status)  # WatchJobs carries what happened too
        store_jobs.emit(tx, job, res.JobEvent.UPDATED, job.state)
        store_jobs.save_job(tx, job, _lease_columns(tx, job.id))
    if req.HasField("statistics"):
        live.statistics.CopyFrom(req.statistics)
        set_ts(live.statistics.update_time, tx.now)
        _save(tx, live)
    if req.outputs:
        _report_outputs(tx, live, job, req.outputs)
    resp = wsvc.ReportLiveStatusResponse(
        stop_requested=live.state == State.STOPPING, cancel_requested=job.state == Job.ABORTING,
        live_state=live.state, key_generation=live.key_resets, srt_passphrase=live.srt_passphrase)
    set_ts(resp.lease_expire_time, expire)
    if live.HasField("finish_time"):
        resp.finish_time.CopyFrom(live.finish_time)
    resp.reconnect_window.CopyFrom(live.reconnect_window)
    resp.max_duration.CopyFrom(live.max_duration)
    return resp


def _default_child(prev: int, target: int) -> str:
    if target == State.AWAITING_INPUT:
        return "WORKER_READY" if prev != State.RECONNECTING else "AWAITING_INPUT"
    if target == State.LIVE:
        return "RECONNECTED" if prev == State.RECONNECTING else "CONNECTED"
    if target == State.RECONNECTING:
        return "DISCONNECTED"
    return "STOPPING"


def _report_outputs(tx: WriteTx, live: LiveJob, job: Job, reported: Any) -> None:
    by_id = {o.output_id: o for o in _outputs(tx.db, live.id)}
    lock = job.lease.lock_key
    lock_key = f"{lock.scheduler_id}/{lock.worker_id}/{lock.batch_index}"
    start, finish = _us(live.start_time), _us(live.finish_time)
    for r in reported:
        o = by_id.get(r.output_id)
        if o is None:
            raise invalid_argument([("outputs", f"live job {live.id} has no output {r.output_id} "
                                                f"(it has 1 to {len(by_id)})")])
        if r.status:
            o.status = r.status
        o.counter = max(o.counter, r.counter)
        o.encoder_id = r.encoder_id or live.resource_name
        o.lock_key = lock_key
        if r.HasField("last_segment_time"):
            o.last_segment_time.CopyFrom(r.last_segment_time)
        if finish > start:
            o.progress = max(0, min(100, (tx.now - start) * 100 // (finish - start)))
        _save_output(tx, o)


def authorize_publish(tx: WriteTx, req: wsvc.AuthorizePublishRequest) -> wsvc.AuthorizePublishResponse:
    """See WorkerService.AuthorizePublish."""
    held: dict[str, Job] = {}
    for ref in req.leases:
        try:
            job, _lease = leases._leased(tx, ref.job_id, ref.lease_token)
        except ServiceError:
            continue  # not (or no longer) this worker's: it cannot authorize anything
        live_id = job.metadata.get(LIVE_KEY)
        if job.type == JOB_TYPE and live_id:
            held[live_id] = job
    who = f"a publisher ({req.protocol or 'rtmp'}, {req.peer or 'unknown address'})"
    live, backup = find_key(tx.db, tx.project, req.stream_key)
    if live is not None and live.id in held:
        # STARTING / RECOVERING: the worker holds the session and is setting it
        # up (its AWAITING_INPUT report is on its way): a publisher that comes
        # a moment early is let in, not refused. STANDARD takes a second
        # publisher (the other ingest) while LIVE; the front door allows one
        # connection per key.
        open_states = {State.AWAITING_INPUT, State.RECONNECTING, State.STARTING, State.RECOVERING}
        if live.input.input_class == LiveInput.STANDARD:
            open_states.add(State.LIVE)
        if live.state in open_states:
            return wsvc.AuthorizePublishResponse(allowed=True, job_id=held[live.id].id, live_job_id=live.id,
                                                 backup=backup)
        reason, message = "NOT_AWAITING_INPUT", f"{who} was refused: the live job is {state_name(live.state)}" + (
            " and already has a publisher" if live.state == State.LIVE else "")
        _reject(tx, [live], message)
        return wsvc.AuthorizePublishResponse(reason=reason, message=message)
    if live is not None:
        message = f"{who} was refused: the live job is not started on this worker ({state_name(live.state)}); " \
                  "start it with SetLiveEncoding online=true"
        _reject(tx, [live], message)
        return wsvc.AuthorizePublishResponse(reason="NOT_STARTED", message=message)
    p = tx.db.param
    old = tx.db.execute_sql(f"SELECT data FROM live_jobs WHERE project = {p} AND old_key_hash = {p}",
                            (tx.project, key_hash(req.stream_key))).fetchone()
    if old is not None:
        was = LiveJob.FromString(bytes(old[0]))
        message = f"{who} used a stream key that was reset; publish with the live job's current key"
        _reject(tx, [was], message)
        return wsvc.AuthorizePublishResponse(reason="STREAM_KEY_RESET", message=message)
    message = f"{who} used a stream key no live job has"
    _reject(tx, [_reload(tx, i) for i in held], message)
    return wsvc.AuthorizePublishResponse(reason="UNKNOWN_STREAM_KEY", message=message)


def _reload(tx: WriteTx, live_id: str) -> LiveJob:
    return load_live(tx.db, tx.project, live_id)


def _reject(tx: WriteTx, lives: list[LiveJob], message: str) -> None:
    p = tx.db.param
    for live in lives:
        recent = tx.db.execute_sql(
            f"SELECT data FROM live_timings WHERE live_job_id = {p} AND create_time > {p} ORDER BY id DESC LIMIT 1",
            (live.id, tx.now - REJECT_TIMING_INTERVAL_US)).fetchone()
        if recent is not None and LiveTiming.FromString(bytes(recent[0])).child_status == "PUBLISH_REJECTED":
            continue  # one a second is enough
        add_timing(tx, live, "PUBLISH_REJECTED", message)


# -- key reset, delete ----------------------------------------------------------------------


def reset_stream_key(tx: WriteTx, req: lsvc.ResetStreamKeyRequest, settings: LiveSettings) -> LiveJob:
    live = load_live(tx.db, tx.project, req.live_job_id)
    if live.state == State.LIVE and not req.force:
        raise wrong_state(live, "reset the stream key of", "LIVE_JOB_LIVE",
                          "a publisher is connected: pass force to drop it, or stop the live job first")
    old = key_hash(live.stream_key)
    live.stream_key = str(uuid.uuid4())
    if live.backup_stream_key:
        live.backup_stream_key = str(uuid.uuid4())
    if live.srt_passphrase:
        live.srt_passphrase = secrets.token_hex(16)
    _urls(live, settings, list(live.output_manifests))
    live.key_resets += 1
    add_timing(tx, live, "KEY_RESET", "the stream key was reset" + (" (publisher dropped)" if
                                                                    live.state == State.LIVE else ""))
    _save(tx, live)
    p = tx.db.param
    tx.db.execute_sql(f"UPDATE live_jobs SET old_key_hash = {p} WHERE id = {p}", (old, live.id))
    return live


def delete_live_job(tx: WriteTx, req: lsvc.DeleteLiveJobRequest) -> None:
    try:
        live = load_live(tx.db, tx.project, req.id)
    except ServiceError:
        if req.allow_missing:
            return
        raise
    if live.state in ONLINE_STATES or live.state == State.STOPPING:
        if not req.force:
            raise wrong_state(live, "delete", "LIVE_JOB_ONLINE",
                              "stop it first (SetLiveEncoding online=false), or pass force to abort its session")
        try:
            store_jobs.abort_job(tx, live.current_job_id, f"live job {live.id} deleted", True)
        except ServiceError:
            pass  # finished meanwhile
    p = tx.db.param
    for table in ("live_timings", "live_outputs", "live_callbacks", "live_clips"):
        tx.db.execute_sql(f"DELETE FROM {table} WHERE live_job_id = {p}", (live.id,))
    tx.db.execute_sql(f"DELETE FROM live_jobs WHERE id = {p}", (live.id,))


# -- clips ----------------------------------------------------------------------------------


def clip_not_found(clip_id: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, "LIVE_CLIP_NOT_FOUND",
                        f"live clip {clip(clip_id)} does not exist; list a live job's clips with ListLiveClips",
                        metadata={"live_clip_id": clip_id[:64]}, resource=("mediajobs.v1.LiveClip", clip_id[:64]))


def _save_clip(tx: WriteTx, c: LiveClip) -> None:
    set_ts(c.update_time, tx.now)
    tx.db.execute_sql(f"UPDATE live_clips SET data = {tx.db.param} WHERE id = {tx.db.param}",
                      (c.SerializeToString(), c.id))


def create_clip(tx: WriteTx, req: lsvc.CreateLiveClipRequest) -> LiveClip:
    live = load_live(tx.db, tx.project, req.live_job_id)
    spec = req.clip
    names = [o.name for o in _outputs(tx.db, live.id)]  # the template's order
    rendition = spec.rendition or (names[0] if names else "")
    if rendition not in live.output_manifests:
        raise invalid_argument([("clip.rendition", f"{clip(rendition)} is not a rendition of live job {live.id} "
                                                   f"(it has {', '.join(names)})")])
    c = LiveClip()
    c.CopyFrom(spec)
    c.id = new_id()
    c.live_job_id = live.id
    c.rendition = rendition
    c.state = LiveClip.PENDING
    if not c.entry_name and c.create_entry:
        c.entry_name = payloads.cut(f"{live.description or live.name} {spec.start_time.ToJsonString()}", 256)
    set_ts(c.create_time, tx.now)
    set_ts(c.update_time, tx.now)
    job = store_jobs.pending_job(CLIP_JOB_TYPE, tx.project, tx.now, Job.MEDIUM, live.creator)
    job.metadata[CLIP_KEY] = c.id
    job.metadata[LIVE_KEY] = live.id
    job.params.update({
        "live_clip_id": c.id, "live_job_id": live.id, "playlist": live.output_manifests[rendition],
        "start_us": _us(spec.start_time), "end_us": _us(spec.end_time),
        "output_dir": f"{_area(live)}/clips/{c.id}",
    })
    c.job_id = job.id
    store_jobs.emit(tx, job, res.JobEvent.CREATED, Job.STATE_UNSPECIFIED)
    store_jobs.insert_job(tx, job)
    p = tx.db.param
    tx.db.execute_sql(f"INSERT INTO live_clips (id, project, live_job_id, job_id, data) VALUES ({p}, {p}, {p}, {p}, {p})",
                      (c.id, tx.project, live.id, job.id, c.SerializeToString()))
    add_timing(tx, live, "CLIP_REQUESTED", f"clip {c.id} of {rendition}")
    return c


def load_clip(db: peewee.Database, project: str, clip_id: str) -> LiveClip:
    p = db.param
    row = db.execute_sql(f"SELECT data FROM live_clips WHERE project = {p} AND id = {p}",
                         (project, clip_id.upper())).fetchone()
    if row is None:
        raise clip_not_found(clip_id)
    return LiveClip.FromString(bytes(row[0]))


def list_clips(db: peewee.Database, project: str, req: lsvc.ListLiveClipsRequest) -> lsvc.ListLiveClipsResponse:
    live = load_live(db, project, req.live_job_id)
    size = check_paging(req.page_size, req.page_token, 0, default=50)
    fp = store_jobs.list_fingerprint(req)
    p = db.param
    where, args = f"project = {p} AND live_job_id = {p}", [project, live.id]
    if req.page_token:
        (last,) = store_jobs.decode_token(req.page_token, fp)
        where += f" AND id < {p}"
        args.append(str(last))
    rows = db.execute_sql(f"SELECT id, data FROM live_clips WHERE {where} ORDER BY id DESC LIMIT {size + 1}",
                          args).fetchall()
    resp = lsvc.ListLiveClipsResponse(clips=[LiveClip.FromString(bytes(d)) for _i, d in rows[:size]])
    if len(rows) > size:
        resp.next_page_token = store_jobs.encode_token([rows[size - 1][0]], fp)
    return resp


def _clip_follows(tx: WriteTx, job: Job) -> None:
    p = tx.db.param
    row = tx.db.execute_sql(f"SELECT data FROM live_clips WHERE job_id = {p}", (job.id,)).fetchone()
    if row is None:
        return
    c = LiveClip.FromString(bytes(row[0]))
    if job.state in (Job.RUNNING, Job.ABORTING):
        c.state = LiveClip.RUNNING
    elif job.state == Job.PENDING:
        c.state = LiveClip.PENDING
    elif job.state == Job.SUCCEEDED:
        f = job.result.fields
        c.state = LiveClip.SUCCEEDED
        c.playlist = f["playlist"].string_value if "playlist" in f else ""
        c.mp4 = f["mp4"].string_value if "mp4" in f else ""
        c.duration_s = f["duration_s"].number_value if "duration_s" in f else 0.0
        c.segments = int(f["segments"].number_value) if "segments" in f else 0
        if c.create_entry and c.mp4:
            from mediajobs.v1 import media_resources_pb2 as mres
            from mediajobs.v1 import media_service_pb2 as msvc

            from . import entries as store_entries

            entry = store_entries.create_entry(tx, msvc.CreateEntryRequest(
                entry=mres.Entry(name=c.entry_name or c.id, labels={"live_job_id": c.live_job_id,
                                                                   "live_clip_id": c.id}),
                creator=job.creator), c.mp4)
            c.entry_id = entry.id
    else:
        c.state = LiveClip.FAILED
        c.error.CopyFrom(job.error if job.state == Job.FAILED else status_pb2.Status(
            code=code_pb2.ABORTED, message=f"aborted: {job.abort_reason}"))
    _save_clip(tx, c)
    if c.state in (LiveClip.SUCCEEDED, LiveClip.FAILED):
        live_row = _row_by(tx.db, tx.project, "id", c.live_job_id)
        if live_row is not None:
            live = LiveJob.FromString(live_row[1])
            add_timing(tx, live, "CLIP_CREATED" if c.state == LiveClip.SUCCEEDED else "CLIP_FAILED",
                       f"clip {c.id}: {c.duration_s:.1f} s" if c.state == LiveClip.SUCCEEDED else c.error.message,
                       job_id=job.id)


# -- reads ----------------------------------------------------------------------------------


def hide_key(live: LiveJob) -> LiveJob:
    live.stream_key = ""
    live.ingest_url = ""
    live.backup_stream_key = ""
    live.backup_ingest_url = ""
    live.srt_passphrase = ""
    live.input.callback_secret = ""
    return live


def _page_info(total: int, size: int, page_index: int) -> lres.PageInfo:
    pages = (total + size - 1) // size if size else 0
    return lres.PageInfo(total_count=total, page_index=page_index, page_size=size, total_pages=pages,
                         has_next_page=page_index < pages if page_index else False,
                         has_previous_page=page_index > 1)


def check_paging(page_size: int, page_token: str, page_index: int, default: int = 20) -> int:
    v: list[tuple[str, str]] = []
    if page_size < 0 or page_size > MAX_PAGE:
        v.append(("page_size", f"must be 0 (default {default}) to {MAX_PAGE}"))
    if page_index < 0:
        v.append(("page_index", "must be 1 or more (0: page by page_token)"))
    if page_index and page_token:
        v.append(("page_index", "give page_index or page_token, not both"))
    size = page_size or default
    if page_index and (page_index - 1) * size >= MAX_OFFSET:
        v.append(("page_index", f"pages must start within the first {MAX_OFFSET} items; narrow the search "
                                "or page with page_token"))
    if v:
        raise invalid_argument(v)
    return size


def _like(text: str) -> str:
    return "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def list_live_jobs(db: peewee.Database, project: str, req: lsvc.ListLiveJobsRequest,
                   settings: LiveSettings) -> lsvc.ListLiveJobsResponse:
    size = check_paging(req.page_size, req.page_token, req.page_index)
    fp = store_jobs.list_fingerprint(req)
    p = db.param
    where = [f"project = {p}"]
    args: list[Any] = [project]
    if req.states:
        where.append(f"state IN ({', '.join([p] * len(req.states))})")
        args += list(req.states)
    if req.search:
        where.append(f"search_text LIKE {p} ESCAPE '\\'")
        args.append(_like(req.search))
    total = int(db.execute_sql(f"SELECT COUNT(*) FROM live_jobs WHERE {' AND '.join(where)}", args).fetchone()[0])
    offset = 0
    if req.page_token:
        (last,) = store_jobs.decode_token(req.page_token, fp)
        where.append(f"id < {p}")
        args.append(str(last))
    elif req.page_index:
        offset = (req.page_index - 1) * size
    rows = db.execute_sql(f"SELECT id, data FROM live_jobs WHERE {' AND '.join(where)} ORDER BY id DESC "
                          f"LIMIT {size + 1} OFFSET {offset}", args).fetchall()
    out = lsvc.ListLiveJobsResponse(total_size=total, page_info=_page_info(total, size, req.page_index))
    budget = payloads.MessageBudget()
    for _id, data in rows[:size]:
        live = LiveJob.FromString(bytes(data))
        if not req.include_stream_key:
            hide_key(live)
        if not budget.admit(live.ByteSize()):
            break
        out.live_jobs.append(live)
    if len(out.live_jobs) < len(rows) and out.live_jobs:
        out.next_page_token = store_jobs.encode_token([out.live_jobs[-1].id], fp)
    return out


def list_outputs(db: peewee.Database, project: str, req: lsvc.ListLiveOutputsRequest) -> lsvc.ListLiveOutputsResponse:
    live = load_live(db, project, req.live_job_id)
    size = check_paging(req.page_size, req.page_token, req.page_index, default=MAX_PAGE)
    fp = store_jobs.list_fingerprint(req)
    outs = _outputs(db, live.id)
    total = len(outs)
    start = 0
    if req.page_token:
        (start,) = store_jobs.decode_token(req.page_token, fp)
    elif req.page_index:
        start = (req.page_index - 1) * size
    page = outs[int(start):int(start) + size]
    resp = lsvc.ListLiveOutputsResponse(outputs=page, page_info=_page_info(total, size, req.page_index))
    if int(start) + size < total:
        resp.next_page_token = store_jobs.encode_token([int(start) + size], fp)
    return resp


def list_timings(db: peewee.Database, project: str, req: lsvc.ListLiveTimingsRequest) -> lsvc.ListLiveTimingsResponse:
    live = load_live(db, project, req.live_job_id)
    size = check_paging(req.page_size, req.page_token, req.page_index, default=50)
    fp = store_jobs.list_fingerprint(req)
    p = db.param
    where = [f"live_job_id = {p}"]
    args: list[Any] = [live.id]
    if req.output_id:
        where.append(f"output_id IN (0, {p})")
        args.append(req.output_id)
    total = int(db.execute_sql(f"SELECT COUNT(*) FROM live_timings WHERE {' AND '.join(where)}", args).fetchone()[0])
    offset = 0
    if req.page_token:
        (last,) = store_jobs.decode_token(req.page_token, fp)
        where.append(f"id > {p}")
        args.append(int(last))
    elif req.page_index:
        offset = (req.page_index - 1) * size
    rows = db.execute_sql(f"SELECT id, data FROM live_timings WHERE {' AND '.join(where)} ORDER BY id "
                          f"LIMIT {size + 1} OFFSET {offset}", args).fetchall()
    resp = lsvc.ListLiveTimingsResponse(page_info=_page_info(total, size, req.page_index))
    for seq, data in rows[:size]:
        t = LiveTiming.FromString(bytes(data))
        t.sequence = int(seq)
        resp.timings.append(t)
    if len(rows) > size:
        resp.next_page_token = store_jobs.encode_token([int(rows[size - 1][0])], fp)
    return resp


store_jobs.STATE_HOOKS.append(on_job_state)
