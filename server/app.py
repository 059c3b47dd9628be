"""Assembling the server: services, health, reflection, background sweeps.

`build_server(cfg)` makes a ready-to-start server (tests reuse it);
`serve(cfg)` runs it until SIGTERM/SIGINT, then drains gracefully.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mediajobs.v1 import job_service_pb2, job_service_pb2_grpc

from .config import Config
from .convert import now_us
from .services.jobs import JobService
from .store import Store
from .store import events as store_events
from .store import jobs as store_jobs
from .watch import WatchHub

log = logging.getLogger("mediajobs.server")

SERVICE_NAMES = [job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name]

SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
]


@dataclass
class App:
    """Everything a running server owns; tests reach in through it."""

    cfg: Config
    server: grpc.aio.Server
    port: int
    store: Store
    hub: WatchHub
    health: health.aio.HealthServicer
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        await self.server.start()
        self.tasks.append(asyncio.create_task(self._sweep_forever(), name="mediajobs-sweeper"))
        for name in SERVICE_NAMES + [""]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("mediajobs listening on port %d (db %s)", self.port, self.store.url)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: health NOT_SERVING, let calls finish, stop sweeps, close the store."""
        await self.health.enter_graceful_shutdown()
        self.hub.close()  # watch streams end at once with UNAVAILABLE; unary calls get `grace`
        await self.server.stop(grace)
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await asyncio.to_thread(self.store.close)

    async def sweep_once(self) -> None:
        """Compact change events past retention and expire old request ids."""
        now = self.store.clock()
        retention_us = int(self.cfg.event_retention_s * 1_000_000)
        ttl_us = int(self.cfg.request_id_ttl_s * 1_000_000)
        rev = await self.store.write(lambda tx: store_events.compact(tx, now - retention_us))
        self.hub.set_compact_revision(rev)
        await self.store.write(lambda tx: store_jobs.expire_request_ids(tx, now - ttl_us))

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.sweep_interval_s)
            try:
                await self.sweep_once()
            except Exception:  # keep sweeping; the next round may succeed
                log.exception("sweep failed")


async def build_server(cfg: Config, clock: Callable[[], int] = now_us) -> App:
    """Open the store and assemble the server on cfg.listen (port 0 = any free port).
    Must be awaited inside the event loop the server will run on."""
    store = Store(cfg.db_url(), project=cfg.project, clock=clock).open()
    rev = store.read_sync(lambda db, p: store_jobs.current_revision(db))
    compact = store.read_sync(lambda db, p: store_jobs.compact_revision(db))
    hub = WatchHub(store, rev, compact)
    hub.attach(asyncio.get_running_loop())

    server = grpc.aio.server(options=SERVER_OPTIONS)
    job_service_pb2_grpc.add_JobServiceServicer_to_server(JobService(store, hub), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        SERVICE_NAMES + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    try:
        port = server.add_insecure_port(cfg.listen)
    except RuntimeError:
        port = 0
    if port == 0:
        store.close()
        raise OSError(f"cannot listen on {cfg.listen}: the address is in use or invalid; pick another with --listen HOST:PORT")
    return App(cfg, server, port, store, hub, health_servicer)


async def serve(cfg: Config) -> None:
    app = await build_server(cfg)
    await app.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"mediajobs-server listening on {cfg.listen.rsplit(':', 1)[0]}:{app.port} (database: {app.store.url})",
          flush=True)
    await stop.wait()
    log.info("draining (grace %.1fs)", cfg.shutdown_grace_s)
    await app.stop(cfg.shutdown_grace_s)
    log.info("stopped")
