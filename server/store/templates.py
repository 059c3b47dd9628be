"""Job templates (conversion profiles): the built-ins shipped in code, and
user-defined ones in the job_templates table. Validation lives here too, so
CreateJobTemplate, UpdateJobTemplate and CreateEntry agree on what is valid."""
from __future__ import annotations

import re
from typing import Any

import grpc
import peewee
from google.protobuf import duration_pb2, field_mask_pb2, json_format

from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import media_service_pb2 as msvc

from .. import payloads
from ..convert import set_ts
from ..errors import ServiceError, clip, invalid_argument
from .jobs import decode_token, encode_token, page_size
from .models import models_for
from .writer import WriteTx

JobTemplate = mres.JobTemplate
OutputSpec = mres.OutputSpec

ID_RE = re.compile(r"^[a-z][a-z0-9-]{3,62}$")
NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
MAX_OUTPUTS = 16
DEFAULT_TEMPLATE = "mp4-h264-720p"
UPDATABLE = ("display_name", "description", "outputs", "labels", "segment_duration")
LIVE_DEFAULT_TEMPLATE = "hls-live-360p-240p"
DEFAULT_SEGMENT_S = 2.0


def _video(name: str, height: int, bps: int) -> OutputSpec:
    return OutputSpec(name=name, container="mp4", video_codec="h264", height=height, video_bit_rate_bps=bps,
                      audio_codec="aac", audio_bit_rate_bps=128_000, preset="veryfast")


def _live(name: str, width: int, height: int, bps: int) -> OutputSpec:
    return OutputSpec(name=name, container="hls", video_codec="h264", width=width, height=height,
                      video_bit_rate_bps=bps, audio_codec="aac", audio_bit_rate_bps=96_000, preset="veryfast")


def is_live(t: JobTemplate) -> bool:
    """A live template: every output HLS (what live jobs need, and what
    entries and TRANSCODE cannot use)."""
    return bool(t.outputs) and all(o.container == "hls" for o in t.outputs)


def segment_seconds(t: JobTemplate) -> float:
    d = t.segment_duration
    return d.seconds + d.nanos / 1e9 if (d.seconds or d.nanos) else DEFAULT_SEGMENT_S


def _built_ins() -> dict[str, JobTemplate]:
    out = [
        JobTemplate(id="mp4-h264-1080p", display_name="MP4 H.264 1080p",
                    description="One H.264/AAC MP4 rendition, 1080 lines, 5 Mbit/s.",
                    outputs=[_video("1080p", 1080, 5_000_000)]),
        JobTemplate(id="mp4-h264-720p", display_name="MP4 H.264 720p",
                    description="One H.264/AAC MP4 rendition, 720 lines, 2.5 Mbit/s (the default for entries).",
                    outputs=[_video("720p", 720, 2_500_000)]),
        JobTemplate(id="mp4-h264-360p", display_name="MP4 H.264 360p",
                    description="One H.264/AAC MP4 rendition, 360 lines, 800 kbit/s.",
                    outputs=[_video("360p", 360, 800_000)]),
        JobTemplate(id="mp4-h264-ladder", display_name="MP4 H.264 ladder",
                    description="Three H.264/AAC MP4 renditions: 1080p, 720p and 360p.",
                    outputs=[_video("1080p", 1080, 5_000_000), _video("720p", 720, 2_500_000),
                             _video("360p", 360, 800_000)]),
        JobTemplate(id="audio-aac", display_name="Audio only, AAC",
                    description="The audio track alone, AAC 128 kbit/s in MP4 (M4A).",
                    outputs=[OutputSpec(name="audio", container="mp4", audio_codec="aac", audio_bit_rate_bps=128_000)]),
        JobTemplate(id=LIVE_DEFAULT_TEMPLATE, display_name="Live HLS 360p + 240p",
                    description="A live HLS ladder (the default for live jobs): 640x360 at 800 kbit/s and "
                                "426x240 at 400 kbit/s, H.264 + AAC 96 kbit/s, 2 s segments.",
                    outputs=[_live("360p", 640, 360, 800_000), _live("240p", 426, 240, 400_000)],
                    segment_duration=duration_pb2.Duration(seconds=2)),
    ]
    for t in out:
        t.built_in = True
    return {t.id: t for t in out}


