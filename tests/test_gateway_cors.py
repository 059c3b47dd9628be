"""CORS on the HTTP gateway (--cors-origin), over a real server and real
HTTP: preflights answered for every routed path (204 for an allowed origin,
403 in the JSON error form for another), Access-Control-Allow-Origin on
actual responses, errors and the server-sent event stream included, nothing
at all when no origin is configured, and bad origins refused at start-up."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest

from mediajobs.server import config
from mediajobs.server.app import App
from mediajobs.server.gateway.__main__ import parse_args as gateway_parse_args
from mediajobs.server.gateway.app import cors_origins

from conftest import gateway_app, start_app
from test_auth import make_key
from test_gateway_sse import SseReader

DASHBOARD = "https://dash.example.com"
OTHER = "https://evil.example.net"


def preflight(origin: str, method: str = "POST", headers: str = "authorization, content-type") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}


def vary(r: aiohttp.ClientResponse) -> set[str]:
    return {v.strip().lower() for v in r.headers.get("Vary", "").split(",") if v.strip()}


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[tuple[App, str, aiohttp.ClientSession]]:
    # The second origin is written as an operator might (upper case, the default port): it is normalized.
    async with gateway_app(str(tmp_path / "db.sqlite"), http_gateway="inline",
                           cors_origins=(DASHBOARD, "HTTP://Localhost:80")) as g:
        yield g


async def test_a_preflight_from_an_allowed_origin_is_answered_for_every_routed_path(
        gw: tuple[App, str, aiohttp.ClientSession]) -> None:
    _app, base, s = gw
    r = await s.options(f"{base}/v1/jobs", headers=preflight(DASHBOARD, headers="authorization, content-type, "
                                                                                 "idempotency-key, last-event-id"))
    assert r.status == 204, await r.text()
    assert r.headers["Access-Control-Allow-Origin"] == DASHBOARD
    assert {m.strip() for m in r.headers["Access-Control-Allow-Methods"].split(",")} >= {"GET", "POST"}
    allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
    assert allowed >= {"authorization", "content-type", "idempotency-key", "last-event-id"}
    assert int(r.headers["Access-Control-Max-Age"]) > 0 and "origin" in vary(r)
    assert "Access-Control-Allow-Credentials" not in r.headers
    # A path with a parameter (its own methods), the event stream, a vendor dialect's path, and the
    # Bytescale route that takes every method itself.
    for path, method, expect in (("/v1/jobs/01HA255YE6H6DEETJ5M6595ZDA", "PATCH", {"GET", "PATCH", "DELETE"}),
                                 ("/v1/jobs:watch", "GET", {"GET"}),
                                 ("/api_v3/service/bulkupload_bulk/action/list", "POST", {"POST"}),
                                 ("/abcdefg/save/in/a.mp4", "POST", {"POST", "GET", "DELETE"})):
        r = await s.options(f"{base}{path}", headers=preflight(DASHBOARD, method))
        assert r.status == 204, (path, await r.text())
        assert r.headers["Access-Control-Allow-Origin"] == DASHBOARD, path
        assert {m.strip() for m in r.headers["Access-Control-Allow-Methods"].split(",")} >= expect, path
    # The second configured origin, as a browser sends it (lower case, no default port).
    r = await s.options(f"{base}/v1/jobs", headers=preflight("http://localhost"))
    assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == "http://localhost"
    # A path without a route is the usual 404, not a preflight answer.
    r = await s.options(f"{base}/v1/nowhere", headers=preflight(DASHBOARD))
    assert r.status == 404 and (await r.json())["error"]["status"] == "NOT_FOUND"
    # OPTIONS that is not a preflight (no Access-Control-Request-Method) is still a wrong method.
    r = await s.options(f"{base}/v1/jobs", headers={"Origin": DASHBOARD})
    assert r.status == 405 and (await r.json())["error"]["code"] == 405


async def test_a_preflight_from_another_origin_is_a_json_403_without_cors_headers(
        gw: tuple[App, str, aiohttp.ClientSession]) -> None:
    _app, base, s = gw
    for origin in (OTHER, "https://dash.example.com:8443", "http://dash.example.com", "null"):
        r = await s.options(f"{base}/v1/jobs", headers=preflight(origin))
        assert r.status == 403, origin
        assert r.content_type == "application/json"
        err = (await r.json())["error"]
        assert err["code"] == 403 and err["status"] == "PERMISSION_DENIED" and "--cors-origin" in err["message"]
        assert any(d.get("reason") == "CORS_ORIGIN_NOT_ALLOWED" for d in err["details"])
        assert not any(h.lower().startswith("access-control-") for h in r.headers), dict(r.headers)
        assert "origin" in vary(r)
    # The same form under a vendor dialect's prefix: a preflight is the browser's, not the vendor client's.
    r = await s.options(f"{base}/api_v3/service/bulkupload_bulk/action/list", headers=preflight(OTHER))
    assert r.status == 403 and (await r.json())["error"]["status"] == "PERMISSION_DENIED"


async def test_actual_responses_and_errors_carry_the_allowed_origin(
        gw: tuple[App, str, aiohttp.ClientSession]) -> None:
    _app, base, s = gw
    r = await s.post(f"{base}/v1/jobs", json={"type": "T"}, headers={"Origin": DASHBOARD})
    assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == DASHBOARD
    exposed = {h.strip() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
    assert exposed >= {"Retry-After", "WWW-Authenticate", "Location"}
    job = await r.json()
    r = await s.get(f"{base}/v1/jobs/{job['id']}", headers={"Origin": DASHBOARD})
    assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == DASHBOARD and "origin" in vary(r)
    # Errors: the server's (404 JOB_NOT_FOUND), the gateway's own (no route, a wrong method, a bad body),
    # and a vendor dialect's error form.
    for method, path, body, status in (("GET", "/v1/jobs/01HA255YE6H6DEETJ5M6595ZDA", None, 404),
                                       ("GET", "/v1/nowhere", None, 404),
                                       ("PUT", "/v1/jobs", None, 405),
                                       ("POST", "/v1/jobs", b"{nope", 400),
                                       ("GET", "/API/job/VX-999999", None, 404)):
        r = await s.request(method, f"{base}{path}", data=body, headers={"Origin": DASHBOARD})
        assert r.status == status, (path, await r.text())
        assert r.headers.get("Access-Control-Allow-Origin") == DASHBOARD, (path, dict(r.headers))
    # Another origin, or none (curl, a server-side client): served as always, without CORS headers.
    for headers in ({"Origin": OTHER}, {}):
        r = await s.get(f"{base}/v1/jobs/{job['id']}", headers=headers)
        assert r.status == 200 and (await r.json())["id"] == job["id"]
        assert "Access-Control-Allow-Origin" not in r.headers and "Access-Control-Expose-Headers" not in r.headers
        assert "origin" in vary(r)  # a cache must not serve one origin's answer to another


async def test_the_event_stream_carries_the_allowed_origin(gw: tuple[App, str, aiohttp.ClientSession]) -> None:
    _app, base, s = gw
    # Headers of a streamed response go out in its prepare(), before the handler returns: the
    # on_response_prepare signal adds them there.
    r = await s.get(f"{base}/v1/jobs:watch", headers={"Origin": DASHBOARD},
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
    try:
        assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
        assert r.headers["Access-Control-Allow-Origin"] == DASHBOARD and "origin" in vary(r)
        rd = SseReader(r)
        assert (await rd.event()).event == "progress"
        job = await (await s.post(f"{base}/v1/jobs", json={"type": "T"})).json()
        (ev,) = await rd.jobs(1)
        assert ev.json["job"]["id"] == job["id"]
    finally:
        r.close()
    r = await s.get(f"{base}/v1/jobs:watch", headers={"Origin": OTHER},
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
    try:
        assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers
    finally:
        r.close()


async def test_any_origin_with_star_and_keys(tmp_path: Path) -> None:
    app = await start_app(str(tmp_path / "db.sqlite"), auth="keys", http_listen="127.0.0.1:0",
                          http_gateway="inline", cors_origins=("*",))
    try:
        key = await make_key(app, "editor")
        base = f"http://127.0.0.1:{app.gateway.port}"
        async with aiohttp.ClientSession() as s:
            r = await s.options(f"{base}/v1/jobs", headers=preflight(OTHER))
            assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == OTHER
            # Without a key: 401, whose WWW-Authenticate the page may read.
            r = await s.get(f"{base}/v1/jobs", headers={"Origin": OTHER})
            assert r.status == 401 and r.headers["Access-Control-Allow-Origin"] == OTHER
            assert "WWW-Authenticate" in r.headers["Access-Control-Expose-Headers"]
            r = await s.get(f"{base}/v1/jobs", headers={"Origin": OTHER, "Authorization": f"Bearer {key}"})
            assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == OTHER
    finally:
        await app.stop(None)


async def test_no_cors_headers_at_all_without_origins(tmp_path: Path) -> None:
    app = await start_app(str(tmp_path / "db.sqlite"), http_listen="127.0.0.1:0", http_gateway="inline")
    try:
        base = f"http://127.0.0.1:{app.gateway.port}"
        async with aiohttp.ClientSession() as s:
            r = await s.options(f"{base}/v1/jobs", headers=preflight(DASHBOARD))
            assert r.status == 405  # OPTIONS is not a method of the route: the browser blocks the call
            responses = [r, await s.get(f"{base}/v1/jobs", headers={"Origin": DASHBOARD}),
                         await s.get(f"{base}/v1/nowhere", headers={"Origin": DASHBOARD})]
            watch = await s.get(f"{base}/v1/jobs:watch", headers={"Origin": DASHBOARD},
                                timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
            assert watch.status == 200
            responses.append(watch)
            for resp in responses:
                assert not any(h.lower().startswith("access-control-") for h in resp.headers), dict(resp.headers)
                assert "origin" not in vary(resp)
            watch.close()
    finally:
        await app.stop(None)


async def test_the_embedded_gateway_process_and_mediajobs_gateway_get_the_origins(tmp_path: Path) -> None:
    # --http-gateway process (the default): the server passes --cors-origin on to its child.
    app = await start_app(str(tmp_path / "db.sqlite"), http_listen="127.0.0.1:0", cors_origins=(DASHBOARD,))
    proc = None
    try:
        async with aiohttp.ClientSession() as s:
            base = f"http://127.0.0.1:{app.gateway.port}"
            r = await s.options(f"{base}/v1/jobs", headers=preflight(DASHBOARD))
            assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == DASHBOARD
            assert (await s.options(f"{base}/v1/jobs", headers=preflight(OTHER))).status == 403
            # mediajobs-gateway on its own, origins from the environment variable.
            import os
            import sys

            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mediajobs.server.gateway", "--server", f"127.0.0.1:{app.port}", "--listen",
                "127.0.0.1:0", stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
                env={**os.environ, "MEDIAJOBS_CORS_ORIGINS": f"{OTHER}, {DASHBOARD}"})
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line.startswith("mediajobs-gateway listening on http://127.0.0.1:"), line
            url = line.split()[3]
            for origin in (OTHER, DASHBOARD):
                r = await s.get(f"{url}/v1/jobs", headers={"Origin": origin})
                assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == origin
            r = await s.get(f"{url}/v1/jobs", headers={"Origin": "https://third.example.org"})
            assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers
    finally:
        if proc is not None and proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)
        await app.stop(None)


def test_origins_are_checked_and_normalized_at_start_up(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config.parse_args(["--cors-origin", "HTTPS://Dash.Example.com:443", "--cors-origin", "http://[::1]:5173",
                             "--cors-origin", "*"], env={"MEDIAJOBS_CORS_ORIGINS": "https://ignored.example"})
    assert cfg.cors_origins == ("https://dash.example.com", "http://[::1]:5173", "*")  # the flag replaces the env
    cfg = config.parse_args([], env={"MEDIAJOBS_CORS_ORIGINS": "https://a.example, http://b.example:8080,"})
    assert cfg.cors_origins == ("https://a.example", "http://b.example:8080")
    assert config.parse_args([], env={}).cors_origins == ()
    for bad in ("https://dash.example.com/", "dash.example.com", "https://dash.example.com/app", "https://x:0",
                "https://x:65536", "null", "https://a b", ""):
        with pytest.raises(SystemExit) as e:
            config.parse_args(["--cors-origin", bad], env={})
        assert e.value.code == 2, bad
        err = capsys.readouterr().err
        assert "--cors-origin" in err and "scheme://host[:port]" in err, (bad, err)
    with pytest.raises(SystemExit) as e:
        config.parse_args([], env={"MEDIAJOBS_CORS_ORIGINS": "https://ok.example,ftp//nope"})
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "MEDIAJOBS_CORS_ORIGINS" in err and "--cors-origin" in err and "ftp//nope" in err
    # mediajobs-gateway: the same checks, the same normalization.
    a = gateway_parse_args(["--cors-origin", "HTTP://LOCALHOST:80"])
    assert a.cors_origin == ("http://localhost",)
    with pytest.raises(SystemExit) as e:
        gateway_parse_args(["--cors-origin", "https://dash.example.com/"])
    assert e.value.code == 2 and "--cors-origin" in capsys.readouterr().err
    # A program that builds the gateway itself (build_app reads its settings so) gets a ValueError
    # naming the flag.
    assert cors_origins({"cors_origins": "https://A.example:443,*"}) == {"https://a.example", "*"}
    with pytest.raises(ValueError, match="--cors-origin"):
        cors_origins({"cors_origins": ["https://ok.example", "not an origin"]})


def test_a_bad_origin_stops_both_commands_with_exit_status_2() -> None:
    import subprocess
    import sys

    for module in ("mediajobs.server.gateway", "mediajobs.server"):
        out = subprocess.run([sys.executable, "-m", module, "--cors-origin", "https://dash.example.com/app"],
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert out.returncode == 2 and "--cors-origin" in out.stderr and "is not an origin" in out.stderr, out
