#!/usr/bin/env python3
"""Benchmark: live jobs (RTMP in, HLS ladder out) with the reference live
worker. Three measurements; the CPU one against the ffmpeg command-line tool
doing the same ladder in the same run.

The ladder is the built-in live template `hls-live-360p-240p` (640x360 at
800 kbit/s + 426x240 at 400 kbit/s, H.264 + AAC 96 kbit/s each, 2 s
segments). The input is always the synthetic publisher
(mediajobs.client.live.publisher: testsrc2 + a 440 Hz tone, libx264
ultrafast, 1 keyframe/s, AAC) at 1280x720, 30 fps, 2,500 kbit/s video. The
publisher always runs in a process of its own (PyAV's RTMP client holds the
GIL while connecting, so it cannot share a process with the front door).

1. Ingest -> playlist latency. A server (`python -m mediajobs.server`, own
   process, fresh SQLite file, storage root in the temporary folder) and the
   reference live worker (`LiveWorker(...)`, defaults, in its own process:
   RTMP front door + worker SDK + the ingest child it starts). A live job
   with the built-in template, SetLiveEncoding online, WatchJobs until the
   session is AWAITING_INPUT, then the publisher pushes N seconds (full 60,
   --quick 15) in real time to rtmp://127.0.0.1:PORT/live/KEY. The publisher
   prints its start wall time (time.time() when its real-time clock starts,
   i.e. when frame 0 is due). This process polls both media playlists
   (`<rendition>/index.m3u8` under the job's output folder) every 20 ms
   (stat, re-read on change) and records the wall time each segment is first
   seen. Per segment: latency = first seen - (publisher start + the
   segment's end media time), the end media time being the sum of the
   EXTINF durations up to and including it (= the time the frame that opens
   the next segment is due; the segment's last frame is due 1/30 s earlier,
   and nothing can close a segment before that next keyframe). The poll
   adds 0-20 ms. Also printed: how late the publisher actually sent its
   frames against its schedule (it competes for the same 2 cores).
   Reported: p50 / p99 / max over all segments of both renditions. The
   last segment is closed by the publisher's disconnect (EOF, flush,
   ENDLIST) right after its last frame, which is due 1/30 s before its end
   media time, so its figure can be ~0 or a few ms below 0.
   Target: p99 <= 0.5 s.
   Also measured in this part: every change of the session's live state
   (STARTING ... STOPPED) as a WatchJobs stream opened before the start sees
   it: the time from its commit (the event's event_time, the server's clock)
   to its arrival in this process (the same machine's clock). Target: every
   one within 1 s, in order.
   Extra line: CPU seconds per media second of the live worker process
   (front door, SDK, reports; RUSAGE_SELF) plus its ingest child
   (RUSAGE_CHILDREN, the child exited and was waited for) between the
   publisher's start and the session's RECONNECTING (the child has ended),
   from the worker's own getrusage (asked by SIGUSR1); the server's CPU and
   the publisher's are printed beside it.
2. CPU per live job, 720p30 in -> 360p + 240p out. The publisher's stream,
   the same settings, is recorded once to an FLV file (realtime=False; full
   20 s, --quick 10 s). Then, alternating (full: 2 repetitions per side,
   --quick 1), each paced to real time from that file:
   (a) the ingest child: `python -m mediajobs.client.live.ladder --input FILE
       --format flv --out DIR --renditions <the template's> --segment-seconds 2
       --realtime` (exactly what the worker runs, with a file instead of its
       stdin pipe);
   (b) `ffmpeg -re -i FILE` with the same ladder: split + scale (bilinear,
       as PyAV's reformatter; square pixels) to the same sizes, libx264
       veryfast + zerolatency with the same x264-params (keyint = 2 s,
       min-keyint, scenecut=0, VBV at the bit rate, buffer 2x), the same bit
       rates, AAC 96 kbit/s 48 kHz stereo per rendition, one hls muxer with
       var_stream_map, master playlist, the same hls flags and segment
       length.
   CPU = user + system seconds of the process with all its threads (from
   wait4's rusage), divided by the media seconds of the file. Both sides'
   playlists are checked for the full duration. Ratio = child / ffmpeg.
   Target: <= 1.25. Caveat: ffmpeg is Debian's build (its own FFmpeg and
   x264), the child uses the FFmpeg/x264 built into the PyAV wheel; both use
   automatic threading (PyAV: slice threads for the decoder). When the
   ffmpeg CLI is missing the script installs Debian's package
   (`apt-get install -y --no-install-recommends ffmpeg`, needs root) for
   this comparison only, and says so; --no-ffmpeg skips the baseline.
3. Capacity: how many such live jobs one machine (this one: its core count
   is printed) keeps in real time. k = 1, 2, 3 ... ingest children at once,
   each paced with --realtime from the recorded FLV (full 20 s, --quick
   10 s) into its own folder; the file input with --realtime stands in for
   a paced publisher (no publishers, no worker, no server: just the
   children). k is kept when every child ended cleanly (exit 0, reason eof),
   emitted no `lagging` event, encoded every frame of the file, and its
   media duration (the `ended` event) is within 2 % of its wall time (its
   `connected` event to its `ended` event). Reported: the largest k kept
   (stopping at the first k not kept, or at k = 6, --max-jobs). A figure,
   not a target.

Every measurement reports how busy other processes kept the machine (a
warning when > 0.2 cores: run again). Exit code 0 even when a target is
missed; non-zero only when the benchmark itself fails (a process does not
start, a live job does not reach a state, a side does not produce its full
playlists, ffmpeg cannot be installed). Everything (database, logs, FLV,
playlists) lives in one temporary folder, removed at the end, also after a
failure or Ctrl-C (--keep keeps it); every process it started is stopped.

    scripts/bench_live.py            # ~5 min on 2 cores (+ the ffmpeg install once)
    scripts/bench_live.py --quick    # ~2 min
    scripts/bench_live.py --no-ffmpeg --seconds 30
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402

import _bench_common as bc  # noqa: E402
from mediajobs.client.live import ladder  # noqa: E402
from mediajobs.server.store.templates import BUILT_IN, LIVE_DEFAULT_TEMPLATE, segment_seconds  # noqa: E402
from mediajobs.v1 import job_service_pb2 as jsvc  # noqa: E402
from mediajobs.v1 import job_service_pb2_grpc  # noqa: E402
from mediajobs.v1 import live_job_service_pb2 as lsvc  # noqa: E402
from mediajobs.v1 import live_job_service_pb2_grpc  # noqa: E402
from mediajobs.v1 import live_resources_pb2 as lres  # noqa: E402

TEMPLATE_ID = "hls-live-360p-240p"
assert TEMPLATE_ID == LIVE_DEFAULT_TEMPLATE
WIDTH, HEIGHT, FPS, VIDEO_KBPS = 1280, 720, 30, 2500
TARGET_P99_S = 0.5
TARGET_CPU_RATIO = 1.25
TARGET_WATCH_S = 1.0
POLL_S = 0.02
REALTIME_TOLERANCE = 0.02
STATS_INTERVAL_S = 2.0


class BenchError(Exception):
    """The benchmark itself failed (not a missed target)."""


# -- child processes ---------------------------------------------------------------------------

_children: list[tuple[str, subprocess.Popen[bytes]]] = []


def spawn(name: str, cmd: Sequence[str], out: Path, err: Path) -> subprocess.Popen[bytes]:
    """A child in a session (and process group) of its own, so the terminal's
    Ctrl-C reaches only this script, which then stops it and whatever it
    started. stdout (JSON events) and stderr go to files in the temp folder."""
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(list(cmd), stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, cwd=bc.ROOT,
                                start_new_session=True)
    _children.append((name, proc))
    return proc


_ended: dict[int, tuple[int, float]] = {}


def poll(p: subprocess.Popen[bytes]) -> tuple[int, float] | None:
    """(exit code, CPU seconds of the process with all its threads) once it
    ended, else None. Reaps with wait4 (never Popen.poll, which would lose
    the process's rusage)."""
    if p.pid in _ended:
        return _ended[p.pid]
    if p.returncode is not None:  # reaped elsewhere: rusage lost
        return p.returncode, float("nan")
    pid, status, ru = os.wait4(p.pid, os.WNOHANG)
    if pid != p.pid:
        return None
    p.returncode = os.waitstatus_to_exitcode(status)
    _ended[p.pid] = (p.returncode, ru.ru_utime + ru.ru_stime)
    return _ended[p.pid]


def reap(procs: Sequence[subprocess.Popen[bytes]], timeout: float, what: str) -> dict[int, tuple[int, float]]:
    """Wait for every process; returns {pid: (exit code, CPU seconds)}."""
    deadline = time.monotonic() + timeout
    done: dict[int, tuple[int, float]] = {}
    while True:
        for p in procs:
            if p.pid not in done and (r := poll(p)) is not None:
                done[p.pid] = r
        if len(done) == len(procs):
            return done
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not end within {timeout:.0f} s")
        time.sleep(0.05)


def stop_children() -> None:
    """SIGTERM every process group we started that is still there, then
    SIGKILL after 5 s; reap them."""
    live = [(n, p) for n, p in _children if p.returncode is None]
    for _, p in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    for _, p in live:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
    _children.clear()


def events(path: Path) -> list[dict[str, Any]]:
    """The complete JSON event lines of a child's stdout file so far."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in data.split(b"\n")[:-1]:  # the last piece may be incomplete
        ev = ladder.parse_event(line)
        if ev is not None:
            out.append(ev)
    return out


def wait_event(path: Path, pred: Callable[[dict[str, Any]], bool], timeout: float, proc: subprocess.Popen[bytes],
               what: str, skip: int = 0) -> tuple[dict[str, Any], int]:
    """The first event (after the first `skip`) that matches; returns it and
    how many events there were up to it."""
    deadline = time.monotonic() + timeout
    while True:
        evs = events(path)
        for i, ev in enumerate(evs[skip:], start=skip):
            if pred(ev):
                return ev, i + 1
        if poll(proc) is not None:
            raise BenchError(f"{what} exited with code {proc.returncode} first: {tail(path.with_suffix('.log'))}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: no such event within {timeout:.0f} s")
        time.sleep(0.02)


def tail(path: Path, n: int = 600) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip() or "(no output)"
    except OSError:
        return "(no output)"


# -- the publisher and the worker (code of their processes) --------------------------------------

PUBLISHER_CODE = r"""
import json, sys, time
from mediajobs.client.live.publisher import publish
p = json.loads(sys.argv[1])
fps = p["fps"]
st = {"n": 0, "t0": None, "late": []}

def stop():
    # Called once per loop turn: the first call right after the publisher's
    # real-time clock starts (frame 0 is due), each later one right after the
    # previous frame went out (was muxed), so the lateness of that frame.
    m = time.monotonic()
    if st["t0"] is None:
        st["t0"] = m
        print(json.dumps({"event": "start", "wall": time.time()}), flush=True)
    else:
        st["late"].append(m - (st["t0"] + (st["n"] - 1) / fps))
    st["n"] += 1
    return False

r = publish(p["url"], seconds=p["seconds"], width=p["width"], height=p["height"], fps=fps,
            video_kbps=p["video_kbps"], realtime=p["realtime"], open_timeout=15, stop=stop)
late = sorted(st["late"]) or [0.0]
print(json.dumps({"event": "done", "video_frames": r.video_frames, "audio_frames": r.audio_frames,
                  "seconds": r.seconds, "late_p50": late[len(late) // 2],
                  "late_p99": late[min(len(late) - 1, int(len(late) * 0.99))], "late_max": late[-1]}), flush=True)
"""

WORKER_CODE = r"""
import asyncio, json, resource, signal, sys
from pathlib import Path
from mediajobs.client.live.worker import LiveWorker

def usage():
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"event": "rusage", "self": s.ru_utime + s.ru_stime, "children": c.ru_utime + c.ru_stime}),
          flush=True)

