"""The live ingest child: one live input in, an HLS ladder out.

The live worker runs one of these per live session as a subprocess (it
isolates the GIL and a crash, and the worker can kill it the moment its
lease is lost):

    python -m mediajobs.client.live.ladder --input pipe:0 --format flv --out DIR \\
        --renditions '[{"name": "360p", "height": 360, "video_kbps": 800, "audio_kbps": 96}]' \\
        [--segment-seconds 2] [--continue] [--stats-interval 5] [--open-timeout S] \\
        [--read-timeout S] [--realtime]

It decodes the input once, scales every video frame per rendition, encodes
libx264 (veryfast, zerolatency, a keyframe exactly every segment, VBV at
the rendition's bit rate) and AAC (48 kHz stereo), and writes one `hls`
muxer: `DIR/<name>/index.m3u8` + `DIR/<name>/seg_NNNNN.ts` per rendition
and `DIR/master.m3u8`. With `--continue`, existing playlists are continued
(`append_list`): numbering goes on and the new session starts with one
`#EXT-X-DISCONTINUITY`. At the end of the input (EOF, the publisher
dropping, a read timeout, or SIGTERM/SIGINT = "stop now, cleanly") the
encoders are flushed and the muxer closed, so every playlist ends with
`#EXT-X-ENDLIST`; a second signal kills at once.

Progress goes to stdout, one JSON object per line (`parse_event` reads
them): `connected`, `statistics`, `segment`, `lagging`, and `ended` last.
Exit codes: 0 after a clean end (eof, stopped, read_timeout), 1 after an
error while encoding (the playlists are still closed when possible), 2
when the arguments are bad or the input cannot be opened.

The worker builds the command line with `command(...)`:

    cmd = command("pipe:0", out_dir, [Rendition("360p", 640, 360, 800, 96)], fmt="flv")
    proc = await asyncio.create_subprocess_exec(*cmd, stdin=PIPE, stdout=PIPE)
    async for line in proc.stdout:
        event = parse_event(line)
"""
from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import select
import signal
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping, NoReturn, Sequence

MODULE = "mediajobs.client.live.ladder"
FORMATS = ("auto", "flv", "mpegts", "hls")
MASTER_PLAYLIST = "master.m3u8"
MEDIA_PLAYLIST = "index.m3u8"
SEGMENT_TEMPLATE = "seg_%05d.ts"
AUDIO_RATE = 48_000
AUDIO_FRAME = 1024
DEFAULT_SEGMENT_SECONDS = 2.0
DEFAULT_STATS_INTERVAL = 5.0
DEFAULT_OPEN_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_FPS = Fraction(30)
X264_PRESET = "veryfast"
# Exit codes.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INPUT = 2
# Inputs that arrive in real time by themselves (no pacing, latency is measured).
_PUSH_SCHEMES = ("rtmp", "rtmps", "rtmpt", "rtmpts", "tcp", "udp", "srt", "rtp")
# Damaged packets tolerated before the input counts as broken.
MAX_DECODE_ERRORS = 100
# Audio frames decoded before the first video frame that are kept (the
# ladder is built from the first video frame).
MAX_HELD_AUDIO = 512
# A timestamp jump backwards larger than this (seconds) is a reset of the
# source's clock: later frames are shifted to continue; smaller ones
# (duplicates, jitter) only move the offending frame.
CLOCK_RESET_S = 1.0
# A forward jump of the input's clock larger than this (seconds) is not
# waited for when pacing, nor counted as latency.
CLOCK_JUMP_S = 10.0
# Errors from reading the input that mean "the publisher went away".
_DROP_ERRNOS = frozenset({errno.EIO, errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ENOTCONN})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_FLV_VIDEO_IDS = {"flv1": 2, "flashsv": 3, "vp6f": 4, "vp6a": 5, "flashsv2": 6, "h264": 7, "hevc": 12, "av1": 13}
_FLV_AUDIO_IDS = {"adpcm_swf": 1, "mp3": 2, "pcm_s16le": 3, "nellymoser": 6, "pcm_alaw": 7, "pcm_mulaw": 8,
                  "aac": 10, "speex": 11}


# -- renditions and the command line ------------------------------------------------------


