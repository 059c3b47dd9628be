"""`mediajobs worker`: run job handlers from a Python module, or the
reference media worker, and `load_worker`, which finds a module's handlers."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Mapping

from ..client import DEFAULT_TARGET, MediaJobsClient
from ..worker import Worker
from .common import ENV_SERVER, ENV_STORAGE_ROOT, _FMT, _ExtendCsv, default_storage_root, _note, _positive

WORKER_DESCRIPTION = """\
Run job handlers written in Python: lease jobs of their types from the server,
run them (at most --concurrency at a time) and report the outcome, until
SIGTERM or Ctrl-C. Give exactly one of MODULE, --media or --live.

--media runs the reference media worker instead of a MODULE: EXTRACT_MEDIA
(probe a source, store its media info) and TRANSCODE (encode the flavor assets
of entries, and plain TRANSCODE jobs: params.source and params.outputs, or a
job template) with the FFmpeg libraries bundled in PyAV. It reads and writes
files under the storage root, which must be the directory the server uses as
its storage root (the same path, or the same files mounted elsewhere). By
default it is the server's default on this machine: $MEDIAJOBS_STORAGE_ROOT,
else $MEDIAJOBS_DATA_DIR/storage, else ~/.local/share/mediajobs/storage
($XDG_DATA_HOME/mediajobs/storage when XDG_DATA_HOME is set).

  mediajobs worker --media --concurrency 4
  mediajobs worker --media --storage-root /srv/media --types TRANSCODE

--live runs the reference live worker: it leases LIVE_ENCODE sessions (live
jobs started with SetLiveEncoding), takes their publishers on one RTMP port
(--rtmp-listen; every stream key is checked with the server before any media
is accepted) and writes each session's HLS ladder under the storage root
(live/<bucket>/<destination>/). The server's --live-ingest-url must name the
address publishers reach this port at. --concurrency is the number of live
sessions run at once (default 1; a 720p -> 360p+240p ladder takes about a
third of a core).

  mediajobs worker --live --storage-root /srv/media --rtmp-listen 0.0.0.0:1935

MODULE is a dotted module name importable from the current directory (or a
path to a .py file). The handlers are taken from, in this order:
  MODULE:ATTR      the Worker instance (or {"TYPE": handler} dict) named ATTR
  MODULE           its Worker instance named `worker`, else its dict HANDLERS

  # handlers.py: run with `mediajobs worker handlers`
  def checksum(ctx):                       # ctx: mediajobs.client.JobContext
      ctx.report_progress(50, "hashing")
      data = open(ctx.params["path"], "rb").read()
      return {"sha256": hashlib.sha256(data).hexdigest()}   # -> SUCCEEDED with this result
  HANDLERS = {"CHECKSUM": checksum}

A handler returns a dict (or None) to succeed, raises
mediajobs.client.RetryableError to be retried, raises anything else to fail
the job; `async def` handlers run on the event loop, plain functions in
threads. Options given here override the Worker's own settings.

