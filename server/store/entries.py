"""Media entries, their flavor assets and media info (mutations run in the
group-commit writer; reads take the database).

An entry's processing is ordinary jobs carrying metadata `entry_id` and
`entry_step` (`extract`, or `flavor:<flavor asset id>`). `on_job_state` is a
job state hook (jobs.STATE_HOOKS): every state change of such a job updates
its entry in the same transaction, so an entry can never disagree with its
jobs. The state of an entry follows from the latest job of every step:

- any latest job FAILED or ABORTED          -> ERROR (with that job's error)
- every step's latest job SUCCEEDED         -> READY
- a job running, or some step already done  -> PROCESSING
- otherwise                                 -> PENDING

Re-running a failed job (JobService.RerunJob copies the metadata) therefore
recovers its entry.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

import grpc
import peewee
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from ..ids import IdSource, new_id

from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import media_service_pb2 as msvc
from mediajobs.v1 import resources_pb2 as res

from .. import payloads
from ..convert import set_ts
from ..errors import ServiceError, clip, invalid_argument
from ..storage import resolve_inside
from . import jobs as store_jobs
from .models import models_for
from .templates import DEFAULT_TEMPLATE, get_file_template, outputs_as_params
from .writer import WriteTx

Entry = mres.Entry
FlavorAsset = mres.FlavorAsset
MediaInfo = mres.MediaInfo
Job = res.Job

ENTRY_KEY = "entry_id"
STEP_KEY = "entry_step"
EXTRACT_STEP = "extract"
FLAVOR_STEP = "flavor:"
_IN_HOOK = "entries.hook"
# Entry.job_ids keeps the latest job of every step and the newest others, up
# to this many (re-runs would otherwise grow an entry without end).
MAX_ENTRY_JOB_IDS = 256
# Rows read per query while filling a page (list pages stop at the message
# budget, so they are read a batch at a time).
PAGE_BATCH = 64


def entry_not_found(entry_id: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.NOT_FOUND, "ENTRY_NOT_FOUND",
        f"entry {clip(entry_id)} does not exist (it may have been deleted); list entries with ListEntries",
        metadata={"entry_id": entry_id}, resource=("mediajobs.v1.Entry", entry_id),
    )


# -- the source file ---------------------------------------------------------------


def _root_text(storage_root: Path) -> str:
    """The storage root as an error names it: absolute, as configured."""
    return os.path.abspath(storage_root)


def source_relative_path(storage_root: Path, uri: str, field: str = "entry.source_uri") -> str:
    """The source as a path relative to the storage root; refuses anything
    outside it, and files that do not exist. Touches nothing outside the root.

    `uri` is a path relative to the storage root (`incoming/clip.mov`) or a
    file:// URL of an absolute local path inside it. Errors name the storage
    root they looked in, and echo at most a short prefix of `uri`."""
    root_text = _root_text(storage_root)
    if uri.startswith("file:"):
        parsed = urlsplit(uri)
        if parsed.netloc not in ("", "localhost"):
            raise invalid_argument([(field, f"{clip(uri)} names another host; give a file:// URL of a local path")])
        if parsed.query or parsed.fragment:
            raise invalid_argument([(field, f"{clip(uri)} has a query or fragment; percent-encode '?' and '#' in "
                                            "file names")])
        path = unquote(parsed.path)
        if not os.path.isabs(path):
            raise invalid_argument([(field, f"{clip(uri)} is not an absolute file:// URL")])
        norm = os.path.normpath(path)
        for root in dict.fromkeys((os.path.abspath(storage_root), os.path.realpath(storage_root))):
            if norm == root or norm.startswith(root.rstrip("/") + "/"):
                rel = os.path.relpath(norm, root)
                break
        else:
            raise invalid_argument(
                [(field, f"{clip(path)} is outside the server's storage root {root_text}; put the file under "
                         "the storage root (the server's --storage-root) and register it from there, or give "
                         "its path relative to the storage root")],
                reason="PATH_OUTSIDE_STORAGE_ROOT",
            )
    elif "://" in uri:
        raise invalid_argument([(field, f"{clip(uri)}: only paths relative to the storage root and file:// URLs "
                                        "are supported")])
    else:
        rel = uri
    found, st = resolve_inside(storage_root, rel, field)
    if found is None or st is None:
        raise ServiceError(
            grpc.StatusCode.NOT_FOUND, "SOURCE_NOT_FOUND",
            f"source {clip(rel)} does not exist under the storage root {root_text}",
            metadata={"source": rel, "storage_root": root_text},
        )
    if not found.is_file():
        raise invalid_argument([(field, f"{clip(rel)} is not a regular file (under the storage root {root_text})")])
    return str(Path(found).relative_to(os.path.realpath(storage_root)))


# -- rows --------------------------------------------------------------------------


def load_entry(db: peewee.Database, project: str, entry_id: str) -> Entry:
    p = db.param
    row = db.execute_sql(f"SELECT data FROM entries WHERE id = {p} AND project = {p}", (entry_id, project)).fetchone()
    if row is None:
        raise entry_not_found(entry_id)
    return Entry.FromString(bytes(row[0]))


# Called after an entry's state may have changed through its jobs, in the
# same transaction: hook(tx, entry). store/bulk_uploads.py keeps the result
# of the CSV record that made the entry in step this way.
ENTRY_HOOKS: list[Callable[[WriteTx, Entry], None]] = []


def _save_entry(tx: WriteTx, entry: Entry) -> None:
    set_ts(entry.update_time, tx.now)
    m = models_for(tx.db)
    m.EntryRow.update(state=entry.state, update_time=tx.now, data=entry.SerializeToString()).where(
        m.EntryRow.id == entry.id
    ).execute()


def _job_request(entry: Entry, job_type: str, step: str, params: dict[str, Any], priority: int, creator: str) -> svc.CreateJobRequest:
    req = svc.CreateJobRequest(type=job_type, priority=priority, creator=creator,  # type: ignore[arg-type]
                               metadata={ENTRY_KEY: entry.id, STEP_KEY: step})
    fields = req.params.fields
    for k, v in params.items():
        if isinstance(v, str):
            fields[k].string_value = v  # (Struct.update is several times slower for plain strings)
        else:
            req.params.update({k: v})
    return req


def create_entry(tx: WriteTx, req: msvc.CreateEntryRequest, source_rel: str) -> Entry:
    """One entry and, with a source, its EXTRACT_MEDIA job (`req` is left as it is)."""
    own = msvc.CreateEntryRequest()
    own.CopyFrom(req)
    pe = prepare_entry(tx.db, tx.project, tx.now, own, source_rel, {})
    insert_prepared(tx, [pe])
    return pe.entry


@dataclass
class PreparedEntry:
    """An entry (and its EXTRACT_MEDIA job) made ready outside the writer:
    ids, flavor assets and the entry's bytes; insert_prepared writes it."""

    entry: Entry
    data: bytes
    job: Job | None
    time_us: int  # the entry's create_time and update_time


