#!/usr/bin/env python3
"""Benchmark: the reference media worker's transcode() (PyAV) against the
ffmpeg command-line tool doing the same encode, measured in the same run.

Target: transcode() reaches >= 0.8 of ffmpeg's throughput (source seconds
encoded per wall-clock second, medians over the repetitions).

The source is a synthetic clip (FFmpeg's testsrc2 pattern + a sine tone,
H.264/AAC, default 1280x720 at 30 fps, 20 s), made once and cached in /tmp.
Both sides get the same work: decode the source once, and for every output
scale to the size (bicubic, square pixels), keep the source frame rate,
encode H.264 with libx264 (same preset, same bit rate or CRF 23, automatic
threads) and AAC at the same bit rate, into an MP4 with +faststart. The
ffmpeg CLI gets `-threads 0`; PyAV's decoder and encoders use automatic
frame+slice threading. Repetitions alternate between the two. It reports
wall time, throughput and CPU cores used (ffmpeg: the child's rusage; PyAV:
this process's /proc time) per run.

Caveat: ffmpeg here is Debian's build (its own libx264 and FFmpeg version),
PyAV uses the FFmpeg and x264 built into its wheel, so the encoders are not
byte-for-byte the same program.

    scripts/bench_transcode.py                          # 854x480 + audio, 3 reps each (~30 s)
    scripts/bench_transcode.py --outputs 1280x720,640x360,audio --reps 5
    scripts/bench_transcode.py --video-bit-rate 0       # CRF 23 instead of 1.5 Mbit/s
    scripts/bench_transcode.py --full-worker            # + a TRANSCODE job and an entry through a real server

`--full-worker` also starts a server (a separate process, temporary SQLite,
storage root in a temp dir) and a worker from build_media_worker in this
process, and times a TRANSCODE job with the same outputs from CreateJob to
SUCCEEDED, then an entry (EXTRACT_MEDIA + TRANSCODE, media info stored)
from CreateEntry to READY. Needs the `ffmpeg` CLI (apt-get install -y
ffmpeg); only this benchmark does.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import (  # noqa: E402
    OtherLoad,
    PySpy,
    ServerProc,
    add_quiet_arg,
    find_py_spy,
    other_load_note,
    proc_cpu_seconds,
    table,
    target_line,
    wait_for_quiet,
)
from google.protobuf import json_format, struct_pb2  # noqa: E402

from mediajobs.client.media import DEFAULT_CRF, probe, synthesize_clip, transcode  # noqa: E402
from mediajobs.v1 import media_resources_pb2 as mres  # noqa: E402

TARGET = 0.8


@dataclass
class Run:
    side: str
    rep: int
    wall: float
    cpu: float
    source_s: float

    @property
    def throughput(self) -> float:
        return self.source_s / self.wall

    @property
    def cores(self) -> float:
        return self.cpu / self.wall


def parse_outputs(text: str, args: argparse.Namespace) -> list[mres.OutputSpec]:
    """`854x480,audio` -> OutputSpecs with the benchmark's codec settings."""
    specs = []
    for i, token in enumerate(t.strip() for t in text.split(",") if t.strip()):
        common: dict[str, Any] = dict(container="mp4", audio_codec="aac", audio_bit_rate_bps=args.audio_bit_rate)
        if token == "audio":
            specs.append(mres.OutputSpec(name=f"o{i}-audio", **common))
            continue
        w, _, h = token.partition("x")
        specs.append(mres.OutputSpec(name=f"o{i}-{token}", video_codec="h264", width=int(w), height=int(h),
                                     video_bit_rate_bps=args.video_bit_rate, preset=args.preset,
                                     **(common if not args.no_audio else {"container": "mp4"})))
    if not specs:
        raise SystemExit("--outputs: give at least one WxH or 'audio'")
    return specs