BUILT_IN = _built_ins()


def template_not_found(template_id: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.NOT_FOUND, "TEMPLATE_NOT_FOUND",
        f"job template {clip(template_id)} does not exist; list them with ListJobTemplates",
        metadata={"template_id": template_id}, resource=("mediajobs.v1.JobTemplate", template_id),
    )


def built_in_refused(template_id: str, action: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION, "TEMPLATE_BUILT_IN",
        f"job template {clip(template_id)} is built in and cannot be {action}; create your own with CreateJobTemplate",
        metadata={"template_id": template_id},
        precondition=("BUILT_IN", f"jobTemplates/{template_id}", "built-in templates are read-only"),
    )


# -- validation ------------------------------------------------------------------


def check_template_id(template_id: str, field: str) -> None:
    if not template_id:
        raise invalid_argument([(field, "required: a template id such as mp4-h264-720p (see ListJobTemplates)")])
    if not ID_RE.match(template_id):
        raise invalid_argument([(field, f"{clip(template_id)} is not a template id: 4-63 lowercase letters, digits "
                                        "or '-', starting with a letter")])


def validate_outputs(outputs: Any, field: str = "job_template.outputs") -> list[tuple[str, str]]:
    v: list[tuple[str, str]] = []
    if not outputs:
        v.append((field, "required: at least one output"))
    if len(outputs) > MAX_OUTPUTS:
        v.append((field, f"at most {MAX_OUTPUTS} outputs, got {len(outputs)}"))
    names: set[str] = set()
    for i, o in enumerate(outputs):
        f = f"{field}[{i}]"
        if not NAME_RE.match(o.name):
            v.append((f"{f}.name", f"{clip(o.name)} is not an output name: 1-64 letters, digits, '_', '-' or '.'"))
        elif o.name in names:
            v.append((f"{f}.name", f"{clip(o.name)} is used twice; output names must be unique"))
        names.add(o.name)
        if o.container not in ("mp4", "hls"):
            v.append((f"{f}.container", f"{clip(o.container)} is not supported; use mp4 (files) or hls (live)"))
        elif o.container == "hls" and (o.video_codec != "h264" or not o.height):
            v.append((f"{f}", "an hls (live) output needs video_codec h264 and a height"))
        if o.video_codec not in ("", "h264"):
            v.append((f"{f}.video_codec", f"{clip(o.video_codec)} is not supported; use h264 (or empty for audio only)"))
        if o.audio_codec not in ("", "aac"):
            v.append((f"{f}.audio_codec", f"{clip(o.audio_codec)} is not supported; use aac (or empty for no audio)"))
        if not o.video_codec and not o.audio_codec:
            v.append((f, "an output needs a video_codec, an audio_codec or both"))
        for name, val in (("width", o.width), ("height", o.height)):
            if not 0 <= val <= 8192 or val % 2:
                v.append((f"{f}.{name}", f"must be an even number of pixels up to 8192 (0 = follow the source), got {val}"))
        if not 0 <= o.scale <= 4:
            v.append((f"{f}.scale", f"must be in (0, 4] (0 means 1.0), got {o.scale}"))
        if not 0 <= o.video_bit_rate_bps <= 500_000_000:
            v.append((f"{f}.video_bit_rate_bps", "must be 0 (quality default) to 500,000,000"))
        if not 0 <= o.frame_rate <= 240:
            v.append((f"{f}.frame_rate", "must be 0 (the source's) to 240"))
        if not 0 <= o.audio_bit_rate_bps <= 1_536_000:
            v.append((f"{f}.audio_bit_rate_bps", "must be 0 (default 128000) to 1,536,000"))
        if o.audio_sample_rate and not 8000 <= o.audio_sample_rate <= 192_000:
            v.append((f"{f}.audio_sample_rate", "must be 0 (the source's) or 8000-192000 Hz"))
        if not 0 <= o.audio_channels <= 2:
            v.append((f"{f}.audio_channels", "must be 0 (the source's), 1 or 2"))
        if o.preset and o.preset not in X264_PRESETS:
            v.append((f"{f}.preset", f"{clip(o.preset)} is not an x264 preset; use one of {', '.join(X264_PRESETS)}"))
        if not 0 <= o.gop_size <= 1000:
            v.append((f"{f}.gop_size", "must be 0 (encoder default) to 1000 frames"))
    return v


