"""A synthetic live publisher: a test pattern (FFmpeg's testsrc2) and a
440 Hz tone, encoded H.264 + AAC and pushed in real time, so a deployment
can be checked end to end without a camera (`mediajobs live publish-test`)
and the tests have a publisher of a known size, rate and length.

    from mediajobs.client.live.publisher import publish
    publish("rtmp://127.0.0.1:1935/live/<stream key>", seconds=4)

Everything comes from the FFmpeg libraries in the PyAV wheel: the pattern
and the tone from filter graphs (no numpy), libx264 (ultrafast,
zerolatency, one keyframe per second) and AAC. The URL decides the
container: FLV for rtmp:// and for a path ending in .flv, MPEG-TS
otherwise (tcp://, udp://, http://, a .ts path).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable

import av
import av.filter

AUDIO_RATE = 48_000
AUDIO_FRAME = 1024


@dataclass
class Published:
    """What a publish sent: frames and the media duration in seconds."""

    video_frames: int
    audio_frames: int
    seconds: float


def container_format(url: str) -> str:
    if url.startswith(("rtmp://", "rtmps://")) or url.endswith(".flv"):
        return "flv"
    return "mpegts"


def _video_graph(width: int, height: int, fps: int, seconds: float) -> tuple[av.filter.Graph, av.filter.context.FilterContext]:
    g = av.filter.Graph()
    src = g.add("testsrc2", f"size={width}x{height}:rate={fps}:duration={seconds}")
    fmt = g.add("format", "pix_fmts=yuv420p")
    sink = g.add("buffersink")
    src.link_to(fmt)
    fmt.link_to(sink)
    g.configure()
    return g, sink


def _audio_graph(seconds: float) -> tuple[av.filter.Graph, av.filter.context.FilterContext]:
    g = av.filter.Graph()
    src = g.add("sine", f"frequency=440:sample_rate={AUDIO_RATE}:duration={seconds}")
    fmt = g.add("aformat", "sample_fmts=fltp:channel_layouts=stereo")
    sink = g.add("abuffersink")
    src.link_to(fmt)
    fmt.link_to(sink)
    g.configure()
    g.set_audio_frame_size(AUDIO_FRAME)
    return g, sink


def _pull(sink: av.filter.context.FilterContext) -> Any:
    """The next frame of a graph (a VideoFrame or an AudioFrame), or None at its end."""
    try:
        return sink.pull()
    except (av.error.EOFError, av.error.BlockingIOError):
        return None


def _open(url: str, fmt: str, width: int, height: int, fps: int, video_kbps: int, audio_kbps: int,
          open_timeout: float) -> tuple[Any, Any, Any]:
    """The output with its two streams, connected: PyAV opens the network
    connection only when the header is written (start_encoding), so that is
    what the caller retries while the receiver is not listening yet."""
    out = av.open(url, "w", format=fmt, timeout=(open_timeout, 10.0))
    try:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.bit_rate = video_kbps * 1000
        vs.options = {"preset": "ultrafast", "tune": "zerolatency",
                      "x264-params": f"keyint={fps}:min-keyint={fps}:scenecut=0"}
        aus = out.add_stream("aac", rate=AUDIO_RATE)
        aus.layout = "stereo"
        aus.bit_rate = audio_kbps * 1000
        out.start_encoding()
    except BaseException:
        out.close()
        raise
    return out, vs, aus


def publish(url: str, seconds: float = 4.0, width: int = 320, height: int = 180, fps: int = 15,
            video_kbps: int = 400, audio_kbps: int = 64, realtime: bool = True, open_timeout: float = 10.0,
            stop: Callable[[], bool] | None = None) -> Published:
    """Push `seconds` of test pattern + tone to `url`, paced to the wall
    clock unless `realtime` is False (for files). Retries the connection
    for up to `open_timeout` seconds (the listener may not be up yet).
    `stop()` returning True ends the push early. Raises av.error.FFmpegError
    (OSError) when the receiver refuses or drops the stream."""
    fmt = container_format(url)
    deadline = time.monotonic() + open_timeout
    while True:
        try:
            out, vs, aus = _open(url, fmt, width, height, fps, video_kbps, audio_kbps, open_timeout)
            break
        except (av.error.ConnectionRefusedError, av.error.TimeoutError):  # not listening yet
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)
    vg, vsink = _video_graph(width, height, fps, seconds)
    ag, asink = _audio_graph(seconds)
    vframes = aframes = 0
    start = time.monotonic()
    next_audio = _pull(asink)
    try:
        while True:
            if stop is not None and stop():
                break
            vf = _pull(vsink)
            if vf is None:
                break
            t = vframes / fps
            # Audio up to this video frame's time, then the frame, each at its time.
            while next_audio is not None and next_audio.pts is not None and \
                    next_audio.pts * next_audio.time_base <= t:
                next_audio.pts = aframes * AUDIO_FRAME
                next_audio.time_base = Fraction(1, AUDIO_RATE)
                for p in aus.encode(next_audio):
                    out.mux(p)
                aframes += 1
                next_audio = _pull(asink)
            if realtime:
                wait = start + t - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            vf.pts = vframes
            vf.time_base = Fraction(1, fps)
            vf.pict_type = av.video.frame.PictureType.NONE  # let x264 place the keyframes
            for p in vs.encode(vf):
                out.mux(p)
            vframes += 1
        for p in vs.encode(None):
            out.mux(p)
        for p in aus.encode(None):
            out.mux(p)
    finally:
        out.close()
        del vg, ag
    return Published(vframes, aframes, vframes / fps)
