"""End to end: a real server, the reference PyAV worker (`build_media_worker`,
what `mediajobs worker --media` runs) and media made by the test itself.

entry -> EXTRACT_MEDIA -> TRANSCODE x2 -> READY, watched through WatchJobs;
a corrupt source ends in ERROR; an abort mid-transcode stops the encoder and
leaves no partial output; plain TRANSCODE jobs (CreateJob with a template or
outputs, no entry) write their outputs under the storage root."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator, Callable

import av
import grpc
from google.protobuf import json_format, struct_pb2
import pytest

from mediajobs.client.media import synthesize_clip
from mediajobs.client.media_worker import build_media_worker
from mediajobs.server.app import App
from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import job_service_pb2_grpc
from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import media_service_pb2 as msvc
from mediajobs.v1 import media_service_pb2_grpc
from mediajobs.v1 import resources_pb2 as res

from conftest import start_app

Entry = mres.Entry
Job = res.Job
TERMINAL = (Job.SUCCEEDED, Job.FAILED, Job.ABORTED)

TWO_OUTPUTS = mres.JobTemplate(outputs=[
    mres.OutputSpec(name="small", container="mp4", video_codec="h264", width=160, height=120,
                    video_bit_rate_bps=200_000, audio_codec="aac", audio_bit_rate_bps=64_000),
    mres.OutputSpec(name="audio", container="mp4", audio_codec="aac", audio_bit_rate_bps=64_000),
])
# Slow on purpose, so an abort lands while the encoder is busy.
SLOW_OUTPUT = mres.JobTemplate(outputs=[
    mres.OutputSpec(name="slow", container="mp4", video_codec="h264", width=320, height=240, preset="veryslow"),
])


class Env:
    def __init__(self, app: App, ch: grpc.aio.Channel) -> None:
        self.app = app
        self.root = app.cfg.storage_dir()
        self.media = media_service_pb2_grpc.MediaServiceStub(ch)
        self.jobs = job_service_pb2_grpc.JobServiceStub(ch)
        self.events: list[res.JobEvent] = []
        self._changed = asyncio.Condition()
        self._watch: asyncio.Task[None] | None = None

    async def start_watch(self, ch: grpc.aio.Channel) -> None:
        call = self.jobs.WatchJobs(svc.WatchJobsRequest(types=["EXTRACT_MEDIA", "TRANSCODE"], start_revision=1))

        async def pump() -> None:
            async for msg in call:
                async with self._changed:
                    self.events.extend(msg.events)
                    self._changed.notify_all()

        self._watch = asyncio.create_task(pump())

    async def until(self, pred: Callable[[], bool], timeout: float = 120) -> None:
        """Wait for watch events until pred() holds (a deadline, not a sleep)."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(pred)

    def jobs_of(self, entry_id: str) -> dict[str, res.Job]:
        """The latest state of every job of the entry seen on the stream."""
        out: dict[str, res.Job] = {}
        for ev in self.events:
            if ev.job.metadata.get("entry_id") == entry_id:
                out[ev.job.id] = ev.job
        return out

    def entry_settled(self, entry_id: str, transcodes: int) -> bool:
        jobs = self.jobs_of(entry_id).values()
        failed = any(j.state in (Job.FAILED, Job.ABORTED) for j in jobs)
        done = [j for j in jobs if j.type == "TRANSCODE" and j.state == Job.SUCCEEDED]
        return failed or len(done) == transcodes

    def progress_of(self, job_id: str) -> list[int]:
        return [ev.job.progress for ev in self.events if ev.job.id == job_id]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    app = await start_app(str(tmp_path / "mediajobs.db"), storage_root=tmp_path / "storage")
    worker = build_media_worker(f"127.0.0.1:{app.port}", app.cfg.storage_dir(), concurrency=2,
                                progress_interval=0.05)
    run = asyncio.create_task(worker.run(handle_signals=False))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            e = Env(app, ch)
            await e.start_watch(ch)
            yield e
            if e._watch:
                e._watch.cancel()
    finally:
        worker.stop(0)
        await run
        await app.stop(None)


def decoded_frames(path: Path) -> tuple[int, int]:
    """(video frames, audio frames) decoded from the whole file."""
    v = a = 0
    with av.open(str(path)) as c:
        for frame in c.decode(*c.streams):
            if isinstance(frame, av.VideoFrame):
                v += 1
            else:
                a += 1
    return v, a


