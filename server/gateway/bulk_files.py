"""A bulk upload's file over HTTP, both ways, on the streaming RPCs:

    PUT /v1/bulkUploads/{uploadId}/file?writeOffset=0&finishWrite=true&sha256=...
        the request body, as it arrives, in chunks of WriteBulkUploadFile
        (each with its CRC-32); the reply is WriteBulkUploadFileResponse.
        A write that broke off resumes at the committed size
        (GET /v1/bulkUploads/{uploadId}:writeStatus).
    GET /v1/bulkUploads/{id}/file?selection=FAILED_RECORDS&readOffset=...
        ReadBulkUploadFile's bytes (each chunk's CRC-32 checked), as
        text/csv.
    GET /v1/bulkUploads/{id}/log?format=JSONL&statuses=ERROR
        ReadBulkUploadLog's lines, as text/csv or application/x-ndjson.

The uploaded body is not held in memory (it is passed on chunk by chunk,
at most CHUNK_BYTES at a time); the server's own limits on a bulk file
apply. An error before the first byte is the gateway's JSON error; one
after it (the response has started) ends the connection without the final
chunk, so a client sees the download as incomplete, never as whole.
"""
from __future__ import annotations

import zlib
from typing import Any, AsyncIterator

import grpc
from aiohttp import web

from mediajobs.v1 import bulk_upload_service_pb2 as bsvc

from .errors import bad_request, error_response, status_of
from .routes import CALL_TIMEOUT_S, RequestError, Route, build_request, to_json
from .upstream import Upstream, call_metadata

CHUNK_BYTES = 1024 * 1024
# A download or an upload may take long; the call ends when the client goes.
STREAM_TIMEOUT_S = 3600.0

WRITE = Route("PUT", "/v1/bulkUploads/{upload_id}/file", "BulkUploadService", "WriteBulkUploadFile",
              summary="Write (part of) a bulk upload's file: the body, from writeOffset", tag="bulkUploads",
              hidden=("data", "crc32"))
READ_FILE = Route("GET", "/v1/bulkUploads/{id}/file", "BulkUploadService", "ReadBulkUploadFile",
                  summary="A bulk upload's file, or the records that failed", tag="bulkUploads")
READ_LOG = Route("GET", "/v1/bulkUploads/{id}/log", "BulkUploadService", "ReadBulkUploadLog",
                 summary="A bulk upload's log, CSV or JSON lines", tag="bulkUploads")


