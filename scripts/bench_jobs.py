#!/usr/bin/env python3
"""Benchmark: CreateJob and GetJob calls/s at 64 concurrent calls, each as a
fraction of an empty unary RPC on the same runtime, measured in the same run.

Targets: GetJob >= 0.6 of the empty RPC's calls/s (CreateJob: below).

The empty unary RPC is grpc.health.v1.Health/Check on the same server process
(grpc_health's aio servicer: a dict lookup). The server runs as a separate
process (`python -m mediajobs.server`) on a fresh temporary SQLite file; this
process generates the load with grpc.aio: CONCURRENCY asyncio tasks, each with
one call in flight, over 1 channel and, by default, also over 2 channels (one
TCP connection each). By default the server is pinned to one CPU and the load
generator to the other, so the server is the limit and runs repeat (--no-pin
lets both float; expect noisier, lower ratios). Requests are serialized up
front and replies are left as bytes, so the load generator spends as little
CPU per call as it can; the same applies to all three RPCs.

Every CreateJob carries a fresh request_id, so each reply means the job row,
its CREATED event row and the idempotency row were committed. CreateJob is
measured in both durability modes (`--durability strict`, the default: SQLite
synchronous=FULL, an ack survives power loss; and `fast`: synchronous=NORMAL,
an ack survives a server crash), each on its own server process started side
by side, against the same empty-RPC baseline.
Targets: CreateJob strict >= 0.4, CreateJob fast >= 0.5.

Overload: a third server with `--max-concurrent-rpcs 64` gets a burst of
BURST concurrent CreateJob calls (over 8 channels) while Health/Check is
called every 10 ms on its own channel. Every call must end OK or
RESOURCE_EXHAUSTED with an ErrorInfo (OVERLOADED) and a RetryInfo: never
CANCELLED or anything else. Reported: the p50/p99 of the refused calls
(target p99 <= 50 ms), of the admitted ones, and of the health checks.

--secure: the same, with TLS and API keys on, as a deployment runs. Every
server process the bench starts gets `--tls-cert/--tls-key` (a throw-away CA
and a certificate for 127.0.0.1 and localhost, made with trustme in the
run's temporary folder) and `--auth keys`, with an admin key created in its
database before it starts (`python -m mediajobs.server keys --db DB create
--project default --role admin`, the documented bootstrap; the key is read
from its stdout). Every call (seeding, Health/Check, GetJob, CreateJob, the
overload burst and its health checks) goes over TLS and carries
`authorization: Bearer <key>`. The server never authenticates Health/Check
(health stays open), so the baseline pays TLS and the metadata but not the
key check: the ratios measure exactly what authentication (a cached key
lookup and the role check) adds per call to GetJob and CreateJob.
Targets with --secure: GetJob >= 0.6 and CreateJob (strict) >= 0.4 of the
secure empty RPC; CreateJob fast is measured and shown in the table but has
no target there. The overload burst is kept, against a capped server with TLS
and keys too.

For each workload: warm-up, then a fixed measuring time; it reports calls/s,
p50/p99 latency, the server's CPU seconds per call (from /proc/PID/stat) and
this process's, and the ratios. Exit code 0 even when a target is missed;
non-zero only when the benchmark itself fails (server does not start, RPCs
fail).

    python scripts/bench_jobs.py            # ~2.5 min: 3 rounds x 4 workloads x (2 + 10) s
    python scripts/bench_jobs.py --quick    # ~20 s
    python scripts/bench_jobs.py --profile  # + py-spy summary of the server per workload
    python scripts/bench_jobs.py --secure   # the same with TLS + API keys on every server and call
    python scripts/bench_jobs.py --quick --secure   # ~25 s
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402
from grpc_health.v1 import health_pb2  # noqa: E402

import _bench_common as bc  # noqa: E402
from mediajobs.v1 import job_service_pb2 as svc  # noqa: E402
from mediajobs.v1 import resources_pb2 as res  # noqa: E402

CREATE = "/mediajobs.v1.JobService/CreateJob"
GET = "/mediajobs.v1.JobService/GetJob"

TARGETS = {"GetJob": 0.6, "CreateJob strict": 0.4, "CreateJob fast": 0.5}
# --secure: TLS + API keys on the server and every call, baseline included.
SECURE_TARGETS = {"GetJob": 0.6, "CreateJob strict": 0.4}
BURST = 2000
BURST_CAP = 64
SHED_P99_TARGET_MS = 50.0


@dataclass
class Result:
    name: str
    channels: int
    calls: int = 0
    errors: int = 0
    wall: float = 0.0
    lat: list[float] = field(default_factory=list)
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    error_sample: str = ""
    profile: str = ""
    other_cpu: float = 0.0  # CPU seconds of other processes on the machine

    @property
    def rate(self) -> float:
        return self.calls / self.wall if self.wall else 0.0


def create_request_template() -> bytes:
    params = struct_pb2.Struct()
    params.update({"input": "s3://bench/source.mov", "preset": "h264-1080p"})
    return svc.CreateJobRequest(type="TRANSCODE", creator="bench", params=params).SerializeToString()


def create_requests(template: bytes):  # type: ignore[no-untyped-def]
    """Endless CreateJobRequest bytes, each with a new request_id (field 15)."""
    while True:
        yield template + b"\x7a\x20" + uuid.uuid4().hex.encode()


async def run_load(channels: list[grpc.aio.Channel], method: str, requests, concurrency: int,  # type: ignore[no-untyped-def]
                   duration: float, server: bc.ServerProc, name: str, record: bool = True,
                   spy: tuple[str, Path] | None = None,
                   metadata: tuple[tuple[str, str], ...] | None = None) -> Result:
    """`concurrency` tasks, each looping one call at a time until `duration`
    has passed; tasks are spread round-robin over the channels. `metadata`
    (--secure: the authorization header) goes with every call."""
    stubs = [ch.unary_unary(method) for ch in channels]  # bytes in, bytes out
    r = Result(name, len(channels))
    lat = r.lat
    stop_at = time.perf_counter() + duration
    perf = time.perf_counter

    async def worker(i: int) -> None:
        call = stubs[i % len(stubs)]
        while perf() < stop_at:
            req = next(requests)
            t0 = perf()
            try:
                await call(req, timeout=30, metadata=metadata)
            except grpc.aio.AioRpcError as e:
                r.errors += 1
                r.error_sample = r.error_sample or f"{e.code().name}: {e.details()}"
                continue
            if record:
                lat.append(perf() - t0)
            r.calls += 1

    prof = None
    if spy is not None:
        exe, d = spy
        prof = bc.PySpy(exe, server.pid, d / f"{name.replace('/', '_')}-{len(channels)}ch.txt", duration)
    scpu, ccpu = bc.ProcCpu(server.pid).start(), bc.ProcCpu().start()
    other = bc.OtherLoad([server.pid, "self"] + ([prof.proc.pid] if prof is not None else [])).start()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    scpu.stop()
    ccpu.stop()
    r.other_cpu = other.stop() * scpu.wall
    r.wall = scpu.wall
    r.server_cpu, r.client_cpu = scpu.cpu, ccpu.cpu
    if prof is not None and prof.wait():
        r.profile = prof.summary()
    lat.sort()
    return r


async def seed_jobs(channel: grpc.aio.Channel, n: int,
                    metadata: tuple[tuple[str, str], ...] | None = None) -> list[str]:
    create = channel.unary_unary(CREATE, response_deserializer=res.Job.FromString)
    template = create_request_template()
    ids: list[str] = []
    reqs = create_requests(template)

    async def one() -> None:
        while len(ids) < n:
            ids.append((await create(next(reqs), timeout=30, metadata=metadata)).id)

    await asyncio.gather(*(one() for _ in range(min(32, n))))
    return ids[:n]


@dataclass
class Burst:
    codes: dict[str, int] = field(default_factory=dict)
    shed: list[float] = field(default_factory=list)
    admitted: list[float] = field(default_factory=list)
    health: list[float] = field(default_factory=list)
    bad_refusals: int = 0  # RESOURCE_EXHAUSTED without the ErrorInfo/RetryInfo
    other_sample: str = ""
    wall: float = 0.0


def _overloaded_details(e: grpc.aio.AioRpcError) -> bool:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    st = rpc_status.from_call(e)  # type: ignore[arg-type]
    if st is None:
        return False
    kinds = set()
    for d in st.details:
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            d.Unpack(info)
            if info.reason == "OVERLOADED":
                kinds.add("info")
        elif d.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            kinds.add("retry")
    return kinds == {"info", "retry"}


def open_channel(addr: str, secure: bc.Secure | None) -> grpc.aio.Channel:
    """A channel to `addr`: plaintext, or (--secure) TLS trusting the run's CA."""
    if secure is not None:
        return secure.channel(addr, bc.CHANNEL_OPTIONS)  # type: ignore[no-any-return]
    return grpc.aio.insecure_channel(addr, options=bc.CHANNEL_OPTIONS)


