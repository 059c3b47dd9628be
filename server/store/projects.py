"""Projects (tenants): the projects table, the name rule, and deleting a
project with everything it holds; plus the paged reads of API keys and the
audit log that AdminService serves (store/api_keys.py keeps the keys
themselves).

Every table carries `project`, except the store-wide ones (store_meta,
projects) and the child tables of bulk uploads and live jobs, whose rows
belong to a row that does (CHILDREN). Deleting a project enumerates the
tables from the models, so a table added later is covered, or (a new table
without `project` that is not listed here) makes the deletion refuse with
INTERNAL before anything is deleted; tests/test_admin.py checks the lists.

The functions that change a project record it in the audit log in the
caller's transaction (PROJECT_CREATED, PROJECT_DELETED).
"""
from __future__ import annotations

import re
from typing import Any

import grpc
import peewee

from mediajobs.v1 import admin_service_pb2 as asvc

from ..convert import set_ts
from ..errors import ServiceError, clip, internal, invalid_argument
from . import api_keys
from .models import models_for

Project = asvc.Project

NAME_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")
NAME_RULE = ("1-63 characters: lowercase letters, digits and '-', starting with a letter and not ending with "
             "'-' (e.g. acme-prod)")
MAX_NAME_CHARS = 64  # the column; names made by the rule have at most 63
MAX_DISPLAY_NAME_CHARS = 256
MAX_DESCRIPTION_CHARS = 1024

# Rows of a project that go with it even without force: its bookkeeping,
# not what it holds.
BOOKKEEPING = frozenset({"api_keys", "idempotency_keys", "job_events", "job_types"})
# Kept when a project is deleted: append-only.
KEPT = frozenset({"audit_log"})
# Tables without `project` whose rows belong to a row of a table with one:
# table -> (its column naming the parent row, the parent table).
CHILDREN: dict[str, tuple[str, str]] = {
    "bulk_upload_chunks": ("upload_id", "bulk_uploads"),
    "bulk_upload_lines": ("upload_id", "bulk_uploads"),
    "live_outputs": ("live_job_id", "live_jobs"),
    "live_timings": ("live_job_id", "live_jobs"),
    "live_callbacks": ("live_job_id", "live_jobs"),
}
STORE_WIDE = frozenset({"store_meta", "projects"})
# How far the rows a project still holds are counted (per table), for the
# message that names them.
COUNT_CAP = 10_000


def check_name(name: str, field: str = "name") -> None:
    """The rule for new projects (INVALID_ARGUMENT naming it)."""
    if not name:
        raise invalid_argument([(field, f"required: the project's name, {NAME_RULE}")])
    if not NAME_RE.match(name):
        raise invalid_argument([(field, f"{clip(name)} is not a project name: {NAME_RULE}")], "PROJECT_NAME_INVALID")


def not_found(name: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, "PROJECT_NOT_FOUND",
                        f"project {clip(name)} does not exist; list projects with ListProjects",
                        metadata={"project": name[:MAX_NAME_CHARS]}, resource=("mediajobs.v1.Project", name))


def _project(r: Any, home: str) -> Project:
    p = Project(name=r[0], display_name=r[1], description=r[2], creator=r[3], home=r[0] == home)
    set_ts(p.create_time, int(r[4]))
    return p


_COLUMNS = "name, display_name, description, creator, create_time"


def get_project(db: peewee.Database, name: str, home: str) -> Project | None:
    p = db.param
    r = db.execute_sql(f"SELECT {_COLUMNS} FROM projects WHERE name = {p}", (name,)).fetchone()
    return _project(r, home) if r is not None else None


def exists(db: peewee.Database, name: str) -> bool:
    return db.execute_sql(f"SELECT 1 FROM projects WHERE name = {db.param}", (name,)).fetchone() is not None


