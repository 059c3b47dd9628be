"""Output for the CLI: hand-aligned tables, job details and JSON documents."""
from __future__ import annotations

import datetime as dt
import json
from typing import Any, Iterable, Sequence

import grpc
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import resources_pb2 as res

from .errors import MediaJobsError

Job = res.Job
_INT64 = (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64)


# -- JSON ----------------------------------------------------------------------


def message_to_dict(msg: Message) -> dict[str, Any]:
    """The proto3 JSON form of `msg` with the .proto field names, except that
    64-bit integers (revisions, sizes) are JSON numbers instead of strings."""
    d = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    _int64_to_numbers(msg.DESCRIPTOR, d)
    return d


def _int64_to_numbers(desc: Any, d: dict[str, Any]) -> None:
    # `desc` is a Descriptor (typed Any: upb and pure-Python descriptors differ)
    if desc.full_name.startswith("google.protobuf."):
        return  # well-known types have their own JSON forms
    for f in desc.fields:
        if f.name not in d:
            continue
        v = d[f.name]
        if f.cpp_type in _INT64:
            d[f.name] = [int(x) for x in v] if f.is_repeated else int(v)
        elif f.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            mt: Any = f.message_type
            if mt.GetOptions().map_entry:
                vf = mt.fields_by_name["value"]
                if vf.cpp_type in _INT64:
                    d[f.name] = {k: int(x) for k, x in v.items()}
                elif vf.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
                    for x in v.values():
                        _int64_to_numbers(vf.message_type, x)
            elif f.is_repeated:
                for x in v:
                    _int64_to_numbers(mt, x)
            elif isinstance(v, dict):
                _int64_to_numbers(mt, v)


def dumps(doc: Any) -> str:
    """One pretty JSON document."""
    return json.dumps(doc, indent=2, ensure_ascii=False)


def dumps_line(doc: Any) -> str:
    """One compact JSON line (for JSON-lines streams)."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def watch_message_to_dict(msg: svc.WatchJobsResponse) -> dict[str, Any]:
    """A watch message as one JSON-lines object. Events:
    {"revision", "type" (CREATED/UPDATED/DELETED/SNAPSHOT), "job_id",
    "event_time", "previous_state", "job"}; progress bookmarks:
    {"revision", "type": "PROGRESS", "snapshot_complete"}."""
    if msg.events:
        event = msg.events[0]
        ev = message_to_dict(event)
        out: dict[str, Any] = {
            "revision": event.revision,
            "type": res.JobEvent.Type.Name(event.type),
            "job_id": event.job.id,
        }
        for k in ("event_time", "previous_state", "job"):
            if k in ev:
                out[k] = ev[k]
        return out
    return {"revision": msg.revision, "type": "PROGRESS", "snapshot_complete": msg.progress.snapshot_complete}


# -- text ----------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns separated by two spaces, left-aligned; the last column is not
    padded."""
    cells = [[str(h) for h in headers]] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [c.ljust(widths[i]) for i, c in enumerate(r[:-1])] + [r[-1]]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def fmt_time(ts: timestamp_pb2.Timestamp, millis: bool = False) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    t = ts.ToDatetime(tzinfo=dt.timezone.utc)
    if millis:
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def state_name(s: int) -> str:
    return Job.State.Name(s) if s in Job.State.values() else str(s)  # type: ignore[arg-type]


def priority_name(p: int) -> str:
    return Job.Priority.Name(p) if p in Job.Priority.values() else str(p)  # type: ignore[arg-type]


def _struct_json(s: struct_pb2.Struct) -> str:
    return json.dumps(json_format.MessageToDict(s), separators=(",", ":"), ensure_ascii=False)


JOB_LIST_HEADERS = ("ID", "TYPE", "STATE", "PRIORITY", "PROGRESS", "CREATED", "CREATOR")


def job_row(j: res.Job) -> list[str]:
    return [j.id, j.type, state_name(j.state), priority_name(j.priority), f"{j.progress}%",
            fmt_time(j.create_time), j.creator]


def jobs_table(jobs: Iterable[res.Job]) -> str:
    return table(JOB_LIST_HEADERS, (job_row(j) for j in jobs))


# Fields shown by `jobs get` without --fields even when empty.
_ALWAYS = ("id", "type", "state", "priority", "progress", "creator", "project", "create_time", "update_time",
           "start_time", "end_time", "attempt_count", "max_attempts", "revision")
# Multi-line and bulky fields go after the others.
_LAST = ("metadata", "params", "progress_details", "result", "error", "problems", "lease")


