"""The reference live worker (`mediajobs worker --live`): leases LIVE_ENCODE
sessions, takes their publishers on one RTMP port, and writes each
session's HLS ladder under the storage root.

    from mediajobs.client.live.worker import LiveWorker
    LiveWorker("127.0.0.1:50051", Path("/srv/media"), rtmp_listen="0.0.0.0:1935").run_sync()

Built on the worker SDK: each leased session is one async handler run.
For a session it

1. reports AWAITING_INPUT (WorkerService.ReportLiveStatus, fenced by the
   lease token) and waits for a publisher;
2. lets a publisher in only when the server says its stream key belongs to
   a session this worker holds (WorkerService.AuthorizePublish, asked by the
   RTMP front door at `publish`, before any media is accepted);
3. starts the ingest child (`ladder.py`, a subprocess: decode once, encode
   the renditions, one HLS muxer) and feeds it the publisher's FLV tags;
   reports LIVE with the stream's statistics, then every `report_interval`
   the measured statistics and each output's segment counter;
4. when the publisher drops: RECONNECTING, and a publisher that comes back
   within the reconnect window continues the same playlists (a new child
   with `--continue`: one DISCONTINUITY); after the window: stops;
5. stops on SetLiveEncoding(online=false), the finish time, the maximum
   duration or an abort: the child closes the playlists (ENDLIST) and the
   job completes with the manifests, the duration and the segment counts;
6. kills the child at once when the lease is lost, so a worker that lost
   its session never writes after the next one starts (the next worker
   continues the same playlists).

LIVE_CLIP jobs (CreateLiveClip) are run here too: clips.py cuts a window of
a rendition's playlist into a VOD playlist and an MP4 by stream copy.

HLS input (server type HLS) has no publisher: the child pulls the playlist
(a path under the storage root), paced to real time, and the session stops
at its end; an http(s) playlist is fetched by hls_pull.py (every URL checked
against private addresses) and fed to the child as MPEG-TS.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from mediajobs.v1 import live_resources_pb2 as lres
from mediajobs.v1 import worker_service_pb2 as wsvc

from ..media import PROJECTS_DIR
from ..worker import JobCancelled, JobContext, Worker
from . import clips, hls_pull, ladder
from .rtmp import PublishRefused, PublishRequest, RtmpServer, flv_header, flv_tag

log = logging.getLogger("mediajobs.live.worker")

JOB_TYPE = "LIVE_ENCODE"
CLIP_JOB_TYPE = "LIVE_CLIP"
State = lres.LiveJob.State
# How long the child may take to close its playlists after SIGTERM before
# it is killed.
STOP_GRACE_S = 15.0
# Buffered FLV bytes waiting for the child before the publisher is dropped
# (the encoder cannot keep up).
MAX_BUFFERED_BYTES = 32 * 1024 * 1024
# The most a standby publisher keeps of its current group of pictures.
MAX_GOP_BYTES = 8 * 1024 * 1024
STATS_INTERVAL_S = 2.0
# How long a publisher of a live job started a moment ago may wait for its
# session to reach this worker.
SESSION_GRACE_S = 3.0
# Silence after which an SRT publisher counts as gone.
SRT_IDLE_S = 3.0


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:1935, 0.0.0.0:1935)")
    return host.strip("[]"), int(port)


@dataclass
class _Child:
    proc: asyncio.subprocess.Process
    reader: asyncio.Task[None] | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    end: dict[str, Any] = field(default_factory=dict)


class _Session:
    """One leased LIVE_ENCODE job."""

    def __init__(self, worker: "LiveWorker", ctx: JobContext) -> None:
        self.w = worker
        self.ctx = ctx
        p = ctx.params
        self.live_job_id = str(p.get("live_job_id", ""))
        self.out_rel = str(p.get("output_dir", ""))
        # The job's paths are relative to its project's area of the storage root.
        self.root = ctx.area_root(worker.storage_root)
        self.out_dir = self.root / self.out_rel
        self.renditions = [ladder.Rendition.from_dict({k: (int(v) if isinstance(v, float) else v)
                                                       for k, v in r.items()}) for r in p.get("renditions", [])]
        self.segment_s = float(p.get("segment_seconds", 2.0))
        self.server_type = str(p.get("server_type", "RTMP"))
        self.file_path = str(p.get("file_path", ""))
        self.state: int = State.STARTING
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.child: _Child | None = None
        # Connected publishers by role ("primary", "backup": input class
        # STANDARD has both); `active` feeds the child.
        self.publishers: dict[str, _Publisher] = {}
        self.active: _Publisher | None = None
        self.key_generation = -1
        self.srt_port = int(p.get("srt_port", 0) or 0)
        self.srt_passphrase = ""  # from the server's reply, for the SRT listener only
        self.srt: _SrtIngest | None = None
        self.finish_at = 0.0  # wall clock, 0: none
        self.reconnect_window = 60.0
        self.max_duration = 12 * 3600.0
        self.started = time.monotonic()
        self.reconnect_deadline = 0.0
        self.segments: dict[str, int] = {r.name: 0 for r in self.renditions}
        self.last_segment: dict[str, float] = {}
        self.duration_s = 0.0
        self.publishes = 0
        self.statistics = lres.LiveStatistics()
        self.stats_dirty = False
        self.outputs_dirty = False
        self.stopping = ""

    # -- the server ---------------------------------------------------------------------

    async def report(self, state: int = 0, child_status: str = "", message: str = "") -> wsvc.ReportLiveStatusResponse:
        req = wsvc.ReportLiveStatusRequest(job_id=self.ctx.job_id, lease_token=self.ctx.lease_token,
                                           live_state=state, child_status=child_status,  # type: ignore[arg-type]
                                           message=message[:1024])
        if self.stats_dirty:
            req.statistics.CopyFrom(self.statistics)
            self.stats_dirty = False
        if self.outputs_dirty:
            for i, r in enumerate(self.renditions, start=1):
                o = req.outputs.add(output_id=i, counter=self.segments[r.name], encoder_id=self.w.encoder_id,
                                    status=lres.LiveOutput.ENCODING if self.child is not None
                                    else lres.LiveOutput.WAITING)
                if r.name in self.last_segment:
                    o.last_segment_time.FromNanoseconds(int(self.last_segment[r.name] * 1e9))
            self.outputs_dirty = False
        try:
            reply = await self.ctx.stub.ReportLiveStatus(req, timeout=10)
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND):
                await self.kill_child()  # fenced off: never write after the next worker starts
                raise JobCancelled("lease lost") from None
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION and state:
                log.warning("session %s: %s", self.ctx.job_id, e.details())
                self.state = State.STOPPING
                return wsvc.ReportLiveStatusResponse(stop_requested=True)
            raise
        if state:
            self.state = state
        self.apply(reply)
        return reply

    def apply(self, reply: wsvc.ReportLiveStatusResponse) -> None:
        if reply.live_state:
            self.state = reply.live_state
        if reply.srt_passphrase:
            self.srt_passphrase = reply.srt_passphrase
        if reply.HasField("finish_time"):
            self.finish_at = reply.finish_time.ToNanoseconds() / 1e9
        self.reconnect_window = reply.reconnect_window.seconds + reply.reconnect_window.nanos / 1e9
        if reply.max_duration.seconds:
            self.max_duration = float(reply.max_duration.seconds)
        if self.key_generation >= 0 and reply.key_generation != self.key_generation and self.publishers:
            self.events.put_nowait(("key_reset", None))
        self.key_generation = reply.key_generation
        if reply.cancel_requested:
            self.stopping = self.stopping or "ABORTED"
        elif reply.stop_requested:
            self.stopping = self.stopping or "STOP_REQUESTED"

    # -- the child ----------------------------------------------------------------------

    async def start_child(self, input_: str, fmt: str, realtime: bool = False) -> _Child:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        cmd = ladder.command(input_, self.out_dir, self.renditions, fmt=fmt, segment_seconds=self.segment_s,
                             continue_playlists=True, stats_interval=STATS_INTERVAL_S, realtime=realtime,
                             python=self.w.python)
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.PIPE if input_ == "pipe:0" else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        child = _Child(proc)
        child.reader = asyncio.create_task(self._read_child(child))
        self.child = child
        self.publishes += 1
        return child

    async def _read_child(self, child: _Child) -> None:
        assert child.proc.stdout is not None
        try:
            async for line in child.proc.stdout:
                ev = ladder.parse_event(line)
                if ev is None:
                    continue
                kind = ev["event"]
                if kind in ("connected", "statistics"):
                    self._statistics(ev)
                    if kind == "connected":
                        self.events.put_nowait(("connected", ev))
                elif kind == "segment":
                    name = str(ev.get("rendition", ""))
                    if name in self.segments:
                        self.segments[name] += 1
                        self.last_segment[name] = float(ev.get("time", time.time()))
                        self.outputs_dirty = True
                elif kind == "lagging":
                    self.events.put_nowait(("lagging", ev))
                elif kind == "ended":
                    child.end = ev
        finally:
            await child.proc.wait()
            self.duration_s += float(child.end.get("duration_s") or 0.0)
            child.ended.set()
            self.events.put_nowait(("child_ended", child))

    def _statistics(self, ev: dict[str, Any]) -> None:
        f = ev.get("input") or {}
        s = self.statistics
        for name, key, kind in (("width", "width", int), ("height", "height", int),
                                ("frame_rate", "frame_rate", float), ("video_codec_id", "video_codec_id", int),
                                ("video_data_rate", "video_data_rate", float),
                                ("audio_codec_id", "audio_codec_id", int),
                                ("audio_data_rate", "audio_data_rate", float),
                                ("audio_sample_rate", "audio_sample_rate", int),
                                ("audio_sample_size", "audio_sample_size", int),
                                ("audio_channels", "audio_channels", int), ("stereo", "stereo", bool),
                                ("encoder", "encoder", str), ("video_codec", "video_codec", str),
                                ("audio_codec", "audio_codec", str)):
            v = f.get(key)
            if v is not None:
                with contextlib.suppress(TypeError, ValueError):
                    setattr(s, name, kind(v))
        for name, key in (("measured_video_kbps", "video_kbps"), ("measured_audio_kbps", "audio_kbps"),
                          ("measured_fps", "fps")):
            v = ev.get(key)
            if isinstance(v, (int, float)):
                setattr(s, name, float(v))
        if isinstance(ev.get("latency_ms"), (int, float)):
            s.latency_ms = int(ev["latency_ms"])
        s.protocol = {"HLS": "hls", "SRT": "srt"}.get(self.server_type, "rtmp")
        self.stats_dirty = True

    def write(self, data: bytes) -> bool:
        """Feed the child; False when it cannot keep up (or is gone)."""
        child = self.child
        if child is None or child.proc.stdin is None or child.proc.stdin.is_closing():
            return False
        transport = child.proc.stdin.transport
        if transport.get_write_buffer_size() > MAX_BUFFERED_BYTES:  # type: ignore[attr-defined]
            return False
        child.proc.stdin.write(data)
        return True

    def end_input(self) -> None:
        child = self.child
        if child is not None and child.proc.stdin is not None and not child.proc.stdin.is_closing():
            child.proc.stdin.close()

    async def stop_child(self) -> None:
        """Close the playlists: SIGTERM, then wait (kill after STOP_GRACE_S)."""
        child = self.child
        if child is None:
            return
        if child.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(child.ended.wait(), STOP_GRACE_S)
        except asyncio.TimeoutError:
            await self.kill_child()

    async def kill_child(self) -> None:
        child = self.child
        if child is None:
            return
        if child.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(child.ended.wait(), 5)

    async def activate(self, pub: "_Publisher") -> None:
        """Feed the child from `pub`: the current child (another publisher's)
        closes first, so only one process ever writes the playlists; a new
        one continues them. `pub` starts at its next keyframe, after its FLV
        header tags."""
        if self.active is not None:
            self.active.active = False
            self.active = None
        old = self.child
        if old is not None and old.proc.returncode is None:
            self.end_input()
            try:
                await asyncio.wait_for(old.ended.wait(), STOP_GRACE_S)
            except asyncio.TimeoutError:
                await self.kill_child()
        await self.start_child("pipe:0", "flv")
        self.write(flv_header())
        for tag in pub.header_tags.values():
            self.write(tag)
        gop = pub.take_gop()
        for tag in gop:
            self.write(tag)
        pub.waiting_keyframe = not gop
        pub.active = True
        self.active = pub

    def result(self) -> dict[str, Any]:
        return {"master": f"{self.out_rel}/{ladder.MASTER_PLAYLIST}",
                "manifests": {r.name: f"{self.out_rel}/{r.name}/{ladder.MEDIA_PLAYLIST}" for r in self.renditions},
                "duration_s": round(self.duration_s, 3), "segments": dict(self.segments),
                "publishes": self.publishes}


def _header_kind(tag_type: int, body: bytes) -> str:
    """What a decoder needs before any frame: onMetaData, the AVC and AAC
    sequence headers ("" for anything else)."""
    if tag_type == 18:
        return "script"
    if tag_type == 9 and len(body) > 1 and body[0] & 0x0F == 7 and body[1] == 0:
        return "avc"
    if tag_type == 8 and len(body) > 1 and body[0] >> 4 == 10 and body[1] == 0:
        return "aac"
    return ""


class _Publisher:
    """The front door's session object for an accepted publisher: while it
    is the session's active one, its FLV tags go into the child; otherwise
    (a STANDARD job's standby ingest) only its header tags are kept, for
    the moment it takes over."""

    def __init__(self, session: _Session, role: str, key: str) -> None:
        self.s = session
        self.role = role
        self.key = key  # in memory only, to drop it: never logged or sent
        self.closed = False
        self.active = False
        self.waiting_keyframe = True
        self.header_tags: dict[str, bytes] = {}
        # A standby's tags since its last keyframe (a media server's "GOP
        # cache"): taking over starts from them, not at the next keyframe.
        self.gop: list[bytes] = []
        self.gop_bytes = 0

    def on_metadata(self, metadata: dict[str, Any]) -> None:
        pass  # the child reads onMetaData from the FLV itself (it is a script tag)

    def on_tag(self, tag_type: int, timestamp_ms: int, body: bytes) -> None:
        if self.closed:
            return
        kind = _header_kind(tag_type, body)
        tag = flv_tag(tag_type, timestamp_ms, body)
        if kind:
            self.header_tags[kind] = tag
        if not self.active:
            if not kind:
                self._keep(tag_type, body, tag)
            return
        if self.waiting_keyframe and not kind:
            if tag_type != 9 or body[:1] == b"" or body[0] >> 4 != 1:
                return  # nothing decodes before a keyframe
            self.waiting_keyframe = False
        if not self.s.write(tag):
            self.closed = True
            self.s.events.put_nowait(("overrun", self))

    def _keep(self, tag_type: int, body: bytes, tag: bytes) -> None:
        if tag_type == 9 and body[:1] and body[0] >> 4 == 1:
            self.gop, self.gop_bytes = [], 0  # a keyframe starts a new group
        elif not self.gop:
            return  # nothing decodes before a keyframe
        self.gop.append(tag)
        self.gop_bytes += len(tag)
        if self.gop_bytes > MAX_GOP_BYTES:
            self.gop, self.gop_bytes = [], 0

    def take_gop(self) -> list[bytes]:
        gop, self.gop, self.gop_bytes = self.gop, [], 0
        return gop

    def on_close(self, reason: str) -> None:
        self.closed = True
        self.s.events.put_nowait(("publisher_closed", self))


class _SrtIngest(asyncio.DatagramProtocol):
    """A live job's SRT ingest: Debian's srt-live-transmit listens on the
    job's port with its passphrase (a caller with another one is rejected by
    the handshake, before any media) and relays the MPEG-TS to a UDP port of
    this process, which feeds the session's ingest process through its pipe.
    Datagrams after silence mean a publisher (again); SRT_IDLE_S of silence
    means it went away."""

    def __init__(self, session: _Session) -> None:
        self.s = session
        self.gateway: asyncio.subprocess.Process | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.last = 0.0
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.announced = False
        self.rejected_at = 0.0
        self.watcher: asyncio.Task[None] | None = None

    async def start(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self.transport = transport  # type: ignore[assignment]
        udp_port = transport.get_extra_info("sockname")[1]
        source = f"srt://{host}:{self.s.srt_port}?mode=listener&passphrase={self.s.srt_passphrase}&latency=120"
        self.gateway = await asyncio.create_subprocess_exec(
            "srt-live-transmit", source, f"udp://127.0.0.1:{udp_port}",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        self.watcher = asyncio.create_task(self._watch_log())

    async def _watch_log(self) -> None:
        assert self.gateway is not None and self.gateway.stderr is not None
        async for line in self.gateway.stderr:
            if b"Incorrect passphrase" in line or b"BADSECRET" in line:
                now = asyncio.get_running_loop().time()
                if now - self.rejected_at >= 1.0:  # its log repeats per packet
                    self.rejected_at = now
                    self.s.events.put_nowait(("srt_rejected", None))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.last = asyncio.get_running_loop().time()
        if self.s.child is not None and self.s.child.proc.stdin is not None and not self.announced:
            self.s.write(data)
            return
        if self.pending_bytes < MAX_GOP_BYTES:
            self.pending.append(data)
            self.pending_bytes += len(data)
        if not self.announced:
            self.announced = True
            self.s.events.put_nowait(("srt_data", None))

    def flush(self) -> None:
        for data in self.pending:
            self.s.write(data)
        self.pending, self.pending_bytes, self.announced = [], 0, False

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.gateway is not None and self.gateway.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.gateway.terminate()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.gateway.wait(), 5)
        if self.watcher is not None:
            self.watcher.cancel()


class LiveWorker:
    def __init__(self, target: str, storage_root: Path, rtmp_listen: str = "127.0.0.1:1935", *, slots: int = 1,
                 lease_duration: float = 30.0, report_interval: float = 1.0, identity: str | None = None,
                 python: str = sys.executable, allow_private_inputs: bool = False,
                 credentials: grpc.ChannelCredentials | None = None, api_key: str | None = None) -> None:
        self.storage_root = storage_root
        self.allow_private_inputs = allow_private_inputs
        self.host, self.requested_port = parse_listen(rtmp_listen)
        self.srt_host = self.host  # SRT listeners bind where the RTMP front door does
        self.report_interval = report_interval
        self.python = python
        self.worker = Worker(target, concurrency=slots, lease_duration=lease_duration, identity=identity,
                             drain_timeout=STOP_GRACE_S + 5, credentials=credentials, api_key=api_key)
        self.worker.register(JOB_TYPE, self._session)
        self.worker.register(CLIP_JOB_TYPE, self._clip)
        self.encoder_id = f"{self.worker.identity}"[:128]
        self.front_door = RtmpServer(self._authorize, self.host, self.requested_port)
        self.sessions: dict[str, _Session] = {}
        self.ready = asyncio.Event()
        self._session_added = asyncio.Event()

    @property
    def port(self) -> int:
        return self.front_door.port

    async def run(self, handle_signals: bool | None = None) -> None:
        await self.front_door.start()
        self.ready.set()
        try:
            await self.worker.run(types=[JOB_TYPE, CLIP_JOB_TYPE], handle_signals=handle_signals)
        finally:
            await self.front_door.close()

    def run_sync(self) -> None:
        asyncio.run(self.run())

    def stop(self, drain_timeout: float | None = None) -> None:
        self.worker.stop(drain_timeout)

    # -- the front door -----------------------------------------------------------------

    async def _ask(self, req: PublishRequest) -> wsvc.AuthorizePublishResponse | None:
        waiting = [s for s in self.sessions.values() if s.server_type != "HLS"]
        if not waiting:
            return None
        try:
            return await waiting[0].ctx.stub.AuthorizePublish(wsvc.AuthorizePublishRequest(
                stream_key=req.stream_key, app=req.app[:64], protocol="rtmp", peer=f"{req.peer[0]}:{req.peer[1]}",
                leases=[wsvc.LeaseRef(job_id=s.ctx.job_id, lease_token=s.ctx.lease_token) for s in waiting]),
                timeout=10)
        except grpc.aio.AioRpcError as e:
            raise PublishRefused(f"cannot check the stream key now ({e.code().name})") from None

    async def _authorize(self, req: PublishRequest) -> _Publisher:
        answer = await self._ask(req)
        if answer is None or answer.reason == "NOT_STARTED":
            # The live job may have been started a moment ago, its session not
            # leased here yet: give it SESSION_GRACE_S before refusing.
            deadline = asyncio.get_running_loop().time() + SESSION_GRACE_S
            while answer is None or answer.reason == "NOT_STARTED":
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                self._session_added.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._session_added.wait(), left)
                answer = await self._ask(req)
        if answer is None:
            raise PublishRefused("no live session runs on this worker: start the live job first "
                                 "(SetLiveEncoding online=true)")
        if not answer.allowed:
            raise PublishRefused(answer.message or answer.reason)
        session = self.sessions.get(answer.job_id)
        if session is None or session.stopping:
            raise PublishRefused("the session is stopping")
        role = "backup" if answer.backup else "primary"
        if role in session.publishers and not session.publishers[role].closed:
            raise PublishRefused(f"the live job's {role} ingest already has a publisher")
        publisher = _Publisher(session, role, req.stream_key)
        session.publishers[role] = publisher
        session.events.put_nowait(("publisher", publisher))
        return publisher

    async def _publisher_came(self, s: _Session, pub: _Publisher) -> None:
        if s.active is None:
            await s.activate(pub)
            reconnect = s.state == State.RECONNECTING
            await s.report(State.LIVE, "RECONNECTED" if reconnect else "CONNECTED", f"{pub.role} publisher connected")
            s.reconnect_deadline = 0.0
        elif pub.role == "primary" and s.active.role == "backup":
            await s.activate(pub)
            await s.report(child_status="RETURNED_TO_PRIMARY", message="the primary ingest is back; encoding it again")
        else:
            await s.report(child_status=f"{pub.role.upper()}_CONNECTED", message=f"{pub.role} ingest on standby")

    async def _publisher_went(self, s: _Session, pub: _Publisher) -> None:
        if s.publishers.get(pub.role) is pub:
            del s.publishers[pub.role]
        if pub is not s.active:
            if not s.stopping:
                await s.report(child_status=f"{pub.role.upper()}_DISCONNECTED", message=f"{pub.role} ingest gone")
            return
        other = next((p for p in s.publishers.values() if not p.closed), None)
        if other is not None and not s.stopping:
            await s.activate(other)
            await s.report(child_status="FAILOVER_TO_BACKUP" if other.role == "backup" else "FAILOVER_TO_PRIMARY",
                           message=f"the {pub.role} ingest dropped; encoding the {other.role}")
            return
        s.active = None
        pub.active = False
        s.end_input()  # the child ends; then RECONNECTING (child_ended)

    async def _feed_hls(self, s: _Session, url: str) -> None:
        """Pull an http(s) HLS input into the session's ingest process,
        segment by segment, each handed over when its start is due (real
        time); a live playlist is reloaded every half target duration, and
        one that brings nothing new for the reconnect window has ended."""
        puller = hls_pull.Puller(url, self.allow_private_inputs)
        loop = asyncio.get_running_loop()
        started: float | None = None
        media_t = 0.0
        last_new = loop.time()
        try:
            while not s.stopping:
                media = await asyncio.to_thread(puller.playlist)
                fresh = puller.new_segments(media)
                for seg in fresh:
                    data = await asyncio.to_thread(puller.segment, seg)
                    if started is None:
                        started = loop.time()
                    due = started + media_t - loop.time()
                    if due > 0:
                        await asyncio.sleep(due)  # pacing to real time
                    if not s.write(data):
                        return
                    media_t += seg.duration
                if fresh:
                    last_new = loop.time()
                elif media.ended or loop.time() - last_new > max(s.reconnect_window, 3 * media.target_duration):
                    return  # all of it was handed over, or the live playlist stopped growing
                await asyncio.sleep(max(0.5, media.target_duration / 2))  # reload interval
        except hls_pull.InputRefused as e:
            s.events.put_nowait(("input_refused", str(e)))
        except OSError as e:
            s.events.put_nowait(("input_refused", f"cannot pull {url[:120]}: {e}"))
        finally:
            s.end_input()  # the ingest process ends; the session then stops (INPUT_ENDED)

    # -- clips --------------------------------------------------------------------------

    def _clip(self, ctx: JobContext) -> dict[str, Any]:
        """A LIVE_CLIP job (a thread of the SDK's pool): see clips.py."""
        p = ctx.params
        area = ctx.area_root(self.storage_root)
        root = area.resolve()
        for key in ("playlist", "output_dir"):
            target = (root / str(p.get(key, ""))).resolve()
            if not str(p.get(key, "")) or not target.is_relative_to(root) or (
                    target.relative_to(root).parts[:1] == (PROJECTS_DIR,)):
                raise clips.ClipError(f"params.{key} must be a path under the storage root")
        return clips.cut(area, str(p["playlist"]), int(p["start_us"]), int(p["end_us"]), str(p["output_dir"]))

    # -- a session ----------------------------------------------------------------------

    async def _session(self, ctx: JobContext) -> dict[str, Any]:
        s = _Session(self, ctx)
        if not s.renditions or not s.live_job_id:
            raise ValueError("not a live session job: params need live_job_id, output_dir and renditions")
        self.sessions[ctx.job_id] = s
        self._session_added.set()
        try:
            return await self._run_session(s)
        finally:
            self.sessions.pop(ctx.job_id, None)
            if s.child is not None and s.child.proc.returncode is None:
                await s.kill_child()
            if s.srt is not None:
                await s.srt.close()

    async def _run_session(self, s: _Session) -> dict[str, Any]:
        ctx = s.ctx
        await s.report(State.AWAITING_INPUT, "WORKER_READY",
                       f"{self.worker.identity} listens on rtmp port {self.port}" if s.server_type != "HLS"
                       else f"{self.worker.identity} pulls {s.file_path}")
        feeder: asyncio.Task[None] | None = None
        if s.server_type == "SRT":
            if shutil.which("srt-live-transmit") is None:
                raise RuntimeError(f"{self.worker.identity} cannot take SRT input: srt-live-transmit is not "
                                   "installed (apt-get install srt-tools)")
            if not s.srt_port or not s.srt_passphrase:
                raise RuntimeError("the SRT session has no port or passphrase (is the server's --live-srt-ingest "
                                   "set?)")
            s.srt = _SrtIngest(s)
            await s.srt.start(self.srt_host)
        if s.server_type == "HLS" and s.file_path.startswith(("http://", "https://")):
            await s.start_child("pipe:0", "mpegts")
            feeder = asyncio.create_task(self._feed_hls(s, s.file_path))
        elif s.server_type == "HLS":
            src = (s.root / s.file_path).resolve()
            if not src.is_relative_to(s.root.resolve()) or not src.is_file() or (
                    src.relative_to(s.root.resolve()).parts[:1] == (PROJECTS_DIR,)):
                s.stopping = "INPUT_NOT_FOUND"
                await s.report(State.STOPPING, "INPUT_NOT_FOUND", f"{s.file_path} is not a playlist under the "
                                                                   "storage root")
            else:
                await s.start_child(str(src), "hls", realtime=True)
        loop = asyncio.get_running_loop()
        next_report = loop.time() + self.report_interval
        while not s.stopping:
            timeout = max(0.0, next_report - loop.time())
            try:
                kind, value = await asyncio.wait_for(s.events.get(), timeout)
            except asyncio.TimeoutError:
                kind, value = "tick", None
            if ctx.cancelled:
                if ctx.cancel_reason == "aborted":
                    s.stopping = "ABORTED"
                    break
                await s.kill_child() if ctx.cancel_reason == "lease lost" else await s.stop_child()
                raise JobCancelled(ctx.cancel_reason)
            if kind == "publisher" and not value.closed:
                await self._publisher_came(s, value)
            elif kind == "publisher_closed":
                await self._publisher_went(s, value)
            elif kind == "connected" and s.server_type == "HLS":
                await s.report(State.LIVE, "CONNECTED", f"pulling {s.file_path}")
            elif kind == "srt_data" and s.srt is not None and s.child is None and not s.stopping:
                await s.start_child("pipe:0", "mpegts")
                s.srt.flush()
                reconnect = s.state == State.RECONNECTING
                await s.report(State.LIVE, "RECONNECTED" if reconnect else "CONNECTED", "SRT publisher connected")
                s.reconnect_deadline = 0.0
            elif kind == "srt_rejected":
                await s.report(child_status="PUBLISH_REJECTED",
                               message="an SRT caller was rejected: incorrect passphrase")
            elif kind == "lagging":
                await s.report(child_status="ENCODER_LAGGING",
                               message=f"the encoder is {value.get('latency_ms')} ms behind the stream")
            elif kind == "overrun":
                await s.report(child_status="ENCODER_LAGGING", message="the encoder fell too far behind; the "
                                                                       "publisher was dropped")
                await self.front_door.drop(value.key)
            elif kind == "input_refused":
                s.stopping = "INPUT_REFUSED"
                await s.report(child_status="INPUT_REFUSED", message=str(value)[:1000])
                break
            elif kind == "key_reset":
                for pub in list(s.publishers.values()):
                    await self.front_door.drop(pub.key)
            elif kind == "child_ended" and value is s.child and value is not None:
                s.child = None
                s.outputs_dirty = True
                if s.server_type == "HLS":
                    s.stopping = "INPUT_ENDED"
                    break
                if value.end.get("reason") == "error":
                    await s.report(child_status="ENCODER_ERROR", message=str(value.end.get("message", ""))[:500])
                if s.state in (State.LIVE, State.AWAITING_INPUT):
                    await s.report(State.RECONNECTING, "DISCONNECTED",
                                   f"the publisher went away; waiting {s.reconnect_window:g} s for it")
                    s.reconnect_deadline = loop.time() + s.reconnect_window
            if s.srt is not None and s.child is not None and loop.time() - s.srt.last > SRT_IDLE_S:
                s.end_input()  # the SRT publisher went quiet: the child ends, then RECONNECTING
            now_wall = time.time()
            if s.finish_at and now_wall >= s.finish_at:
                s.stopping = "FINISH_TIME_REACHED"
            elif time.monotonic() - s.started >= s.max_duration:
                s.stopping = "MAX_DURATION_REACHED"
            elif s.reconnect_deadline and loop.time() >= s.reconnect_deadline and s.child is None:
                s.stopping = "RECONNECT_WINDOW_EXPIRED"
            if loop.time() >= next_report or kind != "tick":
                await s.report()
                next_report = loop.time() + self.report_interval
        if s.srt is not None:
            await s.srt.close()
        if feeder is not None and not feeder.done():
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
        # Stopping: say so, close the playlists, report the final counters, complete.
        if s.stopping not in ("STOP_REQUESTED", "ABORTED") and s.state != State.STOPPING:
            await s.report(State.STOPPING, s.stopping, _stop_message(s.stopping))
        for pub in list(s.publishers.values()):
            await self.front_door.drop(pub.key)
        await s.stop_child()
        s.outputs_dirty = True
        await s.report()
        return s.result()


def _stop_message(why: str) -> str:
    return {"FINISH_TIME_REACHED": "the finish time came", "MAX_DURATION_REACHED": "the maximum duration passed",
            "RECONNECT_WINDOW_EXPIRED": "the publisher did not come back within the reconnect window",
            "INPUT_ENDED": "the input playlist ended", "INPUT_NOT_FOUND": "the input playlist is missing",
            "INPUT_REFUSED": "the input cannot be pulled"}.get(why, why)


def build_live_worker(target: str, storage_root: Path, rtmp_listen: str = "127.0.0.1:1935",
                      **options: Any) -> LiveWorker:
    if not storage_root.is_dir():
        raise ValueError(f"storage root {storage_root} is not a directory")
    return LiveWorker(target, storage_root, rtmp_listen, **options)


