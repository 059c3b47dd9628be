"""Live jobs end to end on 127.0.0.1: a real server, the reference live
worker (RTMP front door + ingest child) on a free port, and the synthetic
PyAV publisher in a child process (PyAV's RTMP client holds the GIL while it
connects, so it cannot share a process with the front door). Media is tiny:
320x180 at 15 fps in, 160x90 + 128x72 out, 1 s segments. Waiting is done on
WatchJobs (the live state rides on the session job), never by sleeping."""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import av
import grpc
import pytest
from google.protobuf import duration_pb2, json_format, timestamp_pb2

from mediajobs.client.live.worker import LiveWorker
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc
from mediajobs.v1 import live_job_service_pb2 as lsvc
from mediajobs.v1 import live_job_service_pb2_grpc
from mediajobs.v1 import live_resources_pb2 as lres
from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import media_service_pb2 as msvc
from mediajobs.v1 import media_service_pb2_grpc

from conftest import start_app

S = lres.LiveJob.State
TEMPLATE = mres.JobTemplate(
    outputs=[mres.OutputSpec(name="r90", container="hls", video_codec="h264", width=160, height=90,
                             video_bit_rate_bps=200_000, audio_codec="aac", audio_bit_rate_bps=64_000),
             mres.OutputSpec(name="r72", container="hls", video_codec="h264", width=128, height=72,
                             video_bit_rate_bps=150_000, audio_codec="aac", audio_bit_rate_bps=64_000)],
    segment_duration=duration_pb2.Duration(seconds=1))


class Env:
    def __init__(self, ch: grpc.aio.Channel, root: Path, worker: LiveWorker) -> None:
        self.live = live_job_service_pb2_grpc.LiveJobServiceStub(ch)
        self.jobs = job_service_pb2_grpc.JobServiceStub(ch)
        self.media = media_service_pb2_grpc.MediaServiceStub(ch)
        self.root = root
        self.worker = worker
        self.rev = 0

    def url(self, key: str) -> str:
        return f"rtmp://127.0.0.1:{self.worker.port}/live/{key}"

    async def create(self, destination: str, **kw: Any) -> lres.LiveJob:
        return await self.live.CreateLiveJob(lsvc.CreateLiveJobRequest(live_job=lres.LiveJob(
            bucket="e2e", destination=destination, job_template_id="tiny-live",
            input=kw.pop("input", lres.LiveInput(server_type=lres.LiveInput.RTMP)), **kw)))

    async def until(self, live_id: str, *states: int, timeout: float = 30) -> str:
        """Follow WatchJobs, from just after the last change an earlier wait
        saw, until the live job's session reports one of `states` (a
        live_state); returns it."""
        names = {S.Name(s) for s in states}
        async for resp in self.jobs.WatchJobs(svc.WatchJobsRequest(start_revision=self.rev + 1,
                                                                   types=["LIVE_ENCODE"]), timeout=timeout):
            for ev in resp.events:
                d = json_format.MessageToDict(ev.job.progress_details)
                if d.get("live_job_id") == live_id and d.get("live_state") in names:
                    self.rev = ev.revision  # the next wait starts after this change
                    return str(d["live_state"])
        raise AssertionError(f"live job {live_id} never reached {names}")

    async def until_child(self, live_id: str, child_status: str, timeout: float = 30) -> None:
        """Like `until`, for what happened (a timing's child_status the
        worker reported, which rides on the session job too)."""
        async for resp in self.jobs.WatchJobs(svc.WatchJobsRequest(start_revision=self.rev + 1,
                                                                   types=["LIVE_ENCODE"]), timeout=timeout):
            for ev in resp.events:
                d = json_format.MessageToDict(ev.job.progress_details)
                if d.get("live_job_id") == live_id and d.get("child_status") == child_status:
                    self.rev = ev.revision
                    return
        raise AssertionError(f"live job {live_id} never reported {child_status}")

    async def segments_written(self, live_id: str, n: int, timeout: float = 30) -> None:
        """Until the first output's counter reaches `n`: read again at every
        WatchJobs message (changes and the stream's periodic progress
        bookmarks), so nothing here sleeps."""
        async for _ in self.jobs.WatchJobs(svc.WatchJobsRequest(start_revision=1, types=["LIVE_ENCODE"],
                                                                progress_interval=duration_pb2.Duration(seconds=1)),
                                           timeout=timeout):
            outs = (await self.live.ListLiveOutputs(lsvc.ListLiveOutputsRequest(live_job_id=live_id))).outputs
            if outs and outs[0].counter >= n:
                return
        raise AssertionError(f"live job {live_id} never wrote {n} segments")

    async def timings(self, live_id: str) -> list[str]:
        page = await self.live.ListLiveTimings(lsvc.ListLiveTimingsRequest(live_job_id=live_id, page_size=100))
        return [t.child_status for t in page.timings]