def validate_template(t: JobTemplate, field: str = "job_template") -> list[tuple[str, str]]:
    v = validate_outputs(t.outputs, f"{field}.outputs")
    containers = {o.container for o in t.outputs}
    if "hls" in containers and len(containers) > 1:
        v.append((f"{field}.outputs", "a template is either for files (every output mp4) or live (every output hls)"))
    if t.HasField("segment_duration"):
        seg = t.segment_duration.seconds + t.segment_duration.nanos / 1e9
        if "hls" not in containers:
            v.append((f"{field}.segment_duration", "only for live templates (outputs of container hls)"))
        elif not 1 <= seg <= 10:
            v.append((f"{field}.segment_duration", f"must be 1 to 10 seconds, got {seg:g}"))
    if len(t.display_name) > 256:
        v.append((f"{field}.display_name", "at most 256 characters"))
    if len(t.description) > 4096:
        v.append((f"{field}.description", "at most 4096 characters"))
    v += payloads.metadata_violations(t.labels, f"{field}.labels")
    return v


def outputs_as_params(outputs: Any) -> list[dict[str, Any]]:
    """Template outputs as job params (snake_case, what the media worker reads)."""
    return [json_format.MessageToDict(o, preserving_proto_field_name=True) for o in outputs]


# -- reads ---------------------------------------------------------------------


def get_file_template(db: peewee.Database, project: str, template_id: str) -> JobTemplate:
    """A template for files (entries, TRANSCODE, bulk uploads): NOT_FOUND,
    or FAILED_PRECONDITION (TEMPLATE_IS_LIVE) for a live template."""
    t = get_template(db, project, template_id)
    if is_live(t):
        raise ServiceError(
            grpc.StatusCode.FAILED_PRECONDITION, "TEMPLATE_IS_LIVE",
            f"job template {clip(template_id)} is a live template (hls outputs), for live jobs only; "
            "use a template with mp4 outputs (see ListJobTemplates)",
            metadata={"template_id": template_id},
            precondition=("TEMPLATE_IS_LIVE", f"jobTemplates/{template_id}", "live templates make HLS, not files"),
        )
    return t


def get_template(db: peewee.Database, project: str, template_id: str) -> JobTemplate:
    t = BUILT_IN.get(template_id)
    if t is not None:
        return t
    p = db.param
    row = db.execute_sql(f"SELECT data FROM job_templates WHERE project = {p} AND id = {p}",
                         (project, template_id)).fetchone()
    if row is None:
        raise template_not_found(template_id)
    return JobTemplate.FromString(bytes(row[0]))


