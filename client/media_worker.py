"""The reference media worker: EXTRACT_MEDIA and TRANSCODE handlers on the
worker SDK, doing the work with `client.media` (PyAV) on files under a
storage root shared with the server.

    from mediajobs.client.media_worker import build_media_worker

    build_media_worker("127.0.0.1:50051", Path("/srv/media"), concurrency=2).run_sync()

Job params and results (snake_case keys). `source` is a path relative to the
storage root or a file:// URL of a path under it; `input` is accepted as an
alias of `source` (the name generic job scripts, e.g. Bytescale- or
Vidispine-style ones, tend to use).

- EXTRACT_MEDIA `{"source": "<path under the root>", "entry_id": "<optional>"}`
  -> `{"media_info_id", "duration_ms", "media_info": {...MediaInfo}}`; with an
  entry_id the media info is stored with MediaService.AddMediaInfo
  (request_id `<job_id>:<attempt>:source`: a retried call of one attempt
  stores it once; a new attempt, which may probe a re-encoded file, adds a
  new record).
- TRANSCODE `{"source", "entry_id", "output_dir", "outputs": [{<OutputSpec
  fields>, "path", "flavor_asset_id"}]}` -> `{"source", "outputs": [{"name",
  "flavor_asset_id", "path", "size_bytes", "media_info_id", "media_info":
  {...}}]}`. Entries' jobs name every output's path and flavor asset. A plain
  job (CreateJob with params.source and params.outputs, or with a template_id,
  whose outputs the server copies into params.outputs) needs neither: an
  output without a path goes to `<output_dir>/<name>.mp4`, output_dir
  defaulting to `transcodes/<job_id>`, and its path relative to the storage
  root comes back in the result. With an entry_id, each output with a
  flavor_asset_id gets its media info stored (request_id
  `<job_id>:<attempt>:<flavor_asset_id>`).

Unusable input (missing or corrupt source, a path outside the root, no or
unsupported outputs) fails the job for good; the server being UNAVAILABLE
while storing media info fails it retryably.
"""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any, Iterable

import grpc
from google.protobuf import json_format

from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import media_service_pb2 as msvc
from mediajobs.v1 import media_service_pb2_grpc as msvc_grpc

from . import media
from .client import DEFAULT_CHANNEL_OPTIONS
from .worker import JobCancelled, JobContext, RetryableError, Worker

EXTRACT_MEDIA = "EXTRACT_MEDIA"
TRANSCODE = "TRANSCODE"
# AddMediaInfo: per-call timeout, and in-handler retries of UNAVAILABLE
# before the job is failed retryably (a retry of TRANSCODE re-encodes).
CALL_TIMEOUT = 10.0
RETRY_DELAYS = (0.2, 0.5, 1.0)
_RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                              grpc.StatusCode.RESOURCE_EXHAUSTED})
_OUTPUT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class JobParamsError(ValueError):
    """Job params the handlers cannot use (missing or ill-typed fields)."""


def _message_dict(msg: Any) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