async def publish(url: str, seconds: float, width: int = 320, height: int = 180) -> tuple[int, str]:
    """The synthetic publisher in a child process: (exit code, stderr tail)."""
    code = ("import sys\nfrom mediajobs.client.live.publisher import publish\n"
            f"r = publish({url!r}, seconds={seconds}, width={width}, height={height}, fps=15, open_timeout=5)\n"
            "print(r.video_frames)")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), seconds + 30)
    except asyncio.TimeoutError:
        proc.kill()
        raise
    return proc.returncode or 0, err.decode(errors="replace")[-300:]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    root = tmp_path / "storage"
    app = await start_app(str(tmp_path / "db.sqlite"), storage_root=root)
    worker = LiveWorker(f"127.0.0.1:{app.port}", root, "127.0.0.1:0", slots=2, lease_duration=10,
                        report_interval=0.5, allow_private_inputs=True)  # the HLS test serves on 127.0.0.1
    task = asyncio.create_task(worker.run(handle_signals=False))
    await asyncio.wait_for(worker.ready.wait(), 10)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            e = Env(ch, root, worker)
            await e.media.CreateJobTemplate(msvc.CreateJobTemplateRequest(job_template=TEMPLATE,
                                                                          job_template_id="tiny-live"))
            yield e
    finally:
        worker.stop(0)
        await asyncio.wait_for(task, 30)
        await app.stop(None)


def playlist(path: Path) -> tuple[list[float], str]:
    text = path.read_text()
    durations = [float(line.split(":", 1)[1].rstrip(",")) for line in text.splitlines()
                 if line.startswith("#EXTINF:")]
    return durations, text


