#!/usr/bin/env python3
"""Benchmark: CSV bulk uploads (BulkUploadService). Four measurements, each
against a baseline measured in the same run.

The CSV file is generated: a header `name,description,reference_id,source`
and one record per line (about 104 bytes: a name, a one-line description, a
reference id, and the source `media/source.mp4`, a 16-byte file under the
server's storage root, the same for every record); no tags, so a record adds
exactly one entry with one EXTRACT_MEDIA job. Full mode uses one file of
1,000,000 lines (~99 MiB) for all phases; --quick uses smaller ones.
Every server runs as its own process (`python -m mediajobs.server`, not
pinned) on its own fresh SQLite file in a temporary folder, in the server's
default durability (strict) unless --durability says otherwise.

1. Upload, MiB/s: `MediaJobsClient.upload_bulk_file(path)` (client/client.py:
   a sha256 pass over the file, StartBulkUpload, then WriteBulkUploadFile in
   1 MiB messages with their crc32; it returns once the server has checked
   the complete file and made the upload QUEUED), on a server started with
   `--bulk-runners 0` so nothing applies it meanwhile.
   Baseline ("bare stream"): there is no echo/sink client-streaming method,
   so the floor is the same RPC, WriteBulkUploadFile, to a second fresh
   upload on the same server, with the messages (the same 1 MiB pieces, with
   their crc32) serialized before the clock starts, sent as bytes over a
   separate channel with the client's channel options, no sha256 and no
   finish_write: the time until the server acknowledged every byte stored.
   The upload_bulk_file time also holds the client's sha256 pass and the
   server's finish-time check of the file (sha256 + a CSV scan of every
   record); both are measured on their own (the finish by a finish-only
   stream to the bare upload) and reported beside the ratio.
   Target: upload_bulk_file MiB/s >= 0.5 x the bare stream's.
2. Validate-only, records/s: an upload with `validate_only` on a server with
   one bulk runner (the default), from QUEUED to VALIDATED, both times taken
   from the upload itself (upload_complete_time, end_time) as
   WatchBulkUpload delivers it. Baseline: the `sqlite3` command-line tool's
   `.import` (csv mode, WAL, synchronous as the durability) of the same file
   into a new table, rows/s, process start included; when `sqlite3` is not
   installed: Python's sqlite3 module, csv.reader + executemany in one
   transaction (the output says which ran).
   Target: >= 0.3 x the baseline.
3. Apply, lines/s: an upload whose every record adds an entry with the
   source above (so every record makes an entry, an EXTRACT_MEDIA job with
   its two metadata rows and CREATED event, a result row and an object row),
   from QUEUED to WAITING_FOR_OBJECTS (upload_complete_time to the
   update_time of the first WAITING_FOR_OBJECTS message; no worker runs, so
   nothing changes the upload afterwards). Baseline ("raw-SQL floor"), run in
   this process after the server stopped: the schema made by
   `mediajobs.server.store.Store(path).open()` on a new file, then Python's
   sqlite3 module with the server's pragmas (WAL, synchronous as the
   durability) inserting with prebuilt SQL and executemany, in transactions
   of 160 lines (the runner's batch), per line: one entries row, one jobs
   row, two job_metadata rows, one job_events row, one bulk_upload_lines row,
   one bulk_upload_objects row, with blobs serialized once from protobuf
   messages shaped as the server's (Entry with one flavor asset, Job,
   JobEvent, BulkUploadResult; their sizes are printed beside the average
   sizes the server stored). It leaves out what the server does per batch
   (lease heartbeat, the upload row, the revision counter).
   Targets: >= 8,000 lines/s and >= 0.4 x the floor. End to end (from the
   upload_bulk_file call to WAITING_FOR_OBJECTS) for 1,000,000 lines: target
   < 180 s on 2 cores (printed as a TARGET when the applied file has
   1,000,000 lines or more; --quick prints its own time scaled linearly to
   1,000,000 lines as a note, not a TARGET).
4. Server memory: VmRSS of the apply server (/proc/PID/status) sampled every
   0.1 s from the upload_bulk_file call to WAITING_FOR_OBJECTS (the peak
   is also shown split: during upload_bulk_file / during the apply), and its
   VmHWM at the end (reset at the baseline through /proc/PID/clear_refs),
   against its VmRSS after start-up and a warm-up upload of 3,000 lines
   applied the same way (then 2.5 s of rest). Target: peak growth (the
   larger of the two) <= 64 MiB.

Every phase reports the CPU cores the server and this process used and how
busy other processes kept the machine (a warning when > 0.2 cores: run
again). Exit code 0 even when a target is missed; non-zero only when the
benchmark itself fails (a server does not start, an RPC fails, an upload
does not end as expected, a record fails). The temporary folder (files,
databases, server logs) is removed at the end (--keep keeps it).

    python scripts/bench_bulk.py            # ~6 min on 2 cores: 1,000,000 lines everywhere, 2 upload rounds
    python scripts/bench_bulk.py --quick    # ~30-40 s: 200,000-line upload/validate, 20,000-line apply
    python scripts/bench_bulk.py --durability fast
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
from google.protobuf import text_format  # noqa: E402

import _bench_common as bc  # noqa: E402
from mediajobs.client.client import DEFAULT_CHANNEL_OPTIONS, MediaJobsClient  # noqa: E402
from mediajobs.client.errors import MediaJobsError  # noqa: E402
from mediajobs.v1 import bulk_resources_pb2 as bres  # noqa: E402
from mediajobs.v1 import bulk_upload_service_pb2 as bsvc  # noqa: E402
from mediajobs.v1 import media_resources_pb2 as mres  # noqa: E402
from mediajobs.v1 import resources_pb2 as res  # noqa: E402

BulkUpload = bres.BulkUpload
Result = bres.BulkUploadResult

MIB = 1024 * 1024
TARGET_UPLOAD_RATIO = 0.5
TARGET_VALIDATE_RATIO = 0.3
TARGET_APPLY_RATE = 8000.0
TARGET_APPLY_RATIO = 0.4
TARGET_E2E_S = 180.0
E2E_LINES = 1_000_000
TARGET_RSS_MIB = 64.0

CHUNK = 1024 * 1024  # what upload_bulk_file sends per message (BULK_CHUNK_BYTES)
FLOOR_TXN_LINES = 160  # the runner's APPLY_BATCH
SOURCE_REL = "media/source.mp4"
HEADER = "name,description,reference_id,source\n"
WRITE = "/mediajobs.v1.BulkUploadService/WriteBulkUploadFile"
TERMINAL = frozenset({BulkUpload.SUCCEEDED, BulkUpload.PARTIALLY_SUCCEEDED, BulkUpload.FAILED,
                      BulkUpload.ABORTED, BulkUpload.EXPIRED, BulkUpload.VALIDATED})
# Separate channels, separate TCP connections (see _bench_common.CHANNEL_OPTIONS).
CLIENT_OPTIONS = list(DEFAULT_CHANNEL_OPTIONS) + [("grpc.use_local_subchannel_pool", 1)]


class BenchError(Exception):
    """The benchmark itself failed (not a missed target)."""


def state_name(s: int) -> str:
    return BulkUpload.State.Name(s) if s in BulkUpload.State.values() else str(s)  # type: ignore[arg-type]


# -- the CSV file ---------------------------------------------------------------------


def line(i: int) -> str:
    return (f"Clip {i:07d},Benchmark entry {i:07d} of a bulk upload with a one-line description,"
            f"ref-{i:07d},{SOURCE_REL}\n")


def gen_csv(path: Path, n: int) -> int:
    """Write a header and n records; returns the file's size in bytes."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(HEADER)
        for start in range(1, n + 1, 10_000):
            f.write("".join(line(i) for i in range(start, min(start + 10_000, n + 1))))
    return path.stat().st_size


