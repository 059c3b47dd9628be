"""Client payloads: what the API accepts in google.protobuf.Struct fields and
in google.rpc.Status, and how large any reply may grow.

Every free-form payload the API stores passes ONE validator here before it
is written: CreateJob / BatchCreateJobs `params`, Heartbeat `details`,
CompleteJob / CompleteJobs `result` (`struct_violations`) and FailJob `error`
(`status_violations`). A payload is refused (INVALID_ARGUMENT, a BadRequest
field violation whose `field` is the path to the culprit, such as
`params.outputs[2].size` or `completions[3].result.a.b`) when it

- nests objects and lists deeper than MAX_PAYLOAD_DEPTH,
- holds a google.protobuf.Value with no kind set (Go's protojson and grpcurl
  refuse to write one: "nil Value"),
- holds a number that is NaN or +-Infinity (JSON has no such numbers;
  protojson and Python's json_format refuse to write them as a Value),
- is larger than its byte limit (below), or
- (a Status) carries a detail whose type a client cannot resolve.

The byte limits are chosen so that any job the server accepts can be read
back by a client with gRPC's default 4 MiB receive limit: alone, and inside
any page, snapshot chunk or watch message (see MAX_JOB_BYTES and
MESSAGE_BUDGET_BYTES).

A request so deeply nested that the protobuf runtime itself refuses to parse
it never reaches a servicer's code: `request_deserializer` hands over an
UndecodableRequest, which errors.handle_errors answers with the same INVALID_ARGUMENT, found by walking the raw bytes
(`locate_too_deep`).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

from google.protobuf import (
    descriptor,
    duration_pb2,
    empty_pb2,
    json_format,
    message,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from google.rpc import error_details_pb2, status_pb2

from mediajobs.v1 import resources_pb2 as res

from .errors import ServiceError, UndecodableRequest, clip, invalid_argument

Job = res.Job
T = TypeVar("T")
Violation = tuple[str, str]

KiB = 1024
MiB = 1024 * KiB

# -- how large a message may be -------------------------------------------------

MAX_MESSAGE_BYTES = 4 * MiB
"""gRPC's default receive limit (grpc-go, grpc-java, grpc-python, grpc-node,
grpcurl): the largest message a client that changed nothing can read."""

MAX_REPLY_BYTES = MAX_MESSAGE_BYTES - 64 * KiB
"""The most one reply whose size is measured exactly may hold (an export
document, an import reply, a CompleteJobs reply). The 64 KiB left over covers
the envelope around the measured body (page tokens, counts, framing)."""

MESSAGE_BUDGET_BYTES = 3 * MiB
"""Where pages, snapshot chunks, batches and watch messages stop adding items:
an item is added only while the total stays within this budget, and the
first item always goes in. Because no item is larger than MAX_JOB_BYTES
(below this budget), every page, chunk and message fits in MAX_MESSAGE_BYTES
with a margin of 1 MiB for the envelope. Use `MessageBudget` or `pack`."""

ITEM_FRAMING_BYTES = 6
"""What an item costs beyond its own bytes in a repeated field (tag and
length prefix: 1 + up to 5 bytes)."""

# -- how deep a payload may nest ------------------------------------------------------

MAX_PAYLOAD_DEPTH = 20
"""Levels of objects and lists in one payload: the top-level Struct (e.g.
`params`) is level 1, and each object or list inside adds one
(`{"a": [{"b": 1}]}` is 3 levels).

Why 20: protobuf runtimes refuse to parse messages nested deeper than 100
levels below the message being parsed (Python/upb, C++ and Java; measured
here with upb: 100 nested levels parse, 101 do not). What a payload costs:

- each object level: Struct -> FieldsEntry (map entry) -> Value = 3 levels;
- each list level:   Value -> ListValue -> Value = 2 levels (objects are
  the worst case);
- the outermost containers of a job: WatchJobsResponse -> JobEvent -> Job,
  AcquireJobsResponse -> LeasedJob -> Job, CompleteJobsResponse ->
  CompleteJobResult -> Job: 2 levels below the top.

