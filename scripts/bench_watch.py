#!/usr/bin/env python3
"""Benchmark: WatchJobs fan-out.

5,000 concurrent watchers each on one job, plus 100 watchers of everything,
100 job changes/s. Targets: publish->receive p99 <= 100 ms; server memory per
watcher <= 64 KiB.

1. Start the server (separate process, fresh temporary SQLite file) and
   create JOBS jobs with CreateJob.
2. Read the server's RSS (/proc/PID/status VmRSS), then open one WatchJobs
   stream per job (job_ids=[id]) and ALL streams without a filter,
   PER_CHANNEL streams per channel (one TCP connection each), at OPEN_RATE
   streams/s. All-watchers start at the revision after the last CreateJob;
   per-job streams open with send_initial_snapshot (one SNAPSHOT event and a
   progress message at once; --no-snapshot waits for the first bookmark
   instead). A stream that fails is re-opened from its last revision + 1
   after a jittered back-off; re-opens are counted with a sample error.
   Wait until every stream has received its first message, read the RSS
   again: the difference / streams = bytes per watcher. progress_interval is
   10 s for per-job streams (the server's default; 1 s would mean 5,000
   bookmarks/s on top of the changes) and 1 s for all-job streams.
3. Steady phase: UpdateJob at RATE changes/s for DURATION s, open loop (a
   tick every 1/RATE s, not waiting for earlier calls), each flipping a
   random job's priority HIGH <-> LOW. The send time of each change (taken
   just before the call) is kept by the revision its reply carries; every
   received event's latency = receive time - send time (CLOCK_MONOTONIC,
   comparable across processes). Each change must reach its job's watcher
   and every all-watcher.
4. With --restart: SIGTERM the server (its drain ends open watch streams
   with UNAVAILABLE), start it again on the same port and database, and time
   how long until every stream is back: it has a message on a call opened
   after the SIGTERM (on the new server), each resuming from its last
   revision + 1 (an idle per-job stream hears from the server at its
   progress interval at the latest). Every failed re-open (e.g. a bare
   CANCELLED from gRPC core refusing calls while its queue of calls not yet
   picked up by the server is full) is retried and counted. Changes keep
   coming throughout (those refused while the server is down are counted).
5. At the end, wait (--drain-timeout) until every watcher has confirmed the
   last change it must get. The revisions each all-watcher received must be
   contiguous, from the first one to the last one committed, and every
   per-job watcher must have every change of its job (checked against a
   reference all-watcher that decodes the job ids).

Exit code 1 when the benchmark fails: streams that did not open or did not
come back after the restart within --connect-timeout, gaps, duplicates or
changes missing at the end, UpdateJob failures in the steady phase (a
missed latency or memory target alone still exits 0). The temporary folder
(database, server log) is removed at the end, also after a failure or
Ctrl-C (after a failure the end of the server log is printed); --keep keeps
it. It reports the cores other processes used, steady phase and whole run.

Watchers are spread over WORKERS processes (multiprocessing, spawn) so one
Python event loop is not the bottleneck receiving ALL x RATE messages/s plus
the bookmarks; the changes are driven from this process. All processes share
the machine's cores with the server.

    python scripts/bench_watch.py                  # full size, 1-2 min
    python scripts/bench_watch.py --restart        # + restart phase
    python scripts/bench_watch.py --quick          # ~20 s smoke run
    python scripts/bench_watch.py --timeline --gc-log --profile   # diagnose
"""
from __future__ import annotations

import argparse
import array
import asyncio
import collections
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
from google.protobuf import duration_pb2, field_mask_pb2  # noqa: E402

import _bench_common as bc  # noqa: E402
from mediajobs.v1 import job_service_pb2 as svc  # noqa: E402
from mediajobs.v1 import resources_pb2 as res  # noqa: E402
from mediajobs.v1 import job_service_pb2_grpc as svc_grpc  # noqa: E402

Job = res.Job
WATCH = "/mediajobs.v1.JobService/WatchJobs"
TARGET_P99_MS = 100.0
TARGET_KIB = 64.0

# Reconnection after the server went away: grpc's own channel back-off
# (default 1 s initial, x1.6, up to 120 s) would dominate a restart time.
WATCH_CHANNEL_OPTIONS = bc.CHANNEL_OPTIONS + [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


# -- the watchers (in a worker process, or in this one) ---------------------------------


@dataclass(eq=False)
class Stream:
    kind: str  # "job" or "all"
    job_id: str
    start_rev: int
    ref: bool = False  # decode job ids (the reference all-watcher)
    last_rev: int = 0
    call_started: float = 0.0
    first_msg: float = 0.0  # first message on the current call (0 = none yet)
    opens: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)
    progress: int = 0
    revs: array.array = field(default_factory=lambda: array.array("q"))
    times: array.array = field(default_factory=lambda: array.array("d"))
    ref_jobs: dict = field(default_factory=dict)
    failed_at: float = 0.0  # when the last call failed or ended (0 = never)
    state: str = "new"  # "calling" (a call is open) or "backoff" (waiting to re-open)
    call: Any = None  # the current call (diagnostics)


