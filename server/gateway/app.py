"""The gateway's aiohttp application: the REST routes, JSON errors for
everything (unknown routes, wrong methods, oversized bodies, a bug, which
never shows a stack trace, and requests the HTTP server cannot parse), CORS
for browser pages on other origins, and the listener.

CORS (--cors-origin). Without origins the gateway sends no CORS header at
all: pages of other origins cannot read its answers. With them, the
middleware `cors_preflight` answers a preflight (OPTIONS with Origin and
Access-Control-Request-Method) for any path that has a route: 204 with
Access-Control-Allow-Methods (the path's methods), -Allow-Headers
(Authorization, Content-Type, Idempotency-Key, Last-Event-ID) and -Max-Age
for an allowed origin, 403 PERMISSION_DENIED (CORS_ORIGIN_NOT_ALLOWED, in
mediajobs' JSON whatever the path: a preflight comes from a browser, never
from a vendor's client) for any other. Every response, errors and the event
stream included, gets `Vary: Origin` and, for an allowed Origin,
Access-Control-Allow-Origin (that origin) and Access-Control-Expose-Headers.
Those are added in the on_response_prepare signal, which runs for every
response as its headers go out: a middleware would add them after the
handler returns, too late for a streamed response (sse.py), whose headers
are sent by its prepare(). No credentials are involved (the API key is the
Authorization header, which the preflight allows), so there is no
Access-Control-Allow-Credentials. This is written here rather than with
aiohttp-cors, which needs every route registered with it and adds an OPTIONS
route to every resource (changing each 405's Allow), refuses a route that
takes any method (Bytescale's save route), sends no `Vary: Origin`, and
refuses a preflight with a plain-text 403; the whole of what the gateway
needs is the code below.

Requests aiohttp cannot parse (a request line longer than MAX_LINE_SIZE, a
header longer than MAX_FIELD_SIZE, malformed HTTP) never reach a middleware:
aiohttp's connection handler (web.RequestHandler) answers them from its
handle_error() with a plain-text 400 that echoes what the client sent.
aiohttp has no setting for that answer (aio-libs/aiohttp#3287), so the
gateway makes its listener itself (Gateway.start: asyncio's create_server
with the runner's web.Server as the handlers' manager, as web.TCPSite does)
with a handler class of its own, GatewayRequestHandler, whose handle_error()
answers a parse error in the error form of the path's dialect when the
error shows the path (a request line too long or malformed: aiohttp quotes
its start), and in mediajobs' JSON otherwise (a header too long or
malformed: the request line is gone by then): 400 INVALID_ARGUMENT, reason
BAD_HTTP_REQUEST, a message that says what was wrong without echoing the
request. It closes the connection after that answer, as aiohttp does. This
depends on RequestHandler's constructor and on handle_error(request, status,
exc, message) receiving the parser's exception, both unchanged through
aiohttp 3 (which pyproject pins); tests/test_gateway_bad_requests.py checks
the answers over a raw socket, so an aiohttp that changes them fails there.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import re
from typing import Any, Awaitable, Callable, Mapping

import grpc
from aiohttp import web
from aiohttp.http_exceptions import BadStatusLine, HttpProcessingError, InvalidURLError, LineTooLong

from . import rest
from .errors import plain_error
from .routes import handler
from .upstream import Upstream

log = logging.getLogger("mediajobs.gateway")

# The largest HTTP body taken (a bulk upload's inline CSV, base64, is the
# biggest legitimate one); more is 413 with a JSON error.
MAX_BODY_BYTES = 16 * 1024 * 1024
# The longest request URL and header line (name and value) aiohttp parses;
# longer is a 400 (BAD_HTTP_REQUEST). aiohttp's default is 8190 for both; a
# watch of 1,000 jobIds (sse.MAX_FILTER_VALUES) is about 34 KB of query.
MAX_LINE_SIZE = 64 * 1024
MAX_FIELD_SIZE = 8190
UPSTREAM_KEY = web.AppKey("upstream", Upstream)

# How a dialect answers the errors the gateway raises itself (no route, a
# wrong method, a body too large, a bug, a request it cannot parse), by path
# prefix: a vendor's client must get its vendor's error form, not mediajobs'
# JSON. fn(request, gRPC code, message, reason, HTTP status) -> response.
ErrorForm = Callable[[web.Request, grpc.StatusCode, str, str, int], web.StreamResponse]
ERROR_FORMS_KEY = web.AppKey("error_forms", dict)
# Settings of the gateway and its dialects, from the server's or
# mediajobs-gateway's flags (config.Config.gateway_settings): "kaltura_partners"
# (the Kaltura partners file), "cors_origins", "sse_max_streams",
# "sse_heartbeat_s", "sse_resume_window_s".
SETTINGS_KEY = web.AppKey("settings", dict)
# The origins allowed by --cors-origin (normalized; "*": any). Only set when
# there are some.
CORS_KEY = web.AppKey("cors_origins", frozenset)

# The modules that add routes besides the REST table, each with
# add_routes(app, upstream): mediajobs' own extras and the vendor dialects.
ROUTE_MODULES: tuple[str, ...] = ("openapi", "vidispine", "livejobs", "transcode", "bytescale", "sse", "kaltura", "bulk_files")

# CORS: what a preflight allows, and which response headers a page may read
# (besides the safelisted ones).
CORS_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")
CORS_ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key, Last-Event-ID"
CORS_EXPOSE_HEADERS = "Retry-After, WWW-Authenticate, Location, Content-Disposition, Allow"
CORS_MAX_AGE_S = 600


def _mediajobs_form(request: web.Request, code: grpc.StatusCode, message: str, reason: str, http: int
                    ) -> web.StreamResponse:
    headers = {"Allow": message.rpartition("allowed: ")[2]} if http == 405 else None
    return plain_error(code, message, reason, http=http, headers=headers)


def error_form(app: web.Application, path: str) -> ErrorForm:
    """The error form of the dialect whose prefix `path` has, else mediajobs' JSON."""
    for prefix, fn in app[ERROR_FORMS_KEY].items():
        if path.startswith(prefix):
            return fn  # type: ignore[no-any-return]
    return _mediajobs_form


