#!/usr/bin/env python3
"""Benchmark: the HTTP gateway. (a) GET a job over HTTP against GetJob over
gRPC on the same server in the same run; (b) server-sent events fanned out
to 1,000 subscribers at 100 changes/s.

Targets: (a) HTTP GET /v1/jobs/{id} >= 0.5 of GetJob's calls/s over gRPC;
(b) SSE delivery p99 <= 100 ms, from the change's commit to its receipt by
each subscriber.

The server runs as a separate process (`python -m mediajobs.server`) on a
fresh temporary SQLite file, with its own gateway (`--http-listen`: a
child process of the server, `--http-gateway process`, calling the API over
a private unix socket) and another as a process of its own next to it (`python -m mediajobs.server.gateway --server ...`, over
TCP). Nothing is pinned by default: the load generator, the server and the
gateways share the machine's cores as they would on a small VM running the
whole stack, the same for both workloads. The gateway is a process of its
own precisely so that it can run on another core than the server's; with
--pin, the server and both gateways are held to one CPU and this load
generator to the other, the strictest layout: the server side then has one
core for the work of two processes (a GET over HTTP costs it 0.9-1.25 ms of
CPU in either layout, a GetJob 0.4-0.6 ms), taking turns at every hop.

(a) Seed JOBS jobs, then, for a fixed time each, CONCURRENCY asyncio tasks
each with one call in flight: GetJob over one grpc.aio channel (request
serialized up front, the reply left as bytes), then GET /v1/jobs/{id} over
one aiohttp session (keep-alive connections, the body read as bytes, not
parsed) to the embedded gateway and to the standalone one, interleaved for
--rounds rounds. It reports calls/s, p50/p99 latency, the server side's CPU
per call (server + its gateway child + standalone gateway) and the ratio HTTP/gRPC of each
gateway.

(b) SUBSCRIBERS streams GET /v1/jobs:watch (from now, no filter; the
gateway serves them all from one upstream WatchJobs call), opened in waves,
each on a plain asyncio connection (an asyncio.Protocol, the cheapest
reader Python has: no task switch per read, so 1,000 streams cost this
process as little as they can and its own delays stay out of the numbers;
and on uvloop, --loop: on asyncio's own loop this process needed 0.8 cores
for the 100,000 deliveries a second, and on 2 cores its queueing doubled
the spread from first to last subscriber, p99 ~105 ms against ~55 ms);
the bytes are parsed with a regular expression as they come off the
socket (`id: N\\nevent: job`), the receive time (time.time()) kept per
revision. The first subscriber also decodes
every event's JSON for `eventTime`, the commit time the server stamps on
the change. Changes: CreateJob over gRPC at RATE/s, open loop (a tick every
1/RATE s, not waiting for earlier calls), for a warm-up and then DURATION s.
Latency = receive time - eventTime (the same machine's clock), for every
change of the measured window at every subscriber; also shown from the
CreateJob send time (which adds the commit itself). At the end every
subscriber must have received every change once, in order, with no gap
(else the run fails, exit code 1).

Exit code 0 even when a target is missed; 1 only when the benchmark itself
fails (the server does not start, calls fail, events are missing). The
temporary folder is removed at the end (--keep keeps it).

    python scripts/bench_gateway.py            # ~1.5 min
    python scripts/bench_gateway.py --quick    # ~30 s
    python scripts/bench_gateway.py --profile  # + py-spy summary of the server per phase
    python scripts/bench_gateway.py --sse-gateway standalone   # (b) through the standalone gateway
"""
from __future__ import annotations

import argparse
import array
import asyncio
import collections
import functools
import itertools
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp  # noqa: E402
import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402

import _bench_common as bc  # noqa: E402
from mediajobs.v1 import job_service_pb2 as svc  # noqa: E402
from mediajobs.v1 import resources_pb2 as res  # noqa: E402

GET = "/mediajobs.v1.JobService/GetJob"
CREATE = "/mediajobs.v1.JobService/CreateJob"
TARGET_HTTP_RATIO = 0.5
TARGET_SSE_P99_MS = 100.0
GATEWAY_LISTEN_RE = re.compile(r"mediajobs-gateway listening on http://127\.0\.0\.1:(\d+)")
JOB_ID_RE = re.compile(rb"id: (\d+)\nevent: job\n")
PROGRESS_RE = re.compile(rb"id: (\d+)\nevent: progress\n")


