"""`mediajobs-server keys ...`: API keys managed on the database directly,
without a running server: the bootstrap of the first admin key.

    mediajobs-server keys create --db DB --project default --role admin --name ops
    mediajobs-server keys list
    mediajobs-server keys revoke 01HA255YE6H6DEETJ5M6595ZDA
    mediajobs-server keys audit      # who created and deleted which projects and keys, when

`create` prints the key once, on stdout alone (it is stored only as a hash
and never logged); keep it where your secrets go. A project that does not
exist yet is created with it (and said so on stderr). An admin key of the
home project ("default") is a system admin: with it, `mediajobs admin ...` manages every
project and key through the running server.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

from .config import default_data_dir
from .convert import now_us
from .errors import ServiceError
from .store import Store
from .store import api_keys
from .store import projects as store_projects
from .store.db import DatabaseUrlError


def _when(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if us else "-"


def main(argv: list[str]) -> int:
    # --db and --data-dir go before or after the action (`keys create --db
    # DB ...` and `keys --db DB create ...` alike): the action's copies
    # default to SUPPRESS, so they override the global ones only when given.
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--db", default=argparse.SUPPRESS,
                       help="the server's database (default: env MEDIAJOBS_DB, else DATA_DIR/mediajobs.db)")
    where.add_argument("--data-dir", default=argparse.SUPPRESS, help="the server's data dir, for the default database")
    ap = argparse.ArgumentParser(prog="mediajobs-server keys", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default=os.environ.get("MEDIAJOBS_DB", ""),
                    help="the server's database (default: env MEDIAJOBS_DB, else DATA_DIR/mediajobs.db)")
    ap.add_argument("--data-dir", default=os.environ.get("MEDIAJOBS_DATA_DIR", ""),
                    help="the server's data dir, for the default database")
    sub = ap.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = sub.add_parser("create", help="create a key and print it once", parents=[where])
    c.add_argument("--project", default="default",
                   help="the key's project (default: default); created if it does not exist: "
                        f"{store_projects.NAME_RULE}")
    c.add_argument("--role", required=True, choices=api_keys.ROLES, help="what the key may do")
    c.add_argument("--name", default="", help="a name to recognise it by")
    ls = sub.add_parser("list", help="the keys (never their secrets)", parents=[where])
    ls.add_argument("--project", default=None, help="only this project's")
    au = sub.add_parser("audit", help="the admin actions recorded (projects created and deleted, keys created "
                                      "and revoked), oldest first", parents=[where])
    au.add_argument("--project", default=None, help="only this project's")
    rv = sub.add_parser("revoke", help="revoke a key by its id (refused from then on, within 10 s)",
                        parents=[where])
    rv.add_argument("id", help="the key's id (the 26 characters after mjk_, or as `keys list` shows it)")
    a = ap.parse_args(argv)
    db = a.db or str((Path(a.data_dir).expanduser() if a.data_dir else default_data_dir()) / "mediajobs.db")
    try:
        store = Store(db).open()
    except (DatabaseUrlError, Exception) as e:  # noqa: BLE001 - one line for whatever stops it
        sys.stderr.write(f"mediajobs-server keys: cannot open {db}: {e}\n")
        return 2
    try:
        actor = f"{os.environ.get('USER', 'unknown')} (mediajobs-server keys)"
        if a.action == "create":
            def create(tx: Any) -> tuple[api_keys.ApiKey, str, bool]:
                new_project = not store_projects.exists(tx.db, a.project)
                if new_project:  # the project and the key commit together
                    store_projects.check_name(a.project, "--project")
                    store_projects.create_project(tx.db, store_projects.Project(name=a.project), actor, now_us(), "")
                key, text = api_keys.create_key(tx.db, a.project, a.role, a.name, actor, now_us())
                api_keys.audit(tx.db, a.project, now_us(), actor, "KEY_CREATED", key.id,
                               f"role {a.role}, name {a.name!r}")
                return key, text, new_project

            try:
                key, text, new_project = store.write_sync(create)
            except ServiceError as e:  # a name against the rule
                sys.stderr.write(f"mediajobs-server keys: {e.violations[0][0]}: {e.violations[0][1]}\n"
                                 if e.violations else f"mediajobs-server keys: {e.message}\n")
                return 2
            if new_project:
                sys.stderr.write(f"project {key.project} did not exist: created it\n")
            sys.stderr.write(f"created key {key.id} ({key.role} of project {key.project}); it is shown once:\n")
            sys.stdout.write(text + "\n")
        elif a.action == "audit":
            for entry in store.read_sync(lambda d, p: api_keys.audit_log(d, a.project)):
                print(f"{_when(entry.time):20}  {entry.project[:16]:16}  {entry.action:15}  {entry.subject:26}  "
                      f"{entry.actor}  {entry.detail}")
        elif a.action == "list":
            keys = store.read_sync(lambda d, p: api_keys.list_keys(d, a.project))
            print(f"{'ID':26}  {'PROJECT':16}  {'ROLE':7}  {'CREATED':20}  {'LAST USED':20}  {'REVOKED':20}  NAME")
            for k in keys:
                print(f"{k.id:26}  {k.project[:16]:16}  {k.role:7}  {_when(k.create_time):20}  "
                      f"{_when(k.last_used_time):20}  {_when(k.revoke_time):20}  {k.name}")
        else:
            key_id = a.id.removeprefix(api_keys.PREFIX).partition("_")[0].upper()

            def revoke(tx: Any) -> bool:
                keys = [k for k in api_keys.list_keys(tx.db) if k.id == key_id]
                done = api_keys.revoke(tx.db, key_id, now_us())
                if done and keys:
                    api_keys.audit(tx.db, keys[0].project, now_us(), actor, "KEY_REVOKED", key_id)
                return done

            if not store.write_sync(revoke):
                sys.stderr.write(f"mediajobs-server keys: no live key {key_id}\n")
                return 1
            print(f"revoked {key_id.upper()}")
    finally:
        store.close()
    return 0