def _field_text(j: res.Job, name: str) -> list[str]:
    """The value lines of one Job field."""
    if name == "state":
        return [state_name(j.state)]
    if name == "priority":
        return [priority_name(j.priority)]
    if name == "progress":
        return [f"{j.progress}%"]
    if name == "metadata":
        return [f"{k}={v}" for k, v in sorted(j.metadata.items())] or ["-"]
    if name == "error":
        if not j.HasField("error"):
            return ["-"]
        code = next((c.name for c in grpc.StatusCode if c.value[0] == j.error.code), str(j.error.code))
        return [f"{code}: {j.error.message}"]
    if name == "problems":
        return [f"{p.reason}: {p.message} ({p.id})" for p in j.problems] or ["-"]
    v = getattr(j, name)
    if isinstance(v, timestamp_pb2.Timestamp):
        return [fmt_time(v)]
    if isinstance(v, struct_pb2.Struct):
        return [_struct_json(v)] if j.HasField(name) else ["-"]  # type: ignore[arg-type]
    if isinstance(v, Message):  # any other message field: compact JSON
        return [dumps_line(message_to_dict(v))] if j.HasField(name) else ["-"]  # type: ignore[arg-type]
    if isinstance(v, bool):
        return ["yes" if v else "no"]
    return [str(v) if v != "" else "-"]


def _is_set(j: res.Job, f: FieldDescriptor) -> bool:
    if f.is_repeated:
        return len(getattr(j, f.name)) > 0
    if f.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
        return j.HasField(f.name)  # type: ignore[arg-type]
    return bool(getattr(j, f.name))


def job_details(j: res.Job, fields: Sequence[str] | None = None) -> str:
    """A job as `field: value` lines (proto field names). With `fields` only
    those; otherwise the main fields plus every other field that is set."""
    names: list[str] = []
    for f in sorted(Job.DESCRIPTOR.fields, key=lambda f: f.name in _LAST):
        if fields:
            if f.name in fields:
                names.append(f.name)
        elif f.name in _ALWAYS or _is_set(j, f):
            names.append(f.name)
    width = max((len(n) for n in names), default=0) + 1
    lines = []
    for n in names:
        vals = _field_text(j, n)
        lines.append(f"{(n + ':').ljust(width)}  {vals[0]}")
        lines.extend(f"{'':{width}}  {v}" for v in vals[1:])
    return "\n".join(lines)


def types_table(types: Iterable[res.JobType]) -> str:
    return table(("NAME", "BUILT-IN", "DESCRIPTION"),
                 ([t.name, "yes" if t.built_in else "no", t.description] for t in types))


def problems_table(problems: Iterable[res.JobProblem]) -> str:
    return table(
        ("ID", "JOB", "REASON", "JOB STATE", "CREATED", "RESOLVED", "MESSAGE"),
        ([p.id, p.job_id, p.reason, state_name(p.job_state), fmt_time(p.create_time),
          "yes" if p.resolved else "no", p.message] for p in problems),
    )


WATCH_HEADER = f"{'REVISION':>8}  {'TIME':<24}  {'JOB':<26}  {'EVENT':<8}  {'TYPE':<16}  {'STATE':<20}  PROGRESS"


def watch_line(msg: svc.WatchJobsResponse) -> str:
    """One readable line per watch message."""
    if not msg.events:
        what = "snapshot complete" if msg.progress.snapshot_complete else "progress: all changes sent"
        return f"{msg.revision:>8}  {'':<24}  ({what} up to revision {msg.revision})"
    ev = msg.events[0]
    j = ev.job
    state = state_name(j.state)
    if ev.type == res.JobEvent.UPDATED and ev.previous_state and ev.previous_state != j.state:
        state = f"{state_name(ev.previous_state)}->{state}"
    return (f"{ev.revision:>8}  {fmt_time(ev.event_time, millis=True):<24}  {j.id:<26}  "
            f"{res.JobEvent.Type.Name(ev.type):<8}  {j.type:<16}  {state:<20}  {j.progress}%").rstrip()


# -- errors --------------------------------------------------------------------


def error_text(e: MediaJobsError, server: str) -> str:
    """`mediajobs: CODE: message` plus the details of the rich status."""
    if e.code == grpc.StatusCode.UNAVAILABLE and not e.has_rich_status:
        lines = [
            f"mediajobs: UNAVAILABLE: the server at {server} is not reachable ({e.message})",
            f"  start it with `mediajobs-server --listen {server}` (or `scripts/serve`), or point --server "
            "or MEDIAJOBS_SERVER at a running server",
        ]
    else:
        lines = [f"mediajobs: {e.code.name}: {e.message}"]
    for fld, desc in e.field_violations:
        lines.append(f"  field {fld}: {desc}")
    for typ, subject, desc in e.precondition_violations:
        lines.append(f"  precondition {typ} {subject}: {desc}")
    if e.reason and e.reason != e.code.name:
        extra = ", ".join(f"{k}={v}" for k, v in sorted(e.metadata.items()))
        lines.append(f"  reason: {e.reason}" + (f" ({extra})" if extra else ""))
    return "\n".join(lines)
