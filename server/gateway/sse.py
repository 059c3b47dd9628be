"""`GET /v1/jobs:watch`: job changes as server-sent events (text/event-stream),
for browsers (EventSource) and curl, on JobService.WatchJobs.

    curl -N -H 'Authorization: Bearer mjk_...' 'http://127.0.0.1:8080/v1/jobs:watch?types=TRANSCODE'

    id: 1042
    event: job
    data: {"revision":"1042","type":"UPDATED","job":{"id":"01J...","state":"RUNNING",...},...}

Query parameters are WatchJobsRequest's fields, as on every other route
(routes.build_request): `jobIds`, `types`, `states` (repeat the parameter
or give a comma-separated list; states by name), `startRevision`,
`sendInitialSnapshot`, `progressInterval` (e.g. `30s`).

The stream, message by message:

- `retry: <ms>` first (how long a browser waits before reconnecting);
- `event: job`, `id: <revision>`, `data: <JobEvent>` for each change, one SSE
  message per event, the data in the protos' JSON mapping on one line.
  SNAPSHOT events (sendInitialSnapshot) carry no `id:`: they are not a
  position in the change log, so a reconnect during the snapshot starts it
  over, exactly as the gRPC client library does;
- `event: progress`, `id: <revision>`, `data: <WatchJobsResponse>` (revision
  and `progress`, `snapshotComplete` at the end of a snapshot) for the
  server's bookmarks: every matching change up to that revision has been
  sent. A watch "from now" starts with one, so even a quiet stream has a
  position to resume from, and later ones move it on during quiet periods;
- `: keepalive` comment lines whenever nothing was written for
  `heartbeat_s` (default 15 s), so proxies and browsers keep the
  connection; EventSource ignores them;
- `event: error`, `data: {"error": {...}}` (the google.rpc.Status as JSON,
  errors.py's form) when the stream fails after it started, then the end.
  (EventSource delivers it to `error` listeners as a MessageEvent: check
  `e.data`.)

Resumption. An EventSource that reconnects sends `Last-Event-ID`, the id of
the last event it dispatched: the gateway then watches from that revision +
1 (ignoring startRevision and sendInitialSnapshot), the same no-gap,
no-repeat guarantee as WatchJobs, across gateway restarts, other gateways
and server restarts. The gateway also resumes its own upstream call when the
server goes away (UNAVAILABLE, e.g. a restart, or a reset connection): the
SSE stream stays open with heartbeats and carries on from the last revision
+ 1 once the server is back (for up to `resume_window_s`, default 30 s;
then `event: error` and the end). That matters because a browser gives up
for good on any non-200 answer, but reconnects by itself after a stream
ends.

Errors before the stream starts are JSON errors (errors.py) with their HTTP
status: 400 for a bad parameter or Last-Event-ID, 401/403 for the key, 429
for the server's watch limit, 503 when the server is unavailable or the
gateway has `max_streams` streams open (Retry-After), and **410 Gone for
OUT_OF_RANGE** (REVISION_COMPACTED: the history to resume from was compacted
away; REVISION_IN_FUTURE: the database was reset or restored). Google's
table says 400 for OUT_OF_RANGE, but here the request is well-formed: the
position it names existed and no longer does, and the client's only
remedy is to start over (re-list with GET /v1/jobs and watch from its
`revision` + 1); 410 lets it branch on the status alone, and the body still
carries OUT_OF_RANGE, the reason and `oldest_revision`. The gateway waits
up to `first_message_wait_s` (1 s) for the first message of the upstream
call before it answers 200 (every error WatchJobs raises before it streams
comes at once); a resume of a quiet filtered stream may not hear from the
server for longer, so it then starts the SSE stream anyway, and a later
failure is an `event: error`. A resume (Last-Event-ID or startRevision)
while the server is unavailable is answered 200 and resumed as above, not
503: a browser would not retry a 503.

Credentials: the caller's `Authorization: Bearer <API key>` goes onto the
gRPC call (upstream.call_metadata), so roles and projects hold: a key sees
its own project's changes only. (Browsers' EventSource cannot set headers:
put the gateway behind a proxy that adds them, or use a fetch-based SSE
client; the gateway takes no key in the URL, where it would end up in logs.)

Sharing. Streams with the same credentials and filters that watch "from
now" share one upstream WatchJobs call (a *feed*): each change is received
and turned into JSON once, and the same bytes are written straight into
each stream's connection in one pass (no task switch per stream: 1,000
subscribers cost a thousand socket writes per message, little else). A
stream that resumes (Last-Event-ID, startRevision) or asks for a snapshot
first has its own upstream call; once it has caught up with the feed of its
credentials and filters (its last revision is at or past the oldest revision
the feed still holds in `recent`), it takes the feed's recent frames after
its own last revision and joins it, and its own call is cancelled.

Slow readers. What a client has not read yet waits in the connection's
transport buffer. A stream on a feed with more than `max_pending_bytes`
(default 1 MiB) waiting there leaves the feed and gets its own upstream call
again, from the last revision written to it; a stream on its own call reads
its next message only once the buffer is below that (gRPC's flow control
then holds the server back, whose watch falls back to reading the log): no
reader makes the gateway buffer without bound.

Bounds: at most `max_streams` SSE streams per gateway (default 2000); per
stream about `max_pending_bytes` plus one message; per feed RECENT_FRAMES
frames and RECENT_BYTES, all feeds ALL_RECENT_BYTES; FRAME_CACHE_SIZE
encoded events (of at most FRAME_CACHE_MAX_EVENT bytes each). A client that
disconnects is noticed within a second (a single timer task checks every
stream's connection; it also sends the heartbeats), and its upstream call
is cancelled. `max_streams`, `heartbeat_s` and `resume_window_s` come from
the flags --sse-max-streams, --sse-heartbeat and --sse-resume-window of
mediajobs-gateway and mediajobs-server (the gateway's settings dict; their
defaults from MEDIAJOBS_SSE_MAX_STREAMS, MEDIAJOBS_SSE_HEARTBEAT_S and
MEDIAJOBS_SSE_RESUME_WINDOW_S, ranges in config.SSE_FLAGS), and live in
`app[SSE_KEY].settings`.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any, AsyncGenerator, Mapping

import aiohttp
import grpc
from aiohttp import web
from google.rpc import code_pb2, status_pb2

from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import resources_pb2 as res

from .errors import bad_request, details_of, error_response, plain_error, status_json, status_of
from .protojson import message_to_dict
from .routes import RequestError, Route, build_request
from .upstream import Upstream, call_metadata

log = logging.getLogger("mediajobs.gateway.sse")

PATH = "/v1/jobs:watch"
ROUTE = Route("GET", PATH, "JobService", "WatchJobs", None, "Watch job changes (server-sent events)", "jobs")

# Frames a feed keeps for streams that join it after catching up on their
# own, and all feeds of a gateway together.
RECENT_FRAMES = 4096
RECENT_BYTES = 8 << 20
ALL_RECENT_BYTES = 64 << 20
# Encoded events kept, by their serialized bytes (a change is encoded once,
# also for many feeds and catching-up streams).
FRAME_CACHE_SIZE = 8192
FRAME_CACHE_MAX_EVENT = 64 << 10
# At most this many values of one filter (job ids, types, states).
MAX_FILTER_VALUES = 1000
# Back-off between re-opens of a broken upstream call (full jitter).
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0
# A stream's own call polls this often while its client has not read enough.
DRAIN_POLL_S = 0.05
# After a feed failed, streams do not ask for it again this soon.
FEED_RETRY_S = 5.0
# How long a stream from now waits for its feed's first message (the
# server sends it at once).
FEED_START_TIMEOUT_S = 30.0

KEEPALIVE = b": keepalive\n\n"
LAST_EVENT_ID_RE = re.compile(r"^\d{1,18}$")
# INTERNAL / UNKNOWN without a server status: a reset connection, not an error of the server.
_TRANSPORT_RESET = re.compile(r"rst_stream|stream removed|connection reset|socket closed|goaway|broken pipe|"
                              r"connection aborted|end of stream|stream terminated|transport closed", re.IGNORECASE)


@dataclass
class SseSettings:
    max_streams: int = 2000
    heartbeat_s: float = 15.0
    # The `retry:` hint: how long a browser waits before it reconnects.
    retry_ms: int = 2000
    first_message_wait_s: float = 1.0
    # How long the gateway keeps re-opening a broken upstream call before it
    # ends the SSE stream with `event: error`.
    resume_window_s: float = 30.0
    max_pending_bytes: int = 1 << 20
    # Streams with the same credentials and filters share upstream calls.
    share_upstream: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "SseSettings":
        """The defaults, or the MEDIAJOBS_SSE_* variables (a bad value is
        logged and the default kept: the CLIs refuse one at start-up)."""
        from ..config import SSE_FLAGS

        s = cls()
        for _flag, var, attr, parse, _default, _help in SSE_FLAGS:
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            try:
                setattr(s, attr, parse(raw))
            except argparse.ArgumentTypeError as e:
                log.warning("%s: %s; using %g", var, e, getattr(s, attr))
        return s

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], env: Mapping[str, str] = os.environ) -> "SseSettings":
        """from_env, then the gateway's settings (`sse_<field>`: the flags);
        ValueError names a setting out of its flag's range."""
        from ..config import SSE_FLAGS

        s = cls.from_env(env)
        for flag, _var, attr, parse, _default, _help in SSE_FLAGS:
            value = settings.get(f"sse_{attr}")
            if value is None:
                continue
            try:
                setattr(s, attr, parse(str(value)))
            except argparse.ArgumentTypeError as e:
                raise ValueError(f"{flag}: {e}") from None
        return s