async def main():
    w = LiveWorker(sys.argv[1], Path(sys.argv[2]), "127.0.0.1:0")
    task = asyncio.create_task(w.run(handle_signals=False))
    ready = asyncio.create_task(w.ready.wait())
    await asyncio.wait({task, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        await task
        return
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, usage)
    loop.add_signal_handler(signal.SIGTERM, w.stop, 0)
    loop.add_signal_handler(signal.SIGINT, w.stop, 0)
    print(json.dumps({"event": "ready", "port": w.port}), flush=True)
    await task
    usage()

asyncio.run(main())
"""


def publisher(tmp: Path, name: str, url: str, seconds: float, realtime: bool) -> subprocess.Popen[bytes]:
    params = {"url": url, "seconds": seconds, "width": WIDTH, "height": HEIGHT, "fps": FPS,
              "video_kbps": VIDEO_KBPS, "realtime": realtime}
    return spawn(name, [sys.executable, "-c", PUBLISHER_CODE, json.dumps(params)], tmp / f"{name}.out",
                 tmp / f"{name}.log")


def renditions() -> list[ladder.Rendition]:
    """The built-in template's renditions, as the server hands them to the worker."""
    t = BUILT_IN[TEMPLATE_ID]
    return [ladder.Rendition(o.name, o.width or None, o.height or None, round(o.video_bit_rate_bps / 1000) or 800,
                             round(o.audio_bit_rate_bps / 1000) or 96) for o in t.outputs]


def playlist_seconds(path: Path) -> tuple[float, bool]:
    pl = ladder.read_playlist(path)
    if pl is None:
        return 0.0, False
    return sum(s.duration for s in pl.segments), pl.ended


# -- 1. ingest -> playlist latency ---------------------------------------------------------------


@dataclass
class SegSeen:
    rendition: str
    index: int
    end_media_s: float
    first_seen: float  # wall clock
    latency_s: float = float("nan")


@dataclass
class LiveResult:
    segments: list[SegSeen]
    media_s: float
    pub_late_p99: float
    pub_late_max: float
    worker_self_cpu: float
    worker_child_cpu: float
    server_cpu: float
    publisher_cpu: float
    other_cores: float
    startup_note: str = ""
    playlists: dict[str, float] = field(default_factory=dict)
    # Every live state change of the session: its commit (the event's
    # event_time) -> received by a WatchJobs stream in this process, seconds.
    watch_latencies: list[float] = field(default_factory=list)
    watch_states: list[str] = field(default_factory=list)


class StateWatch(threading.Thread):
    """A WatchJobs stream (from now) on the session's LIVE_ENCODE job kept
    open for the whole live run: for every change of its live_state, the time
    from the commit (event_time) to its arrival here, until STOPPED."""

    def __init__(self, jobs: Any, live_id: str) -> None:
        super().__init__(daemon=True)
        self.call = jobs.WatchJobs(jsvc.WatchJobsRequest(start_revision=0, types=["LIVE_ENCODE"]), timeout=600)
        self.live_id = live_id
        self.latencies: list[float] = []
        self.states: list[str] = []
        self.start()

    def run(self) -> None:
        try:
            for resp in self.call:
                now = time.time()
                for ev in resp.events:
                    d = json_format.MessageToDict(ev.job.progress_details)
                    state = str(d.get("live_state", ""))
                    if d.get("live_job_id") != self.live_id or not state:
                        continue
                    if not self.states or self.states[-1] != state:
                        self.states.append(state)
                        self.latencies.append(now - ev.event_time.ToNanoseconds() / 1e9)
                    if state == "STOPPED":
                        return
        except grpc.RpcError:
            return
        finally:
            self.call.cancel()


def until(jobs: Any, live_id: str, states: set[str], timeout: float) -> str:
    """Follow WatchJobs until the live job's session reports one of `states`."""
    call = jobs.WatchJobs(jsvc.WatchJobsRequest(start_revision=1, types=["LIVE_ENCODE"]), timeout=timeout)
    try:
        for resp in call:
            for ev in resp.events:
                d = json_format.MessageToDict(ev.job.progress_details)
                if d.get("live_job_id") != live_id:
                    continue
                state = str(d.get("live_state", ""))
                if state in states:
                    return state
                if state == "FAILED" and "FAILED" not in states:
                    raise BenchError(f"live job {live_id} FAILED: {ev.job.progress_message}")
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise BenchError(f"live job {live_id} did not reach {'/'.join(sorted(states))} "
                             f"within {timeout:.0f} s") from None
        raise BenchError(f"WatchJobs: {e.code().name}: {e.details()}") from None
    finally:
        call.cancel()
    raise BenchError(f"WatchJobs ended before live job {live_id} reached {'/'.join(sorted(states))}")


def worker_usage(proc: subprocess.Popen[bytes], out: Path, count: int) -> tuple[float, float, int]:
    """Ask the worker for its getrusage (SIGUSR1); (self, children, events so far)."""
    os.kill(proc.pid, signal.SIGUSR1)
    ev, n = wait_event(out, lambda e: e["event"] == "rusage", 10, proc, "live worker", skip=count)
    return float(ev["self"]), float(ev["children"]), n


def part_live(args: argparse.Namespace, tmp: Path, rends: list[ladder.Rendition]) -> LiveResult:
    storage = tmp / "storage"
    storage.mkdir(parents=True)
    server = bc.ServerProc(tmp / "bench.db", log_path=tmp / "server.log",
                           extra_args=["--storage-root", str(storage), "--data-dir", str(tmp)])
    channel = None
    try:
        server.start()
        wout = tmp / "worker.out"
        worker = spawn("live worker", [sys.executable, "-c", WORKER_CODE, server.addr, str(storage)], wout,
                       tmp / "worker.log")
        ready, nev = wait_event(wout, lambda e: e["event"] == "ready", 60, worker, "live worker")
        port = int(ready["port"])
        channel = grpc.insecure_channel(server.addr, options=bc.CHANNEL_OPTIONS)
        live = live_job_service_pb2_grpc.LiveJobServiceStub(channel)
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        lj = live.CreateLiveJob(lsvc.CreateLiveJobRequest(live_job=lres.LiveJob(
            bucket="bench", destination="live-1", job_template_id=TEMPLATE_ID,
            input=lres.LiveInput(server_type=lres.LiveInput.RTMP))), timeout=10)
        out_dir = storage / Path(lj.storage_master_file).parent
        watch = StateWatch(jobs, lj.id)
        live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=True), timeout=10)
        until(jobs, lj.id, {"AWAITING_INPUT"}, 60)

        load = bc.OtherLoad().start()
        w_self0, w_child0, nev = worker_usage(worker, wout, nev)
        s_cpu0 = server.cpu_seconds()
        pub = publisher(tmp, "publisher", f"rtmp://127.0.0.1:{port}/live/{lj.stream_key}", args.seconds, True)
        paths = {r.name: out_dir / r.name / ladder.MEDIA_PLAYLIST for r in rends}
        seen: dict[str, list[SegSeen]] = {r.name: [] for r in rends}
        sig: dict[str, Any] = {}
        ended = {r.name: False for r in rends}
        deadline = time.monotonic() + args.seconds + 90
        next_poll = time.monotonic()
        while not all(ended.values()):
            for name, path in paths.items():
                try:
                    st = path.stat()
                except OSError:
                    continue
                stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
                if stamp == sig.get(name):
                    continue
                pl = ladder.read_playlist(path)
                now = time.time()  # after the read: the segment was there by now (conservative)
                if pl is None:
                    continue
                sig[name] = stamp
                end = 0.0
                for i, seg in enumerate(pl.segments):
                    end += seg.duration
                    if i >= len(seen[name]):
                        seen[name].append(SegSeen(name, seg.index, end, now))
                ended[name] = pl.ended
            if poll(pub) is not None and pub.returncode != 0:
                raise BenchError(f"the publisher failed (exit {pub.returncode}): {tail(tmp / 'publisher.log')}")
            if time.monotonic() > deadline:
                raise BenchError(f"the playlists were not closed (ENDLIST) {args.seconds + 90:.0f} s after the "
                                 f"publisher started; segments seen: "
                                 + ", ".join(f"{k} {len(v)}" for k, v in seen.items()))
            next_poll += POLL_S
            time.sleep(max(0.0, next_poll - time.monotonic()))
        codes = reap([pub], 60, "the publisher")
        pub_code, pub_cpu = codes[pub.pid]
        if pub_code != 0:
            raise BenchError(f"the publisher failed (exit {pub_code}): {tail(tmp / 'publisher.log')}")
        pev = {e["event"]: e for e in events(tmp / "publisher.out")}
        if "start" not in pev or "done" not in pev:
            raise BenchError(f"the publisher printed no start/done: {tail(tmp / 'publisher.log')}")
        # The child has ended (ENDLIST) and the worker waited for it: RECONNECTING.
        until(jobs, lj.id, {"RECONNECTING", "STOPPING", "STOPPED"}, 60)
        w_self1, w_child1, nev = worker_usage(worker, wout, nev)
        s_cpu1 = server.cpu_seconds()
        other = load.stop()
        live.SetLiveEncoding(lsvc.SetLiveEncodingRequest(stream_key=lj.stream_key, online=False), timeout=10)
        until(jobs, lj.id, {"STOPPED"}, 60)
        watch.join(30)
        os.kill(worker.pid, signal.SIGTERM)
        reap([worker], 40, "the live worker")

        start_wall = float(pev["start"]["wall"])
        segs = [s for v in seen.values() for s in v]
        for s in segs:
            s.latency_s = s.first_seen - (start_wall + s.end_media_s)
        media_s = float(pev["done"]["seconds"])
        lengths = {n: playlist_seconds(p)[0] for n, p in paths.items()}
        for n, sec in lengths.items():
            if not seen[n]:
                raise BenchError(f"rendition {n}: no segment appeared")
            if abs(sec - media_s) > 1.0:
                print(f"  note: rendition {n}'s playlist holds {sec:.2f} s of {media_s:.2f} s published")
        return LiveResult(segs, media_s, float(pev["done"]["late_p99"]), float(pev["done"]["late_max"]),
                          w_self1 - w_self0, w_child1 - w_child0, s_cpu1 - s_cpu0, pub_cpu, other,
                          playlists=lengths, watch_latencies=watch.latencies, watch_states=watch.states)
    finally:
        if channel is not None:
            channel.close()
        stop_children()
        server.stop()


