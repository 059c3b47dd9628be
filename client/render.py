"""Output for the CLI: hand-aligned tables, job, entry, media-info,
template and bulk upload details, and JSON documents."""
from __future__ import annotations

import datetime as dt
import json
from typing import Any, Iterable, Sequence

import grpc
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from mediajobs.v1 import bulk_resources_pb2 as bres
from mediajobs.v1 import bulk_upload_service_pb2 as bsvc
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import resources_pb2 as res

from .errors import MediaJobsError

Job = res.Job
Entry = mres.Entry
FlavorAsset = mres.FlavorAsset
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


def entry_state_name(s: int) -> str:
    return Entry.State.Name(s) if s in Entry.State.values() else str(s)  # type: ignore[arg-type]


def flavor_state_name(s: int) -> str:
    return FlavorAsset.State.Name(s) if s in FlavorAsset.State.values() else str(s)  # type: ignore[arg-type]


def status_code_name(code: int) -> str:
    """The gRPC name of a google.rpc.Status code (`FAILED_PRECONDITION`)."""
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))


def status_text(st: status_pb2.Status) -> str:
    """`CODE: message` of a google.rpc.Status."""
    return f"{status_code_name(st.code)}: {st.message}"


def fmt_size(n: int) -> str:
    """A byte count for people: `812 B`, `1.5 KiB`, `23.4 MiB`; `-` for 0."""
    if n <= 0:
        return "-"
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def fmt_ms(ms: int) -> str:
    """A media duration: `12.345 s` below a minute, else `1:02:03.456`
    (H:MM:SS.mmm) or `2:03.456` (M:SS.mmm); `-` for 0."""
    if ms <= 0:
        return "-"
    if ms < 60_000:
        return f"{ms / 1000:.3f} s"
    minutes, millis = divmod(ms, 60_000)
    hours, minutes = divmod(minutes, 60)
    secs = f"{millis // 1000:02d}.{millis % 1000:03d}"
    return f"{hours}:{minutes:02d}:{secs}" if hours else f"{minutes}:{secs}"