# -- (a) GET over HTTP against GetJob over gRPC --------------------------------------------------


@dataclass
class Result:
    name: str
    calls: int = 0
    errors: int = 0
    wall: float = 0.0
    lat: list[float] = field(default_factory=list)
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    error_sample: str = ""
    profile: str = ""
    other_cpu: float = 0.0  # CPU seconds of other processes on the machine meanwhile

    @property
    def rate(self) -> float:
        return self.calls / self.wall if self.wall else 0.0


async def run_load(name: str, one_call: Any, concurrency: int, duration: float, server_pids: list[int],
                   record: bool = True, spy: tuple[str, Path] | None = None, profile_pid: int = 0) -> Result:
    """`concurrency` tasks, each looping `await one_call(i)` until `duration`
    passed; the CPU of every server-side process is summed; py-spy samples
    `profile_pid` (default: the first)."""
    r = Result(name)
    stop_at = time.perf_counter() + duration
    perf = time.perf_counter

    async def worker(i: int) -> None:
        while perf() < stop_at:
            t0 = perf()
            try:
                await one_call(i)
            except Exception as e:  # noqa: BLE001 - counted and shown
                r.errors += 1
                r.error_sample = r.error_sample or f"{type(e).__name__}: {str(e)[:200]}"
                continue
            if record:
                r.lat.append(perf() - t0)
            r.calls += 1

    prof = None
    if spy is not None:
        exe, d = spy
        prof = bc.PySpy(exe, profile_pid or server_pids[0], d / f"{re.sub(r'[^A-Za-z]+', '_', name)}.txt", duration)
    scpu = [bc.ProcCpu(p).start() for p in server_pids]
    ccpu = bc.ProcCpu().start()
    ours: list[int | str] = [*server_pids, "self"]
    if prof is not None:
        ours.append(prof.proc.pid)
    other = bc.OtherLoad(ours).start()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    for c in scpu:
        c.stop()
    ccpu.stop()
    r.other_cpu = other.stop() * ccpu.wall
    r.wall = ccpu.wall
    r.server_cpu = sum(c.cpu for c in scpu)
    r.client_cpu = ccpu.cpu
    if prof is not None and prof.wait():
        r.profile = prof.summary()
    r.lat.sort()
    return r


async def seed_jobs(channel: grpc.aio.Channel, n: int) -> list[res.Job]:
    create: Any = channel.unary_unary(CREATE, response_deserializer=res.Job.FromString)
    jobs: list[res.Job] = []
    req = svc.CreateJobRequest(type="TRANSCODE", creator="bench")
    req.params.update({"input": "s3://bench/source.mov", "preset": "h264-1080p"})
    raw = req.SerializeToString()

    async def one() -> None:
        while len(jobs) < n:
            jobs.append(await create(raw, timeout=30))

    await asyncio.gather(*(one() for _ in range(min(32, n))))
    return jobs[:n]


