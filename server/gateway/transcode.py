"""The transcoding shim: mediajobs' own HTTP front for one thing, "transcode
this file", answered in Bytescale's async-job shape. The Bytescale dialect
(bytescale.py) enqueues through the same code.

    POST   /v1/transcodes            submit  -> 202, Location: the jobUrl
    GET    /v1/transcodes/{jobId}    poll    -> 200
    DELETE /v1/transcodes/{jobId}    cancel  -> 200 (the job as it is after the abort)

Credentials and errors are mediajobs' own: `Authorization: Bearer <API
key>` passed through to the gRPC API (so roles and projects hold), errors
as the gateway's JSON google.rpc.Status (errors.py).

A transcode is a TRANSCODE job (JobService.CreateJob), run by a media worker
(client/media_worker.py) on files in the caller's project's storage area.
The request body, a JSON object (camelCase or snake_case names):

    {"source": "incoming/clip.mov",          required: a path in the project's storage area
     "templateId": "mp4-h264-720p",          a job template (MediaService), or
     "outputs": [{"name": "small", "videoCodec": "h264", "audioCodec": "aac",
                  "height": 240, "path": "out/small.mp4"}],   explicit OutputSpecs (1-16)
     "outputDir": "out/clip1",               optional: where outputs without a path go
     "priority": "HIGH",                     optional: Job.Priority
     "metadata": {"team": "news"}}           optional: job metadata

Exactly one of templateId and outputs. An output is an OutputSpec
(media_resources.proto; container defaults to mp4, the only one files use)
with an optional `path`; it is checked here against the limits of job
template outputs, so a bad one is a 400 now, not a failed job later. Paths
are relative to the project's storage area, without `..`; an output without
a path goes to `<outputDir>/<name>.mp4`, outputDir defaulting to
`transcodes/<jobId>` (the media worker's rule). `Idempotency-Key` is the
job's request_id. Whether the source exists is the worker's to find out: a
missing source fails the job.

The answer (seed 003, Bytescale's ProcessFileAndSave async response):

    {"async": true, "jobUrl": "<this gateway>/v1/transcodes/<id>",
     "jobDocs": "https://www.bytescale.com/docs/job-api/GetJob", "jobId": "<ULID>",
     "jobType": "ProcessVideoJob" | "ProcessAudioJob", "accountId": "<7 chars>",
     "created": <epoch ms>, "lastUpdated": <epoch ms>, "status": "...",
     "summary": {...}, "error": null | {"timestamp", "message", "code", "details"}}

- jobUrl is absolute, built from the request's scheme and host
  (X-Forwarded-Proto / X-Forwarded-Host when a proxy sets them).
- jobType: ProcessAudioJob when no output has video, else ProcessVideoJob.
- accountId: the job's project as a Bytescale account id (`account_id`).
- status, from Job.State as resources.proto's vocabulary comment says:
  PENDING -> Created (no attempt used yet) or Pending (waiting to be
  retried after an attempt); RUNNING -> Running; ABORTING -> Cancelling;
  SUCCEEDED -> Succeeded; FAILED -> Failed; ABORTED -> Cancelled.
- summary: source, templateId, the outputs (spec and path), progress,
  attempts; `result` (each output's path and size) once Succeeded,
  `cancelReason` once cancelled.
- error (Failed only): the job's error; code is its ErrorInfo reason in
  lower case.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import grpc
from aiohttp import web
from google.protobuf import descriptor, json_format, struct_pb2

from mediajobs.v1 import job_service_pb2 as jsvc
from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import resources_pb2 as res

from .errors import bad_request, details_of, error_response, plain_error, status_of
from .protojson import message_to_dict
from .upstream import Upstream, call_metadata

Job = res.Job
OutputSpec = mres.OutputSpec

TRANSCODE = "TRANSCODE"
JOB_DOCS = "https://www.bytescale.com/docs/job-api/GetJob"
VIDEO_JOB = "ProcessVideoJob"
AUDIO_JOB = "ProcessAudioJob"
CALL_TIMEOUT_S = 30.0

# Limits of a transcode request (the gateway's own 16 MiB is for bulk CSVs).
MAX_REQUEST_BYTES = 256 * 1024
MAX_PATH_CHARS = 1024
MAX_OUTPUTS = 16

# Bytescale account ids are 7 characters of this alphabet.
ACCOUNT_ID_LENGTH = 7
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def account_id(project: str) -> str:
    """The Bytescale account id of a mediajobs project: 7 base-62
    characters of a hash of its name (stable, no table to keep)."""
    n = int.from_bytes(hashlib.sha256(b"mediajobs-bytescale-account:" + project.encode()).digest()[:8], "big")
    out = []
    for _ in range(ACCOUNT_ID_LENGTH):
        n, r = divmod(n, 62)
        out.append(_BASE62[r])
    return "".join(out)


# -- the job as Bytescale's async-job object ---------------------------------------


def bytescale_status(job: Job) -> str:
    """Job.State -> Bytescale's status (resources.proto's vocabulary mapping)."""
    if job.state == Job.PENDING:
        return "Pending" if job.attempt_count > 0 else "Created"
    return {
        Job.RUNNING: "Running",
        Job.ABORTING: "Cancelling",
        Job.SUCCEEDED: "Succeeded",
        Job.FAILED: "Failed",
        Job.ABORTED: "Cancelled",
    }.get(job.state, "Pending")


def _outputs_of(job: Job) -> list[dict[str, Any]]:
    raw = message_to_dict(job.params).get("outputs")
    return [o for o in raw if isinstance(o, dict)] if isinstance(raw, list) else []


def job_type(job: Job) -> str:
    """ProcessAudioJob when no output has video, else ProcessVideoJob."""
    outputs = _outputs_of(job)
    if outputs and not any(o.get("video_codec") or o.get("videoCodec") for o in outputs):
        return AUDIO_JOB
    return VIDEO_JOB


def _iso_ms(ts: Any) -> str:
    """A Timestamp as Bytescale writes times: 2024-11-14T15:19:29.471Z."""
    ms = ts.ToMilliseconds()
    return ts.ToDatetime().strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _error_of(job: Job) -> dict[str, Any] | None:
    if job.state != Job.FAILED:
        return None
    rich = details_of(job.error)
    code, details = rich.reason.lower(), rich.metadata
    out: dict[str, Any] = {
        "timestamp": _iso_ms(job.end_time if job.HasField("end_time") else job.update_time),
        "message": job.error.message or "the job failed",
        "code": code or grpc.StatusCode.UNKNOWN.name.lower(),
    }
    if details:
        out["details"] = details
    return out


def _summary(job: Job, rooted: bool) -> dict[str, Any]:
    """What the job does and has done. `rooted`: paths as Bytescale file
    paths (`/dir/file`), else relative to the storage area as stored."""
    def shown(path: str) -> str:
        return "/" + path if rooted and path else path

    params = message_to_dict(job.params)
    output_dir = params.get("output_dir") or params.get("outputDir") or f"transcodes/{job.id}"
    outputs = []
    for o in _outputs_of(job):
        spec = {k: v for k, v in o.items() if k not in ("path", "flavor_asset_id")}
        try:
            spec = spec_json(json_format.ParseDict(spec, OutputSpec(), ignore_unknown_fields=True))
        except json_format.ParseError:
            pass  # a job made elsewhere with odd outputs: shown as it is
        name = str(o.get("name") or "")
        path = o.get("path") or (f"{str(output_dir).rstrip('/')}/{name}.mp4" if name else "")
        outputs.append({**spec, "path": shown(str(path))})
    summary: dict[str, Any] = {"source": shown(str(params.get("source") or params.get("input") or ""))}
    if job.template_id:
        summary["templateId"] = job.template_id
    summary.update(outputs=outputs, progress=job.progress, attempts=job.attempt_count)
    if job.progress_message:
        summary["progressMessage"] = job.progress_message
    if job.state == Job.SUCCEEDED:
        result = message_to_dict(job.result).get("outputs")
        summary["result"] = {"outputs": [
            {"name": r.get("name", ""), "path": shown(str(r.get("path", ""))), "sizeBytes": int(r.get("size_bytes", 0))}
            for r in (result if isinstance(result, list) else []) if isinstance(r, dict)]}
    if job.state in (Job.ABORTING, Job.ABORTED) and job.abort_reason:
        summary["cancelReason"] = job.abort_reason
    return summary


def job_summary(job: Job, job_url: str, account: str, *, rooted: bool = False) -> dict[str, Any]:
    """Bytescale's JobSummary of a TRANSCODE job (no `async` key)."""
    return {
        "jobUrl": job_url,
        "jobDocs": JOB_DOCS,
        "jobId": job.id,
        "jobType": job_type(job),
        "accountId": account,
        "created": job.create_time.ToMilliseconds(),
        "lastUpdated": job.update_time.ToMilliseconds(),
        "status": bytescale_status(job),
        "summary": _summary(job, rooted),
        "error": _error_of(job),
    }