Stopping: the first SIGTERM/SIGINT stops leasing, waits up to --drain-timeout
for running handlers, sends their results and releases the jobs still
running so another worker takes them at once; a second signal releases them
at once. Exit status 0 after a stop, 2 for a bad MODULE or option, 1 when the
server refuses the worker or MODULE (or the media worker) fails to import."""


def add_parser(groups: Any) -> None:
    p = groups.add_parser("worker", help="run job handlers from a Python module, or the media worker",
                          description=WORKER_DESCRIPTION, formatter_class=_FMT)
    p.add_argument("--server", metavar="HOST:PORT", default=argparse.SUPPRESS,
                   help=f"server address (default: env {ENV_SERVER}, else the Worker's own target, "
                        f"else {DEFAULT_TARGET})")
    p.add_argument("module", metavar="MODULE[:ATTR]", nargs="?",
                   help="where the handlers are (see above); not with --media")
    p.add_argument("--media", action="store_true",
                   help="run the reference media worker (EXTRACT_MEDIA, TRANSCODE) instead of a MODULE")
    p.add_argument("--live", action="store_true",
                   help="run the reference live worker (LIVE_ENCODE: RTMP in, HLS ladder out) instead of a MODULE")
    p.add_argument("--rtmp-listen", metavar="HOST:PORT", default="127.0.0.1:1935",
                   help="with --live: where publishers connect (default 127.0.0.1:1935)")
    p.add_argument("--allow-private-inputs", action="store_true",
                   help="with --live: let live jobs pull HLS over http(s) from private and loopback addresses "
                        "(refused by default, so a live job cannot make the worker probe its neighbours)")
    p.add_argument("--storage-root", metavar="DIR",
                   help=f"with --media or --live: the server's storage root (default: env {ENV_STORAGE_ROOT}, else the "
                        "server's default on this machine, DATA_DIR/storage)")
    p.add_argument("--types", action=_ExtendCsv, nargs=1, default=[], metavar="T1,T2",
                   help="serve only these of the module's job types (default: all it has handlers for)")
    p.add_argument("--concurrency", type=_positive, metavar="N",
                   help="jobs run at a time, also the thread pool size for sync handlers (default: the "
                        "Worker's, 8 for a HANDLERS dict, 2 with --media); no-op or I/O-bound async handlers "
                        "like 100-256")
    p.add_argument("--lease", type=float, metavar="SECONDS",
                   help="lease length to ask for, 1-600; heartbeats extend it every third of it "
                        "(default: the Worker's, 30)")
    p.add_argument("--drain-timeout", type=float, metavar="SECONDS",
                   help="on stop, how long running handlers may finish (default: the Worker's, 30)")
    p.add_argument("--identity", metavar="TEXT", help="who is leasing, shown on the jobs (default HOST:PID)")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="log one line per job (-vv: debug logging)")
    p.set_defaults(func=cmd_worker, parser=p)


class _WorkerLoadError(Exception):
    pass


def _import_module(name: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    if name.endswith(".py") or os.sep in name:
        path = Path(name)
        if not path.is_file():
            raise _WorkerLoadError(f"no such file: {name}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise _WorkerLoadError(f"cannot import {name}")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = mod
        spec.loader.exec_module(mod)
        return mod
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            raise _WorkerLoadError(f"no module named {name!r} (looked in {cwd} and sys.path)") from None
        raise


def load_worker(spec: str) -> Worker:
    """The Worker that `MODULE[:ATTR]` names (see `mediajobs worker --help`)."""
    name, _, attr = spec.partition(":")
    if not name:
        raise _WorkerLoadError(f"{spec!r} names no module")
    mod = _import_module(name)
    if attr:
        if not hasattr(mod, attr):
            raise _WorkerLoadError(f"module {name!r} has no attribute {attr!r}")
        obj = getattr(mod, attr)
    else:
        obj = getattr(mod, "worker", None)
        if not isinstance(obj, Worker):
            obj = getattr(mod, "HANDLERS", None)
            if obj is None:
                raise _WorkerLoadError(f"module {name!r} has neither a Worker named `worker` nor a HANDLERS dict")
    if isinstance(obj, Worker):
        worker = obj
    elif isinstance(obj, Mapping):
        worker = Worker()
        for job_type, fn in obj.items():
            if not callable(fn):
                raise _WorkerLoadError(f"{spec}: the handler for {job_type!r} is not callable")
            worker.register(str(job_type), fn)
    else:
        what = attr or "HANDLERS"
        raise _WorkerLoadError(f"{name}:{what} is not a Worker or a {{type: handler}} dict "
                               f"(it is {type(obj).__name__})")
    if not worker.job_types:
        raise _WorkerLoadError(f"{spec}: no handlers registered")
    return worker


def _storage_root(args: argparse.Namespace) -> Path:
    if args.storage_root:
        root = Path(args.storage_root).expanduser().absolute()
        if not root.is_dir():
            args.parser.error(f"--storage-root {args.storage_root}: not a directory")
        return root
    root = default_storage_root().absolute()
    if not root.is_dir():
        args.parser.error(
            f"the default storage root {root} is not a directory: start the server on this machine first "
            f"(it creates it), or give the server's storage root with --storage-root DIR (or env "
            f"{ENV_STORAGE_ROOT})")
    return root


def _run_live(args: argparse.Namespace, c: MediaJobsClient) -> int:
    root = _storage_root(args)
    try:
        from ..live.worker import LiveWorker, parse_listen
    except Exception:
        _note("mediajobs: worker: the reference live worker cannot be imported:")
        _note(traceback.format_exc().rstrip())
        return 1
    try:
        parse_listen(args.rtmp_listen)
    except ValueError as e:
        args.parser.error(f"--rtmp-listen: {e}")
    options: dict[str, Any] = {"slots": args.concurrency or 1, "allow_private_inputs": args.allow_private_inputs}
    if args.lease is not None:
        options["lease_duration"] = args.lease
    if args.identity is not None:
        options["identity"] = args.identity
    live = LiveWorker(c.target, root, args.rtmp_listen, credentials=c.credentials, api_key=c.api_key, **options)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mediajobs.worker").setLevel(logging.DEBUG if args.verbose >= 2 else logging.INFO)
    logging.getLogger("mediajobs.worker.jobs").setLevel(logging.INFO if args.verbose else logging.WARNING)
    _note(f"mediajobs worker: running LIVE_ENCODE from {c.target} ({options['slots']} session(s) at a time, "
          f"RTMP on {args.rtmp_listen}, storage root {root}); SIGTERM or Ctrl-C stops")
    try:
        live.run_sync()
    except OSError as e:
        _note(f"mediajobs: worker: cannot listen on {args.rtmp_listen}: {e.strerror or e}")
        return 1
    _note(f"mediajobs worker: stopped ({live.worker.stats['completed']} completed, "
          f"{live.worker.stats['failed']} failed, {live.worker.stats['released']} released)")
    return 0


def _media_worker(args: argparse.Namespace, c: MediaJobsClient) -> Worker | None:
    """The reference media worker for `worker --media` (None: it failed to
    import, which has been reported)."""
    root = _storage_root(args)
    try:
        # Imported here, so the rest of the CLI works without PyAV.
        from ..media_worker import build_media_worker  # type: ignore[import-not-found,unused-ignore]
    except Exception:
        _note("mediajobs: worker: the reference media worker cannot be imported:")
        _note(traceback.format_exc().rstrip())
        return None
    options: dict[str, Any] = {}
    if args.concurrency is not None:
        options["concurrency"] = args.concurrency
    try:
        worker: Worker = build_media_worker(c.target, root, **options)
    except ValueError as e:
        args.parser.error(str(e))
    return worker


def cmd_worker(args: argparse.Namespace, c: MediaJobsClient) -> int:
    for opt, value, low, high in (("--lease", args.lease, 1, 600), ("--drain-timeout", args.drain_timeout, 0, None)):
        if value is not None and (value < low or (high is not None and value > high)):
            args.parser.error(f"{opt} must be {'between %s and %s' % (low, high) if high else 'at least %s' % low}")
    if sum(bool(x) for x in (args.media, args.module, args.live)) > 1:
        args.parser.error("give one of MODULE, --media or --live")
    if not args.media and not args.module and not args.live:
        args.parser.error("give MODULE (a module with job handlers), --media (the reference media worker) or "
                          "--live (the reference live worker)")
    if args.storage_root and not (args.media or args.live):
        args.parser.error("--storage-root goes with --media or --live")
    if args.allow_private_inputs and not args.live:
        args.parser.error("--allow-private-inputs goes with --live")
    if args.live:
        return _run_live(args, c)
    if args.media:
        media_worker = _media_worker(args, c)
        if media_worker is None:
            return 1
        worker, source = media_worker, "the media worker"
    else:
        try:
            worker = load_worker(args.module)
        except _WorkerLoadError as e:
            args.parser.error(str(e))
        except Exception:  # the module itself failed while importing
            _note(f"mediajobs: worker: importing {args.module.partition(':')[0]} failed:")
            _note(traceback.format_exc().rstrip())
            return 1
        source = args.module
        if getattr(args, "server", None) or os.environ.get(ENV_SERVER):
            worker.target = c.target
    unknown = [t for t in args.types if t not in worker.job_types]
    if unknown:
        args.parser.error(f"no handler for {', '.join(unknown)} in {source} (it has {', '.join(worker.job_types)})")
    if args.concurrency is not None:
        worker.concurrency = args.concurrency
    if c.credentials is not None:
        worker.credentials = c.credentials  # --tls-* given to the CLI
    if c.api_key:
        worker.api_key = c.api_key
    if args.lease is not None:
        worker.lease_duration = args.lease
    if args.drain_timeout is not None:
        worker.drain_timeout = args.drain_timeout
    if args.identity is not None:
        worker.identity = args.identity
    types = args.types or worker.job_types
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mediajobs.worker").setLevel(logging.DEBUG if args.verbose >= 2 else logging.INFO)
    logging.getLogger("mediajobs.worker.jobs").setLevel(logging.INFO if args.verbose else logging.WARNING)
    root = getattr(worker, "storage_root", None) if args.media else None
    _note(f"mediajobs worker: running {', '.join(types)} from {worker.target} (concurrency {worker.concurrency}, "
          f"lease {worker.lease_duration:g}s{f', storage root {root}' if root else ''}); "
          "SIGTERM or Ctrl-C stops, a second one at once")
    worker.run_sync(types=types)
    busy = worker.busy_threads
    _note(f"mediajobs worker: stopped ({worker.stats['completed']} completed, {worker.stats['failed']} failed, "
          f"{worker.stats['released']} released)")
    if busy:
        # Threads cannot be interrupted and would keep the process alive:
        # their jobs are already released, so leave without them.
        _note(f"mediajobs worker: leaving {busy} handler thread(s) behind")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