# -- 2. CPU: the ingest child against the ffmpeg CLI -------------------------------------------------


def ensure_ffmpeg(tmp: Path) -> tuple[str, float]:
    """The ffmpeg CLI's path; installs Debian's package when it is missing.
    Returns (path, seconds the install took, 0 when none)."""
    exe = shutil.which("ffmpeg")
    if exe:
        return exe, 0.0
    print("the ffmpeg CLI is not installed: installing Debian's ffmpeg (apt-get install -y "
          "--no-install-recommends ffmpeg), only to compare against in part 2 ...", flush=True)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BenchError("cannot install ffmpeg (needs root and apt-get); install it, or run with --no-ffmpeg")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log = tmp / "apt-get.log"
    t0 = time.monotonic()
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "ffmpeg"]
    with open(log, "ab") as f:
        ok = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env).returncode == 0
        if not ok:  # stale package lists
            subprocess.run(["apt-get", "update"], stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
            ok = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env).returncode == 0
    exe = shutil.which("ffmpeg")
    if not ok or exe is None:
        raise BenchError(f"apt-get install ffmpeg failed: {tail(log)}; install it, or run with --no-ffmpeg")
    dt = time.monotonic() - t0
    print(f"installed {exe} in {dt:.0f} s", flush=True)
    return exe, dt


