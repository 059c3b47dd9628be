"""The Bytescale dialect: enough of Bytescale's API that the published
`@bytescale/sdk` 3.62.0 (`JobApi`, `FileApi.processFileAndSave`) works
unmodified against this gateway, with `apiUrl` and `cdnUrl` both set to it:

    GET    {apiUrl}/v2/accounts/{accountId}/jobs/{jobType}/{jobId}   JobApi.getJob
    DELETE {apiUrl}/v2/accounts/{accountId}/jobs/{jobType}/{jobId}   JobApi.cancelJob
    GET    {apiUrl}/v2/accounts/{accountId}/jobs?jobType=...         JobApi.listRecentJobs
    POST   {cdnUrl}/{accountId}/save/{transformation}{filePath}      FileApi.processFileAndSave

Jobs are the project's TRANSCODE jobs, as the transcoding shim
(transcode.py) shows them; processFileAndSave enqueues through the shim's
code and answers the async JobSummary (`async: true`). The 10 most recent
jobs are listed for `jobType=A&jobType=B` (or `jobType=A,B`) and for the
SDK's own form, which loses the parameter name: `0=A&1=B`; with one type
asked for, the 10 most recent of it among the project's 500 most recent
transcodes. A jobType in a path that is not the job's is "not found".

Credentials. A mediajobs API key (`mjk_<id>_<secret>`) belongs to a
project; a Bytescale key carries an account id. One maps onto the other:

    Bytescale account id  = account_id(project): 7 base-62 characters of a
                            hash of the project's name
    Bytescale secret key  = "secret_" + account id + mediajobs API key
                            e.g. secret_Qx81bTfmjk_01j9..._Zm9v...

(bytescale_key() makes one; from a shell: `MEDIAJOBS_API_KEY=mjk_... python
-m mediajobs.server.gateway.bytescale PROJECT`, which prints the key and,
on stderr, the account id.) The SDK takes the 7 characters after the first
`_` as the account id, as Bytescale's keys do. The gateway splits the key:
the mediajobs key goes on to the gRPC API (which checks it, its role and
its project), the account id must be the account of the key's project
(AdminService.GetCaller tells the gateway which that is; else 401
`invalid_api_key`, before anything is done) and the one in the request's
path (any other account is 404 `account_not_found`, exactly as an account
that does not exist). Without keys (`--auth none`) every call works in the
home project whatever account the key names, so any key the SDK accepts
(`secret_` and at least 7 letters or digits) works; its part after the
account id is forwarded only when it is a mediajobs key (`mjk_...`).

processFileAndSave. `transformation`:
- `video` (ProcessVideoJob): one mp4 H.264/AAC output named `video`.
  Parameters: f=mp4-h264 (the only format), w, h (even pixels, up to 8192;
  one of them keeps the aspect ratio), fps (1-240), vb (video kbit/s,
  1-500000), ab (audio kbit/s, 8-1536), mute (true: no audio), preset (an
  x264 preset), gop (keyframe interval, 1-1000 frames).
- `audio` (ProcessAudioJob): one AAC-in-MP4 output named `audio`.
  Parameters: f=aac or m4a, br (kbit/s, 8-1536), sr (an AAC sample rate in
  Hz), ch (1 or 2).
- any other name: a mediajobs job template of the project (a Bytescale
  "transformation preset"), e.g. `mp4-h264-720p`; it takes no parameters.
  `image` and `raw` (no media job does them) are refused.
Any other parameter, a repeated one, or a value out of range is a 400
(`unsupported_transformation_param`, `invalid_transformation_param`).
`filePath` is the source in the project's storage area (`/in/clip.mp4` is
`in/clip.mp4` there). The body's `destination` is where the output goes:
a file path (`/out/clip.mp4`), a folder (`/out/`, the output named
`<output name>.mp4` in it), or a DynamicFilePath `{folderPath, fileName}`
without variables; for a template it must be a folder. Without one, outputs
go to `/transcodes/<jobId>/`. `metadata`, `tags` and `extendedParams` of the
body have no counterpart here and are refused when not empty.

Errors are Bytescale's: a non-2xx status with
`{"error": {"code": "<snake_case>", "message": "...", "details": {...}}}`
(the SDK throws BytescaleApiError with `.errorCode`). `details` carries the
gRPC status name, the ErrorInfo reason and the offending fields. Codes:
401 unauthorized / invalid_api_key, 403 permission_denied, 404
account_not_found / job_not_found / transformation_not_found /
route_not_found, 400 invalid_request / invalid_job_type /
invalid_file_path / unsupported_transformation(_param) /
invalid_transformation_param / unsupported_destination /
unsupported_request_field, 405 method_not_allowed, 409 job_finished,
413 request_too_large, 429 rate_limited (with Retry-After), 503
service_unavailable, 500 internal_error. The gateway's own 404/405/413/500
under /v2/ take this form too.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import grpc
from aiohttp import web

from mediajobs.v1 import admin_service_pb2 as asvc
from mediajobs.v1 import job_service_pb2 as jsvc

from .app import ERROR_FORMS_KEY
from .errors import code_of, details_of, status_of
from .transcode import (AUDIO_JOB, CALL_TIMEOUT_S, MAX_REQUEST_BYTES, TRANSCODE, VIDEO_JOB, X264_PRESETS,
                        AAC_SAMPLE_RATES, Job, OutputSpec, Transcode, TranscodeError, account_id, area_path,
                        base_url, cancel_transcode, check_output, get_transcode, job_summary, job_type,
                        output_params, read_json_body, submit)
from .upstream import Upstream

log = logging.getLogger("mediajobs.gateway.bytescale")

SECRET_PREFIX = "secret_"
MEDIAJOBS_KEY_PREFIX = "mjk_"
MAX_KEY_CHARS = 512
ACCOUNT_RE = re.compile(r"^[A-Za-z0-9]{7}$")
KEY_CHARS = re.compile(r"^[\x21-\x7e]+$")
# Bytescale's AccountJobType; mediajobs makes only the two Process*Job kinds.
ACCOUNT_JOB_TYPES = ("ProcessImageJob", "ProcessVideoJob", "ProcessAudioJob", "AntivirusJob", "ResetCacheJob",
                     "DeleteFolderBatchJob", "DeleteFileBatchJob", "CopyFolderBatchJob", "CopyFileBatchJob")
RECENT_JOBS = 10
RECENT_SCAN_LIMIT = 500
MAX_QUERY_VALUES = 50


def bytescale_key(project: str, api_key: str) -> str:
    """The Bytescale secret key of mediajobs API key `api_key` of `project`."""
    if not api_key.startswith(MEDIAJOBS_KEY_PREFIX):
        raise ValueError("api_key must be a mediajobs API key (mjk_...)")
    return SECRET_PREFIX + account_id(project) + api_key


# -- errors --------------------------------------------------------------------------


class BytescaleError(Exception):
    def __init__(self, http: int, code: str, message: str, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.http, self.code, self.message, self.details, self.headers = http, code, message, details, headers

    def response(self) -> web.Response:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            error["details"] = self.details
        headers = dict(self.headers or {})
        if self.http == 401:
            headers.setdefault("WWW-Authenticate", 'Bearer realm="bytescale"')
        return web.Response(status=self.http, text=json.dumps({"error": error}), content_type="application/json",
                            headers=headers)


# gRPC code -> (HTTP status, Bytescale code); some ErrorInfo reasons get a code of their own.
_BY_GRPC = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "conflict"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, "failed_precondition"),
    grpc.StatusCode.ABORTED: (409, "conflict"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "invalid_api_key"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_denied"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limited"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
}
_BY_REASON = {
    "JOB_NOT_FOUND": (404, "job_not_found"),
    "TEMPLATE_NOT_FOUND": (404, "transformation_not_found"),
    "TEMPLATE_IS_LIVE": (400, "unsupported_transformation"),
    "JOB_FINISHED": (409, "job_finished"),
}


def _rpc_error(e: grpc.aio.AioRpcError) -> BytescaleError:
    st = status_of(e)
    code = code_of(st.code)
    http, name = _BY_GRPC.get(code, (500, "internal_error"))
    details: dict[str, Any] = {"grpcStatus": code.name}
    headers: dict[str, str] = {}
    rich = details_of(st)
    if rich.reason:
        details["reason"] = rich.reason
        http, name = _BY_REASON.get(rich.reason, (http, name))
    if rich.violations:
        details["fields"] = {v.field: v.description for v in rich.violations}
    if rich.retry_after_s is not None:
        headers["Retry-After"] = rich.retry_after
    message = st.message or code.name
    if code == grpc.StatusCode.UNAUTHENTICATED:
        message += ("; a Bytescale key here is secret_<account id><mediajobs API key> (see "
                    "mediajobs.server.gateway.bytescale.bytescale_key)")
    return BytescaleError(http, name, message, details, headers)


def _transcode_error(e: TranscodeError) -> BytescaleError:
    if e.code == grpc.StatusCode.NOT_FOUND:
        return BytescaleError(404, "job_not_found", e.message)
    if e.field in ("source", "filePath"):
        return BytescaleError(400, "invalid_file_path", e.message)
    return BytescaleError(400, "invalid_request", e.message, {"field": e.field} if e.field else None)


def error_form(request: web.Request, code: grpc.StatusCode, message: str, reason: str, http: int
               ) -> web.StreamResponse:
    """The gateway's own 404/405/413/500 under /v2/, Bytescale-shaped."""
    names = {"ROUTE_NOT_FOUND": "route_not_found", "METHOD_NOT_ALLOWED": "method_not_allowed",
             "BODY_TOO_LARGE": "request_too_large", "GATEWAY_ERROR": "internal_error"}
    headers = {"Allow": message.rpartition("allowed: ")[2]} if http == 405 else None
    if reason == "ROUTE_NOT_FOUND":
        message = f"no Bytescale route {request.method} {request.path[:200]}"
    return BytescaleError(http, names.get(reason, reason.lower()), message, headers=headers).response()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _bytescale_errors(fn: Handler) -> Handler:
    """Every way a handler can fail, as a Bytescale error (also on the save
    route, which no path prefix of the error forms covers)."""
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except BytescaleError as e:
            return e.response()
        except TranscodeError as e:
            return _transcode_error(e).response()
        except grpc.aio.AioRpcError as e:
            return _rpc_error(e).response()
        except web.HTTPRequestEntityTooLarge:
            return BytescaleError(413, "request_too_large",
                                  f"the body is larger than {MAX_REQUEST_BYTES} bytes, the limit").response()
        except Exception:  # noqa: BLE001 - a bug: logged, never shown
            log.exception("%s %s failed", request.method, request.path[:200])
            return BytescaleError(500, "internal_error", "the gateway failed to handle this request; it is logged"
                                  ).response()
    return handle