def list_projects(db: peewee.Database, home: str, after: str, limit: int, only: str | None = None
                  ) -> list[Project]:
    """Projects by name, after `after`, at most `limit` (`only`: that one)."""
    p = db.param
    where, args = [f"name > {p}"], [after]
    if only is not None:
        where.append(f"name = {p}")
        args.append(only)
    rows = db.execute_sql(f"SELECT {_COLUMNS} FROM projects WHERE {' AND '.join(where)} ORDER BY name "
                          f"LIMIT {int(limit)}", args).fetchall()
    return [_project(r, home) for r in rows]


def create_project(db: peewee.Database, project: Project, creator: str, now_us: int, home: str) -> Project:
    """A new project (ALREADY_EXISTS if the name is taken), recorded as
    PROJECT_CREATED. The name is checked by the caller (check_name)."""
    if exists(db, project.name):
        raise ServiceError(grpc.StatusCode.ALREADY_EXISTS, "PROJECT_EXISTS",
                           f"project {clip(project.name)} already exists", metadata={"project": project.name},
                           resource=("mediajobs.v1.Project", project.name))
    p = db.param
    db.execute_sql(f"INSERT INTO projects ({_COLUMNS}) VALUES ({p}, {p}, {p}, {p}, {p})",
                   (project.name, project.display_name, project.description, creator[:128], now_us))
    api_keys.audit(db, project.name, now_us, creator, "PROJECT_CREATED", project.name,
                   f"display name {project.display_name!r}" if project.display_name else "")
    made = get_project(db, project.name, home)
    assert made is not None
    return made


# -- deleting -----------------------------------------------------------------------------


def project_tables(db: peewee.Database) -> list[str]:
    """Every table with a `project` column, from the models."""
    return [model._meta.table_name for model in models_for(db).all if "project" in model._meta.fields]


def uncovered_tables(db: peewee.Database) -> list[str]:
    """Tables that deleting a project would not know what to do with (none,
    as long as the lists above follow the models)."""
    out = []
    for model in models_for(db).all:
        t = model._meta.table_name
        if "project" in model._meta.fields:
            continue
        if t in STORE_WIDE:
            continue
        if t in CHILDREN and CHILDREN[t][1] in project_tables(db) and CHILDREN[t][0] in model._meta.fields:
            continue
        out.append(t)
    return out


def contents(db: peewee.Database, name: str) -> dict[str, int]:
    """What the project holds, by table (tables with none left out; each
    counted up to COUNT_CAP + 1)."""
    p = db.param
    out: dict[str, int] = {}
    for t in project_tables(db):
        if t in BOOKKEEPING or t in KEPT:
            continue
        (n,) = db.execute_sql(f"SELECT COUNT(*) FROM (SELECT 1 FROM {t} WHERE project = {p} LIMIT {COUNT_CAP + 1}) "
                              f"AS held", (name,)).fetchone()
        if n:
            out[t] = int(n)
    return out


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{t} {f'{COUNT_CAP}+' if n > COUNT_CAP else n}" for t, n in counts.items())


