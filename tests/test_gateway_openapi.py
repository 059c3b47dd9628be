"""/openapi.json and /docs over a real server and real HTTP: the document is
valid OpenAPI 3.1 and describes every route of rest.ROUTES as the gateway
serves it (path and query parameters, bodies, Idempotency-Key, errors);
its schemas follow the protos' JSON mapping exactly (checked against
json_format's own output for every message, every field set); other modules
add their routes; /docs is one self-contained page. Then schemathesis
throws generated requests (valid and invalid) at every documented operation
and checks that the gateway never answers 5xx and always answers what the
document says (status, content type, body schema, headers).

schemathesis's calls block, so they run in a thread while the server and
its gateway run on the test's event loop."""
from __future__ import annotations

import asyncio
import base64
import collections
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp
import hypothesis
import jsonschema_rs
import pytest
import requests
import schemathesis
from google.protobuf import descriptor, descriptor_pool, json_format, message, message_factory
from google.protobuf import struct_pb2, wrappers_pb2
from google.rpc import error_details_pb2
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                               response_schema_conformance, status_code_conformance)

from mediajobs.server.app import App
from mediajobs.server.gateway import openapi, rest
from mediajobs.server.gateway.routes import method_descriptor

from conftest import gateway_app, start_app
from test_auth import make_key

FD = descriptor.FieldDescriptor
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
REST_OPERATION_IDS = {r.rpc for r in rest.ROUTES}


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[tuple[App, str, aiohttp.ClientSession]]:
    async with gateway_app(str(tmp_path / "db.sqlite"), http_gateway="inline") as g:
        yield g