def prepare_entry(db: peewee.Database, project: str, now_us: int, req: msvc.CreateEntryRequest, source_rel: str,
                  templates: dict[str, Any], new_id: IdSource = new_id) -> PreparedEntry:
    """What create_entry makes, made ready without writing (bulk uploads
    prepare their records in a read thread); raises NOT_FOUND
    (TEMPLATE_NOT_FOUND). `templates` caches lookups across calls, and
    `new_id` gives the ids (bulk uploads take them a block at a time). The
    entry is made from `req.entry` in place: the request is used up."""
    entry = req.entry
    template_id = entry.template_id or (DEFAULT_TEMPLATE if source_rel else "")
    template = None
    if template_id:
        if template_id not in templates:
            try:
                templates[template_id] = get_file_template(db, project, template_id)
            except ServiceError as e:
                templates[template_id] = e
        template = templates[template_id]
        if isinstance(template, ServiceError):
            raise template
    if not entry.id:
        entry.id = new_id()
    if len(set(entry.tags)) != len(entry.tags):
        entry.tags[:] = list(dict.fromkeys(entry.tags))
    entry.source_uri = source_rel
    entry.template_id = template_id
    entry.state = Entry.PENDING
    entry.creator = req.creator or "anonymous"
    set_ts(entry.create_time, now_us)
    entry.update_time.CopyFrom(entry.create_time)
    job = None
    if source_rel and template is not None:
        for o in template.outputs:
            entry.flavor_assets.append(
                FlavorAsset(id=new_id(), output_name=o.name, state=FlavorAsset.QUEUED, output=o))
        # What _job_request + build_job make, set in place (a third of the
        # cost: no request message copied into the job).
        job = store_jobs.pending_job("EXTRACT_MEDIA", project, now_us, req.priority, entry.creator, template_id,
                                     new_id())
        job.metadata[ENTRY_KEY] = entry.id
        job.metadata[STEP_KEY] = EXTRACT_STEP
        params = job.params.fields
        params["source"].string_value = source_rel
        params["entry_id"].string_value = entry.id
        entry.job_ids.append(job.id)
    return PreparedEntry(entry, entry.SerializeToString(), job, now_us)