def delete_project(db: peewee.Database, name: str, force: bool, home: str, actor: str, now_us: int
                   ) -> asvc.DeleteProjectResponse:
    """Delete the project's row and every row of it (audit log excepted),
    recorded as PROJECT_DELETED. Without force only a project that holds
    nothing but bookkeeping (FAILED_PRECONDITION PROJECT_NOT_EMPTY naming
    what is left); never the home project (PROJECT_IS_HOME)."""
    project = get_project(db, name, home)
    if project is None:
        raise not_found(name)
    if name == home:
        raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, "PROJECT_IS_HOME",
                           f"project {clip(name)} is this server's home project; it cannot be deleted",
                           metadata={"project": name}, precondition=("HOME_PROJECT", f"projects/{name}",
                                                                     "the server's home project"))
    missing = uncovered_tables(db)
    if missing:
        raise internal(f"cannot delete a project: the server does not know how to delete the rows of "
                       f"{', '.join(missing)} (store/projects.py)")
    held = contents(db, name)
    if held and not force:
        what = _counts_text(held)
        raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, "PROJECT_NOT_EMPTY",
                           f"project {clip(name)} is not empty: it still holds {what}; delete those first, or "
                           "delete the project with force, which deletes them too",
                           metadata={"project": name, **{t: str(n) for t, n in list(held.items())[:12]}},
                           precondition=("NOT_EMPTY", f"projects/{name}", f"holds {what}"))
    p = db.param
    deleted: dict[str, int] = {}
    tables = project_tables(db)
    for child, (column, parent) in CHILDREN.items():  # before their parents
        cur = db.execute_sql(f"DELETE FROM {child} WHERE {column} IN (SELECT id FROM {parent} WHERE project = {p})",
                             (name,))
        if cur.rowcount:
            deleted[child] = int(cur.rowcount)
    for t in tables:
        if t in KEPT:
            continue
        cur = db.execute_sql(f"DELETE FROM {t} WHERE project = {p}", (name,))
        if cur.rowcount:
            deleted[t] = int(cur.rowcount)
    db.execute_sql(f"DELETE FROM projects WHERE name = {p}", (name,))
    api_keys.audit(db, name, now_us, actor, "PROJECT_DELETED", name,
                   ("force; " if force else "") + ("deleted " + _counts_text(deleted) if deleted else "nothing held"))
    return asvc.DeleteProjectResponse(project=project, deleted_rows=deleted)


# -- API keys and the audit log, paged ---------------------------------------------------------


def key_message(k: api_keys.ApiKey) -> asvc.ApiKey:
    out = asvc.ApiKey(id=k.id, project=k.project, role=k.role, name=k.name, creator=k.creator)
    set_ts(out.create_time, k.create_time)
    if k.last_used_time:
        set_ts(out.last_used_time, k.last_used_time)
    if k.revoke_time:
        set_ts(out.revoke_time, k.revoke_time)
    return out


_KEY_COLUMNS = "id, project, role, name, creator, create_time, last_used_time, revoke_time"


def _key(r: Any) -> api_keys.ApiKey:
    return api_keys.ApiKey(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), int(r[5]), int(r[6]), int(r[7]))


def get_key(db: peewee.Database, key_id: str) -> api_keys.ApiKey | None:
    r = db.execute_sql(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = {db.param}", (key_id,)).fetchone()
    return _key(r) if r is not None else None


def list_keys(db: peewee.Database, project: str | None, include_revoked: bool, after: str, limit: int
              ) -> list[api_keys.ApiKey]:
    """Keys by id after `after`, at most `limit` (never their secrets)."""
    p = db.param
    where, args = [f"id > {p}"], [after]
    if project is not None:
        where.append(f"project = {p}")
        args.append(project)
    if not include_revoked:
        where.append("revoke_time = 0")
    rows = db.execute_sql(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE {' AND '.join(where)} ORDER BY id "
                          f"LIMIT {int(limit)}", args).fetchall()
    return [_key(r) for r in rows]


def list_audit(db: peewee.Database, project: str | None, before: int, limit: int) -> list[asvc.AuditEntry]:
    """Audit entries newest first, with ids below `before` (0: from the
    newest), at most `limit`."""
    p = db.param
    where: list[str] = []
    args: list[Any] = []
    if before:
        where.append(f"id < {p}")
        args.append(before)
    if project is not None:
        where.append(f"project = {p}")
        args.append(project)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = db.execute_sql(f"SELECT id, project, time, actor, action, subject, detail FROM audit_log {clause} "
                          f"ORDER BY id DESC LIMIT {int(limit)}", args).fetchall()
    out = []
    for r in rows:
        e = asvc.AuditEntry(id=int(r[0]), project=str(r[1]), actor=str(r[3]), action=str(r[4]), subject=str(r[5]),
                            detail=str(r[6]))
        set_ts(e.time, int(r[2]))
        out.append(e)
    return out
