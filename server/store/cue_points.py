"""Cue point SQL: bulk insert (with tags), entry existence, export pages.

Inserts run in the group-commit writer (they take a `WriteTx`); reads take
the database. Only protobuf messages and plain values leave this module.
Every statement works on SQLite and PostgreSQL.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import peewee
from ..ids import new_id

from mediajobs.v1 import media_resources_pb2 as mres

from ..convert import set_ts
from .models import models_for
from .writer import WriteTx

CuePoint = mres.CuePoint

# Rows per multi-row INSERT / ids per IN list: 8 x 100 = 800 parameters,
# below SQLite's historical limit of 999 bound parameters per statement.
_INSERT_ROWS = 100
_TAG_ROWS = 300
_IN_CHUNK = 500

_CUE_COLUMNS = "id, project, entry_id, type, start_time_ms, end_time_ms, create_time, data"


@dataclass
class ExportFilter:
    """The validated filters of an export; empty lists and 0 mean "any"."""

    entry_ids: list[str] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    start_time_from_ms: int = 0
    start_time_to_ms: int = 0  # 0: no upper bound
    tags: list[str] = field(default_factory=list)


# Keyset position after the last row of a page: (entry_id, start_time_ms, id).
ExportKey = tuple[str, int, str]


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def existing_entry_ids(db: peewee.Database, project: str, entry_ids: Iterable[str]) -> set[str]:
    """Which of `entry_ids` are entries of `project`."""
    wanted = sorted(set(entry_ids))
    found: set[str] = set()
    p = db.param
    for chunk in _chunks(wanted, _IN_CHUNK):
        sql = f"SELECT id FROM entries WHERE project = {p} AND id IN ({', '.join([p] * len(chunk))})"
        found.update(row[0] for row in db.execute_sql(sql, (project, *chunk)).fetchall())
    return found


def insert_cue_points(tx: WriteTx, cue_points: Sequence[CuePoint]) -> None:
    """Give each cue point a new id and create_time (in place) and insert it
    with its tags. Tags must already be unique per cue point."""
    p = tx.db.param
    for cp in cue_points:
        cp.id = new_id()
        set_ts(cp.create_time, tx.now)
    for chunk in _chunks(cue_points, _INSERT_ROWS):
        row = f"({', '.join([p] * 8)})"
        sql = f"INSERT INTO cue_points ({_CUE_COLUMNS}) VALUES {', '.join([row] * len(chunk))}"
        params: list[Any] = []
        for cp in chunk:
            params += [
                cp.id, tx.project, cp.entry_id, cp.type, cp.start_time_ms, cp.end_time_ms, tx.now,
                cp.SerializeToString(),
            ]
        tx.db.execute_sql(sql, params)
    tag_rows = [(cp.id, tx.project, tag) for cp in cue_points for tag in cp.tags]
    for tag_chunk in _chunks(tag_rows, _TAG_ROWS):
        row = f"({p}, {p}, {p})"
        sql = f"INSERT INTO cue_point_tags (cue_point_id, project, tag) VALUES {', '.join([row] * len(tag_chunk))}"
        tx.db.execute_sql(sql, [v for r in tag_chunk for v in r])


def export_rows(
    db: peewee.Database, project: str, flt: ExportFilter, after: ExportKey | None, limit: int
) -> list[tuple[ExportKey, CuePoint]]:
    """Up to `limit` matching cue points ordered by (entry_id, start_time_ms,
    id), starting after `after`; each with its keyset position."""
    m = models_for(db)
    C, T = m.CuePointRow, m.CuePointTagRow
    where: list[Any] = [C.project == project]
    if flt.entry_ids:
        where.append(C.entry_id.in_(flt.entry_ids))
    if flt.types:
        where.append(C.type.in_(flt.types))
    if flt.start_time_from_ms:
        where.append(C.start_time_ms >= flt.start_time_from_ms)
    if flt.start_time_to_ms:
        where.append(C.start_time_ms <= flt.start_time_to_ms)
    if flt.tags:
        tagged = T.select(T.cue_point_id).where((T.project == project) & T.tag.in_(flt.tags))
        where.append(C.id.in_(tagged))
    if after is not None:
        entry_id, start, cue_id = after
        where.append(
            (C.entry_id > entry_id)
            | ((C.entry_id == entry_id) & ((C.start_time_ms > start) | ((C.start_time_ms == start) & (C.id > cue_id))))
        )
    cond = where[0]
    for w in where[1:]:
        cond = cond & w
    query = (
        C.select(C.entry_id, C.start_time_ms, C.id, C.data)
        .where(cond)
        .order_by(C.entry_id, C.start_time_ms, C.id)
        .limit(limit)
        .tuples()
    )
    return [((e, int(s), i), CuePoint.FromString(bytes(d))) for e, s, i, d in query]