def ffmpeg_command(src: Path, specs: list[mres.OutputSpec], paths: list[Path], fps: int) -> list[str]:
    """The ffmpeg CLI doing what transcode() does for these specs."""
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-threads", "0", "-i", str(src)]
    for spec, path in zip(specs, paths):
        if spec.video_codec:
            cmd += ["-map", "0:v:0", "-vf", f"scale={spec.width}:{spec.height},setsar=1,fps={fps},format=yuv420p",
                    "-c:v", "libx264", "-preset", spec.preset, "-threads", "0"]
            cmd += ["-b:v", str(spec.video_bit_rate_bps)] if spec.video_bit_rate_bps else ["-crf", str(DEFAULT_CRF)]
        else:
            cmd += ["-vn"]
        if spec.audio_codec:
            cmd += ["-map", "0:a:0", "-c:a", "aac", "-b:a", str(spec.audio_bit_rate_bps)]
        else:
            cmd += ["-an"]
        cmd += ["-movflags", "+faststart", "-f", "mp4", str(path)]
    return cmd


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_ffmpeg(cmd: list[str]) -> tuple[float, float]:
    c0, t0 = children_cpu(), time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0, children_cpu() - c0


def run_pyav(src: Path, specs: list[mres.OutputSpec], paths: list[Path]) -> tuple[float, float]:
    c0, t0 = proc_cpu_seconds(), time.perf_counter()
    transcode(src, list(zip(specs, paths)), lambda pct: None, lambda: False)
    return time.perf_counter() - t0, proc_cpu_seconds() - c0


def check_outputs(paths: list[Path], specs: list[mres.OutputSpec], source_ms: int, side: str) -> None:
    """Both sides must have produced full-length outputs of the asked size."""
    for path, spec in zip(paths, specs):
        mi = probe(path)
        dur = mi.video_duration_ms if spec.video_codec else mi.audio_duration_ms
        problems = []
        if abs(dur - source_ms) > 200:
            problems.append(f"duration {dur} ms, source {source_ms} ms")
        if spec.video_codec and (mi.video_width, mi.video_height) != (spec.width, spec.height):
            problems.append(f"size {mi.video_width}x{mi.video_height}")
        if problems:
            raise SystemExit(f"{side} output {spec.name} is wrong: {'; '.join(problems)}")


# -- the full worker path ------------------------------------------------------------------