def ladder_cmd(flv: Path, out: Path, rends: list[ladder.Rendition], seg_s: float) -> list[str]:
    return ladder.command(str(flv), out, rends, fmt="flv", segment_seconds=seg_s, realtime=True,
                          stats_interval=STATS_INTERVAL_S)


def ffmpeg_cmd(exe: str, flv: Path, out: Path, rends: list[ladder.Rendition], seg_s: float) -> list[str]:
    """The ffmpeg CLI doing the ingest child's ladder (see ladder._Ladder)."""
    keyint = max(1, round(FPS * seg_s))
    hls_time = max(0.1, seg_s - 0.5 / FPS)
    n = len(rends)
    graph = f"[0:v]split={n}" + "".join(f"[s{i}]" for i in range(n)) + ";" + ";".join(
        f"[s{i}]scale={r.width}:{r.height}:flags=bilinear,setsar=1,format=yuv420p[v{i}]" for i, r in enumerate(rends))
    cmd = [exe, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-re", "-i", str(flv),
           "-filter_complex", graph]
    for i in range(n):
        cmd += ["-map", f"[v{i}]"]
    for i in range(n):
        cmd += ["-map", "0:a:0"]
    cmd += ["-c:v", "libx264", "-preset", ladder.X264_PRESET, "-tune", "zerolatency"]
    for i, r in enumerate(rends):
        cmd += [f"-b:v:{i}", f"{r.video_kbps}k", f"-x264-params:v:{i}",
                f"keyint={keyint}:min-keyint={keyint}:scenecut=0:vbv-maxrate={r.video_kbps}"
                f":vbv-bufsize={2 * r.video_kbps}"]
    cmd += ["-c:a", "aac", "-ar", str(ladder.AUDIO_RATE), "-ac", "2"]
    for i, r in enumerate(rends):
        cmd += [f"-b:a:{i}", f"{r.audio_kbps}k"]
    var_map = " ".join(f"v:{i},a:{i},name:{r.name}" for i, r in enumerate(rends))
    cmd += ["-f", "hls", "-hls_time", f"{hls_time:.6f}", "-hls_list_size", "0", "-hls_playlist_type", "event",
            "-hls_segment_type", "mpegts", "-hls_flags", "independent_segments+program_date_time+temp_file",
            "-master_pl_name", ladder.MASTER_PLAYLIST,
            "-hls_segment_filename", str(out / "%v" / ladder.SEGMENT_TEMPLATE),
            "-var_stream_map", var_map, str(out / "%v" / ladder.MEDIA_PLAYLIST)]
    return cmd


