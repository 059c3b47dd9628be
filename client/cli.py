"""`mediajobs`: the command line of the mediajobs control plane.

    mediajobs jobs create --type TRANSCODE --template mp4-h264-360p --params '{"source": "incoming/a.mov"}'
    mediajobs jobs list --state PENDING RUNNING --order-by "priority desc"
    mediajobs jobs wait 01HA255YE6H6DEETJ5M6595ZDA    # until it has finished; exit 0 if it SUCCEEDED
    mediajobs jobs watch --json
    mediajobs worker myhandlers --concurrency 16      # run job handlers from myhandlers.py
    mediajobs entries add incoming/clip.mov --template mp4-h264-720p   # a path under the storage root
    mediajobs mediainfo 01HA255YE6H6DEETJ5M6595ZDA
    mediajobs templates list
    mediajobs worker --media                          # the reference media worker, default storage root

Global options (--server, --json) may come before or after the subcommand.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import pathlib
import shutil
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import grpc
from google.protobuf import json_format

from mediajobs.v1 import job_service_pb2 as svc
from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import resources_pb2 as res

from . import render
from .client import DEFAULT_TARGET, MediaJobsClient, parse_entry_state, parse_priority, parse_state
from .errors import MediaJobsError, RevisionCompactedError
from .watch import JobWatch, RetryInfo
from .worker import Worker

ENV_SERVER = "MEDIAJOBS_SERVER"
ENV_STORAGE_ROOT = "MEDIAJOBS_STORAGE_ROOT"
ENV_DATA_DIR = "MEDIAJOBS_DATA_DIR"
PRIORITIES = "LOWEST, LOW, MEDIUM, HIGH, HIGHEST"
STATES = "PENDING, RUNNING, ABORTING, SUCCEEDED, FAILED, ABORTED"
ENTRY_STATES = "PENDING, PROCESSING, READY, ERROR"

Handler = Callable[[argparse.Namespace, MediaJobsClient], int]


def version_text() -> str:
    """`mediajobs <version>`, as `mediajobs --version` prints it (and
    `mediajobs-server --version`)."""
    try:
        return f"mediajobs {importlib.metadata.version('mediajobs')}"
    except importlib.metadata.PackageNotFoundError:  # a bare checkout, not installed
        return "mediajobs unknown"


def default_storage_root() -> Path:
    """The storage root the server uses when it is given none, on this machine
    and with this environment: $MEDIAJOBS_STORAGE_ROOT, else DATA_DIR/storage
    with DATA_DIR = $MEDIAJOBS_DATA_DIR, else $XDG_DATA_HOME/mediajobs, else
    ~/.local/share/mediajobs (server/config.py; tests check they agree)."""
    root = os.environ.get(ENV_STORAGE_ROOT)
    if root:
        return Path(root).expanduser()
    data_dir = os.environ.get(ENV_DATA_DIR)
    if not data_dir:
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        data_dir = str(Path(base) / "mediajobs")
    return Path(data_dir).expanduser() / "storage"


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


def _entry_state(s: str) -> int:
    try:
        return parse_entry_state(s)
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
                   help="print JSON (one document; JSON lines for jobs watch, entries add and mediainfo) "
                        "instead of tables")


def _leaf(actions: Any, name: str, handler: Handler, help: str, description: str) -> argparse.ArgumentParser:
    """An ACTION parser of a command group (`mediajobs jobs create`)."""
    p: argparse.ArgumentParser = actions.add_parser(name, help=help, description=description, formatter_class=_FMT)
    _add_globals(p, sub=True)
    p.set_defaults(func=handler, parser=p)
    return p


def _group(groups: Any, name: str, help: str, description: str) -> Any:
    """A command group (`mediajobs entries`); returns its ACTION subparsers."""
    g = groups.add_parser(name, help=help, description=description, formatter_class=_FMT)
    _add_globals(g, sub=True)
    return g.add_subparsers(dest="action", metavar="ACTION", required=True)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mediajobs",
        description="Command line for the mediajobs gRPC control plane.",
        epilog="Run `mediajobs COMMAND --help` and `mediajobs COMMAND ACTION --help` for their options.\n\n"
               "--json prints the API's JSON form with the .proto field names, except that 64-bit\n"
               "integers (revision, total_size, size_bytes, duration_ms) are JSON numbers.\n"
               "Errors go to stderr as `mediajobs: CODE: message` with the offending fields.\n"
               "Exit status: 0 on success, 2 for usage errors and INVALID_ARGUMENT, 1 for any other failure.",
        formatter_class=_FMT,
    )
    _add_globals(ap, sub=False)
    ap.add_argument("--version", action="version", version=version_text(), help="print the version and exit")
    groups = ap.add_subparsers(dest="group", metavar="COMMAND", required=True)
    jobs = groups.add_parser("jobs", help="create, inspect, change and watch jobs",
                             description="Create, inspect, change and watch jobs.", formatter_class=_FMT)
    _add_globals(jobs, sub=True)
    actions = jobs.add_subparsers(dest="action", metavar="ACTION", required=True)

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

    _add_entries_parser(groups)
    _add_mediainfo_parser(groups)
    _add_templates_parser(groups)
    _add_cuepoints_parser(groups)
    _add_worker_parser(groups)
    return ap


ENTRIES_ADD_DESCRIPTION = """\
Create a media entry from FILE and follow its processing until the entry is
READY or ERROR: an EXTRACT_MEDIA job probes the source, then one TRANSCODE job
per output of the template encodes a flavor asset (a rendition).

