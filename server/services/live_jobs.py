"""LiveJobService: live jobs. Thin servicer: validate -> call the store
(store/live_jobs.py) -> shape the reply. The stream key is never echoed in
an error or logged."""
from __future__ import annotations

import re
import urllib.parse

import grpc
from google.protobuf import empty_pb2

from mediajobs.v1 import live_job_service_pb2 as lsvc
from mediajobs.v1 import live_job_service_pb2_grpc as lsvc_grpc
from mediajobs.v1 import live_resources_pb2 as lres

from .. import payloads
from ..admission import Admission, unlimited
from ..principal import caller, creator
from ..errors import ServiceError, clip, handle_errors, invalid_argument
from ..storage import check_relative
from ..store import Store
from ..store import jobs as store_jobs
from ..store import live_jobs as store_live
from ..store import templates as store_templates
from .jobs import _check_request_id

LiveJob = lres.LiveJob
LiveInput = lres.LiveInput

SEGMENT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")
BUCKET_RE = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")
OUTPUT_ONLY = ("id", "number", "name", "stream_key", "state", "cdn", "rtmp_server", "ingest_url",
               "web_socket_connection", "storage_master_file", "playback_url", "current_job_id", "resource_name",
               "project", "session_count", "key_resets", "backup_stream_key", "backup_ingest_url", "srt_port",
               "srt_passphrase")
OUTPUT_ONLY_MESSAGES = ("statistics", "start_time", "end_time", "finish_time", "create_time", "update_time", "error")
MAX_DESTINATION_CHARS = 256
MAX_DESCRIPTION_CHARS = 1024
MAX_URL_CHARS = 2048


def _seconds(d: object) -> float:
    return d.seconds + d.nanos / 1e9  # type: ignore[attr-defined]


def validate_create(req: lsvc.CreateLiveJobRequest) -> None:
    lj = req.live_job
    v: list[tuple[str, str]] = []
    for f in OUTPUT_ONLY:
        if getattr(lj, f):
            v.append((f"live_job.{f}", "output only; leave it empty"))
    for f in OUTPUT_ONLY_MESSAGES:
        if lj.HasField(f):  # type: ignore[arg-type]
            v.append((f"live_job.{f}", "output only; leave it empty"))
    if lj.output_manifests:
        v.append(("live_job.output_manifests", "output only; leave it empty"))
    if not lj.bucket:
        v.append(("live_job.bucket", "required: the bucket (top folder) the playlists go to, e.g. 'events'"))
    elif not BUCKET_RE.match(lj.bucket) or lj.bucket in (".", ".."):
        v.append(("live_job.bucket", f"{clip(lj.bucket)} is not a bucket name: 1-63 letters, digits, '_', '-', '.'"))
    dest = lj.destination
    if not dest:
        v.append(("live_job.destination", "required: where in the bucket the playlists go, e.g. 'studio-a/main'"))
    elif len(dest) > MAX_DESTINATION_CHARS:
        v.append(("live_job.destination", f"at most {MAX_DESTINATION_CHARS} characters"))
    else:
        parts = dest.strip("/").split("/")
        if len(parts) > 8 or any(not SEGMENT_RE.match(s) or s in (".", "..") for s in parts):
            v.append(("live_job.destination", f"{clip(dest)} is not a destination: 1-8 path segments of letters, "
                                              "digits, '_', '-', '.' (no '..')"))
    if len(lj.description) > MAX_DESCRIPTION_CHARS:
        v.append(("live_job.description", f"at most {MAX_DESCRIPTION_CHARS} characters"))
    if len(lj.creator) > 128:
        v.append(("live_job.creator", "at most 128 characters"))
    if lj.job_template_id and not store_templates.ID_RE.match(lj.job_template_id):
        v.append(("live_job.job_template_id", f"{clip(lj.job_template_id)} is not a template id (see "
                                              "ListJobTemplates; live templates have hls outputs)"))
    inp = lj.input
    if not lj.HasField("input") or not inp.server_type:
        v.append(("live_job.input.server_type", "required: RTMP (1), SRT (2) or HLS (3)"))
    elif inp.server_type not in LiveInput.ServerType.values():
        v.append(("live_job.input.server_type", f"unknown server type {inp.server_type}; use RTMP (1), SRT (2) "
                                                "or HLS (3)"))
    if inp.input_class not in LiveInput.InputClass.values():
        v.append(("live_job.input.input_class", f"unknown input class {inp.input_class}; use SINGLE (1) or "
                                                "STANDARD (2)"))
    if inp.server_type_options or inp.input_class_options or inp.callback_secret:
        v.append(("live_job.input", "server_type_options, input_class_options and callback_secret are output only"))
    if len(inp.file_path) > MAX_URL_CHARS:
        v.append(("live_job.input.file_path", f"at most {MAX_URL_CHARS} characters"))
    elif inp.server_type == LiveInput.HLS:
        if not inp.file_path:
            v.append(("live_job.input.file_path", "required for HLS input: the playlist to pull (a path under "
                                                  "the storage root, or an http(s) URL)"))
        elif inp.file_path.startswith(("http://", "https://")):
            if not urllib.parse.urlsplit(inp.file_path).hostname or any(c.isspace() for c in inp.file_path):
                v.append(("live_job.input.file_path", f"{clip(inp.file_path)} is not an http(s) URL"))
        else:
            try:
                check_relative(inp.file_path, "live_job.input.file_path")
            except ServiceError as e:
                v += e.violations
    if inp.callback_url:
        u = urllib.parse.urlsplit(inp.callback_url) if len(inp.callback_url) <= MAX_URL_CHARS else None
        if u is None or u.scheme not in ("http", "https") or not u.netloc:
            v.append(("live_job.input.callback_url", f"an http or https URL of at most {MAX_URL_CHARS} characters"))
    if lj.HasField("reconnect_window") and not 0 <= _seconds(lj.reconnect_window) <= store_live.MAX_RECONNECT_S:
        v.append(("live_job.reconnect_window", f"must be 0 to {store_live.MAX_RECONNECT_S} seconds"))
    if lj.HasField("max_duration") and not 1 <= _seconds(lj.max_duration) <= store_live.MAX_MAX_DURATION_S:
        v.append(("live_job.max_duration", "must be 1 second to 7 days"))
    v += payloads.metadata_violations(lj.labels, "live_job.labels")
    if v:
        raise invalid_argument(v)
    if inp.input_class == LiveInput.STANDARD and inp.server_type != LiveInput.RTMP:
        raise invalid_argument([("live_job.input.input_class", "STANDARD (a primary and a backup ingest) is for "
                                                               "pushed RTMP input; use SINGLE for HLS")])