async def test_push_live_stop_gives_a_closed_ladder_and_real_statistics(env: Env) -> None:
    lj = await env.create("happy")
    await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=True))
    assert await env.until(lj.id, S.AWAITING_INPUT) == "AWAITING_INPUT"
    # A wrong key is refused before any media is accepted.
    code, _err = await publish(env.url("not-the-key"), 1)
    assert code != 0
    assert "PUBLISH_REJECTED" in await env.timings(lj.id)
    code, err = await publish(env.url(lj.stream_key), 3)
    assert code == 0, err
    # The publisher is gone: RECONNECTING; then stop.
    assert await env.until(lj.id, S.RECONNECTING) == "RECONNECTING"
    await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=False))
    assert await env.until(lj.id, S.STOPPED) == "STOPPED"
    got = await env.live.GetLiveJob(lsvc.GetLiveJobRequest(id=lj.id))
    assert got.state == S.STOPPED
    st = got.statistics
    assert (st.width, st.height, round(st.frame_rate), st.video_codec_id, st.audio_codec_id, st.stereo,
            st.audio_sample_rate) == (320, 180, 15, 7, 10, True, 48000)
    assert st.encoder.startswith("Lavf") and st.protocol == "rtmp"
    out = env.root / "live" / "e2e" / "happy"
    master = (out / "master.m3u8").read_text()
    assert "r90/index.m3u8" in master and "r72/index.m3u8" in master and "RESOLUTION=160x90" in master
    for name, size in (("r90", (160, 90)), ("r72", (128, 72))):
        durations, text = playlist(out / name / "index.m3u8")
        assert text.rstrip().endswith("#EXT-X-ENDLIST") and "#EXT-X-PROGRAM-DATE-TIME" in text
        assert 2.4 <= sum(durations) <= 3.6, (name, durations)
        first = next(line for line in text.splitlines() if line.endswith(".ts"))
        with av.open(str(out / name / first)) as seg:
            v = seg.streams.video[0]
            assert (v.codec_context.name, v.codec_context.width, v.codec_context.height) == ("h264", *size)
            assert seg.streams.audio[0].codec_context.name == "aac"
    outs = (await env.live.ListLiveOutputs(lsvc.ListLiveOutputsRequest(live_job_id=lj.id))).outputs
    assert all(o.counter >= 3 and o.status == lres.LiveOutput.STOPPED for o in outs), outs
    job = await env.jobs.GetJob(svc.GetJobRequest(id=got.current_job_id))
    result = json_format.MessageToDict(job.result)
    assert result["manifests"]["r90"] == "live/e2e/happy/r90/index.m3u8" and 2.4 <= result["duration_s"] <= 3.6
    children = await env.timings(lj.id)
    for step in ("WORKER_READY", "PUBLISH_REJECTED", "CONNECTED", "DISCONNECTED", "STOP_REQUESTED", "STOPPED"):
        assert step in children, (step, children)
    # Live-to-VOD: a clip of the middle of what was pushed, as a VOD playlist, an MP4 and an entry.
    from mediajobs.client.live.ladder import read_playlist
    from mediajobs.client.live.clips import _pdt_us

    segs = read_playlist(out / "r90" / "index.m3u8")
    assert segs is not None and len(segs.segments) >= 3
    t0 = _pdt_us(segs.segments[1])
    assert t0 is not None
    start, end = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    start.FromMicroseconds(t0 + 100_000)
    end.FromMicroseconds(t0 + 1_500_000)
    made = await env.live.CreateLiveClip(lsvc.CreateLiveClipRequest(live_job_id=lj.id, clip=lres.LiveClip(
        start_time=start, end_time=end, rendition="r90", create_entry=True, entry_name="the middle")))
    assert made.state == lres.LiveClip.PENDING and made.job_id
    async for resp in env.jobs.WatchJobs(svc.WatchJobsRequest(start_revision=1, job_ids=[made.job_id]), timeout=30):
        if any(e.job.state in (4, 5, 6) for e in resp.events):  # SUCCEEDED, FAILED, ABORTED
            break
    clip = await env.live.GetLiveClip(lsvc.GetLiveClipRequest(id=made.id))
    assert clip.state == lres.LiveClip.SUCCEEDED, clip
    assert clip.segments == 2 and 1.5 <= clip.duration_s <= 2.5 and clip.entry_id
    vod = (env.root / clip.playlist).read_text()
    assert "#EXT-X-PLAYLIST-TYPE:VOD" in vod and vod.rstrip().endswith("#EXT-X-ENDLIST")
    with av.open(str(env.root / clip.mp4)) as mp4:
        assert {s.type for s in mp4.streams} == {"video", "audio"}
        assert mp4.streams.video[0].codec_context.width == 160
        frames = sum(1 for _ in mp4.decode(video=0))
        assert 25 <= frames <= 35  # 2 s at 15 fps
    entry = await env.media.GetEntry(msvc.GetEntryRequest(id=clip.entry_id))
    assert entry.name == "the middle" and entry.source_uri == clip.mp4
    assert "CLIP_CREATED" in await env.timings(lj.id)
    listed = await env.live.ListLiveClips(lsvc.ListLiveClipsRequest(live_job_id=lj.id))
    assert [c.id for c in listed.clips] == [made.id]


