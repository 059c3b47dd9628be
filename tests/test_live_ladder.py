"""The live ingest child (mediajobs.client.live.ladder): a real subprocess
per test, fed tiny inputs from the synthetic publisher (320x180, 15 fps,
2-4 s) and writing a 160x90 + 128x72 ladder."""
from __future__ import annotations

import asyncio
import io
import json
import re
import signal
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest

from mediajobs.client.live import ladder
from mediajobs.client.live.ladder import Rendition, command, parse_event, parse_renditions, read_playlist
from mediajobs.client.live.publisher import publish

pytestmark = pytest.mark.timeout(60)

LADDER = [Rendition("r160", 160, 90, 200, 64), Rendition("r128", 128, 72, 100, 48)]
FPS = 15


# -- media ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("live-media")
    files = {"flv3": d / "in3.flv", "ts2": d / "in2.ts", "flv4": d / "in4.flv"}
    publish(str(files["flv3"]), seconds=3, realtime=False)
    publish(str(files["ts2"]), seconds=2, realtime=False)
    publish(str(files["flv4"]), seconds=4, realtime=False)
    # Video only: the FLV's video stream copied into MPEG-TS.
    files["video_only"] = d / "video_only.ts"
    with av.open(str(files["flv3"])) as src, av.open(str(files["video_only"]), "w", format="mpegts") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = out
            dst.mux(packet)
    files["garbage"] = d / "garbage.flv"
    files["garbage"].write_bytes(bytes((i * 7919 + 13) % 251 for i in range(50_000)))
    return files


# -- running the child --------------------------------------------------------------------


class Run:
    def __init__(self, rc: int, events: list[dict[str, Any]], stderr: str) -> None:
        self.rc = rc
        self.events = events
        self.stderr = stderr

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]

    @property
    def ended(self) -> dict[str, Any]:
        assert self.events and self.events[-1]["event"] == "ended", self.events[-3:]
        return self.events[-1]


def _events(stdout: bytes) -> list[dict[str, Any]]:
    events = [parse_event(line) for line in stdout.splitlines()]
    assert all(e is not None for e in events), stdout[-2000:]
    return [e for e in events if e is not None]


async def run_child(cmd: list[str], stdin: bytes | None = None, timeout: float = 30) -> Run:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    assert proc.returncode is not None
    return Run(proc.returncode, _events(out), err.decode(errors="replace"))


def extinfs(playlist: str) -> list[float]:
    return [float(m) for m in re.findall(r"^#EXTINF:([0-9.]+),", playlist, re.M)]


def check_ladder(out: Path, seconds: float, renditions: list[Rendition] = LADDER, audio: bool = True) -> None:
    """master.m3u8 lists every rendition; each playlist is complete and
    its segments are H.264 (+ AAC) at the rendition's size."""
    master = (out / "master.m3u8").read_text()
    for r in renditions:
        assert re.search(rf"#EXT-X-STREAM-INF:BANDWIDTH=\d+,.*RESOLUTION={r.width}x{r.height}.*\n{r.name}/index\.m3u8",
                         master), master
        text = (out / r.name / "index.m3u8").read_text()
        assert "#EXT-X-PROGRAM-DATE-TIME:" in text
        assert "#EXT-X-PLAYLIST-TYPE:EVENT" in text
        assert text.rstrip().endswith("#EXT-X-ENDLIST") and text.count("#EXT-X-ENDLIST") == 1
        assert sum(extinfs(text)) == pytest.approx(seconds, abs=0.5), text
        segs = re.findall(r"^(seg_\d{5}\.ts)$", text, re.M)
        assert segs and all((out / r.name / s).is_file() for s in segs)
        assert not list((out / r.name).glob("*.tmp"))
        with av.open(str(out / r.name / segs[0])) as c:
            v = c.streams.video[0]
            assert (v.codec_context.name, v.codec_context.width, v.codec_context.height) == ("h264", r.width, r.height)
            assert [a.codec_context.name for a in c.streams.audio] == (["aac"] if audio else [])
            if audio:
                assert c.streams.audio[0].codec_context.sample_rate == 48000
    if not audio:
        assert "mp4a" not in master


