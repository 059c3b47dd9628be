"""`mediajobs live`: live jobs: create one, start and stop its sessions,
follow it as it goes live, read its outputs, status log and statistics,
reset its stream key, delete it, and push a test pattern to check a
deployment end to end without a camera.

The stream key is a secret: it is printed by `live create` and
`live reset-key` (inside the ingest URL), and otherwise only on request
(`live get --show-key`, `live list --show-keys`). `live start` and
`live stop` look it up themselves when given an id or a name."""
from __future__ import annotations

import argparse
import shutil
import sys
import time
import urllib.parse
from typing import Any, Iterable, Sequence

import grpc

from mediajobs.v1 import live_job_service_pb2 as lsvc
from mediajobs.v1 import live_resources_pb2 as lres

from .. import render
from ..client import MediaJobsClient
from ..errors import MediaJobsError
from ..watch import RetryInfo
from .common import (
    _ExtendCsv,
    _add_quiet,
    _group,
    _iso_time,
    _key_value,
    _leaf,
    _note,
    _out,
    _positive,
)
from .entries import _isatty

LiveJob = lres.LiveJob
LiveInput = lres.LiveInput
LiveOutput = lres.LiveOutput
LiveStatistics = lres.LiveStatistics
State = LiveJob.State
LIVE_JOB_TYPE = "LIVE_ENCODE"
LIVE_STATES = ", ".join(n for n in State.keys() if n != "STATE_UNSPECIFIED")
_TERMINAL = frozenset({State.STOPPED, State.FAILED})
# States in which a worker has the session: the statistics and segment
# counters may change without a state change.
_ACTIVE = frozenset({State.AWAITING_INPUT, State.LIVE, State.RECONNECTING, State.RECOVERING, State.STOPPING})
_ULID_LEN = 26
_MAX_PUBLISH_SECONDS = 3600.0
_REFUSED_RETRY_S = 0.2

LIVE_DESCRIPTION = """\
Live jobs: a publisher pushes a stream to the live job's ingest URL (RTMP,
with the stream key as its last part); a live worker (`mediajobs worker --live`)
checks the key and encodes the stream live into the HLS ladder of the live
template, under the storage root. Each `live start` begins a session (an
ordinary LIVE_ENCODE job); `live stop` ends it.

  OFFLINE -> STARTING -> AWAITING_INPUT -> LIVE (-> RECONNECTING -> LIVE) -> STOPPING -> STOPPED
  (RECOVERING when a worker was lost; FAILED when the session failed)

  ID=$(mediajobs live create --bucket events --destination studio-a/main -q)
  mediajobs live start $ID
  mediajobs live watch $ID &                       # follow it to STOPPED
  mediajobs live publish-test rtmp://127.0.0.1:1935/live/<stream key> --seconds 10
  mediajobs live stop $ID
  mediajobs live timings $ID                       # what happened, oldest first

The stream key is a secret: `live create` and `live reset-key` print it (in the
ingest URL); `live get --show-key` and `live list --show-keys` show it again.
--json prints the API's JSON form (stream keys left out unless shown)."""