@dataclass(frozen=True)
class Rendition:
    """One rung of the ladder. `width` or `height` may be None (0 in JSON):
    it then follows the source's display aspect ratio (even); both None
    keeps the source's display size."""

    name: str
    width: int | None
    height: int | None
    video_kbps: int = 800
    audio_kbps: int = 96

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"rendition name {self.name!r} must be 1-64 letters, digits, '_', '-' or '.', "
                             "starting with a letter or digit")
        for label, value, low, high in (("width", self.width, 16, 8192), ("height", self.height, 16, 8192)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high or value % 2:
                raise ValueError(f"rendition {self.name!r}: {label} {value!r} must be an even integer "
                                 f"in [{low}, {high}]")
        for label, value, low, high in (("video_kbps", self.video_kbps, 16, 100_000),
                                        ("audio_kbps", self.audio_kbps, 8, 512)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"rendition {self.name!r}: {label} {value!r} must be an integer in [{low}, {high}]")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Rendition:
        """From `{"name", "width", "height", "video_kbps", "audio_kbps"}`;
        width/height may be missing, null or 0 (from the aspect ratio).
        Raises ValueError for unknown keys or bad values."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a rendition must be a JSON object, not {type(d).__name__}")
        unknown = set(d) - {"name", "width", "height", "video_kbps", "audio_kbps"}
        if unknown:
            raise ValueError(f"rendition {d.get('name')!r}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        if "name" not in d:
            raise ValueError("a rendition needs a name")

        def size(key: str) -> int | None:
            value = d.get(key)
            return None if value is None or (value == 0 and not isinstance(value, bool)) else value

        kwargs: dict[str, Any] = {"name": d["name"], "width": size("width"), "height": size("height")}
        for key in ("video_kbps", "audio_kbps"):
            if key in d:
                kwargs[key] = d[key]
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "width": self.width or 0, "height": self.height or 0,
                "video_kbps": self.video_kbps, "audio_kbps": self.audio_kbps}

    def frame_size(self, src_width: int, src_height: int, sar: Fraction | None = None) -> tuple[int, int]:
        """The encoded size (square pixels) for a source of that size and
        sample aspect ratio."""
        display_w = src_width * (sar if sar is not None and sar > 0 else 1)
        dar = Fraction(display_w) / src_height if src_width > 0 and src_height > 0 else Fraction(16, 9)
        if self.width and self.height:
            return self.width, self.height
        if self.height:
            return _even(self.height * dar), self.height
        if self.width:
            return self.width, _even(self.width / dar)
        return _even(display_w), _even(src_height)


def _even(x: float | Fraction) -> int:
    return max(2, int(float(x) / 2 + 0.5) * 2)


def parse_renditions(text: str | Sequence[Mapping[str, Any]]) -> list[Rendition]:
    """A JSON list (or an already parsed list) of renditions; names must be
    unique. Raises ValueError."""
    items = json.loads(text) if isinstance(text, str) else text
    if not isinstance(items, list) or not items:
        raise ValueError("renditions must be a non-empty JSON list")
    renditions = [Rendition.from_dict(item) for item in items]
    names = [r.name for r in renditions]
    if len(set(names)) != len(names):
        raise ValueError(f"rendition names must be unique: {names}")
    return renditions


def command(input: str, out_dir: Path, renditions: Sequence[Rendition], *, fmt: str = "auto",
            segment_seconds: float = DEFAULT_SEGMENT_SECONDS, continue_playlists: bool = False,
            stats_interval: float = DEFAULT_STATS_INTERVAL, realtime: bool = False, python: str = sys.executable,
            open_timeout: float | None = None, read_timeout: float | None = None) -> list[str]:
    """The argv that runs the ingest child for `input` (`pipe:0`: FLV or
    MPEG-TS written into its stdin; a path; a URL)."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if not renditions:
        raise ValueError("at least one rendition is needed")
    cmd = [python, "-m", MODULE, "--input", input, "--format", fmt, "--out", str(out_dir),
           "--renditions", json.dumps([r.to_dict() for r in renditions], separators=(",", ":")),
           "--segment-seconds", repr(float(segment_seconds)), "--stats-interval", repr(float(stats_interval))]
    if continue_playlists:
        cmd.append("--continue")
    if realtime:
        cmd.append("--realtime")
    if open_timeout is not None:
        cmd += ["--open-timeout", repr(float(open_timeout))]
    if read_timeout is not None:
        cmd += ["--read-timeout", repr(float(read_timeout))]
    return cmd


def parse_event(line: bytes | str) -> dict[str, Any] | None:
    """One stdout line of the child as a dict with an "event" key; None for
    anything else (a blank or non-JSON line, JSON that is not an event)."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            return None
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("event"), str):
        return None
    return value


# -- playlists ----------------------------------------------------------------------------


@dataclass
class PlaylistSegment:
    uri: str
    duration: float
    index: int  # media sequence number
    program_date_time: str | None = None
    discontinuity: bool = False


@dataclass
class MediaPlaylist:
    segments: list[PlaylistSegment] = field(default_factory=list)
    ended: bool = False
    discontinuities: int = 0


def read_playlist(path: Path) -> MediaPlaylist | None:
    """The segments of a media playlist (None when it does not exist)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None
    pl = MediaPlaylist()
    sequence = 0
    duration: float | None = None
    pdt: str | None = None
    discont = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            try:
                sequence = int(line.split(":", 1)[1])
            except ValueError:
                pass
        elif line.startswith("#EXTINF:"):
            try:
                duration = float(line[len("#EXTINF:"):].split(",", 1)[0])
            except ValueError:
                duration = 0.0
        elif line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            pdt = line.split(":", 1)[1]
        elif line == "#EXT-X-DISCONTINUITY":
            pl.discontinuities += 1
            discont = True
        elif line == "#EXT-X-ENDLIST":
            pl.ended = True
        elif not line.startswith("#") and duration is not None:
            pl.segments.append(PlaylistSegment(line, duration, sequence + len(pl.segments), pdt, discont))
            duration, pdt, discont = None, None, False
    return pl


class _PlaylistWatch:
    """Finds the segments each rendition's playlist gained in this session
    (the muxer rewrites a playlist, atomically with temp_file, each time a
    segment is complete)."""

    def __init__(self, out_dir: Path, names: Sequence[str]) -> None:
        self.out_dir = out_dir
        self.paths = {n: out_dir / n / MEDIA_PLAYLIST for n in names}
        self.known: dict[str, int] = {}
        self.signature: dict[str, tuple[int, int, int] | None] = {}
        self.new: dict[str, list[PlaylistSegment]] = {n: [] for n in names}
        for name, path in self.paths.items():
            pl = read_playlist(path)
            self.known[name] = len(pl.segments) if pl else 0
            self.signature[name] = self._sig(path)

    @staticmethod
    def _sig(path: Path) -> tuple[int, int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def existing(self) -> bool:
        return any(self.known.values()) or any(p.exists() for p in self.paths.values())

    def poll(self, force: bool = False) -> list[tuple[str, PlaylistSegment]]:
        found: list[tuple[str, PlaylistSegment]] = []
        for name, path in self.paths.items():
            sig = self._sig(path)
            if not force and sig == self.signature[name]:
                continue
            self.signature[name] = sig
            pl = read_playlist(path)
            if pl is None or len(pl.segments) <= self.known[name]:
                continue
            for seg in pl.segments[self.known[name]:]:
                self.new[name].append(seg)
                found.append((name, seg))
            self.known[name] = len(pl.segments)
        return found


# -- events -------------------------------------------------------------------------------


class _Events:
    """JSON lines on stdout, flushed. A closed stdout (the worker is gone)
    sets `broken`; the session then stops."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.broken = False

    def emit(self, event: str, **fields: Any) -> None:
        if self.broken:
            return
        record = {"event": event, "time": round(time.time(), 3), **fields}
        try:
            self.stream.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
            self.stream.flush()
        except (BrokenPipeError, ValueError, OSError):
            self.broken = True


# -- input --------------------------------------------------------------------------------


class StopFlag:
    """"Stop now, cleanly", set from a signal handler. A plain attribute (no
    lock: a handler that took a lock the interrupted code holds would
    deadlock); waits sleep in short slices."""

    def __init__(self) -> None:
        self.requested = False

    def set(self) -> None:
        self.requested = True

    def is_set(self) -> bool:
        return self.requested

    def wait(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not self.requested:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(remaining, 0.05))
        return self.requested


class _FdReader:
    """A pipe (the worker's stdin) as a file object for PyAV: reads wait with
    select(), so a stalled publisher becomes a read timeout and a stop
    request ends the input (both as EOF) instead of blocking forever."""

    def __init__(self, fd: int, stop: StopFlag, timeout: float) -> None:
        self.fd = fd
        self.stop = stop
        self.timeout = timeout
        self.timed_out = False
        self.eof = False
        self.bytes = 0

    def read(self, size: int) -> bytes:
        if self.eof:
            return b""
        deadline = time.monotonic() + self.timeout
        while not self.stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.timed_out = self.eof = True
                return b""
            try:
                ready, _, _ = select.select([self.fd], [], [], min(remaining, 0.2))
            except OSError:
                ready = [self.fd]
            if ready:
                try:
                    data = os.read(self.fd, size)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.eof = True
                self.bytes += len(data)
                return data
        self.eof = True
        return b""


def _pipe_fd(input: str) -> int | None:
    if input in ("-", "pipe:", "pipe"):
        return 0
    m = re.fullmatch(r"pipe:(\d+)", input)
    return int(m.group(1)) if m else None


def _scheme(input: str) -> str:
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", input)
    return m.group(1).lower() if m else ""


def _is_hls(input: str, fmt: str) -> bool:
    return fmt == "hls" or (fmt == "auto" and ".m3u8" in input.split("?", 1)[0].lower())


def _reason(e: BaseException) -> str:
    strerror = getattr(e, "strerror", None)
    text = str(strerror) if strerror else (str(e) or type(e).__name__)
    return text


def _rate(stream: Any, metadata: Mapping[str, str]) -> Fraction | None:
    for value in (getattr(stream, "average_rate", None), getattr(stream, "guessed_rate", None),
                  getattr(stream.codec_context, "framerate", None)):
        if value and 0 < value <= 240:
            return Fraction(value)
    try:
        fps = float(metadata.get("framerate", "0"))
    except ValueError:
        fps = 0.0
    return Fraction(fps).limit_denominator(1001) if 0 < fps <= 240 else None


def _codec_name(stream: Any) -> str | None:
    if stream is None:
        return None
    cc = stream.codec_context
    try:
        return str(cc.codec.canonical_name or cc.name)
    except Exception:  # noqa: BLE001 - unknown codec
        return str(cc.name) if cc.name else None


def _input_facts(container: Any, video: Any, audio: Any, fmt: str) -> dict[str, Any]:
    """The input's stream facts, from FLV onMetaData where given, else from
    the decoders. FLV codec ids (7 = AVC, 10 = AAC) are included."""
    md: dict[str, str] = {str(k): str(v) for k, v in (container.metadata or {}).items()}
    facts: dict[str, Any] = {"format": container.format.name if container.format else fmt}
    vcodec, acodec = _codec_name(video), _codec_name(audio)
    if video is not None:
        cc = video.codec_context
        rate = _rate(video, md)
        facts.update(width=int(cc.width or _md_int(md, "width") or 0), height=int(cc.height or _md_int(md, "height") or 0),
                     frame_rate=round(float(rate), 3) if rate else None, video_codec=vcodec,
                     video_codec_id=_md_int(md, "videocodecid") or _FLV_VIDEO_IDS.get(vcodec or ""),
                     video_data_rate=_md_float(md, "videodatarate") or (round(cc.bit_rate / 1000, 1)
                                                                           if cc.bit_rate else None))
    else:
        facts.update(width=None, height=None, frame_rate=None, video_codec=None, video_codec_id=None,
                     video_data_rate=None)
    if audio is not None:
        cc = audio.codec_context
        channels = int(cc.channels or 0)
        bits = _md_int(md, "audiosamplesize")
        if not bits:
            m = re.match(r"^pcm_[a-z]*?(\d+)", acodec or "")
            bits = int(m.group(1)) if m else 16  # lossy codecs: the FLV convention, 16
        stereo = md.get("stereo")
        facts.update(audio_codec=acodec, audio_codec_id=_md_int(md, "audiocodecid") or _FLV_AUDIO_IDS.get(acodec or ""),
                     audio_sample_rate=int(cc.sample_rate or _md_int(md, "audiosamplerate") or 0),
                     audio_channels=channels, audio_sample_size=bits,
                     stereo=(stereo == "true") if stereo in ("true", "false") else channels >= 2,
                     audio_data_rate=_md_float(md, "audiodatarate") or (round(cc.bit_rate / 1000, 1)
                                                                           if cc.bit_rate else None))
    else:
        facts.update(audio_codec=None, audio_codec_id=None, audio_sample_rate=None, audio_channels=None,
                     audio_sample_size=None, stereo=None, audio_data_rate=None)
    facts["encoder"] = md.get("encoder")
    return facts


def _md_int(md: Mapping[str, str], key: str) -> int | None:
    value = _md_float(md, key)
    return int(value) if value else None


def _md_float(md: Mapping[str, str], key: str) -> float | None:
    try:
        value = float(md[key])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


# -- the ladder (encoders + one hls muxer) -------------------------------------------------


class _Clock:
    """Keeps one stream's timestamps strictly increasing: a duplicate or a
    small step back moves only that frame, a big step back (the source's
    clock was reset) shifts everything after it."""

    def __init__(self, step: int) -> None:
        self.step = max(1, step)
        self.shift = 0
        self.last: int | None = None

    def fix(self, pts: int | None, time_base: Fraction, step: int | None = None) -> int:
        step = max(1, step or self.step)
        if pts is None:
            out = (self.last + step) if self.last is not None else 0
        else:
            out = pts + self.shift
            if self.last is not None and out <= self.last:
                if (self.last - out) * time_base > CLOCK_RESET_S:
                    self.shift += self.last + step - out
                out = self.last + step
        self.last = out
        return out


class _Ladder:
    """The encoders of every rendition and the one hls muxer."""

    def __init__(self, out_dir: Path, renditions: Sequence[Rendition], *, src_width: int, src_height: int,
                 sar: Fraction | None, fps: Fraction, video_time_base: Fraction, with_audio: bool,
                 segment_seconds: float, continue_playlists: bool) -> None:
        import av

        self.renditions = list(renditions)
        self.with_audio = with_audio
        self.sizes = [r.frame_size(src_width, src_height, sar) for r in renditions]
        self.fps = fps
        self.keyint = max(1, round(float(fps) * segment_seconds))
        flags = "independent_segments+program_date_time+temp_file"
        if continue_playlists:
            # append_list alone inserts the one #EXT-X-DISCONTINUITY before the new
            # session's first segment; discont_start would add a second one at the
            # top of the playlist.
            flags += "+append_list"
        var_map = " ".join(f"v:{i}" + (f",a:{i}" if with_audio else "") + f",name:{r.name}"
                           for i, r in enumerate(renditions))
        # A hair under the segment length, so a keyframe whose timestamp was
        # rounded down (ms clocks) still ends its segment.
        hls_time = max(0.1, segment_seconds - 0.5 / float(fps))
        for r in renditions:
            (out_dir / r.name).mkdir(parents=True, exist_ok=True)
        self.out = av.open(str(out_dir / "%v" / MEDIA_PLAYLIST), "w", format="hls", options={
            "hls_time": f"{hls_time:.6f}", "hls_list_size": "0", "hls_playlist_type": "event",
            "hls_segment_type": "mpegts", "hls_segment_filename": str(out_dir / "%v" / SEGMENT_TEMPLATE),
            "hls_flags": flags, "master_pl_name": MASTER_PLAYLIST, "var_stream_map": var_map,
        })
        self.video: list[Any] = []
        self.audio: list[Any] = []
        try:
            for r, (w, h) in zip(renditions, self.sizes):
                vs = self.out.add_stream("libx264", rate=fps)
                cc = vs.codec_context
                cc.width, cc.height, cc.pix_fmt = w, h, "yuv420p"
                cc.time_base = video_time_base
                cc.bit_rate = r.video_kbps * 1000
                cc.options = {"preset": X264_PRESET, "tune": "zerolatency",
                              "x264-params": f"keyint={self.keyint}:min-keyint={self.keyint}:scenecut=0"
                                             f":vbv-maxrate={r.video_kbps}:vbv-bufsize={2 * r.video_kbps}"}
                self.video.append(vs)
            if with_audio:
                for r in renditions:
                    aus = self.out.add_stream("aac", rate=AUDIO_RATE)
                    aus.codec_context.layout = "stereo"
                    aus.codec_context.bit_rate = r.audio_kbps * 1000
                    self.audio.append(aus)
        except BaseException:
            self.out.close()
            raise
        from av.video.reformatter import VideoReformatter

        self.scalers = [VideoReformatter() for _ in renditions]
        self.resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE,
                                           frame_size=AUDIO_FRAME) if with_audio else None
        self.video_frames = 0
        self.audio_frames = 0
        self.closed = False

    def encode_video(self, frame: Any) -> None:
        from av.video.frame import PictureType

        for stream, scaler, (w, h) in zip(self.video, self.scalers, self.sizes):
            scaled = scaler.reformat(frame, w, h, "yuv420p")  # the frame itself when nothing changes
            scaled.pts, scaled.time_base = frame.pts, frame.time_base
            scaled.pict_type = PictureType.NONE  # x264 places the keyframes
            self.out.mux(stream.encode(scaled))
        self.video_frames += 1

    def encode_audio(self, frame: Any) -> None:
        if self.resampler is None:
            return
        try:
            frames = self.resampler.resample(frame)
        except ValueError:  # the input's sample rate or layout changed: drain, start a new resampler
            import av

            frames = self.resampler.resample(None)
            self.resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE, frame_size=AUDIO_FRAME)
            frames += self.resampler.resample(frame)
        for resampled in frames:
            for stream in self.audio:
                self.out.mux(stream.encode(resampled))
            self.audio_frames += 1

    def close(self) -> None:
        """Flush every encoder and close the muxer (writes ENDLIST)."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.resampler is not None:
                for resampled in self.resampler.resample(None):
                    for stream in self.audio:
                        self.out.mux(stream.encode(resampled))
            for stream in self.video + self.audio:
                self.out.mux(stream.encode(None))
        finally:
            self.out.close()


# -- the session ---------------------------------------------------------------------------


class _Stop(Exception):
    """Raised inside the loop to end it with a reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class _Window:
    """Measurements over one statistics interval."""

    wall_start: float
    video_bytes: int = 0
    audio_bytes: int = 0
    video_frames: int = 0
    media_start: float | None = None
    media_end: float | None = None


class Session:
    """One run of the ingest child: open, encode until the end, close."""

    def __init__(self, args: argparse.Namespace, renditions: list[Rendition], events: _Events,
                 stop: StopFlag) -> None:
        self.args = args
        self.renditions = renditions
        self.events = events
        self.stop = stop
        self.out_dir = Path(args.out)
        self.segment_seconds = float(args.segment_seconds)
        self.pipe_fd = _pipe_fd(args.input)
        scheme = _scheme(args.input)
        self.live = self.pipe_fd is not None or scheme in _PUSH_SCHEMES
        self.paced = bool(args.realtime) and not self.live
        self.reader: _FdReader | None = None
        self.vstream: Any = None  # set by open(): the first video stream (never None after it)
        self.astream: Any = None
        self.fps = DEFAULT_FPS
        self.container: Any = None
        self.ladder: _Ladder | None = None
        self.watch: _PlaylistWatch | None = None
        self.facts: dict[str, Any] = {}
        self.held_audio: list[Any] = []
        self.segments: dict[str, int] = {r.name: 0 for r in renditions}
        self.ppid = os.getppid()
        # Timing: base (s) of the output timestamps; pacing anchor; latency.
        self.base_s: float | None = None
        self.first_packet_t: float | None = None
        self.last_video_t: float | None = None
        self.pace_anchor: float | None = None
        self.offset_min: float | None = None
        self.latency_ms: float | None = None
        self.lagging = False
        self.video_clock: _Clock | None = None
        self.audio_clock: _Clock | None = None
        self.media_end = 0.0
        self.decode_errors = 0
        self.frames_total = 0
        self.window = _Window(time.monotonic())
        self.next_stats = time.monotonic() + float(args.stats_interval)

    # -- opening

    def open(self) -> None:
        import av

        fmt = None if self.args.format == "auto" else self.args.format
        options: dict[str, str] = {}
        if (fmt or "") == "flv" or self.args.input.lower().endswith(".flv") or self.pipe_fd is not None:
            options["flv_full_metadata"] = "1"  # onMetaData into container.metadata (ignored elsewhere)
        if _is_hls(self.args.input, self.args.format):
            options["live_start_index"] = "-1"
        if self.pipe_fd is not None:
            self.reader = _FdReader(self.pipe_fd, self.stop, float(self.args.open_timeout))
            try:
                self.container = av.open(self.reader, "r", format=fmt, options=options, metadata_errors="replace")
            except (av.error.FFmpegError, OSError) as e:
                if self.stop.is_set():
                    raise _Stop("stopped", "stop requested before the input was open") from e
                if self.reader.timed_out:
                    raise _Stop("error", f"no input on {self.args.input} within {self.args.open_timeout:g} s") from e
                raise
            self.reader.timeout = float(self.args.read_timeout)
        else:
            timeout = None
            if _scheme(self.args.input) not in ("", "file"):
                timeout = (float(self.args.open_timeout), float(self.args.read_timeout))
            self.container = av.open(self.args.input, "r", format=fmt, options=options,
                                     metadata_errors="replace", timeout=timeout)  # type: ignore[arg-type]
        c = self.container
        self.vstream = _first(c.streams.video)
        self.astream = _first(c.streams.audio)
        if self.vstream is None:
            raise _Stop("error", f"input {self.args.input} has no video stream")
        self.fps = _rate(self.vstream, c.metadata or {}) or DEFAULT_FPS
        self.facts = _input_facts(c, self.vstream, self.astream, self.args.format)
        now = time.monotonic()
        self.window = _Window(now)
        self.next_stats = now + float(self.args.stats_interval)

    # -- the loop

    def run(self) -> tuple[str, str]:
        """Demux, decode and encode until the input ends; returns (reason, message)."""
        import av

        streams = [s for s in (self.vstream, self.astream) if s is not None]
        packets = self.container.demux(streams)
        while True:
            if self.stop.is_set():
                return "stopped", "stop requested"
            if self.events.broken:
                return "stopped", "stdout closed (the worker is gone)"
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.ExitError:
                return "read_timeout", f"no data for {self.args.read_timeout:g} s"
            except (av.error.TimeoutError, TimeoutError):
                return "read_timeout", f"no data for {self.args.read_timeout:g} s"
            except av.error.EOFError:
                break
            except av.error.FFmpegError as e:
                if e.errno in _DROP_ERRNOS:
                    return "eof", f"input dropped: {_reason(e)}"
                raise
            except OSError as e:
                if e.errno in _DROP_ERRNOS:
                    return "eof", f"input dropped: {_reason(e)}"
                raise
            self._packet(packet)
            self._tick()
        if self.stop.is_set():
            return "stopped", "stop requested"
        if self.reader is not None and self.reader.timed_out:
            return "read_timeout", f"no data for {self.args.read_timeout:g} s"
        return "eof", "end of input"

    def _packet(self, packet: Any) -> None:
        import av

        is_video = packet.stream is self.vstream
        now = time.monotonic()
        t: float | None = None
        if packet.size:
            ts = packet.dts if packet.dts is not None else packet.pts
            if ts is not None and packet.time_base:
                t = float(ts * packet.time_base)
            if is_video:
                self.window.video_bytes += packet.size
            else:
                self.window.audio_bytes += packet.size
        if t is not None and is_video:  # the video packets set the pace and measure the latency
            last, self.last_video_t = self.last_video_t, t
            if self.first_packet_t is None or (last is not None and not
                                               -CLOCK_RESET_S <= t - last <= CLOCK_JUMP_S):
                # First packet, or the source's clock jumped (a reset, a new
                # HLS discontinuity, a long gap): start pacing and the latency
                # baseline afresh from here.
                self.first_packet_t = t
                self.pace_anchor = now
                self.offset_min = None
            if self.paced and self.pace_anchor is not None and self.first_packet_t is not None:
                due = self.pace_anchor + (t - self.first_packet_t)
                if due > now:
                    if self.stop.wait(due - now):
                        return
                now = max(now, due)
            offset = now - t
            if self.offset_min is None or offset < self.offset_min:
                self.offset_min = offset
        try:
            frames = packet.decode()
        except av.error.InvalidDataError as e:
            self.decode_errors += 1
            if self.decode_errors > MAX_DECODE_ERRORS:
                raise _Stop("error", f"input is damaged: {self.decode_errors} packets could not be decoded "
                                     f"(last: {_reason(e)})") from e
            return
        for frame in frames:
            if is_video:
                self._video_frame(frame)
            else:
                self._audio_frame(frame)
        if is_video and t is not None and (self.live or self.paced) and self.offset_min is not None:
            self.latency_ms = max(0.0, (time.monotonic() - t - self.offset_min) * 1000)
            self._check_lag()
        if is_video and self.watch is not None:
            self._segments(self.watch.poll())

    def _video_frame(self, frame: Any) -> None:
        tb = frame.time_base or self.vstream.time_base
        if self.ladder is None:
            t0 = float(frame.pts * tb) if frame.pts is not None else 0.0
            self._build(frame, tb, t0)
        assert self.ladder is not None and self.video_clock is not None and self.base_s is not None
        pts = frame.pts - round(self.base_s / tb) if frame.pts is not None else None
        frame.pts = self.video_clock.fix(pts, tb)
        frame.time_base = tb
        if frame.pts < 0:
            return
        self.ladder.encode_video(frame)
        self.frames_total += 1
        self.window.video_frames += 1
        t = float(frame.pts * tb)
        self.media_end = max(self.media_end, t + 1 / float(self.fps))
        if self.window.media_start is None:
            self.window.media_start = t
        self.window.media_end = t + 1 / float(self.fps)
        if self.held_audio:
            held, self.held_audio = self.held_audio, []
            for af in held:
                self._audio_frame(af)

    def _audio_frame(self, frame: Any) -> None:
        if self.ladder is None:
            self.held_audio.append(frame)
            if len(self.held_audio) > MAX_HELD_AUDIO:
                del self.held_audio[0]
            return
        if not self.ladder.with_audio or self.base_s is None:
            return
        tb = frame.time_base or self.astream.time_base
        step = max(1, round(frame.samples / (frame.sample_rate or AUDIO_RATE) / tb))
        if self.audio_clock is None:
            self.audio_clock = _Clock(step)
        pts = frame.pts - round(self.base_s / tb) if frame.pts is not None else None
        if pts is not None and pts < 0:
            return  # before the first video frame
        frame.pts = self.audio_clock.fix(pts, tb, step)
        frame.time_base = tb
        self.ladder.encode_audio(frame)

    def _build(self, frame: Any, tb: Fraction, t0: float) -> None:
        self.base_s = t0
        step = max(1, round(1 / (float(self.fps) * tb)))
        self.video_clock = _Clock(step)
        sar = self.vstream.sample_aspect_ratio or self.vstream.codec_context.sample_aspect_ratio
        self.watch = _PlaylistWatch(self.out_dir, [r.name for r in self.renditions])
        continuing = bool(self.args.continue_playlists) and self.watch.existing()
        self.ladder = _Ladder(self.out_dir, self.renditions, src_width=frame.width, src_height=frame.height,
                              sar=Fraction(sar) if sar else None, fps=self.fps, video_time_base=tb,
                              with_audio=self.astream is not None, segment_seconds=self.segment_seconds,
                              continue_playlists=continuing)

    # -- reporting

    def _segments(self, found: list[tuple[str, PlaylistSegment]]) -> None:
        for name, seg in found:
            self.segments[name] += 1
            self.events.emit("segment", rendition=name, index=seg.index, path=f"{name}/{seg.uri}",
                             duration=round(seg.duration, 6), program_date_time=seg.program_date_time,
                             discontinuity=seg.discontinuity)

    def _check_lag(self) -> None:
        if self.latency_ms is None:
            return
        limit = 2000 * self.segment_seconds
        if not self.lagging and self.latency_ms > limit:
            self.lagging = True
            self.events.emit("lagging", latency_ms=round(self.latency_ms), limit_ms=round(limit))
        elif self.lagging and self.latency_ms < limit / 2:
            self.lagging = False

    def _tick(self) -> None:
        now = time.monotonic()
        if now < self.next_stats:
            return
        self.next_stats = now + float(self.args.stats_interval)
        self.statistics(now)
        if os.getppid() != self.ppid:
            self.stop.set()  # the worker died: stop writing (its successor owns the output now)

    def statistics(self, now: float) -> None:
        w = self.window
        wall = max(1e-6, now - w.wall_start)
        span = (w.media_end - w.media_start) if w.media_start is not None and w.media_end is not None else 0.0
        per = span if span > 0.05 else wall
        self.events.emit(
            "statistics", input=self.facts,
            video_kbps=round(w.video_bytes * 8 / per / 1000, 1), audio_kbps=round(w.audio_bytes * 8 / per / 1000, 1),
            fps=round(w.video_frames / per, 2), frames=self.frames_total, media_s=round(self.media_end, 3),
            speed=round(span / wall, 2), latency_ms=round(self.latency_ms) if self.latency_ms is not None else None,
            decode_errors=self.decode_errors)
        self.window = _Window(now)

    # -- closing

    def close(self) -> float:
        """Flush and close the ladder; report the last segments. Returns the
        media seconds written in this session."""
        if self.ladder is not None:
            try:
                self.ladder.close()
            finally:
                if self.watch is not None:
                    self._segments(self.watch.poll(force=True))
        if self.container is not None:
            try:
                self.container.close()
            except Exception:  # noqa: BLE001 - the input is done with either way
                pass
        if self.watch is not None and self.renditions:
            first = self.watch.new[self.renditions[0].name]
            if first:
                return sum(s.duration for s in first)
        return self.media_end if self.ladder is not None else 0.0


def _first(streams: Sequence[Any]) -> Any | None:
    for s in streams:
        if s.disposition & 1:  # AV_DISPOSITION_DEFAULT
            return s
    return streams[0] if streams else None


# -- main ----------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def __init__(self, events: _Events, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.events = events

    def error(self, message: str) -> NoReturn:
        self.events.emit("ended", reason="error", message=f"bad arguments: {message}", duration_s=0.0, segments={})
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_INPUT)


def _positive(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def build_parser(events: _Events) -> argparse.ArgumentParser:
    p = _Parser(events, prog=f"python -m {MODULE}",
                description="Turn one live input into an HLS ladder (the live worker's ingest child).")
    p.add_argument("--input", required=True, help="pipe:0 (stdin), a file path, or a URL PyAV can open")
    p.add_argument("--format", default="auto", choices=FORMATS, help="input container (default: probe)")
    p.add_argument("--out", required=True, help="output folder: master.m3u8 and one folder per rendition")
    p.add_argument("--renditions", required=True,
                   help='JSON list: [{"name": "360p", "width": 640, "height": 360, "video_kbps": 800, '
                        '"audio_kbps": 96}, ...]')
    p.add_argument("--segment-seconds", type=_positive, default=DEFAULT_SEGMENT_SECONDS)
    p.add_argument("--continue", dest="continue_playlists", action="store_true",
                   help="continue existing playlists (numbering goes on, a discontinuity is inserted)")
    p.add_argument("--stats-interval", type=_positive, default=DEFAULT_STATS_INTERVAL)
    p.add_argument("--open-timeout", type=_positive, default=DEFAULT_OPEN_TIMEOUT)
    p.add_argument("--read-timeout", type=_positive, default=DEFAULT_READ_TIMEOUT)
    p.add_argument("--realtime", action="store_true", help="pace a file (or VOD playlist) input to the wall clock")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    stop = StopFlag()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()
        signal.signal(signum, signal.SIG_DFL)  # a second one kills at once

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    events = _Events()
    args = build_parser(events).parse_args(argv)
    try:
        renditions = parse_renditions(args.renditions)
    except ValueError as e:
        events.emit("ended", reason="error", message=f"bad --renditions: {e}", duration_s=0.0, segments={})
        return EXIT_INPUT

    import av

    session = Session(args, renditions, events, stop)
    try:
        session.open()
    except _Stop as e:
        session.close()
        events.emit("ended", reason=e.reason, message=e.message, duration_s=0.0, segments={})
        return EXIT_OK if e.reason == "stopped" else EXIT_INPUT
    except (av.error.FFmpegError, OSError, ValueError) as e:
        session.close()
        events.emit("ended", reason="error", message=f"cannot open input {args.input}: {_reason(e)}",
                    duration_s=0.0, segments={})
        return EXIT_INPUT
    events.emit("connected", input=session.facts, renditions=[r.to_dict() for r in renditions])
    code = EXIT_OK
    try:
        reason, message = session.run()
    except _Stop as e:
        reason, message, code = e.reason, e.message, EXIT_ERROR
    except (av.error.FFmpegError, OSError, ValueError, RuntimeError) as e:
        reason, message, code = "error", f"{type(e).__name__}: {_reason(e)}", EXIT_ERROR
    try:
        duration = session.close()
    except (av.error.FFmpegError, OSError, ValueError, RuntimeError) as e:
        duration = session.media_end
        if code == EXIT_OK:
            reason, message, code = "error", f"closing the output failed: {_reason(e)}", EXIT_ERROR
    if session.ladder is None and code == EXIT_OK and reason != "stopped":
        reason, message, code = "error", "no video frame was decoded", EXIT_ERROR
    session.statistics(time.monotonic())
    events.emit("ended", reason=reason, message=message, duration_s=round(duration, 3),
                segments=dict(session.segments))
    return code


if __name__ == "__main__":
    sys.exit(main())
