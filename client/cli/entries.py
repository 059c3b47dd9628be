"""`mediajobs entries`: add, inspect and delete media entries, and the
progress display with which `entries add` follows an entry's processing."""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
from typing import Any

import grpc

from mediajobs.v1 import media_resources_pb2 as mres
from mediajobs.v1 import resources_pb2 as res

from .. import render
from ..client import MediaJobsClient
from ..errors import MediaJobsError, RevisionCompactedError
from ..watch import JobWatch, RetryInfo
from .common import (
    ENTRY_STATES,
    PRIORITIES,
    _TERMINAL_JOB_STATES,
    _ExtendCsv,
    _add_quiet,
    _entry_state,
    _group,
    _leaf,
    _non_negative,
    _note,
    _out,
    _positive,
    _priority,
)

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


def add_parser(groups: Any) -> None:
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


# -- media entries -----------------------------------------------------------------

ENTRY_JOB_TYPES = ("EXTRACT_MEDIA", "TRANSCODE")
# Processing jobs carry metadata entry_id=<entry> and entry_step=extract or
# entry_step=flavor:<flavor asset id>.
ENTRY_KEY, STEP_KEY, FLAVOR_STEP = "entry_id", "entry_step", "flavor:"
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