def sha_pass_seconds(path: Path) -> float:
    """What upload_bulk_file does before its first RPC: read the file and hash it."""
    t0 = time.perf_counter()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    h.hexdigest()
    return time.perf_counter() - t0


# -- helpers ---------------------------------------------------------------------------


def one_line(msg: Any) -> str:
    return text_format.MessageToString(msg, as_one_line=True)


def us(ts: Any) -> int:
    return int(ts.seconds) * 1_000_000 + int(ts.nanos) // 1000


def reset_hwm(pid: int) -> bool:
    """Reset a process's VmHWM to its current RSS (writing 5 to
    /proc/PID/clear_refs), so the peak covers only what follows."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def vm_hwm_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            if ln.startswith("VmHWM:"):
                return int(ln.split()[1]) * 1024
    return 0


class RssSampler:
    """VmRSS of a process every `interval` seconds in a thread; keeps the
    peak, overall and per segment (split() starts the next one)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.segments = [0]
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            try:
                rss = bc.proc_rss_bytes(self.pid)
                self.peak = max(self.peak, rss)
                self.segments[-1] = max(self.segments[-1], rss)
                self.samples += 1
            except (OSError, RuntimeError):
                return
            if self._stop.wait(self.interval):
                return

    def start(self) -> "RssSampler":
        self._thread.start()
        return self

    def split(self) -> None:
        try:
            rss = bc.proc_rss_bytes(self.pid)
        except (OSError, RuntimeError):
            rss = 0
        self.segments[-1] = max(self.segments[-1], rss)
        self.peak = max(self.peak, rss)
        self.segments.append(rss)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


def wait_for(client: MediaJobsClient, upload_id: str, want: set[Any], timeout: float,
             on_message: Any = None) -> tuple[BulkUpload, float]:
    """Follow WatchBulkUpload until the upload is in one of `want`; returns
    it and the perf_counter time it arrived. Any other terminal state, or no
    such state within `timeout` seconds, fails the benchmark."""
    call: Any = client.bulk_stub.WatchBulkUpload(bsvc.WatchBulkUploadRequest(id=upload_id), timeout=timeout)
    try:
        for u in call:
            if on_message is not None:
                on_message(u)
            if u.state in want:
                return u, time.perf_counter()
            if u.state in TERMINAL:
                raise BenchError(f"bulk upload {upload_id} ended {state_name(u.state)} (waiting for "
                                 f"{'/'.join(state_name(s) for s in want)}): {u.error.message} "
                                 f"counts {one_line(u.counts)}")
    except grpc.RpcError as e:
        raise BenchError(f"WatchBulkUpload {upload_id}: {e.code().name}: {e.details()}") from None
    finally:
        call.cancel()
    raise BenchError(f"WatchBulkUpload {upload_id} ended before the upload was "
                     f"{'/'.join(state_name(s) for s in want)}")


