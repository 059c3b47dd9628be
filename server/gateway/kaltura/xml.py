"""Kaltura's XML answer: always HTTP 200, always the envelope, because the
client ignores the status and crashes on anything that is not this XML.

    <?xml version="1.0" encoding="utf-8"?>
    <xml><result>...</result><executionTime>0.004</executionTime></xml>

A result is a scalar (bools as 1/0), nothing (`<result/>`, the client's
None), an object (a dict whose "objectType" names its Kaltura class: one
child element per property, `objectType` first), or a list (one `<item>` per
element, each an object with its own objectType). None values are left out.
An error is `<result><error><objectType>KalturaAPIException</objectType>
<code>..</code><message>..</message></error></result>`.
"""
from __future__ import annotations

import re
import time
from typing import Any
from xml.sax.saxutils import escape

import grpc
from aiohttp import web

from .wire import KalturaError

# Characters XML 1.0 cannot carry (a client's text could hold them).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _text(value: str) -> str:
    return escape(_NOT_XML.sub("\ufffd", value))


def _write(out: list[str], value: Any) -> None:
    if isinstance(value, bool):
        out.append("1" if value else "0")
    elif isinstance(value, (int, float)):
        out.append(repr(value) if isinstance(value, float) else str(value))
    elif isinstance(value, str):
        out.append(_text(value))
    elif isinstance(value, dict):
        for k, v in value.items():
            if v is None:
                continue
            out.append(f"<{k}>")
            _write(out, v)
            out.append(f"</{k}>")
    elif isinstance(value, (list, tuple)):
        for item in value:
            out.append("<item>")
            _write(out, item)
            out.append("</item>")
    else:  # pragma: no cover - a bug in a converter
        raise TypeError(f"cannot write {type(value).__name__} as Kaltura XML")


def envelope(result: Any, started: float) -> web.Response:
    out = ['<?xml version="1.0" encoding="utf-8"?><xml>']
    if result is None:
        out.append("<result/>")
    else:
        out.append("<result>")
        _write(out, result)
        out.append("</result>")
    out.append(f"<executionTime>{time.monotonic() - started:.6f}</executionTime></xml>")
    return web.Response(text="".join(out), content_type="text/xml", charset="utf-8")


def error(e: KalturaError, started: float | None = None) -> web.Response:
    return envelope({"error": {"objectType": "KalturaAPIException", "code": e.code, "message": e.message}},
                    started if started is not None else time.monotonic())


# The errors the gateway itself raises under /api_v3/ (no route, a wrong
# method, a body too large, a bug), in Kaltura's form.
_GATEWAY_CODES = {404: "SERVICE_DOES_NOT_EXISTS", 405: "ACTION_FORBIDDEN", 413: "MAX_FILE_SIZE_EXCEEDED",
                  500: "INTERNAL_SERVERL_ERROR"}


def gateway_error_form(request: web.Request, code: grpc.StatusCode, message: str, reason: str, http: int
                       ) -> web.StreamResponse:
    if http == 404:
        message = (f"no Kaltura service at {request.path[:200]}: use /api_v3/service/<service>/action/<action> "
                   "(bulkupload, bulkupload_bulk, batch, annotation_annotation, cuepoint_cuepoint, session)")
    return error(KalturaError(_GATEWAY_CODES.get(http, reason or code.name), message))
