"""`mediajobs bulk`: CSV bulk uploads of entries: upload a file and follow
its records being applied, inspect, abort and re-run uploads, and read their
logs and files (the failed records, ready to fix and upload again)."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
from typing import Any, BinaryIO, Iterable

import grpc

from mediajobs.v1 import bulk_resources_pb2 as bres

from .. import render
from ..client import MediaJobsClient, UploadRetry, parse_bulk_state, parse_result_status
from ..errors import MediaJobsError
from ..watch import RetryInfo
from .common import (
    _ExtendCsv,
    _add_quiet,
    _group,
    _iso_time,
    _leaf,
    _non_negative,
    _note,
    _out,
    _positive,
    _priority,
    PRIORITIES,
)
from .entries import _isatty

BulkUpload = bres.BulkUpload
Result = bres.BulkUploadResult
BULK_STATES = ", ".join(n for n in BulkUpload.State.keys() if n != "STATE_UNSPECIFIED")
RESULT_STATUSES = "OK, ERROR, IN_PROGRESS, NOT_PROCESSED"
FAILED_STATUSES = (Result.ERROR, Result.NOT_PROCESSED)
_TERMINAL = frozenset({BulkUpload.SUCCEEDED, BulkUpload.PARTIALLY_SUCCEEDED, BulkUpload.FAILED,
                       BulkUpload.ABORTED, BulkUpload.EXPIRED, BulkUpload.VALIDATED})

BULK_UPLOAD_DESCRIPTION = """\
Upload a CSV file of entries (one record per entry to add, update, delete or
replace) and follow its records being applied until the upload has ended.

The file's size and sha256 are computed first and checked by the server. A
file of at most 256 KiB goes in one call; a larger one is streamed in 1 MiB
pieces, each with its crc32, and a broken stream resumes by itself from the
bytes the server has stored (up to 8 retries in a row without progress).
The server checks the whole file before any record is applied: a file it
refuses as a whole (unknown columns, SSH key columns, a bad encoding, ...)
is reported with the reason and the offending columns (exit 2).

The records are then applied by the server in batches; every record gets
exactly one result: OK, ERROR (with the column at fault), IN_PROGRESS (its
entry is being processed: the upload waits for it, WAITING_FOR_OBJECTS) or
NOT_PROCESSED (aborted, --max-errors reached, or a failed --validate-first).