So a payload of D object levels needs 2 + 3 * D nested levels inside a
watch message: D = 33 is 101 (before this limit such a job was accepted and
then killed every Python watcher replaying it), D = 32 is the last that
parses. At
D = 20 a job needs 62 levels: 38 to spare, room for 12 more object levels
or 19 more wrapper messages around a Job before any runtime could fail.
JSON encoders are no tighter (Go's protojson allows 10,000 levels, Python's
json_format recurses once per level against a limit of 1,000)."""

MAX_REPORTED_VIOLATIONS = 10
"""A payload's walk stops after this many violations (errors.py shows 20)."""

# -- byte limits of what a job stores --------------------------------------------------

MAX_PARAMS_BYTES = 1 * MiB
"""CreateJobRequest.params, serialized."""

MAX_TEMPLATE_PARAMS_BYTES = 16 * KiB
"""What a job template adds to params (`params.outputs`): at most 16 outputs
of bounded fields (names of 64 characters, a handful of enums and numbers),
well under 1 KiB each. Counted in MAX_JOB_BYTES, never checked."""

MAX_RESULT_BYTES = 1 * MiB
"""CompleteJobRequest.result, serialized."""

MAX_PROGRESS_DETAILS_BYTES = 64 * KiB
"""HeartbeatRequest.details (kept as Job.progress_details), serialized: a
progress report, rewritten on every heartbeat that changes it."""

MAX_ERROR_BYTES = 64 * KiB
"""FailJobRequest.error (kept as Job.error), serialized."""

MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY_CHARS = 128
MAX_METADATA_VALUE_CHARS = 4096
MAX_METADATA_BYTES = 256 * KiB
"""All of a job's metadata keys and values together, UTF-8 (64 entries of
4 KiB of ASCII fit; the per-entry limits alone would allow 1 MiB of 4-byte
characters)."""

MAX_PROGRESS_MESSAGE_CHARS = 1024
"""HeartbeatRequest.message (Job.progress_message), also when the server
writes it (a retried failure's message); at most 4 KiB of UTF-8."""

MAX_ABORT_REASON_CHARS = 1024
"""AbortJobRequest.reason (Job.abort_reason); at most 4 KiB of UTF-8."""

MAX_JOB_PROBLEMS = 20
"""Job.problems keeps the newest this many (ListJobProblems has them all)."""

MAX_PROBLEM_MESSAGE_CHARS = 1024
MAX_PROBLEM_DETAIL_CHARS = 256
MAX_PROBLEM_BYTES = 8 * KiB
"""One JobProblem: a message of 1024 characters (4 KiB of UTF-8) and a few
details of 256 characters (1 KiB each), with ids and a timestamp."""

JOB_FIXED_BYTES = 16 * KiB
"""Everything else in a job: ids, type (64), creator (128 characters),
template id, timestamps, counters, the lease (identity of 200 characters and
the lock key), and the framing of every field."""

MAX_JOB_BYTES = (
    MAX_PARAMS_BYTES + MAX_TEMPLATE_PARAMS_BYTES + MAX_RESULT_BYTES + MAX_PROGRESS_DETAILS_BYTES
    + MAX_ERROR_BYTES + MAX_METADATA_BYTES + 4 * MAX_PROGRESS_MESSAGE_CHARS + 4 * MAX_ABORT_REASON_CHARS
    + MAX_JOB_PROBLEMS * MAX_PROBLEM_BYTES + JOB_FIXED_BYTES
)
"""The largest job the limits above allow: 1 MiB + 16 KiB params, 1 MiB
result, 64 KiB progress details, 64 KiB error, 256 KiB metadata, 4 KiB
progress message, 4 KiB abort reason, 20 x 8 KiB problems and 16 KiB of the
rest = 2,632 KiB (2.57 MiB). It is below MESSAGE_BUDGET_BYTES, so one job
always fits a page, chunk or watch message, with a JobEvent / LeasedJob /
WatchJobsResponse envelope of a few dozen bytes, in MAX_MESSAGE_BYTES."""

assert MAX_JOB_BYTES <= MESSAGE_BUDGET_BYTES < MAX_REPLY_BYTES < MAX_MESSAGE_BYTES

MAX_MEDIA_INFO_BYTES = 512 * KiB
"""One MediaInfo record, serialized (its three free-form fields are at most
64 Ki characters each; everything else is short). ListMediaInfos pages
should stop at MESSAGE_BUDGET_BYTES like every other page."""

