"""The change log: reading events back (filtered like a watcher) and
compacting old ones in bounded steps."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import peewee

from .jobs import compact_revision, current_revision
from .models import models_for
from .writer import PendingEvent, WriteTx

COMPACT_STEP = 5_000
MAX_IN_LIST = 500


@dataclass
class EventFilter:
    job_ids: Sequence[str] = ()
    types: Sequence[str] = ()
    states: Sequence[int] = ()


_COLUMNS = "revision, job_id, job_type, state, previous_state, data, project"


def _row(r: Sequence[object]) -> PendingEvent:
    return PendingEvent(int(r[0]), str(r[1]), str(r[2]), int(r[3]), int(r[4]), bytes(r[5]),  # type: ignore[arg-type, call-overload]
                        0, str(r[6]))


def read_events(
    db: peewee.Database, project: str, from_rev: int, to_rev: int, limit: int, flt: EventFilter | None = None
) -> tuple[list[PendingEvent], int]:
    """Matching events of `project` with from_rev <= revision <= to_rev,
    oldest first, at most `limit`, and the compact revision read in the same
    transaction: if it is >= from_rev, events of the range may be gone
    (OUT_OF_RANGE)."""
    return _read(db, project, from_rev, to_rev, limit, flt)


def read_all_events(db: peewee.Database, _project: str, from_rev: int, to_rev: int, limit: int
                    ) -> tuple[list[PendingEvent], int]:
    """read_events over every project (the watch hub's own log reads: it
    fans out to the watchers of all projects)."""
    return _read(db, None, from_rev, to_rev, limit, None)


def _read(db: peewee.Database, project: str | None, from_rev: int, to_rev: int, limit: int,
          flt: EventFilter | None) -> tuple[list[PendingEvent], int]:
    p = db.param
    where = [f"revision >= {p}", f"revision <= {p}"]
    args: list[object] = [from_rev, to_rev]
    if project is not None:
        where.append(f"project = {p}")
        args.append(project)
    if flt is not None:
        if flt.job_ids and len(flt.job_ids) <= MAX_IN_LIST:
            where.append(f"job_id IN ({', '.join([p] * len(flt.job_ids))})")
            args += list(flt.job_ids)
        if flt.types and len(flt.types) <= MAX_IN_LIST:
            where.append(f"job_type IN ({', '.join([p] * len(flt.types))})")
            args += list(flt.types)
        if flt.states:
            marks = ", ".join([p] * len(flt.states))
            where.append(f"(state IN ({marks}) OR previous_state IN ({marks}))")
            args += list(flt.states) * 2
    sql = (
        f"SELECT {_COLUMNS} FROM job_events "
        f"WHERE {' AND '.join(where)} ORDER BY revision LIMIT {int(limit)}"
    )
    with db.atomic():
        rows = db.execute_sql(sql, args).fetchall()
        compacted = compact_revision(db)
    return [_row(r) for r in rows], compacted


def committed_revision(db: peewee.Database, project: str) -> int:
    """The newest revision committed to the database, by any process (the
    watch hub's log tail polls it)."""
    return current_revision(db)


def recent_events(db: peewee.Database, _project: str, n: int) -> list[PendingEvent]:
    """The newest n events of every project, oldest first (to warm the
    watch buffer at start)."""
    rows = db.execute_sql(f"SELECT {_COLUMNS} FROM job_events ORDER BY revision DESC LIMIT {int(n)}").fetchall()
    return [_row(r) for r in reversed(rows)]


def compact(tx: WriteTx, before_time_us: int, step: int = COMPACT_STEP) -> tuple[int, bool]:
    """Delete up to `step` of the oldest events committed before
    `before_time_us`. Returns (compact revision, whether more may remain).
    Bounded work per call keeps the writer responsive."""
    rows = tx.db.execute_sql(
        f"SELECT revision, event_time FROM job_events ORDER BY revision LIMIT {int(step)}"
    ).fetchall()
    upto = 0
    for rev, t in rows:
        if t >= before_time_us:
            break
        upto = rev
    current = compact_revision(tx.db)
    if not upto:
        return current, False
    more = upto == rows[-1][0] and len(rows) == step
    return compact_to(tx, upto), more


def compact_to(tx: WriteTx, revision: int) -> int:
    """Delete every event at or below `revision`."""
    m = models_for(tx.db)
    revision = min(revision, tx.revision)
    m.JobEventRow.delete().where(m.JobEventRow.revision <= revision).execute()
    m.MetaRow.update(value=revision).where((m.MetaRow.key == "compact_revision") & (m.MetaRow.value < revision)).execute()
    return max(revision, compact_revision(tx.db))