@dataclass
class CpuRun:
    side: str
    rep: int
    wall: float
    cpu: float
    media_s: float

    @property
    def per_media_s(self) -> float:
        return self.cpu / self.media_s

    @property
    def cores(self) -> float:
        return self.cpu / self.wall


def check_ladder_output(out: Path, rends: list[ladder.Rendition], media_s: float, side: str) -> None:
    for r in rends:
        sec, ended = playlist_seconds(out / r.name / ladder.MEDIA_PLAYLIST)
        if not ended or abs(sec - media_s) > max(0.5, 0.03 * media_s):
            raise BenchError(f"{side}: rendition {r.name}'s playlist holds {sec:.2f} s of {media_s:.2f} s"
                             f"{'' if ended else ' and has no ENDLIST'}")


def part_cpu(args: argparse.Namespace, tmp: Path, flv: Path, media_s: float, rends: list[ladder.Rendition],
             seg_s: float, ffmpeg: str | None) -> tuple[list[CpuRun], float]:
    sides: list[tuple[str, Callable[[Path], list[str]]]] = [
        ("ingest child", lambda out: ladder_cmd(flv, out, rends, seg_s))]
    if ffmpeg:
        sides.append(("ffmpeg CLI", lambda out: ffmpeg_cmd(ffmpeg, flv, out, rends, seg_s)))
    d = tmp / "cpu"
    d.mkdir()
    print("  ingest child: " + " ".join(ladder_cmd(flv, d / "child-N", rends, seg_s)[1:]))
    if ffmpeg:
        print("  ffmpeg CLI:   " + " ".join(ffmpeg_cmd(ffmpeg, flv, d / "ffmpeg-N", rends, seg_s)))
    runs: list[CpuRun] = []
    load = bc.OtherLoad().start()
    for rep in range(1, args.reps + 1):
        order = sides if rep % 2 else list(reversed(sides))
        for side, build in order:
            tag = "child" if side == "ingest child" else "ffmpeg"
            out = d / f"{tag}-{rep}"
            for r in rends:
                (out / r.name).mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            proc = spawn(side, build(out), d / f"{tag}-{rep}.out", d / f"{tag}-{rep}.log")
            code, cpu = reap([proc], media_s * 3 + 60, side)[proc.pid]
            wall = time.perf_counter() - t0
            if code != 0:
                raise BenchError(f"{side} exited with code {code}: {tail(d / f'{tag}-{rep}.log')}")
            check_ladder_output(out, rends, media_s, side)
            runs.append(CpuRun(side, rep, wall, cpu, media_s))
            print(f"  {side} rep {rep}: {cpu:.2f} CPU-s in {wall:.1f} s wall = {cpu / media_s:.3f} CPU-s per "
                  "media s", flush=True)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
    return runs, load.stop()