JOB_CREATED_FIELDS_BYTES = 256
"""What the server adds to a CreateJobRequest to make its Job (id, state,
project, creator, timestamps, revision, counters, framing)."""

# -- payload checks -----------------------------------------------------------------------

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PATH_KEY_CHARS = 32


def field_path(root: str, parts: Iterable[str | int]) -> str:
    """`params` + ["outputs", 2, "size"] -> `params.outputs[2].size`; keys that
    are not identifiers are quoted (`params["a b"]`) and cut to 32 characters."""
    out = [root]
    for p in parts:
        if isinstance(p, int):
            out.append(f"[{p}]")
        elif _IDENTIFIER.match(p) and len(p) <= 64:
            out.append(f".{p}")
        else:
            shown = p if len(p) <= _PATH_KEY_CHARS else p[:_PATH_KEY_CHARS] + "…"
            out.append("[" + json.dumps(shown, ensure_ascii=False) + "]")
    return "".join(out)


def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n % MiB == 0 else f"{n // KiB} KiB" if n % KiB == 0 else f"{n} bytes"


def _too_large(field: str, actual: int, limit: int) -> Violation:
    return (field, f"{actual} bytes serialized; at most {limit} ({_size(limit)})")


def _too_deep(path: str, level: int) -> Violation:
    return (
        path,
        f"nested {level} levels deep; at most {MAX_PAYLOAD_DEPTH} levels of objects and lists "
        "(so that every protobuf runtime can read the job back inside a watch message)",
    )


_KINDLESS = (
    "a google.protobuf.Value with no kind set; send null_value for null "
    "(Go's protojson and grpcurl cannot write a Value without a kind)"
)


def _not_finite(x: float) -> str:
    return f"{x} is not a finite number; JSON has no NaN or Infinity (send a string or null instead)"