FILE must be a file under the server's storage root (the server's
--storage-root, default ~/.local/share/mediajobs/storage): nothing is
uploaded, the server reads it where it is. A relative FILE is a path
relative to the storage root (`incoming/clip.mov`), wherever you run the
command; an absolute FILE is sent as a file:// URL (symlinks kept as given),
and must lie under the storage root as the server sees it. The server refuses
a file outside its storage root (INVALID_ARGUMENT, exit 2; PERMISSION_DENIED
through a symlink, exit 1) and a missing one (NOT_FOUND, exit 1), naming the
storage root it looked in.

While following, stderr shows a progress bar (on a terminal) or a progress
line per step and per 10%. The overall progress is the mean over the steps
(the extraction and one transcode per flavor asset), a finished step counting
100%. At the end the entry is summed up on stdout: state, how long processing
took, the media duration and every flavor asset (name, state, size, path).

With --json, stdout gets one JSON object per line:
  {"entry_id": ID, "state": "PROCESSING", "progress": 42, "step": "TRANSCODE 720p",
   "job_id": ID, "job_state": "RUNNING"}
and the last line is the final entry ({"id": ID, "state": "READY", "flavor_assets": [...], ...}).
With -q, nothing but the entry's id is printed (at the end; errors still go to stderr).

Ctrl-C stops following (exit 130); the entry keeps processing on the server.
Exit status: 0 when the entry is READY (with --no-follow: once it is created),
1 when it ends in ERROR (its error is printed) or on another failure, 2 for
usage errors and INVALID_ARGUMENT.