# -- 3. capacity -----------------------------------------------------------------------------------


@dataclass
class CapRun:
    k: int
    kept: bool
    worst_wall_ratio: float  # max over children of wall / media
    max_latency_ms: float
    cores: float
    other_cores: float
    why: str = ""


def part_capacity(args: argparse.Namespace, tmp: Path, flv: Path, frames: int, rends: list[ladder.Rendition],
                  seg_s: float) -> list[CapRun]:
    out: list[CapRun] = []
    for k in range(1, args.max_jobs + 1):
        d = tmp / f"cap-{k}"
        d.mkdir()
        load = bc.OtherLoad().start()
        t0 = time.perf_counter()
        procs = [spawn(f"ingest child {i}", ladder_cmd(flv, d / f"job{i}", rends, seg_s), d / f"job{i}.out",
                       d / f"job{i}.log") for i in range(k)]
        codes = reap(procs, args.clip_seconds * 4 + 60, f"{k} ingest children")
        wall = time.perf_counter() - t0
        other = load.stop()
        ratios, lat, problems = [], 0.0, []
        cpu = 0.0
        for i, p in enumerate(procs):
            code, c = codes[p.pid]
            cpu += c
            evs = events(d / f"job{i}.out")
            by = {e["event"]: e for e in evs}
            if code != 0 or "ended" not in by or "connected" not in by:
                raise BenchError(f"ingest child {i} of {k} failed (exit {code}): "
                                 f"{by.get('ended', {}).get('message') or tail(d / f'job{i}.log')}")
            end = by["ended"]
            media = float(end.get("duration_s") or 0.0)
            stats = [e for e in evs if e["event"] == "statistics"]
            if stats:
                media = media or float(stats[-1].get("media_s") or 0.0)
                n_frames = int(stats[-1].get("frames") or 0)
                lat = max([lat] + [float(e.get("latency_ms") or 0.0) for e in stats])
            else:
                n_frames = 0
            w = float(end["time"]) - float(by["connected"]["time"])
            ratio = w / media if media else float("inf")
            ratios.append(ratio)
            if end.get("reason") != "eof":
                problems.append(f"child {i} ended {end.get('reason')}: {end.get('message')}")
            if any(e["event"] == "lagging" for e in evs):
                problems.append(f"child {i} reported lagging")
            if n_frames < frames - 1:
                problems.append(f"child {i} encoded {n_frames} of {frames} frames")
            if abs(ratio - 1) > REALTIME_TOLERANCE:
                problems.append(f"child {i}: {media:.2f} media s in {w:.2f} wall s")
        run = CapRun(k, not problems, max(ratios), lat, cpu / wall, other, "; ".join(problems))
        out.append(run)
        print(f"  k={k}: {'kept' if run.kept else 'NOT kept'} (worst wall/media {run.worst_wall_ratio:.3f}, "
              f"max latency {lat:.0f} ms, {run.cores:.2f} cores)" + (f": {run.why}" if run.why else ""), flush=True)
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)
        if not run.kept:
            break
    return out