def insert_prepared(tx: WriteTx, prepared: list[PreparedEntry]) -> None:
    """Write prepared entries and their jobs (with events and hooks); one
    executemany per table."""
    tx.flags.add(_IN_HOOK)  # the jobs are recorded in their entries already, not by the hook
    try:
        store_jobs.insert_created(tx, [pe.job for pe in prepared if pe.job is not None])
    finally:
        tx.flags.discard(_IN_HOOK)
    p = tx.db.param
    cursor = tx.db.cursor()
    if prepared:
        cursor.executemany(
            "INSERT INTO entries (id, project, state, reference_id, template_id, create_time, update_time, data) "
            f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})",
            [(pe.entry.id, tx.project, pe.entry.state, pe.entry.reference_id, pe.entry.template_id,
              pe.time_us, pe.time_us, pe.data) for pe in prepared])
    tags = [(pe.entry.id, tx.project, t) for pe in prepared for t in pe.entry.tags]
    if tags:
        cursor.executemany(f"INSERT INTO entry_tags (entry_id, project, tag) VALUES ({p}, {p}, {p})", tags)


def find_by_reference(db: peewee.Database, project: str, reference_id: str) -> str:
    """The newest entry with this reference_id ("" when none)."""
    p = db.param
    row = db.execute_sql(f"SELECT id FROM entries WHERE project = {p} AND reference_id = {p} ORDER BY id DESC LIMIT 1",
                         (project, reference_id)).fetchone()
    return str(row[0]) if row is not None else ""


def update_entry(
    tx: WriteTx, entry_id: str, *, name: str = "", description: str = "", tags: list[str] | None = None,
    reference_id: str = "", labels: dict[str, str] | None = None, owner: str = "",
) -> Entry:
    """Change the given (non-empty) fields of an entry; labels are merged.
    Its processing is not touched (see replace_source)."""
    entry = load_entry(tx.db, tx.project, entry_id)
    if name:
        entry.name = name
    if description:
        entry.description = description
    if reference_id:
        entry.reference_id = reference_id
    if owner:
        entry.creator = owner
    if labels:
        entry.labels.update(labels)
        violations = payloads.metadata_violations(entry.labels, "labels")
        if violations:
            raise invalid_argument(violations, reason="LABELS_INVALID")
    m = models_for(tx.db)
    if tags:
        entry.tags[:] = list(dict.fromkeys(tags))
        m.EntryTagRow.delete().where(m.EntryTagRow.entry_id == entry.id).execute()
        for tag in entry.tags:
            m.EntryTagRow.insert(entry_id=entry.id, project=tx.project, tag=tag).execute()
    set_ts(entry.update_time, tx.now)
    m.EntryRow.update(reference_id=entry.reference_id, update_time=tx.now, data=entry.SerializeToString()).where(
        m.EntryRow.id == entry.id).execute()
    return entry


