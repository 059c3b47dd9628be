"""Requests the HTTP server cannot parse (a request line or a header too
long, malformed HTTP), sent over a raw socket to a real gateway: answered
400 in mediajobs' JSON error form (INVALID_ARGUMENT, BAD_HTTP_REQUEST), or
in a vendor dialect's form when the path can be told, never aiohttp's
plain-text page; and a long but legitimate query is served."""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from mediajobs.server import ids
from mediajobs.server.app import App
from mediajobs.server.gateway.app import MAX_FIELD_SIZE, MAX_LINE_SIZE

from conftest import start_app

READ_TIMEOUT = 30.0


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


async def send_raw(port: int, data: bytes) -> RawResponse:
    """Write `data` as is and read the answer up to the end of the connection
    (the gateway closes it after such an error)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), READ_TIMEOUT)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    assert int(headers.get("content-length", len(body))) == len(body), raw[:300]
    return RawResponse(int(status_line.split()[1]), headers, body)


def assert_bad_request(r: RawResponse, *words: str) -> str:
    assert r.status == 400, r
    assert r.headers["content-type"].startswith("application/json"), r
    err = r.json["error"]
    assert err["code"] == 400 and err["status"] == "INVALID_ARGUMENT", err
    assert [d["reason"] for d in err["details"]] == ["BAD_HTTP_REQUEST"], err
    for w in words:
        assert w in err["message"], err
    return str(err["message"])


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[tuple[App, int]]:
    app = await start_app(str(tmp_path / "db.sqlite"), http_listen="127.0.0.1:0", http_gateway="inline")
    try:
        yield app, app.gateway.port
    finally:
        await app.stop(None)


async def test_a_request_line_too_long_is_a_json_400(gw: tuple[App, int]) -> None:
    _app, port = gw
    target = b"/v1/jobs?types=" + b"A" * (MAX_LINE_SIZE + 10)
    r = await send_raw(port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    message = assert_bad_request(r, "request line", str(MAX_LINE_SIZE))
    assert "AAAA" not in message  # what the client sent is not echoed back
    # (send_raw read to the end of the connection: the gateway closed it after the answer.)


async def test_a_header_too_long_or_malformed_http_is_a_json_400(gw: tuple[App, int]) -> None:
    _app, port = gw
    r = await send_raw(port, b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * (MAX_FIELD_SIZE + 10)
                       + b"\r\n\r\n")
    assert_bad_request(r, "header", str(MAX_FIELD_SIZE))
    for request, words in ((b"GET /v1/jobs HTTP/9.1\r\nHost: x\r\n\r\n", ("HTTP version",)),
                           (b"G(T /v1/jobs HTTP/1.1\r\nHost: x\r\n\r\n", ("method",)),
                           (b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", ("header",)),
                           (b"GET /v1/jobs HTTP/1.1\r\n\r\n", ("Host",)),
                           (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", ("HTTPS",))):  # TLS to the HTTP port
        message = assert_bad_request(await send_raw(port, request), "not valid HTTP", *words)
        assert "b'" not in message and "^" not in message, message  # words, not aiohttp's excerpt of the bytes


async def test_a_vendor_path_gets_the_vendors_form_when_the_path_is_known(gw: tuple[App, int]) -> None:
    _app, port = gw
    long_query = b"?x=" + b"a" * (MAX_LINE_SIZE + 10)
    # Kaltura's client reads only its XML envelope (always HTTP 200).
    r = await send_raw(port, b"GET /api_v3/service/bulkupload_bulk/action/list" + long_query
                       + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.status == 200 and r.headers["content-type"].startswith("text/xml"), r
    assert b"<code>BAD_HTTP_REQUEST</code>" in r.body and b"request line is longer" in r.body, r.body
    # Vidispine's ExceptionDocument.
    r = await send_raw(port, b"GET /API/job" + long_query + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.status == 400 and r.json["invalidInput"]["reason"] == "BAD_HTTP_REQUEST", r
    # A malformed request line still shows its path.
    r = await send_raw(port, b"GET /api_v3/service/session/action/start HTTP/7.0\r\nHost: x\r\n\r\n")
    assert r.status == 200 and b"<code>BAD_HTTP_REQUEST</code>" in r.body, r
    # A header too long: the request line is gone by then, so the answer is mediajobs' JSON.
    r = await send_raw(port, b"GET /api_v3/service/session/action/start HTTP/1.1\r\nHost: x\r\nX-Big: "
                       + b"v" * (MAX_FIELD_SIZE + 10) + b"\r\n\r\n")
    assert_bad_request(r, "header")


async def test_a_bad_request_after_a_good_one_on_the_same_connection(gw: tuple[App, int]) -> None:
    _app, port = gw
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /v1/caller HTTP/1.1\r\nHost: x\r\n\r\n")  # kept alive (HTTP/1.1)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        assert json.loads(await reader.readexactly(length)) == {"project": "default", "home": True}
        # The second request of the connection: the parser's state was reset after the first.
        writer.write(b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * (MAX_FIELD_SIZE + 10) + b"\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), READ_TIMEOUT)
    finally:
        writer.close()
    assert raw.startswith(b"HTTP/1.0 400"), raw[:200]
    err = json.loads(raw.partition(b"\r\n\r\n")[2])["error"]
    assert err["status"] == "INVALID_ARGUMENT" and err["details"][0]["reason"] == "BAD_HTTP_REQUEST"
    assert "header" in err["message"]


async def test_a_long_legitimate_query_is_served(gw: tuple[App, int]) -> None:
    app, port = gw
    # A watch of 1,000 jobs (the most it takes) is a request line of about 34 KB, over aiohttp's 8190 default.
    job_ids = ids.new_ids(1000)
    params = [("jobIds", i) for i in job_ids]
    async with aiohttp.ClientSession() as s:
        base = f"http://127.0.0.1:{port}"
        r = await s.get(f"{base}/v1/jobs:watch", params=params,
                        timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
        try:
            assert r.status == 200, await r.text()
            assert len(str(r.url)) > 30_000
            first = await asyncio.wait_for(r.content.readline(), READ_TIMEOUT)
            assert first.startswith(b"retry:"), first
        finally:
            r.close()
        # ... and 1,001 is the route's own JSON 400 (a limit of the API, not of the HTTP server).
        r = await s.get(f"{base}/v1/jobs:watch", params=[*params, ("jobIds", ids.new_id())])
        err = (await r.json())["error"]
        assert r.status == 400 and "jobIds" in err["message"], err
        assert all(d.get("reason") != "BAD_HTTP_REQUEST" for d in err["details"])


async def test_the_gateway_process_answers_in_json_too(tmp_path: Path) -> None:
    app = await start_app(str(tmp_path / "db.sqlite"), http_listen="127.0.0.1:0")  # --http-gateway process
    try:
        r = await send_raw(app.gateway.port, b"GET /v1/jobs?" + b"q" * (MAX_LINE_SIZE + 10)
                           + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert_bad_request(r, "request line")
    finally:
        await app.stop(None)
