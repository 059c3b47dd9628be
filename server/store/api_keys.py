"""API keys: `mjk_<id>_<secret>`, created for a project with a role, shown
once, stored only as the secret's sha256, revocable, with a last-used time.
The id is a ULID (lowercase in the key), so a key is looked up by id and its
secret compared in constant time."""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import peewee

from ..ids import new_id

ROLES = ("admin", "editor", "worker", "viewer")
PREFIX = "mjk_"


@dataclass
class ApiKey:
    id: str
    project: str
    role: str
    name: str
    creator: str
    create_time: int
    last_used_time: int
    revoke_time: int


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(db: peewee.Database, project: str, role: str, name: str, creator: str, now_us: int
               ) -> tuple[ApiKey, str]:
    """A new key; returns it and the key text (shown once, never stored)."""
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
    key_id = new_id()
    secret = secrets.token_urlsafe(32)
    p = db.param
    db.execute_sql(
        f"INSERT INTO api_keys (id, project, role, name, secret_hash, creator, create_time, last_used_time, "
        f"revoke_time) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, 0, 0)",
        (key_id, project, role, name[:128], _hash(secret), creator[:128], now_us))
    return ApiKey(key_id, project, role, name[:128], creator[:128], now_us, 0, 0), \
        f"{PREFIX}{key_id.lower()}_{secret}"


def _row(r: tuple) -> ApiKey:  # type: ignore[type-arg]
    return ApiKey(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), int(r[5]), int(r[6]), int(r[7]))


_COLUMNS = "id, project, role, name, creator, create_time, last_used_time, revoke_time"


def verify(db: peewee.Database, key: str) -> ApiKey | None:
    """The live (not revoked) key this text is, or None."""
    if not key.startswith(PREFIX) or len(key) > 200:
        return None
    key_id, sep, secret = key[len(PREFIX):].partition("_")
    if not sep or len(key_id) != 26:
        return None
    p = db.param
    r = db.execute_sql(f"SELECT {_COLUMNS}, secret_hash FROM api_keys WHERE id = {p}",
                       (key_id.upper(),)).fetchone()
    if r is None or not hmac.compare_digest(str(r[8]), _hash(secret)) or int(r[7]):
        return None
    return _row(r)


def list_keys(db: peewee.Database, project: str | None = None) -> list[ApiKey]:
    p = db.param
    where, args = (f"WHERE project = {p}", [project]) if project else ("", [])
    return [_row(r) for r in db.execute_sql(f"SELECT {_COLUMNS} FROM api_keys {where} ORDER BY id", args)]


def revoke(db: peewee.Database, key_id: str, now_us: int) -> bool:
    p = db.param
    cur = db.execute_sql(f"UPDATE api_keys SET revoke_time = {p} WHERE id = {p} AND revoke_time = 0",
                         (now_us, key_id.upper()))
    return bool(cur.rowcount)


def touch(db: peewee.Database, key_id: str, now_us: int) -> None:
    p = db.param
    db.execute_sql(f"UPDATE api_keys SET last_used_time = {p} WHERE id = {p}", (now_us, key_id))


@dataclass
class AuditEntry:
    id: int
    project: str
    time: int
    actor: str
    action: str
    subject: str
    detail: str


def audit(db: peewee.Database, project: str, now_us: int, actor: str, action: str, subject: str,
          detail: str = "") -> None:
    """Record an admin action (in the caller's transaction)."""
    p = db.param
    db.execute_sql(f"INSERT INTO audit_log (project, time, actor, action, subject, detail) "
                   f"VALUES ({p}, {p}, {p}, {p}, {p}, {p})",
                   (project, now_us, actor[:128], action[:64], subject[:128], detail[:1000]))


def audit_log(db: peewee.Database, project: str | None = None, limit: int = 1000) -> list[AuditEntry]:
    p = db.param
    where, args = (f"WHERE project = {p}", [project]) if project else ("", [])
    rows = db.execute_sql(f"SELECT id, project, time, actor, action, subject, detail FROM audit_log {where} "
                          f"ORDER BY id DESC LIMIT {int(limit)}", args).fetchall()
    return [AuditEntry(int(r[0]), str(r[1]), int(r[2]), str(r[3]), str(r[4]), str(r[5]), str(r[6]))
            for r in reversed(rows)]
