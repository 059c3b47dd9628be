"""Assembling the server: services, health, reflection, background sweeps.

`build_server(cfg)` makes a ready-to-start server (tests reuse it);
`serve(cfg)` runs it until SIGTERM/SIGINT, then drains gracefully.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mediajobs.v1 import (admin_service_pb2, bulk_upload_service_pb2, job_service_pb2, live_job_service_pb2,
                          media_service_pb2, worker_service_pb2)

from .admission import Admission
from .auth import Authenticator, ReflectionGuard
from .quotas import Quotas
from .bulk.runner import BulkRunner
from .config import Config, parse_srt_ingest, version
from .convert import now_us
from .dispatch import Dispatcher
from .errors import ServiceError
from .registration import add_service
from .services.admin import AdminService
from .services.bulk_uploads import BulkUploadService
from .services.jobs import JobService
from .services.live_jobs import LiveJobService
from .services.media import MediaService
from .services.workers import WorkerService
from .store import Store
from .store import bulk_uploads as store_bulk
from .store import events as store_events
from .store import jobs as store_jobs
from .store import leases as store_leases
from .store import live_jobs as store_live
from .live_callbacks import CallbackSender
from .tls import TlsError, TlsFiles
from .store.db import DatabaseUrlError, durability_summary, is_postgres
from .store.failures import DatabaseFailure, classify
from .watch import BUFFER_SIZE, WatchHub, tail_log

log = logging.getLogger("mediajobs.server")

SERVICE_NAMES = [
    job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
    media_service_pb2.DESCRIPTOR.services_by_name["MediaService"].full_name,
    bulk_upload_service_pb2.DESCRIPTOR.services_by_name["BulkUploadService"].full_name,
    live_job_service_pb2.DESCRIPTOR.services_by_name["LiveJobService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
]

# How often the database is probed with a tiny write (health follows it),
# while it serves and while it does not; and how long a probe may take.
PROBE_INTERVAL_S = 0.5
PROBE_INTERVAL_FAILING_S = 0.2
PROBE_TIMEOUT_S = 2.0


class StartupError(Exception):
    """The server cannot start; the message is one line that says what to fix."""


# Transport hygiene. Requests up to 16 MiB are read (and refused past their
# own limits with INVALID_ARGUMENT naming them); replies stay within 4 MiB.
# The server pings every connection every 60 s (20 s to answer), so watch
# streams through idle-closing proxies and NATs stay open and dead peers are
# noticed. Clients may ping every 10 s at most, calls or not; after 2 pings
# sooner than that the connection gets GOAWAY too_many_pings.
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 2),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
]


def connection_age_options(cfg: Config) -> list[tuple[str, int]]:
    """--max-connection-age: connections are closed (GOAWAY) after about
    this long, so clients spread over servers behind a load balancer and
    certificates rotate; calls get --max-connection-age-grace to finish, then
    streams are cut and clients resume them (WatchJobs from last revision + 1)."""
    if not cfg.max_connection_age_s:
        return []
    return [("grpc.max_connection_age_ms", int(cfg.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(cfg.max_connection_age_grace_s * 1000))]


def pending_call_options(cfg: Config) -> list[tuple[str, int]]:
    """gRPC core's limits on calls that have arrived but that the event loop
    has not picked up yet. Past them core cancels new calls with a bare
    CANCELLED (no status details) before any handler runs: with its default
    of 1,000, a burst of 2,000 calls, or thousands of watch streams
    re-opening after a restart, lost 5-10 % of calls that way (measured). The
    server's own limits refuse calls properly instead (RESOURCE_EXHAUSTED
    with an ErrorInfo), so core must queue at least as many as they admit.
    A queued call costs about 16 KiB."""
    admitted = cfg.max_concurrent_rpcs + cfg.max_watch_streams + cfg.max_parked_acquires
    return [
        ("grpc.server.max_pending_requests", admitted),
        ("grpc.server.max_pending_requests_hard_limit", admitted + admitted // 2),
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
    admission: Admission
    worker_service: WorkerService
    bulk_runners: list[BulkRunner] = field(default_factory=list)
    callbacks: CallbackSender | None = None
    tls: TlsFiles | None = None
    # With --http-listen: the gRPC address only the embedded gateway uses
    # (a unix socket in a private directory), and the running gateway.
    gateway_target: str = ""
    gateway: Any = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    draining: bool = False
    # Whether health says SERVING (the database takes writes).
    serving: bool = False
    _db_changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        await self.server.start()
        if self.gateway_target:
            settings = self.cfg.gateway_settings()  # the Kaltura partners file, CORS origins, SSE limits
            try:
                if self.cfg.http_gateway == "inline":
                    from .gateway.app import Gateway
                    from .gateway.upstream import Upstream

                    self.gateway = await Gateway(Upstream(self.gateway_target), settings).start(self.cfg.http_listen)
                else:
                    from .gateway.process import GatewayProcess

                    self.gateway = await GatewayProcess(self.gateway_target, self.cfg.http_listen, settings,
                                                        self.cfg.insecure).start()
            except Exception as e:  # noqa: BLE001 - whatever stops the gateway stops the start, in one line
                await self.server.stop(None)
                why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                raise StartupError(f"--http-listen: cannot serve HTTP on {self.cfg.http_listen}: {why}") from None
        loop = asyncio.get_running_loop()
        # The writer thread reports when writes stop or start working; the
        # database watcher turns that into health at once.

        def db_changed(failure: DatabaseFailure | None) -> None:
            loop.call_soon_threadsafe(self._db_changed.set)

        self.store.health_listeners.append(db_changed)
        self.tasks.append(asyncio.create_task(self._sweep_forever(), name="mediajobs-sweeper"))
        self.tasks.append(asyncio.create_task(self._recover_leases_forever(), name="mediajobs-lease-sweeper"))
        # Other servers on the same PostgreSQL: their changes reach this
        # server's watchers from the log (returns at once on SQLite).
        self.tasks.append(asyncio.create_task(tail_log(self.hub), name="mediajobs-log-tail"))
        for runner in self.bulk_runners:
            self.tasks.append(asyncio.create_task(runner.run_forever(), name=f"mediajobs-{runner.identity}"))
        if self.callbacks is not None:
            self.tasks.append(asyncio.create_task(self.callbacks.run_forever(), name="mediajobs-live-callbacks"))
        await self._set_serving(True)
        self.tasks.append(asyncio.create_task(self._watch_database_forever(), name="mediajobs-db-health"))
        log.info("mediajobs listening on port %d (db %s)", self.port, self.store.display_url)

    async def _set_serving(self, serving: bool) -> None:
        if self.draining:
            return
        self.serving = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in SERVICE_NAMES + [""]:
            await self.health.set(name, status)

    async def probe_database(self) -> DatabaseFailure | None:
        """One tiny write through the writer: None if it committed."""
        try:
            await asyncio.wait_for(self.store.write(store_jobs.probe, bounded=False), PROBE_TIMEOUT_S)
        except asyncio.TimeoutError:
            return DatabaseFailure(ServiceError(
                grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE",
                f"the database did not answer within {PROBE_TIMEOUT_S:g} s"), reconnect=False)
        except ServiceError as e:
            return DatabaseFailure(e, reconnect=False)
        except Exception as e:  # noqa: BLE001
            return classify(e) or DatabaseFailure(ServiceError(
                grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE", str(e)[:200]), reconnect=False)
        return None

    async def _watch_database_forever(self) -> None:
        """Health follows the database: NOT_SERVING as soon as writes fail
        (disk full, read-only, connection lost), SERVING again as soon as a
        probe write commits. Probes run every PROBE_INTERVAL_S, faster while
        failing; while writes keep committing they are proof enough, and no
        probe is added."""
        batches = self.store.writer.batches
        while True:
            interval = PROBE_INTERVAL_S if self.serving else PROBE_INTERVAL_FAILING_S
            try:
                await asyncio.wait_for(self._db_changed.wait(), interval)
            except asyncio.TimeoutError:
                pass
            self._db_changed.clear()
            if self.draining:
                return
            failure = self.store.failure
            busy = self.store.writer.batches != batches  # batches committed since the last look
            if (failure is None and not busy) or not self.serving:
                failure = await self.probe_database()
            batches = self.store.writer.batches
            if (failure is None) != self.serving:
                if failure is None:
                    log.warning("database serves writes again: health SERVING")
                else:
                    log.warning("database cannot take writes (%s: %s): health NOT_SERVING",
                                failure.error.reason, failure.error.message)
                await self._set_serving(failure is None)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: health NOT_SERVING, let calls finish, stop sweeps, close the store."""
        self.draining = True
        if self.gateway is not None:
            await self.gateway.stop()  # HTTP first: its calls are calls of this server
        await self.health.enter_graceful_shutdown()
        self.hub.close()  # watch streams end at once with UNAVAILABLE; unary calls get `grace`
        self.dispatcher.close()  # waiting AcquireJobs calls return (empty) at once
        await self.server.stop(grace)
        if self.gateway_target:
            shutil.rmtree(os.path.dirname(self.gateway_target.removeprefix("unix:")), ignore_errors=True)
        await self.worker_service.give_backs_done()  # jobs whose AcquireJobs reply was lost go back first
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if not self.store.db.is_closed():
            self.store.db.close()  # this thread's connection (inline point reads)
        await asyncio.to_thread(self.store.close)

    async def sweep_once(self) -> None:
        """Compact change events past retention, expire old request ids and
        bulk uploads abandoned while being written."""
        now = self.store.clock()
        retention_us = int(self.cfg.event_retention_s * 1_000_000)
        ttl_us = int(self.cfg.request_id_ttl_s * 1_000_000)
        more = True
        while more:  # bounded steps, so other writes interleave
            rev, more = await self.store.write(lambda tx: store_events.compact(tx, now - retention_us), bounded=False)
            self.hub.set_compact_revision(rev)
        await self.store.write(lambda tx: store_jobs.expire_request_ids(tx, now - ttl_us), bounded=False)
        while await self.store.write(lambda tx: store_bulk.expire_idle_uploads(tx, now), bounded=False):
            pass  # abandoned bulk uploads: their bytes go

    async def recover_leases_once(self) -> store_leases.Recovered:
        """Recover every job whose lease expired (the server's own cleanExclusiveJobs)."""
        total = store_leases.Recovered([], [], [])
        while True:
            out = await self.store.write(lambda tx: store_leases.recover_expired(tx, all_projects=True), bounded=False)
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
            except Exception as e:
                _log_background_failure("lease recovery", e)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.sweep_interval_s)
            try:
                await self.sweep_once()
            except Exception as e:  # keep sweeping; the next round may succeed
                _log_background_failure("retention sweep", e)


