"""`mediajobs jobs`: create, inspect, change, wait for and watch jobs."""
from __future__ import annotations

import argparse
import threading
from typing import Any

import grpc

from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import resources_pb2 as res

from .. import render
from ..client import MediaJobsClient
from ..watch import RetryInfo
from .common import (
    PRIORITIES,
    STATES,
    _TERMINAL_JOB_STATES,
    _ExtendCsv,
    Handler,
    _add_quiet,
    _fields,
    _group,
    _iso_time,
    _json_object,
    _key_value,
    _leaf,
    _non_negative,
    _note,
    _out,
    _positive,
    _print_job,
    _priority,
    _state,
)


def add_parser(groups: Any) -> None:
    actions = _group(groups, "jobs", "create, inspect, change and watch jobs",
                     "Create, inspect, change and watch jobs.")

    def leaf(name: str, handler: Handler, help: str, description: str) -> argparse.ArgumentParser:
        return _leaf(actions, name, handler, help, description)

    p = leaf("create", cmd_create, "create a job",
             "Create a PENDING job and print it. Custom job types are allowed (see `mediajobs jobs types`).\n\n"
             "  mediajobs jobs create --type TRANSCODE --template mp4-h264-360p --params '{\"source\": \"incoming/a.mov\"}'\n"
             "  JOB=$(mediajobs jobs create --type CHECKSUM --params '{\"path\": \"a.mov\"}' -q)   # just the id")
    p.add_argument("--type", required=True, help="job type, e.g. TRANSCODE or a custom type")
    p.add_argument("--template", default="", metavar="ID",
                   help="job template whose outputs the server copies into params.outputs "
                        "(see `mediajobs templates list`)")
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
    _add_quiet(p, "job")

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
    _add_quiet(p, "new job")

    p = leaf("delete", cmd_delete, "delete jobs",
             "Delete jobs with their metadata and problems, all or nothing.")
    p.add_argument("ids", nargs="+", metavar="ID", help="job ids")
    p.add_argument("--allow-missing", action="store_true", help="ignore ids that do not exist")
    p.add_argument("--force", action="store_true", help="also delete RUNNING and ABORTING jobs")
    p.add_argument("--request-id", default="", metavar="ID", help="idempotency key")

    p = leaf("wait", cmd_wait, "wait until jobs have finished",
             "Wait until every job ID has finished (SUCCEEDED, FAILED or ABORTED), then print\n"
             "them: state, result or error. It follows the jobs on one WatchJobs stream (a\n"
             "snapshot first, so a job that has already finished ends the wait at once) and\n"
             "resumes by itself after a lost connection.\n"
             "Exit status: 0 when every job SUCCEEDED, 1 when one did not (or was deleted, or\n"
             "--timeout passed first), 2 for usage errors.\n\n"
             "  mediajobs jobs wait 01HA255YE6H6DEETJ5M6595ZDA --timeout 600\n"
             "  mediajobs jobs wait $JOB1 $JOB2 --json        # one document: {jobs}")
    p.add_argument("ids", nargs="+", metavar="ID", help="job ids")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after SECONDS (exit 1)")

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
        template_id=args.template,
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


def cmd_wait(args: argparse.Namespace, c: MediaJobsClient) -> int:
    if args.timeout is not None and args.timeout <= 0:
        args.parser.error("--timeout must be positive")
    ids = list(dict.fromkeys(args.ids))
    jobs = {job_id: c.get_job(job_id) for job_id in ids}  # NOT_FOUND (exit 1) for a wrong id
    pending = {job_id for job_id, job in jobs.items() if job.state not in _TERMINAL_JOB_STATES}
    deleted: set[str] = set()
    if pending:
        # A snapshot first: a job that finished since it was read ends the wait at once.
        watch = c.watch_jobs(job_ids=sorted(pending), send_initial_snapshot=True, include_progress=False)
        timer = threading.Timer(args.timeout, watch.cancel) if args.timeout is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            for msg in watch:
                for ev in msg.events:
                    job_id = ev.job.id
                    if job_id not in pending:
                        continue
                    if ev.type == res.JobEvent.DELETED:
                        deleted.add(job_id)
                        pending.discard(job_id)
                    elif ev.job.state in _TERMINAL_JOB_STATES:
                        pending.discard(job_id)
                if not pending:
                    break
        except KeyboardInterrupt:
            return 130
        finally:
            if timer is not None:
                timer.cancel()
            watch.close()
        for job_id in ids:
            if job_id not in deleted and jobs[job_id].state not in _TERMINAL_JOB_STATES:
                jobs[job_id] = c.get_job(job_id)  # the whole job, result and error included
    if pending:
        _note(f"mediajobs: jobs wait: --timeout {args.timeout:g} s passed; not finished: {', '.join(sorted(pending))}")
        return 1
    done = [jobs[job_id] for job_id in ids if job_id not in deleted]
    if args.json:
        _out(render.dumps({"jobs": [render.message_to_dict(j) for j in done]}))
    else:
        _out("\n\n".join(render.job_details(j) for j in done))
    status = 0
    for job_id in ids:
        if job_id in deleted:
            _note(f"mediajobs: job {job_id} was deleted before it finished")
            status = 1
        elif jobs[job_id].state != res.Job.SUCCEEDED:
            job = jobs[job_id]
            why = f": {render.status_text(job.error)}" if job.HasField("error") else ""
            _note(f"mediajobs: job {job_id} is {render.state_name(job.state)}{why}")
            status = 1
    return status


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
