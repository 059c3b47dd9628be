"""/openapi.json and /docs: mediajobs' REST API described from the code that
serves it, never by hand.

The document is generated from the route table (`rest.ROUTES`: method,
path, RPC, body, summary, tag) and the protobuf descriptors of each RPC:

- an operation per route; operationId is the RPC's name (a second route of
  the same RPC, e.g. POST /v1/jobs:batchDelete next to DELETE
  /v1/jobs/{ids}, gets its custom verb appended: `DeleteJobs_batchDelete`);
- path parameters are the `{field}` of the path; query parameters are the
  request fields `routes.build_request` takes from the query (scalars, enums,
  repeated scalars, maps as `key:value`, Timestamp, Duration, FieldMask),
  under their lowerCamelCase JSON names (the proto snake_case names work
  too); a route with body "*" takes its fields from the body instead;
- the request body is the request message (less the path fields) or its
  `body` field; the 200 response is the response message; errors are
  `{"error": {"code", "status", "message", "details"}}` (errors.py);
- `Idempotency-Key` on routes whose request has `request_id`; a bearer
  scheme for API keys (`Authorization: Bearer mjk_...`; a server with
  `--auth none` takes calls without one).

Schemas follow the protobuf JSON mapping as google.protobuf.json_format
emits it (what every reply is): lowerCamelCase names, enums by name,
64-bit integers as decimal strings, bytes as base64, Timestamp as RFC 3339,
Duration as "1.5s", FieldMask as "a,b.c", Struct an object, Value any JSON,
Any an object with "@type", maps objects, repeated fields arrays. Fields at
their default value are left out of replies, so no property is required.
Each message and enum is one component named by its full proto name
(`mediajobs.v1.Job`), built on first use.

Other modules describe their own routes (the SSE watch, a dialect's shim)
with `document(app, path, method, operation)`, or by adding to
`app[EXTRA_PATHS_KEY]`; `schema_ref(descriptor)` and `error_responses()`
help them point at the same components. The document is built at the first
request (so every module has added its routes by then) and rebuilt when
the extra paths change.
"""
from __future__ import annotations

import html
import json
import re
from typing import Any, Iterable

import grpc
from aiohttp import web
from google.protobuf import descriptor, descriptor_pool

from . import rest
from .routes import MAX_IDEMPOTENCY_KEY, WELL_KNOWN_SCALARS, Route, method_descriptor
from .upstream import Upstream

FD = descriptor.FieldDescriptor
OPENAPI_VERSION = "3.1.0"
SCHEMA_PREFIX = "#/components/schemas/"

# path -> lowercase HTTP method -> OpenAPI operation object, added by other modules.
EXTRA_PATHS_KEY = web.AppKey("openapi_extra_paths", dict)
# The built document, its JSON and HTML, and the extra paths it was built with.
_CACHE_KEY = web.AppKey("openapi_cache", dict)

INT32 = {FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32}
UINT32 = {FD.TYPE_UINT32, FD.TYPE_FIXED32}
INT64 = {FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64}
UINT64 = {FD.TYPE_UINT64, FD.TYPE_FIXED64}

# A path parameter stops at '/' and ':' (routes.Route.aiohttp_path); "." and
# ".." would be folded into the path by clients before it is sent.
PATH_SEGMENT = r"^(?!\.\.?$)[^/:]+$"

GRPC_STATUS_NAMES = [c.name for c in grpc.StatusCode if c != grpc.StatusCode.OK]

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Error",
    "description": "An error: the google.rpc.Status of the call in JSON. `code` is the HTTP status, `status` "
                   "the gRPC code's name, `details` the rich error details (ErrorInfo with an UPPER_SNAKE "
                   "`reason`, BadRequest naming the fields, RetryInfo, ...) in the protos' JSON mapping.",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {"error": {
        "type": "object",
        "required": ["code", "status", "message", "details"],
        "additionalProperties": False,
        "properties": {
            "code": {"type": "integer", "minimum": 400, "maximum": 599},
            "status": {"type": "string", "enum": GRPC_STATUS_NAMES},
            "message": {"type": "string"},
            "details": {"type": "array", "items": {"$ref": SCHEMA_PREFIX + "google.protobuf.Any"}},
        },
    }},
}