_HOST_RE = re.compile(r"^[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?$")


def base_url(request: web.Request) -> str:
    """scheme://host the client reached this gateway at (a proxy's
    X-Forwarded-Proto / X-Forwarded-Host when present and well-formed)."""
    scheme = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    if scheme not in ("http", "https"):
        scheme = request.scheme
    for host in (request.headers.get("X-Forwarded-Host", "").split(",")[0].strip(), request.host):
        if host and _HOST_RE.match(host):
            return f"{scheme}://{host}"
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    if not sock:
        return f"{scheme}://localhost"
    host = f"[{sock[0]}]" if ":" in str(sock[0]) else str(sock[0])
    return f"{scheme}://{host}:{sock[1]}"


# -- a transcode request -------------------------------------------------------------


class TranscodeError(Exception):
    """A request the shim or a dialect refuses before calling the API (or
    a job that is not a transcode): each front renders it its own way."""

    def __init__(self, message: str, field: str = "", code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT,
                 reason: str = "INVALID_TRANSCODE_REQUEST") -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code
        self.reason = reason


@dataclass
class Transcode:
    """What to enqueue: a TRANSCODE job's source, outputs (snake_case
    OutputSpec dicts with an optional path) or template, and options."""

    source: str
    outputs: list[dict[str, Any]] = field(default_factory=list)
    template_id: str = ""
    output_dir: str = ""
    priority: Job.Priority.ValueType = Job.PRIORITY_UNSPECIFIED
    metadata: dict[str, str] = field(default_factory=dict)
    request_id: str = ""


