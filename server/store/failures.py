"""What a failing database means for the caller.

The store raises driver errors (sqlite3, psycopg2, wrapped by Peewee). Most
are bugs and stay INTERNAL, but some say the database itself cannot serve
right now: the disk is full, the file is read-only, the connection was lost
(a PostgreSQL restart, failover or `pg_terminate_backend`). `classify()`
turns those into a ServiceError a client can act on (RESOURCE_EXHAUSTED or
UNAVAILABLE, with an ErrorInfo), and says whether the connection that raised
it must be thrown away so the next use reconnects.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Iterator

import grpc

from ..errors import ServiceError

# SQLite primary result codes (https://www.sqlite.org/rescode.html).
SQLITE_BUSY = 5
SQLITE_LOCKED = 6
SQLITE_READONLY = 8
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14
SQLITE_NOTADB = 26


@dataclass
class DatabaseFailure:
    """A database that cannot serve: the error for the caller, and whether
    the connection must be closed and reopened."""

    error: ServiceError
    reconnect: bool


def _chain(e: BaseException) -> Iterator[BaseException]:
    """The exception, what Peewee wrapped (args[0]), and its causes."""
    seen: set[int] = set()
    todo: list[BaseException] = [e]
    while todo:
        x = todo.pop(0)
        if id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        if x.args and isinstance(x.args[0], BaseException):
            todo.append(x.args[0])
        for nxt in (x.__cause__, x.__context__):
            if nxt is not None:
                todo.append(nxt)


def _unavailable(reason: str, message: str, cause: BaseException) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.UNAVAILABLE, reason,
        message + "; retry with back-off (a request_id makes a retried write safe)",
        metadata={"cause": _first_line(cause)},
    )


def _disk_full(whose: str, cause: BaseException) -> DatabaseFailure:
    return DatabaseFailure(ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "DISK_FULL",
        f"{whose} is full; nothing of this request was written. "
        "Retry with back-off once an operator has freed space",
        metadata={"cause": _first_line(cause)},
    ), reconnect=False)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def _sqlite(e: sqlite3.Error) -> DatabaseFailure | None:
    code = getattr(e, "sqlite_errorcode", None)
    text = str(e).lower()
    primary = code & 0xFF if isinstance(code, int) else None
    if primary == SQLITE_FULL or "database or disk is full" in text:
        return _disk_full("the server's database disk", e)
    if primary == SQLITE_READONLY or "readonly database" in text:
        return DatabaseFailure(_unavailable(
            "DATABASE_READ_ONLY", "the server's database is read-only right now; nothing of this request was written",
            e), reconnect=True)
    if primary in (SQLITE_IOERR, SQLITE_CANTOPEN) or "disk i/o error" in text or "unable to open" in text:
        return DatabaseFailure(_unavailable(
            "DATABASE_IO_ERROR", "the server cannot read or write its database file", e), reconnect=True)
    if primary in (SQLITE_BUSY, SQLITE_LOCKED) or "database is locked" in text:
        return DatabaseFailure(_unavailable(
            "DATABASE_BUSY", "another process holds the database's write lock", e), reconnect=False)
    if primary in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return DatabaseFailure(_unavailable(
            "DATABASE_CORRUPT", "the server's database file is damaged; an operator must restore it", e),
            reconnect=True)
    return None


# PostgreSQL SQLSTATEs (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_PG_DISK_FULL = "53100"
_PG_READ_ONLY = "25006"


def _postgres(e: BaseException) -> DatabaseFailure | None:
    try:
        import psycopg2
    except ImportError:  # pragma: no cover - psycopg2 is a dependency
        return None
    if not isinstance(e, psycopg2.Error):
        return None
    code = getattr(e, "pgcode", None) or ""
    if code == _PG_DISK_FULL:
        return _disk_full("the database server's disk", e)
    if code == _PG_READ_ONLY:
        return DatabaseFailure(_unavailable(
            "DATABASE_READ_ONLY", "the database is read-only (a standby, or a failover in progress)", e),
            reconnect=True)
    if code.startswith(("08", "57P")) or code in ("53300", "53200"):
        # connection exceptions, admin/crash shutdown, cannot connect now,
        # too many connections, out of memory
        return DatabaseFailure(_unavailable(
            "DATABASE_UNAVAILABLE", "the server lost its database connection and is reconnecting", e),
            reconnect=True)
    if isinstance(e, (psycopg2.OperationalError, psycopg2.InterfaceError)) and not code:
        # "server closed the connection unexpectedly", "connection already
        # closed", "could not connect to server": no SQLSTATE at all.
        return DatabaseFailure(_unavailable(
            "DATABASE_UNAVAILABLE", "the server cannot reach its database and is reconnecting", e),
            reconnect=True)
    return None


def classify(e: BaseException) -> DatabaseFailure | None:
    """A DatabaseFailure when `e` (or what it wraps) says the database cannot
    serve right now; None for anything else (a bug: INTERNAL)."""
    if isinstance(e, ServiceError):
        return None
    for x in _chain(e):
        if isinstance(x, sqlite3.Error):
            out = _sqlite(x)
        else:
            out = _postgres(x)
        if out is not None:
            return out
    return None


def connection_is_broken(db: object) -> bool:
    """Whether the calling thread's PostgreSQL connection is known dead."""
    state = getattr(db, "_state", None)
    conn = getattr(state, "conn", None)
    return bool(getattr(conn, "closed", 0)) if conn is not None and not isinstance(conn, sqlite3.Connection) else False


def reset_connection(db: object) -> None:
    """Close the calling thread's connection (whatever state it is in), so
    the next statement opens a new one."""
    import peewee

    assert isinstance(db, peewee.Database)
    state = getattr(db, "_state")
    try:
        state.transactions.clear()  # the transaction is gone with the connection
        db.close()
    except Exception:
        state.reset()