# The errors every operation can answer (HTTP status -> when), as
# components/responses; 413 only where there is a body.
ERROR_RESPONSES: dict[str, str] = {
    "400": "Invalid request: unparseable JSON, an unknown field or query parameter, a value of the wrong type, "
           "or the server's own validation (INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE)",
    "401": "No API key, or one that is not valid (UNAUTHENTICATED; the server runs with --auth keys)",
    "403": "The API key's role does not allow this call (PERMISSION_DENIED)",
    "404": "The resource does not exist, or not in the key's project (NOT_FOUND)",
    "409": "A conflict: it already exists, or the Idempotency-Key was used for another request "
           "(ALREADY_EXISTS, ABORTED)",
    "413": "The body is larger than the gateway takes (16 MiB)",
    "429": "A quota or rate limit (RESOURCE_EXHAUSTED); Retry-After says when to try again",
    "default": "Any other error, e.g. 503 when the server is unavailable or draining, 504 when the call took "
               "too long",
}


def schema_ref(target: descriptor.Descriptor | descriptor.EnumDescriptor | str) -> dict[str, str]:
    """A $ref to the component of a message or enum (a descriptor or its full
    name); the component is built with the document."""
    name = target if isinstance(target, str) else target.full_name
    return {"$ref": SCHEMA_PREFIX + name}


def error_responses(*, body: bool = False) -> dict[str, Any]:
    """The error responses of an operation, as $refs to components/responses."""
    return {code: {"$ref": f"#/components/responses/Error{code.capitalize()}"}
            for code in ERROR_RESPONSES if code != "413" or body}


def document(app: web.Application, path: str, method: str, operation: dict[str, Any]) -> None:
    """Describe a route another module serves: `operation` is an OpenAPI
    operation object (operationId, tags, summary, parameters, responses, ...);
    `schema_ref` and `error_responses` point at this document's components."""
    extra = app.get(EXTRA_PATHS_KEY)
    if extra is None:
        extra = app[EXTRA_PATHS_KEY] = {}
    extra.setdefault(path, {})[method.lower()] = operation