def add_parser(groups: Any) -> None:
    actions = _group(groups, "live", "create, start, stop, follow and inspect live jobs", LIVE_DESCRIPTION)

    p = _leaf(actions, "create", cmd_live_create, "create a live job (prints its ingest URL with the stream key)",
              "Create a live job in OFFLINE and print its id, name, state, ingest URL and master\n"
              "playlist. The ingest URL ends with the stream key: publish to it once the live job is\n"
              "started. Keep it secret (`mediajobs live reset-key ID` replaces it).\n\n"
              "The playlists go to live/<bucket>/<destination>/ under the storage root: master.m3u8\n"
              "and one media playlist per rendition of the live template (default hls-live-360p-240p;\n"
              "a live template has only hls outputs). With --json the whole live job is printed.\n\n"
              "Examples:\n"
              "  mediajobs live create --bucket events --destination studio-a/main\n"
              "  mediajobs live create --bucket events --destination keynote --template hls-live-360p-240p \\\n"
              "      --description 'Keynote' --reconnect-window 120 --max-duration 7200 --label team=av\n"
              "  mediajobs live create --bucket events --destination relay --server-type hls \\\n"
              "      --file-path incoming/relay/index.m3u8      # pull an HLS playlist instead\n"
              "  ID=$(mediajobs live create --bucket events --destination studio-b -q)")
    p.add_argument("--bucket", required=True, metavar="B",
                   help="bucket (top folder under the live storage area): letters, digits, '_', '-', '.'")
    p.add_argument("--destination", required=True, metavar="D",
                   help="where in the bucket the playlists go: 1-8 path segments, e.g. studio-a/main")
    p.add_argument("--template", default="", metavar="ID",
                   help="live job template (default hls-live-360p-240p; see `mediajobs templates list`)")
    p.add_argument("--description", default="", metavar="TEXT", help="free text")
    p.add_argument("--server-type", type=str.lower, choices=("rtmp", "srt", "hls"), default="rtmp",
                   help="how the stream arrives: pushed over RTMP (default) or SRT, or pulled from an HLS "
                        "playlist (--file-path)")
    p.add_argument("--input-class", type=str.lower, choices=("single", "standard"), default="single",
                   help="single: one ingest (default); standard: also a backup ingest with its own key, which "
                        "the encoder fails over to when the primary drops and leaves when it returns")
    p.add_argument("--file-path", default="", metavar="P",
                   help="with --server-type hls: the playlist to pull (a path under the storage root, or an "
                        "http(s) URL)")
    p.add_argument("--callback-url", default="", metavar="U",
                   help="http(s) URL each state change of the live job is POSTed to as JSON")
    p.add_argument("--reconnect-window", type=_seconds, metavar="SECONDS",
                   help="how long a publisher that dropped may take to come back, 0-1800 (default 60)")
    p.add_argument("--max-duration", type=_seconds, metavar="SECONDS",
                   help="the longest a session may run, 1 s to 7 days (default 12 h)")
    p.add_argument("--cdn", action="store_true", help="serve the output through the server's CDN base URL")
    p.add_argument("--label", type=_key_value, nargs="+", action="extend", default=[], metavar="K=V",
                   help="free-form labels; repeatable")
    p.add_argument("--request-id", default="", metavar="R",
                   help="idempotency key: repeating the command with the same R returns the same live job")
    _add_quiet(p, "live job")

    p = _leaf(actions, "list", cmd_live_list, "list live jobs",
              "List live jobs, newest first: one page (default 20) unless --all. With --page N the\n"
              "seed-style offset page N is listed, followed by `page N of M (T live jobs)`.\n"
              "Stream keys are left out unless --show-keys.\n"
              "With --json the output is one document: {live_jobs, next_page_token, total_size, page_info}.\n\n"
              "Examples:\n"
              "  mediajobs live list --search keynote\n"
              "  mediajobs live list --state LIVE,RECONNECTING --all\n"
              "  mediajobs live list --page 2 --page-size 10\n"
              "  mediajobs live list --search studio-a --show-keys --json")
    p.add_argument("--search", default="", metavar="S",
                   help="case-insensitive part of the name, description, destination or input file path")
    p.add_argument("--state", action=_ExtendCsv, convert=_live_state, default=[], metavar="STATE",
                   help=f"only live jobs in these states ({LIVE_STATES}); repeatable")
    p.add_argument("--page-size", type=_positive, default=0, metavar="N",
                   help="live jobs per page, 1-100 (default 20)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--page", type=_positive, default=0, metavar="N", help="list page N (1-based)")
    which.add_argument("--all", action="store_true", help="list every live job (every page)")
    p.add_argument("--show-keys", action="store_true", help="include the stream keys (and ingest URLs)")

    p = _leaf(actions, "get", cmd_live_get, "show one live job",
              "Show one live job, by id or name: state, input, ingest server, playlists, the current\n"
              "session and the last statistics. The stream key (and the full ingest URL) only with\n"
              "--show-key.\n\n"
              "Examples:\n"
              "  mediajobs live get 01HA255YE6H6DEETJ5M6595ZDA\n"
              "  mediajobs live get 01HA255YE6H6DEETJ5M6595ZDA --show-key --json")
    p.add_argument("id", metavar="ID", help="live job id (ULID) or name (UUID)")
    p.add_argument("--show-key", action="store_true", help="include the stream key and the full ingest URL")

    p = _leaf(actions, "start", cmd_live_start, "start a session (STARTING)",
              "Start encoding: a new session (STARTING), which a live worker takes (AWAITING_INPUT)\n"
              "and which goes LIVE once a publisher pushes to the ingest URL. Works from OFFLINE,\n"
              "STOPPED and FAILED; a live job already starting or running is left as it is.\n"
              "ID_OR_KEY is the live job's id, name or stream key (an id or a name is looked up\n"
              "for its key, which is not printed). Prints the state and the playback URL (or the\n"
              "master playlist's path under the storage root).\n"
              "Times are ISO 8601 (a time without an offset is UTC).\n\n"
              "Examples:\n"
              "  mediajobs live start 01HA255YE6H6DEETJ5M6595ZDA\n"
              "  mediajobs live start 01HA255YE6H6DEETJ5M6595ZDA --at 2030-05-01T18:00:00Z "
              "--until 2030-05-01T20:00:00Z")
    p.add_argument("id", metavar="ID_OR_KEY", help="live job id, name or stream key")
    p.add_argument("--at", type=_iso_time, metavar="ISO8601",
                   help="when the session starts (default now); no worker takes it before")
    p.add_argument("--until", type=_iso_time, metavar="ISO8601", help="when the session stops by itself")
    p.add_argument("--request-id", default="", metavar="R", help="idempotency key")

    p = _leaf(actions, "stop", cmd_live_stop, "stop the session",
              "Stop encoding: a session no worker has yet is STOPPED at once; a running one goes\n"
              "STOPPING (the worker closes the playlists, then STOPPED: `mediajobs live watch ID`\n"
              "follows it).\n\n"
              "Examples:\n"
              "  mediajobs live stop 01HA255YE6H6DEETJ5M6595ZDA\n"
              "  mediajobs live stop 01HA255YE6H6DEETJ5M6595ZDA && mediajobs live watch 01HA255YE6H6DEETJ5M6595ZDA")
    p.add_argument("id", metavar="ID_OR_KEY", help="live job id, name or stream key")
    p.add_argument("--request-id", default="", metavar="R", help="idempotency key")

    p = _leaf(actions, "outputs", cmd_live_outputs, "list a live job's renditions",
              "List a live job's outputs (one per rendition of its template): status, progress,\n"
              "segments written, last segment, encoder and media playlist.\n\n"
              "Examples:\n"
              "  mediajobs live outputs 01HA255YE6H6DEETJ5M6595ZDA\n"
              "  mediajobs live outputs 01HA255YE6H6DEETJ5M6595ZDA --json")
    p.add_argument("id", metavar="ID", help="live job id or name")

    p = _leaf(actions, "timings", cmd_live_timings, "print a live job's status log",
              "Print a live job's status log, oldest first: every state change and event (CREATED,\n"
              "START_REQUESTED, WORKER_READY, CONNECTED, PUBLISH_REJECTED, DISCONNECTED, STOPPED,\n"
              "KEY_RESET, ...) with its time and message. One page (default 50) unless --all.\n"
              "With --json the output is one document: {timings, next_page_token, page_info}.\n\n"
              "Examples:\n"
              "  mediajobs live timings 01HA255YE6H6DEETJ5M6595ZDA --all\n"
              "  mediajobs live timings 01HA255YE6H6DEETJ5M6595ZDA --output 2    # output 2 and the live job's own")
    p.add_argument("id", metavar="ID", help="live job id or name")
    p.add_argument("--output", type=_positive, default=0, metavar="N",
                   help="only output N's entries (and those of the whole live job)")
    p.add_argument("--page-size", type=_positive, default=0, metavar="N", help="entries per page, 1-100")
    p.add_argument("--all", action="store_true", help="print every entry (every page)")

    p = _leaf(actions, "stats", cmd_live_stats, "show the statistics of the incoming stream",
              "Show the last statistics of a live job's incoming stream: resolution, frame rate,\n"
              "codecs and bit rates (announced and measured), the publisher's encoder, latency.\n\n"
              "Examples:\n"
              "  mediajobs live stats 01HA255YE6H6DEETJ5M6595ZDA\n"
              "  mediajobs live stats 01HA255YE6H6DEETJ5M6595ZDA --json")
    p.add_argument("id", metavar="ID", help="live job id or name")

    p = _leaf(actions, "reset-key", cmd_live_reset_key, "give a live job a new stream key",
              "Give a live job a new stream key and print the new ingest URL; the old key is refused\n"
              "from then on. While a publisher is connected (LIVE) only with --force, which drops it.\n\n"
              "Examples:\n"
              "  mediajobs live reset-key 01HA255YE6H6DEETJ5M6595ZDA\n"
              "  mediajobs live reset-key 01HA255YE6H6DEETJ5M6595ZDA --force    # also while LIVE")
    p.add_argument("id", metavar="ID", help="live job id or name")
    p.add_argument("--force", action="store_true", help="also while a publisher is connected (it is dropped)")

    p = _leaf(actions, "clip", cmd_live_clip, "cut a clip of past content (live-to-VOD)",
              "Cut [--from, --to) of a live job's past content (wall-clock times of the stream, as in\n"
              "the playlists' #EXT-X-PROGRAM-DATE-TIME) into a VOD playlist and an MP4 by stream copy\n"
              "(segment-accurate), under live/<bucket>/<destination>/clips/<clip id>/. A live worker\n"
              "runs it. With --entry, a media entry is made from the MP4 (MediaService).\n"
              "--wait follows the clip until it is done; exit 1 when it FAILED.\n\n"
              "Examples:\n"
              "  mediajobs live clip 01HA255YE6H6DEETJ5M6595ZDA --from 2030-05-01T18:10:00Z "
              "--to 2030-05-01T18:12:00Z --wait\n"
              "  mediajobs live clip keynote-id --from ... --to ... --rendition 360p --entry 'Keynote highlight'")
    p.add_argument("id", metavar="ID", help="live job id or name")
    p.add_argument("--from", dest="start", type=_iso_time, required=True, metavar="ISO8601",
                   help="start of the window")
    p.add_argument("--to", dest="end", type=_iso_time, required=True, metavar="ISO8601",
                   help="end of the window (at most 6 hours after --from)")
    p.add_argument("--rendition", default="", metavar="NAME", help="the rendition to cut (default the first)")
    p.add_argument("--entry", nargs="?", const="", default=None, metavar="NAME",
                   help="also make a media entry from the MP4 (named NAME, default the live job's description "
                        "and the window)")
    p.add_argument("--wait", action="store_true", help="wait until the clip is made, then print it")
    p.add_argument("--request-id", default="", metavar="R", help="idempotency key")

    p = _leaf(actions, "clips", cmd_live_clips, "list a live job's clips",
              "A live job's clips, newest first: state, window, duration, files and entry.\n\n"
              "Examples:\n"
              "  mediajobs live clips 01HA255YE6H6DEETJ5M6595ZDA\n"
              "  mediajobs live clips 01HA255YE6H6DEETJ5M6595ZDA --json")
    p.add_argument("id", metavar="ID", help="live job id or name")

    p = _leaf(actions, "delete", cmd_live_delete, "delete a live job",
              "Delete a live job with its outputs and status log (its files under the storage root\n"
              "are kept). Refused while a session runs unless --force, which aborts it.\n\n"
              "Examples:\n"
              "  mediajobs live delete 01HA255YE6H6DEETJ5M6595ZDA\n"
              "  mediajobs live delete 01HA255YE6H6DEETJ5M6595ZDA --force --allow-missing")
    p.add_argument("id", metavar="ID", help="live job id or name")
    p.add_argument("--force", action="store_true", help="also while a session runs (it is aborted)")
    p.add_argument("--allow-missing", action="store_true", help="a live job that does not exist is not an error")

    p = _leaf(actions, "watch", cmd_live_watch, "follow a live job until it is STOPPED or FAILED",
              "Follow a live job as a status line (state, resolution, frame rate, bit rate, segments\n"
              "written) until it is STOPPED or FAILED, or Ctrl-C. A live job that is already STOPPED\n"
              "or FAILED ends the watch at once; an OFFLINE one is followed through its next session.\n"
              "The state changes come from WatchJobs (the live state rides on the session's\n"
              "LIVE_ENCODE job; the watch resumes by itself after a lost connection); the statistics\n"
              "are read again every --interval seconds while a worker has the session.\n"
              "On a terminal the line is rewritten in place; otherwise one line per change.\n"
              "With --json one JSON object per change:\n"
              '  {"live_job_id": ID, "state": "LIVE", "session_job_id": ID, "width": 320, "height": 180,\n'
              '   "fps": 15.0, "kbps": 464.0, "segments": 12}\n'
              "(and \"error\" when FAILED).\n"
              "Exit status: 0 when STOPPED, 1 when FAILED (or deleted), 130 on Ctrl-C.\n\n"
              "Examples:\n"
              "  mediajobs live watch 01HA255YE6H6DEETJ5M6595ZDA\n"
              "  mediajobs live watch 01HA255YE6H6DEETJ5M6595ZDA --json | tail -n 1")
    p.add_argument("id", metavar="ID", help="live job id or name")
    p.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                   help="how often the statistics are read while a worker has the session, 0.1-600 (default 2)")

    p = _leaf(actions, "publish-test", cmd_live_publish_test, "push a test pattern to an ingest URL",
              "Push a synthetic stream (FFmpeg's testsrc2 pattern and a 440 Hz tone, H.264 + AAC,\n"
              "in real time) to an ingest URL, to check a deployment end to end without a camera:\n"
              "start the live job, then publish to its ingest URL (`mediajobs live get ID --show-key`).\n"
              "RTMP URLs get FLV; other URLs (tcp://, udp://, a .ts path) MPEG-TS. Needs PyAV.\n"
              "Exit status: 0 when everything was sent, 1 when nothing accepted the connection\n"
              "within --open-timeout, or the server refused the stream (a wrong or reset key, a live\n"
              "job that is not started) or dropped it.\n\n"
              "Examples:\n"
              "  mediajobs live publish-test rtmp://127.0.0.1:1935/live/<stream key>\n"
              "  mediajobs live publish-test \"$(mediajobs live get $ID --show-key --json | jq -r .ingest_url)\" \\\n"
              "      --seconds 30 --size 640x360 --fps 25")
    p.add_argument("url", metavar="URL", help="the ingest URL, e.g. rtmp://HOST:1935/live/<stream key>")
    p.add_argument("--seconds", type=_publish_seconds, default=4.0, metavar="N",
                   help=f"how long to publish, at most {_MAX_PUBLISH_SECONDS:g} (default 4)")
    p.add_argument("--size", type=_frame_size, default=(320, 180), metavar="WxH",
                   help="picture size, even numbers up to 3840x2160 (default 320x180)")
    p.add_argument("--fps", type=_fps, default=15, metavar="N", help="frames per second, 1-60 (default 15)")
    p.add_argument("--open-timeout", type=_publish_seconds, default=10.0, metavar="SECONDS",
                   help="how long to keep trying to connect (default 10)")