async def test_entry_is_probed_transcoded_twice_and_ready(env: Env) -> None:
    synthesize_clip(env.root / "in" / "clip.mp4", 3.0, 320, 240, fps=25)
    await env.media.CreateJobTemplate(msvc.CreateJobTemplateRequest(job_template=TWO_OUTPUTS,
                                                                     job_template_id="tiny-two"))
    entry = await env.media.CreateEntry(msvc.CreateEntryRequest(
        entry=Entry(name="clip", source_uri="in/clip.mp4", template_id="tiny-two")))
    await env.until(lambda: env.entry_settled(entry.id, 2))

    done = await env.media.GetEntry(msvc.GetEntryRequest(id=entry.id))
    assert done.state == Entry.READY, done.error.message
    assert len(done.job_ids) == 3
    assert abs(done.duration_ms - 3000) <= 100

    # The source's media info matches what the test generated.
    infos = await env.media.ListMediaInfos(msvc.ListMediaInfosRequest(entry_id=entry.id, flavor_asset_id="source"))
    (src,) = infos.media_infos
    assert done.source_media_info_id == src.id
    assert abs(src.container_duration_ms - 3000) <= 100
    assert (src.video_width, src.video_height) == (320, 240)
    assert src.video_format == "h264" and src.audio_format == "aac"
    assert abs(src.video_frame_rate - 25) < 0.01
    assert src.file_size_bytes == (env.root / "in" / "clip.mp4").stat().st_size
    assert src.audio_channels >= 1 and src.audio_sampling_rate > 0 and src.max_gop > 0

    # Each output exists, decodes, and is what its spec asked for.
    by_name = {fa.output_name: fa for fa in done.flavor_assets}
    assert set(by_name) == {"small", "audio"}
    for fa in done.flavor_assets:
        assert fa.state == mres.FlavorAsset.READY
        path = env.root / fa.path
        assert path.is_file() and path.stat().st_size == fa.size_bytes
        assert not list(path.parent.glob(".*part*"))
        info = await env.media.GetMediaInfo(msvc.GetMediaInfoRequest(id=fa.media_info_id))
        assert info.flavor_asset_id == fa.id and abs(info.container_duration_ms - 3000) <= 150
    video, audio = decoded_frames(env.root / by_name["small"].path)
    assert 70 <= video <= 80 and audio > 0
    small = await env.media.GetMediaInfo(msvc.GetMediaInfoRequest(id=by_name["small"].media_info_id))
    assert (small.video_width, small.video_height, small.video_format) == (160, 120, "h264")
    video, audio = decoded_frames(env.root / by_name["audio"].path)
    assert video == 0 and audio > 0

    # Progress seen on the stream rises monotonically to 100 for every job.
    for fa in done.flavor_assets:
        seen = env.progress_of(fa.job_id)
        assert seen == sorted(seen) and seen[-1] == 100, seen
    assert (await env.media.CheckEntryIsDone(msvc.CheckEntryIsDoneRequest(job_id=done.job_ids[-1]))).done


async def test_corrupt_source_ends_in_error_with_the_reason_and_no_retry(env: Env) -> None:
    bad = env.root / "in" / "corrupt.mp4"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 40)
    entry = await env.media.CreateEntry(msvc.CreateEntryRequest(entry=Entry(name="bad", source_uri="in/corrupt.mp4")))
    await env.until(lambda: env.entry_settled(entry.id, 1))
    failed = await env.media.GetEntry(msvc.GetEntryRequest(id=entry.id))
    assert failed.state == Entry.ERROR
    assert "corrupt.mp4" in failed.error.message and entry.job_ids[0] in failed.error.message
    job = await env.jobs.GetJob(svc.GetJobRequest(id=entry.job_ids[0]))
    assert job.state == Job.FAILED and job.attempt_count == 1  # not retried: the file will not get better


async def test_abort_mid_transcode_stops_the_encoder_and_leaves_nothing(env: Env) -> None:
    synthesize_clip(env.root / "in" / "long.mp4", 60.0, 320, 240, fps=25, audio=False)
    await env.media.CreateJobTemplate(msvc.CreateJobTemplateRequest(job_template=SLOW_OUTPUT,
                                                                     job_template_id="slow-one"))
    entry = await env.media.CreateEntry(msvc.CreateEntryRequest(
        entry=Entry(name="long", source_uri="in/long.mp4", template_id="slow-one")))

    def transcoding() -> res.Job | None:
        for j in env.jobs_of(entry.id).values():
            if j.type == "TRANSCODE" and j.state == Job.RUNNING and j.progress > 0:
                return j
        return None

    await env.until(lambda: transcoding() is not None)
    job = transcoding()
    assert job is not None
    await env.jobs.AbortJob(svc.AbortJobRequest(id=job.id, reason="changed my mind"))
    await env.until(lambda: env.jobs_of(entry.id)[job.id].state in TERMINAL)
    final = env.jobs_of(entry.id)[job.id]
    assert final.state == Job.ABORTED and final.progress < 100
    out_dir = env.root / "renditions" / entry.id
    left = [p.name for p in out_dir.rglob("*")] if out_dir.exists() else []
    assert left == [], left
    e = await env.media.GetEntry(msvc.GetEntryRequest(id=entry.id))
    assert e.state == Entry.ERROR and "aborted" in e.error.message