def _check_ref(value: str, field: str) -> None:
    if not value:
        raise invalid_argument([(field, "required: the live job's id (a ULID) or name (a UUID)")])
    if len(value) > 64:
        raise invalid_argument([(field, f"{clip(value)} is not a live job id or name")])


def _check_key(key: str) -> None:
    if not key:
        raise invalid_argument([("stream_key", "required: the live job's stream key (GetLiveJob shows it)")])
    if len(key) > 256:
        raise invalid_argument([("stream_key", "at most 256 characters; this is not a stream key")])


def _viewer() -> bool:
    """A read-only (viewer) key: it never sees stream keys, passphrases or
    callback secrets (they let their holder publish or sign)."""
    who = caller()
    return who is not None and who.role == "viewer"


class LiveJobService(lsvc_grpc.LiveJobServiceServicer):
    def __init__(self, store: Store, settings: store_live.LiveSettings, admission: Admission | None = None) -> None:
        self.store = store
        self.settings = settings
        self.admission = admission or unlimited()

    @handle_errors
    async def ListLiveJobs(self, request: lsvc.ListLiveJobsRequest, context: grpc.aio.ServicerContext
                           ) -> lsvc.ListLiveJobsResponse:
        if len(request.search) > store_live.MAX_SEARCH_CHARS:
            raise invalid_argument([("search", f"at most {store_live.MAX_SEARCH_CHARS} characters")])
        for s in request.states:
            if s not in LiveJob.State.values() or s == 0:
                raise invalid_argument([("states", f"unknown state {s}")])
        if _viewer():
            request.include_stream_key = False  # the keys publish: not for a read-only key
        return await self.store.read(store_live.list_live_jobs, request, self.settings)

    @handle_errors
    async def CreateLiveJob(self, request: lsvc.CreateLiveJobRequest, context: grpc.aio.ServicerContext) -> LiveJob:
        validate_create(request)
        _check_request_id(request.request_id)
        request.live_job.creator = creator(request.live_job.creator)
        return await self.store.write(lambda tx: store_jobs.idempotent(
            tx, "CreateLiveJob", request, LiveJob,
            lambda t: store_live.create_live_job(t, request, "anonymous", self.settings)))

    @handle_errors
    async def GetLiveJob(self, request: lsvc.GetLiveJobRequest, context: grpc.aio.ServicerContext) -> LiveJob:
        _check_ref(request.id, "id")
        live = await self.store.read(store_live.load_live, request.id)
        return store_live.hide_key(live) if _viewer() else live

    @handle_errors
    async def ListLiveOutputs(self, request: lsvc.ListLiveOutputsRequest, context: grpc.aio.ServicerContext
                              ) -> lsvc.ListLiveOutputsResponse:
        _check_ref(request.live_job_id, "live_job_id")
        return await self.store.read(store_live.list_outputs, request)

    @handle_errors
    async def SetLiveEncoding(self, request: lsvc.SetLiveEncodingRequest, context: grpc.aio.ServicerContext
                              ) -> lsvc.SetLiveEncodingResponse:
        _check_key(request.stream_key)
        _check_request_id(request.request_id)
        if not request.online and (request.HasField("start_time") or request.HasField("finish_time")):
            raise invalid_argument([("start_time", "only with online=true (a session's start and finish)")])
        return await self.store.write(lambda tx: store_jobs.idempotent(
            tx, "SetLiveEncoding", request, lsvc.SetLiveEncodingResponse,
            lambda t: store_live.set_encoding(t, request, self.settings, self.store.quotas.live_jobs_online)))

    @handle_errors
    async def ListLiveTimings(self, request: lsvc.ListLiveTimingsRequest, context: grpc.aio.ServicerContext
                              ) -> lsvc.ListLiveTimingsResponse:
        _check_ref(request.live_job_id, "live_job_id")
        if request.output_id < 0:
            raise invalid_argument([("output_id", "must be 0 (all) or an output's id (1, 2, ...)")])
        return await self.store.read(store_live.list_timings, request)

    @handle_errors
    async def GetLiveStatistics(self, request: lsvc.GetLiveStatisticsRequest, context: grpc.aio.ServicerContext
                                ) -> lres.LiveStatistics:
        _check_ref(request.live_job_id, "live_job_id")
        live = await self.store.read(store_live.load_live, request.live_job_id)
        return live.statistics

    @handle_errors
    async def ResetStreamKey(self, request: lsvc.ResetStreamKeyRequest, context: grpc.aio.ServicerContext) -> LiveJob:
        _check_ref(request.live_job_id, "live_job_id")
        return await self.store.write(lambda tx: store_live.reset_stream_key(tx, request, self.settings))

    @handle_errors
    async def DeleteLiveJob(self, request: lsvc.DeleteLiveJobRequest, context: grpc.aio.ServicerContext
                            ) -> empty_pb2.Empty:
        _check_ref(request.id, "id")
        await self.store.write(lambda tx: store_live.delete_live_job(tx, request))
        return empty_pb2.Empty()

    @handle_errors
    async def CreateLiveClip(self, request: lsvc.CreateLiveClipRequest, context: grpc.aio.ServicerContext
                             ) -> lres.LiveClip:
        _check_ref(request.live_job_id, "live_job_id")
        _check_request_id(request.request_id)
        c = request.clip
        v: list[tuple[str, str]] = []
        if not c.HasField("start_time") or not c.HasField("end_time"):
            v.append(("clip.start_time", "required: the window to cut, start_time and end_time (wall-clock times "
                                         "of the stream)"))
        else:
            span = (c.end_time.ToNanoseconds() - c.start_time.ToNanoseconds()) / 1e9
            if span <= 0:
                v.append(("clip.end_time", "must be after start_time"))
            elif span > store_live.MAX_CLIP_S:
                v.append(("clip.end_time", f"a clip is at most {store_live.MAX_CLIP_S // 3600} hours long"))
        for f in ("id", "job_id", "playlist", "mp4", "entry_id"):
            if getattr(c, f):
                v.append((f"clip.{f}", "output only; leave it empty"))
        if c.state or c.duration_s or c.segments or c.HasField("error"):
            v.append(("clip", "state, duration_s, segments and error are output only"))
        if len(c.rendition) > 64:
            v.append(("clip.rendition", "at most 64 characters"))
        if len(c.entry_name) > 256:
            v.append(("clip.entry_name", "at most 256 characters"))
        if v:
            raise invalid_argument(v)
        return await self.store.write(lambda tx: store_jobs.idempotent(
            tx, "CreateLiveClip", request, lres.LiveClip, lambda t: store_live.create_clip(t, request)))

    @handle_errors
    async def GetLiveClip(self, request: lsvc.GetLiveClipRequest, context: grpc.aio.ServicerContext
                          ) -> lres.LiveClip:
        _check_ref(request.id, "id")
        return await self.store.read(store_live.load_clip, request.id)

    @handle_errors
    async def ListLiveClips(self, request: lsvc.ListLiveClipsRequest, context: grpc.aio.ServicerContext
                            ) -> lsvc.ListLiveClipsResponse:
        _check_ref(request.live_job_id, "live_job_id")
        return await self.store.read(store_live.list_clips, request)
