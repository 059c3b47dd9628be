#!/usr/bin/env python3
"""What refused requests leave behind in the server.

Starts mediajobs-server as its own process on a fresh SQLite file, warms it
up with ordinary calls, then sends large requests that the server must refuse
(5 MiB each: params, a job type, a completion result, heartbeat details, one
after the other and then concurrently) and reports how much the server's
resident memory grew, against the target.

    scripts/bench_memory.py            # 30 refused requests of 5 MiB, then 30 at once
    scripts/bench_memory.py --quick    # 10 of each
    scripts/bench_memory.py --size-mib 8 --count 60

Baseline: the server's RSS after the warm-up, measured in the same run. The
target: at most 64 MiB of growth after 30 refused 5 MiB requests, read 3 s
after each phase (the server trims its heap every 2 s after a burst); the
growth right after a phase is shown too.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402

from _bench_common import CHANNEL_OPTIONS, OtherLoad, ServerProc, machine_note, other_load_note, table, target_line  # noqa: E402
from mediajobs.v1 import job_service_pb2 as svc  # noqa: E402
from mediajobs.v1 import job_service_pb2_grpc  # noqa: E402
from mediajobs.v1 import worker_service_pb2 as wsvc  # noqa: E402
from mediajobs.v1 import worker_service_pb2_grpc  # noqa: E402

MIB = 1024 * 1024
TARGET_MIB = 64
# How long to let the server settle after a phase before reading its RSS.
SETTLE_S = 3.0


def big_struct(size: int) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update({"blob": "x" * size})
    return s


async def run(addr: str, size: int, count: int, concurrent: bool) -> dict[str, int]:
    """Send `count` refused requests; returns status codes seen."""
    opts = CHANNEL_OPTIONS + [("grpc.max_send_message_length", 64 * MIB)]
    codes: dict[str, int] = {}
    async with grpc.aio.insecure_channel(addr, options=opts) as ch:
        jobs = job_service_pb2_grpc.JobServiceStub(ch)
        workers = worker_service_pb2_grpc.WorkerServiceStub(ch)
        blob = big_struct(size)
        makers = [
            lambda: jobs.CreateJob(svc.CreateJobRequest(type="T", params=blob)),
            lambda: jobs.CreateJob(svc.CreateJobRequest(type="x" * size)),
            lambda: workers.CompleteJob(wsvc.CompleteJobRequest(job_id="01HA255YE6H6DEETJ5M6595ZDA",
                                                                lease_token="0" * 32, result=blob)),
            lambda: workers.Heartbeat(wsvc.HeartbeatRequest(job_id="01HA255YE6H6DEETJ5M6595ZDA",
                                                            lease_token="0" * 32, details=blob)),
        ]

        async def one(i: int) -> None:
            try:
                await makers[i % len(makers)]()
                code = "OK"
            except grpc.aio.AioRpcError as e:
                code = e.code().name
            codes[code] = codes.get(code, 0) + 1

        if concurrent:
            await asyncio.gather(*(one(i) for i in range(count)))
        else:
            for i in range(count):
                await one(i)
    return codes


async def warm_up(addr: str) -> None:
    async with grpc.aio.insecure_channel(addr, options=CHANNEL_OPTIONS) as ch:
        jobs = job_service_pb2_grpc.JobServiceStub(ch)
        for i in range(300):
            j = await jobs.CreateJob(svc.CreateJobRequest(type="T", params=big_struct(1000)))
            await jobs.GetJob(svc.GetJobRequest(id=j.id))
            with contextlib.suppress(grpc.aio.AioRpcError):
                await jobs.CreateJob(svc.CreateJobRequest(type="bad type"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 requests per phase instead of 30")
    ap.add_argument("--count", type=int, default=30, help="refused requests per phase (default 30)")
    ap.add_argument("--size-mib", type=float, default=5.0, help="size of each refused request (default 5)")
    args = ap.parse_args()
    count = 10 if args.quick else args.count
    size = int(args.size_mib * MIB)
    tmp = Path(tempfile.mkdtemp(prefix="mediajobs-bench-memory-"))
    server = ServerProc(tmp / "mediajobs.db", log_path=tmp / "server.log",
                        extra_args=["--data-dir", str(tmp), "--storage-root", str(tmp / "storage")])
    ok = True
    try:
        server.start()
        import os
        load = OtherLoad([server.pid, os.getpid()]).start()
        asyncio.run(warm_up(server.addr))
        base = server.rss_bytes()
        rows = []
        for phase, concurrent in (("one after the other", False), ("all at once", True)):
            codes = asyncio.run(run(server.addr, size, count, concurrent))
            at_once = server.rss_bytes()
            time.sleep(SETTLE_S)  # the server gives free heap pages back every 2 s after a burst
            rss = server.rss_bytes()
            rows.append([f"{count} × {args.size_mib:g} MiB, {phase}", ", ".join(f"{k} {v}" for k, v in codes.items()),
                         f"{(at_once - base) / MIB:.1f}", f"{(rss - base) / MIB:.1f}"])
            if codes.get("OK"):
                print(f"error: {codes['OK']} of the oversize requests were accepted", file=sys.stderr)
                ok = False
        print(machine_note())
        print(f"server RSS after warm-up (baseline): {base / MIB:.1f} MiB")
        print(table(["refused requests", "status codes", "RSS growth at once (MiB)",
                     f"{SETTLE_S:g} s later (MiB)"], rows))
        growth = (server.rss_bytes() - base) / MIB
        line, met = target_line("RSS growth after every phase", growth, "<=", TARGET_MIB, " MiB")
        print(line)
        ok = ok and met
        print(other_load_note(load.stop()))
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
