"""MediaService: entries, media info, job templates and cue points.
Thin servicer: validate -> call the store -> shape the reply."""
from __future__ import annotations

import asyncio
from typing import Any
from pathlib import Path

import grpc
from google.protobuf import empty_pb2

from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import media_service_pb2 as msvc
from mediajobs.v1 import media_service_pb2_grpc as msvc_grpc
from mediajobs.v1 import resources_pb2 as res

from .. import cue_points, payloads
from ..admission import Admission, unlimited
from ..principal import creator
from ..errors import clip, handle_errors, invalid_argument
from ..storage import area_root
from ..store import Store
from ..store import entries as store_entries
from ..store import jobs as store_jobs
from ..store import templates as store_templates
from .jobs import ID_RE, _check_job_id, _check_request_id, check_ulid

MAX_TAGS = 32


def validate_entry(e: mres.Entry, priority: int, creator: str) -> None:
    v: list[tuple[str, str]] = []
    if not e.name.strip():
        v.append(("entry.name", "required: a display name"))
    elif len(e.name) > 256:
        v.append(("entry.name", "at most 256 characters"))
    if len(e.description) > 4096:
        v.append(("entry.description", "at most 4096 characters"))
    if len(e.tags) > MAX_TAGS:
        v.append(("entry.tags", f"at most {MAX_TAGS} tags, got {len(e.tags)}"))
    for i, t in enumerate(e.tags):
        if not t or len(t) > 64:
            v.append((f"entry.tags[{i}]", "tags must be 1-64 characters"))
    if len(e.reference_id) > 256:
        v.append(("entry.reference_id", "at most 256 characters"))
    v += payloads.metadata_violations(e.labels, "entry.labels")  # as many, as long as job metadata
    if e.template_id and not store_templates.ID_RE.match(e.template_id):
        v.append(("entry.template_id", f"{clip(e.template_id)} is not a template id (see ListJobTemplates)"))
    if e.template_id and not e.source_uri:
        v.append(("entry.template_id", "a template needs a source_uri to process"))
    if priority not in res.Job.Priority.values():
        v.append(("priority", f"unknown priority {priority}; use 1 (LOWEST) to 5 (HIGHEST), 0 for MEDIUM"))
    if len(creator) > 128:
        v.append(("creator", "at most 128 characters"))
    for f in ("id", "state", "job_ids", "flavor_assets", "duration_ms", "source_media_info_id"):
        if getattr(e, f):
            v.append((f"entry.{f}", "output only; leave it empty"))
    if v:
        raise invalid_argument(v)


def validate_media_info(mi: mres.MediaInfo) -> None:
    v: list[tuple[str, str]] = []
    if not mi.entry_id:
        v.append(("media_info.entry_id", "required: the entry the file belongs to"))
    elif not ID_RE.match(mi.entry_id.upper()):
        v.append(("media_info.entry_id", f"{clip(mi.entry_id)} is not an entry id"))
    if mi.id:
        v.append(("media_info.id", "output only; leave it empty"))
    if mi.ByteSize() > payloads.MAX_MEDIA_INFO_BYTES:
        v.append(("media_info", f"{mi.ByteSize()} bytes serialized; at most {payloads.MAX_MEDIA_INFO_BYTES}"))
    if len(mi.raw_data) > 65536:
        v.append(("media_info.raw_data", "at most 64 KiB"))
    for f in ("multi_stream_info", "content_streams"):
        if len(getattr(mi, f)) > 65536:
            v.append((f"media_info.{f}", "at most 64 KiB"))
    for f in ("file_size_bytes", "container_duration_ms", "container_bit_rate_kbps", "video_duration_ms",
              "video_bit_rate_kbps", "video_width", "video_height", "video_frame_rate", "video_dar",
              "audio_duration_ms", "audio_bit_rate_kbps", "audio_channels", "audio_sampling_rate",
              "audio_resolution", "max_gop", "complexity_value"):
        if getattr(mi, f) < 0:
            v.append((f"media_info.{f}", "must not be negative"))
    if mi.video_rotation not in (0, 90, 180, 270, -90, -180, -270):
        v.append(("media_info.video_rotation", "must be 0, 90, 180 or 270 degrees"))
    if v:
        raise invalid_argument(v)