# -- frames ---------------------------------------------------------------------------


def _json(msg: Any) -> str:
    return json.dumps(message_to_dict(msg), separators=(",", ":"))


def encode_event(ev: res.JobEvent) -> bytes:
    """One SSE message for a JobEvent; SNAPSHOT events have no id (see the
    module docstring)."""
    head = "" if ev.type == res.JobEvent.SNAPSHOT else f"id: {ev.revision}\n"
    return f"{head}event: job\ndata: {_json(ev)}\n\n".encode()


def progress_frame(revision: int, snapshot_complete: bool = False) -> bytes:
    """A progress bookmark: WatchJobsResponse{revision, progress} in the JSON
    mapping, the revision always written (also 0, an empty store)."""
    progress = '{"snapshotComplete":true}' if snapshot_complete else "{}"
    return f'id: {revision}\nevent: progress\ndata: {{"revision":"{revision}","progress":{progress}}}\n\n'.encode()


def error_frame(st: status_pb2.Status) -> bytes:
    body = status_json(st)
    if st.code == code_pb2.OUT_OF_RANGE:
        body["error"]["code"] = 410
    return f"event: error\ndata: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


class FrameCache:
    """Encoded events by their serialized bytes, oldest dropped first."""

    def __init__(self, size: int = FRAME_CACHE_SIZE) -> None:
        self.size = size
        self.frames: dict[bytes, bytes] = {}

    def event(self, ev: res.JobEvent) -> bytes:
        key = ev.SerializeToString()
        frame = self.frames.get(key)
        if frame is None:
            frame = encode_event(ev)
            if len(key) <= FRAME_CACHE_MAX_EVENT:
                if len(self.frames) >= self.size:
                    del self.frames[next(iter(self.frames))]
                self.frames[key] = frame
        return frame

    def message(self, resp: svc.WatchJobsResponse) -> list[tuple[int | None, bytes]]:
        """(revision, frame) for each event of a WatchJobsResponse, or its
        progress; revision None for SNAPSHOT events (no position)."""
        if resp.events:
            return [(None if ev.type == res.JobEvent.SNAPSHOT else ev.revision, self.event(ev))
                    for ev in resp.events]
        return [(resp.revision, progress_frame(resp.revision, resp.progress.snapshot_complete))]


