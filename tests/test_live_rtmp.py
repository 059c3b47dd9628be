"""The RTMP front door (client/live/rtmp.py): real FFmpeg publishers (the
synthetic publisher) against an in-process server, hand-made chunk bytes
for the ChunkReader, and hostile raw sockets.

The publisher runs in a child process, not in a thread: PyAV opens the
output (avio_open: the whole RTMP handshake, connect and publish exchange)
without releasing the GIL, so a publisher thread would stall this event
loop, and with it the server it is waiting for, forever."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import struct
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import av
import pytest

from mediajobs.client.live.rtmp import (
    ChunkReader,
    Message,
    PublishRefused,
    PublishRequest,
    RtmpProtocolError,
    RtmpServer,
    amf0_decode,
    amf0_encode,
    chunk_message,
    flv_header,
    flv_tag,
)

FPS = 15
WAIT = 10.0  # the longest any single await may take before the test fails


# ------------------------------------------------------------------ helpers

class Session:
    def __init__(self, request: PublishRequest) -> None:
        self.request = request
        self.metadata: list[dict[str, Any]] = []
        self.tags: list[tuple[int, int, bytes]] = []
        self.close_reasons: list[str] = []
        self.first_video = asyncio.Event()
        self.closed = asyncio.Event()

    def on_metadata(self, metadata: dict[str, Any]) -> None:
        self.metadata.append(metadata)

    def on_tag(self, tag_type: int, timestamp_ms: int, body: bytes) -> None:
        assert not self.close_reasons, "tag after on_close"
        self.tags.append((tag_type, timestamp_ms, body))
        if tag_type == 9:
            self.first_video.set()

    def on_close(self, reason: str) -> None:
        self.close_reasons.append(reason)
        self.closed.set()

    @property
    def reason(self) -> str:
        assert len(self.close_reasons) == 1, self.close_reasons
        return self.close_reasons[0]

    def flv(self) -> bytes:
        return flv_header() + b"".join(flv_tag(t, ts, body) for t, ts, body in self.tags)


@dataclass
class Authorizer:
    """Accepts keys starting with "ok"; refuses the rest."""

    requests: list[PublishRequest] = field(default_factory=list)
    sessions: dict[str, Session] = field(default_factory=dict)
    arrived: dict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))

    async def __call__(self, req: PublishRequest) -> Session:
        self.requests.append(req)
        if not req.stream_key.startswith("ok"):
            raise PublishRefused("unknown stream key")
        s = self.sessions[req.stream_key] = Session(req)
        self.arrived[req.stream_key].set()
        return s

    async def session(self, key: str) -> Session:
        await asyncio.wait_for(self.arrived[key].wait(), WAIT)
        return self.sessions[key]


@dataclass
class Published:
    returncode: int
    out: str
    err: str

    @property
    def result(self) -> dict[str, Any]:
        assert self.returncode == 0, self.err
        return dict(json.loads(self.out))


_PUBLISH = """
import json, sys
from mediajobs.client.live.publisher import publish
try:
    r = publish(sys.argv[1], seconds=float(sys.argv[2]), width=int(sys.argv[3]), height=int(sys.argv[4]),
                fps=int(sys.argv[5]), open_timeout=5.0)
except OSError as e:
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(3)
print(json.dumps({"video_frames": r.video_frames, "audio_frames": r.audio_frames}))
"""


class Publisher:
    """The synthetic publisher (client/live/publisher.py) in a child process."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, url: str, seconds: float = 2, width: int = 160, height: int = 90) -> Publisher:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _PUBLISH, url, str(seconds), str(width), str(height), str(FPS),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        return cls(proc)

    async def wait(self, timeout: float = WAIT) -> Published:
        try:
            out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        except TimeoutError:
            self.kill()
            raise
        assert self.proc.returncode is not None
        return Published(self.proc.returncode, out.decode(), err.decode())

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


@pytest.fixture
async def publishers() -> Any:
    started: list[Publisher] = []

    async def start(*args: Any, **kw: Any) -> Publisher:
        p = await Publisher.start(*args, **kw)
        started.append(p)
        return p
    yield start
    for p in started:
        p.kill()
        await p.proc.wait()


@pytest.fixture
async def make_server() -> Any:
    servers: list[RtmpServer] = []

    async def make(**kw: Any) -> tuple[RtmpServer, Authorizer]:
        auth = Authorizer()
        server = RtmpServer(auth, **kw)
        await server.start()
        servers.append(server)
        return server, auth
    yield make
    for s in servers:
        await s.close()