Examples:
  mediajobs entries add incoming/clip.mov
  mediajobs entries add incoming/clip.mov --name "Launch clip" \\
      --template mp4-h264-720p --tag launch --tag 2024 --reference-id cms-4711
  mediajobs entries add /srv/media/incoming/clip.mov     # server started with --storage-root /srv/media
  ENTRY=$(mediajobs entries add incoming/clip.mov -q)    # just the id, once it is READY
  mediajobs entries add incoming/clip.mov --json | tail -n 1    # the final entry as JSON
  mediajobs entries add incoming/clip.mov --no-follow"""


def _add_entries_parser(groups: Any) -> None:
    actions = _group(groups, "entries", "add, inspect and delete media entries",
                     "Media entries: a source file under the server's storage root and the flavor assets\n"
                     "(renditions) its processing makes of it.\n\n"
                     "  mediajobs entries add incoming/clip.mov     # create and follow to READY\n"
                     "  mediajobs entries list --state ERROR\n"
                     "  mediajobs entries get 01HA255YE6H6DEETJ5M6595ZDA\n"
                     "  mediajobs entries delete 01HA255YE6H6DEETJ5M6595ZDA")

    p = _leaf(actions, "add", cmd_entries_add, "create an entry from a file and follow its processing",
              ENTRIES_ADD_DESCRIPTION)
    p.add_argument("file", metavar="FILE",
                   help="the source file: a path relative to the server's storage root, or an absolute path "
                        "under it")
    p.add_argument("--name", help="display name (default: FILE's base name)")
    p.add_argument("--template", default="", metavar="ID",
                   help="job template to transcode to (default: the server's, mp4-h264-720p); "
                        "see `mediajobs templates list`")
    p.add_argument("--tag", action="append", default=[], metavar="TAG", help="a tag; repeatable")
    p.add_argument("--reference-id", default="", metavar="ID", help="your own id for the entry (filterable)")
    p.add_argument("--description", default="", metavar="TEXT", help="free text")
    p.add_argument("--priority", type=_priority, metavar="PRIORITY",
                   help=f"priority of its processing jobs, one of {PRIORITIES} (default MEDIUM)")
    p.add_argument("--request-id", default="", metavar="ID",
                   help="idempotency key: repeating the command with the same ID returns the same entry")
    p.add_argument("--no-follow", action="store_true", help="print the created entry and exit at once")
    _add_quiet(p, "entry")

    p = _leaf(actions, "get", cmd_entries_get, "show one entry",
              "Show one entry with its flavor assets.\n\n  mediajobs entries get 01HA255YE6H6DEETJ5M6595ZDA --json")
    p.add_argument("id", help="entry id")

    p = _leaf(actions, "list", cmd_entries_list, "list entries",
              "List entries, newest first, one page (default 100) unless --all or --limit.\n"
              "With --json the output is one document: {entries, next_page_token}.\n\n"
              "  mediajobs entries list --state PROCESSING,ERROR\n"
              "  mediajobs entries list --tag launch --all --json")
    p.add_argument("--state", action=_ExtendCsv, convert=_entry_state, default=[], metavar="STATE",
                   help=f"only entries in these states ({ENTRY_STATES}); repeatable")
    p.add_argument("--tag", default="", help="only entries carrying this tag")
    p.add_argument("--reference-id", default="", metavar="ID", help="only entries with this reference id")
    p.add_argument("--template", default="", metavar="ID", help="only entries made with this template")
    p.add_argument("--limit", type=_positive, metavar="N", help="at most N entries, fetching pages as needed")
    p.add_argument("--page-size", type=_non_negative, default=0, metavar="N",
                   help="entries per request (default 100, at most 1000)")
    p.add_argument("--page-token", default="", metavar="TOKEN", help="continue a previous listing")
    p.add_argument("--all", action="store_true", help="fetch every page")

    p = _leaf(actions, "delete", cmd_entries_delete, "delete an entry",
              "Delete an entry with its media info and cue points; its processing jobs that have not\n"
              "finished are aborted. The files in the storage root (source and flavor assets) stay.\n\n"
              "  mediajobs entries delete 01HA255YE6H6DEETJ5M6595ZDA")
    p.add_argument("id", help="entry id")
    p.add_argument("--allow-missing", action="store_true", help="succeed when the entry does not exist")


def _add_mediainfo_parser(groups: Any) -> None:
    p = groups.add_parser(
        "mediainfo", help="show what the probe found in an entry's files",
        description="Show the media-info records of an entry: its source first, then its flavor assets.\n"
                    "Each record is a block with the container (format, duration, bit rate), the video\n"
                    "stream (codec, WxH, fps, bit rate, display aspect ratio, rotation, scan type, max GOP,\n"
                    "fast start), the audio stream (codec, channels, sampling rate, bit rate), the file size\n"
                    "and the library that wrote the file. With --json: one record per line, every field.\n\n"
                    "  mediajobs mediainfo 01HA255YE6H6DEETJ5M6595ZDA\n"
                    "  mediajobs mediainfo 01HA255YE6H6DEETJ5M6595ZDA --flavor-asset 720p --json",
        formatter_class=_FMT)
    _add_globals(p, sub=True)
    p.add_argument("entry_id", metavar="ENTRY_ID", help="entry id")
    p.add_argument("--flavor-asset", default="", metavar="ID",
                   help="only this flavor asset's records: its id or output name (e.g. 720p), or `source`")
    p.set_defaults(func=cmd_mediainfo, parser=p)


def _add_templates_parser(groups: Any) -> None:
    actions = _group(groups, "templates", "list, show, create and delete job templates",
                     "Job templates (conversion profiles): the outputs an entry is transcoded to.\n\n"
                     "  mediajobs templates list\n"
                     "  mediajobs templates get mp4-h264-720p\n"
                     "  mediajobs templates create web-small @web-small.json")
    _leaf(actions, "list", cmd_templates_list, "list job templates",
          "List job templates: built-ins first, then the others by id.\n"
          "With --json the output is one document: {job_templates}.")

    p = _leaf(actions, "get", cmd_templates_get, "show one job template",
              "Show a job template and its outputs.\n\n  mediajobs templates get mp4-h264-720p")
    p.add_argument("id", help="template id")

    p = _leaf(actions, "create", cmd_templates_create, "create a job template",
              "Create a job template from a JobTemplate in its JSON form and print it.\n\n"
              "  mediajobs templates create web-small @web-small.json\n"
              "  mediajobs templates create audio-only '{\"display_name\": \"AAC only\",\n"
              "      \"outputs\": [{\"name\": \"audio\", \"container\": \"mp4\", \"audio_codec\": \"aac\"}]}'\n\n"
              "ID: 4-63 characters, lowercase letters, digits and `-`, starting with a letter.")
    p.add_argument("id", help="the new template's id")
    p.add_argument("template", type=_json_object, metavar="JSON",
                   help="the template as a JSON object (display_name, description, outputs, labels), "
                        "or @FILE to read it from a file")

    p = _leaf(actions, "delete", cmd_templates_delete, "delete a job template",
              "Delete a job template (built-in templates cannot be deleted). Entries made with it keep\n"
              "their outputs.\n\n  mediajobs templates delete web-small")
    p.add_argument("id", help="template id")
    p.add_argument("--allow-missing", action="store_true", help="succeed when the template does not exist")


CUE_POINT_TYPES = [n for n in mres.CuePoint.Type.keys() if n != "TYPE_UNSPECIFIED"]


def _add_cuepoints_parser(groups: Any) -> None:
    actions = _group(groups, "cuepoints", "import and export cue points as XML",
                     "Cue points (chapters, ads, codes, thumbs, events) in Kaltura-style XML\n"
                     "(<scenes><scene-annotation entryId=...>...; the README describes the format).\n\n"
                     "  mediajobs cuepoints import chapters.xml\n"
                     "  mediajobs cuepoints export --entry 01J... > chapters.xml")
    p = _leaf(actions, "import", cmd_cuepoints_import, "create cue points from XML files",
              "Send each FILE to ImportCuePoints (at most 8 MiB and 10,000 cue points per file).\n"
              "Valid items are created; every invalid one is listed with its index, line and entry,\n"
              "and the exit status is then 1. A document refused as a whole (not XML, a DTD, too\n"
              "big or too deep) creates nothing and exits 2.\n"
              "With --json: one ImportCuePointsResponse per file, one per line.\n\n"
              "  mediajobs cuepoints import chapters.xml ads.xml\n"
              "  mediajobs cuepoints export --entry 01J... > c.xml && mediajobs cuepoints import c.xml")
    p.add_argument("files", nargs="+", metavar="FILE", help="XML documents ('-' reads standard input)")

    p = _leaf(actions, "export", cmd_cuepoints_export, "write matching cue points as XML",
              "Export matching cue points (ExportCuePoints), ordered by entry, start time and id.\n"
              "One page (up to --page-size, at most 10,000 cue points and 8 MiB) is one XML document\n"
              "that `cuepoints import` takes back. When everything fits in one page it goes to\n"
              "stdout (or --output FILE); when it does not, give --output-dir and each page is\n"
              "written there as cuepoints-0001.xml, cuepoints-0002.xml, ...\n\n"
              "  mediajobs cuepoints export --entry 01J... --type AD --type CODE > cues.xml\n"
              "  mediajobs cuepoints export --tag chapter --from-ms 60000 --to-ms 120000 -o window.xml\n"
              "  mediajobs cuepoints export --output-dir all-cues/")
    p.add_argument("--entry", action="append", default=[], metavar="ID", help="only this entry's (repeatable)")
    p.add_argument("--type", action="append", default=[], choices=CUE_POINT_TYPES, metavar="TYPE",
                   help=f"only this kind (repeatable): {', '.join(CUE_POINT_TYPES)}")
    p.add_argument("--tag", action="append", default=[], metavar="TAG", help="only cue points with this tag (repeatable: any of them)")
    p.add_argument("--from-ms", type=int, default=0, metavar="MS", help="only those starting at or after MS")
    p.add_argument("--to-ms", type=int, default=0, metavar="MS", help="only those starting at or before MS")
    p.add_argument("--page-size", type=_positive, default=10_000, metavar="N",
                   help="cue points per document (default and maximum 10,000)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", metavar="FILE", help="write the document to FILE instead of stdout")
    out.add_argument("--output-dir", metavar="DIR", help="write every page to DIR/cuepoints-NNNN.xml")


WORKER_DESCRIPTION = """\
Run job handlers written in Python: lease jobs of their types from the server,
run them (at most --concurrency at a time) and report the outcome, until
SIGTERM or Ctrl-C. Give exactly one of MODULE or --media.

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


