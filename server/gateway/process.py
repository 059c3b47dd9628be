"""The gateway as a child process of the server (`--http-listen` with
`--http-gateway process`, the default).

Why a process: in one interpreter the HTTP server, the gateway's gRPC
client and the gRPC server share one GIL and one event loop, and a GET over
HTTP then costs the server process twice what the same gateway costs as a
process of its own (scripts/bench_gateway.py). So the server starts
`python -m mediajobs.server.gateway` on the private unix socket it listens
on for it, reads the port from the child's first line, starts it again if
it dies, and stops it when the server stops. The child is told to die with
the server (PR_SET_PDEATHSIG), so a killed server leaves no gateway behind.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
from typing import Any, Mapping

log = logging.getLogger("mediajobs.gateway")

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
PR_SET_PDEATHSIG = 1


class GatewayStartError(Exception):
    pass


def die_with_parent(parent_pid: int) -> None:
    """In the child (mediajobs-gateway --parent-pid): SIGTERM when the server
    goes (Linux), or exit at once if it is gone already."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the child outlives a killed server
        pass
    if os.getppid() != parent_pid:
        raise SystemExit(0)


def settings_args(settings: Mapping[str, Any]) -> list[str]:
    """The gateway's settings (gateway.app.SETTINGS_KEY) as mediajobs-gateway
    flags (config.GATEWAY_FLAGS): a list is its flag repeated, "" or None
    none."""
    from ..config import GATEWAY_FLAGS

    args: list[str] = []
    for key, flag in GATEWAY_FLAGS.items():
        value = settings.get(key)
        for v in value if isinstance(value, (list, tuple)) else (value,):
            if v is not None and v != "":
                args += [flag, str(v)]
    return args


class GatewayProcess:
    def __init__(self, target: str, listen: str, settings: Mapping[str, Any], insecure: bool) -> None:
        self.args = [sys.executable, "-m", "mediajobs.server.gateway", "--server", target, "--listen", listen,
                     "--parent-pid", str(os.getpid()), *settings_args(settings)]
        if insecure:
            self.args.append("--insecure")
        self.listen = listen
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False
        self.starts = 0  # how many times it was started (restarts + 1)
        self._started = asyncio.Condition()

    async def start(self) -> "GatewayProcess":
        await self._spawn()
        self._watch = asyncio.get_running_loop().create_task(self._keep_running(), name="mediajobs-gateway-process")
        return self

    async def _spawn(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self.args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)).decode(errors="replace")
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise GatewayStartError(f"the HTTP gateway did not start within {START_TIMEOUT_S:.0f} s") from None
        # "mediajobs-gateway listening on http://HOST:PORT -> TARGET"
        if not line.startswith("mediajobs-gateway listening on http://"):
            await proc.wait()
            raise GatewayStartError(f"the HTTP gateway did not start (exit code {proc.returncode}); "
                                    "its error is above")
        self.port = int(line.split()[3].rsplit(":", 1)[1])
        if self.listen.rsplit(":", 1)[1] == "0":
            # A restart must come back on the same port, not another free one.
            self.args[self.args.index("--listen") + 1] = f"{self.listen.rsplit(':', 1)[0]}:{self.port}"
        self.proc = proc
        self._drain = asyncio.get_running_loop().create_task(proc.stdout.read())  # nothing more is printed
        async with self._started:
            self.starts += 1
            self._started.notify_all()

    async def wait_started(self, n: int) -> None:
        """Return once the gateway has been started n times (tests)."""
        async with self._started:
            await self._started.wait_for(lambda: self.starts >= n)

    async def _keep_running(self) -> None:
        """Start the gateway again when it exits on its own."""
        failures = 0
        while not self._stopping:
            assert self.proc is not None
            code = await self.proc.wait()
            if self._stopping:
                return
            delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
            log.warning("the HTTP gateway exited (code %s); starting it again in %.1f s", code, delay)
            await asyncio.sleep(delay)
            try:
                await self._spawn()
                failures = 0
            except (GatewayStartError, OSError) as e:
                failures += 1
                log.warning("the HTTP gateway did not start again: %s", e)

    async def stop(self) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()  # the gateway ends its streams and exits
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