def check_events(run: Run, seconds: float, renditions: list[Rendition] = LADDER, audio: bool = True) -> None:
    assert run.rc == 0, (run.events[-3:], run.stderr[-2000:])
    connected = run.of("connected")
    assert len(connected) == 1 and run.events[0]["event"] == "connected"
    facts = connected[0]["input"]
    assert (facts["width"], facts["height"], facts["frame_rate"], facts["video_codec"]) == (320, 180, FPS, "h264")
    if audio:
        assert (facts["audio_codec"], facts["audio_sample_rate"], facts["audio_channels"], facts["stereo"]) == \
            ("aac", 48000, 2, True)
        assert facts["audio_sample_size"] == 16
    else:
        assert facts["audio_codec"] is None
    for r in renditions:
        segs = [e for e in run.of("segment") if e["rendition"] == r.name]
        assert segs, run.events
        assert [e["path"] for e in segs] == [f"{r.name}/seg_{e['index']:05d}.ts" for e in segs]
        assert sum(e["duration"] for e in segs) == pytest.approx(seconds, abs=0.5)
    stats = run.of("statistics")
    assert stats and stats[-1]["frames"] == round(seconds * FPS)
    assert stats[-1]["input"] == facts
    ended = run.ended
    assert ended["reason"] == "eof", ended
    assert ended["duration_s"] == pytest.approx(seconds, abs=0.5)
    assert ended["segments"] == {r.name: len([e for e in run.of("segment") if e["rendition"] == r.name])
                                 for r in renditions}


# -- 1, 2: file and stdin ----------------------------------------------------------------