class _Walk:
    """One walk over a parsed Struct / Value / ListValue, collecting
    violations (at most MAX_REPORTED_VIOLATIONS) with their paths."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.parts: list[str | int] = []
        self.found: list[Violation] = []

    def full(self) -> bool:
        return len(self.found) >= MAX_REPORTED_VIOLATIONS

    def report(self, description: str) -> None:
        self.found.append((field_path(self.root, self.parts), description))

    def walk_struct(self, s: struct_pb2.Struct, level: int) -> None:
        if level > MAX_PAYLOAD_DEPTH:
            self.found.append(_too_deep(field_path(self.root, self.parts), level))
            return
        for key, value in s.fields.items():
            self.parts.append(key)
            self.walk_value(value, level)
            self.parts.pop()
            if self.full():
                return

    def walk_list(self, values: struct_pb2.ListValue, level: int) -> None:
        if level > MAX_PAYLOAD_DEPTH:
            self.found.append(_too_deep(field_path(self.root, self.parts), level))
            return
        for i, value in enumerate(values.values):
            self.parts.append(i)
            self.walk_value(value, level)
            self.parts.pop()
            if self.full():
                return

    def walk_value(self, v: struct_pb2.Value, level: int) -> None:
        """`v` sits inside a container at `level` (0 for a Value on its own)."""
        kind = v.WhichOneof("kind")
        if kind == "struct_value":
            self.walk_struct(v.struct_value, level + 1)
        elif kind == "list_value":
            self.walk_list(v.list_value, level + 1)
        elif kind == "number_value":
            if not math.isfinite(v.number_value):
                self.report(_not_finite(v.number_value))
        elif kind is None:
            self.report(_KINDLESS)


def struct_violations(value: struct_pb2.Struct, field: str, max_bytes: int) -> list[Violation]:
    """Why `value` (a Struct the API is about to store under `field`) is
    refused; empty when it is fine. Paths start with `field`."""
    size = value.ByteSize()
    if size > max_bytes:
        return [_too_large(field, size, max_bytes)]
    walk = _Walk(field)
    walk.walk_struct(value, 1)
    return walk.found


_WELL_KNOWN_DETAILS: tuple[type[message.Message], ...] = (
    struct_pb2.Struct, struct_pb2.Value, struct_pb2.ListValue,
    duration_pb2.Duration, timestamp_pb2.Timestamp, empty_pb2.Empty,
    wrappers_pb2.StringValue, wrappers_pb2.BytesValue, wrappers_pb2.BoolValue,
    wrappers_pb2.Int32Value, wrappers_pb2.Int64Value, wrappers_pb2.UInt32Value, wrappers_pb2.UInt64Value,
    wrappers_pb2.DoubleValue, wrappers_pb2.FloatValue,
)
_RPC_DETAILS: tuple[Any, ...] = (
    error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo, error_details_pb2.DebugInfo,
    error_details_pb2.QuotaFailure, error_details_pb2.PreconditionFailure, error_details_pb2.BadRequest,
    error_details_pb2.RequestInfo, error_details_pb2.ResourceInfo, error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
)
DETAIL_TYPES: dict[str, Any] = {cls.DESCRIPTOR.full_name: cls for cls in (*_RPC_DETAILS, *_WELL_KNOWN_DETAILS)}
"""google.rpc.Status detail types a client can resolve: the google.rpc error
details (google/rpc/error_details.proto, which every gRPC ecosystem ships)
and google.protobuf well-known types. Anything else would be an Any that
clients print as an error or as opaque bytes."""

_DETAIL_TYPES_HINT = "google.rpc error details (ErrorInfo, BadRequest, DebugInfo, ...) or google.protobuf.Struct/Value"


def status_violations(status: status_pb2.Status, field: str, max_bytes: int) -> list[Violation]:
    """Why a google.rpc.Status the API is about to store under `field` is
    refused: too large, or a detail of a type clients cannot resolve, that
    does not parse as its type, or that JSON cannot hold (a Struct or Value
    detail is walked like any payload)."""
    size = status.ByteSize()
    if size > max_bytes:
        return [_too_large(field, size, max_bytes)]
    found: list[Violation] = []
    for i, detail in enumerate(status.details):
        where = f"{field}.details[{i}]"
        type_name = detail.type_url.rpartition("/")[2]
        cls = DETAIL_TYPES.get(type_name)
        if cls is None:
            found.append((where, f"detail type {clip(type_name)} cannot be resolved by clients; use {_DETAIL_TYPES_HINT}"))
            continue
        try:
            msg = cls.FromString(detail.value)
        except message.DecodeError:
            deep = locate_too_deep(cls.DESCRIPTOR, detail.value)
            found.append(_too_deep(field_path(where, deep[0]), deep[1]) if deep else
                         (where, f"not a valid serialized {type_name}"))
            continue
        walk = _Walk(where)
        if isinstance(msg, struct_pb2.Struct):
            walk.walk_struct(msg, 1)
        elif isinstance(msg, struct_pb2.ListValue):
            walk.walk_list(msg, 1)
        elif isinstance(msg, struct_pb2.Value):
            walk.walk_value(msg, 0)
        else:
            try:
                json_format.MessageToJson(msg)
            except (ValueError, json_format.Error) as e:
                walk.report(f"a {type_name} that JSON cannot hold ({clip(str(e))})")
        found += walk.found
        if len(found) >= MAX_REPORTED_VIOLATIONS:
            break
    return found


def metadata_violations(metadata: Mapping[str, str], field: str = "metadata") -> list[Violation]:
    """Entry count, key and value lengths, and the total size of a job's metadata."""
    found: list[Violation] = []
    if len(metadata) > MAX_METADATA_ENTRIES:
        found.append((field, f"at most {MAX_METADATA_ENTRIES} entries, got {len(metadata)}"))
    total = 0
    for k, v in metadata.items():
        total += len(k.encode()) + len(v.encode())
        if not k or len(k) > MAX_METADATA_KEY_CHARS:
            found.append((f"{field}[{clip(k, 32)}]", f"keys must be 1-{MAX_METADATA_KEY_CHARS} characters, got {len(k)}"))
        if len(v) > MAX_METADATA_VALUE_CHARS:
            found.append((f"{field}[{clip(k, 32)}]", f"values must be at most {MAX_METADATA_VALUE_CHARS} characters, got {len(v)}"))
        if len(found) >= MAX_REPORTED_VIOLATIONS:
            break
    if total > MAX_METADATA_BYTES:
        found.append((field, f"{total} bytes of keys and values; at most {MAX_METADATA_BYTES} ({_size(MAX_METADATA_BYTES)})"))
    return found