# -- the run ------------------------------------------------------------------------------------------


def bench(args: argparse.Namespace, tmp: Path) -> int:
    t_start = time.monotonic()
    ffmpeg, install_s = (None, 0.0) if args.no_ffmpeg else ensure_ffmpeg(tmp)
    if args.wait_quiet > 0:
        bc.wait_for_quiet(args.wait_quiet)
    rends = renditions()
    seg_s = segment_seconds(BUILT_IN[TEMPLATE_ID])
    import av

    ff_version = ""
    if ffmpeg:
        ff_version = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    print(f"template {TEMPLATE_ID}: " + ", ".join(f"{r.name} {r.width}x{r.height} {r.video_kbps}k + aac {r.audio_kbps}k"
                                                  for r in rends)
          + f", {seg_s:g} s segments; input {WIDTH}x{HEIGHT} {FPS} fps {VIDEO_KBPS}k (synthetic publisher); "
          f"{os.cpu_count()} cores; PyAV {av.__version__} (FFmpeg {av.ffmpeg_version_info})"
          + (f"; ffmpeg CLI: {ff_version}" + (" (installed by this run, for the comparison only)" if install_s else "")
             if ffmpeg else "; ffmpeg CLI: not used (--no-ffmpeg)"), flush=True)

    # The recorded stream for parts 2 and 3.
    flv = tmp / "publisher-720p30.flv"
    rec = publisher(tmp, "recorder", str(flv), args.clip_seconds, False)
    code, _ = reap([rec], args.clip_seconds * 10 + 120, "recording the FLV")[rec.pid]
    done = {e["event"]: e for e in events(tmp / "recorder.out")}.get("done")
    if code != 0 or done is None:
        raise BenchError(f"recording the FLV failed (exit {code}): {tail(tmp / 'recorder.log')}")
    clip_s, clip_frames = float(done["seconds"]), int(done["video_frames"])
    print(f"recorded {clip_s:g} s ({clip_frames} frames, {flv.stat().st_size / 1e6:.1f} MB) of the publisher's "
          "stream to an FLV file", flush=True)

    print(f"\n1. ingest -> playlist: server + live worker + publisher ({args.seconds:g} s, real time)", flush=True)
    lr = part_live(args, tmp, rends)
    print(f"\n2. CPU per live job: the ingest child vs the ffmpeg CLI, {clip_s:g} s of media each, "
          f"{args.reps} rep(s)" + ("" if ffmpeg else " (no ffmpeg baseline: --no-ffmpeg)"), flush=True)
    cpu_runs, cpu_other = part_cpu(args, tmp, flv, clip_s, rends, seg_s, ffmpeg)
    print(f"\n3. capacity: k ingest children at once, each paced from the FLV ({clip_s:g} s)", flush=True)
    cap = part_capacity(args, tmp, flv, clip_frames, rends, seg_s)

    # -- report
    lats = sorted(s.latency_s for s in lr.segments)
    print()
    print(f"ingest -> playlist latency per segment (first seen by a {POLL_S * 1000:.0f} ms poll; publisher "
          f"start + segment end media time as the reference):")
    rows = []
    for r in rends:
        v = sorted(s.latency_s for s in lr.segments if s.rendition == r.name)
        rows.append([r.name, len(v), *(f"{x:.3f}" for x in (bc.pct(v, 50), bc.pct(v, 99), v[-1], v[0])),
                     f"{lr.playlists.get(r.name, 0):.1f}"])
    rows.append(["all", len(lats), *(f"{x:.3f}" for x in (bc.pct(lats, 50), bc.pct(lats, 99), lats[-1], lats[0])),
                 f"{lr.media_s:.1f} published"])
    print(bc.table(["rendition", "segments", "p50 s", "p99 s", "max s", "min s", "media s"], rows))
    first = [s for s in lr.segments if s.index == min(x.index for x in lr.segments)]
    last_end = max(s.end_media_s for s in lr.segments)
    last = [s for s in lr.segments if s.end_media_s == last_end]
    print(f"first segment: {', '.join(f'{s.rendition} {s.latency_s:.3f} s' for s in first)} (includes the "
          f"ingest child's start); last (closed by the disconnect): "
          f"{', '.join(f'{s.rendition} {s.latency_s:.3f} s' for s in last)}; publisher frames sent late vs "
          f"its schedule: p99 {lr.pub_late_p99 * 1000:.0f} ms, max {lr.pub_late_max * 1000:.0f} ms")
    worker_cpu = lr.worker_self_cpu + lr.worker_child_cpu
    print(f"part 1: {bc.other_load_note(lr.other_cores)}")

    print()
    child = [r for r in cpu_runs if r.side == "ingest child"]
    ff = [r for r in cpu_runs if r.side == "ffmpeg CLI"]
    print(bc.table(["side", "rep", "wall s", "CPU s", "CPU-s per media s", "cores"],
                   [[r.side, r.rep, r.wall, r.cpu, r.per_media_s, r.cores] for r in cpu_runs]))
    child_rate = sum(r.cpu for r in child) / sum(r.media_s for r in child)
    ff_rate = sum(r.cpu for r in ff) / sum(r.media_s for r in ff) if ff else float("nan")
    print(f"part 2: {bc.other_load_note(cpu_other)}")

    print()
    print(bc.table(["k jobs", "kept", "worst wall/media", "max latency ms", "cores used", "other cores"],
                   [[c.k, "yes" if c.kept else "NO", c.worst_wall_ratio, c.max_latency_ms, c.cores, c.other_cores]
                    for c in cap]))
    kept = max([c.k for c in cap if c.kept], default=0)
    print(f"part 3: {bc.other_load_note(max(c.other_cores for c in cap))} (worst k)")

    print()
    summary: list[list[Any]] = [
        ["ingest->playlist p50 / p99", f"{bc.pct(lats, 50):.3f} / {bc.pct(lats, 99):.3f} s", "", "", ""],
        ["ladder CPU (ingest child)", f"{child_rate:.3f} CPU-s/s", "ffmpeg CLI" if ff else "(none: --no-ffmpeg)",
         f"{ff_rate:.3f} CPU-s/s" if ff else "", child_rate / ff_rate if ff else float("nan")],
        ["live worker path CPU (part 1)", f"{worker_cpu / lr.media_s:.3f} CPU-s/s", "", "", ""],
        ["capacity (720p30 -> 360p+240p)", f"{'>= ' if kept >= args.max_jobs else ''}{kept} live job(s)", "", "",
         ""],
    ]
    print(bc.table(["measured", "value", "baseline (same run)", "baseline value", "ratio"], summary))
    print(f"live worker path (part 1, per media second): worker process {lr.worker_self_cpu / lr.media_s:.3f} "
          f"(RTMP front door, SDK, reports) + its ingest child {lr.worker_child_cpu / lr.media_s:.3f} = "
          f"{worker_cpu / lr.media_s:.3f} CPU-s/s; beside it: server {lr.server_cpu / lr.media_s:.3f}, "
          f"publisher {lr.publisher_cpu / lr.media_s:.3f}")
    print()
    line, _ = bc.target_line("ingest->playlist p99", bc.pct(lats, 99), "<=", TARGET_P99_S, " s",
                             note=f"{len(lats)} segments, {lr.media_s:g} s published")
    print(line)
    wl = sorted(lr.watch_latencies)
    print(f"live state changes seen on WatchJobs: {' -> '.join(lr.watch_states)}; commit -> received "
          f"p50 {bc.pct(wl, 50) * 1000:.1f} ms, max {max(wl, default=float('nan')) * 1000:.1f} ms")
    line, _ = bc.target_line("live state change -> WatchJobs, max", max(wl, default=float("inf")), "<=",
                             TARGET_WATCH_S, " s", note=f"{len(wl)} state changes, in order")
    print(line)
    if ff:
        line, _ = bc.target_line("ladder CPU / ffmpeg CLI", child_rate / ff_rate, "<=", TARGET_CPU_RATIO,
                                 note=f"{child_rate:.3f} vs {ff_rate:.3f} CPU-s per media s")
        print(line)
    else:
        print(f"TARGET ladder CPU / ffmpeg CLI: not measured (--no-ffmpeg); the ingest child used "
              f"{child_rate:.3f} CPU-s per media s")
    at_least = "at least " if kept >= args.max_jobs else ""
    limit = f" (k = {args.max_jobs}, the most tried: --max-jobs, was kept)" if at_least else \
        f" (k = {kept + 1} was not)"
    print(f"capacity: {at_least}{kept} live job(s) (720p30 -> 360p+240p) kept in real time on "
          f"{os.cpu_count()} cores{limit}")
    took = time.monotonic() - t_start
    print(f"run time {took:.0f} s" + (f" (of which {install_s:.0f} s installing ffmpeg)" if install_s else ""))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 15 s published, a 10 s recording, 1 repetition per side")
    ap.add_argument("--seconds", type=float, default=None, help="part 1: seconds published (full 60, quick 15)")
    ap.add_argument("--clip-seconds", type=float, default=None,
                    help="parts 2 and 3: length of the recorded FLV (full 20, quick 10)")
    ap.add_argument("--reps", type=int, default=None, help="part 2: repetitions per side (full 2, quick 1)")
    ap.add_argument("--max-jobs", type=int, default=6, help="part 3: the largest k tried (default 6)")
    ap.add_argument("--no-ffmpeg", action="store_true", help="skip part 2's ffmpeg CLI baseline (and its install)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, FLV, playlists)")
    bc.add_quiet_arg(ap)
    args = ap.parse_args()
    defaults = {"seconds": 15.0, "clip_seconds": 10.0, "reps": 1} if args.quick else \
        {"seconds": 60.0, "clip_seconds": 20.0, "reps": 2}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.seconds < 4 or args.clip_seconds < 4:
        ap.error("--seconds and --clip-seconds must be at least 4")
    if args.reps < 1 or args.max_jobs < 1:
        ap.error("--reps and --max-jobs must be positive")

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    tmp = Path(tempfile.mkdtemp(prefix="mediajobs-bench-live-"))
    failed = True
    try:
        rc = bench(args, tmp)
        failed = rc != 0
        return rc
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (BenchError, grpc.RpcError, RuntimeError, OSError, subprocess.SubprocessError) as e:
        msg = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.RpcError) and hasattr(e, "code") else str(e)
        print(f"ERROR: the benchmark failed: {type(e).__name__}: {msg}", file=sys.stderr)
        return 1
    finally:
        stop_children()
        bc.cleanup_tmp(tmp, keep=args.keep, failed=failed, what="logs, FLV and playlists")


if __name__ == "__main__":
    raise SystemExit(main())
