#!/usr/bin/env python3
"""End-to-end worker throughput and crash recovery, against peers in the same run.

Throughput: N no-op jobs (default 20,000) with 2 worker processes, from the
first enqueue to the last completion, for
  - mediajobs: the server (separate process, fresh SQLite file), jobs enqueued
    with BatchCreateJobs, 2 processes running the Python worker SDK
    (mediajobs.client.worker.Worker) with an async no-op handler;
  - huey: SqliteHuey on a fresh file, `huey_consumer -k process -w 2`;
  - Celery: the local Redis (127.0.0.1:6379, db 15) as broker,
    `celery worker -c 2 -P prefork`.
Completion is counted by polling each system's own store every 20 ms.
Every mediajobs job stays durable (group-committed before each reply),
fenced (lease tokens) and watchable (an event per change).

Recovery: a worker process leases K jobs with a 5 s lease and is killed with
SIGKILL; another worker long-polls AcquireJobs; the time from the kill to each
job's re-acquisition is recorded (median, p99). Target: <= 2 x lease.

    scripts/bench_workers.py                 # 20,000 jobs, all three systems, recovery x3
    scripts/bench_workers.py --quick         # 4,000 jobs, recovery x1
    scripts/bench_workers.py --only mediajobs --jobs 5000

Needs the `bench` extra (`.venv/bin/pip install -e '.[bench]'`) for huey and
Celery; a missing peer is reported and skipped. Traffic goes to 127.0.0.1 only.

Everything it creates (databases, logs, the peers' modules) lives in one
temporary folder, removed at the end, also after a failure or Ctrl-C
(--keep keeps it); Celery's Redis database 15 is flushed. It reports how
many cores other processes on the machine used during each measurement and
warns when that makes the numbers unreliable. Exit code 1 when the mediajobs
run or the recovery fails (a missing or failing peer is only reported).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
from _bench_common import (  # noqa: E402
    OTHER_LOAD_WARN,
    OtherLoad,
    ServerProc,
    add_durability_arg,
    add_quiet_arg,
    cleanup_tmp,
    machine_note,
    other_load_note,
    pct,
    table,
    target_line,
    wait_for_quiet,
)
from google.protobuf import duration_pb2  # noqa: E402

from mediajobs.v1 import job_service_pb2 as svc  # noqa: E402
from mediajobs.v1 import job_service_pb2_grpc  # noqa: E402
from mediajobs.v1 import resources_pb2 as res  # noqa: E402
from mediajobs.v1 import worker_service_pb2 as wsvc  # noqa: E402
from mediajobs.v1 import worker_service_pb2_grpc  # noqa: E402

POLL = 0.02

SDK_WORKER = textwrap.dedent(
    """
    import sys
    from mediajobs.client.worker import Worker
    w = Worker(sys.argv[1], concurrency=int(sys.argv[2]), lease_duration=float(sys.argv[3]))

    async def noop(ctx):
        return None

    async def hold(ctx):
        import asyncio
        print("holding", ctx.job.id, flush=True)
        await asyncio.Event().wait()

    w.register(sys.argv[4], hold if sys.argv[4] == "HOLD" else noop)
    w.run_sync()
    """
)

HUEY_MODULE = textwrap.dedent(
    """
    import os
    from huey import SqliteHuey
    huey = SqliteHuey(filename=os.environ["MJ_BENCH_HUEY_DB"])

    @huey.task()
    def noop():
        return 1
    """
)

CELERY_MODULE = textwrap.dedent(
    """
    import redis
    from celery import Celery
    app = Celery("mjbench_celery", broker="redis://127.0.0.1:6379/15")
    app.conf.task_ignore_result = True
    app.conf.worker_hijack_root_logger = False
    _r = redis.Redis(host="127.0.0.1", port=6379, db=15)

    @app.task
    def noop():
        _r.incr("mjbench:done")
    """
)


def wait_count(count, n: int, timeout: float) -> float:
    """Poll count() until it reaches n; return the time it did (perf_counter)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if count() >= n:
            return time.perf_counter()
        time.sleep(POLL)
    raise TimeoutError(f"only {count()} of {n} done after {timeout:.0f} s")