def _clip(text: str, n: int = 64) -> str:
    return repr(text[:n] + ("..." if len(text) > n else ""))


def area_path(text: Any, field: str) -> str:
    """A path in the project's storage area: relative, no `.`/`..`/empty
    segments, no control characters, at most MAX_PATH_CHARS."""
    if not isinstance(text, str) or not text:
        raise TranscodeError(f"{field} is required: a path in your project's storage area", field)
    if len(text) > MAX_PATH_CHARS:
        raise TranscodeError(f"{field} is longer than {MAX_PATH_CHARS} characters", field)
    if any(ord(c) < 32 or c == "\x7f" for c in text) or "\\" in text:
        raise TranscodeError(f"{field} {_clip(text)} has a control character or a backslash", field)
    if text.startswith(("/", "~", "file:")):
        raise TranscodeError(f"{field} {_clip(text)} must be relative to your project's storage area "
                             "(e.g. incoming/clip.mov)", field)
    if any(p in ("", ".", "..") for p in text.split("/")):
        raise TranscodeError(f"{field} {_clip(text)} may not have empty, '.' or '..' segments", field)
    return text


_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
AAC_SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


def check_output(o: OutputSpec, f: str) -> None:
    """An output a media worker can encode to a file, within the limits of
    job template outputs (media_resources.proto, OutputSpec)."""
    def bad(sub: str, message: str) -> TranscodeError:
        return TranscodeError(f"{f}{sub}: {message}", f + sub)

    if not _NAME_RE.match(o.name):
        raise bad(".name", f"{_clip(o.name)} is not an output name: 1-64 letters, digits, '_', '-' or '.'")
    if o.container != "mp4":
        raise bad(".container", f"{_clip(o.container)} is not supported; transcodes make mp4 files")
    if o.video_codec not in ("", "h264"):
        raise bad(".videoCodec", f"{_clip(o.video_codec)} is not supported; use h264 (or none for audio only)")
    if o.audio_codec not in ("", "aac"):
        raise bad(".audioCodec", f"{_clip(o.audio_codec)} is not supported; use aac (or none for no audio)")
    if not o.video_codec and not o.audio_codec:
        raise bad("", "an output needs a videoCodec, an audioCodec or both")
    for name, value, low, high in (("width", o.width, 0, 8192), ("height", o.height, 0, 8192)):
        if not low <= value <= high or value % 2:
            raise bad(f".{name}", f"must be an even number of pixels up to 8192 (0: follow the source), got {value}")
    for name, number, low, high in (("scale", o.scale, 0, 4), ("videoBitRateBps", o.video_bit_rate_bps, 0, 500_000_000),
                                    ("frameRate", o.frame_rate, 0, 240),
                                    ("audioBitRateBps", o.audio_bit_rate_bps, 0, 1_536_000),
                                    ("audioChannels", o.audio_channels, 0, 2), ("gopSize", o.gop_size, 0, 1000)):
        if not low <= number <= high or (isinstance(number, float) and math.isnan(number)):
            raise bad(f".{name}", f"must be {low} to {high:,}, got {number}")
    if o.audio_sample_rate and o.audio_sample_rate not in AAC_SAMPLE_RATES:
        raise bad(".audioSampleRate", f"AAC takes one of {', '.join(map(str, AAC_SAMPLE_RATES))} Hz "
                                      f"(0: the source's), got {o.audio_sample_rate}")
    if o.preset and o.preset not in X264_PRESETS:
        raise bad(".preset", f"{_clip(o.preset)} is not an x264 preset; use one of {', '.join(X264_PRESETS)}")