def upload_file(client: MediaJobsClient, path: Path, **kw: Any) -> tuple[BulkUpload, float]:
    """upload_bulk_file; returns the QUEUED upload and the seconds it took."""
    t0 = time.perf_counter()
    u = client.upload_bulk_file(str(path), **kw)
    dt = time.perf_counter() - t0
    if u.state != BulkUpload.QUEUED:
        raise BenchError(f"upload of {path.name} is {state_name(u.state)}, not QUEUED: {u.error.message}")
    return u, dt


def start_server(tmp: Path, name: str, durability: str, extra: list[str]) -> bc.ServerProc:
    return bc.ServerProc(tmp / f"{name}.db", log_path=tmp / f"{name}-server.log",
                         extra_args=["--durability", durability, "--storage-root", str(tmp / "storage"), *extra]
                         ).start()


def drop_db(tmp: Path, name: str, keep: bool) -> None:
    """Free the disk of a stopped server's database (a 1M-line apply is GBs)."""
    if keep:
        return
    for suffix in ("", "-wal", "-shm"):
        with_suffix = tmp / f"{name}.db{suffix}"
        if with_suffix.exists():
            with_suffix.unlink()


@dataclass
class Phase:
    name: str
    other_cores: float = 0.0
    notes: list[str] = field(default_factory=list)


# -- 1. upload --------------------------------------------------------------------------


@dataclass
class UploadRun:
    kind: str  # "client" or "bare"
    seconds: float
    server_cpu: float
    client_cpu: float
    finish_s: float = 0.0  # bare only: the finish-only stream


def bare_messages(upload_id: str, path: Path) -> list[bytes]:
    out: list[bytes] = []
    first = True
    with open(path, "rb") as f:
        while data := f.read(CHUNK):
            m = bsvc.WriteBulkUploadFileRequest(data=data, crc32=zlib.crc32(data))
            if first:
                m.upload_id, m.write_offset, first = upload_id, 0, False
            out.append(m.SerializeToString())
    return out


def bare_upload(client: MediaJobsClient, channel: grpc.Channel, server: bc.ServerProc, path: Path,
                size: int) -> UploadRun:
    u = client.start_bulk_upload(file_name=path.name, file_size_bytes=size)
    msgs = bare_messages(u.id, path)
    call: Any = channel.stream_unary(WRITE, request_serializer=None,
                                     response_deserializer=bsvc.WriteBulkUploadFileResponse.FromString)
    timeout = 60 + size / (256 * 1024)
    scpu, ccpu = bc.ProcCpu(server.pid).start(), bc.ProcCpu().start()
    t0 = time.perf_counter()
    resp = call(iter(msgs), timeout=timeout)
    dt = time.perf_counter() - t0
    scpu.stop()
    ccpu.stop()
    if resp.committed_size != size:
        raise BenchError(f"bare stream: the server stored {resp.committed_size} of {size} bytes")
    del msgs
    fin = bsvc.WriteBulkUploadFileRequest(upload_id=u.id, write_offset=size, finish_write=True).SerializeToString()
    t1 = time.perf_counter()
    resp = call(iter([fin]), timeout=timeout)
    finish_s = time.perf_counter() - t1
    if resp.bulk_upload.state != BulkUpload.QUEUED:
        raise BenchError(f"bare stream: finishing left the upload {state_name(resp.bulk_upload.state)}")
    return UploadRun("bare", dt, scpu.cpu, ccpu.cpu, finish_s)


def client_upload(client: MediaJobsClient, server: bc.ServerProc, path: Path) -> UploadRun:
    scpu, ccpu = bc.ProcCpu(server.pid).start(), bc.ProcCpu().start()
    _, dt = upload_file(client, path)
    scpu.stop()
    ccpu.stop()
    return UploadRun("client", dt, scpu.cpu, ccpu.cpu)


def phase_upload(args: argparse.Namespace, tmp: Path, path: Path, size: int, warm: Path, warm_size: int
                 ) -> tuple[Phase, list[UploadRun], float]:
    ph = Phase("upload")
    server = start_server(tmp, "upload", args.durability, ["--bulk-runners", "0"])
    print(f"[1/3] upload: server pid {server.pid} (--bulk-runners 0), file {size / MIB:.1f} MiB, "
          f"{args.rounds} round(s)", flush=True)
    runs: list[UploadRun] = []
    try:
        client = MediaJobsClient(server.addr, options=CLIENT_OPTIONS)
        channel = grpc.insecure_channel(server.addr, options=CLIENT_OPTIONS)
        grpc.channel_ready_future(channel).result(timeout=10)
        # Warm-up: both paths once on a small file.
        client_upload(client, server, warm)
        bare_upload(client, channel, server, warm, warm_size)
        load = bc.OtherLoad().start()
        for rnd in range(args.rounds):
            order = ("bare", "client") if rnd % 2 == 0 else ("client", "bare")
            for kind in order:
                r = bare_upload(client, channel, server, path, size) if kind == "bare" else \
                    client_upload(client, server, path)
                runs.append(r)
                print(f"  round {rnd + 1} {'upload_bulk_file' if kind == 'client' else 'bare stream':16s} "
                      f"{size / MIB / r.seconds:7.1f} MiB/s ({r.seconds:.2f} s; server {r.server_cpu / r.seconds:.2f} "
                      f"cores, client {r.client_cpu / r.seconds:.2f} cores)"
                      + (f"; finish-only stream {r.finish_s:.2f} s" if kind == "bare" else ""), flush=True)
        ph.other_cores = load.stop()
        sha_s = min(sha_pass_seconds(path) for _ in range(2))
        channel.close()
        client.close()
    finally:
        server.stop()
        drop_db(tmp, "upload", args.keep)
    return ph, runs, sha_s


