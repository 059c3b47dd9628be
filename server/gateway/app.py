"""The gateway's aiohttp application: the REST routes, JSON errors for
everything (unknown routes, wrong methods, oversized bodies, and a bug,
which never shows a stack trace), and the listener."""
from __future__ import annotations

import importlib
import logging
from typing import Any, Awaitable, Callable

import grpc
from aiohttp import web

from . import rest
from .errors import plain_error
from .routes import handler
from .upstream import Upstream

log = logging.getLogger("mediajobs.gateway")

# The largest HTTP body taken (a bulk upload's inline CSV, base64, is the
# biggest legitimate one); more is 413 with a JSON error.
MAX_BODY_BYTES = 16 * 1024 * 1024
UPSTREAM_KEY = web.AppKey("upstream", Upstream)

# How a dialect answers the errors the gateway raises itself (no route, a
# wrong method, a body too large, a bug), by path prefix: a vendor's client
# must get its vendor's error form, not mediajobs' JSON. fn(request, gRPC
# code, message, reason, HTTP status) -> response.
ErrorForm = Callable[[web.Request, grpc.StatusCode, str, str, int], web.StreamResponse]
ERROR_FORMS_KEY = web.AppKey("error_forms", dict)
# Settings of the dialects (e.g. "kaltura_partners": the Kaltura partners
# file), from the server's or mediajobs-gateway's flags.
SETTINGS_KEY = web.AppKey("settings", dict)

# The modules that add routes besides the REST table, each with
# add_routes(app, upstream): mediajobs' own extras and the vendor dialects.
ROUTE_MODULES: tuple[str, ...] = ("openapi", "vidispine", "livejobs", "transcode", "bytescale", "sse", "kaltura", "bulk_files")


def _mediajobs_form(request: web.Request, code: grpc.StatusCode, message: str, reason: str, http: int
                    ) -> web.StreamResponse:
    headers = {"Allow": message.rpartition("allowed: ")[2]} if http == 405 else None
    return plain_error(code, message, reason, http=http, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
    form: ErrorForm = _mediajobs_form
    for prefix, fn in request.app[ERROR_FORMS_KEY].items():
        if request.path.startswith(prefix):
            form = fn
            break
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return form(request, grpc.StatusCode.INVALID_ARGUMENT,
                    f"the body is larger than {MAX_BODY_BYTES} bytes, the limit", "BODY_TOO_LARGE", 413)
    except web.HTTPMethodNotAllowed as e:
        allowed = ", ".join(sorted(e.allowed_methods))
        return form(request, grpc.StatusCode.UNIMPLEMENTED,
                    f"{request.method} is not allowed on {request.path[:200]}; allowed: {allowed}",
                    "METHOD_NOT_ALLOWED", 405)
    except web.HTTPNotFound:
        return form(request, grpc.StatusCode.NOT_FOUND, f"no route {request.method} {request.path[:200]}; the "
                    "API is described at /openapi.json", "ROUTE_NOT_FOUND", 404)
    except web.HTTPException:
        raise
    except Exception:  # noqa: BLE001 - a bug: logged here, never shown to the client
        log.exception("%s %s failed", request.method, request.path[:200])
        return form(request, grpc.StatusCode.INTERNAL, "the gateway failed to handle this request; it is logged",
                    "GATEWAY_ERROR", 500)


def build_app(upstream: Upstream, settings: dict[str, str] | None = None) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=MAX_BODY_BYTES)
    app[UPSTREAM_KEY] = upstream
    app[SETTINGS_KEY] = dict(settings or {})
    app[ERROR_FORMS_KEY] = {}
    for route in rest.ROUTES:
        app.router.add_route(route.method, route.aiohttp_path, handler(route, upstream))
    for name in ROUTE_MODULES:
        importlib.import_module(f"{__package__}.{name}").add_routes(app, upstream)
    return app


class Gateway:
    """A running gateway: the application on an HTTP listener."""

    def __init__(self, upstream: Upstream, settings: dict[str, str] | None = None) -> None:
        self.upstream = upstream
        self.app = build_app(upstream, settings)
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, listen: str) -> "Gateway":
        host, _, port = listen.rpartition(":")
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host.strip("[]") or None, int(port))
        await site.start()
        server: Any = site._server  # the bound port (0 picks a free one)
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        await self.upstream.close()