async def test_reconnect_inside_the_window_continues_and_outside_it_stops(env: Env) -> None:
    lj = await env.create("again", reconnect_window=duration_pb2.Duration(seconds=1))
    await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=True))
    await env.until(lj.id, S.AWAITING_INPUT)
    code, err = await publish(env.url(lj.stream_key), 2)
    assert code == 0, err
    # Nobody comes back within 1 s: the session stops by itself.
    assert await env.until(lj.id, S.STOPPED) == "STOPPED"
    assert "RECONNECT_WINDOW_EXPIRED" in await env.timings(lj.id)
    # A new session with a long window: two publishes make one playlist.
    other = await env.create("twice", reconnect_window=duration_pb2.Duration(seconds=60))
    await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=other.stream_key, online=True))
    await env.until(other.id, S.AWAITING_INPUT)
    assert (await publish(env.url(other.stream_key), 2))[0] == 0
    await env.until(other.id, S.RECONNECTING)
    assert (await publish(env.url(other.stream_key), 2))[0] == 0
    await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=other.stream_key, online=False))
    await env.until(other.id, S.STOPPED)
    durations, text = playlist(env.root / "live" / "e2e" / "twice" / "r90" / "index.m3u8")
    assert text.count("#EXT-X-DISCONTINUITY") == 1 and text.count("#EXT-X-ENDLIST") == 1
    assert 3.2 <= sum(durations) <= 4.8
    assert (await env.timings(other.id)).count("RECONNECTED") == 1


async def test_a_finish_time_stops_the_session_and_drops_the_publisher(env: Env) -> None:
    lj = await env.create("window")
    finish = timestamp_pb2.Timestamp()
    finish.GetCurrentTime()
    finish.FromNanoseconds(finish.ToNanoseconds() + 6_000_000_000)
    await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=True,
                                                               finish_time=finish))
    await env.until(lj.id, S.AWAITING_INPUT)
    pub = asyncio.create_task(publish(env.url(lj.stream_key), 20))
    assert await env.until(lj.id, S.STOPPED, timeout=40) == "STOPPED"
    code, _ = await pub
    assert code != 0  # dropped before its 20 s
    assert "FINISH_TIME_REACHED" in await env.timings(lj.id)
    durations, text = playlist(env.root / "live" / "e2e" / "window" / "r90" / "index.m3u8")
    assert text.rstrip().endswith("#EXT-X-ENDLIST") and sum(durations) < 8


async def test_hls_input_is_pulled_in_real_time_and_stops_at_its_end(env: Env) -> None:
    from mediajobs.client.live import ladder
    from mediajobs.client.live.publisher import publish as publish_file

    src = env.root / "incoming"
    src.mkdir(parents=True)
    await asyncio.to_thread(publish_file, str(src / "in.flv"), 2, 320, 180, 15, realtime=False)
    made = await asyncio.create_subprocess_exec(*ladder.command(
        str(src / "in.flv"), src / "hls", [ladder.Rendition("src", 320, 180, 300, 64)], fmt="flv",
        segment_seconds=1), stdout=asyncio.subprocess.DEVNULL)
    assert await made.wait() == 0
    lj = await env.live.CreateLiveJob(lsvc.CreateLiveJobRequest(live_job=lres.LiveJob(
        bucket="e2e", destination="pulled", job_template_id="tiny-live",
        input=lres.LiveInput(server_type=lres.LiveInput.HLS, file_path="incoming/hls/src/index.m3u8"))))
    await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=True))
    assert await env.until(lj.id, S.STOPPED) == "STOPPED"
    children = await env.timings(lj.id)
    assert "CONNECTED" in children and "INPUT_ENDED" in children, children
    durations, text = playlist(env.root / "live" / "e2e" / "pulled" / "r90" / "index.m3u8")
    assert text.rstrip().endswith("#EXT-X-ENDLIST") and 1.5 <= sum(durations) <= 2.5
    st = (await env.live.GetLiveJob(lsvc.GetLiveJobRequest(id=lj.id))).statistics
    assert (st.width, st.height, st.protocol) == (320, 180, "hls")