# -- 2. validate-only -------------------------------------------------------------------


@dataclass
class ValidateResult:
    records: int
    seconds: float  # QUEUED -> VALIDATED (server timestamps)
    observed_s: float  # upload_bulk_file returned -> VALIDATED message arrived
    server_cpu: float
    baseline_kind: str = ""
    baseline_rows: int = 0
    baseline_s: float = 0.0


def sqlite_import(db: Path, path: Path, durability: str) -> tuple[str, int, float]:
    """The baseline of the validate phase: (what ran, rows, seconds)."""
    sync = "FULL" if durability == "strict" else "NORMAL"
    exe = shutil.which("sqlite3")
    if exe:
        script = (f"PRAGMA journal_mode=wal;\nPRAGMA synchronous={sync};\n.mode csv\n"
                  f".import '{str(path)}' records\n")
        t0 = time.perf_counter()
        p = subprocess.run([exe, "-batch", "-bail", str(db)], input=script, capture_output=True, text=True,
                           timeout=600)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            raise BenchError(f"sqlite3 .import failed ({p.returncode}): {p.stderr.strip()[-300:]}")
        kind = "sqlite3 CLI .import"
    else:
        con = sqlite3.connect(db, isolation_level=None)
        con.execute("PRAGMA journal_mode=wal")
        con.execute(f"PRAGMA synchronous={sync}")
        t0 = time.perf_counter()
        with open(path, newline="", encoding="utf-8") as f:
            rd = csv.reader(f)
            cols = next(rd)
            con.execute(f"CREATE TABLE records ({', '.join(c + ' TEXT' for c in cols)})")
            con.execute("BEGIN")
            con.executemany(f"INSERT INTO records VALUES ({', '.join('?' * len(cols))})", rd)
            con.execute("COMMIT")
        dt = time.perf_counter() - t0
        con.close()
        kind = "Python sqlite3 csv.reader + executemany (no sqlite3 CLI)"
    con = sqlite3.connect(db)
    rows = int(con.execute("SELECT COUNT(*) FROM records").fetchone()[0])
    con.close()
    return kind, rows, dt


def phase_validate(args: argparse.Namespace, tmp: Path, path: Path, records: int, warm: Path
                   ) -> tuple[Phase, ValidateResult]:
    ph = Phase("validate-only")
    server = start_server(tmp, "validate", args.durability, [])
    print(f"[2/3] validate-only: server pid {server.pid}, {records:,} records", flush=True)
    timeout = 120 + records / 2000
    try:
        client = MediaJobsClient(server.addr, options=CLIENT_OPTIONS)
        u, _ = upload_file(client, warm, validate_only=True)
        wait_for(client, u.id, {BulkUpload.VALIDATED}, timeout)
        load = bc.OtherLoad().start()
        u, _ = upload_file(client, path, validate_only=True)
        t_queued = time.perf_counter()
        scpu = bc.ProcCpu(server.pid).start()
        done, t_done = wait_for(client, u.id, {BulkUpload.VALIDATED}, timeout)
        scpu.stop()
        ph.other_cores = load.stop()
        client.close()
    finally:
        server.stop()
        drop_db(tmp, "validate", args.keep)
    c = done.counts
    if c.total_records != records or c.ok != records or c.error:
        raise BenchError(f"validate-only: expected {records} OK records, got {one_line(c)}")
    r = ValidateResult(records, (us(done.end_time) - us(done.upload_complete_time)) / 1e6, t_done - t_queued,
                       scpu.cpu)
    print(f"  VALIDATED: {records / r.seconds:,.0f} records/s ({r.seconds:.2f} s QUEUED -> VALIDATED; server "
          f"{r.server_cpu / r.observed_s:.2f} cores)", flush=True)
    load = bc.OtherLoad().start()
    r.baseline_kind, r.baseline_rows, r.baseline_s = sqlite_import(tmp / "import.db", path, args.durability)
    ph.other_cores = max(ph.other_cores, load.stop())
    drop_db(tmp, "import", args.keep)
    if r.baseline_rows != records:
        raise BenchError(f"{r.baseline_kind}: {r.baseline_rows} rows, expected {records}")
    print(f"  {r.baseline_kind}: {records / r.baseline_s:,.0f} rows/s ({r.baseline_s:.2f} s)", flush=True)
    return ph, r


# -- 3. apply, 4. memory ---------------------------------------------------------------------------


@dataclass
class ApplyResult:
    records: int
    seconds: float  # QUEUED -> WAITING_FOR_OBJECTS (server timestamps)
    upload_s: float  # upload_bulk_file
    e2e_s: float  # upload_bulk_file call -> WAITING_FOR_OBJECTS (server's update_time)
    server_cpu: float  # during the apply
    rss_base: int = 0
    rss_peak: int = 0  # sampled
    rss_peak_upload: int = 0  # sampled, until upload_bulk_file returned
    rss_peak_apply: int = 0  # sampled, from then to WAITING_FOR_OBJECTS
    hwm: int = 0
    hwm_reset: bool = False  # VmHWM was reset at the baseline (else: the peak since start)
    rss_end: int = 0
    rss_later: int = 0
    samples: int = 0
    stored_blob_sizes: dict[str, float] = field(default_factory=dict)