async def overload_burst(server: bc.ServerProc, n: int, secure: bc.Secure | None = None,
                         metadata: tuple[tuple[str, str], ...] | None = None) -> Burst:
    """n concurrent CreateJob calls at once, and a health check every 10 ms."""
    out = Burst()
    chans = [open_channel(server.addr, secure) for _ in range(8)]
    hch = open_channel(server.addr, secure)
    for ch in chans + [hch]:
        await asyncio.wait_for(ch.channel_ready(), 10)
    creates = [ch.unary_unary(CREATE) for ch in chans]
    check = hch.unary_unary(bc.HEALTH_CHECK)
    health_req = health_pb2.HealthCheckRequest(service="mediajobs.v1.JobService").SerializeToString()
    reqs = create_requests(create_request_template())
    perf = time.perf_counter
    done = asyncio.Event()

    async def one(i: int) -> None:
        t0 = perf()
        try:
            await creates[i % len(creates)](next(reqs), timeout=60, metadata=metadata)
            out.admitted.append(perf() - t0)
            code = "OK"
        except grpc.aio.AioRpcError as e:
            code = e.code().name
            if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                out.shed.append(perf() - t0)
                if not _overloaded_details(e):
                    out.bad_refusals += 1
            else:
                out.other_sample = out.other_sample or f"{code}: {e.details()}"
        out.codes[code] = out.codes.get(code, 0) + 1

    async def probe_health() -> None:
        while not done.is_set():
            t0 = perf()
            await check(health_req, timeout=30, metadata=metadata)
            out.health.append(perf() - t0)
            await asyncio.sleep(0.01)

    prober = asyncio.create_task(probe_health())
    t0 = perf()
    await asyncio.gather(*(one(i) for i in range(n)))
    out.wall = perf() - t0
    done.set()
    await prober
    for ch in chans + [hch]:
        await ch.close()
    for xs in (out.shed, out.admitted, out.health):
        xs.sort()
    return out


