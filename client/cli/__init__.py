"""`mediajobs`: the command line of the mediajobs control plane.

    mediajobs jobs create --type TRANSCODE --template mp4-h264-360p --params '{"source": "incoming/a.mov"}'
    mediajobs jobs list --state PENDING RUNNING --order-by "priority desc"
    mediajobs jobs wait 01HA255YE6H6DEETJ5M6595ZDA    # until it has finished; exit 0 if it SUCCEEDED
    mediajobs jobs watch --json
    mediajobs worker myhandlers --concurrency 16      # run job handlers from myhandlers.py
    mediajobs entries add incoming/clip.mov --template mp4-h264-720p   # a path under the storage root
    mediajobs mediainfo 01HA255YE6H6DEETJ5M6595ZDA
    mediajobs templates list
    mediajobs bulk upload catalogue.csv --template mp4-h264-720p   # one entry per CSV record
    mediajobs live create --bucket events --destination studio-a/main   # prints the ingest URL
    mediajobs live start 01HA255YE6H6DEETJ5M6595ZDA && mediajobs live watch 01HA255YE6H6DEETJ5M6595ZDA
    mediajobs worker --media                          # the reference media worker, default storage root
    mediajobs admin projects create acme              # admin keys: projects, API keys, the audit log
    mediajobs admin keys create --project acme --role editor --name ci   # prints the key once

Global options (--server, --json) may come before or after the subcommand.

The CLI is a package with one module per command group (jobs, entries,
mediainfo, templates, cuepoints, bulk, live, worker, admin) and `common` for what they share.
Each group module has `add_parser(groups)`, which adds the group and its
ACTIONs (each with its `cmd_*` handler as `func`) to the COMMAND subparsers,
and the handlers themselves. To add a group, write `cli/<group>.py` with
`add_parser(groups)` and its `cmd_*` handlers, and call its `add_parser`
in `build_parser` below, where `mediajobs --help` should list it.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import grpc

from .. import render
from ..client import DEFAULT_TARGET, MediaJobsClient, tls_credentials
from ..errors import MediaJobsError
from . import admin, bulk, cuepoints, entries, jobs, live, mediainfo, templates, worker
from .common import ENV_DATA_DIR, ENV_SERVER, ENV_STORAGE_ROOT, _FMT, _add_globals, _exit_status, _note
from .common import default_storage_root, version_text
from .entries import EntryProgress, EntryProgressDisplay, follow_entry, source_uri_of
from .worker import load_worker

__all__ = [
    "ENV_DATA_DIR",
    "ENV_SERVER",
    "ENV_STORAGE_ROOT",
    "EntryProgress",
    "EntryProgressDisplay",
    "build_parser",
    "default_storage_root",
    "follow_entry",
    "load_worker",
    "main",
    "source_uri_of",
    "version_text",
]


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
    # The COMMANDs, in the order `mediajobs --help` lists them.
    jobs.add_parser(groups)
    entries.add_parser(groups)
    mediainfo.add_parser(groups)
    templates.add_parser(groups)
    cuepoints.add_parser(groups)
    bulk.add_parser(groups)
    live.add_parser(groups)
    worker.add_parser(groups)
    admin.add_parser(groups)
    return ap


# -- entry point ----------------------------------------------------------------------


def _credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS from --tls-* or MEDIAJOBS_TLS_* (None: plaintext)."""
    ca = args.tls_ca or os.environ.get("MEDIAJOBS_TLS_CA") or None
    cert = args.tls_cert or os.environ.get("MEDIAJOBS_TLS_CLIENT_CERT") or None
    key = args.tls_key or os.environ.get("MEDIAJOBS_TLS_CLIENT_KEY") or None
    if not (ca or cert or key or args.tls_system_roots):
        return None
    return tls_credentials(ca, cert, key)


def main(argv: Sequence[str] | None = None, *, channel: grpc.Channel | None = None) -> int:
    """Run the CLI; returns the exit status. `channel` replaces the channel to
    --server (tests inject a scripted one)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as e:
        return _exit_status(e)
    server = args.server or os.environ.get(ENV_SERVER) or DEFAULT_TARGET
    try:
        credentials = _credentials(args)
    except MediaJobsError as e:
        _note(f"mediajobs: {e.message}")
        return 2
    api_key = args.api_key or os.environ.get("MEDIAJOBS_API_KEY") or None
    client = MediaJobsClient(server, channel=channel, credentials=credentials, api_key=api_key)
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
