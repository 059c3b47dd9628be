"""Kaltura's api_v3, as the published `kalturaapiclient` 23.10.0 speaks it,
for the services the seeds describe (bulk upload, batch, annotation).

    POST or GET /api_v3/service/{service}/action/{action}   (names case-insensitive)

Modules: `wire` (the four ways parameters arrive, typed getters), `xml` (the
answer: always HTTP 200 and Kaltura's XML envelope, errors included, also
for the gateway's own 404/405/413/500 under /api_v3/), `ks` (KS v1 and the
partners file), `convert` (ids, enums and objects both ways), `services`
(the actions and the RPCs each one calls).

Credentials. The client signs a KS locally with the partner's admin secret
and sends only the KS and the partner id; the gRPC API takes only
`authorization: Bearer <mediajobs API key>`. Something must connect the
two, and the designs that keep the gateway free of secrets do not hold up:
the KS is not encrypted (a key carried in it would be readable by anyone who
sees a serve URL or a log line), the server knows only hashes of its keys
(it cannot check a signature made with one), and KS v2 needs PyCrypto on
the client. So the gateway is given, in a file (MEDIAJOBS_KALTURA_PARTNERS,
see `ks`), per partner id: the admin secret, and the API key that partner's
ADMIN sessions call with (optionally another for USER sessions). It checks
each KS as Kaltura does (signature with the partner's secret, expiry, the
request's partnerId), then calls the API with that partner's key, so the
key's project is the partner's: partnerId <-> project, admin secret <->
(by default) the API key's own text. Forged, expired or foreign KS are
Kaltura's INVALID_KS (`Error "-1,INVALID_STR"`, `"-5,EXPIRED"`,
`"-2,INVALID_PARTNER"`); no KS is MISSING_KS. The gateway still holds no
store: roles, projects and every other rule are the API's, checked on each
call with the partner's key. `session.start` hands out a KS to whoever knows
the partner's secret. Without the file the gateway checks no KS and sends no
key (an `Authorization: Bearer` header is passed through, as in the REST
API): that is for a server run with `--auth none`, where every call uses the
home project.

Ids and states: see `convert`. Errors: the API's ErrorInfo reason becomes
the Kaltura code where Kaltura has one (BULK_UPLOAD_NOT_FOUND,
ENTRY_ID_NOT_FOUND, INVALID_BATCHJOB_ID, FLAVOR_ASSET_ID_NOT_FOUND,
CONVERSION_PROFILE_ID_NOT_FOUND), else the reason itself (LEASE_LOST,
UNKNOWN_COLUMNS, ...), with the API's message.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import grpc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..app import ERROR_FORMS_KEY, SETTINGS_KEY
from ..errors import status_of
from ..upstream import Upstream, call_metadata
from . import ks as ks_mod
from . import convert, services, xml
from .wire import MAX_FILES, KalturaError, Params, UploadedFile, integer, text

log = logging.getLogger("mediajobs.gateway.kaltura")

PREFIX = "/api_v3/"

# Kaltura codes for the API's reasons (an action may name its own).
REASON_CODES = {
    "BULK_UPLOAD_NOT_FOUND": "BULK_UPLOAD_NOT_FOUND", "ENTRY_NOT_FOUND": "ENTRY_ID_NOT_FOUND",
    "JOB_NOT_FOUND": "INVALID_BATCHJOB_ID", "FLAVOR_ASSET_NOT_FOUND": "FLAVOR_ASSET_ID_NOT_FOUND",
    "TEMPLATE_NOT_FOUND": "CONVERSION_PROFILE_ID_NOT_FOUND",
}
# ... and for the gRPC codes whose reason says nothing more.
STATUS_CODES = {
    grpc.StatusCode.UNAUTHENTICATED: "INVALID_KS", grpc.StatusCode.PERMISSION_DENIED: "SERVICE_FORBIDDEN",
    grpc.StatusCode.INTERNAL: "INTERNAL_SERVERL_ERROR", grpc.StatusCode.UNAVAILABLE: "SERVICE_UNAVAILABLE",
}


def from_grpc(e: grpc.aio.AioRpcError, action_codes: dict[str, str]) -> KalturaError:
    st = status_of(e)
    reason = convert.reason_of(st)
    code = action_codes.get(reason) or REASON_CODES.get(reason)
    if code is None and (e.code() in STATUS_CODES or not reason):
        code = STATUS_CODES.get(e.code(), e.code().name)
    message = st.message or e.details() or e.code().name
    if e.code() == grpc.StatusCode.UNAUTHENTICATED:
        message += " (the gateway sent no API key or one the server refused: configure this partner in the " \
                   f"gateway's {ks_mod.PARTNERS_ENV} file)"
    return KalturaError(code or reason, message[:2000])


class KalturaGateway:
    """The api_v3 endpoint: decode, authenticate, dispatch, answer in XML."""

    def __init__(self, upstream: Upstream, partners: ks_mod.Partners | None) -> None:
        self.upstream = upstream
        self.partners = partners
        self.numbers = services.UploadNumbers()
        self.session = {"start": services.session_start(partners)}

    def action(self, service: str, action: str) -> services.Action:
        service, action = service.lower(), action.lower()
        actions = self.session if service == "session" else services.SERVICES.get(service)
        if actions is None:
            raise KalturaError("SERVICE_DOES_NOT_EXISTS", f'Service "{service[:64]}" does not exists')
        found = actions.get(action)
        if found is None:
            raise KalturaError("ACTION_DOES_NOT_EXISTS", f'Action "{action[:64]}" does not exists for service '
                                                         f'"{service[:64]}"')
        return found

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        action_codes: dict[str, str] = {}
        try:
            params = await read_params(request)
            service = request.match_info.get("service") or text(params.raw("service"), "service", 64) or ""
            name = request.match_info.get("action") or text(params.raw("action"), "action", 64) or ""
            if not service:
                raise KalturaError("SERVICE_NOT_SPECIFIED", "Service name was not specified, please specify one")
            if not name:
                raise KalturaError("ACTION_NOT_SPECIFIED", "Action name was not specified, please specify one")
            action = self.action(service, name)
            action_codes = action.errors
            call = self.authenticate(request, params, action.needs_session)
            result = await action.handler(call, params)
        except KalturaError as e:
            return xml.error(e, started)
        except grpc.aio.AioRpcError as e:
            return xml.error(from_grpc(e, action_codes), started)
        if isinstance(result, web.StreamResponse):
            return result
        return xml.envelope(result, started)

    def authenticate(self, request: web.Request, params: Params, needs_session: bool) -> services.Call:
        partner_id = integer(params.raw("partnerId"), "partnerId", -(2**31), 2**31 - 1)
        base_url = f"{request.scheme}://{request.host}"
        metadata: list[tuple[str, str]] = []
        if self.partners is None:
            metadata = call_metadata(request)
        elif needs_session:
            ks = text(params.raw("ks"), "ks", ks_mod.MAX_KS_CHARS)
            if not ks:
                raise KalturaError("MISSING_KS", "Missing KS, session not established")
            session = ks_mod.check(ks, partner_id, self.partners)
            metadata = [("authorization", f"Bearer {session.api_key}")]
            partner_id = session.partner_id
        return services.Call(request, self.upstream, metadata, partner_id or 0, base_url, self.numbers)


async def read_params(request: web.Request) -> Params:
    """The query string, then the body on top (JSON, multipart with a `json`
    part and file parts, or form fields)."""
    p = Params()
    p.merge_flat(request.query.items())
    if request.method != "POST" or not request.can_read_body:
        return p
    if request.content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.post()  # the app's body limit applies (413 passes through)
        except (ValueError, RuntimeError, UnicodeDecodeError, HttpProcessingError) as e:  # a broken body
            raise KalturaError("INVALID_PARAMETER", f"the {request.content_type} body cannot be read: "
                                                    f"{str(e)[:200]}") from None
        flat: list[tuple[str, Any]] = []
        for name, value in form.items():
            if isinstance(value, web.FileField):
                if len(p.files) >= MAX_FILES:
                    raise KalturaError("INVALID_PARAMETER", f"at most {MAX_FILES} files per request")
                p.files[name] = UploadedFile(services.base_name(value.filename or name), value.file.read())
            elif name == "json":
                p.merge_json(bytes(value) if isinstance(value, bytearray) else value)
            else:
                flat.append((name, value))
        p.merge_flat(flat)
    else:
        body = await request.read()
        if body.strip():
            p.merge_json(body)  # kalturaapiclient's JSON, whatever the Content-Type says
    return p


def add_routes(app: web.Application, upstream: Upstream) -> None:
    path = app[SETTINGS_KEY].get("kaltura_partners") or os.environ.get(ks_mod.PARTNERS_ENV, "")
    partners = ks_mod.Partners(path) if path else None
    if partners is None:
        log.info("Kaltura api_v3: no %s, so no KS is checked and calls carry no API key (for --auth none)",
                 ks_mod.PARTNERS_ENV)
    gateway = KalturaGateway(upstream, partners)
    for route in ("/api_v3/service/{service}/action/{action}", "/api_v3/index.php/service/{service}/action/{action}",
                  "/api_v3/index.php", "/api_v3/"):
        app.router.add_route("GET", route, gateway.handle)
        app.router.add_route("POST", route, gateway.handle)
    app[ERROR_FORMS_KEY][PREFIX] = xml.gateway_error_form