class WatchGroup:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.streams = [Stream("all", "", cfg["start_rev"], ref=(i == 0 and cfg["ref"])) for i in range(cfg["n_all"])]
        self.streams += [Stream("job", j, cfg["start_rev"]) for j in cfg["job_ids"]]
        self.channels: list[grpc.aio.Channel] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = False
        self.error_samples: dict[str, str] = {}
        self.intervals = {}
        for kind, secs in (("job", cfg["progress_interval"]), ("all", cfg["all_progress_interval"])):
            d = duration_pb2.Duration()
            d.FromMicroseconds(int(secs * 1e6))
            self.intervals[kind] = d

    async def open(self) -> None:
        cfg = self.cfg
        n_ch = max(1, -(-len(self.streams) // cfg["per_channel"]))
        self.channels = [grpc.aio.insecure_channel(cfg["addr"], options=WATCH_CHANNEL_OPTIONS) for _ in range(n_ch)]
        calls = [ch.unary_stream(WATCH) for ch in self.channels]
        # All-watchers spread one per channel first, then the per-job ones fill up.
        order = list(range(len(self.streams)))
        t0 = time.monotonic()
        for k, i in enumerate(order):
            s = self.streams[i]
            self.tasks.append(asyncio.create_task(self._run(s, calls[k % n_ch])))
            # Gradual opening: stay at or below open_rate streams/s.
            ahead = t0 + (k + 1) / cfg["open_rate"] - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)

    async def _run(self, s: Stream, call: Any) -> None:
        backoff = 0.1
        mono = time.monotonic
        while not self.stopping:
            req = svc.WatchJobsRequest(
                job_ids=[s.job_id] if s.job_id else [],
                start_revision=s.last_rev + 1 if s.last_rev else s.start_rev,
                progress_interval=self.intervals[s.kind],
            )
            if not s.last_rev and s.kind == "job" and self.cfg["snapshot"]:
                # First open: the job as it is now, then a progress message at
                # the snapshot's revision (start_rev - 1: nothing changes
                # while the streams open), so the stream answers at once.
                req.start_revision = 0
                req.send_initial_snapshot = True
            raw_req = req.SerializeToString()
            s.opens += 1
            s.first_msg = 0.0
            s.call_started = mono()
            s.state = "calling"
            try:
                s.call = call(raw_req, wait_for_ready=True)
                async for raw in s.call:
                    t = mono()
                    # A message may carry several events (the server batches
                    # what queued up); each gets this receive time.
                    m = svc.WatchJobsResponse.FromString(raw)
                    rev = m.revision
                    if not s.first_msg:
                        s.first_msg = t
                        backoff = 0.1
                    if m.events:
                        for ev in m.events:
                            if ev.revision >= s.start_rev and ev.type != res.JobEvent.SNAPSHOT:
                                s.revs.append(ev.revision)
                                s.times.append(t)
                                if s.ref:
                                    s.ref_jobs[ev.revision] = ev.job.id
                    else:
                        s.progress += 1
                    if rev > s.last_rev:
                        s.last_rev = rev
                s.errors["ended"] += 1
            except grpc.aio.AioRpcError as e:
                if self.stopping:
                    return
                s.errors[e.code().name] += 1
                if e.code().name not in self.error_samples:
                    self.error_samples[e.code().name] = (f"{e.details()!r} (after {mono() - s.call_started:.1f} s) "
                                                         f"{(e.debug_error_string() or '')[:200]}")
            except asyncio.CancelledError:
                return
            except Exception as e:  # noqa: BLE001 - never let a stream die silently: count it and re-open
                if self.stopping:
                    return
                name = f"client {type(e).__name__}"
                s.errors[name] += 1
                self.error_samples.setdefault(name, str(e)[:200])
            s.failed_at = mono()
            if self.stopping:
                return
            s.state = "backoff"
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 2.0)

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        alls = [s for s in self.streams if s.kind == "all"]
        return {
            "n": len(self.streams),
            "started": len(self.tasks),
            "connected": sum(1 for s in self.streams if s.first_msg),
            "reopens": sum(max(0, s.opens - 1) for s in self.streams),
            "errors": sum((s.errors for s in self.streams), collections.Counter()),
            "events": sum(len(s.revs) for s in self.streams),
            "progress": sum(s.progress for s in self.streams),
            "min_all_rev": min((s.last_rev for s in alls), default=None),
            "oldest_wait": max((now - s.call_started for s in self.streams if not s.first_msg), default=0.0),
            "error_samples": dict(self.error_samples),
        }

    @staticmethod
    def _back(s: Stream, t: float) -> bool:
        # The current call was opened at or after t and has a message. (Not
        # "a first message after t" with t the moment the new server printed
        # "listening": it serves calls a little before that.)
        return s.call_started >= t and s.first_msg > 0

    def back_since(self, t: float, before: float = 0.0) -> tuple[int, float, int]:
        """How many streams have a message on a call opened at or after t,
        when the last of them got it, and how many got it before `before`."""
        back = [s.first_msg for s in self.streams if self._back(s, t)]
        return len(back), max(back, default=0.0), sum(1 for x in back if x < before)

    def behind(self, last_rev_of_job: dict[str, int], last_rev: int) -> int:
        """Streams that have not yet confirmed (event or bookmark) the last
        change they must get: their job's last one, or last_rev for all-watchers."""
        return sum(1 for s in self.streams
                   if s.last_rev < (last_rev if s.kind == "all" else last_rev_of_job.get(s.job_id, 0)))

    def stragglers(self, t: float, limit: int = 5) -> list[dict[str, Any]]:
        """Streams not back since t (diagnostics)."""
        now = time.monotonic()
        out = []
        for s in self.streams:
            if self._back(s, t):
                continue
            c = s.call
            out.append({
                "kind": s.kind, "job_id": s.job_id, "state": s.state, "opens": s.opens, "errors": dict(s.errors),
                "call_age_s": round(now - s.call_started, 1), "last_rev": s.last_rev,
                "failed_s_ago": round(now - s.failed_at, 1) if s.failed_at else None,
                "first_msg_s_ago": round(now - s.first_msg, 1) if s.first_msg else None,
                "call_done": c.done() if c is not None else None,
            })
            if len(out) >= limit:
                break
        return out

    async def close(self) -> dict[str, Any]:
        self.stopping = True
        for ch in self.channels:
            await ch.close()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        out = []
        for s in self.streams:
            out.append({
                "kind": s.kind, "job_id": s.job_id, "opens": s.opens, "errors": dict(s.errors),
                "progress": s.progress, "revs": s.revs, "times": s.times, "ref_jobs": s.ref_jobs,
                "last_rev": s.last_rev,
            })
        return {"streams": out, "pid": os.getpid()}