def text_violations(text: str, field: str, max_chars: int) -> list[Violation]:
    return [(field, f"at most {max_chars} characters, got {len(text)}")] if len(text) > max_chars else []


def refuse(violations: list[Violation]) -> None:
    """Raise INVALID_ARGUMENT listing `violations`, if there are any."""
    if violations:
        raise invalid_argument(violations)


def cut(text: str, max_chars: int) -> str:
    """`text`, cut to `max_chars` characters (with "…") for a field the server writes."""
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


# -- filling replies ------------------------------------------------------------------------


class MessageBudget:
    """Fills one reply, page, chunk or stream message: `admit(n)` says whether
    an item of n bytes still goes in. The first item always does; later ones
    only while the total stays within `budget`."""

    def __init__(self, budget: int = MESSAGE_BUDGET_BYTES) -> None:
        self.budget = budget
        self.used = 0
        self.count = 0

    def admit(self, item_bytes: int) -> bool:
        cost = item_bytes + ITEM_FRAMING_BYTES
        if self.count and self.used + cost > self.budget:
            return False
        self.used += cost
        self.count += 1
        return True


def pack(items: Iterable[T], size_of: Callable[[T], int], max_items: int,
         budget: int = MESSAGE_BUDGET_BYTES) -> Iterator[list[T]]:
    """Split `items` (in order) into messages of at most `max_items` items
    and, past the first item of each, at most `budget` bytes."""
    chunk: list[T] = []
    fill = MessageBudget(budget)
    for item in items:
        n = size_of(item)
        if len(chunk) == max_items or not fill.admit(n):
            yield chunk
            chunk, fill = [], MessageBudget(budget)
            fill.admit(n)
        chunk.append(item)
    if chunk:
        yield chunk


COMPLETION_OMITS = ("params", "metadata", "progress_details")
"""What jobs returned by CompleteJobs leave out: the worker received params
and metadata with its lease and sent the progress details itself; GetJob
returns them. With them, 500 completions could never fit one reply."""


def completion_view(job: Job) -> Job:
    out = Job()
    out.CopyFrom(job)
    for name in COMPLETION_OMITS:
        out.ClearField(name)  # type: ignore[arg-type]
    return out


def summary_view(job: Job) -> Job:
    """The smallest useful form of a job (id, type, state, counters, times),
    for a reply that would not fit with more."""
    out = Job(id=job.id, type=job.type, state=job.state, revision=job.revision,
              attempt_count=job.attempt_count, max_attempts=job.max_attempts)
    for name in ("update_time", "end_time"):
        if job.HasField(name):  # type: ignore[arg-type]
            getattr(out, name).CopyFrom(getattr(job, name))
    return out


# -- the wire level -------------------------------------------------------------------------
#
# Python (like C++ and Java) cannot parse a message nested past its limit, so
# a request or a stored blob that deep has to be looked at as bytes: a
# sequence of (tag, value) fields, where tag = field number << 3 | wire type.

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise ValueError("varint longer than 10 bytes")


def encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    """One serialized length-delimited field (a string, bytes or message)."""
    return encode_varint(number << 3 | LENGTH_DELIMITED) + encode_varint(len(payload)) + payload


@dataclass(frozen=True, slots=True)
class WireField:
    number: int
    wire_type: int
    start: int  # where the tag starts
    value_start: int  # where the value (for LENGTH_DELIMITED: the payload) starts
    end: int


def iter_fields(data: bytes | memoryview) -> Iterator[WireField]:
    """The top-level fields of a serialized message; ValueError (or
    IndexError) when the bytes are not one."""
    buf = memoryview(data)
    pos, n = 0, len(buf)
    while pos < n:
        start = pos
        tag, pos = _varint(buf, pos)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire_type == VARINT:
            value_start = pos
            _, pos = _varint(buf, pos)
        elif wire_type == FIXED64:
            value_start, pos = pos, pos + 8
        elif wire_type == LENGTH_DELIMITED:
            size, value_start = _varint(buf, pos)
            pos = value_start + size
        elif wire_type == FIXED32:
            value_start, pos = pos, pos + 4
        else:
            raise ValueError(f"wire type {wire_type} (groups) not supported")
        if pos > n:
            raise ValueError("field runs past the end")
        yield WireField(number, wire_type, start, value_start, pos)


