"""Media functions of the reference worker, on PyAV (the FFmpeg libraries
bundled in the `av` wheel); no gRPC here.

- `resolve_in_root(root, rel)`: a job's path (relative, or a `file://` URL)
  as a real path that must stay inside the storage root.
- `probe(path)`: a `MediaInfo` of a media file (container, first video and
  audio stream, longest GOP from a demux pass, MP4 fast start).
- `transcode(src, outputs, progress, cancelled)`: decode a source once and
  encode every output (H.264 / libx264 + AAC in MP4), written to temporary
  files that are renamed into place only when every output succeeded.
- `synthesize_clip(path, ...)`: a test clip from FFmpeg's own `testsrc2` and
  `sine` sources (no numpy needed).

    info = probe(Path("/srv/media/in/clip.mov"))
    spec = OutputSpec(name="360p", container="mp4", video_codec="h264", height=360, audio_codec="aac")
    transcode(Path("/srv/media/in/clip.mov"), [(spec, Path("/srv/media/out/360p.mp4"))],
              progress=lambda pct: print(pct), cancelled=lambda: False)
"""
from __future__ import annotations

import json
import math
import os
import re
import secrets
import string
import struct
import time
import urllib.parse
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Sequence

import av
import av.error
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.filter import Graph
from av.video.frame import PictureType, VideoFrame
from av.video.stream import VideoStream

from mediajobs.v1 import media_resources_pb2 as mres

MediaInfo = mres.MediaInfo
OutputSpec = mres.OutputSpec

MAX_RAW_DATA = 64 * 1024
DEFAULT_PRESET = "veryfast"
DEFAULT_CRF = 23
DEFAULT_AUDIO_BIT_RATE = 128_000
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
SUPPORTED_CONTAINERS = ("mp4",)
SUPPORTED_VIDEO_CODECS = ("h264",)
SUPPORTED_AUDIO_CODECS = ("aac",)
# Sample rates FFmpeg's AAC encoder takes; a source at another rate is
# resampled to the nearest of them.
AAC_SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
# Progress reports at most this often (seconds).
PROGRESS_INTERVAL = 0.1
# Packets the decoders may reject (damaged data) before a transcode gives up.
MAX_DECODE_ERRORS = 25
# MP4 output flags: the index (moov) goes before the media data, so the file
# plays while it downloads.
MP4_OPTIONS = {"movflags": "+faststart"}
# Video codecs whose encoders are variable bit rate unless told otherwise.
_VBR_VIDEO_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mpeg2video", "mpeg1video", "prores",
                               "dnxhd", "mjpeg", "theora", "wmv3", "vc1"})
# AVFieldOrder: UNKNOWN, PROGRESSIVE, TT, BB, TB, BT.
_FIELD_PROGRESSIVE = 1
_FIELD_INTERLACED = frozenset({2, 3, 4, 5})


# -- errors ---------------------------------------------------------------------------


class MediaError(Exception):
    """A source that cannot be read as media (missing, corrupt, no streams)."""


class OutsideStorageRoot(ValueError):
    """A job path that is absolute, climbs with `..`, or resolves (through
    symbolic links) to somewhere outside the storage root."""


class UnsupportedOutput(ValueError):
    """An OutputSpec this worker cannot produce (container, codec, a stream
    the source does not have, bad numbers)."""


class TranscodeCancelled(Exception):
    """`cancelled()` said stop; no output was left behind."""


@dataclass(frozen=True)
class EncodedOutput:
    """One finished output of `transcode`: where it is, its size, how many
    video frames were encoded and how many decoded audio frames fed it."""

    spec: OutputSpec
    path: Path
    size_bytes: int
    video_frames: int
    audio_frames: int


# -- paths ----------------------------------------------------------------------------


# Where the other projects' areas live under the storage root (a job's root
# is its project's area; see JobContext.area_root).
PROJECTS_DIR = ".projects"


def resolve_in_root(root: Path, rel: str) -> Path:
    """The real path of `rel` inside the storage `root`.

    `rel` is a relative path (`incoming/clip.mov`) or a `file://` URL of an
    absolute path inside the root. Refused with OutsideStorageRoot: empty
    paths, absolute paths, `..` components, NUL bytes, and anything that
    after resolving symbolic links (os.path.realpath) is not inside
    realpath(root). The file itself need not exist (outputs)."""
    if not isinstance(rel, str) or not rel.strip():
        raise OutsideStorageRoot("empty path: give a path relative to the storage root")
    if "\x00" in rel:
        raise OutsideStorageRoot(f"path {rel!r} contains a NUL byte")
    real_root = os.path.realpath(root)
    if rel.startswith("file:"):
        url = urllib.parse.urlsplit(rel)
        if url.netloc not in ("", "localhost") or url.query or url.fragment:
            raise OutsideStorageRoot(f"{rel!r} is not a file:// URL of a local absolute path")
        local = urllib.parse.unquote(url.path)
        if not local.startswith("/"):
            raise OutsideStorageRoot(f"{rel!r} is not a file:// URL of an absolute path")
        if ".." in Path(local).parts:
            raise OutsideStorageRoot(f"path {rel!r} must not contain '..'")
        candidate = local
    else:
        if os.path.isabs(rel) or rel.startswith("~"):
            raise OutsideStorageRoot(f"path {rel!r} must be relative to the storage root")
        if ".." in Path(rel).parts:
            raise OutsideStorageRoot(f"path {rel!r} must not contain '..'")
        candidate = os.path.join(real_root, rel)
    real = os.path.realpath(candidate)
    if real == real_root:
        raise OutsideStorageRoot(f"path {rel!r} names the storage root itself, not a file in it")
    if os.path.commonpath([real, real_root]) != real_root:
        raise OutsideStorageRoot(f"path {rel!r} is outside the storage root")
    if Path(os.path.relpath(real, real_root)).parts[0] == PROJECTS_DIR:
        # Other projects' areas (the server's storage.PROJECTS_DIR): never
        # reachable from a job, whatever its path says.
        raise OutsideStorageRoot(f"path {rel!r} is outside this job's storage area")
    return Path(real)


