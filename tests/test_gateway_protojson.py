"""The gateway's fast JSON mapping (server/gateway/protojson.py) gives
exactly json_format.MessageToDict's answer, for every message type of the
API filled at random: every kind of field (scalars at their edges, enums
known and unknown, bytes, maps with each key type, repeated fields,
well-known types, nested and recursive messages)."""
from __future__ import annotations

import math
import random
from typing import Any

import pytest
from google.protobuf import any_pb2, descriptor, json_format, struct_pb2, timestamp_pb2
from google.protobuf import duration_pb2, field_mask_pb2, wrappers_pb2
from google.rpc import error_details_pb2, status_pb2

from mediajobs.server.gateway.protojson import message_to_dict
from mediajobs.server.gateway.upstream import SERVICES

FD = descriptor.FieldDescriptor


def api_message_types() -> list[descriptor.Descriptor]:
    """Every message type the API's RPCs take or return, and every message
    reachable from them."""
    seen: dict[str, descriptor.Descriptor] = {}
    todo = [d for s in SERVICES.values() for m in s.methods for d in (m.input_type, m.output_type)]
    while todo:
        d = todo.pop()
        if d.full_name in seen:
            continue
        seen[d.full_name] = d
        todo += [f.message_type for f in d.fields if f.message_type is not None]
    return sorted(seen.values(), key=lambda d: d.full_name)


TYPES = api_message_types()
INTS = {
    FD.TYPE_INT32: (-2**31, 2**31 - 1), FD.TYPE_SINT32: (-2**31, 2**31 - 1), FD.TYPE_SFIXED32: (-2**31, 2**31 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1), FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_INT64: (-2**63, 2**63 - 1), FD.TYPE_SINT64: (-2**63, 2**63 - 1), FD.TYPE_SFIXED64: (-2**63, 2**63 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1), FD.TYPE_FIXED64: (0, 2**64 - 1),
}


def scalar(rng: random.Random, fd: Any) -> Any:
    t = fd.type
    if t in INTS:
        lo, hi = INTS[t]
        return rng.choice([lo, hi, 0, 1, -1 if lo < 0 else 2, rng.randint(lo, hi)])
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return rng.choice([0.0, 1.5, -2.25, 1e300 if t == FD.TYPE_DOUBLE else 3.4e38, 0.1, math.inf, -math.inf,
                           math.nan, rng.uniform(-1e6, 1e6)])
    if t == FD.TYPE_BOOL:
        return rng.random() < 0.5
    if t == FD.TYPE_STRING:
        return rng.choice(["", "a", "é ✓ \U0001f3ac", "with \"quotes\" and \\ and \n", "x" * rng.randint(0, 40)])
    if t == FD.TYPE_BYTES:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 20)))
    if t == FD.TYPE_ENUM:
        values = [v.number for v in fd.enum_type.values]
        return rng.choice(values + ([99, -5] if not fd.enum_type.is_closed else []))
    raise AssertionError(fd.type)


def json_value(rng: random.Random, depth: int) -> struct_pb2.Value:
    v = struct_pb2.Value()
    kind = rng.choice(["null", "num", "str", "bool"] + (["struct", "list"] if depth < 3 else []))
    if kind == "null":
        v.null_value = struct_pb2.NULL_VALUE
    elif kind == "num":
        v.number_value = rng.choice([0, 1, -3.5, 1e20, rng.uniform(-100, 100)])
    elif kind == "str":
        v.string_value = rng.choice(["", "s", "ünï"])
    elif kind == "bool":
        v.bool_value = rng.random() < 0.5
    elif kind == "struct":
        v.struct_value.update({})
        for i in range(rng.randint(0, 3)):
            v.struct_value.fields[f"k{i}"].CopyFrom(json_value(rng, depth + 1))
    else:
        v.list_value.values.add()
        for _ in range(rng.randint(0, 3)):
            v.list_value.values.add().CopyFrom(json_value(rng, depth + 1))
    return v