async def test_a_worker_killed_mid_stream_is_replaced_and_the_playlists_continue(tmp_path: Path) -> None:
    import os
    import signal as sig
    import socket

    root = tmp_path / "storage"
    app = await start_app(str(tmp_path / "db.sqlite"), storage_root=root, lease_sweep_interval_s=0.2)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port1 = s.getsockname()[1]
            first = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mediajobs.client", "--server", f"127.0.0.1:{app.port}", "worker", "--live",
                "--storage-root", str(root), "--rtmp-listen", f"127.0.0.1:{port1}", "--lease", "3",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            env = Env(ch, root, LiveWorker(f"127.0.0.1:{app.port}", root, "127.0.0.1:0"))
            await env.media.CreateJobTemplate(msvc.CreateJobTemplateRequest(job_template=TEMPLATE,
                                                                            job_template_id="tiny-live"))
            lj = await env.create("failover", reconnect_window=duration_pb2.Duration(seconds=120))
            await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=True))
            await env.until(lj.id, S.AWAITING_INPUT)
            pub = asyncio.create_task(publish(f"rtmp://127.0.0.1:{port1}/live/{lj.stream_key}", 30))
            await env.until(lj.id, S.LIVE)
            # Let a segment or two be written, then kill -9 the worker.
            first_playlist = root / "live" / "e2e" / "failover" / "r90" / "index.m3u8"
            await env.segments_written(lj.id, 2)
            os.kill(first.pid, sig.SIGKILL)
            await first.wait()
            code, _ = await pub
            assert code != 0  # its publisher was cut off
            assert await env.until(lj.id, S.RECOVERING) == "RECOVERING"
            task = asyncio.create_task(env.worker.run(handle_signals=False))
            try:
                await env.until(lj.id, S.AWAITING_INPUT)
                timings = await env.timings(lj.id)
                assert timings.count("WORKER_READY") == 2 and "WORKER_LOST" in timings
                assert (await publish(env.url(lj.stream_key), 2))[0] == 0
                await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=False))
                assert await env.until(lj.id, S.STOPPED) == "STOPPED"
            finally:
                env.worker.stop(0)
                await asyncio.wait_for(task, 30)
            durations, text = playlist(first_playlist)
            assert text.count("#EXT-X-DISCONTINUITY") == 1 and text.count("#EXT-X-ENDLIST") == 1
            assert sum(durations) >= 3.5  # what the first worker wrote, then the second
    finally:
        await app.stop(None)


async def test_standard_input_fails_over_to_the_backup_and_back(env: Env) -> None:
    lj = await env.create("redundant", input=lres.LiveInput(server_type=lres.LiveInput.RTMP,
                                                            input_class=lres.LiveInput.STANDARD))
    assert lj.backup_stream_key and lj.backup_stream_key != lj.stream_key
    assert lj.backup_ingest_url.endswith(lj.backup_stream_key)
    await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=True))
    await env.until(lj.id, S.AWAITING_INPUT)
    primary = asyncio.create_task(publish(env.url(lj.stream_key), 5))
    await env.until(lj.id, S.LIVE)
    backup = asyncio.create_task(publish(env.url(lj.backup_stream_key), 14))
    await env.until_child(lj.id, "BACKUP_CONNECTED")
    assert (await primary)[0] == 0
    await env.until_child(lj.id, "FAILOVER_TO_BACKUP")  # the primary dropped: the backup is encoded
    again = asyncio.create_task(publish(env.url(lj.stream_key), 3))
    await env.until_child(lj.id, "RETURNED_TO_PRIMARY")
    assert (await again)[0] == 0
    await env.until_child(lj.id, "FAILOVER_TO_BACKUP")
    assert (await env.live.GetLiveJob(lsvc.GetLiveJobRequest(id=lj.id))).state == S.LIVE  # never RECONNECTING
    assert (await backup)[0] == 0  # the backup pushes its 14 s to the end: the ladder follows it
    await env.until(lj.id, S.RECONNECTING)
    await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=False))
    assert await env.until(lj.id, S.STOPPED) == "STOPPED"
    children = await env.timings(lj.id)
    switches = [c for c in children if c in ("FAILOVER_TO_BACKUP", "RETURNED_TO_PRIMARY", "DISCONNECTED")]
    assert switches == ["FAILOVER_TO_BACKUP", "RETURNED_TO_PRIMARY", "FAILOVER_TO_BACKUP", "DISCONNECTED"], children
    durations, text = playlist(env.root / "live" / "e2e" / "redundant" / "r90" / "index.m3u8")
    # One playlist across the switches: a discontinuity where the source changed, one end.
    assert text.count("#EXT-X-ENDLIST") == 1 and text.count("#EXT-X-DISCONTINUITY") >= 2
    assert sum(durations) >= 10  # 5 s primary, 3 s primary again, and the backup's last seconds