class Schemas:
    """components/schemas, built from descriptors as they are referenced."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {"Error": ERROR_SCHEMA}

    def ref(self, desc: descriptor.Descriptor | descriptor.EnumDescriptor) -> dict[str, Any]:
        if desc.full_name not in self.components:
            self.components[desc.full_name] = {}  # a placeholder: messages may refer to themselves
            if isinstance(desc, descriptor.EnumDescriptor):
                self.components[desc.full_name] = self._enum(desc)
            else:
                self.components[desc.full_name] = self._message(desc)
        return schema_ref(desc)

    def resolve(self, name: str) -> bool:
        """Build the component of a full proto name from the default pool (for
        $refs in extra paths); False when there is no such type."""
        if name in self.components:
            return True
        pool = descriptor_pool.Default()
        for find in (pool.FindMessageTypeByName, pool.FindEnumTypeByName):
            try:
                self.ref(find(name))
                return True
            except KeyError:
                continue
        return False

    @staticmethod
    def _enum(desc: descriptor.EnumDescriptor) -> dict[str, Any]:
        return {"type": "string", "title": desc.name, "enum": [v.name for v in desc.values],
                "description": f"The enum `{desc.full_name}`, by value name."}

    def _message(self, desc: descriptor.Descriptor) -> dict[str, Any]:
        special = self._well_known(desc)
        if special is not None:
            return special
        out: dict[str, Any] = {
            "type": "object",
            "title": desc.name,
            "properties": {fd.json_name: self.field(fd) for fd in desc.fields},
            "additionalProperties": False,
        }
        notes = [f"The message `{desc.full_name}`. Input also takes the proto field names (snake_case)."]
        for oneof in desc.oneofs:
            if len(oneof.fields) > 1:
                notes.append("At most one of " + ", ".join(f"`{f.json_name}`" for f in oneof.fields) + ".")
        out["description"] = " ".join(notes)
        return out

    def _well_known(self, desc: descriptor.Descriptor) -> dict[str, Any] | None:
        name = desc.full_name
        if name == "google.protobuf.Timestamp":
            return {"type": "string", "format": "date-time", "title": "Timestamp",
                    "description": "RFC 3339, UTC, e.g. 2024-05-01T12:00:00Z (0, 3, 6 or 9 fractional digits)"}
        if name == "google.protobuf.Duration":
            return {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$", "title": "Duration",
                    "description": "Seconds with an `s` suffix, e.g. 1.5s"}
        if name == "google.protobuf.FieldMask":
            return {"type": "string", "title": "FieldMask",
                    "description": "Comma-separated lowerCamelCase field paths, e.g. `id,state,progress`"}
        if name == "google.protobuf.Struct":
            return {"type": "object", "title": "Struct", "description": "Any JSON object"}
        if name == "google.protobuf.Value":
            return {"title": "Value", "description": "Any JSON value"}
        if name == "google.protobuf.ListValue":
            return {"type": "array", "title": "ListValue", "description": "Any JSON array"}
        if name == "google.protobuf.Empty":
            return {"type": "object", "title": "Empty", "additionalProperties": False}
        if name == "google.protobuf.Any":
            return {"type": "object", "title": "Any", "required": ["@type"],
                    "properties": {"@type": {"type": "string"}},
                    "description": "A message of the type named by `@type` (type.googleapis.com/<full name>) "
                                   "with its fields, or its JSON under `value` for a well-known type"}
        if desc.file.name == "google/protobuf/wrappers.proto":
            return {**self.field(desc.fields_by_name["value"]), "title": desc.name}
        return None

    def field(self, fd: FD) -> dict[str, Any]:
        """The JSON schema of one field (map, repeated or single)."""
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            key_fd, value_fd = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
            out: dict[str, Any] = {"type": "object", "additionalProperties": self.single(value_fd)}
            key_pattern = {FD.TYPE_BOOL: "^(true|false)$"}.get(key_fd.type) or (
                "^-?[0-9]+$" if key_fd.type in INT32 | INT64 else "^[0-9]+$" if key_fd.type in UINT32 | UINT64
                else None)
            if key_pattern:
                out["propertyNames"] = {"pattern": key_pattern}
            return out
        if fd.is_repeated:
            return {"type": "array", "items": self.single(fd)}
        return self.single(fd)

    def single(self, fd: FD) -> dict[str, Any]:
        """The JSON schema of one value of the field."""
        t = fd.type
        if fd.message_type is not None:
            return self.ref(fd.message_type)
        if fd.enum_type is not None:
            return self.ref(fd.enum_type)
        if t == FD.TYPE_BOOL:
            return {"type": "boolean"}
        if t == FD.TYPE_STRING:
            return {"type": "string"}
        if t == FD.TYPE_BYTES:
            return {"type": "string", "contentEncoding": "base64", "description": "base64"}
        if t in INT32:
            return {"type": "integer", "format": "int32", "minimum": -2**31, "maximum": 2**31 - 1}
        if t in UINT32:
            return {"type": "integer", "format": "uint32", "minimum": 0, "maximum": 2**32 - 1}
        if t in INT64:
            return {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$",
                    "description": "a 64-bit integer as a decimal string"}
        if t in UINT64:
            return {"type": "string", "format": "uint64", "pattern": "^[0-9]+$",
                    "description": "a 64-bit unsigned integer as a decimal string"}
        if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
            return {"anyOf": [{"type": "number", "format": "double" if t == FD.TYPE_DOUBLE else "float"},
                              {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}]}
        raise ValueError(f"no JSON schema for field type {t} of {fd.full_name}")


def query_field(fd: FD) -> bool:
    """Whether routes.build_request takes the field from the query string."""
    if fd.message_type is None:
        return True
    if fd.message_type.GetOptions().map_entry:
        return True
    return not fd.is_repeated and fd.message_type.full_name in WELL_KNOWN_SCALARS


class Builder:
    """The operations of rest.ROUTES and the components they refer to."""

    def __init__(self) -> None:
        self.schemas = Schemas()
        self.operation_ids: set[str] = set()

    def operation_id(self, route: Route) -> str:
        op_id = route.rpc
        if op_id in self.operation_ids:
            verb = route.path.rpartition(":")[2] if ":" in route.path.rpartition("/")[2] else route.method.lower()
            op_id = f"{route.rpc}_{verb}"
        self.operation_ids.add(op_id)
        return op_id

    def route(self, route: Route, path_names: list[str]) -> dict[str, Any]:
        """The operation of `route`; `path_names` name its path parameters in
        the document (see document_path)."""
        method = method_descriptor(route)
        req, resp = method.input_type, method.output_type
        path_tops = {name.split(".")[0] for name in route.path_fields}
        params: list[dict[str, Any]] = []
        for name, doc_name in zip(route.path_fields, path_names):
            params.append({"name": doc_name, "in": "path", "required": True,
                           "description": f"The request's `{name}`.",
                           "schema": {"type": "string", "minLength": 1, "pattern": PATH_SEGMENT}})
        if route.body != "*":
            for fd in req.fields:
                if fd.name in path_tops or fd.name == route.body or not query_field(fd) \
                        or fd.name in route.hidden or fd.json_name in route.hidden:
                    continue
                params.append(self.query_parameter(fd))
        if "request_id" in req.fields_by_name:
            params.append({
                "name": "Idempotency-Key", "in": "header", "required": False,
                "description": "The request's `request_id`: a retry with the same key and the same request gets "
                               "the first reply (24 hours); the same key with another request is 409.",
                "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY}})
        body_schema = self.body_schema(route, req, path_tops)
        op: dict[str, Any] = {
            "operationId": self.operation_id(route),
            "tags": [route.tag or route.service],
            "summary": route.summary or route.rpc,
            "description": self.description(route, method),
            "x-grpc-method": f"{method.containing_service.full_name}/{route.rpc}",
            "parameters": params,
            "responses": {"200": {"description": f"The `{resp.full_name}`",
                                  "content": {"application/json": {"schema": self.schemas.ref(resp)}}},
                          **error_responses(body=body_schema is not None)},
        }
        if body_schema is not None:
            op["requestBody"] = {"required": False, "content": {"application/json": {"schema": body_schema}}}
        return op

    def query_parameter(self, fd: FD) -> dict[str, Any]:
        out: dict[str, Any] = {"name": fd.json_name, "in": "query", "required": False}
        alias = f" (`{fd.name}=` works too)" if fd.name != fd.json_name else ""
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            out["schema"] = {"type": "array", "items": {"type": "string", "pattern": "^[^:]*:"}}
            out["description"] = f"The request's `{fd.name}`{alias}: `key:value` pairs, the parameter repeated."
        elif fd.is_repeated:
            out["schema"] = {"type": "array", "items": self.query_value(fd)}
            out["description"] = (f"The request's `{fd.name}`{alias}: repeat the parameter, or one "
                                  "comma-separated list.")
        else:
            out["schema"] = self.query_value(fd)
            out["description"] = f"The request's `{fd.name}`{alias}."
        out["style"], out["explode"] = "form", True
        return out

    def query_value(self, fd: FD) -> dict[str, Any]:
        schema = self.schemas.single(fd)
        if fd.type in INT64 | UINT64:
            return {"type": "integer", "format": schema["format"]}  # query text either way; a number reads better
        return schema

    def body_schema(self, route: Route, req: descriptor.Descriptor, path_tops: set[str]) -> dict[str, Any] | None:
        if route.body is None:
            return None
        if route.body != "*":
            return self.schemas.field(req.fields_by_name[route.body])
        self.schemas.ref(req)
        if not path_tops:
            return schema_ref(req)
        # The whole request less the fields the path sets.
        whole = self.schemas.components[req.full_name]
        return {**whole, "properties": {k: v for k, v in whole["properties"].items()
                                        if k not in {req.fields_by_name[p].json_name for p in path_tops}},
                "description": whole.get("description", "") + " The path sets " +
                ", ".join(f"`{p}`" for p in sorted(path_tops)) + "."}

    @staticmethod
    def description(route: Route, method: descriptor.MethodDescriptor) -> str:
        path = " and the path" if route.path_fields else ""
        where = {None: "the path and the query", "*": f"the body{path}"}.get(
            route.body, f"the body (its `{route.body}`){path.replace(' and', ',')} and the query")
        return (f"The RPC `{method.containing_service.full_name}/{route.rpc}`: `{method.input_type.name}` from "
                f"{where}; the reply is `{method.output_type.name}` in the protos' JSON mapping.")


def document_path(path: str, names_by_shape: dict[str, list[str]]) -> tuple[str, list[str]]:
    """`path` as the document spells it, and its parameters' names there.

    OpenAPI forbids two paths that differ only in their parameters' names
    (they are the same path), and schemathesis reads `{a.b}` as an attribute,
    so routes of one shape (/v1/jobs/{id}, /v1/jobs/{ids}, /v1/jobs/{job.id})
    share the first one's names; each parameter's description names the
    request field it sets."""
    fields = re.findall(r"{([a-z_.]+)}", path)
    shape = re.sub(r"{[a-z_.]+}", "{}", path)
    names = names_by_shape.setdefault(shape, [f.replace(".", "_") for f in fields])
    out = shape
    for name in names:
        out = out.replace("{}", "{" + name + "}", 1)
    return out, names


def _refs(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith(SCHEMA_PREFIX):
                yield v[len(SCHEMA_PREFIX):]
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


META_PATHS: dict[str, Any] = {
    "/openapi.json": {"get": {
        "operationId": "GetOpenApiDocument", "tags": ["meta"], "summary": "This document (OpenAPI 3.1)",
        "security": [],
        "responses": {"200": {"description": "The OpenAPI document",
                              "content": {"application/json": {"schema": {"type": "object"}}}}},
    }},
    "/docs": {"get": {
        "operationId": "GetApiDocs", "tags": ["meta"], "summary": "This API as a web page", "security": [],
        "responses": {"200": {"description": "An HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}},
    }},
}


def build_document(extra_paths: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The OpenAPI document of rest.ROUTES, the meta routes and `extra_paths`."""
    b = Builder()
    paths: dict[str, dict[str, Any]] = {}
    names_by_shape: dict[str, list[str]] = {}
    for route in rest.ROUTES:
        path, names = document_path(route.path, names_by_shape)
        paths.setdefault(path, {})[route.method.lower()] = b.route(route, names)
    for path, ops in {**META_PATHS, **(extra_paths or {})}.items():
        for method, op in ops.items():
            paths.setdefault(path, {})[method] = op
            if "operationId" in op:
                b.operation_ids.add(op["operationId"])
    # $refs of the extra paths and of the hand-written Error, built from the descriptor pool.
    unresolved: set[str] = set()
    while True:
        wanted = set(_refs(paths)) | set(_refs(b.schemas.components))
        todo = sorted(wanted - set(b.schemas.components) - unresolved)
        if not todo:
            break
        for name in todo:
            if not b.schemas.resolve(name):
                unresolved.add(name)
    tags: dict[str, set[str]] = {}
    for route in rest.ROUTES:
        tags.setdefault(route.tag or route.service, set()).add(route.service)
    responses = {f"Error{code.capitalize()}": _error_response(code, text) for code, text in ERROR_RESPONSES.items()}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "mediajobs",
            "version": _version(),
            "description": "mediajobs' REST API: every route is one RPC of the gRPC API (its protos are the "
                           "reference). Requests and replies are JSON in the protos' JSON mapping (lowerCamelCase "
                           "names; the proto snake_case names are accepted too). Errors are "
                           "`{\"error\": {\"code\", \"status\", \"message\", \"details\"}}`.",
        },
        "tags": [{"name": t, "description": "Routes of " + ", ".join(sorted(s))} for t, s in tags.items()]
        + [{"name": "meta", "description": "This description"}],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(b.schemas.components.items())),
            "responses": responses,
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "A mediajobs API key (`mjk_<id>_<secret>`, from `mediajobs-server keys create` or "
                               "CreateApiKey) as `Authorization: Bearer <key>`. A server with `--auth none` (the "
                               "default on loopback) takes calls without one.",
            }},
        },
        "security": [{"bearerAuth": []}, {}],
    }


