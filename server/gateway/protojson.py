"""Messages in the protos' JSON mapping, fast: `message_to_dict(msg)` returns
exactly what `json_format.MessageToDict(msg)` returns (lowerCamelCase names,
int64 as strings, enums by name, Timestamps in RFC 3339, bytes in base64,
fields at their default left out), at a fraction of the cost.

Why not json_format itself: it is pure Python and re-decides, for every
field of every message, what kind of field it is (map? repeated? enum with a
JSON name option? which well-known type?). For the gateway's hot path, a
GET of a job, that was a fifth of the gateway's CPU per request (py-spy,
scripts/bench_gateway.py). Here those decisions are made once per message
type, from its descriptor, into a table of field number -> (JSON name,
converter); a message then costs one ListFields() and one call per set
field. protobuf's upb backend has a JSON encoder in C but does not expose it
to Python, and no maintained library converts protobuf-python messages to
JSON another way, so this is ours.

What json_format prints by a rule of its own is left to it: enum value names
are taken from json_format itself when a table is built (so a `json_name`
enum option is honoured), and Any, Duration and FieldMask are printed by
json_format / the message's own ToJsonString. tests/test_gateway_protojson.py
checks the result against json_format for every message type of the API,
filled at random.
"""
from __future__ import annotations

import base64
import math
from typing import Any, Callable

from google.protobuf import descriptor, json_format, message
from google.protobuf.internal import type_checkers

FD = descriptor.FieldDescriptor
Converter = Callable[[Any], Any]

_INT64 = {FD.CPPTYPE_INT64, FD.CPPTYPE_UINT64}
_printers: dict[str, Converter] = {}
# json_format's own rule for one field value, used only while a table is
# built (enum names); protobuf is pinned, and the tests compare the results.
_reference: Any = getattr(json_format, "_Printer")()


def message_to_dict(msg: message.Message) -> Any:
    """json_format.MessageToDict(msg), with its default options."""
    return printer(msg.DESCRIPTOR)(msg)


def printer(desc: Any) -> Converter:
    """The converter of one message type (built once, then cached)."""
    fn = _printers.get(desc.full_name)
    if fn is None:
        fn = _build(desc)
    return fn


def _build(desc: Any) -> Converter:
    full = desc.full_name
    if desc.file.name == "google/protobuf/wrappers.proto":
        value = _scalar(desc.fields_by_name["value"])
        fn: Converter = lambda m: value(m.value)  # noqa: E731
    elif full == "google.protobuf.Struct":
        fn = _struct
    elif full == "google.protobuf.Value":
        fn = _value
    elif full == "google.protobuf.ListValue":
        fn = _list_value
    elif full in ("google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"):
        fn = _to_json_string
    elif full.startswith("google.protobuf.") and full != "google.protobuf.Empty":  # Any, descriptor.proto's
        fn = json_format.MessageToDict  # the type registry and any rule json_format keeps for itself
    else:
        fn = _regular(desc)
    _printers[full] = fn
    return fn


def _regular(desc: descriptor.Descriptor) -> Converter:
    # A message field's converter looks its type's printer up when called, so
    # a type that contains itself (directly or not) needs no special case.
    table: dict[int, tuple[str, Converter]] = {}
    for fd in desc.fields:
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            table[fd.number] = (fd.json_name, _map(fd.message_type))
        elif fd.is_repeated:
            table[fd.number] = (fd.json_name, _repeated(_field(fd)))
        else:
            table[fd.number] = (fd.json_name, _field(fd))

    def convert(m: message.Message) -> dict[str, Any]:
        js = {}
        for fd, v in m.ListFields():
            name, fn = table[fd.number]
            js[name] = fn(v)
        return js

    return convert


def _repeated(one: Converter) -> Converter:
    return lambda v: [one(x) for x in v]


def _map(entry: descriptor.Descriptor) -> Converter:
    key_fd = entry.fields_by_name["key"]
    value = _field(entry.fields_by_name["value"])
    if key_fd.cpp_type == FD.CPPTYPE_BOOL:
        return lambda v: {("true" if k else "false"): value(v[k]) for k in v}
    if key_fd.cpp_type == FD.CPPTYPE_STRING:
        return lambda v: {k: value(v[k]) for k in v}
    return lambda v: {str(k): value(v[k]) for k in v}


def _field(fd: Any) -> Converter:
    if fd.cpp_type == FD.CPPTYPE_MESSAGE:
        sub = fd.message_type
        return lambda v: printer(sub)(v)
    return _scalar(fd)


def _scalar(fd: Any) -> Converter:
    ct = fd.cpp_type
    if ct == FD.CPPTYPE_ENUM:
        if fd.enum_type.full_name == "google.protobuf.NullValue":
            return lambda v: None
        names = {ev.number: _reference._FieldToJsonObject(fd, ev.number) for ev in fd.enum_type.values}
        if fd.enum_type.is_closed:
            return lambda v: names[v] if v in names else _reference._FieldToJsonObject(fd, v)  # raises
        return lambda v: names.get(v, v)
    if ct == FD.CPPTYPE_STRING:
        if fd.type == FD.TYPE_BYTES:
            return lambda v: base64.b64encode(v).decode("ascii")
        return _same
    if ct in _INT64:
        return str
    if ct == FD.CPPTYPE_DOUBLE:
        return _double
    if ct == FD.CPPTYPE_FLOAT:
        return _float
    return _same  # bool, int32, uint32


def _same(v: Any) -> Any:
    return v


def _special(v: float) -> str | None:
    if math.isinf(v):
        return "-Infinity" if v < 0 else "Infinity"
    if math.isnan(v):
        return "NaN"
    return None


def _double(v: float) -> Any:
    if v - v != 0.0:  # inf or nan
        return _special(v)
    return v


def _float(v: float) -> Any:
    if v - v != 0.0:
        return _special(v)
    return type_checkers.ToShortestFloat(v)


def _to_json_string(m: Any) -> str:
    return m.ToJsonString()


def _value(m: Any) -> Any:
    which = m.WhichOneof("kind")
    if which is None or which == "null_value":
        return None
    if which == "string_value":
        return m.string_value
    if which == "number_value":
        v = m.number_value
        if v - v != 0.0:
            raise ValueError(f"Fail to serialize {_special(v)} for Value.number_value, which would parse as "
                             "string_value")
        return v
    if which == "bool_value":
        return m.bool_value
    if which == "struct_value":
        return _struct(m.struct_value)
    return _list_value(m.list_value)


def _struct(m: Any) -> dict[str, Any]:
    fields = m.fields
    return {k: _value(fields[k]) for k in fields}


def _list_value(m: Any) -> list[Any]:
    return [_value(v) for v in m.values]