def fmt_elapsed(seconds: float) -> str:
    """A wall-clock span: `8.2 s`, `3 min 12 s`, `1 h 02 min`."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = int(seconds) // 60
    if minutes < 60:
        return f"{minutes} min {int(seconds) % 60:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _elapsed_between(start: timestamp_pb2.Timestamp, end: timestamp_pb2.Timestamp) -> float | None:
    if not (start.seconds or start.nanos) or not (end.seconds or end.nanos):
        return None
    return max(0.0, (end.ToNanoseconds() - start.ToNanoseconds()) / 1e9)


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


def details(pairs: Iterable[tuple[str, str | Sequence[str]]]) -> str:
    """`label: value` lines with the values in one column; a sequence value
    continues on the following lines."""
    rows = [(label, [value] if isinstance(value, str) else list(value) or ["-"]) for label, value in pairs]
    width = max((len(label) for label, _ in rows), default=0) + 1
    lines = []
    for label, vals in rows:
        lines.append(f"{(label + ':').ljust(width)}  {vals[0]}".rstrip())
        lines.extend(f"{'':{width}}  {v}".rstrip() for v in vals[1:])
    return "\n".join(lines)


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + ln if ln else ln for ln in text.splitlines())


# -- entries -------------------------------------------------------------------


ENTRY_LIST_HEADERS = ("ID", "NAME", "STATE", "TEMPLATE", "FLAVORS", "DURATION", "CREATED")


def _flavors_ready(e: mres.Entry) -> str:
    if not e.flavor_assets:
        return "-"
    ready = sum(1 for fa in e.flavor_assets if fa.state == FlavorAsset.READY)
    skipped = sum(1 for fa in e.flavor_assets if fa.state == FlavorAsset.NOT_APPLICABLE)
    text = f"{ready}/{len(e.flavor_assets) - skipped} ready"
    return text + f" ({skipped} skipped)" if skipped else text


def entries_table(entries: Iterable[mres.Entry]) -> str:
    return table(ENTRY_LIST_HEADERS, (
        [e.id, e.name, entry_state_name(e.state), e.template_id or "-", _flavors_ready(e), fmt_ms(e.duration_ms),
         fmt_time(e.create_time)] for e in entries))


def flavor_assets_table(assets: Iterable[mres.FlavorAsset]) -> str:
    """NAME, STATE, SIZE, PATH (relative to the storage root), JOB, ID."""
    return table(("NAME", "STATE", "SIZE", "PATH", "JOB", "ID"), (
        [fa.output_name, flavor_state_name(fa.state), fmt_size(fa.size_bytes), fa.path or "-", fa.job_id or "-",
         fa.id] for fa in assets))


def entry_details(e: mres.Entry) -> str:
    """An entry as `field: value` lines (proto field names), then its flavor
    assets as a table."""
    pairs: list[tuple[str, str | Sequence[str]]] = [
        ("id", e.id), ("name", e.name), ("state", entry_state_name(e.state))]
    if e.HasField("error"):
        pairs.append(("error", status_text(e.error)))
    pairs += [("source_uri", e.source_uri or "-"), ("template_id", e.template_id or "-"),
              ("duration", fmt_ms(e.duration_ms))]
    optional: list[tuple[str, str | Sequence[str]]] = [
        ("description", e.description), ("tags", ", ".join(e.tags)), ("reference_id", e.reference_id),
        ("labels", [f"{k}={v}" for k, v in sorted(e.labels.items())]),
        ("source_media_info_id", e.source_media_info_id)]
    pairs += [(k, v) for k, v in optional if v]
    pairs += [("creator", e.creator or "-"), ("create_time", fmt_time(e.create_time)),
              ("update_time", fmt_time(e.update_time)), ("job_ids", list(e.job_ids))]
    text = details(pairs)
    if e.flavor_assets:
        text += "\nflavor_assets:\n" + _indent(flavor_assets_table(e.flavor_assets))
    return text


def entry_summary(e: mres.Entry) -> str:
    """The end of `entries add`: id, state, how long processing took, the
    media duration and every flavor asset."""
    took = _elapsed_between(e.create_time, e.update_time)
    head = f"entry {e.id} {entry_state_name(e.state)}"
    if took is not None and e.state in (Entry.READY, Entry.ERROR):
        head += f" after {fmt_elapsed(took)}"
    pairs: list[tuple[str, str | Sequence[str]]] = [("name", e.name), ("duration", fmt_ms(e.duration_ms))]
    if e.HasField("error"):
        pairs.append(("error", status_text(e.error)))
    text = head + "\n" + _indent(details(pairs))
    if e.flavor_assets:
        text += "\n  flavor assets:\n" + _indent(flavor_assets_table(e.flavor_assets), "    ")
    return text


def progress_bar(percent: int, width: int = 24) -> str:
    """`[#########...............]` for 0-100."""
    filled = max(0, min(width, percent * width // 100))
    return "[" + "#" * filled + "." * (width - filled) + "]"


# -- media info ------------------------------------------------------------------


_DAR_NAMES = ((16 / 9, "16:9"), (4 / 3, "4:3"), (1.0, "1:1"), (21 / 9, "21:9"), (9 / 16, "9:16"), (3 / 2, "3:2"))


def _dar_text(dar: float) -> str:
    name = next((n for v, n in _DAR_NAMES if abs(dar - v) < 0.01), "")
    return f"{dar:.3f}" + (f" ({name})" if name else "")


def _kbps(v: int) -> str:
    return f"{v} kbit/s"


def _codec(fmt: str, codec_id: str) -> str:
    tag = codec_id.strip()
    return f"{fmt} ({tag})" if tag and tag != fmt else fmt


def _join(parts: Iterable[str]) -> str:
    return ", ".join(p for p in parts if p)


def media_info_details(mi: mres.MediaInfo, title: str) -> str:
    """One media-info record as a readable block headed by `title`."""
    container = _join([
        _codec(mi.container_format, mi.container_id) if mi.container_format else "",
        f"profile {mi.container_profile}" if mi.container_profile else ""]) or "-"
    pairs: list[tuple[str, str | Sequence[str]]] = [
        ("container", container),
        ("duration", fmt_ms(mi.container_duration_ms)),
        ("bit rate", _kbps(mi.container_bit_rate_kbps) if mi.container_bit_rate_kbps else "-"),
    ]
    if mi.video_format or mi.video_width:
        fps = f"{mi.video_frame_rate:.3f}".rstrip("0").rstrip(".") + " fps" if mi.video_frame_rate else ""
        size = f"{mi.video_width}x{mi.video_height}" if mi.video_width or mi.video_height else ""
        video = _join([_codec(mi.video_format, mi.video_codec_id), " ".join(p for p in (size, fps) if p),
                       _kbps(mi.video_bit_rate_kbps) if mi.video_bit_rate_kbps else ""])
        scan = {mres.SCAN_TYPE_PROGRESSIVE: "progressive", mres.SCAN_TYPE_INTERLACED: "interlaced"}.get(
            mi.scan_type, "-")
        pairs += [
            ("video", video),
            ("aspect", _join([f"DAR {_dar_text(mi.video_dar)}" if mi.video_dar else "",
                              f"rotation {mi.video_rotation}"])),
            ("scan type", scan),
            ("max GOP", f"{mi.max_gop} frames" if mi.max_gop else "-"),
            ("fast start", "yes" if mi.is_fast_start else "no"),
        ]
    else:
        pairs.append(("video", "none"))
    if mi.audio_format or mi.audio_channels:
        audio = _join([_codec(mi.audio_format, mi.audio_codec_id),
                       f"{mi.audio_channels} ch" if mi.audio_channels else "",
                       f"{mi.audio_sampling_rate} Hz" if mi.audio_sampling_rate else "",
                       _kbps(mi.audio_bit_rate_kbps) if mi.audio_bit_rate_kbps else ""])
        pairs.append(("audio", audio))
    else:
        pairs.append(("audio", "none"))
    size = f"{fmt_size(mi.file_size_bytes)} ({mi.file_size_bytes} bytes)" if mi.file_size_bytes else "-"
    pairs += [("file size", size), ("writing lib", mi.writing_lib or "-")]
    if mi.multi_stream:
        pairs.append(("streams", "several of a kind (see --json multi_stream_info)"))
    return title + "\n" + _indent(details(pairs))


# -- job templates -----------------------------------------------------------------


def templates_table(templates: Iterable[mres.JobTemplate]) -> str:
    return table(("ID", "BUILT-IN", "OUTPUTS", "DISPLAY NAME"), (
        [t.id, "yes" if t.built_in else "no", ",".join(o.name for o in t.outputs) or "-", t.display_name]
        for t in templates))


def _output_size(o: mres.OutputSpec) -> str:
    if not o.video_codec:
        return "-"
    if o.width and o.height:
        return f"{o.width}x{o.height}"
    if o.width or o.height:  # the other follows the source's aspect ratio
        return f"width {o.width}" if o.width else f"height {o.height}"
    return f"x{o.scale:g}" if o.scale else "source"


def outputs_table(outputs: Iterable[mres.OutputSpec]) -> str:
    return table(("NAME", "CONTAINER", "VIDEO", "SIZE", "FPS", "VIDEO BPS", "AUDIO", "AUDIO BPS", "PRESET"), (
        [o.name, o.container, o.video_codec or "-", _output_size(o),
         f"{o.frame_rate:g}" if o.frame_rate else ("-" if not o.video_codec else "source"),
         str(o.video_bit_rate_bps) if o.video_bit_rate_bps else ("-" if not o.video_codec else "crf 23"),
         o.audio_codec or "-",
         str(o.audio_bit_rate_bps) if o.audio_bit_rate_bps else ("-" if not o.audio_codec else "128000"),
         o.preset or ("-" if not o.video_codec else "veryfast")] for o in outputs))


def template_details(t: mres.JobTemplate) -> str:
    pairs: list[tuple[str, str | Sequence[str]]] = [
        ("id", t.id), ("display_name", t.display_name or "-"), ("description", t.description or "-"),
        ("built_in", "yes" if t.built_in else "no")]
    if t.labels:
        pairs.append(("labels", [f"{k}={v}" for k, v in sorted(t.labels.items())]))
    pairs += [("create_time", fmt_time(t.create_time)), ("update_time", fmt_time(t.update_time))]
    return details(pairs) + "\noutputs:\n" + _indent(outputs_table(t.outputs))


# -- bulk uploads ----------------------------------------------------------------


BulkUpload = bres.BulkUpload
BulkUploadResult = bres.BulkUploadResult


def bulk_state_name(s: int) -> str:
    return BulkUpload.State.Name(s) if s in BulkUpload.State.values() else str(s)  # type: ignore[arg-type]


def result_status_name(s: int) -> str:
    return (BulkUploadResult.Status.Name(s) if s in BulkUploadResult.Status.values()  # type: ignore[arg-type]
            else str(s))


def _enum_name(enum: Any, v: int) -> str:
    return enum.Name(v) if v in enum.values() else str(v)


def status_reason(st: status_pb2.Status) -> str:
    """The ErrorInfo reason of a google.rpc.Status ("" when none)."""
    for d in st.details:
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            d.Unpack(info)
            return info.reason
    return ""


def status_violations(st: status_pb2.Status) -> list[tuple[str, str]]:
    """The (field, description) pairs of a google.rpc.Status's BadRequest."""
    out: list[tuple[str, str]] = []
    for d in st.details:
        if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            d.Unpack(br)
            out += [(v.field, v.description) for v in br.field_violations]
    return out