def _error_response(code: str, text: str) -> dict[str, Any]:
    out: dict[str, Any] = {"description": text,
                           "content": {"application/json": {"schema": {"$ref": SCHEMA_PREFIX + "Error"}}}}
    if code == "400":
        # A request the HTTP server cannot parse is answered before any route
        # sees it, in this same form (app.GatewayRequestHandler).
        from .app import MAX_FIELD_SIZE, MAX_LINE_SIZE

        out["description"] += (f"; also a request the HTTP server cannot parse (a request line over {MAX_LINE_SIZE} "
                               f"bytes, a header line over {MAX_FIELD_SIZE}, malformed HTTP), with reason "
                               "BAD_HTTP_REQUEST, before any route sees it; the connection is then closed")
    if code == "401":
        out["headers"] = {"WWW-Authenticate": {"required": True, "schema": {"type": "string"},
                                               "description": 'Bearer realm="mediajobs"'}}
    if code == "429":
        out["headers"] = {"Retry-After": {"required": False, "schema": {"type": "integer", "minimum": 1},
                                          "description": "Seconds to wait before trying again"}}
    return out


def _version() -> str:
    from importlib import metadata
    try:
        return metadata.version("mediajobs")
    except metadata.PackageNotFoundError:
        return "0"


def current_document(app: web.Application) -> dict[str, Any]:
    """The document of `app`, built at the first call and again whenever the
    extra paths changed since (a module may describe its routes late)."""
    extra = app.get(EXTRA_PATHS_KEY) or {}
    extra_key = json.dumps(extra, sort_keys=True, default=str)
    cache = app[_CACHE_KEY]
    if cache.get("extra") != extra_key:
        cache.clear()
        cache["doc"] = build_document(extra)
        cache["json"] = json.dumps(cache["doc"], separators=(",", ":"))
        cache["extra"] = extra_key
    doc: dict[str, Any] = cache["doc"]
    return doc