# -- credentials ---------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    account: str  # the account id the key names
    metadata: list[tuple[str, str]]  # what goes onto the gRPC calls


def credentials(request: web.Request) -> Credentials:
    """The Bytescale key of the request, split (see the module docstring)."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() != "bearer " or not auth[7:].strip():
        raise BytescaleError(401, "unauthorized", "this API needs a secret API key: Authorization: Bearer "
                                                  "secret_<account id><mediajobs API key>")
    key = auth[7:].strip()
    if len(key) > MAX_KEY_CHARS:
        raise BytescaleError(401, "invalid_api_key", f"the API key is longer than {MAX_KEY_CHARS} characters")
    if not KEY_CHARS.match(key):
        raise BytescaleError(401, "invalid_api_key", "the API key has characters no key has (printable ASCII only)")
    if not key.startswith(SECRET_PREFIX):
        raise BytescaleError(401, "invalid_api_key", "this API needs a secret_* API key: secret_<account id>"
                                                     "<mediajobs API key>")
    account, api_key = key[len(SECRET_PREFIX):][:7], key[len(SECRET_PREFIX) + 7:]
    if not ACCOUNT_RE.match(account):
        raise BytescaleError(401, "invalid_api_key", "the API key must start with secret_ and a 7-character "
                                                     "account id (letters and digits)")
    metadata = [("authorization", "Bearer " + api_key)] if api_key.startswith(MEDIAJOBS_KEY_PREFIX) else []
    return Credentials(account, metadata)


async def authorize(upstream: Upstream, request: web.Request) -> tuple[Credentials, str]:
    """The request's credentials and the path's account id: the key's
    account must be its project's (unless the server has no keys), and the
    path's the key's."""
    creds = credentials(request)
    try:
        who = await upstream.stubs["AdminService"].GetCaller(asvc.GetCallerRequest(), metadata=creds.metadata,
                                                              timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as e:
        raise _rpc_error(e) from None
    if who.role and account_id(who.project) != creds.account:
        raise BytescaleError(401, "invalid_api_key",
                             f"the API key's account id {creds.account} is not the account of its project; make "
                             "keys with bytescale_key(project, mediajobs key)")
    account = request.match_info["account_id"]
    if account != creds.account:
        raise BytescaleError(404, "account_not_found", f"no account {account[:16]!r}")
    return creds, account


def _job_url(request: web.Request, account: str, job: Job) -> str:
    return f"{base_url(request)}/v2/accounts/{account}/jobs/{job_type(job)}/{job.id}"


def _json(body: Any) -> web.Response:
    return web.Response(text=json.dumps(body, separators=(",", ":")), content_type="application/json")


# -- processFileAndSave: transformation -> outputs -----------------------------------------


def _single(query: Any, key: str) -> str | None:
    values = query.getall(key, [])
    if len(values) > 1:
        raise BytescaleError(400, "invalid_transformation_param", f"{key} is given {len(values)} times; give it once")
    return values[0] if values else None


def _number(query: Any, key: str, low: float, high: float, *, integer: bool = True, even: bool = False
            ) -> float | None:
    text = _single(query, key)
    if text is None:
        return None
    try:
        value = float(int(text)) if integer else float(text)
    except ValueError:
        value = float("nan")
    if not low <= value <= high or (even and value % 2):
        kind = "an even number" if even else "an integer" if integer else "a number"
        raise BytescaleError(400, "invalid_transformation_param",
                             f"{key} must be {kind} from {low:g} to {high:g}, got {text[:32]!r}")
    return value


def _choice(query: Any, key: str, allowed: tuple[str, ...], default: str) -> str:
    text = _single(query, key)
    if text is None:
        return default
    if text not in allowed:
        raise BytescaleError(400, "unsupported_transformation_param",
                             f"{key}={text[:32]} is not supported here; use {' or '.join(allowed)}")
    return text


VIDEO_PARAMS = ("f", "w", "h", "fps", "vb", "ab", "mute", "preset", "gop")
AUDIO_PARAMS = ("f", "br", "sr", "ch")


def _only(query: Any, allowed: tuple[str, ...], transformation: str) -> None:
    for key in query.keys():
        if key not in allowed:
            raise BytescaleError(400, "unsupported_transformation_param",
                                 f"{transformation} does not take {key[:32]!r} here; it takes "
                                 f"{', '.join(allowed) if allowed else 'no parameters'}")


def video_output(query: Any) -> OutputSpec:
    _only(query, VIDEO_PARAMS, "video")
    _choice(query, "f", ("mp4-h264",), "mp4-h264")
    spec = OutputSpec(name="video", container="mp4", video_codec="h264", audio_codec="aac")
    if (w := _number(query, "w", 2, 8192, even=True)) is not None:
        spec.width = int(w)
    if (h := _number(query, "h", 2, 8192, even=True)) is not None:
        spec.height = int(h)
    if (fps := _number(query, "fps", 1, 240, integer=False)) is not None:
        spec.frame_rate = fps
    if (vb := _number(query, "vb", 1, 500_000)) is not None:
        spec.video_bit_rate_bps = int(vb) * 1000
    if (ab := _number(query, "ab", 8, 1536)) is not None:
        spec.audio_bit_rate_bps = int(ab) * 1000
    if _choice(query, "mute", ("true", "false"), "false") == "true":
        spec.audio_codec = ""
        spec.audio_bit_rate_bps = 0
    spec.preset = _choice(query, "preset", X264_PRESETS, "")
    if (gop := _number(query, "gop", 1, 1000)) is not None:
        spec.gop_size = int(gop)
    return spec


def audio_output(query: Any) -> OutputSpec:
    _only(query, AUDIO_PARAMS, "audio")
    _choice(query, "f", ("aac", "m4a"), "aac")
    spec = OutputSpec(name="audio", container="mp4", audio_codec="aac")
    if (br := _number(query, "br", 8, 1536)) is not None:
        spec.audio_bit_rate_bps = int(br) * 1000
    if (sr := _single(query, "sr")) is not None:
        if not sr.isdigit() or int(sr) not in AAC_SAMPLE_RATES:
            raise BytescaleError(400, "invalid_transformation_param",
                                 f"sr must be one of {', '.join(map(str, AAC_SAMPLE_RATES))}, got {sr[:32]!r}")
        spec.audio_sample_rate = int(sr)
    if (ch := _number(query, "ch", 1, 2)) is not None:
        spec.audio_channels = int(ch)
    return spec


_DYNAMIC_PATH_KEYS = ("folderPath", "fileName", "folderPathVariablesEnabled", "fileNameVariablesEnabled")


def _destination(raw: Any, single_output: bool) -> tuple[str, str]:
    """The body's destination as (output path, output dir), each relative
    to the storage area ("" when not given)."""
    if raw is None:
        return "", ""
    folder: Any
    name: Any = None
    if isinstance(raw, str):
        if raw.endswith("/"):
            folder = raw
        elif not single_output:
            raise TranscodeError("this transformation makes several outputs: its destination must be a folder "
                                 "(ending with /)", "destination")
        else:
            return area_path(raw.lstrip("/"), "destination"), ""
    elif isinstance(raw, dict):
        unknown = [k for k in raw if k not in _DYNAMIC_PATH_KEYS]
        if unknown:
            raise TranscodeError(f"destination does not take {unknown[0][:32]!r}; it takes "
                                 f"{', '.join(_DYNAMIC_PATH_KEYS)}", "destination")
        if raw.get("folderPathVariablesEnabled") or raw.get("fileNameVariablesEnabled"):
            raise BytescaleError(400, "unsupported_destination", "path variables are not supported here; give "
                                                                 "plain folderPath and fileName")
        folder, name = raw.get("folderPath", "/"), raw.get("fileName")
        if not isinstance(folder, str) or (name is not None and not isinstance(name, str)):
            raise TranscodeError("destination.folderPath and destination.fileName must be strings", "destination")
        if name is not None and (not single_output or "/" in name):
            raise TranscodeError("destination.fileName must be a file name (no /), for a single-output "
                                 "transformation", "destination")
    else:
        raise TranscodeError("destination must be a file path or a DynamicFilePath object", "destination")
    folder = folder.strip("/")
    if name:
        return area_path(f"{folder}/{name}" if folder else name, "destination"), ""
    return "", area_path(folder, "destination") if folder else ""


def _save_body(body: Any) -> Any:
    """The ProcessFileAndSave request's destination; the rest refused."""
    if body is None:
        return None
    if not isinstance(body, dict):
        raise TranscodeError("the body must be a JSON object: {\"destination\": ...}", "body")
    for key, value in body.items():
        if key == "destination":
            continue
        if key in ("metadata", "tags", "extendedParams"):
            if value in (None, {}, []):
                continue
            raise BytescaleError(400, "unsupported_request_field",
                                 f"{key} is not supported here (mediajobs keeps no file metadata); leave it out")
        raise TranscodeError(f"unknown field {key[:32]!r}; the body takes destination", "body")
    return body.get("destination")