FD = descriptor.FieldDescriptor
_SPEC_FIELDS = {name: fd for fd in OutputSpec.DESCRIPTOR.fields for name in (fd.name, fd.json_name)}
_INT64 = (FD.CPPTYPE_INT64, FD.CPPTYPE_UINT64)


def spec_json(o: OutputSpec) -> dict[str, Any]:
    """An OutputSpec as JSON for people: camelCase, 64-bit numbers as numbers."""
    out = json_format.MessageToDict(o)
    for fd in OutputSpec.DESCRIPTOR.fields:
        if fd.cpp_type in _INT64 and fd.json_name in out:
            out[fd.json_name] = int(out[fd.json_name])
    return out


def output_params(o: OutputSpec, path: str = "") -> dict[str, Any]:
    """An output as TRANSCODE params (snake_case, what the media worker reads)."""
    out = json_format.MessageToDict(o, preserving_proto_field_name=True)
    if path:
        out["path"] = path
    return out


def parse_outputs(raw: Any, field: str = "outputs") -> list[dict[str, Any]]:
    """Explicit outputs (OutputSpec JSON, either spelling, plus `path`) as
    TRANSCODE params."""
    if not isinstance(raw, list) or not raw:
        raise TranscodeError(f"{field} must be a non-empty list of outputs", field)
    if len(raw) > MAX_OUTPUTS:
        raise TranscodeError(f"at most {MAX_OUTPUTS} outputs, got {len(raw)}", field)
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        f = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise TranscodeError(f"{f} must be an object (an OutputSpec, plus an optional path)", f)
        nulls = [k for k, v in item.items() if v is None]
        if nulls:
            raise TranscodeError(f"{f}.{str(nulls[0])[:64]} is null; leave it out instead", f"{f}.{nulls[0]}")
        fields = dict(item)
        path = fields.pop("path", None)
        fields.setdefault("container", "mp4")
        for key, value in fields.items():  # the JSON mapping would also take "25" or true for a number
            fd = _SPEC_FIELDS.get(key)
            if fd is not None and fd.type not in (FD.TYPE_STRING, FD.TYPE_BOOL) and (
                    isinstance(value, bool) or not isinstance(value, (int, float))):
                raise TranscodeError(f"{f}.{key} must be a number", f"{f}.{key}")
        try:
            spec = json_format.ParseDict(fields, OutputSpec(), ignore_unknown_fields=False)
        except json_format.ParseError as e:
            raise TranscodeError(f"{f} is not an OutputSpec: {str(e)[:200]}", f) from None
        check_output(spec, f)
        if spec.name in names:
            raise TranscodeError(f"{f}.name {_clip(spec.name)} is used twice; output names must be unique", f + ".name")
        names.add(spec.name)
        out.append(output_params(spec, area_path(path, f + ".path") if path is not None else ""))
    return out


_BODY_FIELDS = {"source": "source", "templateId": "template_id", "template_id": "template_id", "outputs": "outputs",
                "outputDir": "output_dir", "output_dir": "output_dir", "priority": "priority",
                "metadata": "metadata"}