def bulk_error_lines(st: status_pb2.Status) -> list[str]:
    """An upload's error: `CODE: message`, its reason, and its violations."""
    lines = [status_text(st)]
    reason = status_reason(st)
    if reason:
        lines.append(f"reason: {reason}")
    lines += [f"field {f}: {d}" for f, d in status_violations(st)]
    return lines


def bulk_percent(u: BulkUpload) -> int:
    """Records applied, in percent (100 once terminal)."""
    total = u.counts.total_records
    if not total:
        return 100 if u.state in _BULK_TERMINAL else 0
    return max(0, min(100, u.counts.applied * 100 // total))


_BULK_TERMINAL = frozenset({BulkUpload.SUCCEEDED, BulkUpload.PARTIALLY_SUCCEEDED, BulkUpload.FAILED,
                            BulkUpload.ABORTED, BulkUpload.EXPIRED, BulkUpload.VALIDATED})


def bulk_counts_text(c: BulkUpload.Counts) -> str:
    """`3 records: 2 ok, 1 error` (and in progress, not processed, applied
    so far when they matter)."""
    parts = [f"{c.ok} ok", f"{c.error} error{'' if c.error == 1 else 's'}"]
    if c.in_progress:
        parts.append(f"{c.in_progress} in progress")
    if c.not_processed:
        parts.append(f"{c.not_processed} not processed")
    done = c.ok + c.error + c.in_progress + c.not_processed
    head = f"{c.total_records} record{'' if c.total_records == 1 else 's'}"
    if done < c.total_records:
        head += f" ({c.applied} applied)"
    return f"{head}: " + ", ".join(parts)


BULK_LIST_HEADERS = ("ID", "NUMBER", "STATE", "FILE", "RECORDS", "OK", "ERRORS", "CREATED", "UPLOADED BY")


def bulk_uploads_table(uploads: Iterable[BulkUpload]) -> str:
    return table(BULK_LIST_HEADERS, (
        [u.id, u.number, bulk_state_name(u.state), u.file_name or "-",
         u.counts.total_records if u.upload_complete_time.seconds else "-", u.counts.ok, u.counts.error,
         fmt_time(u.create_time), u.uploaded_by or "-"] for u in uploads))


def bulk_upload_details(u: BulkUpload) -> str:
    """An upload as `label: value` lines: id, number, state, file, counts,
    job, sha256, options, warnings and error."""
    pairs: list[tuple[str, str | Sequence[str]]] = [
        ("id", u.id), ("number", str(u.number)), ("state", bulk_state_name(u.state))]
    if u.HasField("error"):
        pairs.append(("error", bulk_error_lines(u.error)))
    size = f"{fmt_size(u.file_size_bytes)} ({u.file_size_bytes} bytes)" if u.file_size_bytes else "-"
    if u.state == BulkUpload.UPLOADING:
        size = f"{u.uploaded_bytes} of {u.file_size_bytes or '?'} bytes written"
    pairs += [("file", u.file_name or "-"), ("size", size), ("sha256", u.sha256 or "-")]
    if u.upload_complete_time.seconds:
        c = u.counts
        pairs.append(("records", [
            f"{c.total_records} total, {c.applied} applied ({bulk_percent(u)}%)",
            f"ok {c.ok}, error {c.error}, in progress {c.in_progress}, not processed {c.not_processed}",
            f"entries created {c.objects_created}, lines skipped {c.skipped_lines}"]))
        csv_text = f"version {u.csv_version}" if u.csv_version else "plain header"
        pairs.append(("csv", f"{csv_text}; columns: {', '.join(u.columns) or '-'}"))
    options = []
    if u.validate_only:
        options.append("validate only")
    if u.error_policy == BulkUpload.VALIDATE_FIRST:
        options.append("validate first")
    if u.max_errors:
        options.append(f"max errors {u.max_errors}")
    if u.ignore_unknown_columns:
        options.append("ignore unknown columns")
    if u.csv.delimiter and u.csv.delimiter != ",":
        options.append(f"delimiter {u.csv.delimiter!r}")
    if u.csv.encoding:
        options.append(f"encoding {u.csv.encoding}")
    if u.csv.header:
        options.append(f"header {_enum_name(BulkUpload.CsvOptions.Header, u.csv.header)}")
    pairs += [("template_id", u.template_id or "-"), ("options", ", ".join(options) or "-"),
              ("job_id", u.job_id or "-"), ("generation", str(u.generation)), ("uploaded_by", u.uploaded_by or "-")]
    if u.description:
        pairs.append(("description", u.description))
    if u.labels:
        pairs.append(("labels", [f"{k}={v}" for k, v in sorted(u.labels.items())]))
    pairs += [("create_time", fmt_time(u.create_time)), ("upload_complete_time", fmt_time(u.upload_complete_time)),
              ("end_time", fmt_time(u.end_time))]
    if u.warnings:
        pairs.append(("warnings", list(u.warnings)))
    return details(pairs)


def bulk_upload_summary(u: BulkUpload) -> str:
    """The last line of `bulk upload` and `bulk watch`: `bulk upload ID
    (#N) PARTIALLY_SUCCEEDED after 2.1 s: 3 records: 2 ok, 1 error`."""
    head = f"bulk upload {u.id} (#{u.number}) {bulk_state_name(u.state)}"
    took = _elapsed_between(u.create_time, u.end_time)
    if took is not None and u.state in _BULK_TERMINAL:
        head += f" after {fmt_elapsed(took)}"
    if not u.upload_complete_time.seconds:
        return head
    return f"{head}: {bulk_counts_text(u.counts)}"


def bulk_result_error(r: BulkUploadResult) -> str:
    """`REASON (column C): message`, or the entry's processing error."""
    if r.HasField("error"):
        reason = status_reason(r.error) or status_code_name(r.error.code)
        cols = [f for f, _ in status_violations(r.error)]
        where = f" (column {', '.join(cols)})" if cols else ""
        text = f"{reason}{where}: {r.error.message}"
        return f"{text}; {r.object_error}" if r.object_error else text
    return r.object_error or "-"


def bulk_results_table(results: Iterable[BulkUploadResult]) -> str:
    return table(("RECORD", "LINE", "STATUS", "ACTION", "OBJECT", "OBJECT STATE", "ERROR"), (
        [r.record_index, r.line_number, result_status_name(r.status),
         _enum_name(BulkUploadResult.Action, r.action) if r.action else "-", r.object_id or "-",
         r.object_state or "-", bulk_result_error(r)] for r in results))


def bulk_count_details(c: bsvc.CountBulkUploadResultsResponse) -> str:
    return details([("created", str(c.created)), ("error", str(c.error)), ("ok", str(c.ok)),
                    ("in_progress", str(c.in_progress)), ("not_processed", str(c.not_processed))])


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
