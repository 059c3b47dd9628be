"""Shared helpers of the benchmark scripts (scripts/bench_*.py).

Not a test module and not part of the installed package: the scripts put
this folder on sys.path and import it. Everything here talks to 127.0.0.1
only and every loop is bounded.

- `ServerProc`: run `python -m mediajobs.server` as a separate process on a
  given SQLite file, parse its "listening on" line, read its CPU time and RSS
  from /proc, stop it with SIGTERM. Its log (default: next to the database)
  and data dir go into the caller's temporary folder.
- `ProcCpu` / `proc_cpu_seconds` / `proc_rss_bytes`: /proc readers.
- `OtherLoad` / `other_load_note` / `wait_for_quiet`: how busy other
  processes kept the machine (ours: this process and all its descendants).
- `cleanup_tmp`: remove a run's temporary folder (unless --keep), after a
  failure printing the end of the logs in it first.
- `Secure`: TLS with a throw-away CA (trustme) and an API key per server
  database, for benchmarks run with TLS and `--auth keys` on.
- `PySpy`: optional sampling profile of the server process (py-spy record,
  raw collapsed stacks) and a short "where does the time go" summary.
- `pct`, `table`, `target_line`: reporting.
"""
from __future__ import annotations

import atexit
import collections
import contextlib
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
# "mediajobs-server listening on HOST:PORT", with or without a version after the name.
LISTEN_RE = re.compile(r"mediajobs-server(?: [^ \n]+)? listening on 127\.0\.0\.1:(\d+)")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Separate channels must not share one TCP connection (grpc shares
# subchannels between channels with equal arguments by default).
CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]

HEALTH_CHECK = "/grpc.health.v1.Health/Check"


# -- /proc ----------------------------------------------------------------------


def proc_cpu_seconds(pid: int | str = "self") -> float:
    """utime + stime of a whole process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    # rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def system_busy_seconds() -> float:
    """CPU seconds all processes of the machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / CLK_TCK