def parse_shim_body(body: Any) -> Transcode:
    """The shim's JSON body (see the module docstring) as a Transcode."""
    if not isinstance(body, dict):
        raise TranscodeError("the body must be a JSON object: {\"source\": ..., \"templateId\" or \"outputs\": ...}",
                             "body")
    values: dict[str, Any] = {}
    for key, value in body.items():
        name = _BODY_FIELDS.get(key)
        if name is None:
            raise TranscodeError(f"unknown field {_clip(str(key))}; a transcode takes source, templateId or outputs, "
                                 "outputDir, priority, metadata", str(key)[:64])
        if name in values:
            raise TranscodeError(f"{name} is given twice (camelCase and snake_case)", name)
        if value is None:
            raise TranscodeError(f"{key} is null; leave it out instead", key)
        values[name] = value
    t = Transcode(source=area_path(values.get("source"), "source"))
    template_id, outputs = values.get("template_id"), values.get("outputs")
    if (template_id is None) == (outputs is None):
        raise TranscodeError("give exactly one of templateId (a job template) and outputs (OutputSpecs)",
                             "templateId" if template_id is not None else "outputs")
    if template_id is not None:
        if not isinstance(template_id, str) or not re.match(r"^[a-z][a-z0-9-]{3,62}$", template_id):
            raise TranscodeError(f"templateId {_clip(str(template_id))} is not a template id: 4-63 lowercase "
                                 "letters, digits or '-', starting with a letter", "templateId")
        t.template_id = template_id
    else:
        t.outputs = parse_outputs(outputs)
    output_dir = values.get("output_dir")
    if output_dir is not None:  # a folder: a trailing / is fine
        t.output_dir = area_path(output_dir[:-1] if isinstance(output_dir, str) and output_dir.endswith("/")
                                 else output_dir, "outputDir")
    priority = values.get("priority")
    if priority is not None:
        if not isinstance(priority, str) or priority not in Job.Priority.keys():
            raise TranscodeError(f"priority must be one of {', '.join(Job.Priority.keys()[1:])}", "priority")
        t.priority = Job.Priority.Value(priority)  # PRIORITY_UNSPECIFIED: MEDIUM, as in CreateJob
    metadata = values.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise TranscodeError("metadata must be an object of strings", "metadata")
        t.metadata = dict(metadata)  # the API checks its limits
    return t


# -- the API calls both fronts make -----------------------------------------------------


async def submit(upstream: Upstream, metadata: list[tuple[str, str]], t: Transcode) -> Job:
    """Enqueue the transcode: JobService.CreateJob of a TRANSCODE job."""
    params: dict[str, Any] = {"source": t.source}
    if t.outputs:
        params["outputs"] = t.outputs
    if t.output_dir:
        params["output_dir"] = t.output_dir
    struct = struct_pb2.Struct()
    struct.update(params)
    req = jsvc.CreateJobRequest(type=TRANSCODE, params=struct, template_id=t.template_id, priority=t.priority,
                                metadata=t.metadata, request_id=t.request_id)
    job: Job = await upstream.stubs["JobService"].CreateJob(req, metadata=metadata, timeout=CALL_TIMEOUT_S)
    return job


