"""The guarded HLS fetcher of the live worker (client/live/hls_pull.py)
against a real HTTP server on 127.0.0.1: private addresses are refused
unless allowed, redirects are checked like URLs, playlists are parsed
(master -> best variant, live start, fMP4 refused)."""
from __future__ import annotations

import http.server
import threading
from typing import Any, Iterator

import pytest

from mediajobs.client.live import hls_pull

MEDIA = ("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:7\n#EXTINF:2.0,\na.ts\n#EXTINF:2.0,\nb.ts\n"
         "#EXT-X-DISCONTINUITY\n#EXTINF:1.5,\nc.ts\n#EXTINF:2.0,\nd.ts\n")
MASTER = ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=300000\nlow/index.m3u8\n"
          "#EXT-X-STREAM-INF:BANDWIDTH=900000,RESOLUTION=640x360\nhigh/index.m3u8\n")


class Site(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:9/secret")
            self.end_headers()
            return
        body = {"/media.m3u8": MEDIA.encode(), "/master.m3u8": MASTER.encode(),
                "/high/index.m3u8": (MEDIA + "#EXT-X-ENDLIST\n").encode(),
                "/high/a.ts": b"\x47" + b"\0" * 187, "/high/bad.ts": b"<html>"}.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def site() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Site)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


def test_private_addresses_and_redirects_to_them_are_refused(site: str) -> None:
    with pytest.raises(hls_pull.InputRefused, match="private address"):
        hls_pull.Puller(f"{site}/media.m3u8").playlist()
    with pytest.raises(hls_pull.InputRefused, match="only http and https"):
        hls_pull.check_url("file:///etc/passwd", allow_private=True)
    # A redirect is checked like a URL: to a private address it is refused.
    import urllib.request

    guard = hls_pull._Guarded(allow_private=False)
    req = urllib.request.Request("https://example.com/live.m3u8")
    with pytest.raises(hls_pull.InputRefused, match="private address"):
        guard.redirect_request(req, None, 302, "Found", {}, "http://169.254.169.254/latest/meta-data")
    # Followed when allowed (the test site redirects to a port nothing listens on).
    with pytest.raises(OSError):
        hls_pull.fetch(f"{site}/redirect", allow_private=True, limit=1000)


def test_master_playlists_live_starts_and_segments(site: str) -> None:
    p = hls_pull.Puller(f"{site}/master.m3u8", allow_private=True)
    media = p.playlist()
    assert p.media_url == f"{site}/high/index.m3u8" and media.ended and media.target_duration == 2
    assert [(s.sequence, s.url.rsplit("/", 1)[1], s.duration, s.discontinuity) for s in media.segments] == [
        (7, "a.ts", 2.0, False), (8, "b.ts", 2.0, False), (9, "c.ts", 1.5, True), (10, "d.ts", 2.0, False)]
    assert len(p.new_segments(media)) == 4 and p.new_segments(media) == []  # each handed out once
    assert p.segment(media.segments[0]).startswith(b"\x47")
    with pytest.raises(hls_pull.InputRefused, match="not MPEG-TS"):
        p.segment(hls_pull.Segment(0, f"{site}/high/bad.ts", 1.0, False))
    live = hls_pull.Puller(f"{site}/media.m3u8", allow_private=True)
    assert [s.sequence for s in live.new_segments(live.playlist())] == [8, 9, 10]  # a live one: its last three
    with pytest.raises(hls_pull.InputRefused, match="fMP4"):
        hls_pull.parse("#EXTM3U\n#EXT-X-MAP:URI=init.mp4\n#EXTINF:2,\na.m4s\n", site)
    with pytest.raises(hls_pull.InputRefused, match="not an HLS playlist"):
        hls_pull.parse("<html>", site)