def add_routes(app: web.Application, upstream: Upstream) -> None:
    bulk = upstream.stubs["BulkUploadService"]

    async def write_file(request: web.Request) -> web.StreamResponse:
        try:
            first = build_request(WRITE, bsvc.WriteBulkUploadFileRequest, request, None)
        except RequestError as e:
            return bad_request(str(e), e.field)
        assert isinstance(first, bsvc.WriteBulkUploadFileRequest)
        finish = first.finish_write

        async def chunks() -> AsyncIterator[bsvc.WriteBulkUploadFileRequest]:
            head = bsvc.WriteBulkUploadFileRequest(upload_id=first.upload_id, write_offset=first.write_offset,
                                                   sha256=first.sha256)
            sent = False
            pending = b""
            async for piece in request.content.iter_chunked(CHUNK_BYTES):
                pending += piece
                while len(pending) >= CHUNK_BYTES:
                    data, pending = pending[:CHUNK_BYTES], pending[CHUNK_BYTES:]
                    msg = head if not sent else bsvc.WriteBulkUploadFileRequest()
                    msg.data, msg.crc32 = data, zlib.crc32(data)
                    sent = True
                    yield msg
            msg = head if not sent else bsvc.WriteBulkUploadFileRequest()
            msg.data, msg.crc32 = pending, zlib.crc32(pending)
            msg.finish_write = finish
            yield msg

        try:
            reply = await bulk.WriteBulkUploadFile(chunks(), metadata=call_metadata(request),
                                                   timeout=STREAM_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            return error_response(status_of(e))
        return web.Response(text=to_json(reply), content_type="application/json")

    async def stream(request: web.Request, route: Route, cls: Any, content_type: str) -> web.StreamResponse:
        try:
            req = build_request(route, cls, request, None)
        except RequestError as e:
            return bad_request(str(e), e.field)
        call = getattr(bulk, route.rpc)(req, metadata=call_metadata(request), timeout=STREAM_TIMEOUT_S)
        response: web.StreamResponse | None = None
        try:
            async for part in call:
                if route is READ_FILE and part.crc32 and zlib.crc32(part.data) != part.crc32:
                    call.cancel()  # a chunk arrived damaged: the download must not look whole
                    return _cut_short(request, response)
                if response is None:
                    response = web.StreamResponse(headers={"Content-Type": content_type})
                    await response.prepare(request)
                if part.data:
                    await response.write(part.data)
        except grpc.aio.AioRpcError as e:
            if response is None:
                return error_response(status_of(e))
            return _cut_short(request, response)
        if response is None:  # an empty file or log
            response = web.StreamResponse(headers={"Content-Type": content_type})
            await response.prepare(request)
        await response.write_eof()
        return response

    async def read_file(request: web.Request) -> web.StreamResponse:
        return await stream(request, READ_FILE, bsvc.ReadBulkUploadFileRequest, "text/csv; charset=utf-8")

    async def read_log(request: web.Request) -> web.StreamResponse:
        fmt = request.query.get("format", "CSV").upper()
        content_type = "application/x-ndjson" if fmt == "JSONL" else "text/csv; charset=utf-8"
        return await stream(request, READ_LOG, bsvc.ReadBulkUploadLogRequest, content_type)

    app.router.add_put(WRITE.aiohttp_path, write_file)
    app.router.add_get(READ_FILE.aiohttp_path, read_file, allow_head=False)
    app.router.add_get(READ_LOG.aiohttp_path, read_log, allow_head=False)
    _describe(app)


def _cut_short(request: web.Request, response: web.StreamResponse | None) -> web.StreamResponse:
    """End a download that cannot be completed: the connection closes
    without the final chunk, so the client sees it is incomplete."""
    if response is None:
        from .errors import plain_error

        return plain_error(grpc.StatusCode.DATA_LOSS, "the file arrived damaged from the server; retry",
                           "DOWNLOAD_DAMAGED")
    if request.transport is not None:
        request.transport.close()
    return response


def _describe(app: web.Application) -> None:
    from . import openapi

    text = {"description": "The bytes", "content": {"text/csv": {"schema": {"type": "string"}}}}
    ndjson = {"description": "The log", "content": {"text/csv": {"schema": {"type": "string"}},
                                                   "application/x-ndjson": {"schema": {"type": "string"}}}}
    id_param = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    openapi.document(app, "/v1/bulkUploads/{id}/file", "get", {
        "operationId": "ReadBulkUploadFile", "tags": ["bulkUploads"], "summary": READ_FILE.summary,
        "parameters": id_param + [
            {"name": "selection", "in": "query", "schema": {"enum": ["ORIGINAL", "FAILED_RECORDS"]}},
            {"name": "readOffset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
            {"name": "readLimit", "in": "query", "schema": {"type": "integer", "minimum": 0}}],
        "responses": {**openapi.error_responses(), "200": text}})
    openapi.document(app, "/v1/bulkUploads/{id}/log", "get", {
        "operationId": "ReadBulkUploadLog", "tags": ["bulkUploads"], "summary": READ_LOG.summary,
        "parameters": id_param + [
            {"name": "format", "in": "query", "schema": {"enum": ["CSV", "JSONL"]}},
            {"name": "statuses", "in": "query", "schema": {"type": "array", "items": {"type": "string"}},
             "style": "form", "explode": True}],
        "responses": {**openapi.error_responses(), "200": ndjson}})
    openapi.document(app, "/v1/bulkUploads/{id}/file", "put", {
        "operationId": "WriteBulkUploadFile", "tags": ["bulkUploads"], "summary": WRITE.summary,
        "parameters": id_param + [
            {"name": "writeOffset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
            {"name": "finishWrite", "in": "query", "schema": {"type": "boolean"}},
            {"name": "sha256", "in": "query", "schema": {"type": "string"}}],
        "requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string",
                                                                            "format": "binary"}}}},
        "responses": {**openapi.error_responses(body=True), "200": {
            "description": "What is committed", "content": {"application/json": {
                "schema": openapi.schema_ref("mediajobs.v1.WriteBulkUploadFileResponse")}}}}})