# -- probing --------------------------------------------------------------------------


def _reason(e: BaseException) -> str:
    """FFmpeg's (or the OS's) reason, without the file name PyAV appends."""
    strerror = getattr(e, "strerror", None)
    return str(strerror) if strerror else (str(e) or type(e).__name__)


def _open_input(path: Path, label: str) -> InputContainer:
    try:
        if not path.is_file():
            raise MediaError(f"source {label!r} is not a readable media file: "
                             + ("it is not a regular file" if path.exists() else "no such file"))
        container = av.open(str(path), "r", metadata_errors="replace")
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError) as e:
        raise MediaError(f"source {label!r} is not a readable media file: {_reason(e)}") from e
    if not any(s.type in ("video", "audio") for s in container.streams):
        container.close()
        raise MediaError(f"source {label!r} is not a readable media file: it has no audio or video stream")
    return container


def _printable_tag(tag: str | None) -> str:
    """A codec tag (`avc1`) as text; '' for binary or empty tags."""
    if not tag:
        return ""
    tag = tag.strip()
    return tag if tag and all(c in string.printable and c not in "\r\n\t\x0b\x0c" for c in tag) else ""


def _codec_name(stream: Any) -> str:
    """The codec's canonical name (`mp3`, not the decoder's `mp3float`)."""
    cc = stream.codec_context
    if cc is None:
        return ""
    return str(cc.codec.canonical_name or cc.name)


_PCM_BITS = re.compile(r"^pcm_[a-z]*?(\d+)")


def _audio_bits(codec: str, decoded_bits: int) -> int:
    """Bits per sample: what a PCM codec stores (pcm_s24le: 24), else the
    decoder's sample format (fltp: 32)."""
    m = _PCM_BITS.match(codec)
    return int(m.group(1)) if m else decoded_bits


def _seconds(value: int | None, time_base: Fraction | None) -> float:
    if value is None or time_base is None:
        return 0.0
    return float(value * time_base)


def _pick(streams: Sequence[Any]) -> Any | None:
    """The default-disposition stream of a kind, else the first one; cover
    art (attached pictures) does not count as video."""
    streams = [s for s in streams if not s.disposition & av.stream.Disposition.attached_pic]
    for s in streams:
        if s.disposition & av.stream.Disposition.default:
            return s
    return streams[0] if streams else None


def is_fast_start(path: Path) -> bool:
    """Whether an MP4/MOV file's top-level 'moov' box comes before its 'mdat'
    box (False when either is missing or the boxes are malformed)."""
    with open(path, "rb") as f:
        size_total = os.fstat(f.fileno()).st_size
        pos = 0
        while pos + 8 <= size_total:
            f.seek(pos)
            header = f.read(16)
            if len(header) < 8:
                return False
            size, kind = struct.unpack(">I4s", header[:8])
            if kind == b"moov":
                return True
            if kind == b"mdat":
                return False
            if size == 1:  # 64-bit size follows
                if len(header) < 16:
                    return False
                size = struct.unpack(">Q", header[8:16])[0]
            elif size == 0:  # the box runs to the end of the file
                return False
            if size < 8:
                return False
            pos += size
    return False


@dataclass
class _StreamScan:
    packets: int = 0
    bytes: int = 0
    first_ts: float | None = None
    end_ts: float = 0.0
    keyframes: list[int] | None = None

    def add(self, size: int, start: float | None, duration: float) -> None:
        self.packets += 1
        self.bytes += size
        if start is not None:
            if self.first_ts is None or start < self.first_ts:
                self.first_ts = start
            self.end_ts = max(self.end_ts, start + duration)

    @property
    def duration(self) -> float:
        return max(0.0, self.end_ts - (self.first_ts or 0.0))