async def bench_get(args: argparse.Namespace, grpc_addr: str, gateways: dict[str, tuple[str, int]],
                    server_pids: list[int], spy: tuple[str, Path] | None) -> tuple[list[Result], list[str]]:
    """GetJob over gRPC, then GET over each gateway (name -> (base URL, the
    pid to profile)); the aggregated results, gRPC first, and the ratios
    per round."""
    channel = grpc.aio.insecure_channel(grpc_addr, options=bc.CHANNEL_OPTIONS)
    await asyncio.wait_for(channel.channel_ready(), 10)
    jobs = await seed_jobs(channel, args.jobs)
    print(f"(a) seeded {len(jobs)} jobs; {args.concurrency} concurrent calls, warm-up {args.warmup:g} s, "
          f"measure {args.duration:g} s per workload, {args.rounds} round(s)", flush=True)
    get: Any = channel.unary_unary(GET)  # bytes in, bytes out
    get_reqs = [svc.GetJobRequest(id=j.id).SerializeToString() for j in jobs]
    connector = aiohttp.TCPConnector(limit=args.concurrency * len(gateways), limit_per_host=args.concurrency)
    session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))
    counter = itertools.count()

    async def grpc_call(_i: int) -> None:
        await get(get_reqs[next(counter) % len(get_reqs)], timeout=30)

    def http_call(base: str) -> Any:
        urls = [f"{base}/v1/jobs/{j.id}" for j in jobs]

        async def call(_i: int) -> None:
            async with session.get(urls[next(counter) % len(urls)]) as r:
                body = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {body[:200]!r}")

        return call

    workloads: list[tuple[str, Any, int]] = [("GetJob (gRPC)", grpc_call, server_pids[0])]
    for name, (base, pid) in gateways.items():
        # The same answer: the job GetJob returns, in json_format's JSON mapping.
        want = json_format.MessageToDict(res.Job.FromString(await get(get_reqs[0], timeout=30)))
        async with session.get(f"{base}/v1/jobs/{jobs[0].id}") as check:
            assert check.status == 200 and await check.json() == want, await check.text()
        workloads.append((f"GET /v1/jobs/{{id}} ({name})", http_call(base), pid))
    results: dict[str, Result] = {}
    per_round: list[str] = []
    try:
        for rnd in range(args.rounds):
            rates = {}
            for name, call, pid in workloads:
                if args.warmup > 0:
                    await run_load(name, call, args.concurrency, args.warmup, server_pids, record=False)
                r = await run_load(name, call, args.concurrency, args.duration, server_pids,
                                   spy=spy, profile_pid=pid)
                rates[name] = r.rate
                agg = results.setdefault(name, Result(name))
                agg.calls += r.calls
                agg.errors += r.errors
                agg.wall += r.wall
                agg.server_cpu += r.server_cpu
                agg.client_cpu += r.client_cpu
                agg.other_cpu += r.other_cpu
                agg.lat.extend(r.lat)
                agg.error_sample = agg.error_sample or r.error_sample
                agg.profile += r.profile
                print(f"  round {rnd + 1} {name:36s} {r.rate:8,.0f} calls/s  p99 {1000 * bc.pct(r.lat, 99):6.1f} ms  "
                      f"server side {r.server_cpu / r.wall:.2f} cores, client {r.client_cpu / r.wall:.2f} cores"
                      + (f"  ERRORS {r.errors}: {r.error_sample}" if r.errors else ""), flush=True)
            base_rate = rates[workloads[0][0]]
            per_round.append(f"round {rnd + 1}: " + ", ".join(
                f"{name} {rates[name] / base_rate:.2f}" for name, *_ in workloads[1:]))
    finally:
        await session.close()
        await channel.close()
    for a in results.values():
        a.lat.sort()
    return [results[name] for name, *_ in workloads], per_round


# -- (b) SSE fan-out ---------------------------------------------------------------------------------


class Subscriber(asyncio.Protocol):
    """One SSE stream on a plain asyncio connection (HTTP/1.1, keep-alive):
    the revision and receive time of each job event, taken in
    data_received, as the bytes come off the socket.

    The body is chunked, and each chunk the gateway writes holds whole SSE
    messages, so the ids are read off the raw bytes with a regular
    expression, without decoding the chunking: a chunk-size line can fall
    only between messages, and JSON data has no raw newline in it. A read
    that ends inside a message keeps its tail for the next one."""

    def __init__(self, path: str, ref: bool, opened: asyncio.Future[None]) -> None:
        self.path = path
        self.ref = ref
        self.opened = opened
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.in_body = False
        self.tail = b""
        self.revs = array.array("q")
        self.times = array.array("d")
        self.start = -1  # the revision of the first progress (from now)
        self.events_json: dict[int, float] = {}  # revision -> eventTime (the reference subscriber)
        self.ended = False
        self.error = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes
        t.write(f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
                        .encode())

    def data_received(self, data: bytes) -> None:
        t = time.time()
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 200 "):
                self._fail(f"answered {self.head[:200]!r}")
                return
            data = self.head[end + 4:]
            self.in_body = True
        buf = self.tail + data if self.tail else data
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self.tail = buf
            return
        self.tail = buf[cut + 2:]
        whole = buf[:cut + 2]
        if self.start < 0:
            m = PROGRESS_RE.search(whole)
            if m:
                self.start = int(m.group(1))
                if not self.opened.done():
                    self.opened.set_result(None)
        revs, times = self.revs, self.times
        for rev in JOB_ID_RE.findall(whole):
            revs.append(int(rev))
            times.append(t)
        if self.ref:
            for line in whole.split(b"\n"):
                if line.startswith(b"data: {\"revision\"") and b"\"eventTime\"" in line:
                    ev = json.loads(line[6:])
                    self.events_json[int(ev["revision"])] = _rfc3339(ev["eventTime"])

    def _fail(self, why: str) -> None:
        self.error = self.error or why
        if not self.opened.done():
            self.opened.set_exception(RuntimeError(why))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        if not self.opened.done():
            self._fail(f"connection lost: {exc}")