def _wait(poll: Callable[[], Any], done: Callable[[Any], bool], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = poll()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def full_worker(clip: Path, specs: list[mres.OutputSpec], reps: int, source_s: float) -> list[Run]:
    import grpc

    from mediajobs.client.media_worker import build_media_worker
    from mediajobs.v1 import job_service_pb2 as jsvc
    from mediajobs.v1 import job_service_pb2_grpc
    from mediajobs.v1 import media_service_pb2 as msvc
    from mediajobs.v1 import media_service_pb2_grpc
    from mediajobs.v1 import resources_pb2 as res

    tmp = Path(tempfile.mkdtemp(prefix="mediajobs-bench-transcode-"))
    storage = tmp / "storage"
    server = ServerProc(tmp / "bench.db", extra_args=["--storage-root", str(storage), "--data-dir", str(tmp)])
    worker = thread = channel = None
    runs: list[Run] = []
    try:
        (storage / "incoming").mkdir(parents=True)
        try:
            os.link(clip, storage / "incoming" / "src.mp4")
        except OSError:
            shutil.copyfile(clip, storage / "incoming" / "src.mp4")
        server.start()
        worker = build_media_worker(server.addr, storage, concurrency=1, lease_duration=30)
        thread = threading.Thread(target=worker.run_sync, kwargs={"handle_signals": False}, daemon=True)
        thread.start()
        channel = grpc.insecure_channel(server.addr)
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        media_stub = media_service_pb2_grpc.MediaServiceStub(channel)
        terminal = (res.Job.SUCCEEDED, res.Job.FAILED, res.Job.ABORTED)
        for rep in range(1, reps + 1):
            params = struct_pb2.Struct()
            params.update({"source": "incoming/src.mp4", "outputs": [
                json_format.MessageToDict(s, preserving_proto_field_name=True) | {"path": f"bench/{rep}/{s.name}.mp4"}
                for s in specs]})
            c0, t0 = proc_cpu_seconds(), time.perf_counter()
            job = jobs.CreateJob(jsvc.CreateJobRequest(type="TRANSCODE", params=params))
            job = _wait(lambda: jobs.GetJob(jsvc.GetJobRequest(id=job.id)), lambda j: j.state in terminal, 600)
            wall = time.perf_counter() - t0
            if job.state != res.Job.SUCCEEDED:
                raise SystemExit(f"TRANSCODE job {job.id} ended {res.Job.State.Name(job.state)}: {job.error.message}")
            runs.append(Run("worker job", rep, wall, proc_cpu_seconds() - c0, source_s))
            print(f"  worker job rep {rep}: {wall:.2f} s", flush=True)

        # The entry flow: EXTRACT_MEDIA, then TRANSCODE per flavor asset, media info stored.
        template = mres.JobTemplate(display_name="bench", outputs=specs)
        media_stub.CreateJobTemplate(msvc.CreateJobTemplateRequest(job_template=template, job_template_id="bench-tpl"))
        t0 = time.perf_counter()
        entry = media_stub.CreateEntry(msvc.CreateEntryRequest(entry=mres.Entry(
            name="bench", source_uri="incoming/src.mp4", template_id="bench-tpl")))
        entry = _wait(lambda: media_stub.GetEntry(msvc.GetEntryRequest(id=entry.id)),
                      lambda e: e.state in (mres.Entry.READY, mres.Entry.ERROR), 600)
        wall = time.perf_counter() - t0
        infos = media_stub.ListMediaInfos(msvc.ListMediaInfosRequest(entry_id=entry.id))
        state = mres.Entry.State.Name(entry.state)
        print(f"  entry {entry.id}: {state} after {wall:.2f} s; duration_ms {entry.duration_ms}; "
              f"{len(infos.media_infos)} media info record(s); flavor assets: "
              + ", ".join(f"{fa.output_name} {mres.FlavorAsset.State.Name(fa.state)} {fa.size_bytes:,} B"
                          for fa in entry.flavor_assets))
        if entry.state != mres.Entry.READY:
            raise SystemExit(f"entry ended {state}: {entry.error.message}")
        runs.append(Run("worker entry", 1, wall, 0.0, source_s))
    finally:
        if worker is not None:
            worker.stop(0)
        if thread is not None:
            thread.join(30)
        if channel is not None:
            channel.close()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return runs


# -- main ------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="source length (default 20)")
    ap.add_argument("--size", default="1280x720", help="source frame size (default 1280x720)")
    ap.add_argument("--fps", type=int, default=30, help="source frame rate (default 30)")
    ap.add_argument("--outputs", default="854x480",
                    help="comma-separated outputs: WxH for H.264+AAC, 'audio' for AAC only (default 854x480)")
    ap.add_argument("--preset", default="veryfast", help="x264 preset (default veryfast)")
    ap.add_argument("--video-bit-rate", type=int, default=1_500_000, help="bit/s; 0 = CRF 23 (default 1500000)")
    ap.add_argument("--audio-bit-rate", type=int, default=128_000, help="bit/s (default 128000)")
    ap.add_argument("--no-audio", action="store_true", help="video outputs without audio")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per side, alternated (default 3)")
    ap.add_argument("--full-worker", action="store_true",
                    help="also time a TRANSCODE job and an entry through a real server and build_media_worker")
    ap.add_argument("--profile", action="store_true", help="py-spy this process during one extra PyAV run")
    ap.add_argument("--py-spy", default=None, help="path of the py-spy binary")
    ap.add_argument("--keep", action="store_true", help="keep the outputs (printed folder)")
    add_quiet_arg(ap)
    ap.add_argument("--quick", action="store_true", help="a smoke run: a 5 s source, one repetition per side")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.reps = min(args.seconds, 5.0), 1

    if shutil.which("ffmpeg") is None:
        print("bench_transcode needs the ffmpeg command-line tool to compare against; install it with\n"
              "    apt-get install -y ffmpeg\n(Debian's package; only this benchmark needs it)", file=sys.stderr)
        return 2
    width, _, height = args.size.partition("x")
    specs = parse_outputs(args.outputs, args)

    clip = Path(tempfile.gettempdir()) / f"mediajobs-bench-{args.size}-{args.fps}fps-{args.seconds:g}s.mp4"
    if not clip.exists():
        print(f"synthesizing {clip} (kept for later runs) ...", flush=True)
        # Into a temporary name first: an interrupted synthesis must not
        # leave a truncated clip that later runs would take as the cache.
        partial = clip.with_name(f".{clip.name}.{os.getpid()}.partial.mp4")
        try:
            synthesize_clip(partial, args.seconds, int(width), int(height), fps=args.fps)
            partial.replace(clip)
        finally:
            partial.unlink(missing_ok=True)
    info = probe(clip)
    source_s = info.container_duration_ms / 1000
    ffmpeg_version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    import av
    print(f"source: {clip.name}: {info.video_width}x{info.video_height} {info.video_frame_rate:g} fps "
          f"{info.video_format} {info.video_bit_rate_kbps} kbit/s + {info.audio_format}, {source_s:g} s")
    print("outputs: " + "; ".join(
        f"{s.name}: " + (f"h264 {s.width}x{s.height} {s.preset} "
                         + (f"{s.video_bit_rate_bps // 1000} kbit/s" if s.video_bit_rate_bps else f"crf {DEFAULT_CRF}")
                         if s.video_codec else "no video")
        + (f" + aac {s.audio_bit_rate_bps // 1000} kbit/s" if s.audio_codec else "") for s in specs))
    print(f"ffmpeg CLI: {ffmpeg_version}; PyAV {av.__version__} (FFmpeg {av.ffmpeg_version_info}); "
          f"{os.cpu_count()} cores")
    if args.wait_quiet:
        wait_for_quiet(args.wait_quiet)

    out_dir = Path(tempfile.mkdtemp(prefix="mediajobs-bench-out-"))
    try:
        return measure(args, clip, info, specs, source_s, out_dir)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"outputs kept in {out_dir}")
        else:
            shutil.rmtree(out_dir, ignore_errors=True)