# -- the upstream call, resumed after failures ------------------------------------------


class GaveUp(Exception):
    """The upstream call kept failing for resume_window_s."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status


def _resumable(e: grpc.aio.AioRpcError) -> bool:
    code = e.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED):
        return True
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        return status_of(e).details == [] and bool(_TRANSPORT_RESET.search(e.details() or ""))
    return False


def _retry_delay(e: grpc.aio.AioRpcError) -> float:
    return min(30.0, details_of(status_of(e)).retry_after_s or 0.0)


class ResumableWatch:
    """A WatchJobs call that re-opens itself from its last revision + 1
    after a failure it can come back from (UNAVAILABLE, RESOURCE_EXHAUSTED,
    a reset connection), as client/watch.py does for gRPC clients: once its
    position is known (the first message, or the request's start_revision)
    and any snapshot is complete; before that the failure is raised."""

    def __init__(self, stub: Any, request: svc.WatchJobsRequest, metadata: list[tuple[str, str]],
                 resume_window_s: float) -> None:
        self.stub = stub
        self.request = request
        self.metadata = metadata
        self.resume_window_s = resume_window_s
        # Every matching change up to here has been received (None: not known yet).
        self.position: int | None = request.start_revision - 1 if request.start_revision > 0 else None
        self.snapshot_pending = request.send_initial_snapshot
        self.reconnects = 0

    def _next_request(self) -> svc.WatchJobsRequest:
        """The request as given first (the server validates it); a re-open
        from the position."""
        req = svc.WatchJobsRequest()
        req.CopyFrom(self.request)
        if self.position is not None and self.reconnects:
            req.start_revision = self.position + 1
            req.send_initial_snapshot = False
        return req

    async def messages(self) -> AsyncGenerator[svc.WatchJobsResponse, None]:
        loop = asyncio.get_running_loop()
        attempt = 0
        give_up_at: float | None = None
        while True:
            call = self.stub.WatchJobs(self._next_request(), metadata=self.metadata)
            error: grpc.aio.AioRpcError | None = None
            try:
                while True:
                    resp = await call.read()
                    if resp is grpc.aio.EOF:
                        break  # the server never ends a watch by itself; resume
                    attempt, give_up_at = 0, None
                    if resp.events:
                        last = resp.events[-1]
                        if last.type != res.JobEvent.SNAPSHOT:
                            self.position = last.revision
                    elif resp.HasField("progress"):
                        self.position = resp.revision if self.position is None else max(self.position, resp.revision)
                        if resp.progress.snapshot_complete:
                            self.snapshot_pending = False
                    yield resp
            except grpc.aio.AioRpcError as e:
                if self.position is None or self.snapshot_pending or not _resumable(e):
                    raise
                error = e
            finally:
                call.cancel()
            if error is None and (self.position is None or self.snapshot_pending):
                # Ended with nothing to resume from (the server never does this).
                raise GaveUp(status_pb2.Status(code=code_pb2.UNAVAILABLE, message="the server ended the watch"))
            now = loop.time()
            if give_up_at is None:
                give_up_at = now + self.resume_window_s
            if now >= give_up_at:
                st = status_of(error) if error is not None else status_pb2.Status(
                    code=code_pb2.UNAVAILABLE, message="the server ended the watch")
                st.message = f"the watch could not be resumed for {self.resume_window_s:g} s: {st.message}"
                raise GaveUp(st)
            delay = random.random() * min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** min(attempt, 16))
            if error is not None:
                delay = max(delay, _retry_delay(error))
            attempt += 1
            self.reconnects += 1
            log.info("watch broke (%s); re-opening from revision %s in %.2fs",
                     error.code().name if error is not None else "ended", (self.position or 0) + 1, delay)
            await asyncio.sleep(min(delay, max(0.0, give_up_at - now)))


# -- one SSE response -----------------------------------------------------------------------


class Stream:
    """One SSE response: its position, how it is fed, and why it ends.

    Frames go straight into the connection (`send`, synchronous): a feed
    writes the same bytes to each of its streams in one pass, with no task
    switch per stream, and the order of frames is the order of the calls.
    Until the response has started they wait in `pending`. The transport
    buffers what the client has not read yet; `buffered()` is what a
    producer checks against max_pending_bytes (a feed then lets the stream
    go, a stream's own call waits for the client).

    `cursor` is the revision of the last frame with an id sent to the stream
    (written or pending); `written` that of the last one written to the
    connection, from where it resumes if it has to leave a feed."""

    __slots__ = ("request", "key", "loop", "pending", "pending_bytes", "live", "chunked", "cursor", "written",
                 "waiter", "first", "ended", "error", "feed", "pump", "demoted", "last_write", "heartbeat_due")

    def __init__(self, request: web.Request, key: tuple[Any, ...]) -> None:
        self.request = request
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.live = False  # the response started: frames go to the connection
        self.chunked = True  # HTTP/1.1 chunked transfer encoding (HTTP/1.0: the raw bytes, then close)
        self.cursor: int | None = None
        self.written: int | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.first = self.loop.create_future()  # the first frame, or the end
        self.ended = False
        self.error: status_pb2.Status | None = None
        self.feed: Feed | None = None
        self.pump: asyncio.Task[None] | None = None
        self.demoted = False
        self.last_write = self.loop.time()
        self.heartbeat_due = False

    def send(self, data: bytes, revision: int | None, now: float = 0.0) -> None:
        """Frames (one or more SSE messages); `revision` that of the last with
        an id; `now` the loop's time if the caller has it."""
        if revision is not None:
            self.cursor = revision
        if self.live:
            self.write(data, now)
            if revision is not None:
                self.written = revision
            return
        self.pending.append(data)
        self.pending_bytes += len(data)
        if not self.first.done():
            self.first.set_result(None)

    def write(self, data: bytes, now: float = 0.0) -> None:
        """Into the connection now (the response has started)."""
        transport = self.request.transport
        if transport is None or transport.is_closing():
            self.finish()  # the client went away
            return
        transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)
        self.last_write = now or self.loop.time()
        self.heartbeat_due = False

    def start(self, chunked: bool) -> None:
        """The response's headers are out: write what waited, then go live."""
        self.chunked = chunked
        self.live = True
        if self.pending:
            data = b"".join(self.pending)
            self.pending.clear()
            self.pending_bytes = 0
            self.write(data)
        self.written = self.cursor

    def buffered(self) -> int:
        """Bytes sent to this stream that its client has not read yet."""
        transport = self.request.transport
        return self.pending_bytes + (transport.get_write_buffer_size() if transport is not None else 0)

    def finish(self, error: status_pb2.Status | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        self.error = error
        if not self.first.done():
            self.first.set_result(None)
        self.wake()

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self) -> None:
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def connection_lost(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()


# -- shared upstream calls ------------------------------------------------------------------


class Feed:
    """One upstream WatchJobs call "from now", shared by every stream with
    the same credentials and filters (see the module docstring)."""

    def __init__(self, hub: "SseHub", key: tuple[Any, ...], request: svc.WatchJobsRequest,
                 metadata: list[tuple[str, str]]) -> None:
        self.hub = hub
        self.key = key
        self.watch = ResumableWatch(hub.stub, request, metadata, hub.settings.resume_window_s)
        self.streams: set[Stream] = set()
        self.interested = 0  # catching-up streams that mean to join
        self.recent: collections.deque[tuple[int, bytes]] = collections.deque()
        self.recent_bytes = 0
        self.position = 0  # every matching change up to here has been received
        self.floor = 0  # every matching change after this is in `recent` (or still to come)
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.task = asyncio.get_running_loop().create_task(self._run(), name="mediajobs-sse-feed")

    @property
    def running(self) -> bool:
        ready = self.ready
        return ready.done() and not ready.cancelled() and ready.exception() is None and not self.closed

    async def _run(self) -> None:
        error: status_pb2.Status | None = None
        messages = self.watch.messages()
        try:
            async for resp in messages:
                self._dispatch(resp)
        except grpc.aio.AioRpcError as e:
            error = status_of(e)
        except GaveUp as e:
            error = e.status
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - a bug: logged, the streams end with INTERNAL
            log.exception("an SSE feed failed")
            error = status_pb2.Status(code=code_pb2.INTERNAL, message="the gateway failed; it is logged")
        finally:
            await messages.aclose()  # cancels the upstream call
            self.closed = True
            self.hub.recent_bytes -= self.recent_bytes
            self.recent.clear()
            self.recent_bytes = 0
            self.hub.feed_ended(self, failed=error is not None)
            if not self.ready.done():
                if error is not None:
                    self.ready.set_exception(_StatusError(error))
                    self.ready.exception()  # retrieved: waiters read it, or nobody waits
                else:
                    self.ready.cancel()
            for s in list(self.streams):
                s.feed = None
                s.finish(error)
            self.streams.clear()

    def _dispatch(self, resp: svc.WatchJobsResponse) -> None:
        """Fan one upstream message out (no await: streams joining meanwhile
        see a consistent position)."""
        if not self.ready.done():
            # The first message of a watch from now: a progress at "now".
            self.position = self.floor = resp.revision
            self.ready.set_result(None)
            return
        entries = self.hub.frames.message(resp)
        if resp.events:
            self.position = resp.events[-1].revision
        else:
            self.position = max(self.position, resp.revision)
        recent, hub = self.recent, self.hub
        for e in entries:
            recent.append(e)  # type: ignore[arg-type]  # feeds never carry SNAPSHOT events
            self.recent_bytes += len(e[1])
            hub.recent_bytes += len(e[1])
        while recent and (len(recent) > RECENT_FRAMES or self.recent_bytes > RECENT_BYTES
                          or hub.recent_bytes > ALL_RECENT_BYTES):
            rev, frame = recent.popleft()
            self.recent_bytes -= len(frame)
            hub.recent_bytes -= len(frame)
            self.floor = rev
        first_rev, last_rev = entries[0][0], entries[-1][0]
        assert first_rev is not None and last_rev is not None
        whole = entries[0][1] if len(entries) == 1 else b"".join(f for _, f in entries)
        limit = self.hub.settings.max_pending_bytes
        now = asyncio.get_running_loop().time()
        slow = []
        for s in self.streams:
            c = s.cursor
            assert c is not None
            if c >= last_rev:
                continue
            if c < first_rev:
                s.send(whole, last_rev, now)
            else:  # it joined in the middle of this message's revisions
                s.send(b"".join(f for r, f in entries if r > c), last_rev, now)  # type: ignore[operator]
            if s.live and s.buffered() > limit:
                slow.append(s)
        for s in slow:
            self.demote(s)

    def add_fresh(self, s: Stream) -> None:
        """A stream from now: it starts at the feed's position."""
        s.feed = self
        s.written = self.position
        s.send(progress_frame(self.position), self.position)
        self.streams.add(s)

    def can_adopt(self, s: Stream) -> bool:
        return self.running and s.cursor is not None and s.cursor >= self.floor

    def adopt(self, s: Stream) -> None:
        """A stream that caught up on its own call: the recent frames after
        its position, then everything as it comes."""
        c = s.cursor
        assert c is not None and c >= self.floor
        backlog = [f for r, f in self.recent if r > c]
        if backlog:
            s.send(b"".join(backlog), self.recent[-1][0])
        s.feed = self
        self.streams.add(s)

    def demote(self, s: Stream) -> None:
        """A stream too slow for the feed gets its own upstream call again,
        from the last frame written to it (only a stream whose response has
        started: before that, what waits is bounded by first_message_wait_s)."""
        self.remove(s)
        s.demoted = True
        s.wake()
        self.hub.demotions += 1

    def remove(self, s: Stream) -> None:
        self.streams.discard(s)
        if s.feed is self:
            s.feed = None
        self.close_if_unused()

    def close_if_unused(self) -> None:
        if not self.streams and self.interested <= 0 and not self.closed:
            self.closed = True
            self.task.cancel()


class _StatusError(Exception):
    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status


# -- the registry of streams and feeds ------------------------------------------------------------


class SseHub:
    """The gateway's SSE streams and feeds, the timer that sends heartbeats
    and notices lost connections, and the settings."""

    def __init__(self, upstream: Upstream, settings: SseSettings) -> None:
        self.stub = upstream.stubs["JobService"]
        self.settings = settings
        self.streams: set[Stream] = set()
        self.feeds: dict[tuple[Any, ...], Feed] = {}
        self.feed_failed: dict[tuple[Any, ...], float] = {}
        self.frames = FrameCache()
        self.recent_bytes = 0  # of all feeds' `recent`
        self.demotions = 0  # streams that left a feed, too slow (for tests and diagnostics)
        self.closing = False
        self._timer: asyncio.Task[None] | None = None

    # -- feeds

    def feed_for(self, key: tuple[Any, ...], request: svc.WatchJobsRequest, metadata: list[tuple[str, str]],
                 create: bool = True) -> Feed | None:
        feed = self.feeds.get(key)
        if feed is not None and feed.closed:
            feed = None  # closing (its task has not ended yet): a new one replaces it
        if feed is None and create and not self.closing:
            failed = self.feed_failed.get(key)
            if failed is not None and asyncio.get_running_loop().time() - failed < FEED_RETRY_S:
                return None
            feed_request = svc.WatchJobsRequest(job_ids=request.job_ids, types=request.types, states=request.states)
            if request.HasField("progress_interval"):
                feed_request.progress_interval.CopyFrom(request.progress_interval)
            feed = self.feeds[key] = Feed(self, key, feed_request, metadata)
        return feed

    def feed_ended(self, feed: Feed, failed: bool) -> None:
        if self.feeds.get(feed.key) is feed:
            del self.feeds[feed.key]
        if failed:
            self.feed_failed[feed.key] = asyncio.get_running_loop().time()
            if len(self.feed_failed) > 10_000:
                self.feed_failed.clear()

    # -- heartbeats and lost connections

    def ensure_timer(self) -> None:
        if self._timer is None or self._timer.done():
            self._timer = asyncio.get_running_loop().create_task(self._tick(), name="mediajobs-sse-timer")

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while self.streams:
            period = min(1.0, self.settings.heartbeat_s / 4)
            await asyncio.sleep(period)
            due = loop.time() - (self.settings.heartbeat_s - period)
            for s in list(self.streams):
                if s.connection_lost():
                    s.finish()
                elif s.live and s.last_write <= due:
                    s.heartbeat_due = True
                    s.wake()

    async def close(self, _app: web.Application | None = None) -> None:
        """The gateway stops: end every stream now (clients reconnect with
        Last-Event-ID elsewhere or after the restart), and every feed."""
        self.closing = True
        for s in list(self.streams):
            s.finish()
        for feed in list(self.feeds.values()):
            feed.closed = True
            feed.task.cancel()
        if self._timer is not None:
            self._timer.cancel()


SSE_KEY = web.AppKey("sse", SseHub)


# -- the route ----------------------------------------------------------------------------------


def parse_request(request: web.Request) -> svc.WatchJobsRequest:
    """The WatchJobsRequest of the query parameters and Last-Event-ID;
    RequestError names what is wrong."""
    req = build_request(ROUTE, svc.WatchJobsRequest, request, None)
    assert isinstance(req, svc.WatchJobsRequest)
    for name, values in (("jobIds", req.job_ids), ("types", req.types), ("states", req.states)):
        if len(values) > MAX_FILTER_VALUES:
            raise RequestError(f"{name}: at most {MAX_FILTER_VALUES} values", name)
    last = request.headers.get("Last-Event-ID", "").strip()
    if last:
        if not LAST_EVENT_ID_RE.match(last):
            raise RequestError("Last-Event-ID must be the id of an event of this stream (a revision, digits only)",
                               "Last-Event-ID")
        req.start_revision = int(last) + 1
        req.send_initial_snapshot = False
    return req


def pre_stream_error(st: status_pb2.Status) -> web.Response:
    """An error before the stream started, as JSON; OUT_OF_RANGE is 410
    (see the module docstring)."""
    return error_response(st, http=410 if st.code == code_pb2.OUT_OF_RANGE else 0)


async def _pump(hub: SseHub, s: Stream, watch: ResumableWatch, metadata: list[tuple[str, str]],
                request: svc.WatchJobsRequest) -> None:
    """A stream's own upstream call: its messages into the stream, paced by
    the client (while more than max_pending_bytes wait to be read, it reads
    no more, and gRPC's flow control holds the server back), until the
    stream can join the feed of its credentials and filters."""
    feed: Feed | None = None
    limit = hub.settings.max_pending_bytes
    messages = watch.messages()
    try:
        async for resp in messages:
            frames = []
            last: int | None = None
            for rev, frame in hub.frames.message(resp):
                if rev is None or s.cursor is None or rev > s.cursor:
                    frames.append(frame)
                    last = rev if rev is not None else last
            if frames:
                s.send(frames[0] if len(frames) == 1 else b"".join(frames), last)
            while s.buffered() > limit and not s.ended:
                await asyncio.sleep(DRAIN_POLL_S)
            if s.ended:
                return
            if not hub.settings.share_upstream or watch.snapshot_pending or watch.position is None:
                continue
            if feed is None or feed.closed:
                feed = hub.feed_for(s.key, request, metadata)
                if feed is not None:
                    feed.interested += 1
            if feed is not None and feed.can_adopt(s):
                feed.adopt(s)
                return
    except grpc.aio.AioRpcError as e:
        s.finish(status_of(e))
    except GaveUp as e:
        s.finish(e.status)
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - a bug: logged, the stream ends with INTERNAL
        log.exception("an SSE stream's watch failed")
        s.finish(status_pb2.Status(code=code_pb2.INTERNAL, message="the gateway failed; it is logged"))
    finally:
        await messages.aclose()  # cancels the upstream call
        if feed is not None:
            feed.interested -= 1
            if s.feed is not feed:
                feed.close_if_unused()


def _start_pump(hub: SseHub, s: Stream, request: svc.WatchJobsRequest, metadata: list[tuple[str, str]]) -> None:
    watch = ResumableWatch(hub.stub, request, metadata, hub.settings.resume_window_s)
    s.pump = asyncio.get_running_loop().create_task(_pump(hub, s, watch, metadata, request),
                                                    name="mediajobs-sse-stream")


async def _join_feed(hub: SseHub, s: Stream, req: svc.WatchJobsRequest, metadata: list[tuple[str, str]]
                     ) -> web.Response | None:
    """A stream from now joins the feed of its credentials and filters
    (started if need be; its own call if there is none); the JSON error if
    the feed could not start."""
    feed = hub.feed_for(s.key, req, metadata)
    if feed is not None and not feed.ready.done():
        feed.interested += 1  # it must not close while this stream waits for it
        try:
            await asyncio.wait_for(asyncio.shield(feed.ready), FEED_START_TIMEOUT_S)
        except _StatusError as e:
            return pre_stream_error(e.status)
        except asyncio.TimeoutError:
            return plain_error(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"the server did not start the watch within {FEED_START_TIMEOUT_S:g} s",
                               "UPSTREAM_TIMEOUT", http=504)
        except asyncio.CancelledError:
            if not feed.ready.cancelled():
                raise  # this handler is cancelled; else the feed closed before it started
        finally:
            feed.interested -= 1
            if not feed.running:
                feed.close_if_unused()
    if feed is not None and feed.running:
        feed.add_fresh(s)
    else:
        _start_pump(hub, s, req, metadata)
    return None


async def watch_jobs(request: web.Request) -> web.StreamResponse:
    hub = request.app[SSE_KEY]
    settings = hub.settings
    try:
        req = parse_request(request)
    except RequestError as e:
        return bad_request(str(e), e.field)
    if hub.closing:
        return plain_error(grpc.StatusCode.UNAVAILABLE, "the gateway is shutting down; reconnect", "SHUTTING_DOWN",
                           http=503, headers={"Retry-After": "1"})
    if len(hub.streams) >= settings.max_streams:
        return plain_error(grpc.StatusCode.UNAVAILABLE,
                           f"this gateway serves at most {settings.max_streams} event streams at once; try again "
                           "later or another gateway", "TOO_MANY_STREAMS", http=503, headers={"Retry-After": "5"})
    metadata = call_metadata(request)
    key = (tuple(metadata), tuple(req.job_ids), tuple(req.types), tuple(req.states),
           req.progress_interval.SerializeToString())
    s = Stream(request, key)
    hub.streams.add(s)
    hub.ensure_timer()
    try:
        fresh = not req.start_revision and not req.send_initial_snapshot
        if fresh and settings.share_upstream:
            refused = await _join_feed(hub, s, req, metadata)
            if refused is not None:
                return refused
        else:
            _start_pump(hub, s, req, metadata)
        if s.pump is not None:
            try:
                await asyncio.wait_for(asyncio.shield(s.first), settings.first_message_wait_s)
            except asyncio.TimeoutError:
                pass
            if s.ended and s.error is not None and not s.pending:
                return pre_stream_error(s.error)
        if hub.closing:
            s.finish()
        return await _serve(hub, s, request, req, metadata)
    finally:
        hub.streams.discard(s)
        if s.feed is not None:
            s.feed.remove(s)
        if s.pump is not None and not s.pump.done():
            s.pump.cancel()  # cancels its upstream call


async def _serve(hub: SseHub, s: Stream, request: web.Request, req: svc.WatchJobsRequest,
                 metadata: list[tuple[str, str]]) -> web.StreamResponse:
    """Start the response, then serve the stream until it ends: heartbeats,
    a new call of its own when it left its feed, and at the end the error,
    if any (the frames themselves are written by whoever feeds it)."""
    resp = web.StreamResponse(headers={
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # nginx: pass each event on at once
    })
    chunked = request.version >= aiohttp.HttpVersion11
    if chunked:
        resp.enable_chunked_encoding()
    try:
        await resp.prepare(request)
        # aiohttp sends the headers with the first bytes of the body: after
        # this write, frames may go straight into the connection.
        await resp.write(f"retry: {hub.settings.retry_ms}\n\n".encode())
        s.start(chunked)
        while True:
            if s.ended:
                if s.error is not None:
                    s.write(error_frame(s.error))
                break
            if s.demoted:
                # Too slow for its feed: its own call, from the last frame written.
                s.demoted = False
                resume = svc.WatchJobsRequest()
                resume.CopyFrom(req)
                resume.send_initial_snapshot = False
                resume.start_revision = (s.written or 0) + 1
                _start_pump(hub, s, resume, metadata)
                continue
            if s.heartbeat_due:
                s.write(KEEPALIVE)
                continue
            await s.wait()
        await resp.write_eof()
    except (ConnectionError, RuntimeError) as e:
        # The client went away (aiohttp raises ClientConnectionResetError, a
        # ConnectionResetError, or RuntimeError on a closed transport).
        log.debug("SSE client gone: %s", e)
    return resp


OPENAPI_OPERATION: dict[str, Any] = {
    "operationId": "WatchJobs",
    "tags": ["jobs"],
    "summary": "Watch job changes as server-sent events (text/event-stream)",
    "description": (
        "A stream of job changes (JobService.WatchJobs) for EventSource and curl. Each change is one SSE message: "
        "`id: <revision>`, `event: job`, `data: <JobEvent as JSON>`; the server's bookmarks are `event: progress` "
        "with `id: <revision>` and `data: <WatchJobsResponse as JSON>`; SNAPSHOT events (sendInitialSnapshot) "
        "have no id; `: keepalive` comments keep an idle connection open; `event: error` with "
        "`data: {\"error\": {...}}` ends a stream that failed after it started. Reconnect with `Last-Event-ID` "
        "(EventSource does it by itself) to resume from that revision + 1 with no gap and no repeat. Filters as "
        "in WatchJobsRequest; repeat a parameter or give a comma-separated list."),
    "parameters": [
        {"name": "jobIds", "in": "query", "style": "form", "explode": True,
         "schema": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_FILTER_VALUES},
         "description": "Only these jobs (repeat, or a comma-separated list)"},
        {"name": "types", "in": "query", "style": "form", "explode": True,
         "schema": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_FILTER_VALUES},
         "description": "Only jobs of these types"},
        {"name": "states", "in": "query", "style": "form", "explode": True,
         "schema": {"type": "array", "items": {"type": "string", "enum": [
             v.name for v in res.Job.State.DESCRIPTOR.values if v.number]}},
         "description": "Only changes into or out of these states"},
        {"name": "startRevision", "in": "query", "schema": {"type": "string", "pattern": r"^[0-9]{1,18}$"},
         "description": "First revision to send (0: from now); Last-Event-ID takes precedence"},
        {"name": "sendInitialSnapshot", "in": "query", "schema": {"type": "boolean"},
         "description": "First every matching job as a SNAPSHOT event, then a progress with snapshotComplete"},
        {"name": "progressInterval", "in": "query", "schema": {"type": "string", "pattern": r"^[0-9.]+s$"},
         "description": "How often an idle stream gets a progress bookmark (default 10s, 0.1s to 600s)"},
        {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string", "pattern": r"^[0-9]{1,18}$"},
         "description": "Resume after this revision (the id of the last event received)"},
    ],
    "responses": {
        "200": {"description": "The event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
        "410": {"description": "OUT_OF_RANGE: the revision to resume from was compacted away "
                               "(REVISION_COMPACTED, see `oldest_revision`) or is beyond the store's "
                               "(REVISION_IN_FUTURE): re-list with GET /v1/jobs and watch from its revision + 1",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "503": {"description": "The server is unavailable, or this gateway serves its maximum of event streams "
                               "(Retry-After)",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
    },
}


def add_routes(app: web.Application, upstream: Upstream) -> None:
    from .app import SETTINGS_KEY

    settings: dict[str, Any] = app[SETTINGS_KEY]  # the flags (--sse-*)
    hub = SseHub(upstream, SseSettings.from_settings(settings))
    app[SSE_KEY] = hub
    app.on_shutdown.append(hub.close)
    app.router.add_get(PATH, watch_jobs, allow_head=False)
    try:
        from . import openapi
    except ImportError:  # the document is not part of this gateway: OPENAPI_OPERATION describes the route
        return
    operation = dict(OPENAPI_OPERATION)
    responses = dict(openapi.error_responses())
    responses.update(OPENAPI_OPERATION["responses"])
    operation["responses"] = responses
    openapi.document(app, PATH, "get", operation)
