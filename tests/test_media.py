"""The reference worker's media functions (client/media.py) on real files:
a synthetic clip is encoded once per module, then probed and transcoded.
No server, no mocks, no sleeps."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import av
import pytest

from mediajobs.client.media import (
    MAX_RAW_DATA,
    MediaError,
    OutsideStorageRoot,
    TranscodeCancelled,
    UnsupportedOutput,
    frame_rate_fraction,
    is_fast_start,
    output_size,
    probe,
    resolve_in_root,
    synthesize_clip,
    transcode,
)
from mediajobs.v1 import media_resources_pb2 as mres

SECONDS = 2.5
FPS = 25
W, H = 320, 240


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("src") / "clip.mp4"
    synthesize_clip(path, SECONDS, W, H, fps=FPS)
    return path


@pytest.fixture(scope="module")
def silent_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("src") / "silent.mp4"
    synthesize_clip(path, 1.0, 160, 90, fps=FPS, audio=False)
    return path


def decoded_frames(path: Path, kind: str) -> int:
    with av.open(str(path)) as c:
        streams = c.streams.video if kind == "video" else c.streams.audio
        return sum(1 for _ in c.decode(streams[0])) if streams else 0


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def spec(name: str, **kw: object) -> mres.OutputSpec:
    return mres.OutputSpec(name=name, container="mp4", **kw)  # type: ignore[arg-type]


# -- probe ----------------------------------------------------------------------------


def test_probe_synthetic_clip(clip: Path) -> None:
    mi = probe(clip)
    assert mi.file_size_bytes == clip.stat().st_size
    assert "mp4" in mi.container_format.split(",")
    assert mi.container_id == "isom"
    assert abs(mi.container_duration_ms - SECONDS * 1000) <= 100
    assert abs(mi.video_duration_ms - SECONDS * 1000) <= 100
    assert abs(mi.audio_duration_ms - SECONDS * 1000) <= 100
    assert mi.container_bit_rate_kbps > 0 and mi.video_bit_rate_kbps > 0
    assert 100 <= mi.audio_bit_rate_kbps <= 160
    assert (mi.video_format, mi.video_codec_id) == ("h264", "avc1")
    assert (mi.audio_format, mi.audio_codec_id) == ("aac", "mp4a")
    assert (mi.video_width, mi.video_height) == (W, H)
    assert mi.video_frame_rate == pytest.approx(FPS)
    assert mi.video_dar == pytest.approx(W / H, abs=1e-3)
    assert mi.video_rotation == 0
    assert mi.video_bit_rate_mode == mres.BIT_RATE_MODE_VBR
    assert mi.scan_type == mres.SCAN_TYPE_PROGRESSIVE
    assert (mi.audio_channels, mi.audio_sampling_rate, mi.audio_resolution) == (2, 48000, 32)
    assert mi.writing_lib.startswith("Lavf")
    # x264's default keyint (250) is longer than the clip: one GOP of every frame.
    assert mi.max_gop == decoded_frames(clip, "video") == math.ceil(SECONDS * FPS)
    assert mi.is_fast_start is False  # written without +faststart
    assert not mi.multi_stream and mi.multi_stream_info == ""
    assert json.loads(mi.content_streams) == [{"index": 0, "kind": "video", "codec": "h264"},
                                              {"index": 1, "kind": "audio", "codec": "aac"}]
    raw = json.loads(mi.raw_data)
    assert len(mi.raw_data.encode()) <= MAX_RAW_DATA
    assert [s["kind"] for s in raw["streams"]] == ["video", "audio"]
    assert not mi.id and not mi.entry_id


def test_probe_video_only(silent_clip: Path) -> None:
    mi = probe(silent_clip)
    assert (mi.video_width, mi.video_height) == (160, 90)
    assert mi.audio_format == "" and mi.audio_channels == 0
    assert mi.video_dar == pytest.approx(16 / 9, abs=1e-3)


def test_probe_multi_stream(tmp_path: Path) -> None:
    path = tmp_path / "two-tracks.mp4"
    with av.open(str(path), "w") as out:
        streams = [out.add_stream("aac", rate=48000) for _ in range(2)]
        for i in range(20):
            for st in streams:
                frame = av.AudioFrame(format="fltp", layout="stereo", samples=1024)
                for plane in frame.planes:
                    plane.update(bytes(plane.buffer_size))
                frame.sample_rate, frame.pts = 48000, i * 1024
                out.mux(st.encode(frame))
        for st in streams:
            out.mux(st.encode(None))
    mi = probe(path)
    assert mi.multi_stream and mi.video_format == "" and mi.audio_format == "aac"
    assert [(s["index"], s["kind"], s["codec"], s["channels"]) for s in json.loads(mi.multi_stream_info)] == [
        (0, "audio", "aac", 2), (1, "audio", "aac", 2)]
    assert len(json.loads(mi.content_streams)) == 2


@pytest.mark.parametrize("content", [b"", os.urandom(64 * 1024), b"not media at all\n" * 100])
def test_probe_refuses_garbage(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    with pytest.raises(MediaError, match=r"source '.*bad\.mp4' is not a readable media file: \w"):
        probe(bad)


def test_probe_refuses_truncated_file(tmp_path: Path, clip: Path) -> None:
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])  # the index (moov) is at the end
    with pytest.raises(MediaError, match="cut.mp4"):
        probe(cut)


def test_probe_missing_file_and_label(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match=r"source 'incoming/nope\.mov' is not a readable media file: no such file"):
        probe(tmp_path / "nope.mov", label="incoming/nope.mov")
    with pytest.raises(MediaError, match="not a regular file"):
        probe(tmp_path)


def test_is_fast_start_reads_box_headers(tmp_path: Path) -> None:
    def box(kind: bytes, payload: bytes = b"") -> bytes:
        return (8 + len(payload)).to_bytes(4, "big") + kind + payload

    f = tmp_path / "f.mp4"
    f.write_bytes(box(b"ftyp", b"isom\0\0\0\0") + box(b"free") + box(b"moov", b"x" * 20) + box(b"mdat", b"y" * 9))
    assert is_fast_start(f)
    f.write_bytes(box(b"ftyp", b"isom\0\0\0\0") + box(b"mdat", b"y" * 9) + box(b"moov", b"x" * 20))
    assert not is_fast_start(f)
    # A 64-bit box size (size field 1) before moov.
    big = (1).to_bytes(4, "big") + b"wide" + (24).to_bytes(8, "big") + b"z" * 8
    f.write_bytes(big + box(b"moov"))
    assert is_fast_start(f)
    f.write_bytes(b"\0\0\0\x03junk")  # malformed
    assert not is_fast_start(f)


# -- transcode ------------------------------------------------------------------------


def test_transcode_two_outputs_from_one_decode(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    outputs = [
        (spec("small", video_codec="h264", width=160, audio_codec="aac", preset="ultrafast"), out / "v" / "small.mp4"),
        (spec("audio", audio_codec="aac", audio_channels=1, audio_sample_rate=44100, audio_bit_rate_bps=64000),
         out / "a" / "audio.mp4"),
    ]
    seen: list[float] = []
    done = transcode(clip, outputs, seen.append, lambda: False)

    assert [d.path for d in done] == [p for _, p in outputs]
    assert listing(out) == ["a", "a/audio.mp4", "v", "v/small.mp4"]  # no .part left
    src_frames = decoded_frames(clip, "video")
    assert done[0].video_frames == src_frames == decoded_frames(done[0].path, "video")
    assert decoded_frames(done[0].path, "audio") > 0
    assert done[1].video_frames == 0 and decoded_frames(done[1].path, "audio") > 0

    small = probe(done[0].path)
    assert (small.video_width, small.video_height) == (160, 120)  # height follows the aspect ratio
    assert small.video_frame_rate == pytest.approx(FPS)
    assert small.audio_format == "aac" and small.audio_channels == 2
    assert abs(small.video_duration_ms - SECONDS * 1000) <= 100
    assert small.is_fast_start and small.file_size_bytes == done[0].size_bytes
    audio = probe(done[1].path)
    assert audio.video_format == "" and audio.audio_format == "aac"
    assert (audio.audio_channels, audio.audio_sampling_rate) == (1, 44100)
    assert abs(audio.audio_duration_ms - SECONDS * 1000) <= 100

    assert seen and seen == sorted(seen)
    assert all(0 <= p < 100 for p in seen)


def test_transcode_rate_gop_scale_and_bit_rate(clip: Path, tmp_path: Path) -> None:
    target = tmp_path / "r.mp4"
    s = spec("r", video_codec="h264", scale=0.5, frame_rate=10, gop_size=5, video_bit_rate_bps=200_000,
             preset="ultrafast")
    [done] = transcode(clip, [(s, target)], lambda p: None, lambda: False)
    mi = probe(target)
    assert (mi.video_width, mi.video_height) == (160, 120)
    assert mi.video_frame_rate == pytest.approx(10)
    assert done.video_frames == decoded_frames(target, "video") == math.ceil(SECONDS * 10)
    assert 0 < mi.max_gop <= 5
    assert mi.audio_format == ""  # no audio codec asked for


def test_transcode_source_without_audio(silent_clip: Path, tmp_path: Path) -> None:
    [done] = transcode(silent_clip, [(spec("v", video_codec="h264", audio_codec="aac"), tmp_path / "v.mp4")],
                       lambda p: None, lambda: False)
    mi = probe(done.path)
    assert mi.video_format == "h264" and mi.audio_format == ""
    with pytest.raises(UnsupportedOutput, match="has no audio"):
        transcode(silent_clip, [(spec("a", audio_codec="aac"), tmp_path / "a.mp4")], lambda p: None, lambda: False)
    assert listing(tmp_path) == ["v.mp4"]


def test_rotation_is_probed_and_kept(tmp_path: Path) -> None:
    src = tmp_path / "phone.mp4"
    synthesize_clip(src, 0.5, 64, 48, rotation=90)
    assert probe(src).video_rotation == 90
    [done] = transcode(src, [(spec("r", video_codec="h264", height=24, audio_codec="aac"), tmp_path / "r.mp4")],
                       lambda p: None, lambda: False)
    mi = probe(done.path)
    assert (mi.video_rotation, mi.video_width, mi.video_height) == (90, 32, 24)


def test_output_may_not_overwrite_the_source(clip: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedOutput, match="is the source or another output"):
        transcode(clip, [(spec("x", audio_codec="aac"), clip)], lambda p: None, lambda: False)
    twice = [(spec("x", audio_codec="aac"), tmp_path / "x.mp4"), (spec("y", audio_codec="aac"), tmp_path / "x.mp4")]
    with pytest.raises(UnsupportedOutput, match="is the source or another output"):
        transcode(clip, twice, lambda p: None, lambda: False)


def test_cancel_leaves_nothing(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    calls: list[float] = []
    outputs = [(spec("a", video_codec="h264", audio_codec="aac"), out / "a.mp4"),
               (spec("b", audio_codec="aac"), out / "b.mp4")]
    out.mkdir()
    (out / "keep").mkdir()
    outputs[1] = (outputs[1][0], out / "new" / "deeper" / "b.mp4")
    with pytest.raises(TranscodeCancelled):
        transcode(clip, outputs, calls.append, lambda: bool(calls))
    assert len(calls) == 1
    assert listing(out) == ["keep"]  # no outputs, no .part files, no folders made for them


def test_failure_midway_removes_partial_outputs(clip: Path, tmp_path: Path) -> None:
    (tmp_path / "blocker").write_bytes(b"a file where a folder is needed")
    outputs = [(spec("a", video_codec="h264"), tmp_path / "ok" / "a.mp4"),
               (spec("b", audio_codec="aac"), tmp_path / "blocker" / "b.mp4")]
    with pytest.raises(OSError):
        transcode(clip, outputs, lambda p: None, lambda: False)
    assert listing(tmp_path) == ["blocker"]


def test_transcode_refuses_bad_sources_and_specs(clip: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.mov"
    bad.write_bytes(os.urandom(4096))
    good = spec("x", video_codec="h264", audio_codec="aac")
    for src in (bad, tmp_path / "missing.mov"):
        with pytest.raises(MediaError, match=src.name):
            transcode(src, [(good, tmp_path / "x.mp4")], lambda p: None, lambda: False)
    for s, message in ((mres.OutputSpec(name="w", container="webm", video_codec="h264"), "container 'webm'"),
                       (spec("w", video_codec="vp9"), "video codec 'vp9'"),
                       (spec("w", audio_codec="opus"), "audio codec 'opus'"),
                       (spec("w"), "neither a video nor an audio codec"),
                       (spec("w", video_codec="h264", preset="warp"), "preset"),
                       (spec("w", video_codec="h264", audio_channels=6), "audio_channels"),
                       (spec("w", audio_codec="aac", audio_sample_rate=44000), "AAC cannot use")):
        with pytest.raises(UnsupportedOutput, match=message):
            transcode(clip, [(s, tmp_path / "w.mp4")], lambda p: None, lambda: False)
    with pytest.raises(UnsupportedOutput, match="no outputs"):
        transcode(clip, [], lambda p: None, lambda: False)
    assert listing(tmp_path) == ["bad.mov"]


def test_output_size() -> None:
    from fractions import Fraction

    assert output_size(spec("a", width=640, height=360), 1920, 1080, None) == (640, 360)
    assert output_size(spec("a", height=360), 1920, 1080, None) == (640, 360)
    assert output_size(spec("a", width=641), 1920, 1080, None) == (642, 360)  # even
    assert output_size(spec("a", scale=0.5), 1280, 720, None) == (640, 360)
    assert output_size(spec("a"), 720, 576, Fraction(16, 15)) == (768, 576)  # square pixels
    assert frame_rate_fraction(29.97) == Fraction(30000, 1001)
    assert frame_rate_fraction(12.5) == Fraction(25, 2)


# -- paths ----------------------------------------------------------------------------


def test_resolve_in_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    (root / "in" / "clip.mov").write_bytes(b"x")
    outside = tmp_path / "secret.mov"
    outside.write_bytes(b"s")
    real_root = Path(os.path.realpath(root))

    assert resolve_in_root(root, "in/clip.mov") == real_root / "in" / "clip.mov"
    assert resolve_in_root(root, "out/new/file.mp4") == real_root / "out" / "new" / "file.mp4"  # need not exist
    assert resolve_in_root(root, f"file://{real_root}/in/clip.mov") == real_root / "in" / "clip.mov"

    (root / "in" / "link.mov").symlink_to(outside)
    (root / "escape").symlink_to(tmp_path)
    (root / "inner.mov").symlink_to(root / "in" / "clip.mov")
    assert resolve_in_root(root, "inner.mov") == real_root / "in" / "clip.mov"
    for bad in ("../secret.mov", "in/../../secret.mov", str(outside), "/etc/passwd", f"file://{outside}",
                "file:///etc/passwd", "file://host/etc/passwd", f"file://{real_root}/../secret.mov",
                "in/link.mov", "escape/secret.mov", "", ".", "a\x00b"):
        with pytest.raises(OutsideStorageRoot):
            resolve_in_root(root, bad)
    assert issubclass(OutsideStorageRoot, ValueError)


def test_module_main_writes_the_readme_test_clip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m mediajobs.client.media FILE` (the README's first command)."""
    from mediajobs.client.media import main

    target = tmp_path / "storage" / "incoming" / "clip.mov"
    assert main([str(target), "--seconds", "1", "--size", "96x64", "--fps", "10"]) == 0
    assert capsys.readouterr().out == f"wrote {target} (1 s, 96x64, 10 fps)\n"
    info = probe(target)
    assert (info.video_width, info.video_height, info.audio_format) == (96, 64, "aac")
    assert abs(info.container_duration_ms - 1000) <= 100
    with pytest.raises(SystemExit) as ei:
        main([str(tmp_path / "x.mov"), "--size", "big"])
    assert ei.value.code == 2 and not (tmp_path / "x.mov").exists()