def measure(args: argparse.Namespace, clip: Path, info: Any, specs: list[mres.OutputSpec], source_s: float,
            out_dir: Path) -> int:
    ff_paths = [out_dir / f"ffmpeg-{s.name}.mp4" for s in specs]
    py_paths = [out_dir / f"pyav-{s.name}.mp4" for s in specs]
    cmd = ffmpeg_command(clip, specs, ff_paths, args.fps)
    print("ffmpeg command: " + " ".join(cmd))

    # Warm-up (page cache, libraries), then alternate.
    run_ffmpeg(cmd)
    run_pyav(clip, specs, py_paths)
    check_outputs(ff_paths, specs, info.container_duration_ms, "ffmpeg")
    check_outputs(py_paths, specs, info.container_duration_ms, "PyAV")
    runs: list[Run] = []
    # This process and its children (ffmpeg; with --full-worker the server)
    # are ours, also once they exited.
    load = OtherLoad().start()
    for rep in range(1, args.reps + 1):
        order = [("ffmpeg CLI", lambda: run_ffmpeg(cmd)), ("PyAV transcode()", lambda: run_pyav(clip, specs, py_paths))]
        if rep % 2 == 0:
            order.reverse()
        for side, fn in order:
            wall, cpu = fn()
            runs.append(Run(side, rep, wall, cpu, source_s))
            print(f"  {side} rep {rep}: {wall:.2f} s", flush=True)
    other = load.stop()

    if args.profile:
        exe = find_py_spy(args.py_spy) or ("/tmp/pyspy/bin/py-spy" if Path("/tmp/pyspy/bin/py-spy").exists() else None)
        if exe is None:
            print("note: --profile needs py-spy (pip install py-spy, or --py-spy PATH)")
        else:
            spy = PySpy(exe, os.getpid(), out_dir / "pyav.prof", duration=max(1.0, runs[-1].wall), rate=200)
            time.sleep(0.3)
            run_pyav(clip, specs, py_paths)
            if spy.wait():
                print("where the PyAV run's time goes (py-spy):")
                print(spy.summary())

    if args.full_worker:
        print("full worker path (server + build_media_worker, concurrency 1):", flush=True)
        load = OtherLoad().start()
        runs += full_worker(clip, specs, args.reps, source_s)
        other = max(other, load.stop())

    print()
    print(table(["side", "rep", "wall s", "source s / wall s", "CPU cores"],
                [[r.side, r.rep, r.wall, r.throughput, r.cores if r.cpu else float("nan")] for r in runs]))
    med = {side: statistics.median(r.throughput for r in runs if r.side == side)
           for side in dict.fromkeys(r.side for r in runs)}
    print()
    print(table(["side", "median source s / wall s"], [[k, v] for k, v in med.items()]))
    ratio = med["PyAV transcode()"] / med["ffmpeg CLI"]
    print(other_load_note(other))
    line, _ = target_line("pyav_vs_ffmpeg_throughput", ratio, ">=", TARGET)
    print(line)
    if "worker job" in med:
        print(f"worker job path: {med['worker job'] / med['ffmpeg CLI']:.2f} x the ffmpeg CLI's throughput "
              "(includes leasing, probing the outputs and the job's completion)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