_STRUCT = struct_pb2.Struct.DESCRIPTOR.full_name
_VALUE = struct_pb2.Value.DESCRIPTOR.full_name
_LIST_VALUE = struct_pb2.ListValue.DESCRIPTOR.full_name


def locate_too_deep(desc: descriptor.Descriptor, data: bytes | memoryview) -> tuple[list[str | int], int] | None:
    """In a serialized message of type `desc`: the path (as parts) to the
    first Struct or ListValue nested deeper than MAX_PAYLOAD_DEPTH, and its
    level; None when there is none or the bytes are not a message. Never
    descends past MAX_PAYLOAD_DEPTH + 1 levels, so any depth is safe."""
    try:
        return _deep_in_message(memoryview(data), desc, [])
    except (ValueError, IndexError):
        return None


def _deep_in_message(buf: memoryview, desc: descriptor.Descriptor, parts: list[str | int]) -> tuple[list[str | int], int] | None:
    name = desc.full_name
    if name == _STRUCT:
        return _deep_in_struct(buf, parts, 1)
    if name == _LIST_VALUE:
        return _deep_in_list(buf, parts, 1)
    if name == _VALUE:
        return _deep_in_value(buf, parts, 0)
    counts: dict[int, int] = {}
    for f in iter_fields(buf):
        fd = desc.fields_by_number.get(f.number)
        if fd is None or f.wire_type != LENGTH_DELIMITED or fd.message_type is None:
            continue
        body = buf[f.value_start:f.end]
        sub = fd.message_type
        if sub.GetOptions().map_entry:
            key, value = _map_entry(body)
            value_fd = sub.fields_by_number[2]
            if value is None or value_fd.message_type is None:
                continue
            found = _deep_in_message(value, value_fd.message_type, [*parts, fd.name, key])
        elif fd.is_repeated:
            index = counts.get(f.number, 0)
            counts[f.number] = index + 1
            found = _deep_in_message(body, sub, [*parts, fd.name, index])
        else:
            found = _deep_in_message(body, sub, [*parts, fd.name])
        if found:
            return found
    return None


def _map_entry(entry: memoryview) -> tuple[str, memoryview | None]:
    key, value = "", None
    for f in iter_fields(entry):
        if f.number == 1 and f.wire_type == LENGTH_DELIMITED:
            key = bytes(entry[f.value_start:f.end]).decode("utf-8", "replace")
        elif f.number == 2 and f.wire_type == LENGTH_DELIMITED:
            value = entry[f.value_start:f.end]
    return key, value


def _deep_in_struct(buf: memoryview, parts: list[str | int], level: int) -> tuple[list[str | int], int] | None:
    if level > MAX_PAYLOAD_DEPTH:
        return parts, level
    for f in iter_fields(buf):
        if f.number == 1 and f.wire_type == LENGTH_DELIMITED:  # Struct.fields: map entry {1: key, 2: Value}
            key, value = _map_entry(buf[f.value_start:f.end])
            if value is not None:
                found = _deep_in_value(value, [*parts, key], level)
                if found:
                    return found
    return None


def _deep_in_list(buf: memoryview, parts: list[str | int], level: int) -> tuple[list[str | int], int] | None:
    if level > MAX_PAYLOAD_DEPTH:
        return parts, level
    index = 0
    for f in iter_fields(buf):
        if f.number == 1 and f.wire_type == LENGTH_DELIMITED:  # ListValue.values
            found = _deep_in_value(buf[f.value_start:f.end], [*parts, index], level)
            if found:
                return found
            index += 1
    return None


def _deep_in_value(buf: memoryview, parts: list[str | int], level: int) -> tuple[list[str | int], int] | None:
    for f in iter_fields(buf):
        if f.wire_type != LENGTH_DELIMITED:
            continue
        if f.number == 5:  # struct_value
            found = _deep_in_struct(buf[f.value_start:f.end], parts, level + 1)
        elif f.number == 6:  # list_value
            found = _deep_in_list(buf[f.value_start:f.end], parts, level + 1)
        else:
            continue
        if found:
            return found
    return None


# -- requests the protobuf runtime cannot parse ---------------------------------------------