def _not_a_transcode(job_id: str) -> TranscodeError:
    return TranscodeError(f"no transcode {_clip(job_id, 40)}", "", grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")


async def get_transcode(upstream: Upstream, metadata: list[tuple[str, str]], job_id: str) -> Job:
    """The TRANSCODE job `job_id`; any other job is not found here."""
    job: Job = await upstream.stubs["JobService"].GetJob(jsvc.GetJobRequest(id=job_id), metadata=metadata,
                                                         timeout=CALL_TIMEOUT_S)
    if job.type != TRANSCODE:
        raise _not_a_transcode(job_id)
    return job


async def cancel_transcode(upstream: Upstream, metadata: list[tuple[str, str]], job: Job, reason: str) -> Job:
    """JobService.AbortJob: a waiting job is Cancelled at once, a running one
    Cancelling until its worker stops; a finished one FAILED_PRECONDITION."""
    done: Job = await upstream.stubs["JobService"].AbortJob(jsvc.AbortJobRequest(id=job.id, reason=reason),
                                                           metadata=metadata, timeout=CALL_TIMEOUT_S)
    return done


async def read_json_body(request: web.Request, limit: int = MAX_REQUEST_BYTES) -> Any:
    """The request's JSON body (None when empty); TranscodeError when it is
    not JSON, web.HTTPRequestEntityTooLarge past `limit`."""
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(64 * 1024):  # a chunked body has no length to check first
        size += len(chunk)
        if size > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise TranscodeError(f"the body is not JSON: {str(e)[:200]}", "body", reason="BODY_NOT_JSON") from None
    try:  # JSON's \ud800 escapes can make text that is not Unicode, which no API call can carry
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise TranscodeError("the body has a string with an unpaired surrogate (\\ud800-\\udfff)", "body",
                             reason="BODY_NOT_JSON") from None
    return body


# -- the shim's routes ---------------------------------------------------------------


def _shim_url(request: web.Request, job_id: str) -> str:
    return f"{base_url(request)}/v1/transcodes/{job_id}"


def _answer(request: web.Request, job: Job, status: int = 200) -> web.Response:
    body = {"async": True, **job_summary(job, _shim_url(request, job.id), account_id(job.project))}
    headers = {"Location": body["jobUrl"]} if status == 202 else None
    return web.Response(status=status, text=json.dumps(body, separators=(",", ":")),
                        content_type="application/json", headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_METADATA_VALUE = re.compile(r"^[\x20-\x7e]*$")  # what gRPC metadata may carry


def shim_metadata(request: web.Request) -> list[tuple[str, str]]:
    """The caller's API key for the gRPC calls (upstream.call_metadata); a
    header no key can be (non-ASCII, control characters) is refused here,
    as gRPC could not even send it."""
    md = call_metadata(request)
    if any(not _METADATA_VALUE.match(v) for _k, v in md):
        raise TranscodeError("the Authorization header has characters no API key has", "Authorization",
                             grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID")
    return md


def _mediajobs_errors(fn: Handler) -> Handler:
    """The shim's errors as mediajobs' JSON errors."""
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except TranscodeError as e:
            if e.code == grpc.StatusCode.INVALID_ARGUMENT:
                return bad_request(e.message, e.field, e.reason)
            return plain_error(e.code, e.message, e.reason)
        except web.HTTPRequestEntityTooLarge:
            return plain_error(grpc.StatusCode.INVALID_ARGUMENT, f"a transcode request is at most "
                               f"{MAX_REQUEST_BYTES} bytes", "BODY_TOO_LARGE", http=413)
        except grpc.aio.AioRpcError as e:
            return error_response(status_of(e))
    return handle


def add_routes(app: web.Application, upstream: Upstream) -> None:
    @_mediajobs_errors
    async def create(request: web.Request) -> web.StreamResponse:
        t = parse_shim_body(await read_json_body(request))
        key = request.headers.get("Idempotency-Key")
        if key is not None:
            if not 1 <= len(key) <= 128:
                raise TranscodeError("Idempotency-Key must be 1-128 characters", "Idempotency-Key")
            t.request_id = key
        return _answer(request, await submit(upstream, shim_metadata(request), t), 202)

    @_mediajobs_errors
    async def get(request: web.Request) -> web.StreamResponse:
        return _answer(request, await get_transcode(upstream, shim_metadata(request), request.match_info["job_id"]))

    @_mediajobs_errors
    async def cancel(request: web.Request) -> web.StreamResponse:
        md = shim_metadata(request)
        job = await get_transcode(upstream, md, request.match_info["job_id"])
        return _answer(request, await cancel_transcode(upstream, md, job, "cancelled with DELETE /v1/transcodes"))

    app.router.add_post("/v1/transcodes", create)
    app.router.add_get(r"/v1/transcodes/{job_id:[^/:]{1,64}}", get, allow_head=False)
    app.router.add_delete(r"/v1/transcodes/{job_id:[^/:]{1,64}}", cancel)
    _describe(app)


# -- the shim in /openapi.json --------------------------------------------------------------

_PATH_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_PATH_CHARS,
                "pattern": r"^(?![/~])(?!file:)(?!.*(^|/)\.{0,2}(/|$))[^\\\x00-\x1f\x7f]+$",
                "description": "A path relative to the project's storage area, without `.`, `..` or empty segments"}
_DIR_SCHEMA = {**_PATH_SCHEMA, "pattern": r"^(?![/~])(?!file:)(?!.*//)(?!(.*/)?\.{1,2}(/|$))[^\\\x00-\x1f\x7f]+$",
               "description": "A folder relative to the project's storage area (a trailing / is fine)"}

def _int(high: int, **kw: Any) -> dict[str, Any]:
    return {"type": "integer", "minimum": 0, "maximum": high, **kw}


_OUTPUT_SCHEMA = {
    "type": "object",
    "description": "An OutputSpec (mediajobs.v1.OutputSpec; its snake_case names work too; container defaults "
                   "to mp4) and an optional `path`; names unique within the request",
    "required": ["name"],
    "additionalProperties": False,
    "anyOf": [{"required": ["videoCodec"], "properties": {"videoCodec": {"const": "h264"}}},
              {"required": ["audioCodec"], "properties": {"audioCodec": {"const": "aac"}}}],
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_.\\-]{1,64}$"}, "container": {"enum": ["mp4"]},
        "videoCodec": {"enum": ["", "h264"]}, "audioCodec": {"enum": ["", "aac"]},
        "width": _int(8192, multipleOf=2), "height": _int(8192, multipleOf=2),
        "scale": {"type": "number", "minimum": 0, "maximum": 4}, "videoBitRateBps": _int(500_000_000),
        "frameRate": {"type": "number", "minimum": 0, "maximum": 240}, "audioBitRateBps": _int(1_536_000),
        "audioSampleRate": {"enum": [0, *AAC_SAMPLE_RATES]}, "audioChannels": _int(2),
        "preset": {"enum": ["", *X264_PRESETS]}, "gopSize": _int(1000), "allowUpscale": {"type": "boolean"},
        "path": _PATH_SCHEMA,
    },
}
TRANSCODE_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object", "title": "TranscodeRequest", "additionalProperties": False, "required": ["source"],
    "oneOf": [{"required": ["templateId"]}, {"required": ["outputs"]}],
    "properties": {
        "source": _PATH_SCHEMA,
        "templateId": {"type": "string", "pattern": "^[a-z][a-z0-9-]{3,62}$",
                       "description": "A job template (GET /v1/jobTemplates)"},
        "outputs": {"type": "array", "minItems": 1, "maxItems": MAX_OUTPUTS, "items": _OUTPUT_SCHEMA},
        "outputDir": _DIR_SCHEMA,
        "priority": {"enum": Job.Priority.keys()},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
TRANSCODE_JOB_SCHEMA: dict[str, Any] = {
    "type": "object", "title": "TranscodeJob",
    "description": "Bytescale's async job object (ProcessFileAndSave's async response)",
    "required": ["async", "jobUrl", "jobDocs", "jobId", "jobType", "accountId", "created", "lastUpdated", "status",
                 "summary", "error"],
    "properties": {
        "async": {"const": True}, "jobUrl": {"type": "string"}, "jobDocs": {"const": JOB_DOCS},
        "jobId": {"type": "string"}, "jobType": {"enum": [VIDEO_JOB, AUDIO_JOB]},
        "accountId": {"type": "string", "minLength": 7, "maxLength": 7},
        "created": {"type": "integer", "minimum": 0}, "lastUpdated": {"type": "integer", "minimum": 0},
        "status": {"enum": ["Created", "Pending", "Running", "Cancelling", "Succeeded", "Failed", "Cancelled"]},
        "summary": {"type": "object"},
        "error": {"oneOf": [{"type": "null"}, {"type": "object", "required": ["timestamp", "message", "code"]}]},
    },
}


def _describe(app: web.Application) -> None:
    from . import openapi
    job = {"content": {"application/json": {"schema": TRANSCODE_JOB_SCHEMA}}}
    job_id = [{"name": "jobId", "in": "path", "required": True, "description": "The job's id (a ULID)",
               "schema": {"type": "string", "pattern": "^[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}$"}}]
    openapi.document(app, "/v1/transcodes", "post", {
        "operationId": "CreateTranscode", "tags": ["transcodes"],
        "summary": "Transcode a file of the project's storage area (a TRANSCODE job); answers Bytescale's async job",
        "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 128}}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": TRANSCODE_REQUEST_SCHEMA}}},
        "responses": {**openapi.error_responses(body=True),
                      "202": {"description": "The job, queued; Location is its jobUrl", **job}},
    })
    openapi.document(app, "/v1/transcodes/{jobId}", "get", {
        "operationId": "GetTranscode", "tags": ["transcodes"], "summary": "A transcode's state (poll its jobUrl)",
        "parameters": job_id, "responses": {**openapi.error_responses(), "200": {"description": "The job", **job}},
    })
    openapi.document(app, "/v1/transcodes/{jobId}", "delete", {
        "operationId": "CancelTranscode", "tags": ["transcodes"],
        "summary": "Cancel a transcode: Cancelled at once while waiting, Cancelling until its worker stops",
        "parameters": job_id,
        "responses": {**openapi.error_responses(), "200": {"description": "The job after the cancel", **job}},
    })