class _FirstFrame:
    """Decodes video packets until the first frame comes out, for what only
    frames carry: the display rotation and whether it is interlaced."""

    def __init__(self, stream: VideoStream | None) -> None:
        self.stream = stream
        self.done = stream is None
        self.rotation = 0
        self.interlaced = False
        self.errors = 0

    def feed(self, packet: av.Packet) -> None:
        if self.done or self.stream is None:
            return
        try:
            frames = self.stream.decode(packet)
        except av.error.InvalidDataError:
            self.errors += 1
            self.done = self.errors > MAX_DECODE_ERRORS
            return
        if frames:
            self.rotation = int(frames[0].rotation) % 360
            self.interlaced = bool(frames[0].interlaced_frame)
            self.done = True


def _scan(container: InputContainer, video: VideoStream | None,
          label: str) -> tuple[dict[int, _StreamScan], _FirstFrame, int]:
    """One demux pass over every packet (no decoding but the first video
    frame): per-stream packet counts, bytes and time span, and the longest
    distance between two keyframes of `video` (in frames, counting to the
    end of the stream for the last GOP). Returns (scans, first frame, max_gop)."""
    scans: dict[int, _StreamScan] = {s.index: _StreamScan() for s in container.streams}
    first = _FirstFrame(video)
    keyframes: list[int] = []
    try:
        for packet in container.demux():
            stream = packet.stream
            if packet.size == 0:  # the flush packets PyAV appends at the end
                if stream is video:
                    first.feed(packet)
                continue
            scan = scans[stream.index]
            tb = packet.time_base
            start = packet.pts if packet.pts is not None else packet.dts
            scan.add(packet.size, _seconds(start, tb) if start is not None else None, _seconds(packet.duration, tb))
            if stream is video:
                if packet.is_keyframe:
                    keyframes.append(scan.packets - 1)
                first.feed(packet)
    except av.error.FFmpegError as e:
        raise MediaError(f"source {label!r} is not a readable media file: {_reason(e)}") from e
    max_gop = 0
    if video is not None:
        marks = sorted({0, *keyframes, scans[video.index].packets})
        max_gop = max((b - a for a, b in zip(marks, marks[1:])), default=0)
    return scans, first, max_gop


def _kbps(bit_rate: int | None, nbytes: int, seconds: float) -> int:
    if bit_rate:
        return int(round(bit_rate / 1000))
    return int(round(nbytes * 8 / seconds / 1000)) if seconds > 0 else 0


def _stream_summary(s: Any) -> dict[str, Any]:
    cc = s.codec_context
    d: dict[str, Any] = {
        "index": s.index,
        "kind": s.type,
        "codec": _codec_name(s),
        "codec_tag": _printable_tag(s.codec_tag) if cc is not None else "",
        "profile": s.profile or "",
        "time_base": str(s.time_base) if s.time_base is not None else "",
        "start_time": s.start_time,
        "duration": s.duration,
        "frames": s.frames,
        "language": s.language or "",
    }
    if s.type == "video":
        d.update(width=cc.width, height=cc.height, pix_fmt=cc.pix_fmt or "",
                 average_rate=str(s.average_rate) if s.average_rate else "",
                 sample_aspect_ratio=str(s.sample_aspect_ratio) if s.sample_aspect_ratio else "",
                 bit_rate=cc.bit_rate or 0)
    elif s.type == "audio":
        d.update(sample_rate=cc.sample_rate, channels=cc.channels, layout=cc.layout.name,
                 sample_fmt=cc.format.name if cc.format else "", bit_rate=cc.bit_rate or 0)
    d["metadata"] = {k: v[:256] for k, v in list(s.metadata.items())[:32]}
    return d