class MediaWorker(Worker):
    """A Worker with EXTRACT_MEDIA and TRANSCODE handlers working on files
    under `storage_root`. The sync gRPC channel it stores media info with is
    opened on first use and closed when `run()` returns."""

    def __init__(self, target: str, storage_root: Path, *, concurrency: int = 2, **worker_kwargs: Any) -> None:
        super().__init__(target, concurrency=concurrency, **worker_kwargs)
        root = Path(storage_root)
        if not root.is_dir():
            raise ValueError(f"storage root {str(root)!r} is not a directory")
        self.storage_root = Path(os.path.realpath(root))
        self._media_channel: grpc.Channel | None = None
        self._media_stub: msvc_grpc.MediaServiceStub | None = None
        self._channel_lock = threading.Lock()
        self.register(EXTRACT_MEDIA, self.extract_media)
        self.register(TRANSCODE, self.transcode)

    async def run(self, *, types: Iterable[str] | None = None, handle_signals: bool | None = None) -> None:
        try:
            await super().run(types=types, handle_signals=handle_signals)
        finally:
            self.close_media_channel()

    def close_media_channel(self) -> None:
        """Close the MediaService channel (a later call opens a new one)."""
        with self._channel_lock:
            if self._media_channel is not None:
                self._media_channel.close()
            self._media_channel = None
            self._media_stub = None

    @property
    def media_stub(self) -> msvc_grpc.MediaServiceStub:
        with self._channel_lock:
            if self._media_stub is None:
                # The same TLS and API key as the worker's own channel.
                options = list(self.channel_options or DEFAULT_CHANNEL_OPTIONS)
                channel = grpc.secure_channel(self.target, self.credentials, options=options) \
                    if self.credentials is not None else grpc.insecure_channel(self.target, options=options)
                self._media_channel = channel
                if self.api_key:
                    from .auth import KeyInterceptor

                    channel = grpc.intercept_channel(channel, KeyInterceptor(self.api_key))
                self._media_stub = msvc_grpc.MediaServiceStub(channel)
            return self._media_stub

    # -- helpers ---------------------------------------------------------------------

    def _root(self, ctx: JobContext) -> Path:
        """The job's project's area of the storage root: its paths are
        relative to it."""
        return Path(os.path.realpath(ctx.area_root(self.storage_root)))

    def _relative(self, ctx: JobContext, path: Path) -> str:
        return os.path.relpath(path, self._root(ctx))

    def _source(self, ctx: JobContext) -> tuple[str, Path]:
        source, alias = ctx.params.get("source"), ctx.params.get("input")
        if source is None or source == "":
            source = alias
        elif alias not in (None, "", source):
            raise JobParamsError("params.source and params.input (an alias of source) differ; give only source")
        if not isinstance(source, str) or not source:
            raise JobParamsError("params.source is required: the source's path relative to the storage root, "
                                 "or a file:// URL under it (params.input is taken as an alias)")
        return source, media.resolve_in_root(self._root(ctx), source)

    @staticmethod
    def _entry_id(ctx: JobContext) -> str:
        entry_id = ctx.params.get("entry_id") or ""
        if not isinstance(entry_id, str):
            raise JobParamsError("params.entry_id must be a string")
        return entry_id

    def add_media_info(self, ctx: JobContext, info: mres.MediaInfo, request_id: str) -> mres.MediaInfo:
        """MediaService.AddMediaInfo, retrying UNAVAILABLE a few times inside
        the handler; then RetryableError. Other refusals fail the job."""
        req = msvc.AddMediaInfoRequest(media_info=info, request_id=request_id)
        for attempt in range(len(RETRY_DELAYS) + 1):
            try:
                return self.media_stub.AddMediaInfo(req, timeout=CALL_TIMEOUT)
            except grpc.RpcError as e:
                code = e.code() if isinstance(e, grpc.Call) else grpc.StatusCode.UNKNOWN
                details = e.details() if isinstance(e, grpc.Call) else str(e)
                what = f"AddMediaInfo for entry {info.entry_id!r} ({request_id}) failed: {code.name}: {details}"
                if code not in _RETRYABLE_CODES:
                    raise RuntimeError(what) from e
                if attempt == len(RETRY_DELAYS):
                    raise RetryableError(what) from e
                if ctx.wait_cancelled(RETRY_DELAYS[attempt]):
                    raise JobCancelled(ctx.cancel_reason or "cancelled") from e
        raise AssertionError("unreachable")

    # -- handlers ------------------------------------------------------------------------

    def extract_media(self, ctx: JobContext) -> dict[str, Any]:
        """EXTRACT_MEDIA: probe the source; store the media info when the job
        names an entry."""
        source, path = self._source(ctx)
        entry_id = self._entry_id(ctx)
        info = media.probe(path, label=source)
        media_info_id = ""
        if entry_id:
            info.entry_id = entry_id
            info.flavor_asset_id = ""
            ctx.check_cancelled()
            stored = self.add_media_info(ctx, info, f"{ctx.job_id}:{ctx.attempt}:source")
            media_info_id = stored.id
            info = stored
        return {
            "media_info_id": media_info_id,
            "duration_ms": int(info.container_duration_ms or info.video_duration_ms or info.audio_duration_ms),
            "media_info": _message_dict(info),
        }

    def _outputs(self, ctx: JobContext) -> list[tuple[mres.OutputSpec, Path, str, str]]:
        """(spec, resolved path, relative path, flavor_asset_id) per params output."""
        raw = ctx.params.get("outputs")
        if not isinstance(raw, list) or not raw:
            raise JobParamsError("params.outputs is required: a non-empty list of output specifications "
                                 "(or create the job with a template_id)")
        output_dir = ctx.params.get("output_dir") or f"transcodes/{ctx.job_id}"
        if not isinstance(output_dir, str):
            raise JobParamsError("params.output_dir must be a path relative to the storage root")
        outs: list[tuple[mres.OutputSpec, Path, str, str]] = []
        for i, item in enumerate(raw):
            if not isinstance(item, dict):
                raise JobParamsError(f"params.outputs[{i}] must be an object")
            fields = dict(item)
            rel = fields.pop("path", None) or ""
            flavor_asset_id = fields.pop("flavor_asset_id", None) or ""
            if not isinstance(rel, str) or not isinstance(flavor_asset_id, str):
                raise JobParamsError(f"params.outputs[{i}]: path and flavor_asset_id must be strings")
            try:
                spec = json_format.ParseDict(fields, mres.OutputSpec(), ignore_unknown_fields=True)
            except json_format.ParseError as e:
                raise JobParamsError(f"params.outputs[{i}] is not an OutputSpec: {e}") from e
            if not spec.name:
                spec.name = f"output{i + 1}"
            if not _OUTPUT_NAME.match(spec.name):
                raise JobParamsError(f"params.outputs[{i}].name {spec.name!r} must be 1-64 letters, digits, "
                                     "'_', '-' or '.'")
            media.check_output_spec(spec)
            if not rel:
                rel = f"{output_dir.rstrip('/')}/{spec.name}.mp4"
            path = media.resolve_in_root(self._root(ctx), rel)
            if any(path == other for _, other, _, _ in outs):
                raise JobParamsError(f"params.outputs[{i}] would overwrite another output "
                                     f"({self._relative(ctx, path)}); give the outputs different names or paths")
            outs.append((spec, path, self._relative(ctx, path), flavor_asset_id))
        return outs

    def transcode(self, ctx: JobContext) -> dict[str, Any]:
        """TRANSCODE: encode every output in one decoding pass, probe the
        results, store the media info of flavor assets."""
        source, src = self._source(ctx)
        entry_id = self._entry_id(ctx)
        outs = self._outputs(ctx)

        def progress(pct: float) -> None:
            ctx.report_progress(pct, "encoding")

        try:
            encoded = media.transcode(src, [(spec, path) for spec, path, _, _ in outs], progress,
                                      lambda: ctx.cancelled, label=source)
        except media.TranscodeCancelled as e:
            raise JobCancelled(ctx.cancel_reason or "cancelled") from e
        results: list[dict[str, Any]] = []
        for done, (spec, path, rel, flavor_asset_id) in zip(encoded, outs):
            info = media.probe(done.path, label=rel)
            media_info_id = ""
            if entry_id and flavor_asset_id:
                info.entry_id = entry_id
                info.flavor_asset_id = flavor_asset_id
                ctx.check_cancelled()
                info = self.add_media_info(ctx, info, f"{ctx.job_id}:{ctx.attempt}:{flavor_asset_id}")
                media_info_id = info.id
            results.append({
                "name": spec.name,
                "flavor_asset_id": flavor_asset_id,
                "path": rel,
                "size_bytes": done.size_bytes,
                "media_info_id": media_info_id,
                "media_info": _message_dict(info),
            })
        return {"source": source, "outputs": results}


def build_media_worker(target: str, storage_root: Path, *, concurrency: int = 2, **worker_kwargs: Any) -> Worker:
    """A Worker serving EXTRACT_MEDIA and TRANSCODE on files under
    `storage_root` (other keyword arguments go to Worker)."""
    return MediaWorker(target, storage_root, concurrency=concurrency, **worker_kwargs)