def url(server: RtmpServer, key: str) -> str:
    return f"rtmp://127.0.0.1:{server.port}/live/{key}"


def decode_flv(data: bytes) -> tuple[int, tuple[int, int], str, int]:
    """(video frames, (width, height), audio codec, audio rate) of an FLV."""
    with av.open(io.BytesIO(data), "r", format="flv") as c:
        audio = c.streams.audio[0]
        name, rate = audio.codec_context.name, audio.codec_context.sample_rate
        size = (0, 0)
        frames = 0
        for frame in c.decode(video=0):
            frames += 1
            size = (frame.width, frame.height)
    return frames, size, name, rate


class RawClient:
    """A hand-driven RTMP client for protocol and hostile-input tests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.chunks = ChunkReader()
        self.inbox: list[Message] = []  # not yet looked at by expect_command
        self.history: list[Message] = []  # everything received

    @classmethod
    async def connect(cls, server: RtmpServer) -> RawClient:
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        return cls(r, w)

    async def handshake(self) -> None:
        self.writer.write(b"\x03" + bytes(1536))
        s = await asyncio.wait_for(self.reader.readexactly(1 + 2 * 1536), WAIT)
        assert s[0] == 3
        assert s[1 + 1536:] == bytes(1536)  # S2 echoes C1
        self.writer.write(s[1:1 + 1536])  # C2 echoes S1

    def send(self, type_id: int, payload: bytes, csid: int = 3, stream_id: int = 0, ts: int = 0) -> None:
        self.writer.write(chunk_message(csid, type_id, stream_id, ts, payload))

    def call(self, *values: Any, stream_id: int = 0) -> None:
        self.send(20, amf0_encode(*values), csid=3 if stream_id == 0 else 8, stream_id=stream_id)

    async def expect_command(self, name: str) -> list[Any]:
        """Read until a command `name` arrives; its AMF0 values."""
        async def go() -> list[Any]:
            while True:
                for i, m in enumerate(self.inbox):
                    if m.type_id == 20:
                        values = amf0_decode(m.payload)
                        if values[0] == name:
                            del self.inbox[:i + 1]
                            return values
                data = await self.reader.read(65536)
                assert data, f"closed before {name}"
                msgs = self.chunks.feed(data)
                self.inbox += msgs
                self.history += msgs
        return await asyncio.wait_for(go(), WAIT)

    async def publish(self, key: str) -> list[Any]:
        await self.handshake()
        self.call("connect", 1, {"app": "live", "tcUrl": "rtmp://127.0.0.1/live", "type": "nonprivate"})
        await self.expect_command("_result")
        self.call("createStream", 2, None)
        await self.expect_command("_result")
        self.call("publish", 3, None, key, "live", stream_id=1)
        return await self.expect_command("onStatus")

    async def closed(self) -> bool:
        """True once the server closes the connection (EOF or reset)."""
        async def go() -> None:
            while await self.reader.read(65536):
                pass
        try:
            await asyncio.wait_for(go(), WAIT)
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.writer.transport.abort()


def chunk0(csid: int, ts: int, length: int, type_id: int, stream_id: int = 0) -> bytes:
    """A 1-byte basic header (csid 2..63) and a type 0 message header."""
    return bytes((csid,)) + ts.to_bytes(3, "big") + length.to_bytes(3, "big") + bytes((type_id,)) \
        + stream_id.to_bytes(4, "little")


# --------------------------------------------------- publishes with FFmpeg

async def test_accepted_publish_gives_a_decodable_flv_and_metadata(make_server: Any, publishers: Any,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mediajobs.live.rtmp")
    server, auth = await make_server()
    key = "ok_5ecret_key"
    pub = await publishers(url(server, key) + "?token=abc", seconds=2)
    result = (await pub.wait()).result
    s = await auth.session(key)
    await asyncio.wait_for(s.closed.wait(), WAIT)
    assert s.reason == "eof"
    assert server.publishing() == []

    req = s.request
    assert (req.app, req.stream_key, req.query, req.peer[0]) == ("live", key, "token=abc", "127.0.0.1")
    assert req.tc_url == f"rtmp://127.0.0.1:{server.port}/live"

    assert len(s.metadata) == 1
    md = s.metadata[0]
    assert (md["width"], md["height"], md["framerate"]) == (160, 90, FPS)
    assert (md["videocodecid"], md["audiocodecid"], md["audiosamplerate"], md["stereo"]) == (7, 10, 48000, True)
    assert str(md["encoder"]).startswith("Lavf")
    script = [body for t, _, body in s.tags if t == 18]
    assert len(script) == 1 and amf0_decode(script[0])[0] == "onMetaData"  # @setDataFrame removed

    # Timestamps monotone per stream; raw AAC frames 1024/48000 s apart.
    video_ts = [ts for t, ts, _ in s.tags if t == 9]
    aac_ts = [ts for t, ts, body in s.tags if t == 8 and body[1] == 1]
    assert video_ts == sorted(video_ts)
    assert len(aac_ts) >= result["audio_frames"] - 2
    assert all(20 <= b - a <= 22 for a, b in zip(aac_ts, aac_ts[1:])), aac_ts

    frames, size, audio_codec, rate = decode_flv(s.flv())
    assert abs(frames - 2 * FPS) <= 2
    assert frames == result["video_frames"]
    assert size == (160, 90)
    assert (audio_codec, rate) == ("aac", 48000)

    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert any("publishing" in m for m in loud)
    assert not any(key in m or "token" in m for m in loud), loud


async def test_refused_key_fails_fast_and_gets_no_media(make_server: Any, publishers: Any) -> None:
    server, auth = await make_server()
    t0 = time.monotonic()
    pub = await publishers(url(server, "wrong-key"), seconds=2)
    done = await pub.wait(timeout=5)
    assert done.returncode == 3
    assert "PermissionError" in done.err  # FFmpeg's answer to onStatus level error
    assert time.monotonic() - t0 < 5
    assert [r.stream_key for r in auth.requests] == ["wrong-key"]
    assert auth.sessions == {}
    assert server.publishing() == []


async def test_two_keys_at_once_on_one_port(make_server: Any, publishers: Any) -> None:
    server, auth = await make_server()
    a = await publishers(url(server, "ok-a"), seconds=2, width=160, height=90)
    b = await publishers(url(server, "ok-b"), seconds=2, width=96, height=54)
    sa, sb = await auth.session("ok-a"), await auth.session("ok-b")
    await asyncio.wait_for(sa.first_video.wait(), WAIT)
    await asyncio.wait_for(sb.first_video.wait(), WAIT)
    assert sorted(server.publishing()) == ["ok-a", "ok-b"]
    ra, rb = (await a.wait()).result, (await b.wait()).result
    for s in (sa, sb):
        await asyncio.wait_for(s.closed.wait(), WAIT)
        assert s.reason == "eof"
    fa, size_a, _, _ = decode_flv(sa.flv())
    fb, size_b, _, _ = decode_flv(sb.flv())
    assert (fa, size_a) == (ra["video_frames"], (160, 90))
    assert (fb, size_b) == (rb["video_frames"], (96, 54))
    assert (sa.metadata[0]["width"], sb.metadata[0]["width"]) == (160, 96)


async def test_second_publisher_of_a_live_key_is_refused(make_server: Any, publishers: Any) -> None:
    server, auth = await make_server()
    first = await publishers(url(server, "ok-dup"), seconds=2)
    s = await auth.session("ok-dup")
    await asyncio.wait_for(s.first_video.wait(), WAIT)
    second = await publishers(url(server, "ok-dup"), seconds=1)
    refused = await second.wait(timeout=5)
    assert refused.returncode == 3 and "PermissionError" in refused.err
    assert len(auth.requests) == 1  # the duplicate never reached authorize
    assert server.publishing() == ["ok-dup"]
    assert s.close_reasons == []
    result = (await first.wait()).result
    await asyncio.wait_for(s.closed.wait(), WAIT)
    assert s.reason == "eof"
    assert decode_flv(s.flv())[0] == result["video_frames"]


async def test_drop_ends_the_publisher(make_server: Any, publishers: Any) -> None:
    server, auth = await make_server()
    pub = await publishers(url(server, "ok-drop"), seconds=20)
    s = await auth.session("ok-drop")
    await asyncio.wait_for(s.first_video.wait(), WAIT)
    assert await server.drop("ok-drop") is True
    assert s.reason == "dropped"
    done = await pub.wait(timeout=5)
    assert done.returncode == 3, done.err
    assert server.publishing() == []
    assert await server.drop("ok-drop") is False
    assert await server.drop("never-seen") is False


async def test_close_ends_sessions_and_stops_listening(make_server: Any, publishers: Any) -> None:
    server, auth = await make_server()
    pub = await publishers(url(server, "ok-close"), seconds=20)
    s = await auth.session("ok-close")
    await asyncio.wait_for(s.first_video.wait(), WAIT)
    raw = await RawClient.connect(server)  # an idle second connection
    await server.close()
    assert s.reason == "error: server closed"
    assert await raw.closed()
    assert (await pub.wait(timeout=5)).returncode == 3
    assert server.publishing() == []
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.port)


# ------------------------------------------------- protocol, hand-driven

async def test_replies_to_the_publish_sequence(make_server: Any) -> None:
    server, auth = await make_server(idle_timeout=0.5)
    c = await RawClient.connect(server)
    await c.handshake()
    c.call("connect", 1, {"app": "live/", "tcUrl": "rtmp://h/live"})
    result = await c.expect_command("_result")
    assert result[1] == 1 and result[3]["code"] == "NetConnection.Connect.Success"
    control = {m.type_id: m.payload for m in c.history if m.csid == 2}
    assert struct.unpack(">I", control[5]) == (2_500_000,)  # Window Ack Size
    assert control[6][4] == 2  # Set Peer Bandwidth, dynamic
    assert c.chunks.chunk_size == 4096  # Set Chunk Size applied by our reader
    c.call("releaseStream", 2, None, "ok-raw")
    assert (await c.expect_command("_result"))[1] == 2
    c.call("FCPublish", 3, None, "ok-raw")
    assert (await c.expect_command("onFCPublish"))[3]["code"] == "NetStream.Publish.Start"
    c.call("noSuchCommand", 4, None)
    err = await c.expect_command("_error")
    assert err[1] == 4 and err[3]["code"] == "NetConnection.Call.Failed"
    c.call("createStream", 5, None)
    assert (await c.expect_command("_result"))[1:] == [5, None, 1]
    c.call("publish", 0, None, "ok-raw", "live", stream_id=1)
    status = await c.expect_command("onStatus")
    assert status[3]["code"] == "NetStream.Publish.Start"
    s = await auth.session("ok-raw")
    assert s.request.app == "live"
    c.send(9, b"\x17\x01\x00\x00\x00abc", csid=6, stream_id=1, ts=40)
    c.send(8, b"\xaf\x01xyz", csid=4, stream_id=1, ts=41)
    # A type 1 header on csid 6: delta 23, a 5-byte video message.
    c.writer.write(b"\x46" + (23).to_bytes(3, "big") + (5).to_bytes(3, "big") + b"\x09" + b"\x27\x01\x00\x00\x00")
    await asyncio.wait_for(s.closed.wait(), WAIT)  # then silence: idle timeout
    assert s.reason == "error: idle timeout"
    assert s.tags == [(9, 40, b"\x17\x01\x00\x00\x00abc"), (8, 41, b"\xaf\x01xyz"), (9, 63, b"\x27\x01\x00\x00\x00")]
    assert await c.closed()


async def test_refusal_onstatus_and_delete_stream(make_server: Any) -> None:
    server, auth = await make_server()
    c = await RawClient.connect(server)
    status = await c.publish("bad-key")
    assert status[3] == {"level": "error", "code": "NetStream.Publish.BadName", "description": "unknown stream key"}
    assert await c.closed()
    c2 = await RawClient.connect(server)
    assert (await c2.publish("ok-del"))[3]["code"] == "NetStream.Publish.Start"
    s = await auth.session("ok-del")
    c2.call("FCUnpublish", 6, None, "ok-del")
    await asyncio.wait_for(s.closed.wait(), WAIT)
    assert s.reason == "eof" and server.publishing() == []
    c2.call("deleteStream", 7, None, 1)
    assert await c2.closed()
    assert s.close_reasons == ["eof"]


async def test_hostile_connections_are_closed_while_a_publisher_works(make_server: Any, publishers: Any) -> None:
    server, auth = await make_server(handshake_timeout=1.0, idle_timeout=1.0, max_message_bytes=64 * 1024)
    good = await publishers(url(server, "ok-good"), seconds=2)

    http = await RawClient.connect(server)
    http.writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(2000))
    junk = await RawClient.connect(server)
    await junk.handshake()
    junk.writer.write(b"\xff" * 64)  # type 3 chunks on a chunk stream never started
    stalled = await RawClient.connect(server)
    stalled.writer.write(b"\x03" + bytes(100))  # handshake never completes
    t_stalled = time.monotonic()

    clients = [await RawClient.connect(server) for _ in range(4)]
    big_c, zero_c, huge_c, silent_c = clients
    for c, key in zip(clients, ["ok-big", "ok-zero", "ok-huge", "ok-silent"]):
        assert (await c.publish(key))[3]["code"] == "NetStream.Publish.Start"
    big_c.writer.write(chunk0(6, 0, 0xFFFFFF, 9, 1))  # a 16 MiB message announced
    zero_c.send(1, struct.pack(">I", 0), csid=2)  # chunk size 0
    huge_c.send(1, struct.pack(">I", 16 * 1024 * 1024 + 1), csid=2)  # chunk size above 16 MiB

    for c in (http, junk, stalled, big_c, zero_c, huge_c, silent_c):
        assert await c.closed()
    assert 0.8 <= time.monotonic() - t_stalled < 5
    sessions = {k: await auth.session(k) for k in ("ok-big", "ok-zero", "ok-huge", "ok-silent")}
    for s in sessions.values():
        await asyncio.wait_for(s.closed.wait(), WAIT)
        assert s.reason.startswith("error: ") and s.tags == []
    assert "above the limit" in sessions["ok-big"].reason
    assert sessions["ok-zero"].reason == "error: bad chunk size 0"
    assert sessions["ok-huge"].reason == f"error: bad chunk size {16 * 1024 * 1024 + 1}"
    assert sessions["ok-silent"].reason == "error: idle timeout"

    result = (await good.wait()).result
    s = await auth.session("ok-good")
    await asyncio.wait_for(s.closed.wait(), WAIT)
    assert s.reason == "eof"
    assert decode_flv(s.flv())[0] == result["video_frames"]


async def test_connections_above_the_limit_are_closed_at_once(make_server: Any) -> None:
    server, _ = await make_server(max_connections=2)
    held = [await RawClient.connect(server) for _ in range(2)]
    for c in held:
        await c.handshake()  # the server is serving both
    extra = await RawClient.connect(server)
    extra.writer.write(b"\x03" + bytes(1536))
    t0 = time.monotonic()
    assert await extra.closed()
    assert time.monotonic() - t0 < 2
    held[0].call("connect", 1, {"app": "live"})  # the held ones still work
    assert (await held[0].expect_command("_result"))[3]["code"] == "NetConnection.Connect.Success"


async def test_media_before_publish_closes_the_connection(make_server: Any) -> None:
    server, auth = await make_server()
    c = await RawClient.connect(server)
    await c.handshake()
    c.call("connect", 1, {"app": "live"})
    await c.expect_command("_result")
    c.send(9, b"\x17\x00", csid=6, stream_id=1)
    assert await c.closed()
    assert auth.requests == []


# --------------------------------------------------- ChunkReader, by hand

def test_type_0_1_2_3_headers_and_the_type_3_timestamp_rule() -> None:
    r = ChunkReader()
    data = (
        chunk0(4, 1000, 4, 8, 1) + b"AAAA"                          # type 0: ts 1000
        + b"\x44" + (21).to_bytes(3, "big") + (3).to_bytes(3, "big") + b"\x09" + b"BBB"  # type 1: +21, new size/type
        + b"\xc4" + b"CCC"                                          # type 3 new message: +21 again
        + b"\x84" + (30).to_bytes(3, "big") + b"DDD"                # type 2: +30, same size/type
        + b"\xc4" + b"EEE"                                          # type 3: +30
    )
    msgs = r.feed(data)
    assert [(m.csid, m.type_id, m.stream_id, m.timestamp_ms, m.payload) for m in msgs] == [
        (4, 8, 1, 1000, b"AAAA"), (4, 9, 1, 1021, b"BBB"), (4, 9, 1, 1042, b"CCC"),
        (4, 9, 1, 1072, b"DDD"), (4, 9, 1, 1102, b"EEE")]
    # Byte by byte gives the same messages.
    r2 = ChunkReader()
    assert [m for b in data for m in r2.feed(bytes((b,)))] == msgs


def test_type_3_after_type_0_repeats_its_timestamp_as_delta_and_continuations_keep_it() -> None:
    r = ChunkReader()
    payload = bytes(range(200))
    data = (chunk0(5, 40, 200, 9, 1) + payload[:128] + b"\xc5" + payload[128:]  # one message, two chunks
            + b"\xc5" + payload[:128] + b"\xc5" + payload[128:])               # a new one: 40 + 40
    msgs = r.feed(data)
    assert [(m.timestamp_ms, m.payload) for m in msgs] == [(40, payload), (80, payload)]


def test_two_and_three_byte_basic_headers() -> None:
    r = ChunkReader()
    two = b"\x00\x0a" + (7).to_bytes(3, "big") + (2).to_bytes(3, "big") + b"\x08" + bytes(4) + b"hi"
    three = b"\x01\x34\x12" + (9).to_bytes(3, "big") + (2).to_bytes(3, "big") + b"\x09" + bytes(4) + b"yo"
    three_next = b"\xc1\x34\x12" + b"go"  # type 3 in the 3-byte form: 9 + 9
    msgs = r.feed(two + three + three_next)
    assert [(m.csid, m.timestamp_ms, m.payload) for m in msgs] == [
        (74, 7, b"hi"), (0x1234 + 64, 9, b"yo"), (0x1234 + 64, 18, b"go")]
    assert chunk_message(74, 8, 0, 7, b"hi")[:2] == b"\x00\x0a"
    assert chunk_message(0x1234 + 64, 8, 0, 7, b"hi")[:3] == b"\x01\x34\x12"


def test_extended_timestamps() -> None:
    r = ChunkReader()
    big = 0x01000000 + 5
    payload = bytes(150)
    ext = struct.pack(">I", big)
    data = (b"\x06" + b"\xff\xff\xff" + (150).to_bytes(3, "big") + b"\x09" + bytes(4) + ext + payload[:128]
            + b"\xc6" + ext + payload[128:]             # continuation repeats the extended field
            + b"\x86" + b"\xff\xff\xff" + struct.pack(">I", 0x01000000) + payload[:128]  # type 2, extended delta
            + b"\xc6" + struct.pack(">I", 0x01000000) + payload[128:])
    msgs = r.feed(data)
    assert [(m.timestamp_ms, len(m.payload)) for m in msgs] == [(big, 150), (big + 0x01000000, 150)]
    # The encoder writes the same form.
    assert ChunkReader().feed(chunk_message(6, 9, 0, big, payload)) == [Message(6, 9, 0, big, payload)]


def test_set_chunk_size_mid_stream_and_abort() -> None:
    r = ChunkReader()
    payload = bytes(range(256)) + bytes(44)
    data = (chunk0(2, 0, 4, 1) + struct.pack(">I", 256)
            + chunk0(6, 5, 300, 9, 1) + payload[:256] + b"\xc6" + payload[256:])
    msgs = r.feed(data)
    assert r.chunk_size == 256
    assert [(m.type_id, m.payload) for m in msgs] == [(1, struct.pack(">I", 256)), (9, payload)]
    # Abort drops the unfinished message of chunk stream 6.
    part = chunk0(6, 9, 300, 9, 1) + payload[:256]
    assert r.feed(part + chunk0(2, 0, 4, 2) + struct.pack(">I", 6)) == [Message(2, 2, 0, 0, struct.pack(">I", 6))]
    assert r.feed(chunk0(6, 10, 2, 8, 1) + b"ok") == [Message(6, 8, 1, 10, b"ok")]


@pytest.mark.parametrize("data, error", [
    (chunk0(2, 0, 4, 1) + struct.pack(">I", 0), "bad chunk size 0"),
    (chunk0(2, 0, 4, 1) + struct.pack(">I", 16 * 1024 * 1024 + 1), "bad chunk size"),
    (chunk0(6, 0, 0xFFFFFF, 9), "above the limit"),
    (b"\xc7abc", "starts without a message header"),
    (chunk0(6, 0, 300, 9) + bytes(128) + chunk0(6, 0, 2, 9), "before its message ended"),
])
def test_chunk_reader_rejects_bad_input(data: bytes, error: str) -> None:
    with pytest.raises(RtmpProtocolError, match=error):
        ChunkReader(max_message_bytes=1024 * 1024).feed(data)


def test_flv_helpers_and_amf0() -> None:
    assert flv_header() == b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00"
    assert flv_header(has_audio=False)[4] == 1
    tag = flv_tag(9, 0x01020304, b"abc")
    assert tag == b"\x09\x00\x00\x03\x02\x03\x04\x01\x00\x00\x00abc" + struct.pack(">I", 14)
    values = ["onMetaData", {"width": 160.0, "stereo": True, "encoder": "x", "n": None}, [1.0, "a"]]
    assert amf0_decode(amf0_encode(*values)) == values
    ecma = b"\x08\x00\x00\x00\x01\x00\x01k\x00" + struct.pack(">d", 2.5) + b"\x00\x00\x09"
    assert amf0_decode(ecma) == [{"k": 2.5}]