def fill(rng: random.Random, msg: Any, depth: int = 0) -> None:
    name = msg.DESCRIPTOR.full_name
    if name == "google.protobuf.Timestamp":
        msg.seconds = rng.choice([0, 1, 1_700_000_000, 253402300799, -62135596800, rng.randint(0, 2_000_000_000)])
        msg.nanos = rng.choice([0, 1_000_000, 123_000, 999_999_999, 5])
        return
    if name == "google.protobuf.Duration":
        msg.seconds = rng.choice([0, 1, 3600, -5])
        msg.nanos = 0 if msg.seconds == 0 else (rng.choice([0, 500_000_000]) * (1 if msg.seconds > 0 else -1))
        return
    if name == "google.protobuf.FieldMask":
        msg.paths.extend(rng.sample(["state", "priority", "metadata.team", "params"], rng.randint(0, 3)))
        return
    if name == "google.protobuf.Struct":
        for i in range(rng.randint(0, 3)):
            msg.fields[f"f{i}"].CopyFrom(json_value(rng, depth))
        return
    if name == "google.protobuf.Value":
        msg.CopyFrom(json_value(rng, depth))
        return
    if name == "google.protobuf.ListValue":
        for _ in range(rng.randint(0, 3)):
            msg.values.add().CopyFrom(json_value(rng, depth))
        return
    if name == "google.protobuf.Any":
        inner = error_details_pb2.ErrorInfo(reason="R", domain="d", metadata={"a": "b"})
        if rng.random() < 0.5:
            msg.Pack(inner)
        return
    for fd in msg.DESCRIPTOR.fields:
        if rng.random() < 0.3:
            continue  # left at its default
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            kfd, vfd = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
            target = getattr(msg, fd.name)
            for _ in range(rng.randint(0, 3)):
                k = scalar(rng, kfd)
                if vfd.message_type is not None:
                    if depth < 3:
                        fill(rng, target[k], depth + 1)
                else:
                    v = scalar(rng, vfd)
                    target[k] = v
        elif fd.message_type is not None:
            if depth >= 3:
                continue
            if fd.is_repeated:
                for _ in range(rng.randint(0, 3)):
                    fill(rng, getattr(msg, fd.name).add(), depth + 1)
            else:
                sub = getattr(msg, fd.name)
                sub.SetInParent()
                fill(rng, sub, depth + 1)
        elif fd.is_repeated:
            getattr(msg, fd.name).extend(scalar(rng, fd) for _ in range(rng.randint(0, 4)))
        else:
            setattr(msg, fd.name, scalar(rng, fd))