def list_templates(db: peewee.Database, project: str, req: msvc.ListJobTemplatesRequest) -> msvc.ListJobTemplatesResponse:
    size = page_size(req.page_size)
    # One ordering over both sources: built-ins first (in their order), then
    # the stored ones by id. The token is (phase, last id).
    phase, last = ("b", "") if not req.page_token else tuple(decode_token(req.page_token, "templates"))
    out: list[JobTemplate] = []
    if phase == "b":
        ids = list(BUILT_IN)
        start = ids.index(last) + 1 if last in BUILT_IN else 0
        out += [BUILT_IN[i] for i in ids[start:start + size]]
        last = out[-1].id if out else last
        if len(out) == size and start + size < len(ids):
            return msvc.ListJobTemplatesResponse(job_templates=out, next_page_token=encode_token(["b", last], "templates"))
        phase, last = "u", ""
    m = models_for(db)
    rows = list(
        m.JobTemplateRow.select(m.JobTemplateRow.id, m.JobTemplateRow.data)
        .where((m.JobTemplateRow.project == project) & (m.JobTemplateRow.id > last))
        .order_by(m.JobTemplateRow.id)
        .limit(size - len(out) + 1)
        .tuples()
    )
    more = len(rows) > size - len(out)
    rows = rows[: size - len(out)]
    # The page also ends at the message budget (labels make templates large).
    page = payloads.MessageBudget()
    for t in out:
        page.admit(t.ByteSize())
    last_id = last
    for row_id, data in rows:
        t = JobTemplate.FromString(bytes(data))
        if not page.admit(t.ByteSize()):
            more = True
            break
        out.append(t)
        last_id = row_id
    token = encode_token(["u", last_id], "templates") if more else ""  # "": from the first stored one
    return msvc.ListJobTemplatesResponse(job_templates=out, next_page_token=token)


# -- mutations -------------------------------------------------------------------


def create_template(tx: WriteTx, template_id: str, t: JobTemplate) -> JobTemplate:
    if template_id in BUILT_IN:
        raise ServiceError(grpc.StatusCode.ALREADY_EXISTS, "TEMPLATE_EXISTS",
                           f"job template {clip(template_id)} is built in; choose another id",
                           metadata={"template_id": template_id})
    m = models_for(tx.db)
    if m.JobTemplateRow.select().where((m.JobTemplateRow.project == tx.project) & (m.JobTemplateRow.id == template_id)).exists():
        raise ServiceError(grpc.StatusCode.ALREADY_EXISTS, "TEMPLATE_EXISTS",
                           f"job template {clip(template_id)} already exists; update it with UpdateJobTemplate or pick another id",
                           metadata={"template_id": template_id})
    out = JobTemplate()
    out.CopyFrom(t)
    out.id = template_id
    out.built_in = False
    set_ts(out.create_time, tx.now)
    set_ts(out.update_time, tx.now)
    m.JobTemplateRow.insert(project=tx.project, id=template_id, create_time=tx.now, update_time=tx.now,
                            data=out.SerializeToString()).execute()
    return out


def update_template(tx: WriteTx, t: JobTemplate, mask: field_mask_pb2.FieldMask) -> JobTemplate:
    if t.id in BUILT_IN:
        raise built_in_refused(t.id, "changed")
    cur = get_template(tx.db, tx.project, t.id)
    for path in mask.paths:
        if path in ("labels", "outputs"):
            cur.ClearField(path)  # type: ignore[arg-type]
            getattr(cur, path).MergeFrom(getattr(t, path))
        else:
            setattr(cur, path, getattr(t, path))
    set_ts(cur.update_time, tx.now)
    m = models_for(tx.db)
    m.JobTemplateRow.update(update_time=tx.now, data=cur.SerializeToString()).where(
        (m.JobTemplateRow.project == tx.project) & (m.JobTemplateRow.id == t.id)
    ).execute()
    return cur


def delete_template(tx: WriteTx, template_id: str, allow_missing: bool) -> None:
    if template_id in BUILT_IN:
        raise built_in_refused(template_id, "deleted")
    m = models_for(tx.db)
    n = m.JobTemplateRow.delete().where(
        (m.JobTemplateRow.project == tx.project) & (m.JobTemplateRow.id == template_id)
    ).execute()
    if not n and not allow_missing:
        raise template_not_found(template_id)
