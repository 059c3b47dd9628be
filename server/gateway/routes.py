"""A route: an HTTP method and path that is one unary RPC of the gRPC API.

The request message is built from, in order: the JSON body (the whole
request, or one field of it: `body`), the path parameters (a field each,
dotted for a nested one, e.g. `job.id`), the query parameters (a field
each: repeated fields repeat the parameter or take a comma-separated list,
enums their names, timestamps RFC 3339, bools true/false), and the
`Idempotency-Key` header (the request's `request_id`). The reply is the
response message in the protos' JSON mapping (lowerCamelCase names; inputs
take either spelling). The same table describes the API in /openapi.json.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc
from aiohttp import web
from google.protobuf import descriptor, json_format, message, message_factory

from .errors import bad_request, error_response, status_of
from .protojson import message_to_dict
from .upstream import SERVICES, Upstream, call_metadata

MAX_QUERY_VALUES = 1000
MAX_IDEMPOTENCY_KEY = 128
CALL_TIMEOUT_S = 60.0

FD = descriptor.FieldDescriptor


@dataclass(frozen=True)
class Route:
    method: str  # GET, POST, PATCH, DELETE
    path: str  # OpenAPI form: /v1/jobs/{id}; `{field.path}` names the request field
    service: str  # e.g. JobService
    rpc: str  # e.g. GetJob
    body: str | None = None  # None: no body; "*": the whole request; else that field
    summary: str = ""
    tag: str = ""
    # Query parameters the route does not take (path fields are never query parameters).
    hidden: tuple[str, ...] = field(default=())

    @property
    def aiohttp_path(self) -> str:
        """aiohttp's form: a parameter stops at '/' and ':' (so /v1/jobs/{id}:abort works)."""
        out = self.path
        for name in self.path_fields:
            out = out.replace("{" + name + "}", "{" + name.replace(".", "__") + ":[^/:]+}")
        return out

    @property
    def path_fields(self) -> list[str]:
        return re.findall(r"{([a-z_.]+)}", self.path)


class RequestError(Exception):
    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


def _scalar(fd: FD, text: str, name: str) -> Any:
    """A query parameter's text as the JSON value json_format takes for `fd`."""
    t = fd.type
    if t == FD.TYPE_BOOL:
        low = text.lower()
        if low in ("true", "1"):
            return True
        if low in ("false", "0"):
            return False
        raise RequestError(f"{name} must be true or false", name)
    if t in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32, FD.TYPE_UINT32, FD.TYPE_FIXED32,
             FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64, FD.TYPE_UINT64, FD.TYPE_FIXED64):
        try:
            return int(text)
        except ValueError:
            raise RequestError(f"{name} must be an integer", name) from None
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        try:
            return float(text)
        except ValueError:
            raise RequestError(f"{name} must be a number", name) from None
    return text  # strings, enums (by name or number), Timestamps and Durations (JSON text), bytes (base64)


def _field(msg_desc: Any, dotted: str) -> tuple[list[FD], FD]:
    """The field path `a.b.c` of msg_desc (json or proto names)."""
    path: list[FD] = []
    desc = msg_desc
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        fd = desc.fields_by_name.get(part) or next((f for f in desc.fields if f.json_name == part), None)
        if fd is None:
            raise RequestError(f"unknown parameter {dotted[:80]!r}", dotted[:80])
        path.append(fd)
        if i < len(parts) - 1:
            if fd.message_type is None or fd.is_repeated:
                raise RequestError(f"unknown parameter {dotted[:80]!r}", dotted[:80])
            desc = fd.message_type
    return path[:-1], path[-1]


def _put(tree: dict[str, Any], parents: list[FD], fd: FD, value: Any) -> None:
    node = tree
    for p in parents:
        node = node.setdefault(p.name, {})
    node[fd.name] = value


WELL_KNOWN_SCALARS = {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}