def replace_source(tx: WriteTx, entry_id: str, source_rel: str, template_id: str, priority: int) -> Entry:
    """Point the entry at a new source and process it again from the start:
    its unfinished jobs are aborted, its flavor assets are made anew from
    the template, and a new EXTRACT_MEDIA job is queued."""
    entry = load_entry(tx.db, tx.project, entry_id)
    if not source_rel:
        raise invalid_argument([("source_uri", "replacing an entry's media needs a source")], reason="MISSING_VALUE")
    template_id = template_id or entry.template_id or DEFAULT_TEMPLATE
    template = get_file_template(tx.db, tx.project, template_id)
    tx.flags.add(_IN_HOOK)
    try:
        for job_id in entry.job_ids:
            try:
                job = store_jobs.get_job(tx.db, tx.project, job_id)
            except ServiceError:
                continue
            if job.state not in store_jobs.TERMINAL and job.state != Job.ABORTING:
                store_jobs.abort_job(tx, job_id, f"entry {entry_id} got a new source", False)
        entry.source_uri = source_rel
        entry.template_id = template_id
        entry.state = Entry.PENDING
        entry.ClearField("error")
        entry.duration_ms = 0
        entry.source_media_info_id = ""
        del entry.flavor_assets[:]
        for out in template.outputs:
            entry.flavor_assets.append(
                FlavorAsset(id=new_id(), output_name=out.name, state=FlavorAsset.QUEUED, output=out))
        job = store_jobs.new_job(tx, _job_request(
            entry, "EXTRACT_MEDIA", EXTRACT_STEP, {"source": source_rel, "entry_id": entry.id},
            priority, entry.creator,
        ), template_id=template_id)
        entry.job_ids.append(job.id)
    finally:
        tx.flags.discard(_IN_HOOK)
    set_ts(entry.update_time, tx.now)
    m = models_for(tx.db)
    m.EntryRow.update(state=entry.state, template_id=entry.template_id, update_time=tx.now,
                      data=entry.SerializeToString()).where(m.EntryRow.id == entry.id).execute()
    return entry


def delete_entry(tx: WriteTx, entry_id: str, allow_missing: bool) -> None:
    try:
        entry = load_entry(tx.db, tx.project, entry_id)
    except ServiceError:
        if allow_missing:
            return
        raise
    m = models_for(tx.db)
    tx.flags.add(_IN_HOOK)
    try:
        for job_id in entry.job_ids:
            try:
                job, _ = store_jobs.load_job_for_update(tx, job_id)
            except ServiceError:
                continue  # deleted meanwhile
            if job.state not in store_jobs.TERMINAL:
                store_jobs.abort_job(tx, job_id, f"entry {entry_id} was deleted", False)
    finally:
        tx.flags.discard(_IN_HOOK)
    cue_ids = m.CuePointRow.select(m.CuePointRow.id).where(
        (m.CuePointRow.project == tx.project) & (m.CuePointRow.entry_id == entry_id)
    )
    m.CuePointTagRow.delete().where(m.CuePointTagRow.cue_point_id.in_(cue_ids)).execute()
    m.CuePointRow.delete().where((m.CuePointRow.project == tx.project) & (m.CuePointRow.entry_id == entry_id)).execute()
    m.MediaInfoRow.delete().where((m.MediaInfoRow.project == tx.project) & (m.MediaInfoRow.entry_id == entry_id)).execute()
    m.EntryTagRow.delete().where(m.EntryTagRow.entry_id == entry_id).execute()
    m.EntryRow.delete().where(m.EntryRow.id == entry_id).execute()


# -- keeping entries in step with their jobs -------------------------------------------


def on_job_state(tx: WriteTx, job: Job, etype: int, prev_state: int) -> None:
    """jobs.STATE_HOOKS member: update the job's entry, if it has one."""
    if _IN_HOOK in tx.flags or etype == res.JobEvent.DELETED:
        return
    entry_id = job.metadata.get(ENTRY_KEY)
    if not entry_id:
        return
    try:
        entry = load_entry(tx.db, tx.project, entry_id)
    except ServiceError:
        return  # a job that names an entry that is gone (or never was)
    tx.flags.add(_IN_HOOK)
    try:
        step = job.metadata.get(STEP_KEY, "")
        if job.state == Job.SUCCEEDED:
            if step == EXTRACT_STEP:
                _extracted(tx, entry, job)
            elif step.startswith(FLAVOR_STEP):
                _rendered(entry, job, step[len(FLAVOR_STEP):])
        elif job.state in (Job.FAILED, Job.ABORTED) and step.startswith(FLAVOR_STEP):
            for fa in entry.flavor_assets:
                if fa.id == step[len(FLAVOR_STEP):]:
                    fa.state = FlavorAsset.ERROR
        elif job.state == Job.RUNNING and step.startswith(FLAVOR_STEP):
            for fa in entry.flavor_assets:
                if fa.id == step[len(FLAVOR_STEP):] and fa.state == FlavorAsset.ERROR:
                    fa.state = FlavorAsset.QUEUED  # re-run
        before = entry.state
        _settle(tx, entry, job)
        _save_entry(tx, entry)
        if entry.state != before:
            for hook in ENTRY_HOOKS:
                hook(tx, entry)
    finally:
        tx.flags.discard(_IN_HOOK)