def worker_entry(conn: Any, cfg: dict[str, Any]) -> None:
    try:
        asyncio.run(_worker_async(conn, cfg))
    except KeyboardInterrupt:
        pass


async def _worker_async(conn: Any, cfg: dict[str, Any]) -> None:
    g = WatchGroup(cfg)
    loop = asyncio.get_running_loop()
    while True:
        cmd = await loop.run_in_executor(None, conn.recv)
        op = cmd[0]
        if op == "open":
            await g.open()
            conn.send(None)
        elif op == "status":
            conn.send(g.status())
        elif op == "back":
            conn.send(g.back_since(cmd[1], cmd[2]))
        elif op == "behind":
            conn.send(g.behind(cmd[1], cmd[2]))
        elif op == "stragglers":
            conn.send(g.stragglers(cmd[1]))
        elif op == "close":
            conn.send(await g.close())
            return


class Remote:
    """A WatchGroup in a worker process, driven over a pipe."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_entry, args=(child, cfg), daemon=True)
        self.proc.start()
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int:
        return self.proc.pid  # type: ignore[return-value]

    async def _call(self, *cmd: Any, timeout: float = 600) -> Any:
        async with self._lock:
            self.conn.send(cmd)
            ok = await asyncio.to_thread(self.conn.poll, timeout)
            if not ok:
                raise RuntimeError(f"watch worker {self.pid} did not answer {cmd[0]!r}")
            return self.conn.recv()

    async def open(self) -> None:
        await self._call("open")

    async def status(self) -> dict[str, Any]:
        return await self._call("status")  # type: ignore[no-any-return]

    async def back_since(self, t: float, before: float = 0.0) -> tuple[int, float, int]:
        return await self._call("back", t, before)  # type: ignore[no-any-return]

    async def behind(self, last_rev_of_job: dict[str, int], last_rev: int) -> int:
        return await self._call("behind", last_rev_of_job, last_rev)  # type: ignore[no-any-return]

    async def stragglers(self, t: float) -> list[dict[str, Any]]:
        return await self._call("stragglers", t)  # type: ignore[no-any-return]

    async def close(self) -> dict[str, Any]:
        r = await self._call("close")
        self.proc.join(10)
        return r  # type: ignore[no-any-return]


class Local:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.g = WatchGroup(cfg)
        self.pid = os.getpid()

    async def open(self) -> None:
        await self.g.open()

    async def status(self) -> dict[str, Any]:
        return self.g.status()

    async def back_since(self, t: float, before: float = 0.0) -> tuple[int, float, int]:
        return self.g.back_since(t, before)

    async def behind(self, last_rev_of_job: dict[str, int], last_rev: int) -> int:
        return self.g.behind(last_rev_of_job, last_rev)

    async def stragglers(self, t: float) -> list[dict[str, Any]]:
        return self.g.stragglers(t)

    async def close(self) -> dict[str, Any]:
        return await self.g.close()


# -- the change driver (this process) ----------------------------------------------------


@dataclass
class Driver:
    stub: svc_grpc.JobServiceStub
    job_ids: list[str]
    rng: random.Random
    prio: dict[str, int] = field(default_factory=dict)
    in_flight: set[str] = field(default_factory=set)
    send_time: dict[int, float] = field(default_factory=dict)
    job_of: dict[int, str] = field(default_factory=dict)
    rtt: list[float] = field(default_factory=list)
    rtt_of: dict[int, float] = field(default_factory=dict)
    phase_of: dict[int, str] = field(default_factory=dict)
    sent: collections.Counter = field(default_factory=collections.Counter)
    failed: collections.Counter = field(default_factory=collections.Counter)
    no_change: int = 0
    max_rev: int = 0
    late_ticks: int = 0
    fail_sample: str = ""

    async def change(self, phase: str) -> None:
        for _ in range(20):
            job_id = self.rng.choice(self.job_ids)
            if job_id not in self.in_flight:
                break
        else:
            return
        new = Job.LOW if self.prio.get(job_id, Job.MEDIUM) == Job.HIGH else Job.HIGH
        self.in_flight.add(job_id)
        req = svc.UpdateJobRequest(job=Job(id=job_id, priority=new), update_mask=field_mask_pb2.FieldMask(paths=["priority"]))
        self.sent[phase] += 1
        t0 = time.monotonic()
        try:
            job = await self.stub.UpdateJob(req, timeout=30)
        except grpc.aio.AioRpcError as e:
            self.failed[phase] += 1
            self.fail_sample = self.fail_sample or f"{e.code().name}: {e.details()}"
            return
        finally:
            self.in_flight.discard(job_id)
        t1 = time.monotonic()
        self.prio[job_id] = job.priority
        if job.revision in self.send_time or job.revision <= 0:
            self.no_change += 1
            return
        self.send_time[job.revision] = t0
        self.job_of[job.revision] = job_id
        self.phase_of[job.revision] = phase
        self.max_rev = max(self.max_rev, job.revision)
        self.rtt.append(t1 - t0)
        self.rtt_of[job.revision] = t1 - t0

    async def run(self, rate: float, duration: float, phase: str) -> None:
        """Open loop: one change every 1/rate s for `duration` s."""
        tasks: set[asyncio.Task[None]] = set()
        t0 = time.monotonic()
        n = int(rate * duration)
        for k in range(n):
            due = t0 + k / rate
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > 0.05:
                self.late_ticks += 1
            t = asyncio.create_task(self.change(phase))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)


# -- orchestration ------------------------------------------------------------------------


async def gather_status(groups: list[Any]) -> dict[str, Any]:
    sts = await asyncio.gather(*(g.status() for g in groups))
    tot: dict[str, Any] = {"errors": collections.Counter()}
    for st in sts:
        for k in ("n", "started", "connected", "reopens", "events", "progress"):
            tot[k] = tot.get(k, 0) + st[k]
        tot["errors"] += st["errors"]
        if st["min_all_rev"] is not None:
            tot["min_all_rev"] = min(tot.get("min_all_rev", st["min_all_rev"]), st["min_all_rev"])
        tot["oldest_wait"] = max(tot.get("oldest_wait", 0.0), st["oldest_wait"])
        tot.setdefault("error_samples", {}).update(st["error_samples"])
    return tot


async def wait_all_connected(groups: list[Any], n: int, since: float | None, timeout: float) -> float | None:
    """Wait until every stream has a first message (since None), or until
    every stream has a message on a call opened at or after `since` (a
    restart). Returns the monotonic time the last stream got that message
    (when it was noticed, for the first case); None on timeout."""
    t0 = time.monotonic()
    last_print = t0
    while time.monotonic() - t0 < timeout:
        if since is None:
            c, last = (await gather_status(groups))["connected"], time.monotonic()
        else:
            res = await asyncio.gather(*(g.back_since(since) for g in groups))
            c, last = sum(r[0] for r in res), max(r[1] for r in res)
        if c >= n:
            return last
        if time.monotonic() - last_print > 5:
            print(f"    {c:,}/{n:,} streams have a message ...", flush=True)
            last_print = time.monotonic()
        await asyncio.sleep(0.1)
    return None


async def print_stragglers(groups: list[Any], since: float) -> None:
    for g in groups:
        for x in await g.stragglers(since):
            print(f"    not back: {x}", flush=True)


def lat_stats(lat: list[float]) -> tuple[float, float, float]:
    lat.sort()
    return 1000 * bc.pct(lat, 50), 1000 * bc.pct(lat, 99), (1000 * lat[-1]) if lat else float("nan")


async def create_jobs(stub: svc_grpc.JobServiceStub, n: int) -> list[str]:
    ids: list[str] = []
    counter = iter(range(n))

    async def one() -> None:
        for i in counter:
            job = await stub.CreateJob(svc.CreateJobRequest(type="TRANSCODE", creator="bench-watch",
                                                            request_id=f"bench-watch-{i}"), timeout=60)
            ids.append(job.id)

    await asyncio.gather(*(one() for _ in range(min(64, n))))
    return ids


class BenchFailure(Exception):
    """The benchmark could not measure what it should (exit code 1)."""


async def bench(args: argparse.Namespace, tmp: Path) -> int:
    db = tmp / "watch.db"
    extra = ["--shutdown-grace", str(args.shutdown_grace)] if args.shutdown_grace is not None else []
    extra += ["--durability", args.durability]
    server = bc.ServerProc(db, port=args.port, log_path=tmp / "server.log", extra_args=extra,
                           gc_log=args.gc_log).start()
    n_streams = args.watchers + args.all_watchers
    print(f"server pid {server.pid} on {server.addr}, db {db}, durability {args.durability}")
    print(f"{args.watchers:,} per-job + {args.all_watchers} all-job watchers, {args.per_channel} streams/channel, "
          f"opened at {args.open_rate:g}/s over {max(1, args.workers)} "
          f"{'worker process(es)' if args.workers else 'this process'}; {args.rate:g} changes/s for "
          f"{args.duration:g} s; progress_interval {args.progress_interval:g} s per-job, "
          f"{args.all_progress_interval:g} s all-job; per-job streams first open "
          f"{'with send_initial_snapshot' if args.snapshot else 'from the revision after the creates'}; "
          f"{bc.machine_note()}")
    exe, pdir = bc.profile_setup(args)
    groups: list[Any] = []
    rep: dict[str, Any] = {}
    results: list[dict[str, Any]] = []
    whole = bc.OtherLoad().start()
    try:
        ch = grpc.aio.insecure_channel(server.addr, options=WATCH_CHANNEL_OPTIONS)
        await asyncio.wait_for(ch.channel_ready(), 10)
        stub = svc_grpc.JobServiceStub(ch)
        t0 = time.monotonic()
        ids = await create_jobs(stub, args.watchers)
        print(f"created {len(ids):,} jobs in {time.monotonic() - t0:.1f} s", flush=True)
        start_rev = (await stub.ListJobs(svc.ListJobsRequest(page_size=1))).revision + 1

        # Watchers: per-job ids and all-watchers split over the groups.
        n_groups = max(1, args.workers)
        cfgs = []
        for gi in range(n_groups):
            cfgs.append(dict(
                addr=server.addr, job_ids=ids[gi::n_groups],
                n_all=args.all_watchers // n_groups + (1 if gi < args.all_watchers % n_groups else 0),
                ref=gi == 0, per_channel=args.per_channel, progress_interval=args.progress_interval,
                all_progress_interval=args.all_progress_interval, snapshot=args.snapshot,
                open_rate=args.open_rate / n_groups, start_rev=start_rev,
            ))
        groups = [Remote(c) if args.workers else Local(c) for c in cfgs]
        await asyncio.sleep(1.0)  # let the server settle after the creates
        rss0 = server.rss_bytes()
        t0 = time.monotonic()
        await asyncio.gather(*(g.open() for g in groups))
        t_opened = time.monotonic() - t0
        t_all = await wait_all_connected(groups, n_streams, None, args.connect_timeout)
        st = await gather_status(groups)
        if t_all is None:
            raise BenchFailure(f"only {st['connected']:,}/{n_streams:,} streams got a first message within "
                               f"{args.connect_timeout:g} s; errors {dict(st['errors'])}")
        waited = t_all - t0 - t_opened
        rss1 = server.rss_bytes()
        rep["open"] = dict(opened_s=t_opened, all_first_msg_s=t_opened + waited, reopens=st["reopens"],
                           errors=dict(st["errors"]), samples=st.get("error_samples", {}), rss0=rss0, rss1=rss1,
                           per_watcher=(rss1 - rss0) / n_streams, threads=bc.proc_threads(server.pid))
        print(f"opened {n_streams:,} streams in {t_opened:.1f} s, all had a first message after "
              f"{t_opened + waited:.1f} s, {st['reopens']} re-opens {st.get('error_samples') or ''}; server RSS "
              f"{rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MiB = {(rss1 - rss0) / n_streams / 1024:.1f} KiB/watcher",
              flush=True)

        # Steady phase.
        driver = Driver(stub, ids, random.Random(7))
        prog0 = st["progress"]
        prof = bc.PySpy(exe, server.pid, pdir / "watch-steady.txt", args.duration) if exe and pdir else None
        cpus = [bc.ProcCpu(server.pid).start(), bc.ProcCpu().start()] + [bc.ProcCpu(g.pid).start()
                                                                          for g in groups if isinstance(g, Remote)]
        other = bc.OtherLoad().start()  # this process and all its children are ours
        t_steady0 = time.monotonic()
        await driver.run(args.rate, args.duration, "steady")
        for c in cpus:
            c.stop()
        rep["other_cores"] = other.stop()
        rep["steady_window"] = (t_steady0, time.monotonic())
        st = await gather_status(groups)
        rep["steady"] = dict(wall=cpus[0].wall, server_cores=cpus[0].cores, main_cores=cpus[1].cores,
                             worker_cores=[c.cores for c in cpus[2:]], progress_per_s=(st["progress"] - prog0) / cpus[0].wall,
                             rss=server.rss_bytes())
        print(f"steady: {driver.sent['steady']:,} changes in {cpus[0].wall:.1f} s, server {cpus[0].cores:.2f} cores, "
              f"driver process {cpus[1].cores:.2f}, watch workers {', '.join(f'{c.cores:.2f}' for c in cpus[2:]) or '-'}"
              f" cores; {rep['steady']['progress_per_s']:,.0f} bookmarks/s", flush=True)
        if prof is not None and prof.wait():
            rep["profile"] = prof.summary()

        if args.restart:
            await restart_phase(args, server, groups, driver, n_streams, rep)

        # Drain: every watcher has confirmed the last change it must get
        # (its job's last one; the last one for all-watchers).
        last_of_job: dict[str, int] = {}
        for rev, job_id in driver.job_of.items():
            last_of_job[job_id] = max(rev, last_of_job.get(job_id, 0))
        t_end = time.monotonic() + args.drain_timeout
        while time.monotonic() < t_end:
            if not sum(await asyncio.gather(*(g.behind(last_of_job, driver.max_rev) for g in groups))):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)  # changes committed without a reply to the driver
        results = list(await asyncio.gather(*(g.close() for g in groups)))
        groups = []
        await ch.close()
    finally:
        for g in groups:
            if isinstance(g, Remote):
                g.proc.kill()
                g.proc.join(10)
        server.stop()
    rep["whole_other_cores"] = whole.stop()
    return report(args, rep, driver, results, start_rev, server)


async def restart_phase(args: argparse.Namespace, server: bc.ServerProc, groups: list[Any], driver: Driver,
                        n_streams: int, rep: dict[str, Any]) -> None:
    """SIGTERM, start again on the same port and DB, wait until every stream
    is back; changes keep flowing throughout."""
    stop_driving = asyncio.Event()

    async def drive() -> None:
        while not stop_driving.is_set():
            await driver.run(args.rate, 1.0, "restart")

    dtask = asyncio.create_task(drive())
    await asyncio.sleep(1.0)
    st0 = await gather_status(groups)
    t_term = time.monotonic()
    stop_s = await asyncio.to_thread(server.stop)
    t_exit = time.monotonic()
    await asyncio.to_thread(server.start)
    t_listen = time.monotonic()
    exe, pdir = bc.profile_setup(args)
    prof = bc.PySpy(exe, server.pid, pdir / "watch-restart.txt", 3600) if exe and pdir else None
    # A stream is back when it has a message on a call opened after the
    # SIGTERM: the draining server sends nothing on a resumed call (it ends
    # it with UNAVAILABLE), and the new one answers calls a little before it
    # prints its "listening" line, so t_listen is no boundary.
    t_back = await wait_all_connected(groups, n_streams, t_term, args.connect_timeout)
    if t_back is None:
        await print_stragglers(groups, t_term)
    early = sum(r[2] for r in await asyncio.gather(*(g.back_since(t_term, t_listen) for g in groups)))
    if prof is not None:
        prof.proc.send_signal(bc.signal.SIGINT)
        if prof.wait():
            rep["restart_profile"] = prof.summary()
    st = await gather_status(groups)
    waited = None if t_back is None else max(0.0, t_back - t_listen)
    back = None if t_back is None else t_back - t_term
    rep["restart"] = dict(stop_s=stop_s, start_s=t_listen - t_exit, back_after_listen_s=waited,
                          back_after_term_s=back, reopens=st["reopens"] - st0["reopens"],
                          errors=dict(st["errors"] - st0["errors"]), early=early,
                          samples=st.get("error_samples", {}), new_pid=server.pid)
    print(f"restart: server stopped {stop_s:.1f} s after SIGTERM, listening again {t_listen - t_exit:.2f} s later; "
          + (f"all {n_streams:,} streams back {waited:.2f} s after that ({back:.1f} s after SIGTERM)"
             if back is not None else f"NOT all streams back within {args.connect_timeout:g} s"), flush=True)
    await asyncio.sleep(args.after_restart)
    stop_driving.set()
    await dtask


def report(args: argparse.Namespace, rep: dict[str, Any], driver: Driver, results: list[dict[str, Any]],
           start_rev: int, server: bc.ServerProc) -> int:
    streams = [s for r in results for s in r["streams"]]
    alls = [s for s in streams if s["kind"] == "all"]
    per_job = {s["job_id"]: s for s in streams if s["kind"] == "job"}
    steady = {r for r, p in driver.phase_of.items() if p == "steady"}

    # Latency of steady-phase changes.
    lat_job: list[float] = []
    lat_all: list[float] = []
    got_job = got_all = 0
    for s in streams:
        tgt = lat_all if s["kind"] == "all" else lat_job
        seen = set()
        for rev, t in zip(s["revs"], s["times"]):
            if rev in steady and rev not in seen:
                seen.add(rev)
                tgt.append(t - driver.send_time[rev])
        if s["kind"] == "all":
            got_all += len(seen)
        else:
            got_job += len(seen)
    exp_job, exp_all = len(steady), len(steady) * len(alls)
    j50, j99, jmax = lat_stats(lat_job)
    a50, a99, amax = lat_stats(lat_all)
    r50, r99, rmax = lat_stats(driver.rtt)

    # Completeness over the whole run: all-watchers contiguous from start_rev
    # to the last committed change; per-job watchers have each change of their job.
    final = max(driver.max_rev, max((s["last_rev"] for s in alls), default=0))
    gaps = dups = short = 0
    for s in alls:
        revs = list(s["revs"])
        for a, b in zip(revs, revs[1:]):
            if b <= a:
                dups += 1
            elif b != a + 1:
                gaps += b - a - 1
        if not revs or revs[0] != start_rev or revs[-1] < final:
            short += 1
    ref = next((s["ref_jobs"] for s in alls if s["ref_jobs"]), {})
    ref_max = max(ref, default=0)
    # A change missing from its watcher is a gap when the watcher has already
    # confirmed a later revision (event or bookmark: "everything up to here
    # was sent"); otherwise it was not delivered yet when the run ended.
    missing_job = pending_job = extra_job = 0
    job_sets = {j: set(s["revs"]) for j, s in per_job.items()}
    for rev, job_id in ref.items():
        if rev not in job_sets.get(job_id, ()):
            if job_id in per_job and per_job[job_id]["last_rev"] >= rev:
                missing_job += 1
            else:
                pending_job += 1
    for j, got in job_sets.items():
        extra_job += sum(1 for r in got if r <= ref_max and ref.get(r) != j)

    o, stdy = rep["open"], rep["steady"]
    t0, t1 = rep["steady_window"]
    gcs = server.gc_pauses(t0, t1) if args.gc_log else []
    if args.timeline:
        print()
        by_sec: dict[int, list[float]] = collections.defaultdict(list)
        rtt_sec: dict[int, list[float]] = collections.defaultdict(list)
        for s in streams:
            for rev, t in zip(s["revs"], s["times"]):
                if rev in steady:
                    by_sec[int(driver.send_time[rev] - t0)].append(t - driver.send_time[rev])
        for rev in steady:
            rtt_sec[int(driver.send_time[rev] - t0)].append(driver.rtt_of.get(rev, float("nan")))
        gc_sec: dict[int, list[float]] = collections.defaultdict(list)
        if args.gc_log:
            for m in bc.GC_RE.finditer(server.log_path.read_text(errors="replace")):
                t = float(m.group(3))
                if t0 <= t <= t1 and m.group(1) == "2":
                    gc_sec[int(t - t0)].append(float(m.group(2)))
        rows = []
        for sec in sorted(set(by_sec) | set(rtt_sec)):
            lat = sorted(by_sec.get(sec, []))
            rows.append([sec, len(rtt_sec.get(sec, [])), len(lat), 1000 * bc.pct(lat, 50), 1000 * bc.pct(lat, 99),
                         1000 * max(lat, default=float("nan")), 1000 * max(rtt_sec.get(sec, [float("nan")])),
                         " ".join(f"{x:.0f}" for x in gc_sec.get(sec, []))])
        print(bc.table(["second", "changes", "deliveries", "p50 ms", "p99 ms", "max ms", "max RTT ms",
                        "gen2 GC ms" if args.gc_log else ""], rows))
    print()
    print(bc.table(["phase", "measure", "value"], [
        ["open", "streams (per-job + all)", f"{args.watchers:,} + {args.all_watchers}"],
        ["open", "opened in / all had a first message after", f"{o['opened_s']:.1f} s / {o['all_first_msg_s']:.1f} s"],
        ["open", "re-opens needed (errors)", f"{o['reopens']} {o['errors'] or ''}"],
    ] + [["open", f"  e.g. {code}", detail] for code, detail in o["samples"].items()] + [
        ["open", "server RSS before -> after", f"{o['rss0'] / 2**20:.1f} -> {o['rss1'] / 2**20:.1f} MiB"],
        ["open", "server memory per watcher", f"{o['per_watcher'] / 1024:.1f} KiB"],
        ["steady", "changes sent / failed / no-op", f"{driver.sent['steady']:,} / {driver.failed['steady']} / {driver.no_change}"],
        ["steady", "change rate achieved", f"{len(steady) / stdy['wall']:.1f}/s ({driver.late_ticks} late ticks)"],
        ["steady", "UpdateJob RTT p50 / p99 / max", f"{r50:.1f} / {r99:.1f} / {rmax:.1f} ms"],
        ["steady", "per-job watchers: received / expected", f"{got_job:,} / {exp_job:,}"],
        ["steady", "per-job publish->receive p50 / p99 / max", f"{j50:.1f} / {j99:.1f} / {jmax:.1f} ms"],
        ["steady", "all-watchers: received / expected", f"{got_all:,} / {exp_all:,}"],
        ["steady", "all-watchers publish->receive p50 / p99 / max", f"{a50:.1f} / {a99:.1f} / {amax:.1f} ms"],
        ["steady", "bookmarks received", f"{stdy['progress_per_s']:,.0f}/s"],
        ["steady", "CPU: server / driver / watch workers",
         f"{stdy['server_cores']:.2f} / {stdy['main_cores']:.2f} / "
         f"{', '.join(f'{c:.2f}' for c in stdy['worker_cores']) or '-'} cores"],
        ["steady", "CPU: other processes on the machine", f"{rep['other_cores']:.2f} cores"],
        ["steady", "server RSS after", f"{stdy['rss'] / 2**20:.1f} MiB"],
    ] + ([["steady", "server gen-2 GCs: count / total / max",
           f"{sum(1 for g, _ in gcs if g == 2)} / {sum(ms for g, ms in gcs if g == 2):.0f} / "
           f"{max((ms for g, ms in gcs if g == 2), default=0):.0f} ms (younger ones > 5 ms: "
           f"{sum(1 for g, ms in gcs if g < 2)})"]] if args.gc_log else []) + [
        ["whole run", "all-watchers: gaps / duplicates / incomplete", f"{gaps} / {dups} / {short} (of {len(alls)})"],
        ["whole run", "per-job watchers: gaps / not yet delivered / extra",
         f"{missing_job} / {pending_job} / {extra_job} (of {len(ref):,} changes)"],
    ] + ([
        ["restart", "server stop (SIGTERM -> exit)", f"{rep['restart']['stop_s']:.2f} s"],
        ["restart", "exit -> listening again", f"{rep['restart']['start_s']:.2f} s"],
        ["restart", "listening -> all streams back",
         f"{rep['restart']['back_after_listen_s']:.2f} s" if rep['restart']['back_after_listen_s'] is not None else "TIMEOUT"],
        ["restart", "SIGTERM -> all streams back",
         f"{rep['restart']['back_after_term_s']:.2f} s" if rep['restart']['back_after_term_s'] is not None else "TIMEOUT"],
        ["restart", "changes sent / refused", f"{driver.sent['restart']:,} / {driver.failed['restart']:,}"],
        ["restart", "re-opens total (errors)", f"{rep['restart']['reopens']:,} {rep['restart']['errors']}"],
        ["restart", "streams back before the server printed 'listening'", f"{rep['restart']['early']:,}"],
    ] + [["restart", f"  e.g. {code}", detail] for code, detail in rep["restart"]["samples"].items()]
        if "restart" in rep else []), left=(0, 1, 2)))
    print(bc.other_load_note(rep["other_cores"]) + " (steady phase)")
    print(bc.other_load_note(rep["whole_other_cores"]) + " (whole run)")
    print(f"note: {bc.machine_note()}; latency = receive time in the watcher process - time just before the "
          f"UpdateJob call in the driver (CLOCK_MONOTONIC); the CPU row shows whether a client process was saturated.")
    if "profile" in rep:
        print(f"\nserver profile, steady phase:\n{rep['profile']}")
    if "restart_profile" in rep:
        print(f"\nserver profile, restart (listening -> all streams back):\n{rep['restart_profile']}")
    print()
    incomplete = got_job < exp_job or got_all < exp_all or short or pending_job
    wrong = gaps or dups or missing_job or extra_job
    for line in (
        bc.target_line("WatchJobs/per-job publish->receive p99", j99, "<=", TARGET_P99_MS, " ms",
                       f"{args.watchers:,} per-job + {args.all_watchers} all watchers, {args.rate:g} changes/s")[0],
        bc.target_line("WatchJobs/all-watchers publish->receive p99", a99, "<=", TARGET_P99_MS, " ms",
                       f"{args.all_watchers} x {args.rate:g} events/s")[0],
        bc.target_line("WatchJobs/server memory per watcher", o["per_watcher"] / 1024, "<=", TARGET_KIB, " KiB",
                       f"{args.watchers + args.all_watchers:,} streams")[0],
    ):
        print(line)
    errors = []
    if wrong:
        errors.append(f"watchers saw gaps ({gaps} all-job, {missing_job} per-job), duplicates ({dups}) or changes "
                      f"of other jobs ({extra_job})")
    if incomplete:
        errors.append(f"changes missing at the end of the run, {args.drain_timeout:g} s after the last one "
                      f"(see the 'received' and 'whole run' rows)")
    if driver.failed["steady"]:
        errors.append(f"{driver.failed['steady']} UpdateJob calls failed in the steady phase, e.g. {driver.fail_sample}")
    if "restart" in rep and rep["restart"]["back_after_term_s"] is None:
        errors.append(f"not every stream came back within {args.connect_timeout:g} s of the restart")
    for e in errors:
        print(f"FAILED: {e}", file=sys.stderr)
    return 1 if errors else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--watchers", type=int, default=5000, help="jobs, each with one watcher (default %(default)s)")
    ap.add_argument("--all-watchers", type=int, default=100, help="unfiltered watchers (default %(default)s)")
    ap.add_argument("--rate", type=float, default=100.0, help="job changes per second (default %(default)s)")
    ap.add_argument("--duration", type=float, default=20.0, help="steady phase seconds (default %(default)s)")
    ap.add_argument("--per-channel", type=int, default=50, help="streams per channel/connection (default %(default)s)")
    ap.add_argument("--open-rate", type=float, default=500.0, help="streams opened per second (default %(default)s)")
    ap.add_argument("--progress-interval", type=float, default=10.0,
                    help="progress_interval of the per-job streams, seconds (default %(default)s, the server's "
                         "default; 1 s means 5,000 bookmarks/s, which by itself saturates the server)")
    ap.add_argument("--all-progress-interval", type=float, default=1.0,
                    help="progress_interval of the all-job streams, seconds (default %(default)s)")
    ap.add_argument("--snapshot", action=argparse.BooleanOptionalAction, default=True,
                    help="open each per-job stream with send_initial_snapshot, so it answers at once instead of "
                         "after its first progress interval (default: on)")
    ap.add_argument("--workers", type=int, default=2,
                    help="processes holding the watchers; 0 = this process (default %(default)s)")
    ap.add_argument("--connect-timeout", type=float, default=120.0,
                    help="give up when streams have no first message after this (default %(default)s)")
    ap.add_argument("--restart", action="store_true", help="after the steady phase, restart the server and time "
                    "how long until every watcher is back")
    ap.add_argument("--after-restart", type=float, default=3.0,
                    help="seconds of changes after all watchers are back (default %(default)s)")
    ap.add_argument("--shutdown-grace", type=float, default=None,
                    help="pass --shutdown-grace to the server (default: the server's own, 10 s)")
    ap.add_argument("--port", type=int, default=0, help="server port (default: any free one)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary database and server log")
    ap.add_argument("--drain-timeout", type=float, default=15.0,
                    help="at the end, wait up to this long for every watcher to have its last change "
                         "(default %(default)s)")
    ap.add_argument("--timeline", action="store_true",
                    help="print the steady phase second by second (deliveries, latency, UpdateJob RTT)")
    ap.add_argument("--gc-log", action="store_true",
                    help="run the server under a wrapper that logs its garbage collections and report the "
                         "generation-2 pauses of the steady phase (instrumentation only)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run (~20 s): 500 + 10 watchers, 5 s steady phase")
    bc.add_durability_arg(ap)
    bc.add_quiet_arg(ap)
    bc.add_profile_args(ap)
    args = ap.parse_args()
    if args.quick:
        args.watchers, args.all_watchers, args.duration = 500, 10, 5.0
    if args.watchers < 1 or args.rate <= 0 or args.duration <= 0 or args.per_channel < 1:
        ap.error("--watchers, --rate, --duration and --per-channel must be positive")
    if args.wait_quiet > 0:
        bc.wait_for_quiet(args.wait_quiet)
    if args.restart and args.port == 0:
        args.port = bc.free_port()  # the restarted server must come back on the same port
    tmp = Path(tempfile.mkdtemp(prefix="mediajobs-bench-watch-"))
    rc = 1
    try:
        rc = asyncio.run(bench(args, tmp))
    except KeyboardInterrupt:
        rc = 130
        print("interrupted", file=sys.stderr)
    except BenchFailure as e:
        print(f"FAILED: {e}", file=sys.stderr)
    finally:
        bc.cleanup_tmp(tmp, keep=args.keep, failed=rc not in (0, 130), what="database and server.log")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
