"""`mediajobs-server keys ...`: API keys managed on the database directly,
without a running server: the bootstrap of the first admin key.

    mediajobs-server keys create --project default --role admin --name ops
    mediajobs-server keys list
    mediajobs-server keys revoke 01HA255YE6H6DEETJ5M6595ZDA
    mediajobs-server keys audit      # who created and revoked which keys, when

`create` prints the key once, on stdout alone (it is stored only as a hash
and never logged); keep it where your secrets go.
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
from .store import Store
from .store import api_keys
from .store.db import DatabaseUrlError


def _when(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if us else "-"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="mediajobs-server keys", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default=os.environ.get("MEDIAJOBS_DB", ""),
                    help="the server's database (default: env MEDIAJOBS_DB, else DATA_DIR/mediajobs.db)")
    ap.add_argument("--data-dir", default=os.environ.get("MEDIAJOBS_DATA_DIR", ""),
                    help="the server's data dir, for the default database")
    sub = ap.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = sub.add_parser("create", help="create a key and print it once")
    c.add_argument("--project", default="default", help="the key's project (default: default)")
    c.add_argument("--role", required=True, choices=api_keys.ROLES, help="what the key may do")
    c.add_argument("--name", default="", help="a name to recognise it by")
    ls = sub.add_parser("list", help="the keys (never their secrets)")
    ls.add_argument("--project", default=None, help="only this project's")
    au = sub.add_parser("audit", help="the admin actions recorded (keys created and revoked), oldest first")
    au.add_argument("--project", default=None, help="only this project's")
    rv = sub.add_parser("revoke", help="revoke a key by its id (refused from then on, within 10 s)")
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
            def create(tx: Any) -> tuple[api_keys.ApiKey, str]:
                made = api_keys.create_key(tx.db, a.project, a.role, a.name, actor, now_us())
                api_keys.audit(tx.db, a.project, now_us(), actor, "KEY_CREATED", made[0].id,
                               f"role {a.role}, name {a.name!r}")
                return made

            key, text = store.write_sync(create)
            sys.stderr.write(f"created key {key.id} ({key.role} of project {key.project}); it is shown once:\n")
            sys.stdout.write(text + "\n")
        elif a.action == "audit":
            for entry in store.read_sync(lambda d, p: api_keys.audit_log(d, a.project)):
                print(f"{_when(entry.time):20}  {entry.project[:16]:16}  {entry.action:12}  {entry.subject:26}  "
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