def stored_blob_sizes(db: Path) -> dict[str, float]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        q = {
            "entry": "SELECT AVG(LENGTH(data)) FROM (SELECT data FROM entries LIMIT 20000)",
            "job": "SELECT AVG(LENGTH(data)) FROM (SELECT data FROM jobs WHERE type = 'EXTRACT_MEDIA' LIMIT 20000)",
            "event": "SELECT AVG(LENGTH(data)) FROM (SELECT data FROM job_events WHERE job_type = 'EXTRACT_MEDIA' "
                     "LIMIT 20000)",
            "result": "SELECT AVG(LENGTH(data)) FROM (SELECT data FROM bulk_upload_lines LIMIT 20000)",
        }
        return {k: float(con.execute(sql).fetchone()[0] or 0) for k, sql in q.items()}
    finally:
        con.close()


def phase_apply(args: argparse.Namespace, tmp: Path, path: Path, records: int, warm: Path, warm_records: int
                ) -> tuple[Phase, ApplyResult]:
    ph = Phase("apply")
    server = start_server(tmp, "apply", args.durability, [])
    print(f"[3/3] apply: server pid {server.pid}, {records:,} records (each adds an entry + EXTRACT_MEDIA job)",
          flush=True)
    want = {BulkUpload.WAITING_FOR_OBJECTS}
    timeout = 120 + records / 500
    try:
        client = MediaJobsClient(server.addr, options=CLIENT_OPTIONS)
        u, _ = upload_file(client, warm)
        done, _ = wait_for(client, u.id, want, timeout)
        if done.counts.in_progress != warm_records:
            raise BenchError(f"apply warm-up: expected {warm_records} IN_PROGRESS records, got {one_line(done.counts)}")
        time.sleep(2.5)  # let the server settle (it trims its heap ~2 s after a burst)
        hwm_reset = reset_hwm(server.pid)
        rss_base = server.rss_bytes()
        sampler = RssSampler(server.pid).start()
        load = bc.OtherLoad().start()
        t0_wall_us = time.time_ns() // 1000
        u, upload_s = upload_file(client, path)
        sampler.split()
        scpu = bc.ProcCpu(server.pid).start()
        last = [time.perf_counter()]

        def progress(m: BulkUpload) -> None:
            if time.perf_counter() - last[0] >= 10:
                last[0] = time.perf_counter()
                print(f"  ... {m.counts.applied:,} of {m.counts.total_records:,} applied", flush=True)

        done, _ = wait_for(client, u.id, want, timeout, progress)
        scpu.stop()
        peak = sampler.stop()
        ph.other_cores = load.stop()
        hwm = vm_hwm_bytes(server.pid)
        rss_end = server.rss_bytes()
        time.sleep(3.0)
        rss_later = server.rss_bytes()
        blobs = stored_blob_sizes(tmp / "apply.db")
        client.close()
    finally:
        server.stop()
        drop_db(tmp, "apply", args.keep)
    c = done.counts
    if c.total_records != records or c.in_progress != records or c.error or c.objects_created != records:
        raise BenchError(f"apply: expected {records} IN_PROGRESS records with one entry each, got {one_line(c)}")
    r = ApplyResult(records=records, seconds=(us(done.update_time) - us(done.upload_complete_time)) / 1e6,
                    upload_s=upload_s, e2e_s=(us(done.update_time) - t0_wall_us) / 1e6, server_cpu=scpu.cpu,
                    rss_base=rss_base, rss_peak=peak, rss_peak_upload=sampler.segments[0],
                    rss_peak_apply=sampler.segments[-1], hwm=hwm, hwm_reset=hwm_reset, rss_end=rss_end,
                    rss_later=rss_later, samples=sampler.samples, stored_blob_sizes=blobs)
    print(f"  WAITING_FOR_OBJECTS: {records / r.seconds:,.0f} lines/s ({r.seconds:.2f} s QUEUED -> "
          f"WAITING_FOR_OBJECTS; server {r.server_cpu / r.seconds:.2f} cores); end to end {r.e2e_s:.1f} s "
          f"(upload {upload_s:.1f} s)", flush=True)
    return ph, r


