"""The RTMP front door of the live worker: an asyncio RTMP ingest server that
checks a publisher's stream key before it accepts any media.

    async def authorize(req: PublishRequest) -> PublishSession:
        if not known(req.stream_key):
            raise PublishRefused("unknown stream key")
        return MySession(...)

    server = RtmpServer(authorize, "0.0.0.0", 1935)
    await server.start()

Written from the Adobe RTMP specification 1.0: plain handshake (version 3,
S1 random, S2 echoes C1), chunk streams (basic header types 0-3 in their 1,
2 and 3-byte forms, extended timestamps), the protocol control messages and
the AMF0 commands an encoder (FFmpeg, OBS) sends to publish. Ingest only:
there is no play.

The authorize callback is awaited when `publish` arrives; nothing of the
stream is read meanwhile and audio/video before an accepted publish closes
the connection. A refusal is answered with onStatus NetStream.Publish.BadName
(level error, the reason as description) and the connection is closed.
Accepted streams hand every audio (8), video (9) and script data (18)
message to the session as FLV tag bodies; the `@setDataFrame` wrapper of a
data message is removed, so the body is what an FLV file carries
(`onMetaData` + its array). `flv_header` and `flv_tag` write those tags to an
FLV file.

Hostile input is bounded: handshake_timeout for the handshake (and again for
getting from the handshake to `publish`), idle_timeout for every read after
it, max_message_bytes per message, chunk sizes 1..16 MiB, at most 64 chunk
streams and max_connections connections. The stream key is a secret: it is
never logged.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import struct
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, NoReturn, Protocol

log = logging.getLogger("mediajobs.live.rtmp")

# Message type ids.
MSG_SET_CHUNK_SIZE = 1
MSG_ABORT = 2
MSG_ACK = 3
MSG_USER_CONTROL = 4
MSG_WINDOW_ACK_SIZE = 5
MSG_SET_PEER_BANDWIDTH = 6
MSG_AUDIO = 8
MSG_VIDEO = 9
MSG_DATA_AMF3 = 15
MSG_COMMAND_AMF3 = 17
MSG_DATA_AMF0 = 18
MSG_COMMAND_AMF0 = 20

HANDSHAKE_SIZE = 1536
DEFAULT_CHUNK_SIZE = 128
MAX_CHUNK_SIZE = 16 * 1024 * 1024
MAX_CHUNK_STREAMS = 64
MAX_KEY_LENGTH = 1024
OUT_CHUNK_SIZE = 4096
WINDOW_ACK_SIZE = 2_500_000
_EXT = 0xFFFFFF


class RtmpProtocolError(Exception):
    """The peer broke the protocol (or a limit); its connection is closed."""


# --------------------------------------------------------------------- AMF0

class _AmfReader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.refs: list[Any] = []

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise RtmpProtocolError("truncated AMF0 value")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def _str(self, n: int) -> str:
        return self._take(n).decode("utf-8", errors="replace")

    def _short_str(self) -> str:
        (n,) = struct.unpack(">H", self._take(2))
        return self._str(n)

    def _pairs(self, into: dict[str, Any], depth: int) -> None:
        while self.pos < len(self.data):
            key = self._short_str()
            if key == "" and self.pos < len(self.data) and self.data[self.pos] == 9:
                self.pos += 1
                return
            into[key] = self.value(depth + 1)
        # An ECMA array without its end marker (some encoders): end of data ends it.

    def value(self, depth: int = 0) -> Any:
        if depth > 32:
            raise RtmpProtocolError("AMF0 nesting too deep")
        marker = self._take(1)[0]
        if marker == 0:
            return struct.unpack(">d", self._take(8))[0]
        if marker == 1:
            return self._take(1)[0] != 0
        if marker == 2:
            return self._short_str()
        if marker in (3, 8, 16):
            if marker == 8:
                self._take(4)  # approximate count; the end marker ends it
            if marker == 16:
                self._short_str()  # class name
            obj: dict[str, Any] = {}
            self.refs.append(obj)
            self._pairs(obj, depth)
            return obj
        if marker in (5, 6, 13):
            return None
        if marker == 7:
            (i,) = struct.unpack(">H", self._take(2))
            if i >= len(self.refs):
                raise RtmpProtocolError("bad AMF0 reference")
            return self.refs[i]
        if marker == 10:
            (n,) = struct.unpack(">I", self._take(4))
            if n > len(self.data) - self.pos:
                raise RtmpProtocolError("bad AMF0 strict array length")
            arr: list[Any] = []
            self.refs.append(arr)
            for _ in range(n):
                arr.append(self.value(depth + 1))
            return arr
        if marker == 11:
            ms = struct.unpack(">d", self._take(8))[0]
            self._take(2)
            return ms
        if marker in (12, 15):
            (n,) = struct.unpack(">I", self._take(4))
            return self._str(n)
        raise RtmpProtocolError(f"unsupported AMF0 marker {marker}")


def amf0_decode(data: bytes) -> list[Any]:
    """All AMF0 values in `data`, as Python values (objects and ECMA arrays
    as dicts, null/undefined as None)."""
    r = _AmfReader(data)
    out: list[Any] = []
    while r.pos < len(data):
        out.append(r.value())
    return out


def _amf0_value(v: Any, out: bytearray) -> None:
    if v is None:
        out.append(5)
    elif isinstance(v, bool):
        out += bytes((1, 1 if v else 0))
    elif isinstance(v, (int, float)):
        out.append(0)
        out += struct.pack(">d", float(v))
    elif isinstance(v, str):
        b = v.encode("utf-8")
        if len(b) > 0xFFFF:
            out.append(12)
            out += struct.pack(">I", len(b))
        else:
            out.append(2)
            out += struct.pack(">H", len(b))
        out += b
    elif isinstance(v, dict):
        out.append(3)
        for k, item in v.items():
            kb = str(k).encode("utf-8")
            out += struct.pack(">H", len(kb)) + kb
            _amf0_value(item, out)
        out += b"\x00\x00\x09"
    elif isinstance(v, (list, tuple)):
        out.append(10)
        out += struct.pack(">I", len(v))
        for item in v:
            _amf0_value(item, out)
    else:
        raise TypeError(f"cannot AMF0-encode {type(v).__name__}")


def amf0_encode(*values: Any) -> bytes:
    out = bytearray()
    for v in values:
        _amf0_value(v, out)
    return bytes(out)


# ------------------------------------------------------------------- chunks

@dataclass(frozen=True, slots=True)
class Message:
    csid: int
    type_id: int
    stream_id: int
    timestamp_ms: int
    payload: bytes


class _ChunkStream:
    __slots__ = ("timestamp", "delta", "length", "type_id", "stream_id", "extended", "buf")

    def __init__(self) -> None:
        self.timestamp = 0
        self.delta = 0
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.extended = False
        self.buf: bytearray | None = None  # a message in progress


class ChunkReader:
    """Reassembles RTMP messages from the peer's chunk stream. Pure: feed it
    bytes, get complete messages. Set Chunk Size and Abort are applied as
    soon as they complete (and are returned too). Raises RtmpProtocolError."""

    def __init__(self, max_message_bytes: int = 8 * 1024 * 1024) -> None:
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self.max_message_bytes = max_message_bytes
        self._buf = bytearray()
        self._streams: dict[int, _ChunkStream] = {}
        self._pending = 0  # bytes held in unfinished messages

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        pos = 0
        try:
            while True:
                used = self._chunk(pos, out)
                if used == 0:
                    break
                pos += used
        finally:
            del self._buf[:pos]
        return out

    def _chunk(self, pos: int, out: list[Message]) -> int:
        """Parse one chunk at `pos`; 0 if it is not all here yet."""
        buf = self._buf
        avail = len(buf) - pos
        if avail < 1:
            return 0
        b0 = buf[pos]
        fmt, csid, h = b0 >> 6, b0 & 0x3F, 1
        if csid == 0:
            if avail < 2:
                return 0
            csid, h = buf[pos + 1] + 64, 2
        elif csid == 1:
            if avail < 3:
                return 0
            csid, h = buf[pos + 1] + (buf[pos + 2] << 8) + 64, 3
        mh = (11, 7, 3, 0)[fmt]
        if avail < h + mh:
            return 0
        st = self._streams.get(csid)
        if st is None:
            if fmt >= 2:
                raise RtmpProtocolError(f"chunk stream {csid} starts without a message header")
            if len(self._streams) >= MAX_CHUNK_STREAMS:
                raise RtmpProtocolError("too many chunk streams")
        p = pos + h
        ts_field = length = type_id = stream_id = 0
        if fmt <= 2:
            ts_field = int.from_bytes(buf[p:p + 3], "big")
        if fmt <= 1:
            length = int.from_bytes(buf[p + 3:p + 6], "big")
            type_id = buf[p + 6]
        if fmt == 0:
            stream_id = int.from_bytes(buf[p + 7:p + 11], "little")
        extended = ts_field == _EXT if fmt <= 2 else (st is not None and st.extended)
        hdr = h + mh + (4 if extended else 0)
        if avail < hdr:
            return 0
        ts_value = int.from_bytes(buf[pos + h + mh:pos + hdr], "big") if extended else ts_field

        continuing = st is not None and st.buf is not None
        if continuing and fmt != 3:
            raise RtmpProtocolError(f"new message header on chunk stream {csid} before its message ended")
        msg_length = length if fmt <= 1 else (st.length if st is not None else 0)
        if not continuing and msg_length > self.max_message_bytes:
            raise RtmpProtocolError(f"message of {msg_length} bytes is above the limit of {self.max_message_bytes}")
        have = len(st.buf) if continuing and st is not None and st.buf is not None else 0
        n = min(self.chunk_size, msg_length - have)
        if avail < hdr + n:
            return 0
        if not continuing and self._pending + msg_length > 2 * self.max_message_bytes:
            raise RtmpProtocolError("too much unfinished message data")

        # Everything is here: commit.
        if st is None:
            st = self._streams[csid] = _ChunkStream()
        if not continuing:
            if fmt == 0:
                st.timestamp = ts_value
                st.delta = ts_value  # a type 3 after a type 0 repeats its timestamp as delta
                st.stream_id = stream_id
            elif fmt == 3:  # a new message with everything of the last one, delta included
                st.timestamp = (st.timestamp + st.delta) & 0xFFFFFFFF
            else:
                st.delta = ts_value
                st.timestamp = (st.timestamp + ts_value) & 0xFFFFFFFF
            if fmt <= 1:
                st.length, st.type_id = length, type_id
            if fmt <= 2:
                st.extended = extended
            st.buf = bytearray()
            self._pending += msg_length
        assert st.buf is not None
        st.buf += buf[pos + hdr:pos + hdr + n]
        if len(st.buf) >= st.length:
            payload = bytes(st.buf)
            st.buf = None
            self._pending -= st.length
            msg = Message(csid, st.type_id, st.stream_id, st.timestamp, payload)
            self._control(msg)
            out.append(msg)
        return hdr + n

    def _control(self, msg: Message) -> None:
        if msg.type_id == MSG_SET_CHUNK_SIZE:
            if len(msg.payload) < 4:
                raise RtmpProtocolError("short Set Chunk Size")
            size = int.from_bytes(msg.payload[:4], "big")
            if size & 0x80000000 or not 1 <= size <= MAX_CHUNK_SIZE:
                raise RtmpProtocolError(f"bad chunk size {size}")
            self.chunk_size = size
        elif msg.type_id == MSG_ABORT:
            if len(msg.payload) < 4:
                raise RtmpProtocolError("short Abort")
            st = self._streams.get(int.from_bytes(msg.payload[:4], "big"))
            if st is not None and st.buf is not None:
                self._pending -= st.length
                st.buf = None


def _basic_header(fmt: int, csid: int) -> bytes:
    if 2 <= csid <= 63:
        return bytes((fmt << 6 | csid,))
    if 64 <= csid <= 319:
        return bytes((fmt << 6, csid - 64))
    if 320 <= csid <= 65599:
        return bytes((fmt << 6 | 1, (csid - 64) & 0xFF, (csid - 64) >> 8))
    raise ValueError(f"bad chunk stream id {csid}")


def chunk_message(csid: int, type_id: int, stream_id: int, timestamp_ms: int, payload: bytes,
                  chunk_size: int = DEFAULT_CHUNK_SIZE) -> bytes:
    """One message as chunks: a type 0 chunk, then type 3 continuations."""
    ts = timestamp_ms & 0xFFFFFFFF
    ext = ts >= _EXT
    ext_bytes = struct.pack(">I", ts) if ext else b""
    out = bytearray(_basic_header(0, csid))
    out += (_EXT if ext else ts).to_bytes(3, "big") + len(payload).to_bytes(3, "big")
    out += bytes((type_id,)) + stream_id.to_bytes(4, "little") + ext_bytes
    out += payload[:chunk_size]
    for off in range(chunk_size, len(payload), chunk_size):
        out += _basic_header(3, csid) + ext_bytes + payload[off:off + chunk_size]
    return bytes(out)


# ---------------------------------------------------------------------- FLV

def flv_header(has_audio: bool = True, has_video: bool = True) -> bytes:
    """The 9-byte FLV file header and PreviousTagSize0."""
    flags = (4 if has_audio else 0) | (1 if has_video else 0)
    return b"FLV\x01" + bytes((flags,)) + struct.pack(">I", 9) + b"\x00\x00\x00\x00"


def flv_tag(tag_type: int, timestamp_ms: int, body: bytes) -> bytes:
    """One FLV tag (header + body) and its PreviousTagSize."""
    if len(body) > 0xFFFFFF:
        raise ValueError("FLV tag body above 16 MiB")
    ts = timestamp_ms & 0xFFFFFFFF
    head = bytes((tag_type,)) + len(body).to_bytes(3, "big") + (ts & 0xFFFFFF).to_bytes(3, "big") \
        + bytes((ts >> 24,)) + b"\x00\x00\x00"
    return head + body + struct.pack(">I", 11 + len(body))


# ------------------------------------------------------------------ server

@dataclass
class PublishRequest:
    app: str            # connect's "app" (e.g. "live")
    stream_key: str     # the publish name, without its query string
    query: str          # what followed '?' in the publish name
    tc_url: str
    peer: tuple[str, int]


class PublishRefused(Exception):
    """Raised by authorize to refuse a publish; `reason` goes to the publisher."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PublishSession(Protocol):
    def on_metadata(self, metadata: dict[str, Any]) -> None: ...

    def on_tag(self, tag_type: int, timestamp_ms: int, body: bytes) -> None: ...

    def on_close(self, reason: str) -> None: ...