async def test_hls_over_http_is_pulled_through_the_guarded_fetcher(env: Env, tmp_path: Path) -> None:
    import functools
    import http.server
    import threading

    from mediajobs.client.live import ladder
    from mediajobs.client.live.publisher import publish as publish_file

    site = tmp_path / "site"
    site.mkdir()
    await asyncio.to_thread(publish_file, str(site / "in.flv"), 3, 320, 180, 15, realtime=False)
    made = await asyncio.create_subprocess_exec(*ladder.command(
        str(site / "in.flv"), site / "hls", [ladder.Rendition("v", 320, 180, 300, 64)], fmt="flv",
        segment_seconds=1), stdout=asyncio.subprocess.DEVNULL)
    assert await made.wait() == 0
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/hls/master.m3u8"
        lj = await env.live.CreateLiveJob(lsvc.CreateLiveJobRequest(live_job=lres.LiveJob(
            bucket="e2e", destination="over-http", job_template_id="tiny-live",
            input=lres.LiveInput(server_type=lres.LiveInput.HLS, file_path=url))))
        await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=True))
        assert await env.until(lj.id, S.STOPPED) == "STOPPED"
    finally:
        httpd.shutdown()
    children = await env.timings(lj.id)
    assert "CONNECTED" in children and "INPUT_ENDED" in children, children
    durations, text = playlist(env.root / "live" / "e2e" / "over-http" / "r90" / "index.m3u8")
    assert text.rstrip().endswith("#EXT-X-ENDLIST") and 2.5 <= sum(durations) <= 3.5


async def test_maximum_duration_and_abort_close_the_playlists(env: Env) -> None:
    # The cap counts from the session's start, before the publisher (a child
    # process) connects: 8 s leaves room for segments even on a loaded machine.
    lj = await env.create("capped", max_duration=duration_pb2.Duration(seconds=8))
    await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=True))
    await env.until(lj.id, S.AWAITING_INPUT)
    pub = asyncio.create_task(publish(env.url(lj.stream_key), 20))
    assert await env.until(lj.id, S.STOPPED, timeout=40) == "STOPPED"
    assert (await pub)[0] != 0  # dropped
    assert "MAX_DURATION_REACHED" in await env.timings(lj.id)
    _durations, text = playlist(env.root / "live" / "e2e" / "capped" / "r90" / "index.m3u8")
    assert text.rstrip().endswith("#EXT-X-ENDLIST")
    # AbortJob on a live session: the worker closes the playlists and the job ends ABORTED.
    other = await env.create("aborted")
    started = await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=other.stream_key, online=True))
    await env.until(other.id, S.AWAITING_INPUT)
    pub = asyncio.create_task(publish(env.url(other.stream_key), 20))
    await env.until(other.id, S.LIVE)
    await env.segments_written(other.id, 1)
    await env.jobs.AbortJob(svc.AbortJobRequest(id=started.live_job.current_job_id, reason="operator stop"))
    assert await env.until(other.id, S.STOPPED, timeout=40) == "STOPPED"
    await pub
    job = await env.jobs.GetJob(svc.GetJobRequest(id=started.live_job.current_job_id))
    assert job.state == 6 and job.abort_reason == "operator stop"  # ABORTED
    children = await env.timings(other.id)
    assert "ABORT_REQUESTED" in children and children[-1] == "ABORTED"
    _durations, text = playlist(env.root / "live" / "e2e" / "aborted" / "r90" / "index.m3u8")
    assert text.rstrip().endswith("#EXT-X-ENDLIST")