def tree_cpu_seconds(root: int | None = None) -> float:
    """CPU seconds used so far by a process and all its descendants: each live
    one's own time plus the time of its children that exited and were waited
    for (cutime/cstime), so processes that ended meanwhile (a restarted
    server, finished workers) still count."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = collections.defaultdict(list)
    times: dict[int, float] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        pid = int(d)
        children[int(rest[1])].append(pid)
        # utime, stime, cutime, cstime are fields 14-17.
        times[pid] = (int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])) / CLK_TCK
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo.extend(children.get(pid, ()))
    return total


class OtherLoad:
    """Cores used by processes other than ours between start() and stop(): a
    shared machine makes every number here unreliable, so the scripts report
    it. Ours are, by default, this process and all its descendants (servers,
    workers, peers, py-spy, ffmpeg), including those that exited meanwhile,
    plus the `also` pids (e.g. a broker the measured system uses); or else
    exactly the given pids."""

    def __init__(self, pids: Sequence[int | str] | None = None, also: Sequence[int] = ()) -> None:
        self.pids = None if pids is None else list(pids)
        self.also = list(also)
        self.t0 = self.s0 = 0.0
        self.p0: list[float] = []
        self.cores = 0.0

    def _ours(self) -> list[float]:
        if self.pids is None:
            return [tree_cpu_seconds()] + [tree_cpu_seconds(p) for p in self.also]
        out = []
        for p in self.pids:
            try:
                out.append(proc_cpu_seconds(p))
            except OSError:  # exited; its time is lost (use the default, the process tree)
                out.append(float("nan"))
        return out

    def start(self) -> "OtherLoad":
        self.t0, self.s0 = time.perf_counter(), system_busy_seconds()
        self.p0 = self._ours()
        return self

    def stop(self) -> float:
        wall = time.perf_counter() - self.t0
        ours = sum(c1 - c0 for c1, c0 in zip(self._ours(), self.p0) if not math.isnan(c1 - c0))
        self.cores = max(0.0, (system_busy_seconds() - self.s0 - ours) / wall) if wall else 0.0
        return self.cores


def wait_for_quiet(max_wait: float, threshold: float = 0.15, window: float = 3.0) -> float:
    """Wait (at most max_wait s) until the machine's busy cores over `window`
    seconds are below `threshold` (nothing of ours runs yet); returns the last
    load seen."""
    deadline = time.monotonic() + max_wait
    load = 0.0
    while True:
        s0, t0 = system_busy_seconds(), time.perf_counter()
        time.sleep(window)
        load = (system_busy_seconds() - s0) / (time.perf_counter() - t0)
        if load < threshold or time.monotonic() >= deadline:
            return load
        print(f"  machine busy ({load:.2f} cores used by others); waiting for it to be quiet ...", flush=True)


def add_durability_arg(ap: Any) -> None:
    ap.add_argument("--durability", choices=("strict", "fast"), default="strict",
                    help="the server's --durability: strict (the server's default; SQLite fsyncs every "
                         "commit) or fast (an ack survives a server crash, not an OS crash)")


def add_quiet_arg(ap: Any) -> None:
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="first wait up to this long for other processes on the machine to go idle "
                         "(default: don't wait; the scripts always report how busy the machine was)")


OTHER_LOAD_WARN = 0.2


def other_load_note(cores: float) -> str:
    msg = f"other processes on this machine used {cores:.2f} cores meanwhile"
    if cores > OTHER_LOAD_WARN:
        msg += " -- WARNING: the machine was not quiet; numbers are unreliable, run again"
    return msg


def cleanup_tmp(tmp: str | Path, keep: bool = False, failed: bool = False, what: str = "") -> None:
    """Remove a benchmark's temporary folder (database, logs, outputs) unless
    `keep`. After a failure, first print the end of the server logs in it."""
    tmp = Path(tmp)
    if not tmp.exists():
        return
    if keep:
        print(f"(kept {tmp}{': ' + what if what else ''})")
        return
    if failed:
        for log in sorted(tmp.rglob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-20:]
            if lines:
                print(f"--- last lines of {log.name} (--keep keeps the folder):", file=sys.stderr)
                print("\n".join(lines), file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)


def proc_rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def proc_threads(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


class ProcCpu:
    """CPU seconds a process used between start() and stop()."""

    def __init__(self, pid: int | str = "self") -> None:
        self.pid = pid
        self.t0 = self.c0 = 0.0
        self.wall = self.cpu = 0.0

    def start(self) -> "ProcCpu":
        self.t0, self.c0 = time.perf_counter(), proc_cpu_seconds(self.pid)
        return self

    def stop(self) -> "ProcCpu":
        self.wall = time.perf_counter() - self.t0
        self.cpu = proc_cpu_seconds(self.pid) - self.c0
        return self

    @property
    def cores(self) -> float:
        return self.cpu / self.wall if self.wall else 0.0


# -- the server process -------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_live: list["ServerProc"] = []


@atexit.register
def _kill_leftovers() -> None:
    for s in list(_live):
        s.kill()


# With gc_log: the server runs under this wrapper, which reports every
# garbage collection of generation 2 or longer than 5 ms on its log as
# `BENCH-GC gen=G ms=D t=MONOTONIC` (instrumentation only; the server code
# is the same).
GC_WRAPPER = """
import gc, runpy, sys, time
_t0 = [0.0]
def _cb(phase, info):
    if phase == "start":
        _t0[0] = time.perf_counter()
        return
    dt = time.perf_counter() - _t0[0]
    if info["generation"] == 2 or dt > 0.005:
        sys.stderr.write("BENCH-GC gen=%d ms=%.1f t=%.3f\\n" % (info["generation"], dt * 1000, time.monotonic()))
        sys.stderr.flush()
gc.callbacks.append(_cb)
sys.argv = ["mediajobs-server"] + sys.argv[1:]
runpy.run_module("mediajobs.server", run_name="__main__", alter_sys=True)
"""
GC_RE = re.compile(r"BENCH-GC gen=(\d) ms=([\d.]+) t=([\d.]+)")


class ServerProc:
    """`python -m mediajobs.server --listen 127.0.0.1:PORT --db DB` in its own
    process (same interpreter as this script, so the same venv)."""

    def __init__(self, db: str | Path, port: int = 0, extra_args: Sequence[str] = (),
                 log_path: str | Path | None = None, log_level: str = "WARNING",
                 cpus: set[int] | None = None, gc_log: bool = False) -> None:
        self.db = str(db)
        self.cpus = cpus
        self.gc_log = gc_log
        self.port = port
        self.extra_args = list(extra_args)
        self.log_level = log_level
        # By default the log goes next to the database, in the caller's
        # temporary folder, so it goes away with it.
        self.log_path = Path(log_path) if log_path else Path(self.db).with_name(Path(self.db).stem + "-server.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.listening_at = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "ServerProc":
        """Start and wait for the "listening on" line; sets self.port."""
        head = [sys.executable, "-c", GC_WRAPPER] if self.gc_log else [sys.executable, "-m", "mediajobs.server"]
        cmd = [*head, "--listen", f"127.0.0.1:{self.port}", "--db", self.db, "--log-level", self.log_level,
               *self.extra_args]
        if not any(a.startswith("--data-dir") for a in self.extra_args):
            # Not the user's ~/.local/share/mediajobs: what the server
            # creates there (its storage root) goes into the log's folder,
            # the caller's temporary one.
            cmd += ["--data-dir", str(self.log_path.parent)]
        log = open(self.log_path, "ab")
        offset = log.tell()
        self.started_at = time.monotonic()
        cpus = self.cpus
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                                     preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        log.close()
        _live.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                m = LISTEN_RE.search(f.read().decode(errors="replace"))
            if m:
                self.port = int(m.group(1))
                self.listening_at = time.monotonic()
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        tail = self.log_tail()
        self.kill()
        raise RuntimeError(f"server did not start (exit code {self.proc.poll()}); log {self.log_path}:\n{tail}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def gc_pauses(self, t0: float, t1: float) -> list[tuple[int, float]]:
        """(generation, ms) of the collections logged between monotonic t0 and t1 (gc_log only)."""
        out = []
        for m in GC_RE.finditer(self.log_path.read_text(errors="replace")):
            if t0 <= float(m.group(3)) <= t1:
                out.append((int(m.group(1)), float(m.group(2))))
        return out

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return proc_rss_bytes(self.pid)

    def stop(self, timeout: float = 60.0) -> float:
        """SIGTERM (graceful drain) and wait; returns seconds until exit."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        if self in _live:
            _live.remove(self)
        return time.monotonic() - t0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        if self in _live:
            _live.remove(self)


