"""Pulling an HLS playlist over http(s) for a live job (input server type
HLS with an http(s) `file_path`), with a guard against reaching the
worker's neighbours.

FFmpeg's hls demuxer would fetch whatever the playlist names (a variant or a
segment may point at any host, a redirect anywhere), so the live worker
fetches the playlist and its segments itself, checking every URL it is
about to open, redirects included: a host that resolves to a private,
loopback, link-local, reserved or multicast address is refused unless the
worker runs with --allow-private-inputs. The MPEG-TS segments are handed to
the ingest process in order, each once, paced to their durations (a VOD
playlist plays in real time, a live one at its own pace). fMP4 segments
(EXT-X-MAP) are refused: the ingest process reads MPEG-TS from its pipe.

What remains open: a host's name is resolved for the check and again for the
connection (DNS rebinding between the two is not prevented).
"""
from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from mediajobs.server.addresses import private_address

MAX_PLAYLIST_BYTES = 1024 * 1024
MAX_SEGMENT_BYTES = 64 * 1024 * 1024
TIMEOUT_S = 10.0
USER_AGENT = "mediajobs-live-worker/1"


class InputRefused(Exception):
    """The input cannot be pulled (a private address, not HLS, not MPEG-TS,
    too large): the session stops, with this as the reason."""


def check_url(url: str, allow_private: bool) -> None:
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise InputRefused(f"only http and https URLs can be pulled, not {url[:80]!r}")
    if allow_private:
        return
    try:
        addr = private_address(u.hostname, u.port or (443 if u.scheme == "https" else 80))
    except OSError as e:
        raise InputRefused(f"cannot resolve {u.hostname}: {e}") from None
    if addr is not None:
        raise InputRefused(f"{u.hostname} resolves to {addr}, a private address: the worker does not pull "
                           "from those unless it runs with --allow-private-inputs")


class _Guarded(urllib.request.HTTPRedirectHandler):
    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        check_url(newurl, self.allow_private)  # a redirect may not lead where a URL could not
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch(url: str, allow_private: bool, limit: int) -> bytes:
    check_url(url, allow_private)
    opener = urllib.request.build_opener(_Guarded(allow_private))
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with opener.open(req, timeout=TIMEOUT_S) as resp:
            data = resp.read(limit + 1)
    except urllib.error.HTTPError as e:
        raise OSError(f"HTTP {e.code} for {url[:120]}") from None
    if len(data) > limit:
        raise InputRefused(f"{url[:120]} is larger than {limit} bytes")
    return bytes(data)


@dataclass
class Segment:
    sequence: int
    url: str
    duration: float
    discontinuity: bool


@dataclass
class MediaPlaylist:
    segments: list[Segment]
    target_duration: float
    ended: bool


def parse(text: str, base: str) -> tuple[list[str], MediaPlaylist | None]:
    """A master playlist's variant URLs (best bandwidth first), or a media
    playlist."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != "#EXTM3U":
        raise InputRefused("the input is not an HLS playlist (no #EXTM3U)")
    variants: list[tuple[int, str]] = []
    segments: list[Segment] = []
    sequence, target, ended = 0, 2.0, False
    duration: float | None = None
    discontinuity = False
    bandwidth: int | None = None
    for ln in lines[1:]:
        if ln.startswith("#EXT-X-STREAM-INF:"):
            bandwidth = 0
            for part in ln.split(":", 1)[1].split(","):
                if part.startswith("BANDWIDTH="):
                    try:
                        bandwidth = int(part.split("=", 1)[1])
                    except ValueError:
                        bandwidth = 0
        elif ln.startswith("#EXT-X-MAP"):
            raise InputRefused("fMP4 HLS (EXT-X-MAP) cannot be pulled; the input must have MPEG-TS segments")
        elif ln.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            sequence = int(ln.split(":", 1)[1] or 0)
        elif ln.startswith("#EXT-X-TARGETDURATION:"):
            target = float(ln.split(":", 1)[1] or 2)
        elif ln.startswith("#EXTINF:"):
            duration = float(ln[len("#EXTINF:"):].split(",", 1)[0] or 0)
        elif ln == "#EXT-X-DISCONTINUITY":
            discontinuity = True
        elif ln == "#EXT-X-ENDLIST":
            ended = True
        elif not ln.startswith("#"):
            url = urllib.parse.urljoin(base, ln)
            if bandwidth is not None:
                variants.append((bandwidth, url))
                bandwidth = None
            elif duration is not None:
                segments.append(Segment(sequence + len(segments), url, duration, discontinuity))
                duration, discontinuity = None, False
    if variants:
        return [u for _b, u in sorted(variants, key=lambda v: -v[0])], None
    return [], MediaPlaylist(segments, target, ended)


class Puller:
    """The media playlist behind `url`, segment by segment (blocking calls:
    run them in a thread)."""

    def __init__(self, url: str, allow_private: bool = False) -> None:
        self.url = url
        self.allow_private = allow_private
        self.media_url = ""
        self.next_sequence = -1

    def playlist(self) -> MediaPlaylist:
        url = self.media_url or self.url
        text = fetch(url, self.allow_private, MAX_PLAYLIST_BYTES).decode("utf-8", "replace")
        variants, media = parse(text, url)
        if media is None:
            self.media_url = variants[0]
            text = fetch(self.media_url, self.allow_private, MAX_PLAYLIST_BYTES).decode("utf-8", "replace")
            variants, media = parse(text, self.media_url)
            if media is None:
                raise InputRefused("the variant playlist is a master playlist again")
        else:
            self.media_url = url
        return media

    def new_segments(self, media: MediaPlaylist) -> list[Segment]:
        """The segments not handed out yet (a live playlist starts at its
        last three, as players do)."""
        if self.next_sequence < 0:
            start = 0 if media.ended else max(0, len(media.segments) - 3)
            fresh = media.segments[start:]
        else:
            fresh = [s for s in media.segments if s.sequence >= self.next_sequence]
        if fresh:
            self.next_sequence = fresh[-1].sequence + 1
        return fresh

    def segment(self, seg: Segment) -> bytes:
        data = fetch(seg.url, self.allow_private, MAX_SEGMENT_BYTES)
        if data[:1] != b"\x47":
            raise InputRefused(f"segment {seg.url[:120]} is not MPEG-TS")
        return data