def floor_blobs() -> dict[str, bytes]:
    """Blobs shaped as the server's for one record (ids of 26 characters,
    current timestamps), serialized once."""
    upload_id, entry_id, job_id, asset_id = ("01M8S6MAGM71D20J3XTVPX2PHA", "01M8S6MAK5ABR7FH6SAW71RGB2",
                                             "01M8S6MAKAP7N9ET05TPTP127X", "01M8S6MAK5ABR7FH6SAW71RGB3")
    now = time.time_ns() // 1000
    i = 1234567
    output = mres.OutputSpec(name="720p", container="mp4", video_codec="h264", height=720,
                             video_bit_rate_bps=2_500_000, audio_codec="aac", audio_bit_rate_bps=128_000,
                             preset="veryfast")
    entry = mres.Entry(id=entry_id, name=f"Clip {i:07d}",
                       description=f"Benchmark entry {i:07d} of a bulk upload with a one-line description",
                       reference_id=f"ref-{i:07d}", source_uri=SOURCE_REL, template_id="mp4-h264-720p",
                       state=mres.Entry.PENDING, job_ids=[job_id], creator="anonymous",
                       labels={"bulk_upload_id": upload_id},
                       flavor_assets=[mres.FlavorAsset(id=asset_id, output_name="720p",
                                                       state=mres.FlavorAsset.QUEUED, output=output)])
    entry.create_time.FromMicroseconds(now)
    entry.update_time.FromMicroseconds(now)
    job = res.Job(id=job_id, type="EXTRACT_MEDIA", state=res.Job.PENDING, priority=res.Job.LOW,
                  metadata={"entry_step": "extract", "entry_id": entry_id}, creator="anonymous", project="default",
                  max_attempts=3, revision=3_000_000, template_id="mp4-h264-720p")
    job.params.update({"source": SOURCE_REL, "entry_id": entry_id})
    job.create_time.FromMicroseconds(now)
    job.update_time.FromMicroseconds(now)
    event = res.JobEvent(revision=3_000_000, type=res.JobEvent.CREATED, job=job,
                         previous_state=res.Job.STATE_UNSPECIFIED)
    event.event_time.FromMicroseconds(now)
    result = Result(upload_id=upload_id, record_index=i, line_number=i + 1, status=Result.IN_PROGRESS,
                    action=Result.ADD, object_type=BulkUpload.ENTRY, object_id=entry_id, object_state="PENDING",
                    job_ids=[job_id], byte_offset=i * 104, byte_length=104, attempts=1, title=f"Clip {i:07d}",
                    reference_id=f"ref-{i:07d}")
    result.update_time.FromMicroseconds(now)
    return {"entry": entry.SerializeToString(), "job": job.SerializeToString(),
            "event": event.SerializeToString(), "result": result.SerializeToString()}


@dataclass
class FloorResult:
    lines: int
    seconds: float
    cpu: float
    blob_sizes: dict[str, int]