def undecodable_error(desc: descriptor.Descriptor, data: bytes) -> ServiceError:
    """INVALID_ARGUMENT for bytes that do not parse as `desc`: the path of a
    payload nested too deep when that is why, else a general message."""
    deep = locate_too_deep(desc, data)
    if deep is not None:
        parts, level = deep
        root, rest = (str(parts[0]), parts[1:]) if parts else (desc.name, [])
        return invalid_argument([_too_deep(field_path(root, rest), level)])
    return invalid_argument([("", f"the request is not a valid serialized {desc.full_name} "
                                  "(malformed bytes, or a string that is not UTF-8)")])


def request_deserializer(message_class: Any) -> Callable[[bytes], Any]:
    """A gRPC request deserializer that never raises: bytes the runtime
    refuses become an UndecodableRequest (instead of gRPC's UNKNOWN
    "Exception deserializing request")."""

    def deserialize(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except message.DecodeError:
            return UndecodableRequest(undecodable_error(message_class.DESCRIPTOR, data))

    return deserialize


def job_payload_violations(job: Job) -> list[Violation]:
    """What a stored job holds that the validators refuse today (used by the
    start-up check of stored data, store/sanitize.py)."""
    found: list[Violation] = []
    for name, limit in STORED_STRUCT_LIMITS.items():
        if job.HasField(name):  # type: ignore[arg-type]
            found += struct_violations(getattr(job, name), name, limit)
    if job.HasField("error"):
        found += status_violations(job.error, "error", MAX_ERROR_BYTES)
    return found


STORED_STRUCT_LIMITS: dict[str, int] = {
    "params": MAX_PARAMS_BYTES + MAX_TEMPLATE_PARAMS_BYTES,
    "result": MAX_RESULT_BYTES,
    "progress_details": MAX_PROGRESS_DETAILS_BYTES,
}
"""Job's Struct fields and the most each may hold once stored."""


def bound_job_text(job: Job) -> list[str]:
    """Cut what the server writes into a job to its limits (progress message,
    abort reason, problems, the lease's lock key); returns what was cut."""
    cut_fields: list[str] = []
    if len(job.progress_message) > MAX_PROGRESS_MESSAGE_CHARS:
        job.progress_message = cut(job.progress_message, MAX_PROGRESS_MESSAGE_CHARS)
        cut_fields.append("progress_message")
    if len(job.abort_reason) > MAX_ABORT_REASON_CHARS:
        job.abort_reason = cut(job.abort_reason, MAX_ABORT_REASON_CHARS)
        cut_fields.append("abort_reason")
    if bound_problems(job):
        cut_fields.append("problems")
    key = job.lease.lock_key
    for name in ("scheduler_id", "worker_id"):
        if len(getattr(key, name)) > MAX_PROBLEM_DETAIL_CHARS:
            setattr(key, name, cut(getattr(key, name), MAX_PROBLEM_DETAIL_CHARS))
            cut_fields.append(f"lease.lock_key.{name}")
    if len(job.lease.identity) > MAX_PROBLEM_DETAIL_CHARS:
        job.lease.identity = cut(job.lease.identity, MAX_PROBLEM_DETAIL_CHARS)
        cut_fields.append("lease.identity")
    return cut_fields


def bound_problems(job: Job) -> bool:
    """Keep the newest MAX_JOB_PROBLEMS problems, each cut to its limits;
    True when anything changed."""
    changed = False
    if len(job.problems) > MAX_JOB_PROBLEMS:
        del job.problems[: len(job.problems) - MAX_JOB_PROBLEMS]
        changed = True
    for p in job.problems:
        if len(p.message) > MAX_PROBLEM_MESSAGE_CHARS:
            p.message = cut(p.message, MAX_PROBLEM_MESSAGE_CHARS)
            changed = True
        for k, v in list(p.details.items()):
            if len(v) > MAX_PROBLEM_DETAIL_CHARS:
                p.details[k] = cut(v, MAX_PROBLEM_DETAIL_CHARS)
                changed = True
    return changed


def bound_problem_details(details: Mapping[str, str]) -> dict[str, str]:
    return {k: cut(v, MAX_PROBLEM_DETAIL_CHARS) for k, v in details.items()}

