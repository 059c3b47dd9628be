"""The event streams' settings as flags (--sse-max-streams, --sse-heartbeat,
--sse-resume-window) of mediajobs-server and mediajobs-gateway, their
MEDIAJOBS_SSE_* variables as defaults: they reach the gateway whichever way
it runs (inline, the server's child process, on its own), and a bad value
stops the command at start-up naming the flag and its range."""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import aiohttp
import pytest

from mediajobs.server import config
from mediajobs.server.app import App
from mediajobs.server.gateway import sse
from mediajobs.server.gateway.__main__ import parse_args as gateway_parse_args

from conftest import start_app
from test_gateway_sse import SseReader, hub_of

# Well under the default heartbeat (15 s): a keepalive within it shows the flag took effect.
KEEPALIVE_WAIT_S = 10.0


async def keepalive_then_no_second_stream(s: aiohttp.ClientSession, base: str) -> None:
    """With --sse-heartbeat 0.2 and --sse-max-streams 1: a quiet stream gets
    a `: keepalive` (read until it comes, no sleeps: the read waits, bounded
    by KEEPALIVE_WAIT_S), and while it is open a second stream is 503."""
    r = await s.get(f"{base}/v1/jobs:watch", timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
    try:
        assert r.status == 200, await r.text()
        rd = SseReader(r)

        async def until_keepalive() -> None:
            while True:
                msg = await rd.next(timeout=KEEPALIVE_WAIT_S)
                assert msg is not None, "the stream ended"
                if msg.comments == ["keepalive"]:
                    return
                assert msg.event in ("", "progress"), msg  # the retry hint and the first bookmark

        await asyncio.wait_for(until_keepalive(), KEEPALIVE_WAIT_S)
        second = await s.get(f"{base}/v1/jobs:watch")
        err = (await second.json())["error"]
        assert second.status == 503 and int(second.headers["Retry-After"]) >= 1, err
        assert "at most 1 event" in err["message"], err
    finally:
        r.close()


async def test_the_flags_reach_an_inline_gateway(tmp_path: Path) -> None:
    app = await start_app(str(tmp_path / "db.sqlite"), http_listen="127.0.0.1:0", http_gateway="inline",
                          sse_max_streams=1, sse_heartbeat_s=0.2, sse_resume_window_s=2.5)
    try:
        settings = hub_of(app).settings
        assert (settings.max_streams, settings.heartbeat_s, settings.resume_window_s) == (1, 0.2, 2.5)
        async with aiohttp.ClientSession() as s:
            base = f"http://127.0.0.1:{app.gateway.port}"
            await keepalive_then_no_second_stream(s, base)
    finally:
        await app.stop(None)


async def test_the_flags_reach_the_gateway_process(tmp_path: Path) -> None:
    app: App = await start_app(str(tmp_path / "db.sqlite"), http_listen="127.0.0.1:0",  # --http-gateway process
                               sse_max_streams=1, sse_heartbeat_s=0.2)
    try:
        assert app.gateway.args[app.gateway.args.index("--sse-heartbeat") + 1] == "0.2"
        async with aiohttp.ClientSession() as s:
            base = f"http://127.0.0.1:{app.gateway.port}"
            await keepalive_then_no_second_stream(s, base)
    finally:
        await app.stop(None)


async def test_mediajobs_gateway_takes_the_flags_and_the_variables(tmp_path: Path) -> None:
    app = await start_app(str(tmp_path / "db.sqlite"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAJOBS_SSE_")}
    # The flag beats its variable (an hour); a variable alone still sets its setting (one stream).
    env.update(MEDIAJOBS_SSE_HEARTBEAT_S="3600", MEDIAJOBS_SSE_MAX_STREAMS="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mediajobs.server.gateway", "--server", f"127.0.0.1:{app.port}", "--listen",
        "127.0.0.1:0", "--sse-heartbeat", "0.2", stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
        env=env)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line.startswith("mediajobs-gateway listening on http://127.0.0.1:"), line
        async with aiohttp.ClientSession() as s:
            await keepalive_then_no_second_stream(s, line.split()[3])
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        await app.stop(None)


@pytest.mark.parametrize("argv, words", [
    (["--sse-heartbeat", "0.01"], ("--sse-heartbeat", "0.05 to 3600")),
    (["--sse-heartbeat", "soon"], ("--sse-heartbeat", "not a number of seconds")),
    (["--sse-max-streams", "0"], ("--sse-max-streams", "1 to 1000000")),
    (["--sse-max-streams", "2.5"], ("--sse-max-streams", "not a whole number")),
    (["--sse-resume-window", "-1"], ("--sse-resume-window", "0 to 86400")),
])
def test_a_bad_value_stops_both_commands(argv: list[str], words: tuple[str, ...],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    for parse in (lambda: config.parse_args(argv, env={}), lambda: gateway_parse_args(argv)):
        with pytest.raises(SystemExit) as e:
            parse()
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words), err


def test_a_bad_variable_stops_both_commands_naming_it(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        config.parse_args([], env={"MEDIAJOBS_SSE_HEARTBEAT_S": "0"})
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "MEDIAJOBS_SSE_HEARTBEAT_S" in err and "--sse-heartbeat" in err and "0.05 to 3600" in err
    monkeypatch.setenv("MEDIAJOBS_SSE_MAX_STREAMS", "lots")
    with pytest.raises(SystemExit) as e:
        gateway_parse_args([])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "MEDIAJOBS_SSE_MAX_STREAMS" in err and "--sse-max-streams" in err
    # Given on the command line, the flag is what counts (the variable is not read).
    assert gateway_parse_args(["--sse-max-streams", "7"]).sse_max_streams == 7


def test_defaults_variables_and_settings() -> None:
    cfg = config.parse_args([], env={})
    defaults = sse.SseSettings()
    assert (cfg.sse_max_streams, cfg.sse_heartbeat_s, cfg.sse_resume_window_s) == (
        defaults.max_streams, defaults.heartbeat_s, defaults.resume_window_s)
    cfg = config.parse_args(["--sse-resume-window", "90"], env={"MEDIAJOBS_SSE_MAX_STREAMS": "50",
                                                                 "MEDIAJOBS_SSE_RESUME_WINDOW_S": "5"})
    assert (cfg.sse_max_streams, cfg.sse_resume_window_s) == (50, 90.0)
    # The gateway's settings dict over the environment; a bad value there is a ValueError naming the flag.
    got = sse.SseSettings.from_settings({"sse_heartbeat_s": 0.5}, env={"MEDIAJOBS_SSE_HEARTBEAT_S": "9",
                                                                        "MEDIAJOBS_SSE_MAX_STREAMS": "3"})
    assert (got.heartbeat_s, got.max_streams) == (0.5, 3)
    with pytest.raises(ValueError, match="--sse-heartbeat"):
        sse.SseSettings.from_settings({"sse_heartbeat_s": 0}, env={})
    # from_env alone (a gateway built without settings) keeps the default for a bad variable.
    assert sse.SseSettings.from_env({"MEDIAJOBS_SSE_HEARTBEAT_S": "nope"}).heartbeat_s == defaults.heartbeat_s