# -- /docs


def _text(markdown: str) -> str:
    """Escaped text with its `code spans` as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(markdown))


def _type_text(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rpartition("/")[2]
        return f'<a href="#schema-{html.escape(name)}">{html.escape(name.rpartition(".")[2] or name)}</a>'
    if "anyOf" in schema:
        return " | ".join(_type_text(s) for s in schema["anyOf"])
    t = schema.get("type")
    if t == "array":
        return f"array of {_type_text(schema.get('items', {}))}"
    if t == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map of {_type_text(schema['additionalProperties'])}"
    if "enum" in schema:
        return " | ".join(html.escape(str(v)) for v in schema["enum"])
    text = str(t or "any")
    if schema.get("format"):
        text += f" ({schema['format']})"
    return html.escape(text)


_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:72rem;padding:1rem 2rem;color:#222}
h2{border-bottom:1px solid #ccc;margin-top:2.5rem}h3{font-size:1rem;margin:1.5rem 0 .3rem}
code,.path{font-family:ui-monospace,monospace}.m{display:inline-block;min-width:4.5rem;font-weight:bold}
.get{color:#06c}.post{color:#080}.patch{color:#a60}.delete{color:#c00}
table{border-collapse:collapse;margin:.3rem 0 .6rem}td,th{border:1px solid #ddd;padding:.15rem .5rem;
text-align:left;vertical-align:top}th{background:#f4f4f4}p{margin:.2rem 0}nav a{margin-right:1rem}
"""