def build_request(route: Route, cls: type[message.Message], request: web.Request, body: Any) -> message.Message:
    """The request message of `route` from the HTTP request (see the module
    docstring); RequestError names what is wrong."""
    tree: dict[str, Any] = {}
    desc = cls.DESCRIPTOR
    if route.body == "*":
        if body is not None:
            if not isinstance(body, dict):
                raise RequestError("the body must be a JSON object", "body")
            tree = body
    elif route.body:
        if body is not None:
            if not isinstance(body, dict):
                raise RequestError("the body must be a JSON object", "body")
            tree = {route.body: body}
    try:
        msg = json_format.ParseDict(tree, cls(), ignore_unknown_fields=False, max_recursion_depth=64) \
            if tree else cls()
    except Exception as e:  # noqa: BLE001 - ParseError, or json_format failing on odd input itself (an Any
        # whose @type is a number raises AttributeError): either way the body does not fit the message
        raise RequestError(f"the body does not match {desc.name}: {str(e)[:300]}", "body") from None
    extra: dict[str, Any] = {}
    seen = 0
    for name in request.query.keys():
        if name in route.hidden or name in extra:
            continue
        seen += 1
        if seen > MAX_QUERY_VALUES:
            raise RequestError(f"at most {MAX_QUERY_VALUES} query parameters", name[:80])
        parents, fd = _field(desc, name)
        values = request.query.getall(name)
        if fd.is_repeated and fd.message_type is None:
            items = [v for raw in values for v in (raw.split(",") if len(values) == 1 else [raw]) if v != ""]
            _put(extra, parents, fd, [_scalar(fd, v, name) for v in items])
        elif fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            # map<string,string> as key:value pairs: ?metadata=team:news
            pairs = {}
            for raw in values:
                k, sep, v = raw.partition(":")
                if not sep:
                    raise RequestError(f"{name} takes key:value pairs", name)
                pairs[k] = v
            _put(extra, parents, fd, pairs)
        elif fd.message_type is not None and fd.message_type.full_name not in WELL_KNOWN_SCALARS:
            raise RequestError(f"{name} is a message: send it in the body", name)
        else:
            _put(extra, parents, fd, _scalar(fd, values[-1], name))
    for name in route.path_fields:
        parents, fd = _field(desc, name)
        value = request.match_info[name.replace(".", "__")]
        _put(extra, parents, fd, [value] if fd.is_repeated else _scalar(fd, value, name))
    if extra and all(type(v) is str and desc.fields_by_name[k].type == FD.TYPE_STRING and
                     not desc.fields_by_name[k].is_repeated for k, v in extra.items()):
        for k, v in extra.items():  # plain string fields (ids in paths): no JSON round trip
            setattr(msg, k, v)
    elif extra:
        try:
            json_format.ParseDict(extra, msg, ignore_unknown_fields=False)
        except Exception as e:  # noqa: BLE001 - as for the body: the parameters do not fit the message
            raise RequestError(f"a path or query parameter is not valid: {str(e)[:300]}") from None
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        if "request_id" not in desc.fields_by_name:
            raise RequestError("this call takes no Idempotency-Key (it is safe to repeat, or cannot be replayed)",
                               "Idempotency-Key")
        if not key or len(key) > MAX_IDEMPOTENCY_KEY:
            raise RequestError(f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} characters", "Idempotency-Key")
        setattr(msg, "request_id", key)
    return msg


def to_json(msg: message.Message) -> str:
    """The message in the protos' JSON mapping, compact."""
    return json.dumps(message_to_dict(msg), separators=(",", ":"))


def handler(route: Route, upstream: Upstream) -> Callable[[web.Request], Any]:
    method = upstream.method(route.service, route.rpc)
    stub_desc = method_descriptor(route)
    cls = message_factory.GetMessageClass(stub_desc.input_type)

    async def handle(request: web.Request) -> web.StreamResponse:
        body: Any = None
        if route.body is not None and request.can_read_body:
            raw = await request.read()
            if raw.strip():
                try:
                    body = json.loads(raw)
                except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nested too deep
                    return bad_request(f"the body is not JSON: {str(e)[:200]}", "body", "BODY_NOT_JSON")
        try:
            req = build_request(route, cls, request, body)
        except RequestError as e:
            return bad_request(str(e), e.field)
        try:
            reply = await method(req, metadata=call_metadata(request), timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            return error_response(status_of(e))
        return web.Response(body=to_json(reply).encode(), content_type="application/json")

    return handle


def method_descriptor(route: Route) -> descriptor.MethodDescriptor:
    return SERVICES[route.service].methods_by_name[route.rpc]