def _extracted(tx: WriteTx, entry: Entry, job: Job) -> None:
    """EXTRACT_MEDIA succeeded: note what it found and queue one TRANSCODE per
    flavor asset that has no job yet (skipping outputs larger than the source,
    see OutputSpec.allow_upscale)."""
    result = job.result.fields
    if "duration_ms" in result:
        entry.duration_ms = int(result["duration_ms"].number_value)
    if "media_info_id" in result and result["media_info_id"].string_value:
        entry.source_media_info_id = result["media_info_id"].string_value
    queued = [fa for fa in entry.flavor_assets if not fa.job_id and fa.state == FlavorAsset.QUEUED]
    for fa in _too_large(tx, entry, queued):
        fa.state = FlavorAsset.NOT_APPLICABLE
    for fa in queued:
        if fa.state != FlavorAsset.QUEUED:
            continue
        out = outputs_as_params([fa.output])[0]
        out["path"] = f"renditions/{entry.id}/{fa.id}-{fa.output_name}.mp4"
        out["flavor_asset_id"] = fa.id
        t = store_jobs.new_job(tx, _job_request(
            entry, "TRANSCODE", FLAVOR_STEP + fa.id,
            {"source": entry.source_uri, "entry_id": entry.id, "outputs": [out]},
            job.priority, entry.creator,
        ), template_id=entry.template_id)
        fa.job_id = t.id
        entry.job_ids.append(t.id)


def _too_large(tx: WriteTx, entry: Entry, assets: list[FlavorAsset]) -> list[FlavorAsset]:
    """The video flavor assets that would upscale the source without
    allow_upscale; when that is every video output, all but the smallest."""
    if not entry.source_media_info_id:
        return []
    try:
        src = get_media_info(tx.db, tx.project, entry.source_media_info_id)
    except ServiceError:
        return []
    if not src.video_width or not src.video_height:
        return []

    def upscales(o: mres.OutputSpec) -> bool:
        return (o.width > src.video_width) or (o.height > src.video_height)

    video = [fa for fa in entry.flavor_assets if fa.output.video_codec]
    skip = [fa for fa in assets if fa.output.video_codec and not fa.output.allow_upscale and upscales(fa.output)]
    if video and len(skip) == len(video):
        smallest = min(skip, key=lambda fa: (fa.output.height or fa.output.width, fa.output.video_bit_rate_bps))
        skip.remove(smallest)
    return skip


def _rendered(entry: Entry, job: Job, flavor_asset_id: str) -> None:
    outputs = json_format.MessageToDict(job.result, preserving_proto_field_name=True).get("outputs") or []
    for fa in entry.flavor_assets:
        if fa.id != flavor_asset_id:
            continue
        fa.state = FlavorAsset.READY
        fa.job_id = job.id
        for out in outputs:
            if isinstance(out, dict) and out.get("flavor_asset_id", flavor_asset_id) == flavor_asset_id:
                fa.path = str(out.get("path", ""))
                fa.size_bytes = int(out.get("size_bytes") or 0)
                if out.get("media_info_id"):
                    fa.media_info_id = str(out["media_info_id"])
                break