def redis_pids() -> list[int]:
    """The local Redis server's pid (Celery's broker), if it can be asked."""
    try:
        import redis

        return [int(redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2).info("server")["process_id"])]
    except Exception:  # noqa: BLE001 - no Redis or no client: Celery's run will say so
        return []


# -- mediajobs --------------------------------------------------------------------


def run_mediajobs(n: int, procs: int, concurrency: int, tmp: Path, timeout: float, durability: str) -> dict:
    server = ServerProc(tmp / "mj.db", extra_args=["--durability", durability])
    workers: list[subprocess.Popen[bytes]] = []
    try:
        server.start()
        ch = grpc.insecure_channel(server.addr)
        jobs = job_service_pb2_grpc.JobServiceStub(ch)
        for _ in range(procs):
            with open(tmp / "mj-worker.log", "ab") as log:  # the child keeps its own copy
                workers.append(subprocess.Popen(
                    [sys.executable, "-c", SDK_WORKER, server.addr, str(concurrency), "60", "NOOP"],
                    stdout=subprocess.DEVNULL, stderr=log))
        # Wait until both workers are parked in AcquireJobs (one warm-up job each way).
        warm = jobs.BatchCreateJobs(svc.BatchCreateJobsRequest(requests=[svc.CreateJobRequest(type="NOOP")] * procs))
        done_count = lambda: jobs.ListJobs(svc.ListJobsRequest(states=[res.Job.SUCCEEDED], page_size=1)).total_size  # noqa: E731
        wait_count(done_count, len(warm.jobs), 60)
        cpu0 = server.cpu_seconds()
        t0 = time.perf_counter()
        batch = [svc.CreateJobRequest(type="NOOP")] * 1000
        sent = 0
        while sent < n:
            k = min(1000, n - sent)
            jobs.BatchCreateJobs(svc.BatchCreateJobsRequest(requests=batch[:k]))
            sent += k
        t_enq = time.perf_counter()
        t1 = wait_count(done_count, n + len(warm.jobs), timeout)
        cpu = server.cpu_seconds() - cpu0
        return {"seconds": t1 - t0, "enqueue_s": t_enq - t0, "server_cpu_s": cpu}
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(20)
            except subprocess.TimeoutExpired:
                w.kill()
        server.stop()


# -- huey ---------------------------------------------------------------------------


