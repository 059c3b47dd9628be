"""Admission control: the server's capacity limits, and refusing fast past them.

Past a limit a call fails at once with RESOURCE_EXHAUSTED, an ErrorInfo
(reason OVERLOADED, the limit's flag and value) and a RetryInfo, instead of
queueing until its deadline or being cancelled by gRPC core. The limits:

- `--max-concurrent-rpcs`: unary calls being served (health checks are a
  separate servicer and never counted, so probes are answered in a burst);
- `--max-write-queue`: mutations waiting for the writer (store/writer.py);
- `--max-watch-streams`: open WatchJobs streams;
- `--max-parked-acquires`: AcquireJobs calls parked waiting for work (a
  parked call gives up its concurrent-RPC slot while it waits).

Everything here runs on the event loop, so plain counters suffice.
"""
from __future__ import annotations

import asyncio

import grpc
from grpc_status import rpc_status

from .errors import overloaded


class Admission:
    def __init__(self, max_rpcs: int, max_watch_streams: int, max_parked_acquires: int) -> None:
        self.max_rpcs = max_rpcs
        self.max_watch_streams = max_watch_streams
        self.max_parked_acquires = max_parked_acquires
        self.rpcs = 0
        self.watch_streams = 0
        self.parked = 0
        self.refused = 0
        self._rpc_waiters: list[tuple[int, asyncio.Future[None]]] = []
        # The refusal is the same every time: build its status once, so a
        # refused call costs as little as the runtime allows.
        self._rpc_refusal = rpc_status.to_status(
            overloaded("concurrent calls", "--max-concurrent-rpcs", max_rpcs).to_status()
        )

    def rpc_refusal(self) -> grpc.Status | None:
        """None (and the call is counted) when a unary call may run; else the
        status to fail it with."""
        if self.rpcs >= self.max_rpcs:
            self.refused += 1
            return self._rpc_refusal
        self.rpcs += 1
        if self._rpc_waiters:
            self._notify()
        return None

    def rpc_done(self) -> None:
        self.rpcs -= 1
        if self._rpc_waiters:
            self._notify()

    def _notify(self) -> None:
        for n, fut in self._rpc_waiters:
            if self.rpcs == n and not fut.done():
                fut.set_result(None)
        self._rpc_waiters = [(n, f) for n, f in self._rpc_waiters if not f.done()]

    async def wait_for_rpcs(self, n: int) -> None:
        """Return once exactly n unary calls are being served (tests, benchmarks)."""
        if self.rpcs == n:
            return
        fut = asyncio.get_running_loop().create_future()
        self._rpc_waiters.append((n, fut))
        await fut

    def open_watch(self) -> None:
        if self.watch_streams >= self.max_watch_streams:
            self.refused += 1
            raise overloaded("open watch streams", "--max-watch-streams", self.max_watch_streams, retry_delay_s=1.0)
        self.watch_streams += 1

    def close_watch(self) -> None:
        self.watch_streams -= 1

    def park(self) -> None:
        """An AcquireJobs call starts waiting for work: it leaves the
        concurrent-call count and joins the parked count."""
        if self.parked >= self.max_parked_acquires:
            self.refused += 1
            raise overloaded("parked AcquireJobs calls", "--max-parked-acquires", self.max_parked_acquires,
                             retry_delay_s=1.0)
        self.parked += 1
        self.rpcs -= 1

    def unpark(self) -> None:
        self.parked -= 1
        self.rpcs += 1


def unlimited() -> Admission:
    """No limits (servicers built without a server config, e.g. in tests)."""
    return Admission(1 << 62, 1 << 62, 1 << 62)