# -- TLS and API keys (--secure) -----------------------------------------------------


class Secure:
    """What `--secure` benchmarks need to run servers the way a deployment
    does: TLS with a throw-away CA (trustme, a dev dependency) and a server
    certificate for 127.0.0.1 and localhost, written as PEM files into
    `folder`, and `--auth keys` with an API key made in each server's
    database before it starts (`mediajobs-server keys create`, the
    documented bootstrap of the first admin key).

        sec = Secure(tmp)
        key = sec.create_key(db)                       # before the server starts
        server = ServerProc(db, extra_args=sec.server_args()).start()
        ch = sec.channel(server.addr, CHANNEL_OPTIONS)  # grpc.aio, TLS
        await stub(req, metadata=sec.metadata(key))
    """

    def __init__(self, folder: str | Path) -> None:
        import trustme

        folder = Path(folder) / "tls"
        folder.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_path, self.cert_path, self.key_path = folder / "ca.pem", folder / "server.pem", folder / "server.key"
        self.ca_path.write_bytes(ca.cert_pem.bytes())
        self.cert_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        self.key_path.write_bytes(leaf.private_key_pem.bytes())
        self.key_path.chmod(0o600)

    def server_args(self) -> list[str]:
        return ["--tls-cert", str(self.cert_path), "--tls-key", str(self.key_path), "--auth", "keys"]

    def create_key(self, db: str | Path, project: str = "default", role: str = "admin",
                   timeout: float = 60.0) -> str:
        """`python -m mediajobs.server keys create --db DB --project P --role R`
        (it creates the database if need be); the key it prints on stdout."""
        cmd = [sys.executable, "-m", "mediajobs.server", "keys", "create", "--db", str(db), "--project", project,
               "--role", role, "--name", "bench"]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, stdin=subprocess.DEVNULL, timeout=timeout)
        key = p.stdout.strip()
        if p.returncode != 0 or not key or len(key.splitlines()) != 1:
            raise RuntimeError(f"`{' '.join(cmd[1:])}` failed (exit code {p.returncode}): "
                               f"{(p.stderr or p.stdout).strip()[-500:]}")
        return key

    def credentials(self) -> Any:
        import grpc

        return grpc.ssl_channel_credentials(root_certificates=self.ca_path.read_bytes())

    def channel(self, addr: str, options: Sequence[tuple[str, Any]] = ()) -> Any:
        """A grpc.aio channel to `addr` over TLS, trusting only the throw-away CA."""
        import grpc

        return grpc.aio.secure_channel(addr, self.credentials(), options=list(options))

    @staticmethod
    def metadata(key: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {key}"),)


# -- profiling ----------------------------------------------------------------------


def find_py_spy(explicit: str | None = None) -> str | None:
    for cand in (explicit, os.environ.get("PY_SPY"), shutil.which("py-spy")):
        if cand and Path(cand).exists():
            return cand
    return None


class PySpy:
    """`py-spy record --format raw` of a process for a fixed duration, then a
    summary by function (self samples = the function is the leaf; total
    samples = the function is anywhere on the stack)."""

    def __init__(self, exe: str, pid: int, out: str | Path, duration: float, rate: int = 100,
                 threads: bool = True) -> None:
        self.out = Path(out)
        cmd = [exe, "record", "-p", str(pid), "-d", str(max(1, int(round(duration)))), "-r", str(rate),
               "--format", "raw", "-o", str(self.out), "--nonblocking"]
        if threads:
            cmd.append("--threads")

        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait(self, timeout: float = 60.0) -> bool:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            return False
        if self.proc.returncode != 0 or not self.out.exists():
            print(f"  (py-spy failed: {err.decode(errors='replace').strip()[-300:]})")
            return False
        return True

    def summary(self, top: int = 12) -> str:
        return summarize_collapsed(self.out, top)


_FRAME_RE = re.compile(r"^(?P<fn>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def _short_frame(frame: str) -> str:
    m = _FRAME_RE.match(frame.strip())
    if not m:
        return frame.strip()
    file = m.group("file")
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{m.group('fn')} ({file})"


# Frames that are on (nearly) every stack of a thread and say nothing about
# where the time goes.
_BORING = re.compile(
    r"\((<frozen runpy>|threading\.py|asyncio/runners\.py|concurrent/futures/thread\.py|server/__main__\.py)\)$"
    r"|^BaseEventLoop\.(run_forever|run_until_complete|_run_once) |^Handle\._run "
)


def summarize_collapsed(path: str | Path, top: int = 12) -> str:
    self_c: collections.Counter[str] = collections.Counter()
    total_c: collections.Counter[str] = collections.Counter()
    thread_c: collections.Counter[str] = collections.Counter()
    n = 0
    for line in Path(path).read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        frames = stack.split(";")
        if frames and frames[0].startswith(("thread ", "process ")):
            thread_c[re.sub(r"\s*\(?0x[0-9a-f]+\)?", "", frames[0])] += c
            frames = frames[1:]
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        n += c
        names = [_short_frame(f) for f in frames]
        if names:
            self_c[names[-1]] += c
        for name in set(names):
            if not _BORING.search(name):
                total_c[name] += c
    if not n:
        return "  (no samples)"
    out = [f"  {n} samples (py-spy, non-idle, all threads)"]
    if thread_c:
        out.append("  by thread: " + ", ".join(f"{t} {100 * c / n:.0f}%" for t, c in thread_c.most_common(6)))
    out.append("  self:")
    out += [f"    {100 * c / n:5.1f}%  {name}" for name, c in self_c.most_common(top)]
    out.append("  total (on stack; thread/event-loop plumbing left out):")
    out += [f"    {100 * c / n:5.1f}%  {name}" for name, c in total_c.most_common(top)]
    return "\n".join(out)


# -- statistics and reporting ------------------------------------------------------------------


def pct(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (nan if empty)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], left: Iterable[int] = (0,)) -> str:
    """A plain text table; columns in `left` are left-aligned, the rest right-aligned."""
    rows = [[_cell(c) for c in r] for r in rows]
    left = set(left)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "-"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.1f}"
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def target_line(name: str, value: float, op: str, threshold: float, unit: str = "", note: str = "") -> tuple[str, bool]:
    ok = value >= threshold if op == ">=" else value <= threshold
    v = f"{value:.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    t = f"{threshold:g}"
    line = f"TARGET {name} = {v}{unit} ({op} {t}{unit}) {'OK' if ok else 'MISSED'}"
    if note:
        line += f"  [{note}]"
    return line, ok


def machine_note() -> str:
    return (f"{os.cpu_count()} cores; the load generator (this process, Python grpc.aio) and the server "
            f"process share them")


def add_profile_args(ap: Any) -> None:
    ap.add_argument("--profile", action="store_true",
                    help="sample the server with py-spy (PATH, $PY_SPY or --py-spy) during each measured phase "
                         "and print where its time goes")
    ap.add_argument("--py-spy", default=None, help="path of the py-spy binary")
    ap.add_argument("--profile-dir", default=None,
                    help="keep the raw py-spy stacks here (default: a temp dir, removed at exit)")


def profile_setup(args: Any) -> tuple[str | None, Path | None]:
    if not getattr(args, "profile", False):
        return None, None
    exe = find_py_spy(args.py_spy)
    if exe is None:
        print("note: --profile needs py-spy (pip install py-spy, or --py-spy PATH); profiling disabled")
        return None, None
    if args.profile_dir:
        d = Path(args.profile_dir)
    else:  # only for this run: removed when the script exits
        d = Path(tempfile.mkdtemp(prefix="mediajobs-bench-prof-"))
        atexit.register(shutil.rmtree, d, True)
    d.mkdir(parents=True, exist_ok=True)
    return exe, d