def raw_sql_floor(db: Path, lines: int, durability: str) -> FloorResult:
    from mediajobs.server.store import Store

    store = Store(str(db), durability=durability).open()  # the server's schema
    store.close()
    con = sqlite3.connect(db, isolation_level=None)
    for pragma in ("journal_mode=wal", f"synchronous={'FULL' if durability == 'strict' else 'NORMAL'}",
                   "foreign_keys=1", "busy_timeout=30000", "cache_size=-64000"):
        con.execute(f"PRAGMA {pragma}")
    blobs = floor_blobs()
    e_blob, j_blob, ev_blob, r_blob = blobs["entry"], blobs["job"], blobs["event"], blobs["result"]
    ins_entry = ("INSERT INTO entries (id, project, state, reference_id, template_id, create_time, update_time, "
                 "data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
    ins_job = ("INSERT INTO jobs (id, project, type, state, priority, creator, create_time, update_time, "
               "start_time, end_time, revision, lease_token, lease_owner, lease_expire_time, available_time, data) "
               f"VALUES ({', '.join(['?'] * 16)})")
    ins_meta = "INSERT INTO job_metadata (job_id, project, key, value) VALUES (?, ?, ?, ?)"
    ins_event = ("INSERT INTO job_events (revision, project, job_id, job_type, state, previous_state, event_time, "
                 "data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
    ins_line = ("INSERT INTO bulk_upload_lines (upload_id, record_index, status, generation, data) "
                "VALUES (?, ?, ?, ?, ?)")
    ins_obj = "INSERT INTO bulk_upload_objects (project, object_id, upload_id, record_index) VALUES (?, ?, ?, ?)"
    project, upload_id, tmpl = "default", "01BENCHF100R0000000000000U", "mp4-h264-720p"
    cpu = bc.ProcCpu().start()
    t0 = time.perf_counter()
    for start in range(1, lines + 1, FLOOR_TXN_LINES):
        now = time.time_ns() // 1000
        ents, jobs, metas, evs, lns, objs = [], [], [], [], [], []
        for i in range(start, min(start + FLOOR_TXN_LINES, lines + 1)):
            eid, jid = f"01E{i:023d}", f"01J{i:023d}"
            ents.append((eid, project, 1, f"ref-{i:07d}", tmpl, now, now, e_blob))
            jobs.append((jid, project, "EXTRACT_MEDIA", 1, 2, "anonymous", now, now, 0, 0, i, "", "", 0, 0, j_blob))
            metas.append((jid, project, "entry_step", "extract"))
            metas.append((jid, project, "entry_id", eid))
            evs.append((i, project, jid, "EXTRACT_MEDIA", 1, 0, now, ev_blob))
            lns.append((upload_id, i, 3, 1, r_blob))
            objs.append((project, eid, upload_id, i))
        con.execute("BEGIN")
        con.executemany(ins_entry, ents)
        con.executemany(ins_job, jobs)
        con.executemany(ins_meta, metas)
        con.executemany(ins_event, evs)
        con.executemany(ins_line, lns)
        con.executemany(ins_obj, objs)
        con.execute("COMMIT")
    dt = time.perf_counter() - t0
    cpu.stop()
    n = int(con.execute("SELECT COUNT(*) FROM bulk_upload_objects").fetchone()[0])
    con.close()
    if n != lines:
        raise BenchError(f"raw-SQL floor: {n} rows, expected {lines}")
    return FloorResult(lines, dt, cpu.cpu, {k: len(v) for k, v in blobs.items()})


# -- the run ---------------------------------------------------------------------------------


def bench(args: argparse.Namespace, tmp: Path) -> int:
    if args.wait_quiet > 0:
        bc.wait_for_quiet(args.wait_quiet)
    (tmp / "storage" / "media").mkdir(parents=True)
    (tmp / "storage" / SOURCE_REL).write_bytes(b"\x00" * 16)
    files: dict[int, tuple[Path, int]] = {}

    def csv_of(n: int) -> tuple[Path, int]:
        if n not in files:
            p = tmp / f"records-{n}.csv"
            files[n] = (p, gen_csv(p, n))
        return files[n]

    t0 = time.perf_counter()
    up_path, up_size = csv_of(args.upload_lines)
    val_path, _ = csv_of(args.validate_lines)
    ap_path, ap_size = csv_of(args.apply_lines)
    warm_path, warm_size = csv_of(args.warm_lines)
    print(f"generated the CSV files in {time.perf_counter() - t0:.1f} s: upload {args.upload_lines:,} lines "
          f"({up_size / MIB:.1f} MiB), validate {args.validate_lines:,}, apply {args.apply_lines:,} "
          f"({ap_size / MIB:.1f} MiB), warm-ups {args.warm_lines:,}; durability {args.durability}; "
          f"{bc.machine_note()}", flush=True)

    ph_up, runs, sha_s = phase_upload(args, tmp, up_path, up_size, warm_path, warm_size)
    ph_val, val = phase_validate(args, tmp, val_path, args.validate_lines, warm_path)
    ph_ap, ap = phase_apply(args, tmp, ap_path, args.apply_lines, warm_path, args.warm_lines)
    load = bc.OtherLoad().start()
    floor = raw_sql_floor(tmp / "floor.db", args.apply_lines, args.durability)
    ph_floor = Phase("raw-SQL floor", load.stop())
    drop_db(tmp, "floor", args.keep)
    print(f"  raw-SQL floor: {floor.lines / floor.seconds:,.0f} lines/s ({floor.seconds:.2f} s, "
          f"{floor.cpu / floor.seconds:.2f} cores)", flush=True)

    # -- report ----------------------------------------------------------------------------
    cl = [r for r in runs if r.kind == "client"]
    br = [r for r in runs if r.kind == "bare"]
    cl_s, br_s = sum(r.seconds for r in cl), sum(r.seconds for r in br)
    cl_rate, br_rate = up_size * len(cl) / MIB / cl_s, up_size * len(br) / MIB / br_s
    finish_s = sum(r.finish_s for r in br) / len(br)
    up_ratio = cl_rate / br_rate
    net_s = max(cl_s / len(cl) - finish_s - sha_s, 1e-9)
    val_rate, imp_rate = val.records / val.seconds, val.baseline_rows / val.baseline_s
    ap_rate, fl_rate = ap.records / ap.seconds, floor.lines / floor.seconds

    rows = [
        ["upload: upload_bulk_file", f"{cl_rate:.1f} MiB/s", "bare WriteBulkUploadFile stream", f"{br_rate:.1f} MiB/s",
         up_ratio, sum(r.server_cpu for r in cl) / cl_s, sum(r.client_cpu for r in cl) / cl_s],
        ["upload: bare stream", f"{br_rate:.1f} MiB/s", "", "", float("nan"),
         sum(r.server_cpu for r in br) / br_s, sum(r.client_cpu for r in br) / br_s],
        ["validate-only (QUEUED->VALIDATED)", f"{val_rate:,.0f} rec/s", val.baseline_kind.split(" (")[0],
         f"{imp_rate:,.0f} rows/s", val_rate / imp_rate, val.server_cpu / val.observed_s, float("nan")],
        ["apply (QUEUED->WAITING_FOR_OBJECTS)", f"{ap_rate:,.0f} lines/s", "raw-SQL floor (Python sqlite3)",
         f"{fl_rate:,.0f} lines/s", ap_rate / fl_rate, ap.server_cpu / ap.seconds, floor.cpu / floor.seconds],
    ]
    print()
    print(bc.table(["measured", "rate", "baseline (same run)", "baseline rate", "ratio", "srv cores",
                    "cli/floor cores"], rows))
    print(f"upload: {up_size / MIB:.1f} MiB x {len(cl)}; upload_bulk_file took {cl_s / len(cl):.2f} s on average, "
          f"of which ~{sha_s:.2f} s the client's sha256 pass and ~{finish_s:.2f} s the server's finish check "
          f"(sha256 + CSV scan, measured by a finish-only stream); the rest, ~{net_s:.2f} s, is "
          f"{up_size / MIB / net_s:.1f} MiB/s ({up_size / MIB / net_s / br_rate:.2f} x the bare stream)")
    print(f"apply: end to end (upload_bulk_file call -> WAITING_FOR_OBJECTS) {ap.e2e_s:.1f} s for "
          f"{ap.records:,} lines (upload {ap.upload_s:.1f} s, apply {ap.seconds:.1f} s); "
          f"validate-only observed by the watch {val.observed_s:.2f} s (server timestamps {val.seconds:.2f} s)")
    print("blob bytes per line, floor vs the server's average: " + ", ".join(
        f"{k} {floor.blob_sizes[k]} vs {ap.stored_blob_sizes.get(k, 0):.0f}"
        for k in ("entry", "job", "event", "result")))
    print()
    print(f"server memory during the {ap.records:,}-line upload + apply (VmRSS sampled every 0.1 s, "
          f"{ap.samples} samples):")
    print(bc.table(["", "MiB", "growth MiB"], [
        ["after start-up + warm-up (baseline)", ap.rss_base / MIB, ""],
        ["peak sampled VmRSS", ap.rss_peak / MIB, (ap.rss_peak - ap.rss_base) / MIB],
        ["  of which: during upload_bulk_file", ap.rss_peak_upload / MIB, (ap.rss_peak_upload - ap.rss_base) / MIB],
        ["  of which: during the apply", ap.rss_peak_apply / MIB, (ap.rss_peak_apply - ap.rss_base) / MIB],
        ["VmHWM (peak since the baseline)" if ap.hwm_reset else "VmHWM (peak since start: no clear_refs)",
         ap.hwm / MIB, (ap.hwm - ap.rss_base) / MIB],
        ["at WAITING_FOR_OBJECTS", ap.rss_end / MIB, (ap.rss_end - ap.rss_base) / MIB],
        ["3 s later", ap.rss_later / MIB, (ap.rss_later - ap.rss_base) / MIB],
    ]))
    phases = [ph_up, ph_val, ph_ap, ph_floor]
    worst = max(phases, key=lambda p: p.other_cores)
    print(bc.other_load_note(worst.other_cores) + f" (worst phase: {worst.name}; "
          + ", ".join(f"{p.name} {p.other_cores:.2f}" for p in phases) + ")")
    print()
    growth = (max(ap.rss_peak, ap.hwm) - ap.rss_base) / MIB
    for line_, _ in (
        bc.target_line("upload upload_bulk_file/bare stream", up_ratio, ">=", TARGET_UPLOAD_RATIO,
                       note=f"{up_size / MIB:.0f} MiB, {len(cl)} round(s)"),
        bc.target_line("validate-only/sqlite3 import", val_rate / imp_rate, ">=", TARGET_VALIDATE_RATIO,
                       note=f"{val.records:,} records; {val.baseline_kind}"),
        bc.target_line("apply lines/s", ap_rate, ">=", TARGET_APPLY_RATE, note=f"{ap.records:,} lines"),
        bc.target_line("apply/raw-SQL floor", ap_rate / fl_rate, ">=", TARGET_APPLY_RATIO,
                       note=f"{ap.records:,} lines"),
        bc.target_line("server RSS peak growth", growth, "<=", TARGET_RSS_MIB, " MiB",
                       note=f"upload + apply of {ap.records:,} lines"),
    ):
        print(line_)
    if ap.records >= E2E_LINES:
        line_, _ = bc.target_line(f"end to end {ap.records:,} lines", ap.e2e_s, "<=", TARGET_E2E_S, " s",
                                  note=f"upload + apply, {os.cpu_count()} cores")
        print(line_)
    else:
        scaled = ap.e2e_s * E2E_LINES / ap.records
        print(f"(end-to-end target < {TARGET_E2E_S:g} s is for {E2E_LINES:,} lines: run without --quick; at this "
              f"run's rate, scaled linearly, {E2E_LINES:,} lines would take ~{scaled:.0f} s)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="~30-40 s: 200,000-line upload and validate files, 20,000-line apply, 3 upload rounds")
    ap.add_argument("--upload-lines", type=int, default=None, help="lines of the upload file (full: 1,000,000)")
    ap.add_argument("--validate-lines", type=int, default=None,
                    help="lines of the validate-only file (full: 1,000,000)")
    ap.add_argument("--apply-lines", type=int, default=None, help="lines of the applied file (full: 1,000,000)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="upload rounds, alternating which path goes first (full: 2, quick: 3)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (files, databases, server logs)")
    bc.add_durability_arg(ap)
    bc.add_quiet_arg(ap)
    args = ap.parse_args()
    full = {"upload_lines": 1_000_000, "validate_lines": 1_000_000, "apply_lines": 1_000_000, "rounds": 2}
    quick = {"upload_lines": 200_000, "validate_lines": 200_000, "apply_lines": 20_000, "rounds": 3}
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.warm_lines = 3000
    for k in ("upload_lines", "validate_lines", "apply_lines", "rounds"):
        if getattr(args, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be positive")
    if args.upload_lines * 104 <= 256 * 1024:
        ap.error("--upload-lines too small: the file must be larger than 256 KiB to be streamed")
    tmp = Path(tempfile.mkdtemp(prefix="mediajobs-bench-bulk-"))
    failed = True
    try:
        rc = bench(args, tmp)
        failed = rc != 0
        return rc
    except KeyboardInterrupt:
        return 130
    except (BenchError, MediaJobsError, grpc.RpcError, RuntimeError, OSError, subprocess.SubprocessError) as e:
        msg = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.RpcError) and hasattr(e, "code") else str(e)
        print(f"ERROR: the benchmark failed: {type(e).__name__}: {msg}", file=sys.stderr)
        return 1
    finally:
        bc.cleanup_tmp(tmp, keep=args.keep, failed=failed, what="CSV files and server logs")


if __name__ == "__main__":
    raise SystemExit(main())
