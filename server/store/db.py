"""Opening the database: a SQLite file by default, PostgreSQL by URL."""
from __future__ import annotations

from pathlib import Path

import peewee
from playhouse.db_url import connect as url_connect

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": "normal",  # durable in WAL mode across process crashes
    "foreign_keys": 1,
    "busy_timeout": 30_000,  # other processes' writers wait instead of "database is locked"
    "cache_size": -64_000,
}


def open_database(url_or_path: str) -> peewee.Database:
    """Return an (unconnected) Peewee database for a path or URL.

    A plain path (or `sqlite:///path`) is a SQLite file in WAL mode;
    `postgresql://user@host:port/db` is PostgreSQL. Connections are
    per-thread (Peewee's default), so never use `:memory:`.
    """
    if "://" not in url_or_path:
        path = Path(url_or_path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return peewee.SqliteDatabase(str(path), pragmas=SQLITE_PRAGMAS, check_same_thread=False)
    if url_or_path.startswith("sqlite"):
        return url_connect(url_or_path, pragmas=SQLITE_PRAGMAS)
    if url_or_path.startswith(("postgres://", "postgresql://")):
        return url_connect(url_or_path)
    raise ValueError(f"unsupported database URL {url_or_path!r}: use a file path, sqlite:///PATH or postgresql://...")


def is_postgres(db: peewee.Database) -> bool:
    return isinstance(db, peewee.PostgresqlDatabase)
