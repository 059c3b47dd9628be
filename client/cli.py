"""`mediajobs`: the command line of the mediajobs control plane.

    mediajobs jobs create --type TRANSCODE --priority HIGH --meta src=a.mov --params '{"input": "a.mov"}'
    mediajobs jobs list --state PENDING RUNNING --order-by "priority desc"
    mediajobs jobs watch --json
    mediajobs worker myhandlers --concurrency 16      # run job handlers from myhandlers.py

Global options (--server, --json) may come before or after the subcommand.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.util
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import grpc

from mediajobs.v1 import job_service_pb2 as svc

from . import render
from .client import DEFAULT_TARGET, MediaJobsClient, parse_priority, parse_state
from .errors import MediaJobsError
from .watch import RetryInfo
from .worker import Worker

ENV_SERVER = "MEDIAJOBS_SERVER"
PRIORITIES = "LOWEST, LOW, MEDIUM, HIGH, HIGHEST"
STATES = "PENDING, RUNNING, ABORTING, SUCCEEDED, FAILED, ABORTED"

Handler = Callable[[argparse.Namespace, MediaJobsClient], int]


# -- argument types --------------------------------------------------------------


def _priority(s: str) -> int:
    try:
        return parse_priority(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _state(s: str) -> int:
    try:
        return parse_state(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _key_value(s: str) -> tuple[str, str]:
    key, sep, value = s.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{s!r} is not KEY=VALUE")
    return key, value


def _json_object(s: str) -> dict[str, Any]:
    text = s
    if s.startswith("@"):
        try:
            with open(s[1:], encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise argparse.ArgumentTypeError(f"cannot read {s[1:]}: {e.strerror}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"input\": \"a.mov\"}'")
    return obj


def _iso_time(s: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{s!r} is not an ISO 8601 time such as 2024-05-01, 2024-05-01T12:00:00Z or 2024-05-01T14:00+02:00"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _non_negative(s: str) -> int:
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if n < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return n


def _positive(s: str) -> int:
    n = _non_negative(s)
    if n == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def _fields(s: str) -> list[str]:
    return [f.strip() for f in s.split(",") if f.strip()]


class _ExtendCsv(argparse.Action):
    """Repeatable option taking one or more values, each also comma-separated:
    `--state PENDING RUNNING`, `--state PENDING,RUNNING` and
    `--state PENDING --state RUNNING` are the same."""

    def __init__(self, option_strings: Sequence[str], dest: str, convert: Callable[[str], Any] = str,
                 **kw: Any) -> None:
        kw.setdefault("nargs", "+")
        super().__init__(option_strings, dest, **kw)
        self.convert = convert

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        items = list(getattr(namespace, self.dest, None) or [])
        for v in values:
            for part in str(v).split(","):
                if part.strip():
                    try:
                        items.append(self.convert(part.strip()))
                    except argparse.ArgumentTypeError as e:
                        raise argparse.ArgumentError(self, str(e)) from None
        setattr(namespace, self.dest, items)


# -- parser ----------------------------------------------------------------------

_FMT = argparse.RawDescriptionHelpFormatter


def _add_globals(p: argparse.ArgumentParser, sub: bool) -> None:
    # On subcommands the defaults are suppressed, so a global option given
    # before the subcommand is not reset by the subcommand's parser.
    p.add_argument("--server", metavar="HOST:PORT", default=argparse.SUPPRESS if sub else None,
                   help=f"server address (default: env {ENV_SERVER}, else {DEFAULT_TARGET})")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS if sub else False,
                   help="print JSON (one document; JSON lines for watch) instead of tables")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mediajobs",
        description="Command line for the mediajobs gRPC control plane.",
        epilog="Run `mediajobs jobs ACTION --help` for an action's options.\n\n"
               "--json prints the API's JSON form with the .proto field names, except that 64-bit\n"
               "integers (revision, total_size) are JSON numbers.\n"
               "Errors go to stderr as `mediajobs: CODE: message` with the offending fields.\n"
               "Exit status: 0 on success, 2 for usage errors and INVALID_ARGUMENT, 1 for any other failure.",
        formatter_class=_FMT,
    )
    _add_globals(ap, sub=False)
    groups = ap.add_subparsers(dest="group", metavar="COMMAND", required=True)
    jobs = groups.add_parser("jobs", help="create, inspect, change and watch jobs",
                             description="Create, inspect, change and watch jobs.", formatter_class=_FMT)
    _add_globals(jobs, sub=True)
    actions = jobs.add_subparsers(dest="action", metavar="ACTION", required=True)

    def leaf(name: str, handler: Handler, help: str, description: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help, description=description, formatter_class=_FMT)
        _add_globals(p, sub=True)
        p.set_defaults(func=handler, parser=p)
        return p

    p = leaf("create", cmd_create, "create a job",
             "Create a PENDING job and print it. Custom job types are allowed (see `mediajobs jobs types`).")
    p.add_argument("--type", required=True, help="job type, e.g. TRANSCODE or a custom type")
    p.add_argument("--priority", type=_priority, metavar="PRIORITY",
                   help=f"one of {PRIORITIES} (default MEDIUM)")
    p.add_argument("--meta", type=_key_value, nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="job metadata; repeatable")
    p.add_argument("--params", type=_json_object, metavar="JSON",
                   help="worker parameters as a JSON object, or @FILE to read it from a file")
    p.add_argument("--creator", default="", help="who creates the job (default: anonymous)")
    p.add_argument("--max-attempts", type=_non_negative, default=0, metavar="N",
                   help="how many leases the job may use, 1-100 (default 3)")
    p.add_argument("--request-id", default="", metavar="ID",
                   help="idempotency key: repeating the command with the same ID returns the same job")

    p = leaf("get", cmd_get, "show one job", "Show one job.")
    p.add_argument("id", help="job id")
    p.add_argument("--fields", type=_fields, metavar="F1,F2",
                   help="only these Job fields, e.g. id,state,progress")
    p.add_argument("--metadata", action="store_true", help="include the job's metadata")

    p = leaf("list", cmd_list, "list jobs",
             "List jobs, one page (default 100) unless --all or --limit.\n"
             "Times are ISO 8601 (a time without an offset is UTC); ranges include both ends.\n"
             "With --json the output is one document: {jobs, next_page_token, total_size, revision};\n"
             "`mediajobs jobs watch --from-revision <revision + 1>` continues from the listing with no gap.")
    p.add_argument("--state", action=_ExtendCsv, convert=_state, default=[], metavar="STATE",
                   help=f"only jobs in these states ({STATES}); repeatable")
    p.add_argument("--type", action=_ExtendCsv, default=[], metavar="TYPE", help="only jobs of these types")
    p.add_argument("--meta", type=_key_value, nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="only jobs whose metadata has every KEY=VALUE")
    p.add_argument("--creator", default="", help="only jobs created by this creator")
    for opt in ("created", "started", "ended"):
        for end in ("from", "to"):
            p.add_argument(f"--{opt}-{end}", type=_iso_time, metavar="TIME",
                           help=f"only jobs {opt} {'at or after' if end == 'from' else 'at or before'} TIME")
    p.add_argument("--order-by", default="", metavar="ORDER",
                   help='e.g. "priority desc, create_time"; fields: id, type, state, priority, create_time, '
                        "start_time, end_time (default: id, i.e. creation order)")
    p.add_argument("--metadata", action="store_true", help="include each job's metadata (visible with --json)")
    p.add_argument("--limit", type=_positive, metavar="N", help="at most N jobs, fetching pages as needed")
    p.add_argument("--page-size", type=_non_negative, default=0, metavar="N",
                   help="jobs per request (default 100, at most 1000)")
    p.add_argument("--page-token", default="", metavar="TOKEN", help="continue a previous listing")
    p.add_argument("--all", action="store_true", help="fetch every page")

    p = leaf("update", cmd_update, "change a job's priority", "Change a job's priority; the queue order follows.")
    p.add_argument("id", help="job id")
    p.add_argument("--priority", type=_priority, required=True, metavar="PRIORITY", help=f"one of {PRIORITIES}")

    p = leaf("abort", cmd_abort, "abort a job",
             "Abort a job: PENDING -> ABORTED at once, RUNNING -> ABORTING until its worker stops.")
    p.add_argument("id", help="job id")
    p.add_argument("--reason", default="", help="why (kept on the job)")
    p.add_argument("--skip-cleanup", action="store_true", help="ask the worker to skip its cleanup steps")
    p.add_argument("--request-id", default="", metavar="ID", help="idempotency key")

    p = leaf("rerun", cmd_rerun, "run a job again as a new job",
             "Create a new PENDING job from an existing job's definition and print it.")
    p.add_argument("id", help="id of the job to run again")
    p.add_argument("--priority", type=_priority, metavar="PRIORITY",
                   help=f"priority of the new job, one of {PRIORITIES} (default: the old job's)")
    p.add_argument("--request-id", default="", metavar="ID", help="idempotency key")

    p = leaf("delete", cmd_delete, "delete jobs",
             "Delete jobs with their metadata and problems, all or nothing.")
    p.add_argument("ids", nargs="+", metavar="ID", help="job ids")
    p.add_argument("--allow-missing", action="store_true", help="ignore ids that do not exist")
    p.add_argument("--force", action="store_true", help="also delete RUNNING and ABORTING jobs")
    p.add_argument("--request-id", default="", metavar="ID", help="idempotency key")

    leaf("types", cmd_types, "list job types", "List built-in job types, then custom types in use.")

    p = leaf("problems", cmd_problems, "list job problems",
             "List unresolved job problems (e.g. LEASE_EXPIRED), oldest first, for all jobs or one.")
    p.add_argument("--job", default="", metavar="ID", help="only this job's problems")
    p.add_argument("--include-resolved", action="store_true", help="also list resolved problems")

    p = leaf("watch", cmd_watch, "stream job changes",
             "Print job changes as they are committed, until Ctrl-C (exit 0) or --count events.\n"
             "The watch resumes by itself after a lost connection or a server restart, from the\n"
             "revision after the last one it received (retrying with a jittered back-off of\n"
             "0.1 s doubling to 5 s): no change is skipped or printed twice. Without\n"
             "--from-revision it starts now. It stops with an error (exit 1) when the history\n"
             "it needs has been compacted (OUT_OF_RANGE), exit 2 for a bad filter.\n\n"
             "With --json each line is one JSON object:\n"
             '  {"revision": N, "type": "CREATED|UPDATED|DELETED|SNAPSHOT", "job_id": ID,\n'
             '   "event_time": ..., "previous_state": ..., "job": {...}}\n'
             'and, with --progress, {"revision": N, "type": "PROGRESS", "snapshot_complete": BOOL}.')
    p.add_argument("--job", action=_ExtendCsv, default=[], metavar="ID", help="only these jobs")
    p.add_argument("--type", action=_ExtendCsv, default=[], metavar="TYPE", help="only jobs of these types")
    p.add_argument("--state", action=_ExtendCsv, convert=_state, default=[], metavar="STATE",
                   help="only changes into or out of these states")
    p.add_argument("--from-revision", type=_non_negative, default=0, metavar="N",
                   help="start at revision N (inclusive), e.g. a listing's revision + 1 (default: now)")
    p.add_argument("--snapshot", action="store_true",
                   help="first print every matching job as a SNAPSHOT event (not with --from-revision)")
    p.add_argument("--progress", action="store_true",
                   help="also print progress bookmarks (the server sends them on idle streams)")
    p.add_argument("--progress-interval", type=float, metavar="SECONDS",
                   help="how often an idle stream gets a progress bookmark (0.1-600, server default 10)")
    p.add_argument("--count", type=_positive, metavar="N", help="exit after N events (SNAPSHOT events count; progress bookmarks do not)")

    _add_worker_parser(groups)
    return ap


WORKER_DESCRIPTION = """\
Run job handlers written in Python: lease jobs of their types from the server,
run them (at most --concurrency at a time) and report the outcome, until
SIGTERM or Ctrl-C.

