"""gRPC outcomes as HTTP: the status code Google's APIs map each gRPC code to,
and errors as JSON carrying the whole google.rpc.Status:

    {"error": {"code": 404, "status": "NOT_FOUND", "message": "...",
               "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", ...}]}}

(`code` is the HTTP status, `status` the gRPC code's name, `details` the
rich error details the gRPC API sent, in the protos' JSON mapping.)"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2  # noqa: F401 - details' types for Any -> JSON

HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_CODE_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}
DETAILS_KEY = "grpc-status-details-bin"


def code_of(number: int) -> grpc.StatusCode:
    """The gRPC code of a google.rpc.Status's number (UNKNOWN if none)."""
    return _CODE_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


@dataclass
class Details:
    """What the dialects read of a Status's rich details."""

    reason: str = ""  # ErrorInfo.reason
    metadata: dict[str, str] = field(default_factory=dict)  # ErrorInfo.metadata
    violations: list[Any] = field(default_factory=list)  # BadRequest.FieldViolation
    retry_after_s: float | None = None  # RetryInfo.retry_delay; None: no RetryInfo

    @property
    def retry_after(self) -> str:
        """The Retry-After header's value: whole seconds, at least 1."""
        return str(max(1, math.ceil(self.retry_after_s or 0)))


def details_of(st: status_pb2.Status) -> Details:
    out = Details()
    for d in st.details:
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            d.Unpack(info)
            out.reason, out.metadata = info.reason, dict(info.metadata)
        elif d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            d.Unpack(bad)
            out.violations = list(bad.field_violations)
        elif d.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            d.Unpack(retry)
            out.retry_after_s = retry.retry_delay.ToMicroseconds() / 1e6
    return out


def status_of(e: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The call's google.rpc.Status: the rich one the server sent, else code
    and message."""
    for k, v in e.trailing_metadata() or ():
        if k == DETAILS_KEY and isinstance(v, bytes):
            try:
                return status_pb2.Status.FromString(v)
            except Exception:  # noqa: BLE001 - a malformed trailer: fall back to code and message
                break
    return status_pb2.Status(code=e.code().value[0], message=e.details() or "")


def http_status(code: int) -> int:
    return HTTP_STATUS.get(_CODE_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN), 500)


def status_json(st: status_pb2.Status) -> dict[str, Any]:
    details = []
    for d in st.details:
        try:
            details.append(json_format.MessageToDict(d))
        except Exception:  # noqa: BLE001 - a detail type this gateway does not know: say what it was
            details.append({"@type": d.type_url})
    code = _CODE_BY_NUMBER.get(st.code, grpc.StatusCode.UNKNOWN)
    return {"error": {"code": http_status(st.code), "status": code.name, "message": st.message, "details": details}}


def error_response(st: status_pb2.Status, headers: dict[str, str] | None = None, http: int = 0) -> web.Response:
    """The JSON error of `st` (`http`: an HTTP status other than the code's own)."""
    body = status_json(st)
    if http:
        body["error"]["code"] = http
    out = dict(headers or {})
    details = details_of(st)
    if details.retry_after_s is not None:
        out["Retry-After"] = details.retry_after
    if st.code == grpc.StatusCode.UNAUTHENTICATED.value[0]:
        out.setdefault("WWW-Authenticate", 'Bearer realm="mediajobs"')
    return web.Response(status=body["error"]["code"], text=json.dumps(body), content_type="application/json",
                        headers=out)


def bad_request(message: str, field: str = "", reason: str = "INVALID_REQUEST") -> web.Response:
    """A client mistake the gateway itself sees (unparseable JSON, a query
    value of the wrong type), as INVALID_ARGUMENT with the field named."""
    st = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message)
    info = error_details_pb2.ErrorInfo(reason=reason, domain="mediajobs.gateway")
    st.details.add().Pack(info)
    if field:
        st.details.add().Pack(error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field=field, description=message)]))
    return error_response(st)


def plain_error(code: grpc.StatusCode, message: str, reason: str, http: int = 0,
                headers: dict[str, str] | None = None) -> web.Response:
    st = status_pb2.Status(code=code.value[0], message=message)
    st.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain="mediajobs.gateway"))
    return error_response(st, headers, http)
