"""What the command groups of the CLI share: the environment variables and
argument types, the parser helpers (global options, command groups and their
ACTIONs), the output helpers and the exit status of an argparse exit.

The names with a leading underscore are for the modules of this package only.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from mediajobs.v1 import resources_pb2 as res

from .. import render
from ..client import DEFAULT_TARGET, MediaJobsClient, parse_entry_state, parse_priority, parse_state

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

_TERMINAL_JOB_STATES = frozenset({res.Job.SUCCEEDED, res.Job.FAILED, res.Job.ABORTED})


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
    p.add_argument("--api-key", metavar="KEY", default=argparse.SUPPRESS if sub else None,
                   help="API key for a server with --auth keys (env MEDIAJOBS_API_KEY; prefer the variable: "
                        "a flag shows in the process list)")
    p.add_argument("--tls-ca", metavar="FILE", default=argparse.SUPPRESS if sub else None,
                   help="connect with TLS, trusting this PEM CA (env MEDIAJOBS_TLS_CA; --tls-system-roots: the "
                        "system's)")
    p.add_argument("--tls-system-roots", action="store_true", default=argparse.SUPPRESS if sub else False,
                   help="connect with TLS, trusting the system's root CAs")
    p.add_argument("--tls-cert", metavar="FILE", default=argparse.SUPPRESS if sub else None,
                   help="client certificate for mutual TLS, with --tls-key (env MEDIAJOBS_TLS_CLIENT_CERT)")
    p.add_argument("--tls-key", metavar="FILE", default=argparse.SUPPRESS if sub else None,
                   help="private key of --tls-cert (env MEDIAJOBS_TLS_CLIENT_KEY)")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS if sub else False,
                   help="print JSON (one document; JSON lines for jobs watch, entries add, mediainfo, bulk upload "
                        "and bulk watch) "
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


# -- exit status ----------------------------------------------------------------------


def _exit_status(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    _note(str(e.code))
    return 1