@web.middleware
async def json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        code, http, reason = grpc.StatusCode.INVALID_ARGUMENT, 413, "BODY_TOO_LARGE"
        message = f"the body is larger than {MAX_BODY_BYTES} bytes, the limit"
    except web.HTTPMethodNotAllowed as e:
        code, http, reason = grpc.StatusCode.UNIMPLEMENTED, 405, "METHOD_NOT_ALLOWED"
        allowed = ", ".join(sorted(e.allowed_methods))
        message = f"{request.method} is not allowed on {request.path[:200]}; allowed: {allowed}"
    except web.HTTPNotFound:
        code, http, reason = grpc.StatusCode.NOT_FOUND, 404, "ROUTE_NOT_FOUND"
        message = f"no route {request.method} {request.path[:200]}; the API is described at /openapi.json"
    except web.HTTPException:
        raise
    except Exception:  # noqa: BLE001 - a bug: logged here, never shown to the client
        log.exception("%s %s failed", request.method, request.path[:200])
        code, http, reason = grpc.StatusCode.INTERNAL, 500, "GATEWAY_ERROR"
        message = "the gateway failed to handle this request; it is logged"
    # The form is looked up only for an error: a request that succeeds pays nothing for it.
    return error_form(request.app, request.path)(request, code, message, reason, http)


# -- CORS -------------------------------------------------------------------------------------------------------------


def cors_origins(settings: Mapping[str, Any]) -> frozenset[str]:
    """settings["cors_origins"] (a list, or a comma-separated string),
    normalized as the flag does; ValueError names a bad one."""
    from ..config import parse_cors_origin

    value = settings.get("cors_origins") or ()
    out = set()
    for origin in value.split(",") if isinstance(value, str) else value:
        if origin.strip():
            try:
                out.add(parse_cors_origin(origin))
            except argparse.ArgumentTypeError as e:
                raise ValueError(f"--cors-origin: {e}") from None
    return frozenset(out)


def _allowed(request: web.Request, origin: str) -> bool:
    allowed = request.app[CORS_KEY]
    return origin in allowed or "*" in allowed