Authorize = Callable[[PublishRequest], Awaitable[PublishSession]]


class _Closed(Exception):
    """Ends a connection's loop; the reason is already recorded."""


class _Connection:
    _ids = itertools.count(1)

    def __init__(self, server: RtmpServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.id = next(self._ids)
        self.srv = server
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer: tuple[str, int] = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        self.chunks = ChunkReader(server.max_message_bytes)
        self.task: asyncio.Task[None] | None = None
        self.app = ""
        self.tc_url = ""
        self.connected = False
        self.key: str | None = None  # reserved (authorizing) or publishing
        self.session: PublishSession | None = None
        self.state = "connecting"  # -> authorizing -> publishing -> unpublished
        self.finished = False
        self.reason = ""
        self.next_stream_id = 1
        self.bytes_in = 0
        self.last_ack = 0
        self.ack_window = WINDOW_ACK_SIZE

    # -- ending
    def finish(self, reason: str) -> None:
        """End the connection's session (on_close exactly once) and release its key."""
        if self.finished:
            return
        self.finished = True
        self.reason = reason
        log.info("rtmp #%d %s: closed (%s)", self.id, self.peer[0], reason)
        self.end_session(reason)

    def end_session(self, reason: str) -> None:
        """Close the session (if any) and release the key; the connection may stay."""
        if self.key is not None and self.srv._keys.get(self.key) is self:
            del self.srv._keys[self.key]
        self.key = None
        if self.state in ("authorizing", "publishing"):
            self.state = "unpublished"
        session, self.session = self.session, None
        if session is not None:
            self._close_session(session, reason)

    @staticmethod
    def _close_session(session: PublishSession, reason: str) -> None:
        try:
            session.on_close(reason)
        except Exception:
            log.exception("rtmp session on_close failed")

    def abort(self, reason: str) -> None:
        self.finish(reason)
        self.writer.transport.abort()

    # -- output
    def send(self, csid: int, type_id: int, stream_id: int, payload: bytes) -> None:
        if not self.writer.transport.is_closing():
            self.writer.write(chunk_message(csid, type_id, stream_id, 0, payload, OUT_CHUNK_SIZE))

    def command(self, stream_id: int, *values: Any) -> None:
        self.send(3 if stream_id == 0 else 5, MSG_COMMAND_AMF0, stream_id, amf0_encode(*values))

    async def drain(self) -> None:
        async with asyncio.timeout(self.srv.idle_timeout):
            await self.writer.drain()

    # -- main loop
    async def run(self) -> None:
        try:
            async with asyncio.timeout(self.srv.handshake_timeout):
                await self._handshake()
        except TimeoutError:
            self.abort("error: handshake timeout")
            return
        loop = asyncio.get_running_loop()
        publish_deadline = loop.time() + self.srv.handshake_timeout
        while not self.finished:
            timeout = self.srv.idle_timeout
            if self.state == "connecting":
                timeout = min(timeout, max(publish_deadline - loop.time(), 0.0))
            try:
                async with asyncio.timeout(timeout):
                    data = await self.reader.read(65536)
            except TimeoutError:
                if self.state == "connecting":
                    self.abort("error: no publish within the handshake timeout")
                else:
                    self.abort("error: idle timeout")
                return
            if not data:
                self.finish("eof")
                return
            self.bytes_in += len(data)
            if self.bytes_in - self.last_ack >= self.ack_window:
                self.last_ack = self.bytes_in
                self.send(2, MSG_ACK, 0, struct.pack(">I", self.bytes_in & 0xFFFFFFFF))
            for msg in self.chunks.feed(data):
                await self._message(msg)
                if self.finished:
                    return

    async def _handshake(self) -> None:
        c0c1 = await self.reader.readexactly(1 + HANDSHAKE_SIZE)
        if c0c1[0] != 3:
            raise RtmpProtocolError(f"unsupported RTMP version {c0c1[0]} (not an RTMP client?)")
        s1 = struct.pack(">I", int(time.monotonic() * 1000) & 0xFFFFFFFF) + b"\x00" * 4 + os.urandom(HANDSHAKE_SIZE - 8)
        self.writer.write(b"\x03" + s1 + c0c1[1:])
        await self.writer.drain()
        await self.reader.readexactly(HANDSHAKE_SIZE)  # C2: an echo of S1, not checked

    async def _message(self, msg: Message) -> None:
        t = msg.type_id
        if t in (MSG_AUDIO, MSG_VIDEO, MSG_DATA_AMF0):
            self._media(msg)
        elif t in (MSG_COMMAND_AMF0, MSG_COMMAND_AMF3):
            payload = msg.payload[1:] if t == MSG_COMMAND_AMF3 and msg.payload[:1] == b"\x00" else msg.payload
            await self._command(msg, amf0_decode(payload))
        elif t == MSG_WINDOW_ACK_SIZE:
            if len(msg.payload) >= 4:
                size = int.from_bytes(msg.payload[:4], "big")
                if size > 0:
                    self.ack_window = size
        elif t == MSG_USER_CONTROL:
            if len(msg.payload) >= 6 and msg.payload[:2] == b"\x00\x06":  # PingRequest
                self.send(2, MSG_USER_CONTROL, 0, b"\x00\x07" + msg.payload[2:6])
        elif t in (MSG_SET_CHUNK_SIZE, MSG_ABORT, MSG_ACK, MSG_SET_PEER_BANDWIDTH, MSG_DATA_AMF3):
            pass
        else:
            log.debug("rtmp #%d: ignoring message type %d", self.id, t)

    def _media(self, msg: Message) -> None:
        session = self.session
        if session is None:
            if self.state != "unpublished":
                raise RtmpProtocolError("media before publish")
            return  # after FCUnpublish
        body = msg.payload
        if msg.type_id == MSG_DATA_AMF0:
            try:
                values = amf0_decode(body)
            except RtmpProtocolError:
                values = []
            if values[:1] == ["@setDataFrame"]:
                body = body[len(amf0_encode("@setDataFrame")):]
                values = values[1:]
            if len(values) >= 2 and values[0] == "onMetaData" and isinstance(values[1], dict):
                session.on_metadata(values[1])
        session.on_tag(msg.type_id, msg.timestamp_ms, body)

    async def _command(self, msg: Message, values: list[Any]) -> None:
        if not values or not isinstance(values[0], str):
            raise RtmpProtocolError("command without a name")
        name = values[0]
        txn = values[1] if len(values) > 1 and isinstance(values[1], (int, float)) else 0.0
        args = values[2:]
        log.debug("rtmp #%d: command %.40r", self.id, name)
        if name == "connect":
            obj = args[0] if args and isinstance(args[0], dict) else {}
            self.app = str(obj.get("app", "")).strip("/")
            self.tc_url = str(obj.get("tcUrl", ""))
            self.connected = True
            self.send(2, MSG_WINDOW_ACK_SIZE, 0, struct.pack(">I", WINDOW_ACK_SIZE))
            self.send(2, MSG_SET_PEER_BANDWIDTH, 0, struct.pack(">IB", WINDOW_ACK_SIZE, 2))
            self.send(2, MSG_SET_CHUNK_SIZE, 0, struct.pack(">I", OUT_CHUNK_SIZE))
            self.command(0, "_result", txn, {"fmsVer": "FMS/3,0,1,123", "capabilities": 31},
                         {"level": "status", "code": "NetConnection.Connect.Success",
                          "description": "Connection succeeded.", "objectEncoding": 0})
        elif name in ("releaseStream", "FCPublish"):
            if name == "FCPublish":
                self.command(0, "onFCPublish", 0, None,
                             {"code": "NetStream.Publish.Start", "description": "FCPublish"})
            if txn:
                self.command(0, "_result", txn, None, None)
        elif name == "createStream":
            sid = self.next_stream_id
            self.next_stream_id += 1
            self.command(0, "_result", txn, None, sid)
        elif name == "publish":
            await self._publish(msg.stream_id, args)
        elif name in ("FCUnpublish", "deleteStream", "closeStream"):
            self.end_session("eof")  # the connection stays until deleteStream or the peer closes
            if name != "FCUnpublish":
                self.finish("eof")
                await self._close_gracefully()
                raise _Closed()
        elif name in ("_result", "_error", "onStatus", "_checkbw", "getStreamLength"):
            pass
        elif txn:
            self.command(0, "_error", txn, None, {"level": "error", "code": "NetConnection.Call.Failed",
                                                  "description": "unknown command"})
        await self.drain()

    async def _publish(self, stream_id: int, args: list[Any]) -> None:
        name = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
        if not self.connected:
            raise RtmpProtocolError("publish before connect")
        if self.state != "connecting":
            await self._refuse(stream_id, "already published on this connection")
        key, _, query = name.partition("?")
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            await self._refuse(stream_id, "invalid stream key")
        if key in self.srv._keys:
            await self._refuse(stream_id, "already publishing")
        self.key = key
        self.srv._keys[key] = self
        self.state = "authorizing"
        req = PublishRequest(self.app, key, query, self.tc_url, self.peer)
        try:
            session = await self.srv.authorize(req)
        except PublishRefused as e:
            await self._refuse(stream_id, e.reason)
        except Exception:
            log.exception("rtmp #%d: authorize failed", self.id)
            await self._refuse(stream_id, "internal error")
        if self.finished:  # dropped or closed while authorizing
            self._close_session(session, self.reason)
            raise _Closed()
        self.session = session
        self.state = "publishing"
        log.info("rtmp #%d %s: publishing (app %r)", self.id, self.peer[0], self.app)
        self.send(2, MSG_USER_CONTROL, 0, struct.pack(">HI", 0, stream_id))  # StreamBegin
        self.command(stream_id, "onStatus", 0, None, {"level": "status", "code": "NetStream.Publish.Start",
                                                      "description": "Publishing."})

    async def _refuse(self, stream_id: int, reason: str) -> NoReturn:
        log.info("rtmp #%d %s: publish refused: %s", self.id, self.peer[0], reason)
        self.command(stream_id, "onStatus", 0, None, {"level": "error", "code": "NetStream.Publish.BadName",
                                                      "description": reason})
        self.finish("error: publish refused: " + reason)
        await self._close_gracefully()
        raise _Closed()

    async def _close_gracefully(self) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(2.0):
                await self.writer.wait_closed()
        except (TimeoutError, OSError):
            self.writer.transport.abort()


class RtmpServer:
    """An RTMP ingest server: one port, many publishers, keys checked by
    `authorize` before any media is accepted."""

    def __init__(self, authorize: Authorize, host: str = "127.0.0.1", port: int = 0, *,
                 max_connections: int = 64, handshake_timeout: float = 10.0, idle_timeout: float = 30.0,
                 max_message_bytes: int = 8 * 1024 * 1024) -> None:
        self.authorize = authorize
        self.host = host
        self._port = port
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.max_message_bytes = max_message_bytes
        self._server: asyncio.Server | None = None
        self._conns: set[_Connection] = set()
        self._keys: dict[str, _Connection] = {}  # reserved (authorizing) or publishing
        self._closing = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self._port)
        self._port = self._server.sockets[0].getsockname()[1]
        log.info("rtmp listening on %s:%d", self.host, self._port)

    @property
    def port(self) -> int:
        return self._port

    def publishing(self) -> list[str]:
        return [k for k, c in self._keys.items() if c.state == "publishing"]

    async def drop(self, stream_key: str) -> bool:
        conn = self._keys.get(stream_key)
        if conn is None:
            return False
        log.info("rtmp #%d %s: dropping the publisher", conn.id, conn.peer[0])
        conn.abort("dropped")
        await self._wait([conn])
        return True

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        conns = list(self._conns)
        for c in conns:
            c.abort("error: server closed")
        for c in conns:
            if c.task is not None and c.task is not asyncio.current_task():
                c.task.cancel()
        await self._wait(conns)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    @staticmethod
    async def _wait(conns: list[_Connection]) -> None:
        tasks = [c.task for c in conns if c.task is not None and c.task is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing or len(self._conns) >= self.max_connections:
            log.warning("rtmp: refusing a connection from %s (%d connections open)",
                        (writer.get_extra_info("peername") or ("?",))[0], len(self._conns))
            writer.transport.abort()
            return
        conn = _Connection(self, reader, writer)
        conn.task = asyncio.current_task()
        self._conns.add(conn)
        log.info("rtmp #%d %s: connected", conn.id, conn.peer[0])
        try:
            await conn.run()
        except _Closed:
            pass
        except asyncio.CancelledError:
            conn.abort("error: server closed")
        except RtmpProtocolError as e:
            conn.abort(f"error: {e}")
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            conn.abort(f"error: connection lost ({type(e).__name__})")
        except TimeoutError:
            conn.abort("error: write timeout")
        except Exception as e:
            log.exception("rtmp #%d: unexpected failure", conn.id)
            conn.abort(f"error: {type(e).__name__}: {e}")
        finally:
            conn.finish("eof")
            if not writer.transport.is_closing():
                writer.transport.abort()
            self._conns.discard(conn)