def _add_worker_parser(groups: Any) -> None:
    p = groups.add_parser("worker", help="run job handlers from a Python module, or the media worker",
                          description=WORKER_DESCRIPTION, formatter_class=_FMT)
    p.add_argument("--server", metavar="HOST:PORT", default=argparse.SUPPRESS,
                   help=f"server address (default: env {ENV_SERVER}, else the Worker's own target, "
                        f"else {DEFAULT_TARGET})")
    p.add_argument("module", metavar="MODULE[:ATTR]", nargs="?",
                   help="where the handlers are (see above); not with --media")
    p.add_argument("--media", action="store_true",
                   help="run the reference media worker (EXTRACT_MEDIA, TRANSCODE) instead of a MODULE")
    p.add_argument("--storage-root", metavar="DIR",
                   help=f"with --media: the server's storage root (default: env {ENV_STORAGE_ROOT}, else the "
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


# -- output helpers -----------------------------------------------------------------


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _note(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _add_quiet(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-q", "--quiet", action="store_true",
                   help=f"print only the {what}'s id (for scripts: ID=$(mediajobs ... -q))")


def _print_job(args: argparse.Namespace, job: Any, fields: Sequence[str] | None = None) -> int:
    if getattr(args, "quiet", False):
        _out(job.id)
    elif args.json:
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


# -- media entries -----------------------------------------------------------------

ENTRY_JOB_TYPES = ("EXTRACT_MEDIA", "TRANSCODE")
# Processing jobs carry metadata entry_id=<entry> and entry_step=extract or
# entry_step=flavor:<flavor asset id>.
ENTRY_KEY, STEP_KEY, FLAVOR_STEP = "entry_id", "entry_step", "flavor:"
_TERMINAL_JOB_STATES = frozenset({res.Job.SUCCEEDED, res.Job.FAILED, res.Job.ABORTED})
_DONE_ENTRY_STATES = frozenset({mres.Entry.READY, mres.Entry.ERROR})


class EntryProgress:
    """What is known of one entry's processing, from its jobs' watch events
    and the entry as last read.

    The steps are the extraction and one transcode per flavor asset. A step
    counts the progress of its latest job (a re-run replaces the job before
    it), 100 once that job SUCCEEDED or the flavor asset is READY; the overall
    progress is the mean over the steps.
    """

    def __init__(self, entry: mres.Entry) -> None:
        self.entry = entry
        self.jobs: dict[str, res.Job] = {}  # the latest version of every job of the entry seen
        self.extract_job_id = ""
        self.flavor_job_ids: dict[str, str] = {}  # flavor asset id -> its latest TRANSCODE job seen
        self.last_job: res.Job | None = None
        self._looked_up: set[str] = set()

    def _flavor_of(self, job: res.Job) -> mres.FlavorAsset | None:
        """The flavor asset a TRANSCODE job renders: from its entry_step, else
        from the entry as last read."""
        step = job.metadata.get(STEP_KEY, "")
        fa_id = step[len(FLAVOR_STEP):] if step.startswith(FLAVOR_STEP) else ""
        for fa in self.entry.flavor_assets:
            if (fa_id and fa.id == fa_id) or (not fa_id and fa.job_id == job.id):
                return fa
        return None

    def belongs(self, job: res.Job) -> bool:
        """Whether `job` is one of the entry's processing jobs."""
        return (job.metadata.get(ENTRY_KEY) == self.entry.id or job.id in self.entry.job_ids
                or any(fa.job_id == job.id for fa in self.entry.flavor_assets))

    def track(self, job: res.Job) -> None:
        self.jobs[job.id] = job
        self.last_job = job
        self._place(job)

    def _place(self, job: res.Job) -> None:
        # ULIDs sort by creation: a re-run replaces the job before it.
        if job.type == "EXTRACT_MEDIA" and job.id >= self.extract_job_id:
            self.extract_job_id = job.id
        elif job.type == "TRANSCODE":
            fa = self._flavor_of(job)
            if fa is not None and job.id >= self.flavor_job_ids.get(fa.id, ""):
                self.flavor_job_ids[fa.id] = job.id

    def needs_lookup(self, job: res.Job) -> bool:
        """True (once per job) for a TRANSCODE job that cannot be placed on a
        flavor asset of the entry as last read: re-read the entry."""
        if job.type != "TRANSCODE" or self._flavor_of(job) is not None or job.id in self._looked_up:
            return False
        self._looked_up.add(job.id)
        return True

    def set_entry(self, entry: mres.Entry) -> None:
        """The entry as just read (it may name TRANSCODE jobs already seen)."""
        self.entry = entry
        for job in self.jobs.values():
            self._place(job)

    def _job_percent(self, job_id: str) -> int:
        job = self.jobs.get(job_id)
        if job is None:
            return 0
        return 100 if job.state == res.Job.SUCCEEDED else max(0, min(100, job.progress))

    @property
    def done(self) -> bool:
        return self.entry.state in _DONE_ENTRY_STATES

    @property
    def percent(self) -> int:
        if self.entry.state == mres.Entry.READY:
            return 100
        if self.extract_job_id:
            steps = [self._job_percent(self.extract_job_id)]
        else:  # no extraction seen; transcodes exist only after it succeeded
            steps = [100 if any(fa.job_id for fa in self.entry.flavor_assets) else 0]
        for fa in self.entry.flavor_assets:
            if fa.state == mres.FlavorAsset.NOT_APPLICABLE:
                continue  # skipped (the source is smaller): not part of the work
            job_id = self.flavor_job_ids.get(fa.id) or fa.job_id
            steps.append(100 if fa.state == mres.FlavorAsset.READY else self._job_percent(job_id))
        return sum(steps) // len(steps)

    @property
    def state(self) -> str:
        """The entry's state; PROCESSING rather than PENDING once a job of it
        has started (the entry itself is re-read only at milestones)."""
        if self.entry.state == mres.Entry.PENDING and any(
                j.state != res.Job.PENDING for j in self.jobs.values()):
            return "PROCESSING"
        return render.entry_state_name(self.entry.state)

    def step(self, job: res.Job) -> str:
        """`EXTRACT_MEDIA`, `TRANSCODE 720p` (the flavor asset's output name)."""
        if job.type == "TRANSCODE":
            fa = self._flavor_of(job)
            return f"TRANSCODE {fa.output_name}" if fa is not None else "TRANSCODE"
        return job.type

    def record(self) -> dict[str, Any]:
        """One progress line of `entries add --json`."""
        rec: dict[str, Any] = {"entry_id": self.entry.id, "state": self.state, "progress": self.percent}
        job = self.last_job
        if job is not None and not self.done:
            rec.update(step=self.step(job), job_id=job.id, job_state=render.state_name(job.state))
        return rec


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class EntryProgressDisplay:
    """The progress output of `entries add`: with --json one JSON line per
    change on stdout; otherwise on stderr, a bar rewritten in place when it
    is a terminal, else a line when the entry's state changes, when a job
    reaches a state it had not shown yet, and per 10% of overall progress
    (not per progress report: parallel transcodes would interleave)."""

    def __init__(self, json_lines: bool, quiet: bool = False) -> None:
        self.json_lines = json_lines and not quiet
        self.quiet = quiet
        self.tty = not json_lines and not quiet and _isatty(sys.stderr)
        self._last: dict[str, Any] | None = None
        self._last_line: tuple[str, int] | None = None  # (entry state, progress // 10) of the last plain line
        self._job_states_shown: set[tuple[str, str]] = set()
        self._bar_len = 0  # characters of the bar on the terminal now

    def show(self, rec: dict[str, Any]) -> None:
        if rec == self._last or self.quiet:
            return
        self._last = rec
        if self.json_lines:
            _out(render.dumps_line(rec))
            return
        step = rec.get("step", "")
        if step and rec.get("job_state"):
            step = f"{step} {rec['job_state']}"
        if self.tty:
            line = f"{render.progress_bar(rec['progress'])} {rec['progress']:>3}%  {rec['state']}  {step}".rstrip()
            line = line[:max(20, shutil.get_terminal_size().columns - 1)]
            sys.stderr.write("\r" + line.ljust(self._bar_len))
            sys.stderr.flush()
            self._bar_len = len(line)
            return
        line_key = (rec["state"], rec["progress"] // 10)
        job_key = (rec.get("job_id", ""), rec.get("job_state", ""))
        if line_key != self._last_line or job_key not in self._job_states_shown:
            self._last_line = line_key
            self._job_states_shown.add(job_key)
            job = f" (job {rec['job_id']})" if rec.get("job_id") else ""
            _note(f"entry {rec['entry_id']}: {rec['state']} {rec['progress']}% {step}".rstrip() + job)

    def end_line(self) -> None:
        """Leave the bar's line (before other output)."""
        if self._bar_len:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._bar_len = 0

    def note(self, text: str) -> None:
        self.end_line()
        _note(text)

    def info(self, text: str) -> None:
        """A note that -q leaves out."""
        if not self.quiet:
            self.note(text)


def follow_entry(c: MediaJobsClient, entry: mres.Entry, display: EntryProgressDisplay) -> mres.Entry:
    """Follow an entry's processing until it is READY or ERROR; returns it.

    One WatchJobs stream of the processing job types, from the revision of
    the entry's first job (its EXTRACT_MEDIA job) so nothing is missed, keeps
    the events of this entry's jobs. The entry is re-read when one of its jobs
    ends, when a TRANSCODE job shows up that it did not list yet, and on each
    progress bookmark (an idle stream) as a safety net.
    """
    progress = EntryProgress(entry)
    start_revision = 0
    if entry.job_ids:
        first_job = c.get_job(entry.job_ids[0])
        progress.track(first_job)
        start_revision = first_job.revision
    display.show(progress.record())

    def on_retry(info: RetryInfo) -> None:
        if info.attempt == 0:
            why = f"{info.error.code.name}: {info.error.message}" if info.error else "the server ended the stream"
            display.note(f"mediajobs: lost the watch ({why}); reconnecting to {c.target}")

    while True:
        watch = c.watch_jobs(types=ENTRY_JOB_TYPES, start_revision=start_revision, on_retry=on_retry)
        try:
            _follow_watch(c, watch, progress, display)
            return progress.entry
        except RevisionCompactedError:
            # The job's history is gone (an old entry): re-read it, then follow from now.
            display.note(f"mediajobs: the history of entry {entry.id}'s jobs is compacted; following from now")
            progress.set_entry(c.get_entry(entry.id))
            if progress.done:
                return progress.entry
            start_revision = 0
        finally:
            watch.close()


def _follow_watch(c: MediaJobsClient, watch: JobWatch, progress: EntryProgress,
                  display: EntryProgressDisplay) -> None:
    """Consume `watch` until the entry is done."""
    for msg in watch:
        reread = not msg.events  # a progress bookmark: the stream is idle
        for ev in msg.events:
            job = ev.job
            if not progress.belongs(job):
                continue
            progress.track(job)
            if job.state in _TERMINAL_JOB_STATES or progress.needs_lookup(job):
                reread = True
            display.show(progress.record())
        if reread:
            progress.set_entry(c.get_entry(progress.entry.id))
            display.show(progress.record())
            if progress.done:
                return


_SOURCE_HINT = ("  FILE must be a file under the server's storage root (nothing is uploaded): a path relative "
                "to the storage root, or an absolute path under it; it was sent as {uri}")
_LOCAL_HINT = ("  {file} exists in the current directory, but a relative FILE is relative to the server's "
               "storage root: give its absolute path if it is under the storage root, or move it there")


def source_uri_of(file: str) -> str:
    """What `entries add FILE` sends as the source: a relative FILE as it is
    (the server resolves it under its storage root), an absolute one (or
    `~/...`) as a file:// URL, percent-encoded ('%', '#', spaces survive)."""
    expanded = os.path.expanduser(file)
    if not os.path.isabs(expanded):
        return file
    # No realpath: the server judges symlinks itself.
    return pathlib.Path(os.path.normpath(expanded)).as_uri()


def cmd_entries_add(args: argparse.Namespace, c: MediaJobsClient) -> int:
    source_uri = source_uri_of(args.file)
    try:
        entry = c.create_entry(
            args.name if args.name is not None else os.path.basename(os.path.normpath(args.file)),
            source_uri=source_uri,
            template_id=args.template,
            description=args.description,
            tags=args.tag,
            reference_id=args.reference_id,
            priority=args.priority,
            request_id=args.request_id,
        )
    except MediaJobsError as e:
        if e.code not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                          grpc.StatusCode.NOT_FOUND):
            raise
        _note(render.error_text(e, c.target))
        if e.code != grpc.StatusCode.NOT_FOUND or e.reason == "SOURCE_NOT_FOUND":
            _note(_SOURCE_HINT.format(uri=source_uri))
            if source_uri == args.file and os.path.isfile(args.file):
                _note(_LOCAL_HINT.format(file=args.file))
        return 2 if e.code == grpc.StatusCode.INVALID_ARGUMENT else 1
    if args.no_follow:
        return _print_entry(args, entry)
    display = EntryProgressDisplay(args.json, quiet=args.quiet)
    if not entry.HasField("error") and entry.state not in _DONE_ENTRY_STATES:
        display.info(f"mediajobs: created entry {entry.id} ({entry.name}); following its processing "
                     "(Ctrl-C stops following, not the processing)")
        try:
            entry = follow_entry(c, entry, display)
        except KeyboardInterrupt:
            display.note(f"mediajobs: stopped following entry {entry.id}; it keeps processing on the server "
                         f"(`mediajobs entries get {entry.id}` shows it)")
            return 130
    display.end_line()
    if args.quiet:
        _out(entry.id)
    elif args.json:
        _out(render.dumps_line(render.message_to_dict(entry)))
    else:
        _out(render.entry_summary(entry))
    if entry.state == mres.Entry.ERROR:
        why = render.status_text(entry.error) if entry.HasField("error") else "no error recorded"
        _note(f"mediajobs: entry {entry.id} failed: {why}")
        return 1
    return 0


def _print_entry(args: argparse.Namespace, entry: mres.Entry) -> int:
    if getattr(args, "quiet", False):
        _out(entry.id)
    elif args.json:
        _out(render.dumps(render.message_to_dict(entry)))
    else:
        _out(render.entry_details(entry))
    return 0


def cmd_entries_get(args: argparse.Namespace, c: MediaJobsClient) -> int:
    return _print_entry(args, c.get_entry(args.id))


def cmd_entries_list(args: argparse.Namespace, c: MediaJobsClient) -> int:
    entries: list[mres.Entry] = []
    token = args.page_token
    while True:
        size = args.page_size
        if args.limit is not None:
            remaining = args.limit - len(entries)
            if remaining <= 0:
                break
            size = min(remaining, size or 1000)
        page = c.list_entries(states=args.state, tag=args.tag, reference_id=args.reference_id,
                              template_id=args.template, page_size=size, page_token=token)
        entries.extend(page.entries)
        token = page.next_page_token
        if not token or not (args.all or args.limit is not None):
            break
    if args.json:
        doc: dict[str, Any] = {"entries": [render.message_to_dict(e) for e in entries]}
        if token:
            doc["next_page_token"] = token
        _out(render.dumps(doc))
        return 0
    _out(render.entries_table(entries))
    if token:
        _note(f"-- {len(entries)} entries; more with --page-token {token} (or --all)")
    return 0


def cmd_entries_delete(args: argparse.Namespace, c: MediaJobsClient) -> int:
    c.delete_entry(args.id, allow_missing=args.allow_missing)
    if args.json:
        _out(render.dumps({"deleted_id": args.id}))
    else:
        _out(f"deleted entry {args.id}")
    return 0


def cmd_mediainfo(args: argparse.Namespace, c: MediaJobsClient) -> int:
    entry = c.get_entry(args.entry_id)  # also: NOT_FOUND for a wrong id rather than an empty list
    names = {fa.id: fa.output_name for fa in entry.flavor_assets}
    flavor = args.flavor_asset
    by_name = {fa.output_name: fa.id for fa in entry.flavor_assets}
    if flavor and flavor != "source" and flavor not in names and flavor in by_name:
        flavor = by_name[flavor]
    infos = list(c.iter_media_infos(entry.id, flavor_asset_id=flavor))
    # The source first, then the flavor assets in the entry's order (sort is stable: oldest first within each).
    order = {fa.id: i + 1 for i, fa in enumerate(entry.flavor_assets)}
    infos.sort(key=lambda mi: order.get(mi.flavor_asset_id, len(order) + 1) if mi.flavor_asset_id else 0)
    if args.json:
        for mi in infos:
            _out(render.dumps_line(render.message_to_dict(mi)))
        return 0
    if not infos:
        which = f" (flavor asset {args.flavor_asset})" if flavor else ""
        _note(f"mediajobs: no media info for entry {entry.id}{which} yet "
              f"(the entry is {render.entry_state_name(entry.state)})")
        return 0
    blocks = []
    for mi in infos:
        if mi.flavor_asset_id:
            title = f"flavor asset {names.get(mi.flavor_asset_id, '?')} ({mi.flavor_asset_id})"
        else:
            title = f"source {entry.source_uri}".rstrip()
        blocks.append(render.media_info_details(mi, f"{title}  [media info {mi.id}]"))
    _out("\n\n".join(blocks))
    return 0


# -- job templates -------------------------------------------------------------------


def cmd_templates_list(args: argparse.Namespace, c: MediaJobsClient) -> int:
    templates = list(c.iter_job_templates())
    if args.json:
        _out(render.dumps({"job_templates": [render.message_to_dict(t) for t in templates]}))
    else:
        _out(render.templates_table(templates))
    return 0


def _print_template(args: argparse.Namespace, template: mres.JobTemplate) -> int:
    if args.json:
        _out(render.dumps(render.message_to_dict(template)))
    else:
        _out(render.template_details(template))
    return 0


def cmd_templates_get(args: argparse.Namespace, c: MediaJobsClient) -> int:
    return _print_template(args, c.get_job_template(args.id))


def cmd_templates_create(args: argparse.Namespace, c: MediaJobsClient) -> int:
    template = mres.JobTemplate()
    try:
        json_format.ParseDict(args.template, template)
    except json_format.ParseError as e:
        args.parser.error(f"JSON: not a JobTemplate: {e}")
    return _print_template(args, c.create_job_template(args.id, template))


def cmd_templates_delete(args: argparse.Namespace, c: MediaJobsClient) -> int:
    c.delete_job_template(args.id, allow_missing=args.allow_missing)
    if args.json:
        _out(render.dumps({"deleted_id": args.id}))
    else:
        _out(f"deleted template {args.id}")
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


# -- cue points ------------------------------------------------------------------------


def _read_document(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    with open(name, "rb") as f:
        return f.read()


def cmd_cuepoints_import(args: argparse.Namespace, c: MediaJobsClient) -> int:
    status = 0
    for name in args.files:
        try:
            data = _read_document(name)
        except OSError as e:
            _note(f"mediajobs: cannot read {name}: {e.strerror}")
            return 1
        try:
            resp = c.import_cue_points(data)
        except MediaJobsError:
            _note(f"mediajobs: {name}: nothing was imported")
            raise
        if args.json:
            _out(render.dumps(render.message_to_dict(resp)))
        else:
            _out(f"{name}: created {len(resp.cue_points)} cue point(s)"
                 + (f", {len(resp.errors)} item(s) refused:" if resp.errors else ""))
            for err in resp.errors:
                where = f"item {err.index}, line {err.line}" + (f", entry {err.entry_id}" if err.entry_id else "")
                _out(f"  {where}: {err.message}")
        if resp.errors:
            status = 1
    return status


def cmd_cuepoints_export(args: argparse.Namespace, c: MediaJobsClient) -> int:
    types = [mres.CuePoint.Type.Value(t) for t in args.type]
    pages: list[bytes] = []
    token = ""
    total = 0
    while True:
        resp = c.export_cue_points(entry_ids=args.entry, types=types, start_time_from_ms=args.from_ms,
                                   start_time_to_ms=args.to_ms, tags=args.tag, page_size=args.page_size,
                                   page_token=token)
        total += resp.count
        if args.output_dir:
            os.makedirs(args.output_dir, exist_ok=True)
            path = os.path.join(args.output_dir, f"cuepoints-{len(pages) + 1:04d}.xml")
            with open(path, "wb") as f:
                f.write(resp.xml)
        pages.append(b"" if args.output_dir else resp.xml)
        token = resp.next_page_token
        if not token:
            break
        if not args.output_dir:
            _note(f"mediajobs: the matching cue points need more than one document (at most "
                  f"{args.page_size} cue points and 8 MiB each); give --output-dir DIR to write every "
                  "page (nothing was written)")
            return 2
    if args.output_dir:
        _note(f"mediajobs: wrote {total} cue point(s) in {len(pages)} file(s) to {args.output_dir}")
    elif args.output:
        with open(args.output, "wb") as f:
            f.write(pages[0])
        _note(f"mediajobs: wrote {total} cue point(s) to {args.output}")
    else:
        sys.stdout.buffer.write(pages[0])
        sys.stdout.flush()
    return 0


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


def _media_worker(args: argparse.Namespace, c: MediaJobsClient) -> Worker | None:
    """The reference media worker for `worker --media` (None: it failed to
    import, which has been reported)."""
    if args.storage_root:
        root = Path(args.storage_root).expanduser().absolute()
        if not root.is_dir():
            args.parser.error(f"--storage-root {args.storage_root}: not a directory")
    else:
        root = default_storage_root().absolute()
        if not root.is_dir():
            args.parser.error(
                f"the default storage root {root} is not a directory: start the server on this machine first "
                f"(it creates it), or give the server's storage root with --storage-root DIR (or env "
                f"{ENV_STORAGE_ROOT})")
    try:
        # Imported here, so the rest of the CLI works without PyAV.
        from .media_worker import build_media_worker  # type: ignore[import-not-found,unused-ignore]
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
    if args.media and args.module:
        args.parser.error(f"give either MODULE or --media, not both (got MODULE {args.module!r})")
    if not args.media and not args.module:
        args.parser.error("give MODULE (a module with job handlers) or --media (the reference media worker)")
    if args.storage_root and not args.media:
        args.parser.error("--storage-root goes with --media")
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