@web.middleware
async def cors_preflight(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
    """Answer a CORS preflight for a path that has a route (the rest, and
    paths without one, go on: 404, 405)."""
    origin = request.headers.get("Origin")
    if request.method != "OPTIONS" or origin is None or "Access-Control-Request-Method" not in request.headers:
        return await handler(request)
    routed = request.match_info.http_exception  # None: a route takes OPTIONS itself (any method)
    if isinstance(routed, web.HTTPNotFound):
        return await handler(request)
    if not _allowed(request, origin):
        return plain_error(grpc.StatusCode.PERMISSION_DENIED,
                           f"the origin {origin[:64]} may not call this gateway from a browser: it is not one of "
                           "the gateway's --cors-origin", "CORS_ORIGIN_NOT_ALLOWED", http=403)
    methods = sorted(routed.allowed_methods) if isinstance(routed, web.HTTPMethodNotAllowed) else CORS_METHODS
    return web.Response(status=204, headers={
        "Access-Control-Allow-Methods": ", ".join(methods),
        "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
        "Access-Control-Max-Age": str(CORS_MAX_AGE_S),
    })


async def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: Vary: Origin on every response, and for an allowed
    Origin the headers that let its page read this one (the preflight's
    204 included), streamed responses too."""
    vary = response.headers.get("Vary", "")
    if not vary:
        response.headers["Vary"] = "Origin"
    elif not {v.strip().lower() for v in vary.split(",")} & {"origin", "*"}:
        response.headers["Vary"] = f"{vary}, Origin"
    origin = request.headers.get("Origin")
    if origin is not None and _allowed(request, origin):
        response.headers["Access-Control-Allow-Origin"] = origin
        if "Access-Control-Allow-Methods" not in response.headers:  # not a preflight's answer
            response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS


# -- requests aiohttp cannot parse ------------------------------------------------------------------------------------

# The path in what aiohttp quotes of a request line: "/p?q", "GET /p?q HTTP/1.1",
# "http://host/p" (a URL too long), b'G@T /p HTTP/1.1' (a malformed line).
_TARGET = re.compile(r"^(?:[!-~]+ +)?(?:[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s]*)?(/[^\s?#'\"]*)")
_QUOTED_LINE = re.compile(r"""b['"]([!-~]+ +[^\s'"]+)""")
_EXCERPT = re.compile(r"""\s*:?\s*(?:b['"]|bytearray\().*""", re.DOTALL)


def describe_bad_request(exc: HttpProcessingError, max_line_size: int, max_field_size: int) -> tuple[str, str]:
    """What is wrong with a request aiohttp could not parse, in words (without
    echoing the request), and its path when aiohttp's error shows it ("" if not)."""
    path = ""
    if isinstance(exc, LineTooLong):
        line, limit = exc.args[0], exc.args[1]
        text = bytes(line).decode("latin-1") if isinstance(line, (bytes, bytearray)) else str(line)
        if limit == max_line_size and limit != max_field_size:
            m = _TARGET.match(text)
            path = m.group(1) if m else ""
            return f"the request line is longer than {limit} bytes, the limit", path
        if limit == max_field_size and limit != max_line_size:
            return f"a header line is longer than {limit} bytes, the limit", ""
        return f"a request line or header line is longer than {limit} bytes, the limit", ""
    message = exc.message if isinstance(exc.message, str) else ""
    if isinstance(exc, (BadStatusLine, InvalidURLError)):
        quoted = _QUOTED_LINE.search(message)
        m = _TARGET.match(quoted.group(1)) if quoted else None
        path = m.group(1) if m else ""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].rstrip(":") == "Bad status line":
        lines = lines[1:]  # "Bad status line:\n  Invalid HTTP version:\n ..."
    what = _EXCERPT.sub("", lines[0]).rstrip(":. ") if lines else ""
    what = what[:100] or "malformed HTTP"
    return f"the request is not valid HTTP/1.1: {what[0].lower()}{what[1:]}", path


class GatewayRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, answering a request it cannot parse in
    the gateway's error forms instead of plain text (see the module's
    docstring)."""

    __slots__ = ("_gateway_app",)

    def __init__(self, app: web.Application, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._gateway_app = app

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError) or status != 400:
            return super().handle_error(request, status, exc, message)
        what, path = describe_bad_request(exc, self.max_line_size, self.max_field_size)
        log.debug("an HTTP request from %s could not be parsed: %s (%s)", request.remote, what, exc)
        form = error_form(self._gateway_app, path)
        resp = form(request, grpc.StatusCode.INVALID_ARGUMENT, what, "BAD_HTTP_REQUEST", 400)  # type: ignore[arg-type]
        resp.force_close()  # what follows on the connection cannot be trusted to be a request
        return resp


def build_app(upstream: Upstream, settings: Mapping[str, Any] | None = None) -> web.Application:
    settings = dict(settings or {})
    origins = cors_origins(settings)
    middlewares = [cors_preflight, json_errors] if origins else [json_errors]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app[UPSTREAM_KEY] = upstream
    app[SETTINGS_KEY] = settings
    app[ERROR_FORMS_KEY] = {}
    if origins:
        app[CORS_KEY] = origins
        app.on_response_prepare.append(cors_headers)
    for route in rest.ROUTES:
        app.router.add_route(route.method, route.aiohttp_path, handler(route, upstream))
    for name in ROUTE_MODULES:
        importlib.import_module(f"{__package__}.{name}").add_routes(app, upstream)
    return app


class Gateway:
    """A running gateway: the application on an HTTP listener."""

    def __init__(self, upstream: Upstream, settings: Mapping[str, Any] | None = None) -> None:
        self.upstream = upstream
        self.app = build_app(upstream, settings)
        self.runner: web.AppRunner | None = None
        self.listener: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self, listen: str) -> "Gateway":
        host, _, port = listen.rpartition(":")
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
        await self.runner.setup()
        server = self.runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        app = self.app

        def connection() -> GatewayRequestHandler:
            return GatewayRequestHandler(app, server, loop=loop, access_log=None, max_line_size=MAX_LINE_SIZE,
                                         max_field_size=MAX_FIELD_SIZE)

        try:
            self.listener = await loop.create_server(connection, host.strip("[]") or None, int(port), backlog=128)
        except BaseException:
            await self.stop()
            raise
        self.port = self.listener.sockets[0].getsockname()[1]  # the bound port (0 picks a free one)
        return self

    async def stop(self) -> None:
        if self.listener is not None:
            self.listener.close()  # no new connections; the runner's cleanup ends the open ones
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        await self.upstream.close()