While uploading and applying, stderr shows a progress bar (on a terminal) or
a line per state and per 10% of the bytes, then of the records. At the end
one summary line goes to stdout:
  bulk upload ID (#7) PARTIALLY_SUCCEEDED after 2.1 s: 3 records: 2 ok, 1 error

With --json, stdout gets one JSON object per line:
  {"upload_id": ID, "state": "UPLOADING", "progress": 40, "uploaded_bytes": N, "total_bytes": N}
  {"upload_id": ID, "state": "PROCESSING", "progress": 42, "total_records": N, "applied": N,
   "ok": N, "error": N, "in_progress": N, "not_processed": N}
and the last line is the final upload ({"id": ID, "state": ..., "counts": {...}, ...}).
With -q, only the upload's id is printed (at the end; errors still go to stderr).

Ctrl-C stops following (exit 130); the upload goes on on the server (an
upload interrupted while its file was written stays UPLOADING: continue it
with --resume ID, or drop it with `mediajobs bulk abort ID`).
Exit status: 0 when every record ended OK (--validate-only: every record is
valid; --no-wait: once the file is complete), 1 when a record failed or was
not processed, or the upload FAILED or was ABORTED, 2 for usage errors and a
file refused as a whole (INVALID_ARGUMENT).

Examples:
  mediajobs bulk upload catalogue.csv
  mediajobs bulk upload catalogue.csv --template mp4-h264-720p --max-errors 100
  mediajobs bulk upload catalogue.csv --validate-only       # check every record, create nothing
  mediajobs bulk upload catalogue.csv --validate-first      # all or nothing
  mediajobs bulk upload export.csv --delimiter ';' --encoding windows-1252 --ignore-unknown-columns
  ID=$(mediajobs bulk upload catalogue.csv --no-wait -q)     # just the id, once the file is stored
  mediajobs bulk upload catalogue.csv --json | tail -n 1    # the final upload as JSON
  mediajobs bulk upload catalogue.csv --resume $ID          # finish writing an interrupted upload"""


def add_parser(groups: Any) -> None:
    actions = _group(groups, "bulk", "upload CSV files of entries; follow, inspect, abort and re-run them",
                     "CSV bulk uploads of entries: every record of the file adds, updates, deletes or\n"
                     "replaces one entry, and gets one result (OK, ERROR, IN_PROGRESS, NOT_PROCESSED).\n\n"
                     "  mediajobs bulk upload catalogue.csv               # upload and follow to the end\n"
                     "  mediajobs bulk list --state PARTIALLY_SUCCEEDED,FAILED\n"
                     "  mediajobs bulk get 01HA255YE6H6DEETJ5M6595ZDA\n"
                     "  mediajobs bulk log 01HA255YE6H6DEETJ5M6595ZDA --failed\n"
                     "  mediajobs bulk file 01HA255YE6H6DEETJ5M6595ZDA --failed-only -o fix.csv\n"
                     "  mediajobs bulk upload fix.csv                     # once fixed")

    p = _leaf(actions, "upload", cmd_bulk_upload, "upload a CSV file and follow its records being applied",
              BULK_UPLOAD_DESCRIPTION)
    p.add_argument("file", metavar="FILE", help="the CSV file to upload (read on this machine)")
    p.add_argument("--template", default="", metavar="ID",
                   help="job template of the records' entries (a record's own template column wins)")
    p.add_argument("--validate-only", action="store_true",
                   help="validate every record and give each a result; create nothing (ends VALIDATED; "
                        "`mediajobs bulk rerun ID --all` applies it)")
    p.add_argument("--validate-first", action="store_true",
                   help="validate every record before applying any; one bad record fails the upload and "
                        "nothing is created")
    p.add_argument("--max-errors", type=_non_negative, default=0, metavar="N",
                   help="stop after N records failed; the rest are NOT_PROCESSED (default 0: no limit)")
    p.add_argument("--delimiter", default="", metavar="D",
                   help="the field delimiter: ',' (default), ';', '|' or 'tab'")
    p.add_argument("--encoding", default="", metavar="E", help="utf-8 (default) or windows-1252")
    p.add_argument("--header", choices=("auto", "present", "absent"), default="",
                   help="whether the first record is a header (default auto: a `*` first value is a Kaltura "
                        "header, a record of known column names a plain header, else the records are positional)")
    p.add_argument("--ignore-unknown-columns", action="store_true",
                   help="keep columns mediajobs does not know in each result's plugins_data instead of "
                        "refusing the file")
    p.add_argument("--name", default=None, metavar="NAME", help="file name to record (default: FILE's base name)")
    p.add_argument("--uploaded-by", default="", metavar="WHO",
                   help="who uploads (free text; also the default owner of the entries)")
    p.add_argument("--description", default="", metavar="TEXT", help="free text")
    p.add_argument("--priority", type=_priority, metavar="PRIORITY",
                   help=f"priority of the processing jobs the records create, one of {PRIORITIES} (default LOW)")
    p.add_argument("--request-id", default="", metavar="ID",
                   help="idempotency key: repeating the command with the same ID returns the same upload "
                        "(default: a new one per run)")
    p.add_argument("--resume", default="", metavar="ID",
                   help="finish writing FILE to the UPLOADING upload ID (after an interrupted run) instead of "
                        "starting a new one; the other upload options are ID's")
    p.add_argument("--no-wait", action="store_true",
                   help="exit once the file is stored and the upload QUEUED, without following it")
    _add_quiet(p, "upload")

    p = _leaf(actions, "get", cmd_bulk_get, "show one upload",
              "Show one upload: state, file (name, size, sha256), record counts, options, the job\n"
              "applying it, warnings and, when the file was refused or the upload aborted, the error.\n\n"
              "  mediajobs bulk get 01HA255YE6H6DEETJ5M6595ZDA\n"
              "  mediajobs bulk get 01HA255YE6H6DEETJ5M6595ZDA --json")
    p.add_argument("id", help="bulk upload id")

    p = _leaf(actions, "list", cmd_bulk_list, "list uploads",
              "List uploads, newest first, one page (default 50) unless --all or --limit.\n"
              "With --json the output is one document: {bulk_uploads, next_page_token, total_size}.\n\n"
              "  mediajobs bulk list --state PROCESSING,WAITING_FOR_OBJECTS\n"
              "  mediajobs bulk list --uploaded-by alice --created-from 2024-05-01 --all --json")
    p.add_argument("--state", action=_ExtendCsv, convert=_bulk_state, default=[], metavar="STATE",
                   help=f"only uploads in these states ({BULK_STATES}); repeatable")
    p.add_argument("--uploaded-by", default="", metavar="WHO", help="only uploads with this uploaded_by")
    p.add_argument("--created-from", type=_iso_time, metavar="TIME", help="only uploads created at or after TIME")
    p.add_argument("--created-to", type=_iso_time, metavar="TIME", help="only uploads created before TIME")
    p.add_argument("--limit", type=_positive, metavar="N", help="at most N uploads, fetching pages as needed")
    p.add_argument("--page-size", type=_non_negative, default=0, metavar="N",
                   help="uploads per request (default 50, at most 1000)")
    p.add_argument("--page-token", default="", metavar="TOKEN", help="continue a previous listing")
    p.add_argument("--all", action="store_true", help="fetch every page")

    p = _leaf(actions, "watch", cmd_bulk_watch, "follow an upload until it has ended",
              "Follow an upload's records being applied (the progress display of `bulk upload`) until\n"
              "it has ended, then print its summary line; resumes by itself after a lost connection.\n"
              "Exit status as `bulk upload`: 0 when every record ended OK, 1 otherwise.\n\n"
              "  mediajobs bulk watch 01HA255YE6H6DEETJ5M6595ZDA\n"
              "  mediajobs bulk watch 01HA255YE6H6DEETJ5M6595ZDA --json | tail -n 1")
    p.add_argument("id", help="bulk upload id")
    _add_quiet(p, "upload")

    p = _leaf(actions, "abort", cmd_bulk_abort, "abort an upload",
              "Abort an upload: an UPLOADING or QUEUED one is ABORTED at once, one being applied stops\n"
              "at its next batch (ABORTING, then ABORTED). Records not reached are NOT_PROCESSED (re-run\n"
              "them with `mediajobs bulk rerun ID --not-processed`). The processing jobs of its entries\n"
              "that have not finished are aborted too, unless --keep-child-jobs.\n\n"
              "  mediajobs bulk abort 01HA255YE6H6DEETJ5M6595ZDA --reason 'wrong file'")
    p.add_argument("id", help="bulk upload id")
    p.add_argument("--reason", default="", help="why (kept in the upload's error)")
    p.add_argument("--keep-child-jobs", action="store_true",
                   help="leave the processing jobs of the upload's entries running")
    p.add_argument("--request-id", default="", metavar="ID", help="idempotency key")

    p = _leaf(actions, "rerun", cmd_bulk_rerun, "apply the failed records of an ended upload again",
              "Apply again, in place, the failed records of an upload that has ended (same id, same\n"
              "record numbers; records that succeeded are not touched), e.g. once the missing source\n"
              "files are in place. Default: the ERROR and NOT_PROCESSED records. A VALIDATED upload\n"
              "(--validate-only) is applied with --all.\n\n"
              "  mediajobs bulk rerun 01HA255YE6H6DEETJ5M6595ZDA --wait\n"
              "  mediajobs bulk rerun 01HA255YE6H6DEETJ5M6595ZDA --not-processed")
    p.add_argument("id", help="bulk upload id")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--failed", dest="selection", action="store_const", const="failed",
                       help="only the ERROR records")
    which.add_argument("--not-processed", dest="selection", action="store_const", const="not_processed",
                       help="only the NOT_PROCESSED records")
    which.add_argument("--all", dest="selection", action="store_const", const="all",
                       help="every record (a VALIDATED upload: apply what was validated)")
    p.set_defaults(selection="")
    p.add_argument("--wait", action="store_true", help="follow it until it has ended (as `bulk watch`)")
    p.add_argument("--request-id", default="", metavar="ID", help="idempotency key")

    p = _leaf(actions, "log", cmd_bulk_log, "print the log: every record with its result",
              "Print the log of an upload: one row per record with its result, as CSV (the record's\n"
              "original columns, then line, record, result_status, object_id, object_state, job_ids,\n"
              "error_code, error_column, error_message; cells starting with = + - @ get a leading\n"
              "apostrophe so spreadsheets do not run them) or, with --jsonl, one JSON object per\n"
              "record (not neutralised). While the upload is being applied, records not applied yet\n"
              "are left out (a note on stderr says so).\n\n"
              "  mediajobs bulk log 01HA255YE6H6DEETJ5M6595ZDA --failed\n"
              "  mediajobs bulk log 01HA255YE6H6DEETJ5M6595ZDA --jsonl -o log.jsonl")
    p.add_argument("id", help="bulk upload id")
    p.add_argument("--failed", action="store_true", help="only the ERROR and NOT_PROCESSED records")
    p.add_argument("--status", action=_ExtendCsv, convert=_result_status, default=[], metavar="STATUS",
                   help=f"only records with these results ({RESULT_STATUSES}); repeatable")
    p.add_argument("--jsonl", action="store_true", help="JSON lines instead of CSV")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")

    p = _leaf(actions, "file", cmd_bulk_file, "print the uploaded file, or its failed records",
              "Print the file as uploaded, byte-exact, or with --failed-only the header and the records\n"
              "whose result is ERROR or NOT_PROCESSED (each byte-exact as in the original): fix them and\n"
              "upload that file again.\n\n"
              "  mediajobs bulk file 01HA255YE6H6DEETJ5M6595ZDA -o original.csv\n"
              "  mediajobs bulk file 01HA255YE6H6DEETJ5M6595ZDA --failed-only -o fix.csv")
    p.add_argument("id", help="bulk upload id")
    p.add_argument("--failed-only", action="store_true", help="only the header and the failed records")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")

    p = _leaf(actions, "results", cmd_bulk_results, "list the records' results",
              "List the results by record, one page (default 100) unless --all or --limit.\n"
              "With --json the output is one document: {results, next_page_token}.\n\n"
              "  mediajobs bulk results 01HA255YE6H6DEETJ5M6595ZDA --status ERROR\n"
              "  mediajobs bulk results 01HA255YE6H6DEETJ5M6595ZDA --all --full --json")
    p.add_argument("id", help="bulk upload id")
    p.add_argument("--status", action=_ExtendCsv, convert=_result_status, default=[], metavar="STATUS",
                   help=f"only these results ({RESULT_STATUSES}); repeatable")
    p.add_argument("--full", action="store_true", help="with each record's row_data (in --json)")
    p.add_argument("--limit", type=_positive, metavar="N", help="at most N results, fetching pages as needed")
    p.add_argument("--page-size", type=_non_negative, default=0, metavar="N",
                   help="results per request (default 100, at most 1000)")
    p.add_argument("--page-token", default="", metavar="TOKEN", help="continue a previous listing")
    p.add_argument("--all", action="store_true", help="fetch every page")

    p = _leaf(actions, "count", cmd_bulk_count, "count the results by status",
              "Count an upload's results: created (not ERROR), error, ok, in_progress, not_processed.\n\n"
              "  mediajobs bulk count 01HA255YE6H6DEETJ5M6595ZDA --json")
    p.add_argument("id", help="bulk upload id")