def same(a: Any, b: Any) -> bool:
    """Equal, NaN included, and with the same types (1 is not 1.0 here: the
    JSON text differs)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def reference(msg: Any) -> tuple[str, Any]:
    try:
        return "ok", json_format.MessageToDict(msg)
    except (ValueError, json_format.SerializeToJsonError) as e:
        return "error", type(e).__name__


def ours(msg: Any) -> tuple[str, Any]:
    try:
        return "ok", message_to_dict(msg)
    except (ValueError, json_format.SerializeToJsonError) as e:
        return "error", type(e).__name__


def test_the_api_has_many_message_types() -> None:
    names = {d.full_name for d in TYPES}
    assert len(TYPES) > 60 and "mediajobs.v1.Job" in names and "google.protobuf.Struct" in names


@pytest.mark.parametrize("desc", TYPES, ids=lambda d: d.full_name)
def test_matches_json_format(desc: descriptor.Descriptor) -> None:
    from google.protobuf import message_factory

    cls = message_factory.GetMessageClass(desc)
    assert message_to_dict(cls()) == json_format.MessageToDict(cls())
    errors = 0
    for seed in range(40):
        rng = random.Random(f"{desc.full_name}/{seed}")
        msg = cls()
        fill(rng, msg)
        want, got = reference(msg), ours(msg)
        if want[0] == "error":
            # json_format refuses NaN / Infinity in a Value; so must we (never a different JSON).
            assert got[0] == "error", (msg, got)
            errors += 1
            continue
        assert got[0] == "ok" and same(got[1], want[1]), f"seed {seed}:\n{msg}\nours {got}\njson_format {want}"
    assert errors < 40  # most messages printed


@pytest.mark.parametrize("msg", [
    wrappers_pb2.Int64Value(value=-(2**63)), wrappers_pb2.FloatValue(value=0.1), wrappers_pb2.BytesValue(value=b"\xff"),
    wrappers_pb2.BoolValue(), timestamp_pb2.Timestamp(seconds=1, nanos=1), duration_pb2.Duration(seconds=-1, nanos=-5),
    field_mask_pb2.FieldMask(paths=["a.b_c"]), struct_pb2.Value(), struct_pb2.ListValue(),
    status_pb2.Status(code=5, message="m", details=[any_pb2.Any()]),
], ids=lambda m: m.DESCRIPTOR.full_name)
def test_well_known_types(msg: Any) -> None:
    if msg.DESCRIPTOR.full_name == "google.rpc.Status":
        msg.details[0].Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=3)))
    assert same(message_to_dict(msg), json_format.MessageToDict(msg))


def test_timestamp_out_of_range_is_refused_like_json_format() -> None:
    ts = timestamp_pb2.Timestamp(seconds=253402300800)  # year 10000
    with pytest.raises(ValueError):
        json_format.MessageToDict(ts)
    with pytest.raises(ValueError):
        message_to_dict(ts)


def synthetic_types() -> list[descriptor.Descriptor]:
    """Kinds of field the API does not use (yet): maps keyed by integers and
    bools, map values that are messages or enums, floats, proto2 (closed)
    enums and a recursive message; built at run time in a pool of their own."""
    from google.protobuf import descriptor_pb2, descriptor_pool

    fdp = descriptor_pb2.FileDescriptorProto(name="protojson_test.proto", package="protojsontest", syntax="proto2")
    fdp.dependency.append("google/protobuf/timestamp.proto")
    enum = fdp.enum_type.add(name="Closed")
    enum.value.add(name="CLOSED_A", number=0)
    enum.value.add(name="CLOSED_B", number=7)
    msg = fdp.message_type.add(name="Kinds")
    F = descriptor_pb2.FieldDescriptorProto
    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    fields = [("f32", F.TYPE_FLOAT, opt, ""), ("fs", F.TYPE_FLOAT, rep, ""), ("closed", F.TYPE_ENUM, opt,
              ".protojsontest.Closed"), ("self", F.TYPE_MESSAGE, opt, ".protojsontest.Kinds"),
              ("when", F.TYPE_MESSAGE, opt, ".google.protobuf.Timestamp"), ("s64", F.TYPE_SINT64, rep, "")]
    for n, (name, t, label, tn) in enumerate(fields, 1):
        f = msg.field.add(name=name, number=n, type=t, label=label, json_name=name)
        if tn:
            f.type_name = tn
    for n, (key, value, vtn) in enumerate([(F.TYPE_INT64, F.TYPE_STRING, ""), (F.TYPE_BOOL, F.TYPE_INT32, ""),
                                           (F.TYPE_UINT32, F.TYPE_MESSAGE, ".protojsontest.Kinds"),
                                           (F.TYPE_INT32, F.TYPE_ENUM, ".protojsontest.Closed")], 10):
        entry = msg.nested_type.add(name=f"M{n}Entry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=key, label=opt, json_name="key")
        v = entry.field.add(name="value", number=2, type=value, label=opt, json_name="value")
        if vtn:
            v.type_name = vtn
        msg.field.add(name=f"m{n}", number=n, type=F.TYPE_MESSAGE, label=rep,
                      type_name=f".protojsontest.Kinds.M{n}Entry", json_name=f"m{n}")
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(fdp)
    return [pool.FindMessageTypeByName("protojsontest.Kinds")]


@pytest.mark.parametrize("seed", range(60))
def test_matches_json_format_on_other_kinds_of_field(seed: int) -> None:
    from google.protobuf import message_factory

    (desc,) = synthetic_types()
    msg = message_factory.GetMessageClass(desc)()
    fill(random.Random(seed), msg)
    want, got = reference(msg), ours(msg)
    assert want[0] == got[0] and same(got[1], want[1]), f"\n{msg}\nours {got}\njson_format {want}"