def _latest_states(tx: WriteTx, entry: Entry, current: Job) -> dict[str, Job]:
    """The latest job of every step, `current` as it is now. `job_ids` is in
    creation order; `current` joins it when new (a re-run, or a job a client
    made with the entry's id)."""
    if current.id not in entry.job_ids:
        entry.job_ids.append(current.id)
    order = {job_id: i for i, job_id in enumerate(entry.job_ids)}
    jobs = {current.id: current}
    ids = [i for i in entry.job_ids if i != current.id]
    if ids:
        m = models_for(tx.db)
        for (data,) in m.JobRow.select(m.JobRow.data).where(m.JobRow.id.in_(ids)).tuples():
            j = Job.FromString(bytes(data))
            jobs[j.id] = j
    latest: dict[str, Job] = {}
    for j in sorted(jobs.values(), key=lambda j: order[j.id]):
        step = j.metadata.get(STEP_KEY, "")
        if step:
            latest[step] = j
    if len(entry.job_ids) > MAX_ENTRY_JOB_IDS:
        # Re-runs add up: keep the latest job of every step and the newest
        # others, so an entry (and every page of them) stays readable.
        keep = {j.id for j in latest.values()} | set(entry.job_ids[-(MAX_ENTRY_JOB_IDS // 2):])
        kept = [i for i in entry.job_ids if i in keep]
        del entry.job_ids[:]
        entry.job_ids.extend(kept)
    return latest


def _settle(tx: WriteTx, entry: Entry, current: Job) -> bool:
    """Recompute the entry's state from its jobs; True when it is READY."""
    latest = _latest_states(tx, entry, current)
    if entry.source_uri:
        steps = [EXTRACT_STEP] + [FLAVOR_STEP + fa.id for fa in entry.flavor_assets
                                  if fa.state != FlavorAsset.NOT_APPLICABLE]
    else:
        steps = list(latest)
    failed = [latest[s] for s in steps if s in latest and latest[s].state in (Job.FAILED, Job.ABORTED)]
    entry.ClearField("error")
    if failed:
        j = failed[0]
        entry.state = Entry.ERROR
        if j.state == Job.FAILED:
            entry.error.CopyFrom(status_pb2.Status(
                code=j.error.code or code_pb2.UNKNOWN, message=f"{j.type} job {j.id} failed: {j.error.message}",
                details=j.error.details,
            ))
        else:
            entry.error.CopyFrom(status_pb2.Status(
                code=code_pb2.ABORTED,
                message=f"{j.type} job {j.id} was aborted" + (f": {j.abort_reason}" if j.abort_reason else ""),
            ))
        return False
    done = [s for s in steps if s in latest and latest[s].state == Job.SUCCEEDED]
    if steps and len(done) == len(steps):
        entry.state = Entry.READY
        return True
    running = any(j.state in (Job.RUNNING, Job.ABORTING) for j in latest.values())
    entry.state = Entry.PROCESSING if running or done else Entry.PENDING
    return False


def check_entry_is_done(tx: WriteTx, job_id: str) -> msvc.CheckEntryIsDoneResponse:
    job, _ = store_jobs.load_job_for_update(tx, job_id)
    entry_id = job.metadata.get(ENTRY_KEY)
    if not entry_id:
        raise ServiceError(
            grpc.StatusCode.FAILED_PRECONDITION, "JOB_HAS_NO_ENTRY",
            f"job {clip(job_id)} is not a processing job of an entry (it has no `entry_id` metadata)",
            metadata={"job_id": job_id},
            precondition=("ENTRY", f"jobs/{job_id}", "the job has no entry_id metadata"),
        )
    entry = load_entry(tx.db, tx.project, entry_id)
    before = entry.SerializeToString(deterministic=True)
    done = _settle(tx, entry, job)
    if entry.SerializeToString(deterministic=True) != before:
        _save_entry(tx, entry)
    return msvc.CheckEntryIsDoneResponse(done=done, entry=entry)


# -- media info ---------------------------------------------------------------------


def add_media_info(tx: WriteTx, req: msvc.AddMediaInfoRequest) -> MediaInfo:
    mi = MediaInfo()
    mi.CopyFrom(req.media_info)
    entry = load_entry(tx.db, tx.project, mi.entry_id)
    if mi.flavor_asset_id and not any(fa.id == mi.flavor_asset_id for fa in entry.flavor_assets):
        raise ServiceError(
            grpc.StatusCode.NOT_FOUND, "FLAVOR_ASSET_NOT_FOUND",
            f"entry {clip(entry.id)} has no flavor asset {clip(mi.flavor_asset_id)}; see GetEntry for its flavor_assets",
            metadata={"entry_id": entry.id, "flavor_asset_id": mi.flavor_asset_id},
        )
    mi.id = new_id()
    set_ts(mi.create_time, tx.now)
    m = models_for(tx.db)
    m.MediaInfoRow.insert(id=mi.id, project=tx.project, entry_id=mi.entry_id, flavor_asset_id=mi.flavor_asset_id,
                          create_time=tx.now, data=mi.SerializeToString()).execute()
    if mi.flavor_asset_id:
        for fa in entry.flavor_assets:
            if fa.id == mi.flavor_asset_id:
                fa.media_info_id = mi.id
    else:
        entry.source_media_info_id = mi.id
        entry.duration_ms = mi.container_duration_ms or max(mi.video_duration_ms, mi.audio_duration_ms)
    _save_entry(tx, entry)
    return mi


def get_media_info(db: peewee.Database, project: str, media_info_id: str) -> MediaInfo:
    p = db.param
    row = db.execute_sql(f"SELECT data FROM media_infos WHERE id = {p} AND project = {p}",
                         (media_info_id, project)).fetchone()
    if row is None:
        raise ServiceError(
            grpc.StatusCode.NOT_FOUND, "MEDIA_INFO_NOT_FOUND",
            f"media info {clip(media_info_id)} does not exist; list an entry's with ListMediaInfos",
            metadata={"media_info_id": media_info_id}, resource=("mediajobs.v1.MediaInfo", media_info_id),
        )
    return MediaInfo.FromString(bytes(row[0]))


def _budget_page(select: Any, id_col: Any, cond: Any, size: int, descending: bool) -> tuple[list[bytes], Any]:
    """Up to `size` rows' data by id (keyset), read in small batches and
    stopping at the message budget, so that a page of large rows neither
    passes a 4 MiB client's limit nor sits in memory whole. Returns the
    page and the last id when more rows follow (else None)."""
    page: list[bytes] = []
    budget = payloads.MessageBudget()
    last: Any = None
    while len(page) < size:
        want = min(PAGE_BATCH, size - len(page)) + 1
        after = cond if last is None else cond & ((id_col < last) if descending else (id_col > last))
        rows = list(select.where(after).order_by(id_col.desc() if descending else id_col).limit(want).tuples())
        for row_id, data in rows[: want - 1]:
            data = bytes(data)
            if not budget.admit(len(data)):
                return page, last
            page.append(data)
            last = row_id
        if len(rows) < want:
            return page, None
        if len(page) == size:
            return page, last
    return page, last


def list_media_infos(db: peewee.Database, project: str, req: msvc.ListMediaInfosRequest) -> msvc.ListMediaInfosResponse:
    size = store_jobs.page_size(req.page_size)
    fp = store_jobs.list_fingerprint(req)
    load_entry(db, project, req.entry_id)  # NOT_FOUND for an unknown entry
    M = models_for(db).MediaInfoRow
    cond = (M.project == project) & (M.entry_id == req.entry_id)
    if req.flavor_asset_id:
        cond &= M.flavor_asset_id == ("" if req.flavor_asset_id == "source" else req.flavor_asset_id)
    if req.page_token:
        (last,) = store_jobs.decode_token(req.page_token, fp)
        cond &= M.id > last
    page, more_after = _budget_page(M.select(M.id, M.data), M.id, cond, size, descending=False)
    token = store_jobs.encode_token([more_after], fp) if more_after is not None else ""
    return msvc.ListMediaInfosResponse(media_infos=[MediaInfo.FromString(d) for d in page], next_page_token=token)


# -- entry reads ----------------------------------------------------------------------


def list_entries(db: peewee.Database, project: str, req: msvc.ListEntriesRequest) -> msvc.ListEntriesResponse:
    size = store_jobs.page_size(req.page_size)
    fp = store_jobs.list_fingerprint(req)
    m = models_for(db)
    E = m.EntryRow
    cond = E.project == project
    if req.states:
        cond &= E.state.in_(list(req.states))
    if req.reference_id:
        cond &= E.reference_id == req.reference_id
    if req.template_id:
        cond &= E.template_id == req.template_id
    if req.tag:
        T = m.EntryTagRow
        cond &= E.id.in_(T.select(T.entry_id).where((T.project == project) & (T.tag == req.tag)))
    if req.page_token:
        (last,) = store_jobs.decode_token(req.page_token, fp)
        cond &= E.id < last
    page, more_after = _budget_page(E.select(E.id, E.data), E.id, cond, size, descending=True)
    token = store_jobs.encode_token([more_after], fp) if more_after is not None else ""
    return msvc.ListEntriesResponse(entries=[Entry.FromString(d) for d in page], next_page_token=token)


store_jobs.STATE_HOOKS.append(on_job_state)