async def test_the_worker_refuses_paths_outside_its_storage_root(env: Env, tmp_path: Path) -> None:
    secret = tmp_path / "secret.mp4"
    synthesize_clip(secret, 1.0, 64, 48, fps=10, audio=False)
    (env.root / "in").mkdir(parents=True, exist_ok=True)
    (env.root / "in" / "link.mp4").symlink_to(secret)
    sources = ["../secret.mp4", str(secret), "in/link.mp4"]
    made = []
    for src in sources:
        params = struct_pb2.Struct()
        params.update({"source": src, "outputs": [{"name": "x", "container": "mp4", "audio_codec": "aac",
                                                   "path": "../escaped.mp4"}]})
        made.append(await env.jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE", params=params)))
    ids = {j.id for j in made}

    def finished() -> bool:
        last = {ev.job.id: ev.job for ev in env.events if ev.job.id in ids}
        return len(last) == len(ids) and all(j.state in TERMINAL for j in last.values())

    await env.until(finished)
    for job in made:
        got = await env.jobs.GetJob(svc.GetJobRequest(id=job.id))
        assert got.state == Job.FAILED and got.attempt_count == 1, got
        assert got.error.message.startswith("OutsideStorageRoot: "), got.error.message
    assert not (tmp_path / "escaped.mp4").exists()


async def test_plain_transcode_jobs_by_template_or_outputs_write_under_the_root(env: Env) -> None:
    """TRANSCODE jobs made with CreateJob, not by an entry: the README's
    example shape (`input`, an alias of `source`, and a template_id), and
    explicit outputs with an output_dir; bad params fail at once."""
    synthesize_clip(env.root / "in" / "clip.mp4", 2.0, 320, 240, fps=25)
    await env.media.CreateJobTemplate(msvc.CreateJobTemplateRequest(job_template=TWO_OUTPUTS,
                                                                     job_template_id="tiny-two"))

    def params(**kw: object) -> struct_pb2.Struct:
        st = struct_pb2.Struct()
        st.update(kw)
        return st

    small = {"name": "web", "container": "mp4", "video_codec": "h264", "width": 160, "height": 120,
             "audio_codec": "aac"}
    by_template = await env.jobs.CreateJob(svc.CreateJobRequest(
        type="TRANSCODE", template_id="tiny-two", params=params(input="in/clip.mp4")))
    by_outputs = await env.jobs.CreateJob(svc.CreateJobRequest(
        type="TRANSCODE", params=params(source="in/clip.mp4", output_dir="out/web", outputs=[small])))
    conflicting = await env.jobs.CreateJob(svc.CreateJobRequest(
        type="TRANSCODE", params=params(source="in/clip.mp4", input="in/other.mp4", outputs=[small])))
    no_outputs = await env.jobs.CreateJob(svc.CreateJobRequest(type="TRANSCODE", params=params(input="in/clip.mp4")))
    made = [by_template, by_outputs, conflicting, no_outputs]
    ids = {j.id for j in made}

    def finished() -> bool:
        last = {ev.job.id: ev.job for ev in env.events if ev.job.id in ids}
        return len(last) == len(ids) and all(j.state in TERMINAL for j in last.values())

    await env.until(finished)
    got = {j.id: await env.jobs.GetJob(svc.GetJobRequest(id=j.id)) for j in made}

    done = got[by_template.id]
    assert done.state == Job.SUCCEEDED, done.error.message
    result = json_format.MessageToDict(done.result, preserving_proto_field_name=True)
    assert result["source"] == "in/clip.mp4"
    assert [(o["name"], o["path"]) for o in result["outputs"]] == [
        ("small", f"transcodes/{done.id}/small.mp4"), ("audio", f"transcodes/{done.id}/audio.mp4")]
    for out in result["outputs"]:
        path = env.root / out["path"]
        assert path.is_file() and path.stat().st_size == int(out["size_bytes"])
        assert out["flavor_asset_id"] == "" and out["media_info_id"] == "", "no entry: nothing stored"
        assert abs(int(out["media_info"]["container_duration_ms"]) - 2000) <= 150
    video, audio = decoded_frames(env.root / result["outputs"][0]["path"])
    assert 45 <= video <= 55 and audio > 0
    assert decoded_frames(env.root / result["outputs"][1]["path"])[0] == 0, "the audio-only output"

    done = got[by_outputs.id]
    assert done.state == Job.SUCCEEDED, done.error.message
    (out,) = json_format.MessageToDict(done.result, preserving_proto_field_name=True)["outputs"]
    assert out["path"] == "out/web/web.mp4" and (env.root / "out" / "web" / "web.mp4").is_file()
    info = out["media_info"]
    assert (info["video_width"], info["video_height"]) == (160, 120)

    for job, text in ((conflicting, "params.source and params.input (an alias of source) differ"),
                      (no_outputs, "params.outputs is required")):
        failed = got[job.id]
        assert failed.state == Job.FAILED and failed.attempt_count == 1, failed
        assert text in failed.error.message
