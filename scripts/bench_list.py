#!/usr/bin/env python3
"""Benchmark: ListJobs, first and 100th page, over 1,000,000 jobs with a
state+type filter. Target: p99 <= 20 ms (page 1 and page 100).

Population (once, then cached): the SQLite file is filled in-process through
the store's own write path, `Store(path).open()` + `store.write_sync(fn)`,
5,000 jobs per write. `fn` calls `store.jobs.new_job` (job row + CREATED
event, exactly as CreateJob does) and, for the jobs that are not PENDING,
moves them to their state the way the store's mutations do: change the Job
proto, `store.jobs.emit` (UPDATED event with the next revision) and
`store.jobs.save_job` (row update). So the file has the server's real schema,
indexes, serialized protos and change log. Jobs get one of 6 types and one of
6 states uniformly at random (a state+type filter matches ~1/36), a random
priority, and create times 1 s apart (ULID ids in the same order). The file
is cached under $TMPDIR/mediajobs-bench-list/, keyed by job count, seed and a
hash of the schema (store/models.py) and the Job protos, so re-runs skip
population; --rebuild forces it. A server started on it adds indexes that a
newer schema defines (create_schema), as it would on a real database.

Measurement: the server runs as a separate process on the cached file (with
--event-retention 365 days, the longest it accepts, so the retention sweep
deletes nothing and the cache stays as built). The server is pinned to one
CPU and this process to another (--no-pin to let them float). Calls are
sequential (one in flight). For each filter (state+type, state only;
`--filters ...,none` adds no filter, seconds per call at 1,000,000 jobs)
and order_by (default id, `priority desc`, `create_time desc`): walk pages
1..100 with page_size 100 by following next_page_token (each call timed),
keep the token that asks for page 100, then replay the page-1 request and
the page-100 request REPS times each, interleaved, within --budget seconds
per combination. Baseline in the same run: Health/Check latency on the same
server. When fewer than 100 pages exist (small --jobs) or the budget ran
out, the last page reached is used and the table says which page it was.
--explain prints SQLite's query plan of each query first. The server's log
goes to a temporary folder, removed at the end (--keep keeps it); the
populated database stays in the cache folder.

    python scripts/bench_list.py              # 1,000,000 jobs (first run also populates, ~3-4 min)
    python scripts/bench_list.py --quick      # 100,000 jobs, 20 reps
    python scripts/bench_list.py --jobs 300000 --reps 100 --explain
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402
from google.rpc import status_pb2  # noqa: E402
from grpc_health.v1 import health_pb2  # noqa: E402

import _bench_common as bc  # noqa: E402
from mediajobs.v1 import job_service_pb2 as svc  # noqa: E402
from mediajobs.v1 import job_service_pb2_grpc as svc_grpc  # noqa: E402
from mediajobs.v1 import resources_pb2 as res  # noqa: E402

Job = res.Job
TYPES = ["TRANSCODE", "EXTRACT_MEDIA", "THUMBNAIL", "IMPORT", "EXPORT", "CONCAT"]
STATES = [Job.PENDING, Job.RUNNING, Job.ABORTING, Job.SUCCEEDED, Job.FAILED, Job.ABORTED]
CREATORS = ["alice", "bob", "ingest-bot", "scheduler"]
BATCH = 5000
# Bump when populate() changes what it writes (part of the cache key).
POPULATION_VERSION = 2
# Leases of the populated RUNNING/ABORTING jobs: far in the future, so the
# server's lease-expiry sweeper leaves them alone (an expired lease would make
# it rewrite 500 jobs a second during the measurement, and change the cache).
LEASE_US = 10 * 365 * 86400 * 1_000_000
FILTERS = {
    "state+type": dict(states=[Job.SUCCEEDED], types=["TRANSCODE"]),
    "state": dict(states=[Job.SUCCEEDED]),
    "none": dict(),
}
ORDERS = ["", "priority desc", "create_time desc"]
TARGET_MS = 20.0
PAGE_SIZE = 100
# --event-retention of the measured server: the longest it accepts (365 days),
# far more than the population's span (create times 1 s apart, ending now:
# 11.6 days at 1,000,000 jobs), so the retention sweep deletes nothing.
RETENTION_S = 365 * 86400


# -- population -------------------------------------------------------------------


def store_fingerprint() -> str:
    """Hash of the schema (store/models.py) and of the Job messages: a change
    to either rebuilds the cache. (Other store code does not change what a
    populated file holds.)"""
    import mediajobs.server.store.models as models_mod

    h = hashlib.sha256(Path(models_mod.__file__).read_bytes())
    h.update(res.DESCRIPTOR.serialized_pb)
    h.update(str(POPULATION_VERSION).encode())
    return h.hexdigest()[:10]


def cache_path(n: int, seed: int, cache_dir: Path) -> Path:
    return cache_dir / f"jobs-{n}-seed{seed}-{store_fingerprint()}.db"


def populate(path: Path, n: int, seed: int) -> None:
    from mediajobs.server.store import Store
    from mediajobs.server.store import jobs as sj

    rng = random.Random(seed)
    tmp = path.with_name(path.name + ".building")
    for suffix in ("", "-wal", "-shm"):
        Path(str(tmp) + suffix).unlink(missing_ok=True)
    store = Store(str(tmp)).open()
    step_us = 1_000_000  # create times 1 s apart, ending now
    t0_us = time.time_ns() // 1000 - n * step_us
    made = 0
    started = time.perf_counter()

    def batch(tx, first: int, count: int) -> None:  # type: ignore[no-untyped-def]
        for i in range(first, first + count):
            created = t0_us + i * step_us
            tx.now = created
            params = struct_pb2.Struct()
            params.update({"input": f"s3://bench/assets/{i}.mov", "preset": "h264-1080p"})
            req = svc.CreateJobRequest(
                type=rng.choice(TYPES), priority=rng.randint(1, 5), creator=rng.choice(CREATORS), params=params,
            )
            job = sj.new_job(tx, req)
            state = rng.choice(STATES)
            if state == Job.PENDING:
                continue
            lease = None
            started_us = created + rng.randint(1, 60) * 1_000_000
            tx.now = started_us
            if state in (Job.RUNNING, Job.ABORTING, Job.SUCCEEDED, Job.FAILED):
                job.start_time.FromMicroseconds(started_us)
                job.attempt_count = 1
            if state in (Job.RUNNING, Job.ABORTING):
                # A live lease (see LEASE_US), in the columns and, where the
                # Job has one, in its `lease` field.
                lease = sj.LeaseColumns(f"tok-{i}", "bench-worker", started_us + LEASE_US)
                if "lease" in Job.DESCRIPTOR.fields_by_name:
                    job.lease.identity = "bench-worker"
                    job.lease.expire_time.FromMicroseconds(started_us + LEASE_US)
                    job.lease.last_heartbeat_time.FromMicroseconds(started_us)
            if state == Job.RUNNING:
                job.progress = rng.randint(0, 99)
            elif state == Job.ABORTING:
                job.abort_reason = "bench"
            elif state == Job.SUCCEEDED:
                tx.now = started_us + rng.randint(1, 600) * 1_000_000
                job.end_time.FromMicroseconds(tx.now)
                job.progress = 100
                job.result.update({"output": f"s3://bench/out/{i}.mp4"})
            elif state == Job.FAILED:
                tx.now = started_us + rng.randint(1, 600) * 1_000_000
                job.end_time.FromMicroseconds(tx.now)
                job.error.CopyFrom(status_pb2.Status(code=13, message="encoder crashed"))
            elif state == Job.ABORTED:
                job.end_time.FromMicroseconds(started_us)
                job.abort_reason = "bench"
            prev = job.state
            job.state = state
            sj.emit(tx, job, res.JobEvent.UPDATED, prev)
            sj.save_job(tx, job, lease)

    try:
        while made < n:
            count = min(BATCH, n - made)
            store.write_sync(lambda tx, f=made, c=count: batch(tx, f, c))
            made += count
            if made % 100_000 == 0 or made == n:
                el = time.perf_counter() - started
                print(f"  populated {made:,}/{n:,} jobs in {el:.0f} s ({1e6 * el / made:.0f} us/job)", flush=True)
    finally:
        store.close()
    # The last connection closed: SQLite checkpointed and removed the WAL.
    for suffix in ("-wal", "-shm"):
        if Path(str(tmp) + suffix).exists():
            raise RuntimeError(f"{tmp}{suffix} still exists after closing the store")
    tmp.rename(path)


# -- measurement ----------------------------------------------------------------------


async def timed(coro_fn, *a, **kw):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    r = await coro_fn(*a, **kw)
    return time.perf_counter() - t0, r


async def measure(args: argparse.Namespace, db: Path, server_cpus: set[int] | None, tmp: Path) -> int:
    server = bc.ServerProc(db, port=args.port, log_path=tmp / "server.log", cpus=server_cpus,
                           extra_args=["--event-retention", str(RETENTION_S), "--data-dir", str(tmp)]).start()
    print(f"server pid {server.pid} on {server.addr}, db {db} ({db.stat().st_size / 2**20:,.0f} MiB); "
          f"calls sequential, {args.reps} reps of page 1 and page {args.page}; {bc.machine_note()}; "
          + (f"server pinned to CPU {sorted(server_cpus)}" if server_cpus else "not pinned"))
    exe, pdir = bc.profile_setup(args)
    rows = []
    targets = []
    other = bc.OtherLoad().start()  # this process and its children (server, py-spy) are ours
    try:
        async with grpc.aio.insecure_channel(server.addr, options=bc.CHANNEL_OPTIONS) as ch:
            await asyncio.wait_for(ch.channel_ready(), 10)
            stub = svc_grpc.JobServiceStub(ch)
            health = ch.unary_unary(bc.HEALTH_CHECK)
            hreq = health_pb2.HealthCheckRequest().SerializeToString()
            rev0 = (await stub.ListJobs(svc.ListJobsRequest(page_size=1, states=[Job.SUCCEEDED]))).revision
            for _ in range(50):
                await health(hreq)
            hl = sorted([(await timed(health, hreq))[0] for _ in range(args.reps * 4)])
            base_p99 = 1000 * bc.pct(hl, 99)
            rows.append(["empty (Health/Check)", "", "", "", "", len(hl), 1000 * bc.pct(hl, 50), base_p99,
                         1000 * hl[-1], "", ""])
            for fname in args.filters.split(","):
                filt = FILTERS[fname]
                for order in ORDERS:
                    oname = order or "id (default)"
                    base = svc.ListJobsRequest(page_size=PAGE_SIZE, order_by=order, **filt)
                    prof = None
                    if exe and pdir:
                        prof = bc.PySpy(exe, server.pid, pdir / f"{fname}-{order or 'id'}.txt".replace(" ", "_"),
                                        duration=3600)
                    # Walk to the page: each call timed; remember the token of the last page reached.
                    walk_lat = []
                    req, page_tok, page_no, total = base, "", 1, 0
                    budget_end = time.perf_counter() + args.budget
                    for page in range(1, args.page + 1):
                        if page > 1 and time.perf_counter() > budget_end - args.budget / 2:
                            break  # out of time: measure the page reached
                        dt, resp = await timed(stub.ListJobs, req, timeout=120)
                        walk_lat.append(dt)
                        total = resp.total_size
                        page_no, page_tok = page, req.page_token
                        if not resp.next_page_token:
                            break
                        req = svc.ListJobsRequest()
                        req.CopyFrom(base)
                        req.page_token = resp.next_page_token
                    last_req = svc.ListJobsRequest()
                    last_req.CopyFrom(base)
                    last_req.page_token = page_tok
                    p1, pn = [], []
                    for k in range(args.reps):
                        if k >= 5 and time.perf_counter() > budget_end:
                            break
                        p1.append((await timed(stub.ListJobs, base, timeout=120))[0])
                        pn.append((await timed(stub.ListJobs, last_req, timeout=120))[0])
                    p1.sort()
                    pn.sort()
                    walk_lat.sort()
                    if prof is not None:
                        prof.proc.send_signal(bc.signal.SIGINT)  # py-spy writes its output on SIGINT
                        if prof.wait():
                            print(f"\nserver profile, ListJobs {fname}, order_by {oname}:\n{prof.summary()}")
                    for label, lat, pg in (("page 1", p1, 1), (f"page {page_no}", pn, page_no)):
                        rows.append([f"ListJobs {fname}", oname, label, total, f"1-{page_no}", len(lat),
                                     1000 * bc.pct(lat, 50), 1000 * bc.pct(lat, 99), 1000 * lat[-1],
                                     1000 * bc.pct(walk_lat, 99) if pg == 1 else "", bc.pct(lat, 99) * 1000 / base_p99])
                        if fname == "state+type":
                            targets.append(bc.target_line(
                                f"ListJobs/{fname}/order_by={order.replace(' ', '_') or 'id'}/page{pg}/p99",
                                1000 * bc.pct(lat, 99), "<=", TARGET_MS, unit=" ms",
                                note=f"{args.jobs:,} jobs, {total:,} match"
                                + ("" if pg == 1 or page_no == args.page else f"; page {page_no} was the last reached"),
                            )[0])
                    print(f"  {fname:10s} {oname:16s} matches {total:>9,}  page 1 p99 {1000 * bc.pct(p1, 99):7.1f} ms"
                          f"  page {page_no} p99 {1000 * bc.pct(pn, 99):7.1f} ms  walk p99 "
                          f"{1000 * bc.pct(walk_lat, 99):7.1f} ms", flush=True)
            rev1 = (await stub.ListJobs(svc.ListJobsRequest(page_size=1, states=[Job.SUCCEEDED]))).revision
            if rev1 != rev0:
                print(f"WARNING: the server committed {rev1 - rev0:,} changes to the database during the "
                      "measurement (background work such as lease recovery); the numbers include that work")
    finally:
        other_cores = other.stop()
        server.stop()
    print()
    print(bc.table(["call", "order_by", "page", "matches", "walk", "n", "p50 ms", "p99 ms", "max ms",
                    "walk p99 ms", "p99/empty"], rows, left=(0, 1)))
    print("walk = pages 1..N fetched once in sequence (walk p99 over those calls); page rows are replays of that "
          "page's request; p99/empty = p99 / Health/Check p99.")
    print(bc.other_load_note(other_cores))
    print()
    for t in targets:
        print(t)
    return 0


def explain(db: Path, page: int, filters: list[str]) -> None:
    """Print SQLite's query plan for each ListJobs query (page 1 and page N)."""
    from mediajobs.server.store import jobs as sj
    from mediajobs.server.store.db import open_database

    d = open_database(str(db))
    d.connect()
    conn = d.connection()
    seen: list[str] = []
    conn.set_trace_callback(lambda s: seen.append(s))
    for fname in filters:
        filt = FILTERS[fname]
        for order in ORDERS:
            base = svc.ListJobsRequest(page_size=PAGE_SIZE, order_by=order, **filt)
            req = base
            for pg in range(1, page + 1):
                seen.clear()
                t0 = time.perf_counter()
                resp = sj.list_jobs(d, "default", req)
                dt = time.perf_counter() - t0
                if pg in (1, page) or not resp.next_page_token:
                    print(f"\n-- {fname}, order_by {order or 'id'}, page {pg}: {1000 * dt:.1f} ms in-process")
                    for stmt in seen:
                        if stmt.lstrip().upper().startswith("SELECT") and "FROM \"jobs\"" in stmt:
                            print("   ", stmt[:300])
                            for r in conn.execute("EXPLAIN QUERY PLAN " + stmt).fetchall():
                                print("      plan:", r[-1])
                if not resp.next_page_token:
                    break
                req = svc.ListJobsRequest()
                req.CopyFrom(base)
                req.page_token = resp.next_page_token
    conn.set_trace_callback(None)
    d.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1_000_000, help="jobs in the database (default %(default)s)")
    ap.add_argument("--reps", type=int, default=50, help="replays of page 1 and of page N (default %(default)s)")
    ap.add_argument("--page", type=int, default=100, help="the far page to measure (default %(default)s)")
    ap.add_argument("--filters", default="state+type,state",
                    help=f"comma-separated filters among {', '.join(FILTERS)} (default %(default)s; `none` "
                         "is slow at 1,000,000 jobs, seconds per call)")
    ap.add_argument("--budget", type=float, default=60.0,
                    help="seconds per filter and order_by: half for the walk (it stops at the page reached), "
                         "the rest for the replays (at least 5) (default %(default)s)")
    ap.add_argument("--seed", type=int, default=1, help="random seed of the population (default %(default)s)")
    ap.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "mediajobs-bench-list"),
                    help="where populated databases are kept (default %(default)s)")
    ap.add_argument("--rebuild", action="store_true", help="populate again even if a cached file exists")
    ap.add_argument("--explain", action="store_true",
                    help="also print SQLite's query plans of the ListJobs queries (run in-process)")
    ap.add_argument("--port", type=int, default=0, help="server port (default: any free one)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder with the server log")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                    help="pin the server to one CPU and this process to another (default: on)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 100,000 jobs, 20 reps, 10 s budget")
    bc.add_quiet_arg(ap)
    bc.add_profile_args(ap)
    args = ap.parse_args()
    if args.quick:
        args.jobs, args.reps, args.budget = 100_000, 20, 10.0
    for f in args.filters.split(","):
        if f not in FILTERS:
            ap.error(f"unknown filter {f!r}; use {', '.join(FILTERS)}")
    if args.jobs < 1 or args.reps < 1 or args.page < 1:
        ap.error("--jobs, --reps and --page must be positive")
    cache_dir = Path(args.cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    db = cache_path(args.jobs, args.seed, cache_dir)
    if args.rebuild or not db.exists():
        for old in cache_dir.glob(f"jobs-{args.jobs}-seed{args.seed}-*.db*"):
            old.unlink(missing_ok=True)
        print(f"populating {db} with {args.jobs:,} jobs through Store.write_sync + store.jobs.new_job/emit/save_job, "
              f"{BATCH:,} per write ...", flush=True)
        t0 = time.perf_counter()
        try:
            populate(db, args.jobs, args.seed)
        except BaseException:  # failed or interrupted: leave no half-built file in the cache
            for suffix in ("", "-wal", "-shm"):
                Path(str(db) + ".building" + suffix).unlink(missing_ok=True)
            raise
        print(f"populated in {time.perf_counter() - t0:.0f} s", flush=True)
    else:
        print(f"using cached {db} (--rebuild to populate again)")
    if args.explain:
        explain(db, args.page, args.filters.split(","))
        print()
    if args.wait_quiet > 0:
        bc.wait_for_quiet(args.wait_quiet)
    server_cpus = None
    if args.pin and len(os.sched_getaffinity(0)) >= 2:
        allowed = sorted(os.sched_getaffinity(0))
        server_cpus = {allowed[0]}
        os.sched_setaffinity(0, {allowed[1]})
    tmp = Path(tempfile.mkdtemp(prefix="mediajobs-bench-list-"))
    rc = 1
    try:
        rc = asyncio.run(measure(args, db, server_cpus, tmp))
    except KeyboardInterrupt:
        rc = 130
        print("interrupted", file=sys.stderr)
    finally:
        bc.cleanup_tmp(tmp, keep=args.keep, failed=rc not in (0, 130), what="server.log")
    print(f"(the populated database stays cached in {db.parent} for the next run: {db.name}, "
          f"{db.stat().st_size / 2**20:,.0f} MiB; delete the folder to free it)")
    return rc


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