def _log_background_failure(what: str, e: Exception) -> None:
    if isinstance(e, ServiceError):  # the database cannot serve: health says so already
        log.warning("%s skipped: %s", what, e.message)
    else:
        log.exception("%s failed", what)


def open_store(cfg: Config, clock: Callable[[], int] = now_us) -> Store:
    """Open (and create) the database, or raise StartupError saying why not."""
    url = cfg.db_url()
    try:
        store = Store(url, project=cfg.project, clock=clock, durability=cfg.durability,
                      max_write_queue=cfg.max_write_queue)
    except DatabaseUrlError as e:
        raise StartupError(f"--db: {e}") from None
    try:
        return store.open()
    except Exception as e:  # noqa: BLE001 - any way the database cannot be opened
        store.close()
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = ("is the database server running and reachable, and does the database exist?"
                if is_postgres(store.db) else "is the folder writable and the file a mediajobs database?")
        raise StartupError(f"--db: cannot open {store.display_url}: {cause}; {hint}") from None


async def build_server(cfg: Config, clock: Callable[[], int] = now_us) -> App:
    """Open the store and assemble the server on cfg.listen (port 0 = any free port).
    Must be awaited inside the event loop the server will run on."""
    tls: TlsFiles | None = None
    if cfg.tls_cert is not None and cfg.tls_key is not None:
        tls = TlsFiles(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
        try:
            tls.check()  # before anything else starts: a bad file is one line
        except TlsError as e:
            raise StartupError(str(e)) from None
    store = open_store(cfg, clock)
    rev = store.read_sync(lambda db, p: store_jobs.current_revision(db))
    compact = store.read_sync(lambda db, p: store_jobs.compact_revision(db))
    hub = WatchHub(store, rev, compact)
    hub.warm(store.read_sync(store_events.recent_events, BUFFER_SIZE))
    hub.attach(asyncio.get_running_loop())
    dispatcher = Dispatcher(clock)
    hub.listeners.append(dispatcher.on_publish)
    storage_root = cfg.storage_dir()
    try:
        storage_root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        store.close()
        raise StartupError(f"--storage-root: cannot create {storage_root}: {e.strerror}") from None
    admission = Admission(cfg.max_concurrent_rpcs, cfg.max_watch_streams, cfg.max_parked_acquires)

    auth = Authenticator(store) if cfg.auth == "keys" else None
    if auth is not None:
        auth.on_forget.append(hub.end_watchers)  # a revoked key's open watches end at once
    reflection_guard: list[grpc.aio.ServerInterceptor] = []
    if auth is not None and cfg.reflection_auth:
        reflection_guard.append(ReflectionGuard(auth))
    server = grpc.aio.server(options=SERVER_OPTIONS + pending_call_options(cfg) + connection_age_options(cfg),
                             interceptors=reflection_guard or None)
    store.quotas = Quotas(cfg.quota_pending_jobs, cfg.quota_open_bulk_uploads, cfg.quota_live_jobs_online,
                          cfg.quota_requests_per_second)
    add_service(server, job_service_pb2.DESCRIPTOR.services_by_name["JobService"], JobService(store, hub, admission),
                passthrough=["WatchJobs"], auth=auth)
    worker_service = WorkerService(store, dispatcher, storage_root, admission)
    add_service(server, worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"], worker_service, auth=auth)
    add_service(server, media_service_pb2.DESCRIPTOR.services_by_name["MediaService"],
                MediaService(store, storage_root, admission), auth=auth)
    add_service(server, bulk_upload_service_pb2.DESCRIPTOR.services_by_name["BulkUploadService"],
                BulkUploadService(store, admission), auth=auth)
    srt_host, srt_low, srt_high = parse_srt_ingest(cfg.live_srt_ingest) if cfg.live_srt_ingest else ("", 0, 0)
    live_settings = store_live.LiveSettings(cfg.live_ingest_url, cfg.live_playback_base_url, cfg.live_cdn_base_url,
                                            srt_host, (srt_low, srt_high))
    add_service(server, live_job_service_pb2.DESCRIPTOR.services_by_name["LiveJobService"],
                LiveJobService(store, live_settings, admission), auth=auth)
    add_service(server, admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"],
                AdminService(store, cfg.project, auth, admission), auth=auth)
    bulk_runners = [BulkRunner(store, storage_root, i + 1) for i in range(cfg.bulk_runners)]
    for runner in bulk_runners:
        hub.listeners.append(runner.on_publish)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        SERVICE_NAMES + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    if tls is not None:
        try:
            credentials = tls.credentials()
        except TlsError as e:
            store.close()
            raise StartupError(str(e)) from None
    try:
        port = server.add_secure_port(cfg.listen, credentials) if tls is not None \
            else server.add_insecure_port(cfg.listen)
    except RuntimeError:
        port = 0
    if port == 0:
        store.close()
        raise StartupError(f"--listen: cannot listen on {cfg.listen}: the address is in use or not this machine's; "
                           "pick another with --listen HOST:PORT")
    gateway_target = ""
    if cfg.http_listen:
        # The embedded gateway calls the API like any client, but over a
        # unix socket only this process knows (keys are still checked; TLS
        # is not needed on a socket in a private directory).
        sock_dir = tempfile.mkdtemp(prefix="mediajobs-gw-")
        gateway_target = f"unix:{sock_dir}/grpc.sock"
        server.add_insecure_port(gateway_target)
    callbacks = CallbackSender(store, cfg.allow_private_callbacks, store.clock)
    return App(cfg, server, port, store, hub, dispatcher, health_servicer, admission, worker_service, bulk_runners,
               callbacks, tls, gateway_target)


# Garbage collection while serving: start-up objects never die, so they are
# frozen out of every collection. Young collections keep Python's default
# threshold (700): young garbage, such as a refused request's cycles, goes at
# once. Only full (gen-2) collections are made 10x rarer: with thousands of
# watch streams one takes ~200 ms of the event loop (measured with
# scripts/bench_watch.py --gc-log: a 204 ms gen-2 pause in the steady phase
# at the default thresholds, p99 99 ms instead of 20-26 ms).
GC_THRESHOLDS = (700, 10, 100)

# Allocations of at least this size get their own mapping from glibc and go
# back to the system when freed. By default glibc raises this threshold to
# the largest block freed so far (up to 32 MiB), after which large request
# buffers live in the heap, where freed memory stays with the process
# (measured: +110 MiB after 30 refused 5 MiB requests, +6 MiB with this).
MMAP_THRESHOLD_BYTES = 256 * 1024


# Many large requests at once are received in gRPC's smaller buffers, which
# leave free memory scattered through glibc's heaps; when the server's
# resident size has grown this much since the last look, free pages are given
# back (malloc_trim). Measured: 30 concurrent refused 5 MiB requests left
# +74 MiB before, a few MiB after.
TRIM_GROWTH_BYTES = 32 * 1024 * 1024
TRIM_CHECK_INTERVAL_S = 2.0
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018 - glibc only
        libc.malloc_trim  # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


def tune_allocator() -> None:
    """Fix glibc's mmap threshold (no-op where there is no glibc)."""
    libc = _libc()
    if libc is not None:
        m_mmap_threshold = -3  # from malloc.h
        libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD_BYTES)


def resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


async def trim_memory_forever() -> None:
    """Give free heap pages back to the system after bursts of large
    requests (see TRIM_GROWTH_BYTES)."""
    libc = _libc()
    if libc is None or not resident_bytes():
        return
    floor = resident_bytes()
    while True:
        await asyncio.sleep(TRIM_CHECK_INTERVAL_S)
        rss = resident_bytes()
        if rss - floor >= TRIM_GROWTH_BYTES:
            await asyncio.to_thread(libc.malloc_trim, 0)
            floor = resident_bytes()
        else:
            floor = min(floor, rss)


def tls_summary(cfg: Config) -> str:
    if cfg.tls_cert is None:
        return "off (plaintext; --tls-cert/--tls-key turn it on)"
    mutual = f", client certificates required (CA {cfg.tls_client_ca})" if cfg.tls_client_ca else ""
    return f"on ({cfg.tls_cert}{mutual}; reloaded on change or SIGHUP)"


async def serve(cfg: Config) -> None:
    tune_allocator()
    app = await build_server(cfg)
    await app.start()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    app.tasks.append(asyncio.create_task(trim_memory_forever(), name="mediajobs-trim-memory"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if app.tls is not None:
        loop.add_signal_handler(signal.SIGHUP, app.tls.request_reload)  # new certificates, no restart
    log.info("mediajobs %s: durability %s", version(), durability_summary(cfg.durability, is_postgres(app.store.db)))
    print(f"mediajobs-server {version()} listening on {cfg.listen.rsplit(':', 1)[0]}:{app.port}\n"
          f"  database:     {app.store.display_url}\n"
          f"  durability:   {durability_summary(cfg.durability, is_postgres(app.store.db))}\n"
          f"  storage root: {cfg.storage_dir()}\n"
          f"  tls:          {tls_summary(cfg)}"
          + (f"\n  http gateway: http://{cfg.http_listen.rsplit(':', 1)[0]}:{app.gateway.port}"
             if app.gateway is not None else ""),
          flush=True)
    await stop.wait()
    log.info("draining (grace %.1fs)", cfg.shutdown_grace_s)
    await app.stop(cfg.shutdown_grace_s)
    log.info("stopped")