# -- argument types ----------------------------------------------------------------------


def _live_state(s: str) -> int:
    name = s.strip().upper()
    if name not in State.keys() or name == "STATE_UNSPECIFIED":
        raise argparse.ArgumentTypeError(f"unknown live job state {s!r}; use one of {LIVE_STATES}")
    return int(State.Value(name))


def _seconds(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number of seconds") from None
    if v != v or v < 0 or v == float("inf"):
        raise argparse.ArgumentTypeError("must be a number of seconds, 0 or more")
    return v


def _publish_seconds(s: str) -> float:
    v = _seconds(s)
    if not 0 < v <= _MAX_PUBLISH_SECONDS:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most {_MAX_PUBLISH_SECONDS:g}")
    return v


def _frame_size(s: str) -> tuple[int, int]:
    w, sep, h = s.lower().partition("x")
    try:
        width, height = int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not WIDTHxHEIGHT, e.g. 320x180") from None
    if not sep or not (2 <= width <= 3840 and 2 <= height <= 2160) or width % 2 or height % 2:
        raise argparse.ArgumentTypeError(f"{s!r}: width and height must be even, up to 3840x2160")
    return width, height


def _fps(s: str) -> int:
    n = _positive(s)
    if n > 60:
        raise argparse.ArgumentTypeError("must be 1 to 60")
    return n


# -- output --------------------------------------------------------------------------------


def state_name(s: int) -> str:
    return State.Name(s) if s in State.values() else str(s)  # type: ignore[arg-type]


def _enum_name(enum: Any, v: int) -> str:
    return str(enum.Name(v)) if v in enum.values() else str(v)


def hide_secrets(lj: LiveJob) -> LiveJob:
    """A copy of `lj` without its stream key, ingest URL (which ends with the
    key) and callback secret."""
    out = LiveJob()
    out.CopyFrom(lj)
    out.stream_key = ""
    out.ingest_url = ""
    out.backup_stream_key = ""
    out.backup_ingest_url = ""
    out.srt_passphrase = ""
    out.input.callback_secret = ""
    return out


def _fmt_seconds(d: Any) -> str:
    """A google.protobuf.Duration for people: `60 s`, `2 min 00 s`, `12 h 00 min`."""
    secs = d.seconds + d.nanos / 1e9
    if secs < 60:
        return f"{secs:g} s"
    return render.fmt_elapsed(secs)


def _destination(lj: LiveJob) -> str:
    return f"{lj.bucket}/{lj.destination}"


def _has_stats(s: LiveStatistics) -> bool:
    return s.ByteSize() > 0


def _fps_of(s: LiveStatistics) -> float:
    return s.measured_fps or s.frame_rate


def _kbps_of(s: LiveStatistics) -> float:
    measured = s.measured_video_kbps + s.measured_audio_kbps
    return measured or (s.video_data_rate + s.audio_data_rate)


def _num(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".")


def stats_summary(s: LiveStatistics) -> str:
    """`320x180 15 fps, 464 kbit/s, h264 + aac, from Lavf62.12.102`."""
    if not _has_stats(s):
        return "-"
    parts = []
    if s.width or s.height:
        parts.append(f"{s.width}x{s.height}" + (f" {_num(_fps_of(s))} fps" if _fps_of(s) else ""))
    if _kbps_of(s):
        parts.append(f"{_num(_kbps_of(s))} kbit/s")
    codecs = " + ".join(c for c in (s.video_codec, s.audio_codec) if c)
    if codecs:
        parts.append(codecs)
    if s.encoder:
        parts.append(f"from {s.encoder}")
    return ", ".join(parts) or "-"


LIVE_LIST_HEADERS = ("ID", "NAME", "STATE", "DESTINATION", "TEMPLATE", "SESSIONS", "CREATED")


def live_jobs_table(jobs: Iterable[LiveJob], show_keys: bool = False) -> str:
    headers = LIVE_LIST_HEADERS + (("STREAM KEY",) if show_keys else ())
    return render.table(headers, (
        [lj.id, lj.name, state_name(lj.state), _destination(lj), lj.job_template_id or "-", lj.session_count,
         render.fmt_time(lj.create_time)] + ([lj.stream_key or "-"] if show_keys else [])
        for lj in jobs))


def _ingest_text(lj: LiveJob, show_key: bool) -> str:
    if lj.input.server_type == LiveInput.HLS:
        return f"- (pulls {lj.input.file_path})" if lj.input.file_path else "-"
    if show_key and lj.ingest_url:
        return lj.ingest_url
    if not lj.rtmp_server:
        return "-"
    if lj.input.server_type == LiveInput.SRT:
        return f"{lj.rtmp_server}?passphrase=<--show-key shows it>"
    return f"{lj.rtmp_server}/<stream key: --show-key shows it>"


def live_job_details(lj: LiveJob, show_key: bool = False) -> str:
    """A live job as `label: value` lines."""
    pairs: list[tuple[str, str | Sequence[str]]] = [
        ("id", lj.id), ("number", str(lj.number)), ("name", lj.name), ("state", state_name(lj.state))]
    if lj.HasField("error"):
        pairs.append(("error", render.status_text(lj.error)))
    if lj.description:
        pairs.append(("description", lj.description))
    input_text = _enum_name(LiveInput.ServerType, lj.input.server_type)
    if lj.input.input_class:
        input_text += f" ({_enum_name(LiveInput.InputClass, lj.input.input_class)})"
    pairs += [("destination", _destination(lj)), ("template", lj.job_template_id or "-"), ("input", input_text),
              ("ingest_url", _ingest_text(lj, show_key))]
    if lj.input.input_class == LiveInput.STANDARD:
        pairs.append(("backup_ingest_url", lj.backup_ingest_url if show_key and lj.backup_ingest_url
                      else f"{lj.rtmp_server}/<backup key: --show-key shows it>"))
    if show_key and lj.stream_key:
        pairs.append(("stream_key", lj.stream_key))
    if lj.input.callback_url:
        pairs.append(("callback_url", lj.input.callback_url))
        if show_key and lj.input.callback_secret:
            pairs.append(("callback_secret", lj.input.callback_secret))
    pairs.append(("master_playlist", lj.storage_master_file or "-"))
    if lj.playback_url:
        pairs.append(("playback_url", lj.playback_url))
    if lj.cdn_distribution:
        pairs.append(("cdn", lj.cdn or "yes (the server has no --live-cdn-base-url)"))
    pairs.append(("renditions", [f"{k}: {v}" for k, v in sorted(lj.output_manifests.items())]))
    pairs += [("reconnect_window", _fmt_seconds(lj.reconnect_window)),
              ("max_duration", _fmt_seconds(lj.max_duration)),
              ("sessions", str(lj.session_count))]
    if lj.current_job_id:
        pairs.append(("session_job_id", lj.current_job_id))
    if lj.resource_name:
        pairs.append(("worker", lj.resource_name))
    for label, ts in (("start_time", lj.start_time), ("finish_time", lj.finish_time), ("end_time", lj.end_time)):
        if ts.seconds or ts.nanos:
            pairs.append((label, render.fmt_time(ts)))
    if _has_stats(lj.statistics):
        pairs.append(("statistics", stats_summary(lj.statistics)))
    if lj.key_resets:
        pairs.append(("key_resets", str(lj.key_resets)))
    if lj.labels:
        pairs.append(("labels", [f"{k}={v}" for k, v in sorted(lj.labels.items())]))
    pairs += [("creator", lj.creator or "-"), ("create_time", render.fmt_time(lj.create_time)),
              ("update_time", render.fmt_time(lj.update_time))]
    return render.details(pairs)


def outputs_table(outputs: Iterable[LiveOutput]) -> str:
    return render.table(("OUTPUT", "NAME", "STATUS", "PROGRESS", "SEGMENTS", "LAST SEGMENT", "ENCODER", "MANIFEST"), (
        [o.output_id, o.name, _enum_name(LiveOutput.Status, o.status), f"{o.progress}%", o.counter,
         render.fmt_time(o.last_segment_time), o.encoder_id or "-", o.manifest or "-"] for o in outputs))


def timings_table(timings: Iterable[lres.LiveTiming]) -> str:
    return render.table(("SEQ", "TIME", "STATE", "EVENT", "OUTPUT", "MESSAGE"), (
        [t.sequence, render.fmt_time(t.time, millis=True), state_name(t.status), t.child_status or "-",
         t.output_id or "-", t.message_comment] for t in timings))


def stats_details(s: LiveStatistics) -> str:
    if not _has_stats(s):
        return "no statistics yet: no publisher has been connected"
    video = " ".join(p for p in (
        s.video_codec or (f"codec id {s.video_codec_id}" if s.video_codec_id else ""),
        f"{s.width}x{s.height}" if s.width or s.height else "",
        f"{_num(s.frame_rate)} fps" if s.frame_rate else "",
        f"{_num(s.video_data_rate)} kbit/s" if s.video_data_rate else "") if p) or "-"
    audio = " ".join(p for p in (
        s.audio_codec or (f"codec id {s.audio_codec_id}" if s.audio_codec_id else ""),
        f"{s.audio_sample_rate} Hz" if s.audio_sample_rate else "",
        f"{s.audio_channels} ch" + (" (stereo)" if s.stereo else "") if s.audio_channels else "",
        f"{s.audio_sample_size} bit" if s.audio_sample_size else "",
        f"{_num(s.audio_data_rate)} kbit/s" if s.audio_data_rate else "") if p) or "-"
    measured = ", ".join(p for p in (
        f"{_num(s.measured_fps)} fps" if s.measured_fps else "",
        f"video {_num(s.measured_video_kbps)} kbit/s" if s.measured_video_kbps else "",
        f"audio {_num(s.measured_audio_kbps)} kbit/s" if s.measured_audio_kbps else "") if p) or "-"
    return render.details([
        ("video", video), ("audio", audio), ("measured", measured), ("encoder", s.encoder or "-"),
        ("protocol", s.protocol or "-"), ("latency", f"{s.latency_ms} ms" if s.latency_ms else "-"),
        ("connected", render.fmt_time(s.connect_time)), ("updated", render.fmt_time(s.update_time))])


def _print(args: argparse.Namespace, msg: Any, text: str) -> int:
    _out(render.dumps(render.message_to_dict(msg)) if args.json else text)
    return 0


# -- commands ----------------------------------------------------------------------------------


def cmd_live_create(args: argparse.Namespace, c: MediaJobsClient) -> int:
    if args.file_path and args.server_type != "hls":
        args.parser.error("--file-path is the playlist an hls input pulls: give it with --server-type hls")
    lj = c.create_live_job(
        args.bucket, args.destination, template_id=args.template, description=args.description,
        server_type=args.server_type, input_class=args.input_class, file_path=args.file_path,
        callback_url=args.callback_url,
        reconnect_window=args.reconnect_window, max_duration=args.max_duration, cdn_distribution=args.cdn,
        labels=dict(args.label), request_id=args.request_id)
    if args.quiet:
        _out(lj.id)
        return 0
    if args.json:  # the whole live job, key included: this is the moment it is shown
        _out(render.dumps(render.message_to_dict(lj)))
        return 0
    pairs: list[tuple[str, str | Sequence[str]]] = [
        ("id", lj.id), ("name", lj.name), ("state", state_name(lj.state)),
        ("ingest_url", _ingest_text(lj, True)), ("master_playlist", lj.storage_master_file or "-")]
    if lj.backup_ingest_url:
        pairs.insert(4, ("backup_ingest_url", lj.backup_ingest_url))
    if lj.playback_url:
        pairs.append(("playback_url", lj.playback_url))
    if lj.input.callback_secret:
        pairs.append(("callback_secret", lj.input.callback_secret))
    _out(f"live job {lj.id} (#{lj.number}) created\n" + render.details(pairs))
    if lj.stream_key:
        _note("mediajobs: the ingest URL ends with the stream key: keep it secret (`mediajobs live get "
              f"{lj.id} --show-key` shows it again, `mediajobs live reset-key {lj.id}` replaces it); "
              f"`mediajobs live start {lj.id}` starts a session")
    return 0


def cmd_live_list(args: argparse.Namespace, c: MediaJobsClient) -> int:
    filters: dict[str, Any] = dict(search=args.search, states=args.state, include_stream_key=args.show_keys)
    if args.all:
        jobs = list(c.iter_live_jobs(page_size=args.page_size or 100, **filters))
        if args.json:
            _out(render.dumps({"live_jobs": [render.message_to_dict(lj) for lj in jobs], "total_size": len(jobs)}))
        else:
            _out(live_jobs_table(jobs, args.show_keys))
        return 0
    page = c.list_live_jobs(page_size=args.page_size, page_index=args.page, **filters)
    if args.json:
        doc: dict[str, Any] = {"live_jobs": [render.message_to_dict(lj) for lj in page.live_jobs]}
        if page.next_page_token:
            doc["next_page_token"] = page.next_page_token
        doc["total_size"] = page.total_size
        doc["page_info"] = render.message_to_dict(page.page_info)
        _out(render.dumps(doc))
        return 0
    _out(live_jobs_table(page.live_jobs, args.show_keys))
    info = page.page_info
    if args.page:
        _out(f"page {info.page_index} of {info.total_pages} ({info.total_count} live "
             f"job{'' if info.total_count == 1 else 's'})")
    elif page.next_page_token:
        _note(f"-- {len(page.live_jobs)} of {page.total_size} live jobs; more with --page 2 (or --all)")
    return 0


def cmd_live_get(args: argparse.Namespace, c: MediaJobsClient) -> int:
    lj = c.get_live_job(args.id)
    shown = lj if args.show_key else hide_secrets(lj)
    return _print(args, shown, live_job_details(shown, args.show_key))


def _set_encoding(c: MediaJobsClient, ref: str, online: bool, **kw: Any) -> lsvc.SetLiveEncodingResponse:
    """SetLiveEncoding for a live job given by id, name or stream key. What
    is not an id is tried as a key first (a key is never sent where the
    server could echo it: GetLiveJob's NOT_FOUND names what it was given);
    else the live job is read for its key."""
    if len(ref.strip()) != _ULID_LEN:
        try:
            return c.set_live_encoding(ref, online, **kw)
        except MediaJobsError as e:
            if e.code != grpc.StatusCode.NOT_FOUND:
                raise
    key = c.get_live_job(ref).stream_key
    return c.set_live_encoding(key, online, **kw)


def _print_encoding(args: argparse.Namespace, resp: lsvc.SetLiveEncodingResponse) -> int:
    out = lsvc.SetLiveEncodingResponse()
    out.CopyFrom(resp)
    out.live_job.CopyFrom(hide_secrets(resp.live_job))
    lj = out.live_job
    if args.json:
        _out(render.dumps(render.message_to_dict(out)))
        return 0
    pairs: list[tuple[str, str | Sequence[str]]] = [("state", state_name(lj.state))]
    if lj.session_count:
        pairs.append(("session", f"{lj.session_count} (job {lj.current_job_id or '-'})"))
    if resp.online:
        if lj.start_time.seconds:
            pairs.append(("start_time", render.fmt_time(lj.start_time)))
        if lj.finish_time.seconds:
            pairs.append(("finish_time", render.fmt_time(lj.finish_time)))
    pairs.append(("playback", out.playback_path_url or "-"))
    _out(f"live job {lj.id} {state_name(lj.state)}\n" + render.details(pairs))
    if lj.state == State.STOPPING:
        _note(f"mediajobs: the worker closes the playlists; `mediajobs live watch {lj.id}` follows it to STOPPED")
    elif resp.online and lj.state == State.STARTING:
        _note(f"mediajobs: `mediajobs live watch {lj.id}` follows it; publish to its ingest URL "
              f"(`mediajobs live get {lj.id} --show-key`)")
    return 0


def cmd_live_start(args: argparse.Namespace, c: MediaJobsClient) -> int:
    if args.at is not None and args.until is not None and args.until <= args.at:
        args.parser.error("--until must be after --at")
    resp = _set_encoding(c, args.id, True, start_time=args.at, finish_time=args.until, request_id=args.request_id)
    return _print_encoding(args, resp)


def cmd_live_stop(args: argparse.Namespace, c: MediaJobsClient) -> int:
    return _print_encoding(args, _set_encoding(c, args.id, False, request_id=args.request_id))


def cmd_live_outputs(args: argparse.Namespace, c: MediaJobsClient) -> int:
    outputs = list(c.iter_live_outputs(args.id))
    if args.json:
        _out(render.dumps({"outputs": [render.message_to_dict(o) for o in outputs]}))
    else:
        _out(outputs_table(outputs))
    return 0


def cmd_live_timings(args: argparse.Namespace, c: MediaJobsClient) -> int:
    timings: list[lres.LiveTiming] = []
    token = ""
    first: lsvc.ListLiveTimingsResponse | None = None
    while True:
        page = c.list_live_timings(args.id, output_id=args.output, page_size=args.page_size, page_token=token)
        first = first or page
        timings.extend(page.timings)
        token = page.next_page_token
        if not token or not args.all:
            break
    if args.json:
        doc: dict[str, Any] = {"timings": [render.message_to_dict(t) for t in timings]}
        if token:
            doc["next_page_token"] = token
        if first is not None:
            doc["page_info"] = render.message_to_dict(first.page_info)
        _out(render.dumps(doc))
        return 0
    _out(timings_table(timings))
    if token:
        total = first.page_info.total_count if first is not None else len(timings)
        _note(f"-- {len(timings)} of {total} entries; more with --all")
    return 0


def cmd_live_stats(args: argparse.Namespace, c: MediaJobsClient) -> int:
    s = c.get_live_statistics(args.id)
    return _print(args, s, stats_details(s))


def cmd_live_reset_key(args: argparse.Namespace, c: MediaJobsClient) -> int:
    lj = c.reset_stream_key(args.id, force=args.force)
    if args.json:
        _out(render.dumps(render.message_to_dict(lj)))
        return 0
    _out(f"live job {lj.id}: new stream key (reset {lj.key_resets} time{'' if lj.key_resets == 1 else 's'})\n"
         + render.details([("ingest_url", _ingest_text(lj, True)), ("state", state_name(lj.state))]))
    _note("mediajobs: the old key is refused from now on; publishers need the new ingest URL")
    return 0


def clip_details(clip: lres.LiveClip) -> str:
    rows = [("clip", clip.id), ("live_job_id", clip.live_job_id), ("state", lres.LiveClip.State.Name(clip.state)),
            ("window", f"{clip.start_time.ToJsonString()} .. {clip.end_time.ToJsonString()}"),
            ("rendition", clip.rendition), ("job_id", clip.job_id)]
    if clip.state == lres.LiveClip.SUCCEEDED:
        rows += [("duration", f"{clip.duration_s:.1f} s ({clip.segments} segments)"), ("playlist", clip.playlist),
                 ("mp4", clip.mp4)]
    if clip.entry_id:
        rows.append(("entry_id", clip.entry_id))
    if clip.HasField("error"):
        rows.append(("error", render.status_text(clip.error)))
    return render.details(rows)


def cmd_live_clip(args: argparse.Namespace, c: MediaJobsClient) -> int:
    if args.end <= args.start:
        args.parser.error("--to must be after --from")
    clip = c.create_live_clip(args.id, args.start, args.end, rendition=args.rendition,
                              create_entry=args.entry is not None, entry_name=args.entry or "",
                              request_id=args.request_id)
    if args.wait:
        try:
            clip = c.wait_live_clip(clip.id)
        except KeyboardInterrupt:
            return 130
    _print(args, clip, clip_details(clip))
    return 1 if clip.state == lres.LiveClip.FAILED else 0


def cmd_live_clips(args: argparse.Namespace, c: MediaJobsClient) -> int:
    clips: list[lres.LiveClip] = []
    token = ""
    while True:
        page = c.list_live_clips(args.id, page_size=100, page_token=token)
        clips.extend(page.clips)
        token = page.next_page_token
        if not token:
            break
    if args.json:
        _out(render.dumps({"clips": [render.message_to_dict(x) for x in clips]}))
    elif not clips:
        _out("no clips")
    else:
        _out("\n\n".join(clip_details(x) for x in clips))
    return 0


def cmd_live_delete(args: argparse.Namespace, c: MediaJobsClient) -> int:
    c.delete_live_job(args.id, force=args.force, allow_missing=args.allow_missing)
    if args.json:
        _out(render.dumps({"deleted_id": args.id}))
    else:
        _out(f"deleted live job {args.id}")
    return 0


# -- watch -----------------------------------------------------------------------------------------


def status_record(lj: LiveJob, stats: LiveStatistics, outputs: Sequence[LiveOutput]) -> dict[str, Any]:
    """What `live watch` shows of a live job: its state and session, the
    incoming stream's size, frame rate and bit rate, and the segments
    written (the most of any rendition)."""
    rec: dict[str, Any] = {"live_job_id": lj.id, "state": state_name(lj.state)}
    if lj.current_job_id:
        rec["session_job_id"] = lj.current_job_id
    if stats.width or stats.height:
        rec["width"], rec["height"] = stats.width, stats.height
    if _fps_of(stats):
        rec["fps"] = round(_fps_of(stats), 2)
    if _kbps_of(stats):
        rec["kbps"] = round(_kbps_of(stats), 1)
    rec["segments"] = max((o.counter for o in outputs), default=0)
    if lj.HasField("error"):
        rec["error"] = render.message_to_dict(lj.error)
    return rec


def status_line(rec: dict[str, Any]) -> str:
    parts = [f"live job {rec['live_job_id']}", f"{rec['state']:<14}"]
    if "width" in rec:
        parts.append(f"{rec['width']}x{rec['height']}")
    if "fps" in rec:
        parts.append(f"{_num(rec['fps'])} fps")
    if "kbps" in rec:
        parts.append(f"{_num(rec['kbps'])} kbit/s")
    parts.append(f"{rec['segments']} segment{'' if rec['segments'] == 1 else 's'}")
    if "error" in rec:
        parts.append(f"error: {rec['error'].get('message', '')}")
    return "  ".join(parts)


class LiveStatusDisplay:
    """`live watch`'s output: with --json one JSON line per change; else on a
    terminal one status line rewritten in place, otherwise a line per change."""

    def __init__(self, json_lines: bool) -> None:
        self.json_lines = json_lines
        self.tty = not json_lines and _isatty(sys.stdout)
        self._last: dict[str, Any] | None = None
        self._len = 0

    def show(self, rec: dict[str, Any]) -> None:
        if rec == self._last:
            return
        self._last = rec
        if self.json_lines:
            _out(render.dumps_line(rec))
            return
        line = status_line(rec)
        if not self.tty:
            _out(line)
            return
        line = line[:max(20, shutil.get_terminal_size().columns - 1)]
        sys.stdout.write("\r" + line.ljust(self._len))
        sys.stdout.flush()
        self._len = len(line)

    def end_line(self) -> None:
        if self._len:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self._len = 0


def _live_state_of(job: Any) -> int | None:
    """The live state a session job carries (progress_details.live_state)."""
    pd = job.progress_details
    name = pd["live_state"] if "live_state" in pd else ""
    return int(State.Value(name)) if isinstance(name, str) and name in State.keys() else None


def _live_job_of(job: Any) -> str:
    pd = job.progress_details
    value = pd["live_job_id"] if "live_job_id" in pd else ""
    return value if isinstance(value, str) else ""


def cmd_live_watch(args: argparse.Namespace, c: MediaJobsClient) -> int:
    if not 0.1 <= args.interval <= 600:
        args.parser.error("--interval must be between 0.1 and 600 seconds")
    live_id = c.get_live_job(args.id).id  # NOT_FOUND (exit 1) before anything is watched
    display = LiveStatusDisplay(args.json)

    def on_retry(info: RetryInfo) -> None:
        if info.attempt == 0:
            why = f"{info.error.code.name}: {info.error.message}" if info.error else "the server ended the stream"
            display.end_line()
            _note(f"mediajobs: lost the watch of live job {live_id} ({why}); reconnecting to {c.target}")

    # The session job's events carry the state changes; the statistics and
    # segment counters change without an event and are read on each
    # progress bookmark (every --interval) while a worker has the session.
    watch = c.watch_jobs(types=[LIVE_JOB_TYPE], include_progress=True, progress_interval=args.interval,
                         on_retry=on_retry)
    lj: LiveJob | None = None
    try:
        for msg in watch:
            if msg.events:
                job = msg.events[0].job
                if _live_job_of(job) != live_id:
                    continue
                event_state = _live_state_of(job)
                lj = c.get_live_job(live_id)
                if event_state in _TERMINAL:
                    lj.state = event_state  # type: ignore[assignment]  # this session's end, even if another began
                display.show(status_record(lj, lj.statistics, list(c.iter_live_outputs(live_id))))
            elif lj is None:
                # The stream is open (its first message): from here on no change is missed.
                lj = c.get_live_job(live_id)
                display.show(status_record(lj, lj.statistics, list(c.iter_live_outputs(live_id))))
            elif lj.state in _ACTIVE:
                stats = c.get_live_statistics(live_id)
                display.show(status_record(lj, stats, list(c.iter_live_outputs(live_id))))
            if lj is not None and lj.state in _TERMINAL:
                break
    except KeyboardInterrupt:
        display.end_line()
        return 130
    finally:
        watch.close()
    display.end_line()
    if lj is None:  # the watch ended without a message (cancelled)
        return 1
    if lj.state == State.FAILED:
        why = f": {render.status_text(lj.error)}" if lj.HasField("error") else ""
        _note(f"mediajobs: live job {live_id} FAILED{why}")
        return 1
    return 0


# -- publish-test ----------------------------------------------------------------------------------


def masked_url(url: str) -> str:
    """`url` with the stream key (the last part of an RTMP URL's path)
    replaced, for messages."""
    try:
        u = urllib.parse.urlsplit(url)
    except ValueError:
        return "<the URL>"
    if u.scheme in ("rtmp", "rtmps") and u.path.count("/") >= 2 and not u.path.endswith("/"):
        head = u.path.rsplit("/", 1)[0]
        return urllib.parse.urlunsplit((u.scheme, u.netloc, head + "/<stream key>", "", ""))
    if u.query:
        return urllib.parse.urlunsplit((u.scheme, u.netloc, u.path, "<query>", ""))
    return url


def _why(e: BaseException) -> str:
    return str(getattr(e, "strerror", None) or type(e).__name__)


def cmd_live_publish_test(args: argparse.Namespace, c: MediaJobsClient) -> int:
    shown = masked_url(args.url)
    try:  # PyAV: only this command needs it
        import av

        from ..live.publisher import publish
    except ImportError as e:
        _note(f"mediajobs: live publish-test needs PyAV (`pip install av`): {e}")
        return 1
    width, height = args.size
    if not args.json:
        _note(f"mediajobs: publishing {args.seconds:g} s of test pattern ({width}x{height}, {args.fps} fps) "
              f"to {shown}")
    deadline = time.monotonic() + args.open_timeout
    while True:
        started = time.monotonic()
        try:
            r = publish(args.url, seconds=args.seconds, width=width, height=height, fps=args.fps,
                        open_timeout=max(0.1, deadline - started))
            break
        except KeyboardInterrupt:
            return 130
        except ConnectionRefusedError as e:
            # Nothing listens (yet): nothing was sent, so try again until --open-timeout.
            # (PyAV connects at the first packet, after publish()'s own retries.)
            if time.monotonic() + _REFUSED_RETRY_S < deadline:
                time.sleep(_REFUSED_RETRY_S)
                continue
            _note(f"mediajobs: {shown}: nothing accepted the connection within {args.open_timeout:g} s "
                  f"({_why(e)}): is a live worker (`mediajobs worker --live`) listening there?")
            return 1
        except TimeoutError as e:
            _note(f"mediajobs: {shown}: no answer within {args.open_timeout:g} s ({_why(e)}): is the host "
                  "reachable, and a live worker (`mediajobs worker --live`) listening there?")
            return 1
        except PermissionError as e:
            _note(f"mediajobs: {shown}: the server refused the stream ({_why(e)}): is the stream key right "
                  "(not reset), and is the live job started and AWAITING_INPUT (`mediajobs live watch ID`)?")
            return 1
        except (OSError, EOFError, ValueError, av.error.FFmpegError) as e:
            took = render.fmt_elapsed(time.monotonic() - started)
            _note(f"mediajobs: {shown}: publishing failed after {took} ({_why(e)}): the server refused or "
                  "dropped the stream")
            return 1
    if args.json:
        _out(render.dumps({"url": shown, "seconds": r.seconds, "video_frames": r.video_frames,
                           "audio_frames": r.audio_frames, "width": width, "height": height, "fps": args.fps}))
    else:
        _out(f"published {r.seconds:g} s of test pattern to {shown}: {r.video_frames} video frames "
             f"({width}x{height}, {args.fps} fps), {r.audio_frames} audio frames")
    return 0