async def fetch_document(s: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    r = await s.get(f"{base}/openapi.json")
    assert r.status == 200 and r.content_type == "application/json"
    doc: dict[str, Any] = await r.json()
    return doc


def shape(path: str) -> str:
    """A path with its parameters' names left out: /v1/jobs/{}."""
    return re.sub(r"{[^}]+}", "{}", path)


def takes_query(fd: FD) -> bool:
    """What a query parameter can be: a scalar, an enum, a repeated scalar, a
    map, or a Timestamp, Duration or FieldMask."""
    if fd.message_type is None or fd.message_type.GetOptions().map_entry:
        return True
    return not fd.is_repeated and fd.message_type.full_name in (
        "google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask")


def operations(doc: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """operationId -> (method, path, operation)."""
    return {op["operationId"]: (m, p, op) for p, ops in doc["paths"].items() for m, op in ops.items()}


# -- the document


async def test_the_document_is_openapi_31_and_describes_every_route(
        gw: tuple[App, str, aiohttp.ClientSession]) -> None:
    _app, base, s = gw
    doc = await fetch_document(s, base)
    assert doc["openapi"] == "3.1.0"
    schemathesis.openapi.from_dict(doc).validate()  # the OpenAPI 3.1 meta-schema
    for name, schema in doc["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name  # each one valid JSON Schema 2020-12
    # No two paths differ only in their parameters' names (OpenAPI forbids it).
    shapes = [shape(p) for p in doc["paths"]]
    assert len(shapes) == len(set(shapes))

    seen_ids = [op["operationId"] for ops_ in doc["paths"].values() for op in ops_.values()]
    assert len(seen_ids) == len(set(seen_ids))
    by_shape = {(m, shape(p)): op for p, ops_ in doc["paths"].items() for m, op in ops_.items()}
    for route in rest.ROUTES:
        op = by_shape[(route.method.lower(), shape(route.path))]
        assert op["operationId"] in (route.rpc, f"{route.rpc}_{route.path.rpartition(':')[2]}"), route
        assert op["x-grpc-method"] == f"mediajobs.v1.{route.service}/{route.rpc}"
        assert op["tags"] == [route.tag] and op["summary"] == route.summary
        req = method_descriptor(route).input_type
        resp = method_descriptor(route).output_type
        params = {(p["in"], p["name"]): p for p in op["parameters"]}
        # Path parameters, one per field of the route's path, saying which field.
        path_params = [p for p in op["parameters"] if p["in"] == "path"]
        assert [p["description"] for p in path_params] == [f"The request's `{f}`." for f in route.path_fields]
        assert all(p["required"] for p in path_params)
        # Query parameters: what build_request takes, by JSON name.
        query = {name for (where, name) in params if where == "query"}
        if route.body == "*":
            assert query == set(), route
        else:
            path_tops = {f.split(".")[0] for f in route.path_fields}
            expect = {fd.json_name for fd in req.fields if fd.name not in path_tops and fd.name != route.body
                      and takes_query(fd)}
            assert query == expect, route
        # Idempotency-Key exactly where the request has request_id.
        assert (("header", "Idempotency-Key") in params) == ("request_id" in req.fields_by_name), route
        # The body: none, the request less its path fields, or the `body` field.
        if route.body is None:
            assert "requestBody" not in op
        else:
            body = op["requestBody"]["content"]["application/json"]["schema"]
            if route.body == "*" and not route.path_fields:
                assert body == {"$ref": f"#/components/schemas/{req.full_name}"}
            elif route.body == "*":
                whole = doc["components"]["schemas"][req.full_name]["properties"]
                assert set(body["properties"]) == set(whole) - {req.fields_by_name[f].json_name
                                                                 for f in route.path_fields}
            else:
                field_type = req.fields_by_name[route.body].message_type
                assert body == {"$ref": f"#/components/schemas/{field_type.full_name}"}
        assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{resp.full_name}"}
        for code in ("400", "401", "403", "404", "409", "429", "default"):
            assert op["responses"][code] == {"$ref": f"#/components/responses/Error{code.capitalize()}"}
        assert ("413" in op["responses"]) == (route.body is not None)
    # Errors, the key scheme, and what a 401 and a 429 carry.
    err = doc["components"]["schemas"]["Error"]["properties"]["error"]
    assert set(err["required"]) == {"code", "status", "message", "details"}
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        **doc["components"]["securitySchemes"]["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert doc["components"]["responses"]["Error401"]["headers"]["WWW-Authenticate"]["required"] is True
    assert "Retry-After" in doc["components"]["responses"]["Error429"]["headers"]


async def test_query_parameters_are_camel_case_and_typed_as_build_request_reads_them(
        gw: tuple[App, str, aiohttp.ClientSession]) -> None:
    _app, base, s = gw
    ops = operations(await fetch_document(s, base))
    list_jobs = {p["name"]: p for p in ops["ListJobs"][2]["parameters"]}
    assert list_jobs["pageSize"]["schema"] == {"type": "integer", "format": "int32", "minimum": -2**31,
                                               "maximum": 2**31 - 1}
    assert "`page_size`" in list_jobs["pageSize"]["description"]
    assert list_jobs["states"]["schema"] == {"type": "array", "items": {"$ref": "#/components/schemas/"
                                                                                "mediajobs.v1.Job.State"}}
    assert list_jobs["states"]["explode"] is True
    assert list_jobs["metadata"]["schema"]["items"]["pattern"] == "^[^:]*:"  # key:value pairs
    assert list_jobs["createTimeFrom"]["schema"] == {"$ref": "#/components/schemas/google.protobuf.Timestamp"}
    assert list_jobs["readMask"]["schema"] == {"$ref": "#/components/schemas/google.protobuf.FieldMask"}
    assert list_jobs["includeMetadata"]["schema"] == {"type": "boolean"}
    # What the document says is what the gateway takes: each parameter, in both spellings.
    job = await (await s.post(f"{base}/v1/jobs", json={"type": "PROBE", "metadata": {"team": "news"}})).json()
    for params in ({"pageSize": "5", "states": "PENDING", "metadata": "team:news", "includeMetadata": "true",
                    "createTimeFrom": "2000-01-01T00:00:00Z", "readMask": "id,metadata"},
                   {"page_size": "5", "states": "PENDING", "include_metadata": "true",
                    "create_time_from": "2000-01-01T00:00:00Z", "read_mask": "id,metadata"}):
        r = await s.get(f"{base}/v1/jobs", params=params)
        assert r.status == 200, await r.text()
        assert (await r.json())["jobs"] == [{"id": job["id"], "metadata": {"team": "news"}}]
    # A route with its body in one field takes the rest from the query (PATCH ...?updateMask=).
    patch = {p["name"] for p in ops["UpdateJob"][2]["parameters"]}
    assert patch == {"id", "updateMask"}

    # Every query parameter of every route is one the gateway reads (the server may still refuse its
    # value, but the gateway neither calls it unknown nor a message), and a message field is not one.
    doc = await fetch_document(s, base)
    tried = 0
    for method, path, op in operations(doc).values():
        query = [p for p in op.get("parameters", []) if p["in"] == "query"]
        if not op.get("x-grpc-method") or not query:
            continue
        url = base + re.sub(r"{[^}]+}", "01HA255YE6H6DEETJ5M6595ZDA", path)
        for p in query:
            r = await s.request(method.upper(), url, params={p["name"]: sample(doc, p["schema"])})
            if r.status == 400:
                err = (await r.json())["error"]
                assert not any(d.get("domain") == "mediajobs.gateway" for d in err["details"]), (path, p, err)
            tried += 1
    assert tried >= 60
    r = await s.patch(f"{base}/v1/jobs/{job['id']}", params={"job": "x", "updateMask": "priority"}, json={})
    assert r.status == 400 and "send it in the body" in (await r.json())["error"]["message"]


def sample(doc: dict[str, Any], schema: dict[str, Any]) -> str:
    """A value of a query parameter's schema, as query text."""
    if "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rpartition("/")[2]]
    if schema.get("type") == "array":
        return sample(doc, schema["items"])
    if "enum" in schema:
        return str(schema["enum"][-1])
    return {"boolean": "true", "integer": "1", "number": "1.5"}.get(schema.get("type", ""), "") or {
        "date-time": "2024-05-01T12:00:00Z"}.get(schema.get("format", ""), "") or (
        "1.5s" if schema.get("title") == "Duration" else "id" if schema.get("title") == "FieldMask"
        else "k:v" if schema.get("pattern") == "^[^:]*:" else "x")


async def test_schemas_follow_the_json_mapping_of_json_format(gw: tuple[App, str, aiohttp.ClientSession]) -> None:
    _app, base, s = gw
    doc = await fetch_document(s, base)
    schemas = doc["components"]["schemas"]
    job = schemas["mediajobs.v1.Job"]
    assert job["additionalProperties"] is False and "required" not in job
    assert set(job["properties"]) == {fd.json_name for fd in
                                      descriptor_pool.Default().FindMessageTypeByName("mediajobs.v1.Job").fields}
    assert job["properties"]["revision"]["type"] == "string"  # int64: a decimal string
    assert job["properties"]["state"] == {"$ref": "#/components/schemas/mediajobs.v1.Job.State"}
    assert schemas["mediajobs.v1.Job.State"]["enum"][:2] == ["STATE_UNSPECIFIED", "PENDING"]
    assert job["properties"]["metadata"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert job["properties"]["problems"]["type"] == "array"
    assert schemas["google.protobuf.Timestamp"]["format"] == "date-time"
    assert re.fullmatch(schemas["google.protobuf.Duration"]["pattern"], "1.500s")
    assert schemas["google.protobuf.Struct"]["type"] == "object"
    wkt = openapi.Schemas()  # well-known types no route uses (yet)
    for t in (struct_pb2.Value, struct_pb2.ListValue, wrappers_pb2.Int64Value, wrappers_pb2.BytesValue):
        wkt.ref(t.DESCRIPTOR)
    assert "type" not in wkt.components["google.protobuf.Value"]
    assert wkt.components["google.protobuf.ListValue"]["type"] == "array"
    assert wkt.components["google.protobuf.Int64Value"]["type"] == "string"
    assert wkt.components["google.protobuf.BytesValue"]["contentEncoding"] == "base64"
    assert schemas["google.protobuf.Any"]["required"] == ["@type"]
    assert schemas["google.protobuf.FieldMask"]["type"] == "string"

    # Every message in the document, every field set, as json_format writes it, fits its schema.
    registry_root = {"components": doc["components"]}
    checked = 0
    for name in schemas:
        try:
            desc = descriptor_pool.Default().FindMessageTypeByName(name)
        except KeyError:
            continue  # an enum, or Error
        for variant in (0, 1):
            msg = message_factory.GetMessageClass(desc)()
            fill(msg, variant, depth=0)
            as_json = json.loads(json.dumps(json_format.MessageToDict(msg)))
            validator = jsonschema_rs.Draft202012Validator(
                {**registry_root, "$ref": f"#/components/schemas/{name}"}, validate_formats=True)
            errors = [f"{e.instance_path}: {e.message}" for e in validator.iter_errors(as_json)]
            assert not errors, (name, variant, errors[:5], as_json)
            checked += 1
    assert checked >= 80


def fill(msg: message.Message, variant: int, depth: int) -> None:
    """Set every field of `msg` (nested messages down to depth 3) to a value
    other than its default; variant 1 picks the edge values (NaN, the largest
    64-bit numbers, negative numbers)."""
    name = msg.DESCRIPTOR.full_name
    if name == "google.protobuf.Timestamp":
        msg.FromJsonString("2024-05-01T12:00:00.000123Z" if variant else "1970-01-01T00:00:01Z")
        return
    if name == "google.protobuf.Duration":
        msg.FromJsonString("-1.5s" if variant else "3s")
        return
    if name == "google.protobuf.FieldMask":
        msg.FromJsonString("id,createTime")
        return
    if name == "google.protobuf.Struct":
        msg.update({"a": [1, "x", None, True, {"b": 2.5}]})
        return
    if name == "google.protobuf.Value":
        msg.struct_value.update({"k": "v"}) if variant else msg.__setattr__("number_value", 2.0)
        return
    if name == "google.protobuf.ListValue":
        msg.extend([1, "two", None])
        return
    if name == "google.protobuf.Any":
        msg.Pack(error_details_pb2.ErrorInfo(reason="R", domain="d", metadata={"k": "v"}))
        return
    for fd in msg.DESCRIPTOR.fields:
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            key_fd, value_fd = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
            key = scalar(key_fd, variant)
            target = getattr(msg, fd.name)
            if value_fd.message_type is not None:
                if depth < 3:
                    fill(target[key], variant, depth + 1)
            else:
                target[key] = scalar(value_fd, variant)
        elif fd.message_type is not None:
            if depth >= 3:
                continue
            if fd.is_repeated:
                for _ in range(2):
                    fill(getattr(msg, fd.name).add(), variant, depth + 1)
            else:
                fill(getattr(msg, fd.name), variant, depth + 1)
                getattr(msg, fd.name).SetInParent()
        elif fd.is_repeated:
            getattr(msg, fd.name).extend([scalar(fd, variant), scalar(fd, 1 - variant)])
        else:
            setattr(msg, fd.name, scalar(fd, variant))


def scalar(fd: FD, variant: int) -> Any:
    t = fd.type
    if fd.enum_type is not None:
        return fd.enum_type.values[-1].number
    if t == FD.TYPE_BOOL:
        return True
    if t == FD.TYPE_STRING:
        return "s" if not variant else "ünï\u2603"
    if t == FD.TYPE_BYTES:
        return b"\x00\xff\xfe" if variant else b"abc"
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return math.nan if variant and t == FD.TYPE_DOUBLE else -math.inf if variant else 0.25
    if t in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
        return -2**31 if variant else 7
    if t in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        return 2**32 - 1 if variant else 7
    if t in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        return -2**63 if variant else 2**40
    if t in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
        return 2**64 - 1 if variant else 7
    raise AssertionError(f"field type {t}")


async def test_other_modules_add_their_routes(gw: tuple[App, str, aiohttp.ClientSession]) -> None:
    app, base, s = gw
    before = await fetch_document(s, base)
    assert "/v1/test:extra" not in before["paths"]
    # After the first request too: the document is built again with the new operation.
    openapi.document(app.gateway.app, "/v1/test:extra", "GET", {
        "operationId": "TestExtra", "tags": ["test"], "summary": "An operation of another module",
        "responses": {"200": {"description": "an event", "content": {"application/json": {
            "schema": openapi.schema_ref("mediajobs.v1.JobEvent")}}}, **openapi.error_responses()}})
    after = await fetch_document(s, base)
    op = after["paths"]["/v1/test:extra"]["get"]
    assert op["operationId"] == "TestExtra" and op["responses"]["404"]["$ref"].endswith("Error404")
    # A $ref to a proto message builds its schema (and what it refers to).
    assert "mediajobs.v1.JobEvent" in after["components"]["schemas"]
    assert "mediajobs.v1.JobEvent.Type" in after["components"]["schemas"]
    schemathesis.openapi.from_dict(after).validate()
    docs = await (await s.get(f"{base}/docs")).text()
    assert "/v1/test:extra" in docs and "An operation of another module" in docs


async def test_the_docs_page_lists_every_operation_by_tag_and_loads_nothing_else(
        gw: tuple[App, str, aiohttp.ClientSession]) -> None:
    _app, base, s = gw
    r = await s.get(f"{base}/docs")
    assert r.status == 200 and r.content_type == "text/html"
    page = await r.text()
    assert 'href="/openapi.json"' in page
    # Self-contained: no scripts, and nothing fetched from anywhere (the machine may be offline).
    assert "<script" not in page and not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page
    for tag in {r.tag for r in rest.ROUTES}:
        assert f'<h2 id="tag-{tag}">{tag}</h2>' in page
    for route in rest.ROUTES:
        assert route.summary.replace("'", "&#x27;").replace('"', "&quot;") in page, route
        heading = re.sub(r"{[^}]+}", "{[^}]+}", re.escape(route.path).replace(r"\{", "{").replace(r"\}", "}"))
        assert re.search(f"<span class=path>{heading}</span>", page), route.path
    # Parameters are listed with their types; schemas have their fields.
    assert "<code>pageSize</code></td><td>query</td>" in page
    assert '<h3 id="schema-mediajobs.v1.Job">mediajobs.v1.Job</h3>' in page


async def test_bodies_that_break_the_json_parser_are_400(gw: tuple[App, str, aiohttp.ClientSession]) -> None:
    """What schemathesis found: json_format raises AttributeError for an Any
    whose @type is not a string, and json.loads RecursionError for a deep
    array; both are the client's mistakes."""
    _app, base, s = gw
    live_job = {"liveJob": {"error": {"details": [{"@type": 1.5}]}}}
    r = await s.post(f"{base}/v1/liveJobs", json=live_job)
    body = await r.json()
    assert r.status == 400 and body["error"]["status"] == "INVALID_ARGUMENT", body
    assert "CreateLiveJobRequest" in body["error"]["message"]
    r = await s.post(f"{base}/v1/jobs", data=b"[" * 200_000, headers={"Content-Type": "application/json"})
    body = await r.json()
    assert r.status == 400 and "not JSON" in body["error"]["message"], body


# -- schemathesis


@dataclass
class Fuzzing:
    """What a schemathesis run saw: failures by operation, and the status
    codes each operation answered."""
    failures: dict[str, str] = field(default_factory=dict)
    statuses: dict[str, collections.Counter[int]] = field(default_factory=lambda: collections.defaultdict(
        collections.Counter))

    def report(self) -> str:
        return "\n\n".join(f"==== {label}\n{text}" for label, text in self.failures.items())


def is_event_stream(op: Any) -> bool:
    """An SSE operation: its stream does not end, so a plain request never returns."""
    ok = op.definition.raw.get("responses", {}).get("200", {})
    return "text/event-stream" in ok.get("content", {})


def fuzz(base: str, select: Callable[[Any], bool], *, positive: int, negative: int,
         fixed_paths: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> Fuzzing:
    """schemathesis over the operations of /openapi.json that `select` picks:
    `positive` valid and `negative` invalid generated requests each, and, for
    operations whose path names an existing resource (`fixed_paths`: first
    path segment -> id), `positive` more at that resource."""
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    schema.validate()
    out = Fuzzing()
    session = requests.Session()
    current = [""]
    session.hooks["response"].append(lambda r, *a, **k: out.statuses[current[0]].update([r.status_code]))
    ops = []
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            out.failures[f"an operation ({len(out.failures)})"] = f"schemathesis cannot read it: {result.err()}"
            continue
        op = result.ok()
        if select(op) and not is_event_stream(op):
            ops.append(op)
    assert ops

    def run(op: Any, mode: GenerationMode, examples: int, path_parameters: dict[str, str] | None) -> None:
        label = f"{op.label} {mode.value}" + (" (existing resource)" if path_parameters else "")
        current[0] = op.label

        @settings(max_examples=examples, derandomize=True, database=None, deadline=None, print_blob=False,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        @given(case=op.as_strategy(generation_mode=mode, path_parameters=path_parameters))
        def call(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=base, session=session, checks=CHECKS, headers=headers, timeout=60)

        try:
            call()
        except hypothesis.errors.Unsatisfiable:
            if mode == GenerationMode.POSITIVE or op.path_parameters or op.query or op.headers or op.body:
                out.failures[label] = "no request could be generated"
            # else: nothing of the operation can be made invalid (GET /v1/jobTypes)
        except (Exception, FailureGroup) as e:  # noqa: BLE001 - collected, reported together below
            out.failures[label] = f"{type(e).__name__}: {e}"[:6000]

    for op in ops:
        run(op, GenerationMode.POSITIVE, positive, None)
        if negative:
            run(op, GenerationMode.NEGATIVE, negative, None)
    if fixed_paths:
        # At existing resources: reads first, then changes, then deletes.
        order = {"GET": 0, "PATCH": 1, "POST": 1, "DELETE": 2}
        for op in sorted(ops, key=lambda op: order.get(op.method.upper(), 1)):
            names = [p.name for p in op.path_parameters]
            segment = op.path.split("/")[2].split(":")[0] if op.path.count("/") >= 2 else ""
            if len(names) == 1 and segment in fixed_paths:
                run(op, GenerationMode.POSITIVE, positive, {names[0]: fixed_paths[segment]})
    return out


async def seed(s: aiohttp.ClientSession, base: str) -> dict[str, str]:
    """One resource of each kind, made over HTTP: first path segment -> its id."""

    async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = await s.post(f"{base}{path}", json=body)
        out: dict[str, Any] = await r.json()
        assert r.status == 200, (path, out)
        return out

    job = await post("/v1/jobs", {"type": "TRANSCODE", "params": {"source": "a.mp4"}, "metadata": {"team": "news"},
                                  "priority": "HIGH"})
    template = await post("/v1/jobTemplates", {"jobTemplateId": "web-720", "jobTemplate": {
        "displayName": "web", "outputs": [{"name": "720p", "container": "mp4", "videoCodec": "h264"}]}})
    entry = await post("/v1/entries", {"entry": {"name": "clip", "referenceId": "ref-1", "tags": ["news"]}})
    info = await post("/v1/mediaInfos", {"mediaInfo": {"entryId": entry["id"], "fileSizeBytes": "1000",
                                                       "containerFormat": "mp4"}})
    upload = await post("/v1/bulkUploads", {"bulkUpload": {"fileName": "a.csv"},
                                            "content": base64.b64encode(b"*title,referenceId\nA,r1\n").decode()})
    live = await post("/v1/liveJobs", {"liveJob": {"bucket": "events", "destination": "studio-a/main",
                                                   "input": {"serverType": "RTMP"}}})
    await post("/v1/projects", {"project": {"name": "acme"}})
    key = await post("/v1/apiKeys", {"project": "acme", "role": "editor", "name": "k"})
    return {"jobs": job["id"], "jobTemplates": template["id"], "entries": entry["id"], "mediaInfos": info["id"],
            "bulkUploads": upload["id"], "liveJobs": live["id"], "projects": "acme", "apiKeys": key["apiKey"]["id"],
            "transcodes": job["id"]}


def is_rest_or_meta_raw(op: dict[str, Any]) -> bool:
    """An operation of rest.ROUTES, /openapi.json or /docs (not another module's)."""
    return op.get("operationId", "").split("_")[0] in REST_OPERATION_IDS | {"GetOpenApiDocument", "GetApiDocs"}


def is_rest_or_meta(op: Any) -> bool:
    return is_rest_or_meta_raw(op.definition.raw)


def documented_labels(doc: dict[str, Any], select: Callable[[dict[str, Any]], bool]) -> set[str]:
    """schemathesis's labels ("GET /v1/jobs/{id}") of the operations `select` picks, less event streams."""
    return {f"{m.upper()} {p}" for p, ops in doc["paths"].items() for m, op in ops.items()
            if select(op) and "text/event-stream" not in op["responses"].get("200", {}).get("content", {})}


async def test_schemathesis_finds_no_failures_in_the_rest_api(tmp_path: Path) -> None:
    async with gateway_app(str(tmp_path / "db.sqlite")) as (_app, base, s):
        seeded = await seed(s, base)
        doc = await fetch_document(s, base)
        run = await asyncio.to_thread(fuzz, base, is_rest_or_meta, positive=12, negative=8, fixed_paths=seeded)
    assert not run.failures, run.report()
    # Every operation was called, and real resources came back (their schemas checked) from each kind of read.
    # (schemathesis leaves out the document's own GET /openapi.json.)
    called = {label for label, c in run.statuses.items() if c}
    assert called >= documented_labels(doc, is_rest_or_meta_raw) - {"GET /openapi.json"}
    ok = {label for label, c in run.statuses.items() if c[200]}
    for label in ("GET /v1/jobs/{id}", "GET /v1/jobs", "GET /v1/entries/{id}", "GET /v1/mediaInfos/{id}",
                  "GET /v1/jobTemplates/{id}", "GET /v1/bulkUploads/{id}", "GET /v1/liveJobs/{id}",
                  "GET /v1/projects/{name}", "GET /v1/apiKeys"):
        assert label in ok, (label, dict(run.statuses.get(label, {})))
    assert all(code < 500 for c in run.statuses.values() for code in c)


async def test_schemathesis_finds_no_failures_in_routes_other_modules_describe(tmp_path: Path) -> None:
    async with gateway_app(str(tmp_path / "db.sqlite")) as (_app, base, s):
        seeded = await seed(s, base)
        doc = await fetch_document(s, base)
        expected = documented_labels(doc, lambda op: not is_rest_or_meta_raw(op))
        if not expected:
            pytest.skip("no other module describes a route (but event streams, which never end)")
        run = await asyncio.to_thread(fuzz, base, lambda op: not is_rest_or_meta(op), positive=12, negative=8,
                                      fixed_paths=seeded)
    assert not run.failures, run.report()
    assert {label for label, c in run.statuses.items() if c} >= expected


async def test_schemathesis_with_api_keys_401_and_403_match_the_document(tmp_path: Path) -> None:
    """With --auth keys: no key is 401 (with WWW-Authenticate) everywhere; a
    viewer's key reads and is 403 on every change, all as documented."""
    app = await start_app(str(tmp_path / "db.sqlite"), auth="keys", http_listen="127.0.0.1:0")
    try:
        base = f"http://127.0.0.1:{app.gateway.port}"
        viewer = await make_key(app, "viewer")
        anonymous = await asyncio.to_thread(fuzz, base, is_rest_or_meta, positive=2, negative=0)
        as_viewer = await asyncio.to_thread(fuzz, base, is_rest_or_meta, positive=3, negative=0,
                                            headers={"Authorization": f"Bearer {viewer}"})
    finally:
        await app.stop(None)
    assert not anonymous.failures, anonymous.report()
    assert not as_viewer.failures, as_viewer.report()
    # (What the gateway cannot parse is 400 before the server looks at the key.)
    for label, codes in anonymous.statuses.items():
        if label in ("GET /openapi.json", "GET /docs"):
            assert set(codes) == {200}
        else:
            assert codes[401] and set(codes) <= {400, 401}, (label, codes)
    writes = {label: c for label, c in as_viewer.statuses.items() if not label.startswith("GET ")}
    assert writes and all(set(c) <= {400, 403} for c in writes.values()), writes
    assert all(c[403] for c in writes.values()), writes
    assert any(c[200] for label, c in as_viewer.statuses.items() if label.startswith("GET /v1/"))