class MediaService(msvc_grpc.MediaServiceServicer):
    def __init__(self, store: Store, storage_root: Path, admission: Admission | None = None) -> None:
        self.admission = admission or unlimited()
        self.store = store
        self.storage_root = storage_root

    # -- entries ----------------------------------------------------------------

    @handle_errors
    async def CreateEntry(self, request: msvc.CreateEntryRequest, context: grpc.aio.ServicerContext) -> mres.Entry:
        validate_entry(request.entry, request.priority, request.creator)
        _check_request_id(request.request_id)
        request.creator = creator(request.creator)
        source = ""
        if request.entry.source_uri:
            source = await asyncio.to_thread(
                store_entries.source_relative_path, area_root(self.storage_root, self.store.scope(), self.store.project),
                request.entry.source_uri
            )
        quota = self.store.quotas.pending_jobs if source else 0

        def create(t: Any) -> mres.Entry:
            store_jobs.check_pending_quota(t, quota, 1)  # an entry with a source queues a job
            return store_entries.create_entry(t, request, source)

        return await self.store.write(
            lambda tx: store_jobs.idempotent(tx, "CreateEntry", request, mres.Entry, create))

    @handle_errors
    async def GetEntry(self, request: msvc.GetEntryRequest, context: grpc.aio.ServicerContext) -> mres.Entry:
        check_ulid(request.id, "id", "entry")
        return await self.store.read_point(store_entries.load_entry, request.id)

    @handle_errors
    async def ListEntries(
        self, request: msvc.ListEntriesRequest, context: grpc.aio.ServicerContext
    ) -> msvc.ListEntriesResponse:
        for i, s in enumerate(request.states):
            if s not in mres.Entry.State.values() or s == 0:
                raise invalid_argument([(f"states[{i}]", f"unknown entry state {s}; use PENDING, PROCESSING, READY or ERROR")])
        return await self.store.read(store_entries.list_entries, request)

    @handle_errors
    async def DeleteEntry(self, request: msvc.DeleteEntryRequest, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        check_ulid(request.id, "id", "entry")
        await self.store.write(lambda tx: store_entries.delete_entry(tx, request.id, request.allow_missing))
        return empty_pb2.Empty()

    @handle_errors
    async def CheckEntryIsDone(
        self, request: msvc.CheckEntryIsDoneRequest, context: grpc.aio.ServicerContext
    ) -> msvc.CheckEntryIsDoneResponse:
        _check_job_id(request.job_id, "job_id")
        return await self.store.write(lambda tx: store_entries.check_entry_is_done(tx, request.job_id))

    # -- media info ---------------------------------------------------------------

    @handle_errors
    async def AddMediaInfo(self, request: msvc.AddMediaInfoRequest, context: grpc.aio.ServicerContext) -> mres.MediaInfo:
        validate_media_info(request.media_info)
        _check_request_id(request.request_id)
        return await self.store.write(
            lambda tx: store_jobs.idempotent(tx, "AddMediaInfo", request, mres.MediaInfo,
                                             lambda t: store_entries.add_media_info(t, request))
        )

    @handle_errors
    async def GetMediaInfo(self, request: msvc.GetMediaInfoRequest, context: grpc.aio.ServicerContext) -> mres.MediaInfo:
        check_ulid(request.id, "id", "media info")
        return await self.store.read_point(store_entries.get_media_info, request.id)

    @handle_errors
    async def ListMediaInfos(
        self, request: msvc.ListMediaInfosRequest, context: grpc.aio.ServicerContext
    ) -> msvc.ListMediaInfosResponse:
        check_ulid(request.entry_id, "entry_id", "entry")
        return await self.store.read(store_entries.list_media_infos, request)

    # -- job templates -----------------------------------------------------------------

    @handle_errors
    async def CreateJobTemplate(
        self, request: msvc.CreateJobTemplateRequest, context: grpc.aio.ServicerContext
    ) -> mres.JobTemplate:
        store_templates.check_template_id(request.job_template_id, "job_template_id")
        v = store_templates.validate_template(request.job_template)
        if v:
            raise invalid_argument(v)
        return await self.store.write(
            lambda tx: store_templates.create_template(tx, request.job_template_id, request.job_template)
        )

    @handle_errors
    async def GetJobTemplate(
        self, request: msvc.GetJobTemplateRequest, context: grpc.aio.ServicerContext
    ) -> mres.JobTemplate:
        store_templates.check_template_id(request.id, "id")
        return await self.store.read_point(store_templates.get_template, request.id)

    @handle_errors
    async def ListJobTemplates(
        self, request: msvc.ListJobTemplatesRequest, context: grpc.aio.ServicerContext
    ) -> msvc.ListJobTemplatesResponse:
        return await self.store.read(store_templates.list_templates, request)

    @handle_errors
    async def UpdateJobTemplate(
        self, request: msvc.UpdateJobTemplateRequest, context: grpc.aio.ServicerContext
    ) -> mres.JobTemplate:
        t = request.job_template
        store_templates.check_template_id(t.id, "job_template.id")
        paths = list(request.update_mask.paths)
        if not paths:
            raise invalid_argument([("update_mask", "required: the fields to change ("
                                                    + ", ".join(store_templates.UPDATABLE) + ")")])
        bad = [p for p in paths if p not in store_templates.UPDATABLE]
        if bad:
            raise invalid_argument([("update_mask", f"{', '.join(bad)} cannot be changed; only "
                                                    + ", ".join(store_templates.UPDATABLE))])
        v = store_templates.validate_template(t) if "outputs" in paths else []
        v = [x for x in v if x[0].split(".")[1].split("[")[0] in paths]
        if v:
            raise invalid_argument(v)
        return await self.store.write(lambda tx: store_templates.update_template(tx, t, request.update_mask))

    @handle_errors
    async def DeleteJobTemplate(
        self, request: msvc.DeleteJobTemplateRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        store_templates.check_template_id(request.id, "id")
        await self.store.write(lambda tx: store_templates.delete_template(tx, request.id, request.allow_missing))
        return empty_pb2.Empty()

    # -- cue points (server/cue_points.py) ------------------------------------------------

    @handle_errors
    async def ImportCuePoints(
        self, request: msvc.ImportCuePointsRequest, context: grpc.aio.ServicerContext
    ) -> msvc.ImportCuePointsResponse:
        return await cue_points.import_cue_points(self.store, request)

    @handle_errors
    async def ExportCuePoints(
        self, request: msvc.ExportCuePointsRequest, context: grpc.aio.ServicerContext
    ) -> msvc.ExportCuePointsResponse:
        return await cue_points.export_cue_points(self.store, request)