def _rfc3339(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class FanOut:
    subscribers: int
    rate: float
    created: int = 0
    create_errors: int = 0
    error_sample: str = ""
    lat_commit: list[float] = field(default_factory=list)
    lat_send: list[float] = field(default_factory=list)
    missing: int = 0
    bad_streams: int = 0
    bad_sample: str = ""
    server_cores: float = 0.0
    client_cores: float = 0.0
    other_cores: float = 0.0
    upstream_watchers: str = ""
    open_s: float = 0.0
    profile: str = ""
    deliveries: int = 0
    wall: float = 0.0
    # Per change: its first receipt by any subscriber (the path to the
    # gateway and through it once) and the spread to its last receipt (the
    # fan-out to every stream, and the load generator reading them all).
    first: list[float] = field(default_factory=list)
    spread: list[float] = field(default_factory=list)


async def bench_sse(args: argparse.Namespace, grpc_addr: str, http_base: str, server_pids: list[int],
                    spy: tuple[str, Path] | None) -> FanOut:
    out = FanOut(args.subscribers, args.rate)
    host, port = http_base.removeprefix("http://").rsplit(":", 1)
    loop = asyncio.get_running_loop()
    subs: list[Subscriber] = []
    channel = grpc.aio.insecure_channel(grpc_addr, options=bc.CHANNEL_OPTIONS)
    create: Any = channel.unary_unary(CREATE, response_deserializer=res.Job.FromString)
    try:
        await asyncio.wait_for(channel.channel_ready(), 10)
        t0 = time.perf_counter()
        for i in range(0, args.subscribers, args.open_wave):
            opened = [loop.create_future() for _ in range(min(args.open_wave, args.subscribers - i))]
            wave = [Subscriber("/v1/jobs:watch", i + k == 0, f) for k, f in enumerate(opened)]
            subs += wave
            await asyncio.gather(*(loop.create_connection(functools.partial(lambda x: x, sub), host, int(port))
                                   for sub in wave))
            await asyncio.wait_for(asyncio.gather(*opened), 60)
        out.open_s = time.perf_counter() - t0
        print(f"(b) {len(subs)} SSE streams open in {out.open_s:.1f} s; changes: CreateJob at {args.rate:g}/s, "
              f"warm-up {args.sse_warmup:g} s, measure {args.sse_duration:g} s", flush=True)

        sent: dict[int, float] = {}  # revision -> send time (time.time())
        measured: set[int] = set()
        pending: set[asyncio.Task[None]] = set()
        raw = svc.CreateJobRequest(type="SSE", creator="bench").SerializeToString()

        async def one(record: bool) -> None:
            t = time.time()
            try:
                job = await create(raw, timeout=30)
            except grpc.aio.AioRpcError as e:
                out.create_errors += 1
                out.error_sample = out.error_sample or f"{e.code().name}: {e.details()}"
                return
            sent[job.revision] = t
            out.created += 1
            if record:
                measured.add(job.revision)

        async def drive(seconds: float, record: bool) -> None:
            start = time.perf_counter()
            n = int(seconds * args.rate)
            for k in range(n):
                ahead = start + k / args.rate - time.perf_counter()
                if ahead > 0:
                    await asyncio.sleep(ahead)
                task = asyncio.create_task(one(record))
                pending.add(task)
                task.add_done_callback(pending.discard)

        await drive(args.sse_warmup, False)
        prof = None
        if spy is not None:
            exe, d = spy
            prof = bc.PySpy(exe, server_pids[0], d / "sse.txt", args.sse_duration)
        scpu = [bc.ProcCpu(p).start() for p in server_pids]
        ccpu = bc.ProcCpu().start()
        ours: list[int | str] = [*server_pids, "self"]
        if prof is not None:
            ours.append(prof.proc.pid)
        other = bc.OtherLoad(ours).start()
        await drive(args.sse_duration, True)
        for c in scpu:
            c.stop()
        ccpu.stop()
        out.other_cores = other.stop()
        out.wall = ccpu.wall
        out.server_cores = sum(c.cpu for c in scpu) / ccpu.wall
        out.client_cores = ccpu.cores
        if pending:
            await asyncio.wait(pending, timeout=30)
        if prof is not None and prof.wait():
            out.profile = prof.summary()
        # Every subscriber must get every change: wait for the last one.
        last = max(sent) if sent else 0
        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline:
            if all(s.ended or (s.revs and s.revs[-1] >= last) for s in subs):
                break
            await asyncio.sleep(0.1)
    finally:
        for sub in subs:
            if sub.transport is not None:
                sub.transport.close()
        await channel.close()

    # -- check and measure
    ref = subs[0].events_json
    made = sorted(sent)
    earliest: dict[int, float] = {}
    latest: dict[int, float] = {}
    for s in subs:
        got = [r for r in s.revs if r > s.start]
        want = [r for r in made if r > s.start]
        if got != want:
            out.bad_streams += 1
            if not out.bad_sample:
                gaps = sorted(set(want) - set(got))[:5]
                dups = [r for r, c in collections.Counter(got).items() if c > 1][:5]
                out.bad_sample = (f"a stream got {len(got)} of {len(want)} changes (missing e.g. {gaps}, repeated "
                                  f"e.g. {dups}){'; ' + s.error if s.error else ''}")
            out.missing += len(set(want) - set(got))
        for rev, t in zip(s.revs, s.times):
            if rev in measured:
                commit = ref.get(rev)
                if commit is not None:
                    out.lat_commit.append(t - commit)
                    if t < earliest.get(rev, float("inf")):
                        earliest[rev] = t
                    if t > latest.get(rev, 0.0):
                        latest[rev] = t
                out.lat_send.append(t - sent[rev])
                out.deliveries += 1
    out.lat_commit.sort()
    out.lat_send.sort()
    out.first = sorted(t - ref[rev] for rev, t in earliest.items())
    out.spread = sorted(latest[rev] - t for rev, t in earliest.items())
    return out


# -- the processes ----------------------------------------------------------------------------------


class GatewayProc:
    """`python -m mediajobs.server.gateway --server ADDR --listen 127.0.0.1:0`."""

    def __init__(self, server_addr: str, log_path: Path, cpus: set[int] | None) -> None:
        self.server_addr = server_addr
        self.log_path = log_path
        self.cpus = cpus
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, timeout: float = 60.0) -> "GatewayProc":
        cmd = [sys.executable, "-m", "mediajobs.server.gateway", "--server", self.server_addr, "--listen",
               "127.0.0.1:0", "--log-level", "WARNING"]
        log = open(self.log_path, "ab")
        cpus = self.cpus
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=bc.ROOT,
                                     preexec_fn=(lambda: bc.os.sched_setaffinity(0, cpus)) if cpus else None)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = GATEWAY_LISTEN_RE.search(self.log_path.read_text(errors="replace"))
            if m:
                self.port = int(m.group(1))
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"the gateway did not start; log {self.log_path}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def bench(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="mediajobs-bench-gateway-"))
    if args.wait_quiet > 0:
        bc.wait_for_quiet(args.wait_quiet)
    server_cpus = client_cpus = None
    if args.pin and len(bc.os.sched_getaffinity(0)) >= 2:
        allowed = sorted(bc.os.sched_getaffinity(0))
        server_cpus, client_cpus = {allowed[0]}, {allowed[1]}
        bc.os.sched_setaffinity(0, client_cpus)
    http_port = bc.free_port()
    server = bc.ServerProc(tmp / "gateway.db", log_path=tmp / "server.log", cpus=server_cpus,
                           extra_args=["--max-watch-streams", "20000", "--http-listen", f"127.0.0.1:{http_port}"]
                           ).start()
    gateway: GatewayProc | None = None
    failed = False
    get_results: list[Result] = []
    per_round: list[str] = []
    fan: FanOut | None = None
    try:
        gateway = GatewayProc(server.addr, tmp / "gateway.log", server_cpus).start()
        # --http-listen runs the embedded gateway as the server's child
        # process (--http-gateway process): its CPU is the server side's too.
        children = [int(c) for c in Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()]
        pids = [server.pid, *children, gateway.pid]
        gateways = {"embedded": (f"http://127.0.0.1:{http_port}", server.pid),
                    "standalone": (f"http://127.0.0.1:{gateway.port}", gateway.pid)}
        spy = None
        exe, pdir = bc.profile_setup(args)
        if exe and pdir:
            spy = (exe, pdir)
        print(f"server pid {server.pid} on {server.addr}, its gateway on {gateways['embedded'][0]}; standalone "
              f"gateway pid {gateway.pid} on {gateways['standalone'][0]}; {bc.machine_note()}; "
              + (f"server and standalone gateway pinned to CPU {sorted(server_cpus)}, load generator to CPU "
                 f"{sorted(client_cpus or ())}" if server_cpus else "not pinned")
              + f"; the load generator on {args.loop}", flush=True)
        if not args.skip_get:
            get_results, per_round = await bench_get(args, server.addr, gateways, pids, spy)
            failed |= any(r.errors for r in get_results)
        if not args.skip_sse:
            base, pid = gateways[args.sse_gateway]
            fan = await bench_sse(args, server.addr, base, [pid] + [p for p in pids if p != pid], spy)
            failed |= fan.create_errors > 0 or fan.bad_streams > 0
    except Exception:
        failed = True
        raise
    finally:
        if gateway is not None:
            gateway.stop()
        server.stop()
        bc.cleanup_tmp(tmp, keep=args.keep, failed=failed, what="database and logs")

    # -- report ------------------------------------------------------------------------------------
    print()
    if get_results:
        g = get_results[0]
        print(bc.table(
            ["workload", "calls", "calls/s", "p50 ms", "p99 ms", "srv us/call", "srv cores", "cli us/call",
             "cli cores", "other cores", "ratio", "errors"],
            [[r.name, r.calls, r.rate, 1000 * bc.pct(r.lat, 50), 1000 * bc.pct(r.lat, 99),
              1e6 * r.server_cpu / max(1, r.calls), r.server_cpu / r.wall, 1e6 * r.client_cpu / max(1, r.calls),
              r.client_cpu / r.wall, r.other_cpu / r.wall, r.rate / g.rate if g.rate else float("nan"), r.errors]
             for r in get_results]))
        print(bc.other_load_note(max(r.other_cpu / r.wall for r in get_results)) + " (worst workload)")
        print("srv = the server side: the server process, its gateway child process, plus the standalone gateway "
              "process (idle unless it is the one measured), "
              + ("all on one core" if args.pin else "not pinned, sharing the machine with this load generator")
              + "; ratio = calls/s / GetJob's calls/s over gRPC.")
        if len(per_round) > 1:
            print("ratio per round: " + "; ".join(per_round))
        for r in get_results:
            if r.profile:
                print(f"\nprofile, {r.name} (the {'standalone gateway' if 'standalone' in r.name else 'server'}"
                      f" process):\n{r.profile.rstrip()}")
        for r in get_results[1:]:
            line, _ = bc.target_line(f"HTTP GET/gRPC GetJob, {r.name.rsplit('(', 1)[1].rstrip(')')} gateway",
                                     r.rate / g.rate if g.rate else float("nan"), ">=", TARGET_HTTP_RATIO,
                                     note=f"{args.concurrency} concurrent; "
                                     + ("server side on one core" if args.pin else "nothing pinned"))
            print(line)
        print()
    if fan is not None:
        print(bc.table(
            ["subscribers", "changes/s", "deliveries", "p50 ms", "p90 ms", "p99 ms", "max ms", "p99 from send ms",
             "srv cores", "cli cores", "other cores"],
            [[fan.subscribers, fan.rate, fan.deliveries, 1000 * bc.pct(fan.lat_commit, 50),
              1000 * bc.pct(fan.lat_commit, 90), 1000 * bc.pct(fan.lat_commit, 99),
              1000 * (fan.lat_commit[-1] if fan.lat_commit else float("nan")), 1000 * bc.pct(fan.lat_send, 99),
              fan.server_cores, fan.client_cores, fan.other_cores]]))
        print("latency = receipt at the subscriber - the change's eventTime (its commit, stamped by the server); "
              "'from send' adds the CreateJob call itself. " + bc.other_load_note(fan.other_cores))
        print(f"where it goes, per change: commit -> first subscriber p50 {1000 * bc.pct(fan.first, 50):.1f} ms, "
              f"p99 {1000 * bc.pct(fan.first, 99):.1f} ms (server, its watch batching, the gateway once); first -> "
              f"last subscriber p50 {1000 * bc.pct(fan.spread, 50):.1f} ms, p99 {1000 * bc.pct(fan.spread, 99):.1f} "
              f"ms (the fan-out to {fan.subscribers} streams and this process reading them)")
        if fan.profile:
            print(f"\nprofile, SSE fan-out (the {'server' if args.sse_gateway == 'embedded' else 'gateway'} "
                  f"process):\n{fan.profile.rstrip()}")
        if fan.create_errors:
            print(f"ERROR: {fan.create_errors} CreateJob calls failed, e.g. {fan.error_sample}", file=sys.stderr)
        if fan.bad_streams:
            print(f"ERROR: {fan.bad_streams} streams did not get every change once and in order ({fan.missing} "
                  f"missing); {fan.bad_sample}", file=sys.stderr)
        else:
            print(f"every one of the {fan.subscribers} streams got every change once, in order, with no gap")
        line, _ = bc.target_line("SSE delivery p99", 1000 * bc.pct(fan.lat_commit, 99), "<=", TARGET_SSE_P99_MS, " ms",
                                 note=f"{fan.subscribers} subscribers, {fan.rate:g} changes/s, "
                                      f"{args.sse_gateway} gateway")
        print(line)
    if failed:
        print("ERROR: the benchmark failed; the numbers above are not valid", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=6.0,
                    help="(a) seconds measured per workload (default %(default)s)")
    ap.add_argument("--warmup", type=float, default=2.0, help="(a) warm-up seconds per workload (default %(default)s)")
    ap.add_argument("--concurrency", type=int, default=64, help="(a) calls in flight (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=5, help="(a) rounds, the workloads interleaved (default %(default)s)")
    ap.add_argument("--jobs", type=int, default=1000, help="(a) jobs created first (default %(default)s)")
    ap.add_argument("--subscribers", type=int, default=1000, help="(b) SSE streams (default %(default)s)")
    ap.add_argument("--rate", type=float, default=100.0, help="(b) changes/s (default %(default)s)")
    ap.add_argument("--sse-duration", type=float, default=20.0, help="(b) seconds measured (default %(default)s)")
    ap.add_argument("--sse-warmup", type=float, default=3.0, help="(b) warm-up seconds (default %(default)s)")
    ap.add_argument("--open-wave", type=int, default=100, help="(b) streams opened at once (default %(default)s)")
    ap.add_argument("--drain-timeout", type=float, default=30.0,
                    help="(b) seconds to wait for the last change to reach every stream (default %(default)s)")
    ap.add_argument("--skip-get", action="store_true", help="leave out (a)")
    ap.add_argument("--skip-sse", action="store_true", help="leave out (b)")
    ap.add_argument("--sse-gateway", choices=("embedded", "standalone"), default="embedded",
                    help="(b) through the gateway inside the server (default) or the standalone one")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                    help="this load generator's event loop (default %(default)s: it reads 1,000 streams with half "
                         "the CPU of asyncio's loop, whose own queueing showed up as latency on a 2-core machine)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary database and logs")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run (~30 s): (a) 1 round of 2.5 s per workload; (b) 5 s measured")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=False,
                    help="pin the server and both gateways to CPU 0 and this load generator to CPU 1 (default: off; "
                         "the whole stack shares the machine's cores)")
    bc.add_quiet_arg(ap)
    bc.add_profile_args(ap)
    args = ap.parse_args()
    if args.quick:
        args.duration, args.warmup, args.rounds, args.jobs = 2.5, 0.5, 1, 200
        args.sse_duration, args.sse_warmup = 5.0, 2.0
    if args.concurrency < 1 or args.duration <= 0 or args.subscribers < 1 or args.rate <= 0:
        ap.error("--concurrency, --duration, --subscribers and --rate must be positive")
    try:
        factory = None
        if args.loop == "uvloop":
            import uvloop

            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(bench(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