def run_huey(n: int, procs: int, tmp: Path, timeout: float) -> dict:
    mod_dir = tmp / "hueymod"
    mod_dir.mkdir(exist_ok=True)
    (mod_dir / "mjbench_huey.py").write_text(HUEY_MODULE)
    env = dict(os.environ, MJ_BENCH_HUEY_DB=str(tmp / "huey.db"), PYTHONPATH=str(mod_dir))
    sys.path.insert(0, str(mod_dir))
    os.environ["MJ_BENCH_HUEY_DB"] = env["MJ_BENCH_HUEY_DB"]
    import mjbench_huey  # type: ignore[import-not-found]

    with open(tmp / "huey.log", "ab") as log:  # the child keeps its own copy
        consumer = subprocess.Popen(
            [str(Path(sys.executable).parent / "huey_consumer"), "mjbench_huey.huey", "-k", "process", "-w", str(procs),
             "-d", "0.01", "-m", "0.1", "-b", "1.0", "-q"],
            cwd=mod_dir, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        huey = mjbench_huey.huey
        count = lambda: huey.storage.result_store_size()  # noqa: E731
        mjbench_huey.noop()
        wait_count(count, 1, 60)
        t0 = time.perf_counter()
        for _ in range(n):
            mjbench_huey.noop()
        t_enq = time.perf_counter()
        t1 = wait_count(count, n + 1, timeout)
        return {"seconds": t1 - t0, "enqueue_s": t_enq - t0}
    finally:
        consumer.send_signal(signal.SIGINT)
        try:
            consumer.wait(10)
        except subprocess.TimeoutExpired:
            consumer.kill()


# -- Celery ---------------------------------------------------------------------------


def run_celery(n: int, procs: int, tmp: Path, timeout: float) -> dict:
    import redis

    mod_dir = tmp / "celerymod"
    mod_dir.mkdir(exist_ok=True)
    (mod_dir / "mjbench_celery.py").write_text(CELERY_MODULE)
    sys.path.insert(0, str(mod_dir))
    r = redis.Redis(host="127.0.0.1", port=6379, db=15)
    r.flushdb()
    import mjbench_celery  # type: ignore[import-not-found]

    env = dict(os.environ, PYTHONPATH=str(mod_dir))
    with open(tmp / "celery.log", "ab") as log:  # the child keeps its own copy
        worker = subprocess.Popen(
            [str(Path(sys.executable).parent / "celery"), "-A", "mjbench_celery", "worker", "-c", str(procs),
             "-P", "prefork", "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING"],
            cwd=mod_dir, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        count = lambda: int(r.get("mjbench:done") or 0)  # noqa: E731
        mjbench_celery.noop.delay()
        wait_count(count, 1, 60)
        t0 = time.perf_counter()
        for _ in range(n):
            mjbench_celery.noop.delay()
        t_enq = time.perf_counter()
        t1 = wait_count(count, n + 1, timeout)
        return {"seconds": t1 - t0, "enqueue_s": t_enq - t0}
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            worker.kill()
        r.flushdb()


# -- recovery after kill -9 -----------------------------------------------------------


async def recovery_trial(addr: str, k: int, lease_s: float, tmp: Path) -> list[float]:
    async with grpc.aio.insecure_channel(addr) as ch:
        jobs = job_service_pb2_grpc.JobServiceStub(ch)
        workers = worker_service_pb2_grpc.WorkerServiceStub(ch)
        made = (await jobs.BatchCreateJobs(svc.BatchCreateJobsRequest(requests=[svc.CreateJobRequest(type="HOLD")] * k))).jobs
        with open(tmp / "hold-worker.log", "ab") as log:  # the child keeps its own copy
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", SDK_WORKER, addr, str(k), str(lease_s), "HOLD",
                stdout=subprocess.PIPE, stderr=log)
        assert proc.stdout is not None
        try:
            held = set()
            while len(held) < k:
                line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().split()
                if not line and proc.stdout.at_eof():
                    raise RuntimeError(f"the holding worker exited; see {tmp / 'hold-worker.log'}")
                if line and line[0] == "holding":
                    held.add(line[1])
            assert held == {j.id for j in made}
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        t_kill = time.perf_counter()
        times = []
        d = duration_pb2.Duration(seconds=60)
        while len(times) < k and time.perf_counter() - t_kill < 10 * lease_s:
            got = await workers.AcquireJobs(wsvc.AcquireJobsRequest(job_types=["HOLD"], max_jobs=k, lease_duration=d,
                                                                    wait_timeout=duration_pb2.Duration(seconds=5)))
            now = time.perf_counter()
            for lj in got.jobs:
                times.append(now - t_kill)
                await workers.CompleteJob(wsvc.CompleteJobRequest(job_id=lj.job.id, lease_token=lj.lease_token))
        return times


def run_recovery(trials: int, k: int, lease_s: float, tmp: Path, durability: str) -> list[float]:
    server = ServerProc(tmp / "recovery.db", extra_args=["--durability", durability])
    try:
        server.start()
        out: list[float] = []
        for _ in range(trials):
            out += asyncio.run(recovery_trial(server.addr, k, lease_s, tmp))
        return out
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20_000, help="no-op jobs per system (default %(default)s)")
    ap.add_argument("--procs", type=int, default=2, help="worker processes per system (default %(default)s)")
    ap.add_argument("--concurrency", type=int, default=256,
                    help="jobs in flight per mediajobs worker process (default %(default)s)")
    ap.add_argument("--only", default="mediajobs,huey,celery", help="comma-separated systems to run")
    ap.add_argument("--recovery-trials", type=int, default=3, help="kill -9 trials (0 skips; default %(default)s)")
    ap.add_argument("--recovery-jobs", type=int, default=20, help="jobs the killed worker holds (default %(default)s)")
    ap.add_argument("--lease", type=float, default=5.0, help="lease of the killed worker, seconds (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=300.0, help="give up on a system after this long")
    ap.add_argument("--quick", action="store_true", help="4,000 jobs and one recovery trial")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (databases, logs)")
    add_durability_arg(ap)
    add_quiet_arg(ap)
    args = ap.parse_args()
    if args.quick:
        args.jobs, args.recovery_trials = 4000, 1
    if args.wait_quiet > 0:
        wait_for_quiet(args.wait_quiet)
    tmp = Path(tempfile.mkdtemp(prefix="mediajobs-bench-workers-"))
    rc = 1
    try:
        rc = run(args, tmp)
    except KeyboardInterrupt:
        rc = 130
        print("interrupted", file=sys.stderr)
    finally:
        cleanup_tmp(tmp, keep=args.keep, failed=rc not in (0, 130), what="databases and logs")
    return rc


def run(args: argparse.Namespace, tmp: Path) -> int:
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    failed = False
    print(machine_note())
    print(f"{args.jobs} no-op jobs, {args.procs} worker processes each; enqueue -> last completion\n")

    results: dict[str, dict] = {}
    runners = {
        "mediajobs": lambda: run_mediajobs(args.jobs, args.procs, args.concurrency, tmp, args.timeout, args.durability),
        "huey": lambda: run_huey(args.jobs, args.procs, tmp, args.timeout),
        "celery": lambda: run_celery(args.jobs, args.procs, tmp, args.timeout),
    }
    for name in ("mediajobs", "huey", "celery"):
        if name not in only:
            continue
        # This process and all its children (server, workers, consumers) are
        # ours, and Celery's broker; anything else busy meanwhile is other load.
        load = OtherLoad(also=redis_pids() if name == "celery" else ()).start()
        try:
            r = runners[name]()
        except ImportError as e:
            print(f"{name}: skipped ({e}; install the bench extra: .venv/bin/pip install -e '.[bench]')")
            continue
        except Exception as e:  # report and go on with the others
            print(f"{name}: FAILED: {type(e).__name__}: {e}")
            failed = failed or name == "mediajobs"
            continue
        r["other_cores"] = load.stop()
        r["jobs_per_s"] = args.jobs / r["seconds"]
        results[name] = r
        print(f"{name}: {r['jobs_per_s']:.0f} jobs/s ({r['seconds']:.2f} s; enqueue {r['enqueue_s']:.2f} s); "
              f"{other_load_note(r['other_cores'])}", flush=True)

    rows = [(n, f"{r['jobs_per_s']:.0f}", f"{r['seconds']:.2f}", f"{r['enqueue_s']:.2f}",
             f"{r['server_cpu_s'] * 1e6 / args.jobs:.0f}" if "server_cpu_s" in r else "-",
             f"{r['other_cores']:.2f}") for n, r in results.items()]
    print()
    print(table(["system", "jobs/s", "seconds", "enqueue s", "server CPU us/job", "other cores"], rows))
    worst = max((r["other_cores"] for r in results.values()), default=0.0)
    if worst > OTHER_LOAD_WARN:
        print(other_load_note(worst) + " (worst system; column 'other cores')")
    lines = []
    if "mediajobs" in results:
        mj = results["mediajobs"]["jobs_per_s"]
        if "huey" in results:
            lines.append(target_line("mediajobs/huey", mj / results["huey"]["jobs_per_s"], ">=", 1.0))
        if "celery" in results:
            lines.append(target_line("mediajobs/celery", mj / results["celery"]["jobs_per_s"], ">=", 1.5))

    if args.recovery_trials and "mediajobs" in only:
        load = OtherLoad().start()
        try:
            times = sorted(run_recovery(args.recovery_trials, args.recovery_jobs, args.lease, tmp, args.durability))
        except Exception as e:  # noqa: BLE001
            print(f"\nrecovery: FAILED: {type(e).__name__}: {e}")
            times, failed = [], True
        other = load.stop()
        expected = args.recovery_trials * args.recovery_jobs
        if times:
            print(f"\nrecovery after kill -9 ({args.recovery_trials} trials x {args.recovery_jobs} jobs, lease {args.lease:g} s, "
                  f"server lease sweep every 1 s, no backoff after a first expiry): "
                  f"median {statistics.median(times):.2f} s, p99 {pct(times, 99):.2f} s, max {times[-1]:.2f} s, "
                  f"{len(times)} of {expected} jobs recovered; {other_load_note(other)}")
            lines.append(target_line("recovery p99 / lease", pct(times, 99) / args.lease, "<=", 2.0))
        if len(times) < expected:
            print(f"recovery: FAILED: only {len(times)} of {expected} jobs were leased again")
            failed = True
    print()
    for line, _ok in lines:
        print(line)
    if failed:
        print("FAILED: see above", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