async def bench(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="mediajobs-bench-jobs-"))
    db = tmp / "jobs.db"
    if args.wait_quiet > 0:
        bc.wait_for_quiet(args.wait_quiet)
    server_cpus = client_cpus = None
    if args.pin and len(bc.os.sched_getaffinity(0)) >= 2:
        allowed = sorted(bc.os.sched_getaffinity(0))
        server_cpus, client_cpus = {allowed[0]}, {allowed[1]}
        bc.os.sched_setaffinity(0, client_cpus)
    # --secure: TLS files for every server, and an admin key in each one's
    # database, made before it starts.
    secure = bc.Secure(tmp) if args.secure else None
    sec_args = secure.server_args() if secure is not None else []
    md: dict[str, tuple[tuple[str, str], ...] | None] = {"main": None, "fast": None, "capped": None}
    if secure is not None:
        for which, path in (("main", db), ("fast", tmp / "jobs-fast.db"), ("capped", tmp / "jobs-burst.db")):
            md[which] = secure.metadata(secure.create_key(path))
    server = bc.ServerProc(db, port=args.port, log_path=tmp / "server.log", cpus=server_cpus,
                           extra_args=["--durability", "strict", *sec_args]).start()
    # The same build in `fast` durability, on its own file, for CreateJob only.
    fast = bc.ServerProc(tmp / "jobs-fast.db", log_path=tmp / "server-fast.log", cpus=server_cpus,
                         extra_args=["--durability", "fast", *sec_args]).start()
    # And one with a small concurrency limit, for the overload burst.
    capped = bc.ServerProc(tmp / "jobs-burst.db", log_path=tmp / "server-burst.log", cpus=server_cpus,
                           extra_args=["--max-concurrent-rpcs", str(BURST_CAP), *sec_args]).start()
    spy = None
    exe, pdir = bc.profile_setup(args)
    if exe and pdir:
        spy = (exe, pdir)
    print(f"server pid {server.pid} on {server.addr}, db {db}")
    print(f"load: {args.concurrency} concurrent calls (one asyncio task each), warm-up {args.warmup:g} s, "
          f"measure {args.duration:g} s per workload; {bc.machine_note()}; "
          + (f"server pinned to CPU {sorted(server_cpus)}, load generator to CPU {sorted(client_cpus)}"
             if server_cpus else "not pinned"))
    if secure is not None:
        print(f"secure: every server runs with TLS (throw-away CA, certificate for 127.0.0.1/localhost in "
              f"{secure.cert_path.parent}) and --auth keys; every call goes over TLS with `authorization: Bearer "
              f"<admin key>`. The baseline Health/Check pays TLS + the metadata but not the key check (health is "
              f"never authenticated), so the ratios are what authentication adds per call.")
    results: list[Result] = []
    failed = False
    try:
        ch_counts = sorted({int(c) for c in args.channels.split(",")})
        all_channels = [open_channel(server.addr, secure) for _ in range(max(ch_counts))]
        fast_channels = [open_channel(fast.addr, secure) for _ in range(max(ch_counts))]
        for ch in all_channels + fast_channels:
            await asyncio.wait_for(ch.channel_ready(), 10)
        ids = await seed_jobs(all_channels[0], args.jobs, md["main"])
        print(f"seeded {len(ids)} jobs for GetJob")
        health_req = health_pb2.HealthCheckRequest(service="").SerializeToString()
        get_reqs = [svc.GetJobRequest(id=i).SerializeToString() for i in ids]
        if secure is not None:  # the key is really checked: a call without one is refused
            code = "OK"
            try:
                await all_channels[0].unary_unary(GET)(get_reqs[0], timeout=10)  # type: ignore[arg-type]
            except grpc.aio.AioRpcError as e:
                code = e.code().name
            if code != "UNAUTHENTICATED":
                raise RuntimeError(f"--secure: GetJob without a key ended {code}, not UNAUTHENTICATED")
            print("secure: GetJob without a key -> UNAUTHENTICATED (keys are checked)")
        template = create_request_template()
        workloads = [
            ("empty (Health/Check)", bc.HEALTH_CHECK, lambda: itertools.repeat(health_req), False),
            ("GetJob", GET, lambda: itertools.cycle(get_reqs), False),
            ("CreateJob strict", CREATE, lambda: create_requests(template), False),
            ("CreateJob fast", CREATE, lambda: create_requests(template), True),
        ]
        for rnd in range(args.rounds):
            for nch in ch_counts:
                for name, method, make, on_fast in workloads:
                    chans = (fast_channels if on_fast else all_channels)[:nch]
                    target = fast if on_fast else server
                    meta = md["fast" if on_fast else "main"]
                    if args.warmup > 0:
                        w = await run_load(chans, method, make(), args.concurrency, args.warmup, target, name,
                                           record=False, metadata=meta)
                        if w.errors:
                            print(f"  warm-up {name}: {w.errors} errors, e.g. {w.error_sample}")
                    r = await run_load(chans, method, make(), args.concurrency, args.duration, target, name,
                                       spy=spy, metadata=meta)
                    results.append(r)
                    print(f"  round {rnd + 1} {nch} ch {name:22s} {r.rate:8,.0f} calls/s  "
                          f"p99 {1000 * bc.pct(r.lat, 99):6.1f} ms  server {r.server_cpu / r.wall:.2f} cores, "
                          f"client {r.client_cpu / r.wall:.2f} cores"
                          + (f"  ERRORS {r.errors}: {r.error_sample}" if r.errors else ""), flush=True)
                    failed |= r.errors > 0
        for ch in all_channels + fast_channels:
            await ch.close()
        await overload_burst(capped, 200, secure, md["capped"])  # warm-up
        burst = await overload_burst(capped, args.burst, secure, md["capped"])
        print(f"  overload burst: {args.burst} concurrent CreateJob in {burst.wall:.2f} s: "
              + ", ".join(f"{k} {v}" for k, v in sorted(burst.codes.items())), flush=True)
        failed |= set(burst.codes) - {"OK", "RESOURCE_EXHAUSTED"} != set() or burst.bad_refusals > 0
    finally:
        server.stop()
        fast.stop()
        capped.stop()
    if not failed and not args.keep:
        bc.shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"(kept {tmp}: database and server.log)")

    # -- report ---------------------------------------------------------------------
    # Aggregate rounds: total calls / total time, merged latencies.
    agg: dict[tuple[int, str], Result] = {}
    for r in results:
        a = agg.setdefault((r.channels, r.name), Result(r.name, r.channels))
        a.calls += r.calls
        a.errors += r.errors
        a.wall += r.wall
        a.server_cpu += r.server_cpu
        a.client_cpu += r.client_cpu
        a.other_cpu += r.other_cpu
        a.lat.extend(r.lat)
        if r.profile:
            a.profile += r.profile + "\n"
    for a in agg.values():
        a.lat.sort()
    rows = []
    ratios: dict[int, dict[str, float]] = {}
    for (nch, name), a in sorted(agg.items(), key=lambda kv: kv[0][0]):
        base = agg[(nch, "empty (Health/Check)")]
        ratio = a.rate / base.rate if base.rate else float("nan")
        cpu_ratio = (base.server_cpu / base.calls) / (a.server_cpu / a.calls) if a.calls and base.calls else float("nan")
        ratios.setdefault(nch, {})[name] = ratio
        rows.append([
            name, nch, a.calls, a.rate, 1000 * bc.pct(a.lat, 50), 1000 * bc.pct(a.lat, 99),
            1e6 * a.server_cpu / max(1, a.calls), a.server_cpu / a.wall, 1e6 * a.client_cpu / max(1, a.calls),
            a.client_cpu / a.wall, a.other_cpu / a.wall, ratio, cpu_ratio, a.errors,
        ])
    print()
    print(bc.table(
        ["workload", "ch", "calls", "calls/s", "p50 ms", "p99 ms", "srv us/call", "srv cores", "cli us/call",
         "cli cores", "other cores", "ratio", "cpu ratio", "errors"],
        rows,
    ))
    worst = max(a.other_cpu / a.wall for a in agg.values())
    print(bc.other_load_note(worst) + " (worst workload; column 'other cores')")
    print("ratio = calls/s / empty calls/s on the same channels; cpu ratio = empty server CPU per call / this "
          "server CPU per call (what the ratio would be if the server alone were the limit).")
    if server_cpus:
        print(f"note: {bc.machine_note()}; pinned: server on CPU {sorted(server_cpus)} (srv cores ~1.0 means the "
              f"server is the limit), load generator on CPU {sorted(client_cpus)}.")
    else:
        print(f"note: {bc.machine_note()}, unpinned: when srv cores + cli cores ~= {bc.os.cpu_count()}, "
              "the machine, not the server alone, is the limit.")
    for a in agg.values():
        if a.profile:
            print(f"\nserver profile, {a.name}, {a.channels} ch:\n{a.profile.rstrip()}")
    if args.rounds > 1:
        for nch in sorted(ratios):
            per: dict[str, list[float]] = {name: [] for name, *_ in workloads[1:]}
            rs = [r for r in results if r.channels == nch]
            step = len(workloads)
            for i in range(0, len(rs), step):
                base = rs[i].rate
                for r in rs[i + 1:i + step]:
                    per[r.name].append(r.rate / base if base else float("nan"))
            print(f"ratio per round, {nch} ch: " + "; ".join(
                f"{name} {' '.join(f'{x:.2f}' for x in xs)} (median {sorted(xs)[len(xs) // 2]:.2f})"
                for name, xs in per.items()))
    # Target: on the channel count where the empty RPC ran fastest (the least
    # client-bound runtime); the other counts are in the table.
    best = max(ratios, key=lambda n: agg[(n, "empty (Health/Check)")].rate)
    print()
    if secure is not None:
        print("secure: TLS + `authorization: Bearer <key>` on every call, the baseline included; the baseline "
              "Health/Check is not authenticated by the server, GetJob and CreateJob are (cached key lookup + "
              "role check). CreateJob fast: no target with --secure (see the table).")
    for name, thr in (SECURE_TARGETS if secure is not None else TARGETS).items():
        line, _ = bc.target_line(f"{name}/empty" + (" (TLS + keys)" if secure is not None else ""),
                                 ratios[best][name], ">=", thr,
                                 note=f"{args.concurrency} concurrent, {best} channel{'s' if best > 1 else ''}")
        print(line)
    print()
    print(f"overload: {args.burst} concurrent CreateJob calls at once against --max-concurrent-rpcs {BURST_CAP}, "
          "and Health/Check every 10 ms meanwhile" + (" (TLS + keys)" if secure is not None else ""))
    print(bc.table(["calls", "count", "p50 ms", "p99 ms", "max ms"], [
        ["refused (RESOURCE_EXHAUSTED, OVERLOADED)", len(burst.shed), 1000 * bc.pct(burst.shed, 50),
         1000 * bc.pct(burst.shed, 99), 1000 * (burst.shed[-1] if burst.shed else 0)],
        ["admitted (OK)", len(burst.admitted), 1000 * bc.pct(burst.admitted, 50), 1000 * bc.pct(burst.admitted, 99),
         1000 * (burst.admitted[-1] if burst.admitted else 0)],
        ["Health/Check during the burst", len(burst.health), 1000 * bc.pct(burst.health, 50),
         1000 * bc.pct(burst.health, 99), 1000 * (burst.health[-1] if burst.health else 0)],
    ]))
    others = {k: v for k, v in burst.codes.items() if k not in ("OK", "RESOURCE_EXHAUSTED")}
    if others or burst.bad_refusals:
        print(f"ERROR: {others} other outcomes (e.g. {burst.other_sample}); {burst.bad_refusals} refusals without "
              "ErrorInfo + RetryInfo", file=sys.stderr)
    line, _ = bc.target_line("overload refused p99", 1000 * bc.pct(burst.shed, 99), "<=", SHED_P99_TARGET_MS, " ms",
                             note=f"{args.burst} at once, {len(burst.shed)} refused")
    print(line)
    if failed:
        print("ERROR: some calls failed; the numbers above are not valid", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds measured per workload (default %(default)s)")
    ap.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per workload (default %(default)s)")
    ap.add_argument("--concurrency", type=int, default=64, help="calls in flight (default %(default)s)")
    ap.add_argument("--channels", default="1",
                    help="comma-separated channel counts to run everything on, e.g. 1,2 (default %(default)s; "
                         "with the server pinned it is the limit and a 2nd channel changes nothing)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="repeat the whole sequence, interleaving the workloads (default %(default)s)")
    ap.add_argument("--jobs", type=int, default=1000, help="jobs created first for GetJob (default %(default)s)")
    ap.add_argument("--burst", type=int, default=BURST,
                    help="concurrent calls in the overload burst (default %(default)s)")
    ap.add_argument("--port", type=int, default=0, help="server port (default: any free one)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary database and server log")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run (~20 s): 1 round of 2.5 s per workload, 0.5 s warm-up, 1 channel")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                    help="pin the server process to CPU 0 and this load generator to CPU 1, so the server has "
                         "one core to itself and the numbers are server-bound and repeatable (default: on; "
                         "--no-pin lets both float over all cores)")
    ap.add_argument("--secure", action="store_true",
                    help="TLS (a throw-away CA) and --auth keys on every server, and every call over TLS with an "
                         "API key, the empty-RPC baseline included; targets GetJob >= 0.6, CreateJob >= 0.4")
    bc.add_quiet_arg(ap)
    bc.add_profile_args(ap)
    args = ap.parse_args()
    if args.quick:
        args.duration, args.warmup, args.channels, args.jobs, args.rounds = 2.5, 0.5, "1", 200, 1
    if args.concurrency < 1 or args.duration <= 0:
        ap.error("--concurrency and --duration must be positive")
    try:
        return asyncio.run(bench(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