def srt_tools() -> str:
    """srt-live-transmit (Debian's srt-tools), installed here when missing
    and possible (apt, as root); the SRT test is skipped, saying why, when
    it cannot be."""
    import shutil
    import subprocess

    found = shutil.which("srt-live-transmit")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "srt-tools"],
                       capture_output=True, timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        found = shutil.which("srt-live-transmit")
    if found is None:
        pytest.skip("srt-live-transmit (Debian's srt-tools) is not installed and cannot be installed here")
    return found


def free_udp_ports(n: int) -> int:
    """A base port with n free UDP (and TCP) ports after it."""
    import random
    import socket

    for _ in range(50):
        base = random.randint(20000, 60000 - n)
        try:
            for port in range(base, base + n):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    with socket.socket(socket.AF_INET, kind) as sk:
                        sk.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports")


async def srt_publish(port: int, passphrase: str, seconds: float) -> int:
    """The synthetic publisher over SRT: MPEG-TS over UDP into an
    srt-live-transmit caller with `passphrase`."""
    relay = free_udp_ports(1)
    caller = await asyncio.create_subprocess_exec(
        "srt-live-transmit", "-q", f"udp://127.0.0.1:{relay}",
        f"srt://127.0.0.1:{port}?mode=caller&passphrase={passphrase}&latency=120",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        return (await publish(f"udp://127.0.0.1:{relay}?pkt_size=1316", seconds))[0]
    finally:
        caller.terminate()
        await caller.wait()


async def test_srt_ingest_with_a_passphrase(tmp_path: Path) -> None:
    srt_tools()
    base = free_udp_ports(4)
    root = tmp_path / "storage"
    app = await start_app(str(tmp_path / "db.sqlite"), storage_root=root,
                          live_srt_ingest=f"127.0.0.1:{base}-{base + 3}")
    worker = LiveWorker(f"127.0.0.1:{app.port}", root, "127.0.0.1:0", report_interval=0.5)
    task = asyncio.create_task(worker.run(handle_signals=False))
    try:
        await asyncio.wait_for(worker.ready.wait(), 10)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            env = Env(ch, root, worker)
            await env.media.CreateJobTemplate(msvc.CreateJobTemplateRequest(job_template=TEMPLATE,
                                                                            job_template_id="tiny-live"))
            lj = await env.create("srt", input=lres.LiveInput(server_type=lres.LiveInput.SRT))
            assert lj.srt_port == base and len(lj.srt_passphrase) == 32
            assert lj.rtmp_server == f"srt://127.0.0.1:{base}"
            assert lj.ingest_url == f"srt://127.0.0.1:{base}?passphrase={lj.srt_passphrase}&latency=120"
            listed = await env.live.ListLiveJobs(lsvc.ListLiveJobsRequest())
            assert listed.live_jobs[0].srt_passphrase == ""
            await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=True))
            await env.until(lj.id, S.AWAITING_INPUT)
            assert await srt_publish(base, "not-the-passphrase", 1) == 0  # UDP: the sender never knows
            await env.until_child(lj.id, "PUBLISH_REJECTED")
            assert await srt_publish(base, lj.srt_passphrase, 3) == 0
            await env.until(lj.id, S.RECONNECTING)  # the publisher went quiet
            await env.live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=False))
            assert await env.until(lj.id, S.STOPPED) == "STOPPED"
            got = await env.live.GetLiveJob(lsvc.GetLiveJobRequest(id=lj.id))
            assert (got.statistics.width, got.statistics.height, got.statistics.protocol) == (320, 180, "srt")
            durations, text = playlist(root / "live" / "e2e" / "srt" / "r90" / "index.m3u8")
            assert text.rstrip().endswith("#EXT-X-ENDLIST") and 2.0 <= sum(durations) <= 3.6
    finally:
        worker.stop(0)
        await asyncio.wait_for(task, 30)
        await app.stop(None)
