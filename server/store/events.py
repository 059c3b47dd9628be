"""The change log: reading events back and compacting old ones."""
from __future__ import annotations

import peewee

from .jobs import compact_revision
from .models import models_for
from .writer import WriteTx


def read_events(db: peewee.Database, project: str, from_rev: int, to_rev: int, limit: int) -> list[tuple[int, str, bytes]]:
    """Events with from_rev <= revision <= to_rev, oldest first, at most `limit`:
    (revision, job_id, serialized JobEvent)."""
    p = db.param
    rows = db.execute_sql(
        f"SELECT revision, job_id, data FROM job_events WHERE revision >= {p} AND revision <= {p} AND project = {p} "
        f"ORDER BY revision LIMIT {int(limit)}",
        (from_rev, to_rev, project),
    ).fetchall()
    return [(r[0], r[1], bytes(r[2])) for r in rows]


def compact(tx: WriteTx, before_time_us: int) -> int:
    """Delete events committed before `before_time_us`; return the new
    compact revision (every revision at or below it is gone)."""
    m = models_for(tx.db)
    newest_old = (
        m.JobEventRow.select(peewee.fn.MAX(m.JobEventRow.revision)).where(m.JobEventRow.event_time < before_time_us).scalar()
    )
    current = compact_revision(tx.db)
    if not newest_old or newest_old <= current:
        return current
    return compact_to(tx, newest_old)


def compact_to(tx: WriteTx, revision: int) -> int:
    """Delete every event at or below `revision`."""
    m = models_for(tx.db)
    revision = min(revision, tx.revision)
    m.JobEventRow.delete().where(m.JobEventRow.revision <= revision).execute()
    m.MetaRow.update(value=revision).where((m.MetaRow.key == "compact_revision") & (m.MetaRow.value < revision)).execute()
    return max(revision, compact_revision(tx.db))
