"""Assembling the server: services, health, reflection, background sweeps.

`build_server(cfg)` makes a ready-to-start server (tests reuse it);
`serve(cfg)` runs it until SIGTERM/SIGINT, then drains gracefully.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from dataclasses import dataclass, field
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mediajobs.v1 import job_service_pb2, media_service_pb2, media_service_pb2_grpc, worker_service_pb2, worker_service_pb2_grpc

from .config import Config
from .convert import now_us
from .dispatch import Dispatcher
from .registration import add_service
from .services.jobs import JobService
from .services.media import MediaService
from .services.workers import WorkerService
from .store import Store
from .store import events as store_events
from .store import jobs as store_jobs
from .store import leases as store_leases
from .watch import BUFFER_SIZE, WatchHub

log = logging.getLogger("mediajobs.server")

SERVICE_NAMES = [
    job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
    media_service_pb2.DESCRIPTOR.services_by_name["MediaService"].full_name,
]

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
    dispatcher: Dispatcher
    health: health.aio.HealthServicer
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        await self.server.start()
        self.tasks.append(asyncio.create_task(self._sweep_forever(), name="mediajobs-sweeper"))
        self.tasks.append(asyncio.create_task(self._recover_leases_forever(), name="mediajobs-lease-sweeper"))
        for name in SERVICE_NAMES + [""]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("mediajobs listening on port %d (db %s)", self.port, self.store.url)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: health NOT_SERVING, let calls finish, stop sweeps, close the store."""
        await self.health.enter_graceful_shutdown()
        self.hub.close()  # watch streams end at once with UNAVAILABLE; unary calls get `grace`
        self.dispatcher.close()  # waiting AcquireJobs calls return (empty) at once
        await self.server.stop(grace)
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if not self.store.db.is_closed():
            self.store.db.close()  # this thread's connection (inline point reads)
        await asyncio.to_thread(self.store.close)

    async def sweep_once(self) -> None:
        """Compact change events past retention and expire old request ids."""
        now = self.store.clock()
        retention_us = int(self.cfg.event_retention_s * 1_000_000)
        ttl_us = int(self.cfg.request_id_ttl_s * 1_000_000)
        more = True
        while more:  # bounded steps, so other writes interleave
            rev, more = await self.store.write(lambda tx: store_events.compact(tx, now - retention_us))
            self.hub.set_compact_revision(rev)
        await self.store.write(lambda tx: store_jobs.expire_request_ids(tx, now - ttl_us))

    async def recover_leases_once(self) -> store_leases.Recovered:
        """Recover every job whose lease expired (the server's own cleanExclusiveJobs)."""
        total = store_leases.Recovered([], [], [])
        while True:
            out = await self.store.write(store_leases.recover_expired)
            total.retried += out.retried
            total.failed += out.failed
            total.aborted += out.aborted
            if len(out.retried) + len(out.failed) + len(out.aborted) < 500:
                return total

    async def _recover_leases_forever(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.lease_sweep_interval_s)
            try:
                await self.recover_leases_once()
            except Exception:
                log.exception("lease recovery failed")

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
    hub.warm(store.read_sync(store_events.recent_events, BUFFER_SIZE))
    hub.attach(asyncio.get_running_loop())
    dispatcher = Dispatcher(clock)
    hub.listeners.append(dispatcher.on_publish)
    storage_root = cfg.storage_dir()
    storage_root.mkdir(parents=True, exist_ok=True)

    server = grpc.aio.server(options=SERVER_OPTIONS)
    add_service(server, job_service_pb2.DESCRIPTOR.services_by_name["JobService"], JobService(store, hub),
                passthrough=["WatchJobs"])
    worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(WorkerService(store, dispatcher, storage_root), server)
    media_service_pb2_grpc.add_MediaServiceServicer_to_server(MediaService(store, storage_root), server)
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
    return App(cfg, server, port, store, hub, dispatcher, health_servicer)


async def serve(cfg: Config) -> None:
    app = await build_server(cfg)
    await app.start()
    # Start-up objects never die: keep them out of every collection, and
    # collect the young generation less often (thousands of open watch
    # streams make each collection long; fewer, batched ones keep p99 down).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
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