def _json_list(items: list[dict[str, Any]]) -> str:
    """Compact JSON of a list, dropping items from the end until it fits in
    MAX_RAW_DATA bytes (the server's limit for these fields)."""
    while True:
        text = json.dumps(items, separators=(",", ":"), default=str)
        if len(text.encode()) <= MAX_RAW_DATA or not items:
            return text
        items = items[: len(items) * 3 // 4]


def _raw_data(container: InputContainer, streams: list[dict[str, Any]]) -> str:
    """A compact JSON summary of the probe (at most MAX_RAW_DATA bytes)."""
    raw: dict[str, Any] = {
        "format": {
            "name": container.format.name,
            "long_name": container.format.long_name,
            "duration_us": container.duration,
            "start_time_us": container.start_time,
            "bit_rate": container.bit_rate,
            "metadata": {k: v[:1024] for k, v in list(container.metadata.items())[:64]},
        },
        "streams": streams,
    }
    text = json.dumps(raw, separators=(",", ":"), default=str)
    if len(text.encode()) > MAX_RAW_DATA:
        for s in streams:
            s.pop("metadata", None)
        raw["format"]["metadata"] = {}
        raw["streams"] = streams[:64]
        raw["truncated"] = True
        text = json.dumps(raw, separators=(",", ":"), default=str)[:MAX_RAW_DATA]
    return text


def probe(path: Path, *, label: str | None = None) -> MediaInfo:
    """What is in a media file, as a MediaInfo (entry_id, flavor_asset_id and
    id left empty).

    The first (default) video and audio streams fill the video_* and audio_*
    fields; one demux pass over the whole file (no decoding) gives max_gop
    and the bit rates the headers do not state. `label` names the file in
    error messages (default: the path). Raises MediaError for a missing,
    unreadable or corrupt file, or one without audio and video."""
    path = Path(path)
    label = label if label is not None else str(path)
    container = _open_input(path, label)
    try:
        info = MediaInfo()
        info.file_size_bytes = path.stat().st_size
        fmt = container.format.name
        info.container_format = fmt
        meta = container.metadata
        info.container_id = meta.get("major_brand", "").strip() or ""
        info.writing_lib = meta.get("encoder", "") or meta.get("ENCODER", "")
        videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
        audios = list(container.streams.audio)
        video: VideoStream | None = _pick(videos)
        audio: AudioStream | None = _pick(audios)
        if video is not None:
            video.codec_context.thread_type = "AUTO"
        scans, first, max_gop = _scan(container, video, label)

        container_s = container.duration / 1e6 if container.duration else 0.0
        if not container_s:
            container_s = max((sc.duration for sc in scans.values()), default=0.0)
        info.container_duration_ms = int(round(container_s * 1000))
        total_bytes = info.file_size_bytes
        info.container_bit_rate_kbps = _kbps(container.bit_rate, total_bytes, container_s)

        if video is not None:
            cc = video.codec_context
            vscan = scans[video.index]
            v_s = _seconds(video.duration, video.time_base) or vscan.duration or container_s
            info.video_format = _codec_name(video)
            info.video_codec_id = _printable_tag(video.codec_tag)
            info.video_duration_ms = int(round(v_s * 1000))
            info.video_bit_rate_kbps = _kbps(cc.bit_rate, vscan.bytes, v_s)
            if info.video_format in _VBR_VIDEO_CODECS:
                info.video_bit_rate_mode = mres.BIT_RATE_MODE_VBR
            info.video_width = cc.width
            info.video_height = cc.height
            rate = video.average_rate or video.guessed_rate or video.base_rate
            if not rate and vscan.duration > 0:
                rate = Fraction(vscan.packets / vscan.duration).limit_denominator(1001)
            info.video_frame_rate = round(float(rate), 3) if rate else 0.0
            dar = video.display_aspect_ratio
            if not dar and cc.height:
                sar = video.sample_aspect_ratio or Fraction(1)
                dar = Fraction(cc.width, cc.height) * sar
            info.video_dar = round(float(dar), 4) if dar else 0.0
            info.video_rotation = first.rotation
            field = cc.field_order
            if field in _FIELD_INTERLACED or (field != _FIELD_PROGRESSIVE and first.interlaced):
                info.scan_type = mres.SCAN_TYPE_INTERLACED
            else:
                info.scan_type = mres.SCAN_TYPE_PROGRESSIVE
            info.max_gop = max_gop
            if not info.writing_lib:
                info.writing_lib = video.metadata.get("encoder", "")

        if audio is not None:
            ac = audio.codec_context
            ascan = scans[audio.index]
            a_s = _seconds(audio.duration, audio.time_base) or ascan.duration or container_s
            info.audio_format = _codec_name(audio)
            info.audio_codec_id = _printable_tag(audio.codec_tag)
            info.audio_duration_ms = int(round(a_s * 1000))
            info.audio_bit_rate_kbps = _kbps(ac.bit_rate, ascan.bytes, a_s)
            if info.audio_format.startswith("pcm_"):
                info.audio_bit_rate_mode = mres.BIT_RATE_MODE_CBR
            info.audio_channels = ac.channels
            info.audio_sampling_rate = ac.sample_rate
            info.audio_resolution = _audio_bits(info.audio_format, ac.format.bits if ac.format is not None else 0)

        summaries = [_stream_summary(s) for s in container.streams]
        streams_json = [{"index": s["index"], "kind": s["kind"], "codec": s["codec"]} for s in summaries]
        info.content_streams = _json_list(streams_json)
        info.multi_stream = len(videos) > 1 or len(audios) > 1
        if info.multi_stream:
            info.multi_stream_info = _json_list(
                [{k: s[k] for k in ("index", "kind", "codec", "codec_tag", "language", "width", "height",
                                    "channels", "sample_rate") if k in s}
                 for s in summaries if s["kind"] in ("video", "audio")])
        info.raw_data = _raw_data(container, summaries)
        if "mp4" in fmt.split(",") or "mov" in fmt.split(","):
            info.is_fast_start = is_fast_start(path)
        return info
    finally:
        container.close()


# -- transcoding ----------------------------------------------------------------------


def _even(x: float) -> int:
    return max(2, int(x / 2 + 0.5) * 2)  # nearest even number, halves up


def output_size(spec: OutputSpec, width: int, height: int, sar: Fraction | None) -> tuple[int, int]:
    """The frame size of an output: width and height as given (made even);
    only one of them: the other follows the source's display aspect ratio;
    neither: `scale` (0: 1.0) times the source's display size. Outputs have
    square pixels."""
    display_w = width * (sar if sar and sar > 0 else 1)
    dar = display_w / height if height else Fraction(16, 9)
    if spec.width and spec.height:
        return _even(spec.width), _even(spec.height)
    if spec.width:
        return _even(spec.width), _even(spec.width / dar)
    if spec.height:
        return _even(spec.height * dar), _even(spec.height)
    scale = spec.scale or 1.0
    return _even(float(display_w) * scale), _even(height * scale)


def frame_rate_fraction(fps: float) -> Fraction:
    """A frame rate as an exact fraction: 29.97 -> 30000/1001 (the NTSC
    rates), 25.0 -> 25, otherwise the nearest fraction with a denominator
    up to 1001."""
    for base in (24, 30, 48, 60, 120):
        ntsc = Fraction(base * 1000, 1001)
        if abs(fps - float(ntsc)) < 0.006:
            return ntsc
    return Fraction(fps).limit_denominator(1001)


def check_output_spec(spec: OutputSpec) -> None:
    """Raise UnsupportedOutput for an OutputSpec this worker cannot encode."""
    name = spec.name or "?"
    if spec.container.lower() not in SUPPORTED_CONTAINERS:
        raise UnsupportedOutput(f"output {name!r}: container {spec.container!r} is not supported "
                                f"(supported: {', '.join(SUPPORTED_CONTAINERS)})")
    if spec.video_codec and spec.video_codec.lower() not in SUPPORTED_VIDEO_CODECS:
        raise UnsupportedOutput(f"output {name!r}: video codec {spec.video_codec!r} is not supported "
                                f"(supported: {', '.join(SUPPORTED_VIDEO_CODECS)}, or empty for audio only)")
    if spec.audio_codec and spec.audio_codec.lower() not in SUPPORTED_AUDIO_CODECS:
        raise UnsupportedOutput(f"output {name!r}: audio codec {spec.audio_codec!r} is not supported "
                                f"(supported: {', '.join(SUPPORTED_AUDIO_CODECS)}, or empty for no audio)")
    if not spec.video_codec and not spec.audio_codec:
        raise UnsupportedOutput(f"output {name!r} has neither a video nor an audio codec")
    if spec.preset and spec.preset not in X264_PRESETS:
        raise UnsupportedOutput(f"output {name!r}: unknown x264 preset {spec.preset!r}")
    for field, value, low, high in (("width", spec.width, 0, 16384), ("height", spec.height, 0, 16384),
                                    ("scale", spec.scale, 0, 4), ("frame_rate", spec.frame_rate, 0, 1000),
                                    ("video_bit_rate_bps", spec.video_bit_rate_bps, 0, 1_000_000_000),
                                    ("audio_bit_rate_bps", spec.audio_bit_rate_bps, 0, 1_000_000),
                                    ("audio_sample_rate", spec.audio_sample_rate, 0, 192_000),
                                    ("audio_channels", spec.audio_channels, 0, 2),
                                    ("gop_size", spec.gop_size, 0, 100_000)):
        if not (low <= value <= high) or (isinstance(value, float) and math.isnan(value)):
            raise UnsupportedOutput(f"output {name!r}: {field} {value} is out of range [{low}, {high}]")
    if spec.audio_codec and spec.audio_sample_rate and spec.audio_sample_rate not in AAC_SAMPLE_RATES:
        raise UnsupportedOutput(f"output {name!r}: AAC cannot use audio_sample_rate {spec.audio_sample_rate} "
                                f"(one of {', '.join(map(str, AAC_SAMPLE_RATES))}, or 0 for the source's)")


class _VideoEncoder:
    """One output's video path: a filter graph (scale, square pixels, fps,
    yuv420p) feeding libx264."""

    def __init__(self, out: OutputContainer, spec: OutputSpec, src: VideoStream) -> None:
        cc = src.codec_context
        sar = src.sample_aspect_ratio or cc.sample_aspect_ratio
        self.source_sar = sar if sar and sar > 0 else Fraction(1)
        self.width, self.height = output_size(spec, cc.width, cc.height, sar)
        if spec.frame_rate:
            rate = frame_rate_fraction(spec.frame_rate)
        else:
            rate = src.average_rate or src.guessed_rate or Fraction(25)
        self.rate = rate
        self.stream: VideoStream = out.add_stream("libx264", rate=rate)
        enc = self.stream.codec_context
        enc.width, enc.height = self.width, self.height
        enc.pix_fmt = "yuv420p"
        enc.time_base = 1 / rate
        enc.thread_type = "AUTO"
        enc.thread_count = 0
        if spec.gop_size:
            enc.gop_size = spec.gop_size
        options = {"preset": spec.preset or DEFAULT_PRESET}
        if spec.video_bit_rate_bps:
            enc.bit_rate = int(spec.video_bit_rate_bps)
        else:
            options["crf"] = str(DEFAULT_CRF)
        enc.options = options
        self.graph: Graph | None = None
        self.frames = 0

    def set_rotation(self, degrees: int) -> None:
        if degrees:
            self.stream.set_display_rotation(degrees)

    def _build_graph(self, frame: VideoFrame) -> Graph:
        g = Graph()
        tb = frame.time_base or Fraction(1, 90000)
        sar = self.source_sar
        src = g.add("buffer", f"video_size={frame.width}x{frame.height}:pix_fmt={frame.format.name}"
                              f":time_base={tb.numerator}/{tb.denominator}"
                              f":pixel_aspect={sar.numerator}/{sar.denominator}"
                              f":colorspace={frame.colorspace}:range={frame.color_range}")
        chain = [src, g.add("scale", f"{self.width}:{self.height}"), g.add("setsar", "1"),
                 g.add("fps", f"fps={self.rate.numerator}/{self.rate.denominator}"),
                 g.add("format", "pix_fmts=yuv420p"), g.add("buffersink")]
        for a, b in zip(chain, chain[1:]):
            a.link_to(b)
        g.configure()
        return g

    def push(self, frame: VideoFrame | None, out: OutputContainer) -> None:
        """Filter and encode one decoded frame (None: flush everything)."""
        if self.graph is None:
            if frame is None:
                return
            self.graph = self._build_graph(frame)
        self.graph.push(frame)
        while True:
            try:
                filtered = self.graph.vpull()
            except (av.error.BlockingIOError, av.error.EOFError):
                break
            self.frames += 1
            # Let x264 place keyframes itself (a decoded I frame would force one).
            filtered.pict_type = PictureType.NONE
            out.mux(self.stream.encode(filtered))
        if frame is None:
            out.mux(self.stream.encode(None))


class _AudioEncoder:
    """One output's audio path: PyAV's encoder resamples (format, layout,
    rate, 1024-sample frames) by itself."""

    def __init__(self, out: OutputContainer, spec: OutputSpec, src: AudioStream) -> None:
        cc = src.codec_context
        rate = int(spec.audio_sample_rate or cc.sample_rate or 48000)
        if rate not in AAC_SAMPLE_RATES:
            rate = min(AAC_SAMPLE_RATES, key=lambda r: abs(r - rate))
        channels = min(2, int(spec.audio_channels or cc.channels or 2))
        self.stream: AudioStream = out.add_stream("aac", rate=rate)
        enc = self.stream.codec_context
        enc.layout = "mono" if channels == 1 else "stereo"
        enc.bit_rate = int(spec.audio_bit_rate_bps or DEFAULT_AUDIO_BIT_RATE)
        self.frames = 0

    def push(self, frame: av.AudioFrame | None, out: OutputContainer) -> None:
        if frame is not None:
            self.frames += 1
        out.mux(self.stream.encode(frame))


@dataclass
class _Output:
    spec: OutputSpec
    final: Path
    part: Path
    container: OutputContainer | None = None
    video: _VideoEncoder | None = None
    audio: _AudioEncoder | None = None


def _part_path(final: Path) -> Path:
    """A hidden temporary name beside `final`, unique per run: a worker that
    lost its lease (and cleans up) never touches the file of the worker that
    took the job over."""
    return final.with_name(f".{final.name}.{secrets.token_hex(4)}.part")


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def transcode(src: Path, outputs: Sequence[tuple[OutputSpec, Path]], progress: Callable[[float], None],
              cancelled: Callable[[], bool], *, label: str | None = None) -> list[EncodedOutput]:
    """Decode `src` once and encode every (spec, path) output.

    Each output is written to `.<name>.<random>.part` beside its path (parent
    directories are created) and renamed into place only after every output
    was encoded; on cancellation (TranscodeCancelled) or any error every
    partial file, and every output already renamed, is removed.
    `progress(pct)` gets the decoded position as a percentage of the
    source's duration, 0 to 99.9, never decreasing, at most every
    PROGRESS_INTERVAL seconds. `cancelled()` is polled once per packet.
    Video outputs keep the source's rotation as display metadata (frames
    are not turned), so width/height apply to the stored frame.

    Raises UnsupportedOutput for specs that cannot be encoded from this
    source, MediaError for an unreadable or badly damaged source. `label`
    names the source in messages (default: the path)."""
    src = Path(src)
    label = label if label is not None else str(src)
    if not outputs:
        raise UnsupportedOutput("no outputs to encode")
    seen: set[str] = {os.path.realpath(src)}
    for spec, path in outputs:
        check_output_spec(spec)
        real = os.path.realpath(path)
        if real in seen:
            raise UnsupportedOutput(f"output {spec.name!r}: path {str(path)!r} is the source or another output")
        seen.add(real)
    container = _open_input(src, label)
    run = _Run(container, outputs, label)
    try:
        run.encode(progress, cancelled)
        return run.finish()
    except BaseException:
        run.discard()
        raise
    finally:
        container.close()


class _Run:
    """One transcode: the source, its decoders and every output's encoders."""

    def __init__(self, container: InputContainer, outputs: Sequence[tuple[OutputSpec, Path]], label: str) -> None:
        self.container = container
        self.label = label
        self.outputs = list(outputs)
        self.jobs: list[_Output] = []
        self.renamed: list[Path] = []
        self.created_dirs: list[Path] = []  # parents first
        self.src_video: VideoStream | None = _pick(list(container.streams.video))
        self.src_audio: AudioStream | None = _pick(list(container.streams.audio))
        for spec, _ in outputs:
            if spec.video_codec and self.src_video is None:
                raise UnsupportedOutput(f"output {spec.name!r} asks for video, but source {label!r} has none")
            if not spec.video_codec and self.src_audio is None:
                raise UnsupportedOutput(f"output {spec.name!r} is audio only, but source {label!r} has no audio")
        self.want_video = any(spec.video_codec for spec, _ in outputs)
        self.want_audio = any(spec.audio_codec for spec, _ in outputs) and self.src_audio is not None
        # Audio waits for the first video frame, whose rotation goes into the
        # video streams' headers (written with the first packet muxed).
        self.held_audio: list[av.AudioFrame] | None = [] if self.want_video else None

    def _open_outputs(self) -> None:
        for spec, path in self.outputs:
            missing = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
            path.parent.mkdir(parents=True, exist_ok=True)
            self.created_dirs += reversed(missing)
            job = _Output(spec, path, _part_path(path))
            self.jobs.append(job)
            job.container = av.open(str(job.part), "w", format="mp4", options=dict(MP4_OPTIONS))
            if spec.video_codec and self.src_video is not None:
                job.video = _VideoEncoder(job.container, spec, self.src_video)
            if spec.audio_codec and self.src_audio is not None:
                job.audio = _AudioEncoder(job.container, spec, self.src_audio)

    def _video_frame(self, frame: VideoFrame | None) -> None:
        if self.held_audio is not None and frame is not None:
            rotation = int(frame.rotation) % 360
            for job in self.jobs:
                if job.video is not None:
                    job.video.set_rotation(rotation)
        for job in self.jobs:
            if job.video is not None and job.container is not None:
                job.video.push(frame, job.container)
        if self.held_audio is not None:
            held, self.held_audio = self.held_audio, None
            for af in held:
                self._audio_frame(af)

    def _audio_frame(self, frame: av.AudioFrame | None) -> None:
        if self.held_audio is not None and frame is not None:
            self.held_audio.append(frame)
            return
        for job in self.jobs:
            if job.audio is not None and job.container is not None:
                job.audio.push(frame, job.container)

    def encode(self, progress: Callable[[float], None], cancelled: Callable[[], bool]) -> None:
        """Demux, decode and encode everything (up to flushing the encoders)."""
        container, label = self.container, self.label
        streams: list[Any] = []
        if self.want_video and self.src_video is not None:
            self.src_video.codec_context.thread_type = "AUTO"
            self.src_video.codec_context.thread_count = 0
            streams.append(self.src_video)
        if self.want_audio and self.src_audio is not None:
            streams.append(self.src_audio)
        self._open_outputs()

        clock = self.src_video if self.want_video else self.src_audio
        duration = container.duration / 1e6 if container.duration else 0.0
        if not duration and clock is not None:
            duration = _seconds(clock.duration, clock.time_base)
        start = container.start_time / 1e6 if container.start_time else 0.0
        reported = 0.0
        last_report = -math.inf
        decode_errors = 0
        for packet in container.demux(streams):
            if cancelled():
                raise TranscodeCancelled(f"transcode of {label!r} cancelled")
            try:
                frames = packet.decode()
            except av.error.InvalidDataError as e:
                decode_errors += 1
                if decode_errors > MAX_DECODE_ERRORS:
                    raise MediaError(f"source {label!r} is damaged: {decode_errors} packets could not be decoded "
                                     f"(last: {_reason(e)})") from e
                continue
            is_video = packet.stream is self.src_video
            t: float | None = None
            for frame in frames:
                if is_video:
                    assert isinstance(frame, VideoFrame)
                    self._video_frame(frame)
                else:
                    assert isinstance(frame, av.AudioFrame)
                    self._audio_frame(frame)
                t = frame.time
            if t is not None and packet.stream is clock and duration > 0:
                now = time.monotonic()
                if now - last_report >= PROGRESS_INTERVAL:
                    pct = round(min(99.9, max(reported, (t - start) / duration * 100)), 1)
                    last_report = now
                    reported = pct
                    progress(pct)
        if cancelled():
            raise TranscodeCancelled(f"transcode of {label!r} cancelled")
        self._video_frame(None)
        self._audio_frame(None)
        for job in self.jobs:
            if job.video is not None and job.video.frames == 0:
                raise MediaError(f"source {label!r} has no decodable video frames")

    def finish(self) -> list[EncodedOutput]:
        """Close every output, then rename them all into place."""
        for job in self.jobs:
            assert job.container is not None
            job.container.close()
            job.container = None
        done: list[EncodedOutput] = []
        for job in self.jobs:
            os.replace(job.part, job.final)
            self.renamed.append(job.final)
            done.append(EncodedOutput(job.spec, job.final, job.final.stat().st_size,
                                      job.video.frames if job.video else 0, job.audio.frames if job.audio else 0))
        return done

    def discard(self) -> None:
        """Close and delete everything written (after a failure or cancel)."""
        for job in self.jobs:
            if job.container is not None:
                try:
                    job.container.close()
                except Exception:  # noqa: BLE001 - the original error is what matters
                    pass
                job.container = None
            _unlink(job.part)
        for final in self.renamed:  # a failed run leaves no output at all
            _unlink(final)
        for folder in reversed(self.created_dirs):  # nor folders it made, if empty
            try:
                folder.rmdir()
            except OSError:
                pass


# -- test media -------------------------------------------------------------------------


def synthesize_clip(path: Path, seconds: float, width: int, height: int, fps: int = 25, audio: bool = True,
                    video: bool = True, *, rotation: int = 0, crf: int = 20, preset: str = "veryfast") -> None:
    """Write a synthetic MP4 clip: FFmpeg's `testsrc2` moving test pattern
    (H.264, yuv420p; `rotation` degrees of display rotation metadata) and a
    440 Hz sine tone (AAC, 48 kHz stereo). Written to a temporary file and
    renamed into place. Frames come from FFmpeg's lavfi sources, so numpy
    is not needed."""
    if not (video or audio):
        raise ValueError("a clip needs video or audio")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(path)
    out = av.open(str(part), "w", format="mp4")
    try:
        vgraph = agraph = None
        vstream: VideoStream | None = None
        astream: AudioStream | None = None
        if video:
            vgraph = Graph()
            chain = [vgraph.add("testsrc2", f"size={width}x{height}:rate={fps}:duration={seconds}"),
                     vgraph.add("format", "pix_fmts=yuv420p"), vgraph.add("buffersink")]
            for a, b in zip(chain, chain[1:]):
                a.link_to(b)
            vgraph.configure()
            vstream = out.add_stream("libx264", rate=fps)
            vstream.codec_context.width, vstream.codec_context.height = width, height
            vstream.codec_context.pix_fmt = "yuv420p"
            vstream.codec_context.options = {"preset": preset, "crf": str(crf)}
            if rotation:
                vstream.set_display_rotation(rotation)
        if audio:
            agraph = Graph()
            chain = [agraph.add("sine", f"frequency=440:sample_rate=48000:duration={seconds}"),
                     agraph.add("aformat", "sample_fmts=fltp:channel_layouts=stereo"), agraph.add("abuffersink")]
            for a, b in zip(chain, chain[1:]):
                a.link_to(b)
            agraph.configure()
            agraph.set_audio_frame_size(1024)
            astream = out.add_stream("aac", rate=48000)
            astream.codec_context.layout = "stereo"
            astream.codec_context.bit_rate = 128_000
        # Alternate so packets reach the muxer roughly in time order.
        v_t = a_t = 0.0
        v_done, a_done = vgraph is None, agraph is None
        while not (v_done and a_done):
            if not v_done and (a_done or v_t <= a_t):
                assert vgraph is not None and vstream is not None
                try:
                    vf = vgraph.vpull()
                except av.error.EOFError:
                    v_done = True
                    out.mux(vstream.encode(None))
                    continue
                v_t = float(vf.time or 0.0)
                vf.pict_type = PictureType.NONE  # testsrc2 marks every frame I
                out.mux(vstream.encode(vf))
            else:
                assert agraph is not None and astream is not None
                try:
                    af = agraph.pull()
                    assert isinstance(af, av.AudioFrame)
                except av.error.EOFError:
                    a_done = True
                    out.mux(astream.encode(None))
                    continue
                a_t = float(af.time or 0.0)
                out.mux(astream.encode(af))
        out.close()
        os.replace(part, path)
    except BaseException:
        out.close()
        _unlink(part)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m mediajobs.client.media FILE`: write a short test clip (the
    README's examples use one)."""
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m mediajobs.client.media",
        description="Write a synthetic H.264/AAC MP4 test clip (FFmpeg's testsrc2 pattern and a 440 Hz tone) to "
                    "FILE, creating its folder.",
    )
    ap.add_argument("file", metavar="FILE", help="where to write the clip")
    ap.add_argument("--seconds", type=float, default=2.0, help="duration (default %(default)s)")
    ap.add_argument("--size", default="320x240", metavar="WxH", help="frame size (default %(default)s)")
    ap.add_argument("--fps", type=int, default=25, help="frame rate (default %(default)s)")
    ap.add_argument("--no-audio", action="store_true", help="video only")
    args = ap.parse_args(argv)
    m = re.fullmatch(r"(\d+)x(\d+)", args.size)
    if not m or not 16 <= int(m[1]) <= 7680 or not 16 <= int(m[2]) <= 4320:
        ap.error(f"--size {args.size}: give WIDTHxHEIGHT, e.g. 320x240")
    if not 0 < args.seconds <= 3600 or not 1 <= args.fps <= 120:
        ap.error("--seconds must be in (0, 3600] and --fps in [1, 120]")
    path = Path(args.file).expanduser()
    synthesize_clip(path, args.seconds, int(m[1]), int(m[2]), fps=args.fps, audio=not args.no_audio)
    print(f"wrote {path} ({args.seconds:g} s, {args.size}, {args.fps} fps{', no audio' if args.no_audio else ''})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