def _transcode_of(transformation: str, file_path: str, query: Any, body: Any) -> Transcode:
    source = area_path(file_path, "filePath")
    destination = _save_body(body)
    if transformation in ("video", "audio"):
        spec = video_output(query) if transformation == "video" else audio_output(query)
        check_output(spec, "transformationParams")
        path, output_dir = _destination(destination, True)
        return Transcode(source=source, outputs=[output_params(spec, path)], output_dir=output_dir)
    if transformation in ("image", "raw"):
        raise BytescaleError(400, "unsupported_transformation",
                             f"{transformation} is not supported here; use video, audio or a job template id")
    if not re.match(r"^[a-z][a-z0-9-]{3,62}$", transformation):
        raise BytescaleError(404, "transformation_not_found",
                             f"no transformation {transformation[:64]!r}: use video, audio or a job template id")
    _only(query, (), transformation)
    _path, output_dir = _destination(destination, False)
    return Transcode(source=source, template_id=transformation, output_dir=output_dir)


# -- routes --------------------------------------------------------------------------


def _job_types_asked(query: Any) -> set[str]:
    """listRecentJobs' job types: jobType=A&jobType=B, jobType=A,B, or the
    SDK's 0=A&1=B."""
    asked: set[str] = set()
    values = 0
    for key, value in query.items():
        values += 1
        if values > MAX_QUERY_VALUES:
            raise BytescaleError(400, "invalid_request", f"at most {MAX_QUERY_VALUES} query parameters")
        if key != "jobType" and not key.isdigit():
            raise BytescaleError(400, "invalid_request", f"unknown query parameter {key[:32]!r}; this takes jobType")
        for name in value.split(","):
            if name not in ACCOUNT_JOB_TYPES:
                raise BytescaleError(400, "invalid_job_type", f"{name[:40]!r} is not a job type; use one of "
                                                              f"{', '.join(ACCOUNT_JOB_TYPES)}")
            asked.add(name)
    return asked


