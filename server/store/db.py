"""Opening the database: a SQLite file by default, PostgreSQL by URL.

Durability is a choice (`--durability`):

- `strict` (the default): an acknowledged write survives a power loss or an
  OS crash. SQLite runs `synchronous=FULL` (the WAL is fsynced at every
  commit); PostgreSQL keeps its own `synchronous_commit` setting (on by
  default).
- `fast`: an acknowledged write survives a crash of the server process, but
  the last commits before a power loss or an OS crash may be lost. SQLite runs
  `synchronous=NORMAL` (the WAL is fsynced at checkpoints only); PostgreSQL
  sessions run `synchronous_commit=off` (a database crash may lose the last
  few hundred milliseconds; it never corrupts).
"""
from __future__ import annotations

import urllib.parse
from pathlib import Path

import peewee
from playhouse.db_url import connect as url_connect

DURABILITY_MODES = ("strict", "fast")
DEFAULT_DURABILITY = "strict"
# How long opening a PostgreSQL connection may take before the call fails
# UNAVAILABLE (psycopg2's default is to wait forever).
PG_CONNECT_TIMEOUT_S = 5

_SQLITE_SYNCHRONOUS = {"strict": "full", "fast": "normal"}

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "foreign_keys": 1,
    "busy_timeout": 30_000,  # other processes' writers wait instead of "database is locked"
    "cache_size": -16_000,
}


class DatabaseUrlError(ValueError):
    """A --db value that cannot name a database; the message says what to fix."""


def durability_summary(durability: str, postgres: bool) -> str:
    """One line for the start-up log: the mode and what an ack guarantees."""
    if durability == "strict":
        how = "PostgreSQL synchronous_commit as configured (on by default)" if postgres else "SQLite synchronous=FULL"
        return f"strict ({how}): an acknowledged write survives power loss and OS crashes"
    how = "PostgreSQL synchronous_commit=off" if postgres else "SQLite synchronous=NORMAL"
    return (f"fast ({how}): an acknowledged write survives a server crash; "
            "the last commits before a power loss or OS crash may be lost")


def redact_url(url_or_path: str) -> str:
    """The URL with its password (and any password= parameter) masked."""
    if "://" not in url_or_path:
        return url_or_path
    try:
        parts = urllib.parse.urlsplit(url_or_path)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":***"
            netloc = f"{userinfo}@{host}"
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        q = "&".join(
            f"{k}=***" if k.lower() in ("password", "passwd") else urllib.parse.urlencode({k: v})
            for k, v in query
        )
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, q, parts.fragment))
    except ValueError:
        return "<unparseable database URL>"


def open_database(url_or_path: str, durability: str = DEFAULT_DURABILITY) -> peewee.Database:
    """Return an (unconnected) Peewee database for a path or URL.

    A plain path (or `sqlite:///path`) is a SQLite file in WAL mode;
    `postgresql://user@host:port/db` is PostgreSQL. Connections are
    per-thread (Peewee's default), so never use `:memory:`. Raises
    DatabaseUrlError for anything that cannot work.
    """
    if durability not in DURABILITY_MODES:
        raise DatabaseUrlError(f"unknown durability {durability!r}: use strict or fast")
    pragmas = dict(SQLITE_PRAGMAS, synchronous=_SQLITE_SYNCHRONOUS[durability])
    if "://" not in url_or_path:
        return _sqlite(url_or_path, pragmas)
    scheme = url_or_path.split("://", 1)[0].lower()
    if scheme in ("sqlite", "sqlite3"):
        parts = urllib.parse.urlsplit(url_or_path)
        if parts.query:
            names = ", ".join(sorted({k for k, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)}))
            raise DatabaseUrlError(
                f"SQLite URLs take no parameters (got {names}); the server sets the pragmas itself: "
                "durability with --durability strict|fast, WAL mode and the busy timeout always"
            )
        path = urllib.parse.unquote(parts.path)
        if parts.netloc:  # sqlite://relative/path
            path = parts.netloc + path
        elif path.startswith("//"):  # sqlite:////absolute/path
            path = path[1:]
        else:  # sqlite:///relative/path
            path = path[1:]
        if not path or path == ":memory:":
            raise DatabaseUrlError("a SQLite URL needs a file path, e.g. sqlite:////var/lib/mediajobs/mediajobs.db")
        return _sqlite(path, pragmas)
    if scheme in ("postgres", "postgresql"):
        return _postgres(url_or_path, durability)
    raise DatabaseUrlError(
        f"unsupported database URL scheme {scheme[:20]!r}: use a file path, sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
    )


def _sqlite(path_text: str, pragmas: dict[str, object]) -> peewee.Database:
    path = Path(path_text).expanduser()
    if path.is_dir():
        raise DatabaseUrlError(f"{path} is a folder; give the path of the database file, e.g. {path / 'mediajobs.db'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatabaseUrlError(f"cannot create the folder {path.parent} for the database: {e.strerror}") from e
    return peewee.SqliteDatabase(str(path), pragmas=pragmas, check_same_thread=False)


def _postgres(url: str, durability: str) -> peewee.Database:
    parts = urllib.parse.urlsplit(url)
    if not parts.path.strip("/"):
        raise DatabaseUrlError("a PostgreSQL URL needs a database name, e.g. postgresql://postgres@127.0.0.1:5432/mediajobs")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError as e:
        raise DatabaseUrlError(f"bad port in the PostgreSQL URL: {e}") from e
    params = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    names = {k for k, _ in params}
    if "connect_timeout" not in names:
        params.append(("connect_timeout", str(PG_CONNECT_TIMEOUT_S)))
    if durability == "fast":
        opts = [v for k, v in params if k == "options"]
        params = [(k, v) for k, v in params if k != "options"]
        params.append(("options", " ".join(opts + ["-c synchronous_commit=off"])))
    fixed = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, urllib.parse.urlencode(params), ""))
    try:
        return url_connect(fixed)
    except (TypeError, ValueError) as e:
        raise DatabaseUrlError(f"cannot use this PostgreSQL URL: {e}") from e


def is_postgres(db: peewee.Database) -> bool:
    return isinstance(db, peewee.PostgresqlDatabase)