MODULE is a dotted module name importable from the current directory (or a
path to a .py file). The handlers are taken from, in this order:
  MODULE:ATTR      the Worker instance (or {"TYPE": handler} dict) named ATTR
  MODULE           its Worker instance named `worker`, else its dict HANDLERS

  # handlers.py: run with `mediajobs worker handlers`
  def transcode(ctx):                      # ctx: mediajobs.client.JobContext
      ctx.report_progress(50, "encoding")
      return {"output": ctx.params["input"] + ".mp4"}   # -> SUCCEEDED with this result
  HANDLERS = {"TRANSCODE": transcode}

A handler returns a dict (or None) to succeed, raises
mediajobs.client.RetryableError to be retried, raises anything else to fail
the job; `async def` handlers run on the event loop, plain functions in
threads. Options given here override the Worker's own settings.

Stopping: the first SIGTERM/SIGINT stops leasing, waits up to --drain-timeout
for running handlers, sends their results and releases the jobs still
running so another worker takes them at once; a second signal releases them
at once. Exit status 0 after a stop, 2 for a bad MODULE or option, 1 when the
server refuses the worker."""


def _add_worker_parser(groups: Any) -> None:
    p = groups.add_parser("worker", help="run job handlers from a Python module",
                          description=WORKER_DESCRIPTION, formatter_class=_FMT)
    p.add_argument("--server", metavar="HOST:PORT", default=argparse.SUPPRESS,
                   help=f"server address (default: env {ENV_SERVER}, else the Worker's own target, "
                        f"else {DEFAULT_TARGET})")
    p.add_argument("module", metavar="MODULE[:ATTR]", help="where the handlers are (see above)")
    p.add_argument("--types", action=_ExtendCsv, nargs=1, default=[], metavar="T1,T2",
                   help="serve only these of the module's job types (default: all it has handlers for)")
    p.add_argument("--concurrency", type=_positive, metavar="N",
                   help="jobs run at a time, also the thread pool size for sync handlers (default: the "
                        "Worker's, 8 for a HANDLERS dict); no-op or I/O-bound async handlers like 100-256")
    p.add_argument("--lease", type=float, metavar="SECONDS",
                   help="lease length to ask for, 1-600; heartbeats extend it every third of it "
                        "(default: the Worker's, 30)")
    p.add_argument("--drain-timeout", type=float, metavar="SECONDS",
                   help="on stop, how long running handlers may finish (default: the Worker's, 30)")
    p.add_argument("--identity", metavar="TEXT", help="who is leasing, shown on the jobs (default HOST:PID)")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="log one line per job (-vv: debug logging)")
    p.set_defaults(func=cmd_worker, parser=p)


# -- output helpers -----------------------------------------------------------------


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _note(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _print_job(args: argparse.Namespace, job: Any, fields: Sequence[str] | None = None) -> int:
    if args.json:
        _out(render.dumps(render.message_to_dict(job)))
    else:
        _out(render.job_details(job, fields))
    return 0


# -- commands ------------------------------------------------------------------------


def cmd_create(args: argparse.Namespace, c: MediaJobsClient) -> int:
    job = c.create_job(
        args.type,
        priority=args.priority,
        metadata=dict(args.meta),
        params=args.params,
        creator=args.creator,
        max_attempts=args.max_attempts,
        request_id=args.request_id,
    )
    return _print_job(args, job)


def cmd_get(args: argparse.Namespace, c: MediaJobsClient) -> int:
    job = c.get_job(args.id, fields=args.fields, include_metadata=args.metadata)
    return _print_job(args, job, args.fields)


def _list_filters(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        states=args.state,
        types=args.type,
        metadata=dict(args.meta),
        creator=args.creator,
        create_time_from=args.created_from,
        create_time_to=args.created_to,
        start_time_from=args.started_from,
        start_time_to=args.started_to,
        end_time_from=args.ended_from,
        end_time_to=args.ended_to,
        order_by=args.order_by,
        include_metadata=args.metadata,
    )


def cmd_list(args: argparse.Namespace, c: MediaJobsClient) -> int:
    filters = _list_filters(args)
    first: svc.ListJobsResponse | None = None
    jobs: list[Any] = []
    token = args.page_token
    while True:
        size = args.page_size
        if args.limit is not None:
            remaining = args.limit - len(jobs)
            if remaining <= 0:
                break
            size = min(remaining, size or 1000)
        page = c.list_jobs(page_size=size, page_token=token, **filters)
        first = first or page
        jobs.extend(page.jobs)
        token = page.next_page_token
        if not token or not (args.all or args.limit is not None):
            break
    assert first is not None
    total, revision = first.total_size, first.revision
    if args.json:
        doc: dict[str, Any] = {"jobs": [render.message_to_dict(j) for j in jobs]}
        if token:
            doc["next_page_token"] = token
        doc["total_size"] = total
        doc["revision"] = revision
        _out(render.dumps(doc))
        return 0
    _out(render.jobs_table(jobs))
    if token:
        _note(f"-- {len(jobs)} of {total} jobs; more with --page-token {token} (or --all)")
    return 0


def cmd_update(args: argparse.Namespace, c: MediaJobsClient) -> int:
    return _print_job(args, c.update_priority(args.id, args.priority))


def cmd_abort(args: argparse.Namespace, c: MediaJobsClient) -> int:
    job = c.abort_job(args.id, reason=args.reason, skip_cleanup=args.skip_cleanup, request_id=args.request_id)
    return _print_job(args, job)


def cmd_rerun(args: argparse.Namespace, c: MediaJobsClient) -> int:
    return _print_job(args, c.rerun_job(args.id, priority=args.priority, request_id=args.request_id))


def cmd_delete(args: argparse.Namespace, c: MediaJobsClient) -> int:
    deleted = c.delete_jobs(args.ids, allow_missing=args.allow_missing, force=args.force, request_id=args.request_id)
    if args.json:
        _out(render.dumps({"deleted_ids": deleted}))
    else:
        _out(f"deleted {len(deleted)} job{'' if len(deleted) == 1 else 's'}" + "".join(f"\n{i}" for i in deleted))
    return 0


def cmd_types(args: argparse.Namespace, c: MediaJobsClient) -> int:
    types = c.list_job_types()
    if args.json:
        _out(render.dumps({"job_types": [render.message_to_dict(t) for t in types]}))
    else:
        _out(render.types_table(types))
    return 0


def cmd_problems(args: argparse.Namespace, c: MediaJobsClient) -> int:
    problems = list(c.iter_job_problems(job_id=args.job, include_resolved=args.include_resolved))
    if args.json:
        _out(render.dumps({"problems": [render.message_to_dict(p) for p in problems]}))
    else:
        _out(render.problems_table(problems))
    return 0


def cmd_watch(args: argparse.Namespace, c: MediaJobsClient) -> int:
    if args.snapshot and args.from_revision:
        args.parser.error("--snapshot cannot be combined with --from-revision")
    if args.progress_interval is not None and not 0.1 <= args.progress_interval <= 600:
        args.parser.error("--progress-interval must be between 0.1 and 600 seconds")

    last_note = ""
    interrupted = received = False

    def on_retry(info: RetryInfo) -> None:
        # One line per outage (and when the cause changes), not one per attempt.
        nonlocal last_note, interrupted
        why = f"{info.error.code.name}: {info.error.message}" if info.error else "the server ended the stream"
        if not received and info.attempt == 0 and info.error and info.error.code == grpc.StatusCode.UNAVAILABLE:
            _note(render.error_text(info.error, c.target))
            _note("mediajobs: watch: retrying until the server is reachable (Ctrl-C to stop)")
        elif info.attempt == 0 or why != last_note:
            where = f"from revision {info.next_revision}" if info.next_revision is not None else "with a new snapshot"
            _note(f"mediajobs: watch interrupted ({why}); reconnecting to {c.target} {where}")
        last_note, interrupted = why, True

    watch = c.watch_jobs(
        job_ids=args.job,
        types=args.type,
        states=args.state,
        start_revision=args.from_revision,
        send_initial_snapshot=args.snapshot,
        progress_interval=args.progress_interval,
        include_progress=args.progress,
        on_retry=on_retry,
    )
    events = 0
    try:
        if not args.json:
            _out(render.WATCH_HEADER)
        for msg in watch:
            received = True
            if interrupted:
                _note(f"mediajobs: watch resumed at revision {msg.revision}")
                interrupted, last_note = False, ""
            if args.json:
                _out(render.dumps_line(render.watch_message_to_dict(msg)))
            else:
                _out(render.watch_line(msg))
            if msg.events:
                events += 1
                if args.count is not None and events >= args.count:
                    break
    except KeyboardInterrupt:
        return 0
    finally:
        watch.close()
    return 0


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


def cmd_worker(args: argparse.Namespace, c: MediaJobsClient) -> int:
    for opt, value, low, high in (("--lease", args.lease, 1, 600), ("--drain-timeout", args.drain_timeout, 0, None)):
        if value is not None and (value < low or (high is not None and value > high)):
            args.parser.error(f"{opt} must be {'between %s and %s' % (low, high) if high else 'at least %s' % low}")
    try:
        worker = load_worker(args.module)
    except _WorkerLoadError as e:
        args.parser.error(str(e))
    except Exception:  # the module itself failed while importing
        _note(f"mediajobs: worker: importing {args.module.partition(':')[0]} failed:")
        _note(traceback.format_exc().rstrip())
        return 1
    unknown = [t for t in args.types if t not in worker.job_types]
    if unknown:
        args.parser.error(f"no handler for {', '.join(unknown)} in {args.module} (it has {', '.join(worker.job_types)})")
    if getattr(args, "server", None) or os.environ.get(ENV_SERVER):
        worker.target = c.target
    if args.concurrency is not None:
        worker.concurrency = args.concurrency
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
    _note(f"mediajobs worker: running {', '.join(types)} from {worker.target} (concurrency {worker.concurrency}, "
          f"lease {worker.lease_duration:g}s); SIGTERM or Ctrl-C stops, a second one at once")
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


# -- entry point ----------------------------------------------------------------------


def _exit_status(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    _note(str(e.code))
    return 1


def main(argv: Sequence[str] | None = None, *, channel: grpc.Channel | None = None) -> int:
    """Run the CLI; returns the exit status. `channel` replaces the channel to
    --server (tests inject a scripted one)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as e:
        return _exit_status(e)
    server = args.server or os.environ.get(ENV_SERVER) or DEFAULT_TARGET
    client = MediaJobsClient(server, channel=channel)
    try:
        return int(args.func(args, client))
    except MediaJobsError as e:
        _note(render.error_text(e, server))
        return 2 if e.code == grpc.StatusCode.INVALID_ARGUMENT else 1
    except SystemExit as e:
        return _exit_status(e)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 0
    finally:
        client.close()