# -- argument types --------------------------------------------------------------------


def _bulk_state(s: str) -> int:
    try:
        return parse_bulk_state(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _result_status(s: str) -> int:
    try:
        return parse_result_status(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# -- progress ----------------------------------------------------------------------------


def bytes_record(upload_id: str, sent: int, total: int) -> dict[str, Any]:
    """One progress line of the file being written."""
    return {"upload_id": upload_id, "state": "UPLOADING", "progress": sent * 100 // total if total else 100,
            "uploaded_bytes": sent, "total_bytes": total}


def records_record(u: BulkUpload) -> dict[str, Any]:
    """One progress line of the records being applied."""
    c = u.counts
    return {"upload_id": u.id, "state": render.bulk_state_name(u.state), "progress": render.bulk_percent(u),
            "total_records": c.total_records, "applied": c.applied, "ok": c.ok, "error": c.error,
            "in_progress": c.in_progress, "not_processed": c.not_processed}


class BulkProgressDisplay:
    """The progress output of `bulk upload` and `bulk watch`, in the style of
    `entries add`: with --json one JSON line per change on stdout; otherwise
    on stderr, a bar rewritten in place on a terminal, else a line per state
    and per 10%. The bytes are reported by gRPC's sending thread, so every
    write holds a lock."""

    def __init__(self, json_lines: bool, quiet: bool = False) -> None:
        self.json_lines = json_lines and not quiet
        self.quiet = quiet
        self.tty = not json_lines and not quiet and _isatty(sys.stderr)
        self._lock = threading.Lock()
        self._last: tuple[Any, ...] | None = None  # what the last shown record showed
        self._last_line: tuple[str, int] | None = None  # (state, progress // 10) of the last plain line
        self._bar_len = 0

    def show(self, rec: dict[str, Any]) -> None:
        # Shown when the state, the percentage or a count changes (not per byte).
        key = tuple(v for k, v in rec.items() if k not in ("uploaded_bytes",))
        with self._lock:
            if self.quiet or key == self._last:
                return
            self._last = key
            if self.json_lines:
                _out(render.dumps_line(rec))
                return
            what = self._what(rec)
            if self.tty:
                line = f"{render.progress_bar(rec['progress'])} {rec['progress']:>3}%  {rec['state']}  {what}"
                line = line[:max(20, shutil.get_terminal_size().columns - 1)]
                sys.stderr.write("\r" + line.ljust(self._bar_len))
                sys.stderr.flush()
                self._bar_len = len(line)
                return
            line_key = (rec["state"], rec["progress"] // 10)
            if line_key != self._last_line:
                self._last_line = line_key
                _note(f"bulk upload {rec['upload_id']}: {rec['state']} {rec['progress']}% ({what})")

    @staticmethod
    def _what(rec: dict[str, Any]) -> str:
        if "total_bytes" in rec:
            return f"{render.fmt_size(rec['uploaded_bytes'])} of {render.fmt_size(rec['total_bytes'])}"
        errors = f"{rec['error']} error{'' if rec['error'] == 1 else 's'}"
        text = f"{rec['applied']} of {rec['total_records']} records: {rec['ok']} ok, {errors}"
        if rec["in_progress"]:
            text += f", {rec['in_progress']} in progress"
        if rec["not_processed"]:
            text += f", {rec['not_processed']} not processed"
        return text

    def end_line(self) -> None:
        """Leave the bar's line (before other output)."""
        with self._lock:
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


def follow_upload(c: MediaJobsClient, upload_id: str, display: BulkProgressDisplay) -> BulkUpload:
    """Follow WatchBulkUpload until the upload has ended; returns it."""

    def on_retry(info: RetryInfo) -> None:
        if info.attempt == 0:
            why = f"{info.error.code.name}: {info.error.message}" if info.error else "the server ended the stream"
            display.note(f"mediajobs: lost the watch of bulk upload {upload_id} ({why}); reconnecting to {c.target}")

    last: BulkUpload | None = None
    for u in c.watch_bulk_upload(upload_id, on_retry=on_retry):
        last = u
        display.show(records_record(u))
    assert last is not None  # the watch sends the upload at once, and ends only after a terminal state
    return last


def upload_exit_status(u: BulkUpload) -> int:
    """0 when every record ended OK (VALIDATED: every record valid), else 1."""
    if u.state == BulkUpload.SUCCEEDED:
        return 0
    if u.state == BulkUpload.VALIDATED and not (u.counts.error or u.counts.not_processed):
        return 0
    return 1


def _refused(u: BulkUpload) -> bool:
    """The file was refused as a whole (found when a lost reply was recovered)."""
    return u.state == BulkUpload.FAILED and u.HasField("error") and \
        u.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def _finish(args: argparse.Namespace, u: BulkUpload, display: BulkProgressDisplay) -> int:
    """The end of `bulk upload`, `bulk watch`, `bulk rerun --wait`: the final
    upload on stdout, what went wrong on stderr; the exit status."""
    display.end_line()
    if args.quiet:
        _out(u.id)
    elif args.json:
        _out(render.dumps_line(render.message_to_dict(u)))
    else:
        _out(render.bulk_upload_summary(u))
    status = upload_exit_status(u)
    if u.HasField("error"):
        _note(f"mediajobs: bulk upload {u.id} {render.bulk_state_name(u.state)}: "
              + "\n  ".join(render.bulk_error_lines(u.error)))
    failed = u.counts.error + u.counts.not_processed
    if failed and u.upload_complete_time.seconds:
        _note(f"mediajobs: {failed} record{'' if failed == 1 else 's'} of bulk upload {u.id} did not succeed: "
              f"`mediajobs bulk log {u.id} --failed` says why; `mediajobs bulk file {u.id} --failed-only -o FILE` "
              "writes them for fixing and uploading again")
    return status


# -- commands --------------------------------------------------------------------------------


def cmd_bulk_upload(args: argparse.Namespace, c: MediaJobsClient) -> int:
    if args.validate_only and args.validate_first:
        args.parser.error("--validate-only and --validate-first exclude each other")
    try:
        with open(args.file, "rb"):
            pass
    except OSError as e:
        _note(f"mediajobs: cannot read {args.file}: {e.strerror or e}")
        return 2
    delimiter = "\t" if args.delimiter.lower() in ("tab", "\\t") else args.delimiter
    display = BulkProgressDisplay(args.json, quiet=args.quiet)
    upload_id = args.resume.upper()

    def on_start(u: BulkUpload) -> None:
        nonlocal upload_id
        upload_id = u.id
        display.info(f"mediajobs: bulk upload {u.id} (#{u.number}) of {args.file}: "
                     f"{render.fmt_size(u.file_size_bytes) if u.file_size_bytes else 'empty'}")

    def on_progress(sent: int, total: int) -> None:
        display.show(bytes_record(upload_id, sent, total))

    def on_retry(r: UploadRetry) -> None:
        if not upload_id:
            display.note(f"mediajobs: starting the bulk upload failed ({r.error}); retrying in {r.delay:.1f} s")
            return
        wait = f" in {r.delay:.1f} s (retry {r.attempt + 1})" if r.delay else ""
        display.note(f"mediajobs: writing bulk upload {upload_id} broke ({r.error}); resuming from byte "
                     f"{r.committed_size}{wait}")

    try:
        if args.resume:
            u = c.continue_bulk_upload(upload_id, args.file, on_progress=on_progress, on_retry=on_retry)
        else:
            u = c.upload_bulk_file(
                args.file, template_id=args.template, validate_only=args.validate_only,
                error_policy="VALIDATE_FIRST" if args.validate_first else None, max_errors=args.max_errors,
                delimiter=delimiter, encoding=args.encoding, header=args.header,
                ignore_unknown_columns=args.ignore_unknown_columns, file_name=args.name,
                uploaded_by=args.uploaded_by, description=args.description, priority=args.priority,
                request_id=args.request_id or None, on_start=on_start, on_progress=on_progress, on_retry=on_retry)
    except KeyboardInterrupt:
        display.note(f"mediajobs: stopped writing bulk upload {upload_id}; it stays UPLOADING: "
                     f"`mediajobs bulk upload {args.file} --resume {upload_id}` finishes it, "
                     f"`mediajobs bulk abort {upload_id}` drops it" if upload_id else
                     "mediajobs: stopped before the upload was created")
        return 130
    except OSError as e:
        display.note(f"mediajobs: reading {args.file} failed: {e}")
        return 1
    except MediaJobsError:
        display.end_line()
        raise
    if _refused(u):
        display.end_line()
        _note(f"mediajobs: the server refused {args.file}: " + "\n  ".join(render.bulk_error_lines(u.error)))
        return 2
    if args.no_wait or u.state in _TERMINAL:
        if u.state in _TERMINAL:
            display.show(records_record(u))
            return _finish(args, u, display)
        display.end_line()
        if args.quiet:
            _out(u.id)
        elif args.json:
            _out(render.dumps_line(render.message_to_dict(u)))
        else:
            _out(render.bulk_upload_summary(u))
            _note(f"mediajobs: follow it with `mediajobs bulk watch {u.id}`")
        return 0
    try:
        u = follow_upload(c, u.id, display)
    except KeyboardInterrupt:
        display.note(f"mediajobs: stopped following bulk upload {upload_id}; it goes on on the server "
                     f"(`mediajobs bulk watch {upload_id}` follows it again)")
        return 130
    return _finish(args, u, display)


def _print_upload(args: argparse.Namespace, u: BulkUpload) -> int:
    if args.json:
        _out(render.dumps(render.message_to_dict(u)))
    else:
        _out(render.bulk_upload_details(u))
    return 0


def cmd_bulk_get(args: argparse.Namespace, c: MediaJobsClient) -> int:
    return _print_upload(args, c.get_bulk_upload(args.id))


def cmd_bulk_list(args: argparse.Namespace, c: MediaJobsClient) -> int:
    uploads: list[BulkUpload] = []
    token = args.page_token
    total = None
    while True:
        size = args.page_size
        if args.limit is not None:
            remaining = args.limit - len(uploads)
            if remaining <= 0:
                break
            size = min(remaining, size or 1000)
        page = c.list_bulk_uploads(states=args.state, uploaded_by=args.uploaded_by,
                                   create_time_from=args.created_from, create_time_to=args.created_to,
                                   page_size=size, page_token=token)
        total = page.total_size if total is None else total
        uploads.extend(page.bulk_uploads)
        token = page.next_page_token
        if not token or not (args.all or args.limit is not None):
            break
    if args.json:
        doc: dict[str, Any] = {"bulk_uploads": [render.message_to_dict(u) for u in uploads]}
        if token:
            doc["next_page_token"] = token
        doc["total_size"] = total or 0
        _out(render.dumps(doc))
        return 0
    _out(render.bulk_uploads_table(uploads))
    if token:
        _note(f"-- {len(uploads)} of {total} uploads; more with --page-token {token} (or --all)")
    return 0


def cmd_bulk_watch(args: argparse.Namespace, c: MediaJobsClient) -> int:
    display = BulkProgressDisplay(args.json, quiet=args.quiet)
    try:
        u = follow_upload(c, args.id, display)
    except KeyboardInterrupt:
        display.end_line()
        return 130
    return _finish(args, u, display)


def cmd_bulk_abort(args: argparse.Namespace, c: MediaJobsClient) -> int:
    u = c.abort_bulk_upload(args.id, reason=args.reason, keep_child_jobs=args.keep_child_jobs,
                            request_id=args.request_id)
    return _print_upload(args, u)


def cmd_bulk_rerun(args: argparse.Namespace, c: MediaJobsClient) -> int:
    u = c.rerun_bulk_upload(args.id, selection=args.selection, request_id=args.request_id)
    if not args.wait:
        return _print_upload(args, u)
    args.quiet = False
    display = BulkProgressDisplay(args.json)
    display.info(f"mediajobs: re-running bulk upload {u.id} (generation {u.generation})")
    try:
        u = follow_upload(c, u.id, display)
    except KeyboardInterrupt:
        display.end_line()
        return 130
    return _finish(args, u, display)


def _write_bytes(pieces: Iterable[bytes], output: str | None) -> None:
    """Bytes to stdout, or to FILE (written as FILE.part, renamed when
    complete, so a broken read leaves no partial FILE)."""
    if output is None or output == "-":
        sys.stdout.flush()
        out: BinaryIO = sys.stdout.buffer
        for piece in pieces:
            out.write(piece)
        out.flush()
        return
    part = output + ".part"
    try:
        with open(part, "wb") as f:
            for piece in pieces:
                f.write(piece)
        os.replace(part, output)
    except BaseException:
        try:
            os.unlink(part)
        except OSError:
            pass
        raise


def cmd_bulk_log(args: argparse.Namespace, c: MediaJobsClient) -> int:
    statuses = list(args.status) + [s for s in FAILED_STATUSES if args.failed and s not in args.status]
    log = c.read_bulk_upload_log(args.id, format="jsonl" if args.jsonl else "csv", statuses=statuses)
    try:
        _write_bytes(log, args.output)
    except OSError as e:
        _note(f"mediajobs: cannot write {args.output}: {e.strerror or e}")
        return 1
    finally:
        log.close()
    if log.complete is False:
        _note(f"mediajobs: bulk upload {args.id} is still being applied: records without a result yet are "
              "not in the log")
    return 0


def cmd_bulk_file(args: argparse.Namespace, c: MediaJobsClient) -> int:
    try:
        _write_bytes(c.read_bulk_upload_file(args.id, failed_only=args.failed_only), args.output)
    except OSError as e:
        _note(f"mediajobs: cannot write {args.output}: {e.strerror or e}")
        return 1
    return 0


def cmd_bulk_results(args: argparse.Namespace, c: MediaJobsClient) -> int:
    results: list[Result] = []
    token = args.page_token
    while True:
        size = args.page_size
        if args.limit is not None:
            remaining = args.limit - len(results)
            if remaining <= 0:
                break
            size = min(remaining, size or 1000)
        page = c.list_bulk_upload_results(args.id, statuses=args.status, full=args.full, page_size=size,
                                          page_token=token)
        results.extend(page.results)
        token = page.next_page_token
        if not token or not (args.all or args.limit is not None):
            break
    if args.json:
        doc: dict[str, Any] = {"results": [render.message_to_dict(r) for r in results]}
        if token:
            doc["next_page_token"] = token
        _out(render.dumps(doc))
        return 0
    _out(render.bulk_results_table(results))
    if token:
        _note(f"-- {len(results)} results; more with --page-token {token} (or --all)")
    return 0


def cmd_bulk_count(args: argparse.Namespace, c: MediaJobsClient) -> int:
    counted = c.count_bulk_upload_results(args.id)
    if args.json:
        _out(render.dumps(render.message_to_dict(counted)))
    else:
        _out(render.bulk_count_details(counted))
    return 0