def render_docs(doc: dict[str, Any]) -> str:
    """A self-contained page (no scripts, no external assets) of `doc`."""
    e = html.escape
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            by_tag.setdefault((op.get("tags") or ["other"])[0], []).append((method, path, op))
    out = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{e(doc['info']['title'])} API</title>",
           f"<style>{_STYLE}</style></head><body>",
           f"<h1>{e(doc['info']['title'])} API <small>{e(doc['info']['version'])}</small></h1>",
           f"<p>{_text(doc['info'].get('description', ''))}</p>",
           '<p>The machine-readable description: <a href="/openapi.json">/openapi.json</a> (OpenAPI '
           f"{e(doc['openapi'])}).</p><nav>",
           *(f'<a href="#tag-{e(t)}">{e(t)}</a>' for t in by_tag), '<a href="#schemas">schemas</a></nav>']
    for tag, ops in by_tag.items():
        out.append(f'<h2 id="tag-{e(tag)}">{e(tag)}</h2>')
        for method, path, op in ops:
            out.append(f'<h3 id="op-{e(op.get("operationId", ""))}"><span class="m {e(method)}">{e(method.upper())}'
                       f'</span> <span class=path>{e(path)}</span></h3>')
            out.append(f"<p><b>{e(op.get('summary', ''))}</b> <code>{e(op.get('operationId', ''))}</code></p>")
            if op.get("description"):
                out.append(f"<p>{_text(op['description'])}</p>")
            params = op.get("parameters") or []
            if params:
                out.append("<table><tr><th>parameter</th><th>in</th><th>type</th><th>description</th></tr>")
                for p in params:
                    out.append(f"<tr><td><code>{e(p['name'])}</code></td><td>{e(p['in'])}</td>"
                               f"<td>{_type_text(p.get('schema', {}))}</td>"
                               f"<td>{_text(p.get('description', ''))}</td></tr>")
                out.append("</table>")
            body = (op.get("requestBody") or {}).get("content", {})
            for media, content in body.items():
                out.append(f"<p>Body ({e(media)}): {_type_text(content.get('schema', {}))}</p>")
            for code, resp in (op.get("responses") or {}).items():
                if "$ref" in resp:
                    continue
                for media, content in resp.get("content", {}).items():
                    out.append(f"<p>{e(code)} ({e(media)}): {_type_text(content.get('schema', {}))}</p>")
            if any("$ref" in r for r in (op.get("responses") or {}).values()):
                out.append('<p>Errors: <a href="#schema-Error">Error</a> (' + ", ".join(
                    e(c) for c, r in op["responses"].items() if "$ref" in r) + ")</p>")
    out.append('<h2 id="schemas">schemas</h2>')
    for name, schema in doc["components"]["schemas"].items():
        out.append(f'<h3 id="schema-{e(name)}">{e(name)}</h3>')
        if schema.get("description"):
            out.append(f"<p>{_text(schema['description'])}</p>")
        props = schema.get("properties")
        if props and name != "Error":
            out.append("<table><tr><th>field</th><th>type</th></tr>")
            out.extend(f"<tr><td><code>{e(k)}</code></td><td>{_type_text(v)}</td></tr>" for k, v in props.items())
            out.append("</table>")
        elif "properties" not in schema:
            out.append(f"<p>{_type_text(schema)}</p>")
    out.append("</body></html>")
    return "\n".join(out)


def add_routes(app: web.Application, upstream: Upstream) -> None:
    app[_CACHE_KEY] = {}
    if EXTRA_PATHS_KEY not in app:
        app[EXTRA_PATHS_KEY] = {}

    async def openapi_json(request: web.Request) -> web.Response:
        current_document(request.app)
        return web.Response(text=request.app[_CACHE_KEY]["json"], content_type="application/json")

    async def docs(request: web.Request) -> web.Response:
        doc = current_document(request.app)
        cache = request.app[_CACHE_KEY]
        if "html" not in cache:
            cache["html"] = render_docs(doc)
        return web.Response(text=cache["html"], content_type="text/html")

    app.router.add_get("/openapi.json", openapi_json, allow_head=False)
    app.router.add_get("/docs", docs, allow_head=False)


__all__ = ["EXTRA_PATHS_KEY", "add_routes", "build_document", "current_document", "document", "error_responses",
           "render_docs", "schema_ref"]