def add_routes(app: web.Application, upstream: Upstream) -> None:
    jobs = upstream.stubs["JobService"]

    async def find(request: web.Request, creds: Credentials) -> Job:
        """The path's job, if it is a transcode of the path's jobType."""
        asked = request.match_info["job_type"]
        if asked not in ACCOUNT_JOB_TYPES:
            raise BytescaleError(400, "invalid_job_type",
                                 f"{asked[:40]!r} is not a job type; use one of {', '.join(ACCOUNT_JOB_TYPES)}")
        job = await get_transcode(upstream, creds.metadata, request.match_info["job_id"])
        if job_type(job) != asked:
            raise TranscodeError(f"no {asked} {request.match_info['job_id']}", code=grpc.StatusCode.NOT_FOUND)
        return job

    @_bytescale_errors
    async def get_job(request: web.Request) -> web.StreamResponse:
        creds, account = await authorize(upstream, request)
        job = await find(request, creds)
        return _json(job_summary(job, _job_url(request, account, job), account, rooted=True))

    @_bytescale_errors
    async def cancel_job(request: web.Request) -> web.StreamResponse:
        creds, account = await authorize(upstream, request)
        job = await cancel_transcode(upstream, creds.metadata, await find(request, creds),
                                     "cancelled with the Bytescale JobApi")
        return _json(job_summary(job, _job_url(request, account, job), account, rooted=True))

    @_bytescale_errors
    async def list_recent_jobs(request: web.Request) -> web.StreamResponse:
        creds, account = await authorize(upstream, request)
        wanted = (_job_types_asked(request.query) or {VIDEO_JOB, AUDIO_JOB}) & {VIDEO_JOB, AUDIO_JOB}
        items: list[dict[str, Any]] = []
        token, scanned = "", 0
        # Both kinds: the 10 newest transcodes. One: newest first until 10 match.
        page = RECENT_JOBS if len(wanted) == 2 else 50
        while wanted and len(items) < RECENT_JOBS and scanned < RECENT_SCAN_LIMIT:
            reply = await jobs.ListJobs(jsvc.ListJobsRequest(types=[TRANSCODE], order_by="create_time desc",
                                                             page_size=page, page_token=token),
                                        metadata=creds.metadata, timeout=CALL_TIMEOUT_S)
            for job in reply.jobs:
                scanned += 1
                if job_type(job) in wanted and len(items) < RECENT_JOBS:
                    items.append(job_summary(job, _job_url(request, account, job), account, rooted=True))
            token = reply.next_page_token
            if not token:
                break
        return _json({"items": items})

    @_bytescale_errors
    async def process_file_and_save(request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            raise BytescaleError(405, "method_not_allowed", f"{request.method} is not allowed on "
                                 f"/{{accountId}}/save/...; allowed: POST", headers={"Allow": "POST"})
        creds, account = await authorize(upstream, request)
        transformation, sep, file_path = request.match_info["tail"].removeprefix("/").partition("/")
        if not request.match_info["tail"].startswith("/") or not transformation:
            raise BytescaleError(404, "route_not_found", "the save route is POST /{accountId}/save/"
                                                         "{transformation}{filePath}")
        if not sep or not file_path:
            raise BytescaleError(400, "invalid_file_path", "filePath is missing: /{accountId}/save/"
                                                           "{transformation}/path/to/file")
        t = _transcode_of(transformation, file_path, request.query, await read_json_body(request))
        job = await submit(upstream, creds.metadata, t)
        return _json({"async": True, **job_summary(job, _job_url(request, account, job), account, rooted=True)})

    account = r"{account_id:[A-Za-z0-9]{7}}"
    job = rf"/v2/accounts/{account}/jobs/{{job_type:[^/]{{1,64}}}}/{{job_id:[^/]{{1,64}}}}"
    app.router.add_get(job, get_job, allow_head=False)
    app.router.add_delete(job, cancel_job)
    app.router.add_get(rf"/v2/accounts/{account}/jobs", list_recent_jobs, allow_head=False)
    # Every method, so a wrong one is a Bytescale 405 (no prefix of the
    # error forms covers a path that starts with an account id).
    app.router.add_route("*", rf"/{account}/save{{tail:.*}}", process_file_and_save)
    app[ERROR_FORMS_KEY]["/v2/"] = error_form


def main(argv: list[str] | None = None) -> int:
    """`python -m mediajobs.server.gateway.bytescale PROJECT`: the Bytescale
    secret key of the mediajobs key in MEDIAJOBS_API_KEY (else read from
    stdin) on stdout, its account id on stderr."""
    import os
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: MEDIAJOBS_API_KEY=mjk_... python -m mediajobs.server.gateway.bytescale PROJECT",
              file=sys.stderr)
        return 2
    api_key = os.environ.get("MEDIAJOBS_API_KEY") or sys.stdin.readline().strip()
    try:
        key = bytescale_key(args[0], api_key)
    except ValueError as e:
        print(f"bytescale: {e}", file=sys.stderr)
        return 2
    print(key)
    print(f"account id: {account_id(args[0])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