async def test_flv_file_to_two_renditions(media: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "hls"
    run = await run_child(command(str(media["flv3"]), out, LADDER, stats_interval=0.05))
    check_events(run, 3.0)
    check_ladder(out, 3.0)
    # 3 s at 2 s segments: one 2 s segment and a 1 s tail per rendition.
    assert [e["duration"] for e in run.of("segment") if e["rendition"] == "r160"] == [2.0, 1.0]
    # Measured over media time: the publisher's 15 fps.
    assert any(s["fps"] == pytest.approx(FPS, rel=0.1) for s in run.of("statistics"))
    assert all(s["latency_ms"] is None for s in run.of("statistics"))  # a file read unpaced: no latency


async def test_stdin_flv(media: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "hls"
    run = await run_child(command("pipe:0", out, LADDER, fmt="flv"), stdin=media["flv3"].read_bytes())
    check_events(run, 3.0)
    check_ladder(out, 3.0)
    assert run.events[0]["input"]["format"] == "flv"
    assert run.events[0]["input"]["video_codec_id"] == 7 and run.events[0]["input"]["audio_codec_id"] == 10
    # A live input: the latency is measured.
    assert all(isinstance(s["latency_ms"], int) for s in run.of("statistics"))


async def test_stdin_read_timeout(media: dict[str, Path], tmp_path: Path) -> None:
    """A publisher that stalls (stdin open, no more bytes) ends the session
    after --read-timeout, cleanly."""
    out = tmp_path / "hls"
    cmd = command("pipe:0", out, LADDER[:1], fmt="auto", read_timeout=0.5)
    proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(media["ts2"].read_bytes())
    await proc.stdin.drain()  # and keep stdin open
    try:
        out_bytes = await asyncio.wait_for(proc.stdout.read(), 20)
        assert await proc.wait() == 0
    finally:
        proc.stdin.close()
    events = _events(out_bytes)
    assert events[-1]["event"] == "ended" and events[-1]["reason"] == "read_timeout", events[-1]
    assert events[-1]["duration_s"] == pytest.approx(2.0, abs=0.5)
    text = (out / "r160" / "index.m3u8").read_text()
    assert text.rstrip().endswith("#EXT-X-ENDLIST")


# -- 3: --continue -----------------------------------------------------------------------


async def test_continue_appends_with_one_discontinuity(media: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "hls"
    first = await run_child(command(str(media["flv3"]), out, LADDER, continue_playlists=True))
    assert first.rc == 0 and first.ended["reason"] == "eof"
    assert "#EXT-X-DISCONTINUITY" not in (out / "r160" / "index.m3u8").read_text()  # nothing to continue yet
    # A new session (the publisher reconnects, here as MPEG-TS through stdin).
    second = await run_child(command("pipe:0", out, LADDER, continue_playlists=True), stdin=media["ts2"].read_bytes())
    check_events(second, 2.0)
    check_ladder(out, 5.0)
    for r in LADDER:
        text = (out / r.name / "index.m3u8").read_text()
        assert text.count("#EXT-X-DISCONTINUITY") == 1
        assert re.findall(r"^seg_(\d{5})\.ts$", text, re.M) == ["00000", "00001", "00002"]
        # The discontinuity sits right before the new session's first segment.
        before, after = text.split("#EXT-X-DISCONTINUITY")
        assert sum(extinfs(before)) == pytest.approx(3.0, abs=0.1)
        assert sum(extinfs(after)) == pytest.approx(2.0, abs=0.1)
        assert after.index("seg_00002.ts") < after.index("#EXT-X-ENDLIST")
        pl = read_playlist(out / r.name / "index.m3u8")
        assert pl is not None and pl.ended and pl.discontinuities == 1
        assert [s.discontinuity for s in pl.segments] == [False, False, True]
    segs = [e for e in second.of("segment") if e["rendition"] == "r160"]
    assert [(e["index"], e["path"], e["discontinuity"]) for e in segs] == [(2, "r160/seg_00002.ts", True)]
    assert second.ended["segments"] == {"r160": 1, "r128": 1}


# -- 4: SIGTERM ----------------------------------------------------------------------------


async def test_sigterm_stops_cleanly(media: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "hls"
    cmd = command(str(media["flv4"]), out, LADDER[:1], realtime=True, stats_interval=0.2)
    proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    events: list[dict[str, Any]] = []
    try:
        # Paced to the wall clock: wait (on the child's own reports) until
        # 1.5 s of the 4 s are encoded, then ask it to stop.
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), 15)
            assert line, events
            event = parse_event(line)
            assert event is not None
            events.append(event)
            if event["event"] == "statistics" and event["media_s"] >= 1.5:
                break
        assert event["latency_ms"] is not None and event["latency_ms"] < 1000  # paced: it keeps up
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stdout.read(), 15)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    events += _events(rest)
    ended = events[-1]
    assert ended["event"] == "ended" and ended["reason"] == "stopped", ended
    assert 1.4 <= ended["duration_s"] < 3.0
    text = (out / "r160" / "index.m3u8").read_text()
    assert text.rstrip().endswith("#EXT-X-ENDLIST")
    assert sum(extinfs(text)) == pytest.approx(ended["duration_s"], abs=0.01)
    assert ended["segments"] == {"r160": len(extinfs(text))}


# -- 5: bad inputs, video only -------------------------------------------------------------


async def test_missing_file_is_exit_2(tmp_path: Path) -> None:
    run = await run_child(command(str(tmp_path / "nope.flv"), tmp_path / "hls", LADDER))
    assert run.rc == 2
    assert [e["event"] for e in run.events] == ["ended"]
    assert run.ended["reason"] == "error" and "No such file" in run.ended["message"]
    assert not (tmp_path / "hls" / "master.m3u8").exists()


async def test_garbage_is_exit_2(media: dict[str, Path], tmp_path: Path) -> None:
    as_file, as_pipe = await asyncio.gather(
        run_child(command(str(media["garbage"]), tmp_path / "a", LADDER)),
        run_child(command("pipe:0", tmp_path / "b", LADDER, fmt="flv"), stdin=media["garbage"].read_bytes()))
    for run in (as_file, as_pipe):
        assert run.rc == 2, run.events
        assert run.ended["reason"] == "error" and run.ended["segments"] == {}
        assert not run.of("connected")


async def test_bad_renditions_is_exit_2(media: dict[str, Path], tmp_path: Path) -> None:
    cmd = command(str(media["flv3"]), tmp_path / "hls", LADDER)
    cmd[cmd.index("--renditions") + 1] = '[{"name": "../up", "height": 90}]'
    run = await run_child(cmd)
    assert run.rc == 2 and run.ended["reason"] == "error" and "rendition name" in run.ended["message"]


async def test_video_only_input(media: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "hls"
    run = await run_child(command(str(media["video_only"]), out, LADDER, fmt="mpegts"))
    check_events(run, 3.0, audio=False)
    check_ladder(out, 3.0, audio=False)


# -- 6: units --------------------------------------------------------------------------------


def test_parse_event() -> None:
    assert parse_event(b'{"event": "segment", "index": 3}\n') == {"event": "segment", "index": 3}
    assert parse_event('  {"event":"ended","reason":"eof"}  ') == {"event": "ended", "reason": "eof"}
    for line in (b"", "   ", "hello", b"\xff\xfe{", "{not json", '{"no_event": 1}', '{"event": 5}', "[1, 2]",
                 '"event"'):
        assert parse_event(line) is None, line


def test_rendition_from_dict() -> None:
    r = Rendition.from_dict({"name": "360p", "width": 640, "height": 360, "video_kbps": 800, "audio_kbps": 96})
    assert r == Rendition("360p", 640, 360, 800, 96)
    assert Rendition.from_dict(r.to_dict()) == r
    h = Rendition.from_dict({"name": "240p", "height": 240, "video_kbps": 400})
    assert (h.width, h.height, h.audio_kbps) == (None, 240, 96)
    assert h.frame_size(1280, 720) == (426, 240)  # 16:9, even
    assert h.frame_size(720, 576, Fraction(64, 45)) == (426, 240)  # anamorphic PAL 16:9
    assert h.frame_size(640, 480) == (320, 240)
    assert Rendition.from_dict({"name": "w", "width": 320, "height": 0}).frame_size(1920, 1080) == (320, 180)
    assert Rendition.from_dict({"name": "src"}).frame_size(320, 180) == (320, 180)
    assert Rendition.from_dict(h.to_dict()) == h
    bads: tuple[Any, ...] = (
        {"height": 90}, {"name": "a b", "height": 90}, {"name": "../x", "height": 90}, {"name": "x%v", "height": 90},
        {"name": "x", "height": 91}, {"name": "x", "height": 8}, {"name": "x", "height": "90"},
        {"name": "x", "height": 90, "video_kbps": 0}, {"name": "x", "height": 90, "audio_kbps": True},
        {"name": "x", "height": 90, "bitrate": 1}, [])
    for bad in bads:
        with pytest.raises(ValueError):
            Rendition.from_dict(bad)
    assert parse_renditions('[{"name": "a", "height": 90}, {"name": "b", "height": 72}]')[1].name == "b"
    for bad_list in ("[]", "{}", '[{"name": "a", "height": 90}, {"name": "a", "height": 72}]', "nope"):
        with pytest.raises(ValueError):
            parse_renditions(bad_list)


def test_command_round_trips_through_the_parser(tmp_path: Path) -> None:
    cmd = command("pipe:0", tmp_path / "out", LADDER, fmt="flv", segment_seconds=4, continue_playlists=True,
                  stats_interval=1.5, realtime=True, python="/usr/bin/python3", open_timeout=3, read_timeout=7)
    assert cmd[:3] == ["/usr/bin/python3", "-m", "mediajobs.client.live.ladder"]
    args = ladder.build_parser(ladder._Events(io.StringIO())).parse_args(cmd[3:])
    assert (args.input, args.format, args.out) == ("pipe:0", "flv", str(tmp_path / "out"))
    assert parse_renditions(args.renditions) == LADDER
    assert (args.segment_seconds, args.stats_interval, args.open_timeout, args.read_timeout) == (4, 1.5, 3, 7)
    assert args.continue_playlists and args.realtime
    plain = command("in.flv", tmp_path, LADDER)
    assert plain[0] == sys.executable
    assert "--continue" not in plain and "--realtime" not in plain and "--read-timeout" not in plain
    args = ladder.build_parser(ladder._Events(io.StringIO())).parse_args(plain[3:])
    assert (args.format, args.segment_seconds, args.stats_interval) == ("auto", 2.0, 5.0)
    with pytest.raises(ValueError):
        command("in.flv", tmp_path, LADDER, fmt="mp4")
    with pytest.raises(ValueError):
        command("in.flv", tmp_path, [])


def test_read_playlist(tmp_path: Path) -> None:
    p = tmp_path / "index.m3u8"
    assert read_playlist(p) is None
    p.write_text("#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:4\n#EXTINF:2.000000,\n#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:00:00.000+0000\n"
                 "seg_00004.ts\n#EXT-X-DISCONTINUITY\n#EXTINF:1.5,\nseg_00005.ts\n")
    pl = read_playlist(p)
    assert pl is not None and not pl.ended and pl.discontinuities == 1
    assert [(s.uri, s.duration, s.index, s.discontinuity) for s in pl.segments] == \
        [("seg_00004.ts", 2.0, 4, False), ("seg_00005.ts", 1.5, 5, True)]
    assert pl.segments[0].program_date_time == "2026-01-01T00:00:00.000+0000"


def test_clock_keeps_timestamps_increasing() -> None:
    tb = Fraction(1, 1000)
    c = ladder._Clock(67)
    assert [c.fix(p, tb) for p in (0, 67, 133, 133, 200)] == [0, 67, 133, 200, 267]  # a duplicate moves one frame
    c = ladder._Clock(67)
    assert [c.fix(p, tb) for p in (5000, 5067, 0, 67)] == [5000, 5067, 5134, 5201]  # a reset shifts the rest
    assert c.fix(None, tb) == 5268


def test_lagging_is_reported_once_per_episode(tmp_path: Path) -> None:
    buf = io.StringIO()
    events = ladder._Events(buf)
    args = ladder.build_parser(events).parse_args(command("pipe:0", tmp_path, LADDER, segment_seconds=2)[3:])
    session = ladder.Session(args, LADDER, events, ladder.StopFlag())
    for latency in (100, 4500, 5000, 1500, 900, 4100):
        session.latency_ms = latency
        session._check_lag()
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [(e["event"], e["latency_ms"]) for e in lines] == [("lagging", 4500), ("lagging", 4100)]
